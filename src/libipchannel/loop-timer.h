/* SPDX-License-Identifier: MIT */
/* One-shot timers on whichever loop a channel runs on: sd-event or a GLib main context. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include <glib.h>
#include <systemd/sd-event.h>

typedef void (*loop_timer_cb_t)(void *userdata);

typedef struct {
        sd_event_source *event_source;
        GSource *glib_source;
        loop_timer_cb_t cb;
        void *userdata;
} loop_timer;

/* Fires cb once, usec from now, on e if it is not NULL, else on ctx. Re-arming replaces. */
int loop_timer_arm(loop_timer *t, sd_event *e, GMainContext *ctx, uint64_t usec,
                   loop_timer_cb_t cb, void *userdata);
void loop_timer_cancel(loop_timer *t);
bool loop_timer_is_armed(const loop_timer *t);

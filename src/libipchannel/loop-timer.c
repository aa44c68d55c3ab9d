/* SPDX-License-Identifier: MIT */
/* One-shot timers on whichever loop a channel runs on: sd-event or a GLib main context. */
#include <errno.h>

#include "loop-timer.h"

static int on_event_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        loop_timer *t = userdata;

        t->event_source = sd_event_source_unref(t->event_source);
        t->cb(t->userdata);
        return 0;
}

static gboolean on_glib_timer(gpointer userdata) {
        loop_timer *t = userdata;

        g_source_unref(t->glib_source);
        t->glib_source = NULL;
        t->cb(t->userdata);
        return G_SOURCE_REMOVE;
}

static gboolean ready_time_dispatch(GSource *source, GSourceFunc callback, gpointer userdata) {
        return callback(userdata);
}

static GSourceFuncs ready_time_funcs = {
        .dispatch = ready_time_dispatch,
};

int loop_timer_arm(loop_timer *t, sd_event *e, GMainContext *ctx, uint64_t usec,
                   loop_timer_cb_t cb, void *userdata) {
        loop_timer_cancel(t);
        t->cb = cb;
        t->userdata = userdata;

        /* A wait that ends past the clock's range (UINT64_MAX: for ever) never ends: the timer
         * is armed and never fires. */
        if (e) {
                uint64_t now;
                int r = sd_event_now(e, CLOCK_MONOTONIC, &now);

                if (r < 0)
                        return r;
                return sd_event_add_time(e, &t->event_source, CLOCK_MONOTONIC,
                                         usec >= UINT64_MAX - now ? UINT64_MAX : now + usec, 0,
                                         on_event_timer, t);
        }
        if (!ctx)
                return -EINVAL;

        t->glib_source = g_source_new(&ready_time_funcs, sizeof(GSource));
        /* g_get_monotonic_time() is CLOCK_MONOTONIC in microseconds, as sd-event's clock; -1:
         * never ready. */
        gint64 now = g_get_monotonic_time();
        g_source_set_ready_time(t->glib_source,
                                usec >= (uint64_t) (G_MAXINT64 - now) ? -1 : now + (gint64) usec);
        g_source_set_callback(t->glib_source, on_glib_timer, t, NULL);
        g_source_attach(t->glib_source, ctx);
        return 0;
}

void loop_timer_cancel(loop_timer *t) {
        t->event_source = sd_event_source_disable_unref(t->event_source);
        if (t->glib_source) {
                g_source_destroy(t->glib_source);
                g_source_unref(t->glib_source);
                t->glib_source = NULL;
        }
}

bool loop_timer_is_armed(const loop_timer *t) {
        return t->event_source || t->glib_source;
}

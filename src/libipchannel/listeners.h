/* SPDX-License-Identifier: MIT */
/* Listeners: the registry of event handlers of a channel, safe against changes made by the
 * handlers it is calling. Knows nothing of the bus; the channel learns through hooks when an
 * event gains its first or loses its last listener, to add or drop its match rule. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "ipchannel.h"

typedef struct listener_event listener_event;
typedef struct listeners listeners;

struct listener_event {
        listener_event *next;
        char *name;
        size_t n_slots;                 /* live (not removed) listeners */
        ipchannel_slot *first, *last;
        void *match;                    /* the channel's bus match for it (sd_bus_slot *) */
};

typedef void (*listeners_hook_t)(listener_event *ev, bool added, void *userdata);

struct listeners {
        listener_event *events;
        size_t n_listeners;
        unsigned dispatch_depth;        /* > 0 while handlers run: removed slots stay linked */
        bool dirty;                     /* a slot was removed during dispatch */
        listeners_hook_t hook;
        void *hook_userdata;
};

void listeners_init(listeners *l, listeners_hook_t hook, void *userdata);
/* Removes (and frees where no one holds a reference) every listener. */
void listeners_clear(listeners *l);

int listeners_add(listeners *l, ipchannel *ch, const char *event, ipchannel_handler_t handler,
                  void *userdata, bool once, ipchannel_slot **ret_slot);
listener_event *listeners_find(listeners *l, const char *event);

/* Calls every listener of event that was registered when the call began. Returns how many. */
size_t listeners_dispatch(listeners *l, ipchannel *ch, uint32_t sender, const char *event,
                          GVariant *data);

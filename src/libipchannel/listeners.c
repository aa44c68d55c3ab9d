/* SPDX-License-Identifier: MIT */
/* Listeners: event handlers of a channel, kept per event name. */
#include <stdlib.h>
#include <string.h>

#include "listeners.h"
#include "macro.h"

/* A slot is owned by whoever holds references: the caller that asked for ret_slot, or, for a
 * "floating" listener (no ret_slot), the registry itself. Dropping the caller's last reference
 * removes the listener. A removed slot is unlinked at once unless handlers are running, in
 * which case it stays linked (marked removed) until the outermost dispatch ends, so that the
 * dispatch loop never follows a freed pointer. */
struct ipchannel_slot {
        unsigned n_ref;
        listeners *owner;               /* NULL once removed */
        listener_event *event;
        ipchannel_slot *next;
        ipchannel_handler_t handler;
        void *userdata;
        bool once;
        bool floating;
        bool removed;
};

void listeners_init(listeners *l, listeners_hook_t hook, void *userdata) {
        *l = (listeners) {
                .hook = hook,
                .hook_userdata = userdata,
        };
}

listener_event *listeners_find(listeners *l, const char *event) {
        for (listener_event *ev = l->events; ev; ev = ev->next)
                if (strcmp(ev->name, event) == 0)
                        return ev;
        return NULL;
}

static void slot_free(ipchannel_slot *s) {
        free(s);
}

/* Unlinks removed slots and empty events; only when no dispatch is running. */
static void listeners_sweep(listeners *l) {
        listener_event **pev = &l->events;

        if (l->dispatch_depth > 0 || !l->dirty)
                return;
        l->dirty = false;

        while (*pev) {
                listener_event *ev = *pev;
                ipchannel_slot **ps = &ev->first;

                ev->last = NULL;
                while (*ps) {
                        ipchannel_slot *s = *ps;

                        if (s->removed) {
                                *ps = s->next;
                                s->event = NULL;
                                s->next = NULL;
                                if (s->n_ref == 0)
                                        slot_free(s);
                        } else {
                                ev->last = s;
                                ps = &s->next;
                        }
                }

                if (!ev->first) {
                        *pev = ev->next;
                        free(ev->name);
                        free(ev);
                } else
                        pev = &ev->next;
        }
}

static void slot_remove(ipchannel_slot *s) {
        listeners *l = s->owner;
        listener_event *ev = s->event;

        if (!l || s->removed)
                return;
        s->removed = true;
        s->owner = NULL;
        if (s->floating) {
                s->floating = false;
                s->n_ref--;
        }
        l->n_listeners--;
        l->dirty = true;
        if (--ev->n_slots == 0 && l->hook)
                l->hook(ev, false, l->hook_userdata);
        listeners_sweep(l);
}

int listeners_add(listeners *l, ipchannel *ch, const char *event, ipchannel_handler_t handler,
                  void *userdata, bool once, ipchannel_slot **ret_slot) {
        listener_event *ev;
        ipchannel_slot *s;

        s = malloc(sizeof(*s));
        if (!s)
                return -ENOMEM;
        *s = (ipchannel_slot) {
                .n_ref = 1,
                .owner = l,
                .handler = handler,
                .userdata = userdata,
                .once = once,
                .floating = !ret_slot,
        };

        ev = listeners_find(l, event);
        if (!ev) {
                ev = calloc(1, sizeof(*ev));
                if (!ev) {
                        free(s);
                        return -ENOMEM;
                }
                ev->name = strdup(event);
                if (!ev->name) {
                        free(ev);
                        free(s);
                        return -ENOMEM;
                }
                ev->next = l->events;
                l->events = ev;
        }

        s->event = ev;
        if (ev->last)
                ev->last->next = s;
        else
                ev->first = s;
        ev->last = s;
        l->n_listeners++;
        if (ev->n_slots++ == 0 && l->hook)
                l->hook(ev, true, l->hook_userdata);

        if (ret_slot)
                *ret_slot = s;
        return 0;
}

void listeners_clear(listeners *l) {
        /* Hold the sweep back while walking the lists it would free. */
        l->dispatch_depth++;
        for (listener_event *ev = l->events; ev; ev = ev->next)
                for (ipchannel_slot *s = ev->first; s; s = s->next)
                        slot_remove(s);
        l->dispatch_depth--;
        listeners_sweep(l);
}

size_t listeners_dispatch(listeners *l, ipchannel *ch, uint32_t sender, const char *event,
                          GVariant *data) {
        listener_event *ev = listeners_find(l, event);
        ipchannel_slot *end;
        size_t n = 0;

        if (!ev)
                return 0;

        /* Listeners added by a handler wait for the next event, as in Node's EventEmitter. */
        end = ev->last;
        l->dispatch_depth++;
        for (ipchannel_slot *s = ev->first; s; s = s->next) {
                if (!s->removed) {
                        if (s->once)
                                slot_remove(s);
                        s->handler(ch, sender, event, data, s->userdata);
                        n++;
                }
                if (s == end)
                        break;
        }
        l->dispatch_depth--;
        listeners_sweep(l);
        return n;
}

_public_ ipchannel_slot *ipchannel_slot_ref(ipchannel_slot *s) {
        if (s)
                s->n_ref++;
        return s;
}

_public_ ipchannel_slot *ipchannel_slot_unref(ipchannel_slot *s) {
        if (!s)
                return NULL;
        if (s->n_ref == 0)
                return NULL;
        if (--s->n_ref > 0)
                return NULL;

        if (s->owner)
                slot_remove(s);         /* the last reference gone: the listener goes too */
        else if (!s->event)
                slot_free(s);           /* already unlinked; else listeners_sweep() frees it */
        return NULL;
}

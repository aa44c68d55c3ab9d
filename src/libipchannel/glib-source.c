/* SPDX-License-Identifier: MIT */
/* A GSource that drives an sd-bus connection from a GLib main context. */
#include <poll.h>

#include "glib-source.h"

/* sd-bus changes what it waits for as it goes (POLLOUT only while its write queue is not
 * empty, a timeout only while a method call awaits its reply, timeout 0 while messages wait
 * in its read queue), so prepare() asks it afresh before every poll (fd, events, timeout)
 * instead of caching. */

/* How many messages one dispatch may process before it lets other sources run. */
#define DISPATCH_BATCH 64

typedef struct {
        GSource source;
        sd_bus *bus;
        int fd;
        gpointer tag;
        uint64_t deadline;              /* CLOCK_MONOTONIC usec; UINT64_MAX = none */
        glib_bus_error_t on_error;
        void *userdata;
} BusSource;

static gboolean bus_source_prepare(GSource *source, gint *timeout) {
        BusSource *s = (BusSource *) source;
        uint64_t t = UINT64_MAX;
        int events, r;

        /* The fd is the connection's for its whole life today; asking costs nothing and keeps
         * the source right should sd-bus ever swap it. */
        int fd = sd_bus_get_fd(s->bus);
        if (fd >= 0 && fd != s->fd) {
                g_source_remove_unix_fd(source, s->tag);
                s->fd = fd;
                s->tag = g_source_add_unix_fd(source, fd, 0);
        }

        events = sd_bus_get_events(s->bus);
        if (events < 0)
                events = 0;     /* closed: the next dispatch reports the error */
        g_source_modify_unix_fd(source, s->tag, (GIOCondition) events);

        r = sd_bus_get_timeout(s->bus, &t);
        s->deadline = r > 0 ? t : UINT64_MAX;
        if (sd_bus_is_open(s->bus) <= 0) {
                *timeout = 0;
                return TRUE;
        }
        if (s->deadline == UINT64_MAX) {
                *timeout = -1;
                return FALSE;
        }

        uint64_t now = (uint64_t) g_get_monotonic_time();
        if (s->deadline <= now) {
                *timeout = 0;
                return TRUE;
        }
        /* Round up: waking a millisecond early would only spin. */
        uint64_t ms = (s->deadline - now + 999) / 1000;
        *timeout = ms > G_MAXINT ? G_MAXINT : (gint) ms;
        return FALSE;
}

static gboolean bus_source_check(GSource *source) {
        BusSource *s = (BusSource *) source;

        if (g_source_query_unix_fd(source, s->tag) != 0)
                return TRUE;
        return s->deadline != UINT64_MAX && s->deadline <= (uint64_t) g_get_monotonic_time();
}

static gboolean bus_source_dispatch(GSource *source, GSourceFunc callback, gpointer user_data) {
        BusSource *s = (BusSource *) source;
        sd_bus *bus = sd_bus_ref(s->bus);

        for (unsigned i = 0; i < DISPATCH_BATCH; i++) {
                int r = sd_bus_process(bus, NULL);
                /* A handler may have torn the connection down (disconnect, or the channel's last
                 * reference dropped): the source, and the channel behind userdata, are gone. */
                if (g_source_is_destroyed(source))
                        break;
                if (r < 0) {
                        if (s->on_error)
                                s->on_error(r, s->userdata);
                        break;
                }
                if (r == 0)
                        break;
        }
        sd_bus_unref(bus);
        return G_SOURCE_CONTINUE;
}

static void bus_source_finalize(GSource *source) {
        BusSource *s = (BusSource *) source;

        s->bus = sd_bus_unref(s->bus);
}

static GSourceFuncs bus_source_funcs = {
        .prepare = bus_source_prepare,
        .check = bus_source_check,
        .dispatch = bus_source_dispatch,
        .finalize = bus_source_finalize,
};

GSource *glib_bus_source_new(sd_bus *bus, glib_bus_error_t on_error, void *userdata) {
        GSource *source = g_source_new(&bus_source_funcs, sizeof(BusSource));
        BusSource *s = (BusSource *) source;

        s->bus = sd_bus_ref(bus);
        s->on_error = on_error;
        s->userdata = userdata;
        s->deadline = UINT64_MAX;
        s->fd = sd_bus_get_fd(bus);
        s->tag = g_source_add_unix_fd(source, s->fd, 0);
        g_source_set_name(source, "ipchannel bus");
        return source;
}

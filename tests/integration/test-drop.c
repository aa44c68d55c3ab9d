/* SPDX-License-Identifier: MIT */
/*
 * test-drop SCENARIO LOOP: a handler lets go of its channel's last reference at an awkward
 * moment, and the library must not touch the channel after that. The AddressSanitizer and
 * valgrind runs of these tests report it if it does (a plain build may read the freed memory
 * unnoticed). LOOP: sd-event or glib. Runs on the bus of $DBUS_SESSION_BUS_ADDRESS; exit
 * status 0 when the scenario saw what it should.
 *
 *   batch  Peer 1 sends peer 2 four messages in one turn of the loop (the first goes alone,
 *          the other three as one DeliverBatch); peer 2's handler drops its channel at the
 *          second. The rest of that batch must not be handed out: peer 2 sees exactly two.
 *   error  Two sends are queued before connect for peer 9, which never comes; with a flush
 *          wait of 0 the first is reported on "error" as undeliverable while the channel
 *          flushes its queue, and the handler drops the channel there: exactly one error.
 *   run    A "connect" handler ends ipchannel_run() and drops the channel: ipchannel_run()
 *          must not touch it once its loop has returned.
 *   acquire  ipchannel_lock_acquire() runs the loop while it waits for a lock another channel
 *          holds, and a "connect" handler drops the channel there: the wait ends with
 *          -ECANCELED, and nothing of the channel is touched after.
 *   sync   A synchronize() body drops the channel and releases its lock a little later, from
 *          a timer; a second request waits behind it. No "done" runs (the app let go), no
 *          other body runs, the late release says -ETIME (the grant ended with the channel's
 *          lock agent), and nothing leaks: the requests go with the channel (LeakSanitizer and
 *          valgrind tell).
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ipchannel.h>

#define DONE_GRACE_USEC (300 * 1000)    /* after the scenario's event: time for a late crash */
#define TIMEOUT_USEC (5 * 1000 * 1000)

static bool use_glib;
static sd_event *event;
static GMainContext *context;
static GMainLoop *loop;
static ipchannel *sender, *receiver;
static int seen;

static int attach(ipchannel *ch) {
        return use_glib ? ipchannel_attach_glib(ch, context) : ipchannel_attach_event(ch, event, 0);
}

static int on_event_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        return sd_event_exit(sd_event_source_get_event(s), 0);
}

static gboolean on_glib_timeout(gpointer userdata) {
        g_main_loop_quit(loop);
        return G_SOURCE_REMOVE;
}

/* Ends the loop after usec. */
static int stop_after(uint64_t usec) {
        if (!use_glib)
                return sd_event_add_time_relative(event, NULL, CLOCK_MONOTONIC, usec, 0,
                                                  on_event_timeout, NULL);
        GSource *t = g_timeout_source_new((guint) (usec / 1000));
        g_source_set_callback(t, on_glib_timeout, NULL, NULL);
        g_source_attach(t, context);
        g_source_unref(t);
        return 0;
}

static int run_loop(void) {
        int r = stop_after(TIMEOUT_USEC);

        if (r < 0)
                return r;
        if (use_glib) {
                g_main_loop_run(loop);
                return 0;
        }
        return sd_event_loop(event);
}

/* ---- batch -------------------------------------------------------------------------------- */

static void on_message(ipchannel *ch, uint32_t from, const char *ev, GVariant *data, void *userdata) {
        if (++seen == 2) {
                receiver = ipchannel_unref(receiver);
                (void) stop_after(DONE_GRACE_USEC);
        }
}

static void on_join(ipchannel *ch, uint32_t id, const char *ev, GVariant *data, void *userdata) {
        if (id != 2)
                return;
        for (int32_t i = 0; i < 4; i++)
                if (ipchannel_send(sender, 2, g_variant_new_int32(i)) < 0)
                        fprintf(stderr, "test-drop: send %d failed\n", i);
}

/* Peer 2 connects once peer 1 is: peer 1 then sees it join (a peer already there when a channel
 * connects is found, not announced). */
static void on_sender_connect(ipchannel *ch, uint32_t id, const char *ev, GVariant *data,
                              void *userdata) {
        int r = ipchannel_connect(receiver);

        if (r < 0)
                fprintf(stderr, "test-drop: connect of peer 2: %s\n", g_strerror(-r));
}

static int scenario_batch(void) {
        int r;

        r = ipchannel_new(&sender, "dropbatch");
        if (r >= 0)
                r = ipchannel_new(&receiver, "dropbatch");
        if (r >= 0)
                r = ipchannel_set_peer_id(sender, 1);
        if (r >= 0)
                r = ipchannel_set_peer_id(receiver, 2);
        if (r >= 0)
                r = attach(sender);
        if (r >= 0)
                r = attach(receiver);
        if (r >= 0)
                r = ipchannel_on(sender, IPCHANNEL_EVENT_CONNECT, on_sender_connect, NULL, NULL);
        if (r >= 0)
                r = ipchannel_on(sender, IPCHANNEL_EVENT_PEER_JOIN, on_join, NULL, NULL);
        if (r >= 0)
                r = ipchannel_on(receiver, IPCHANNEL_EVENT_MESSAGE, on_message, NULL, NULL);
        if (r >= 0)
                r = ipchannel_connect(sender);
        if (r >= 0)
                r = run_loop();
        if (r >= 0 && seen != 2) {
                fprintf(stderr, "test-drop: peer 2 saw %d messages, not 2\n", seen);
                r = -EBADMSG;
        }
        return r;
}

/* ---- error -------------------------------------------------------------------------------- */

static void on_error(ipchannel *ch, uint32_t from, const char *ev, GVariant *data, void *userdata) {
        if (++seen == 1)
                (void) stop_after(DONE_GRACE_USEC);
        sender = ipchannel_unref(sender);
}

static int scenario_error(void) {
        int r;

        r = ipchannel_new(&sender, "droperror");
        if (r >= 0)
                r = attach(sender);
        if (r >= 0)
                r = ipchannel_set_flush_wait(sender, 0);
        if (r >= 0)
                r = ipchannel_on(sender, IPCHANNEL_EVENT_ERROR, on_error, NULL, NULL);
        for (int32_t i = 0; i < 2 && r >= 0; i++)
                r = ipchannel_send(sender, 9, g_variant_new_int32(i));
        if (r >= 0)
                r = ipchannel_connect(sender);
        if (r >= 0)
                r = run_loop();
        if (r >= 0 && seen != 1) {
                fprintf(stderr, "test-drop: %d errors, not 1\n", seen);
                r = -EBADMSG;
        }
        return r;
}

/* ---- run ---------------------------------------------------------------------------------- */

static void on_connect_exit(ipchannel *ch, uint32_t id, const char *ev, GVariant *data,
                            void *userdata) {
        seen++;
        (void) ipchannel_exit(ch, 0);
        sender = ipchannel_unref(sender);
}

/* A sender of app that connects, and whose "connect" handler drops it. */
static int connect_dropping_sender(const char *app) {
        int r = ipchannel_new(&sender, app);

        if (r >= 0)
                r = attach(sender);
        if (r >= 0)
                r = ipchannel_on(sender, IPCHANNEL_EVENT_CONNECT, on_connect_exit, NULL, NULL);
        if (r >= 0)
                r = ipchannel_connect(sender);
        return r;
}

static int scenario_run(void) {
        int r;

        r = connect_dropping_sender("droprun");
        if (r >= 0)
                r = stop_after(TIMEOUT_USEC);
        if (r >= 0)
                r = ipchannel_run(sender);
        if (r >= 0 && (seen != 1 || sender)) {
                fprintf(stderr, "test-drop: the connect handler ran %d times\n", seen);
                r = -EBADMSG;
        }
        return r;
}

/* ---- acquire ------------------------------------------------------------------------------ */

static int scenario_acquire(void) {
        ipchannel_lock *held = NULL, *lock = NULL;
        int r;

        /* Held by another channel all along, so that the wait lasts past "connect". */
        r = ipchannel_new(&receiver, "dropacquire");
        if (r >= 0)
                r = attach(receiver);
        if (r >= 0)
                r = ipchannel_lock_acquire(receiver, "L", TIMEOUT_USEC, &held);
        if (r >= 0)
                r = connect_dropping_sender("dropacquire");
        if (r >= 0) {
                r = ipchannel_lock_acquire(sender, "L", TIMEOUT_USEC, &lock);
                if (r != -ECANCELED || lock || seen != 1 || sender) {
                        fprintf(stderr, "test-drop: acquire returned %s after %d connect handlers\n",
                                g_strerror(-r), seen);
                        if (lock)
                                (void) ipchannel_lock_release(lock, 0);
                        r = -EBADMSG;
                } else
                        r = 0;
        }
        if (held)
                (void) ipchannel_lock_release(held, 0);
        return r;
}

/* ---- sync --------------------------------------------------------------------------------- */

static int n_done;

static void on_sync_done(ipchannel *ch, int error, void *userdata) {
        n_done++;
}

static ipchannel_lock *kept;
static int late_release = 1;

static void release_kept(void) {
        late_release = ipchannel_lock_release(kept, 0);
        kept = NULL;
        (void) stop_after(DONE_GRACE_USEC);
}

static int on_event_release(sd_event_source *s, uint64_t usec, void *userdata) {
        release_kept();
        return 0;
}

static gboolean on_glib_release(gpointer userdata) {
        release_kept();
        return G_SOURCE_REMOVE;
}

static void sync_body(ipchannel_lock *lock, void *userdata) {
        seen++;
        kept = lock;
        sender = ipchannel_unref(sender);
        if (use_glib) {
                GSource *t = g_timeout_source_new(50);

                g_source_set_callback(t, on_glib_release, NULL, NULL);
                g_source_attach(t, context);
                g_source_unref(t);
        } else
                (void) sd_event_add_time_relative(event, NULL, CLOCK_MONOTONIC, 50 * 1000, 0, on_event_release,
                                                  NULL);
}

static int scenario_sync(void) {
        int r;

        r = ipchannel_new(&sender, "dropsync");
        if (r >= 0)
                r = attach(sender);
        for (int i = 0; i < 2 && r >= 0; i++)
                r = ipchannel_synchronize(sender, "L", sync_body, on_sync_done, NULL);
        if (r >= 0)
                r = ipchannel_connect(sender);
        if (r >= 0)
                r = run_loop();
        if (r >= 0 && (seen != 1 || n_done != 0 || sender || kept || late_release != -ETIME)) {
                fprintf(stderr, "test-drop: %d bodies and %d done callbacks ran, not 1 and 0; the late "
                        "release %s\n", seen, n_done, kept ? "did not run" : g_strerror(-late_release));
                r = -EBADMSG;
        }
        return r;
}

int main(int argc, char *argv[]) {
        const char *scenario = argc > 1 ? argv[1] : "";
        int r;

        use_glib = argc > 2 && strcmp(argv[2], "glib") == 0;
        if (use_glib) {
                context = g_main_context_new();
                loop = g_main_loop_new(context, FALSE);
                r = 0;
        } else
                r = sd_event_new(&event);
        if (r >= 0)
                r = strcmp(scenario, "batch") == 0   ? scenario_batch()
                    : strcmp(scenario, "error") == 0 ? scenario_error()
                    : strcmp(scenario, "run") == 0   ? scenario_run()
                    : strcmp(scenario, "acquire") == 0 ? scenario_acquire()
                    : strcmp(scenario, "sync") == 0    ? scenario_sync()
                                                     : -EINVAL;
        if (r < 0)
                fprintf(stderr, "test-drop %s: %s\n", scenario, g_strerror(-r));
        ipchannel_unref(sender);
        ipchannel_unref(receiver);
        if (loop)
                g_main_loop_unref(loop);
        if (context)
                g_main_context_unref(context);
        sd_event_unref(event);
        return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}

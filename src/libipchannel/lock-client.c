/* SPDX-License-Identifier: MIT */
/* The lock client: synchronize() and the blocking lock API, on the app's side of the agent. */
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <glib-unix.h>
#include <glib.h>

#include "channel.h"
#include "lock-agent.h"
#include "macro.h"
#include "names.h"

/* The app's thread runs bodies and "done" callbacks from its own loop, when the agent's
 * notification fd says a request changed. A request holds a reference on the agent, never on
 * the channel, so worker threads that acquire and release never touch the channel's count;
 * "done" is called only from the channel's loop, which exists as long as the channel does. */

struct lock_client {
        lock_agent *agent;
        pthread_t loop_thread;          /* the thread that started it: the loop's thread */
        sd_event_source *event_source;
        sd_event_source *kick_source;   /* deferred: notifications made inside the dispatch */
        GSource *glib_source;
        /* synchronize() requests whose "done" has not run, each with the app's reference:
         * dropped by lock_client_free() if the channel goes first ("done" is not called then). */
        GHashTable *pending;
};

/* The async form is over: "done" once, then the app side lets go. */
static void lock_finish(ipchannel *ch, ipchannel_lock *l, int error) {
        lock_client *c = *channel_lock_client(ch);

        g_hash_table_remove(c->pending, l);
        l->body = NULL;
        if (l->done) {
                ipchannel_sync_done_t done = l->done;
                l->done = NULL;
                done(ch, error, l->userdata);
        }
        lock_unref(l);          /* the app's reference */
}

static void lock_client_dispatch(ipchannel *ch) {
        lock_client *c = *channel_lock_client(ch);
        g_autoptr(GPtrArray) changed = lock_agent_take_notifications(c->agent);

        channel_hold(ch);
        lock_agent_set_dispatching(c->agent, true);
        for (guint i = 0; changed && i < changed->len; i++) {
                ipchannel_lock *l = g_ptr_array_index(changed, i);
                uint64_t token;
                int error;
                lock_state s = lock_agent_get_state(c->agent, l, &token, &error);

                if (channel_let_go(ch)) {
                        /* A body or "done" callback let go of the channel: no more of them. */
                } else if (l->async && s == LOCK_RELEASED && l->done_pending) {
                        l->done_pending = false;
                        lock_finish(ch, l, l->done_error);
                } else if (l->async && !l->body_ran && l->body) {
                        switch (s) {
                        case LOCK_HELD:
                                l->body_ran = true;
                                l->body(l, l->userdata);
                                break;
                        case LOCK_FAILED:
                                lock_finish(ch, l, error);
                                break;
                        case LOCK_EXPIRED:
                                /* Lost before the body could start: say so, and let it go. */
                                l->body_ran = true;
                                l->released = true;
                                l->done_pending = true;
                                l->done_error = -ETIME;
                                lock_agent_release(c->agent, l);
                                break;
                        default:
                                break;
                        }
                }
                lock_unref(l);          /* the notification's reference */
        }
        lock_agent_set_dispatching(c->agent, false);
        channel_release(ch);
}

static int on_notify_event(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        lock_client_dispatch(userdata);
        return 0;
}

static int on_kick_event(sd_event_source *s, void *userdata) {
        lock_client_dispatch(userdata);
        return 0;
}

static void lock_client_kick(void *userdata) {
        lock_client *c = userdata;

        (void) sd_event_source_set_enabled(c->kick_source, SD_EVENT_ONESHOT);
}

static gboolean on_notify_glib(gint fd, GIOCondition condition, gpointer userdata) {
        lock_client_dispatch(userdata);
        return G_SOURCE_CONTINUE;
}

int lock_client_start(ipchannel *ch) {
        lock_client **pc = channel_lock_client(ch), *c;
        const char *address;
        int r;

        if (*pc)
                return 0;
        r = channel_resolve_address(ch, &address);
        if (r < 0)
                return r;

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->loop_thread = pthread_self();
        c->pending = g_hash_table_new(NULL, NULL);
        r = lock_agent_new(&c->agent, address, channel_prefix(ch), ipchannel_get_app(ch));
        if (r < 0) {
                g_hash_table_unref(c->pending);
                free(c);
                return r;
        }

        if (channel_glib(ch)) {
                c->glib_source = g_unix_fd_source_new(lock_agent_get_notify_fd(c->agent), G_IO_IN);
                g_source_set_callback(c->glib_source, G_SOURCE_FUNC(on_notify_glib), ch, NULL);
                g_source_attach(c->glib_source, channel_glib(ch));
        } else {
                sd_event *e = ipchannel_get_event(ch);

                if (!e) {
                        r = sd_event_default(&e);
                        if (r < 0)
                                goto fail;
                        r = ipchannel_attach_event(ch, e, 0);
                        sd_event_unref(e);
                        if (r < 0)
                                goto fail;
                }
                r = sd_event_add_io(e, &c->event_source, lock_agent_get_notify_fd(c->agent), EPOLLIN,
                                    on_notify_event, ch);
                if (r < 0)
                        goto fail;
                r = sd_event_add_defer(e, &c->kick_source, on_kick_event, ch);
                if (r < 0)
                        goto fail;
                (void) sd_event_source_set_enabled(c->kick_source, SD_EVENT_OFF);
                lock_agent_set_kick(c->agent, lock_client_kick, c);
        }
        *pc = c;
        return 0;

fail:
        c->event_source = sd_event_source_disable_unref(c->event_source);
        c->kick_source = sd_event_source_disable_unref(c->kick_source);
        lock_agent_stop(c->agent);
        lock_agent_unref(c->agent);
        g_hash_table_unref(c->pending);
        free(c);
        return r;
}

void lock_client_free(ipchannel *ch) {
        lock_client **pc = channel_lock_client(ch), *c = *pc;
        GHashTableIter it;
        ipchannel_lock *l;

        if (!c)
                return;
        lock_agent_set_kick(c->agent, NULL, NULL);
        c->event_source = sd_event_source_disable_unref(c->event_source);
        c->kick_source = sd_event_source_disable_unref(c->kick_source);
        if (c->glib_source) {
                g_source_destroy(c->glib_source);
                g_source_unref(c->glib_source);
        }
        lock_agent_stop(c->agent);
        /* The agent has stopped: the requests the app never heard the end of go, and with
         * them their references on the agent. One whose body runs on (it has not released
         * yet) is the app's until ipchannel_lock_release(), which then lets it go. */
        g_hash_table_iter_init(&it, c->pending);
        while (g_hash_table_iter_next(&it, (void **) &l, NULL)) {
                g_hash_table_iter_remove(&it);
                l->ch = NULL;
                if (!l->body_ran || l->released)
                        lock_unref(l);
        }
        g_hash_table_unref(c->pending);
        lock_agent_unref(c->agent);
        free(c);
        *pc = NULL;
}

static int lock_request(ipchannel *ch, const char *name, ipchannel_lock **ret) {
        lock_client *c;
        ipchannel_lock *l;
        int r;

        r = lock_client_start(ch);
        if (r < 0)
                return r;
        c = *channel_lock_client(ch);
        l = lock_new(c->agent, name, channel_sync_timeout(ch));
        if (!l)
                return -ENOMEM;
        *ret = l;
        return 0;
}

_public_ int ipchannel_synchronize(ipchannel *ch, const char *lock, ipchannel_sync_body_t body,
                                   ipchannel_sync_done_t done, void *userdata) {
        ipchannel_lock *l;
        int r;

        assert_return(channel_check(ch), -EINVAL);
        assert_return(body, -EINVAL);
        r = names_check_lock(lock);
        if (r < 0)
                return r;

        r = lock_request(ch, lock, &l);
        if (r < 0)
                return r;
        l->ch = ch;
        l->async = true;
        l->body = body;
        l->done = done;
        l->userdata = userdata;
        r = lock_agent_submit(l->agent, l);
        if (r < 0) {
                lock_unref(l);  /* the callbacks never run */
                return r;
        }
        g_hash_table_add((*channel_lock_client(ch))->pending, l);
        return 0;
}

static gboolean wake_up(gpointer userdata) {
        return G_SOURCE_REMOVE;
}

/* True when called from a callback of the loop the channel runs on (which cannot nest). */
static bool in_own_loop_dispatch(ipchannel *ch) {
        sd_event *e = ipchannel_get_event(ch);
        int state;

        if (channel_glib(ch))
                return g_main_context_is_owner(channel_glib(ch)) && g_main_depth() > 0;
        if (!e)
                return false;
        state = sd_event_get_state(e);
        return state != SD_EVENT_INITIAL && state != SD_EVENT_FINISHED;
}

/* Whether this thread may run the channel's loop to wait (else it waits on the agent). */
static bool loop_runnable(ipchannel *ch) {
        sd_event *e = ipchannel_get_event(ch);

        if (channel_glib(ch))
                return true;
        return e && sd_event_get_state(e) == SD_EVENT_INITIAL;
}

_public_ int ipchannel_lock_acquire(ipchannel *ch, const char *lock, uint64_t timeout_usec,
                                    ipchannel_lock **ret) {
        uint64_t deadline, token;
        ipchannel_lock *l;
        lock_client *c;
        lock_state s;
        int r, error;

        assert_return(channel_check(ch), -EINVAL);
        assert_return(ret, -EINVAL);
        r = names_check_lock(lock);
        if (r < 0)
                return r;

        r = lock_request(ch, lock, &l);
        if (r < 0)
                return r;
        c = *channel_lock_client(ch);
        bool loop_thread = pthread_equal(c->loop_thread, pthread_self());
        if (loop_thread && in_own_loop_dispatch(ch)) {
                lock_unref(l);
                return -EBUSY;
        }

        r = lock_agent_submit(l->agent, l);
        if (r < 0) {
                lock_unref(l);
                return r;
        }

        /* On the loop's thread, a handler run by the loop below may let go of the app's last
         * reference: the channel is held, and the wait given up then. (Another thread does not
         * touch the channel's reference count; the app keeps it while it waits there.) */
        if (loop_thread)
                channel_hold(ch);

        deadline = timeout_usec == UINT64_MAX ? UINT64_MAX : clock_usec(CLOCK_MONOTONIC) + timeout_usec;
        for (;;) {
                s = lock_agent_get_state(c->agent, l, &token, &error);
                if (s != LOCK_NEW && s != LOCK_WAITING)
                        break;
                if (loop_thread && channel_let_go(ch))
                        break;
                uint64_t now = clock_usec(CLOCK_MONOTONIC);
                if (deadline != UINT64_MAX && now >= deadline)
                        break;
                uint64_t wait = deadline == UINT64_MAX ? UINT64_MAX : deadline - now;

                if (!loop_thread || !loop_runnable(ch))
                        lock_agent_wait(c->agent, l, deadline);
                else if (channel_glib(ch)) {
                        /* The notification source wakes the context; a timer bounds the wait. */
                        GSource *t = g_timeout_source_new((guint) MIN(wait / 1000 + 1, 1000));
                        g_source_set_callback(t, wake_up, NULL, NULL);
                        g_source_attach(t, channel_glib(ch));
                        g_main_context_iteration(channel_glib(ch), TRUE);
                        g_source_destroy(t);
                        g_source_unref(t);
                } else
                        (void) sd_event_run(ipchannel_get_event(ch), MIN(wait, 1000000ULL));
        }

        /* Handlers run by the loop above may have coalesced sends the loop would have sent
         * next time round; the caller may not run it again soon. (Its "error" handler may let
         * go of the channel too: before the check.) */
        if (loop_thread)
                channel_flush_sends(ch);

        if (loop_thread && channel_let_go(ch)) {
                /* Nobody is left to use the lock: give it up, and the channel goes. */
                if (s == LOCK_NEW || s == LOCK_WAITING)
                        lock_agent_cancel(c->agent, l);
                else if (s == LOCK_HELD || s == LOCK_EXPIRED)
                        lock_agent_release(c->agent, l);
                lock_unref(l);
                channel_release(ch);
                return -ECANCELED;
        }

        if (loop_thread)
                channel_release(ch);    /* the app still has its reference */

        if (s == LOCK_HELD) {
                *ret = l;
                return 0;
        }
        if (s == LOCK_NEW || s == LOCK_WAITING) {
                lock_agent_cancel(c->agent, l);
                error = -ETIMEDOUT;
        } else if (s == LOCK_EXPIRED) {
                /* Granted and lost before we saw it: take it off the agent's list. */
                lock_agent_release(c->agent, l);
                error = -ETIME;
        }
        lock_unref(l);
        return error < 0 ? error : -EIO;
}

_public_ int ipchannel_lock_release(ipchannel_lock *l, int error) {
        lock_state s;
        int e;

        assert_return(l, -EINVAL);
        assert_return(!l->released, -EALREADY);
        assert_return(!l->async || l->body_ran, -EINVAL);

        l->released = true;
        s = lock_agent_get_state(l->agent, l, NULL, &e);

        if (l->async && !l->ch) {
                /* Its channel went while the body ran: no "done" any more. */
                lock_agent_release(l->agent, l);
                lock_unref(l);          /* the app's reference */
                return s == LOCK_HELD ? 0 : -ETIME;
        }
        if (l->async) {
                /* synchronize(): "done" runs from the loop once the agent has released; it
                 * gets -ETIME if the grant was lost before this release. */
                l->done_pending = true;
                l->done_error = s == LOCK_HELD ? error : -ETIME;
                lock_agent_release(l->agent, l);
                return 0;
        }

        lock_agent_release(l->agent, l);
        lock_unref(l);          /* the caller's reference */
        return s == LOCK_HELD ? 0 : -ETIME;
}

_public_ int ipchannel_set_lock_limits(ipchannel *ch, uint32_t max_locks_per_connection,
                                      uint32_t max_waiters_per_lock) {
        int r;

        assert_return(channel_check(ch), -EINVAL);

        r = lock_client_start(ch);
        if (r < 0)
                return r;
        lock_agent_set_limits((*channel_lock_client(ch))->agent, max_locks_per_connection,
                              max_waiters_per_lock);
        return 0;
}

_public_ uint64_t ipchannel_lock_get_token(ipchannel_lock *l) {
        uint64_t token = 0;

        if (!l)
                return 0;
        if (lock_agent_get_state(l->agent, l, &token, NULL) != LOCK_HELD)
                return 0;
        return token;
}

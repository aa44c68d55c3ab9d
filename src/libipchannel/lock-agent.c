/* SPDX-License-Identifier: MIT */
/* The lock agent: a library-owned thread per channel that talks to the lock service. */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>

#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include "lock-agent.h"
#include "lock-service.h"
#include "lockqueue.h"
#include "macro.h"
#include "names.h"

/*
 * Threads and what they own:
 *
 * - The app's thread (the one that runs the channel's loop) owns the ipchannel and calls the
 *   public lock API. It hands requests to the agent through ops (under `mutex`, waking the
 *   agent through `wake_fd`) and learns of grants through the notification list (under
 *   `mutex`, signalled through `notify_fd`, which the channel's loop watches). Threads other
 *   than the app's may block in lock_agent_wait(), on `cond`.
 * - The agent's thread owns everything else here: its sd-event loop, its own bus connection,
 *   the lock service when this process hosts it, and the list of live requests.
 *
 * Why a thread: the lock service and this process's grants must not depend on the app running
 * its loop. An app that computes for a second, or blocks inside a section, still answers the
 * service: its holds are reported on a takeover, its lease expiry is heard, and when it hosts
 * the service every other process's locks keep moving.
 *
 * Invariants:
 * - Every agent is in the bus's queue for the service name before it sends any Acquire, so
 *   after a takeover the new host knows every connection that can hold a grant (the name's
 *   queued owners) and waits for each to report its holds (Reassert) or to disconnect.
 * - A grant counts only if the connection that sent it owns the service name when the grant
 *   is read: a grant from a host that has since lost the name is dropped and the request sent
 *   again. Replies and NameOwnerChanged arrive in the order the broker made them, so a grant
 *   read before the owner change is also in the Reassert this agent sends after it.
 * - At most one request per lock name is at the service at a time; other requests of this
 *   process for the same lock wait here, in order, and go to the service when the one before
 *   them is released (so other processes are not starved by one process's stream of requests).
 *
 * Grant caching. Grants come from AcquireCached and live in `grants` (under `mutex`), one per
 * lock name, from the grant until the service has it back. A grant is in use (`holder` set) or
 * parked (no holder: the local holder released and nobody else was known to wait). A request
 * of this process takes a parked grant without asking anyone: from the app's thread in
 * lock_agent_submit() when no earlier request of this process waits for the lock, else from
 * agent_pump() for the first one that waits. A re-take keeps the grant's token: tokens still
 * strictly increase from one holding process to the next, and the same token means the same
 * grant, never lost in between.
 * - Never two holders: a grant has one holder at a time (under `mutex`), and the service hands
 *   the lock to someone else only once we released it. A parked grant is released at once when
 *   the service calls us back (ReleaseRequested); a grant in use is marked contended and is
 *   released, not parked, at its local release. A grant whose reply says others wait is
 *   contended from the start. So a contended lock is never parked, and FIFO among processes is
 *   the service's FIFO.
 * - Leases cover active holding only. What the service was last told is `told_parked`: the
 *   agent thread tells it Park when a grant is parked and Resume (which restarts the lease)
 *   after a take, at most once per SYNC_INTERVAL_USEC, as one-way calls (no round trip on any
 *   path). While the service still runs a lease (not told parked) a grant is parked or re-taken
 *   locally only if that lease has more than a margin left, which covers the time for Park to
 *   reach the service; else it goes back to the service.
 * - Takeover: ReassertCached reports every grant, parked or in use (see agent_reassert()).
 *   When the connection closes, every grant ends with it, at the service as here.
 */

#define RECONNECT_USEC_MIN (50 * 1000ULL)
#define RECONNECT_USEC_MAX (5 * 1000 * 1000ULL)

#define DBUS_NAME_FLAG_ALLOW_REPLACEMENT 1u

/* How often, at most, the agent tells the service that grants were parked or taken again. */
#define SYNC_INTERVAL_USEC (1000ULL)
/* A lease that the service still runs must have this much left (at most half the lease) for a
 * grant to be parked or re-taken locally: Park must reach the service before it ends. */
#define PARK_MARGIN_USEC (50 * 1000ULL)

/* A grant this process holds from the service. Under the agent's mutex. */
typedef struct lock_grant {
        char *name;
        uint64_t token;
        uint64_t lease_usec;            /* 0: none */
        ipchannel_lock *holder;         /* NULL: parked; else holds a reference */
        bool contended;                 /* someone else waits: release at the local release */
        uint64_t n_takes, n_takes_told; /* local takes; how many the service heard of (Resume) */
        bool told_parked;               /* the service was last told Park: it runs no lease */
        uint64_t deadline;              /* else: the service's deadline, as we estimate it */
        uint64_t taken_at;              /* CLOCK_MONOTONIC of the last take */
} lock_grant;

static void lock_grant_free(void *p) {
        lock_grant *g = p;

        free(g->name);
        free(g);
}

struct lock_agent {
        unsigned n_ref;                 /* atomic */
        pthread_t thread;
        bool thread_started;
        /* The agent's thread holds it while it runs anything but its wait for events; the
         * app's thread may take it (trylock, before `mutex`) to send a Release on `bus`. */
        pthread_mutex_t bus_mutex;
        pthread_mutex_t mutex;
        pthread_cond_t cond;
        int wake_fd;
        int notify_fd;

        /* Under mutex. */
        bool quit;
        bool stopped;                   /* the thread is gone: no more ops */
        int error;                      /* sticky: why we could not join the service's queue */
        lock_op *ops, *ops_tail;
        GPtrArray *notifications;       /* ipchannel_lock *, each with a reference */
        GHashTable *grants;             /* lock name → lock_grant * */
        GHashTable *releasing;          /* lock name → Releases posted to the agent, not sent yet */
        GHashTable *n_waiting;          /* lock name → requests of ours waiting for it */
        bool sync_signalled;            /* grants changed; the agent will tell the service */
        bool notify_signalled;          /* notify_fd was written and not drained since */
        void (*kick)(void *userdata);   /* wakes the app's loop from inside its dispatch */
        void *kick_userdata;
        uint32_t max_locks, max_waiters;        /* for the service we host; 0: default */
        bool limits_changed;

        /* Agent thread only. */
        char *address;
        char *service_name;
        char *service_path;
        sd_event *event;
        sd_event_source *wake_source;
        sd_event_source *reconnect_source;
        uint64_t reconnect_usec;
        sd_bus *bus;
        sd_bus_slot *filter_slot, *noc_slot, *expired_slot, *request_slot, *owner_slot;
        sd_bus_slot *reassert_slot;
        sd_event_source *retry_source;  /* re-sends a failed Reassert, re-queues after a failure */
        sd_event_source *pump_source;   /* sends again what a host not yet serving turned away */
        sd_event_source *sync_source;   /* the next telling of parks and takes */
        uint64_t synced_at;
        sd_bus_slot *release_requested_slot;
        char *unique_name;
        char *host;                     /* owner of the service name; NULL if unknown/none */
        char *reasserted_to;            /* the host our last report went to */
        bool queued;                    /* we are in the service name's queue */
        lock_service *service;          /* while we own the service name */
        ipchannel_lock *locks;          /* live requests, oldest first */
        ipchannel_lock *locks_tail;
};

static void fd_signal(int fd) {
        uint64_t one = 1;

        (void) !write(fd, &one, sizeof(one));
}

static void fd_drain(int fd) {
        uint64_t v;

        (void) !read(fd, &v, sizeof(v));
}

/* The agent whose notifications the calling thread is dispatching from the app's loop. */
static __thread lock_agent *dispatching_agent;

/* Mutex held. Wakes the app's loop: from inside its own dispatch (the hot path of a re-take,
 * where a release or the next synchronize() happens in a body or "done") with the loop's
 * deferred event, without a syscall; from any other thread through notify_fd, once until the
 * loop drains it. */
static void agent_notify_locked(lock_agent *a) {
        if (a->kick && dispatching_agent == a)
                a->kick(a->kick_userdata);
        else if (!a->notify_signalled) {
                a->notify_signalled = true;
                fd_signal(a->notify_fd);
        }
}

/* ---- requests --------------------------------------------------------------------------- */

ipchannel_lock *lock_new(lock_agent *a, const char *name, uint64_t lease_usec) {
        ipchannel_lock *l = calloc(1, sizeof(*l));

        if (!l)
                return NULL;
        *l = (ipchannel_lock) {
                .n_ref = 1,
                .agent = lock_agent_ref(a),
                .name = strdup(name),
                .lease_usec = lease_usec,
                .state = LOCK_NEW,
        };
        for (unsigned k = 0; k < _OP_MAX; k++)
                l->ops[k] = (lock_op) { .kind = (lock_op_kind) k, .lock = l };
        if (!l->name) {
                lock_agent_unref(l->agent);
                free(l);
                return NULL;
        }
        return l;
}

static void lock_free(ipchannel_lock *l) {
        lock_agent_unref(l->agent);
        free(l->sent_to);
        free(l->name);
        free(l);
}

void lock_unref(ipchannel_lock *l) {
        lock_agent *a;
        bool last;

        if (!l)
                return;
        a = l->agent;
        pthread_mutex_lock(&a->mutex);
        last = --l->n_ref == 0;
        pthread_mutex_unlock(&a->mutex);
        if (last)
                lock_free(l);   /* may drop the agent's last reference: after the unlock */
}

static unsigned agent_n_waiting_locked(lock_agent *a, const char *name) {
        return GPOINTER_TO_UINT(g_hash_table_lookup(a->n_waiting, name));
}

static void agent_count_waiting_locked(lock_agent *a, ipchannel_lock *l, bool waiting) {
        unsigned n = agent_n_waiting_locked(a, l->name);

        if (waiting == l->counted)
                return;
        l->counted = waiting;
        n = waiting ? n + 1 : n - 1;
        if (n == 0)
                g_hash_table_remove(a->n_waiting, l->name);
        else
                g_hash_table_replace(a->n_waiting, g_strdup(l->name), GUINT_TO_POINTER(n));
}

/* Called with the mutex held. synchronize()'s requests go on the notification list, for the
 * app's loop; a blocking request only needs its waiter woken (wake: from the agent's thread,
 * where the waiter may be running the app's loop), if it waited. */
static void lock_change_locked(lock_agent *a, ipchannel_lock *l, lock_state state, uint64_t token,
                               int error, bool wake) {
        bool was_waiting = l->state == LOCK_NEW || l->state == LOCK_WAITING;

        if (state != LOCK_NEW && state != LOCK_WAITING)
                agent_count_waiting_locked(a, l, false);
        l->state = state;
        l->token = token;
        l->error = error;
        if (l->async) {
                /* The app's loop has nothing to do for a request that is still waiting: no
                 * wake-up for that. */
                if (!l->notified && !l->cancelled && state != LOCK_NEW && state != LOCK_WAITING) {
                        l->notified = true;
                        l->n_ref++;
                        g_ptr_array_add(a->notifications, l);
                        agent_notify_locked(a);
                }
        } else if (wake && was_waiting && !l->cancelled)
                agent_notify_locked(a);
        pthread_cond_broadcast(&a->cond);
}

static void lock_set_state_locked(lock_agent *a, ipchannel_lock *l, lock_state state, uint64_t token,
                                  int error) {
        lock_change_locked(a, l, state, token, error, true);
}

static void lock_set_state(lock_agent *a, ipchannel_lock *l, lock_state state, uint64_t token, int error) {
        pthread_mutex_lock(&a->mutex);
        lock_set_state_locked(a, l, state, token, error);
        pthread_mutex_unlock(&a->mutex);
}

static lock_state lock_get_state(lock_agent *a, ipchannel_lock *l, bool *ret_cancelled) {
        lock_state s;

        pthread_mutex_lock(&a->mutex);
        s = l->state;
        if (ret_cancelled)
                *ret_cancelled = l->cancelled;
        pthread_mutex_unlock(&a->mutex);
        return s;
}

static void agent_list_remove(lock_agent *a, ipchannel_lock *l) {
        if (l->agent_prev)
                l->agent_prev->agent_next = l->agent_next;
        else
                a->locks = l->agent_next;
        if (l->agent_next)
                l->agent_next->agent_prev = l->agent_prev;
        else
                a->locks_tail = l->agent_prev;
        l->agent_next = l->agent_prev = NULL;
        l->on_list = false;
        l->call_slot = sd_bus_slot_unref(l->call_slot);
        l->sent_to = (free(l->sent_to), NULL);
        lock_unref(l);          /* the agent's reference */
}

/* ---- grants ----------------------------------------------------------------------------- */

static uint64_t usec_add(uint64_t a, uint64_t b) {
        return b == 0 || a >= UINT64_MAX - b ? UINT64_MAX : a + b;
}

/* Mutex held. Asks the agent's thread to tell the service of parks and takes (and to look at
 * its waiting requests); one wake-up until it has done so. */
static void agent_request_sync_locked(lock_agent *a) {
        if (!a->sync_signalled && !a->stopped) {
                a->sync_signalled = true;
                fd_signal(a->wake_fd);
        }
}

/* Whether g may be parked, or taken again, at now: either the service runs no lease on it, or
 * that lease has more than the margin left. */
static bool grant_is_usable(const lock_grant *g, uint64_t now) {
        uint64_t margin;

        if (g->told_parked || g->lease_usec == 0 || g->deadline == UINT64_MAX)
                return true;
        margin = MIN(PARK_MARGIN_USEC, g->lease_usec / 2);
        return g->deadline > now && g->deadline - now > margin;
}

/* Mutex held. l takes the parked grant g; quiet: l's taker checks its state itself. */
static void grant_take_locked(lock_agent *a, lock_grant *g, ipchannel_lock *l, uint64_t now, bool quiet) {
        g->holder = l;
        l->n_ref++;             /* the grant's, dropped when it lets go of l */
        g->n_takes++;
        g->taken_at = now;
        lock_change_locked(a, l, LOCK_HELD, g->token, 0, !quiet);
        if (g->lease_usec != 0)
                agent_request_sync_locked(a);   /* Resume: the lease restarts */
}

/* Mutex held. The holder of g is done: g is parked, or, if someone else waits or its lease is
 * about to end, taken out of `grants`; then the token to release at the service is returned
 * (0 if parked). The caller drops g's reference on its former holder. */
static uint64_t grant_let_go_locked(lock_agent *a, lock_grant *g, uint64_t now) {
        uint64_t token = g->token;

        g->holder = NULL;
        if (!g->contended && grant_is_usable(g, now)) {
                if (g->lease_usec != 0 || agent_n_waiting_locked(a, g->name) > 0)
                        agent_request_sync_locked(a);   /* Park; or hand it to our next waiter */
                return 0;
        }
        g_hash_table_remove(a->grants, g->name);
        return token;
}

/* The service no longer counts our grant of name under token (0: any token): forget it, and
 * tell its holder, if any, that it is lost. */
static void agent_drop_grant(lock_agent *a, const char *name, uint64_t token, int error) {
        ipchannel_lock *holder = NULL;
        lock_grant *g;

        pthread_mutex_lock(&a->mutex);
        g = g_hash_table_lookup(a->grants, name);
        if (g && (token == 0 || g->token == token)) {
                holder = g->holder;
                if (holder)
                        lock_set_state_locked(a, holder, LOCK_EXPIRED, g->token, error);
                g_hash_table_remove(a->grants, name);
        }
        pthread_mutex_unlock(&a->mutex);
        if (holder)
                lock_unref(holder);
}

/* Every grant ends (the connection closed, or the agent stops). */
static void agent_drop_all_grants(lock_agent *a, int error) {
        g_autoptr(GPtrArray) holders = g_ptr_array_new();
        GHashTableIter it;
        lock_grant *g;

        pthread_mutex_lock(&a->mutex);
        g_hash_table_iter_init(&it, a->grants);
        while (g_hash_table_iter_next(&it, NULL, (void **) &g)) {
                if (g->holder) {
                        lock_set_state_locked(a, g->holder, LOCK_EXPIRED, g->token, error);
                        g_ptr_array_add(holders, g->holder);
                }
                g_hash_table_iter_remove(&it);
        }
        pthread_mutex_unlock(&a->mutex);
        for (guint i = 0; i < holders->len; i++)
                lock_unref(g_ptr_array_index(holders, i));
}

/* ---- talking to the service ------------------------------------------------------------- */

static void agent_pump(lock_agent *a);
static void agent_pump_later(lock_agent *a);
static void agent_apply_limits(lock_agent *a);
static void agent_lost(lock_agent *a);

/* Mutex held. A Release handed to the agent's thread is not at the service yet: until it is
 * sent, no request of ours for that lock may go out (the service would still see us holding
 * it, and refuse the Acquire as AlreadyHeld). */
static void releasing_add_locked(lock_agent *a, const char *name, int delta) {
        unsigned n = GPOINTER_TO_UINT(g_hash_table_lookup(a->releasing, name));

        n = delta > 0 ? n + 1 : n > 0 ? n - 1 : 0;
        if (n == 0)
                g_hash_table_remove(a->releasing, name);
        else
                g_hash_table_insert(a->releasing, g_strdup(name), GUINT_TO_POINTER(n));
}

static bool releasing_has(lock_agent *a, const char *name) {
        bool r;

        pthread_mutex_lock(&a->mutex);
        r = g_hash_table_contains(a->releasing, name);
        pthread_mutex_unlock(&a->mutex);
        return r;
}

static bool agent_ready(lock_agent *a) {
        return a->bus && a->queued && a->host && sd_bus_is_open(a->bus) > 0;
}

/* sd_bus_message_get_errno() knows only the errors mapped process-wide: the lock service's
 * named errors would all come out as -EIO. */
static int errno_of_reply(sd_bus_message *reply) {
        return lock_error_to_errno(sd_bus_message_get_error(reply)) ?: -EIO;
}

/* Release, Park, Resume: one-way calls, so that nobody waits for them and the service sends
 * nothing back. */
static void agent_send_oneway(lock_agent *a, const char *member, const char *name, uint64_t token) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;

        if (sd_bus_message_new_method_call(a->bus, &m, a->service_name, a->service_path,
                                           IPCHANNEL_LOCK_INTERFACE, member) < 0 ||
            sd_bus_message_set_expect_reply(m, false) < 0 || sd_bus_message_append(m, "st", name, token) < 0)
                return;
        (void) sd_bus_send(a->bus, m, NULL);
}

static void agent_send_release(lock_agent *a, const char *name, uint64_t token) {
        if (!agent_ready(a))
                return;     /* the grant went with the connection or the host anyway */
        agent_send_oneway(a, "Release", name, token);
}

/* Tells the service which grants were parked or taken again since last time. */
static void agent_sync(lock_agent *a) {
        typedef struct told {
                char *name;
                uint64_t token;
                bool park;
        } told;
        g_autoptr(GArray) out = g_array_new(FALSE, FALSE, sizeof(told));
        uint64_t now = clock_usec(CLOCK_MONOTONIC);
        GHashTableIter it;
        lock_grant *g;
        bool ready = agent_ready(a);

        a->synced_at = now;
        pthread_mutex_lock(&a->mutex);
        a->sync_signalled = false;
        g_hash_table_iter_init(&it, a->grants);
        while (ready && g_hash_table_iter_next(&it, NULL, (void **) &g)) {
                told t;

                if (g->lease_usec == 0)
                        continue;       /* no lease to stop or restart */
                if (!g->holder && !g->told_parked)
                        g->told_parked = true;
                else if (g->holder && (g->told_parked || g->n_takes != g->n_takes_told)) {
                        g->told_parked = false;
                        g->n_takes_told = g->n_takes;
                        g->deadline = usec_add(now, g->lease_usec);
                } else
                        continue;
                t = (told) { .name = strdup(g->name), .token = g->token, .park = g->told_parked };
                if (t.name)
                        g_array_append_val(out, t);
        }
        pthread_mutex_unlock(&a->mutex);
        /* Not ready: the report to the next host (agent_reassert) says it all. */
        for (guint i = 0; i < out->len; i++) {
                told *t = &g_array_index(out, told, i);

                agent_send_oneway(a, t->park ? "Park" : "Resume", t->name, t->token);
                free(t->name);
        }
}

static int on_sync(sd_event_source *s, uint64_t usec, void *userdata) {
        lock_agent *a = userdata;

        a->sync_source = sd_event_source_disable_unref(a->sync_source);
        agent_sync(a);
        agent_pump(a);
        return 0;
}

/* At most once per SYNC_INTERVAL_USEC: a stream of re-takes costs the bus little. */
static void agent_schedule_sync(lock_agent *a) {
        uint64_t now = clock_usec(CLOCK_MONOTONIC), next = usec_add(a->synced_at, SYNC_INTERVAL_USEC);

        if (a->sync_source)
                return;
        if (now >= next ||
            sd_event_add_time(a->event, &a->sync_source, CLOCK_MONOTONIC, next, 0, on_sync, a) < 0)
                agent_sync(a);
}

/* l's Acquire was answered: the grant is ours, in use by l. */
static void agent_grant_add(lock_agent *a, ipchannel_lock *l, uint64_t token, bool contended) {
        uint64_t now = clock_usec(CLOCK_MONOTONIC);
        lock_grant *g = malloc(sizeof(*g));

        if (g)
                *g = (lock_grant) {
                        .name = strdup(l->name),
                        .token = token,
                        .lease_usec = l->lease_usec,
                        .holder = l,
                        .contended = contended,
                        .n_takes = 1,
                        .n_takes_told = 1,
                        /* Read a little after the service made it: the margin covers that. */
                        .deadline = usec_add(now, l->lease_usec),
                        .taken_at = now,
                };
        if (!g || !g->name) {
                free(g);
                agent_send_release(a, l->name, token);
                lock_set_state(a, l, LOCK_FAILED, 0, -ENOMEM);
                agent_list_remove(a, l);
                agent_pump(a);
                return;
        }
        pthread_mutex_lock(&a->mutex);
        l->n_ref++;             /* the grant's */
        g_hash_table_replace(a->grants, g->name, g);
        lock_set_state_locked(a, l, LOCK_HELD, token, 0);
        pthread_mutex_unlock(&a->mutex);
        agent_list_remove(a, l);        /* held requests live in `grants` */
}

static int on_acquire_reply(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error) {
        ipchannel_lock *l = userdata;
        lock_agent *a = l->agent;
        const sd_bus_error *e;
        bool cancelled;
        uint64_t token;
        int contended;

        l->call_slot = sd_bus_slot_unref(l->call_slot);
        lock_get_state(a, l, &cancelled);

        g_autofree char *sent_to = TAKE_PTR(l->sent_to);

        e = sd_bus_message_get_error(reply);
        if (e) {
                if (cancelled || sd_bus_error_has_name(e, LOCK_ERROR_CANCELLED)) {
                        lock_set_state(a, l, LOCK_FAILED, 0, -ETIMEDOUT);
                        agent_list_remove(a, l);
                } else if (sd_bus_error_has_names(e, LOCK_ERROR_SERVICE_MOVED, SD_BUS_ERROR_NO_REPLY,
                                                  SD_BUS_ERROR_SERVICE_UNKNOWN,
                                                  SD_BUS_ERROR_NAME_HAS_NO_OWNER,
                                                  SD_BUS_ERROR_DISCONNECTED,
                                                  SD_BUS_ERROR_UNKNOWN_OBJECT,
                                                  SD_BUS_ERROR_UNKNOWN_METHOD)) {
                        /* The host went away, moved, or does not serve yet: the request stays,
                         * and goes to whoever serves next. If the owner change came before
                         * this reply, it went by while the call was out: send it now; else
                         * the change, or the reconnect, will. */
                        if (g_strcmp0(sent_to, a->host) != 0)
                                agent_pump(a);
                        else if (sd_bus_error_has_names(e, SD_BUS_ERROR_UNKNOWN_OBJECT,
                                                        SD_BUS_ERROR_UNKNOWN_METHOD))
                                /* The new host has the name but does not serve yet. */
                                agent_pump_later(a);
                } else {
                        lock_set_state(a, l, LOCK_FAILED, 0, errno_of_reply(reply));
                        agent_list_remove(a, l);
                        agent_pump(a);
                }
                return 0;
        }

        if (sd_bus_message_read(reply, "tb", &token, &contended) < 0) {
                lock_set_state(a, l, LOCK_FAILED, 0, -EBADMSG);
                agent_list_remove(a, l);
                agent_pump(a);
                return 0;
        }

        if (cancelled) {
                /* The app stopped waiting just before the grant came: give it back. */
                agent_send_release(a, l->name, token);
                lock_set_state(a, l, LOCK_FAILED, 0, -ETIMEDOUT);
                agent_list_remove(a, l);
                agent_pump(a);
                return 0;
        }
        if (!a->host || g_strcmp0(sd_bus_message_get_sender(reply), a->host) != 0) {
                /* Granted by a host that no longer owns the name: it does not count. */
                agent_pump(a);
                return 0;
        }

        agent_grant_add(a, l, token, contended);
        return 0;
}

static int on_pump_retry(sd_event_source *s, uint64_t usec, void *userdata) {
        lock_agent *a = userdata;

        a->pump_source = sd_event_source_unref(a->pump_source);
        agent_pump(a);
        return 0;
}

static void agent_pump_later(lock_agent *a) {
        if (!a->pump_source)
                (void) sd_event_add_time_relative(a->event, &a->pump_source, CLOCK_MONOTONIC, 50 * 1000, 0,
                                                  on_pump_retry, a);
}

static int agent_send_acquire(lock_agent *a, ipchannel_lock *l) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        sd_bus_slot *slot = NULL;
        int r;

        r = sd_bus_message_new_method_call(a->bus, &m, a->service_name, a->service_path,
                                           IPCHANNEL_LOCK_INTERFACE, "AcquireCached");
        if (r < 0)
                return r;
        r = sd_bus_message_append(m, "st", l->name, l->lease_usec);
        if (r < 0)
                return r;
        /* No timeout: the reply comes when the lock is granted, however long that takes. */
        r = sd_bus_call_async(a->bus, &slot, m, on_acquire_reply, l, UINT64_MAX);
        if (r < 0)
                return r;
        l->call_slot = slot;
        free(l->sent_to);
        l->sent_to = strdup(a->host);
        lock_set_state(a, l, LOCK_WAITING, 0, 0);
        return 0;
}

/* 1: l took our parked grant of its lock; -EBUSY: the grant is in use here; 0: we have none
 * (a parked one that may not be taken again is released first). */
static int agent_take_parked(lock_agent *a, ipchannel_lock *l) {
        uint64_t now = clock_usec(CLOCK_MONOTONIC), release = 0;
        lock_grant *g;
        int r = 0;

        pthread_mutex_lock(&a->mutex);
        g = g_hash_table_lookup(a->grants, l->name);
        if (g && g->holder)
                r = -EBUSY;
        else if (g && grant_is_usable(g, now)) {
                grant_take_locked(a, g, l, now, false);
                r = 1;
        } else if (g) {
                release = g->token;
                g_hash_table_remove(a->grants, l->name);
        }
        pthread_mutex_unlock(&a->mutex);
        if (release)
                agent_send_release(a, l->name, release);
        if (r > 0)
                agent_list_remove(a, l);
        return r;
}

/* Sends Acquire for every request that may go to the service now: the first live request for
 * each lock name, unless it is already there or held. */
static void agent_pump(lock_agent *a) {
        g_autoptr(GHashTable) busy = NULL;

        if (!agent_ready(a))
                return;
        /* Names copied: a request taken or released meanwhile by the app's thread may be freed
         * while this loop goes on (the mutex is dropped between requests). */
        busy = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);

        for (ipchannel_lock *l = a->locks, *next; l; l = next) {
                bool cancelled;
                lock_state s = lock_get_state(a, l, &cancelled);
                int r;

                next = l->agent_next;
                if (s == LOCK_EXPIRED)
                        continue;       /* no longer at the service */
                if (cancelled && !l->call_slot && s != LOCK_HELD) {
                        /* The app gave up while the request was between hosts. */
                        lock_set_state(a, l, LOCK_FAILED, 0, -ETIMEDOUT);
                        agent_list_remove(a, l);
                        continue;
                }
                if (g_hash_table_contains(busy, l->name))
                        continue;
                g_hash_table_add(busy, g_strdup(l->name));
                if (s == LOCK_HELD || l->call_slot || releasing_has(a, l->name))
                        continue;
                if (agent_take_parked(a, l) != 0)
                        continue;       /* taken, or in use here */

                r = agent_send_acquire(a, l);
                if (r == -ENOTCONN || r == -ECONNRESET)
                        return;         /* the bus is going: the reconnect sends it again */
                if (r < 0) {
                        lock_set_state(a, l, LOCK_FAILED, 0, r);
                        g_hash_table_remove(busy, l->name);
                        agent_list_remove(a, l);
                }
        }
}

static void agent_reassert(lock_agent *a);

static int on_retry_reassert(sd_event_source *s, uint64_t usec, void *userdata) {
        lock_agent *a = userdata;

        a->retry_source = sd_event_source_unref(a->retry_source);
        if (a->host && a->queued)
                agent_reassert(a);
        return 0;
}

static int on_reassert_reply(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error) {
        lock_agent *a = userdata;
        const char *name;

        a->reassert_slot = sd_bus_slot_unref(a->reassert_slot);
        if (sd_bus_message_is_method_error(reply, NULL)) {
                /* The host must hear from us before it grants anything: try again, unless the
                 * host changes meanwhile (then we report to the new one anyway). */
                if (!a->retry_source)
                        (void) sd_event_add_time_relative(a->event, &a->retry_source, CLOCK_MONOTONIC,
                                                          100 * 1000, 0, on_retry_reassert, a);
                return 0;
        }
        if (sd_bus_message_enter_container(reply, 'a', "s") < 0)
                return 0;
        /* The new host gave these to someone else first: our grants of them are void. */
        while (sd_bus_message_read_basic(reply, 's', &name) > 0)
                agent_drop_grant(a, name, 0, -ETIME);
        agent_pump(a);
        return 0;
}

/* Tells a (new) host what this process holds, so it can grant safely: every grant, parked or
 * in use (lock, token, lease left, full lease, parked). Sent on every owner change, also when
 * empty: the host waits for a report from every queued connection. */
static void agent_reassert(lock_agent *a) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        uint64_t now = clock_usec(CLOCK_MONOTONIC);
        GHashTableIter it;
        lock_grant *g;
        int r;

        r = sd_bus_message_new_method_call(a->bus, &m, a->service_name, a->service_path,
                                           IPCHANNEL_LOCK_INTERFACE, "ReassertCached");
        if (r < 0)
                return;
        r = sd_bus_message_open_container(m, 'a', "(stttb)");
        pthread_mutex_lock(&a->mutex);
        g_hash_table_iter_init(&it, a->grants);
        while (r >= 0 && g_hash_table_iter_next(&it, NULL, (void **) &g)) {
                bool parked = !g->holder;
                uint64_t left = 0;      /* 0: no lease (a parked grant runs none) */

                if (!parked && g->lease_usec != 0) {
                        /* From the last take, or what the old host runs if that is later: the
                         * new host's deadline is, if anything, later than the old one. */
                        uint64_t end = usec_add(g->taken_at, g->lease_usec);
                        if (!g->told_parked)
                                end = MAX(end, g->deadline);
                        left = end == UINT64_MAX ? 0 : MAX(end, now + 1) - now;
                }
                r = sd_bus_message_append(m, "(stttb)", g->name, g->token, left, g->lease_usec, (int) parked);
                /* What the new host believes from now on. */
                g->told_parked = parked;
                g->n_takes_told = g->n_takes;
                if (!parked)
                        g->deadline = left == 0 ? UINT64_MAX : now + left;
        }
        pthread_mutex_unlock(&a->mutex);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r < 0)
                return;
        /* Replaces a report still in flight to an earlier host. */
        a->reassert_slot = sd_bus_slot_unref(a->reassert_slot);
        (void) sd_bus_call_async(a->bus, &a->reassert_slot, m, on_reassert_reply, a, UINT64_MAX);
        free(a->reasserted_to);
        a->reasserted_to = strdup(a->host);
}

/* Once we are in the queue and know the host: report to it (once per host) and send what
 * waits. */
static void agent_host_known(lock_agent *a) {
        if (!a->host || !a->queued)
                return;
        if (g_strcmp0(a->reasserted_to, a->host) != 0)
                agent_reassert(a);
        agent_pump(a);
}

static int agent_request_name(lock_agent *a);

static int on_requeue(sd_event_source *s, uint64_t usec, void *userdata) {
        lock_agent *a = userdata;

        a->retry_source = sd_event_source_unref(a->retry_source);
        if (a->bus && agent_request_name(a) < 0)
                agent_lost(a);
        return 0;
}

static void agent_set_host(lock_agent *a, const char *host) {
        bool was_self, is_self;
        int r;

        if (host && host[0] == '\0')
                host = NULL;
        if (g_strcmp0(a->host, host) == 0)
                return;

        was_self = a->host && g_strcmp0(a->host, a->unique_name) == 0;
        is_self = host && g_strcmp0(host, a->unique_name) == 0;
        free(a->host);
        a->host = host ? strdup(host) : NULL;

        if (was_self && !is_self)
                a->service = lock_service_free(a->service);
        if (is_self && !a->service) {
                r = lock_service_new(&a->service, a->bus, a->service_path, a->service_name, true);
                if (r >= 0)
                        agent_apply_limits(a);
                if (r < 0) {
                        /* Holding the name without serving it would stall everyone: give it to
                         * the next in the queue, and queue again a little later. */
                        fprintf(stderr, "ipchannel: cannot serve the lock service: %s\n", strerror(-r));
                        (void) sd_bus_call_method_async(a->bus, NULL, "org.freedesktop.DBus",
                                                        "/org/freedesktop/DBus", "org.freedesktop.DBus",
                                                        "ReleaseName", NULL, NULL, "s", a->service_name);
                        a->queued = false;
                        a->retry_source = sd_event_source_disable_unref(a->retry_source);
                        (void) sd_event_add_time_relative(a->event, &a->retry_source, CLOCK_MONOTONIC,
                                                          1000 * 1000, 0, on_requeue, a);
                        return;
                }
        }

        agent_host_known(a);
}

static int on_lock_name_owner_changed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        lock_agent *a = userdata;
        const char *name, *old_owner, *new_owner;

        if (sd_bus_message_read(m, "sss", &name, &old_owner, &new_owner) < 0)
                return 0;
        if (strcmp(name, a->service_name) == 0)
                agent_set_host(a, new_owner);
        return 0;
}

static int on_lease_expired(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        lock_agent *a = userdata;
        const char *name;
        uint64_t token;

        if (!a->host || g_strcmp0(sd_bus_message_get_sender(m), a->host) != 0)
                return 0;       /* only the current host speaks for the leases */
        if (sd_bus_message_read(m, "st", &name, &token) < 0 || token == 0)
                return 0;
        agent_drop_grant(a, name, token, -ETIME);
        agent_pump(a);
        return 0;
}

/* Someone else waits for a lock we hold: give it back now if parked, else at the local release. */
static int on_release_requested(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        lock_agent *a = userdata;
        const char *name;
        uint64_t token, release = 0;
        lock_grant *g;

        if (!a->host || g_strcmp0(sd_bus_message_get_sender(m), a->host) != 0)
                return 0;
        if (sd_bus_message_read(m, "st", &name, &token) < 0)
                return 0;
        pthread_mutex_lock(&a->mutex);
        g = g_hash_table_lookup(a->grants, name);
        if (g && g->token == token) {
                if (g->holder)
                        g->contended = true;
                else {
                        release = token;
                        g_hash_table_remove(a->grants, name);
                }
        }
        pthread_mutex_unlock(&a->mutex);
        if (release) {
                agent_send_release(a, name, release);
                agent_pump(a);
        }
        return 0;
}

static int on_get_owner_reply(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error) {
        lock_agent *a = userdata;
        const char *owner = NULL;

        a->owner_slot = sd_bus_slot_unref(a->owner_slot);
        if (!sd_bus_message_is_method_error(reply, NULL))
                (void) sd_bus_message_read(reply, "s", &owner);
        /* NameOwnerChanged may have told us already; the reply is as recent as what came first. */
        agent_set_host(a, owner);
        agent_host_known(a);
        return 0;
}

static int on_request_name_reply(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error) {
        lock_agent *a = userdata;
        const sd_bus_error *e = sd_bus_message_get_error(reply);

        a->request_slot = sd_bus_slot_unref(a->request_slot);
        if (e) {
                /* Without a place in the queue we may not ask for locks (see the invariants);
                 * most likely the bus's policy forbids it, which will not change: say so to
                 * every request, now and later. */
                int error = errno_of_reply(reply);

                fprintf(stderr, "ipchannel: cannot queue for %s: %s\n", a->service_name,
                        e->message ?: e->name);
                pthread_mutex_lock(&a->mutex);
                a->error = error;
                pthread_mutex_unlock(&a->mutex);
                for (ipchannel_lock *l = a->locks, *next; l; l = next) {
                        next = l->agent_next;
                        lock_set_state(a, l, LOCK_FAILED, 0, error);
                        agent_list_remove(a, l);
                }
                return 0;
        }
        a->queued = true;
        (void) sd_bus_call_method_async(a->bus, &a->owner_slot, "org.freedesktop.DBus",
                                        "/org/freedesktop/DBus", "org.freedesktop.DBus", "GetNameOwner",
                                        on_get_owner_reply, a, "s", a->service_name);
        return 0;
}

/* ---- the connection --------------------------------------------------------------------- */

static int agent_connect(lock_agent *a);

static int on_reconnect(sd_event_source *s, uint64_t usec, void *userdata) {
        lock_agent *a = userdata;

        a->reconnect_source = sd_event_source_unref(a->reconnect_source);
        if (agent_connect(a) < 0) {
                uint64_t delay = a->reconnect_usec;

                a->reconnect_usec = MIN(MAX(delay * 2, RECONNECT_USEC_MIN), RECONNECT_USEC_MAX);
                (void) sd_event_add_time_relative(a->event, &a->reconnect_source, CLOCK_MONOTONIC,
                                                  a->reconnect_usec, 0, on_reconnect, a);
        }
        return 0;
}

static void agent_disconnect(lock_agent *a) {
        a->service = lock_service_free(a->service);
        for (ipchannel_lock *l = a->locks; l; l = l->agent_next)
                l->call_slot = sd_bus_slot_unref(l->call_slot);
        a->filter_slot = sd_bus_slot_unref(a->filter_slot);
        a->noc_slot = sd_bus_slot_unref(a->noc_slot);
        a->expired_slot = sd_bus_slot_unref(a->expired_slot);
        a->release_requested_slot = sd_bus_slot_unref(a->release_requested_slot);
        a->request_slot = sd_bus_slot_unref(a->request_slot);
        a->owner_slot = sd_bus_slot_unref(a->owner_slot);
        a->reassert_slot = sd_bus_slot_unref(a->reassert_slot);
        a->retry_source = sd_event_source_disable_unref(a->retry_source);
        a->pump_source = sd_event_source_disable_unref(a->pump_source);
        a->reasserted_to = (free(a->reasserted_to), NULL);
        if (a->bus) {
                (void) sd_bus_detach_event(a->bus);
                a->bus = sd_bus_flush_close_unref(a->bus);
        }
        a->host = (free(a->host), NULL);
        a->unique_name = (free(a->unique_name), NULL);
        a->queued = false;
}

static void agent_lost(lock_agent *a) {
        agent_disconnect(a);

        /* The grants went with the connection: the service released them when it closed. */
        agent_drop_all_grants(a, -ECONNRESET);

        a->reconnect_usec = RECONNECT_USEC_MIN;
        a->reconnect_source = sd_event_source_disable_unref(a->reconnect_source);
        (void) sd_event_add_time_relative(a->event, &a->reconnect_source, CLOCK_MONOTONIC,
                                          a->reconnect_usec, 0, on_reconnect, a);
}

static int on_filter(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        lock_agent *a = userdata;

        if (sd_bus_message_is_signal(m, "org.freedesktop.DBus.Local", "Disconnected"))
                agent_lost(a);
        return 0;
}

/* Queues for the service name, allowing replacement so that ipchannel-lockd can take over. */
static int agent_request_name(lock_agent *a) {
        a->request_slot = sd_bus_slot_unref(a->request_slot);
        return sd_bus_call_method_async(a->bus, &a->request_slot, "org.freedesktop.DBus",
                                        "/org/freedesktop/DBus", "org.freedesktop.DBus", "RequestName",
                                        on_request_name_reply, a, "su", a->service_name,
                                        DBUS_NAME_FLAG_ALLOW_REPLACEMENT);
}

static int agent_connect(lock_agent *a) {
        _cleanup_(sd_bus_unrefp) sd_bus *bus = NULL;
        g_autofree char *noc = NULL, *expired = NULL, *requested = NULL;
        const char *u;
        int r;

        r = sd_bus_new(&bus);
        if (r < 0)
                return r;
        r = sd_bus_set_address(bus, a->address);
        if (r < 0)
                return r;
        (void) sd_bus_set_bus_client(bus, true);
        (void) sd_bus_set_description(bus, "ipchannel-locks");
        r = sd_bus_start(bus);
        if (r < 0)
                return r;
        r = sd_bus_attach_event(bus, a->event, 0);
        if (r < 0)
                return r;
        a->bus = TAKE_PTR(bus);

        r = sd_bus_add_filter(a->bus, &a->filter_slot, on_filter, a);
        if (r < 0)
                goto fail;
        noc = names_owner_changed_match(a->service_name, false);
        r = sd_bus_add_match_async(a->bus, &a->noc_slot, noc, on_lock_name_owner_changed, NULL, a);
        if (r < 0)
                goto fail;
        expired = g_strdup_printf("type='signal',interface='" IPCHANNEL_LOCK_INTERFACE "',"
                                  "member='LeaseExpired',path='%s'", a->service_path);
        r = sd_bus_add_match_async(a->bus, &a->expired_slot, expired, on_lease_expired, NULL, a);
        if (r < 0)
                goto fail;
        requested = g_strdup_printf("type='signal',interface='" IPCHANNEL_LOCK_INTERFACE "',"
                                    "member='ReleaseRequested',path='%s'", a->service_path);
        r = sd_bus_add_match_async(a->bus, &a->release_requested_slot, requested, on_release_requested, NULL, a);
        if (r < 0)
                goto fail;
        r = agent_request_name(a);
        if (r < 0)
                goto fail;
        /* Blocks until Hello is answered; the agent's thread can afford it. */
        r = sd_bus_get_unique_name(a->bus, &u);
        if (r < 0)
                goto fail;
        a->unique_name = strdup(u);
        if (!a->unique_name) {
                r = -ENOMEM;
                goto fail;
        }
        return 0;

fail:
        agent_disconnect(a);
        return r;
}

/* ---- ops from the app ------------------------------------------------------------------- */

static void agent_do_op(lock_agent *a, lock_op *o) {
        ipchannel_lock *l = o->lock;
        uint64_t token;
        int error;

        switch (o->kind) {
        case OP_SUBMIT:
                l->agent_prev = a->locks_tail;
                l->agent_next = NULL;
                if (a->locks_tail)
                        a->locks_tail->agent_next = l;
                else
                        a->locks = l;
                a->locks_tail = l;
                l->on_list = true;
                l = NULL;       /* the op's reference is now the list's */
                break;

        case OP_RELEASE: {
                uint64_t release;

                /* A grant someone else waits for, handed back by lock_agent_release(); else the
                 * request is no longer ours (failed, expired): the app's "done" waits for
                 * RELEASED anyway. */
                pthread_mutex_lock(&a->mutex);
                release = l->release_token;
                l->release_token = 0;
                if (release != 0)
                        releasing_add_locked(a, l->name, -1);
                if (l->state != LOCK_RELEASED)
                        lock_set_state_locked(a, l, LOCK_RELEASED, l->token, 0);
                pthread_mutex_unlock(&a->mutex);
                if (release)
                        agent_send_release(a, l->name, release);
                if (l->on_list)
                        agent_list_remove(a, l);
                break;
        }

        case OP_CANCEL:
                if (lock_agent_get_state(a, l, &token, &error) == LOCK_HELD) {
                        /* Granted just before the app gave up: let go of it as a release would. */
                        uint64_t release = 0;
                        ipchannel_lock *unref = NULL;
                        lock_grant *g;

                        pthread_mutex_lock(&a->mutex);
                        g = g_hash_table_lookup(a->grants, l->name);
                        if (g && g->holder == l) {
                                release = grant_let_go_locked(a, g, clock_usec(CLOCK_MONOTONIC));
                                unref = l;
                        }
                        lock_set_state_locked(a, l, LOCK_FAILED, 0, -ETIMEDOUT);
                        pthread_mutex_unlock(&a->mutex);
                        if (release)
                                agent_send_release(a, l->name, release);
                        if (unref)
                                lock_unref(unref);
                        if (l->on_list)
                                agent_list_remove(a, l);
                        break;
                }
                if (!l->on_list)
                        break;
                switch (lock_agent_get_state(a, l, &token, &error)) {
                case LOCK_EXPIRED:
                case LOCK_NEW:
                        lock_set_state(a, l, LOCK_FAILED, 0, -ETIMEDOUT);
                        agent_list_remove(a, l);
                        break;
                case LOCK_WAITING:
                        if (l->call_slot && agent_ready(a))
                                /* The service answers the pending Acquire with Cancelled. */
                                (void) sd_bus_call_method_async(a->bus, NULL, a->service_name,
                                                                a->service_path,
                                                                IPCHANNEL_LOCK_INTERFACE, "Cancel",
                                                                NULL, NULL, "s", l->name);
                        else {
                                lock_set_state(a, l, LOCK_FAILED, 0, -ETIMEDOUT);
                                agent_list_remove(a, l);
                        }
                        break;
                default:
                        break;
                }
                break;

        default:
                break;
        }
        if (l)
                lock_unref(l);  /* the op's reference */
        agent_pump(a);
}

/* The limits the app set, on the service we host. */
static void agent_apply_limits(lock_agent *a) {
        uint32_t locks, waiters;

        pthread_mutex_lock(&a->mutex);
        locks = a->max_locks;
        waiters = a->max_waiters;
        a->limits_changed = false;
        pthread_mutex_unlock(&a->mutex);
        if (a->service)
                (void) lock_service_set_limits(a->service, locks ?: LOCKQUEUE_MAX_LOCKS_PER_OWNER_DEFAULT,
                                               waiters ?: LOCKQUEUE_MAX_WAITERS_PER_LOCK_DEFAULT);
}

static int on_wake(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        lock_agent *a = userdata;
        lock_op *ops;
        bool quit;

        bool sync, limits;

        fd_drain(a->wake_fd);
        pthread_mutex_lock(&a->mutex);
        ops = a->ops;
        a->ops = a->ops_tail = NULL;
        for (lock_op *o = ops; o; o = o->next)
                o->posted = false;
        quit = a->quit;
        sync = a->sync_signalled;
        limits = a->limits_changed;
        pthread_mutex_unlock(&a->mutex);

        if (limits)
                agent_apply_limits(a);
        while (ops) {
                lock_op *o = ops;
                ops = o->next;
                o->next = NULL;
                agent_do_op(a, o);
        }
        if (sync) {
                agent_pump(a);  /* a parked grant may go to a request of ours that waits */
                agent_schedule_sync(a);
        }
        if (quit)
                sd_event_exit(a->event, 0);
        return 0;
}

/* sd_event_loop(), with bus_mutex held except while waiting. */
static void agent_run(lock_agent *a) {
        for (;;) {
                bool finished;
                int r;

                pthread_mutex_lock(&a->bus_mutex);
                r = sd_event_prepare(a->event);
                if (r == 0) {
                        pthread_mutex_unlock(&a->bus_mutex);
                        r = sd_event_wait(a->event, UINT64_MAX);
                        pthread_mutex_lock(&a->bus_mutex);
                }
                if (r > 0)
                        r = sd_event_dispatch(a->event);
                finished = r < 0 || sd_event_get_state(a->event) == SD_EVENT_FINISHED;
                pthread_mutex_unlock(&a->bus_mutex);
                if (finished)
                        return;
        }
}

static void *agent_thread(void *userdata) {
        lock_agent *a = userdata;

        pthread_mutex_lock(&a->bus_mutex);
        if (agent_connect(a) < 0) {
                a->reconnect_usec = RECONNECT_USEC_MIN;
                (void) sd_event_add_time_relative(a->event, &a->reconnect_source, CLOCK_MONOTONIC,
                                                  a->reconnect_usec, 0, on_reconnect, a);
        }
        pthread_mutex_unlock(&a->bus_mutex);
        agent_run(a);

        /* From here on the app's ops are refused; those already posted are answered. */
        pthread_mutex_lock(&a->mutex);
        a->stopped = true;
        lock_op *ops = a->ops;
        a->ops = a->ops_tail = NULL;
        pthread_mutex_unlock(&a->mutex);
        pthread_mutex_lock(&a->bus_mutex);
        agent_disconnect(a);
        pthread_mutex_unlock(&a->bus_mutex);
        while (ops) {
                lock_op *o = ops;
                ops = o->next;
                o->next = NULL;
                o->posted = false;
                if (o->kind == OP_SUBMIT)
                        lock_set_state(a, o->lock, LOCK_FAILED, 0, -ECONNRESET);
                else if (o->kind == OP_RELEASE)
                        lock_set_state(a, o->lock, LOCK_RELEASED, 0, 0);
                lock_unref(o->lock);
        }
        while (a->locks) {
                ipchannel_lock *l = a->locks;
                lock_set_state(a, l, LOCK_FAILED, 0, -ECONNRESET);
                agent_list_remove(a, l);
        }
        agent_drop_all_grants(a, -ECONNRESET);
        return NULL;
}

/* ---- the app's side --------------------------------------------------------------------- */

int lock_agent_new(lock_agent **ret, const char *address, const char *prefix, const char *app) {
        lock_agent *a;
        int r;

        a = calloc(1, sizeof(*a));
        if (!a)
                return -ENOMEM;
        *a = (lock_agent) {
                .n_ref = 1,
                .wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK),
                .notify_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK),
                .notifications = g_ptr_array_new(),
                .grants = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, lock_grant_free),
                .releasing = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL),
                .n_waiting = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL),
                .address = strdup(address),
                .service_name = names_locks(prefix, app),
                .service_path = names_locks_path(prefix, app),
        };
        pthread_mutex_init(&a->bus_mutex, NULL);
        pthread_mutex_init(&a->mutex, NULL);
        pthread_cond_init(&a->cond, NULL);
        if (a->wake_fd < 0 || a->notify_fd < 0 || !a->address || !a->service_name || !a->service_path) {
                r = a->wake_fd < 0 || a->notify_fd < 0 ? -errno : -ENOMEM;
                goto fail;
        }

        r = sd_event_new(&a->event);
        if (r < 0)
                goto fail;
        r = sd_event_add_io(a->event, &a->wake_source, a->wake_fd, EPOLLIN, on_wake, a);
        if (r < 0)
                goto fail;

        r = -pthread_create(&a->thread, NULL, agent_thread, a);
        if (r < 0)
                goto fail;
        a->thread_started = true;
        *ret = a;
        return 0;

fail:
        lock_agent_unref(a);
        return r;
}

void lock_agent_stop(lock_agent *a) {
        g_autoptr(GPtrArray) left = NULL;

        if (a->thread_started && !a->stopped) {
                pthread_mutex_lock(&a->mutex);
                a->quit = true;
                pthread_mutex_unlock(&a->mutex);
                fd_signal(a->wake_fd);
                pthread_join(a->thread, NULL);
        }
        pthread_mutex_lock(&a->mutex);
        a->stopped = true;
        pthread_mutex_unlock(&a->mutex);

        /* Nobody will dispatch these any more. */
        left = lock_agent_take_notifications(a);
        for (guint i = 0; left && i < left->len; i++)
                lock_unref(g_ptr_array_index(left, i));
}

/* Every request and every op or notification about one holds a reference on the agent
 * through its request, so by now there are none; lock_agent_stop() has joined the thread. */
static void agent_free(lock_agent *a) {
        lock_agent_stop(a);
        if (a->notifications)
                g_ptr_array_unref(a->notifications);
        if (a->grants)
                g_hash_table_unref(a->grants);
        if (a->releasing)
                g_hash_table_unref(a->releasing);
        if (a->n_waiting)
                g_hash_table_unref(a->n_waiting);
        sd_event_source_disable_unref(a->sync_source);

        sd_event_source_disable_unref(a->wake_source);
        sd_event_source_disable_unref(a->reconnect_source);
        sd_event_unref(a->event);
        safe_close(a->wake_fd);
        safe_close(a->notify_fd);
        pthread_mutex_destroy(&a->bus_mutex);
        pthread_mutex_destroy(&a->mutex);
        pthread_cond_destroy(&a->cond);
        free(a->address);
        free(a->service_name);
        free(a->service_path);
        free(a);
}

lock_agent *lock_agent_ref(lock_agent *a) {
        if (a)
                __atomic_add_fetch(&a->n_ref, 1, __ATOMIC_RELAXED);
        return a;
}

lock_agent *lock_agent_unref(lock_agent *a) {
        if (a && __atomic_sub_fetch(&a->n_ref, 1, __ATOMIC_ACQ_REL) == 0)
                agent_free(a);
        return NULL;
}

int lock_agent_get_notify_fd(lock_agent *a) {
        return a->notify_fd;
}

GPtrArray *lock_agent_take_notifications(lock_agent *a) {
        GPtrArray *taken = NULL;

        pthread_mutex_lock(&a->mutex);
        if (a->notify_signalled) {
                a->notify_signalled = false;
                fd_drain(a->notify_fd);
        }
        if (a->notifications->len > 0) {
                taken = a->notifications;
                a->notifications = g_ptr_array_new();
                for (guint i = 0; i < taken->len; i++)
                        ((ipchannel_lock *) g_ptr_array_index(taken, i))->notified = false;
        }
        pthread_mutex_unlock(&a->mutex);
        return taken;
}

static int agent_post_locked(lock_agent *a, lock_op_kind kind, ipchannel_lock *l) {
        lock_op *o = &l->ops[kind];
        int r = 0;

        if (a->stopped)
                r = -ECONNRESET;        /* the channel is gone; so are its grants */
        else if (kind == OP_SUBMIT && a->error < 0)
                r = a->error;
        else if (!o->posted) {
                o->posted = true;
                o->next = NULL;
                l->n_ref++;
                if (kind == OP_CANCEL)
                        l->cancelled = true;
                if (a->ops_tail)
                        a->ops_tail->next = o;
                else
                        a->ops = o;
                a->ops_tail = o;
        }
        if (r == 0)
                fd_signal(a->wake_fd);
        return r;
}

static int agent_post(lock_agent *a, lock_op_kind kind, ipchannel_lock *l) {
        int r;

        pthread_mutex_lock(&a->mutex);
        r = agent_post_locked(a, kind, l);
        pthread_mutex_unlock(&a->mutex);
        return r;
}

int lock_agent_submit(lock_agent *a, ipchannel_lock *l) {
        lock_grant *g = NULL;
        uint64_t now;
        int r = 0;

        pthread_mutex_lock(&a->mutex);
        if (!a->stopped && a->error >= 0 && agent_n_waiting_locked(a, l->name) == 0)
                g = g_hash_table_lookup(a->grants, l->name);
        if (g && !g->holder && grant_is_usable(g, now = clock_usec(CLOCK_MONOTONIC)))
                /* The re-take: no bus, no agent thread. */
                grant_take_locked(a, g, l, now, true);
        else {
                r = agent_post_locked(a, OP_SUBMIT, l);
                if (r >= 0)
                        agent_count_waiting_locked(a, l, true);
        }
        pthread_mutex_unlock(&a->mutex);
        return r;
}

void lock_agent_release(lock_agent *a, ipchannel_lock *l) {
        lock_grant *g;
        bool let_go = false, direct;

        /* A grant someone else waits for goes back from this thread, on the agent's bus, if
         * the agent's thread is waiting for events (then it does not hold bus_mutex, which it
         * holds whenever it uses the bus): the next holder does not wait for that thread to
         * wake up. If it is busy, it is awake anyway: the Release is posted to it. A parked
         * grant needs neither. */
        pthread_mutex_lock(&a->mutex);
        g = g_hash_table_lookup(a->grants, l->name);
        direct = g && g->holder == l && (g->contended || !grant_is_usable(g, clock_usec(CLOCK_MONOTONIC)));
        pthread_mutex_unlock(&a->mutex);
        if (direct && pthread_mutex_trylock(&a->bus_mutex) != 0)
                direct = false;

        pthread_mutex_lock(&a->mutex);
        g = g_hash_table_lookup(a->grants, l->name);
        if (g && g->holder == l) {
                uint64_t token = g->token, release;

                let_go = true;
                release = grant_let_go_locked(a, g, clock_usec(CLOCK_MONOTONIC));
                if (release != 0 && direct && agent_ready(a)) {
                        uint64_t queued = 0;

                        agent_send_release(a, l->name, release);
                        if (sd_bus_get_n_queued_write(a->bus, &queued) >= 0 && queued > 0)
                                fd_signal(a->wake_fd);  /* the agent's loop must wait to write */
                        if (agent_n_waiting_locked(a, l->name) > 0)
                                agent_request_sync_locked(a);   /* our next request may ask now */
                        release = 0;
                }
                l->release_token = release;
                if (release != 0)
                        releasing_add_locked(a, l->name, +1);
                lock_set_state_locked(a, l, LOCK_RELEASED, token, 0);
                l->n_ref--;     /* the grant's; the caller still holds its own */
        }
        /* Sent, or posted, under the mutex, so that a Release goes out before any later
         * Acquire of ours. */
        if (!let_go || l->release_token != 0)
                (void) agent_post_locked(a, OP_RELEASE, l);
        pthread_mutex_unlock(&a->mutex);
        if (direct)
                pthread_mutex_unlock(&a->bus_mutex);
}

void lock_agent_set_kick(lock_agent *a, void (*kick)(void *userdata), void *userdata) {
        pthread_mutex_lock(&a->mutex);
        a->kick = kick;
        a->kick_userdata = userdata;
        pthread_mutex_unlock(&a->mutex);
}

void lock_agent_set_dispatching(lock_agent *a, bool dispatching) {
        dispatching_agent = dispatching ? a : NULL;
}

void lock_agent_cancel(lock_agent *a, ipchannel_lock *l) {
        (void) agent_post(a, OP_CANCEL, l);
}

void lock_agent_set_limits(lock_agent *a, uint32_t max_locks_per_connection, uint32_t max_waiters_per_lock) {
        pthread_mutex_lock(&a->mutex);
        a->max_locks = max_locks_per_connection;
        a->max_waiters = max_waiters_per_lock;
        a->limits_changed = true;
        if (!a->stopped)
                fd_signal(a->wake_fd);
        pthread_mutex_unlock(&a->mutex);
}

void lock_agent_wait(lock_agent *a, ipchannel_lock *l, uint64_t deadline) {
        struct timespec ts;
        uint64_t real;

        /* pthread_cond_timedwait() takes CLOCK_REALTIME; convert the monotonic deadline. */
        pthread_mutex_lock(&a->mutex);
        while (l->state == LOCK_NEW || l->state == LOCK_WAITING) {
                uint64_t now = clock_usec(CLOCK_MONOTONIC);
                if (deadline != UINT64_MAX && now >= deadline)
                        break;
                clock_gettime(CLOCK_REALTIME, &ts);
                real = (uint64_t) ts.tv_sec * 1000000ULL + (uint64_t) ts.tv_nsec / 1000 +
                       (deadline == UINT64_MAX ? 1000000ULL : MIN(deadline - now, 1000000ULL));
                ts.tv_sec = (time_t) (real / 1000000ULL);
                ts.tv_nsec = (long) (real % 1000000ULL) * 1000;
                pthread_cond_timedwait(&a->cond, &a->mutex, &ts);
        }
        pthread_mutex_unlock(&a->mutex);
}

lock_state lock_agent_get_state(lock_agent *a, ipchannel_lock *l, uint64_t *ret_token, int *ret_error) {
        lock_state s;

        pthread_mutex_lock(&a->mutex);
        s = l->state;
        if (ret_token)
                *ret_token = l->token;
        if (ret_error)
                *ret_error = l->error;
        pthread_mutex_unlock(&a->mutex);
        return s;
}

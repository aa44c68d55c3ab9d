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
 */

#define RECONNECT_USEC_MIN (50 * 1000ULL)
#define RECONNECT_USEC_MAX (5 * 1000 * 1000ULL)

#define DBUS_NAME_FLAG_ALLOW_REPLACEMENT 1u

struct lock_agent {
        unsigned n_ref;                 /* atomic */
        pthread_t thread;
        bool thread_started;
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

/* Called with the mutex held. */
static void lock_set_state_locked(lock_agent *a, ipchannel_lock *l, lock_state state, uint64_t token,
                                  int error) {
        l->state = state;
        l->token = token;
        l->error = error;
        if (!l->notified && !l->cancelled) {
                l->notified = true;
                l->n_ref++;
                g_ptr_array_add(a->notifications, l);
                fd_signal(a->notify_fd);
        }
        pthread_cond_broadcast(&a->cond);
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

/* ---- talking to the service ------------------------------------------------------------- */

static void agent_pump(lock_agent *a);
static void agent_pump_later(lock_agent *a);
static void agent_lost(lock_agent *a);

static bool agent_ready(lock_agent *a) {
        return a->bus && a->queued && a->host && sd_bus_is_open(a->bus) > 0;
}

static int errno_of_reply(sd_bus_message *reply) {
        int r = sd_bus_message_get_errno(reply);
        return r > 0 ? -r : -EIO;
}

static void agent_send_release(lock_agent *a, const char *name, uint64_t token) {
        if (!agent_ready(a))
                return;     /* the grant went with the connection or the host anyway */
        (void) sd_bus_call_method_async(a->bus, NULL, a->service_name, a->service_path,
                                        IPCHANNEL_LOCK_INTERFACE, "Release", NULL, NULL, "st", name,
                                        token);
}

static int on_acquire_reply(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error) {
        ipchannel_lock *l = userdata;
        lock_agent *a = l->agent;
        const sd_bus_error *e;
        bool cancelled;
        uint64_t token;

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

        if (sd_bus_message_read(reply, "t", &token) < 0) {
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

        l->granted_at = clock_usec(CLOCK_MONOTONIC);
        lock_set_state(a, l, LOCK_HELD, token, 0);
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
                                           IPCHANNEL_LOCK_INTERFACE, "Acquire");
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

/* Sends Acquire for every request that may go to the service now: the first live request for
 * each lock name, unless it is already there or held. */
static void agent_pump(lock_agent *a) {
        g_autoptr(GHashTable) busy = NULL;

        if (!agent_ready(a))
                return;
        busy = g_hash_table_new(g_str_hash, g_str_equal);

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
                g_hash_table_add(busy, l->name);
                if (s == LOCK_HELD || l->call_slot)
                        continue;

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
                for (ipchannel_lock *l = a->locks; l; l = l->agent_next) {
                        uint64_t token;
                        int error;

                        if (strcmp(l->name, name) == 0 &&
                            lock_agent_get_state(a, l, &token, &error) == LOCK_HELD)
                                lock_set_state(a, l, LOCK_EXPIRED, token, -ETIME);
                }
        return 0;
}

/* Tells a (new) host what this process holds, so it can grant safely. Sent on every owner
 * change, also when empty: the host waits for a report from every queued connection. */
static void agent_reassert(lock_agent *a) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        uint64_t now = clock_usec(CLOCK_MONOTONIC);
        int r;

        r = sd_bus_message_new_method_call(a->bus, &m, a->service_name, a->service_path,
                                           IPCHANNEL_LOCK_INTERFACE, "Reassert");
        if (r < 0)
                return;
        r = sd_bus_message_open_container(m, 'a', "(stt)");
        for (ipchannel_lock *l = a->locks; l && r >= 0; l = l->agent_next) {
                uint64_t token;
                int error;

                if (lock_agent_get_state(a, l, &token, &error) != LOCK_HELD)
                        continue;
                /* Counted from when we read the grant, which is after the host made it: the new
                 * host's deadline is, if anything, later than the old one, never earlier. */
                uint64_t left = 0;      /* 0: no lease */
                if (l->lease_usec != 0) {
                        uint64_t end = l->granted_at + l->lease_usec;
                        if (end < l->granted_at)
                                left = 0;       /* beyond any clock: as good as none */
                        else
                                left = MAX(end, now + 1) - now;
                }
                r = sd_bus_message_append(m, "(stt)", l->name, token, left);
        }
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
        if (sd_bus_message_read(m, "st", &name, &token) < 0)
                return 0;
        for (ipchannel_lock *l = a->locks; l; l = l->agent_next) {
                uint64_t t;
                int error;

                if (strcmp(l->name, name) == 0 && lock_agent_get_state(a, l, &t, &error) == LOCK_HELD &&
                    t == token) {
                        lock_set_state(a, l, LOCK_EXPIRED, token, -ETIME);
                        break;
                }
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
        for (ipchannel_lock *l = a->locks; l; l = l->agent_next) {
                uint64_t token;
                int error;

                if (lock_agent_get_state(a, l, &token, &error) == LOCK_HELD)
                        lock_set_state(a, l, LOCK_EXPIRED, token, -ECONNRESET);
        }

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
        g_autofree char *noc = NULL, *expired = NULL;
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

        case OP_RELEASE:
                if (lock_agent_get_state(a, l, &token, &error) == LOCK_HELD && l->on_list)
                        agent_send_release(a, l->name, token);
                /* Also when it is no longer ours (failed, expired): the app's "done" waits
                 * for this state. */
                lock_set_state(a, l, LOCK_RELEASED, token, 0);
                if (l->on_list)
                        agent_list_remove(a, l);
                break;

        case OP_CANCEL:
                if (!l->on_list)
                        break;
                switch (lock_agent_get_state(a, l, &token, &error)) {
                case LOCK_HELD:
                        agent_send_release(a, l->name, token);
                        _fallthrough_;
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

static int on_wake(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        lock_agent *a = userdata;
        lock_op *ops;
        bool quit;

        fd_drain(a->wake_fd);
        pthread_mutex_lock(&a->mutex);
        ops = a->ops;
        a->ops = a->ops_tail = NULL;
        for (lock_op *o = ops; o; o = o->next)
                o->posted = false;
        quit = a->quit;
        pthread_mutex_unlock(&a->mutex);

        while (ops) {
                lock_op *o = ops;
                ops = o->next;
                o->next = NULL;
                agent_do_op(a, o);
        }
        if (quit)
                sd_event_exit(a->event, 0);
        return 0;
}

static void *agent_thread(void *userdata) {
        lock_agent *a = userdata;

        if (agent_connect(a) < 0) {
                a->reconnect_usec = RECONNECT_USEC_MIN;
                (void) sd_event_add_time_relative(a->event, &a->reconnect_source, CLOCK_MONOTONIC,
                                                  a->reconnect_usec, 0, on_reconnect, a);
        }
        (void) sd_event_loop(a->event);

        /* From here on the app's ops are refused; those already posted are answered. */
        pthread_mutex_lock(&a->mutex);
        a->stopped = true;
        lock_op *ops = a->ops;
        a->ops = a->ops_tail = NULL;
        pthread_mutex_unlock(&a->mutex);
        agent_disconnect(a);
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
                .address = strdup(address),
                .service_name = names_locks(prefix, app),
                .service_path = names_locks_path(prefix, app),
        };
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

        sd_event_source_disable_unref(a->wake_source);
        sd_event_source_disable_unref(a->reconnect_source);
        sd_event_unref(a->event);
        safe_close(a->wake_fd);
        safe_close(a->notify_fd);
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

        fd_drain(a->notify_fd);
        pthread_mutex_lock(&a->mutex);
        if (a->notifications->len > 0) {
                taken = a->notifications;
                a->notifications = g_ptr_array_new();
                for (guint i = 0; i < taken->len; i++)
                        ((ipchannel_lock *) g_ptr_array_index(taken, i))->notified = false;
        }
        pthread_mutex_unlock(&a->mutex);
        return taken;
}

static int agent_post(lock_agent *a, lock_op_kind kind, ipchannel_lock *l) {
        lock_op *o = &l->ops[kind];
        int r = 0;

        pthread_mutex_lock(&a->mutex);
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
        pthread_mutex_unlock(&a->mutex);
        if (r == 0)
                fd_signal(a->wake_fd);
        return r;
}

int lock_agent_submit(lock_agent *a, ipchannel_lock *l) {
        return agent_post(a, OP_SUBMIT, l);
}

void lock_agent_release(lock_agent *a, ipchannel_lock *l) {
        (void) agent_post(a, OP_RELEASE, l);
}

void lock_agent_cancel(lock_agent *a, ipchannel_lock *l) {
        (void) agent_post(a, OP_CANCEL, l);
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

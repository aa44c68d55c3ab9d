/* SPDX-License-Identifier: MIT */
/* The lock service: org.ipchannel.LockService1 over a lock queue, on one bus connection. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <glib.h>
#include <systemd/sd-event.h>

#include "lock-service.h"
#include "lockqueue.h"
#include "macro.h"
#include "names.h"

/*
 * Takeover, and why it is safe (see also lock-agent.c):
 *
 * The service is hosted by whichever connection owns <prefix>.<app>.Locks. When the host dies
 * or is replaced, its state is gone; the new host starts frozen (lockqueue_set_frozen): it
 * queues Acquires but grants nothing. Every connection that can hold a grant is one of the
 * name's queued owners (agents queue before they ask for locks), so the new host asks the bus
 * for that list (ListQueuedOwners) and waits until each of them has reported what it holds
 * (Reassert), or has disconnected. Only then does it unfreeze. A lock is thus granted anew only
 * when every possible earlier holder has reclaimed it, released it or died; a reclaimed lease
 * keeps running from what its holder had left.
 *
 * Only connections in the name's queue may hold or claim locks (Acquire, TryAcquire,
 * Reassert): a connection outside it would be unknown to the next host, which could then grant
 * its lock to someone else. ipchannel's lock agents and ipchannel-lockd queue before they ask;
 * anyone else gets org.ipchannel.Error.NotQueued. Every call that changes state waits for that
 * check (which keeps each caller's calls in order); ListLocks and ListLocksEx are open to all.
 *
 * Cached grants (AcquireCached, used by ipchannel's lock agents): the holder may keep a grant
 * after its local release ("parked") and take it again without asking. The service keeps, per
 * such grant, its full lease, whether it is parked, and whether the holder was told that others
 * wait. While parked a grant has no deadline (a lease covers active holding only); Park and
 * Resume, one-way calls from the holder, remove and restart it. When someone queues behind a
 * cached grant, the holder is called back once (the unicast signal ReleaseRequested) and, if the
 * grant is parked, given its lease to answer, so a stopped process cannot keep it forever. A
 * grant that goes to a caller while others wait says so in the reply (contended), and needs no
 * call back. Everything else (FIFO, tokens, the end of a grant when its connection closes,
 * Reassert) is as for any grant: ReassertCached reports parked grants too.
 *
 * Tokens keep increasing across hosts: the new host starts above a clock-based epoch (the
 * CLOCK_REALTIME microsecond, which an earlier host's counter, one per grant, cannot have
 * passed unless it granted more than once a microsecond) and above every token reported.
 */

typedef int (*method_t)(sd_bus_message *m, void *userdata, sd_bus_error *error);

typedef struct held_call {
        sd_bus_message *call;
        method_t method;
} held_call;

static void held_call_free(void *p) {
        held_call *h = p;

        sd_bus_message_unref(h->call);
        free(h);
}

typedef struct pending {
        uint64_t request;
        bool cached;                    /* AcquireCached: the reply is (tb) */
        uint64_t lease_usec;
        sd_bus_message *call;           /* the Acquire call awaiting its reply */
        char *owner;
        char *lock;
} pending;

/* What the service knows of a cached grant beyond the queue's holder entry. */
typedef struct cached_grant {
        char *owner;
        uint64_t token;
        uint64_t lease_usec;            /* the full lease, restarted by Resume; 0 = none */
        bool parked;
        bool called;                    /* the holder knows that others wait */
} cached_grant;

static void cached_grant_free(void *p) {
        cached_grant *c = p;

        free(c->owner);
        free(c);
}

struct lock_service {
        sd_bus *bus;
        sd_event *event;
        char *path;
        char *name;
        char *self;                     /* our unique name */
        bool expect_self;
        lockqueue *q;
        sd_bus_slot *vtable_slot;
        sd_bus_slot *queued_slot;
        sd_event_source *lease_timer;
        GHashTable *tracks;             /* owner → sd_bus_track * */
        GHashTable *pending;            /* request (uint64_t *) → pending * */
        uint64_t n_requests;
        uint64_t n_grants;              /* the Grants property */
        GHashTable *cached;             /* lock name → cached_grant * */

        /* Who may hold locks: connections seen in the service name's queue (see the takeover
         * comment). Calls from others wait in `held` while the queue is read again. */
        GHashTable *members;
        uid_t allowed_uid;              /* (uid_t) -1: any */
        GHashTable *uid_ok;             /* callers whose uid was checked */
        GPtrArray *held;                /* held_call * */
        sd_bus_slot *check_slot;
        sd_event_source *check_retry;
        sd_event_source *recovery_retry;

        /* Recovery. */
        bool recovering;
        bool have_queue_list;
        GHashTable *expected;           /* owners that must still report */
        GHashTable *reported;           /* owners that reported before we had the list */
};

static void pending_free(void *p) {
        pending *x = p;

        sd_bus_message_unref(x->call);
        free(x->owner);
        free(x->lock);
        free(x);
}

static void track_free(void *t) {
        sd_bus_track_unref(t);
}

/* Maps a lockqueue error to the named D-Bus error a client sees. */
static int reply_error(sd_bus_error *error, int r, const char *lock) {
        switch (r) {
        case -EDEADLK:
                return sd_bus_error_setf(error, LOCK_ERROR_ALREADY_HELD, "The caller already holds \"%s\".",
                                         lock);
        case -EALREADY:
                return sd_bus_error_setf(error, LOCK_ERROR_ALREADY_WAITING,
                                         "The caller already waits for \"%s\".", lock);
        case -EINVAL:
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "Invalid lock name: it must be non-empty UTF-8 of at most "
                                         "255 bytes.");
        case -ENOENT:
                return sd_bus_error_setf(error, LOCK_ERROR_NO_SUCH_LOCK, "Nobody holds or waits for \"%s\".",
                                         lock);
        case -EPERM:
                return sd_bus_error_setf(error, LOCK_ERROR_NOT_HOLDER, "The caller does not hold \"%s\".",
                                         lock);
        case -ESTALE:
                return sd_bus_error_setf(error, LOCK_ERROR_STALE_TOKEN,
                                         "The token is not the current grant's of \"%s\" (a late or "
                                         "repeated release).", lock);
        case -EAGAIN:
                return sd_bus_error_setf(error, LOCK_ERROR_WOULD_BLOCK, "\"%s\" is not free.", lock);
        default:
                return sd_bus_error_set_errno(error, r);
        }
}

/* The two limits an Acquire can run into share the queue's -ENOBUFS: tell the caller which
 * one, as the remedies differ (wait less on one lock, or hold fewer at once). The queue checks
 * the connection's limit first, but a lock whose waiters are at their limit refuses the call
 * whatever the connection holds, so naming that one is true either way. */
static int reply_limit_error(lock_service *s, sd_bus_error *error, const char *lock, bool may_wait) {
        lockqueue_limits limits;

        lockqueue_get_limits(s->q, &limits);
        if (may_wait && lockqueue_get_n_waiters(s->q, lock) >= limits.max_waiters_per_lock)
                return sd_bus_error_setf(error, LOCK_ERROR_LIMITS_EXCEEDED,
                                         "Too many waiters for \"%s\": this lock service lets at most %zu "
                                         "connections wait for one lock.",
                                         lock, limits.max_waiters_per_lock);
        return sd_bus_error_setf(error, LOCK_ERROR_LIMITS_EXCEEDED,
                                 "Too many locks held or awaited by the caller (\"%s\"): this lock service "
                                 "lets one connection hold or wait for at most %zu.",
                                 lock, limits.max_locks_per_owner);
}

int lock_error_to_errno(const sd_bus_error *e) {
        /* Kept beside reply_error(), whose queue errors these undo. Not registered with
         * sd_bus_error_add_map(): that table is process-wide and unlocked, and the lock agent's
         * thread would race the app's own sd-bus use. */
        static const sd_bus_error_map map[] = {
                SD_BUS_ERROR_MAP(LOCK_ERROR_CANCELLED, ECANCELED),
                SD_BUS_ERROR_MAP(LOCK_ERROR_SERVICE_MOVED, ECONNRESET),
                SD_BUS_ERROR_MAP(LOCK_ERROR_WOULD_BLOCK, EAGAIN),
                SD_BUS_ERROR_MAP(LOCK_ERROR_NOT_HOLDER, EPERM),
                SD_BUS_ERROR_MAP(LOCK_ERROR_STALE_TOKEN, ESTALE),
                SD_BUS_ERROR_MAP(LOCK_ERROR_NO_SUCH_LOCK, ENOENT),
                SD_BUS_ERROR_MAP(LOCK_ERROR_NOT_WAITING, ENOENT),
                SD_BUS_ERROR_MAP(LOCK_ERROR_ALREADY_HELD, EDEADLK),
                SD_BUS_ERROR_MAP(LOCK_ERROR_ALREADY_WAITING, EALREADY),
                SD_BUS_ERROR_MAP(LOCK_ERROR_LIMITS_EXCEEDED, ENOBUFS),
                SD_BUS_ERROR_MAP(LOCK_ERROR_ACCESS_DENIED, EACCES),
                SD_BUS_ERROR_MAP(LOCK_ERROR_NOT_QUEUED, EPERM),
                SD_BUS_ERROR_MAP(LOCK_ERROR_NOT_CACHED, EINVAL),
        };
        int r;

        if (!sd_bus_error_is_set(e))
                return 0;
        for (size_t i = 0; i < G_N_ELEMENTS(map); i++)
                if (sd_bus_error_has_name(e, map[i].name))
                        return -map[i].code;
        /* The bus's own errors (AccessDenied, NoReply, ...) as sd-bus maps them. */
        r = sd_bus_error_get_errno(e);
        return r > 0 ? -r : -EIO;
}

/* ---- leases ----------------------------------------------------------------------------- */

static void service_arm_lease_timer(lock_service *s) {
        uint64_t next = lockqueue_next_deadline(s->q);

        if (next == LOCKQUEUE_NO_DEADLINE) {
                (void) sd_event_source_set_enabled(s->lease_timer, SD_EVENT_OFF);
                return;
        }
        (void) sd_event_source_set_time(s->lease_timer, next);
        (void) sd_event_source_set_enabled(s->lease_timer, SD_EVENT_ONESHOT);
}

static int on_lease_timer(sd_event_source *source, uint64_t usec, void *userdata) {
        lock_service *s = userdata;

        (void) lockqueue_expire(s->q, clock_usec(CLOCK_MONOTONIC));
        service_arm_lease_timer(s);
        return 0;
}

/* ---- cached grants ---------------------------------------------------------------------- */

static int service_cached_add(lock_service *s, const char *lock, const char *owner, uint64_t token,
                              uint64_t lease_usec, bool parked, bool called) {
        cached_grant *c = malloc(sizeof(*c));

        if (!c)
                return -ENOMEM;
        *c = (cached_grant) {
                .owner = strdup(owner),
                .token = token,
                .lease_usec = lease_usec,
                .parked = parked,
                .called = called,
        };
        if (!c->owner) {
                cached_grant_free(c);
                return -ENOMEM;
        }
        g_hash_table_replace(s->cached, g_strdup(lock), c);
        return 0;
}

/* The cached grant of lock, if owner holds it under token. */
static cached_grant *service_cached_get(lock_service *s, const char *lock, const char *owner, uint64_t token) {
        cached_grant *c = g_hash_table_lookup(s->cached, lock);

        if (!c || c->token != token || g_strcmp0(c->owner, owner) != 0)
                return NULL;
        return c;
}

static void service_cached_remove(lock_service *s, const char *lock, const char *owner, uint64_t token) {
        if (service_cached_get(s, lock, owner, token))
                g_hash_table_remove(s->cached, lock);
}

/* Someone waits for lock: if its holder keeps the grant cached and does not know yet, call it
 * back; a parked grant gets its lease to answer in. */
static void service_call_back(lock_service *s, const char *lock) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        const char *holder = NULL;
        uint64_t token = 0;
        cached_grant *c;

        if (lockqueue_get_n_waiters(s->q, lock) == 0 ||
            lockqueue_get_holder(s->q, lock, &holder, &token, NULL) <= 0)
                return;
        c = service_cached_get(s, lock, holder, token);
        if (!c || c->called)
                return;
        c->called = true;
        if (sd_bus_message_new_signal(s->bus, &m, s->path, IPCHANNEL_LOCK_INTERFACE, "ReleaseRequested") >= 0 &&
            sd_bus_message_set_destination(m, c->owner) >= 0 &&
            sd_bus_message_append(m, "st", lock, token) >= 0)
                (void) sd_bus_send(s->bus, m, NULL);
        if (c->parked && c->lease_usec != 0) {
                uint64_t now = clock_usec(CLOCK_MONOTONIC);
                uint64_t deadline = c->lease_usec >= LOCKQUEUE_NO_DEADLINE - now ? LOCKQUEUE_NO_DEADLINE
                                                                                 : now + c->lease_usec;
                g_autofree char *name = g_strdup(lock), *owner = g_strdup(c->owner);

                /* May revoke it at once (a lease so short it is due): c is gone then. */
                (void) lockqueue_set_deadline(s->q, name, owner, token, deadline, now);
                service_arm_lease_timer(s);
        }
}

/* ---- events from the queue -------------------------------------------------------------- */

static void on_queue_event(lockqueue *q, const lockqueue_event *ev, void *userdata) {
        lock_service *s = userdata;

        if (ev->kind == LOCKQUEUE_EVENT_GRANTED) {
                pending *p = g_hash_table_lookup(s->pending, &ev->request);

                s->n_grants++;
                g_hash_table_remove(s->cached, ev->lock);
                if (p && p->cached) {
                        bool contended = lockqueue_get_n_waiters(q, ev->lock) > 0;

                        (void) service_cached_add(s, ev->lock, ev->owner, ev->token, p->lease_usec, false,
                                                  contended);
                        (void) sd_bus_reply_method_return(p->call, "tb", ev->token, (int) contended);
                } else if (p)
                        (void) sd_bus_reply_method_return(p->call, "t", ev->token);
                if (p)
                        g_hash_table_remove(s->pending, &ev->request);
                return;
        }

        service_cached_remove(s, ev->lock, ev->owner, ev->token);

        if (ev->reason == LOCKQUEUE_REASON_EXPIRED) {
                /* Tell the holder, and only the holder, that its grant is no longer good. */
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;

                if (sd_bus_message_new_signal(s->bus, &m, s->path, IPCHANNEL_LOCK_INTERFACE,
                                              "LeaseExpired") >= 0 &&
                    sd_bus_message_set_destination(m, ev->owner) >= 0 &&
                    sd_bus_message_append(m, "st", ev->lock, ev->token) >= 0)
                        (void) sd_bus_send(s->bus, m, NULL);
        }
}

/* ---- connection tracking ---------------------------------------------------------------- */

static void service_maybe_unfreeze(lock_service *s) {
        if (!s->recovering || !s->have_queue_list || g_hash_table_size(s->expected) > 0)
                return;
        s->recovering = false;
        g_hash_table_remove_all(s->reported);
        /* Raised only now: a reasserted token below the epoch must still be believed (the
         * queue refuses claims below its floor), and what we grant next is above both. */
        (void) lockqueue_raise_token_floor(s->q, clock_usec(CLOCK_REALTIME));
        (void) lockqueue_set_frozen(s->q, false, clock_usec(CLOCK_MONOTONIC));
        service_arm_lease_timer(s);
        (void) sd_bus_emit_properties_changed(s->bus, s->path, IPCHANNEL_LOCK_INTERFACE, "Recovering",
                                              NULL);
}

typedef struct tracked {
        lock_service *service;
        char owner[];
} tracked;

static int on_owner_gone(sd_bus_track *t, void *userdata) {
        tracked *w = userdata;
        lock_service *s = w->service;
        g_autofree char *owner = g_strdup(w->owner);   /* w goes with the track */
        GHashTableIter it;
        pending *p;

        /* Its grants go at once, and its waits with them. */
        (void) lockqueue_drop_owner(s->q, owner, clock_usec(CLOCK_MONOTONIC));
        g_hash_table_iter_init(&it, s->pending);
        while (g_hash_table_iter_next(&it, NULL, (void **) &p))
                if (strcmp(p->owner, owner) == 0)
                        g_hash_table_iter_remove(&it);

        if (g_hash_table_remove(s->expected, owner))
                service_maybe_unfreeze(s);
        g_hash_table_remove(s->members, owner);
        g_hash_table_remove(s->uid_ok, owner);
        g_hash_table_remove(s->tracks, owner);
        service_arm_lease_timer(s);
        return 0;
}

/* Follows a caller's connection, so that its grants and waits end when it closes. */
static int service_track(lock_service *s, const char *owner) {
        sd_bus_track *t = NULL;
        tracked *w;
        int r;

        if (g_hash_table_contains(s->tracks, owner))
                return 0;
        w = malloc(sizeof(*w) + strlen(owner) + 1);
        if (!w)
                return -ENOMEM;
        w->service = s;
        strcpy(w->owner, owner);
        r = sd_bus_track_new(s->bus, &t, on_owner_gone, w);
        if (r < 0) {
                free(w);
                return r;
        }
        sd_bus_track_set_destroy_callback(t, free);
        r = sd_bus_track_add_name(t, owner);
        if (r < 0) {
                sd_bus_track_unref(t);
                return r;
        }
        g_hash_table_insert(s->tracks, g_strdup(owner), t);
        return 0;
}

/* ---- admission -------------------------------------------------------------------------- */

static void service_check_queue(lock_service *s);

static int on_check_retry(sd_event_source *source, uint64_t usec, void *userdata) {
        lock_service *s = userdata;

        s->check_retry = sd_event_source_unref(s->check_retry);
        service_check_queue(s);
        return 0;
}

static void service_add_members(lock_service *s, sd_bus_message *reply) {
        const char *owner;

        if (sd_bus_message_enter_container(reply, 'a', "s") < 0)
                return;
        while (sd_bus_message_read_basic(reply, 's', &owner) > 0)
                g_hash_table_add(s->members, g_strdup(owner));
        (void) sd_bus_message_rewind(reply, true);
}

/* Runs the calls that waited for the queue check, or refuses them. */
static int on_check_reply(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error) {
        lock_service *s = userdata;
        g_autoptr(GPtrArray) held = NULL;

        s->check_slot = sd_bus_slot_unref(s->check_slot);
        if (sd_bus_message_is_method_error(reply, NULL)) {
                /* The callers may well be members: ask again shortly rather than refuse. */
                (void) sd_event_add_time_relative(s->event, &s->check_retry, CLOCK_MONOTONIC, 100 * 1000, 0,
                                                  on_check_retry, s);
                return 0;
        }
        /* Of the queue, only the callers become members, followed so that they stop being
         * members when they go: the others may never call, and would stay for ever. */
        g_autoptr(GHashTable) queued = g_hash_table_new(g_str_hash, g_str_equal);
        const char *owner;
        if (sd_bus_message_enter_container(reply, 'a', "s") >= 0)
                while (sd_bus_message_read_basic(reply, 's', &owner) > 0)
                        g_hash_table_add(queued, (char *) owner);

        held = s->held;
        s->held = g_ptr_array_new_with_free_func(held_call_free);
        for (guint i = 0; i < held->len; i++) {
                held_call *h = g_ptr_array_index(held, i);
                const char *sender = sd_bus_message_get_sender(h->call);
                _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
                int r;

                if (!sender || !g_hash_table_contains(queued, sender)) {
                        (void) sd_bus_reply_method_errorf(h->call, LOCK_ERROR_NOT_QUEUED,
                                                          "Only connections queued for %s may hold its "
                                                          "locks (ipchannel's lock agents do).", s->name);
                        continue;
                }
                if (!g_hash_table_contains(s->members, sender) && service_track(s, sender) >= 0)
                        g_hash_table_add(s->members, g_strdup(sender));
                r = h->method(h->call, s, &error);
                if (r < 0) {
                        if (sd_bus_error_is_set(&error))
                                (void) sd_bus_reply_method_error(h->call, &error);
                        else
                                (void) sd_bus_reply_method_errno(h->call, r, NULL);
                }
        }
        return 0;
}

static void service_check_queue(lock_service *s) {
        if (s->check_slot || s->check_retry)
                return;
        if (sd_bus_call_method_async(s->bus, &s->check_slot, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                     "org.freedesktop.DBus", "ListQueuedOwners", on_check_reply, s, "s",
                                     s->name) < 0)
                (void) sd_event_add_time_relative(s->event, &s->check_retry, CLOCK_MONOTONIC, 100 * 1000, 0,
                                                  on_check_retry, s);
}

/* 1 if the caller is known to be in the name's queue; 0 if the call now waits for a check of
 * the queue (it is run again, or refused, when the answer comes). */
/* With an allowed uid set: the caller's uid as the bus vouches for it (the broker took it
 * from the kernel when the caller connected), asked once per connection. */
static int service_check_uid(lock_service *s, sd_bus_message *m, const char *owner, sd_bus_error *error) {
        _cleanup_(sd_bus_creds_unrefp) sd_bus_creds *creds = NULL;
        uid_t uid;
        int r;

        if (s->allowed_uid == (uid_t) -1 || (owner && g_hash_table_contains(s->uid_ok, owner)))
                return 0;
        r = sd_bus_query_sender_creds(m, SD_BUS_CREDS_EUID, &creds);
        if (r >= 0)
                r = sd_bus_creds_get_euid(creds, &uid);
        if (r < 0)
                return sd_bus_error_setf(error, LOCK_ERROR_ACCESS_DENIED,
                                         "Cannot learn the caller's uid: %s.", strerror(-r));
        if (uid != s->allowed_uid)
                return sd_bus_error_setf(error, LOCK_ERROR_ACCESS_DENIED,
                                         "This lock service serves only uid %u.", (unsigned) s->allowed_uid);
        if (owner)
                g_hash_table_add(s->uid_ok, g_strdup(owner));
        return 0;
}

/* The allowed uid (if any) is checked only for calls that take a new lock (takes). The others
 * can only report, give up or manage what the caller already holds or waits for, and a
 * connection of another uid may well hold locks: the earlier host may have served anyone (a
 * self-hosted service has no uid restriction). Its Reassert must count, or the takeover would
 * wait for it for ever (see the takeover comment). Its reported holds are honoured like any
 * other, until it releases them, its lease runs out or it disconnects: refusing them would be
 * safe only if it had not held them, which we cannot know, and handing its locks to someone
 * else meanwhile would let two processes hold one lock. What it may claim that way is bounded
 * as for anyone (only during the recovery, within the queue's limits), and it can take nothing
 * new afterwards. */
static int service_admit(lock_service *s, sd_bus_message *m, method_t method, bool takes,
                         sd_bus_error *error) {
        const char *owner = sd_bus_message_get_sender(m);
        held_call *h;
        int r;

        if (takes) {
                r = service_check_uid(s, m, owner, error);
                if (r < 0)
                        return r;
        }

        /* While calls wait for a check, later ones wait behind them even from members (the
         * recovery's listing may make their caller a member meanwhile): order is kept. */
        if (owner && g_hash_table_contains(s->members, owner) && s->held->len == 0)
                return 1;
        h = malloc(sizeof(*h));
        if (!h)
                return -ENOMEM;
        *h = (held_call) { .call = sd_bus_message_ref(m), .method = method };
        g_ptr_array_add(s->held, h);
        service_check_queue(s);
        return 0;
}

/* ---- methods ---------------------------------------------------------------------------- */

static int service_acquire(lock_service *s, sd_bus_message *m, bool cached, sd_bus_error *error) {
        const char *lock, *owner = sd_bus_message_get_sender(m);
        uint64_t lease, request, token;
        pending *p;
        int r;

        r = sd_bus_message_read(m, "st", &lock, &lease);
        if (r < 0)
                return r;
        if (!owner)
                return sd_bus_error_set(error, SD_BUS_ERROR_INVALID_ARGS, "The call has no sender.");
        r = service_track(s, owner);
        if (r < 0)
                return r;

        /* Registered first: an immediate grant is answered from the GRANTED event too. */
        request = ++s->n_requests;
        p = malloc(sizeof(*p));
        if (!p)
                return -ENOMEM;
        *p = (pending) {
                .request = request,
                .cached = cached,
                .lease_usec = lease,
                .call = sd_bus_message_ref(m),
                .owner = strdup(owner),
                .lock = strdup(lock),
        };
        if (!p->owner || !p->lock) {
                pending_free(p);
                return -ENOMEM;
        }
        g_hash_table_insert(s->pending, &p->request, p);

        r = lockqueue_acquire(s->q, lock, owner, request, lease, clock_usec(CLOCK_MONOTONIC), &token);
        if (r < 0) {
                g_hash_table_remove(s->pending, &request);
                return r == -ENOBUFS ? reply_limit_error(s, error, lock, true) : reply_error(error, r, lock);
        }
        if (r == 0)
                service_call_back(s, lock);
        service_arm_lease_timer(s);
        return 1;
}

static int method_acquire(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        lock_service *s = userdata;
        int r;

        r = service_admit(s, m, method_acquire, true, error);
        if (r <= 0)
                return r < 0 ? r : 1;   /* answered when the queue check comes back */
        return service_acquire(s, m, false, error);
}

static int method_acquire_cached(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        lock_service *s = userdata;
        int r;

        r = service_admit(s, m, method_acquire_cached, true, error);
        if (r <= 0)
                return r < 0 ? r : 1;
        return service_acquire(s, m, true, error);
}

/* Park (parked true) and Resume: the holder of a cached grant stopped or started using it. */
static int service_park(lock_service *s, sd_bus_message *m, bool parked, sd_bus_error *error) {
        const char *lock, *owner = sd_bus_message_get_sender(m);
        uint64_t token, now = clock_usec(CLOCK_MONOTONIC), deadline;
        const char *holder = NULL;
        uint64_t held_token = 0;
        cached_grant *c;
        int r;

        r = sd_bus_message_read(m, "st", &lock, &token);
        if (r < 0)
                return r;
        c = service_cached_get(s, lock, owner ?: "", token);
        if (!c) {
                /* Tell apart what the caller got wrong, as Release does. */
                if (lockqueue_get_holder(s->q, lock, &holder, &held_token, NULL) > 0 &&
                    g_strcmp0(holder, owner) == 0)
                        return held_token == token
                                       ? sd_bus_error_setf(error, LOCK_ERROR_NOT_CACHED,
                                                           "The grant of \"%s\" was not made by "
                                                           "AcquireCached.", lock)
                                       : reply_error(error, -ESTALE, lock);
                r = holder || lockqueue_get_n_waiters(s->q, lock) > 0 ? -EPERM : -ENOENT;
                return reply_error(error, r, lock);
        }
        c->parked = parked;
        /* A parked grant whose holder was called back keeps the deadline it has to answer by. */
        if (parked && c->called)
                return sd_bus_reply_method_return(m, NULL);
        deadline = parked || c->lease_usec == 0 ? LOCKQUEUE_NO_DEADLINE
                   : c->lease_usec >= LOCKQUEUE_NO_DEADLINE - now ? LOCKQUEUE_NO_DEADLINE
                                                                  : now + c->lease_usec;
        r = lockqueue_set_deadline(s->q, lock, owner, token, deadline, now);
        service_arm_lease_timer(s);
        if (r < 0)
                return reply_error(error, r, lock);
        return sd_bus_reply_method_return(m, NULL);
}

static int method_park(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        lock_service *s = userdata;
        int r;

        r = service_admit(s, m, method_park, false, error);
        if (r <= 0)
                return r < 0 ? r : 1;
        return service_park(s, m, true, error);
}

static int method_resume(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        lock_service *s = userdata;
        int r;

        r = service_admit(s, m, method_resume, false, error);
        if (r <= 0)
                return r < 0 ? r : 1;
        return service_park(s, m, false, error);
}

static int method_try_acquire(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        lock_service *s = userdata;
        const char *lock, *owner = sd_bus_message_get_sender(m);
        uint64_t lease, token = 0;
        int r;

        r = service_admit(s, m, method_try_acquire, true, error);
        if (r <= 0)
                return r < 0 ? r : 1;

        r = sd_bus_message_read(m, "st", &lock, &lease);
        if (r < 0)
                return r;
        if (!owner)
                return sd_bus_error_set(error, SD_BUS_ERROR_INVALID_ARGS, "The call has no sender.");
        r = service_track(s, owner);
        if (r < 0)
                return r;
        /* Request 0 is never registered as pending: the reply is made here. */
        r = lockqueue_try_acquire(s->q, lock, owner, 0, lease, clock_usec(CLOCK_MONOTONIC), &token);
        if (r < 0)
                return r == -ENOBUFS ? reply_limit_error(s, error, lock, false) : reply_error(error, r, lock);
        service_arm_lease_timer(s);
        return sd_bus_reply_method_return(m, "t", token);
}

static int method_release(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        lock_service *s = userdata;
        const char *lock, *owner = sd_bus_message_get_sender(m);
        uint64_t token;
        int r;

        /* Gated like the rest, so that a caller's calls keep their order: a Release must not
         * overtake the Reassert or Acquire of the same caller that waits for the check. */
        r = service_admit(s, m, method_release, false, error);
        if (r <= 0)
                return r < 0 ? r : 1;

        r = sd_bus_message_read(m, "st", &lock, &token);
        if (r < 0)
                return r;
        r = lockqueue_release(s->q, lock, owner ?: "", token, clock_usec(CLOCK_MONOTONIC));
        if (r >= 0)
                service_cached_remove(s, lock, owner, token);
        service_arm_lease_timer(s);
        if (r < 0)
                return reply_error(error, r, lock);
        return sd_bus_reply_method_return(m, NULL);
}

static int method_cancel(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        lock_service *s = userdata;
        const char *lock, *owner = sd_bus_message_get_sender(m);
        GHashTableIter it;
        pending *p;
        int r;

        r = service_admit(s, m, method_cancel, false, error);
        if (r <= 0)
                return r < 0 ? r : 1;

        r = sd_bus_message_read(m, "s", &lock);
        if (r < 0)
                return r;

        g_hash_table_iter_init(&it, s->pending);
        while (g_hash_table_iter_next(&it, NULL, (void **) &p)) {
                if (g_strcmp0(p->owner, owner) != 0 || strcmp(p->lock, lock) != 0)
                        continue;
                r = lockqueue_cancel(s->q, lock, owner, p->request);
                if (r < 0)
                        break;
                (void) sd_bus_reply_method_errorf(p->call, LOCK_ERROR_CANCELLED,
                                                  "The wait for \"%s\" was cancelled.", lock);
                g_hash_table_iter_remove(&it);
                return sd_bus_reply_method_return(m, NULL);
        }
        return sd_bus_error_setf(error, LOCK_ERROR_NOT_WAITING, "The caller does not wait for \"%s\".", lock);
}

static int service_reassert(lock_service *s, sd_bus_message *m, bool cached, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *lock, *owner = sd_bus_message_get_sender(m);
        uint64_t token, lease_left, lease_usec = 0, now = clock_usec(CLOCK_MONOTONIC);
        int parked = false;
        int r;

        if (!owner)
                return sd_bus_error_set(error, SD_BUS_ERROR_INVALID_ARGS, "The call has no sender.");
        r = service_track(s, owner);
        if (r < 0)
                return r;
        r = sd_bus_message_new_method_return(m, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_open_container(reply, 'a', "s");
        if (r < 0)
                return r;

        r = sd_bus_message_enter_container(m, 'a', cached ? "(stttb)" : "(stt)");
        if (r < 0)
                return r;
        while ((r = cached ? sd_bus_message_read(m, "(stttb)", &lock, &token, &lease_left, &lease_usec, &parked)
                           : sd_bus_message_read(m, "(stt)", &lock, &token, &lease_left)) > 0) {
                const char *holder = NULL;
                uint64_t held_token = 0;
                int k;

                /* A parked grant has no lease until it is used again or called back. */
                k = lockqueue_reassert(s->q, lock, owner, token, parked ? 0 : lease_left, now);
                if (k == -EPERM && lockqueue_get_holder(s->q, lock, &holder, &held_token, NULL) > 0 &&
                    strcmp(holder, owner) == 0 && held_token == token)
                        k = 0;  /* not recovering, and we know of the grant anyway */
                if (k == 0 && cached && !service_cached_get(s, lock, owner, token)) {
                        k = service_cached_add(s, lock, owner, token, lease_usec, parked, false);
                        if (k >= 0)
                                service_call_back(s, lock);
                }
                if (k < 0) {
                        r = sd_bus_message_append(reply, "s", lock);
                        if (r < 0)
                                return r;
                }
        }
        if (r < 0)
                return r;
        r = sd_bus_message_exit_container(m);
        if (r < 0)
                return r;
        r = sd_bus_message_close_container(reply);
        if (r < 0)
                return r;

        if (s->recovering) {
                g_hash_table_add(s->reported, g_strdup(owner));
                if (g_hash_table_remove(s->expected, owner))
                        service_maybe_unfreeze(s);
        }
        service_arm_lease_timer(s);
        return sd_bus_send(NULL, reply, NULL);
}

static int method_reassert(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        lock_service *s = userdata;
        int r;

        r = service_admit(s, m, method_reassert, false, error);
        if (r <= 0)
                return r < 0 ? r : 1;
        return service_reassert(s, m, false, error);
}

static int method_reassert_cached(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        lock_service *s = userdata;
        int r;

        r = service_admit(s, m, method_reassert_cached, false, error);
        if (r <= 0)
                return r < 0 ? r : 1;
        return service_reassert(s, m, true, error);
}

/* ListLocks: a(ssttas); ListLocksEx (ex) adds whether the grant is parked: a(ssttbas). */
static int list_locks(sd_bus_message *m, lock_service *s, bool ex) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(freep) lockqueue_lock_info *infos = NULL;
        uint64_t now = clock_usec(CLOCK_MONOTONIC);
        size_t n = 0;
        int r;

        (void) lockqueue_expire(s->q, now);
        r = lockqueue_list(s->q, &infos, &n);
        if (r < 0)
                return r;
        r = sd_bus_message_new_method_return(m, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_open_container(reply, 'a', ex ? "(ssttbas)" : "(ssttas)");
        for (size_t i = 0; i < n && r >= 0; i++) {
                const lockqueue_lock_info *x = &infos[i];
                uint64_t left = x->deadline == LOCKQUEUE_NO_DEADLINE ? UINT64_MAX
                                : x->deadline > now                  ? x->deadline - now
                                                                     : 0;
                cached_grant *c = x->holder ? service_cached_get(s, x->name, x->holder, x->token) : NULL;

                r = sd_bus_message_open_container(reply, 'r', ex ? "ssttbas" : "ssttas");
                if (r >= 0)
                        r = sd_bus_message_append(reply, "sstt", x->name, x->holder ?: "", x->token,
                                                  x->holder ? left : 0);
                if (r >= 0 && ex)
                        r = sd_bus_message_append(reply, "b", c && c->parked);
                if (r >= 0)
                        r = sd_bus_message_append_strv(reply, (char **) x->waiters);
                if (r >= 0)
                        r = sd_bus_message_close_container(reply);
        }
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

static int method_list_locks(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        return list_locks(m, userdata, false);
}

static int method_list_locks_ex(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        return list_locks(m, userdata, true);
}

static int property_get_grants(sd_bus *bus, const char *path, const char *interface,
                               const char *property, sd_bus_message *reply, void *userdata,
                               sd_bus_error *error) {
        lock_service *s = userdata;
        return sd_bus_message_append(reply, "t", s->n_grants);
}

static int property_get_recovering(sd_bus *bus, const char *path, const char *interface,
                                   const char *property, sd_bus_message *reply, void *userdata,
                                   sd_bus_error *error) {
        lock_service *s = userdata;
        return sd_bus_message_append(reply, "b", s->recovering);
}

/* Unprivileged: see peer_vtable in channel.c; here, queue membership decides who may hold. */
static const sd_bus_vtable lock_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_METHOD_WITH_ARGS("Acquire", SD_BUS_ARGS("s", lock, "t", lease_usec),
                                SD_BUS_RESULT("t", token), method_acquire, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("AcquireCached", SD_BUS_ARGS("s", lock, "t", lease_usec),
                                SD_BUS_RESULT("t", token, "b", contended), method_acquire_cached,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("TryAcquire", SD_BUS_ARGS("s", lock, "t", lease_usec),
                                SD_BUS_RESULT("t", token), method_try_acquire, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Release", SD_BUS_ARGS("s", lock, "t", token), SD_BUS_NO_RESULT,
                                method_release, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Park", SD_BUS_ARGS("s", lock, "t", token), SD_BUS_NO_RESULT, method_park,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Resume", SD_BUS_ARGS("s", lock, "t", token), SD_BUS_NO_RESULT, method_resume,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Cancel", SD_BUS_ARGS("s", lock), SD_BUS_NO_RESULT, method_cancel,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Reassert", SD_BUS_ARGS("a(stt)", holds), SD_BUS_RESULT("as", refused),
                                method_reassert, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("ReassertCached", SD_BUS_ARGS("a(stttb)", holds), SD_BUS_RESULT("as", refused),
                                method_reassert_cached, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("ListLocks", SD_BUS_NO_ARGS, SD_BUS_RESULT("a(ssttas)", locks),
                                method_list_locks, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("ListLocksEx", SD_BUS_NO_ARGS, SD_BUS_RESULT("a(ssttbas)", locks),
                                method_list_locks_ex, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_SIGNAL_WITH_ARGS("LeaseExpired", SD_BUS_ARGS("s", lock, "t", token), 0),
        SD_BUS_SIGNAL_WITH_ARGS("ReleaseRequested", SD_BUS_ARGS("s", lock, "t", token), 0),
        SD_BUS_PROPERTY("Recovering", "b", property_get_recovering, 0,
                        SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("Grants", "t", property_get_grants, 0, 0),
        SD_BUS_VTABLE_END,
};

/* ---- recovery --------------------------------------------------------------------------- */

static int service_list_queue(lock_service *s);

static int on_recovery_retry(sd_event_source *source, uint64_t usec, void *userdata) {
        lock_service *s = userdata;

        s->recovery_retry = sd_event_source_unref(s->recovery_retry);
        if (service_list_queue(s) < 0)
                (void) sd_event_add_time_relative(s->event, &s->recovery_retry, CLOCK_MONOTONIC, 100 * 1000,
                                                  0, on_recovery_retry, s);
        return 0;
}

static int on_queued_owners(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error) {
        lock_service *s = userdata;
        const char *owner;
        int r;

        s->queued_slot = sd_bus_slot_unref(s->queued_slot);
        if (!s->recovering)
                return 0;       /* a list asked for again, after the last report came anyway */
        if (sd_bus_message_is_method_error(reply, NULL)) {
                /* Without the list we cannot know who may hold what: stay frozen, ask again. */
                fprintf(stderr, "ipchannel: lock service cannot list the queue of %s: %s\n", s->name,
                        sd_bus_message_get_error(reply)->message);
                (void) sd_event_add_time_relative(s->event, &s->recovery_retry, CLOCK_MONOTONIC, 100 * 1000,
                                                  0, on_recovery_retry, s);
                return 0;
        }
        service_add_members(s, reply);
        /* Who must still report is this list, less those who did: a list asked for again
         * replaces the last one. */
        g_hash_table_remove_all(s->expected);
        r = sd_bus_message_enter_container(reply, 'a', "s");
        while (r >= 0 && (r = sd_bus_message_read_basic(reply, 's', &owner)) > 0) {
                int k;

                if (!s->expect_self && g_strcmp0(owner, s->self) == 0)
                        continue;
                if (g_hash_table_contains(s->reported, owner))
                        continue;
                /* Tracked, so that one who dies before reporting stops holding us up. One that
                 * left between the list and now has no owner any more: nothing to wait for.
                 * Another failure to track is no proof that it is gone: it stays expected, and
                 * the list is asked for again. */
                k = service_track(s, owner);
                if (k == -ENXIO)
                        continue;
                if (k < 0 && !s->recovery_retry)
                        (void) sd_event_add_time_relative(s->event, &s->recovery_retry, CLOCK_MONOTONIC,
                                                          100 * 1000, 0, on_recovery_retry, s);
                g_hash_table_add(s->expected, g_strdup(owner));
        }
        s->have_queue_list = true;
        service_maybe_unfreeze(s);
        return 0;
}

/* Who must report before anything is granted: every connection queued for the name. */
static int service_list_queue(lock_service *s) {
        return sd_bus_call_method_async(s->bus, &s->queued_slot, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                        "org.freedesktop.DBus", "ListQueuedOwners", on_queued_owners, s, "s",
                                        s->name);
}

int lock_service_new(lock_service **ret, sd_bus *bus, const char *path, const char *name,
                     bool expect_self) {
        lock_service *s;
        const char *self = NULL;
        int r;

        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        *s = (lock_service) {
                .bus = sd_bus_ref(bus),
                .event = sd_event_ref(sd_bus_get_event(bus)),
                .path = strdup(path),
                .name = strdup(name),
                .expect_self = expect_self,
                .tracks = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, track_free),
                .pending = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL, pending_free),
                .expected = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL),
                .reported = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL),
                .members = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL),
                .cached = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, cached_grant_free),
                .uid_ok = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL),
                .allowed_uid = (uid_t) -1,
                .held = g_ptr_array_new_with_free_func(held_call_free),
                .recovering = true,
        };
        if (!s->event) {
                r = -EINVAL;    /* the bus must run on an sd-event loop */
                goto fail;
        }
        if (!s->path || !s->name) {
                r = -ENOMEM;
                goto fail;
        }
        r = sd_bus_get_unique_name(bus, &self);
        if (r < 0)
                goto fail;
        s->self = strdup(self);

        r = lockqueue_new(&s->q, on_queue_event, s);
        if (r < 0)
                goto fail;
        r = lockqueue_set_frozen(s->q, true, clock_usec(CLOCK_MONOTONIC));
        if (r < 0)
                goto fail;

        r = sd_event_add_time(s->event, &s->lease_timer, CLOCK_MONOTONIC, UINT64_MAX, 0, on_lease_timer, s);
        if (r < 0)
                goto fail;
        (void) sd_event_source_set_enabled(s->lease_timer, SD_EVENT_OFF);

        r = sd_bus_add_object_vtable(bus, &s->vtable_slot, path, IPCHANNEL_LOCK_INTERFACE, lock_vtable, s);
        if (r < 0)
                goto fail;
        r = service_list_queue(s);
        if (r < 0)
                goto fail;

        *ret = s;
        return 0;

fail:
        lock_service_free(s);
        return r;
}

void lock_service_set_allowed_uid(lock_service *s, uid_t uid) {
        s->allowed_uid = uid;
        g_hash_table_remove_all(s->uid_ok);
}

int lock_service_set_limits(lock_service *s, size_t max_locks_per_owner, size_t max_waiters_per_lock) {
        lockqueue_limits limits;

        lockqueue_get_limits(s->q, &limits);
        if (max_locks_per_owner > 0)
                limits.max_locks_per_owner = max_locks_per_owner;
        if (max_waiters_per_lock > 0)
                limits.max_waiters_per_lock = max_waiters_per_lock;
        return lockqueue_set_limits(s->q, &limits);
}

lock_service *lock_service_free(lock_service *s) {
        GHashTableIter it;
        pending *p;

        if (!s)
                return NULL;

        /* Whoever waits here asks the next host. */
        if (s->pending) {
                g_hash_table_iter_init(&it, s->pending);
                while (g_hash_table_iter_next(&it, NULL, (void **) &p))
                        (void) sd_bus_reply_method_errorf(p->call, LOCK_ERROR_SERVICE_MOVED,
                                                          "The lock service moved; ask again.");
                g_hash_table_unref(s->pending);
        }
        if (s->held) {
                for (guint i = 0; i < s->held->len; i++)
                        (void) sd_bus_reply_method_errorf(((held_call *) g_ptr_array_index(s->held, i))->call,
                                                          LOCK_ERROR_SERVICE_MOVED,
                                                          "The lock service moved; ask again.");
                g_ptr_array_unref(s->held);
        }
        if (s->members)
                g_hash_table_unref(s->members);
        if (s->cached)
                g_hash_table_unref(s->cached);
        if (s->uid_ok)
                g_hash_table_unref(s->uid_ok);
        s->check_slot = sd_bus_slot_unref(s->check_slot);
        sd_event_source_disable_unref(s->check_retry);
        sd_event_source_disable_unref(s->recovery_retry);
        s->vtable_slot = sd_bus_slot_unref(s->vtable_slot);
        s->queued_slot = sd_bus_slot_unref(s->queued_slot);
        sd_event_source_disable_unref(s->lease_timer);
        if (s->tracks)
                g_hash_table_unref(s->tracks);
        if (s->expected)
                g_hash_table_unref(s->expected);
        if (s->reported)
                g_hash_table_unref(s->reported);
        lockqueue_free(s->q);
        sd_event_unref(s->event);
        sd_bus_unref(s->bus);
        free(s->path);
        free(s->name);
        free(s->self);
        free(s);
        return NULL;
}

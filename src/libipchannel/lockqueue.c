/* SPDX-License-Identifier: MIT */
/* Lock queue: named locks with FIFO waiters, leases and fencing tokens, as a pure state machine. */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>

#include "lockqueue.h"
#include "macro.h"

/*
 * The queue is driven by its caller: every input (an acquire, a release, a closed connection,
 * the time) arrives as a call, and every grant or revocation leaves as an event. It reads no
 * clock and does no I/O, so the lock service around it can be tested without a bus.
 *
 * Invariants, true between any two calls (and between the transitions inside one):
 *  1. A lock has at most one holder. An owner has at most one entry per lock: it holds the lock
 *     or waits for it, never both, never twice (a D-Bus client waiting for a lock it holds would
 *     wait for itself forever).
 *  2. Unless the queue is frozen, a lock with waiters has a holder: when a grant ends, the first
 *     waiter gets the lock in the same transition. A waiter leaves the FIFO only by being
 *     granted (from the head), cancelled, or dropped with its owner: none is ever lost.
 *  3. Tokens come from one counter: each grant takes last_token + 1, so they increase across the
 *     whole queue and hence per lock. A reasserted token raises the counter, and is accepted
 *     only above settled_token (every token this queue granted or knew when it last unfroze)
 *     and above the lock's own last_token, so the per-lock order survives recovery too. While
 *     frozen, a lock that was reasserted is not freed when it empties: it must remember its
 *     last token until unfreezing raises settled_token above it.
 *  4. Every holder with a deadline is in q->deadlines. Every call that is given `now` first
 *     revokes the grants due at now, so results never depend on the caller's timer being
 *     punctual, and a late release can only ever meet a newer grant, which it cannot end
 *     (it is checked against owner and token).
 *  5. A lock object exists only while it has a holder or waiters (or is remembered, see 3), an
 *     owner object only while it has entries: memory follows the limits, not the number of
 *     names ever used.
 *
 * Events are never delivered from inside a transition. Each is queued, with copies of its
 * strings, and delivered once the call's transitions are complete, by the outermost call into
 * the queue. So a callback may call back in (release from GRANTED, say): the nested call sees
 * consistent state, and its own events are delivered after the current callback returns, in
 * order. The event stream is therefore an exact, ordered log of the transitions.
 *
 * Memory: GLib aborts when it runs out, so does this module; only lockqueue_list() (plain
 * malloc, as its result is free()d by the caller) can return -ENOMEM.
 */

typedef struct lq_lock lq_lock;
typedef struct lq_owner lq_owner;
typedef struct lq_entry lq_entry;

/* One owner's place at one lock: the holder's grant, or a wait in the lock's FIFO. */
struct lq_entry {
        lq_lock *lock;                  /* lock and owner are the key of q->entries */
        lq_owner *owner;
        uint64_t request;
        uint64_t lease_usec;
        uint64_t token;                 /* 0 while waiting */
        uint64_t deadline;              /* LOCKQUEUE_NO_DEADLINE while waiting or without lease */
        GSequenceIter *deadline_iter;   /* in q->deadlines while holding with a deadline */
        bool waiting;
        lq_entry *wait_prev, *wait_next;
        lq_entry *owner_prev, *owner_next;
};

struct lq_lock {
        char *name;
        lq_entry *holder;
        lq_entry *first_waiter, *last_waiter;
        size_t n_waiters;
        uint64_t last_token;            /* highest token held here while this object existed */
        lq_lock *prev, *next;           /* q->first_lock .. q->last_lock, in creation order */
};

struct lq_owner {
        char *name;
        lq_entry *first, *last;         /* in creation order */
        size_t n_entries;
};

typedef struct lq_pending {
        lockqueue_event_kind kind;
        lockqueue_reason reason;
        char *lock;
        char *owner;
        uint64_t request;
        uint64_t token;
        uint64_t deadline;
} lq_pending;

struct lockqueue {
        lockqueue_event_t callback;
        void *userdata;
        lockqueue_limits limits;

        GHashTable *locks;              /* name -> lq_lock */
        GHashTable *owners;             /* name -> lq_owner */
        GHashTable *entries;            /* (lock, owner) -> lq_entry */
        lq_lock *first_lock, *last_lock;
        GSequence *deadlines;           /* holders with a deadline, by (deadline, token) */
        size_t n_waiters;

        uint64_t last_token;            /* the next grant takes last_token + 1 */
        uint64_t settled_token;         /* a reassert must be above this */
        size_t n_reasserted_locks;      /* locks reasserted during the current freeze */
        bool frozen;

        GQueue pending;                 /* lq_pending, not yet delivered */
        bool dispatching;
};

static uint64_t deadline_after(uint64_t now, uint64_t usec) {
        /* A lease so long that the sum wraps never ends within the clock's range either. */
        if (usec == 0 || usec >= LOCKQUEUE_NO_DEADLINE - now)
                return LOCKQUEUE_NO_DEADLINE;
        return now + usec;
}

static bool name_is_valid(const char *s, size_t max) {
        size_t n;

        if (!s)
                return false;
        n = strnlen(s, max + 1);
        return n > 0 && n <= max && g_utf8_validate(s, (gssize) n, NULL);
}

static guint entry_hash(gconstpointer p) {
        const lq_entry *e = p;
        uint64_t h = (uint64_t) (uintptr_t) e->lock * UINT64_C(0x9e3779b97f4a7c15);

        h ^= (uint64_t) (uintptr_t) e->owner + UINT64_C(0x7f4a7c159e3779b9) + (h << 6) + (h >> 2);
        return (guint) (h ^ (h >> 32));
}

static gboolean entry_equal(gconstpointer a, gconstpointer b) {
        const lq_entry *x = a, *y = b;

        return x->lock == y->lock && x->owner == y->owner;
}

static gint entry_compare_deadline(gconstpointer a, gconstpointer b, gpointer userdata) {
        const lq_entry *x = a, *y = b;

        if (x->deadline != y->deadline)
                return x->deadline < y->deadline ? -1 : 1;
        if (x->token != y->token)
                return x->token < y->token ? -1 : 1;
        return 0;
}

static lq_entry *lockqueue_find_entry(lockqueue *q, lq_lock *lock, lq_owner *owner) {
        lq_entry key = { .lock = lock, .owner = owner };

        if (!lock || !owner)
                return NULL;
        return g_hash_table_lookup(q->entries, &key);
}

static void lq_pending_free(lq_pending *p) {
        if (!p)
                return;
        g_free(p->lock);
        g_free(p->owner);
        g_free(p);
}

static void lq_pending_freep(lq_pending **p) {
        lq_pending_free(*p);
}

static void lockqueue_queue_event(lockqueue *q, lockqueue_event_kind kind, lockqueue_reason reason,
                                  const lq_entry *e) {
        lq_pending *p;

        if (!q->callback)
                return;

        p = g_new(lq_pending, 1);
        *p = (lq_pending) {
                .kind = kind,
                .reason = reason,
                .lock = g_strdup(e->lock->name),
                .owner = g_strdup(e->owner->name),
                .request = e->request,
                .token = e->token,
                .deadline = e->deadline,
        };
        g_queue_push_tail(&q->pending, p);
}

/* Delivers queued events; a nested call returns at once and leaves them to the outer loop. */
static void lockqueue_dispatch(lockqueue *q) {
        if (q->dispatching)
                return;

        q->dispatching = true;
        for (;;) {
                _cleanup_(lq_pending_freep) lq_pending *p = g_queue_pop_head(&q->pending);

                if (!p)
                        break;
                q->callback(q,
                            &(lockqueue_event) {
                                    .kind = p->kind,
                                    .reason = p->reason,
                                    .lock = p->lock,
                                    .owner = p->owner,
                                    .request = p->request,
                                    .token = p->token,
                                    .deadline = p->deadline,
                            },
                            q->userdata);
        }
        q->dispatching = false;
}

static lq_lock *lockqueue_lock_new(lockqueue *q, const char *name) {
        lq_lock *lock = g_new(lq_lock, 1);

        *lock = (lq_lock) {
                .name = g_strdup(name),
                .prev = q->last_lock,
        };
        if (q->last_lock)
                q->last_lock->next = lock;
        else
                q->first_lock = lock;
        q->last_lock = lock;
        g_hash_table_insert(q->locks, lock->name, lock);
        return lock;
}

static void lockqueue_lock_free(lockqueue *q, lq_lock *lock) {
        assert(!lock->holder && !lock->first_waiter);

        if (lock->prev)
                lock->prev->next = lock->next;
        else
                q->first_lock = lock->next;
        if (lock->next)
                lock->next->prev = lock->prev;
        else
                q->last_lock = lock->prev;
        g_hash_table_remove(q->locks, lock->name);
        g_free(lock->name);
        g_free(lock);
}

static bool lockqueue_lock_is_remembered(lockqueue *q, lq_lock *lock) {
        return q->frozen && lock->last_token > q->settled_token;
}

static void lockqueue_lock_gc(lockqueue *q, lq_lock *lock) {
        if (lock->holder || lock->first_waiter || lockqueue_lock_is_remembered(q, lock))
                return;
        lockqueue_lock_free(q, lock);
}

static lq_owner *lockqueue_owner_new(lockqueue *q, const char *name) {
        lq_owner *owner = g_new(lq_owner, 1);

        *owner = (lq_owner) {
                .name = g_strdup(name),
        };
        g_hash_table_insert(q->owners, owner->name, owner);
        return owner;
}

static void lockqueue_owner_gc(lockqueue *q, lq_owner *owner) {
        if (owner->n_entries > 0)
                return;
        g_hash_table_remove(q->owners, owner->name);
        g_free(owner->name);
        g_free(owner);
}

static lq_entry *lockqueue_entry_new(lockqueue *q, lq_lock *lock, lq_owner *owner, uint64_t request,
                                     uint64_t lease_usec) {
        lq_entry *e = g_new(lq_entry, 1);

        *e = (lq_entry) {
                .lock = lock,
                .owner = owner,
                .request = request,
                .lease_usec = lease_usec,
                .deadline = LOCKQUEUE_NO_DEADLINE,
                .owner_prev = owner->last,
        };
        if (owner->last)
                owner->last->owner_next = e;
        else
                owner->first = e;
        owner->last = e;
        owner->n_entries++;
        g_hash_table_add(q->entries, e);
        return e;
}

static void lockqueue_waiter_append(lockqueue *q, lq_entry *e) {
        lq_lock *lock = e->lock;

        e->waiting = true;
        e->wait_prev = lock->last_waiter;
        if (lock->last_waiter)
                lock->last_waiter->wait_next = e;
        else
                lock->first_waiter = e;
        lock->last_waiter = e;
        lock->n_waiters++;
        q->n_waiters++;
}

static void lockqueue_waiter_unlink(lockqueue *q, lq_entry *e) {
        lq_lock *lock = e->lock;

        assert(e->waiting);
        if (e->wait_prev)
                e->wait_prev->wait_next = e->wait_next;
        else
                lock->first_waiter = e->wait_next;
        if (e->wait_next)
                e->wait_next->wait_prev = e->wait_prev;
        else
                lock->last_waiter = e->wait_prev;
        e->wait_prev = e->wait_next = NULL;
        e->waiting = false;
        lock->n_waiters--;
        q->n_waiters--;
}

static void lockqueue_set_holder(lockqueue *q, lq_entry *e, uint64_t token, uint64_t deadline) {
        lq_lock *lock = e->lock;

        assert(!lock->holder && !e->waiting);
        lock->holder = e;
        lock->last_token = MAX(lock->last_token, token);
        e->token = token;
        e->deadline = deadline;
        if (deadline != LOCKQUEUE_NO_DEADLINE)
                e->deadline_iter = g_sequence_insert_sorted(q->deadlines, e, entry_compare_deadline,
                                                            NULL);
}

/* Unlinks e from everything (its lock's holder slot or FIFO, its owner, the deadline index) and
 * frees it. Passing the lock on and freeing empty objects is the caller's business. */
static void lockqueue_entry_free(lockqueue *q, lq_entry *e) {
        lq_owner *owner = e->owner;

        if (e->lock->holder == e)
                e->lock->holder = NULL;
        else
                lockqueue_waiter_unlink(q, e);
        if (e->deadline_iter)
                g_sequence_remove(e->deadline_iter);

        if (e->owner_prev)
                e->owner_prev->owner_next = e->owner_next;
        else
                owner->first = e->owner_next;
        if (e->owner_next)
                e->owner_next->owner_prev = e->owner_prev;
        else
                owner->last = e->owner_prev;
        owner->n_entries--;

        g_hash_table_remove(q->entries, e);
        g_free(e);
}

/* Makes e (a new entry, or its lock's first waiter) the holder under a new token. */
static void lockqueue_grant(lockqueue *q, lq_entry *e, uint64_t now) {
        if (e->waiting) {
                assert(e->lock->first_waiter == e);
                lockqueue_waiter_unlink(q, e);
        }
        q->last_token++;
        q->settled_token = q->last_token;
        lockqueue_set_holder(q, e, q->last_token, deadline_after(now, e->lease_usec));
        lockqueue_queue_event(q, LOCKQUEUE_EVENT_GRANTED, LOCKQUEUE_REASON_NONE, e);
}

static unsigned lockqueue_pass_on(lockqueue *q, lq_lock *lock, uint64_t now) {
        if (q->frozen || lock->holder || !lock->first_waiter)
                return 0;
        lockqueue_grant(q, lock->first_waiter, now);
        return 1;
}

/* Ends the holder e's grant (reporting it unless the holder released it itself) and passes the
 * lock on. The owner object is left for the caller to collect. */
static void lockqueue_end_grant(lockqueue *q, lq_entry *e, lockqueue_reason reason, uint64_t now) {
        lq_lock *lock = e->lock;

        assert(lock->holder == e);
        if (reason != LOCKQUEUE_REASON_NONE)
                lockqueue_queue_event(q, LOCKQUEUE_EVENT_REVOKED, reason, e);
        lockqueue_entry_free(q, e);
        lockqueue_pass_on(q, lock, now);
        lockqueue_lock_gc(q, lock);
}

static int lockqueue_expire_due(lockqueue *q, uint64_t now) {
        int n = 0;

        for (;;) {
                GSequenceIter *it = g_sequence_get_begin_iter(q->deadlines);
                lq_entry *e;
                lq_owner *owner;

                if (g_sequence_iter_is_end(it))
                        break;
                e = g_sequence_get(it);
                if (e->deadline > now)
                        break;
                /* The next holder's lease starts now, so it is > now: this loop ends. */
                owner = e->owner;
                lockqueue_end_grant(q, e, LOCKQUEUE_REASON_EXPIRED, now);
                lockqueue_owner_gc(q, owner);
                n++;
        }
        return n;
}

int lockqueue_new(lockqueue **ret, lockqueue_event_t callback, void *userdata) {
        _cleanup_(lockqueue_freep) lockqueue *q = NULL;

        assert_return(ret, -EINVAL);

        q = g_new(lockqueue, 1);
        *q = (lockqueue) {
                .callback = callback,
                .userdata = userdata,
                .limits = {
                        .max_locks_per_owner = LOCKQUEUE_MAX_LOCKS_PER_OWNER_DEFAULT,
                        .max_waiters_per_lock = LOCKQUEUE_MAX_WAITERS_PER_LOCK_DEFAULT,
                        .max_name_len = LOCKQUEUE_MAX_NAME_LEN_DEFAULT,
                        .max_reasserted_locks = LOCKQUEUE_MAX_REASSERTED_LOCKS_DEFAULT,
                },
                .pending = G_QUEUE_INIT,
        };
        q->locks = g_hash_table_new(g_str_hash, g_str_equal);
        q->owners = g_hash_table_new(g_str_hash, g_str_equal);
        q->entries = g_hash_table_new(entry_hash, entry_equal);
        q->deadlines = g_sequence_new(NULL);

        *ret = TAKE_PTR(q);
        return 0;
}

lockqueue *lockqueue_free(lockqueue *q) {
        GHashTableIter it;
        gpointer value;

        if (!q)
                return NULL;
        /* The dispatch loop in the caller's stack still uses q. */
        assert(!q->dispatching);

        while (q->first_lock) {
                lq_lock *lock = q->first_lock;

                if (lock->holder)
                        lockqueue_entry_free(q, lock->holder);
                while (lock->first_waiter)
                        lockqueue_entry_free(q, lock->first_waiter);
                lockqueue_lock_free(q, lock);
        }
        if (q->owners) {
                g_hash_table_iter_init(&it, q->owners);
                while (g_hash_table_iter_next(&it, NULL, &value)) {
                        lq_owner *owner = value;

                        g_hash_table_iter_remove(&it);
                        g_free(owner->name);
                        g_free(owner);
                }
        }
        g_queue_clear_full(&q->pending, (GDestroyNotify) lq_pending_free);
        if (q->deadlines)
                g_sequence_free(q->deadlines);
        if (q->entries)
                g_hash_table_destroy(q->entries);
        if (q->owners)
                g_hash_table_destroy(q->owners);
        if (q->locks)
                g_hash_table_destroy(q->locks);
        g_free(q);
        return NULL;
}

void lockqueue_get_limits(lockqueue *q, lockqueue_limits *ret) {
        assert(q && ret);
        *ret = q->limits;
}

int lockqueue_set_limits(lockqueue *q, const lockqueue_limits *limits) {
        assert_return(q && limits, -EINVAL);
        assert_return(limits->max_locks_per_owner > 0 && limits->max_waiters_per_lock > 0 &&
                              limits->max_name_len > 0 && limits->max_reasserted_locks > 0,
                      -EINVAL);

        q->limits = *limits;
        return 0;
}

static int lockqueue_add(lockqueue *q, const char *lock_name, const char *owner_name,
                         uint64_t request, uint64_t lease_usec, uint64_t now, bool may_wait,
                         uint64_t *ret_token) {
        lq_lock *lock;
        lq_owner *owner;
        lq_entry *e;
        bool grant;

        lockqueue_expire_due(q, now);

        lock = g_hash_table_lookup(q->locks, lock_name);
        owner = g_hash_table_lookup(q->owners, owner_name);
        e = lockqueue_find_entry(q, lock, owner);
        if (e)
                return e->waiting ? -EALREADY : -EDEADLK;

        grant = !q->frozen && (!lock || (!lock->holder && !lock->first_waiter));
        if (!grant && !may_wait)
                return -EAGAIN;
        if (owner && owner->n_entries >= q->limits.max_locks_per_owner)
                return -ENOBUFS;
        if (!grant && lock && lock->n_waiters >= q->limits.max_waiters_per_lock)
                return -ENOBUFS;

        if (!lock)
                lock = lockqueue_lock_new(q, lock_name);
        if (!owner)
                owner = lockqueue_owner_new(q, owner_name);
        e = lockqueue_entry_new(q, lock, owner, request, lease_usec);

        if (!grant) {
                lockqueue_waiter_append(q, e);
                if (ret_token)
                        *ret_token = 0;
                return 0;
        }

        lockqueue_grant(q, e, now);
        if (ret_token)
                *ret_token = e->token;
        return 1;
}

int lockqueue_acquire(lockqueue *q, const char *lock, const char *owner, uint64_t request,
                      uint64_t lease_usec, uint64_t now, uint64_t *ret_token) {
        int r;

        assert_return(q, -EINVAL);
        assert_return(name_is_valid(lock, q->limits.max_name_len), -EINVAL);
        assert_return(name_is_valid(owner, LOCKQUEUE_OWNER_NAME_MAX), -EINVAL);

        r = lockqueue_add(q, lock, owner, request, lease_usec, now, true, ret_token);
        lockqueue_dispatch(q);
        return r;
}

int lockqueue_try_acquire(lockqueue *q, const char *lock, const char *owner, uint64_t request,
                          uint64_t lease_usec, uint64_t now, uint64_t *ret_token) {
        int r;

        assert_return(q, -EINVAL);
        assert_return(name_is_valid(lock, q->limits.max_name_len), -EINVAL);
        assert_return(name_is_valid(owner, LOCKQUEUE_OWNER_NAME_MAX), -EINVAL);

        r = lockqueue_add(q, lock, owner, request, lease_usec, now, false, ret_token);
        lockqueue_dispatch(q);
        return r;
}

static int lockqueue_release_one(lockqueue *q, const char *lock_name, const char *owner_name,
                                 uint64_t token, uint64_t now) {
        lq_lock *lock;
        lq_entry *e;
        lq_owner *owner;

        lockqueue_expire_due(q, now);

        lock = g_hash_table_lookup(q->locks, lock_name);
        if (!lock)
                return -ENOENT;
        e = lock->holder;
        if (!e || !g_str_equal(e->owner->name, owner_name))
                return -EPERM;
        if (e->token != token)
                return -ESTALE;

        owner = e->owner;
        lockqueue_end_grant(q, e, LOCKQUEUE_REASON_NONE, now);
        lockqueue_owner_gc(q, owner);
        return 0;
}

int lockqueue_release(lockqueue *q, const char *lock, const char *owner, uint64_t token,
                      uint64_t now) {
        int r;

        assert_return(q, -EINVAL);
        assert_return(name_is_valid(lock, q->limits.max_name_len), -EINVAL);
        assert_return(name_is_valid(owner, LOCKQUEUE_OWNER_NAME_MAX), -EINVAL);

        r = lockqueue_release_one(q, lock, owner, token, now);
        lockqueue_dispatch(q);
        return r;
}

int lockqueue_set_deadline(lockqueue *q, const char *lock_name, const char *owner_name, uint64_t token,
                           uint64_t deadline, uint64_t now) {
        lq_lock *lock;
        lq_entry *e;
        int r = 0;

        assert_return(q, -EINVAL);
        assert_return(name_is_valid(lock_name, q->limits.max_name_len), -EINVAL);
        assert_return(name_is_valid(owner_name, LOCKQUEUE_OWNER_NAME_MAX), -EINVAL);

        lockqueue_expire_due(q, now);

        lock = g_hash_table_lookup(q->locks, lock_name);
        e = lock ? lock->holder : NULL;
        if (!lock)
                r = -ENOENT;
        else if (!e || !g_str_equal(e->owner->name, owner_name))
                r = -EPERM;
        else if (e->token != token)
                r = -ESTALE;
        else {
                if (e->deadline_iter)
                        g_sequence_remove(e->deadline_iter);
                e->deadline_iter = NULL;
                e->deadline = deadline;
                if (deadline != LOCKQUEUE_NO_DEADLINE)
                        e->deadline_iter = g_sequence_insert_sorted(q->deadlines, e,
                                                                    entry_compare_deadline, NULL);
                /* A deadline already due ends the grant now, as any call at `now` would. */
                lockqueue_expire_due(q, now);
        }
        lockqueue_dispatch(q);
        return r;
}

size_t lockqueue_get_n_waiters(lockqueue *q, const char *lock_name) {
        lq_lock *lock;

        if (!q || !lock_name)
                return 0;
        lock = g_hash_table_lookup(q->locks, lock_name);
        return lock ? lock->n_waiters : 0;
}

int lockqueue_cancel(lockqueue *q, const char *lock_name, const char *owner_name,
                     uint64_t request) {
        lq_lock *lock;
        lq_owner *owner;
        lq_entry *e;

        assert_return(q, -EINVAL);
        assert_return(name_is_valid(lock_name, q->limits.max_name_len), -EINVAL);
        assert_return(name_is_valid(owner_name, LOCKQUEUE_OWNER_NAME_MAX), -EINVAL);

        lock = g_hash_table_lookup(q->locks, lock_name);
        owner = g_hash_table_lookup(q->owners, owner_name);
        e = lockqueue_find_entry(q, lock, owner);
        if (!e || !e->waiting || e->request != request)
                return -ENOENT;

        /* Not frozen, the lock has a holder (invariant 2); frozen, it must not pass on: either
         * way removing a waiter grants nothing. */
        lockqueue_entry_free(q, e);
        lockqueue_lock_gc(q, lock);
        lockqueue_owner_gc(q, owner);
        return 0;
}

static int lockqueue_drop_one(lockqueue *q, const char *owner_name, uint64_t now) {
        lq_owner *owner;
        lq_entry *e, *next;
        int n = 0;

        lockqueue_expire_due(q, now);

        owner = g_hash_table_lookup(q->owners, owner_name);
        if (!owner)
                return 0;

        /* Waits first: no lock it releases below could then be passed back to it. */
        for (e = owner->first; e; e = next) {
                lq_lock *lock = e->lock;

                next = e->owner_next;
                if (!e->waiting)
                        continue;
                lockqueue_entry_free(q, e);
                lockqueue_lock_gc(q, lock);
                n++;
        }
        while ((e = owner->first)) {
                lockqueue_end_grant(q, e, LOCKQUEUE_REASON_GONE, now);
                n++;
        }
        lockqueue_owner_gc(q, owner);
        return n;
}

int lockqueue_drop_owner(lockqueue *q, const char *owner, uint64_t now) {
        int r;

        assert_return(q, -EINVAL);
        assert_return(name_is_valid(owner, LOCKQUEUE_OWNER_NAME_MAX), -EINVAL);

        r = lockqueue_drop_one(q, owner, now);
        lockqueue_dispatch(q);
        return r;
}

int lockqueue_expire(lockqueue *q, uint64_t now) {
        int r;

        assert_return(q, -EINVAL);

        r = lockqueue_expire_due(q, now);
        lockqueue_dispatch(q);
        return r;
}

uint64_t lockqueue_next_deadline(lockqueue *q) {
        GSequenceIter *it;

        assert(q);
        it = g_sequence_get_begin_iter(q->deadlines);
        if (g_sequence_iter_is_end(it))
                return LOCKQUEUE_NO_DEADLINE;
        return ((lq_entry *) g_sequence_get(it))->deadline;
}

int lockqueue_raise_token_floor(lockqueue *q, uint64_t floor) {
        assert_return(q, -EINVAL);
        assert_return(floor <= LOCKQUEUE_TOKEN_MAX, -ERANGE);

        q->last_token = MAX(q->last_token, floor);
        return 0;
}

uint64_t lockqueue_get_last_token(lockqueue *q) {
        assert(q);
        return q->last_token;
}

int lockqueue_set_frozen(lockqueue *q, bool frozen, uint64_t now) {
        int n = 0;

        assert_return(q, -EINVAL);

        lockqueue_expire_due(q, now);

        if (frozen)
                q->frozen = true;
        else if (q->frozen) {
                lq_lock *next;

                q->frozen = false;
                /* Anything reported from now on predates the grants about to be made. */
                q->settled_token = q->last_token;
                q->n_reasserted_locks = 0;
                for (lq_lock *lock = q->first_lock; lock; lock = next) {
                        next = lock->next;
                        n += lockqueue_pass_on(q, lock, now);
                        lockqueue_lock_gc(q, lock);
                }
        }

        lockqueue_dispatch(q);
        return n;
}

bool lockqueue_is_frozen(lockqueue *q) {
        assert(q);
        return q->frozen;
}

static int lockqueue_reassert_one(lockqueue *q, const char *lock_name, const char *owner_name,
                                  uint64_t token, uint64_t lease_left_usec, uint64_t now) {
        lq_lock *lock;
        lq_owner *owner;
        lq_entry *e;

        lockqueue_expire_due(q, now);

        if (!q->frozen)
                return -EPERM;

        lock = g_hash_table_lookup(q->locks, lock_name);
        owner = g_hash_table_lookup(q->owners, owner_name);
        if (lock && lock->holder) {
                /* A retry of a claim already believed (its reply was lost) changes nothing. */
                if (lock->holder->owner == owner && lock->holder->token == token)
                        return 0;
                return -EBUSY;
        }
        if (lockqueue_find_entry(q, lock, owner))
                return -EALREADY;
        if (token <= q->settled_token || (lock && token <= lock->last_token))
                return -ESTALE;
        if (owner && owner->n_entries >= q->limits.max_locks_per_owner)
                return -ENOBUFS;
        if (!(lock && lockqueue_lock_is_remembered(q, lock)) &&
            q->n_reasserted_locks >= q->limits.max_reasserted_locks)
                return -ENOBUFS;

        if (!lock)
                lock = lockqueue_lock_new(q, lock_name);
        if (!lockqueue_lock_is_remembered(q, lock))
                q->n_reasserted_locks++;
        if (!owner)
                owner = lockqueue_owner_new(q, owner_name);
        e = lockqueue_entry_new(q, lock, owner, 0, 0);
        lockqueue_set_holder(q, e, token, deadline_after(now, lease_left_usec));
        q->last_token = MAX(q->last_token, token);
        return 0;
}

int lockqueue_reassert(lockqueue *q, const char *lock, const char *owner, uint64_t token,
                       uint64_t lease_left_usec, uint64_t now) {
        int r;

        assert_return(q, -EINVAL);
        assert_return(name_is_valid(lock, q->limits.max_name_len), -EINVAL);
        assert_return(name_is_valid(owner, LOCKQUEUE_OWNER_NAME_MAX), -EINVAL);
        assert_return(token > 0, -EINVAL);
        assert_return(token <= LOCKQUEUE_TOKEN_MAX, -ERANGE);

        r = lockqueue_reassert_one(q, lock, owner, token, lease_left_usec, now);
        lockqueue_dispatch(q);
        return r;
}

size_t lockqueue_get_n_locks(lockqueue *q) {
        assert(q);
        return g_hash_table_size(q->locks);
}

size_t lockqueue_get_n_owners(lockqueue *q) {
        assert(q);
        return g_hash_table_size(q->owners);
}

int lockqueue_get_holder(lockqueue *q, const char *lock_name, const char **ret_owner,
                         uint64_t *ret_token, uint64_t *ret_deadline) {
        lq_lock *lock;

        assert_return(q && lock_name, -EINVAL);

        lock = g_hash_table_lookup(q->locks, lock_name);
        if (!lock || !lock->holder)
                return 0;
        if (ret_owner)
                *ret_owner = lock->holder->owner->name;
        if (ret_token)
                *ret_token = lock->holder->token;
        if (ret_deadline)
                *ret_deadline = lock->holder->deadline;
        return 1;
}

int lockqueue_list(lockqueue *q, lockqueue_lock_info **ret_infos, size_t *ret_n_infos) {
        _cleanup_(freep) void *block = NULL;
        lockqueue_lock_info *infos;
        const char **slots;
        size_t n_locks, i = 0;

        assert_return(q && ret_infos && ret_n_infos, -EINVAL);

        n_locks = g_hash_table_size(q->locks);
        if (n_locks > 0) {
                /* One block: the infos, then each lock's NULL-terminated waiter array. */
                block = malloc(n_locks * sizeof(lockqueue_lock_info) +
                               (q->n_waiters + n_locks) * sizeof(const char *));
                if (!block)
                        return -ENOMEM;
        }
        infos = block;
        /* No arithmetic on a NULL block (there is nothing to fill when there are no locks). */
        slots = infos ? (const char **) (infos + n_locks) : NULL;

        for (lq_lock *lock = q->first_lock; lock; lock = lock->next, i++) {
                infos[i] = (lockqueue_lock_info) {
                        .name = lock->name,
                        .holder = lock->holder ? lock->holder->owner->name : NULL,
                        .token = lock->holder ? lock->holder->token : 0,
                        .deadline = lock->holder ? lock->holder->deadline : LOCKQUEUE_NO_DEADLINE,
                        .n_waiters = lock->n_waiters,
                        .waiters = slots,
                };
                for (lq_entry *w = lock->first_waiter; w; w = w->wait_next)
                        *slots++ = w->owner->name;
                *slots++ = NULL;
        }
        assert(i == n_locks);

        *ret_infos = TAKE_PTR(block);
        *ret_n_infos = n_locks;
        return 0;
}

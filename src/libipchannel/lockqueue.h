/* SPDX-License-Identifier: MIT */
/* Lock queue: the pure state machine behind the lock service (named locks, FIFO waiters, leases,
 * fencing tokens, takeover recovery). No bus, no clock, no threads: time comes in as `now`. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct lockqueue lockqueue;

/* A deadline that never comes: grants without a lease, and next_deadline() with no lease. */
#define LOCKQUEUE_NO_DEADLINE UINT64_MAX
/* The highest token floor or reported token accepted: leaves 2^63 grants of headroom, so the
 * counter never wraps, and every token also fits an int64. */
#define LOCKQUEUE_TOKEN_MAX ((uint64_t) INT64_MAX)
/* Owners are bus unique names, which D-Bus bounds to 255 bytes. */
#define LOCKQUEUE_OWNER_NAME_MAX 255

#define LOCKQUEUE_MAX_LOCKS_PER_OWNER_DEFAULT 1024
#define LOCKQUEUE_MAX_WAITERS_PER_LOCK_DEFAULT 65536
#define LOCKQUEUE_MAX_NAME_LEN_DEFAULT 255
#define LOCKQUEUE_MAX_REASSERTED_LOCKS_DEFAULT 65536

typedef enum lockqueue_event_kind {
        LOCKQUEUE_EVENT_GRANTED,
        LOCKQUEUE_EVENT_REVOKED,
} lockqueue_event_kind;

typedef enum lockqueue_reason {
        LOCKQUEUE_REASON_NONE,          /* GRANTED events */
        LOCKQUEUE_REASON_EXPIRED,       /* the lease ran out */
        LOCKQUEUE_REASON_GONE,          /* lockqueue_drop_owner(): the owner's connection closed */
} lockqueue_reason;

/* Strings are valid for the duration of the callback only. */
typedef struct lockqueue_event {
        lockqueue_event_kind kind;
        lockqueue_reason reason;        /* REVOKED only */
        const char *lock;
        const char *owner;
        uint64_t request;               /* of the acquire that led to the grant; 0 if reasserted */
        uint64_t token;
        uint64_t deadline;              /* of the grant; LOCKQUEUE_NO_DEADLINE without a lease */
} lockqueue_event;

/* Fires once for every grant (immediate ones included) and every revocation. A plain release,
 * a cancel, a reassert and the waits removed by drop_owner() fire nothing: the caller made
 * those and knows. The callback may call any lockqueue_*() function except lockqueue_free();
 * events caused by such a nested call are delivered after the callback returns, in order. */
typedef void (*lockqueue_event_t)(lockqueue *q, const lockqueue_event *ev, void *userdata);

typedef struct lockqueue_limits {
        size_t max_locks_per_owner;     /* held + awaited; beyond: -ENOBUFS */
        size_t max_waiters_per_lock;    /* beyond: -ENOBUFS */
        size_t max_name_len;            /* bytes of a lock name; beyond: -EINVAL */
        size_t max_reasserted_locks;    /* per freeze; beyond: -ENOBUFS (see lockqueue_reassert) */
} lockqueue_limits;

/* callback may be NULL (no events). */
int lockqueue_new(lockqueue **ret, lockqueue_event_t callback, void *userdata);
/* Fires no events. Must not be called from the queue's own callback (asserts). NULL-safe. */
lockqueue *lockqueue_free(lockqueue *q);

static inline void lockqueue_freep(lockqueue **q) {
        lockqueue_free(*q);
}

void lockqueue_get_limits(lockqueue *q, lockqueue_limits *ret);
/* Every field must be >= 1 (-EINVAL). New limits apply to later requests; nothing is evicted. */
int lockqueue_set_limits(lockqueue *q, const lockqueue_limits *limits);

/*
 * Every call that takes `now` (microseconds, any monotonic base the caller keeps) first revokes
 * the grants whose deadline is <= now, exactly as lockqueue_expire() would, so a result never
 * depends on whether the caller's timer fired on time. Those revocations happen even if the
 * call itself then fails; a failed call changes nothing else.
 *
 * Lock names: non-empty UTF-8 of at most max_name_len bytes. Owners: non-empty UTF-8 of at most
 * LOCKQUEUE_OWNER_NAME_MAX bytes. Anything else: -EINVAL.
 */

/* Returns 1 and the token if granted at once (the GRANTED event has fired before this returns,
 * unless called from inside a callback), 0 if queued (*ret_token = 0; GRANTED fires later).
 * -EDEADLK: owner already holds lock. -EALREADY: owner already waits for it.
 * -ENOBUFS: owner at max_locks_per_owner, or lock at max_waiters_per_lock.
 * lease_usec: 0 = no lease; the lease starts when the lock is granted. */
int lockqueue_acquire(lockqueue *q, const char *lock, const char *owner, uint64_t request,
                      uint64_t lease_usec, uint64_t now, uint64_t *ret_token);
/* As acquire, but never queues: -EAGAIN unless the lock is free, nobody waits and the queue is
 * not frozen. Returns 1 on success. */
int lockqueue_try_acquire(lockqueue *q, const char *lock, const char *owner, uint64_t request,
                          uint64_t lease_usec, uint64_t now, uint64_t *ret_token);

/* Ends owner's grant and passes the lock to the first waiter. Counts only for the current
 * holder with the current token: -ENOENT nobody holds or waits for lock (it is unknown),
 * -EPERM owner does not hold it (someone else does, or nobody), -ESTALE owner holds it under
 * another token (a late or duplicate release from an earlier grant). */
int lockqueue_release(lockqueue *q, const char *lock, const char *owner, uint64_t token,
                      uint64_t now);

/* Sets the deadline of owner's current grant of lock (token must be the grant's) to deadline,
 * absolute like now, or LOCKQUEUE_NO_DEADLINE: the lock service parks a cached grant (no lease
 * while its holder does not use it) and restarts its lease when the holder takes it again. A
 * deadline <= now revokes the grant at once (REVOKED, reason EXPIRED). Errors as release. */
int lockqueue_set_deadline(lockqueue *q, const char *lock, const char *owner, uint64_t token,
                           uint64_t deadline, uint64_t now);

/* Removes owner's wait for lock, made with request. -ENOENT if there is no such wait (also when
 * owner holds the lock: a granted request is released, not cancelled). Never grants. */
int lockqueue_cancel(lockqueue *q, const char *lock, const char *owner, uint64_t request);

/* The owner is gone: its waits are removed and its grants revoked (REVOKED, reason GONE), each
 * lock passing on at once. Returns the number of entries (grants + waits) removed; 0 for an
 * owner the queue does not know. */
int lockqueue_drop_owner(lockqueue *q, const char *owner, uint64_t now);

/* Revokes every grant with deadline <= now (REVOKED, reason EXPIRED) and passes each lock on.
 * Returns the number of grants revoked. */
int lockqueue_expire(lockqueue *q, uint64_t now);
/* The earliest deadline of any grant, or LOCKQUEUE_NO_DEADLINE: arm one timer for it. */
uint64_t lockqueue_next_deadline(lockqueue *q);

/* Every later token is > floor. Never lowers. -ERANGE if floor > LOCKQUEUE_TOKEN_MAX. */
int lockqueue_raise_token_floor(lockqueue *q, uint64_t floor);
/* The highest token granted, reported or set as floor so far: the next token is above it. */
uint64_t lockqueue_get_last_token(lockqueue *q);

/*
 * Recovery after the lock service moved to a new host. While frozen the queue grants nothing:
 * acquire queues (in order), try_acquire returns -EAGAIN, and a lock whose grant ends stays
 * free. Unfreezing grants every free lock to its first waiter (locks in the order they were
 * created) and returns the number of grants made.
 */
int lockqueue_set_frozen(lockqueue *q, bool frozen, uint64_t now);
bool lockqueue_is_frozen(lockqueue *q);

/* While frozen: owner reports that it holds lock under token, for lease_left_usec more (0 = no
 * lease). Believed (0, no event) when nobody holds the lock, and the token floor rises to
 * token. Refused: -EPERM not frozen; -EBUSY someone else, or owner under another token,
 * holds it (the same claim again returns 0); -EALREADY owner waits for it; -ESTALE token is
 * not above every token this queue granted or knew when it last unfroze, or not above a token
 * this lock held during this freeze (the claim predates a later grant, so accepting it would
 * make the lock's tokens go backwards); -EINVAL token 0; -ERANGE token > LOCKQUEUE_TOKEN_MAX;
 * -ENOBUFS owner at its limit, or max_reasserted_locks locks reasserted during this freeze. */
int lockqueue_reassert(lockqueue *q, const char *lock, const char *owner, uint64_t token,
                       uint64_t lease_left_usec, uint64_t now);

/* Introspection, e.g. for the busctl-visible listing. */
size_t lockqueue_get_n_locks(lockqueue *q);     /* lock objects in memory */
size_t lockqueue_get_n_owners(lockqueue *q);    /* owners with at least one grant or wait */

/* How many wait for lock (0 for an unknown lock). */
size_t lockqueue_get_n_waiters(lockqueue *q, const char *lock);

/* 1 and the holder if lock is held (each ret_* may be NULL; the owner string is borrowed until
 * the queue next changes), 0 if not held or unknown. */
int lockqueue_get_holder(lockqueue *q, const char *lock, const char **ret_owner,
                         uint64_t *ret_token, uint64_t *ret_deadline);

typedef struct lockqueue_lock_info {
        const char *name;
        const char *holder;             /* NULL if none */
        uint64_t token;                 /* 0 if no holder */
        uint64_t deadline;              /* LOCKQUEUE_NO_DEADLINE if none */
        size_t n_waiters;
        const char **waiters;           /* n_waiters owners in FIFO order, then NULL */
} lockqueue_lock_info;

/* Every lock, in creation order, as one block: free() *ret_infos (NULL when there are no locks).
 * Strings are borrowed from the queue: valid until it next changes. -ENOMEM. */
int lockqueue_list(lockqueue *q, lockqueue_lock_info **ret_infos, size_t *ret_n_infos);

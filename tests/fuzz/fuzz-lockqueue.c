/* SPDX-License-Identifier: MIT */
/* libFuzzer target: the lock queue driven by random operation sequences, invariants checked. */

/*
 * The lock service feeds the queue whatever its callers send, in any order, so the queue's
 * invariants (lockqueue.c, top comment) must hold after any sequence of calls, not only the
 * ones the unit tests thought of. Each input is a program: every 4 bytes are one operation on
 * a few owners and locks, with small tokens, leases and time steps so that collisions, stale
 * tokens and expiries are common. After every step the state seen through lockqueue_list() and
 * the events seen so far are checked, and the process aborts on the first violation:
 *   - lock names are unique, and a lock is listed only while it has a holder or waiters (or
 *     while frozen, when a reasserted lock may be remembered empty);
 *   - no owner both holds and waits for a lock, nor waits twice;
 *   - unless frozen, a lock with waiters has a holder;
 *   - n_waiters matches the waiter list, and get_n_locks()/get_holder()/get_n_waiters() agree
 *     with the list (the operations include parking a grant and restarting its lease);
 *   - each lock's tokens strictly increase from one holder to the next, and every GRANTED
 *     event takes a token above every token granted or reasserted before;
 *   - no holder's deadline has passed after a call that took `now`, and next_deadline() is the
 *     earliest holder deadline;
 *   - a REVOKED event names the holder and token that were current.
 * Byte 0 of an op can also make the GRANTED callback release the grant from inside the
 * callback, which exercises the nested-call path.
 */

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>

#include "lockqueue.h"

#define N_OWNERS 5
#define N_LOCKS 4

static const char *const owners[N_OWNERS] = { ":1.1", ":1.2", ":1.3", ":1.4", ":1.5" };
static const char *const locks[N_LOCKS] = { "a", "b", "c", "d" };

typedef struct model {
        uint64_t max_token;                     /* highest token granted or reasserted */
        uint64_t lock_token[N_LOCKS];           /* highest token each lock has had */
        uint64_t now;
        bool release_in_callback;
        unsigned n_events;
} model;

#define check(expr)                                                                        \
        do {                                                                               \
                if (!(expr)) {                                                             \
                        fprintf(stderr, "%s:%d: invariant violated: %s\n", __FILE__,       \
                                __LINE__, #expr);                                          \
                        abort();                                                           \
                }                                                                          \
        } while (0)

static int lock_index(const char *name) {
        for (int i = 0; i < N_LOCKS; i++)
                if (strcmp(name, locks[i]) == 0)
                        return i;
        return -1;
}

static void on_event(lockqueue *q, const lockqueue_event *ev, void *userdata) {
        model *m = userdata;
        int li = lock_index(ev->lock);

        check(li >= 0);
        m->n_events++;
        if (ev->kind == LOCKQUEUE_EVENT_GRANTED) {
                /* One counter for the whole queue: every grant is above all before it. */
                check(ev->token > m->max_token);
                check(ev->token > m->lock_token[li]);
                m->max_token = ev->token;
                m->lock_token[li] = ev->token;
                if (m->release_in_callback) {
                        /* The grant may already be gone (a later event of the same call ended
                         * it), so only the error codes for "no longer yours" are allowed. */
                        int r = lockqueue_release(q, ev->lock, ev->owner, ev->token, m->now);
                        check(r == 0 || r == -EPERM || r == -ESTALE || r == -ENOENT);
                }
        } else {
                check(ev->kind == LOCKQUEUE_EVENT_REVOKED);
                check(ev->reason == LOCKQUEUE_REASON_EXPIRED || ev->reason == LOCKQUEUE_REASON_GONE);
                check(ev->token > 0 && ev->token <= m->max_token);
                if (ev->reason == LOCKQUEUE_REASON_EXPIRED)
                        check(ev->deadline != LOCKQUEUE_NO_DEADLINE);
        }
}

static void check_state(lockqueue *q, model *m, bool after_now) {
        lockqueue_lock_info *infos = NULL;
        size_t n = 0;
        uint64_t earliest = LOCKQUEUE_NO_DEADLINE;
        bool frozen = lockqueue_is_frozen(q);

        check(lockqueue_list(q, &infos, &n) == 0);
        check(n == lockqueue_get_n_locks(q));
        check(n <= N_LOCKS);
        check(lockqueue_get_last_token(q) >= m->max_token);

        for (size_t i = 0; i < n; i++) {
                const lockqueue_lock_info *x = &infos[i];
                int li = lock_index(x->name);
                const char *holder = NULL;
                uint64_t token = 0, deadline = 0;
                size_t n_waiters = 0;

                check(li >= 0);
                for (size_t j = 0; j < i; j++)
                        check(strcmp(infos[j].name, x->name) != 0);

                check(lockqueue_get_holder(q, x->name, &holder, &token, &deadline) ==
                      (x->holder ? 1 : 0));
                if (x->holder) {
                        check(strcmp(holder, x->holder) == 0);
                        check(token == x->token && deadline == x->deadline);
                        check(x->token > 0);
                        /* A holder's token is the newest this lock has had. */
                        check(x->token >= m->lock_token[li]);
                        m->lock_token[li] = x->token;
                        if (x->token > m->max_token)
                                m->max_token = x->token;
                        if (x->deadline != LOCKQUEUE_NO_DEADLINE) {
                                if (after_now)
                                        check(x->deadline > m->now);
                                if (x->deadline < earliest)
                                        earliest = x->deadline;
                        }
                } else {
                        check(x->token == 0 && x->deadline == LOCKQUEUE_NO_DEADLINE);
                }

                for (const char **w = x->waiters; *w; w++, n_waiters++) {
                        check(!x->holder || strcmp(*w, x->holder) != 0);
                        for (const char **v = x->waiters; v < w; v++)
                                check(strcmp(*v, *w) != 0);
                }
                check(n_waiters == x->n_waiters);
                check(n_waiters == lockqueue_get_n_waiters(q, x->name));
                if (!frozen)
                        check(n_waiters == 0 || x->holder);
                /* Empty locks are freed, except those remembered during a freeze. */
                if (!frozen)
                        check(x->holder || n_waiters > 0);
        }
        check(lockqueue_next_deadline(q) == earliest);
        free(infos);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        model m = { .now = 1000 };
        lockqueue *q = NULL;
        uint64_t request = 0;

        if (size > 4 * 512)
                return 0;

        check(lockqueue_new(&q, on_event, &m) == 0);
        /* Small limits, so that -ENOBUFS paths are reached too. */
        check(lockqueue_set_limits(q, &(lockqueue_limits) {
                .max_locks_per_owner = 3,
                .max_waiters_per_lock = 3,
                .max_name_len = 255,
                .max_reasserted_locks = 3,
        }) == 0);

        for (size_t i = 0; i + 4 <= size; i += 4) {
                uint8_t op = data[i] & 0x0f;
                const char *owner = owners[(data[i + 1] & 0x0f) % N_OWNERS];
                const char *lock = locks[(data[i + 1] >> 4) % N_LOCKS];
                uint64_t small = data[i + 2];           /* token, lease or request */
                uint64_t step = data[i + 3] & 0x3f;     /* time passing before the call */
                bool takes_now = true;
                uint64_t token = 0;
                int r;

                m.release_in_callback = data[i] & 0x80;
                m.now += step;

                switch (op % 11) {
                case 0:
                        r = lockqueue_acquire(q, lock, owner, ++request, small % 4 * 16, m.now, &token);
                        check(r == 0 || r == 1 || r == -EDEADLK || r == -EALREADY || r == -ENOBUFS);
                        check(r == 1 ? token > 0 : token == 0);
                        break;
                case 1:
                        r = lockqueue_try_acquire(q, lock, owner, ++request, small % 4 * 16, m.now,
                                                  &token);
                        check(r == 1 || r == -EAGAIN || r == -EDEADLK || r == -EALREADY ||
                              r == -ENOBUFS);
                        if (r == 1)
                                check(token > 0);
                        break;
                case 2: {
                        /* Mostly the current token, sometimes a stale or made-up one. */
                        uint64_t held = 0;

                        (void) lockqueue_get_holder(q, lock, NULL, &held, NULL);
                        token = (small & 0x80) ? small & 0x7f : held;
                        r = lockqueue_release(q, lock, owner, token, m.now);
                        check(r == 0 || r == -ENOENT || r == -EPERM || r == -ESTALE);
                        break;
                }
                case 3:
                        /* Requests are numbered from 1; a small one may or may not match. */
                        r = lockqueue_cancel(q, lock, owner, (small & 0x80) ? request : small & 0x7f);
                        check(r == 0 || r == -ENOENT);
                        takes_now = false;
                        m.now -= step;  /* no `now`: time passing would not be seen */
                        break;
                case 4:
                        r = lockqueue_drop_owner(q, owner, m.now);
                        check(r >= 0);
                        break;
                case 5:
                        r = lockqueue_expire(q, m.now);
                        check(r >= 0);
                        break;
                case 6:
                        r = lockqueue_set_frozen(q, true, m.now);
                        check(r == 0);
                        break;
                case 7:
                        r = lockqueue_set_frozen(q, false, m.now);
                        check(r >= 0);
                        break;
                case 8: {
                        /* Near the current counter, so some claims are fresh and some stale. */
                        uint64_t last = lockqueue_get_last_token(q);

                        token = last + (small & 0x0f);
                        token = token > 8 ? token - 8 : token;
                        r = lockqueue_reassert(q, lock, owner, token, (small >> 4) * 8, m.now);
                        check(r == 0 || r == -EPERM || r == -EBUSY || r == -EALREADY ||
                              r == -ESTALE || r == -EINVAL || r == -ENOBUFS);
                        if (r == 0 && lockqueue_get_holder(q, lock, NULL, &token, NULL) > 0) {
                                int li = lock_index(lock);

                                check(token >= m.lock_token[li]);
                                m.lock_token[li] = token;
                                if (token > m.max_token)
                                        m.max_token = token;
                        }
                        break;
                }
                case 10: {
                        /* Park (no deadline) or a new lease, which may be due at once; mostly
                         * with the holder's token. */
                        uint64_t held = 0;

                        (void) lockqueue_get_holder(q, lock, NULL, &held, NULL);
                        token = (small & 0x40) ? small & 0x3f : held;
                        r = lockqueue_set_deadline(q, lock, owner, token,
                                                   (small & 0x80) ? LOCKQUEUE_NO_DEADLINE : m.now + (small & 0x3f),
                                                   m.now);
                        check(r == 0 || r == -ENOENT || r == -EPERM || r == -ESTALE);
                        break;
                }
                case 9:
                        r = lockqueue_raise_token_floor(q, lockqueue_get_last_token(q) + small % 3);
                        check(r == 0);
                        takes_now = false;
                        m.now -= step;
                        break;
                }
                m.release_in_callback = false;
                check_state(q, &m, takes_now);
        }

        lockqueue_free(q);
        return 0;
}

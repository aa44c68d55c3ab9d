/* SPDX-License-Identifier: MIT */
/* Unit tests of the lock queue state machine: every transition, recovery, limits, and a
 * randomized run checked against a model after every step. */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <glib.h>

#include "lockqueue.h"
#include "macro.h"

/* ---- recording events ---------------------------------------------------------------------- */

typedef struct recorded {
        lockqueue_event_kind kind;
        lockqueue_reason reason;
        char *lock;
        char *owner;
        uint64_t request;
        uint64_t token;
        uint64_t deadline;
} recorded;

typedef struct recorder recorder;
/* Runs after an event was recorded: lets a test call back into the queue from the callback. */
typedef void (*recorder_hook_t)(lockqueue *q, const lockqueue_event *ev, recorder *rec);

struct recorder {
        GArray *events;
        recorder_hook_t hook;
        uint64_t now;                   /* the time the hook passes to the calls it makes */
        int hook_results[16];
        size_t n_hook_results;
        size_t n_events_at_nested_return;
        uint64_t nested_token;
};

static void recorded_clear(void *p) {
        recorded *r = p;

        g_free(r->lock);
        g_free(r->owner);
}

static void recorder_init(recorder *rec) {
        *rec = (recorder) {
                .events = g_array_new(false, true, sizeof(recorded)),
        };
        g_array_set_clear_func(rec->events, recorded_clear);
}

static void recorder_done(recorder *rec) {
        g_array_unref(rec->events);
}

static void record_event(lockqueue *q, const lockqueue_event *ev, void *userdata) {
        recorder *rec = userdata;
        recorded r = {
                .kind = ev->kind,
                .reason = ev->reason,
                .lock = g_strdup(ev->lock),
                .owner = g_strdup(ev->owner),
                .request = ev->request,
                .token = ev->token,
                .deadline = ev->deadline,
        };

        g_array_append_val(rec->events, r);
        if (rec->hook)
                rec->hook(q, ev, rec);
}

static const recorded *event_at(recorder *rec, size_t i) {
        ck_assert_uint_lt(i, rec->events->len);
        return &g_array_index(rec->events, recorded, i);
}

static void assert_granted(const recorded *ev, const char *lock, const char *owner, uint64_t request,
                           uint64_t deadline) {
        ck_assert_int_eq(ev->kind, LOCKQUEUE_EVENT_GRANTED);
        ck_assert_int_eq(ev->reason, LOCKQUEUE_REASON_NONE);
        ck_assert_str_eq(ev->lock, lock);
        ck_assert_str_eq(ev->owner, owner);
        ck_assert_uint_eq(ev->request, request);
        ck_assert_uint_eq(ev->deadline, deadline);
        ck_assert_uint_gt(ev->token, 0);
}

static void assert_revoked(const recorded *ev, const char *lock, const char *owner, uint64_t token,
                           lockqueue_reason reason) {
        ck_assert_int_eq(ev->kind, LOCKQUEUE_EVENT_REVOKED);
        ck_assert_int_eq(ev->reason, reason);
        ck_assert_str_eq(ev->lock, lock);
        ck_assert_str_eq(ev->owner, owner);
        ck_assert_uint_eq(ev->token, token);
}

/* owner NULL: the lock must not be held. token 0: any token. */
static void assert_holder(lockqueue *q, const char *lock, const char *owner, uint64_t token) {
        const char *holder = NULL;
        uint64_t t = 0;
        int r = lockqueue_get_holder(q, lock, &holder, &t, NULL);

        if (!owner) {
                ck_assert_int_eq(r, 0);
                return;
        }
        ck_assert_int_eq(r, 1);
        ck_assert_str_eq(holder, owner);
        if (token != 0)
                ck_assert_uint_eq(t, token);
}

/* The waiters of lock, as a space-separated string ("" when none or unknown). */
static char *waiters_of(lockqueue *q, const char *lock) {
        _cleanup_(freep) lockqueue_lock_info *infos = NULL;
        GString *s = g_string_new(NULL);
        size_t n = 0;

        ck_assert_int_eq(lockqueue_list(q, &infos, &n), 0);
        for (size_t i = 0; i < n; i++) {
                if (strcmp(infos[i].name, lock) != 0)
                        continue;
                for (size_t j = 0; j < infos[i].n_waiters; j++)
                        g_string_append_printf(s, "%s%s", j > 0 ? " " : "", infos[i].waiters[j]);
                ck_assert_ptr_null(infos[i].waiters[infos[i].n_waiters]);
        }
        return g_string_free(s, false);
}

static void assert_waiters(lockqueue *q, const char *lock, const char *expected) {
        g_autofree char *w = waiters_of(q, lock);

        ck_assert_str_eq(w, expected);
}

#define NO LOCKQUEUE_NO_DEADLINE

/* A queue with a recorder, torn down by the cleanup attribute. */
typedef struct fixture {
        lockqueue *q;
        recorder rec;
} fixture;

static void fixture_init(fixture *f) {
        recorder_init(&f->rec);
        ck_assert_int_eq(lockqueue_new(&f->q, record_event, &f->rec), 0);
}

static void fixture_done(fixture *f) {
        f->q = lockqueue_free(f->q);
        recorder_done(&f->rec);
}

#define FIXTURE(f)                                         \
        _cleanup_(fixture_done) fixture f = {};            \
        fixture_init(&f)

/* ---- grants and FIFO ------------------------------------------------------------------------ */

START_TEST(test_acquire_of_free_lock_grants_at_once_and_reports_it) {
        FIXTURE(f);
        uint64_t token = 0, token_b = 0;

        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.1", 7, 0, 100, &token), 1);
        ck_assert_uint_gt(token, 0);
        /* The GRANTED event fired before acquire returned: one code path for the caller. */
        ck_assert_uint_eq(f.rec.events->len, 1);
        assert_granted(event_at(&f.rec, 0), "a", ":1.1", 7, NO);
        ck_assert_uint_eq(event_at(&f.rec, 0)->token, token);
        assert_holder(f.q, "a", ":1.1", token);

        /* With a lease the deadline is now + lease. */
        ck_assert_int_eq(lockqueue_acquire(f.q, "b", ":1.1", 8, 50, 100, &token_b), 1);
        assert_granted(event_at(&f.rec, 1), "b", ":1.1", 8, 150);
}
END_TEST

START_TEST(test_waiters_are_granted_in_fifo_order) {
        FIXTURE(f);
        uint64_t ta, t = 99;

        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.1", 1, 0, 0, &ta), 1);
        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.2", 2, 10, 0, &t), 0);
        ck_assert_uint_eq(t, 0);
        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.3", 3, 20, 0, NULL), 0);
        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.4", 4, 0, 0, NULL), 0);
        ck_assert_uint_eq(f.rec.events->len, 1);
        assert_waiters(f.q, "a", ":1.2 :1.3 :1.4");

        ck_assert_int_eq(lockqueue_release(f.q, "a", ":1.1", ta, 5), 0);
        ck_assert_uint_eq(f.rec.events->len, 2);
        /* The waiter's lease starts at the grant, not at its acquire. */
        assert_granted(event_at(&f.rec, 1), "a", ":1.2", 2, 15);
        assert_waiters(f.q, "a", ":1.3 :1.4");

        ck_assert_int_eq(lockqueue_release(f.q, "a", ":1.2", event_at(&f.rec, 1)->token, 6), 0);
        assert_granted(event_at(&f.rec, 2), "a", ":1.3", 3, 26);
        ck_assert_int_eq(lockqueue_release(f.q, "a", ":1.3", event_at(&f.rec, 2)->token, 7), 0);
        assert_granted(event_at(&f.rec, 3), "a", ":1.4", 4, NO);
        assert_waiters(f.q, "a", "");
        assert_holder(f.q, "a", ":1.4", event_at(&f.rec, 3)->token);
        ck_assert_uint_eq(f.rec.events->len, 4);
}
END_TEST

START_TEST(test_try_acquire_grants_a_free_lock_and_refuses_a_held_one) {
        FIXTURE(f);
        uint64_t ta = 0, t = 42;

        ck_assert_int_eq(lockqueue_try_acquire(f.q, "a", ":1.1", 1, 0, 0, &ta), 1);
        ck_assert_uint_eq(f.rec.events->len, 1);
        assert_granted(event_at(&f.rec, 0), "a", ":1.1", 1, NO);
        ck_assert_uint_eq(event_at(&f.rec, 0)->token, ta);

        ck_assert_int_eq(lockqueue_try_acquire(f.q, "a", ":1.2", 2, 0, 0, &t), -EAGAIN);
        ck_assert_uint_eq(t, 42);               /* out-parameters are written only on success */
        ck_assert_uint_eq(f.rec.events->len, 1);
        assert_waiters(f.q, "a", "");           /* never queued */

        ck_assert_int_eq(lockqueue_release(f.q, "a", ":1.1", ta, 0), 0);
        ck_assert_uint_eq(f.rec.events->len, 1);
        ck_assert_uint_eq(lockqueue_get_n_locks(f.q), 0);
}
END_TEST

START_TEST(test_acquire_of_held_or_awaited_lock_is_refused) {
        FIXTURE(f);
        uint64_t ta;

        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.1", 1, 0, 0, &ta), 1);
        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.1", 2, 0, 0, NULL), -EDEADLK);
        ck_assert_int_eq(lockqueue_try_acquire(f.q, "a", ":1.1", 2, 0, 0, NULL), -EDEADLK);
        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.2", 3, 0, 0, NULL), 0);
        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.2", 4, 0, 0, NULL), -EALREADY);
        ck_assert_int_eq(lockqueue_try_acquire(f.q, "a", ":1.2", 4, 0, 0, NULL), -EALREADY);
        assert_waiters(f.q, "a", ":1.2");
        assert_holder(f.q, "a", ":1.1", ta);

        /* Other locks are independent. */
        ck_assert_int_eq(lockqueue_acquire(f.q, "b", ":1.1", 5, 0, 0, NULL), 1);
        ck_assert_int_eq(lockqueue_acquire(f.q, "b", ":1.2", 6, 0, 0, NULL), 0);
        ck_assert_uint_eq(f.rec.events->len, 2);
}
END_TEST

/* ---- release --------------------------------------------------------------------------------- */

START_TEST(test_release_by_holder_frees_the_lock) {
        FIXTURE(f);
        uint64_t ta;

        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.1", 1, 100, 0, &ta), 1);
        ck_assert_uint_eq(lockqueue_get_n_locks(f.q), 1);
        ck_assert_int_eq(lockqueue_release(f.q, "a", ":1.1", ta, 10), 0);
        assert_holder(f.q, "a", NULL, 0);
        ck_assert_uint_eq(lockqueue_get_n_locks(f.q), 0);
        ck_assert_uint_eq(lockqueue_get_n_owners(f.q), 0);
        ck_assert_uint_eq(lockqueue_next_deadline(f.q), NO);
        /* A release the caller made is not reported back. */
        ck_assert_uint_eq(f.rec.events->len, 1);
}
END_TEST

START_TEST(test_release_by_non_holder_is_refused) {
        FIXTURE(f);
        uint64_t ta;

        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.1", 1, 0, 0, &ta), 1);
        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.2", 2, 0, 0, NULL), 0);
        /* A waiter, and a stranger, even one quoting the holder's token. */
        ck_assert_int_eq(lockqueue_release(f.q, "a", ":1.2", ta, 0), -EPERM);
        ck_assert_int_eq(lockqueue_release(f.q, "a", ":1.3", ta, 0), -EPERM);
        assert_holder(f.q, "a", ":1.1", ta);
        assert_waiters(f.q, "a", ":1.2");
        ck_assert_uint_eq(f.rec.events->len, 1);
}
END_TEST

START_TEST(test_late_release_after_expiry_leaves_the_next_holder_alone) {
        FIXTURE(f);
        uint64_t ta, tb;

        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.1", 1, 100, 0, &ta), 1);
        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.2", 2, 0, 0, NULL), 0);
        ck_assert_int_eq(lockqueue_expire(f.q, 100), 1);
        tb = event_at(&f.rec, 2)->token;
        assert_holder(f.q, "a", ":1.2", tb);

        /* The original's flaw: this release would end :1.2's turn. */
        ck_assert_int_eq(lockqueue_release(f.q, "a", ":1.1", ta, 150), -EPERM);
        assert_holder(f.q, "a", ":1.2", tb);
        ck_assert_uint_eq(f.rec.events->len, 3);
}
END_TEST

START_TEST(test_set_deadline_parks_and_restarts_a_lease) {
        FIXTURE(f);
        uint64_t ta;

        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.1", 1, 100, 0, &ta), 1);
        ck_assert_uint_eq(lockqueue_next_deadline(f.q), 100);
        /* Parked: no deadline, so nothing expires however late it gets. */
        ck_assert_int_eq(lockqueue_set_deadline(f.q, "a", ":1.1", ta, NO, 10), 0);
        ck_assert_uint_eq(lockqueue_next_deadline(f.q), NO);
        ck_assert_int_eq(lockqueue_expire(f.q, 10000), 0);
        assert_holder(f.q, "a", ":1.1", ta);
        /* Taken again: a new lease from now, which then runs out as any other. */
        ck_assert_int_eq(lockqueue_set_deadline(f.q, "a", ":1.1", ta, 10100, 10000), 0);
        ck_assert_uint_eq(lockqueue_next_deadline(f.q), 10100);
        ck_assert_int_eq(lockqueue_expire(f.q, 10100), 1);
        ck_assert_int_eq(event_at(&f.rec, 1)->kind, LOCKQUEUE_EVENT_REVOKED);
        ck_assert_int_eq(event_at(&f.rec, 1)->reason, LOCKQUEUE_REASON_EXPIRED);
        assert_holder(f.q, "a", NULL, 0);
}
END_TEST

START_TEST(test_set_deadline_checks_the_grant_and_may_revoke_at_once) {
        FIXTURE(f);
        uint64_t ta, tb;

        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.1", 1, 0, 0, &ta), 1);
        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.2", 2, 0, 0, NULL), 0);
        ck_assert_uint_eq(lockqueue_get_n_waiters(f.q, "a"), 1);
        ck_assert_uint_eq(lockqueue_get_n_waiters(f.q, "unknown"), 0);
        /* Only the holder, with its token, on a known lock. */
        ck_assert_int_eq(lockqueue_set_deadline(f.q, "a", ":1.2", ta, 50, 0), -EPERM);
        ck_assert_int_eq(lockqueue_set_deadline(f.q, "a", ":1.1", ta + 1, 50, 0), -ESTALE);
        ck_assert_int_eq(lockqueue_set_deadline(f.q, "b", ":1.1", ta, 50, 0), -ENOENT);
        ck_assert_uint_eq(f.rec.events->len, 1);
        /* A deadline already past revokes the grant now, and the waiter gets the lock. */
        ck_assert_int_eq(lockqueue_set_deadline(f.q, "a", ":1.1", ta, 20, 20), 0);
        ck_assert_int_eq(event_at(&f.rec, 1)->kind, LOCKQUEUE_EVENT_REVOKED);
        ck_assert_int_eq(event_at(&f.rec, 2)->kind, LOCKQUEUE_EVENT_GRANTED);
        tb = event_at(&f.rec, 2)->token;
        ck_assert_uint_gt(tb, ta);
        assert_holder(f.q, "a", ":1.2", tb);
        ck_assert_uint_eq(lockqueue_get_n_waiters(f.q, "a"), 0);
}
END_TEST

START_TEST(test_release_with_token_of_an_earlier_grant_is_stale) {
        FIXTURE(f);
        uint64_t t1, t2;

        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.1", 1, 100, 0, &t1), 1);
        ck_assert_int_eq(lockqueue_expire(f.q, 100), 1);
        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.1", 2, 100, 120, &t2), 1);
        ck_assert_uint_gt(t2, t1);

        /* The late release of the first grant must not end the second one. */
        ck_assert_int_eq(lockqueue_release(f.q, "a", ":1.1", t1, 130), -ESTALE);
        assert_holder(f.q, "a", ":1.1", t2);
        ck_assert_int_eq(lockqueue_release(f.q, "a", ":1.1", t2, 130), 0);
}
END_TEST

START_TEST(test_duplicate_release_is_refused) {
        FIXTURE(f);
        uint64_t ta, tb;

        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.1", 1, 0, 0, &ta), 1);
        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.2", 2, 0, 0, NULL), 0);
        ck_assert_int_eq(lockqueue_release(f.q, "a", ":1.1", ta, 0), 0);
        tb = event_at(&f.rec, 1)->token;

        ck_assert_int_eq(lockqueue_release(f.q, "a", ":1.1", ta, 0), -EPERM);
        assert_holder(f.q, "a", ":1.2", tb);

        ck_assert_int_eq(lockqueue_release(f.q, "a", ":1.2", tb, 0), 0);
        /* Nobody holds or waits any more: the lock is forgotten. */
        ck_assert_int_eq(lockqueue_release(f.q, "a", ":1.2", tb, 0), -ENOENT);
}
END_TEST

START_TEST(test_release_of_unknown_lock_is_refused) {
        FIXTURE(f);

        ck_assert_int_eq(lockqueue_release(f.q, "nope", ":1.1", 1, 0), -ENOENT);
        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.1", 1, 0, 0, NULL), 1);
        ck_assert_int_eq(lockqueue_release(f.q, "nope", ":1.1", 1, 0), -ENOENT);
        assert_holder(f.q, "a", ":1.1", 0);
}
END_TEST

/* ---- tokens ----------------------------------------------------------------------------------- */

START_TEST(test_tokens_strictly_increase_across_locks_and_grants) {
        FIXTURE(f);
        const char *locks[] = { "a", "b", "c" };
        const char *owners[] = { ":1.1", ":1.2", ":1.3" };
        uint64_t request = 0;

        /* Every owner queues for every lock, then everyone releases whatever they get. */
        for (size_t o = 0; o < G_N_ELEMENTS(owners); o++)
                for (size_t l = 0; l < G_N_ELEMENTS(locks); l++)
                        ck_assert_int_ge(lockqueue_acquire(f.q, locks[l], owners[o], ++request, 0, 0,
                                                           NULL),
                                         0);
        for (size_t i = 0; i < f.rec.events->len; i++) {
                const recorded *ev = event_at(&f.rec, i);

                ck_assert_int_eq(lockqueue_release(f.q, ev->lock, ev->owner, ev->token, 0), 0);
        }
        ck_assert_uint_eq(f.rec.events->len, 9);
        for (size_t i = 1; i < f.rec.events->len; i++)
                ck_assert_uint_gt(event_at(&f.rec, i)->token, event_at(&f.rec, i - 1)->token);
        ck_assert_uint_eq(lockqueue_get_last_token(f.q), event_at(&f.rec, 8)->token);
        ck_assert_uint_eq(lockqueue_get_n_locks(f.q), 0);
}
END_TEST

START_TEST(test_token_floor_raises_later_tokens) {
        FIXTURE(f);
        uint64_t t;

        ck_assert_int_eq(lockqueue_raise_token_floor(f.q, 1000), 0);
        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.1", 1, 0, 0, &t), 1);
        ck_assert_uint_eq(t, 1001);
        /* A floor never lowers the counter. */
        ck_assert_int_eq(lockqueue_raise_token_floor(f.q, 10), 0);
        ck_assert_int_eq(lockqueue_acquire(f.q, "b", ":1.1", 2, 0, 0, &t), 1);
        ck_assert_uint_eq(t, 1002);
        ck_assert_uint_eq(lockqueue_get_last_token(f.q), 1002);

        ck_assert_int_eq(lockqueue_raise_token_floor(f.q, LOCKQUEUE_TOKEN_MAX + 1), -ERANGE);
        ck_assert_int_eq(lockqueue_raise_token_floor(f.q, LOCKQUEUE_TOKEN_MAX), 0);
        ck_assert_int_eq(lockqueue_acquire(f.q, "c", ":1.1", 3, 0, 0, &t), 1);
        ck_assert_uint_eq(t, LOCKQUEUE_TOKEN_MAX + 1);
}
END_TEST

/* ---- leases ----------------------------------------------------------------------------------- */

START_TEST(test_lease_zero_never_expires) {
        FIXTURE(f);
        uint64_t ta, tb;

        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.1", 1, 0, 0, &ta), 1);
        /* A lease too long for the clock is as good as none. */
        ck_assert_int_eq(lockqueue_acquire(f.q, "b", ":1.1", 2, UINT64_MAX - 5, 10, &tb), 1);
        assert_granted(event_at(&f.rec, 1), "b", ":1.1", 2, NO);
        ck_assert_uint_eq(lockqueue_next_deadline(f.q), NO);
        ck_assert_int_eq(lockqueue_expire(f.q, UINT64_MAX), 0);
        assert_holder(f.q, "a", ":1.1", ta);
        assert_holder(f.q, "b", ":1.1", tb);
        ck_assert_uint_eq(f.rec.events->len, 2);
}
END_TEST

START_TEST(test_expiry_revokes_the_holder_and_grants_the_next_waiter) {
        FIXTURE(f);
        uint64_t ta;

        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.1", 1, 100, 0, &ta), 1);
        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.2", 2, 50, 10, NULL), 0);

        ck_assert_int_eq(lockqueue_expire(f.q, 99), 0);
        ck_assert_uint_eq(f.rec.events->len, 1);
        assert_holder(f.q, "a", ":1.1", ta);

        ck_assert_int_eq(lockqueue_expire(f.q, 100), 1);
        ck_assert_uint_eq(f.rec.events->len, 3);
        assert_revoked(event_at(&f.rec, 1), "a", ":1.1", ta, LOCKQUEUE_REASON_EXPIRED);
        ck_assert_uint_eq(event_at(&f.rec, 1)->deadline, 100);
        assert_granted(event_at(&f.rec, 2), "a", ":1.2", 2, 150);
        assert_holder(f.q, "a", ":1.2", event_at(&f.rec, 2)->token);
        ck_assert_uint_eq(lockqueue_next_deadline(f.q), 150);
        ck_assert_uint_eq(lockqueue_get_n_owners(f.q), 1);
}
END_TEST

START_TEST(test_calls_given_now_expire_due_leases_first) {
        FIXTURE(f);
        uint64_t ta, tb;

        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.1", 1, 100, 0, &ta), 1);
        /* Nobody called expire() at 100, yet at 100 the lease is over. */
        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.2", 2, 0, 100, &tb), 1);
        ck_assert_uint_eq(f.rec.events->len, 3);
        assert_revoked(event_at(&f.rec, 1), "a", ":1.1", ta, LOCKQUEUE_REASON_EXPIRED);
        assert_granted(event_at(&f.rec, 2), "a", ":1.2", 2, NO);
        ck_assert_uint_eq(event_at(&f.rec, 2)->token, tb);

        /* Same for a release that arrives after the deadline: the grant is already gone. */
        ck_assert_int_eq(lockqueue_acquire(f.q, "b", ":1.1", 3, 100, 200, &ta), 1);
        ck_assert_int_eq(lockqueue_release(f.q, "b", ":1.1", ta, 300), -ENOENT);
        assert_revoked(event_at(&f.rec, 4), "b", ":1.1", ta, LOCKQUEUE_REASON_EXPIRED);
}
END_TEST

START_TEST(test_next_deadline_is_the_earliest_lease) {
        FIXTURE(f);
        uint64_t ta, tb;

        ck_assert_uint_eq(lockqueue_next_deadline(f.q), NO);
        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.1", 1, 300, 0, &ta), 1);
        ck_assert_uint_eq(lockqueue_next_deadline(f.q), 300);
        ck_assert_int_eq(lockqueue_acquire(f.q, "b", ":1.2", 2, 100, 0, &tb), 1);
        ck_assert_uint_eq(lockqueue_next_deadline(f.q), 100);
        ck_assert_int_eq(lockqueue_acquire(f.q, "c", ":1.3", 3, 0, 0, NULL), 1);
        /* Waiters have no deadline yet. */
        ck_assert_int_eq(lockqueue_acquire(f.q, "b", ":1.4", 4, 10, 0, NULL), 0);
        ck_assert_uint_eq(lockqueue_next_deadline(f.q), 100);

        ck_assert_int_eq(lockqueue_release(f.q, "b", ":1.2", tb, 50), 0);
        ck_assert_uint_eq(lockqueue_next_deadline(f.q), 60);
        ck_assert_int_eq(lockqueue_release(f.q, "b", ":1.4", event_at(&f.rec, 3)->token, 55), 0);
        ck_assert_uint_eq(lockqueue_next_deadline(f.q), 300);
        ck_assert_int_eq(lockqueue_release(f.q, "a", ":1.1", ta, 60), 0);
        ck_assert_uint_eq(lockqueue_next_deadline(f.q), NO);
}
END_TEST

/* ---- owners going away, cancelling ----------------------------------------------------------- */

START_TEST(test_drop_owner_releases_its_grants_and_removes_its_waits) {
        FIXTURE(f);
        uint64_t ta, tb;

        ck_assert_int_eq(lockqueue_acquire(f.q, "b", ":1.2", 1, 0, 0, &tb), 1);
        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.1", 2, 0, 0, &ta), 1);
        ck_assert_int_eq(lockqueue_acquire(f.q, "b", ":1.1", 3, 0, 0, NULL), 0);
        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.3", 4, 0, 0, NULL), 0);
        ck_assert_int_eq(lockqueue_acquire(f.q, "b", ":1.3", 5, 0, 0, NULL), 0);

        ck_assert_int_eq(lockqueue_drop_owner(f.q, ":1.1", 7), 2);
        ck_assert_uint_eq(f.rec.events->len, 4);
        assert_revoked(event_at(&f.rec, 2), "a", ":1.1", ta, LOCKQUEUE_REASON_GONE);
        assert_granted(event_at(&f.rec, 3), "a", ":1.3", 4, NO);
        assert_holder(f.q, "a", ":1.3", event_at(&f.rec, 3)->token);
        assert_holder(f.q, "b", ":1.2", tb);
        assert_waiters(f.q, "b", ":1.3");
        ck_assert_uint_eq(lockqueue_get_n_owners(f.q), 2);

        /* An owner that never used a lock, or is gone already. */
        ck_assert_int_eq(lockqueue_drop_owner(f.q, ":1.1", 8), 0);
        ck_assert_int_eq(lockqueue_drop_owner(f.q, ":1.99", 8), 0);
        ck_assert_uint_eq(f.rec.events->len, 4);
}
END_TEST

START_TEST(test_cancel_removes_a_wait) {
        FIXTURE(f);
        uint64_t ta;

        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.1", 1, 0, 0, &ta), 1);
        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.2", 2, 0, 0, NULL), 0);
        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.3", 3, 0, 0, NULL), 0);
        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.4", 4, 0, 0, NULL), 0);

        ck_assert_int_eq(lockqueue_cancel(f.q, "a", ":1.3", 3), 0);
        assert_waiters(f.q, "a", ":1.2 :1.4");
        ck_assert_int_eq(lockqueue_cancel(f.q, "a", ":1.3", 3), -ENOENT);
        ck_assert_int_eq(lockqueue_cancel(f.q, "a", ":1.2", 99), -ENOENT);     /* other request */
        ck_assert_int_eq(lockqueue_cancel(f.q, "a", ":1.1", 1), -ENOENT);      /* the holder */
        ck_assert_int_eq(lockqueue_cancel(f.q, "zz", ":1.2", 2), -ENOENT);
        ck_assert_uint_eq(lockqueue_get_n_owners(f.q), 3);
        ck_assert_uint_eq(f.rec.events->len, 1);

        ck_assert_int_eq(lockqueue_release(f.q, "a", ":1.1", ta, 0), 0);
        assert_granted(event_at(&f.rec, 1), "a", ":1.2", 2, NO);
        ck_assert_int_eq(lockqueue_release(f.q, "a", ":1.2", event_at(&f.rec, 1)->token, 0), 0);
        assert_granted(event_at(&f.rec, 2), "a", ":1.4", 4, NO);
        ck_assert_uint_eq(f.rec.events->len, 3);
}
END_TEST

/* ---- re-entrancy ------------------------------------------------------------------------------ */

static void hook_release_if_auto(lockqueue *q, const lockqueue_event *ev, recorder *rec) {
        /* :1.2 and :1.3 give the lock back as soon as they get it. */
        if (ev->kind != LOCKQUEUE_EVENT_GRANTED ||
            (strcmp(ev->owner, ":1.2") != 0 && strcmp(ev->owner, ":1.3") != 0))
                return;
        ck_assert_uint_lt(rec->n_hook_results, G_N_ELEMENTS(rec->hook_results));
        rec->hook_results[rec->n_hook_results++] =
                lockqueue_release(q, ev->lock, ev->owner, ev->token, rec->now);
}

START_TEST(test_callback_may_release_from_a_granted_event) {
        FIXTURE(f);
        uint64_t ta;

        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.1", 1, 0, 0, &ta), 1);
        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.2", 2, 0, 0, NULL), 0);
        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.3", 3, 0, 0, NULL), 0);
        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.4", 4, 0, 0, NULL), 0);
        f.rec.hook = hook_release_if_auto;

        ck_assert_int_eq(lockqueue_release(f.q, "a", ":1.1", ta, 0), 0);
        ck_assert_uint_eq(f.rec.n_hook_results, 2);
        ck_assert_int_eq(f.rec.hook_results[0], 0);
        ck_assert_int_eq(f.rec.hook_results[1], 0);
        ck_assert_uint_eq(f.rec.events->len, 4);
        assert_granted(event_at(&f.rec, 1), "a", ":1.2", 2, NO);
        assert_granted(event_at(&f.rec, 2), "a", ":1.3", 3, NO);
        assert_granted(event_at(&f.rec, 3), "a", ":1.4", 4, NO);
        assert_holder(f.q, "a", ":1.4", event_at(&f.rec, 3)->token);
        assert_waiters(f.q, "a", "");
        ck_assert_uint_eq(lockqueue_get_n_owners(f.q), 1);

        /* An immediate grant released from inside its own event: the lock ends up free. */
        ck_assert_int_eq(lockqueue_acquire(f.q, "b", ":1.2", 5, 0, 0, NULL), 1);
        ck_assert_int_eq(f.rec.hook_results[2], 0);
        ck_assert_uint_eq(lockqueue_get_n_locks(f.q), 1);
}
END_TEST

static void hook_acquire_b_nested(lockqueue *q, const lockqueue_event *ev, recorder *rec) {
        if (ev->kind != LOCKQUEUE_EVENT_GRANTED || strcmp(ev->lock, "a") != 0)
                return;
        rec->hook_results[rec->n_hook_results++] =
                lockqueue_acquire(q, "b", ev->owner, 100, 0, rec->now, &rec->nested_token);
        rec->n_events_at_nested_return = rec->events->len;
        /* The state is already consistent inside the callback. */
        assert_holder(q, "b", ev->owner, rec->nested_token);
}

START_TEST(test_events_of_nested_calls_follow_the_current_callback) {
        FIXTURE(f);

        f.rec.hook = hook_acquire_b_nested;
        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.1", 1, 0, 0, NULL), 1);
        ck_assert_int_eq(f.rec.hook_results[0], 1);
        /* The nested grant was not delivered while the outer callback ran... */
        ck_assert_uint_eq(f.rec.n_events_at_nested_return, 1);
        /* ...but right after it, before the outer call returned. */
        ck_assert_uint_eq(f.rec.events->len, 2);
        assert_granted(event_at(&f.rec, 1), "b", ":1.1", 100, NO);
        ck_assert_uint_eq(event_at(&f.rec, 1)->token, f.rec.nested_token);
        ck_assert_uint_gt(event_at(&f.rec, 1)->token, event_at(&f.rec, 0)->token);
}
END_TEST

static void hook_drop_everyone(lockqueue *q, const lockqueue_event *ev, recorder *rec) {
        /* Whoever gets "a" turns out to be gone: drop it from inside its own grant. */
        if (ev->kind == LOCKQUEUE_EVENT_GRANTED && strcmp(ev->lock, "a") == 0)
                rec->hook_results[rec->n_hook_results++] = lockqueue_drop_owner(q, ev->owner, rec->now);
}

START_TEST(test_callback_may_drop_owners_while_events_are_pending) {
        FIXTURE(f);

        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.1", 1, 0, 0, NULL), 1);
        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.2", 2, 0, 0, NULL), 0);
        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.3", 3, 0, 0, NULL), 0);
        f.rec.hook = hook_drop_everyone;

        /* The events still name the dropped owners and the lock that was freed meanwhile. */
        ck_assert_int_eq(lockqueue_drop_owner(f.q, ":1.1", 0), 1);
        ck_assert_uint_eq(f.rec.events->len, 6);
        assert_revoked(event_at(&f.rec, 1), "a", ":1.1", event_at(&f.rec, 0)->token,
                       LOCKQUEUE_REASON_GONE);
        assert_granted(event_at(&f.rec, 2), "a", ":1.2", 2, NO);
        assert_revoked(event_at(&f.rec, 3), "a", ":1.2", event_at(&f.rec, 2)->token,
                       LOCKQUEUE_REASON_GONE);
        assert_granted(event_at(&f.rec, 4), "a", ":1.3", 3, NO);
        assert_revoked(event_at(&f.rec, 5), "a", ":1.3", event_at(&f.rec, 4)->token,
                       LOCKQUEUE_REASON_GONE);
        ck_assert_uint_eq(f.rec.n_hook_results, 2);
        ck_assert_uint_eq(lockqueue_get_n_locks(f.q), 0);
        ck_assert_uint_eq(lockqueue_get_n_owners(f.q), 0);
}
END_TEST

static void hook_free_queue(lockqueue *q, const lockqueue_event *ev, recorder *rec) {
        lockqueue_free(q);
}

/* Runs only where Check forks: the assertion aborts the process. */
START_TEST(test_free_from_callback_aborts) {
        recorder rec;
        lockqueue *q = NULL;

        recorder_init(&rec);
        rec.hook = hook_free_queue;
        ck_assert_int_eq(lockqueue_new(&q, record_event, &rec), 0);
        lockqueue_acquire(q, "a", ":1.1", 1, 0, 0, NULL);
        ck_abort_msg("lockqueue_free() inside a callback returned");
}
END_TEST

/* ---- recovery --------------------------------------------------------------------------------- */

START_TEST(test_frozen_queue_grants_nothing) {
        FIXTURE(f);
        uint64_t t = 5, ta;

        ck_assert_int_eq(lockqueue_acquire(f.q, "held", ":1.9", 1, 0, 0, &ta), 1);
        ck_assert_int_eq(lockqueue_set_frozen(f.q, true, 0), 0);
        ck_assert(lockqueue_is_frozen(f.q));

        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.1", 2, 0, 0, &t), 0);
        ck_assert_uint_eq(t, 0);
        ck_assert_int_eq(lockqueue_try_acquire(f.q, "b", ":1.2", 3, 0, 0, NULL), -EAGAIN);
        ck_assert_int_eq(lockqueue_try_acquire(f.q, "a", ":1.3", 4, 0, 0, NULL), -EAGAIN);
        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.3", 5, 0, 0, NULL), 0);
        ck_assert_int_eq(lockqueue_acquire(f.q, "held", ":1.4", 6, 0, 0, NULL), 0);
        /* A grant that ends while frozen does not pass the lock on either. */
        ck_assert_int_eq(lockqueue_release(f.q, "held", ":1.9", ta, 0), 0);

        ck_assert_uint_eq(f.rec.events->len, 1);
        assert_holder(f.q, "a", NULL, 0);
        assert_holder(f.q, "held", NULL, 0);
        assert_holder(f.q, "b", NULL, 0);
        assert_waiters(f.q, "a", ":1.1 :1.3");
        assert_waiters(f.q, "held", ":1.4");
}
END_TEST

START_TEST(test_reassert_sets_holder_and_token_floor) {
        FIXTURE(f);
        uint64_t token, deadline;
        const char *owner;

        ck_assert_int_eq(lockqueue_set_frozen(f.q, true, 0), 0);
        ck_assert_int_eq(lockqueue_reassert(f.q, "a", ":1.1", 500, 100, 10), 0);
        ck_assert_uint_eq(f.rec.events->len, 0);         /* the caller knows: no event */
        ck_assert_int_eq(lockqueue_get_holder(f.q, "a", &owner, &token, &deadline), 1);
        ck_assert_str_eq(owner, ":1.1");
        ck_assert_uint_eq(token, 500);
        ck_assert_uint_eq(deadline, 110);
        ck_assert_uint_eq(lockqueue_next_deadline(f.q), 110);
        ck_assert_uint_eq(lockqueue_get_last_token(f.q), 500);

        /* A reasserted grant behaves like any other: its holder releases it with its token. */
        ck_assert_int_eq(lockqueue_release(f.q, "a", ":1.1", 499, 20), -ESTALE);
        ck_assert_int_eq(lockqueue_release(f.q, "a", ":1.1", 500, 20), 0);
        ck_assert_int_eq(lockqueue_set_frozen(f.q, false, 30), 0);
        ck_assert_uint_eq(lockqueue_get_n_locks(f.q), 0);
        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.2", 1, 0, 40, &token), 1);
        ck_assert_uint_eq(token, 501);
}
END_TEST

START_TEST(test_reasserted_lease_expires) {
        FIXTURE(f);

        ck_assert_int_eq(lockqueue_set_frozen(f.q, true, 0), 0);
        ck_assert_int_eq(lockqueue_reassert(f.q, "a", ":1.1", 50, 100, 0), 0);
        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.2", 2, 0, 0, NULL), 0);
        ck_assert_int_eq(lockqueue_expire(f.q, 100), 1);
        ck_assert_uint_eq(f.rec.events->len, 1);
        assert_revoked(event_at(&f.rec, 0), "a", ":1.1", 50, LOCKQUEUE_REASON_EXPIRED);
        ck_assert_uint_eq(event_at(&f.rec, 0)->request, 0);
        /* Frozen: the waiter still waits. */
        assert_holder(f.q, "a", NULL, 0);
        ck_assert_int_eq(lockqueue_set_frozen(f.q, false, 110), 1);
        assert_granted(event_at(&f.rec, 1), "a", ":1.2", 2, NO);
        ck_assert_uint_eq(event_at(&f.rec, 1)->token, 51);
}
END_TEST

START_TEST(test_conflicting_reassert_is_refused) {
        FIXTURE(f);

        ck_assert_int_eq(lockqueue_reassert(f.q, "a", ":1.1", 500, 0, 0), -EPERM);  /* not frozen */
        ck_assert_int_eq(lockqueue_set_frozen(f.q, true, 0), 0);
        ck_assert_int_eq(lockqueue_reassert(f.q, "a", ":1.1", 500, 0, 0), 0);
        ck_assert_int_eq(lockqueue_reassert(f.q, "a", ":1.1", 500, 0, 0), 0);        /* a retry */
        ck_assert_int_eq(lockqueue_reassert(f.q, "a", ":1.2", 600, 0, 0), -EBUSY);
        ck_assert_int_eq(lockqueue_reassert(f.q, "a", ":1.2", 500, 0, 0), -EBUSY);
        ck_assert_int_eq(lockqueue_reassert(f.q, "a", ":1.1", 501, 0, 0), -EBUSY);
        assert_holder(f.q, "a", ":1.1", 500);

        ck_assert_int_eq(lockqueue_acquire(f.q, "b", ":1.2", 1, 0, 0, NULL), 0);
        ck_assert_int_eq(lockqueue_reassert(f.q, "b", ":1.2", 700, 0, 0), -EALREADY);
        ck_assert_int_eq(lockqueue_reassert(f.q, "b", ":1.3", 0, 0, 0), -EINVAL);
        ck_assert_int_eq(lockqueue_reassert(f.q, "b", ":1.3", LOCKQUEUE_TOKEN_MAX + 1, 0, 0), -ERANGE);
        ck_assert_uint_eq(lockqueue_get_last_token(f.q), 500);
        ck_assert_uint_eq(f.rec.events->len, 0);
}
END_TEST

START_TEST(test_stale_reassert_is_refused) {
        FIXTURE(f);
        uint64_t t;

        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.1", 1, 0, 0, &t), 1);
        ck_assert_int_eq(lockqueue_release(f.q, "a", ":1.1", t, 0), 0);
        ck_assert_int_eq(lockqueue_set_frozen(f.q, true, 0), 0);
        /* This queue granted token 1 itself: a claim on it is from before that grant. */
        ck_assert_int_eq(lockqueue_reassert(f.q, "b", ":1.2", t, 0, 0), -ESTALE);

        ck_assert_int_eq(lockqueue_reassert(f.q, "b", ":1.2", 10, 0, 0), 0);
        ck_assert_int_eq(lockqueue_release(f.q, "b", ":1.2", 10, 0), 0);
        /* "b" is free and empty but remembers 10, so neither a replay nor an older claim gets in;
         * another lock may still be claimed with an older token. */
        ck_assert_uint_eq(lockqueue_get_n_locks(f.q), 1);
        ck_assert_int_eq(lockqueue_reassert(f.q, "b", ":1.2", 10, 0, 0), -ESTALE);
        ck_assert_int_eq(lockqueue_reassert(f.q, "b", ":1.3", 9, 0, 0), -ESTALE);
        ck_assert_int_eq(lockqueue_reassert(f.q, "c", ":1.3", 9, 0, 0), 0);
        ck_assert_int_eq(lockqueue_reassert(f.q, "b", ":1.3", 11, 0, 0), 0);

        ck_assert_int_eq(lockqueue_set_frozen(f.q, false, 0), 0);
        ck_assert_int_eq(lockqueue_reassert(f.q, "d", ":1.4", 20, 0, 0), -EPERM);
        /* A second freeze: everything known at the last unfreeze is settled. */
        ck_assert_int_eq(lockqueue_set_frozen(f.q, true, 0), 0);
        ck_assert_int_eq(lockqueue_reassert(f.q, "d", ":1.4", 11, 0, 0), -ESTALE);
        ck_assert_int_eq(lockqueue_reassert(f.q, "d", ":1.4", 12, 0, 0), 0);
}
END_TEST

START_TEST(test_unfreeze_grants_free_locks_to_their_first_waiters) {
        FIXTURE(f);
        uint64_t tc;

        /* A new host: frozen from the start, floor from a clock-based epoch. */
        ck_assert_int_eq(lockqueue_set_frozen(f.q, true, 0), 0);
        ck_assert_int_eq(lockqueue_raise_token_floor(f.q, 100), 0);
        ck_assert_int_eq(lockqueue_reassert(f.q, "a", ":1.1", 300, 0, 0), 0);
        ck_assert_int_eq(lockqueue_reassert(f.q, "b", ":1.2", 200, 1000, 0), 0);
        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.3", 1, 0, 0, NULL), 0);
        ck_assert_int_eq(lockqueue_acquire(f.q, "c", ":1.4", 2, 0, 0, NULL), 0);
        ck_assert_int_eq(lockqueue_acquire(f.q, "b", ":1.5", 3, 0, 0, NULL), 0);
        ck_assert_int_eq(lockqueue_acquire(f.q, "c", ":1.6", 4, 0, 0, NULL), 0);
        ck_assert_int_eq(lockqueue_release(f.q, "b", ":1.2", 200, 10), 0);
        ck_assert_uint_eq(f.rec.events->len, 0);

        ck_assert_int_eq(lockqueue_set_frozen(f.q, false, 20), 2);
        ck_assert(!lockqueue_is_frozen(f.q));
        ck_assert_uint_eq(f.rec.events->len, 2);
        assert_granted(event_at(&f.rec, 0), "b", ":1.5", 3, NO);
        assert_granted(event_at(&f.rec, 1), "c", ":1.4", 2, NO);
        /* Above every reported token. */
        ck_assert_uint_eq(event_at(&f.rec, 0)->token, 301);
        ck_assert_uint_eq(event_at(&f.rec, 1)->token, 302);
        /* The reasserted lock stays with its holder; its waiter goes on waiting. */
        assert_holder(f.q, "a", ":1.1", 300);
        assert_waiters(f.q, "a", ":1.3");
        assert_waiters(f.q, "c", ":1.6");

        ck_assert_int_eq(lockqueue_release(f.q, "a", ":1.1", 300, 30), 0);
        assert_granted(event_at(&f.rec, 2), "a", ":1.3", 1, NO);
        ck_assert_uint_eq(event_at(&f.rec, 2)->token, 303);
        ck_assert_int_eq(lockqueue_acquire(f.q, "d", ":1.1", 5, 0, 40, &tc), 1);
        ck_assert_uint_eq(tc, 304);
}
END_TEST

/* ---- limits ----------------------------------------------------------------------------------- */

START_TEST(test_limit_of_locks_per_owner) {
        FIXTURE(f);
        lockqueue_limits limits;
        uint64_t ta;

        lockqueue_get_limits(f.q, &limits);
        ck_assert_uint_eq(limits.max_locks_per_owner, 1024);
        ck_assert_uint_eq(limits.max_waiters_per_lock, 65536);
        ck_assert_uint_eq(limits.max_name_len, 255);
        limits.max_locks_per_owner = 2;
        ck_assert_int_eq(lockqueue_set_limits(f.q, &limits), 0);

        ck_assert_int_eq(lockqueue_acquire(f.q, "c", ":1.2", 1, 0, 0, NULL), 1);
        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.1", 2, 0, 0, &ta), 1);
        ck_assert_int_eq(lockqueue_acquire(f.q, "c", ":1.1", 3, 0, 0, NULL), 0);    /* waits count */
        ck_assert_int_eq(lockqueue_acquire(f.q, "d", ":1.1", 4, 0, 0, NULL), -ENOBUFS);
        ck_assert_int_eq(lockqueue_try_acquire(f.q, "d", ":1.1", 4, 0, 0, NULL), -ENOBUFS);
        ck_assert_uint_eq(lockqueue_get_n_locks(f.q), 2);        /* nothing half-made */
        ck_assert_int_eq(lockqueue_set_frozen(f.q, true, 0), 0);
        ck_assert_int_eq(lockqueue_reassert(f.q, "d", ":1.1", 50, 0, 0), -ENOBUFS);
        ck_assert_int_eq(lockqueue_set_frozen(f.q, false, 0), 0);

        ck_assert_int_eq(lockqueue_release(f.q, "a", ":1.1", ta, 0), 0);
        ck_assert_int_eq(lockqueue_acquire(f.q, "d", ":1.1", 4, 0, 0, NULL), 1);
}
END_TEST

START_TEST(test_limit_of_waiters_per_lock) {
        FIXTURE(f);
        lockqueue_limits limits;

        lockqueue_get_limits(f.q, &limits);
        limits.max_waiters_per_lock = 2;
        ck_assert_int_eq(lockqueue_set_limits(f.q, &limits), 0);

        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.1", 1, 0, 0, NULL), 1);
        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.2", 2, 0, 0, NULL), 0);
        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.3", 3, 0, 0, NULL), 0);
        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.4", 4, 0, 0, NULL), -ENOBUFS);
        assert_waiters(f.q, "a", ":1.2 :1.3");
        ck_assert_uint_eq(lockqueue_get_n_owners(f.q), 3);

        ck_assert_int_eq(lockqueue_cancel(f.q, "a", ":1.3", 3), 0);
        ck_assert_int_eq(lockqueue_acquire(f.q, "a", ":1.4", 4, 0, 0, NULL), 0);
        assert_waiters(f.q, "a", ":1.2 :1.4");
}
END_TEST

START_TEST(test_limit_of_reasserted_locks_per_freeze) {
        FIXTURE(f);
        lockqueue_limits limits;

        lockqueue_get_limits(f.q, &limits);
        ck_assert_uint_eq(limits.max_reasserted_locks, 65536);
        limits.max_reasserted_locks = 2;
        ck_assert_int_eq(lockqueue_set_limits(f.q, &limits), 0);

        ck_assert_int_eq(lockqueue_set_frozen(f.q, true, 0), 0);
        ck_assert_int_eq(lockqueue_reassert(f.q, "a", ":1.1", 10, 0, 0), 0);
        ck_assert_int_eq(lockqueue_reassert(f.q, "b", ":1.2", 11, 0, 0), 0);
        ck_assert_int_eq(lockqueue_reassert(f.q, "c", ":1.3", 12, 0, 0), -ENOBUFS);
        /* A released reasserted lock is still remembered, and still counts... */
        ck_assert_int_eq(lockqueue_release(f.q, "a", ":1.1", 10, 0), 0);
        ck_assert_int_eq(lockqueue_reassert(f.q, "c", ":1.3", 12, 0, 0), -ENOBUFS);
        /* ...but may be claimed again with a newer token. */
        ck_assert_int_eq(lockqueue_reassert(f.q, "a", ":1.3", 13, 0, 0), 0);
        ck_assert_int_eq(lockqueue_set_frozen(f.q, false, 0), 0);

        ck_assert_int_eq(lockqueue_set_frozen(f.q, true, 0), 0);
        ck_assert_int_eq(lockqueue_reassert(f.q, "c", ":1.3", 14, 0, 0), 0);
}
END_TEST

START_TEST(test_invalid_names_are_refused) {
        FIXTURE(f);
        lockqueue_limits limits;
        char name[LOCKQUEUE_MAX_NAME_LEN_DEFAULT + 2];
        const char *bad_locks[] = { NULL, "", "\xff", "caf\xc3", "a\xc0\x80" };
        const char *bad_owners[] = { NULL, "", "\xfe\xff" };

        for (size_t i = 0; i < G_N_ELEMENTS(bad_locks); i++) {
                ck_assert_int_eq(lockqueue_acquire(f.q, bad_locks[i], ":1.1", 1, 0, 0, NULL), -EINVAL);
                ck_assert_int_eq(lockqueue_try_acquire(f.q, bad_locks[i], ":1.1", 1, 0, 0, NULL),
                                 -EINVAL);
                ck_assert_int_eq(lockqueue_release(f.q, bad_locks[i], ":1.1", 1, 0), -EINVAL);
                ck_assert_int_eq(lockqueue_cancel(f.q, bad_locks[i], ":1.1", 1), -EINVAL);
        }
        for (size_t i = 0; i < G_N_ELEMENTS(bad_owners); i++) {
                ck_assert_int_eq(lockqueue_acquire(f.q, "a", bad_owners[i], 1, 0, 0, NULL), -EINVAL);
                ck_assert_int_eq(lockqueue_drop_owner(f.q, bad_owners[i], 0), -EINVAL);
        }

        memset(name, 'x', sizeof(name) - 1);
        name[sizeof(name) - 1] = '\0';
        ck_assert_int_eq(lockqueue_acquire(f.q, name, ":1.1", 1, 0, 0, NULL), -EINVAL);    /* 256 */
        ck_assert_int_eq(lockqueue_acquire(f.q, "a", name, 1, 0, 0, NULL), -EINVAL);
        name[LOCKQUEUE_MAX_NAME_LEN_DEFAULT] = '\0';
        ck_assert_int_eq(lockqueue_acquire(f.q, name, ":1.1", 1, 0, 0, NULL), 1);          /* 255 */
        ck_assert_int_eq(lockqueue_acquire(f.q, "caf\xc3\xa9", ":1.1", 2, 0, 0, NULL), 1);
        ck_assert_int_eq(lockqueue_set_frozen(f.q, true, 0), 0);
        ck_assert_int_eq(lockqueue_reassert(f.q, "", ":1.2", 5, 0, 0), -EINVAL);
        ck_assert_int_eq(lockqueue_reassert(f.q, "z", "", 5, 0, 0), -EINVAL);
        ck_assert_int_eq(lockqueue_set_frozen(f.q, false, 0), 0);

        lockqueue_get_limits(f.q, &limits);
        limits.max_name_len = 8;
        ck_assert_int_eq(lockqueue_set_limits(f.q, &limits), 0);
        ck_assert_int_eq(lockqueue_acquire(f.q, "123456789", ":1.1", 3, 0, 0, NULL), -EINVAL);
        ck_assert_int_eq(lockqueue_acquire(f.q, "12345678", ":1.1", 3, 0, 0, NULL), 1);
        ck_assert_uint_eq(lockqueue_get_n_locks(f.q), 3);
}
END_TEST

START_TEST(test_set_limits_refuses_zero) {
        FIXTURE(f);
        lockqueue_limits limits, now;

        lockqueue_get_limits(f.q, &limits);
        for (int i = 0; i < 4; i++) {
                lockqueue_limits l = limits;

                switch (i) {
                case 0: l.max_locks_per_owner = 0; break;
                case 1: l.max_waiters_per_lock = 0; break;
                case 2: l.max_name_len = 0; break;
                default: l.max_reasserted_locks = 0; break;
                }
                ck_assert_int_eq(lockqueue_set_limits(f.q, &l), -EINVAL);
        }
        lockqueue_get_limits(f.q, &now);
        ck_assert_mem_eq(&now, &limits, sizeof(now));
        ck_assert_int_eq(lockqueue_set_limits(f.q, NULL), -EINVAL);
        ck_assert_int_eq(lockqueue_set_limits(NULL, &limits), -EINVAL);
        ck_assert_int_eq(lockqueue_acquire(NULL, "a", ":1.1", 1, 0, 0, NULL), -EINVAL);
        ck_assert_int_eq(lockqueue_new(NULL, NULL, NULL), -EINVAL);
}
END_TEST

/* ---- memory, listing -------------------------------------------------------------------------- */

START_TEST(test_empty_locks_and_owners_are_freed) {
        FIXTURE(f);
        uint64_t t;

        /* release */
        ck_assert_int_eq(lockqueue_acquire(f.q, "r", ":1.1", 1, 0, 0, &t), 1);
        ck_assert_uint_eq(lockqueue_get_n_locks(f.q), 1);
        ck_assert_int_eq(lockqueue_release(f.q, "r", ":1.1", t, 0), 0);
        ck_assert_uint_eq(lockqueue_get_n_locks(f.q), 0);
        ck_assert_uint_eq(lockqueue_get_n_owners(f.q), 0);

        /* cancel while frozen and after: a lock with only waiters */
        ck_assert_int_eq(lockqueue_set_frozen(f.q, true, 0), 0);
        ck_assert_int_eq(lockqueue_acquire(f.q, "c", ":1.1", 2, 0, 0, NULL), 0);
        ck_assert_uint_eq(lockqueue_get_n_locks(f.q), 1);
        ck_assert_int_eq(lockqueue_cancel(f.q, "c", ":1.1", 2), 0);
        ck_assert_uint_eq(lockqueue_get_n_locks(f.q), 0);
        ck_assert_uint_eq(lockqueue_get_n_owners(f.q), 0);
        ck_assert_int_eq(lockqueue_set_frozen(f.q, false, 0), 0);

        /* expiry */
        ck_assert_int_eq(lockqueue_acquire(f.q, "e", ":1.1", 3, 10, 0, NULL), 1);
        ck_assert_int_eq(lockqueue_expire(f.q, 10), 1);
        ck_assert_uint_eq(lockqueue_get_n_locks(f.q), 0);
        ck_assert_uint_eq(lockqueue_get_n_owners(f.q), 0);

        /* drop_owner, with a held lock and a wait */
        ck_assert_int_eq(lockqueue_acquire(f.q, "d", ":1.1", 4, 0, 10, NULL), 1);
        ck_assert_int_eq(lockqueue_acquire(f.q, "x", ":1.2", 5, 0, 10, NULL), 1);
        ck_assert_int_eq(lockqueue_acquire(f.q, "x", ":1.1", 6, 0, 10, NULL), 0);
        ck_assert_int_eq(lockqueue_drop_owner(f.q, ":1.1", 10), 2);
        ck_assert_uint_eq(lockqueue_get_n_locks(f.q), 1);
        ck_assert_uint_eq(lockqueue_get_n_owners(f.q), 1);
        ck_assert_int_eq(lockqueue_drop_owner(f.q, ":1.2", 10), 1);
        ck_assert_uint_eq(lockqueue_get_n_locks(f.q), 0);
        ck_assert_uint_eq(lockqueue_get_n_owners(f.q), 0);

        /* failed requests leave nothing behind */
        ck_assert_int_eq(lockqueue_acquire(f.q, "h", ":1.1", 7, 0, 10, &t), 1);
        ck_assert_int_eq(lockqueue_try_acquire(f.q, "h", ":1.2", 8, 0, 10, NULL), -EAGAIN);
        ck_assert_uint_eq(lockqueue_get_n_owners(f.q), 1);

        /* Many names used once cost nothing afterwards. */
        ck_assert_int_eq(lockqueue_release(f.q, "h", ":1.1", t, 10), 0);
        for (int i = 0; i < 1000; i++) {
                char lock[32];

                snprintf(lock, sizeof(lock), "once-%d", i);
                ck_assert_int_eq(lockqueue_acquire(f.q, lock, ":1.1", (uint64_t) i, 0, 10, &t), 1);
                ck_assert_int_eq(lockqueue_release(f.q, lock, ":1.1", t, 10), 0);
        }
        ck_assert_uint_eq(lockqueue_get_n_locks(f.q), 0);
        ck_assert_uint_eq(lockqueue_get_n_owners(f.q), 0);
}
END_TEST

START_TEST(test_list_shows_holders_and_waiters_in_order) {
        FIXTURE(f);
        _cleanup_(freep) lockqueue_lock_info *infos = NULL;
        lockqueue_lock_info *empty = (void *) 1;
        size_t n = 99;
        uint64_t ta;

        ck_assert_int_eq(lockqueue_list(f.q, &empty, &n), 0);
        ck_assert_ptr_null(empty);
        ck_assert_uint_eq(n, 0);

        ck_assert_int_eq(lockqueue_acquire(f.q, "first", ":1.1", 1, 100, 5, &ta), 1);
        ck_assert_int_eq(lockqueue_acquire(f.q, "first", ":1.3", 2, 0, 5, NULL), 0);
        ck_assert_int_eq(lockqueue_acquire(f.q, "first", ":1.2", 3, 0, 5, NULL), 0);
        ck_assert_int_eq(lockqueue_set_frozen(f.q, true, 5), 0);
        ck_assert_int_eq(lockqueue_acquire(f.q, "second", ":1.4", 4, 0, 5, NULL), 0);

        ck_assert_int_eq(lockqueue_list(f.q, &infos, &n), 0);
        ck_assert_uint_eq(n, 2);
        ck_assert_str_eq(infos[0].name, "first");
        ck_assert_str_eq(infos[0].holder, ":1.1");
        ck_assert_uint_eq(infos[0].token, ta);
        ck_assert_uint_eq(infos[0].deadline, 105);
        ck_assert_uint_eq(infos[0].n_waiters, 2);
        ck_assert_str_eq(infos[0].waiters[0], ":1.3");
        ck_assert_str_eq(infos[0].waiters[1], ":1.2");
        ck_assert_ptr_null(infos[0].waiters[2]);
        ck_assert_str_eq(infos[1].name, "second");
        ck_assert_ptr_null(infos[1].holder);
        ck_assert_uint_eq(infos[1].token, 0);
        ck_assert_uint_eq(infos[1].deadline, NO);
        ck_assert_uint_eq(infos[1].n_waiters, 1);
        ck_assert_str_eq(infos[1].waiters[0], ":1.4");
        ck_assert_ptr_null(infos[1].waiters[1]);
}
END_TEST

/* ---- randomized run against a model ----------------------------------------------------------- */

#define R_OWNERS 4
#define R_LOCKS 3
#define R_STEPS 100000
#define R_MAX_PER_OWNER 2
#define R_MAX_WAITERS 2

static const char *const r_owner_names[R_OWNERS] = { ":1.1", ":1.2", ":1.3", ":1.4" };
static const char *const r_lock_names[R_LOCKS] = { "a", "b", "c" };

enum {
        OP_NONE,
        OP_EXPIRE,
        OP_ACQUIRE,
        OP_TRY,
        OP_RELEASE,
        OP_CANCEL,
        OP_DROP,
        OP_FREEZE,
        OP_UNFREEZE,
        OP_REASSERT,
        OP_FLOOR,
};

typedef struct mwait {
        int owner;
        uint64_t request;
        uint64_t lease;
} mwait;

/* What the test believes about one lock. */
typedef struct mlock {
        int holder;                     /* -1: none */
        uint64_t token;
        uint64_t deadline;
        mwait waits[R_OWNERS];
        size_t n_waits;
        bool exists;                    /* the queue should have an object for it */
        uint64_t obj_last_token;        /* that object's highest token */
        uint64_t hist_last_token;       /* the highest token the lock ever had, any object */
} mlock;

typedef struct model {
        mlock locks[R_LOCKS];
        bool frozen;
        uint64_t last_token;
        uint64_t settled;
        size_t n_reasserted;
        uint64_t now;

        /* the operation in progress, to judge its events */
        int op;
        int op_lock;
        int op_owner;
        uint64_t op_request;
        uint64_t op_lease;
        bool immediate_seen;
        uint64_t immediate_token;

        /* every wait ends one of these ways */
        uint64_t n_queued, n_granted_from_queue, n_cancelled, n_dropped;
        /* how often each call returned each result, to show the run covered them */
        uint64_t n_results[OP_FLOOR + 1][256];
        uint64_t n_expired;
        unsigned seed;
        size_t step;
} model;

static void m_count(model *m, int r) {
        m->n_results[m->op][r < 0 ? -r : 255 - r]++;
}

static uint64_t m_seen(const model *m, int op, int r) {
        return m->n_results[op][r < 0 ? -r : 255 - r];
}

/* A failing check names the seed and step to replay; a passing one costs nothing. */
#define RCHECK(m, cond)                                                                     \
        do {                                                                                \
                if (!(cond))                                                                \
                        ck_abort_msg("seed %u, step %zu: %s", (m)->seed, (m)->step, #cond); \
        } while (0)

static uint64_t m_deadline_after(uint64_t now, uint64_t usec) {
        if (usec == 0 || usec >= UINT64_MAX - now)
                return LOCKQUEUE_NO_DEADLINE;
        return now + usec;
}

static int index_of(const char *const *names, int n, const char *name) {
        for (int i = 0; i < n; i++)
                if (strcmp(names[i], name) == 0)
                        return i;
        ck_abort_msg("unknown name %s", name);
        return -1;
}

static int m_find_wait(const mlock *ml, int owner) {
        for (size_t i = 0; i < ml->n_waits; i++)
                if (ml->waits[i].owner == owner)
                        return (int) i;
        return -1;
}

static void m_remove_wait(mlock *ml, size_t i) {
        memmove(&ml->waits[i], &ml->waits[i + 1], (ml->n_waits - i - 1) * sizeof(mwait));
        ml->n_waits--;
}

static size_t m_owner_entries(const model *m, int owner) {
        size_t n = 0;

        for (int l = 0; l < R_LOCKS; l++)
                n += (m->locks[l].holder == owner) + (m_find_wait(&m->locks[l], owner) >= 0);
        return n;
}

static bool m_remembered(const model *m, const mlock *ml) {
        return m->frozen && ml->obj_last_token > m->settled;
}

static void m_gc(model *m, mlock *ml) {
        if (ml->holder >= 0 || ml->n_waits > 0 || m_remembered(m, ml))
                return;
        ml->exists = false;
        ml->obj_last_token = 0;
}

static void m_set_holder(model *m, mlock *ml, int owner, uint64_t token, uint64_t deadline) {
        RCHECK(m, ml->holder < 0);                      /* at most one holder */
        RCHECK(m, token > ml->hist_last_token);         /* per-lock tokens strictly increase */
        ml->holder = owner;
        ml->token = token;
        ml->deadline = deadline;
        ml->hist_last_token = token;
        ml->obj_last_token = MAX(ml->obj_last_token, token);
        ml->exists = true;
        m->last_token = MAX(m->last_token, token);
}

static void random_on_event(lockqueue *q, const lockqueue_event *ev, void *userdata) {
        model *m = userdata;
        int l = index_of(r_lock_names, R_LOCKS, ev->lock);
        int o = index_of(r_owner_names, R_OWNERS, ev->owner);
        mlock *ml = &m->locks[l];

        if (ev->kind == LOCKQUEUE_EVENT_GRANTED) {
                uint64_t lease;

                RCHECK(m, !m->frozen);
                RCHECK(m, ev->token > m->last_token);   /* one counter for the whole queue */
                if (ml->n_waits > 0 && ml->waits[0].owner == o &&
                    ml->waits[0].request == ev->request) {
                        /* A waiter is only ever granted from the head: FIFO. */
                        lease = ml->waits[0].lease;
                        m_remove_wait(ml, 0);
                        m->n_granted_from_queue++;
                } else {
                        /* Otherwise it must be this very call's immediate grant. */
                        RCHECK(m, m->op == OP_ACQUIRE || m->op == OP_TRY);
                        RCHECK(m, m->op_lock == l && m->op_owner == o);
                        RCHECK(m, ev->request == m->op_request && !m->immediate_seen);
                        RCHECK(m, ml->n_waits == 0);
                        m->immediate_seen = true;
                        m->immediate_token = ev->token;
                        lease = m->op_lease;
                }
                RCHECK(m, ev->deadline == m_deadline_after(m->now, lease));
                m_set_holder(m, ml, o, ev->token, ev->deadline);
                m->settled = ev->token;
                return;
        }

        RCHECK(m, ev->kind == LOCKQUEUE_EVENT_REVOKED);
        RCHECK(m, ml->holder == o && ml->token == ev->token && ml->deadline == ev->deadline);
        if (ev->reason == LOCKQUEUE_REASON_EXPIRED) {
                /* Never before the deadline. */
                RCHECK(m, m->op == OP_EXPIRE);
                RCHECK(m, ml->deadline <= m->now);
                m->n_expired++;
        } else {
                RCHECK(m, ev->reason == LOCKQUEUE_REASON_GONE);
                RCHECK(m, m->op == OP_DROP && m->op_owner == o);
        }
        ml->holder = -1;
        m_gc(m, ml);
}

static void random_check_state(lockqueue *q, model *m) {
        _cleanup_(freep) lockqueue_lock_info *infos = NULL;
        size_t n_infos = 0, n_exist = 0, n_owners = 0, n_waiting = 0;
        uint64_t next = LOCKQUEUE_NO_DEADLINE;
        bool seen[R_LOCKS] = {};

        RCHECK(m, lockqueue_list(q, &infos, &n_infos) == 0);
        for (size_t i = 0; i < n_infos; i++) {
                int l = index_of(r_lock_names, R_LOCKS, infos[i].name);
                mlock *ml = &m->locks[l];

                RCHECK(m, !seen[l]);
                seen[l] = true;
                RCHECK(m, ml->exists);
                if (ml->holder < 0)
                        RCHECK(m, !infos[i].holder && infos[i].token == 0);
                else {
                        RCHECK(m, infos[i].holder &&
                                          strcmp(infos[i].holder, r_owner_names[ml->holder]) == 0);
                        RCHECK(m, infos[i].token == ml->token);
                        RCHECK(m, infos[i].deadline == ml->deadline);
                }
                /* No waiter lost, none invented, FIFO order kept. */
                RCHECK(m, infos[i].n_waiters == ml->n_waits);
                for (size_t w = 0; w < ml->n_waits; w++)
                        RCHECK(m, strcmp(infos[i].waiters[w], r_owner_names[ml->waits[w].owner]) == 0);
                RCHECK(m, infos[i].waiters[ml->n_waits] == NULL);
        }
        for (int l = 0; l < R_LOCKS; l++) {
                const mlock *ml = &m->locks[l];

                RCHECK(m, seen[l] == ml->exists);
                n_exist += ml->exists;
                n_waiting += ml->n_waits;
                /* Unless frozen, nobody waits for a free lock. */
                if (!m->frozen && ml->n_waits > 0)
                        RCHECK(m, ml->holder >= 0);
                if (ml->holder >= 0)
                        next = MIN(next, ml->deadline);
        }
        for (int o = 0; o < R_OWNERS; o++)
                n_owners += m_owner_entries(m, o) > 0;

        RCHECK(m, n_infos == n_exist && lockqueue_get_n_locks(q) == n_exist);
        RCHECK(m, lockqueue_get_n_owners(q) == n_owners);
        RCHECK(m, lockqueue_next_deadline(q) == next);
        RCHECK(m, lockqueue_is_frozen(q) == m->frozen);
        RCHECK(m, lockqueue_get_last_token(q) == m->last_token);
        RCHECK(m, m->n_queued == m->n_granted_from_queue + m->n_cancelled + m->n_dropped + n_waiting);
}

/* In [1, end), end > 1. */
static uint64_t random_below(GRand *rand, uint64_t end) {
        return (uint64_t) g_rand_int_range(rand, 1, (gint32) MIN(end, (uint64_t) G_MAXINT32));
}

/* No lease one time in four, else 1..max-1. */
static uint64_t random_lease(GRand *rand, uint64_t max) {
        return g_rand_int_range(rand, 0, 4) == 0 ? 0 : random_below(rand, max);
}

static void random_begin(model *m, int op, int l, int o) {
        m->op = op;
        m->op_lock = l;
        m->op_owner = o;
        m->immediate_seen = false;
}

static void random_expire(lockqueue *q, model *m) {
        int expected = 0;

        for (int l = 0; l < R_LOCKS; l++)
                expected += m->locks[l].holder >= 0 && m->locks[l].deadline <= m->now;
        random_begin(m, OP_EXPIRE, -1, -1);
        RCHECK(m, lockqueue_expire(q, m->now) == expected);
        /* A holder never outlives its deadline. */
        for (int l = 0; l < R_LOCKS; l++)
                if (m->locks[l].holder >= 0)
                        RCHECK(m, m->locks[l].deadline > m->now);
}

static void random_acquire(lockqueue *q, model *m, GRand *rand, bool try, uint64_t *request) {
        int l = g_rand_int_range(rand, 0, R_LOCKS), o = g_rand_int_range(rand, 0, R_OWNERS);
        uint64_t lease = random_lease(rand, 200);
        mlock *ml = &m->locks[l];
        uint64_t token = UINT64_MAX;
        bool grantable = !m->frozen && ml->holder < 0 && ml->n_waits == 0;
        int expected, r;

        if (ml->holder == o)
                expected = -EDEADLK;
        else if (m_find_wait(ml, o) >= 0)
                expected = -EALREADY;
        else if (try && !grantable)
                expected = -EAGAIN;
        else if (m_owner_entries(m, o) >= R_MAX_PER_OWNER)
                expected = -ENOBUFS;
        else if (!grantable && ml->n_waits >= R_MAX_WAITERS)
                expected = -ENOBUFS;
        else
                expected = grantable ? 1 : 0;

        ++*request;
        random_begin(m, try ? OP_TRY : OP_ACQUIRE, l, o);
        m->op_request = *request;
        m->op_lease = lease;
        if (expected == 0) {
                ml->waits[ml->n_waits++] = (mwait) { .owner = o, .request = *request, .lease = lease };
                ml->exists = true;
                m->n_queued++;
        }

        if (try)
                r = lockqueue_try_acquire(q, r_lock_names[l], r_owner_names[o], *request, lease, m->now,
                                          &token);
        else
                r = lockqueue_acquire(q, r_lock_names[l], r_owner_names[o], *request, lease, m->now,
                                      &token);
        RCHECK(m, r == expected);
        m_count(m, r);
        RCHECK(m, m->immediate_seen == (r == 1));
        if (r == 1)
                RCHECK(m, token == m->immediate_token && ml->holder == o && ml->token == token);
        else if (r == 0)
                RCHECK(m, token == 0);
        else
                RCHECK(m, token == UINT64_MAX);
}

static void random_release(lockqueue *q, model *m, GRand *rand) {
        int l = g_rand_int_range(rand, 0, R_LOCKS), o, expected;
        mlock *ml = &m->locks[l];
        uint64_t token;

        /* Mostly the holder with its token; sometimes a stale token, a stranger, a guess. */
        o = ml->holder >= 0 && g_rand_int_range(rand, 0, 10) < 7 ? ml->holder
                                                                 : g_rand_int_range(rand, 0, R_OWNERS);
        switch (g_rand_int_range(rand, 0, 10)) {
        case 0:
                token = random_below(rand, m->last_token + 2);
                break;
        case 1:
        case 2:
                token = ml->hist_last_token > 1 ? ml->hist_last_token - 1 : 1;
                break;
        default:
                token = ml->holder >= 0 ? ml->token : ml->hist_last_token;
                break;
        }

        if (!ml->exists)
                expected = -ENOENT;
        else if (ml->holder != o)
                expected = -EPERM;
        else if (ml->token != token)
                expected = -ESTALE;
        else
                expected = 0;

        random_begin(m, OP_RELEASE, l, o);
        if (expected == 0) {
                /* With waiters, the GRANTED event that passes the lock on follows. */
                ml->holder = -1;
                m_gc(m, ml);
        }
        RCHECK(m, lockqueue_release(q, r_lock_names[l], r_owner_names[o], token, m->now) == expected);
        m_count(m, expected);
}

static void random_cancel(lockqueue *q, model *m, GRand *rand) {
        int l = g_rand_int_range(rand, 0, R_LOCKS), o = g_rand_int_range(rand, 0, R_OWNERS);
        mlock *ml = &m->locks[l];
        int w = m_find_wait(ml, o), expected;
        uint64_t request;

        if (w >= 0 && g_rand_int_range(rand, 0, 10) > 0)
                request = ml->waits[w].request;
        else
                request = (uint64_t) g_rand_int_range(rand, 0, 1000000);

        expected = w >= 0 && ml->waits[w].request == request ? 0 : -ENOENT;
        random_begin(m, OP_CANCEL, l, o);
        if (expected == 0) {
                m_remove_wait(ml, (size_t) w);
                m->n_cancelled++;
                m_gc(m, ml);
        }
        RCHECK(m, lockqueue_cancel(q, r_lock_names[l], r_owner_names[o], request) == expected);
        m_count(m, expected);
}

static void random_drop(lockqueue *q, model *m, int o) {
        int expected = 0;

        random_begin(m, OP_DROP, -1, o);
        /* Waits first, as the queue does; the grants end through REVOKED events. */
        for (int l = 0; l < R_LOCKS; l++) {
                mlock *ml = &m->locks[l];
                int w = m_find_wait(ml, o);

                if (w >= 0) {
                        m_remove_wait(ml, (size_t) w);
                        m->n_dropped++;
                        expected++;
                        m_gc(m, ml);
                }
                expected += ml->holder == o;
        }
        RCHECK(m, lockqueue_drop_owner(q, r_owner_names[o], m->now) == expected);
        RCHECK(m, m_owner_entries(m, o) == 0);
}

static void random_unfreeze(lockqueue *q, model *m) {
        int expected = 0;

        for (int l = 0; l < R_LOCKS; l++)
                expected += m->frozen && m->locks[l].holder < 0 && m->locks[l].n_waits > 0;
        random_begin(m, OP_UNFREEZE, -1, -1);
        if (m->frozen) {
                m->frozen = false;
                m->settled = m->last_token;
                m->n_reasserted = 0;
        }
        RCHECK(m, lockqueue_set_frozen(q, false, m->now) == expected);
        for (int l = 0; l < R_LOCKS; l++)
                m_gc(m, &m->locks[l]);
}

static void random_reassert(lockqueue *q, model *m, GRand *rand) {
        int l = g_rand_int_range(rand, 0, R_LOCKS), o = g_rand_int_range(rand, 0, R_OWNERS), expected;
        uint64_t lease = random_lease(rand, 300);
        mlock *ml = &m->locks[l];
        uint64_t token;

        switch (g_rand_int_range(rand, 0, 10)) {
        case 0:
        case 1:         /* a retry of the holder's claim */
                if (ml->holder >= 0) {
                        o = ml->holder;
                        token = ml->token;
                        break;
                }
                G_GNUC_FALLTHROUGH;
        case 2:
        case 3:         /* from before this queue's grants */
                token = m->settled > 1 ? random_below(rand, m->settled) : 1;
                break;
        default:        /* fresh, as a survivor of the old host would report */
                token = m->last_token + (uint64_t) g_rand_int_range(rand, 1, 5);
                break;
        }

        if (!m->frozen)
                expected = -EPERM;
        else if (ml->holder >= 0)
                expected = ml->holder == o && ml->token == token ? 0 : -EBUSY;
        else if (m_find_wait(ml, o) >= 0)
                expected = -EALREADY;
        else if (token <= m->settled || token <= ml->obj_last_token)
                expected = -ESTALE;
        else if (m_owner_entries(m, o) >= R_MAX_PER_OWNER)
                expected = -ENOBUFS;
        else {
                expected = 0;
                if (!(ml->exists && m_remembered(m, ml)))
                        m->n_reasserted++;
                m_set_holder(m, ml, o, token, m_deadline_after(m->now, lease));
        }

        random_begin(m, OP_REASSERT, l, o);
        RCHECK(m, lockqueue_reassert(q, r_lock_names[l], r_owner_names[o], token, lease, m->now) ==
                          expected);
        m_count(m, expected);
}

START_TEST(test_random_operations_keep_invariants) {
        _cleanup_(lockqueue_freep) lockqueue *q = NULL;
        g_autoptr(GRand) rand = NULL;
        const char *env = getenv("LOCKQUEUE_SEED");
        lockqueue_limits limits;
        uint64_t request = 0;
        model m = {};

        m.seed = env ? (unsigned) strtoul(env, NULL, 0) : (unsigned) g_get_real_time();
        printf("test_random_operations_keep_invariants: seed %u (LOCKQUEUE_SEED=%u replays it)\n",
               m.seed, m.seed);
        fflush(stdout);
        rand = g_rand_new_with_seed(m.seed);
        for (int l = 0; l < R_LOCKS; l++)
                m.locks[l].holder = -1;
        m.now = 1000;

        ck_assert_int_eq(lockqueue_new(&q, random_on_event, &m), 0);
        lockqueue_get_limits(q, &limits);
        limits.max_locks_per_owner = R_MAX_PER_OWNER;
        limits.max_waiters_per_lock = R_MAX_WAITERS;
        ck_assert_int_eq(lockqueue_set_limits(q, &limits), 0);

        for (m.step = 0; m.step < R_STEPS; m.step++) {
                int pick = g_rand_int_range(rand, 0, 100);

                /* Time passes; the caller's timer fires. */
                m.now += (uint64_t) g_rand_int_range(rand, 0, 40);
                random_expire(q, &m);

                if (m.frozen && pick < 25)
                        random_reassert(q, &m, rand);
                else if (pick < 35)
                        random_acquire(q, &m, rand, false, &request);
                else if (pick < 45)
                        random_acquire(q, &m, rand, true, &request);
                else if (pick < 75)
                        random_release(q, &m, rand);
                else if (pick < 83)
                        random_cancel(q, &m, rand);
                else if (pick < 87)
                        random_drop(q, &m, g_rand_int_range(rand, 0, R_OWNERS));
                else if (pick < 88) {
                        random_begin(&m, OP_FREEZE, -1, -1);
                        m.frozen = true;
                        RCHECK(&m, lockqueue_set_frozen(q, true, m.now) == 0);
                } else if (pick < 93)
                        random_unfreeze(q, &m);
                else if (pick < 94) {
                        uint64_t floor = g_rand_boolean(rand) ? m.last_token / 2
                                                              : m.last_token + random_below(rand, 4);

                        random_begin(&m, OP_FLOOR, -1, -1);
                        RCHECK(&m, lockqueue_raise_token_floor(q, floor) == 0);
                        m.last_token = MAX(m.last_token, floor);
                } else if (pick < 97)
                        random_reassert(q, &m, rand);   /* mostly refused: not frozen */
                else
                        random_begin(&m, OP_NONE, -1, -1);

                random_check_state(q, &m);
        }

        /* Wind down: every wait must end as granted, cancelled or dropped. */
        random_unfreeze(q, &m);
        for (int o = 0; o < R_OWNERS; o++)
                random_drop(q, &m, o);
        random_check_state(q, &m);
        ck_assert_uint_eq(lockqueue_get_n_locks(q), 0);
        ck_assert_uint_eq(lockqueue_get_n_owners(q), 0);
        ck_assert_uint_eq(m.n_queued, m.n_granted_from_queue + m.n_cancelled + m.n_dropped);
        /* The run exercised what it claims to: every outcome of every call, many times. */
        ck_assert_uint_gt(m.n_granted_from_queue, 1000);
        ck_assert_uint_gt(m.n_cancelled, 100);
        ck_assert_uint_gt(m.n_dropped, 100);
        ck_assert_uint_gt(m.n_expired, 100);
        {
                static const struct {
                        int op, r;
                } outcomes[] = {
                        { OP_ACQUIRE, 1 },        { OP_ACQUIRE, 0 },          { OP_ACQUIRE, -EDEADLK },
                        { OP_ACQUIRE, -EALREADY }, { OP_ACQUIRE, -ENOBUFS },  { OP_TRY, 1 },
                        { OP_TRY, -EAGAIN },      { OP_TRY, -ENOBUFS },       { OP_RELEASE, 0 },
                        { OP_RELEASE, -ENOENT },  { OP_RELEASE, -EPERM },     { OP_RELEASE, -ESTALE },
                        { OP_CANCEL, 0 },         { OP_CANCEL, -ENOENT },     { OP_REASSERT, 0 },
                        { OP_REASSERT, -EPERM },  { OP_REASSERT, -EBUSY },    { OP_REASSERT, -EALREADY },
                        { OP_REASSERT, -ESTALE }, { OP_REASSERT, -ENOBUFS },
                };

                for (size_t i = 0; i < G_N_ELEMENTS(outcomes); i++)
                        ck_assert_msg(m_seen(&m, outcomes[i].op, outcomes[i].r) >= 10,
                                      "op %d returned %d only %" PRIu64 " times", outcomes[i].op,
                                      outcomes[i].r, m_seen(&m, outcomes[i].op, outcomes[i].r));
        }
}
END_TEST

/* ---- runner ----------------------------------------------------------------------------------- */

static Suite *lockqueue_suite(bool forking) {
        Suite *s = suite_create("lockqueue");
        TCase *tc = tcase_create("transitions");
        TCase *tc_random = tcase_create("random");

        tcase_add_test(tc, test_acquire_of_free_lock_grants_at_once_and_reports_it);
        tcase_add_test(tc, test_waiters_are_granted_in_fifo_order);
        tcase_add_test(tc, test_try_acquire_grants_a_free_lock_and_refuses_a_held_one);
        tcase_add_test(tc, test_acquire_of_held_or_awaited_lock_is_refused);
        tcase_add_test(tc, test_release_by_holder_frees_the_lock);
        tcase_add_test(tc, test_release_by_non_holder_is_refused);
        tcase_add_test(tc, test_late_release_after_expiry_leaves_the_next_holder_alone);
        tcase_add_test(tc, test_set_deadline_parks_and_restarts_a_lease);
        tcase_add_test(tc, test_set_deadline_checks_the_grant_and_may_revoke_at_once);
        tcase_add_test(tc, test_release_with_token_of_an_earlier_grant_is_stale);
        tcase_add_test(tc, test_duplicate_release_is_refused);
        tcase_add_test(tc, test_release_of_unknown_lock_is_refused);
        tcase_add_test(tc, test_tokens_strictly_increase_across_locks_and_grants);
        tcase_add_test(tc, test_token_floor_raises_later_tokens);
        tcase_add_test(tc, test_lease_zero_never_expires);
        tcase_add_test(tc, test_expiry_revokes_the_holder_and_grants_the_next_waiter);
        tcase_add_test(tc, test_calls_given_now_expire_due_leases_first);
        tcase_add_test(tc, test_next_deadline_is_the_earliest_lease);
        tcase_add_test(tc, test_drop_owner_releases_its_grants_and_removes_its_waits);
        tcase_add_test(tc, test_cancel_removes_a_wait);
        tcase_add_test(tc, test_callback_may_release_from_a_granted_event);
        tcase_add_test(tc, test_events_of_nested_calls_follow_the_current_callback);
        tcase_add_test(tc, test_callback_may_drop_owners_while_events_are_pending);
        if (forking)
                tcase_add_test_raise_signal(tc, test_free_from_callback_aborts, SIGABRT);
        tcase_add_test(tc, test_frozen_queue_grants_nothing);
        tcase_add_test(tc, test_reassert_sets_holder_and_token_floor);
        tcase_add_test(tc, test_reasserted_lease_expires);
        tcase_add_test(tc, test_conflicting_reassert_is_refused);
        tcase_add_test(tc, test_stale_reassert_is_refused);
        tcase_add_test(tc, test_unfreeze_grants_free_locks_to_their_first_waiters);
        tcase_add_test(tc, test_limit_of_locks_per_owner);
        tcase_add_test(tc, test_limit_of_waiters_per_lock);
        tcase_add_test(tc, test_limit_of_reasserted_locks_per_freeze);
        tcase_add_test(tc, test_invalid_names_are_refused);
        tcase_add_test(tc, test_set_limits_refuses_zero);
        tcase_add_test(tc, test_empty_locks_and_owners_are_freed);
        tcase_add_test(tc, test_list_shows_holders_and_waiters_in_order);
        suite_add_tcase(s, tc);

        tcase_add_test(tc_random, test_random_operations_keep_invariants);
        tcase_set_timeout(tc_random, 120);
        suite_add_tcase(s, tc_random);
        return s;
}

int main(void) {
        /* Check forks unless CK_FORK=no; the death test needs a process of its own. */
        const char *fork_env = getenv("CK_FORK");
        SRunner *sr = srunner_create(lockqueue_suite(!fork_env || strcmp(fork_env, "no") != 0));
        int failed;

        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

/* SPDX-License-Identifier: MIT */
/* Integration tests of grant caching: parked grants, the service's call back, leases, takeover. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <check.h>
#include <glib.h>
#include <systemd/sd-bus.h>

#include "testutil.h"

#ifndef TEST_LOCKER_PATH
#error "TEST_LOCKER_PATH must name the test-locker binary"
#endif

/*
 * Every test runs test-locker processes (see test-locker.c) against a lock service, and looks
 * at the service from outside: its Grants property counts the grants it made (a re-take of a
 * parked grant is none), and ListLocks shows who holds a lock, under which token, and how
 * much lease is left (UINT64_MAX for a parked grant, which runs none).
 */

static char dir[] = "/tmp/ipchannel-lockcache-XXXXXX";

static void setup(void) {
        ck_assert_ptr_nonnull(mkdtemp(strcpy(dir, "/tmp/ipchannel-lockcache-XXXXXX")));
}

static void teardown(void) {
        g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", dir);

        peers_cleanup();
        (void) !system(cmd);
}

/* A file in the test's directory (the string lives until the end of the test). */
static const char *in_dir(const char *name) {
        static GPtrArray *paths;

        if (!paths)
                paths = g_ptr_array_new_with_free_func(g_free);
        g_ptr_array_add(paths, g_strdup_printf("%s/%s", dir, name));
        return g_ptr_array_index(paths, paths->len - 1);
}

static void touch(const char *path) {
        int fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);

        ck_assert_int_ge(fd, 0);
        close(fd);
}

/* A host for app's lock service that takes no locks itself, up and out of recovery. */
static peer *start_host(const char *app) {
        peer *h = peer_start("--app", app, "--connect", NULL);

        ck_assert_uint_gt(peer_wait_connect(h), 0);
        wait_service_ready(app);
        return h;
}

static uint64_t service_grants(const char *app) {
        sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autofree char *name = g_strdup_printf("org.ipchannel.%s.Locks", app);
        g_autofree char *path = g_strdup_printf("/org/ipchannel/%s/Locks", app);
        sd_bus *bus = raw_bus();
        sd_bus_message *reply = NULL;
        uint64_t n = 0;

        ck_assert_int_ge(sd_bus_get_property(bus, name, path, "org.ipchannel.LockService1", "Grants", &error,
                                             &reply, "t"),
                         0);
        ck_assert_int_ge(sd_bus_message_read(reply, "t", &n), 0);
        sd_bus_message_unref(reply);
        sd_bus_flush_close_unref(bus);
        return n;
}

typedef struct lock_state {
        bool known;
        char holder[256];       /* "" if none */
        uint64_t token;
        uint64_t left;          /* lease left; UINT64_MAX: none */
} lock_state;

/* What app's service says of lock. */
static lock_state service_lock(const char *app, const char *lock) {
        sd_bus_error error = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        sd_bus *bus = raw_bus();
        lock_state st = {};
        const char *l, *holder;
        uint64_t token, left;

        ck_assert_int_ge(call_lock(bus, app, "ListLocks", &error, &reply, NULL), 0);
        ck_assert_int_ge(sd_bus_message_enter_container(reply, 'a', "(ssttas)"), 0);
        while (sd_bus_message_enter_container(reply, 'r', "ssttas") > 0) {
                ck_assert_int_ge(sd_bus_message_read(reply, "sstt", &l, &holder, &token, &left), 0);
                ck_assert_int_ge(sd_bus_message_skip(reply, "as"), 0);
                ck_assert_int_ge(sd_bus_message_exit_container(reply), 0);
                if (strcmp(l, lock) == 0)
                        st = (lock_state) { .known = true, .token = token, .left = left };
                if (strcmp(l, lock) == 0)
                        snprintf(st.holder, sizeof(st.holder), "%s", holder);
        }
        sd_bus_message_unref(reply);
        sd_bus_flush_close_unref(bus);
        return st;
}

/* Waits (up to 5 s) until the service shows lock held and parked (no lease running). */
static lock_state wait_parked(const char *app, const char *lock) {
        lock_state st = {};

        for (int k = 0; k < 500; k++) {
                st = service_lock(app, lock);
                if (st.holder[0] && st.left == UINT64_MAX)
                        return st;
                usleep(10 * 1000);
        }
        ck_abort_msg("%s is not parked: holder \"%s\", lease left %" PRIu64, lock, st.holder, st.left);
        return st;
}

/* Waits (up to 5 s) until nobody holds lock. */
static void wait_free(const char *app, const char *lock) {
        for (int k = 0; k < 500; k++) {
                if (service_lock(app, lock).holder[0] == '\0')
                        return;
                usleep(10 * 1000);
        }
        ck_abort_msg("%s is still held", lock);
}

/* Reads the "enter TOKEN USEC" line of a --verbose locker; returns the token. */
static uint64_t expect_enter(peer *p) {
        const char *line = peer_expect(p, "enter ", PEER_TIMEOUT_MS);
        uint64_t token = 0, usec = 0;

        ck_assert_msg(line, "a locker did not enter its section");
        ck_assert_int_eq(sscanf(line, "enter %" SCNu64 " %" SCNu64, &token, &usec), 2);
        return token;
}

/* Reads "done N OVERLAPS": n sections, none overlapping, tokens never going back. */
static void expect_done(peer *p, unsigned n) {
        const char *line = peer_expect(p, "done ", PEER_TIMEOUT_MS * 6);
        unsigned done = 0, overlaps = 0;

        ck_assert_msg(line, "a locker did not finish");
        ck_assert_int_eq(sscanf(line, "done %u %u", &done, &overlaps), 2);
        ck_assert_uint_eq(done, n);
        ck_assert_uint_eq(overlaps, 0);
        ck_assert_msg(!strstr(line, "tokens-went-back"), "fencing tokens went backwards");
}

START_TEST(test_retake_is_served_without_the_service) {
        peer *host = start_host("retake");
        uint64_t before = service_grants("retake");

        /* 200 sections each, blocking and asynchronous, on two locks: two grants in all. */
        peer *a = proc_start(TEST_LOCKER_PATH, "started", "--app", "retake", "--file", in_dir("counter-a"),
                             "--lock", "a", "--mode", "acquire", "--count", "200", "--linger", NULL);
        peer *b = proc_start(TEST_LOCKER_PATH, "started", "--app", "retake", "--file", in_dir("counter-b"),
                             "--lock", "b", "--mode", "sync", "--count", "200", "--linger", NULL);
        expect_done(a, 200);
        expect_done(b, 200);
        ck_assert_uint_eq(service_grants("retake") - before, 2);

        /* Both kept their grant, parked. */
        lock_state sa = wait_parked("retake", "a"), sb = wait_parked("retake", "b");
        ck_assert_str_ne(sa.holder, sb.holder);
        (void) host;
}
END_TEST

START_TEST(test_parked_lock_goes_to_another_process_when_it_asks) {
        peer *host = start_host("callback");

        /* a's lease is a minute: without the call back, b would wait for it to run out. */
        peer *a = proc_start(TEST_LOCKER_PATH, "started", "--app", "callback", "--file", in_dir("counter"),
                             "--mode", "acquire", "--count", "3", "--lease-usec", "60000000", "--linger",
                             "--verbose", NULL);
        uint64_t ta = expect_enter(a);
        expect_done(a, 3);
        lock_state st = wait_parked("callback", "counter");
        ck_assert_uint_eq(st.token, ta);
        uint64_t before = service_grants("callback");

        peer *b = proc_start(TEST_LOCKER_PATH, "started", "--app", "callback", "--file", in_dir("counter"),
                             "--mode", "sync", "--count", "2", "--lease-usec", "60000000", "--linger", "--verbose",
                             NULL);
        uint64_t tb = expect_enter(b);
        ck_assert_uint_gt(tb, ta);
        expect_done(b, 2);
        /* One grant for b's two sections: its own second one was a re-take. */
        ck_assert_uint_eq(service_grants("callback") - before, 1);
        ck_assert_uint_eq(wait_parked("callback", "counter").token, tb);
        (void) host;
}
END_TEST

START_TEST(test_killed_parked_holder_frees_the_lock_at_once) {
        peer *host = start_host("killparked");
        peer *a = proc_start(TEST_LOCKER_PATH, "started", "--app", "killparked", "--file", in_dir("counter-a"),
                             "--mode", "acquire", "--count", "1", "--lease-usec", "60000000", "--linger", NULL);

        expect_done(a, 1);
        wait_parked("killparked", "counter");

        /* Stopped, a cannot answer the call back: b waits (a's lease to answer is a minute). */
        peer_kill(a, SIGSTOP);
        peer *b = proc_start(TEST_LOCKER_PATH, "started", "--app", "killparked", "--file", in_dir("counter-b"),
                             "--mode", "sync", "--count", "1", "--verbose", NULL);
        wait_waiters("killparked", "counter", 1);
        ck_assert(peer_quiet(b, "enter", 500));

        /* Killed, its connection closes and the parked grant goes with it. */
        peer_kill(a, SIGKILL);
        expect_enter(b);
        expect_done(b, 1);
        (void) host;
}
END_TEST

START_TEST(test_parked_grant_survives_a_takeover) {
        peer *host = start_host("takeover");
        peer *a = proc_start(TEST_LOCKER_PATH, "started", "--app", "takeover", "--file", in_dir("counter"),
                             "--mode", "sync", "--count", "2", "--lease-usec", "60000000", "--linger",
                             "--verbose", NULL);
        uint64_t ta = expect_enter(a);

        expect_done(a, 2);
        lock_state st = wait_parked("takeover", "counter");

        /* The host dies; a's agent is the only other one queued: it takes over, and its own
         * report keeps the parked grant. */
        peer_kill(host, SIGKILL);
        wait_service_ready("takeover");
        lock_state now = wait_parked("takeover", "counter");
        ck_assert_uint_eq(now.token, ta);
        ck_assert_str_eq(now.holder, st.holder);

        /* Another process still gets it, by the call back, and under a higher token. */
        peer *b = proc_start(TEST_LOCKER_PATH, "started", "--app", "takeover", "--file", in_dir("counter"),
                             "--mode", "acquire", "--count", "1", "--verbose", NULL);
        ck_assert_uint_gt(expect_enter(b), ta);
        expect_done(b, 1);
}
END_TEST

START_TEST(test_parked_grant_survives_a_takeover_by_another_process) {
        peer *host = start_host("takeover2");
        peer *a = proc_start(TEST_LOCKER_PATH, "started", "--app", "takeover2", "--file", in_dir("counter"),
                             "--mode", "acquire", "--count", "1", "--lease-usec", "60000000", "--linger",
                             "--verbose", NULL);
        uint64_t ta = expect_enter(a);

        expect_done(a, 1);
        lock_state st = wait_parked("takeover2", "counter");
        /* b waits behind a stopped a, so that the call back cannot be answered before the host
         * dies; the new host must not give the lock to b while a keeps it. */
        peer_kill(a, SIGSTOP);
        peer *b = proc_start(TEST_LOCKER_PATH, "started", "--app", "takeover2", "--file", in_dir("counter"),
                             "--mode", "sync", "--count", "1", "--verbose", NULL);
        wait_waiters("takeover2", "counter", 1);

        peer_kill(host, SIGKILL);
        /* No one may grant before a has reported, and a is stopped. */
        ck_assert(peer_quiet(b, "enter", 500));
        peer_kill(a, SIGCONT);
        /* a reports its parked grant to the new host, which calls it back: b gets it after a. */
        ck_assert_uint_gt(expect_enter(b), ta);
        expect_done(b, 1);
        (void) st;
}
END_TEST

START_TEST(test_lease_covers_active_holding_only) {
        peer *host = start_host("lease");

        /* Lease 400 ms. Section 1, then 900 ms parked, then section 2 (a re-take), which holds
         * until the file "go" exists. */
        peer *a = proc_start(TEST_LOCKER_PATH, "started", "--app", "lease", "--file", in_dir("counter"), "--mode",
                             "acquire", "--count", "2", "--lease-usec", "400000", "--gap-usec", "900000",
                             "--pause-file", in_dir("go"), "--pause-section", "2", "--verbose", NULL);
        uint64_t t1 = expect_enter(a);
        uint64_t before = service_grants("lease");
        lock_state parked = wait_parked("lease", "counter");
        ck_assert_uint_eq(parked.token, t1);

        /* Parked longer than the lease, the grant is still there, and the re-take has it. */
        const char *line = peer_expect(a, "holding ", PEER_TIMEOUT_MS);
        ck_assert_ptr_nonnull(line);
        ck_assert_uint_eq(strtoull(line + strlen("holding "), NULL, 10), t1);
        ck_assert_uint_eq(service_grants("lease"), before);

        /* In use again, the lease runs again (Resume), ... */
        lock_state st = {};
        for (int k = 0; k < 500; k++) {
                st = service_lock("lease", "counter");
                if (st.left != UINT64_MAX)
                        break;
                usleep(1000);
        }
        ck_assert_str_eq(st.holder, parked.holder);
        ck_assert_uint_le(st.left, 400000);

        /* ... and ends as for any holder: the service takes it back and the holder is told. */
        wait_free("lease", "counter");
        touch(in_dir("go"));
        line = peer_expect(a, "error", PEER_TIMEOUT_MS);
        ck_assert_ptr_nonnull(line);
        ck_assert_int_eq(atoi(line + strlen("error ")), -ETIME);
        ck_assert_int_eq(peer_wait(a, PEER_TIMEOUT_MS), 1);
        (void) host;
}
END_TEST

START_TEST(test_counter_is_exact_with_retakes_and_contention) {
        peer *host = start_host("mixed");
        peer *p[4];
        GHashTable *owner = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free, NULL);
        uint64_t before = service_grants("mixed");

        /* Two go flat out, two pause between sections: the lock is re-taken while the pausing
         * ones are away, and handed over when they come back. */
        for (int i = 0; i < 4; i++)
                p[i] = proc_start(TEST_LOCKER_PATH, "started", "--app", "mixed", "--file", in_dir("counter"),
                                  "--mode", i % 2 ? "acquire" : "sync", "--count", "300", "--hold-usec", "20",
                                  "--gap-usec", i < 2 ? "0" : "3000", "--verbose", NULL);

        /* A token is one grant: it never shows up in two processes. */
        for (int i = 0; i < 4; i++) {
                const char *line;
                unsigned n = 0, done = 0, overlaps = 0;

                while ((line = peer_expect(p[i], "", PEER_TIMEOUT_MS * 6)) && strncmp(line, "done ", 5) != 0) {
                        uint64_t token = 0, usec = 0;

                        if (sscanf(line, "enter %" SCNu64 " %" SCNu64, &token, &usec) != 2)
                                continue;
                        n++;
                        int *who = g_hash_table_lookup(owner, &token);
                        ck_assert_msg(!who || GPOINTER_TO_INT(who) == i + 1,
                                      "token %" PRIu64 " was held by two processes", token);
                        g_hash_table_insert(owner, g_memdup2(&token, sizeof(token)), GINT_TO_POINTER(i + 1));
                }
                ck_assert_ptr_nonnull(line);
                ck_assert_int_eq(sscanf(line, "done %u %u", &done, &overlaps), 2);
                ck_assert_uint_eq(done, 300);
                ck_assert_uint_eq(n, 300);
                ck_assert_uint_eq(overlaps, 0);
                ck_assert_msg(!strstr(line, "tokens-went-back"), "fencing tokens went backwards");
                ck_assert_int_eq(peer_wait(p[i], PEER_TIMEOUT_MS), 0);
        }

        FILE *f = fopen(in_dir("counter"), "re");
        long v = -1;
        ck_assert_ptr_nonnull(f);
        ck_assert_int_eq(fscanf(f, "%ld", &v), 1);
        fclose(f);
        ck_assert_int_eq(v, 1200);
        /* Every grant the service made is a token seen above, and no more. */
        ck_assert_uint_eq(service_grants("mixed") - before, g_hash_table_size(owner));
        g_hash_table_unref(owner);
        (void) host;
}
END_TEST

START_TEST(test_self_hosted_service_applies_lock_limits) {
        sd_bus_error error = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        uint64_t t = 0;

        /* Alone on its app, it hosts the service, with the limits it set before connecting. */
        peer *host = proc_start(TEST_LOCKER_PATH, "started", "--app", "limits", "--file", in_dir("unused"),
                                "--mode", "serve", "--max-locks", "2", "--max-waiters", "1", NULL);
        wait_service_ready("limits");
        sd_bus *c1 = lock_client("limits"), *c2 = lock_client("limits"), *c3 = lock_client("limits");

        /* Two locks per connection. */
        ck_assert_int_ge(call_lock(c1, "limits", "TryAcquire", &error, &reply, "st", "x", (uint64_t) 0), 0);
        ck_assert_int_ge(sd_bus_message_read(reply, "t", &t), 0);
        reply = sd_bus_message_unref(reply);
        ck_assert_int_ge(call_lock(c1, "limits", "TryAcquire", &error, NULL, "st", "y", (uint64_t) 0), 0);
        ck_assert_int_lt(call_lock(c1, "limits", "TryAcquire", &error, NULL, "st", "z", (uint64_t) 0), 0);
        ck_assert_str_eq(error.name, "org.ipchannel.Error.LimitsExceeded");
        sd_bus_error_free(&error);

        /* One waiter per lock. */
        ck_assert_int_ge(sd_bus_call_method_async(c2, NULL, "org.ipchannel.limits.Locks", "/org/ipchannel/limits/Locks",
                                                  "org.ipchannel.LockService1", "Acquire", NULL, NULL, "st", "x",
                                                  (uint64_t) 0),
                         0);
        ck_assert_int_ge(sd_bus_flush(c2), 0);
        wait_waiters("limits", "x", 1);
        ck_assert_int_lt(call_lock(c3, "limits", "Acquire", &error, NULL, "st", "x", (uint64_t) 0), 0);
        ck_assert_str_eq(error.name, "org.ipchannel.Error.LimitsExceeded");
        sd_bus_error_free(&error);

        /* The service still serves within the limits. */
        ck_assert_int_ge(call_lock(c3, "limits", "TryAcquire", &error, NULL, "st", "w", (uint64_t) 0), 0);
        sd_bus_flush_close_unref(c1);
        sd_bus_flush_close_unref(c2);
        sd_bus_flush_close_unref(c3);
        (void) host;
}
END_TEST

START_TEST(test_park_and_resume_answer_with_named_errors) {
        sd_bus_error error = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        uint64_t t = 0;
        int contended = -1;
        peer *host = start_host("parkerr");
        sd_bus *c1 = lock_client("parkerr"), *c2 = lock_client("parkerr");

        /* A grant made by TryAcquire cannot be parked. */
        ck_assert_int_ge(call_lock(c1, "parkerr", "TryAcquire", &error, &reply, "st", "x", (uint64_t) 0), 0);
        ck_assert_int_ge(sd_bus_message_read(reply, "t", &t), 0);
        reply = sd_bus_message_unref(reply);
        ck_assert_int_lt(call_lock(c1, "parkerr", "Park", &error, NULL, "st", "x", t), 0);
        ck_assert_str_eq(error.name, "org.ipchannel.Error.NotCached");
        sd_bus_error_free(&error);

        /* Another connection's grant, a stale token, an unknown lock. */
        ck_assert_int_ge(call_lock(c2, "parkerr", "AcquireCached", &error, &reply, "st", "y", (uint64_t) 0), 0);
        ck_assert_int_ge(sd_bus_message_read(reply, "tb", &t, &contended), 0);
        ck_assert_int_eq(contended, 0);
        reply = sd_bus_message_unref(reply);
        ck_assert_int_lt(call_lock(c1, "parkerr", "Resume", &error, NULL, "st", "y", t), 0);
        ck_assert_str_eq(error.name, "org.ipchannel.Error.NotHolder");
        sd_bus_error_free(&error);
        ck_assert_int_lt(call_lock(c2, "parkerr", "Park", &error, NULL, "st", "y", t - 1), 0);
        ck_assert_str_eq(error.name, "org.ipchannel.Error.StaleToken");
        sd_bus_error_free(&error);
        ck_assert_int_lt(call_lock(c2, "parkerr", "Park", &error, NULL, "st", "nosuch", t), 0);
        ck_assert_str_eq(error.name, "org.ipchannel.Error.NoSuchLock");
        sd_bus_error_free(&error);
        ck_assert_int_lt(call_lock(c2, "parkerr", "Park", &error, NULL, "s", "y"), 0);
        ck_assert_str_eq(error.name, "org.freedesktop.DBus.Error.InvalidArgs");
        sd_bus_error_free(&error);

        /* The holder's own Park works; the service keeps serving. */
        ck_assert_int_ge(call_lock(c2, "parkerr", "Park", &error, NULL, "st", "y", t), 0);
        ck_assert_uint_eq(wait_parked("parkerr", "y").token, t);
        ck_assert_int_ge(call_lock(c2, "parkerr", "Release", &error, NULL, "st", "y", t), 0);
        wait_free("parkerr", "y");
        sd_bus_flush_close_unref(c1);
        sd_bus_flush_close_unref(c2);
        (void) host;
}
END_TEST

int main(void) {
        Suite *s = suite_create("lockcache");
        TCase *tc;
        SRunner *sr;
        int failed;

        tc = tcase_create("cache");
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 180);
        tcase_add_test(tc, test_retake_is_served_without_the_service);
        tcase_add_test(tc, test_parked_lock_goes_to_another_process_when_it_asks);
        tcase_add_test(tc, test_killed_parked_holder_frees_the_lock_at_once);
        tcase_add_test(tc, test_parked_grant_survives_a_takeover);
        tcase_add_test(tc, test_parked_grant_survives_a_takeover_by_another_process);
        tcase_add_test(tc, test_lease_covers_active_holding_only);
        tcase_add_test(tc, test_counter_is_exact_with_retakes_and_contention);
        suite_add_tcase(s, tc);

        tc = tcase_create("service");
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 120);
        tcase_add_test(tc, test_self_hosted_service_applies_lock_limits);
        tcase_add_test(tc, test_park_and_resume_answer_with_named_errors);
        suite_add_tcase(s, tc);

        sr = srunner_create(s);
        srunner_run_all(sr, CK_VERBOSE);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

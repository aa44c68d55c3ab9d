/* SPDX-License-Identifier: MIT */
/* Integration tests of synchronize: real processes contending for locks on a private bus. */
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <check.h>
#include <glib.h>
#include <systemd/sd-bus.h>

#include "testutil.h"

#ifndef TEST_LOCKER_PATH
#error "TEST_LOCKER_PATH must name the test-locker binary"
#endif
#ifndef LOCKD_PATH
#error "LOCKD_PATH must name ipchannel-lockd"
#endif

#define _cleanup_bus_message_ __attribute__((cleanup(sd_bus_message_unrefp)))

static char dir[] = "/tmp/ipchannel-locks-XXXXXX";

static void setup(void) {
        ck_assert_ptr_nonnull(mkdtemp(strcpy(dir, "/tmp/ipchannel-locks-XXXXXX")));
}

static void teardown(void) {
        char cmd[256];

        peers_cleanup();
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        (void) !system(cmd);
}

static char *path_in_dir(const char *name) {
        static char paths[8][512];
        static unsigned k;
        char *p = paths[k++ % 8];

        snprintf(p, 512, "%s/%s", dir, name);
        return p;
}

static long read_counter(const char *path) {
        char buf[64] = "";
        FILE *f = fopen(path, "re");

        if (!f)
                return -1;
        if (!fgets(buf, sizeof(buf), f))
                buf[0] = '\0';
        fclose(f);
        return strtol(buf, NULL, 10);
}

static peer *locker(const char *app, const char *mode, const char *count, const char *extra1,
                    const char *extra2) {
        return proc_start(TEST_LOCKER_PATH, "started", "--app", app, "--file", path_in_dir("counter"),
                          "--mode", mode, "--count", count, extra1, extra2, NULL);
}

/* extra1, extra2: more arguments, or NULL. Without --verbose among them a locker prints little,
 * so its pipe never fills while the test reads another's. */

/* Reads "done N OVERLAPS" and checks it. */
static void expect_done(peer *p, unsigned n, bool no_overlap) {
        char error[512] = "";
        const char *line;
        unsigned done = 0, overlaps = 0;

        /* Keeps an "error" line, if one comes first, for the failure message. */
        while ((line = peer_next_line(p, 120000)) && strncmp(line, "done ", 5) != 0)
                if (strncmp(line, "error ", 6) == 0)
                        snprintf(error, sizeof(error), "%s", line);
        ck_assert_msg(line, "a locker did not finish %s", error);
        ck_assert_int_eq(sscanf(line, "done %u %u", &done, &overlaps), 2);
        ck_assert_msg(done == n, "a locker did %u sections, not %u: %s", done, n, error);
        if (no_overlap) {
                ck_assert_msg(overlaps == 0, "sections overlapped %u times", overlaps);
                ck_assert_msg(!strstr(line, "tokens-went-back"), "fencing tokens went backwards");
        }
        ck_assert_int_eq(peer_wait(p, 10000), 0);
}

static void counter_test(const char *app, const char *mode) {
        peer *p[4];

        for (int i = 0; i < 4; i++)
                p[i] = locker(app, mode, "1000", "--hold-usec", "20");
        for (int i = 0; i < 4; i++)
                expect_done(p[i], 1000, true);
        ck_assert_int_eq(read_counter(path_in_dir("counter")), 4000);
}

START_TEST(test_counter_is_exact_under_synchronize) {
        counter_test("ctrsync", "sync");
}
END_TEST

START_TEST(test_counter_is_exact_under_lock_acquire) {
        counter_test("ctracq", "acquire");
}
END_TEST

START_TEST(test_counter_loses_updates_without_the_lock) {
        peer *p[4];
        long v;

        /* Certain, however slow the lockers: each reads the counter (0) in its first section
         * and pauses there until all four have read it, then all four write 1. Three updates
         * are lost at least, whatever the other sections do. */
        for (int i = 0; i < 4; i++) {
                p[i] = locker("ctrnone", "none", "1000", "--pause-file", path_in_dir("go"));
                ck_assert_ptr_nonnull(peer_expect(p[i], "holding", PEER_TIMEOUT_MS));
        }
        close(open(path_in_dir("go"), O_CREAT | O_WRONLY | O_CLOEXEC, 0644));
        for (int i = 0; i < 4; i++)
                expect_done(p[i], 1000, false);
        v = read_counter(path_in_dir("counter"));
        ck_assert_msg(v <= 4000 - 3, "without the lock the counter is %ld: the test could not fail", v);
}
END_TEST

START_TEST(test_single_process_hosts_its_own_service) {
        peer *p = locker("alone", "sync", "200", NULL, NULL);

        expect_done(p, 200, true);
        ck_assert_int_eq(read_counter(path_in_dir("counter")), 200);
}
END_TEST

/* Parses "enter TOKEN USEC" / "leave TOKEN USEC". */
static uint64_t expect_stamp(peer *p, const char *what, uint64_t *ret_token) {
        const char *line = peer_expect(p, what, PEER_TIMEOUT_MS * 3);
        uint64_t token = 0, usec = 0;
        char word[16];

        ck_assert_msg(line, "no \"%s\" line", what);
        ck_assert_int_eq(sscanf(line, "%15s %" SCNu64 " %" SCNu64, word, &token, &usec), 3);
        if (ret_token)
                *ret_token = token;
        return usec;
}

START_TEST(test_killed_holder_passes_the_lock_at_once) {
        /* A third process hosts the service, so this is the holder dying, not a takeover. */
        peer *host = peer_start("--app", "killholder", "--connect", NULL);
        ck_assert_uint_eq(peer_wait_connect(host), 1);

        /* Its own counter file: it dies inside its section, leaving its overlap marker behind. */
        peer *a = proc_start(TEST_LOCKER_PATH, "started", "--app", "killholder", "--file",
                             path_in_dir("counter-a"), "--count", "1", "--lease-usec", "30000000",
                             "--pause-file", path_in_dir("never"), NULL);
        ck_assert_ptr_nonnull(peer_expect(a, "holding", PEER_TIMEOUT_MS));
        peer *b = locker("killholder", "sync", "1", "--verbose", NULL);
        wait_waiters("killholder", "counter", 1);     /* b is waiting now */

        uint64_t killed = now_usec();
        peer_kill(a, SIGKILL);
        uint64_t granted = expect_stamp(b, "enter", NULL);
        /* At once: well within a's 30 s lease. */
        ck_assert_msg(granted - killed < scaled_usec(100 * 1000),
                      "the next waiter got the lock %" PRIu64 " us after the holder died", granted - killed);
        expect_done(b, 1, true);
}
END_TEST

START_TEST(test_killed_service_host_is_taken_over_safely) {
        peer *host = peer_start("--app", "killhost", "--connect", NULL);
        peer *p[4];

        ck_assert_uint_eq(peer_wait_connect(host), 1);
        for (int i = 0; i < 4; i++)
                p[i] = proc_start(TEST_LOCKER_PATH, "started", "--app", "killhost", "--file",
                                  path_in_dir("counter"), "--mode", i % 2 ? "acquire" : "sync", "--count",
                                  "300", "--hold-usec", "1000", "--verbose", NULL);

        /* Kill the host while the others hold and wait. */
        ck_assert_ptr_nonnull(peer_expect(p[0], "leave", PEER_TIMEOUT_MS));
        usleep(100 * 1000);
        peer_kill(host, SIGKILL);

        for (int i = 0; i < 4; i++)
                expect_done(p[i], 300, true);
        ck_assert_int_eq(read_counter(path_in_dir("counter")), 1200);
}
END_TEST

START_TEST(test_late_release_does_not_release_the_next_holder) {
        peer *host = peer_start("--app", "late", "--connect", NULL);
        ck_assert_uint_eq(peer_wait_connect(host), 1);
        uint64_t ta, tb, tc;

        /* a's lease is 200 ms but its section takes 600 ms; b's takes 800 ms, within its lease
         * of 5 s. The times scale with the waits, so that b, however slow to start, holds the
         * lock when a releases it late. */
        char a_lease[32], a_hold[32], b_lease[32], b_hold[32];
        snprintf(a_lease, sizeof(a_lease), "%" PRIu64, scaled_usec(200 * 1000));
        snprintf(a_hold, sizeof(a_hold), "%" PRIu64, scaled_usec(600 * 1000));
        snprintf(b_lease, sizeof(b_lease), "%" PRIu64, scaled_usec(5000 * 1000));
        snprintf(b_hold, sizeof(b_hold), "%" PRIu64, scaled_usec(800 * 1000));
        peer *a = proc_start(TEST_LOCKER_PATH, "started", "--app", "late", "--file", path_in_dir("counter"),
                             "--mode", "acquire", "--count", "1", "--lease-usec", a_lease, "--hold-usec", a_hold,
                             "--verbose", NULL);
        expect_stamp(a, "enter", &ta);
        peer *b = proc_start(TEST_LOCKER_PATH, "started", "--app", "late", "--file", path_in_dir("counter"),
                             "--mode", "acquire", "--count", "1", "--lease-usec", b_lease, "--hold-usec", b_hold,
                             "--verbose", NULL);
        usleep(scaled_usec(50 * 1000));
        peer *c = proc_start(TEST_LOCKER_PATH, "started", "--app", "late", "--file", path_in_dir("counter"),
                             "--mode", "acquire", "--count", "1", "--verbose", NULL);

        uint64_t b_in = expect_stamp(b, "enter", &tb);
        /* a is told its release came too late. */
        const char *line = peer_expect(a, "error", PEER_TIMEOUT_MS);
        ck_assert_ptr_nonnull(line);
        ck_assert_int_eq(atoi(line + strlen("error ")), -ETIME);
        ck_assert_int_eq(peer_wait(a, PEER_TIMEOUT_MS), 1);
        uint64_t b_out = expect_stamp(b, "leave", NULL);
        uint64_t c_in = expect_stamp(c, "enter", &tc);

        ck_assert_uint_gt(tb, ta);
        ck_assert_uint_gt(tc, tb);
        /* c got the lock only when b left, not when a released late (while b was inside). */
        ck_assert_msg(c_in >= b_out, "c entered %" PRIu64 " us before b left", b_out - c_in);
        ck_assert_uint_gt(b_out - b_in, scaled_usec(700 * 1000));
}
END_TEST

START_TEST(test_lease_expiry_is_reported_to_the_holder) {
        peer *a = proc_start(TEST_LOCKER_PATH, "started", "--app", "expiry", "--file", path_in_dir("counter"),
                             "--mode", "sync", "--count", "1", "--lease-usec", "100000", "--hold-usec",
                             "400000", NULL);
        const char *line = peer_expect(a, "error", PEER_TIMEOUT_MS);

        ck_assert_ptr_nonnull(line);
        ck_assert_int_eq(atoi(line + strlen("error ")), -ETIME);
        ck_assert_int_eq(peer_wait(a, PEER_TIMEOUT_MS), 1);
}
END_TEST

START_TEST(test_waiter_outlasts_the_default_method_call_timeout) {
        sd_bus_error error = SD_BUS_ERROR_NULL;
        sd_bus *bus = NULL;
        uint64_t t0, t1;
        int r;

        /* Shrink sd-bus's default method call timeout (25 s) to 1 s for this process and the
         * waiter: a client that relied on it would give up after 1 s. */
        ck_assert_int_eq(setenv("SYSTEMD_BUS_TIMEOUT", "1s", 1), 0);

        /* The holder keeps the lock until the test lets it go (its lease, 60 s, lasts longer). */
        peer *holder = proc_start(TEST_LOCKER_PATH, "started", "--app", "longwait", "--file",
                                  path_in_dir("counter"), "--count", "1", "--lease-usec", "60000000", "--pause-file",
                                  path_in_dir("go"), NULL);
        ck_assert_ptr_nonnull(peer_expect(holder, "holding", PEER_TIMEOUT_MS));

        /* A plain call with the default timeout does give up. */
        bus = lock_client("longwait");
        t0 = now_usec();
        r = sd_bus_call_method(bus, "org.ipchannel.longwait.Locks", "/org/ipchannel/longwait/Locks",
                               "org.ipchannel.LockService1", "Acquire", &error, NULL, "st", "counter",
                               (uint64_t) 0);
        t1 = now_usec();
        ck_assert_int_eq(r, -ETIMEDOUT);
        ck_assert_uint_lt(t1 - t0, scaled_usec(2500 * 1000));
        sd_bus_error_free(&error);
        sd_bus_flush_close_unref(bus);

        /* The library's waiter waits as long as it takes: here 2 s past the moment it queued,
         * twice its method call timeout, however long it took to start. */
        peer *waiter = locker("longwait", "sync", "1", "--verbose", NULL);
        wait_waiters("longwait", "counter", 1);
        t0 = now_usec();
        usleep(2 * 1000 * 1000);
        close(open(path_in_dir("go"), O_CREAT | O_WRONLY | O_CLOEXEC, 0644));
        uint64_t in = expect_stamp(waiter, "enter", NULL);
        ck_assert_uint_gt(in - t0, 2 * 1000 * 1000);
        expect_done(waiter, 1, true);
        expect_done(holder, 1, true);
}
END_TEST

static uint64_t reply_token(sd_bus_message *reply) {
        uint64_t token = 0;

        ck_assert_int_ge(sd_bus_message_read(reply, "t", &token), 0);
        sd_bus_message_unref(reply);
        return token;
}

static int on_async_acquire(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        uint64_t *token = userdata;

        if (sd_bus_message_is_method_error(m, NULL))
                *token = UINT64_MAX;
        else
                ck_assert_int_ge(sd_bus_message_read(m, "t", token), 0);
        return 0;
}

START_TEST(test_service_answers_with_named_errors) {
        peer *host = peer_start("--app", "raw", "--connect", NULL);
        sd_bus_error error = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        uint64_t t1, t2 = 0, t3 = 0;

        ck_assert_uint_eq(peer_wait_connect(host), 1);
        /* Queued owners must report to a recovering host: queue only once it serves. */
        wait_service_ready("raw");
        sd_bus *r1 = lock_client("raw"), *r2 = lock_client("raw"), *r3 = lock_client("raw");

        /* TryAcquire: granted when free, WouldBlock when not. */
        ck_assert_int_ge(call_lock(r1, "raw", "TryAcquire", &error, &reply, "st", "x", (uint64_t) 0), 0);
        t1 = reply_token(reply);
        ck_assert_uint_gt(t1, 0);
        ck_assert_int_lt(call_lock(r2, "raw", "TryAcquire", &error, NULL, "st", "x", (uint64_t) 0), 0);
        ck_assert_str_eq(error.name, "org.ipchannel.Error.WouldBlock");
        sd_bus_error_free(&error);

        /* Only the holder releases, and only with the current token. */
        ck_assert_int_lt(call_lock(r2, "raw", "Release", &error, NULL, "st", "x", t1), 0);
        ck_assert_str_eq(error.name, "org.ipchannel.Error.NotHolder");
        sd_bus_error_free(&error);
        ck_assert_int_lt(call_lock(r1, "raw", "Release", &error, NULL, "st", "x", t1 - 1), 0);
        ck_assert_str_eq(error.name, "org.ipchannel.Error.StaleToken");
        sd_bus_error_free(&error);
        ck_assert_int_lt(call_lock(r1, "raw", "Release", &error, NULL, "st", "nosuch", t1), 0);
        ck_assert_str_eq(error.name, "org.ipchannel.Error.NoSuchLock");
        sd_bus_error_free(&error);
        ck_assert_int_lt(call_lock(r1, "raw", "Acquire", &error, NULL, "st", "x", (uint64_t) 0), 0);
        ck_assert_str_eq(error.name, "org.ipchannel.Error.AlreadyHeld");
        sd_bus_error_free(&error);
        ck_assert_int_lt(call_lock(r1, "raw", "Cancel", &error, NULL, "s", "x"), 0);
        ck_assert_str_eq(error.name, "org.ipchannel.Error.NotWaiting");
        sd_bus_error_free(&error);

        /* r2 and then r3 wait; r2 goes away, so r3 is next. */
        ck_assert_int_ge(sd_bus_call_method_async(r2, NULL, "org.ipchannel.raw.Locks", "/org/ipchannel/raw/Locks",
                                                  "org.ipchannel.LockService1", "Acquire", on_async_acquire, &t2,
                                                  "st", "x", (uint64_t) 0),
                         0);
        ck_assert_int_ge(sd_bus_flush(r2), 0);
        wait_waiters("raw", "x", 1);
        ck_assert_int_ge(sd_bus_call_method_async(r3, NULL, "org.ipchannel.raw.Locks", "/org/ipchannel/raw/Locks",
                                                  "org.ipchannel.LockService1", "Acquire", on_async_acquire, &t3,
                                                  "st", "x", (uint64_t) 0),
                         0);
        ck_assert_int_ge(sd_bus_flush(r3), 0);
        wait_waiters("raw", "x", 2);
        sd_bus_flush_close_unref(r2);
        wait_waiters("raw", "x", 1);

        ck_assert_int_ge(call_lock(r1, "raw", "Release", &error, NULL, "st", "x", t1), 0);
        for (int k = 0; k < scaled_ms(500) && t3 == 0; k++) {
                ck_assert_int_ge(sd_bus_wait(r3, 10 * 1000), 0);
                while (sd_bus_process(r3, NULL) > 0)
                        ;
        }
        ck_assert_uint_gt(t3, t1);
        ck_assert_uint_ne(t3, UINT64_MAX);

        /* A waiter that cancels gets Cancelled on its Acquire. */
        sd_bus *r4 = lock_client("raw");
        uint64_t t4 = 0;
        ck_assert_int_ge(sd_bus_call_method_async(r4, NULL, "org.ipchannel.raw.Locks", "/org/ipchannel/raw/Locks",
                                                  "org.ipchannel.LockService1", "Acquire", on_async_acquire, &t4,
                                                  "st", "x", (uint64_t) 0),
                         0);
        ck_assert_int_ge(sd_bus_flush(r4), 0);
        wait_waiters("raw", "x", 1);
        ck_assert_int_ge(call_lock(r4, "raw", "Cancel", &error, NULL, "s", "x"), 0);
        for (int k = 0; k < scaled_ms(500) && t4 == 0; k++) {
                ck_assert_int_ge(sd_bus_wait(r4, 10 * 1000), 0);
                while (sd_bus_process(r4, NULL) > 0)
                        ;
        }
        ck_assert_uint_eq(t4, UINT64_MAX);
        ck_assert_int_eq(n_waiters("raw", "x"), 0);

        /* A connection outside the name's queue may not hold locks: a new host would not know
         * to wait for it. */
        sd_bus *outsider = raw_bus();
        ck_assert_int_lt(call_lock(outsider, "raw", "Acquire", &error, NULL, "st", "y", (uint64_t) 0), 0);
        ck_assert_str_eq(error.name, "org.ipchannel.Error.NotQueued");
        sd_bus_error_free(&error);
        ck_assert_int_lt(call_lock(outsider, "raw", "Reassert", &error, NULL, "a(stt)", 1, "y", (uint64_t) 99,
                                   (uint64_t) 0),
                         0);
        ck_assert_str_eq(error.name, "org.ipchannel.Error.NotQueued");
        sd_bus_error_free(&error);
        sd_bus_flush_close_unref(outsider);

        sd_bus_flush_close_unref(r1);
        sd_bus_flush_close_unref(r3);
        sd_bus_flush_close_unref(r4);
}
END_TEST

START_TEST(test_lockd_serves_only_the_allowed_uid) {
        sd_bus_error error = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;

        /* Nobody here runs as uid 12345: even root is turned away. */
        peer *other = proc_start(LOCKD_PATH, "READY", "--app", "uidother", "--user", "--allow-uid", "12345",
                                 "--print-ready", NULL);
        sd_bus *c1 = lock_client("uidother");
        ck_assert_int_lt(call_lock(c1, "uidother", "TryAcquire", &error, NULL, "st", "x", (uint64_t) 0), 0);
        ck_assert_str_eq(error.name, "org.ipchannel.Error.AccessDenied");
        sd_bus_error_free(&error);

        /* Restricted to our own uid, the same call is served. */
        char uid[32];
        snprintf(uid, sizeof(uid), "%u", (unsigned) geteuid());
        peer *own = proc_start(LOCKD_PATH, "READY", "--app", "uidown", "--user", "--allow-uid", uid,
                               "--print-ready", NULL);
        sd_bus *c2 = lock_client("uidown");
        ck_assert_int_ge(call_lock(c2, "uidown", "TryAcquire", &error, &reply, "st", "x", (uint64_t) 0), 0);
        ck_assert_uint_gt(reply_token(reply), 0);

        sd_bus_flush_close_unref(c1);
        sd_bus_flush_close_unref(c2);
        peer_kill(other, SIGTERM);
        peer_kill(own, SIGTERM);
        ck_assert_int_eq(peer_wait(other, PEER_TIMEOUT_MS), 0);
        ck_assert_int_eq(peer_wait(own, PEER_TIMEOUT_MS), 0);
}
END_TEST

START_TEST(test_takeover_counts_reports_of_other_uids) {
        sd_bus_error error = SD_BUS_ERROR_NULL;

        /* A locker (our uid) holds "counter" from the service it hosts; a daemon that serves
         * only uid 12345 takes over. The locker's report must count, or the daemon recovers
         * for ever; its hold stays good, and only new locks are refused to our uid. */
        peer *a = proc_start(TEST_LOCKER_PATH, "started", "--app", "uidtake", "--file",
                             path_in_dir("counter"), "--count", "1", "--lease-usec", "30000000", "--pause-file",
                             path_in_dir("go"), NULL);
        ck_assert_ptr_nonnull(peer_expect(a, "holding", PEER_TIMEOUT_MS));
        peer *lockd = proc_start(LOCKD_PATH, "READY", "--app", "uidtake", "--user", "--allow-uid", "12345",
                                 "--print-ready", NULL);
        wait_service_ready("uidtake");
        ck_assert_int_eq(n_waiters("uidtake", "counter"), 0);  /* listed: still held */

        sd_bus *c = lock_client("uidtake");
        ck_assert_int_lt(call_lock(c, "uidtake", "TryAcquire", &error, NULL, "st", "other", (uint64_t) 0), 0);
        ck_assert_str_eq(error.name, "org.ipchannel.Error.AccessDenied");
        sd_bus_error_free(&error);

        /* Its release is taken: the lock is free again. */
        close(open(path_in_dir("go"), O_CREAT | O_WRONLY | O_CLOEXEC, 0644));
        expect_done(a, 1, true);
        for (int k = 0; k < scaled_ms(500) && n_waiters("uidtake", "counter") != -1; k++)
                usleep(10 * 1000);
        ck_assert_int_eq(n_waiters("uidtake", "counter"), -1);

        sd_bus_flush_close_unref(c);
        peer_kill(lockd, SIGTERM);
        ck_assert_int_eq(peer_wait(lockd, PEER_TIMEOUT_MS), 0);
}
END_TEST

START_TEST(test_lockd_limits_are_settable) {
        sd_bus_error error = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        peer *lockd = proc_start(LOCKD_PATH, "READY", "--app", "limits", "--user", "--max-locks-per-connection",
                                 "3", "--max-waiters-per-lock", "1", "--print-ready", NULL);
        sd_bus *c = lock_client("limits"), *w1 = lock_client("limits"), *w2 = lock_client("limits");
        const char *names[] = { "a", "b", "c" };
        uint64_t t1 = 0;

        for (size_t i = 0; i < 3; i++) {
                ck_assert_int_ge(call_lock(c, "limits", "TryAcquire", &error, &reply, "st", names[i], (uint64_t) 0),
                                 0);
                reply_token(reply);
        }
        ck_assert_int_lt(call_lock(c, "limits", "TryAcquire", &error, NULL, "st", "d", (uint64_t) 0), 0);
        ck_assert_str_eq(error.name, "org.ipchannel.Error.LimitsExceeded");
        ck_assert_msg(strstr(error.message, "one connection"), "wrong limit named: %s", error.message);
        sd_bus_error_free(&error);

        /* One waiter for "a" is the most: a second one is told that limit, not the other. */
        ck_assert_int_ge(sd_bus_call_method_async(w1, NULL, "org.ipchannel.limits.Locks",
                                                  "/org/ipchannel/limits/Locks", "org.ipchannel.LockService1",
                                                  "Acquire", on_async_acquire, &t1, "st", "a", (uint64_t) 0),
                         0);
        ck_assert_int_ge(sd_bus_flush(w1), 0);
        wait_waiters("limits", "a", 1);
        ck_assert_int_lt(call_lock(w2, "limits", "Acquire", &error, NULL, "st", "a", (uint64_t) 0), 0);
        ck_assert_str_eq(error.name, "org.ipchannel.Error.LimitsExceeded");
        ck_assert_msg(strstr(error.message, "Too many waiters for \"a\""), "wrong limit named: %s",
                      error.message);
        sd_bus_error_free(&error);

        sd_bus_flush_close_unref(w1);
        sd_bus_flush_close_unref(w2);
        sd_bus_flush_close_unref(c);
        peer_kill(lockd, SIGTERM);
        ck_assert_int_eq(peer_wait(lockd, PEER_TIMEOUT_MS), 0);
}
END_TEST

START_TEST(test_second_lockd_in_the_queue_does_not_stall_a_takeover) {
        peer *lockd1 = proc_start(LOCKD_PATH, "READY", "--app", "twolockd", "--user", "--print-ready", NULL);
        peer *p = peer_start("--app", "twolockd", "--connect", NULL);
        ck_assert_uint_eq(peer_wait_connect(p), 1);
        /* lockd2 queues too (behind lockd1 on both brokers, and behind or before the peer). */
        peer *lockd2 = proc_start(LOCKD_PATH, "QUEUED", "--app", "twolockd", "--user", "--print-ready", NULL);
        usleep(200 * 1000);

        peer_kill(lockd1, SIGTERM);
        ck_assert_int_eq(peer_wait(lockd1, PEER_TIMEOUT_MS), 0);
        /* Whoever serves now (the peer's agent or lockd2) leaves recovery and grants. */
        wait_service_ready("twolockd");
        peer_cmd(p, "acquire-thread x 5000000");
        const char *line = peer_expect(p, "result acquire-thread", PEER_TIMEOUT_MS);
        ck_assert_ptr_nonnull(line);
        ck_assert_int_eq(atoi(line + strlen("result acquire-thread ")), 0);
        peer_cmd(p, "release");
        ck_assert_str_eq(peer_expect(p, "result release", PEER_TIMEOUT_MS), "result release 0");
        peer_kill(lockd2, SIGTERM);
        ck_assert_int_eq(peer_wait(lockd2, PEER_TIMEOUT_MS), 0);
}
END_TEST

START_TEST(test_grant_without_lease_survives_a_takeover) {
        peer *host = peer_start("--app", "endless", "--connect", NULL);
        ck_assert_uint_eq(peer_wait_connect(host), 1);

        /* UINT64_MAX: a lease no clock reaches; it must not wrap into a 1 us one. */
        peer *a = proc_start(TEST_LOCKER_PATH, "started", "--app", "endless", "--file", path_in_dir("counter-a"),
                             "--count", "1", "--lease-usec", "18446744073709551615", "--pause-file",
                             path_in_dir("go"), NULL);
        ck_assert_ptr_nonnull(peer_expect(a, "holding", PEER_TIMEOUT_MS));
        peer *b = locker("endless", "sync", "1", "--verbose", NULL);
        wait_waiters("endless", "counter", 1);

        peer_kill(host, SIGKILL);
        /* The new host knows a holds the lock: b keeps waiting. */
        ck_assert(peer_quiet(b, "enter", 1000));
        uint64_t released = now_usec();
        close(open(path_in_dir("go"), O_CREAT | O_WRONLY | O_CLOEXEC, 0644));
        uint64_t in = expect_stamp(b, "enter", NULL);
        ck_assert_uint_ge(in, released);
        expect_done(a, 1, true);
        expect_done(b, 1, true);
}
END_TEST

START_TEST(test_blocking_acquire_from_loop_threads_and_workers) {
        peer *a = peer_start("--app", "blocking", "--connect", NULL);
        const char *line;

        ck_assert_uint_eq(peer_wait_connect(a), 1);
        peer *b = peer_start("--app", "blocking", "--connect", NULL);
        ck_assert_uint_eq(peer_wait_connect(b), 2);

        /* From a command handler, a callback of the channel's own loop: the loop cannot nest. */
        peer_cmd(a, "acquire x 1000000");
        line = peer_expect(a, "result acquire", PEER_TIMEOUT_MS);
        ck_assert_ptr_nonnull(line);
        ck_assert_int_eq(atoi(line + strlen("result acquire ")), -EBUSY);

        /* From a worker thread it works, while the loop keeps running. */
        peer_cmd(a, "acquire-thread x 5000000");
        line = peer_expect(a, "result acquire-thread", PEER_TIMEOUT_MS);
        ck_assert_ptr_nonnull(line);
        ck_assert_int_eq(atoi(line + strlen("result acquire-thread ")), 0);

        /* Held by a: b's worker times out, and its wait is withdrawn from the service. */
        peer_cmd(b, "acquire-thread x 300000");
        line = peer_expect(b, "result acquire-thread", PEER_TIMEOUT_MS);
        ck_assert_ptr_nonnull(line);
        ck_assert_int_eq(atoi(line + strlen("result acquire-thread ")), -ETIMEDOUT);
        wait_waiters("blocking", "x", 0);

        peer_cmd(a, "release");
        ck_assert_str_eq(peer_expect(a, "result release", PEER_TIMEOUT_MS), "result release 0");
        peer_cmd(b, "acquire-thread x 5000000");
        line = peer_expect(b, "result acquire-thread", PEER_TIMEOUT_MS);
        ck_assert_int_eq(atoi(line + strlen("result acquire-thread ")), 0);
}
END_TEST

START_TEST(test_grants_follow_acquire_arrival_order) {
        peer *host = peer_start("--app", "fifo", "--connect", NULL);
        peer *w[5];
        sd_bus *bus = NULL;
        uint64_t last = 0;

        ck_assert_uint_eq(peer_wait_connect(host), 1);
        ck_assert_int_ge(sd_bus_open_user(&bus), 0);

        /* It holds the lock until all five wait (its lease, 60 s, lasts longer). */
        peer *holder = proc_start(TEST_LOCKER_PATH, "started", "--app", "fifo", "--file", path_in_dir("counter"),
                                  "--count", "1", "--lease-usec", "60000000", "--pause-file", path_in_dir("go"),
                                  NULL);
        ck_assert_ptr_nonnull(peer_expect(holder, "holding", PEER_TIMEOUT_MS));

        for (int i = 0; i < 5; i++) {
                w[i] = locker("fifo", i % 2 ? "acquire" : "sync", "1", "--verbose", NULL);
                /* The next one starts only when this one's Acquire is queued at the service. */
                int n = -1;
                for (int k = 0; k < scaled_ms(500) && (n = n_waiters("fifo", "counter")) != i + 1; k++)
                        usleep(10 * 1000);
                ck_assert_int_eq(n, i + 1);
        }

        close(open(path_in_dir("go"), O_CREAT | O_WRONLY | O_CLOEXEC, 0644));
        for (int i = 0; i < 5; i++) {
                uint64_t token, t = expect_stamp(w[i], "enter", &token);
                ck_assert_msg(t >= last, "waiter %d was granted out of order", i);
                last = t;
        }
        sd_bus_unref(bus);
}
END_TEST

START_TEST(test_peers_use_lockd_and_take_over_when_it_stops) {
        /* A notify socket, as systemd gives a Type=notify service. */
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int notify = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        char env_notify[sizeof(sa.sun_path) + 32], msg[512];
        ssize_t n;

        ck_assert_int_ge(notify, 0);
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path_in_dir("notify"));
        ck_assert_int_eq(bind(notify, (struct sockaddr *) &sa, sizeof(sa)), 0);
        snprintf(env_notify, sizeof(env_notify), "NOTIFY_SOCKET=%s", sa.sun_path);
        const char *env[] = { env_notify, NULL };

        peer *lockd = proc_start_env(LOCKD_PATH, "READY", env, "--app", "withlockd", "--user", "--print-ready",
                                     NULL);
        sd_bus *bus = NULL;

        /* It told systemd it is ready, once it owned the name (checked just below). */
        n = recv(notify, msg, sizeof(msg) - 1, 0);
        ck_assert_int_gt(n, 0);
        msg[n] = '\0';
        ck_assert_msg(strstr(msg, "READY=1"), "lockd sent \"%s\"", msg);
        close(notify);
        const char *owner = NULL;
        char *lockd_name = NULL;
        peer *p[3];

        ck_assert_int_ge(sd_bus_open_user(&bus), 0);
        {
                sd_bus_creds *creds = NULL;
                ck_assert_int_ge(sd_bus_get_name_creds(bus, "org.ipchannel.withlockd.Locks",
                                                       SD_BUS_CREDS_UNIQUE_NAME | SD_BUS_CREDS_PID, &creds),
                                 0);
                ck_assert_int_ge(sd_bus_creds_get_unique_name(creds, &owner), 0);
                lockd_name = strdup(owner);
                pid_t pid = 0;
                ck_assert_int_ge(sd_bus_creds_get_pid(creds, &pid), 0);
                ck_assert_int_eq(pid, lockd->pid);
                sd_bus_creds_unref(creds);
        }

        for (int i = 0; i < 3; i++)
                p[i] = proc_start(TEST_LOCKER_PATH, "started", "--app", "withlockd", "--file",
                                  path_in_dir("counter"), "--mode", "sync", "--count", "400", "--hold-usec",
                                  "500", "--verbose", NULL);
        ck_assert_ptr_nonnull(peer_expect(p[0], "leave", PEER_TIMEOUT_MS));

        /* The peers use lockd: it still owns the name while they run. */
        {
                sd_bus_creds *creds = NULL;
                ck_assert_int_ge(sd_bus_get_name_creds(bus, "org.ipchannel.withlockd.Locks",
                                                       SD_BUS_CREDS_UNIQUE_NAME, &creds),
                                 0);
                ck_assert_int_ge(sd_bus_creds_get_unique_name(creds, &owner), 0);
                ck_assert_str_eq(owner, lockd_name);
                sd_bus_creds_unref(creds);
        }

        /* Stop it cleanly, as systemd would: a peer takes over, with no overlap. */
        peer_kill(lockd, SIGTERM);
        ck_assert_int_eq(peer_wait(lockd, PEER_TIMEOUT_MS), 0);
        for (int i = 0; i < 3; i++)
                expect_done(p[i], 400, true);
        ck_assert_int_eq(read_counter(path_in_dir("counter")), 1200);
        free(lockd_name);
        sd_bus_unref(bus);
}
END_TEST

int main(void) {
        Suite *s = suite_create("locks");
        TCase *tc;
        SRunner *sr;
        int failed;

        tc = tcase_create("mutual exclusion");
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 180);
        tcase_add_test(tc, test_counter_is_exact_under_synchronize);
        tcase_add_test(tc, test_counter_is_exact_under_lock_acquire);
        tcase_add_test(tc, test_counter_loses_updates_without_the_lock);
        tcase_add_test(tc, test_single_process_hosts_its_own_service);
        suite_add_tcase(s, tc);

        tc = tcase_create("failures");
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 180);
        tcase_add_test(tc, test_killed_holder_passes_the_lock_at_once);
        tcase_add_test(tc, test_killed_service_host_is_taken_over_safely);
        tcase_add_test(tc, test_late_release_does_not_release_the_next_holder);
        tcase_add_test(tc, test_lease_expiry_is_reported_to_the_holder);
        tcase_add_test(tc, test_waiter_outlasts_the_default_method_call_timeout);
        suite_add_tcase(s, tc);

        tc = tcase_create("order and hosts");
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 180);
        tcase_add_test(tc, test_grants_follow_acquire_arrival_order);
        tcase_add_test(tc, test_peers_use_lockd_and_take_over_when_it_stops);
        tcase_add_test(tc, test_service_answers_with_named_errors);
        tcase_add_test(tc, test_second_lockd_in_the_queue_does_not_stall_a_takeover);
        tcase_add_test(tc, test_lockd_serves_only_the_allowed_uid);
        tcase_add_test(tc, test_takeover_counts_reports_of_other_uids);
        tcase_add_test(tc, test_lockd_limits_are_settable);
        tcase_add_test(tc, test_grant_without_lease_survives_a_takeover);
        tcase_add_test(tc, test_blocking_acquire_from_loop_threads_and_workers);
        suite_add_tcase(s, tc);

        sr = srunner_create(s);
        srunner_run_all(sr, CK_VERBOSE);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

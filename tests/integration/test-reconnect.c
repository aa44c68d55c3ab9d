/* SPDX-License-Identifier: MIT */
/* Integration test: peers survive their bus being killed and started again. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

#include <check.h>
#include <glib.h>

#include "testutil.h"

static void teardown(void) {
        peers_cleanup();
}

/* Asks tests/harness/with-bus to kill the broker and start it again on the same address;
 * returns the number of the restart (tests run in forked processes: count the harness's
 * files, not calls). */
static unsigned restart_bus(void) {
        const char *pid = getenv("IPCHANNEL_TEST_HARNESS_PID");
        const char *dir = getenv("IPCHANNEL_TEST_HARNESS_DIR");
        char path[4096];
        unsigned n = 1;

        ck_assert_msg(pid && pid[0] && dir, "run under tests/harness/with-bus: it restarts the bus");
        for (;; n++) {
                snprintf(path, sizeof(path), "%s/restarted.%u", dir, n);
                if (access(path, F_OK) < 0)
                        break;
        }
        ck_assert_int_eq(kill((pid_t) atoi(pid), SIGUSR1), 0);
        return n;
}

static void wait_bus_restarted(unsigned n) {
        const char *dir = getenv("IPCHANNEL_TEST_HARNESS_DIR");
        char path[4096];

        ck_assert_ptr_nonnull(dir);
        snprintf(path, sizeof(path), "%s/restarted.%u", dir, n);
        for (int i = 0; i < 3000 && access(path, F_OK) < 0; i++)
                usleep(10 * 1000);
        ck_assert_msg(access(path, F_OK) == 0, "the harness did not restart the bus");
}

static void survive_restart(const char *app, const char *loop) {
        peer *a = peer_start("--app", app, "--loop", loop, "--listen", "message", "--connect", NULL);
        ck_assert_uint_eq(peer_wait_connect(a), 1);
        peer *b = peer_start("--app", app, "--loop", loop, "--listen", "message", "--connect", NULL);
        ck_assert_uint_eq(peer_wait_connect(b), 2);
        peer *c = peer_start("--app", app, "--loop", loop, "--connect", NULL);
        ck_assert_uint_eq(peer_wait_connect(c), 3);

        unsigned n = restart_bus();
        ck_assert_str_eq(peer_expect(a, "disconnect", PEER_TIMEOUT_MS), "disconnect");
        ck_assert_str_eq(peer_expect(b, "disconnect", PEER_TIMEOUT_MS), "disconnect");
        ck_assert_str_eq(peer_expect(c, "disconnect", PEER_TIMEOUT_MS), "disconnect");
        peer_cmd(b, "state");
        ck_assert_str_eq(peer_expect(b, "state", PEER_TIMEOUT_MS), "state 0 0");

        /* Sent while the bus is away: queued, delivered once everyone is back. */
        peer_cmd(b, "send 1 'sent meanwhile'");
        ck_assert_str_eq(peer_expect(b, "result send", PEER_TIMEOUT_MS), "result send 0");
        peer_cmd(c, "send all 'broadcast meanwhile'");
        ck_assert_str_eq(peer_expect(c, "result send", PEER_TIMEOUT_MS), "result send 0");

        wait_bus_restarted(n);
        /* Each takes its own id back, whatever order they come back in. */
        ck_assert_uint_eq(peer_wait_connect(a), 1);
        ck_assert_uint_eq(peer_wait_connect(b), 2);
        ck_assert_uint_eq(peer_wait_connect(c), 3);
        ck_assert_str_eq(peer_expect(a, "recv 2", PEER_TIMEOUT_MS), "recv 2 message 'sent meanwhile'");

        /* And the channel works as before. */
        peer_cmd(a, "send 2 'welcome back'");
        ck_assert_str_eq(peer_expect(b, "recv 1", PEER_TIMEOUT_MS), "recv 1 message 'welcome back'");
}

START_TEST(test_peers_reconnect_after_bus_restart_on_sd_event) {
        survive_restart("reconnectsd", "sd-event");
}
END_TEST

START_TEST(test_peers_reconnect_after_bus_restart_on_glib) {
        survive_restart("reconnectglib", "glib");
}
END_TEST

/* What changed while the bus was away is told at the reconnect: a peer that died meanwhile
 * left, and one that came back on a new connection left and joined again (whichever of the
 * two reconnected first). */
static void peer_changes_told(const char *app, const char *loop) {
        peer *a = peer_start("--app", app, "--loop", loop, "--listen", "peer-join", "--listen", "peer-leave",
                             "--connect", NULL);
        ck_assert_uint_eq(peer_wait_connect(a), 1);
        peer *b = peer_start("--app", app, "--loop", loop, "--connect", NULL);
        ck_assert_uint_eq(peer_wait_connect(b), 2);
        peer *c = peer_start("--app", app, "--loop", loop, "--connect", NULL);
        ck_assert_uint_eq(peer_wait_connect(c), 3);
        ck_assert_str_eq(peer_expect(a, "peer-join", PEER_TIMEOUT_MS), "peer-join 2");
        ck_assert_str_eq(peer_expect(a, "peer-join", PEER_TIMEOUT_MS), "peer-join 3");

        /* b is stopped before the bus goes, so that it cannot come back however fast the bus
         * does, and dies while the bus is away. */
        peer_kill(b, SIGSTOP);
        unsigned n = restart_bus();
        ck_assert_str_eq(peer_expect(a, "disconnect", PEER_TIMEOUT_MS), "disconnect");
        peer_kill(b, SIGKILL);
        wait_bus_restarted(n);
        ck_assert_uint_eq(peer_wait_connect(a), 1);
        ck_assert_uint_eq(peer_wait_connect(c), 3);

        /* Every peer-join/peer-leave a tells, until it has been quiet for a while. */
        g_autoptr(GString) told = g_string_new(NULL);
        const char *line;
        while ((line = peer_expect(a, "peer-", 1000))) {
                if (told->len > 0)
                        g_string_append(told, ", ");
                g_string_append(told, line);
        }
        /* 2 died; 3 is on a new connection: if it came back first, a's reconnect tells it left
         * and joined; if last, the reconnect tells it left, and its coming is seen live. */
        ck_assert_str_eq(told->str, "peer-leave 2, peer-leave 3, peer-join 3");
}

START_TEST(test_peer_changes_during_an_outage_are_told_on_sd_event) {
        peer_changes_told("outagesd", "sd-event");
}
END_TEST

START_TEST(test_peer_changes_during_an_outage_are_told_on_glib) {
        peer_changes_told("outageglib", "glib");
}
END_TEST

/* The bus goes away in the middle of a turn of a peer's loop, with a batch pending: what the
 * sends that returned 0 carried arrives after the reconnect, in order, and a send made after
 * the bus went is queued for it (it returned -ECONNRESET, and the batch was lost unreported). */
START_TEST(test_batch_pending_when_the_bus_breaks_mid_turn_is_kept) {
        peer *a = peer_start("--app", "midturn", "--listen", "message", "--connect", NULL);
        ck_assert_uint_eq(peer_wait_connect(a), 1);
        peer *b = peer_start("--app", "midturn", "--listen", "message", "--connect", NULL);
        ck_assert_uint_eq(peer_wait_connect(b), 2);
        peer *c = peer_start("--app", "midturn", "--connect", NULL);
        ck_assert_uint_eq(peer_wait_connect(c), 3);

        /* One turn of c's loop: "a0" goes at once, "a1" and "a2" wait in a batch for peer 1;
         * the loop is busy while the broker is killed; "b0", for another peer, must flush the
         * batch first, into the broken connection. */
        peer_cmd(c, "send 1 'a0'\nsend 1 'a1'\nsend 1 'a2'\nsleep 1500\nsend 2 'b0'");
        for (int i = 0; i < 3; i++)
                ck_assert_str_eq(peer_expect(c, "result send", PEER_TIMEOUT_MS), "result send 0");
        ck_assert_str_eq(peer_expect(a, "recv", PEER_TIMEOUT_MS), "recv 3 message 'a0'");
        unsigned n = restart_bus();
        ck_assert_str_eq(peer_expect(c, "result send", PEER_TIMEOUT_MS), "result send 0");
        wait_bus_restarted(n);
        ck_assert_uint_eq(peer_wait_connect(a), 1);
        ck_assert_uint_eq(peer_wait_connect(b), 2);
        ck_assert_uint_eq(peer_wait_connect(c), 3);

        ck_assert_str_eq(peer_expect(a, "recv", PEER_TIMEOUT_MS), "recv 3 message 'a1'");
        ck_assert_str_eq(peer_expect(a, "recv", PEER_TIMEOUT_MS), "recv 3 message 'a2'");
        ck_assert_str_eq(peer_expect(b, "recv", PEER_TIMEOUT_MS), "recv 3 message 'b0'");
        ck_assert(peer_quiet(c, "error", 200));
}
END_TEST

/* Holders lose their grants with the bus (the service saw their connections close); waiters
 * keep waiting across the restart and are served by the new host. */
START_TEST(test_lock_waiters_survive_bus_restart) {
        char dir[] = "/tmp/ipchannel-reconnect-XXXXXX", file[64], file_a[64], go[64];

        ck_assert_ptr_nonnull(mkdtemp(dir));
        snprintf(file, sizeof(file), "%s/counter", dir);
        snprintf(file_a, sizeof(file_a), "%s/counter-a", dir);
        snprintf(go, sizeof(go), "%s/go", dir);

        /* a stays inside its section after its grant is gone (it cannot know until it
         * releases): its own file, so that b's overlap detector sees only real overlaps. */
        peer *a = proc_start(TEST_LOCKER_PATH, "started", "--app", "reconnectlock", "--file", file_a, "--count",
                             "1", "--pause-file", go, NULL);
        ck_assert_ptr_nonnull(peer_expect(a, "holding", PEER_TIMEOUT_MS));
        peer *b = proc_start(TEST_LOCKER_PATH, "started", "--app", "reconnectlock", "--file", file, "--count",
                             "1", "--verbose", NULL);
        ck_assert(peer_quiet(b, "enter", 300));

        unsigned n = restart_bus();
        wait_bus_restarted(n);
        ck_assert_ptr_nonnull(peer_expect(b, "enter", PEER_TIMEOUT_MS));
        ck_assert_ptr_nonnull(peer_expect(b, "done 1 0", PEER_TIMEOUT_MS));
        ck_assert_int_eq(peer_wait(b, PEER_TIMEOUT_MS), 0);

        /* a learns, when it releases, that its grant was lost meanwhile. */
        close(open(go, O_CREAT | O_WRONLY | O_CLOEXEC, 0644));
        const char *line = peer_expect(a, "error", PEER_TIMEOUT_MS);
        ck_assert_ptr_nonnull(line);
        ck_assert_int_eq(atoi(line + strlen("error ")), -ETIME);
        ck_assert_int_eq(peer_wait(a, PEER_TIMEOUT_MS), 1);

        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        (void) !system(cmd);
}
END_TEST

int main(void) {
        Suite *s = suite_create("reconnect");
        TCase *tc = tcase_create("reconnect");
        SRunner *sr;
        int failed;

        tcase_add_checked_fixture(tc, NULL, teardown);
        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, test_peers_reconnect_after_bus_restart_on_sd_event);
        tcase_add_test(tc, test_peers_reconnect_after_bus_restart_on_glib);
        tcase_add_test(tc, test_peer_changes_during_an_outage_are_told_on_sd_event);
        tcase_add_test(tc, test_peer_changes_during_an_outage_are_told_on_glib);
        tcase_add_test(tc, test_lock_waiters_survive_bus_restart);
        tcase_add_test(tc, test_batch_pending_when_the_bus_breaks_mid_turn_is_kept);
        suite_add_tcase(s, tc);

        sr = srunner_create(s);
        srunner_run_all(sr, CK_VERBOSE);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

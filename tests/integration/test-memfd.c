/* SPDX-License-Identifier: MIT */
/* Integration tests of large payloads: sealed memfds from a size on, inline below it, and the
 * order of messages kept across inline, batched and memfd sends. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <glib.h>

#include "testutil.h"

#define MIB (1024u * 1024)
/* The library's default threshold (IPCHANNEL_MEMFD_THRESHOLD_DEFAULT); payloads this far from it
 * are clearly on one side. */
#define THRESHOLD (128u * 1024)

static void teardown(void) {
        peers_cleanup();
}

/* The count of member in a "members ..." line of p. */
static unsigned long members_of(peer *p, const char *member) {
        char key[64];
        const char *line, *at;

        peer_cmd(p, "members");
        line = peer_expect(p, "members ", PEER_TIMEOUT_MS);
        ck_assert_ptr_nonnull(line);
        snprintf(key, sizeof(key), " %s=", member);
        at = strstr(line, key);
        ck_assert_msg(at, "no %s in %s", member, line);
        return strtoul(at + strlen(key), NULL, 10);
}

static void expect_big(peer *p, unsigned sender, const char *event, size_t size, unsigned seed) {
        char expect[128];
        const char *line;

        snprintf(expect, sizeof(expect), "recv %u %s big ", sender, event);
        line = peer_expect(p, expect, 60 * 1000);
        ck_assert_msg(line, "no %zu-byte payload arrived", size);
        snprintf(expect, sizeof(expect), "recv %u %s big %zu %u ok", sender, event, size, seed);
        ck_assert_str_eq(line, expect);
}

/* 16 MiB and 64 MiB payloads, targeted and broadcast, arrive with every byte intact, by memfd. */
START_TEST(test_large_payloads_arrive_intact_through_send_and_broadcast) {
        static const size_t sizes[] = { 16 * MIB, 64 * MIB };
        peer *rx = peer_start("--app", "large", "--id", "1", "--listen", "big", "--connect");
        ck_assert_uint_eq(peer_wait_connect(rx), 1);
        peer *tx = peer_start("--app", "large", "--id", "2", "--connect");
        ck_assert_uint_eq(peer_wait_connect(tx), 2);

        for (size_t i = 0; i < G_N_ELEMENTS(sizes); i++) {
                peer_cmd(tx, "big 1 big %zu %zu", sizes[i], 11 + i);
                ck_assert_ptr_nonnull(peer_expect(tx, "result big 0", PEER_TIMEOUT_MS));
                expect_big(rx, 2, "big", sizes[i], (unsigned) (11 + i));
                peer_cmd(tx, "big all big %zu %zu", sizes[i], 21 + i);
                ck_assert_ptr_nonnull(peer_expect(tx, "result big 0", PEER_TIMEOUT_MS));
                expect_big(rx, 2, "big", sizes[i], (unsigned) (21 + i));
        }
        ck_assert_uint_eq(members_of(rx, "DeliverMemfd"), 2);
        ck_assert_uint_eq(members_of(rx, "BroadcastMemfd"), 2);
        ck_assert_uint_eq(members_of(rx, "Deliver"), 0);
        ck_assert_uint_eq(members_of(rx, "Broadcast"), 0);
}
END_TEST

/* Below the threshold a payload travels in the message; the threshold is the sender's to set,
 * and 0 turns memfds off. */
START_TEST(test_small_payloads_stay_inline_and_the_threshold_is_settable) {
        peer *rx = peer_start("--app", "small", "--id", "1", "--listen", "big", "--connect");
        ck_assert_uint_eq(peer_wait_connect(rx), 1);
        peer *tx = peer_start("--app", "small", "--id", "2", "--connect");
        ck_assert_uint_eq(peer_wait_connect(tx), 2);
        peer *tx_low = peer_start("--app", "small", "--id", "3", "--memfd-threshold", "5000", "--connect");
        ck_assert_uint_eq(peer_wait_connect(tx_low), 3);
        peer *tx_off = peer_start("--app", "small", "--id", "4", "--memfd-threshold", "0", "--connect");
        ck_assert_uint_eq(peer_wait_connect(tx_off), 4);

        /* Just under the default threshold: inline. */
        peer_cmd(tx, "big 1 big %u 1", THRESHOLD - 1);
        expect_big(rx, 2, "big", THRESHOLD - 1, 1);
        peer_cmd(tx, "big all big %u 2", THRESHOLD / 2);
        expect_big(rx, 2, "big", THRESHOLD / 2, 2);
        ck_assert_uint_eq(members_of(rx, "Deliver"), 1);
        ck_assert_uint_eq(members_of(rx, "Broadcast"), 1);
        ck_assert_uint_eq(members_of(rx, "DeliverMemfd"), 0);
        ck_assert_uint_eq(members_of(rx, "BroadcastMemfd"), 0);

        /* At the default threshold: memfd. */
        peer_cmd(tx, "big 1 big %u 3", THRESHOLD);
        expect_big(rx, 2, "big", THRESHOLD, 3);
        ck_assert_uint_eq(members_of(rx, "DeliverMemfd"), 1);

        /* A sender with a low threshold sends 8 KiB by memfd; one with memfds off sends 4 MiB
         * inline. */
        peer_cmd(tx_low, "big 1 big 8192 4");
        expect_big(rx, 3, "big", 8192, 4);
        ck_assert_uint_eq(members_of(rx, "DeliverMemfd"), 2);
        peer_cmd(tx_off, "big 1 big %u 5", 4 * MIB);
        expect_big(rx, 4, "big", 4 * MIB, 5);
        ck_assert_uint_eq(members_of(rx, "DeliverMemfd"), 2);
        ck_assert_uint_eq(members_of(rx, "Deliver"), 2);
}
END_TEST

/* "big-order" sends N messages, seq 0..N-1: three small ones (coalesced into a batch, as they are
 * made from the sender's loop) then a large one (memfd), eight targeted, eight broadcast, ... */
static void expect_in_order(peer *rx, unsigned sender, unsigned n, size_t size) {
        char expect[128];

        for (unsigned i = 0; i < n; i++) {
                const char *line = peer_expect(rx, "recv ", 30 * 1000);

                ck_assert_msg(line, "message %u did not arrive", i);
                if (i % 4 == 3)
                        snprintf(expect, sizeof(expect), "recv %u seq big %zu %u ok", sender, size, i & 0xff);
                else
                        snprintf(expect, sizeof(expect), "recv %u seq (uint32 %u,)", sender, i);
                ck_assert_str_eq(line, expect);
        }
}

START_TEST(test_order_is_kept_across_inline_batched_and_memfd_sends) {
        const unsigned n = 60;
        const size_t size = 3 * THRESHOLD;
        peer *rx = peer_start("--app", "order", "--id", "1", "--listen", "seq", "--connect");
        ck_assert_uint_eq(peer_wait_connect(rx), 1);
        peer *tx = peer_start("--app", "order", "--id", "2", "--connect");
        ck_assert_uint_eq(peer_wait_connect(tx), 2);

        peer_cmd(tx, "big-order 1 %u %zu", n, size);
        ck_assert_ptr_nonnull(peer_expect(tx, "result big-order 0", PEER_TIMEOUT_MS));
        expect_in_order(rx, 2, n, size);
        ck_assert_uint_eq(members_of(rx, "DeliverMemfd") + members_of(rx, "BroadcastMemfd"), n / 4);
        /* The small ones were coalesced: fewer inline messages than small sends. */
        ck_assert_uint_lt(members_of(rx, "Deliver") + members_of(rx, "DeliverBatch") +
                                  members_of(rx, "Broadcast") + members_of(rx, "BroadcastBatch"),
                          n - n / 4);
        ck_assert_uint_gt(members_of(rx, "DeliverBatch") + members_of(rx, "BroadcastBatch"), 0);
}
END_TEST

/* Sends queued before "connect" keep their payload and choose memfd or inline when flushed. */
START_TEST(test_sends_queued_before_connect_keep_order_and_use_memfd) {
        const unsigned n = 20;
        const size_t size = 2 * THRESHOLD;
        peer *rx = peer_start("--app", "queued", "--id", "1", "--listen", "seq", "--connect");
        ck_assert_uint_eq(peer_wait_connect(rx), 1);
        peer *tx = peer_start("--app", "queued", "--id", "2");

        peer_cmd(tx, "big-order 1 %u %zu", n, size);
        ck_assert_ptr_nonnull(peer_expect(tx, "result big-order 0", PEER_TIMEOUT_MS));
        peer_cmd(tx, "connect");
        ck_assert_uint_eq(peer_wait_connect(tx), 2);
        expect_in_order(rx, 2, n, size);
        ck_assert_uint_eq(members_of(rx, "DeliverMemfd") + members_of(rx, "BroadcastMemfd"), n / 4);
}
END_TEST

/* A payload holding unix fds, and any payload on a connection that cannot pass fds, travels
 * inline whatever its size. */
START_TEST(test_fds_in_the_payload_or_a_bus_without_fds_keep_it_inline) {
        peer *rx = peer_start("--app", "nofd", "--id", "1", "--listen", "ev", "--listen", "big", "--connect");
        ck_assert_uint_eq(peer_wait_connect(rx), 1);
        peer *tx = peer_start("--app", "nofd", "--id", "2", "--memfd-threshold", "1", "--connect");
        ck_assert_uint_eq(peer_wait_connect(tx), 2);
        peer *tx_nofd = peer_start("--app", "nofd", "--id", "3", "--no-fds", "--connect");
        ck_assert_uint_eq(peer_wait_connect(tx_nofd), 3);

        /* Threshold 1: a plain payload goes by memfd, one with an fd (test-peer's stdin) inline. */
        peer_cmd(tx, "emit 1 ev (uint32 7,)");
        ck_assert_ptr_nonnull(peer_expect(rx, "recv 2 ev (uint32 7,)", PEER_TIMEOUT_MS));
        ck_assert_uint_eq(members_of(rx, "DeliverMemfd"), 1);
        peer_cmd(tx, "emit 1 ev (handle 0,)");
        ck_assert_ptr_nonnull(peer_expect(tx, "result emit 0", PEER_TIMEOUT_MS));
        ck_assert_ptr_nonnull(peer_expect(rx, "recv 2 ev (handle ", PEER_TIMEOUT_MS));
        ck_assert_uint_eq(members_of(rx, "DeliverMemfd"), 1);
        ck_assert_uint_eq(members_of(rx, "Deliver"), 1);

        /* 1 MiB from a connection that cannot pass fds: inline. */
        peer_cmd(tx_nofd, "big 1 big %u 9", MIB);
        expect_big(rx, 3, "big", MIB, 9);
        ck_assert_uint_eq(members_of(rx, "DeliverMemfd"), 1);
        ck_assert_uint_eq(members_of(rx, "Deliver"), 2);
}
END_TEST

int main(void) {
        Suite *s = suite_create("memfd");
        TCase *tc = tcase_create("memfd");
        SRunner *sr;
        int failed;

        tcase_add_checked_fixture(tc, NULL, teardown);
        tcase_set_timeout(tc, 120);
        tcase_add_test(tc, test_large_payloads_arrive_intact_through_send_and_broadcast);
        tcase_add_test(tc, test_small_payloads_stay_inline_and_the_threshold_is_settable);
        tcase_add_test(tc, test_order_is_kept_across_inline_batched_and_memfd_sends);
        tcase_add_test(tc, test_sends_queued_before_connect_keep_order_and_use_memfd);
        tcase_add_test(tc, test_fds_in_the_payload_or_a_bus_without_fds_keep_it_inline);
        suite_add_tcase(s, tc);

        sr = srunner_create(s);
        srunner_run_all(sr, CK_VERBOSE);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

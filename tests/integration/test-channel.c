/* SPDX-License-Identifier: MIT */
/* Integration tests of the channel: real peer processes on a private bus. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <check.h>
#include <systemd/sd-bus.h>

#include "testutil.h"

/* Each test uses its own app name, so leftovers of one test never meet the next. */
#define APP(name) "--app", name

static void teardown(void) {
        peers_cleanup();
}

/* ---- peer ids --------------------------------------------------------------------------- */

START_TEST(test_sixteen_peers_started_together_get_ids_1_to_16) {
        peer *p[16];
        bool seen[17] = {};

        for (int i = 0; i < 16; i++)
                p[i] = peer_start(APP("sixteen"));
        /* All are up and waiting; now they connect at the same instant. */
        for (int i = 0; i < 16; i++)
                peer_cmd(p[i], "connect");
        for (int i = 0; i < 16; i++) {
                unsigned id = peer_wait_connect(p[i]);
                ck_assert_uint_ge(id, 1);
                ck_assert_uint_le(id, 16);
                ck_assert_msg(!seen[id], "peer id %u given twice", id);
                seen[id] = true;
        }
}
END_TEST

START_TEST(test_peer_id_is_0_and_not_connected_until_connect) {
        peer *p = peer_start(APP("zero"));
        const char *line;

        peer_cmd(p, "state");
        line = peer_expect(p, "state ", PEER_TIMEOUT_MS);
        ck_assert_str_eq(line, "state 0 0");
        peer_cmd(p, "connect");
        ck_assert_uint_eq(peer_wait_connect(p), 1);
        peer_cmd(p, "state");
        line = peer_expect(p, "state ", PEER_TIMEOUT_MS);
        ck_assert_str_eq(line, "state 1 1");
}
END_TEST

START_TEST(test_explicit_id_held_elsewhere_is_reported_never_replaced) {
        peer *a = peer_start(APP("explicit"), "--id", "3", "--connect");
        peer *b;
        const char *line;

        ck_assert_uint_eq(peer_wait_connect(a), 3);

        b = peer_start(APP("explicit"), "--id", "3", "--connect");
        line = peer_expect(b, "error ", PEER_TIMEOUT_MS);
        ck_assert_ptr_nonnull(line);
        ck_assert_int_eq(atoi(line + 6), -EADDRINUSE);
        peer_cmd(b, "state");
        ck_assert_str_eq(peer_expect(b, "state ", PEER_TIMEOUT_MS), "state 0 0");

        /* When the holder goes, the waiting process gets exactly the id it asked for. */
        peer_kill(a, SIGKILL);
        ck_assert_uint_eq(peer_wait_connect(b), 3);
}
END_TEST

START_TEST(test_set_peer_id_wins_over_environment) {
        const char *env[] = { "IPCHANNEL_PEER_ID=5", NULL };
        peer *a = peer_start_env(env, APP("envid"), "--connect", NULL);
        peer *b = peer_start_env(env, APP("envid2"), "--id", "6", "--connect", NULL);

        ck_assert_uint_eq(peer_wait_connect(a), 5);
        ck_assert_uint_eq(peer_wait_connect(b), 6);
}
END_TEST

START_TEST(test_killed_peer_restarted_gets_its_old_id) {
        peer *p1 = peer_start(APP("restart"), "--connect");
        ck_assert_uint_eq(peer_wait_connect(p1), 1);
        peer *p2 = peer_start(APP("restart"), "--connect");
        ck_assert_uint_eq(peer_wait_connect(p2), 2);
        peer *p3 = peer_start(APP("restart"), "--connect");
        ck_assert_uint_eq(peer_wait_connect(p3), 3);

        peer_kill(p2, SIGKILL);
        peer_wait(p2, PEER_TIMEOUT_MS);
        peer_free(p2);

        peer *again = peer_start(APP("restart"), "--connect");
        ck_assert_uint_eq(peer_wait_connect(again), 2);
}
END_TEST

/* ---- messaging -------------------------------------------------------------------------- */

START_TEST(test_send_and_emit_to_one_peer) {
        peer *a = peer_start(APP("targeted"), "--listen", "message", "--listen", "custom", "--connect");
        ck_assert_uint_eq(peer_wait_connect(a), 1);
        peer *b = peer_start(APP("targeted"), "--listen", "message", "--connect");
        ck_assert_uint_eq(peer_wait_connect(b), 2);

        peer_cmd(b, "send 1 ('hello', 42)");
        ck_assert_str_eq(peer_expect(b, "result send", PEER_TIMEOUT_MS), "result send 0");
        ck_assert_str_eq(peer_expect(a, "recv", PEER_TIMEOUT_MS), "recv 2 message ('hello', 42)");

        peer_cmd(b, "emit 1 custom [1,2,3]");
        ck_assert_str_eq(peer_expect(a, "recv", PEER_TIMEOUT_MS), "recv 2 custom [1, 2, 3]");

        /* Targeted: the sender itself does not receive it. */
        ck_assert(peer_quiet(b, "recv", 300));
}
END_TEST

START_TEST(test_broadcast_reaches_every_peer_and_the_sender) {
        peer *p[3];

        for (int i = 0; i < 3; i++) {
                p[i] = peer_start(APP("bcast"), "--listen", "news", "--connect");
                ck_assert_uint_eq(peer_wait_connect(p[i]), (unsigned) i + 1);
        }
        peer_cmd(p[1], "emit all news 'extra'");
        for (int i = 0; i < 3; i++)
                ck_assert_str_eq(peer_expect(p[i], "recv", PEER_TIMEOUT_MS), "recv 2 news 'extra'");
}
END_TEST

/* Sends that take turns between peers, and runs of sends to one peer (after the second of
 * which the next Deliver to it is built ahead): each arrives where it was sent, in order. */
START_TEST(test_sends_taking_turns_between_peers_each_reach_their_target) {
        peer *p[3];
        const char *const to[] = { "2", "3", "2", "2", "2", "3", "3", "2" };

        for (int i = 0; i < 3; i++) {
                p[i] = peer_start(APP("turns"), "--listen", "message", "--connect");
                ck_assert_uint_eq(peer_wait_connect(p[i]), (unsigned) i + 1);
        }
        for (size_t i = 0; i < sizeof(to) / sizeof(to[0]); i++) {
                peer_cmd(p[0], "send %s %zu", to[i], i);
                /* One send per turn of the sender's loop: each goes as a Deliver of its own. */
                ck_assert_str_eq(peer_expect(p[0], "result send", PEER_TIMEOUT_MS), "result send 0");
        }
        for (size_t i = 0; i < sizeof(to) / sizeof(to[0]); i++) {
                char want[64];
                snprintf(want, sizeof(want), "recv 1 message %zu", i);
                ck_assert_str_eq(peer_expect(p[atoi(to[i]) - 1], "recv", PEER_TIMEOUT_MS), want);
        }
        ck_assert(peer_quiet(p[1], "recv", 200));
        ck_assert(peer_quiet(p[2], "recv", 200));
}
END_TEST

/* Strings holding Unicode noncharacters (U+FFFE, U+FDD0) are valid for GLib and for the D-Bus
 * specification (since 0.21), but sd-bus refuses them in a message, as it refuses the
 * signature "()" GLib allows. They travel all the same: sent at once, queued before connect,
 * in a burst (packed), broadcast, inside a variant; handed over as a value of the caller's
 * (read from its bytes) and floating (walked as a tree). */
START_TEST(test_values_sd_bus_refuses_inline_travel_all_the_same) {
        const char *const app[] = { "nonchar", "noncharf" };
        const char *const floating[] = { "--id=2", "--floating" };  /* harmless, or not */

        for (int k = 0; k < 2; k++) {
                peer *a = peer_start("--app", app[k], "--listen", "message", "--listen", "ev",
                                     "--connect");
                ck_assert_uint_eq(peer_wait_connect(a), 1);
                peer *b = peer_start("--app", app[k], "--id", "2", floating[k]);

                peer_cmd(b, "send 1 'queued\\ufffe'");
                ck_assert_str_eq(peer_expect(b, "result", PEER_TIMEOUT_MS), "result send 0");
                peer_cmd(b, "connect");
                ck_assert_uint_eq(peer_wait_connect(b), 2);
                ck_assert_str_eq(peer_expect(a, "recv", PEER_TIMEOUT_MS),
                                 "recv 2 message 'queued\\ufffe'");

                const char *const sends[][2] = {
                        { "send 1 'alone\\ufffe'", "recv 2 message 'alone\\ufffe'" },
                        { "send 1 <'wrapped\\ufffe'>", "recv 2 message <'wrapped\\ufffe'>" },
                        { "send 1 ('in a struct\\ufffe', @x 7)", "recv 2 message ('in a struct\\ufffe', int64 7)" },
                        { "send 1 signature '()'", "recv 2 message signature '()'" },
                        { "emit all ev '\\ufdd0'", "recv 2 ev '\\ufdd0'" },
                };
                size_t n = sizeof(sends) / sizeof(sends[0]);
                for (size_t i = 0; i < n; i++) {
                        peer_cmd(b, "%s", sends[i][0]);
                        ck_assert_str_eq(peer_expect(b, "result", PEER_TIMEOUT_MS),
                                         i == n - 1 ? "result emit 0" : "result send 0");
                        ck_assert_str_eq(peer_expect(a, "recv", PEER_TIMEOUT_MS), sends[i][1]);
                }

                /* Commands in one write are run in one turn of the loop: all but the first
                 * are batched (and "ax" needs 8-aligned bytes, which the batch's bytes in the
                 * message may not be). */
                peer_cmd(b, "send 1 'first\\ufffe'\nsend 1 'second\\ufffe'");
                for (int i = 0; i < 2; i++)
                        ck_assert_str_eq(peer_expect(b, "result", PEER_TIMEOUT_MS), "result send 0");
                ck_assert_str_eq(peer_expect(a, "recv", PEER_TIMEOUT_MS), "recv 2 message 'first\\ufffe'");
                ck_assert_str_eq(peer_expect(a, "recv", PEER_TIMEOUT_MS), "recv 2 message 'second\\ufffe'");
                peer_cmd(b, "emit 1 ev @x 1\nemit 1 ev @x 2\nemit 1 ev @x 3");
                for (int i = 1; i <= 3; i++) {
                        char want[64];
                        ck_assert_str_eq(peer_expect(b, "result", PEER_TIMEOUT_MS), "result emit 0");
                        snprintf(want, sizeof(want), "recv 2 ev int64 %d", i);
                        ck_assert_str_eq(peer_expect(a, "recv", PEER_TIMEOUT_MS), want);
                }
        }
}
END_TEST

START_TEST(test_null_data_arrives_as_null) {
        peer *a = peer_start(APP("nulldata"), "--listen", "ping", "--connect");
        ck_assert_uint_eq(peer_wait_connect(a), 1);

        peer_cmd(a, "emit 1 ping null");
        ck_assert_str_eq(peer_expect(a, "recv", PEER_TIMEOUT_MS), "recv 1 ping null");
        peer_cmd(a, "emit all ping null");
        ck_assert_str_eq(peer_expect(a, "recv", PEER_TIMEOUT_MS), "recv 1 ping null");
}
END_TEST

START_TEST(test_once_fires_once_and_slot_unref_removes_listener) {
        peer *a = peer_start(APP("once"), "--connect");
        ck_assert_uint_eq(peer_wait_connect(a), 1);

        peer_cmd(a, "once tick");
        ck_assert_str_eq(peer_expect(a, "result once", PEER_TIMEOUT_MS), "result once 0");
        peer_cmd(a, "emit 1 tick 1");
        peer_cmd(a, "emit 1 tick 2");
        ck_assert_str_eq(peer_expect(a, "recv", PEER_TIMEOUT_MS), "recv 1 tick 1");
        ck_assert(peer_quiet(a, "recv", 300));

        peer_cmd(a, "on tock");
        peer_cmd(a, "emit 1 tock 1");
        ck_assert_str_eq(peer_expect(a, "recv", PEER_TIMEOUT_MS), "recv 1 tock 1");
        peer_cmd(a, "off tock");
        ck_assert_str_eq(peer_expect(a, "result off", PEER_TIMEOUT_MS), "result off 0");
        peer_cmd(a, "emit 1 tock 2");
        peer_cmd(a, "emit all tock 3");
        ck_assert(peer_quiet(a, "recv", 300));
}
END_TEST

START_TEST(test_sends_before_connect_are_queued_and_delivered_in_order_with_sender) {
        peer *a = peer_start(APP("queued"), "--listen", "message", "--listen", "ev", "--id", "1",
                             "--connect");
        ck_assert_uint_eq(peer_wait_connect(a), 1);

        peer *b = peer_start(APP("queued"), "--id", "2");
        peer_cmd(b, "send 1 'first'");
        peer_cmd(b, "emit 1 ev 'second'");
        peer_cmd(b, "emit all ev 'third'");
        peer_cmd(b, "send 1 'fourth'");
        for (int i = 0; i < 4; i++)
                ck_assert_str_eq(peer_expect(b, "result", PEER_TIMEOUT_MS),
                                 i == 0 ? "result send 0" : i == 3 ? "result send 0" : "result emit 0");
        ck_assert(peer_quiet(a, "recv", 200));  /* nothing leaves before connect */

        peer_cmd(b, "connect");
        ck_assert_uint_eq(peer_wait_connect(b), 2);
        ck_assert_str_eq(peer_expect(a, "recv", PEER_TIMEOUT_MS), "recv 2 message 'first'");
        ck_assert_str_eq(peer_expect(a, "recv", PEER_TIMEOUT_MS), "recv 2 ev 'second'");
        ck_assert_str_eq(peer_expect(a, "recv", PEER_TIMEOUT_MS), "recv 2 ev 'third'");
        ck_assert_str_eq(peer_expect(a, "recv", PEER_TIMEOUT_MS), "recv 2 message 'fourth'");
}
END_TEST

START_TEST(test_queue_before_connect_is_bounded) {
        peer *b = peer_start(APP("bounded"), "--queue-max", "3");

        for (int i = 0; i < 3; i++) {
                peer_cmd(b, "send 1 %d", i);
                ck_assert_str_eq(peer_expect(b, "result", PEER_TIMEOUT_MS), "result send 0");
        }
        peer_cmd(b, "send 1 4");
        const char *line = peer_expect(b, "result", PEER_TIMEOUT_MS);
        ck_assert_ptr_nonnull(line);
        ck_assert_int_eq(atoi(line + strlen("result send ")), -ENOBUFS);
}
END_TEST

START_TEST(test_order_is_kept_per_pair_with_targeted_and_broadcast_mixed) {
        enum { N = 2000 };
        peer *a = peer_start(APP("order"), "--listen", "seq", "--connect");
        ck_assert_uint_eq(peer_wait_connect(a), 1);
        peer *b = peer_start(APP("order"), "--connect");
        ck_assert_uint_eq(peer_wait_connect(b), 2);

        peer_cmd(b, "mixed 1 %d", N);
        ck_assert_str_eq(peer_expect(b, "result mixed", PEER_TIMEOUT_MS), "result mixed 0");
        for (unsigned i = 0; i < N; i++) {
                char want[64];
                snprintf(want, sizeof(want), "recv 2 seq (uint32 %u,)", i);
                const char *line = peer_expect(a, "recv", PEER_TIMEOUT_MS);
                ck_assert_ptr_nonnull(line);
                ck_assert_str_eq(line, want);
        }
}
END_TEST

START_TEST(test_send_to_absent_peer_is_an_error) {
        peer *a = peer_start(APP("absent"), "--connect");
        ck_assert_uint_eq(peer_wait_connect(a), 1);

        peer_cmd(a, "send 9 'anyone?'");
        const char *line = peer_expect(a, "result send", PEER_TIMEOUT_MS);
        ck_assert_ptr_nonnull(line);
        ck_assert_int_eq(atoi(line + strlen("result send ")), -ENXIO);
}
END_TEST

START_TEST(test_queued_send_to_absent_peer_is_reported_on_error_event) {
        peer *a = peer_start(APP("absentq"), "--flush-wait", "100000");

        peer_cmd(a, "send 7 'lost'");
        ck_assert_str_eq(peer_expect(a, "result send", PEER_TIMEOUT_MS), "result send 0");
        peer_cmd(a, "connect");
        ck_assert_uint_eq(peer_wait_connect(a), 1);
        const char *line = peer_expect(a, "error", PEER_TIMEOUT_MS);
        ck_assert_ptr_nonnull(line);
        ck_assert_int_eq(atoi(line + strlen("error ")), -ENXIO);
}
END_TEST

START_TEST(test_queued_send_waits_for_a_late_receiver) {
        peer *b = peer_start(APP("late"), "--id", "2");
        peer_cmd(b, "send 1 'early bird'");
        peer_cmd(b, "connect");
        ck_assert_uint_eq(peer_wait_connect(b), 2);
        usleep(200 * 1000);
        peer *a = peer_start(APP("late"), "--listen", "message", "--id", "1", "--connect");
        ck_assert_uint_eq(peer_wait_connect(a), 1);
        ck_assert_str_eq(peer_expect(a, "recv", PEER_TIMEOUT_MS), "recv 2 message 'early bird'");
}
END_TEST

/* A connect after ipchannel_disconnect() takes the app's connection again, still open: it
 * opened a connection of its own. */
START_TEST(test_connect_after_disconnect_reuses_the_apps_bus) {
        peer *a = peer_start(APP("appbus"), "--no-fds", "--connect");
        ck_assert_uint_eq(peer_wait_connect(a), 1);
        peer_cmd(a, "bus-is-app");
        ck_assert_str_eq(peer_expect(a, "bus-is-app", PEER_TIMEOUT_MS), "bus-is-app 1");
        peer_cmd(a, "disconnect\nconnect");
        ck_assert_uint_eq(peer_wait_connect(a), 1);
        peer_cmd(a, "bus-is-app");
        ck_assert_str_eq(peer_expect(a, "bus-is-app", PEER_TIMEOUT_MS), "bus-is-app 1");
}
END_TEST

/* UINT64_MAX waits for ever, on either loop (it overflowed the clock: reported at once). */
START_TEST(test_queued_send_with_flush_wait_forever_waits) {
        const char *loop = _i == 0 ? "sd-event" : "glib";
        peer *b = peer_start(APP("forever"), "--id", "2", "--flush-wait", "forever", "--loop", loop);

        peer_cmd(b, "send 1 'patient'");
        peer_cmd(b, "connect");
        ck_assert_uint_eq(peer_wait_connect(b), 2);
        ck_assert(peer_quiet(b, "error", 500));
        peer *a = peer_start(APP("forever"), "--listen", "message", "--id", "1", "--connect", "--loop", loop);
        ck_assert_uint_eq(peer_wait_connect(a), 1);
        ck_assert_str_eq(peer_expect(a, "recv", PEER_TIMEOUT_MS), "recv 2 message 'patient'");
}
END_TEST

/* ---- identity --------------------------------------------------------------------------- */

START_TEST(test_non_peer_connection_cannot_deliver_or_broadcast) {
        peer *a = peer_start(APP("ident"), "--listen", "message", "--connect");
        ck_assert_uint_eq(peer_wait_connect(a), 1);
        sd_bus *bus = raw_bus();
        sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        r = sd_bus_call_method(bus, "org.ipchannel.ident.Peer1", "/org/ipchannel/ident",
                               "org.ipchannel.Peer1", "Deliver", &error, NULL, "sv", "message", "s",
                               "I am peer 1, honest");
        ck_assert_int_lt(r, 0);
        ck_assert_str_eq(error.name, "org.ipchannel.Error.NotAPeer");
        sd_bus_error_free(&error);

        /* The same call without an interface field (D-Bus allows it) is refused alike. */
        sd_bus_message *m = NULL;
        ck_assert_int_ge(sd_bus_message_new_method_call(bus, &m, "org.ipchannel.ident.Peer1",
                                                        "/org/ipchannel/ident", NULL, "Deliver"),
                         0);
        ck_assert_int_ge(sd_bus_message_append(m, "sv", "message", "s", "no interface, no name"), 0);
        r = sd_bus_call(bus, m, 0, &error, NULL);
        ck_assert_int_lt(r, 0);
        ck_assert_str_eq(error.name, "org.ipchannel.Error.NotAPeer");
        sd_bus_error_free(&error);
        sd_bus_message_unref(m);

        r = sd_bus_emit_signal(bus, "/org/ipchannel/ident", "org.ipchannel.Peer1", "Broadcast", "sv",
                               "message", "s", "forged broadcast");
        ck_assert_int_ge(r, 0);
        sd_bus_flush(bus);
        ck_assert(peer_quiet(a, "recv", 300));
        sd_bus_flush_close_unref(bus);
}
END_TEST

START_TEST(test_sender_id_comes_from_the_bus_name_owned) {
        peer *a = peer_start(APP("owner"), "--listen", "message", "--connect");
        ck_assert_uint_eq(peer_wait_connect(a), 1);
        sd_bus *bus = raw_bus();
        sd_bus_error error = SD_BUS_ERROR_NULL;

        /* A plain connection that owns Peer7 is peer 7, whatever its message says. */
        ck_assert_int_ge(sd_bus_request_name(bus, "org.ipchannel.owner.Peer7", 0), 0);
        ck_assert_int_ge(sd_bus_call_method(bus, "org.ipchannel.owner.Peer1", "/org/ipchannel/owner",
                                            "org.ipchannel.Peer1", "Deliver", &error, NULL, "sv",
                                            "message", "(us)", 3, "from peer 3"),
                         0);
        ck_assert_str_eq(peer_expect(a, "recv", PEER_TIMEOUT_MS), "recv 7 message (uint32 3, 'from peer 3')");
        sd_bus_flush_close_unref(bus);
}
END_TEST

/* D-Bus lets a method call leave its interface out; sd-bus's object table alone would answer
 * such a Deliver with UnknownMethod. Both forms deliver, and both answer a caller that waits
 * for a reply. */
START_TEST(test_deliver_without_interface_is_delivered_too) {
        peer *a = peer_start(APP("noiface"), "--listen", "message", "--connect");
        ck_assert_uint_eq(peer_wait_connect(a), 1);
        sd_bus *bus = raw_bus();
        sd_bus_message *m = NULL;
        sd_bus_error error = SD_BUS_ERROR_NULL;

        ck_assert_int_ge(sd_bus_request_name(bus, "org.ipchannel.noiface.Peer5", 0), 0);
        ck_assert_int_ge(sd_bus_call_method(bus, "org.ipchannel.noiface.Peer1", "/org/ipchannel/noiface",
                                            "org.ipchannel.Peer1", "Deliver", &error, NULL, "sv",
                                            "message", "s", "with interface"),
                         0);
        ck_assert_str_eq(peer_expect(a, "recv", PEER_TIMEOUT_MS), "recv 5 message 'with interface'");

        ck_assert_int_ge(sd_bus_message_new_method_call(bus, &m, "org.ipchannel.noiface.Peer1",
                                                        "/org/ipchannel/noiface", NULL, "Deliver"),
                         0);
        ck_assert_int_ge(sd_bus_message_append(m, "sv", "message", "s", "without interface"), 0);
        ck_assert_int_ge(sd_bus_call(bus, m, 0, &error, NULL), 0);
        ck_assert_str_eq(peer_expect(a, "recv", PEER_TIMEOUT_MS), "recv 5 message 'without interface'");
        sd_bus_message_unref(m);
        sd_bus_flush_close_unref(bus);
}
END_TEST

START_TEST(test_peer_cannot_emit_local_events) {
        peer *a = peer_start(APP("reserved"), "--listen", "message", "--connect");
        ck_assert_uint_eq(peer_wait_connect(a), 1);
        sd_bus *bus = raw_bus();
        sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        ck_assert_int_ge(sd_bus_request_name(bus, "org.ipchannel.reserved.Peer2", 0), 0);
        const char *local[] = { "connect", "disconnect", "error", "peer-join", "peer-leave" };
        for (size_t i = 0; i < sizeof(local) / sizeof(local[0]); i++) {
                r = sd_bus_call_method(bus, "org.ipchannel.reserved.Peer1", "/org/ipchannel/reserved",
                                       "org.ipchannel.Peer1", "Deliver", &error, NULL, "sv",
                                       local[i], "u", 77);
                ck_assert_int_lt(r, 0);
                ck_assert_str_eq(error.name, "org.ipchannel.Error.ReservedEvent");
                sd_bus_error_free(&error);
        }
        /* The peer's own id and state did not change. */
        peer_cmd(a, "state");
        ck_assert_str_eq(peer_expect(a, "state", PEER_TIMEOUT_MS), "state 1 1");
        ck_assert(peer_quiet(a, "connect", 200));

        /* And the library refuses to send them in the first place. */
        peer_cmd(a, "emit 1 connect 77");
        const char *line = peer_expect(a, "result emit", PEER_TIMEOUT_MS);
        ck_assert_int_eq(atoi(line + strlen("result emit ")), -EINVAL);
        sd_bus_flush_close_unref(bus);
}
END_TEST

/* A receiver that lowered its values limit still gets every one of a burst of small sends,
 * each of which it would take alone: the sender's coalescing must not turn them into one
 * message the receiver refuses (a Deliver* expects no reply, so nobody would hear of it). */
START_TEST(test_burst_to_a_receiver_with_a_low_values_limit_is_all_delivered) {
        peer *a = peer_start(APP("lowlimit"), "--listen", "seq", "--connect");
        ck_assert_uint_eq(peer_wait_connect(a), 1);
        peer_cmd(a, "set-limit values-max 100");
        ck_assert_str_eq(peer_expect(a, "result set-limit", PEER_TIMEOUT_MS), "result set-limit values-max 0");
        peer *b = peer_start(APP("lowlimit"), "--connect");
        ck_assert_uint_eq(peer_wait_connect(b), 2);

        /* 600 sends in one turn: one alone, then batches of up to 256. */
        peer_cmd(b, "flood 1 seq 600");
        ck_assert_str_eq(peer_expect(b, "result flood", PEER_TIMEOUT_MS), "result flood 0");
        for (unsigned i = 0; i < 600; i++) {
                char want[64];
                snprintf(want, sizeof(want), "recv 2 seq (uint32 %u,)", i);
                ck_assert_str_eq(peer_expect(a, "recv", PEER_TIMEOUT_MS), want);
        }
}
END_TEST

/* ---- wake-ups --------------------------------------------------------------------------- */

START_TEST(test_peer_without_listener_is_not_woken_by_broadcasts) {
        peer *quiet = peer_start(APP("wake"), "--listen", "wanted", "--connect");
        ck_assert_uint_eq(peer_wait_connect(quiet), 1);
        peer *loud = peer_start(APP("wake"), "--listen", "noise", "--listen", "wanted", "--connect");
        ck_assert_uint_eq(peer_wait_connect(loud), 2);

        peer_cmd(loud, "flood all noise 500");
        peer_cmd(loud, "emit all wanted 'signal'");
        ck_assert_str_eq(peer_expect(quiet, "recv", PEER_TIMEOUT_MS), "recv 2 wanted 'signal'");
        /* The broker keeps the sender's order: when "wanted" is in, any noise would be too. */
        for (unsigned i = 0; i < 500; i++) {
                char want[64];
                snprintf(want, sizeof(want), "recv 2 noise (uint32 %u,)", i);
                ck_assert_str_eq(peer_expect(loud, "recv 2", PEER_TIMEOUT_MS), want);
        }
        ck_assert_str_eq(peer_expect(loud, "recv 2", PEER_TIMEOUT_MS), "recv 2 wanted 'signal'");

        /* One D-Bus signal reached the quiet peer: "wanted". The loud one got the noise too
         * (in fewer signals than messages: sends from one callback are coalesced). */
        peer_cmd(quiet, "count");
        ck_assert_str_eq(peer_expect(quiet, "count", PEER_TIMEOUT_MS), "count 1");
        peer_cmd(loud, "count");
        const char *line = peer_expect(loud, "count", PEER_TIMEOUT_MS);
        ck_assert_ptr_nonnull(line);
        ck_assert_int_gt(atoi(line + strlen("count ")), 1);
}
END_TEST

/* ---- loops ------------------------------------------------------------------------------ */

static void exchange_on_loop(const char *app, const char *loop) {
        peer *a = peer_start("--app", app, "--loop", loop, "--listen", "message", "--connect");
        ck_assert_uint_eq(peer_wait_connect(a), 1);
        peer *b = peer_start("--app", app, "--loop", loop, "--listen", "message", "--connect");
        ck_assert_uint_eq(peer_wait_connect(b), 2);

        peer_cmd(b, "send 1 'over %s'", loop);
        char want[128];
        snprintf(want, sizeof(want), "recv 2 message 'over %s'", loop);
        ck_assert_str_eq(peer_expect(a, "recv", PEER_TIMEOUT_MS), want);
        peer_cmd(a, "send all 'back'");
        ck_assert_str_eq(peer_expect(b, "recv", PEER_TIMEOUT_MS), "recv 1 message 'back'");
        ck_assert_str_eq(peer_expect(a, "recv", PEER_TIMEOUT_MS), "recv 1 message 'back'");

        /* ipchannel_exit() ends ipchannel_run() with the code given. */
        peer_cmd(a, "exit 7");
        ck_assert_int_eq(peer_wait(a, PEER_TIMEOUT_MS), 7);
}

START_TEST(test_runs_on_sd_event) {
        exchange_on_loop("loopsd", "sd-event");
}
END_TEST

START_TEST(test_runs_on_glib_main_context) {
        exchange_on_loop("loopglib", "glib");
}
END_TEST

START_TEST(test_runs_on_default_loop) {
        exchange_on_loop("loopdefault", "default");
}
END_TEST

static Suite *channel_suite(void) {
        Suite *s = suite_create("channel");
        TCase *tc;

        tc = tcase_create("peer ids");
        tcase_add_checked_fixture(tc, NULL, teardown);
        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, test_sixteen_peers_started_together_get_ids_1_to_16);
        tcase_add_test(tc, test_peer_id_is_0_and_not_connected_until_connect);
        tcase_add_test(tc, test_explicit_id_held_elsewhere_is_reported_never_replaced);
        tcase_add_test(tc, test_set_peer_id_wins_over_environment);
        tcase_add_test(tc, test_killed_peer_restarted_gets_its_old_id);
        suite_add_tcase(s, tc);

        tc = tcase_create("messaging");
        tcase_add_checked_fixture(tc, NULL, teardown);
        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, test_send_and_emit_to_one_peer);
        tcase_add_test(tc, test_broadcast_reaches_every_peer_and_the_sender);
        tcase_add_test(tc, test_null_data_arrives_as_null);
        tcase_add_test(tc, test_once_fires_once_and_slot_unref_removes_listener);
        tcase_add_test(tc, test_sends_before_connect_are_queued_and_delivered_in_order_with_sender);
        tcase_add_test(tc, test_queue_before_connect_is_bounded);
        tcase_add_test(tc, test_order_is_kept_per_pair_with_targeted_and_broadcast_mixed);
        tcase_add_test(tc, test_send_to_absent_peer_is_an_error);
        tcase_add_test(tc, test_queued_send_to_absent_peer_is_reported_on_error_event);
        tcase_add_test(tc, test_queued_send_waits_for_a_late_receiver);
        tcase_add_loop_test(tc, test_queued_send_with_flush_wait_forever_waits, 0, 2);
        tcase_add_test(tc, test_connect_after_disconnect_reuses_the_apps_bus);
        tcase_add_test(tc, test_burst_to_a_receiver_with_a_low_values_limit_is_all_delivered);
        suite_add_tcase(s, tc);

        tc = tcase_create("identity");
        tcase_add_checked_fixture(tc, NULL, teardown);
        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, test_non_peer_connection_cannot_deliver_or_broadcast);
        tcase_add_test(tc, test_sender_id_comes_from_the_bus_name_owned);
        tcase_add_test(tc, test_deliver_without_interface_is_delivered_too);
        tcase_add_test(tc, test_sends_taking_turns_between_peers_each_reach_their_target);
        tcase_add_test(tc, test_values_sd_bus_refuses_inline_travel_all_the_same);
        tcase_add_test(tc, test_peer_cannot_emit_local_events);
        tcase_add_test(tc, test_peer_without_listener_is_not_woken_by_broadcasts);
        suite_add_tcase(s, tc);

        tc = tcase_create("loops");
        tcase_add_checked_fixture(tc, NULL, teardown);
        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, test_runs_on_sd_event);
        tcase_add_test(tc, test_runs_on_glib_main_context);
        tcase_add_test(tc, test_runs_on_default_loop);
        suite_add_tcase(s, tc);

        return s;
}

int main(void) {
        SRunner *sr = srunner_create(channel_suite());
        int failed;

        srunner_run_all(sr, CK_VERBOSE);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

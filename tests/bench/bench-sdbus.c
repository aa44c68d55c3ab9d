/* SPDX-License-Identifier: MIT */
/* The raw sd-bus baselines: the same work as the ipchannel roles, one D-Bus message each. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <glib.h>
#include <systemd/sd-bus.h>

#include "bench-util.h"

/*
 * What a plain sd-bus program does: a method call without a reply per targeted message, a
 * signal per broadcast, a method call and its reply per round trip, an "ay" argument per
 * payload. The bus names are org.ipchannelbench.Raw<N>; the server answers everything on one
 * object. Sends are driven the same way as the ipchannel roles (chunks from an idle defer
 * source) so that the two differ only in what goes on the wire.
 */

#define CALL_TIMEOUT_USEC (120 * 1000 * 1000ULL)
#define MATCH_BROADCAST                                                              \
        "type='signal',path='" BENCH_RAW_PATH "',interface='" BENCH_RAW_INTERFACE "'," \
        "member='Broadcast'"

typedef struct raw {
        const bench_opts *o;
        sd_bus *bus;
        sd_event *event;
        sd_event_source *control, *pump, *timer;
        sd_bus_slot *vtable_slot, *match_slot;
        char dest[64];
        bool failed, reported;

        uint64_t n_received, n_bad, t_first, t_last;
        int32_t next_seq;
        uint64_t n_sent, t_start;
        uint64_t n_data;
} raw;

static void raw_fail(raw *w, const char *what, int r) {
        bench_error("%s: %s", what, strerror(r < 0 ? -r : r));
        w->failed = true;
        if (w->event)
                sd_event_exit(w->event, 1);
}

/* to: the peer whose name the process calls (usually o->to). */
static int raw_open(raw *w, const bench_opts *o, uint32_t to) {
        *w = (raw) { .o = o };
        snprintf(w->dest, sizeof(w->dest), BENCH_RAW_NAME_FMT, to);
        return sd_bus_open_user(&w->bus);
}

static int raw_wait_name(raw *w, const char *name) {
        uint64_t deadline = bench_now_usec() + 60 * 1000 * 1000ULL;

        while (bench_now_usec() < deadline) {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
                _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
                int has = 0, r;

                r = sd_bus_call_method(w->bus, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                       "org.freedesktop.DBus", "NameHasOwner", &error, &reply,
                                       "s", name);
                if (r >= 0)
                        r = sd_bus_message_read(reply, "b", &has);
                if (r < 0)
                        return r;
                if (has)
                        return 0;
                usleep(5000);
        }
        return -ETIMEDOUT;
}

static int raw_attach(raw *w, bench_go_t on_go) {
        int r;

        r = sd_event_default(&w->event);
        if (r < 0)
                return r;
        r = sd_bus_attach_event(w->bus, w->event, SD_EVENT_PRIORITY_NORMAL);
        if (r < 0)
                return r;
        return bench_control_attach(w->event, on_go, w, &w->control);
}

static void raw_free(raw *w) {
        w->pump = sd_event_source_disable_unref(w->pump);
        w->timer = sd_event_source_disable_unref(w->timer);
        w->control = sd_event_source_disable_unref(w->control);
        w->vtable_slot = sd_bus_slot_unref(w->vtable_slot);
        w->match_slot = sd_bus_slot_unref(w->match_slot);
        if (w->bus)
                (void) sd_bus_detach_event(w->bus);
        w->bus = sd_bus_flush_close_unref(w->bus);
        w->event = sd_event_unref(w->event);
}

static int raw_setup_failed(raw *w, const char *what, int r) {
        bench_error("%s: %s", what, strerror(-r));
        raw_free(w);
        return 1;
}

/* Runs the loop until the conductor closes stdin. */
static int raw_run(raw *w) {
        int r = sd_event_loop(w->event);

        return w->failed || r != 0 ? 1 : 0;
}

/* ---- the server: Deliver, Ping, Data ---------------------------------------------------- */

static void count_message(raw *w, const char *word, int32_t seq) {
        uint64_t now = bench_now_nsec();

        if (w->n_received++ == 0)
                w->t_first = now;
        w->t_last = now;
        if (seq != w->next_seq || strcmp(word, BENCH_WORD) != 0)
                w->n_bad++;
        w->next_seq = seq + 1;
        if (!w->reported && w->n_received >= w->o->count) {
                w->reported = true;
                bench_out("result received=%" PRIu64 " bad=%" PRIu64 " first_ns=%" PRIu64
                          " last_ns=%" PRIu64, w->n_received, w->n_bad, w->t_first, w->t_last);
        }
}

static int method_deliver(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        const char *word;
        int32_t seq;
        int r;

        r = sd_bus_message_read(m, "si", &word, &seq);
        if (r < 0)
                return r;
        count_message(userdata, word, seq);
        /* Sent without a reply expected: this sends nothing, but is what a handler does. */
        return sd_bus_reply_method_return(m, NULL);
}

static int method_ping(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        const char *word;
        int32_t seq;
        int r;

        r = sd_bus_message_read(m, "si", &word, &seq);
        if (r < 0)
                return r;
        return sd_bus_reply_method_return(m, "si", word, seq);
}

static int method_data(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        raw *w = userdata;
        const void *bytes = NULL;
        size_t n = 0;
        bool ok;
        int r;

        r = sd_bus_message_read_array(m, 'y', &bytes, &n);
        if (r < 0)
                return r;
        ok = n == w->o->size && bench_payload_check(bytes, n, w->n_data);
        if (!ok)
                bench_error("payload %" PRIu64 ": %zu bytes, not the %zu sent", w->n_data, n,
                            w->o->size);
        w->n_data++;
        return sd_bus_reply_method_return(m, "b", (int) ok);
}

static const sd_bus_vtable server_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_METHOD("Deliver", "si", "", method_deliver, 0),
        SD_BUS_METHOD("Ping", "si", "si", method_ping, 0),
        SD_BUS_METHOD("Data", "ay", "b", method_data, 0),
        SD_BUS_VTABLE_END,
};

/* Owns org.ipchannelbench.Raw<peer-id> and serves the object the other raw roles call. */
int role_raw_server(const bench_opts *o) {
        char name[64];
        raw w;
        int r;

        snprintf(name, sizeof(name), BENCH_RAW_NAME_FMT, o->peer_id);
        r = raw_open(&w, o, o->to);
        if (r >= 0)
                r = sd_bus_add_object_vtable(w.bus, &w.vtable_slot, BENCH_RAW_PATH,
                                             BENCH_RAW_INTERFACE, server_vtable, &w);
        if (r >= 0)
                r = sd_bus_request_name(w.bus, name, 0);
        if (r >= 0)
                r = raw_attach(&w, NULL);
        if (r < 0)
                return raw_setup_failed(&w, "raw server", r);
        bench_out("ready");
        r = raw_run(&w);
        bench_final("received=%" PRIu64 " bad=%" PRIu64 " transfers=%" PRIu64,
                                w.n_received, w.n_bad, w.n_data);
        raw_free(&w);
        return r;
}

/* ---- sending ---------------------------------------------------------------------------- */

static int raw_send_one(raw *w, bool broadcast, int32_t seq) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        int r;

        if (broadcast)
                r = sd_bus_message_new_signal(w->bus, &m, BENCH_RAW_PATH, BENCH_RAW_INTERFACE,
                                              "Broadcast");
        else {
                r = sd_bus_message_new_method_call(w->bus, &m, w->dest, BENCH_RAW_PATH,
                                                   BENCH_RAW_INTERFACE, "Deliver");
                if (r >= 0)
                        r = sd_bus_message_set_expect_reply(m, false);
        }
        if (r >= 0)
                r = sd_bus_message_append(m, "si", BENCH_WORD, seq);
        if (r >= 0)
                r = sd_bus_send(w->bus, m, NULL);
        return r;
}

static int on_pump(sd_event_source *s, void *userdata) {
        raw *w = userdata;
        uint64_t n = w->o->count - w->n_sent;
        int r;

        if (n > w->o->chunk)
                n = w->o->chunk;
        for (uint64_t i = 0; i < n; i++) {
                r = raw_send_one(w, w->o->sender, (int32_t) w->n_sent);
                if (r < 0) {
                        raw_fail(w, "sd_bus_send", r);
                        return 0;
                }
                w->n_sent++;
        }
        if (w->n_sent < w->o->count)
                return sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
        bench_out("result sent=%" PRIu64 " start_ns=%" PRIu64 " end_ns=%" PRIu64, w->n_sent,
                  w->t_start, bench_now_nsec());
        return 0;
}

static void on_go_pump(void *userdata) {
        raw *w = userdata;
        int r;

        if (w->pump)
                return;
        w->t_start = bench_now_nsec();
        r = sd_event_add_defer(w->event, &w->pump, on_pump, w);
        if (r >= 0)
                r = sd_event_source_set_priority(w->pump, SD_EVENT_PRIORITY_IDLE);
        if (r < 0)
                raw_fail(w, "sd_event_add_defer", r);
}

/* Method calls without a reply to org.ipchannelbench.Raw<to>, from the loop. */
int role_raw_send(const bench_opts *o) {
        raw w;
        int r;

        r = raw_open(&w, o, o->to);
        if (r >= 0)
                r = raw_wait_name(&w, w.dest);
        if (r >= 0)
                r = raw_attach(&w, on_go_pump);
        if (r < 0)
                return raw_setup_failed(&w, "raw sender", r);
        bench_out("ready");
        r = raw_run(&w);
        bench_final("sent=%" PRIu64, w.n_sent);
        raw_free(&w);
        return r;
}

/* The counterpart of ipc-send-queued: a new connection, still authenticating, gets the sends
 * from a tight loop; sd-bus keeps them in its write queue until the connection is up. */
int role_raw_send_queued(const bench_opts *o) {
        const char *address = getenv("DBUS_SESSION_BUS_ADDRESS");
        long rss0, rss1, anon0, anon1;
        uint64_t t0, t1;
        raw w = { .o = o };
        int r;

        snprintf(w.dest, sizeof(w.dest), BENCH_RAW_NAME_FMT, o->to);
        bench_out("ready");
        if (bench_control_wait_go() < 0)
                return raw_setup_failed(&w, "raw queued sender", -EPIPE);

        r = sd_bus_new(&w.bus);
        if (r >= 0)
                r = sd_bus_set_address(w.bus, address ? address : "");
        if (r >= 0)
                r = sd_bus_set_bus_client(w.bus, 1);
        if (r >= 0)
                r = sd_bus_start(w.bus);
        if (r < 0)
                return raw_setup_failed(&w, "raw queued sender", r);

        rss0 = bench_status_kib("VmRSS");
        anon0 = bench_status_kib("RssAnon");
        t0 = bench_now_nsec();
        for (unsigned i = 0; i < o->count; i++) {
                r = raw_send_one(&w, false, (int32_t) i);
                if (r < 0)
                        return raw_setup_failed(&w, "sd_bus_send (queued)", r);
        }
        t1 = bench_now_nsec();
        rss1 = bench_status_kib("VmRSS");
        anon1 = bench_status_kib("RssAnon");
        bench_out("result queued=%u rss_before_kib=%ld rss_after_kib=%ld anon_before_kib=%ld "
                  "anon_after_kib=%ld start_ns=%" PRIu64 " end_ns=%" PRIu64,
                  o->count, rss0, rss1, anon0, anon1, t0, t1);

        r = raw_attach(&w, NULL);
        if (r < 0)
                return raw_setup_failed(&w, "raw queued sender", r);
        r = raw_run(&w);
        bench_final("queued=%u", o->count);
        raw_free(&w);
        return r;
}

/* ---- broadcast -------------------------------------------------------------------------- */

static int on_broadcast(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        const char *word;
        int32_t seq;

        if (sd_bus_message_read(m, "si", &word, &seq) < 0)
                return 0;
        count_message(userdata, word, seq);
        return 0;
}

/* A signal receiver; --sender also emits the signals. */
int role_raw_bcast(const bench_opts *o) {
        raw w;
        int r;

        r = raw_open(&w, o, o->to);
        if (r >= 0)
                r = sd_bus_add_match(w.bus, &w.match_slot, MATCH_BROADCAST, on_broadcast, &w);
        if (r >= 0)
                r = raw_attach(&w, o->sender ? on_go_pump : NULL);
        if (r < 0)
                return raw_setup_failed(&w, "raw broadcast peer", r);
        bench_out("ready");
        r = raw_run(&w);
        bench_final("received=%" PRIu64 " bad=%" PRIu64 " sent=%" PRIu64,
                                w.n_received, w.n_bad, w.n_sent);
        raw_free(&w);
        return r;
}

/* ---- round trips and payloads: blocking calls from main() -------------------------------- */

int role_raw_pingpong(const bench_opts *o) {
        _cleanup_(freep) uint64_t *samples = calloc(o->count ? o->count : 1, sizeof(uint64_t));
        unsigned i, total = o->warmup + o->count;
        char fields[512];
        raw w;
        int r;

        r = raw_open(&w, o, o->to);
        if (r >= 0 && !samples)
                r = -ENOMEM;
        if (r >= 0)
                r = raw_wait_name(&w, w.dest);
        if (r < 0)
                return raw_setup_failed(&w, "raw ping-pong", r);
        bench_out("ready");
        if (bench_control_wait_go() < 0)
                return raw_setup_failed(&w, "raw ping-pong", -EPIPE);

        for (i = 0; i < total; i++) {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
                _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
                uint64_t t0 = bench_now_nsec(), t1;
                const char *word = NULL;
                int32_t seq = -1;

                r = sd_bus_call_method(w.bus, w.dest, BENCH_RAW_PATH, BENCH_RAW_INTERFACE, "Ping",
                                       &error, &reply, "si", BENCH_WORD, (int32_t) i);
                if (r >= 0)
                        r = sd_bus_message_read(reply, "si", &word, &seq);
                t1 = bench_now_nsec();
                if (r >= 0 && ((unsigned) seq != i || strcmp(word, BENCH_WORD) != 0))
                        r = -EBADMSG;
                if (r < 0) {
                        bench_error("Ping: %s", strerror(-r));
                        break;
                }
                if (i >= o->warmup)
                        samples[i - o->warmup] = t1 - t0;
        }
        if (r >= 0) {
                bench_latency_fields(fields, sizeof(fields), "rtt", samples, o->count);
                bench_out("result round_trips=%u %s", o->count, fields);
        }
        bench_control_wait_eof();
        bench_final("round_trips=%u", i);
        raw_free(&w);
        return r < 0 ? 1 : 0;
}

/* ---- round trips with ipchannel's messages, written by hand --------------------------------
 * What a program that spoke ipchannel's D-Bus contract with sd-bus alone would do: each side
 * sends the other a no-reply Deliver(s event, v data) call to its well-known name, taken from a
 * filter, the payload's type known at compile time. The difference from ipchannel is then the
 * library's own work, not the contract's. */

typedef struct echo {
        raw w;
        bool initiator;
        uint64_t n_done, t_sent;
        uint64_t *samples;
} echo;

static int echo_send(echo *e, const char *word, int32_t seq) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        int r;

        r = sd_bus_message_new_method_call(e->w.bus, &m, e->w.dest, BENCH_RAW_PATH, BENCH_RAW_INTERFACE,
                                           "Deliver");
        if (r >= 0)
                r = sd_bus_message_set_expect_reply(m, false);
        if (r >= 0)
                r = sd_bus_message_append(m, "sv", "message", "(si)", word, seq);
        if (r >= 0)
                r = sd_bus_send(e->w.bus, m, NULL);
        return r;
}

static void echo_ping(echo *e) {
        int r;

        e->t_sent = bench_now_nsec();
        r = echo_send(e, BENCH_WORD, (int32_t) e->n_done);
        if (r < 0)
                raw_fail(&e->w, "sd_bus_send", r);
}

static int echo_filter(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        echo *e = userdata;
        const char *event, *word;
        int32_t seq;
        int r;

        if (!sd_bus_message_is_method_call(m, BENCH_RAW_INTERFACE, "Deliver"))
                return 0;
        r = sd_bus_message_read(m, "sv", &event, "(si)", &word, &seq);
        if (r < 0) {
                raw_fail(&e->w, "Deliver", r);
                return 1;
        }
        if (!e->initiator) {
                r = echo_send(e, word, seq);
                if (r < 0)
                        raw_fail(&e->w, "sd_bus_send (echo)", r);
                return 1;
        }

        uint64_t now = bench_now_nsec();
        unsigned total = e->w.o->warmup + e->w.o->count;

        if ((uint64_t) seq != e->n_done || strcmp(word, BENCH_WORD) != 0) {
                raw_fail(&e->w, "round trip out of order", EBADMSG);
                return 1;
        }
        if (e->n_done >= e->w.o->warmup)
                e->samples[e->n_done - e->w.o->warmup] = now - e->t_sent;
        if (++e->n_done < total) {
                echo_ping(e);
                return 1;
        }

        char fields[512];
        bench_latency_fields(fields, sizeof(fields), "rtt", e->samples, e->w.o->count);
        bench_out("result round_trips=%u %s", e->w.o->count, fields);
        return 1;
}

static void on_go_echo(void *userdata) {
        echo *e = userdata;

        if (e->t_sent == 0)
                echo_ping(e);
}

/* Owns Raw<peer-id>. --to 0: the responder, which echoes to Raw2 (the initiator of case c);
 * otherwise the initiator, which measures round trips to Raw<to>. */
int role_raw_echo(const bench_opts *o) {
        echo e = { .initiator = o->to != 0 };
        char self[64];
        int r;

        /* The responder answers the initiator, peer 2. */
        r = raw_open(&e.w, o, e.initiator ? o->to : 2);
        snprintf(self, sizeof(self), BENCH_RAW_NAME_FMT, o->peer_id);
        if (r >= 0 && e.initiator && !(e.samples = calloc(o->count ? o->count : 1, sizeof(uint64_t))))
                r = -ENOMEM;
        if (r >= 0)
                r = sd_bus_add_filter(e.w.bus, &e.w.match_slot, echo_filter, &e);
        if (r >= 0)
                r = sd_bus_request_name(e.w.bus, self, 0);
        if (r >= 0 && e.initiator)
                r = raw_wait_name(&e.w, e.w.dest);
        if (r >= 0)
                r = raw_attach(&e.w, e.initiator ? on_go_echo : NULL);
        if (r < 0) {
                free(e.samples);
                return raw_setup_failed(&e.w, "raw echo", r);
        }
        bench_out("ready");
        r = raw_run(&e.w);
        bench_final("round_trips=%" PRIu64, e.n_done);
        free(e.samples);
        raw_free(&e.w);
        return r;
}

int role_raw_payload_send(const bench_opts *o) {
        _cleanup_(freep) uint8_t *payload = malloc(o->size ? o->size : 1);
        unsigned i, total = o->warmup + o->count;
        uint64_t t0 = 0, t1;
        raw w;
        int r;

        r = raw_open(&w, o, o->to);
        if (r >= 0 && !payload)
                r = -ENOMEM;
        if (r >= 0)
                r = raw_wait_name(&w, w.dest);
        if (r < 0)
                return raw_setup_failed(&w, "raw payload sender", r);
        bench_payload_fill(payload, o->size);
        bench_out("ready");
        if (bench_control_wait_go() < 0)
                return raw_setup_failed(&w, "raw payload sender", -EPIPE);

        for (i = 0; i < total; i++) {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
                _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
                int ok = 0;

                if (i == o->warmup)
                        t0 = bench_now_nsec();
                bench_payload_stamp(payload, o->size, i);
                r = sd_bus_message_new_method_call(w.bus, &m, w.dest, BENCH_RAW_PATH,
                                                   BENCH_RAW_INTERFACE, "Data");
                if (r >= 0)
                        r = sd_bus_message_append_array(m, 'y', payload, o->size);
                if (r >= 0)
                        r = sd_bus_call(w.bus, m, CALL_TIMEOUT_USEC, &error, &reply);
                if (r >= 0)
                        r = sd_bus_message_read(reply, "b", &ok);
                if (r >= 0 && !ok)
                        r = -EBADMSG;
                if (r < 0) {
                        /* E.g. a payload above the bus's message size limit: say so, go on. */
                        bench_error("Data (%zu bytes): %s%s%s", o->size, strerror(-r),
                                    error.message ? ": " : "", error.message ?: "");
                        break;
                }
        }
        t1 = bench_now_nsec();
        if (r >= 0)
                bench_out("result transfers=%u bytes=%zu start_ns=%" PRIu64 " end_ns=%" PRIu64
                          " hwm_kib=%ld", o->count, o->size, t0, t1, bench_status_kib("VmHWM"));
        bench_control_wait_eof();
        bench_final("transfers=%u", i);
        raw_free(&w);
        return r < 0 ? 1 : 0;
}

/* ---- idle ------------------------------------------------------------------------------- */

static int on_settled(sd_event_source *s, uint64_t usec, void *userdata) {
        bench_out("result rss_kib=%ld anon_kib=%ld file_kib=%ld threads=%ld",
                  bench_status_kib("VmRSS"), bench_status_kib("RssAnon"),
                  bench_status_kib("RssFile"), bench_status_kib("Threads"));
        return 0;
}

/* An idle client that owns a name and serves an object, as a peer does. It links the same
 * libraries as a peer (this very program) and makes GLib do the small things any GVariant
 * user does, so that the difference to an idle peer is what ipchannel itself costs. */
int role_raw_idle(const bench_opts *o) {
        g_autoptr(GHashTable) table = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
        g_autoptr(GVariant) v = g_variant_ref_sink(g_variant_new("(si)", BENCH_WORD, 1));
        char name[64];
        raw w;
        int r;

        g_hash_table_insert(table, g_strdup(BENCH_WORD), v);
        snprintf(name, sizeof(name), BENCH_RAW_NAME_FMT, o->peer_id);
        r = raw_open(&w, o, o->to);
        if (r >= 0)
                r = sd_bus_add_object_vtable(w.bus, &w.vtable_slot, BENCH_RAW_PATH,
                                             BENCH_RAW_INTERFACE, server_vtable, &w);
        if (r >= 0)
                r = sd_bus_request_name(w.bus, name, 0);
        if (r >= 0)
                r = raw_attach(&w, NULL);
        if (r >= 0)
                r = sd_event_add_time_relative(w.event, &w.timer, CLOCK_MONOTONIC,
                                               (uint64_t) o->settle_msec * 1000, 0, on_settled, &w);
        if (r < 0)
                return raw_setup_failed(&w, "raw idle client", r);
        bench_out("ready");
        r = raw_run(&w);
        bench_final("%s", "");
        raw_free(&w);
        return r;
}

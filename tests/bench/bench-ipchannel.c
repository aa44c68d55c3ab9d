/* SPDX-License-Identifier: MIT */
/* The ipchannel side of the benchmarks: peers that send, receive, ping-pong, lock and idle. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ipchannel.h>

#include "bench-util.h"

/*
 * Only the public API is used, so the figures follow whatever the library does inside
 * (batching, cached grants, memfd payloads). Sends are made the way an app makes them: from
 * the channel's own loop, a chunk per iteration, from a defer source that re-arms itself at
 * idle priority, so that the loop (and anything the library schedules on it) runs between
 * chunks.
 */

#define ACK_EVENT "ack"

typedef struct peer {
        const bench_opts *o;
        ipchannel *ch;
        sd_event *event;                /* the channel's loop, borrowed */
        sd_event_source *control, *pump;
        uint32_t to;                    /* where sends go: a peer id or IPCHANNEL_ALL */
        uint32_t wait_for;              /* a peer that must be on the bus before "ready" */
        bool ready, failed, reported;
        void (*on_ready)(struct peer *p);

        /* Receiving "(si)": count, order, first and last arrival. */
        uint64_t n_received, n_bad, t_first, t_last;
        int32_t next_seq;

        /* Sending. */
        uint64_t n_sent, t_start, t_end;

        /* Round trips and transfers. */
        uint64_t *samples;
        uint64_t t_sent;
        uint8_t *payload;
        uint64_t n_done;
} peer;

static void peer_fail(peer *p, const char *what, int r) {
        bench_error("%s: %s", what, strerror(r < 0 ? -r : r));
        p->failed = true;
        ipchannel_exit(p->ch, 1);
}

static void peer_check_ready(peer *p) {
        if (p->ready || !ipchannel_is_connected(p->ch))
                return;
        if (p->wait_for != 0 && ipchannel_has_peer(p->ch, p->wait_for) <= 0)
                return;
        p->ready = true;
        if (p->on_ready)
                p->on_ready(p);
        else
                bench_out("ready");
}

static void on_connect(ipchannel *ch, uint32_t sender, const char *event, GVariant *data,
                       void *userdata) {
        peer_check_ready(userdata);
}

static void on_peer_join(ipchannel *ch, uint32_t sender, const char *event, GVariant *data,
                         void *userdata) {
        peer_check_ready(userdata);
}

static void on_error(ipchannel *ch, uint32_t sender, const char *event, GVariant *data,
                     void *userdata) {
        peer *p = userdata;
        const char *msg = "";
        int32_t code = 0;

        if (data && g_variant_is_of_type(data, G_VARIANT_TYPE("(is)")))
                g_variant_get(data, "(i&s)", &code, &msg);
        bench_error("ipchannel: %s (%d)", msg, code);
        p->failed = true;
}

static void on_disconnect(ipchannel *ch, uint32_t sender, const char *event, GVariant *data,
                          void *userdata) {
        peer *p = userdata;

        bench_error("ipchannel: disconnected from the bus");
        p->failed = true;
}

static int peer_new(peer *p, const bench_opts *o) {
        int r;

        *p = (peer) { .o = o, .to = o->to };
        r = ipchannel_new(&p->ch, o->app);
        if (r < 0)
                return r;
        if (o->peer_id != 0) {
                r = ipchannel_set_peer_id(p->ch, o->peer_id);
                if (r < 0)
                        return r;
        }
        if (o->memfd_threshold >= 0) {
                r = ipchannel_set_memfd_threshold(p->ch, (size_t) o->memfd_threshold);
                if (r < 0)
                        return r;
        }
        if ((r = ipchannel_on(p->ch, IPCHANNEL_EVENT_CONNECT, on_connect, p, NULL)) < 0 ||
            (r = ipchannel_on(p->ch, IPCHANNEL_EVENT_PEER_JOIN, on_peer_join, p, NULL)) < 0 ||
            (r = ipchannel_on(p->ch, IPCHANNEL_EVENT_ERROR, on_error, p, NULL)) < 0 ||
            (r = ipchannel_on(p->ch, IPCHANNEL_EVENT_DISCONNECT, on_disconnect, p, NULL)) < 0)
                return r;
        return 0;
}

/* Connects and takes commands from the conductor on the channel's loop. */
static int peer_connect(peer *p, bench_go_t on_go) {
        int r;

        r = ipchannel_connect(p->ch);
        if (r < 0)
                return r;
        p->event = ipchannel_get_event(p->ch);
        if (!p->event)
                return -ENOTCONN;
        return bench_control_attach(p->event, on_go, p, &p->control);
}

/* Runs the loop until the conductor closes stdin. */
static int peer_run(peer *p) {
        int r = ipchannel_run(p->ch);

        return p->failed || r != 0 ? 1 : 0;
}

static void peer_free(peer *p) {
        p->pump = sd_event_source_disable_unref(p->pump);
        p->control = sd_event_source_disable_unref(p->control);
        p->ch = ipchannel_unref(p->ch);
        free(p->samples);
        free(p->payload);
}

static int setup_failed(peer *p, const char *what, int r) {
        bench_error("%s: %s", what, strerror(-r));
        peer_free(p);
        return 1;
}

/* ---- small messages --------------------------------------------------------------------- */

static void count_message(peer *p, GVariant *data) {
        uint64_t now = bench_now_nsec();
        const char *word;
        int32_t seq;

        if (p->n_received++ == 0)
                p->t_first = now;
        p->t_last = now;
        if (!data || !g_variant_is_of_type(data, G_VARIANT_TYPE("(si)"))) {
                p->n_bad++;
                return;
        }
        g_variant_get(data, "(&si)", &word, &seq);
        if (seq != p->next_seq || strcmp(word, BENCH_WORD) != 0)
                p->n_bad++;
        p->next_seq = seq + 1;
}

static void report_received(peer *p) {
        if (p->reported || p->n_received < p->o->count)
                return;
        p->reported = true;
        bench_out("result received=%" PRIu64 " bad=%" PRIu64 " first_ns=%" PRIu64
                  " last_ns=%" PRIu64, p->n_received, p->n_bad, p->t_first, p->t_last);
}

static void on_message_count(ipchannel *ch, uint32_t sender, const char *event, GVariant *data,
                             void *userdata) {
        peer *p = userdata;

        count_message(p, data);
        report_received(p);
}

static int on_pump(sd_event_source *s, void *userdata) {
        peer *p = userdata;
        uint64_t n = p->o->count - p->n_sent;
        int r;

        if (n > p->o->chunk)
                n = p->o->chunk;
        for (uint64_t i = 0; i < n; i++) {
                r = ipchannel_send(p->ch, p->to,
                                   g_variant_new("(si)", BENCH_WORD, (int32_t) p->n_sent));
                if (r < 0) {
                        peer_fail(p, "ipchannel_send", r);
                        return 0;
                }
                p->n_sent++;
        }
        if (p->n_sent < p->o->count)
                return sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
        p->t_end = bench_now_nsec();
        bench_out("result sent=%" PRIu64 " start_ns=%" PRIu64 " end_ns=%" PRIu64, p->n_sent,
                  p->t_start, p->t_end);
        return 0;
}

static void on_go_pump(void *userdata) {
        peer *p = userdata;
        int r;

        if (p->pump)
                return;
        p->t_start = bench_now_nsec();
        r = sd_event_add_defer(p->event, &p->pump, on_pump, p);
        if (r >= 0)
                r = sd_event_source_set_priority(p->pump, SD_EVENT_PRIORITY_IDLE);
        if (r < 0)
                peer_fail(p, "sd_event_add_defer", r);
}

int role_ipc_recv(const bench_opts *o) {
        peer p;
        int r;

        r = peer_new(&p, o);
        if (r >= 0)
                r = ipchannel_on(p.ch, IPCHANNEL_EVENT_MESSAGE, on_message_count, &p, NULL);
        if (r >= 0)
                r = peer_connect(&p, NULL);
        if (r < 0)
                return setup_failed(&p, "receiver", r);
        r = peer_run(&p);
        bench_final("received=%" PRIu64 " bad=%" PRIu64, p.n_received, p.n_bad);
        peer_free(&p);
        return r;
}

int role_ipc_send(const bench_opts *o) {
        peer p;
        int r;

        r = peer_new(&p, o);
        p.wait_for = o->to;
        if (r >= 0)
                r = peer_connect(&p, on_go_pump);
        if (r < 0)
                return setup_failed(&p, "sender", r);
        r = peer_run(&p);
        bench_final("sent=%" PRIu64, p.n_sent);
        peer_free(&p);
        return r;
}

/* A tight loop of sends before the channel is even connected: they are queued by the library
 * and flushed once it is. Also gives the memory those queued sends take. */
int role_ipc_send_queued(const bench_opts *o) {
        long rss0, rss1, anon0, anon1;
        uint64_t t0, t1;
        peer p;
        int r;

        r = peer_new(&p, o);
        if (r >= 0)
                r = ipchannel_set_queue_max(p.ch, (size_t) o->count + 1);
        if (r < 0)
                return setup_failed(&p, "queued sender", r);
        bench_out("ready");
        if (bench_control_wait_go() < 0)
                return setup_failed(&p, "queued sender", -EPIPE);

        rss0 = bench_status_kib("VmRSS");
        anon0 = bench_status_kib("RssAnon");
        t0 = bench_now_nsec();
        for (unsigned i = 0; i < o->count; i++) {
                r = ipchannel_send(p.ch, o->to, g_variant_new("(si)", BENCH_WORD, (int32_t) i));
                if (r < 0)
                        return setup_failed(&p, "ipchannel_send (queued)", r);
        }
        t1 = bench_now_nsec();
        rss1 = bench_status_kib("VmRSS");
        anon1 = bench_status_kib("RssAnon");
        bench_out("result queued=%u rss_before_kib=%ld rss_after_kib=%ld anon_before_kib=%ld "
                  "anon_after_kib=%ld start_ns=%" PRIu64 " end_ns=%" PRIu64,
                  o->count, rss0, rss1, anon0, anon1, t0, t1);

        r = peer_connect(&p, NULL);
        if (r < 0)
                return setup_failed(&p, "queued sender", r);
        r = peer_run(&p);
        bench_final("queued=%u", o->count);
        peer_free(&p);
        return r;
}

/* One of the peers of the broadcast case; --sender also sends to all. Every peer, the sender
 * included, counts what it receives. */
int role_ipc_bcast(const bench_opts *o) {
        peer p;
        int r;

        r = peer_new(&p, o);
        p.to = IPCHANNEL_ALL;
        if (r >= 0)
                r = ipchannel_on(p.ch, IPCHANNEL_EVENT_MESSAGE, on_message_count, &p, NULL);
        if (r >= 0)
                r = peer_connect(&p, o->sender ? on_go_pump : NULL);
        if (r < 0)
                return setup_failed(&p, "broadcast peer", r);
        r = peer_run(&p);
        bench_final("received=%" PRIu64 " bad=%" PRIu64 " sent=%" PRIu64,
                                 p.n_received, p.n_bad, p.n_sent);
        peer_free(&p);
        return r;
}

/* ---- ping-pong -------------------------------------------------------------------------- */

static void pingpong_send(peer *p) {
        int r;

        p->t_sent = bench_now_nsec();
        r = ipchannel_send(p->ch, p->to, g_variant_new("(si)", BENCH_WORD, (int32_t) p->n_done));
        if (r < 0)
                peer_fail(p, "ipchannel_send", r);
}

static void on_pong(ipchannel *ch, uint32_t sender, const char *event, GVariant *data,
                    void *userdata) {
        peer *p = userdata;
        uint64_t now = bench_now_nsec();
        const char *word;
        int32_t seq;

        if (!data || !g_variant_is_of_type(data, G_VARIANT_TYPE("(si)"))) {
                peer_fail(p, "ping-pong: unexpected reply", EBADMSG);
                return;
        }
        g_variant_get(data, "(&si)", &word, &seq);
        if ((uint64_t) seq != p->n_done || strcmp(word, BENCH_WORD) != 0) {
                peer_fail(p, "ping-pong: reply out of order", EBADMSG);
                return;
        }
        if (p->n_done >= p->o->warmup)
                p->samples[p->n_done - p->o->warmup] = now - p->t_sent;
        if (++p->n_done < (uint64_t) p->o->warmup + p->o->count) {
                pingpong_send(p);
                return;
        }

        char fields[512];
        bench_latency_fields(fields, sizeof(fields), "rtt", p->samples, p->o->count);
        bench_out("result round_trips=%u %s", p->o->count, fields);
}

static void on_ping(ipchannel *ch, uint32_t sender, const char *event, GVariant *data,
                    void *userdata) {
        peer *p = userdata;
        int r;

        /* Echo what came, to whoever sent it. */
        r = ipchannel_send(ch, sender, data);
        if (r < 0)
                peer_fail(p, "ipchannel_send (echo)", r);
}

static void on_go_pingpong(void *userdata) {
        peer *p = userdata;

        if (p->t_sent == 0)
                pingpong_send(p);
}

/* --to 0: the responder, which echoes. Otherwise the initiator, which measures. */
int role_ipc_pingpong(const bench_opts *o) {
        bool initiator = o->to != 0;
        peer p;
        int r;

        r = peer_new(&p, o);
        if (r < 0)
                return setup_failed(&p, "ping-pong peer", r);
        if (initiator) {
                p.wait_for = o->to;
                p.samples = calloc(o->count ? o->count : 1, sizeof(uint64_t));
                if (!p.samples)
                        return setup_failed(&p, "ping-pong peer", -ENOMEM);
        }
        r = ipchannel_on(p.ch, IPCHANNEL_EVENT_MESSAGE, initiator ? on_pong : on_ping, &p, NULL);
        if (r >= 0)
                r = peer_connect(&p, initiator ? on_go_pingpong : NULL);
        if (r < 0)
                return setup_failed(&p, "ping-pong peer", r);
        r = peer_run(&p);
        bench_final("round_trips=%" PRIu64, p.n_done);
        peer_free(&p);
        return r;
}

/* ---- synchronize ------------------------------------------------------------------------ */

static void sync_next(peer *p);

static void sync_body(ipchannel_lock *lock, void *userdata) {
        peer *p = userdata;
        int r = 0;

        if (p->t_start != 0 && !p->o->empty)
                r = bench_counter_increment(p->o->file);
        if (r < 0)
                bench_error("counter: %s", strerror(-r));
        (void) ipchannel_lock_release(lock, r);
}

static void sync_done(ipchannel *ch, int error, void *userdata) {
        peer *p = userdata;

        if (error < 0) {
                peer_fail(p, "synchronize", error);
                return;
        }
        if (p->t_start == 0) {
                /* The warm-up section: the lock service is up and we hold the last grant. */
                bench_out("ready");
                return;
        }
        if (++p->n_done < p->o->count) {
                sync_next(p);
                return;
        }
        p->t_end = bench_now_nsec();
        bench_out("result sections=%" PRIu64 " start_ns=%" PRIu64 " end_ns=%" PRIu64, p->n_done,
                  p->t_start, p->t_end);
}

static void sync_next(peer *p) {
        int r = ipchannel_synchronize(p->ch, p->o->lock, sync_body, sync_done, p);

        if (r < 0)
                peer_fail(p, "ipchannel_synchronize", r);
}

static void sync_on_ready(peer *p) {
        /* One untimed section first, so that the lock service has been found (or taken over)
         * before the conductor says go. */
        sync_next(p);
}

static void on_go_sync(void *userdata) {
        peer *p = userdata;

        if (p->t_start != 0)
                return;
        p->t_start = bench_now_nsec();
        if (p->o->count == 0) {
                bench_out("result sections=0 start_ns=%" PRIu64 " end_ns=%" PRIu64, p->t_start,
                          p->t_start);
                return;
        }
        sync_next(p);
}

/* Critical sections with ipchannel_synchronize(), one after the other, from the loop. */
int role_ipc_sync(const bench_opts *o) {
        peer p;
        int r;

        r = peer_new(&p, o);
        p.on_ready = sync_on_ready;
        if (r >= 0)
                r = peer_connect(&p, on_go_sync);
        if (r < 0)
                return setup_failed(&p, "synchronize peer", r);
        r = peer_run(&p);
        bench_final("sections=%" PRIu64, p.n_done);
        peer_free(&p);
        return r;
}

/* The same with the blocking ipchannel_lock_acquire(), from main(), as a simple program or a
 * worker thread would. */
int role_ipc_acquire(const bench_opts *o) {
        const uint64_t timeout = 60 * 1000 * 1000ULL;
        ipchannel_lock *lock = NULL;
        uint64_t t0, t1;
        unsigned i;
        peer p;
        int r;

        r = peer_new(&p, o);
        if (r >= 0)
                r = ipchannel_connect(p.ch);
        if (r >= 0)
                r = ipchannel_lock_acquire(p.ch, o->lock, timeout, &lock);
        if (r >= 0)
                r = ipchannel_lock_release(lock, 0);
        if (r < 0)
                return setup_failed(&p, "lock warm-up", r);
        bench_out("ready");
        if (bench_control_wait_go() < 0)
                return setup_failed(&p, "acquire", -EPIPE);

        t0 = bench_now_nsec();
        for (i = 0; i < o->count; i++) {
                r = ipchannel_lock_acquire(p.ch, o->lock, timeout, &lock);
                if (r < 0) {
                        bench_error("ipchannel_lock_acquire: %s", strerror(-r));
                        break;
                }
                if (!o->empty)
                        r = bench_counter_increment(o->file);
                if (r >= 0)
                        r = ipchannel_lock_release(lock, 0);
                else
                        (void) ipchannel_lock_release(lock, r);
                if (r < 0) {
                        bench_error("section: %s", strerror(-r));
                        break;
                }
        }
        t1 = bench_now_nsec();
        if (r >= 0)
                bench_out("result sections=%u start_ns=%" PRIu64 " end_ns=%" PRIu64, i, t0, t1);
        bench_control_wait_eof();
        bench_final("sections=%u", i);
        peer_free(&p);
        return r < 0 || p.failed ? 1 : 0;
}

/* ---- payloads --------------------------------------------------------------------------- */

static void payload_send(peer *p) {
        GVariant *v;
        int r;

        bench_payload_stamp(p->payload, p->o->size, p->n_sent);
        v = g_variant_new_from_data(G_VARIANT_TYPE_BYTESTRING, p->payload, p->o->size, TRUE,
                                    NULL, NULL);
        r = ipchannel_send(p->ch, p->to, v);
        if (r < 0) {
                peer_fail(p, "ipchannel_send (payload)", r);
                return;
        }
        p->n_sent++;
}

static void on_ack(ipchannel *ch, uint32_t sender, const char *event, GVariant *data,
                   void *userdata) {
        peer *p = userdata;
        uint64_t index;
        gboolean ok;

        if (!data || !g_variant_is_of_type(data, G_VARIANT_TYPE("(tb)"))) {
                peer_fail(p, "payload: bad ack", EBADMSG);
                return;
        }
        g_variant_get(data, "(tb)", &index, &ok);
        if (!ok || index != p->n_done) {
                peer_fail(p, "payload: the receiver got other bytes than were sent", EBADMSG);
                return;
        }
        if (++p->n_done == p->o->warmup)
                p->t_start = bench_now_nsec();
        if (p->n_done < (uint64_t) p->o->warmup + p->o->count) {
                payload_send(p);
                return;
        }
        p->t_end = bench_now_nsec();
        bench_out("result transfers=%u bytes=%zu start_ns=%" PRIu64 " end_ns=%" PRIu64
                  " hwm_kib=%ld", p->o->count, p->o->size, p->t_start, p->t_end,
                  bench_status_kib("VmHWM"));
}

static void on_go_payload(void *userdata) {
        peer *p = userdata;

        if (p->n_sent != 0)
                return;
        if (p->o->warmup == 0)
                p->t_start = bench_now_nsec();
        payload_send(p);
}

/* Sends --size bytes as "ay", one transfer at a time: the next goes when the receiver has
 * checked the last one. One buffer is reused (only its stamp changes), as an app would send
 * from a buffer it owns. */
int role_ipc_payload_send(const bench_opts *o) {
        peer p;
        int r;

        r = peer_new(&p, o);
        if (r < 0)
                return setup_failed(&p, "payload sender", r);
        p.wait_for = o->to;
        p.payload = malloc(o->size ? o->size : 1);
        if (!p.payload)
                return setup_failed(&p, "payload sender", -ENOMEM);
        bench_payload_fill(p.payload, o->size);
        r = ipchannel_on(p.ch, ACK_EVENT, on_ack, &p, NULL);
        if (r >= 0)
                r = peer_connect(&p, on_go_payload);
        if (r < 0)
                return setup_failed(&p, "payload sender", r);
        r = peer_run(&p);
        bench_final("transfers=%" PRIu64, p.n_done);
        peer_free(&p);
        return r;
}

static void on_payload(ipchannel *ch, uint32_t sender, const char *event, GVariant *data,
                       void *userdata) {
        peer *p = userdata;
        const uint8_t *bytes = NULL;
        gsize n = 0;
        bool ok = false;
        int r;

        if (data && g_variant_is_of_type(data, G_VARIANT_TYPE_BYTESTRING)) {
                bytes = g_variant_get_fixed_array(data, &n, 1);
                ok = n == p->o->size && bench_payload_check(bytes, n, p->n_received);
        }
        if (!ok)
                bench_error("payload %" PRIu64 ": %zu bytes, not the %zu sent", p->n_received,
                            (size_t) n, p->o->size);
        r = ipchannel_emit(ch, sender, ACK_EVENT, g_variant_new("(tb)", p->n_received, ok));
        if (r < 0)
                peer_fail(p, "ipchannel_emit (ack)", r);
        p->n_received++;
}

int role_ipc_payload_recv(const bench_opts *o) {
        peer p;
        int r;

        r = peer_new(&p, o);
        if (r >= 0)
                r = ipchannel_on(p.ch, IPCHANNEL_EVENT_MESSAGE, on_payload, &p, NULL);
        if (r >= 0)
                r = peer_connect(&p, NULL);
        if (r < 0)
                return setup_failed(&p, "payload receiver", r);
        r = peer_run(&p);
        bench_final("transfers=%" PRIu64, p.n_received);
        peer_free(&p);
        return r;
}

/* ---- idle ------------------------------------------------------------------------------- */

static int on_settled(sd_event_source *s, uint64_t usec, void *userdata) {
        bench_out("result rss_kib=%ld anon_kib=%ld file_kib=%ld threads=%ld",
                  bench_status_kib("VmRSS"), bench_status_kib("RssAnon"),
                  bench_status_kib("RssFile"), bench_status_kib("Threads"));
        return 0;
}

static void idle_on_ready(peer *p) {
        int r;

        bench_out("ready");
        r = sd_event_add_time_relative(p->event, &p->pump, CLOCK_MONOTONIC,
                                       (uint64_t) p->o->settle_msec * 1000, 0, on_settled, p);
        if (r < 0)
                peer_fail(p, "sd_event_add_time_relative", r);
}

/* A connected peer that does nothing; its RSS once things have settled. */
int role_ipc_idle(const bench_opts *o) {
        peer p;
        int r;

        r = peer_new(&p, o);
        p.on_ready = idle_on_ready;
        if (r >= 0)
                r = peer_connect(&p, NULL);
        if (r < 0)
                return setup_failed(&p, "idle peer", r);
        r = peer_run(&p);
        bench_final("%s", "");
        peer_free(&p);
        return r;
}

/* SPDX-License-Identifier: MIT */
/* Helpers shared by the benchmark roles: clocks, /proc figures, the conductor's protocol. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <systemd/sd-event.h>

#define _cleanup_(f) __attribute__((cleanup(f)))

static inline void freep(void *p) {
        free(*(void **) p);
}

/*
 * The conductor (tests/bench/run-bench) starts each role as a process of its own and talks to
 * it through pipes:
 *   - role → conductor, on stdout, one line each: "ready" (set up, waiting for "go"),
 *     "result KEY=VALUE ..." (the measured figures), "final KEY=VALUE ..." (printed on the
 *     way out, e.g. peak RSS), "error TEXT" (the case failed).
 *   - conductor → role, on stdin: "go" starts the measured work; EOF asks the role to exit.
 * Roles stay alive after their result until EOF, so that no process leaves the bus (and
 * makes the broker and the other peers do work) while others are still being measured.
 * Times are CLOCK_MONOTONIC, which is comparable across processes.
 */

/* The small message of the messaging cases: a short string and an int, GVariant "(si)". */
#define BENCH_WORD "hello"

/* The raw sd-bus baselines' names. */
#define BENCH_RAW_NAME_FMT "org.ipchannelbench.Raw%u"
#define BENCH_RAW_PATH "/org/ipchannelbench"
#define BENCH_RAW_INTERFACE "org.ipchannelbench.Raw"

typedef struct bench_opts {
        const char *app;        /* ipchannel app name */
        uint32_t peer_id;       /* ipchannel peer id / raw name number */
        uint32_t to;            /* the peer sent to */
        unsigned count;         /* messages, round trips, sections or transfers */
        unsigned warmup;        /* untimed round trips or transfers first */
        unsigned chunk;         /* sends per loop iteration */
        size_t size;            /* payload bytes */
        const char *file;       /* the counter file */
        const char *lock;       /* lock name */
        unsigned settle_msec;   /* idle time before an RSS sample */
        bool sender;            /* this broadcast peer also sends */
        bool empty;             /* critical sections without the counter work */
        int64_t memfd_threshold; /* ipchannel_set_memfd_threshold(), -1: the library's default */
} bench_opts;

uint64_t bench_now_nsec(void);
static inline uint64_t bench_now_usec(void) {
        return bench_now_nsec() / 1000;
}

/* A "kB" field of /proc/self/status (VmRSS, VmHWM, RssAnon, ...), in KiB; -1 if absent. */
long bench_status_kib(const char *field);

void bench_out(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Prints "error TEXT"; the conductor fails the case. */
void bench_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Prints "final" with the process's RSS figures and the role's own fields (fmt may be ""); each
 * role calls it on its way out, so that a role that never finished still says how far it got. */
void bench_final(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* stdin on an sd-event loop: on_go for each "go" line; EOF exits the loop with code 0. */
typedef void (*bench_go_t)(void *userdata);
int bench_control_attach(sd_event *e, bench_go_t on_go, void *userdata,
                         sd_event_source **ret);
/* The same for roles without a loop: blocks until "go" (0) or EOF (-EPIPE). */
int bench_control_wait_go(void);
/* Blocks until EOF. */
void bench_control_wait_eof(void);

/* The critical section's work: read the counter file, write it back plus one. */
int bench_counter_increment(const char *path);

/* Sorts samples (nanoseconds) and prints them as "PREFIX_median=.. PREFIX_p99=.." in µs, with
 * mean, min and max, as part of a result line being built in buf. */
void bench_latency_fields(char *buf, size_t n_buf, const char *prefix, uint64_t *samples,
                          size_t n);

/* Payload bytes: a fixed pattern, with the transfer number in the first 8 bytes. The check
 * reads the number and one byte per page, the way a consumer would touch every page. */
void bench_payload_fill(uint8_t *p, size_t size);
void bench_payload_stamp(uint8_t *p, size_t size, uint64_t index);
bool bench_payload_check(const uint8_t *p, size_t size, uint64_t index);

/* The roles, by file. */
int role_ipc_recv(const bench_opts *o);
int role_ipc_send(const bench_opts *o);
int role_ipc_send_queued(const bench_opts *o);
int role_ipc_bcast(const bench_opts *o);
int role_ipc_pingpong(const bench_opts *o);
int role_ipc_sync(const bench_opts *o);
int role_ipc_acquire(const bench_opts *o);
int role_ipc_payload_send(const bench_opts *o);
int role_ipc_payload_recv(const bench_opts *o);
int role_ipc_idle(const bench_opts *o);

int role_raw_server(const bench_opts *o);
int role_raw_send(const bench_opts *o);
int role_raw_send_queued(const bench_opts *o);
int role_raw_bcast(const bench_opts *o);
int role_raw_pingpong(const bench_opts *o);
int role_raw_echo(const bench_opts *o);
int role_raw_payload_send(const bench_opts *o);
int role_raw_payload_recv(const bench_opts *o);
int role_raw_idle(const bench_opts *o);

int role_unix_pingpong(const bench_opts *o);
int role_flock(const bench_opts *o);
int role_glib_floor(const bench_opts *o);

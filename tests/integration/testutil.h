/* SPDX-License-Identifier: MIT */
/* Helpers for integration tests: test-peer processes driven through pipes. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <systemd/sd-bus.h>

#define PEER_TIMEOUT_MS 10000

/* How many times longer every wait may take: IPCHANNEL_TEST_TIMEOUT_FACTOR (default 1; the
 * valgrind test setup sets 10). The waits of the helpers below (timeout_ms arguments, method
 * calls, polls of the lock service) are scaled already; tests scale their own with these. */
unsigned timeout_factor(void);
int scaled_ms(int ms);
uint64_t scaled_usec(uint64_t usec);

typedef struct peer {
        pid_t pid;
        int in;                 /* its stdin */
        int out;                /* its stdout */
        char buf[1 << 16];
        size_t len;
        bool killed;            /* by the test: an abnormal end is expected */
} peer;

/* ck_assert(expr) without the mark a passing ck_assert() leaves: Check sends its parent
 * process one message for every check that passes, so a loop of a million checks leaves a
 * million messages, which take minutes to read back under valgrind. For hot loops. */
#define assert_quiet(expr)                                                      \
        do {                                                                    \
                if (!(expr))                                                    \
                        ck_abort_msg("Assertion '%s' failed", #expr);           \
        } while (0)

/* Programs start through $IPCHANNEL_TEST_WRAPPER when it is set (valgrind-wrap).
 * Starts test-peer with these arguments (NULL-terminated), extra environment "K=V" entries
 * in env (NULL-terminated, may be NULL). Waits for its "ready" line. */
peer *peer_start_env(const char *const *env, const char *arg, ...) __attribute__((sentinel));
#define peer_start(...) peer_start_env(NULL, __VA_ARGS__, NULL)

/* Starts any program the same way; waits for a line starting with `ready`. */
peer *proc_start(const char *path, const char *ready, const char *arg, ...) __attribute__((sentinel));
peer *proc_start_env(const char *path, const char *ready, const char *const *env, const char *arg, ...)
        __attribute__((sentinel));

void peer_cmd(peer *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Reads lines until one starts with prefix; returns it (static buffer, valid until the next
 * call) or NULL on timeout (timeout_ms, scaled) or EOF. Lines skipped are remembered for peer_saw(). */
const char *peer_expect(peer *p, const char *prefix, int timeout_ms);

/* Like peer_expect(), but only looks at the next line. */
const char *peer_next_line(peer *p, int timeout_ms);

/* The id from the "connect N" line. */
unsigned peer_wait_connect(peer *p);

/* Returns true if no line starting with prefix arrives within ms. */
bool peer_quiet(peer *p, const char *prefix, int ms);

void peer_kill(peer *p, int sig);
/* Waits for exit; returns the exit status, or -1 if it had to be killed. */
int peer_wait(peer *p, int timeout_ms);
void peer_free(peer *p);

/* Ends every peer still running (call at the end of each test): closes its stdin, which
 * makes test-peer exit cleanly, and fails the test if one then exits with an error (a
 * sanitizer's report, for one); kills what does not exit in time. */
void peers_cleanup(void);

/* The private bus's address (from DBUS_SESSION_BUS_ADDRESS). */
const char *bus_address(void);

/* CLOCK_MONOTONIC, in microseconds. */
uint64_t now_usec(void);

/* A plain connection to the private bus. */
sd_bus *raw_bus(void);
/* A raw client that may hold locks of app: it queues for the service name, as lock agents do
 * (the service accepts no one else). */
sd_bus *lock_client(const char *app);
/* Calls member of app's lock service (types may be NULL); sd_bus_call()'s result. */
int call_lock(sd_bus *bus, const char *app, const char *member, sd_bus_error *error,
              sd_bus_message **reply, const char *types, ...);
/* How many wait for lock, as app's service lists them; -1 if it cannot say. */
int n_waiters(const char *app, const char *lock);
/* Waits until n wait for lock (fails the test if that does not come). */
void wait_waiters(const char *app, const char *lock, int n);
/* Waits until app's lock service is up and out of recovery. */
void wait_service_ready(const char *app);

/* SPDX-License-Identifier: MIT */
/* Helpers for integration tests: test-peer processes driven through pipes. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <check.h>

#include <glib.h>

#include "testutil.h"

#ifndef TEST_PEER_PATH
#error "TEST_PEER_PATH must name the test-peer binary"
#endif

#define MAX_PEERS 64

static peer *peers[MAX_PEERS];

static long long now_ms(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

unsigned timeout_factor(void) {
        static unsigned factor;

        if (factor == 0) {
                const char *e = getenv("IPCHANNEL_TEST_TIMEOUT_FACTOR");
                unsigned long f = e ? strtoul(e, NULL, 10) : 1;

                factor = f >= 1 && f <= 1000 ? (unsigned) f : 1;
        }
        return factor;
}

int scaled_ms(int ms) {
        return ms * (int) timeout_factor();
}

uint64_t scaled_usec(uint64_t usec) {
        return usec * timeout_factor();
}

/* $IPCHANNEL_TEST_WRAPPER (tests/harness/valgrind-wrap under meson test --setup valgrind)
 * runs every process a test starts: under valgrind memcheck, an error or a definite leak is
 * logged for with-bus to find, which fails the test. */
static peer *proc_startv(const char *path, const char *ready, const char *const *env, const char *arg,
                         va_list ap) {
        const char *argv[64], *wrapper = getenv("IPCHANNEL_TEST_WRAPPER");
        int in[2], out[2];
        size_t n = 0;
        peer *p;

        if (wrapper && wrapper[0])
                argv[n++] = wrapper;
        argv[n++] = path;

        for (const char *a = arg; a && n < 63; a = va_arg(ap, const char *))
                argv[n++] = a;
        argv[n] = NULL;

        ck_assert_int_eq(pipe2(in, O_CLOEXEC), 0);
        ck_assert_int_eq(pipe2(out, O_CLOEXEC), 0);

        p = calloc(1, sizeof(*p));
        ck_assert_ptr_nonnull(p);
        p->pid = fork();
        ck_assert_int_ge(p->pid, 0);
        if (p->pid == 0) {
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                dup2(in[0], STDIN_FILENO);
                dup2(out[1], STDOUT_FILENO);
                for (size_t i = 0; env && env[i]; i++)
                        putenv((char *) env[i]);
                execvp(argv[0], (char **) argv);
                _exit(127);
        }
        close(in[0]);
        close(out[1]);
        p->in = in[1];
        p->out = out[0];

        for (size_t i = 0; i < MAX_PEERS; i++)
                if (!peers[i]) {
                        peers[i] = p;
                        break;
                }

        ck_assert_msg(peer_expect(p, ready, PEER_TIMEOUT_MS), "%s did not start", path);
        return p;
}

peer *peer_start_env(const char *const *env, const char *arg, ...) {
        va_list ap;
        peer *p;

        va_start(ap, arg);
        p = proc_startv(TEST_PEER_PATH, "ready", env, arg, ap);
        va_end(ap);
        return p;
}

peer *proc_start(const char *path, const char *ready, const char *arg, ...) {
        va_list ap;
        peer *p;

        va_start(ap, arg);
        p = proc_startv(path, ready, NULL, arg, ap);
        va_end(ap);
        return p;
}

peer *proc_start_env(const char *path, const char *ready, const char *const *env, const char *arg, ...) {
        va_list ap;
        peer *p;

        va_start(ap, arg);
        p = proc_startv(path, ready, env, arg, ap);
        va_end(ap);
        return p;
}

void peer_cmd(peer *p, const char *fmt, ...) {
        char line[4096];
        va_list ap;
        int n;

        va_start(ap, fmt);
        n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
        va_end(ap);
        ck_assert(n > 0 && (size_t) n < sizeof(line) - 1);
        line[n++] = '\n';
        ck_assert_int_eq(write(p->in, line, (size_t) n), n);
}

/* The next line, or NULL at deadline (now_ms()) or EOF. */
static const char *next_line_until(peer *p, long long deadline) {
        static char line[sizeof(p->buf)];

        for (;;) {
                char *nl = memchr(p->buf, '\n', p->len);
                if (nl) {
                        size_t k = (size_t) (nl - p->buf);
                        memcpy(line, p->buf, k);
                        line[k] = '\0';
                        memmove(p->buf, nl + 1, p->len - k - 1);
                        p->len -= k + 1;
                        return line;
                }

                long long left = deadline - now_ms();
                if (left <= 0 || p->len == sizeof(p->buf))
                        return NULL;
                struct pollfd pfd = { .fd = p->out, .events = POLLIN };
                int r = poll(&pfd, 1, (int) left);
                if (r < 0 && errno == EINTR)
                        continue;
                if (r <= 0)
                        return NULL;
                ssize_t k = read(p->out, p->buf + p->len, sizeof(p->buf) - p->len);
                if (k <= 0)
                        return NULL;
                p->len += (size_t) k;
        }
}

const char *peer_next_line(peer *p, int timeout_ms) {
        return next_line_until(p, now_ms() + scaled_ms(timeout_ms));
}

const char *peer_expect(peer *p, const char *prefix, int timeout_ms) {
        long long deadline = now_ms() + scaled_ms(timeout_ms);

        for (;;) {
                const char *line = next_line_until(p, deadline);

                if (!line)
                        return NULL;
                if (strncmp(line, prefix, strlen(prefix)) == 0)
                        return line;
        }
}

bool peer_quiet(peer *p, const char *prefix, int ms) {
        return peer_expect(p, prefix, ms) == NULL;
}

unsigned peer_wait_connect(peer *p) {
        const char *line = peer_expect(p, "connect ", PEER_TIMEOUT_MS);

        ck_assert_msg(line, "peer %d did not connect", (int) p->pid);
        return (unsigned) strtoul(line + 8, NULL, 10);
}

void peer_kill(peer *p, int sig) {
        if (p->pid > 0) {
                p->killed = true;
                kill(p->pid, sig);
        }
}

int peer_wait(peer *p, int timeout_ms) {
        long long deadline = now_ms() + scaled_ms(timeout_ms);
        int status;

        if (p->pid <= 0)
                return -1;
        for (;;) {
                pid_t r = waitpid(p->pid, &status, WNOHANG);
                if (r == p->pid) {
                        p->pid = 0;
                        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
                }
                if (now_ms() > deadline) {
                        kill(p->pid, SIGKILL);
                        waitpid(p->pid, &status, 0);
                        p->pid = 0;
                        return -1;
                }
                usleep(2000);
        }
}

void peer_free(peer *p) {
        if (!p)
                return;
        if (p->pid > 0) {
                kill(p->pid, SIGKILL);
                waitpid(p->pid, NULL, 0);
        }
        if (p->in >= 0)
                close(p->in);
        close(p->out);
        for (size_t i = 0; i < MAX_PEERS; i++)
                if (peers[i] == p)
                        peers[i] = NULL;
        free(p);
}

void peers_cleanup(void) {
        int bad = 0;

        for (size_t i = 0; i < MAX_PEERS; i++)
                if (peers[i] && peers[i]->pid > 0 && !peers[i]->killed)
                        close(peers[i]->in), peers[i]->in = -1;
        for (size_t i = 0; i < MAX_PEERS; i++) {
                peer *p = peers[i];
                if (!p)
                        continue;
                if (p->pid > 0 && !p->killed) {
                        int status = peer_wait(p, 5000);
                        if (status != 0) {
                                fprintf(stderr, "a peer ended with status %d\n", status);
                                bad++;
                        }
                }
                peer_free(p);
        }
        ck_assert_msg(bad == 0, "%d peer(s) did not exit cleanly", bad);
}

const char *bus_address(void) {
        const char *a = getenv("DBUS_SESSION_BUS_ADDRESS");

        ck_assert_msg(a && a[0], "DBUS_SESSION_BUS_ADDRESS is not set: run under tests/harness/with-bus");
        return a;
}

uint64_t now_usec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000ULL + (uint64_t) ts.tv_nsec / 1000;
}

sd_bus *raw_bus(void) {
        sd_bus *bus = NULL;

        ck_assert_int_ge(sd_bus_new(&bus), 0);
        ck_assert_int_ge(sd_bus_set_address(bus, bus_address()), 0);
        ck_assert_int_ge(sd_bus_set_bus_client(bus, 1), 0);
        ck_assert_int_ge(sd_bus_start(bus), 0);
        return bus;
}

static void locks_name_and_path(const char *app, char *name, char *path, size_t size) {
        snprintf(name, size, "org.ipchannel.%s.Locks", app);
        snprintf(path, size, "/org/ipchannel/%s/Locks", app);
}

sd_bus *lock_client(const char *app) {
        sd_bus *bus = raw_bus();
        char name[256], path[256];

        locks_name_and_path(app, name, path, sizeof(name));
        ck_assert_int_ge(sd_bus_request_name(bus, name, SD_BUS_NAME_QUEUE), 0);
        return bus;
}

int call_lock(sd_bus *bus, const char *app, const char *member, sd_bus_error *error,
              sd_bus_message **reply, const char *types, ...) {
        sd_bus_message *m = NULL;
        char name[256], path[256];
        va_list ap;
        int r;

        locks_name_and_path(app, name, path, sizeof(name));
        ck_assert_int_ge(sd_bus_message_new_method_call(bus, &m, name, path, "org.ipchannel.LockService1",
                                                        member),
                         0);
        if (types) {
                va_start(ap, types);
                r = sd_bus_message_appendv(m, types, ap);
                va_end(ap);
                ck_assert_int_ge(r, 0);
        }
        r = sd_bus_call(bus, m, scaled_usec(10 * 1000 * 1000), error, reply);
        sd_bus_message_unref(m);
        return r;
}

int n_waiters(const char *app, const char *lock) {
        sd_bus_error error = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        sd_bus *bus = raw_bus();
        const char *l, *holder;
        uint64_t token, left;
        int n = -1;

        if (call_lock(bus, app, "ListLocks", &error, &reply, NULL) >= 0) {
                ck_assert_int_ge(sd_bus_message_enter_container(reply, 'a', "(ssttas)"), 0);
                while (sd_bus_message_enter_container(reply, 'r', "ssttas") > 0) {
                        char **waiters = NULL;

                        ck_assert_int_ge(sd_bus_message_read(reply, "sstt", &l, &holder, &token, &left), 0);
                        ck_assert_int_ge(sd_bus_message_read_strv(reply, &waiters), 0);
                        if (strcmp(l, lock) == 0)
                                n = waiters ? (int) g_strv_length(waiters) : 0;   /* sd-bus: NULL when empty */
                        g_strfreev(waiters);
                        ck_assert_int_ge(sd_bus_message_exit_container(reply), 0);
                }
        }
        sd_bus_error_free(&error);
        sd_bus_message_unref(reply);
        sd_bus_flush_close_unref(bus);
        return n;
}

void wait_waiters(const char *app, const char *lock, int n) {
        for (int k = 0; k < scaled_ms(500) && n_waiters(app, lock) != n; k++)
                usleep(10 * 1000);
        ck_assert_int_eq(n_waiters(app, lock), n);
}

void wait_service_ready(const char *app) {
        sd_bus *bus = raw_bus();
        char name[256], path[256];
        int recovering = 1;

        locks_name_and_path(app, name, path, sizeof(name));
        for (int k = 0; k < scaled_ms(500); k++) {
                sd_bus_error error = SD_BUS_ERROR_NULL;
                int r = sd_bus_get_property_trivial(bus, name, path, "org.ipchannel.LockService1", "Recovering",
                                                    &error, 'b', &recovering);
                sd_bus_error_free(&error);
                if (r >= 0 && !recovering) {
                        sd_bus_flush_close_unref(bus);
                        return;
                }
                usleep(10 * 1000);
        }
        ck_abort_msg("the lock service of %s did not come up", app);
}

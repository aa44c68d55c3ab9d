/* SPDX-License-Identifier: MIT */
/*
 * A profiling aid, not part of any case: preloaded into a process (LD_PRELOAD), it records when
 * each epoll_wait(), ppoll(), recvmsg() and sendmsg() call it makes through libc begins and
 * ends, and writes them out when the process exits, one line per call:
 *
 *     KIND START_NS END_NS RESULT        (KIND: wait, recv, send)
 *
 * after a first line of "#" and its command line, to $IPCHANNEL_SYSCALL_CLOCK_DIR/PID.txt (no
 * file without that variable). tests/bench/syscall-gaps reads them back: how long a process
 * takes from a message's arrival to its answer's going out, and how long each of those system
 * calls takes. Times come from the TSC
 * on x86-64 (calibrated against CLOCK_MONOTONIC at start; a clock_gettime() may itself be a
 * system call in a virtual machine), from CLOCK_MONOTONIC elsewhere. Only the main thread's
 * calls are kept (an ipchannel peer's lock agent thread waits on a loop of its own), at most
 * 1,000,000 of them, and written out only when the main thread exits; a forked child starts
 * with none. Only those four calls are timed: a loop that waits with poll() or epoll_pwait2(),
 * or a connection that writes with writev(), leaves no records.
 */
#include <dlfcn.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <x86intrin.h>
#endif

#define CALLS_MAX 1000000

enum { KIND_WAIT, KIND_RECV, KIND_SEND };
static const char *const kind_name[] = { "wait", "recv", "send" };

typedef struct call {
        uint64_t start, end;
        long result;
        int kind;
} call;

static call *calls;
static size_t n_calls;
static __thread bool main_thread;
static pid_t pid;
static double ns_per_tick = 1.0;

static uint64_t monotonic_ns(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

static uint64_t ticks(void) {
#if defined(__x86_64__)
        return __rdtsc();
#else
        return monotonic_ns();
#endif
}

static void record(int kind, uint64_t start, long result) {
        if (calls && main_thread && n_calls < CALLS_MAX)
                calls[n_calls++] = (call) { .start = start, .end = ticks(), .result = result, .kind = kind };
}

static void forget(void) {
        n_calls = 0;
        pid = getpid();
}

static void resolve_all(void);

__attribute__((constructor)) static void start(void) {
        resolve_all();
        if (!getenv("IPCHANNEL_SYSCALL_CLOCK_DIR"))
                return;
#if defined(__x86_64__)
        uint64_t t0 = monotonic_ns(), c0 = ticks();
        usleep(20 * 1000);
        uint64_t t1 = monotonic_ns(), c1 = ticks();
        if (c1 > c0)
                ns_per_tick = (double) (t1 - t0) / (double) (c1 - c0);
#endif
        calls = calloc(CALLS_MAX, sizeof(call));
        main_thread = true;
        pid = getpid();
        (void) pthread_atfork(NULL, NULL, forget);
}

__attribute__((destructor)) static void finish(void) {
        const char *dir = getenv("IPCHANNEL_SYSCALL_CLOCK_DIR");
        char path[4096];
        FILE *f;

        if (!calls || !dir || !main_thread)
                return;
        snprintf(path, sizeof(path), "%s/%ld.txt", dir, (long) pid);
        f = fopen(path, "we");
        if (f) {
                /* First line: "#" and the command line, to tell the processes apart. */
                FILE *c = fopen("/proc/self/cmdline", "re");
                int ch;

                fputc('#', f);
                while (c && (ch = fgetc(c)) != EOF)
                        fputc(ch ? ch : ' ', f);
                if (c)
                        fclose(c);
                fputc('\n', f);
                for (size_t i = 0; i < n_calls; i++)
                        fprintf(f, "%s %.0f %.0f %ld\n", kind_name[calls[i].kind],
                                (double) calls[i].start * ns_per_tick, (double) calls[i].end * ns_per_tick,
                                calls[i].result);
                fclose(f);
        }
        free(calls);
        calls = NULL;
}

/* Defines the libc function `name` as a call of the next definition (libc's), timed; the
 * pointers to those are all looked up at start, before any thread runs. */
#define TIMED(kind, ret_type, name, params, args)                               \
        static __typeof__(&name) next_##name;                                   \
        ret_type name params {                                                  \
                uint64_t t = ticks();                                           \
                ret_type r = next_##name args;                                  \
                                                                                \
                record(kind, t, (long) r);                                      \
                return r;                                                       \
        }

TIMED(KIND_WAIT, int, epoll_wait, (int epfd, struct epoll_event *events, int maxevents, int timeout),
      (epfd, events, maxevents, timeout))
TIMED(KIND_WAIT, int, ppoll,
      (struct pollfd *fds, nfds_t nfds, const struct timespec *timeout, const sigset_t *sigmask),
      (fds, nfds, timeout, sigmask))
TIMED(KIND_RECV, ssize_t, recvmsg, (int fd, struct msghdr *msg, int flags), (fd, msg, flags))
TIMED(KIND_SEND, ssize_t, sendmsg, (int fd, const struct msghdr *msg, int flags), (fd, msg, flags))

static void resolve_all(void) {
        next_epoll_wait = (__typeof__(next_epoll_wait)) dlsym(RTLD_NEXT, "epoll_wait");
        next_ppoll = (__typeof__(next_ppoll)) dlsym(RTLD_NEXT, "ppoll");
        next_recvmsg = (__typeof__(next_recvmsg)) dlsym(RTLD_NEXT, "recvmsg");
        next_sendmsg = (__typeof__(next_sendmsg)) dlsym(RTLD_NEXT, "sendmsg");
}

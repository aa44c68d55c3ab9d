/* SPDX-License-Identifier: MIT */
/* ipchannel run: runs a command while holding a cluster-wide lock, like flock(1) for a fleet. */
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "names.h"
#include "tool.h"

/*
 * The grant belongs to the bus connection of the library's lock agent in this process, so it
 * ends when the tool releases it after CMD, or when the tool dies for any reason (the kernel
 * closes the connection and the lock service sees it go). Conversely CMD must not outlive the
 * tool and run unprotected: it gets SIGTERM when the tool dies (PR_SET_PDEATHSIG).
 *
 * Signals: while waiting for the lock, SIGINT, SIGTERM and SIGHUP end the tool as they would
 * end any program (it dies by the signal; the waiting request goes with its connection).
 * While CMD runs they are passed on to CMD, except those the terminal sent to its whole
 * foreground process group, which CMD got itself; the tool exits when CMD does.
 */

#define LEASE_POLL_USEC (100 * 1000ULL)

static const char *arg_lock;
static uint64_t arg_timeout_usec = UINT64_MAX;  /* wait for ever, like flock(1) */
static uint64_t arg_lease_usec;                 /* 0: no lease, CMD may run as long as it needs */
static char **arg_cmd;

typedef struct runner {
        ipchannel_lock *lock;
        pid_t pid;              /* CMD, 0 before it starts */
        bool exited;
        int status;             /* CMD's exit status as a shell gives it */
        bool lease_lost;
} runner;

static void help(void) {
        printf("Usage: ipchannel [--app NAME] run LOCK [--timeout SEC] [--lease SEC] [--] CMD [ARG...]\n"
               "\n"
               "Runs CMD while this process holds the app's cluster-wide lock LOCK, like\n"
               "flock(1) across every process of the app: it waits for LOCK (first come, first\n"
               "served, with every other holder of the app's lock of that name), runs CMD, and\n"
               "releases LOCK when CMD ends. It exits with CMD's exit status, or 128+N when CMD\n"
               "was killed by signal N, as a shell does.\n"
               "\n"
               "The lock is released at once when CMD ends, and also when this tool dies in\n"
               "any way (its bus connection closes); if the tool dies CMD gets SIGTERM, since\n"
               "it would no longer be protected. SIGTERM and SIGHUP sent to the tool while CMD\n"
               "runs are passed on to CMD. CMD gets IPCHANNEL_LOCK (the lock's name) and\n"
               "IPCHANNEL_LOCK_TOKEN (the grant's fencing token, which increases with every\n"
               "grant) in its environment.\n"
               "\n"
               "Options:\n"
               "  -w, --timeout SEC  give up (exit status 4) if LOCK is not granted within SEC\n"
               "                     seconds (default: wait for ever); SEC may be a fraction\n"
               "      --lease SEC    ask for a lease of SEC seconds: if CMD still runs when it\n"
               "                     runs out, the lock service takes the lock back, and the\n"
               "                     tool stops CMD with SIGTERM and exits with status 4\n"
               "                     (default: no lease, CMD may run as long as it needs)\n"
               "  -a, --app NAME     the app (default: $IPCHANNEL_APP)\n"
               "      --user         use the user bus\n"
               "      --system       use the system bus\n"
               "  -h, --help         show this help\n"
               "\n"
               "Options may come before or after LOCK; everything after \"--\", or from the\n"
               "first word after LOCK that is not an option, is CMD and its arguments.\n"
               "\n"
               "Exit status: CMD's exit status once it has started (126: CMD cannot be\n"
               "executed, 127: CMD not found). Before that: 1 failure, 2 bad usage, 4 the lock\n"
               "was not granted within --timeout, 5 bus failure. 4 also when the lease ran out\n"
               "while CMD ran.\n");
}

static int parse_options(int argc, char *argv[], bool *want_help) {
        enum { ARG_LEASE = ARG_COMMON_MAX };
        static const struct option options[] = {
                COMMON_OPTIONS,
                { "timeout", required_argument, NULL, 'w' },
                { "lease", required_argument, NULL, ARG_LEASE },
                {}
        };
        int c, r;

        /* "+": stop at LOCK, and then at CMD, whose options are its own. */
        optind = 0;
        while ((c = getopt_long(argc, argv, "+" COMMON_SHORTOPTS "w:", options, NULL)) >= 0) {
                r = tool_parse_common_option(c, optarg, want_help);
                if (r < 0)
                        return r;
                if (r > 0)
                        continue;
                switch (c) {
                case 'w':
                        if (tool_parse_seconds(optarg, &arg_timeout_usec) < 0 || arg_timeout_usec == 0) {
                                tool_usage_error("run", "invalid --timeout \"%s\": seconds, more than 0",
                                                 optarg);
                                return -EINVAL;
                        }
                        break;
                case ARG_LEASE:
                        if (tool_parse_seconds(optarg, &arg_lease_usec) < 0 || arg_lease_usec == 0) {
                                tool_usage_error("run", "invalid --lease \"%s\": seconds, more than 0",
                                                 optarg);
                                return -EINVAL;
                        }
                        break;
                default:
                        return tool_bad_option("run", c, argv);
                }
        }
        return 0;
}

static int parse_argv(int argc, char *argv[]) {
        bool want_help = false;
        char **rest;
        int n_rest;

        if (parse_options(argc, argv, &want_help) < 0)
                return -EINVAL;
        if (!want_help && optind < argc) {
                /* Options may follow LOCK: parse again from there, LOCK in the place of argv[0]. */
                arg_lock = argv[optind];
                rest = argv + optind;
                n_rest = argc - optind;
                if (parse_options(n_rest, rest, &want_help) < 0)
                        return -EINVAL;
                arg_cmd = rest + optind;
                if (optind >= n_rest)
                        arg_cmd = NULL;
        }
        if (want_help) {
                help();
                return 0;
        }
        if (!arg_lock) {
                tool_usage_error("run", "run needs LOCK and CMD");
                return -EINVAL;
        }
        if (names_check_lock(arg_lock) < 0) {
                tool_usage_error("run", "invalid LOCK \"%s\": 1 to 255 bytes of UTF-8", arg_lock);
                return -EINVAL;
        }
        if (!arg_cmd) {
                tool_usage_error("run", "no CMD given: ipchannel run LOCK -- CMD [ARG...]");
                return -EINVAL;
        }
        if (tool_require_app("run") < 0)
                return -EINVAL;
        return 1;
}

static int on_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        runner *run = userdata;
        int sig = (int) si->ssi_signo;
        sigset_t mask;

        if (run->pid == 0 || run->exited) {
                /* Still waiting for the lock: end as the signal would end any program. */
                signal(sig, SIG_DFL);
                sigemptyset(&mask);
                sigaddset(&mask, sig);
                pthread_sigmask(SIG_UNBLOCK, &mask, NULL);
                raise(sig);
                _exit(128 + sig);       /* not reached */
        }
        /* The terminal sends SIGINT (Ctrl-C) and SIGHUP to the whole foreground process
         * group: CMD has its own copy, and a second one would mean "press again" to some. */
        if (si->ssi_code == SI_KERNEL)
                return 0;
        (void) kill(run->pid, sig);
        return 0;
}

static int on_child(sd_event_source *s, const siginfo_t *si, void *userdata) {
        runner *run = userdata;

        run->exited = true;
        run->status = si->si_code == CLD_EXITED ? si->si_status : 128 + si->si_status;
        return 0;
}

static int on_lease_poll(sd_event_source *s, uint64_t usec, void *userdata) {
        runner *run = userdata;

        /* The library tells the blocking form of a lost grant only at release; the token
         * reads 0 as soon as the agent has heard of it. */
        if (ipchannel_lock_get_token(run->lock) == 0) {
                run->lease_lost = true;
                tool_warn("the lease on lock \"%s\" ran out while CMD ran; stopping CMD (SIGTERM)",
                          arg_lock);
                (void) kill(run->pid, SIGTERM);
                return 0;
        }
        (void) sd_event_source_set_time_relative(s, LEASE_POLL_USEC);
        return sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
}

/* The child: the process has threads (the lock agent), so between fork() and exec only
 * async-signal-safe calls are made; the environment is built before the fork, and an exec
 * failure is told to the parent through error_fd, which the exec closes when it works. */
static _Noreturn void exec_cmd(pid_t parent, char **envp, int error_fd) {
        sigset_t mask;
        int e;

        /* CMD starts with the signal mask a shell would give it. */
        sigemptyset(&mask);
        sigprocmask(SIG_SETMASK, &mask, NULL);
        if (prctl(PR_SET_PDEATHSIG, SIGTERM) < 0 || getppid() != parent)
                _exit(EXIT_FAILURE);    /* the tool is already gone: so is the lock */

        execvpe(arg_cmd[0], arg_cmd, envp);
        e = errno;
        (void) !write(error_fd, &e, sizeof(e));
        _exit(e == ENOENT ? 127 : 126);
}

/* Starts CMD with IPCHANNEL_LOCK and IPCHANNEL_LOCK_TOKEN in its environment. */
static int start_cmd(runner *run, uint64_t token) {
        g_auto(GStrv) envp = g_get_environ();
        pid_t parent = getpid();
        char buf[32];
        int fds[2], e = 0;
        ssize_t n;

        snprintf(buf, sizeof(buf), "%" PRIu64, token);
        envp = g_environ_setenv(envp, "IPCHANNEL_LOCK", arg_lock, TRUE);
        envp = g_environ_setenv(envp, "IPCHANNEL_LOCK_TOKEN", buf, TRUE);
        if (pipe2(fds, O_CLOEXEC) < 0)
                return -errno;

        fflush(NULL);
        run->pid = fork();
        if (run->pid < 0) {
                e = errno;
                safe_close(fds[0]);
                safe_close(fds[1]);
                return -e;
        }
        if (run->pid == 0)
                exec_cmd(parent, envp, fds[1]);

        safe_close(fds[1]);
        do
                n = read(fds[0], &e, sizeof(e));
        while (n < 0 && errno == EINTR);
        safe_close(fds[0]);
        /* CMD's status says it (126 or 127); this says why. */
        if (n == sizeof(e))
                tool_fail(e == ENOENT ? 127 : 126, "cannot run %s: %s", arg_cmd[0], strerror(e));
        return 0;
}

static int acquire_exit_code(int r) {
        switch (r) {
        case -ETIMEDOUT:
                return EXIT_TIMEOUT;
        case -ECONNREFUSED:
        case -ECONNRESET:
        case -ENOENT:
        case -EACCES:
        case -EPERM:
        case -ENOTCONN:
                return EXIT_BUS;
        default:
                return EXIT_FAILURE;
        }
}

/* Why the lock was refused, in words that say more than strerror() of the library's errno. */
static const char *acquire_error_text(int r) {
        switch (r) {
        case -EACCES:
                return "access denied (the lock service or the bus policy does not serve this user)";
        case -ENOBUFS:
                return "the lock service's limits are reached (too many waiters for this lock, or too "
                       "many locks held or awaited by one connection)";
        default:
                return strerror(-r);
        }
}

int verb_run(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        _cleanup_(sd_event_source_unrefp) sd_event_source *child = NULL, *poll = NULL;
        g_autoptr(ipchannel) ch = NULL;
        runner run = {};
        int r;

        r = parse_argv(argc, argv);
        if (r <= 0)
                return r < 0 ? EXIT_USAGE : EXIT_SUCCESS;

        if (tool_open_bus(&bus) < 0)
                return EXIT_BUS;
        tool_block_signals();   /* before the lock agent's thread starts */
        r = sd_event_new(&e);
        if (r >= 0)
                r = sd_event_add_signal(e, NULL, SIGINT, on_signal, &run);
        if (r >= 0)
                r = sd_event_add_signal(e, NULL, SIGTERM, on_signal, &run);
        if (r >= 0)
                r = sd_event_add_signal(e, NULL, SIGHUP, on_signal, &run);
        if (r >= 0)
                r = tool_channel_new(bus, e, &ch);
        if (r >= 0)
                r = ipchannel_set_sync_timeout(ch, arg_lease_usec);
        if (r < 0)
                return tool_fail(EXIT_FAILURE, "cannot set up the channel: %s", strerror(-r));

        /* No peer id is needed to take a lock: the channel is not connected, only its lock
         * agent is. The wait runs our loop, so the signal sources above work meanwhile. */
        r = ipchannel_lock_acquire(ch, arg_lock, arg_timeout_usec, &run.lock);
        if (r == -ETIMEDOUT)
                return tool_fail(EXIT_TIMEOUT, "timed out waiting for lock \"%s\" of app %s", arg_lock,
                                 arg_app);
        if (r < 0)
                return tool_fail(acquire_exit_code(r), "cannot take lock \"%s\" of app %s: %s", arg_lock,
                                 arg_app, acquire_error_text(r));

        r = start_cmd(&run, ipchannel_lock_get_token(run.lock));
        if (r < 0) {
                (void) ipchannel_lock_release(run.lock, 0);
                return tool_fail(EXIT_FAILURE, "cannot start %s: %s", arg_cmd[0], strerror(-r));
        }

        r = sd_event_add_child(e, &child, run.pid, WEXITED, on_child, &run);
        if (r >= 0 && arg_lease_usec > 0)
                r = sd_event_add_time_relative(e, &poll, CLOCK_MONOTONIC, LEASE_POLL_USEC, 0, on_lease_poll,
                                               &run);
        if (r < 0) {
                /* Without a way to see CMD end we cannot hold the lock for it. */
                (void) kill(run.pid, SIGTERM);
                (void) waitpid(run.pid, NULL, 0);
                (void) ipchannel_lock_release(run.lock, 0);
                return tool_fail(EXIT_FAILURE, "cannot watch %s: %s", arg_cmd[0], strerror(-r));
        }
        while (!run.exited) {
                r = sd_event_run(e, UINT64_MAX);
                if (r < 0) {
                        /* Same as dying: CMD must not go on without the lock. */
                        (void) kill(run.pid, SIGTERM);
                        (void) waitpid(run.pid, NULL, 0);
                        (void) ipchannel_lock_release(run.lock, 0);
                        return tool_fail(EXIT_FAILURE, "event loop failed: %s", strerror(-r));
                }
        }

        r = ipchannel_lock_release(run.lock, 0);
        if (run.lease_lost || r == -ETIME)
                return tool_fail(EXIT_TIMEOUT,
                                 "lock \"%s\" was not held to the end of %s: its lease ran out "
                                 "(%s exited with status %d)",
                                 arg_lock, arg_cmd[0], arg_cmd[0], run.status);
        return run.status;
}

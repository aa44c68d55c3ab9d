/* SPDX-License-Identifier: MIT */
/* test-locker: runs critical sections on a shared counter file, under a cluster lock or not. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include <ipchannel.h>

/*
 * Each section reads the counter from FILE, waits a little (so that unprotected sections
 * really do interleave), and writes it back plus one. An overlap detector brackets the
 * section: it creates FILE.inside with O_EXCL on entry and removes it on exit; finding it
 * already there means two sections overlap.
 *
 * Modes: sync (ipchannel_synchronize), acquire (ipchannel_lock_acquire), none (no lock),
 * serve (no sections: it only runs, so that it hosts the lock service; with --max-locks and
 * --max-waiters, ipchannel_set_lock_limits()).
 * Output: "started"; with --verbose, "enter TOKEN USEC" and "leave TOKEN USEC" around each
 * section (CLOCK_MONOTONIC, comparable across processes); "done SECTIONS OVERLAPS".
 * --hold-usec makes each section last longer; --pause-file F makes the first section (or the
 * --pause-section'th) wait, holding the lock, until F exists (so tests can kill a holder at a
 * known moment). --gap-usec waits between sections, outside the lock. --linger: after "done",
 * keeps running (and keeps a parked grant) until stdin closes.
 *
 * Tokens: a section under the same grant as the one before (a re-take of a parked grant) sees
 * the same token; a new grant sees a higher one; a lower one is reported as tokens-went-back.
 */

static const char *arg_app = "locker";
static const char *arg_file;
static const char *arg_lock = "counter";
static const char *arg_mode = "sync";
static unsigned arg_count = 100;
static unsigned arg_hold_usec = 50;
static uint64_t arg_lease_usec = 5 * 1000 * 1000ULL;
static const char *arg_hold_file;
static unsigned arg_hold_section = 1;
static unsigned arg_gap_usec;
static bool arg_linger;
static uint32_t arg_max_locks, arg_max_waiters;
static bool arg_verbose;

static unsigned n_done, n_overlaps;
static uint64_t last_token;
static bool token_went_back;

static void out(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
static void out(const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        vprintf(fmt, ap);
        va_end(ap);
        putchar('\n');
        fflush(stdout);
}

static long read_counter(void) {
        char buf[64] = "";
        int fd = open(arg_file, O_RDONLY | O_CLOEXEC);
        ssize_t n;

        if (fd < 0)
                return 0;
        n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        return n > 0 ? strtol(buf, NULL, 10) : 0;
}

static void write_counter(long v) {
        char buf[64];
        int fd = open(arg_file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        int n = snprintf(buf, sizeof(buf), "%ld\n", v);

        if (fd < 0 || write(fd, buf, (size_t) n) != n) {
                perror("test-locker: write");
                exit(EXIT_FAILURE);
        }
        close(fd);
}

static uint64_t now_usec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000ULL + (uint64_t) ts.tv_nsec / 1000;
}

static void section(uint64_t token) {
        g_autofree char *inside = g_strdup_printf("%s.inside", arg_file);
        int fd = open(inside, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);

        if (arg_verbose)
                out("enter %" PRIu64 " %" PRIu64, token, now_usec());
        if (fd < 0)
                n_overlaps++;
        else
                close(fd);
        if (token != 0) {
                if (token < last_token)
                        token_went_back = true;
                last_token = token;
        }

        long v = read_counter();
        if (arg_hold_file && n_done + 1 == arg_hold_section) {
                out("holding %" PRIu64, token);
                while (access(arg_hold_file, F_OK) < 0)
                        usleep(1000);
        }
        usleep(arg_hold_usec);
        write_counter(v + 1);

        if (fd >= 0)
                unlink(inside);
        n_done++;
        if (arg_verbose)
                out("leave %" PRIu64 " %" PRIu64, token, now_usec());
}

static ipchannel *ch;
static void next_sync(void);

static int on_gap(sd_event_source *s, uint64_t usec, void *userdata) {
        next_sync();
        return 0;
}

static void on_done(ipchannel *c, int error, void *userdata) {
        if (error < 0) {
                out("error %d %s", error, strerror(-error));
                ipchannel_exit(c, EXIT_FAILURE);
                return;
        }
        if (arg_gap_usec > 0 && n_done < arg_count)
                (void) sd_event_add_time_relative(ipchannel_get_event(c), NULL, CLOCK_MONOTONIC, arg_gap_usec,
                                                  1, on_gap, NULL);     /* accuracy 0 would be 250 ms */
        else
                next_sync();
}

static void body(ipchannel_lock *lock, void *userdata) {
        section(ipchannel_lock_get_token(lock));
        ipchannel_lock_release(lock, 0);
}

static void next_sync(void) {
        int r;

        if (n_done >= arg_count) {
                ipchannel_exit(ch, EXIT_SUCCESS);
                return;
        }
        r = ipchannel_synchronize(ch, arg_lock, body, on_done, NULL);
        if (r < 0) {
                out("error %d %s", r, strerror(-r));
                ipchannel_exit(ch, EXIT_FAILURE);
        }
}

static int parse_argv(int argc, char *argv[]) {
        static const struct option options[] = {
                { "app", required_argument, NULL, 'a' },
                { "file", required_argument, NULL, 'f' },
                { "lock", required_argument, NULL, 'l' },
                { "mode", required_argument, NULL, 'm' },
                { "count", required_argument, NULL, 'n' },
                { "hold-usec", required_argument, NULL, 'u' },
                { "lease-usec", required_argument, NULL, 'L' },
                { "pause-file", required_argument, NULL, 'p' },
                { "pause-section", required_argument, NULL, 'P' },
                { "gap-usec", required_argument, NULL, 'g' },
                { "linger", no_argument, NULL, 'G' },
                { "max-locks", required_argument, NULL, 'M' },
                { "max-waiters", required_argument, NULL, 'W' },
                { "verbose", no_argument, NULL, 'v' },
                {}
        };
        int c;

        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0)
                switch (c) {
                case 'a': arg_app = optarg; break;
                case 'f': arg_file = optarg; break;
                case 'l': arg_lock = optarg; break;
                case 'm': arg_mode = optarg; break;
                case 'n': arg_count = (unsigned) strtoul(optarg, NULL, 10); break;
                case 'u': arg_hold_usec = (unsigned) strtoul(optarg, NULL, 10); break;
                case 'L': arg_lease_usec = strtoull(optarg, NULL, 10); break;
                case 'p': arg_hold_file = optarg; break;
                case 'P': arg_hold_section = (unsigned) strtoul(optarg, NULL, 10); break;
                case 'g': arg_gap_usec = (unsigned) strtoul(optarg, NULL, 10); break;
                case 'G': arg_linger = true; break;
                case 'M': arg_max_locks = (uint32_t) strtoul(optarg, NULL, 10); break;
                case 'W': arg_max_waiters = (uint32_t) strtoul(optarg, NULL, 10); break;
                case 'v': arg_verbose = true; break;
                default: return -EINVAL;
                }
        if (!arg_file) {
                fprintf(stderr, "test-locker: --file is required\n");
                return -EINVAL;
        }
        return 0;
}

int main(int argc, char *argv[]) {
        int r = 0;

        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (parse_argv(argc, argv) < 0)
                return 2;
        if (ipchannel_new(&ch, arg_app) < 0)
                return 1;
        ipchannel_set_sync_timeout(ch, arg_lease_usec);
        if ((arg_max_locks > 0 || arg_max_waiters > 0) &&
            ipchannel_set_lock_limits(ch, arg_max_locks, arg_max_waiters) < 0)
                return 1;
        if (ipchannel_connect(ch) < 0)
                return 1;
        out("started");

        if (strcmp(arg_mode, "serve") == 0) {
                char c;

                while (read(STDIN_FILENO, &c, 1) > 0)
                        ;
                ch = ipchannel_unref(ch);
                return 0;
        } else if (strcmp(arg_mode, "none") == 0)
                for (unsigned i = 0; i < arg_count; i++)
                        section(0);
        else if (strcmp(arg_mode, "acquire") == 0)
                for (unsigned i = 0; i < arg_count; i++) {
                        ipchannel_lock *lock = NULL;

                        r = ipchannel_lock_acquire(ch, arg_lock, 30 * 1000 * 1000ULL, &lock);
                        if (r < 0) {
                                out("error %d %s", r, strerror(-r));
                                break;
                        }
                        section(ipchannel_lock_get_token(lock));
                        r = ipchannel_lock_release(lock, 0);
                        if (r < 0) {
                                out("error %d %s", r, strerror(-r));
                                break;
                        }
                        if (arg_gap_usec > 0)
                                usleep(arg_gap_usec);
                }
        else {
                next_sync();
                r = ipchannel_run(ch);
                r = r == EXIT_SUCCESS ? 0 : -EIO;
        }

        out("done %u %u%s", n_done, n_overlaps, token_went_back ? " tokens-went-back" : "");
        if (arg_linger) {
                char c;

                while (read(STDIN_FILENO, &c, 1) > 0)
                        ;
        }
        ch = ipchannel_unref(ch);
        return r < 0 ? 1 : 0;
}

/* SPDX-License-Identifier: MIT */
/* Baselines without a bus: a socketpair ping-pong between two processes, flock(2) sections, and
 * the bench's own GLib work per message. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <glib.h>

#include "bench-util.h"

/* The size of "(si)" with a short string, as it would be framed on a stream. */
#define PING_BYTES 16

static int read_full(int fd, void *buf, size_t n) {
        size_t done = 0;

        while (done < n) {
                ssize_t k = read(fd, (char *) buf + done, n - done);

                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        return k == 0 ? -EPIPE : -errno;
                done += (size_t) k;
        }
        return 0;
}

static int write_full(int fd, const void *buf, size_t n) {
        size_t done = 0;

        while (done < n) {
                ssize_t k = write(fd, (const char *) buf + done, n - done);

                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0)
                        return -errno;
                done += (size_t) k;
        }
        return 0;
}

static _Noreturn void echo_child(int fd) {
        char buf[PING_BYTES];

        prctl(PR_SET_PDEATHSIG, SIGKILL);
        while (read_full(fd, buf, sizeof(buf)) >= 0)
                if (write_full(fd, buf, sizeof(buf)) < 0)
                        break;
        _exit(0);
}

/* The floor for any round trip between two processes on this machine. */
int role_unix_pingpong(const bench_opts *o) {
        _cleanup_(freep) uint64_t *samples = calloc(o->count ? o->count : 1, sizeof(uint64_t));
        unsigned i, total = o->warmup + o->count;
        char buf[PING_BYTES], back[PING_BYTES];
        char fields[512];
        int sv[2], r = 0;
        pid_t pid;

        if (!samples)
                return 1;
        bench_out("ready");
        if (bench_control_wait_go() < 0)
                return 1;
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
                bench_error("socketpair: %s", strerror(errno));
                return 1;
        }
        pid = fork();
        if (pid < 0) {
                bench_error("fork: %s", strerror(errno));
                return 1;
        }
        if (pid == 0) {
                close(sv[0]);
                echo_child(sv[1]);
        }
        close(sv[1]);

        memset(buf, 0, sizeof(buf));
        memcpy(buf, BENCH_WORD, sizeof(BENCH_WORD));
        for (i = 0; i < total; i++) {
                uint64_t t0 = bench_now_nsec();

                memcpy(buf + 12, &i, sizeof(i));
                r = write_full(sv[0], buf, sizeof(buf));
                if (r >= 0)
                        r = read_full(sv[0], back, sizeof(back));
                if (r >= 0 && memcmp(buf, back, sizeof(buf)) != 0)
                        r = -EBADMSG;
                if (r < 0) {
                        bench_error("socketpair ping-pong: %s", strerror(-r));
                        break;
                }
                if (i >= o->warmup)
                        samples[i - o->warmup] = bench_now_nsec() - t0;
        }
        close(sv[0]);
        (void) waitpid(pid, NULL, 0);
        if (r >= 0) {
                bench_latency_fields(fields, sizeof(fields), "rtt", samples, o->count);
                bench_out("result round_trips=%u %s", o->count, fields);
        }
        bench_control_wait_eof();
        bench_final("round_trips=%u", i);
        return r < 0 ? 1 : 0;
}

/* The same critical sections as ipc-sync, under flock(2) on the counter file. */
int role_flock(const bench_opts *o) {
        uint64_t t0, t1;
        unsigned i;
        int fd, r = 0;

        if (!o->file) {
                bench_error("flock: --file is required (the lock is taken on it)");
                return 2;
        }
        fd = open(o->file, O_RDONLY | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0) {
                bench_error("open %s: %s", o->file, strerror(errno));
                return 1;
        }
        bench_out("ready");
        if (bench_control_wait_go() < 0) {
                close(fd);
                return 1;
        }
        t0 = bench_now_nsec();
        for (i = 0; i < o->count; i++) {
                /* The lock belongs to this open file description, so the section's own opens
                 * and closes of the same file do not drop it (unlike fcntl locks). */
                if (flock(fd, LOCK_EX) < 0) {
                        r = -errno;
                        break;
                }
                if (!o->empty)
                        r = bench_counter_increment(o->file);
                if (flock(fd, LOCK_UN) < 0 && r >= 0)
                        r = -errno;
                if (r < 0)
                        break;
        }
        t1 = bench_now_nsec();
        close(fd);
        if (r < 0)
                bench_error("flock section: %s", strerror(-r));
        else
                bench_out("result sections=%u start_ns=%" PRIu64 " end_ns=%" PRIu64, i, t0, t1);
        bench_control_wait_eof();
        bench_final("sections=%u", i);
        return r < 0 ? 1 : 0;
}

/* What the bench's own peers do with GLib for each message of case (a), without a bus or a
 * library between them: the sender's g_variant_new(), and at the receiver one GVariant per
 * payload taken from a serialized array (the least any library handing out GVariants builds)
 * and the handler's type check and g_variant_get(). Each side's time per message bounds what
 * that side can do: no channel that hands GVariants to the app moves more messages per
 * second than the slower side allows, whatever it does in between. */
int role_glib_floor(const bench_opts *o) {
        const unsigned n = o->count ? o->count : 1, per_array = 256;
        g_autoptr(GPtrArray) built = g_ptr_array_new_with_free_func((GDestroyNotify) g_variant_unref);
        g_autoptr(GVariant) array = NULL;
        uint64_t t0, t_send, t_recv;
        uint64_t bad = 0;

        bench_out("ready");
        if (bench_control_wait_go() < 0)
                return 1;

        /* Sender: a payload per message, handed over (here: dropped) as a send drops its ref. */
        t0 = bench_now_nsec();
        for (unsigned i = 0; i < n; i++) {
                GVariant *v = g_variant_ref_sink(g_variant_new("(si)", BENCH_WORD, (int32_t) i));

                if (i < per_array)
                        g_ptr_array_add(built, v);
                else
                        g_variant_unref(v);
        }
        t_send = bench_now_nsec() - t0;

        /* Receiver: the payloads of a packed "a(si)", one instance each, then the handler. */
        {
                g_autoptr(GVariant) tree = g_variant_ref_sink(
                        g_variant_new_array(NULL, (GVariant **) built->pdata, built->len));

                array = g_variant_get_normal_form(tree);        /* serialized, as received */
        }
        t0 = bench_now_nsec();
        for (unsigned i = 0; i < n; i++) {
                g_autoptr(GVariant) v = g_variant_get_child_value(array, i % per_array);
                const char *word;
                int32_t seq;

                if (!g_variant_is_of_type(v, G_VARIANT_TYPE("(si)"))) {
                        bad++;
                        continue;
                }
                g_variant_get(v, "(&si)", &word, &seq);
                if ((unsigned) seq != i % per_array || strcmp(word, BENCH_WORD) != 0)
                        bad++;
        }
        t_recv = bench_now_nsec() - t0;
        bench_out("result messages=%u bad=%" PRIu64 " sender_ns=%" PRIu64 " receiver_ns=%" PRIu64, n,
                  bad, t_send, t_recv);
        return bad == 0 ? 0 : 1;
}

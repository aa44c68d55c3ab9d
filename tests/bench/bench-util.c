/* SPDX-License-Identifier: MIT */
/* Helpers shared by the benchmark roles: clocks, /proc figures, the conductor's protocol. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench-util.h"

#define PAGE 4096u

uint64_t bench_now_nsec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000000ULL + (uint64_t) ts.tv_nsec;
}

long bench_status_kib(const char *field) {
        char line[256];
        size_t n = strlen(field);
        long v = -1;
        FILE *f = fopen("/proc/self/status", "re");

        if (!f)
                return -1;
        while (fgets(line, sizeof(line), f))
                if (strncmp(line, field, n) == 0 && line[n] == ':') {
                        v = strtol(line + n + 1, NULL, 10);
                        break;
                }
        fclose(f);
        return v;
}

static void out_va(const char *prefix, const char *fmt, va_list ap)
        __attribute__((format(printf, 2, 0)));
static void out_va(const char *prefix, const char *fmt, va_list ap) {
        /* One write per line: the conductor reads lines, and stdio must not hold one back. */
        char buf[4096];
        int n = snprintf(buf, sizeof(buf), "%s", prefix);

        n += vsnprintf(buf + n, sizeof(buf) - (size_t) n - 1, fmt, ap);
        if (n > (int) sizeof(buf) - 2)
                n = (int) sizeof(buf) - 2;
        buf[n++] = '\n';
        fflush(stdout);
        (void) !write(STDOUT_FILENO, buf, (size_t) n);
}

void bench_out(const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        out_va("", fmt, ap);
        va_end(ap);
}

void bench_error(const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        out_va("error ", fmt, ap);
        va_end(ap);
}

void bench_final(const char *fmt, ...) {
        char extra[1024];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(extra, sizeof(extra), fmt, ap);
        va_end(ap);
        bench_out("final rss_kib=%ld hwm_kib=%ld anon_kib=%ld file_kib=%ld shmem_kib=%ld %s",
                  bench_status_kib("VmRSS"), bench_status_kib("VmHWM"),
                  bench_status_kib("RssAnon"), bench_status_kib("RssFile"),
                  bench_status_kib("RssShmem"), extra);
}

typedef struct control {
        bench_go_t on_go;
        void *userdata;
        char buf[256];
        size_t n;
} control;

static void control_free(void *userdata) {
        free(userdata);
}

static int on_control(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        control *c = userdata;
        ssize_t k;
        char *nl;

        k = read(fd, c->buf + c->n, sizeof(c->buf) - 1 - c->n);
        if (k < 0 && (errno == EAGAIN || errno == EINTR))
                return 0;
        if (k <= 0) {
                /* EOF (or a broken pipe): the conductor wants us gone. */
                sd_event_source_set_enabled(s, SD_EVENT_OFF);
                return sd_event_exit(sd_event_source_get_event(s), 0);
        }
        c->n += (size_t) k;
        c->buf[c->n] = '\0';
        while ((nl = strchr(c->buf, '\n'))) {
                *nl = '\0';
                if (strcmp(c->buf, "go") == 0 && c->on_go)
                        c->on_go(c->userdata);
                c->n -= (size_t) (nl + 1 - c->buf);
                memmove(c->buf, nl + 1, c->n + 1);
        }
        if (c->n >= sizeof(c->buf) - 1)
                c->n = 0;       /* a line this long is no command of ours */
        return 0;
}

int bench_control_attach(sd_event *e, bench_go_t on_go, void *userdata,
                         sd_event_source **ret) {
        control *c = calloc(1, sizeof(*c));
        int r;

        if (!c)
                return -ENOMEM;
        *c = (control) { .on_go = on_go, .userdata = userdata };
        r = sd_event_add_io(e, ret, STDIN_FILENO, EPOLLIN, on_control, c);
        if (r < 0) {
                free(c);
                return r;
        }
        (void) sd_event_source_set_destroy_callback(*ret, control_free);
        (void) sd_event_source_set_description(*ret, "bench-control");
        return 0;
}

int bench_control_wait_go(void) {
        char line[64];
        size_t n = 0;
        char c;

        for (;;) {
                ssize_t k = read(STDIN_FILENO, &c, 1);

                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        return -EPIPE;
                if (c != '\n') {
                        if (n < sizeof(line) - 1)
                                line[n++] = c;
                        continue;
                }
                line[n] = '\0';
                if (strcmp(line, "go") == 0)
                        return 0;
                n = 0;
        }
}

void bench_control_wait_eof(void) {
        char buf[64];

        for (;;) {
                ssize_t k = read(STDIN_FILENO, buf, sizeof(buf));

                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        return;
        }
}

int bench_counter_increment(const char *path) {
        /* The same file operations as tests/integration/test-locker: a fresh open for the read
         * and one for the write, as a program updating a small state file would do. */
        char buf[64] = "";
        long v = 0;
        ssize_t k;
        int fd, n;

        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
                k = read(fd, buf, sizeof(buf) - 1);
                close(fd);
                if (k > 0)
                        v = strtol(buf, NULL, 10);
        }
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0)
                return -errno;
        n = snprintf(buf, sizeof(buf), "%ld\n", v + 1);
        k = write(fd, buf, (size_t) n);
        close(fd);
        return k == n ? 0 : -EIO;
}

static int cmp_u64(const void *a, const void *b) {
        uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;

        return x < y ? -1 : x > y;
}

void bench_latency_fields(char *buf, size_t n_buf, const char *prefix, uint64_t *samples,
                          size_t n) {
        double sum = 0;
        size_t p99;

        if (n == 0) {
                snprintf(buf, n_buf, "%s_n=0", prefix);
                return;
        }
        qsort(samples, n, sizeof(*samples), cmp_u64);
        for (size_t i = 0; i < n; i++)
                sum += (double) samples[i];
        /* Nearest rank: the smallest sample with at least 99% of samples at or below it. */
        p99 = (n * 99 + 99) / 100;
        p99 = p99 == 0 ? 0 : p99 - 1;
        snprintf(buf, n_buf,
                 "%1$s_n=%2$zu %1$s_median_us=%3$.2f %1$s_p99_us=%4$.2f %1$s_mean_us=%5$.2f "
                 "%1$s_min_us=%6$.2f %1$s_max_us=%7$.2f",
                 prefix, n,
                 n % 2 ? samples[n / 2] / 1e3 : (samples[n / 2 - 1] + samples[n / 2]) / 2e3,
                 samples[p99] / 1e3, sum / (double) n / 1e3, samples[0] / 1e3,
                 samples[n - 1] / 1e3);
}

static uint8_t pattern_at(size_t i) {
        return (uint8_t) ((i * 131u + (i >> 12)) & 0xffu);
}

void bench_payload_fill(uint8_t *p, size_t size) {
        for (size_t i = 0; i < size; i++)
                p[i] = pattern_at(i);
}

void bench_payload_stamp(uint8_t *p, size_t size, uint64_t index) {
        if (size >= sizeof(index))
                memcpy(p, &index, sizeof(index));
}

bool bench_payload_check(const uint8_t *p, size_t size, uint64_t index) {
        uint64_t got;

        if (size < sizeof(index))
                return true;
        memcpy(&got, p, sizeof(got));
        if (got != index)
                return false;
        for (size_t i = PAGE - 1; i < size; i += PAGE)
                if (p[i] != pattern_at(i))
                        return false;
        return p[size - 1] == pattern_at(size - 1);
}

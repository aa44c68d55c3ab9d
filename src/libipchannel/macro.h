/* SPDX-License-Identifier: MIT */
/* Small helpers shared by the library's modules: visibility, cleanup and ownership. */
#pragma once

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define _public_ __attribute__((visibility("default")))
#define _cleanup_(f) __attribute__((cleanup(f)))
#define _unused_ __attribute__((unused))
#define _fallthrough_ __attribute__((fallthrough))

/* Hands ownership over: returns the pointer and clears the variable that held it. */
#define TAKE_PTR(p)                                  \
        ({                                           \
                __typeof__(p) *_pp = &(p);           \
                __typeof__(p) _p = *_pp;             \
                *_pp = NULL;                         \
                _p;                                  \
        })

/* The same for an fd. */
#define TAKE_FD(fd)                                  \
        ({                                           \
                int *_pfd = &(fd);                   \
                int _fd = *_pfd;                     \
                *_pfd = -1;                          \
                _fd;                                 \
        })

static inline void freep(void *p) {
        free(*(void **) p);
}

static inline int safe_close(int fd) {
        if (fd >= 0)
                close(fd);
        return -1;
}

static inline void closep(int *fd) {
        safe_close(*fd);
}

/* Checks a public entry point's argument; returns err from the caller when it fails. */
#define assert_return(expr, err)           \
        do {                               \
                if (__builtin_expect(!(expr), 0)) \
                        return (err);      \
        } while (0)

/* Now on clock, in microseconds. */
static inline uint64_t clock_usec(clockid_t clock) {
        struct timespec ts;

        clock_gettime(clock, &ts);
        return (uint64_t) ts.tv_sec * 1000000ULL + (uint64_t) ts.tv_nsec / 1000;
}

/* SPDX-License-Identifier: MIT */
/* Payloads: GVariant values to and from D-Bus message variants. Pure: no bus I/O. */
#pragma once

#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>

#include <glib.h>
#include <systemd/sd-bus.h>

/* Deepest nesting of containers (arrays, structs, dict entries, variants) a payload may have,
 * counting the variant that carries it. The D-Bus specification allows 64 in a message; the
 * message body of Deliver/Broadcast adds none beyond the carrying variant. */
#define PAYLOAD_DEPTH_MAX 64

/* Most values (each basic value, container and variant; a whole array of a fixed-size type
 * counts once) read from one message by default: what another process can make a receiver
 * build. A channel may set its own bound (ipchannel_set_values_max()). */
#define PAYLOAD_VALUES_MAX (1024u * 1024)

/* 0 if values of this type can travel over D-Bus, else -EINVAL and, when ret_reason is not
 * NULL, a static reason (maybe types, the empty tuple "()", dict entries outside arrays,
 * indefinite types, signatures longer than 255 bytes, arrays or structs and dict entries nested
 * more than 32 deep in one signature, nesting deeper than PAYLOAD_DEPTH_MAX).
 * A "v" in the type passes: what a variant holds is known only from a value, and is checked
 * by payload_append_variant(). */
int payload_check_type(const GVariantType *type, const char **ret_reason);

/* As payload_check_type(), and also the types of the variants nested inside value, which its
 * declared type cannot tell. What passes can be appended by payload_append_variant(). */
int payload_check_value(GVariant *value, const char **ret_reason);
/* The same, taking one from *budget (when not NULL) for each value the walk into variants
 * visits (only values whose type holds a "v" are walked): -ENOBUFS, with a reason, when more
 * are needed than *budget holds. */
int payload_check_value_budget(GVariant *value, size_t *budget, const char **ret_reason);

/* Appends one D-Bus variant ("v") holding value; a floating value is consumed. value must pass
 * payload_check_type(), and so must the contents of every variant nested in it, counting their
 * depth from the carrying variant: -EINVAL otherwise.
 * A "h" value is an fd number in this process; the message keeps a duplicate.
 * sd-bus refuses some values GLib allows, with its own error: strings holding Unicode
 * noncharacters (U+FDD0..U+FDEF, U+xFFFE, U+xFFFF) and signature values D-Bus does not accept
 * (-EINVAL), "h" values that are not open fds (-EBADF, or -EINVAL if negative), any "h" on a
 * connection that cannot pass fds (-EOPNOTSUPP). A value in normal form up to 128 KiB is
 * appended from its serialized bytes; GLib takes bytes it was told to trust
 * (g_variant_new_from_data() with trusted TRUE) as normal without looking, so such bytes that
 * are not may give -EINVAL (what cannot be read) or be appended as GLib would read them.
 * After an error m is half written: discard it. */
int payload_append_variant(sd_bus_message *m, GVariant *value);
/* The same for a value whose own type has passed payload_check_type() already (a send checks
 * it when it is made): only the variants nested inside it are checked here. built: value was
 * most likely just built in memory, as a tree of GVariants (a caller that handed it over
 * floating has usually just made it with g_variant_new() and the like): it is then walked
 * with GLib's accessors rather than serialized first. For a value in normal form either way
 * gives the same message, and the hint only picks the cheaper walk (a wrong one costs a copy,
 * or a GVariant per child); bytes GLib was told to trust that are not in normal form are read
 * by the walk as GLib's accessors read them, and may be refused (-EINVAL) otherwise. */
int payload_append_checked_variant(sd_bus_message *m, GVariant *value, bool built);

/* Reads one D-Bus variant ("v") at the message's read position into a new (non-floating)
 * GVariant. A "h" value becomes the number of an fd owned by the message: valid only while
 * the message lives. Errors: -EBADMSG for malformed or too deeply nested input (the value
 * comes from another process: everything about it is checked), -ENXIO if the message is not
 * at a variant (then nothing was read), -ENOBUFS if it holds more than PAYLOAD_VALUES_MAX
 * values. On other errors *ret is untouched and the read position is unspecified.
 * The value is one serialized GVariant in normal form (trusted): a child taken out of it keeps
 * the whole payload's bytes alive, as with any serialized GVariant. */
int payload_read_variant(sd_bus_message *m, GVariant **ret);

/* As payload_read_variant(), with the values built taken from *budget, which the caller shares
 * among the variants of one message (start it at PAYLOAD_VALUES_MAX): -ENOBUFS when it runs
 * out. */
int payload_read_variant_budget(sd_bus_message *m, size_t *budget, GVariant **ret);

/* ---- payloads in sealed memfds --------------------------------------------------------------
 * A large payload travels as its GVariant serialization (native byte order: both ends are on one
 * host) in a memfd that its sender sealed against any change, so the receiver can map it and
 * wrap it without a copy (or read it, when that costs less). */

/* A payload memfd up to this size is read into memory (one copy) rather than mapped: unmapping
 * it again costs a TLB shootdown on every CPU that runs one of the process's threads (every
 * channel has its lock agent's), which cost more than the copy (in a virtual machine a 128 KiB
 * memfd took 0.47 ms, two thirds of it in munmap; read, 0.16 ms). Larger ones are mapped. */
#define PAYLOAD_MEMFD_READ_MAX (4u * 1024 * 1024)

/* The seals a payload memfd must carry: with these, the sender can neither change the bytes nor
 * shrink the file under the receiver's mapping (which would fault it). */
#define PAYLOAD_MEMFD_SEALS (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL)

/* Whether value holds unix fds ("h"), in its type or in a variant nested in it: such values
 * cannot travel in a memfd, which carries bytes only. Walks only where a variant can hide. */
bool payload_has_handles(GVariant *value);

/* A copy of value (not floating) whose unix fds ("h") are duplicates of value's, made now
 * (close-on-exec), each also appended to fds: a send that waits keeps the files it was given,
 * whatever the caller does with its own fds meanwhile. A negative errno if one cannot be
 * duplicated (-EBADF: not an open fd); then none is kept. */
int payload_dup_handles(GVariant *value, GArray *fds, GVariant **ret);

/* A new sealed memfd (close-on-exec) holding value's serialized bytes; the caller owns the fd.
 * Negative errno on failure (-ENOSYS where the kernel has no memfds). */
int payload_memfd_new(GVariant *value, int *ret_fd);

/* Why payload_memfd_map() refused an fd: each maps to its own error for the sender. */
typedef enum {
        PAYLOAD_MEMFD_OK,
        PAYLOAD_MEMFD_NOT_MEMFD,        /* not a sealable shared-memory file (a pipe, a socket, ...) */
        PAYLOAD_MEMFD_NOT_SEALED,       /* a memfd missing one of PAYLOAD_MEMFD_SEALS */
        PAYLOAD_MEMFD_TOO_LARGE,        /* larger than the receiver accepts */
        PAYLOAD_MEMFD_EMPTY,            /* no bytes: no sender makes one */
        PAYLOAD_MEMFD_BAD_TYPE,         /* the type string is no type that can travel */
        PAYLOAD_MEMFD_TOO_MANY_VALUES,  /* walking its variants takes more than values_max values */
} payload_memfd_status;

/* Maps the sealed memfd fd read-only and returns a new (non-floating) GVariant of type_string
 * over the mapping, without a copy (up to PAYLOAD_MEMFD_READ_MAX: reads it into memory); the
 * mapping or copy goes with the last reference. The bytes are
 * another process's: they are wrapped as untrusted (GLib reads malformed data as default values,
 * never out of bounds), a type holding "h" is refused (fd indexes mean nothing in a memfd), and
 * the variants nested in the value are checked as payload_check_value_budget() does, with at
 * most values_max values walked. fd stays the caller's. Returns 0, or -EBADMSG with *ret_status
 * and a static reason saying why the fd or the value is refused, or another negative errno
 * (mmap failure, out of memory). */
int payload_memfd_map(int fd, const char *type_string, uint64_t size_max, size_t values_max,
                      GVariant **ret, payload_memfd_status *ret_status, const char **ret_reason);

/* ---- packed batches ----------------------------------------------------------------------
 * Several payloads as one GVariant array in GVariant's own serialization (host byte order),
 * carried as a D-Bus "ay" beside its element type (a "g"): "aT" when every payload has type T,
 * the common case of a stream of one kind of message, else "av" of the payloads each in a
 * variant (also when T is "v": element "v" always means wrapped). A receiver builds no value per
 * D-Bus element: the bytes are checked once and wrapped as they are. Payloads holding fds
 * cannot be packed. */

/* Returns the packed form of values[0..n) (n >= 1; each passed payload_check_value() and holds
 * no fd), and in *ret_element_type the element type to send with it (a string that lives as
 * long as values[0]). */
GBytes *payload_pack(GVariant *const *values, size_t n, const char **ret_element_type);
/* Appends the same as (g element, ay batch) to m, serialized in place. */
int payload_append_packed(sd_bus_message *m, GVariant *const *values, size_t n);
/* Whether value arrives as it is when packed: it holds no fd, and its bytes, if GLib was told
 * to trust them, are in normal form (looked at, so only where a cost is acceptable: a value
 * sd-bus refused). */
bool payload_packs_faithfully(GVariant *value);
/* The most payloads a sender packs in one batch. */
#define PAYLOAD_BATCH_MAX 256

/* Unpacks bytes (referenced, not copied) whose element type the sender said is element_type
 * into a new array of new GVariants, each of a type that passes payload_check_value().
 * Errors: -EBADMSG for a bad element type (not one complete payload type or "v", or holding
 * "h") or for data that is not a normal-form array of such values; -ENOBUFS when it holds more
 * than payloads_max payloads, or when the walk into the variants of one of them visits more
 * than values_max values, the payload itself counted (each payload on its own: what it would
 * take if it came alone, where every value inside counts, is no less). The values inside are
 * views on the bytes, not built one by one. */
int payload_unpack(GBytes *bytes, const char *element_type, size_t payloads_max, size_t values_max,
                   GPtrArray **ret);

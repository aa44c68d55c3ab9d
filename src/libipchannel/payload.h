/* SPDX-License-Identifier: MIT */
/* Payloads: GVariant values to and from D-Bus message variants. Pure: no bus I/O. */
#pragma once

#include <stdbool.h>

#include <glib.h>
#include <systemd/sd-bus.h>

/* Deepest nesting of containers (arrays, structs, dict entries, variants) a payload may have,
 * counting the variant that carries it. The D-Bus specification allows 64 in a message; the
 * message body of Deliver/Broadcast adds none beyond the carrying variant. */
#define PAYLOAD_DEPTH_MAX 64

/* Most values (each basic value, container and variant; a whole array of a fixed-size type
 * counts once) read from one message: what another process can make a receiver build. */
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

/* Appends one D-Bus variant ("v") holding value; a floating value is consumed. value must pass
 * payload_check_type(), and so must the contents of every variant nested in it, counting their
 * depth from the carrying variant: -EINVAL otherwise.
 * A "h" value is an fd number in this process; the message keeps a duplicate.
 * sd-bus refuses some values GLib allows, with its own error: strings holding Unicode
 * noncharacters (U+FDD0..U+FDEF, U+xFFFE, U+xFFFF) and signature values D-Bus does not accept
 * (-EINVAL), "h" values that are not open fds (-EBADF, or -EINVAL if negative), any "h" on a
 * connection that cannot pass fds (-EOPNOTSUPP). After an error m is half written: discard it. */
int payload_append_variant(sd_bus_message *m, GVariant *value);

/* Reads one D-Bus variant ("v") at the message's read position into a new (non-floating)
 * GVariant. A "h" value becomes the number of an fd owned by the message: valid only while
 * the message lives. Errors: -EBADMSG for malformed or too deeply nested input (the value
 * comes from another process: everything about it is checked), -ENXIO if the message is not
 * at a variant (then nothing was read), -ENOBUFS if it holds more than PAYLOAD_VALUES_MAX
 * values. On other errors *ret is untouched and the read position is unspecified. */
int payload_read_variant(sd_bus_message *m, GVariant **ret);

/* As payload_read_variant(), with the values built taken from *budget, which the caller shares
 * among the variants of one message (start it at PAYLOAD_VALUES_MAX): -ENOBUFS when it runs
 * out. */
int payload_read_variant_budget(sd_bus_message *m, size_t *budget, GVariant **ret);

/* Packed batches: several payloads as one GVariant of type "av" in GVariant's own
 * serialization (host byte order: both ends are on one host), carried as a D-Bus "ay". A
 * receiver builds no value per D-Bus element: the bytes are checked and wrapped as they are.
 * payload_value_has_fd(): whether value holds a "h" (fds cannot be packed). */
bool payload_value_has_fd(GVariant *value);
/* Returns the packed form of values[0..n) (each passed payload_check_value() and holds no fd). */
GBytes *payload_pack(GVariant *const *values, size_t n);
/* Unpacks size bytes (copied) into a new array of new GVariants, each of a type that passes
 * payload_check_value(). Errors: -EBADMSG for data that is not a normal-form "av" of such
 * values, -ENOBUFS when it holds more than *budget values (each payload and each value in
 * it counts, as for payload_read_variant_budget()). */
int payload_unpack(const void *data, size_t size, size_t *budget, GPtrArray **ret);

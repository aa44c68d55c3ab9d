/* SPDX-License-Identifier: MIT */
/* Payloads: GVariant values to and from D-Bus message variants. Pure: no bus I/O. */
#pragma once

#include <glib.h>
#include <systemd/sd-bus.h>

/* Deepest nesting of containers (arrays, structs, dict entries, variants) a payload may have,
 * counting the variant that carries it. The D-Bus specification allows 64 in a message; the
 * message body of Deliver/Broadcast adds none beyond the carrying variant. */
#define PAYLOAD_DEPTH_MAX 64

/* 0 if values of this type can travel over D-Bus, else -EINVAL and a static reason
 * (maybe types, the empty tuple "()", dict entries outside arrays, indefinite types,
 * signatures longer than 255 bytes, nesting deeper than PAYLOAD_DEPTH_MAX). */
int payload_check_type(const GVariantType *type, const char **ret_reason);

/* Appends one D-Bus variant ("v") holding value. value must pass payload_check_type().
 * A "h" value is an fd number in this process; the message keeps a duplicate. */
int payload_append_variant(sd_bus_message *m, GVariant *value);

/* Reads one D-Bus variant ("v") at the message's read position into a new (non-floating)
 * GVariant. A "h" value becomes the number of an fd owned by the message. Errors: -EBADMSG
 * for malformed or too deeply nested input, -ENXIO if the message is not at a variant. */
int payload_read_variant(sd_bus_message *m, GVariant **ret);

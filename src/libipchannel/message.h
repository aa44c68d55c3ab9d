/* SPDX-License-Identifier: MIT */
/* Messages: decodes the Deliver* and Broadcast* messages another peer sent. No bus I/O: it reads
 * one received sd_bus_message, so a fuzzer can drive it with what sd-bus's receive path made. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <glib.h>
#include <systemd/sd-bus.h>

/* Named D-Bus errors of the org.ipchannel.Peer1 interface. */
#define IPCHANNEL_ERROR_NOT_A_PEER "org.ipchannel.Error.NotAPeer"
#define IPCHANNEL_ERROR_INVALID_EVENT "org.ipchannel.Error.InvalidEvent"
#define IPCHANNEL_ERROR_RESERVED_EVENT "org.ipchannel.Error.ReservedEvent"
#define IPCHANNEL_ERROR_INVALID_MEMFD "org.ipchannel.Error.InvalidMemfd"

/* What a message carries after its event: nothing (…Null), one payload, a batch of payloads of
 * the same event (…Batch: consecutive sends to one receiver, coalesced by the sender), or one
 * payload in a sealed memfd (…Memfd: its type string, then the fd). */
typedef enum {
        MESSAGE_NULL,
        MESSAGE_ONE,
        MESSAGE_BATCH,
        MESSAGE_MEMFD,
} message_shape;

/* What a receiver accepts from one message. */
typedef struct message_limits {
        size_t event_name_max;          /* bytes */
        size_t values_max;              /* values decoded from an inline payload; payloads in a batch */
        uint64_t memfd_max;             /* bytes of a memfd payload */
} message_limits;

/* The shape of a member of org.ipchannel.Peer1 with this signature: the methods Deliver*
 * (signal false) or the signals Broadcast* (signal true). -EBADMSG for anything else. */
int message_shape_of(const char *member, const char *signature, bool signal);

/* Reads (s event, [v data | g element, ay packed batch | g type, h memfd]) and checks the event
 * and every payload.
 * Every payload is decoded before any is returned, so a bad one refuses the whole message and
 * a receiver never sees half a batch. On success *ret_event points into m and *ret_payloads
 * holds the payloads in order (none for MESSAGE_NULL). On failure error holds a named error
 * for the sender and the return value says what kind: -EINVAL (bad event name, InvalidEvent),
 * -EPERM (a local event, ReservedEvent), -ENOBUFS (more values than limits->values_max),
 * -EFBIG (a memfd over limits->memfd_max; both LimitsExceeded), -EBADF (not a sealed memfd,
 * InvalidMemfd), -EBADMSG (anything else malformed, InvalidArgs); -ENOMEM and mmap's errors
 * are passed on (with a generic error set). */
int message_read(sd_bus_message *m, message_shape shape, const message_limits *limits,
                 const char **ret_event, GPtrArray **ret_payloads, sd_bus_error *error);

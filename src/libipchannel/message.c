/* SPDX-License-Identifier: MIT */
/* Messages: decodes what another peer sent in a Deliver* call or a Broadcast* signal. */
#include <errno.h>
#include <stdarg.h>
#include <string.h>

#include "macro.h"
#include "message.h"
#include "names.h"
#include "payload.h"

int message_shape_of(const char *member, const char *signature, bool signal) {
        static const struct {
                const char *method, *signal, *signature;
                message_shape shape;
        } shapes[] = {
                { "Deliver",      "Broadcast",      "sv",  MESSAGE_ONE },
                { "DeliverNull",  "BroadcastNull",  "s",   MESSAGE_NULL },
                { "DeliverBatch", "BroadcastBatch", "sgay", MESSAGE_BATCH },
                { "DeliverMemfd", "BroadcastMemfd", "sgh", MESSAGE_MEMFD },
        };

        if (!member || !signature)
                return -EBADMSG;
        for (size_t i = 0; i < G_N_ELEMENTS(shapes); i++)
                if (strcmp(member, signal ? shapes[i].signal : shapes[i].method) == 0)
                        return strcmp(signature, shapes[i].signature) == 0 ? (int) shapes[i].shape
                                                                            : -EBADMSG;
        return -EBADMSG;
}

/* Sets error and returns err: the caller learns the kind, the sender gets the name. */
static int fail(sd_bus_error *error, int err, const char *name, const char *fmt, ...)
        G_GNUC_PRINTF(4, 5);
static int fail(sd_bus_error *error, int err, const char *name, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        (void) sd_bus_error_setfv(error, name, fmt, ap);
        va_end(ap);
        return err;
}

static int read_memfd(sd_bus_message *m, const message_limits *limits, GVariant **ret,
                      sd_bus_error *error) {
        payload_memfd_status status = PAYLOAD_MEMFD_OK;
        const char *type, *reason = "";
        int fd, r;

        r = sd_bus_message_read(m, "gh", &type, &fd);
        if (r <= 0)
                return fail(error, -EBADMSG, SD_BUS_ERROR_INVALID_ARGS, "Cannot read the memfd.");
        r = payload_memfd_map(fd, type, limits->memfd_max, limits->values_max, ret, &status, &reason);
        if (r == -EBADMSG)
                switch (status) {
                case PAYLOAD_MEMFD_TOO_MANY_VALUES:
                        return fail(error, -ENOBUFS, SD_BUS_ERROR_LIMITS_EXCEEDED,
                                    "The memfd payload holds more than %zu values in variants.",
                                    limits->values_max);
                case PAYLOAD_MEMFD_TOO_LARGE:
                        return fail(error, -EFBIG, SD_BUS_ERROR_LIMITS_EXCEEDED,
                                    "The memfd payload is larger than this peer accepts (%" PRIu64
                                    " bytes).", limits->memfd_max);
                case PAYLOAD_MEMFD_BAD_TYPE:
                        return fail(error, -EBADMSG, SD_BUS_ERROR_INVALID_ARGS,
                                    "Bad memfd payload type \"%s\": %s.", type, reason);
                default:
                        return fail(error, -EBADF, IPCHANNEL_ERROR_INVALID_MEMFD,
                                    "Refused the payload's fd: %s.", reason);
                }
        if (r < 0)
                return fail(error, r, SD_BUS_ERROR_NO_MEMORY, "Cannot map the memfd payload: %s.",
                            g_strerror(-r));
        return 0;
}

int message_read(sd_bus_message *m, message_shape shape, const message_limits *limits,
                 const char **ret_event, GPtrArray **ret_payloads, sd_bus_error *error) {
        g_autoptr(GPtrArray) payloads = g_ptr_array_new_with_free_func((GDestroyNotify) g_variant_unref);
        const char *event, *reason;
        size_t budget = limits->values_max;     /* for the whole message; a batch counts each payload */
        GVariant *data;
        int r;

        r = sd_bus_message_read_basic(m, 's', &event);
        if (r <= 0)
                return fail(error, -EBADMSG, SD_BUS_ERROR_INVALID_ARGS, "Cannot read the event name.");
        if (names_check_event_max(event, limits->event_name_max, &reason) < 0)
                return fail(error, -EINVAL, IPCHANNEL_ERROR_INVALID_EVENT, "Invalid event name: %s.",
                            reason);
        if (names_event_is_local(event))
                return fail(error, -EPERM, IPCHANNEL_ERROR_RESERVED_EVENT,
                            "The event \"%s\" is local to each process and cannot be sent.", event);

        if (shape == MESSAGE_MEMFD) {
                r = read_memfd(m, limits, &data, error);
                if (r < 0)
                        return r;
                g_ptr_array_add(payloads, data);
                shape = MESSAGE_NULL;   /* nothing more to read */
        } else if (shape == MESSAGE_BATCH) {
                g_autoptr(GBytes) bytes = NULL;
                const void *packed = NULL;
                const char *element;
                size_t size = 0;
                /* A batch is taken when each of its payloads would be taken alone; it may
                 * hold as many payloads as a sender packs in one, whatever the limit. */
                size_t payloads_max = MAX(limits->values_max, (size_t) PAYLOAD_BATCH_MAX);

                r = sd_bus_message_read_basic(m, 'g', &element);
                if (r > 0)
                        r = sd_bus_message_read_array(m, 'y', &packed, &size);
                if (r <= 0)
                        return fail(error, -EBADMSG, SD_BUS_ERROR_INVALID_ARGS, "Cannot read the batch.");
                /* Copied: a payload the app keeps must not keep the message, and with it the
                 * connection (whose references are not atomic), alive. */
                bytes = g_bytes_new(packed, size);
                g_clear_pointer(&payloads, g_ptr_array_unref);
                r = payload_unpack(bytes, element, payloads_max, limits->values_max, &payloads);
                if (r == -ENOBUFS)
                        return fail(error, -ENOBUFS, SD_BUS_ERROR_LIMITS_EXCEEDED,
                                    "The batch holds more than %zu payloads, or one with more "
                                    "than %zu values in its variants.",
                                    payloads_max, limits->values_max);
                if (r < 0)
                        return fail(error, -EBADMSG, SD_BUS_ERROR_INVALID_ARGS,
                                    "The batch is not a packed array of payloads of type \"%s\".",
                                    element);
        }
        if (shape == MESSAGE_ONE) {
                r = payload_read_variant_budget(m, &budget, &data);
                if (r == -ENOBUFS)
                        return fail(error, -ENOBUFS, SD_BUS_ERROR_LIMITS_EXCEEDED,
                                    "The message holds more than %zu payload values.",
                                    limits->values_max);
                if (r < 0)
                        return fail(error, -EBADMSG, SD_BUS_ERROR_INVALID_ARGS,
                                    "Cannot read the payload: %s.", g_strerror(-r));
                g_ptr_array_add(payloads, data);
        }
        /* No sender makes an empty batch (no payload goes as DeliverNull): dispatching it would
         * make up a message with no payload that nobody sent, as if it came by DeliverNull. */
        if (shape == MESSAGE_BATCH && payloads->len == 0)
                return fail(error, -EBADMSG, SD_BUS_ERROR_INVALID_ARGS, "The batch is empty.");
        *ret_event = event;
        *ret_payloads = TAKE_PTR(payloads);
        return 0;
}

/* SPDX-License-Identifier: MIT */
/* libFuzzer target: payload decoding of D-Bus messages another process wrote, byte for byte. */

/*
 * The input becomes the body of a method call whose header this file writes, in the byte order
 * and with the signature the input picks. The message travels over a socketpair into an sd-bus
 * connection, so it goes through sd-bus's own receive path and header checks, exactly as a
 * hostile peer's Deliver would; the body is never pre-validated by us. It is then read the way
 * channel.c's read_message() reads Deliver, DeliverBatch and Broadcast (that function is static,
 * so its shape is mirrored here). Every value that decodes must be one payload_check_value()
 * accepts and that payload_append_variant() can send again unchanged: a decoder that accepts
 * what the encoder refuses would let one peer's message crash or stall the next hop.
 *
 * Input: byte 0 chooses the shape (bits 0-1: "v", "sv", "sav", or a signature taken from the
 * input: byte 1 is its length), the byte order (bit 2: big-endian) and, for "sv" and "sav",
 * the budget of values shared by the message's payloads (bit 3: 16 instead of
 * PAYLOAD_VALUES_MAX, so that -ENOBUFS is reached by small inputs). The rest is the body.
 */

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <glib.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-id128.h>

#include "macro.h"
#include "payload.h"

#define BODY_MAX (48 * 1024)

typedef struct buf {
        uint8_t data[BODY_MAX + 1024];
        size_t n;
        bool big_endian;
} buf;

static void buf_pad(buf *b, size_t align) {
        while (b->n % align)
                b->data[b->n++] = 0;
}

static void buf_u8(buf *b, uint8_t v) {
        b->data[b->n++] = v;
}

static void buf_u32(buf *b, uint32_t v) {
        buf_pad(b, 4);
        for (int i = 0; i < 4; i++)
                b->data[b->n++] = (uint8_t) (b->big_endian ? v >> (8 * (3 - i)) : v >> (8 * i));
}

static void buf_bytes(buf *b, const void *p, size_t n) {
        memcpy(b->data + b->n, p, n);
        b->n += n;
}

/* A header field of a string type ('s' or 'o'): (y code, v string). */
static void buf_field_string(buf *b, uint8_t code, char type, const char *s) {
        buf_pad(b, 8);
        buf_u8(b, code);
        buf_u8(b, 1);
        buf_u8(b, (uint8_t) type);
        buf_u8(b, 0);
        buf_u32(b, (uint32_t) strlen(s));
        buf_bytes(b, s, strlen(s) + 1);
}

static void buf_field_signature(buf *b, const char *sig, size_t n) {
        buf_pad(b, 8);
        buf_u8(b, 8);
        buf_u8(b, 1);
        buf_u8(b, 'g');
        buf_u8(b, 0);
        buf_u8(b, (uint8_t) n);
        buf_bytes(b, sig, n);
        buf_u8(b, 0);
}

/* Writes a whole method call: header in the chosen byte order, then the fuzzer's body. */
static void message_build(buf *b, bool big_endian, const char *sig, size_t sig_len,
                          const uint8_t *body, size_t body_len) {
        size_t fields_len_at, fields_start;

        *b = (buf) { .big_endian = big_endian };
        buf_u8(b, big_endian ? 'B' : 'l');
        buf_u8(b, 1);                   /* METHOD_CALL */
        buf_u8(b, 1);                   /* NO_REPLY_EXPECTED: nothing reads our end */
        buf_u8(b, 1);                   /* protocol version */
        buf_u32(b, (uint32_t) body_len);
        buf_u32(b, 1);                  /* serial */
        fields_len_at = b->n;
        buf_u32(b, 0);
        fields_start = b->n;            /* already 8-aligned: 16 bytes in */
        buf_field_string(b, 1, 'o', "/org/ipchannel/fuzz");
        buf_field_string(b, 2, 's', "org.ipchannel.Peer1");
        buf_field_string(b, 3, 's', "Deliver");
        if (sig_len > 0)
                buf_field_signature(b, sig, sig_len);

        /* Patch the fields' length in, then pad the header to 8 as the body starts there. */
        size_t end = b->n, fields_len = end - fields_start;
        b->n = fields_len_at;
        buf_u32(b, (uint32_t) fields_len);
        b->n = end;
        buf_pad(b, 8);
        buf_bytes(b, body, body_len);
}

/* Never answered: messages made on it may go nowhere, which is all the round trip needs. */
static sd_bus *scratch_bus;
static int handled;

static void scratch_bus_setup(void) {
        int fds[2];

        if (scratch_bus)
                return;
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) < 0)
                abort();
        if (sd_bus_new(&scratch_bus) < 0 || sd_bus_set_fd(scratch_bus, fds[0], fds[0]) < 0 ||
            sd_bus_start(scratch_bus) < 0)
                abort();
        /* fds[1] stays open for the life of the process: closing it would end the bus. */
}

static bool type_has_handle(GVariant *v) {
        return strchr(g_variant_get_type_string(v), 'h') != NULL;
}

/* Anything decoded must be accepted, encoded and decoded back to the same value. */
static void check_round_trip(GVariant *v) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        g_autoptr(GVariant) again = NULL;
        const char *reason = NULL;
        int r;

        if (g_variant_is_floating(v))
                abort();
        if (getenv("FUZZ_PAYLOAD_DEBUG")) {
                g_autofree char *text = g_variant_print(v, true);
                fprintf(stderr, "decoded %s\n", text);
        }
        if (payload_check_value(v, &reason) < 0) {
                fprintf(stderr, "decoded %s refused by payload_check_value(): %s\n",
                        g_variant_get_type_string(v), reason);
                abort();
        }

        scratch_bus_setup();
        if (sd_bus_message_new_method_call(scratch_bus, &m, "org.ipchannel.fuzz", "/x",
                                           "org.ipchannel.Peer1", "Deliver") < 0)
                abort();
        /* Not floating: the call takes a reference of its own and drops it again. */
        r = payload_append_variant(m, v);
        if (r < 0) {
                /* Handles are fd indexes of the received message, not fds of ours. */
                if (type_has_handle(v))
                        return;
                fprintf(stderr, "decoded %s cannot be appended again: %s\n",
                        g_variant_get_type_string(v), strerror(-r));
                abort();
        }
        if (sd_bus_message_seal(m, 1, 0) < 0 || sd_bus_message_rewind(m, true) < 0)
                abort();
        r = payload_read_variant(m, &again);
        if (r < 0) {
                fprintf(stderr, "re-encoded %s cannot be read back: %s\n",
                        g_variant_get_type_string(v), strerror(-r));
                abort();
        }
        if (!g_variant_equal(v, again)) {
                fprintf(stderr, "round trip changed a %s value\n", g_variant_get_type_string(v));
                abort();
        }
}

/* The shape of channel.c's read_message(): an event, then one payload or a batch of them. */
static int on_message(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        int shape = *(int *) userdata & 3;
        /* A small budget now and then, so that running out is reached with small inputs. */
        size_t budget = (*(int *) userdata & 8) ? 16 : PAYLOAD_VALUES_MAX;
        const char *event;
        int r;

        handled++;
        if (!sd_bus_message_is_method_call(m, NULL, NULL))
                return 0;

        if (shape == 0 || shape == 3) {
                /* A bare variant, or whatever signature the input chose: read variants until
                 * one fails or the body ends. */
                for (int i = 0; i < 64; i++) {
                        g_autoptr(GVariant) v = NULL;

                        r = payload_read_variant(m, &v);
                        if (r < 0)
                                break;
                        check_round_trip(v);
                }
                return 1;
        }

        r = sd_bus_message_read_basic(m, 's', &event);
        if (r <= 0)
                return 1;
        if (shape == 2) {
                r = sd_bus_message_enter_container(m, 'a', "v");
                if (r <= 0)
                        return 1;
        }
        for (;;) {
                g_autoptr(GVariant) v = NULL;
                size_t before = budget;

                if (shape == 2 && sd_bus_message_at_end(m, false) > 0)
                        break;
                r = payload_read_variant_budget(m, &budget, &v);
                if (r < 0)
                        break;
                /* Every value read is paid for, and the budget only ever shrinks. */
                if (budget >= before)
                        abort();
                check_round_trip(v);
                if (shape == 1)
                        break;
        }
        return 1;
}

static const char uid_hex_digits[] = "0123456789abcdef";

/* SASL EXTERNAL sends the uid as hex-encoded decimal ASCII. */
static size_t auth_build(char *out, size_t size) {
        char uid[32], hex[64];
        size_t n = (size_t) snprintf(uid, sizeof(uid), "%u", (unsigned) getuid());

        for (size_t i = 0; i < n; i++) {
                hex[2 * i] = uid_hex_digits[(unsigned char) uid[i] >> 4];
                hex[2 * i + 1] = uid_hex_digits[(unsigned char) uid[i] & 0xf];
        }
        hex[2 * n] = '\0';
        /* The leading NUL is the credentials byte every D-Bus client sends first. */
        out[0] = '\0';
        return 1 + (size_t) snprintf(out + 1, size - 1, "AUTH EXTERNAL %s\r\nBEGIN\r\n", hex);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        static buf b;
        static const char *const shapes[] = { "v", "sv", "sav" };
        _cleanup_(sd_bus_close_unrefp) sd_bus *bus = NULL;
        char auth[128], sig[256];
        size_t auth_len, sig_len;
        sd_id128_t id = SD_ID128_MAKE(6e, 3a, 51, 0c, 7d, 3b, 4a, 3e, 9d, 0a, 5c, 1b, 2f, 6e, 70, 11);
        bool big_endian;
        int fds[2], shape, flags;

        if (size < 1 || size > BODY_MAX)
                return 0;
        shape = data[0] & 3;
        big_endian = data[0] & 4;
        flags = data[0];
        data++, size--;

        if (shape == 3) {
                if (size < 1)
                        return 0;
                sig_len = data[0];
                data++, size--;
                if (sig_len > size)
                        return 0;
                memcpy(sig, data, sig_len);
                /* An embedded NUL would end the field early: not a message anyone can send. */
                if (memchr(sig, '\0', sig_len))
                        return 0;
                data += sig_len, size -= sig_len;
        } else {
                sig_len = strlen(shapes[shape]);
                memcpy(sig, shapes[shape], sig_len);
        }
        sig[sig_len] = '\0';

        message_build(&b, big_endian, sig, sig_len, data, size);

        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, fds) < 0)
                abort();
        auth_len = auth_build(auth, sizeof(auth));
        if (write(fds[1], auth, auth_len) != (ssize_t) auth_len ||
            write(fds[1], b.data, b.n) != (ssize_t) b.n)
                abort();
        /* EOF after the message, so processing ends once it has been read. */
        (void) shutdown(fds[1], SHUT_WR);

        if (sd_bus_new(&bus) < 0 || sd_bus_set_fd(bus, fds[0], fds[0]) < 0 ||
            sd_bus_set_server(bus, 1, id) < 0 || sd_bus_add_filter(bus, NULL, on_message, &flags) < 0 ||
            sd_bus_start(bus) < 0)
                abort();

        for (int i = 0; i < 64; i++)
                if (sd_bus_process(bus, NULL) <= 0)
                        break;
        if (getenv("FUZZ_PAYLOAD_DEBUG"))
                fprintf(stderr, "handled %d\n", handled);

        bus = sd_bus_close_unref(bus);
        close(fds[1]);
        return 0;
}

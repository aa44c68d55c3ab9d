/* SPDX-License-Identifier: MIT */
/* libFuzzer target: decoding of Deliver* and Broadcast* messages another process wrote, byte for
 * byte, by the receiver's own decoder (message.c) and payload.c. */

/*
 * The input becomes the body of a method call or a signal whose header this file writes, in the
 * byte order and with the signature the input picks, and may carry one fd: a memfd made from the
 * input, sealed or not, or a pipe. The message travels over a socketpair into an sd-bus
 * connection, so it goes through sd-bus's own receive path and header checks (and its fd
 * passing), exactly as a hostile peer's message would; the body is never pre-validated by us.
 * It is then decoded by message_read(), as the channel does. Every value that decodes must be
 * one payload_check_value() accepts and that can be sent again unchanged (inline by
 * payload_append_variant() when it came inline, in a packed batch when it came as GVariant
 * bytes, in a batch or a memfd): a decoder that accepts what the encoder refuses would let one
 * peer's message crash or stall the next hop.
 *
 * Input: byte 0 chooses the shape (bits 0-1: "v", "sv", "sgay", or a signature taken from the
 * input: byte 1 is its length), the byte order (bit 2: big-endian), small limits (bit 3: 16
 * values, 8-byte event names, 64-byte memfds, so that every limit is reached by small inputs),
 * a signal instead of a method call (bit 4: Broadcast* rather than Deliver*) and a memfd message
 * (bit 5: signature "sgh"; then one byte chooses the fd (mod 5: a memfd with all the seals,
 * with none, without F_SEAL_WRITE, without F_SEAL_SHRINK, a pipe), two bytes (little-endian) the
 * length of its contents, which follow). The rest is the body. With a signature of its own
 * (shape 3) the body is read as a sequence of bare variants.
 */

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <glib.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-id128.h>

#include "macro.h"
#include "message.h"
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

static void buf_field_u32(buf *b, uint8_t code, uint32_t v) {
        buf_pad(b, 8);
        buf_u8(b, code);
        buf_u8(b, 1);
        buf_u8(b, 'u');
        buf_u8(b, 0);
        buf_u32(b, v);
}

/* Writes a whole method call or signal: header in the chosen byte order, then the fuzzer's
 * body. */
static void message_build(buf *b, bool big_endian, bool signal, const char *member, unsigned n_fds,
                          const char *sig, size_t sig_len, const uint8_t *body, size_t body_len) {
        size_t fields_len_at, fields_start;

        *b = (buf) { .big_endian = big_endian };
        buf_u8(b, big_endian ? 'B' : 'l');
        buf_u8(b, signal ? 4 : 1);      /* SIGNAL or METHOD_CALL */
        buf_u8(b, 1);                   /* NO_REPLY_EXPECTED: nothing reads our end */
        buf_u8(b, 1);                   /* protocol version */
        buf_u32(b, (uint32_t) body_len);
        buf_u32(b, 1);                  /* serial */
        fields_len_at = b->n;
        buf_u32(b, 0);
        fields_start = b->n;            /* already 8-aligned: 16 bytes in */
        buf_field_string(b, 1, 'o', "/org/ipchannel/fuzz");
        buf_field_string(b, 2, 's', "org.ipchannel.Peer1");
        buf_field_string(b, 3, 's', member);
        if (sig_len > 0)
                buf_field_signature(b, sig, sig_len);
        if (n_fds > 0)
                buf_field_u32(b, 9, n_fds);     /* UNIX_FDS */

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

/* A copy of v built by GLib from what it reads out of v, child by child (a tree of new
 * values), so that its serialization is GLib's own. Not floating. */
static GVariant *rebuild(GVariant *v) {
        size_t n;
        GVariant **children, *copy;

        if (!g_variant_is_container(v))
                return g_variant_ref(v);
        if (g_variant_is_of_type(v, G_VARIANT_TYPE_VARIANT)) {
                g_autoptr(GVariant) inner = g_variant_get_variant(v);
                g_autoptr(GVariant) inner_copy = rebuild(inner);

                return g_variant_ref_sink(g_variant_new_variant(inner_copy));
        }
        n = g_variant_n_children(v);
        children = g_new(GVariant *, n ? n : 1);
        for (size_t i = 0; i < n; i++) {
                g_autoptr(GVariant) child = g_variant_get_child_value(v, i);

                children[i] = rebuild(child);
        }
        if (g_variant_is_of_type(v, G_VARIANT_TYPE_ARRAY))
                copy = g_variant_new_array(g_variant_type_element(g_variant_get_type(v)), children, n);
        else if (g_variant_is_of_type(v, G_VARIANT_TYPE_DICT_ENTRY))
                copy = g_variant_new_dict_entry(children[0], children[1]);
        else
                copy = g_variant_new_tuple(children, n);
        copy = g_variant_ref_sink(copy);
        for (size_t i = 0; i < n; i++)
                g_variant_unref(children[i]);
        g_free(children);
        return copy;
}

/* The reader writes GVariant bytes itself and hands them to GLib as trusted: GLib, not trusting
 * them, must find them normal, and serializing what it reads out of them must give them back. */
static void check_normal_form(GVariant *v) {
        g_autoptr(GVariant) untrusted = g_variant_ref_sink(g_variant_new_from_data(
                g_variant_get_type(v), g_variant_get_data(v), g_variant_get_size(v), false, NULL, NULL));
        g_autoptr(GVariant) copy = NULL;

        if (!g_variant_is_normal_form(untrusted)) {
                fprintf(stderr, "decoded %s is not in GVariant's normal form\n",
                        g_variant_get_type_string(v));
                abort();
        }
        copy = rebuild(v);
        if (g_variant_get_size(copy) != g_variant_get_size(v) ||
            (g_variant_get_size(v) > 0 &&
             memcmp(g_variant_get_data(copy), g_variant_get_data(v), g_variant_get_size(v)) != 0)) {
                fprintf(stderr, "decoded %s differs from GLib's serialization of it\n",
                        g_variant_get_type_string(v));
                abort();
        }
}

/* A value that came as GVariant bytes (a packed batch, a memfd) never met sd-bus's rules, some
 * stricter than GLib's (noncharacters in strings): it must pass our checks, hold no fds, and
 * come back the same through a packed batch, the form it would take to the next peer. */
static void check_packed_round_trip(GVariant *v) {
        g_autoptr(GPtrArray) back = NULL;
        g_autoptr(GBytes) packed = NULL;
        const char *reason = NULL;
        size_t budget = PAYLOAD_VALUES_MAX;
        const char *element;

        if (payload_check_value(v, &reason) < 0) {
                fprintf(stderr, "decoded %s refused by payload_check_value(): %s\n",
                        g_variant_get_type_string(v), reason);
                abort();
        }
        if (payload_has_handles(v))
                abort();
        packed = payload_pack(&v, 1, &element);
        if (payload_unpack(packed, element, 1, budget, &back) < 0 || back->len != 1 ||
            !g_variant_equal(v, g_ptr_array_index(back, 0))) {
                fprintf(stderr, "a decoded %s does not survive a packed batch\n", g_variant_get_type_string(v));
                abort();
        }
}

/* What the input chose, for the filter. */
typedef struct fuzz_case {
        int flags;
} fuzz_case;

#define FLAG_BIG_ENDIAN 4
#define FLAG_SMALL_LIMITS 8
#define FLAG_SIGNAL 16
#define FLAG_MEMFD 32

/* Decodes the message as the channel does, with the receiver's real decoder. */
static int on_message(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        const fuzz_case *c = userdata;
        bool small = c->flags & FLAG_SMALL_LIMITS, signal = c->flags & FLAG_SIGNAL;
        const message_limits limits = {
                .event_name_max = small ? 8 : 255,
                .values_max = small ? 16 : PAYLOAD_VALUES_MAX,
                .memfd_max = small ? 64 : 256u * 1024 * 1024,
        };
        g_autoptr(GPtrArray) payloads = NULL;
        const char *event = NULL;
        int shape, r;

        handled++;
        if (!(signal ? sd_bus_message_is_signal(m, NULL, NULL) : sd_bus_message_is_method_call(m, NULL, NULL)))
                return 0;

        if ((c->flags & 3) == 0) {
                /* A bare variant, or whatever signature the input chose: read variants until
                 * one fails or the body ends. */
                for (int i = 0; i < 64; i++) {
                        g_autoptr(GVariant) v = NULL;

                        r = payload_read_variant(m, &v);
                        if (r < 0)
                                break;
                        check_normal_form(v);
                        check_round_trip(v);
                }
                return 1;
        }

        shape = message_shape_of(sd_bus_message_get_member(m), sd_bus_message_get_signature(m, true),
                                 signal);
        if (shape < 0)
                return 1;
        r = message_read(m, shape, &limits, &event, &payloads, &error);
        if (r < 0) {
                /* A refusal always names its error for the sender. */
                if (!sd_bus_error_is_set(&error))
                        abort();
                if (getenv("FUZZ_PAYLOAD_DEBUG"))
                        fprintf(stderr, "refused: %s: %s\n", error.name, error.message);
                return 1;
        }
        if (!event || !payloads || strlen(event) > limits.event_name_max)
                abort();
        if ((shape == MESSAGE_NULL) != (payloads->len == 0) || (shape != MESSAGE_BATCH && payloads->len > 1))
                abort();
        for (guint i = 0; i < payloads->len; i++) {
                GVariant *v = g_ptr_array_index(payloads, i);

                if (shape == MESSAGE_MEMFD) {
                        /* Untrusted bytes: what GLib reads from them must survive a round trip
                         * in its normal form, and printing touches every byte. */
                        g_autoptr(GVariant) normal = g_variant_get_normal_form(v);
                        g_autofree char *text = g_variant_print(v, true);

                        if (!text || g_variant_get_size(v) > limits.memfd_max || payload_has_handles(v))
                                abort();
                        check_packed_round_trip(normal);
                } else if (shape == MESSAGE_BATCH)
                        check_packed_round_trip(v);
                else {
                        check_normal_form(v);
                        check_round_trip(v);
                }
        }
        return 1;
}

static const char uid_hex_digits[] = "0123456789abcdef";

/* SASL EXTERNAL sends the uid as hex-encoded decimal ASCII; fds are negotiated. */
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
        return 1 + (size_t) snprintf(out + 1, size - 1,
                                     "AUTH EXTERNAL %s\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n", hex);
}

/* The member that carries this signature, or NULL: then the body is read as bare variants. */
static const char *member_for(const char *sig, bool signal) {
        static const char *const members[][3] = {
                { "s", "DeliverNull", "BroadcastNull" },
                { "sv", "Deliver", "Broadcast" },
                { "sgay", "DeliverBatch", "BroadcastBatch" },
                { "sgh", "DeliverMemfd", "BroadcastMemfd" },
        };

        for (size_t i = 0; i < G_N_ELEMENTS(members); i++)
                if (strcmp(sig, members[i][0]) == 0)
                        return members[i][signal ? 2 : 1];
        return NULL;
}

/* The fd the input chose: a memfd of its bytes with some of the seals, or a pipe. */
static int fd_make(unsigned kind, const uint8_t *contents, size_t n) {
        static const int seals[] = {
                PAYLOAD_MEMFD_SEALS,
                0,
                F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL,
                F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL,
        };
        int fd, p[2];

        if (kind % 5 == 4) {
                if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0)
                        abort();
                (void) !write(p[1], contents, MIN(n, (size_t) 4096));
                close(p[1]);
                return p[0];
        }
        fd = memfd_create("fuzz", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd < 0 || (n > 0 && write(fd, contents, n) != (ssize_t) n))
                abort();
        if (seals[kind % 5] && fcntl(fd, F_ADD_SEALS, seals[kind % 5]) < 0)
                abort();
        return fd;
}

/* Sends the message with fd (if >= 0) attached, as a peer's sd-bus would. */
static void send_with_fd(int sock, const void *p, size_t n, int fd) {
        union {
                struct cmsghdr cmsghdr;
                uint8_t buf[CMSG_SPACE(sizeof(int))];
        } control = {};
        struct iovec iov = { .iov_base = (void *) p, .iov_len = n };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };

        if (fd >= 0) {
                struct cmsghdr *cmsg;

                mh.msg_control = &control;
                mh.msg_controllen = sizeof(control);
                cmsg = CMSG_FIRSTHDR(&mh);
                cmsg->cmsg_level = SOL_SOCKET;
                cmsg->cmsg_type = SCM_RIGHTS;
                cmsg->cmsg_len = CMSG_LEN(sizeof(int));
                memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
        }
        if (sendmsg(sock, &mh, MSG_NOSIGNAL) != (ssize_t) n)
                abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        static buf b;
        static const char *const shapes[] = { "v", "sv", "sgay" };
        _cleanup_(sd_bus_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(closep) int fd = -1;
        char auth[128], sig[256];
        const char *member;
        size_t auth_len, sig_len;
        sd_id128_t id = SD_ID128_MAKE(6e, 3a, 51, 0c, 7d, 3b, 4a, 3e, 9d, 0a, 5c, 1b, 2f, 6e, 70, 11);
        fuzz_case c;
        int fds[2], shape;

        if (size < 1 || size > BODY_MAX)
                return 0;
        shape = data[0] & 3;
        c = (fuzz_case) { .flags = data[0] };
        data++, size--;

        if (c.flags & FLAG_MEMFD) {
                size_t n;

                if (size < 3)
                        return 0;
                n = (size_t) data[1] | (size_t) data[2] << 8;
                if (n > size - 3)
                        return 0;
                fd = fd_make(data[0], data + 3, n);
                data += 3 + n, size -= 3 + n;
                strcpy(sig, "sgh");
                sig_len = 3;
        } else if (shape == 3) {
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

        member = shape == 0 && !(c.flags & FLAG_MEMFD) ? NULL : member_for(sig, c.flags & FLAG_SIGNAL);
        if (!member)
                c.flags &= ~3;  /* bare variants */
        message_build(&b, c.flags & FLAG_BIG_ENDIAN, c.flags & FLAG_SIGNAL, member ?: "Deliver",
                      fd >= 0 ? 1 : 0, sig, sig_len, data, size);

        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, fds) < 0)
                abort();
        auth_len = auth_build(auth, sizeof(auth));
        if (write(fds[1], auth, auth_len) != (ssize_t) auth_len)
                abort();
        if (sd_bus_new(&bus) < 0 || sd_bus_set_fd(bus, fds[0], fds[0]) < 0 ||
            sd_bus_set_server(bus, 1, id) < 0 || sd_bus_add_filter(bus, NULL, on_message, &c) < 0 ||
            sd_bus_start(bus) < 0)
                abort();
        /* Authenticated before the message goes: sd-bus refuses fds during authentication. */
        for (int i = 0; i < 16 && sd_bus_is_ready(bus) <= 0; i++)
                if (sd_bus_process(bus, NULL) < 0)
                        abort();
        if (sd_bus_is_ready(bus) <= 0)
                abort();
        send_with_fd(fds[1], b.data, b.n, fd);
        /* EOF after the message, so processing ends once it has been read. */
        (void) shutdown(fds[1], SHUT_WR);

        for (int i = 0; i < 64; i++)
                if (sd_bus_process(bus, NULL) <= 0)
                        break;
        if (getenv("FUZZ_PAYLOAD_DEBUG"))
                fprintf(stderr, "handled %d\n", handled);

        bus = sd_bus_close_unref(bus);
        close(fds[1]);
        return 0;
}

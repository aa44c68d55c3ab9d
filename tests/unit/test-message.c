/* SPDX-License-Identifier: MIT */
/* Unit tests of message.c and of payloads in sealed memfds (payload.c), no daemon. */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <check.h>
#include <glib.h>
#include <systemd/sd-bus.h>

#include "ipchannel.h"
#include "macro.h"
#include "message.h"
#include "names.h"
#include "payload.h"

#define ALL_SEALS (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL)

static const message_limits default_limits = {
        .event_name_max = IPCHANNEL_EVENT_NAME_MAX,
        .values_max = IPCHANNEL_VALUES_MAX_DEFAULT,
        .memfd_max = IPCHANNEL_MEMFD_MAX_DEFAULT,
};

/* A bus that stays authenticating (nobody answers), so its messages may carry fds. */
static sd_bus *bus;
static int peer_fd = -1;

static void bus_setup(void) {
        int fds[2];

        ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
        peer_fd = fds[1];
        ck_assert_int_eq(sd_bus_new(&bus), 0);
        ck_assert_int_eq(sd_bus_set_fd(bus, fds[0], fds[0]), 0);
        ck_assert_int_ge(sd_bus_start(bus), 0);
}

static void bus_teardown(void) {
        bus = sd_bus_close_unref(bus);
        peer_fd = safe_close(peer_fd);
}

/* A memfd holding n bytes of data with these seals. */
static int memfd_with(const void *data, size_t n, int seals) {
        int fd = memfd_create("test", MFD_CLOEXEC | MFD_ALLOW_SEALING);

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(write(fd, data, n), (ssize_t) n);
        if (seals)
                ck_assert_int_eq(fcntl(fd, F_ADD_SEALS, seals), 0);
        return fd;
}

static GVariant *sample_value(void) {
        static const uint8_t bytes[] = { 1, 2, 3, 250, 251 };
        GVariantBuilder dict;

        g_variant_builder_init(&dict, G_VARIANT_TYPE("a{sv}"));
        g_variant_builder_add(&dict, "{sv}", "n", g_variant_new_int32(-7));
        g_variant_builder_add(&dict, "{sv}", "s", g_variant_new_string("text"));
        return g_variant_ref_sink(g_variant_new("(sa{sv}@ay)", "hello", &dict,
                                                g_variant_new_fixed_array(G_VARIANT_TYPE_BYTE, bytes,
                                                                          sizeof(bytes), 1)));
}

START_TEST(test_memfd_round_trip_is_sealed) {
        g_autoptr(GVariant) value = sample_value();
        g_autoptr(GVariant) back = NULL;
        _cleanup_(closep) int fd = -1;
        payload_memfd_status status = -1;
        const char *reason = NULL;

        ck_assert_int_eq(payload_memfd_new(value, &fd), 0);
        ck_assert_int_eq(fcntl(fd, F_GET_SEALS) & ALL_SEALS, ALL_SEALS);
        ck_assert_int_eq(lseek(fd, 0, SEEK_END), (off_t) g_variant_get_size(value));
        ck_assert_int_ge(fcntl(fd, F_GETFD), 0);
        ck_assert(fcntl(fd, F_GETFD) & FD_CLOEXEC);

        ck_assert_int_eq(payload_memfd_map(fd, g_variant_get_type_string(value), 1024, PAYLOAD_VALUES_MAX,
                                           &back, &status, &reason), 0);
        ck_assert_int_eq(status, PAYLOAD_MEMFD_OK);
        ck_assert(!g_variant_is_floating(back));
        ck_assert(g_variant_equal(value, back));
        ck_assert_ptr_ne(g_variant_get_data(back), g_variant_get_data(value));
}
END_TEST

/* Above PAYLOAD_MEMFD_READ_MAX the value is the mapping itself: page-aligned, not a copy in
 * the sender's buffer or the heap. */
START_TEST(test_large_memfd_is_mapped_not_copied) {
        size_t size = PAYLOAD_MEMFD_READ_MAX + 1;
        g_autofree uint8_t *bytes = g_malloc(size);
        g_autoptr(GVariant) value = NULL;
        g_autoptr(GVariant) back = NULL;
        _cleanup_(closep) int fd = -1;
        payload_memfd_status status = -1;
        const char *reason = NULL;

        /* Light enough for valgrind: a fill and a compare, no per-byte loop of ours. */
        memset(bytes, 0x5a, size);
        bytes[0] = 1;
        bytes[size - 1] = 2;
        value = g_variant_ref_sink(g_variant_new_fixed_array(G_VARIANT_TYPE_BYTE, bytes, size, 1));
        ck_assert_int_eq(payload_memfd_new(value, &fd), 0);
        ck_assert_int_eq(payload_memfd_map(fd, "ay", 2 * size, PAYLOAD_VALUES_MAX, &back, &status,
                                           &reason), 0);
        ck_assert_int_eq(status, PAYLOAD_MEMFD_OK);
        ck_assert_uint_eq(g_variant_get_size(back), size);
        ck_assert(memcmp(g_variant_get_data(back), bytes, size) == 0);
        ck_assert_uint_eq((uintptr_t) g_variant_get_data(back) % (uintptr_t) getpagesize(), 0);
        ck_assert_ptr_ne(g_variant_get_data(back), g_variant_get_data(value));
}
END_TEST

START_TEST(test_memfd_mapping_lives_until_the_last_reference) {
        g_autoptr(GVariant) value = sample_value();
        g_autoptr(GVariant) child = NULL;
        _cleanup_(closep) int fd = -1;
        GVariant *back = NULL;

        ck_assert_int_eq(payload_memfd_new(value, &fd), 0);
        ck_assert_int_eq(payload_memfd_map(fd, g_variant_get_type_string(value), 1024, PAYLOAD_VALUES_MAX,
                                           &back, NULL, NULL), 0);
        fd = safe_close(fd);
        child = g_variant_get_child_value(back, 2);
        g_variant_unref(back);
        /* The child still reads the mapping, after the fd and the parent are gone. */
        ck_assert_uint_eq(g_variant_get_size(child), 5);
        ck_assert_uint_eq(((const uint8_t *) g_variant_get_data(child))[3], 250);
}
END_TEST

static void assert_refused(int fd, const char *type, uint64_t max, payload_memfd_status want) {
        g_autoptr(GVariant) v = NULL;
        payload_memfd_status status = PAYLOAD_MEMFD_OK;
        const char *reason = NULL;

        ck_assert_int_eq(payload_memfd_map(fd, type, max, PAYLOAD_VALUES_MAX, &v, &status, &reason),
                         -EBADMSG);
        ck_assert_msg(status == want, "type %s: status %d, not %d (%s)", type, status, want, reason);
        ck_assert_ptr_nonnull(reason);
        ck_assert_ptr_null(v);
        close(fd);
}

START_TEST(test_memfd_map_refuses_what_is_not_a_sealed_memfd_of_a_good_type) {
        static const char data[64] = "0123456789";
        int p[2];

        assert_refused(memfd_with(data, sizeof(data), 0), "ay", 1024, PAYLOAD_MEMFD_NOT_SEALED);
        assert_refused(memfd_with(data, sizeof(data), F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL), "ay",
                       1024, PAYLOAD_MEMFD_NOT_SEALED);
        assert_refused(memfd_with(data, sizeof(data), F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL), "ay",
                       1024, PAYLOAD_MEMFD_NOT_SEALED);
        ck_assert_int_eq(pipe2(p, O_CLOEXEC), 0);
        close(p[1]);
        assert_refused(p[0], "ay", 1024, PAYLOAD_MEMFD_NOT_MEMFD);
        assert_refused(memfd_with(data, 0, ALL_SEALS), "ay", 1024, PAYLOAD_MEMFD_EMPTY);
        assert_refused(memfd_with(data, sizeof(data), ALL_SEALS), "ay", sizeof(data) - 1,
                       PAYLOAD_MEMFD_TOO_LARGE);
        assert_refused(memfd_with(data, sizeof(data), ALL_SEALS), "ii", 1024, PAYLOAD_MEMFD_BAD_TYPE);
        assert_refused(memfd_with(data, sizeof(data), ALL_SEALS), "", 1024, PAYLOAD_MEMFD_BAD_TYPE);
        assert_refused(memfd_with(data, sizeof(data), ALL_SEALS), "mi", 1024, PAYLOAD_MEMFD_BAD_TYPE);
        assert_refused(memfd_with(data, sizeof(data), ALL_SEALS), "()", 1024, PAYLOAD_MEMFD_BAD_TYPE);
        assert_refused(memfd_with(data, sizeof(data), ALL_SEALS), "(ih)", 1024, PAYLOAD_MEMFD_BAD_TYPE);

        /* A variant in the bytes naming a type with an fd is as bad as the type itself. */
        g_autoptr(GVariant) v = g_variant_ref_sink(g_variant_new_variant(g_variant_new_handle(3)));
        assert_refused(memfd_with(g_variant_get_data(v), g_variant_get_size(v), ALL_SEALS), "v", 1024,
                       PAYLOAD_MEMFD_BAD_TYPE);

        /* Exactly at the limit is fine. */
        g_autoptr(GVariant) ok = NULL;
        _cleanup_(closep) int fd = memfd_with(data, sizeof(data), ALL_SEALS);
        ck_assert_int_eq(payload_memfd_map(fd, "ay", sizeof(data), PAYLOAD_VALUES_MAX, &ok, NULL, NULL), 0);
        ck_assert_uint_eq(g_variant_n_children(ok), sizeof(data));
}
END_TEST

START_TEST(test_memfd_garbage_of_a_valid_type_reads_safely) {
        uint8_t junk[257];
        g_autoptr(GVariant) v = NULL;
        _cleanup_(closep) int fd = -1;

        for (size_t i = 0; i < sizeof(junk); i++)
                junk[i] = (uint8_t) (i * 97 + 13);
        fd = memfd_with(junk, sizeof(junk), ALL_SEALS);
        ck_assert_int_eq(payload_memfd_map(fd, "(sasa{sx}ay)", 1024, PAYLOAD_VALUES_MAX, &v, NULL, NULL), 0);
        /* Whatever GLib makes of the bytes is a value of that type, in bounds. */
        g_autofree char *text = g_variant_print(v, true);
        g_autoptr(GVariant) normal = g_variant_get_normal_form(v);
        ck_assert_ptr_nonnull(text);
        ck_assert(g_variant_is_normal_form(normal));
        ck_assert_str_eq(g_variant_get_type_string(normal), "(sasa{sx}ay)");
}
END_TEST

START_TEST(test_has_handles_looks_into_variants) {
        g_autoptr(GVariant) plain = sample_value();
        g_autoptr(GVariant) direct = g_variant_ref_sink(g_variant_new("(ih)", 1, 2));
        g_autoptr(GVariant) nested = g_variant_ref_sink(
                g_variant_new("(sv)", "x", g_variant_new_variant(g_variant_new("ah", NULL))));
        g_autoptr(GVariant) no_fd = g_variant_ref_sink(g_variant_new("(sv)", "x", g_variant_new_int32(1)));

        ck_assert(!payload_has_handles(plain));
        ck_assert(payload_has_handles(direct));
        ck_assert(payload_has_handles(nested));
        ck_assert(!payload_has_handles(no_fd));
}
END_TEST

static bool same_file(int a, int b) {
        struct stat sa, sb;

        return fstat(a, &sa) == 0 && fstat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

/* Every fd of a value, wherever it is nested, is duplicated (a new number, the same file);
 * the rest of the value is kept. */
START_TEST(test_dup_handles_copies_every_fd) {
        int a = open("/dev/null", O_RDONLY | O_CLOEXEC), b = memfd_create("dup-test", MFD_CLOEXEC);
        ck_assert_int_ge(a, 0);
        ck_assert_int_ge(b, 0);
        GVariantBuilder ah;
        g_variant_builder_init(&ah, G_VARIANT_TYPE("ah"));
        g_variant_builder_add(&ah, "h", a);
        g_variant_builder_add(&ah, "h", b);
        g_autoptr(GVariant) value = g_variant_ref_sink(g_variant_new(
                "(shahva{sv})", "x", a, &ah, g_variant_new_variant(g_variant_new_handle(b)), NULL));
        g_autoptr(GArray) fds = g_array_new(FALSE, FALSE, sizeof(int));
        g_autoptr(GVariant) copy = NULL;

        ck_assert_int_eq(payload_dup_handles(value, fds, &copy), 0);
        ck_assert(!g_variant_is_floating(copy));
        ck_assert_str_eq(g_variant_get_type_string(copy), "(shahva{sv})");
        ck_assert_uint_eq(fds->len, 4);

        int h, h1, h2, hv;
        g_autoptr(GVariant) v = NULL;
        const char *s;
        g_autoptr(GVariantIter) iter = NULL;
        g_variant_get(copy, "(&shahva{sv})", &s, &h, &iter, &v, NULL);
        ck_assert_str_eq(s, "x");
        ck_assert(g_variant_iter_next(iter, "h", &h1));
        ck_assert(g_variant_iter_next(iter, "h", &h2));
        g_autoptr(GVariant) inner = g_variant_get_variant(v);
        hv = g_variant_get_handle(inner);
        int got[] = { h, h1, h2, hv }, from[] = { a, a, b, b };
        for (size_t i = 0; i < G_N_ELEMENTS(got); i++) {
                ck_assert_int_eq(got[i], g_array_index(fds, int, i));
                ck_assert_int_ne(got[i], from[i]);
                ck_assert(same_file(got[i], from[i]));
                ck_assert_int_eq(fcntl(got[i], F_GETFD), FD_CLOEXEC);
        }
        /* The duplicates stay open when the originals are closed. */
        close(a);
        close(b);
        for (size_t i = 0; i < G_N_ELEMENTS(got); i++) {
                ck_assert_int_ge(fcntl(got[i], F_GETFD), 0);
                close(got[i]);
        }
}
END_TEST

/* An fd that is not open: -EBADF, and no duplicate is left open or listed. The fds are checked
 * before any is duplicated: a duplicate of an earlier one could take the closed one's number
 * (the lowest free) and stand for it. */
START_TEST(test_dup_handles_refuses_a_closed_fd) {
        int a = open("/dev/null", O_RDONLY | O_CLOEXEC), closed = open("/dev/null", O_RDONLY | O_CLOEXEC);
        ck_assert_int_ge(a, 0);
        ck_assert_int_ge(closed, 0);
        close(closed);
        g_autoptr(GVariant) value = g_variant_ref_sink(g_variant_new("(hh)", a, closed));
        g_autoptr(GArray) fds = g_array_new(FALSE, FALSE, sizeof(int));
        GVariant *copy = NULL;
        int next;

        ck_assert_int_eq(payload_dup_handles(value, fds, &copy), -EBADF);
        ck_assert_ptr_null(copy);
        ck_assert_uint_eq(fds->len, 0);
        /* The duplicate of a was closed: the lowest free number is the one it took. */
        next = dup(a);
        ck_assert_int_ge(next, 0);
        ck_assert_int_eq(next, closed);
        close(next);
        close(a);
}
END_TEST

START_TEST(test_shape_of_members) {
        ck_assert_int_eq(message_shape_of("Deliver", "sv", false), MESSAGE_ONE);
        ck_assert_int_eq(message_shape_of("DeliverNull", "s", false), MESSAGE_NULL);
        ck_assert_int_eq(message_shape_of("DeliverBatch", "sgay", false), MESSAGE_BATCH);
        ck_assert_int_eq(message_shape_of("DeliverMemfd", "sgh", false), MESSAGE_MEMFD);
        ck_assert_int_eq(message_shape_of("Broadcast", "sv", true), MESSAGE_ONE);
        ck_assert_int_eq(message_shape_of("BroadcastNull", "s", true), MESSAGE_NULL);
        ck_assert_int_eq(message_shape_of("BroadcastBatch", "sgay", true), MESSAGE_BATCH);
        ck_assert_int_eq(message_shape_of("BroadcastMemfd", "sgh", true), MESSAGE_MEMFD);
        /* A method name as a signal, a wrong signature, an unknown member, nothing. */
        ck_assert_int_eq(message_shape_of("Deliver", "sv", true), -EBADMSG);
        ck_assert_int_eq(message_shape_of("BroadcastMemfd", "sgh", false), -EBADMSG);
        ck_assert_int_eq(message_shape_of("DeliverMemfd", "sg", false), -EBADMSG);
        ck_assert_int_eq(message_shape_of("Other", "sv", false), -EBADMSG);
        ck_assert_int_eq(message_shape_of(NULL, "sv", false), -EBADMSG);
}
END_TEST

static sd_bus_message *memfd_message(const char *event, const char *type, int fd) {
        sd_bus_message *m = NULL;

        ck_assert_int_eq(sd_bus_message_new_method_call(bus, &m, "org.example.X", "/x",
                                                        "org.ipchannel.Peer1", "DeliverMemfd"), 0);
        ck_assert_int_ge(sd_bus_message_append(m, "sgh", event, type, fd), 0);
        ck_assert_int_eq(sd_bus_message_seal(m, 1, 0), 0);
        ck_assert_int_ge(sd_bus_message_rewind(m, true), 0);
        return m;
}

static int read_with(sd_bus_message *m, message_shape shape, const message_limits *limits,
                     const char *want_error, GPtrArray **ret) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autoptr(GPtrArray) payloads = NULL;
        const char *event = NULL;
        int r = message_read(m, shape, limits, &event, &payloads, &error);

        if (want_error) {
                ck_assert_int_lt(r, 0);
                ck_assert_msg(sd_bus_error_has_name(&error, want_error), "got %s, not %s", error.name,
                              want_error);
        } else {
                ck_assert_msg(r == 0, "refused: %s", error.message);
                ck_assert_str_eq(event, "ev");
                if (ret)
                        *ret = g_steal_pointer(&payloads);
        }
        return r;
}

START_TEST(test_read_memfd_message_and_its_limits) {
        g_autoptr(GVariant) value = sample_value();
        g_autoptr(GPtrArray) payloads = NULL;
        _cleanup_(closep) int fd = -1;
        message_limits small = default_limits;

        ck_assert_int_eq(payload_memfd_new(value, &fd), 0);
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = memfd_message("ev", g_variant_get_type_string(value), fd);
        read_with(m, MESSAGE_MEMFD, &default_limits, NULL, &payloads);
        ck_assert_uint_eq(payloads->len, 1);
        ck_assert(g_variant_equal(g_ptr_array_index(payloads, 0), value));

        /* One byte under the size: LimitsExceeded, -EFBIG. */
        small.memfd_max = g_variant_get_size(value) - 1;
        ck_assert_int_ge(sd_bus_message_rewind(m, true), 0);
        ck_assert_int_eq(read_with(m, MESSAGE_MEMFD, &small, SD_BUS_ERROR_LIMITS_EXCEEDED, NULL), -EFBIG);

        /* An unsealed memfd: InvalidMemfd, -EBADF. */
        _cleanup_(closep) int unsealed = memfd_with("abcd", 4, 0);
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m2 = memfd_message("ev", "ay", unsealed);
        ck_assert_int_eq(read_with(m2, MESSAGE_MEMFD, &default_limits, IPCHANNEL_ERROR_INVALID_MEMFD, NULL),
                         -EBADF);

        /* A bad type: InvalidArgs. */
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m3 = memfd_message("ev", "ah", fd);
        ck_assert_int_eq(read_with(m3, MESSAGE_MEMFD, &default_limits, SD_BUS_ERROR_INVALID_ARGS, NULL),
                         -EBADMSG);
}
END_TEST

START_TEST(test_read_applies_the_event_and_values_limits) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        message_limits limits = default_limits;
        g_autoptr(GPtrArray) payloads = NULL;

        ck_assert_int_eq(sd_bus_message_new_method_call(bus, &m, "org.example.X", "/x",
                                                        "org.ipchannel.Peer1", "DeliverBatch"), 0);
        GVariant *sent[3] = { g_variant_ref_sink(g_variant_new_string("a")),
                              g_variant_ref_sink(g_variant_new_string("b")),
                              g_variant_ref_sink(g_variant_new("(ii)", 1, 2)) };
        const char *element;
        g_autoptr(GBytes) packed = payload_pack(sent, 3, &element);
        size_t size;
        const void *data = g_bytes_get_data(packed, &size);

        ck_assert_int_ge(sd_bus_message_append(m, "sg", "ev", element), 0);
        for (size_t i = 0; i < 3; i++)
                g_variant_unref(sent[i]);
        ck_assert_int_ge(sd_bus_message_append_array(m, 'y', data, size), 0);
        ck_assert_int_eq(sd_bus_message_seal(m, 1, 0), 0);

        ck_assert_int_ge(sd_bus_message_rewind(m, true), 0);
        read_with(m, MESSAGE_BATCH, &limits, NULL, &payloads);
        ck_assert_uint_eq(payloads->len, 3);

        /* A packed batch builds no value per element, and is taken when each of its payloads
         * would be taken alone; it may hold as many payloads as a sender packs in one batch,
         * whatever the limit. */
        limits.values_max = 1;
        ck_assert_int_ge(sd_bus_message_rewind(m, true), 0);
        ck_assert_int_eq(read_with(m, MESSAGE_BATCH, &limits, NULL, NULL), 0);
        {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *big = NULL;
                GVariant *many[PAYLOAD_BATCH_MAX + 1];

                for (size_t i = 0; i < G_N_ELEMENTS(many); i++)
                        many[i] = g_variant_ref_sink(g_variant_new_uint32((uint32_t) i));
                ck_assert_int_eq(sd_bus_message_new_method_call(bus, &big, "org.example.X", "/x",
                                                                "org.ipchannel.Peer1", "DeliverBatch"), 0);
                ck_assert_int_ge(sd_bus_message_append_basic(big, 's', "ev"), 0);
                ck_assert_int_eq(payload_append_packed(big, many, G_N_ELEMENTS(many)), 0);
                ck_assert_int_eq(sd_bus_message_seal(big, 1, 0), 0);
                for (size_t i = 0; i < G_N_ELEMENTS(many); i++)
                        g_variant_unref(many[i]);
                limits.values_max = PAYLOAD_BATCH_MAX;
                ck_assert_int_ge(sd_bus_message_rewind(big, true), 0);
                ck_assert_int_eq(read_with(big, MESSAGE_BATCH, &limits, SD_BUS_ERROR_LIMITS_EXCEEDED, NULL),
                                 -ENOBUFS);
                limits.values_max = PAYLOAD_BATCH_MAX + 1;
                ck_assert_int_ge(sd_bus_message_rewind(big, true), 0);
                ck_assert_int_eq(read_with(big, MESSAGE_BATCH, &limits, NULL, NULL), 0);
        }

        /* "ev" is 2 bytes: a bound of 1 refuses it. */
        limits.event_name_max = 1;
        ck_assert_int_ge(sd_bus_message_rewind(m, true), 0);
        ck_assert_int_eq(read_with(m, MESSAGE_BATCH, &limits, IPCHANNEL_ERROR_INVALID_EVENT, NULL), -EINVAL);
}
END_TEST

/* A batch of one payload type goes as an array of that type; the payloads it gives outlive
 * the message, and hold nothing of it (ASan and valgrind would see it otherwise). */
START_TEST(test_read_batch_of_one_type) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        g_autoptr(GPtrArray) payloads = NULL;
        GVariant *sent[3];
        const char *element;

        for (int i = 0; i < 3; i++)
                sent[i] = g_variant_ref_sink(g_variant_new("(si)", "word", i));
        g_autoptr(GBytes) packed = payload_pack(sent, 3, &element);
        size_t size;
        const void *data = g_bytes_get_data(packed, &size);

        ck_assert_str_eq(element, "(si)");
        ck_assert_int_eq(sd_bus_message_new_method_call(bus, &m, "org.example.X", "/x",
                                                        "org.ipchannel.Peer1", "DeliverBatch"), 0);
        ck_assert_int_ge(sd_bus_message_append(m, "sg", "ev", element), 0);
        ck_assert_int_ge(sd_bus_message_append_array(m, 'y', data, size), 0);
        ck_assert_int_eq(sd_bus_message_seal(m, 1, 0), 0);
        for (int i = 0; i < 3; i++)
                g_variant_unref(sent[i]);
        g_clear_pointer(&packed, g_bytes_unref);

        ck_assert_int_ge(sd_bus_message_rewind(m, true), 0);
        read_with(m, MESSAGE_BATCH, &default_limits, NULL, &payloads);
        m = sd_bus_message_unref(m);
        ck_assert_uint_eq(payloads->len, 3);
        for (guint i = 0; i < payloads->len; i++) {
                const char *word;
                int32_t n;

                ck_assert(g_variant_is_of_type(payloads->pdata[i], G_VARIANT_TYPE("(si)")));
                g_variant_get(payloads->pdata[i], "(&si)", &word, &n);
                ck_assert_str_eq(word, "word");
                ck_assert_int_eq(n, (int32_t) i);
        }
}
END_TEST

/* The sender serializes a batch straight into the message: the same element type and bytes as
 * payload_pack(), for one type and for mixed ones. */
START_TEST(test_append_packed_is_payload_pack) {
        const char *sets[][3] = {
                { "('a', 1)", "('bb', 2)", "('', 3)" },
                { "('a', 1)", "'x'", "@a{sv} {'k': <@ay [1, 2]>}" },
                { "<1>", "<'v'>", "<(1, 2)>" },
                { "@ay []", "@ay [1]", "@ay []" },
                { "@x 1", "@x -2", "@x 3" },              /* 8-aligned arrays: "ax", "a(td)" */
                { "(@t 1, 0.5)", "(@t 2, 1.5)", "(@t 3, 2.5)" },
        };
        /* The array's bytes in the message are 8-aligned or not depending on the length of
         * what comes before them: GLib must never be asked to serialize into unaligned bytes. */
        const char *events[] = { "e", "ev", "eve", "even", "event", "events", "eventsx", "eventsxy" };

        for (size_t k = 0; k < G_N_ELEMENTS(sets) * G_N_ELEMENTS(events); k++) {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
                g_autoptr(GBytes) packed = NULL;
                GVariant *values[3];
                const char *element, *read_element, *event;
                const void *data = NULL, *want;
                size_t size = 0, want_size;

                const char *const *set = sets[k / G_N_ELEMENTS(events)];
                const char *ev = events[k % G_N_ELEMENTS(events)];

                for (size_t i = 0; i < 3; i++)     /* g_variant_parse(): not floating */
                        values[i] = g_variant_parse(NULL, set[i], NULL, NULL, NULL);
                packed = payload_pack(values, 3, &element);
                want = g_bytes_get_data(packed, &want_size);

                ck_assert_int_eq(sd_bus_message_new_method_call(bus, &m, "org.example.X", "/x",
                                                                "org.ipchannel.Peer1", "DeliverBatch"), 0);
                ck_assert_int_ge(sd_bus_message_append_basic(m, 's', ev), 0);
                ck_assert_int_eq(payload_append_packed(m, values, 3), 0);
                ck_assert_int_eq(sd_bus_message_seal(m, 1, 0), 0);
                ck_assert_int_ge(sd_bus_message_rewind(m, true), 0);
                ck_assert_int_gt(sd_bus_message_read(m, "sg", &event, &read_element), 0);
                ck_assert_str_eq(event, ev);
                ck_assert_int_ge(sd_bus_message_read_array(m, 'y', &data, &size), 0);
                ck_assert_str_eq(read_element, element);
                ck_assert_uint_eq(size, want_size);
                ck_assert(size == 0 || memcmp(data, want, size) == 0);
                for (size_t i = 0; i < 3; i++)
                        g_variant_unref(values[i]);
        }
}
END_TEST

/* The walk into a memfd payload's variants is bounded by the values limit, as an inline
 * payload's decoding is: 100 variants in an "av" take 101 values (the array, then each). */
START_TEST(test_memfd_variants_walk_is_bounded) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        message_limits limits = default_limits;
        g_autoptr(GVariant) value = NULL;
        _cleanup_(closep) int fd = -1;
        GVariantBuilder b;

        g_variant_builder_init(&b, G_VARIANT_TYPE("av"));
        for (int i = 0; i < 100; i++)
                g_variant_builder_add(&b, "v", g_variant_new_int32(i));
        value = g_variant_ref_sink(g_variant_builder_end(&b));
        ck_assert_int_eq(payload_memfd_new(value, &fd), 0);
        for (size_t max = 99; max <= 101; max++) {
                g_autoptr(GVariant) v = NULL;
                payload_memfd_status status = PAYLOAD_MEMFD_OK;
                const char *reason = NULL;
                int r = payload_memfd_map(fd, "av", 1 << 20, max, &v, &status, &reason);

                if (max < 101) {
                        ck_assert_int_eq(r, -EBADMSG);
                        ck_assert_int_eq(status, PAYLOAD_MEMFD_TOO_MANY_VALUES);
                        ck_assert_ptr_nonnull(reason);
                        ck_assert_ptr_null(v);
                } else {
                        ck_assert_int_eq(r, 0);
                        ck_assert(g_variant_equal(v, value));
                }
        }

        /* Through the decoder: the sender is told LimitsExceeded. */
        ck_assert_int_eq(sd_bus_message_new_method_call(bus, &m, "org.example.X", "/x",
                                                        "org.ipchannel.Peer1", "DeliverMemfd"), 0);
        ck_assert_int_ge(sd_bus_message_append(m, "sgh", "ev", "av", fd), 0);
        ck_assert_int_eq(sd_bus_message_seal(m, 1, 0), 0);
        limits.values_max = 100;
        ck_assert_int_eq(read_with(m, MESSAGE_MEMFD, &limits, SD_BUS_ERROR_LIMITS_EXCEEDED, NULL), -ENOBUFS);
        limits.values_max = 101;
        ck_assert_int_ge(sd_bus_message_rewind(m, true), 0);
        ck_assert_int_eq(read_with(m, MESSAGE_MEMFD, &limits, NULL, NULL), 0);
}
END_TEST

START_TEST(test_event_name_bound_is_settable) {
        char name[IPCHANNEL_EVENT_NAME_MAX_LIMIT + 2];

        memset(name, 'e', sizeof(name) - 1);
        name[sizeof(name) - 1] = '\0';
        ck_assert_int_eq(names_check_event_max(name, IPCHANNEL_EVENT_NAME_MAX_LIMIT, NULL), -EINVAL);
        name[IPCHANNEL_EVENT_NAME_MAX_LIMIT] = '\0';
        ck_assert_int_eq(names_check_event_max(name, IPCHANNEL_EVENT_NAME_MAX_LIMIT, NULL), 0);
        ck_assert_int_eq(names_check_event(name, NULL), -EINVAL);
        /* The longest event's match rule, for the longest app, stays under dbus-daemon's 1024. */
        char app[IPCHANNEL_APP_NAME_MAX + 1];
        memset(app, 'a', IPCHANNEL_APP_NAME_MAX);
        app[IPCHANNEL_APP_NAME_MAX] = '\0';
        g_autofree char *path = names_path(IPCHANNEL_PREFIX_DEFAULT, app);
        g_autofree char *rule = names_broadcast_match(path, name);
        ck_assert_ptr_nonnull(rule);
        ck_assert_uint_le(strlen(rule), 1024);
}
END_TEST

int main(void) {
        Suite *s = suite_create("message");
        TCase *tc = tcase_create("memfd");
        SRunner *sr;
        int failed;

        g_log_set_always_fatal(G_LOG_LEVEL_CRITICAL | G_LOG_LEVEL_WARNING);

        tcase_add_test(tc, test_memfd_round_trip_is_sealed);
        tcase_add_test(tc, test_large_memfd_is_mapped_not_copied);
        tcase_add_test(tc, test_memfd_mapping_lives_until_the_last_reference);
        tcase_add_test(tc, test_memfd_map_refuses_what_is_not_a_sealed_memfd_of_a_good_type);
        tcase_add_test(tc, test_memfd_garbage_of_a_valid_type_reads_safely);
        tcase_add_test(tc, test_has_handles_looks_into_variants);
        tcase_add_test(tc, test_dup_handles_copies_every_fd);
        tcase_add_test(tc, test_dup_handles_refuses_a_closed_fd);
        suite_add_tcase(s, tc);

        tc = tcase_create("message");
        tcase_add_checked_fixture(tc, bus_setup, bus_teardown);
        tcase_add_test(tc, test_shape_of_members);
        tcase_add_test(tc, test_read_memfd_message_and_its_limits);
        tcase_add_test(tc, test_read_applies_the_event_and_values_limits);
        tcase_add_test(tc, test_read_batch_of_one_type);
        tcase_add_test(tc, test_append_packed_is_payload_pack);
        tcase_add_test(tc, test_memfd_variants_walk_is_bounded);
        tcase_add_test(tc, test_event_name_bound_is_settable);
        suite_add_tcase(s, tc);

        sr = srunner_create(s);
        srunner_run_all(sr, CK_ENV);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

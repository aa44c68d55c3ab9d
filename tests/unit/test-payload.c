/* SPDX-License-Identifier: MIT */
/* Unit tests of payload.c: GVariant values through D-Bus message variants and back, no daemon. */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memfd_create(), memmem(); check.pc defines it too */
#endif

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <check.h>
#include <glib.h>
#include <systemd/sd-bus.h>

#include "payload.h"

#define _cleanup_(f) __attribute__((cleanup(f)))

/* The random test runs values PAYLOAD_TEST_SEED, +1, ... (PAYLOAD_TEST_COUNT of them); a failure
 * prints the settings that regenerate just the failing value. */
#define RANDOM_SEED_DEFAULT 20240601u
#define RANDOM_VALUES 4000
/* Past this many nodes a generated value stops growing: keeps the run short under valgrind. */
#define RANDOM_NODES_MAX 400

static void closep(int *fd) {
        if (*fd >= 0)
                close(*fd);
}

/* sd_bus_message_new_*() needs a bus that has left the UNSET state. Giving sd-bus one end of a
 * socketpair and starting it is enough: it stays in the authenticating state forever, as nobody
 * answers, and in that state its messages may carry fds (sd-bus sets allow_fds while the bus is
 * not yet in HELLO or RUNNING, since it cannot know yet whether the peer accepts them). */
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
        if (peer_fd >= 0)
                close(peer_fd);
        peer_fd = -1;
}

static sd_bus_message *message_new(void) {
        sd_bus_message *m = NULL;

        ck_assert_int_eq(sd_bus_message_new_method_call(bus, &m, "org.example.X", "/x",
                                                        "org.example.I", "M"), 0);
        return m;
}

/* Seals m as if sent and moves to its start as if received. */
static void message_seal_rewind(sd_bus_message *m) {
        ck_assert_int_eq(sd_bus_message_seal(m, 1, 0), 0);
        ck_assert_int_ge(sd_bus_message_rewind(m, true), 0);
}

/* Sends value through a message; the message is returned too, as it owns any fds read back. */
static int round_trip_full(GVariant *value, sd_bus_message **ret_message, GVariant **ret) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = message_new();
        GVariant *v = NULL;
        int r;

        r = payload_append_variant(m, value);
        if (r < 0)
                return r;
        message_seal_rewind(m);
        r = payload_read_variant(m, &v);
        if (r < 0)
                return r;
        ck_assert_int_gt(sd_bus_message_at_end(m, true), 0);
        ck_assert(!g_variant_is_floating(v));

        *ret_message = sd_bus_message_ref(m);
        *ret = v;
        return 0;
}

/* For values without fds, whose message can go at once. A floating value is consumed. */
static GVariant *round_trip(GVariant *value) {
        g_autoptr(GVariant) owned = g_variant_ref_sink(value);
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        GVariant *v = NULL;
        int r;

        r = round_trip_full(owned, &m, &v);
        ck_assert_msg(r == 0, "round trip of %s failed: %s",
                      g_variant_get_type_string(owned), g_strerror(-r));
        return v;
}

/* The reader writes a payload's GVariant bytes itself and GLib trusts them: b's bytes must be
 * GLib's own normal form of a (same length, same bytes), and GLib must find them normal when it
 * reads them without trusting them. */
static bool variants_identical(GVariant *a, GVariant *b) {
        g_autoptr(GVariant) na = g_variant_get_normal_form(a);
        g_autoptr(GVariant) untrusted = NULL;

        if (strcmp(g_variant_get_type_string(a), g_variant_get_type_string(b)) != 0 ||
            g_variant_get_size(na) != g_variant_get_size(b) ||
            (g_variant_get_size(b) > 0 &&
             memcmp(g_variant_get_data(na), g_variant_get_data(b), g_variant_get_size(b)) != 0))
                return false;
        untrusted = g_variant_ref_sink(g_variant_new_from_data(g_variant_get_type(b),
                                                               g_variant_get_data(b),
                                                               g_variant_get_size(b), false,
                                                               NULL, NULL));
        return g_variant_is_normal_form(untrusted);
}

static void assert_round_trips(GVariant *value) {
        g_autoptr(GVariant) owned = g_variant_ref_sink(value);
        g_autoptr(GVariant) back = round_trip(owned);

        if (!variants_identical(owned, back)) {
                g_autofree char *sent = g_variant_print(owned, true);
                g_autofree char *got = g_variant_print(back, true);

                ck_abort_msg("sent %s, got %s", sent, got);
        }
}

static int append_to_new_message(GVariant *value) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = message_new();

        return payload_append_variant(m, value);
}

static GVariant *nest_variants(GVariant *inner, unsigned n) {
        GVariant *v = inner;

        for (unsigned i = 0; i < n; i++)
                v = g_variant_new_variant(v);
        return v;
}

/* A type string of n nested containers of open...close around 'i'. */
static char *nested_type(const char *open, const char *close, unsigned n) {
        GString *s = g_string_new(NULL);

        for (unsigned i = 0; i < n; i++)
                g_string_append(s, open);
        g_string_append_c(s, 'i');
        for (unsigned i = 0; i < n; i++)
                g_string_append(s, close);
        return g_string_free(s, false);
}

static int check_type_string(const char *type, const char **ret_reason) {
        ck_assert_msg(g_variant_type_string_is_valid(type), "bad test type %s", type);
        return payload_check_type(G_VARIANT_TYPE(type), ret_reason);
}

/* The reason must name the problem (word), not only exist: callers show it to developers. */
static void assert_type_refused(const char *type, const char *word) {
        const char *reason = NULL;

        ck_assert_msg(check_type_string(type, &reason) == -EINVAL, "type %s accepted", type);
        ck_assert_msg(reason && strstr(reason, word), "type %s refused for \"%s\", not %s", type,
                      reason ? reason : "(no reason)", word);
}

static void assert_type_accepted(const char *type) {
        const char *reason = NULL;
        int r = check_type_string(type, &reason);

        ck_assert_msg(r == 0, "type %s refused: %s", type, reason ? reason : "(no reason)");
}

START_TEST(test_basic_types_round_trip) {
        static const char *strings[] = {
                "", "a", "hello, world", "h\xc3\xa9llo w\xc3\xb6rld",
                "\xe2\x9c\x93 \xe6\x97\xa5\xe6\x9c\xac",
                "\xf0\x9d\x84\x9e astral", "tab\tnewline\n\x7f", "\xef\xbf\xbd",
        };
        static const char *paths[] = { "/", "/a", "/org/example/Obj_1", "/A/b/C9/_" };
        static const char *signatures[] = {
                "", "i", "a{sv}", "(ii)", "a(sa{sv}av)", "ybnqiuxtdsogvh", "aaaai",
        };
        const double doubles[] = {
                0.0, -0.0, 1.0, -1.0, 1.0 / 3.0, INFINITY, -INFINITY, DBL_MIN, -DBL_MIN, DBL_MAX,
                -DBL_MAX, DBL_TRUE_MIN, DBL_EPSILON, 1e300, -1e-300,
        };

        assert_round_trips(g_variant_new_boolean(true));
        assert_round_trips(g_variant_new_boolean(false));
        assert_round_trips(g_variant_new_byte(0));
        assert_round_trips(g_variant_new_byte(UINT8_MAX));
        assert_round_trips(g_variant_new_int16(0));
        assert_round_trips(g_variant_new_int16(INT16_MIN));
        assert_round_trips(g_variant_new_int16(INT16_MAX));
        assert_round_trips(g_variant_new_uint16(0));
        assert_round_trips(g_variant_new_uint16(UINT16_MAX));
        assert_round_trips(g_variant_new_int32(0));
        assert_round_trips(g_variant_new_int32(-1));
        assert_round_trips(g_variant_new_int32(INT32_MIN));
        assert_round_trips(g_variant_new_int32(INT32_MAX));
        assert_round_trips(g_variant_new_uint32(0));
        assert_round_trips(g_variant_new_uint32(UINT32_MAX));
        assert_round_trips(g_variant_new_int64(0));
        assert_round_trips(g_variant_new_int64(INT64_MIN));
        assert_round_trips(g_variant_new_int64(INT64_MAX));
        assert_round_trips(g_variant_new_uint64(0));
        assert_round_trips(g_variant_new_uint64(UINT64_MAX));
        for (size_t i = 0; i < G_N_ELEMENTS(doubles); i++) {
                g_autoptr(GVariant) sent = g_variant_ref_sink(g_variant_new_double(doubles[i]));
                g_autoptr(GVariant) back = round_trip(sent);
                double d = g_variant_get_double(back);

                /* Bit for bit: == would let -0.0 come back as 0.0. */
                ck_assert_msg(memcmp(&d, &doubles[i], sizeof(d)) == 0, "double %a came back as %a",
                              doubles[i], d);
                ck_assert(variants_identical(sent, back));
        }
        for (size_t i = 0; i < G_N_ELEMENTS(strings); i++) {
                g_autoptr(GVariant) back = round_trip(g_variant_new_string(strings[i]));

                ck_assert_str_eq(g_variant_get_type_string(back), "s");
                ck_assert_str_eq(g_variant_get_string(back, NULL), strings[i]);
        }
        for (size_t i = 0; i < G_N_ELEMENTS(paths); i++) {
                g_autoptr(GVariant) back = round_trip(g_variant_new_object_path(paths[i]));

                ck_assert_str_eq(g_variant_get_type_string(back), "o");
                ck_assert_str_eq(g_variant_get_string(back, NULL), paths[i]);
        }
        for (size_t i = 0; i < G_N_ELEMENTS(signatures); i++) {
                g_autoptr(GVariant) back = round_trip(g_variant_new_signature(signatures[i]));

                ck_assert_str_eq(g_variant_get_type_string(back), "g");
                ck_assert_str_eq(g_variant_get_string(back, NULL), signatures[i]);
        }
}
END_TEST

START_TEST(test_containers_round_trip) {
        assert_round_trips(g_variant_new_parsed("@ai []"));
        assert_round_trips(g_variant_new_parsed("@ab []"));
        assert_round_trips(g_variant_new_parsed("@as []"));
        assert_round_trips(g_variant_new_parsed("@a{sv} {}"));
        assert_round_trips(g_variant_new_parsed("@a(si) []"));
        assert_round_trips(g_variant_new_parsed("@av []"));
        assert_round_trips(g_variant_new_parsed("@aay [[], @ay []]"));
        assert_round_trips(g_variant_new_parsed("[true, false, true]"));
        assert_round_trips(g_variant_new_parsed("@ay [0, 1, 255]"));
        assert_round_trips(g_variant_new_parsed("@an [-32768, 0, 32767]"));
        assert_round_trips(g_variant_new_parsed("@aq [0, 65535]"));
        assert_round_trips(g_variant_new_parsed("[-2147483648, 0, 2147483647]"));
        assert_round_trips(g_variant_new_parsed("@au [0, 4294967295]"));
        assert_round_trips(g_variant_new_parsed("@ax [-9223372036854775808, 9223372036854775807]"));
        assert_round_trips(g_variant_new_parsed("@at [0, 18446744073709551615]"));
        assert_round_trips(g_variant_new_parsed("[0.5, -0.0, inf, -inf]"));
        assert_round_trips(g_variant_new_parsed("[@o '/', '/a/b']"));
        assert_round_trips(g_variant_new_parsed("[@g '', 'a{sv}']"));
        assert_round_trips(g_variant_new_parsed("{'a': <1>, 'b': <'x'>, 'c': <@a{sv} {}>}"));
        assert_round_trips(g_variant_new_parsed("@a{yb} {0: true, 255: false}"));
        assert_round_trips(g_variant_new_parsed("@a{dx} {0.5: 1, -0.0: 2}"));
        assert_round_trips(g_variant_new_parsed("@a{oas} {'/': ['a'], '/b': @as []}"));
        assert_round_trips(g_variant_new_parsed("('a', 1, (true, <(2, 'b')>), [<1>, <'s'>])"));
        assert_round_trips(g_variant_new_parsed("<<<@ay [1, 2]>>>"));
        assert_round_trips(g_variant_new_parsed("@v <@(i) (1,)>"));
        assert_round_trips(g_variant_new_parsed("[{'k': [(1, <{@s 'x': <2>}>)]}]"));
}
END_TEST

/* Random values of random types. Each value has its own seed, derived from the run's seed, so a
 * failure names exactly what to regenerate. */
typedef struct {
        GRand *rand;
        unsigned nodes;
        bool small; /* no big byte arrays */
} Gen;

static bool chance(Gen *g, unsigned percent) {
        return g_rand_int_range(g->rand, 0, 100) < (gint32) percent;
}

static char random_basic_char(Gen *g) {
        /* No 'h': fds have a test of their own, as their numbers change on the way. */
        static const char basics[] = "bynqiuxtdsog";
        return basics[g_rand_int_range(g->rand, 0, sizeof(basics) - 1)];
}

/* Appends one complete D-Bus-valid type of at most budget container levels to s. */
static void random_type(Gen *g, GString *s, unsigned budget) {
        /* The length cap keeps signatures far below 255 bytes, whatever the budget. */
        unsigned pick = budget == 0 || s->len > 80 ? 0 : g_rand_int_range(g->rand, 0, 10);

        switch (pick) {
        case 4:
        case 5:
                g_string_append_c(s, 'a');
                random_type(g, s, budget - 1);
                break;
        case 6:
                if (budget < 2) {
                        g_string_append_c(s, random_basic_char(g));
                        break;
                }
                g_string_append(s, "a{");
                g_string_append_c(s, random_basic_char(g));
                random_type(g, s, budget - 2);
                g_string_append_c(s, '}');
                break;
        case 7:
        case 8: {
                int n = g_rand_int_range(g->rand, 1, 5);

                g_string_append_c(s, '(');
                for (int i = 0; i < n; i++)
                        random_type(g, s, budget - 1);
                g_string_append_c(s, ')');
                break;
        }
        case 9:
                g_string_append_c(s, 'v');
                break;
        default:
                g_string_append_c(s, random_basic_char(g));
                break;
        }
}

static uint64_t random_bits(Gen *g) {
        return (uint64_t) g_rand_int(g->rand) << 32 | g_rand_int(g->rand);
}

/* Mostly edge values, where conversions break. */
static uint64_t random_integer(Gen *g, uint64_t min, uint64_t max) {
        switch (g_rand_int_range(g->rand, 0, 6)) {
        case 0:
                return 0;
        case 1:
                return min;
        case 2:
                return max;
        case 3:
                return (uint64_t) -1;
        default:
                return random_bits(g);
        }
}

static double random_double(Gen *g) {
        static const double edges[] = { 0.0, -0.0, INFINITY, -INFINITY, DBL_MAX, DBL_TRUE_MIN };
        double d;

        if (chance(g, 30))
                return edges[g_rand_int_range(g->rand, 0, G_N_ELEMENTS(edges))];
        do {
                uint64_t bits = random_bits(g);
                memcpy(&d, &bits, sizeof(d));
        } while (isnan(d));
        return d;
}

/* Valid UTF-8 without NUL, surrogates or noncharacters (sd-bus refuses the latter). */
static char *random_string(Gen *g) {
        GString *s = g_string_new(NULL);
        int n = chance(g, 15) ? 0 : g_rand_int_range(g->rand, 1, 24);

        for (int i = 0; i < n; i++) {
                gunichar c;

                do {
                        switch (g_rand_int_range(g->rand, 0, 4)) {
                        case 0:
                                c = g_rand_int_range(g->rand, 1, 0x80);
                                break;
                        case 1:
                                c = g_rand_int_range(g->rand, 0x80, 0x800);
                                break;
                        case 2:
                                c = g_rand_int_range(g->rand, 0x800, 0x10000);
                                break;
                        default:
                                c = g_rand_int_range(g->rand, 0x10000, 0x110000);
                                break;
                        }
                } while (!g_unichar_validate(c) || (c >= 0xfdd0 && c <= 0xfdef) ||
                         (c & 0xfffe) == 0xfffe);
                g_string_append_unichar(s, c);
        }
        return g_string_free(s, false);
}

static char *random_object_path(Gen *g) {
        static const char chars[] = "abcXYZ019_";
        GString *s = g_string_new(NULL);
        int n = g_rand_int_range(g->rand, 0, 5);

        for (int i = 0; i < n; i++) {
                int len = g_rand_int_range(g->rand, 1, 9);

                g_string_append_c(s, '/');
                for (int j = 0; j < len; j++)
                        g_string_append_c(s, chars[g_rand_int_range(g->rand, 0,
                                                                     sizeof(chars) - 1)]);
        }
        if (n == 0)
                g_string_append_c(s, '/');
        return g_string_free(s, false);
}

static char *random_signature(Gen *g) {
        GString *s = g_string_new(NULL);
        int n = g_rand_int_range(g->rand, 0, 4);

        for (int i = 0; i < n; i++)
                random_type(g, s, 3);
        return g_string_free(s, false);
}

static GVariant *random_value(Gen *g, const GVariantType *type, unsigned budget);

static GVariant *random_basic(Gen *g, char c) {
        switch (c) {
        case 'b':
                return g_variant_new_boolean(chance(g, 50));
        case 'y':
                return g_variant_new_byte(random_integer(g, 0, UINT8_MAX));
        case 'n':
                return g_variant_new_int16(random_integer(g, INT16_MIN, INT16_MAX));
        case 'q':
                return g_variant_new_uint16(random_integer(g, 0, UINT16_MAX));
        case 'i':
                return g_variant_new_int32(random_integer(g, INT32_MIN, INT32_MAX));
        case 'u':
                return g_variant_new_uint32(random_integer(g, 0, UINT32_MAX));
        case 'x':
                return g_variant_new_int64(random_integer(g, INT64_MIN, INT64_MAX));
        case 't':
                return g_variant_new_uint64(random_integer(g, 0, UINT64_MAX));
        case 'd':
                return g_variant_new_double(random_double(g));
        case 's':
                return g_variant_new_take_string(random_string(g));
        case 'o': {
                g_autofree char *p = random_object_path(g);
                return g_variant_new_object_path(p);
        }
        case 'g': {
                g_autofree char *sig = random_signature(g);
                return g_variant_new_signature(sig);
        }
        }
        ck_abort_msg("no generator for basic type %c", c);
        return NULL;
}

static GVariant *random_bytes(Gen *g, size_t n) {
        g_autofree uint8_t *bytes = g_malloc(n);

        for (size_t i = 0; i < n; i++)
                bytes[i] = g_rand_int(g->rand);
        return g_variant_new_fixed_array(G_VARIANT_TYPE_BYTE, bytes, n, 1);
}

static GVariant *random_array(Gen *g, const GVariantType *type, unsigned budget) {
        const GVariantType *element = g_variant_type_element(type);
        GVariantBuilder b;
        int n;

        if (g_variant_type_equal(element, G_VARIANT_TYPE_BYTE) && chance(g, 25))
                return random_bytes(g, g_rand_int_range(g->rand, 0,
                                                        !g->small && chance(g, 30) ? 100000 : 300));

        if (g->nodes > RANDOM_NODES_MAX || chance(g, 20))
                n = 0;
        else if (chance(g, 5))
                n = g_rand_int_range(g->rand, 5, 60);
        else
                n = g_rand_int_range(g->rand, 1, 5);

        g_variant_builder_init(&b, type);
        for (int i = 0; i < n; i++)
                g_variant_builder_add_value(&b, random_value(g, element, budget));
        return g_variant_builder_end(&b);
}

static GVariant *random_value(Gen *g, const GVariantType *type, unsigned budget) {
        g->nodes++;

        if (g_variant_type_is_basic(type))
                return random_basic(g, g_variant_type_peek_string(type)[0]);

        if (g_variant_type_is_variant(type)) {
                g_autoptr(GString) s = g_string_new(NULL);

                random_type(g, s, budget > 0 ? budget - 1 : 0);
                return g_variant_new_variant(
                        random_value(g, G_VARIANT_TYPE(s->str), budget > 0 ? budget - 1 : 0));
        }

        if (g_variant_type_is_array(type))
                return random_array(g, type, budget > 0 ? budget - 1 : 0);

        if (g_variant_type_is_tuple(type) || g_variant_type_is_dict_entry(type)) {
                GVariantBuilder b;

                g_variant_builder_init(&b, type);
                for (const GVariantType *t = g_variant_type_first(type); t;
                     t = g_variant_type_next(t))
                        g_variant_builder_add_value(
                                &b, random_value(g, t, budget > 0 ? budget - 1 : 0));
                return g_variant_builder_end(&b);
        }

        ck_abort_msg("no generator for type %s", g_variant_type_peek_string(type));
        return NULL;
}

static GVariant *random_payload(guint32 seed, bool small) {
        g_autoptr(GString) s = g_string_new(NULL);
        Gen g = { .rand = g_rand_new_with_seed(seed), .small = small };
        unsigned budget = g_rand_int_range(g.rand, 1, 7);
        GVariant *v;

        /* Mostly containers: a lone basic value has little left to find after the basic test. */
        do {
                g_string_truncate(s, 0);
                random_type(&g, s, budget);
        } while (s->len == 1 && chance(&g, 80));
        v = g_variant_ref_sink(random_value(&g, G_VARIANT_TYPE(s->str), budget));
        g_rand_free(g.rand);
        return v;
}

static guint32 random_seed(void) {
        const char *env = getenv("PAYLOAD_TEST_SEED");

        return env ? (guint32) strtoul(env, NULL, 0) : RANDOM_SEED_DEFAULT;
}

static unsigned random_count(unsigned count) {
        const char *env = getenv("PAYLOAD_TEST_COUNT");

        return env ? (unsigned) strtoul(env, NULL, 0) : count;
}

static char *print_truncated(GVariant *v) {
        char *text = g_variant_print(v, true);

        if (strlen(text) > 2000)
                strcpy(text + 1990, " ...");
        return text;
}

START_TEST(test_random_nested_values_round_trip) {
        guint32 seed = random_seed();
        unsigned count = random_count(RANDOM_VALUES);

        for (unsigned i = 0; i < count; i++) {
                guint32 value_seed = seed + i;
                g_autoptr(GVariant) sent = random_payload(value_seed, false);
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
                g_autoptr(GVariant) back = NULL;
                int r;

                r = round_trip_full(sent, &m, &back);
                if (r < 0 || !variants_identical(sent, back)) {
                        g_autofree char *text = print_truncated(sent);

                        ck_abort_msg("PAYLOAD_TEST_SEED=%u PAYLOAD_TEST_COUNT=1: %s: %s %s",
                                     value_seed,
                                     r < 0 ? g_strerror(-r) : "came back different",
                                     g_variant_get_type_string(sent), text);
                }
                ck_assert_str_eq(g_variant_get_type_string(back), g_variant_get_type_string(sent));
        }
}
END_TEST

static int memfd_new(const char *name) {
        int fd = memfd_create(name, MFD_CLOEXEC);

        ck_assert_int_ge(fd, 0);
        return fd;
}

static bool same_file(int a, int b) {
        struct stat sa, sb;

        ck_assert_int_eq(fstat(a, &sa), 0);
        ck_assert_int_eq(fstat(b, &sb), 0);
        return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

static bool fd_is_open(int fd) {
        return fcntl(fd, F_GETFD) >= 0;
}

/* A real connection: a client and a server sd-bus on the two ends of a socketpair, both driven
 * from this thread. Messages then go through sd-bus's serialization, fd passing and receive-side
 * parsing, as between two processes. */
typedef struct {
        sd_bus *client;
        sd_bus *server;
        int client_fd; /* both owned by the buses; kept to reach the raw stream */
        int server_fd;
} Link;

static void link_open_full(Link *l, bool pass_fds) {
        const sd_id128_t id = SD_ID128_MAKE(6e, 1c, 4b, 0a, 55, 27, 49, 3d,
                                            9a, 0e, 8b, 5f, 12, 34, 56, 78);
        int fds[2];

        ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, fds),
                         0);
        *l = (Link) { .client_fd = fds[0], .server_fd = fds[1] };

        ck_assert_int_eq(sd_bus_new(&l->server), 0);
        ck_assert_int_eq(sd_bus_set_fd(l->server, fds[1], fds[1]), 0);
        ck_assert_int_eq(sd_bus_set_server(l->server, true, id), 0);
        ck_assert_int_ge(sd_bus_start(l->server), 0);

        ck_assert_int_eq(sd_bus_new(&l->client), 0);
        ck_assert_int_eq(sd_bus_set_fd(l->client, fds[0], fds[0]), 0);
        ck_assert_int_ge(sd_bus_negotiate_fds(l->client, pass_fds), 0);
        ck_assert_int_ge(sd_bus_start(l->client), 0);

        /* Authentication, both ends driven in turn. */
        for (unsigned i = 0; sd_bus_is_ready(l->client) <= 0 || sd_bus_is_ready(l->server) <= 0;
             i++) {
                ck_assert_uint_lt(i, 1000);
                ck_assert_int_ge(sd_bus_process(l->client, NULL), 0);
                ck_assert_int_ge(sd_bus_process(l->server, NULL), 0);
        }
        ck_assert_int_eq(sd_bus_can_send(l->client, SD_BUS_TYPE_UNIX_FD) > 0, pass_fds);
}

static void link_open(Link *l) {
        link_open_full(l, true);
}

static void link_close(Link *l) {
        l->client = sd_bus_close_unref(l->client);
        l->server = sd_bus_close_unref(l->server);
}

static sd_bus_message *link_message_new(Link *l) {
        sd_bus_message *m = NULL;

        ck_assert_int_eq(sd_bus_message_new_signal(l->client, &m, "/x", "org.example.I", "S"), 0);
        return m;
}

/* Drives both ends until the server has a message, which comes back positioned at its start. */
static sd_bus_message *link_receive(Link *l) {
        for (unsigned i = 0; i < 100000; i++) {
                sd_bus_message *m = NULL;

                ck_assert_int_ge(sd_bus_process(l->client, NULL), 0);
                ck_assert_int_ge(sd_bus_process(l->server, &m), 0);
                if (m)
                        return m;
        }
        ck_abort_msg("no message arrived");
        return NULL;
}

static sd_bus_message *link_transfer(Link *l, sd_bus_message *m) {
        ck_assert_int_ge(sd_bus_send(l->client, m, NULL), 0);
        return link_receive(l);
}

/* Sends m and takes its bytes off the server's end of the socket before sd-bus sees them;
 * *ret_body is the offset of the message body. m must carry no fds. */
static void link_capture(Link *l, sd_bus_message *m, uint8_t *buf, size_t buf_size,
                         size_t *ret_size, size_t *ret_body) {
        size_t size = 0, total = SIZE_MAX;
        uint32_t body_size = 0, fields_size = 0;

        ck_assert_int_ge(sd_bus_send(l->client, m, NULL), 0);
        ck_assert_int_ge(sd_bus_flush(l->client), 0);

        while (size < total) {
                ssize_t n = recv(l->server_fd, buf + size, buf_size - size, MSG_DONTWAIT);

                ck_assert_msg(n > 0, "message too big for the test buffer");
                size += n;
                if (size >= 16 && total == SIZE_MAX) {
                        /* Native endian, as sd-bus writes it: body length, then header fields. */
                        memcpy(&body_size, buf + 4, sizeof(body_size));
                        memcpy(&fields_size, buf + 12, sizeof(fields_size));
                        total = 16 + ((fields_size + 7) & ~7u) + body_size;
                        ck_assert_uint_le(total, buf_size);
                }
        }
        ck_assert_uint_eq(size, total);
        *ret_size = size;
        *ret_body = total - body_size;
}

/* Feeds raw message bytes to the server as if the client had sent them. */
static sd_bus_message *link_inject(Link *l, const uint8_t *buf, size_t size) {
        ck_assert_int_eq(write(l->client_fd, buf, size), (ssize_t) size);
        return link_receive(l);
}

START_TEST(test_random_values_round_trip_over_socket) {
        guint32 seed = random_seed();
        unsigned count = random_count(RANDOM_VALUES / 4);
        Link l;

        link_open(&l);
        for (unsigned i = 0; i < count; i++) {
                guint32 value_seed = seed + i;
                g_autoptr(GVariant) sent = random_payload(value_seed, false);
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = link_message_new(&l);
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *received = NULL;
                g_autoptr(GVariant) back = NULL;
                int r;

                ck_assert_int_eq(payload_append_variant(m, sent), 0);
                received = link_transfer(&l, m);
                r = payload_read_variant(received, &back);
                if (r < 0 || !variants_identical(sent, back)) {
                        g_autofree char *text = print_truncated(sent);

                        ck_abort_msg("PAYLOAD_TEST_SEED=%u PAYLOAD_TEST_COUNT=1: %s: %s %s",
                                     value_seed,
                                     r < 0 ? g_strerror(-r) : "came back different",
                                     g_variant_get_type_string(sent), text);
                }
        }
        link_close(&l);
}
END_TEST

START_TEST(test_unix_fds_round_trip_over_socket) {
        _cleanup_(closep) int a = memfd_new("payload-sock-a");
        _cleanup_(closep) int b = memfd_new("payload-sock-b");
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *received = NULL;
        g_autoptr(GVariant) back = NULL;
        g_autoptr(GVariant) handles = NULL;
        g_autoptr(GVariant) nested = NULL;
        int f0, f1, f2, f3;
        Link l;

        link_open(&l);
        m = link_message_new(&l);
        ck_assert_int_eq(payload_append_variant(m, g_variant_new_parsed(
                "(%h, [%h, %h], <%h>)", b, a, b, a)), 0);
        received = link_transfer(&l, m);
        ck_assert_int_eq(payload_read_variant(received, &back), 0);
        ck_assert_str_eq(g_variant_get_type_string(back), "(hahv)");

        g_variant_get(back, "(h@ahv)", &f0, &handles, &nested);
        g_variant_get_child(handles, 0, "h", &f1);
        g_variant_get_child(handles, 1, "h", &f2);
        f3 = g_variant_get_handle(nested);
        ck_assert(same_file(f0, b));
        ck_assert(same_file(f1, a));
        ck_assert(same_file(f2, b));
        ck_assert(same_file(f3, a));

        received = sd_bus_message_unref(received);
        m = sd_bus_message_unref(m);
        link_close(&l);
        ck_assert(fd_is_open(a) && fd_is_open(b));
}
END_TEST

START_TEST(test_unix_fd_refused_without_fd_passing) {
        _cleanup_(closep) int fd = memfd_new("payload-no-passing");
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        Link l;

        link_open_full(&l, false);
        m = link_message_new(&l);
        ck_assert_int_eq(payload_append_variant(m, g_variant_new_parsed("[<%h>]", fd)),
                         -EOPNOTSUPP);
        m = sd_bus_message_unref(m);
        link_close(&l);
        ck_assert(fd_is_open(fd));
}
END_TEST

/* Body bytes of a real message, changed at random, reach the reader much as a hostile peer's
 * would: sd-bus checks the header on receipt but the body only as it is read. Whatever comes
 * back must be a value this side could send on in turn. */
START_TEST(test_read_survives_corrupted_messages) {
        static const uint8_t interesting[] = {
                0x00, 0x01, 0x7f, 0x80, 0xff, 'a', 'v', 'h', 'm', '(', ')', '{', '}', 's', 'y', 64,
        };
        guint32 seed = random_seed();
        unsigned count = random_count(RANDOM_VALUES);
        unsigned accepted = 0, refused = 0;
        g_autoptr(GRand) rand = NULL;
        Link l;

        link_open(&l);
        for (unsigned i = 0; i < count; i++) {
                guint32 value_seed = seed + i;
                g_autoptr(GVariant) sent = random_payload(value_seed, true);
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = link_message_new(&l);
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *received = NULL;
                g_autoptr(GVariant) back = NULL;
                uint8_t buf[65536];
                size_t size, body;
                int r;

                if (!rand)
                        rand = g_rand_new_with_seed(seed);
                else
                        g_rand_set_seed(rand, value_seed);

                ck_assert_int_eq(payload_append_variant(m, sent), 0);
                link_capture(&l, m, buf, sizeof(buf), &size, &body);

                for (int k = g_rand_int_range(rand, 1, 5); k > 0; k--) {
                        size_t at = body + g_rand_int_range(rand, 0, size - body);

                        buf[at] = g_rand_boolean(rand) ?
                                interesting[g_rand_int_range(rand, 0, sizeof(interesting))] :
                                (uint8_t) g_rand_int(rand);
                }

                received = link_inject(&l, buf, size);

                r = payload_read_variant(received, &back);
                if (r < 0) {
                        ck_assert_msg(back == NULL, "PAYLOAD_TEST_SEED=%u: output on error",
                                      value_seed);
                        refused++;
                        continue;
                }
                accepted++;
                ck_assert(!g_variant_is_floating(back));
                ck_assert_msg(g_variant_is_normal_form(back), "PAYLOAD_TEST_SEED=%u", value_seed);
                ck_assert_msg(payload_check_type(g_variant_get_type(back), NULL) == 0,
                              "PAYLOAD_TEST_SEED=%u: read %s", value_seed,
                              g_variant_get_type_string(back));
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *again = link_message_new(&l);
                r = payload_append_variant(again, back);
                ck_assert_msg(r == 0, "PAYLOAD_TEST_SEED=%u: cannot send on what was read: %s",
                              value_seed, g_strerror(-r));
        }
        link_close(&l);

        /* Both outcomes must be common, or the corruption is not reaching the parser. */
        if (count >= 100) {
                ck_assert_uint_gt(accepted, count / 10);
                ck_assert_uint_gt(refused, count / 10);
        }
}
END_TEST

/* Specific corruptions of a valid message body, each of which the reader must refuse. */
START_TEST(test_read_refuses_corrupted_values) {
        static const struct {
                const char *value;
                const char *find; /* the first n bytes like these in the body of the message... */
                const char *replace; /* ...become these */
                size_t n;
        } cases[] = {
                /* sd-bus accepts this as a variant's signature when reading, though it refuses
                 * it when writing: only payload.c stands in the way. */
                { "('k', <1>)", "(sv)", "{sv}", 4 },
                { "('k', 'l')", "(ss)", "(ms)", 4 },               /* maybe type */
                { "@ai [1, 2]", "ai", "a{", 2 },                   /* unterminated signature */
                { "@u 5", "u", "h", 1 },                           /* fd index, but no fds */
                { "'abc'", "abc", "a\xff" "c", 3 },                /* invalid UTF-8 */
                { "'abc'", "ab", "a\0", 2 },                       /* NUL inside a string */
                { "@o '/ab'", "/ab", "/a/", 3 },                   /* invalid object path */
                { "@g 'ii'", "ii", "i(", 2 },                      /* invalid signature */
                { "@ai [1]", "\x04\0\0\0", "\xf0\xff\xff\x7f", 4 }, /* array longer than body */
                { "<<'x'>>", "v\0", "q\0", 2 },                    /* contents unlike its type */
        };
        Link l;

        link_open(&l);
        for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = link_message_new(&l);
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *received = NULL;
                GVariant *back = NULL;
                uint8_t buf[4096];
                size_t size, body;
                uint8_t *at;

                ck_assert_int_eq(payload_append_variant(m, g_variant_new_parsed(cases[i].value)),
                                 0);
                link_capture(&l, m, buf, sizeof(buf), &size, &body);
                at = memmem(buf + body, size - body, cases[i].find, cases[i].n);
                ck_assert_msg(at, "case %zu: bytes to corrupt not found", i);
                memcpy(at, cases[i].replace, cases[i].n);

                received = link_inject(&l, buf, size);
                ck_assert_msg(payload_read_variant(received, &back) == -EBADMSG,
                              "case %zu: corrupted %s not refused", i, cases[i].value);
                ck_assert_ptr_null(back);
        }
        link_close(&l);
}
END_TEST

START_TEST(test_unix_fds_round_trip_to_same_files) {
        _cleanup_(closep) int a = memfd_new("payload-a");
        _cleanup_(closep) int b = memfd_new("payload-b");
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        g_autoptr(GVariant) sent = NULL;
        g_autoptr(GVariant) back = NULL;
        int fa, fb, fn, array[3];

        ck_assert(!same_file(a, b));
        sent = g_variant_ref_sink(g_variant_new_parsed(
                "(%h, @ah [%h, %h, %h], {'k': <%h>})", a, a, b, a, b));

        ck_assert_int_eq(round_trip_full(sent, &m, &back), 0);
        ck_assert_str_eq(g_variant_get_type_string(back), "(haha{sv})");

        g_variant_get(back, "(h@ah@a{sv})", &fa, NULL, NULL);
        ck_assert(same_file(fa, a));
        ck_assert_int_ne(fa, a);

        g_autoptr(GVariant) handles = g_variant_get_child_value(back, 1);
        ck_assert_uint_eq(g_variant_n_children(handles), 3);
        for (size_t i = 0; i < 3; i++)
                g_variant_get_child(handles, i, "h", &array[i]);
        ck_assert(same_file(array[0], a));
        ck_assert(same_file(array[1], b));
        ck_assert(same_file(array[2], a));
        for (size_t i = 0; i < 3; i++)
                ck_assert(array[i] != a && array[i] != b);

        g_autoptr(GVariant) dict = g_variant_get_child_value(back, 2);
        ck_assert(g_variant_lookup(dict, "k", "h", &fn));
        ck_assert(same_file(fn, b));

        /* The fds read back belong to the message; the caller's fds stay its own. */
        fb = array[1];
        m = sd_bus_message_unref(m);
        ck_assert(!fd_is_open(fa));
        ck_assert(!fd_is_open(fb));
        ck_assert(fd_is_open(a));
        ck_assert(fd_is_open(b));
        ck_assert(!same_file(a, b));
}
END_TEST

START_TEST(test_unix_fd_append_keeps_caller_fd_open) {
        _cleanup_(closep) int fd = memfd_new("payload-keep");
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = message_new();
        struct stat before, after;

        ck_assert_int_eq(fstat(fd, &before), 0);
        ck_assert_int_eq(payload_append_variant(m, g_variant_new_handle(fd)), 0);
        m = sd_bus_message_unref(m);
        ck_assert_int_eq(fstat(fd, &after), 0);
        ck_assert(before.st_ino == after.st_ino && before.st_dev == after.st_dev);
}
END_TEST

START_TEST(test_unix_fd_not_open_refused) {
        int fd = memfd_new("payload-closed");

        close(fd);
        ck_assert_int_lt(append_to_new_message(g_variant_new_handle(fd)), 0);
        ck_assert_int_lt(append_to_new_message(g_variant_new_handle(-1)), 0);
}
END_TEST

START_TEST(test_check_type_accepts_dbus_types) {
        g_autofree char *arrays32 = nested_type("a", "", 32);
        g_autofree char *structs32 = nested_type("(", ")", 32);
        g_autofree char *entries32 = nested_type("a{s", "}", 31); /* 31 arrays, 31 entries */
        g_autofree char *mixed_inner = nested_type("a(", ")", 31);
        /* 31 arrays + 32 structs + the carrying variant: exactly PAYLOAD_DEPTH_MAX. */
        g_autofree char *mixed = g_strconcat("(", mixed_inner, ")", NULL);
        g_autofree char *longest_tuple = g_strnfill(255, 'i');
        static const char *types[] = {
                "b", "y", "n", "q", "i", "u", "x", "t", "d", "s", "o", "g", "h", "v",
                "ai", "as", "av", "aay", "a{sv}", "a{hs}", "a{dv}", "a{ob}", "(i)", "(si)",
                "(sa{sv}av)", "a(si)", "((((i))))", "aaav", "a{s(a{iv}v)}",
        };

        longest_tuple[0] = '(';
        longest_tuple[254] = ')';

        for (size_t i = 0; i < G_N_ELEMENTS(types); i++)
                assert_type_accepted(types[i]);
        assert_type_accepted(arrays32);
        assert_type_accepted(structs32);
        assert_type_accepted(entries32);
        assert_type_accepted(mixed);
        assert_type_accepted(longest_tuple);
        ck_assert_uint_eq(strlen(longest_tuple), 255);
}
END_TEST

START_TEST(test_check_type_refuses_maybe) {
        assert_type_refused("mi", "maybe");
        assert_type_refused("ms", "maybe");
        assert_type_refused("ami", "maybe");
        assert_type_refused("(smi)", "maybe");
        assert_type_refused("a{sms}", "maybe");
        assert_type_refused("mv", "maybe");
}
END_TEST

START_TEST(test_check_type_refuses_empty_tuple) {
        assert_type_refused("()", "empty tuple");
        assert_type_refused("a()", "empty tuple");
        assert_type_refused("(i())", "empty tuple");
        assert_type_refused("a{s()}", "empty tuple");
}
END_TEST

START_TEST(test_check_type_refuses_dict_entry_outside_array) {
        assert_type_refused("{sv}", "dict entry");
        assert_type_refused("({sv})", "dict entry");
        assert_type_refused("a({sv})", "dict entry");
        assert_type_refused("a{s{sv}}", "dict entry");
        assert_type_accepted("a{sa{sv}}");
}
END_TEST

START_TEST(test_check_type_refuses_indefinite) {
        static const char *types[] = { "*", "?", "r", "a*", "a?", "ar", "(i*)", "a{?s}", "a{s*}" };

        for (size_t i = 0; i < G_N_ELEMENTS(types); i++)
                assert_type_refused(types[i], "indefinite");
}
END_TEST

START_TEST(test_check_type_refuses_long_signature) {
        g_autofree char *tuple = g_strnfill(256, 'i');

        tuple[0] = '(';
        tuple[255] = ')';
        assert_type_refused(tuple, "255");
}
END_TEST

START_TEST(test_check_type_refuses_deep_nesting) {
        g_autofree char *arrays33 = nested_type("a", "", 33);
        g_autofree char *structs33 = nested_type("(", ")", 33);
        g_autofree char *entries = nested_type("a{s", "}", 32); /* 32 arrays, 32 dict entries */
        g_autofree char *inner = nested_type("a(", ")", 32);  /* 32 + 32 + carrying variant */
        g_autofree char *structs_in_array = g_strconcat("a", structs33, NULL);

        assert_type_refused(arrays33, "arrays are nested more than 32");
        assert_type_refused(structs33, "structs and dict entries are nested more than 32");
        assert_type_refused(entries, "containers are nested more than");
        assert_type_refused(inner, "containers are nested more than");
        assert_type_refused(structs_in_array, "structs and dict entries are nested more than 32");
}
END_TEST

/* Values whose declared type passes may still hide, inside variants, types D-Bus cannot carry
 * or nesting deeper than allowed: appending must refuse those too. */
START_TEST(test_append_refuses_bad_values) {
        g_autofree char *arrays33 = nested_type("a", "", 33);
        g_autofree char *structs33 = nested_type("(", ")", 33);
        g_autoptr(GVariant) deep_arrays = NULL;
        g_autoptr(GVariant) deep_structs = NULL;
        GVariant *v;

        ck_assert_int_eq(append_to_new_message(g_variant_new_parsed("@mi 5")), -EINVAL);
        ck_assert_int_eq(append_to_new_message(g_variant_new_parsed("@ms nothing")), -EINVAL);
        ck_assert_int_eq(append_to_new_message(g_variant_new_parsed("()")), -EINVAL);
        ck_assert_int_eq(append_to_new_message(g_variant_new_parsed("{'k', 1}")), -EINVAL);

        v = g_variant_ref_sink(g_variant_new_parsed("<@ms nothing>"));
        ck_assert_int_eq(payload_check_type(g_variant_get_type(v), NULL), 0);
        ck_assert_int_eq(append_to_new_message(v), -EINVAL);
        g_variant_unref(v);

        ck_assert_int_eq(append_to_new_message(g_variant_new_parsed("[<1>, <(1, <@mi 3>)>]")),
                         -EINVAL);
        ck_assert_int_eq(append_to_new_message(g_variant_new_parsed("<()>")), -EINVAL);
        ck_assert_int_eq(append_to_new_message(g_variant_new_parsed("<{'k', 1}>")), -EINVAL);
        ck_assert_int_eq(append_to_new_message(g_variant_new_parsed("{'a': <<@mb true>>}")),
                         -EINVAL);

        /* g_variant_new_parsed() has a recursion limit of its own: build these directly. */
        v = g_variant_new_int32(1);
        for (unsigned i = 0; i < 33; i++)
                v = g_variant_new_array(NULL, &v, 1);
        deep_arrays = g_variant_ref_sink(v);
        ck_assert_str_eq(g_variant_get_type_string(deep_arrays), arrays33);
        ck_assert_int_eq(append_to_new_message(deep_arrays), -EINVAL);
        ck_assert_int_eq(append_to_new_message(g_variant_new_variant(deep_arrays)), -EINVAL);

        v = g_variant_new_int32(1);
        for (unsigned i = 0; i < 33; i++)
                v = g_variant_new_tuple(&v, 1);
        deep_structs = g_variant_ref_sink(v);
        ck_assert_str_eq(g_variant_get_type_string(deep_structs), structs33);
        ck_assert_int_eq(append_to_new_message(deep_structs), -EINVAL);
        ck_assert_int_eq(append_to_new_message(g_variant_new_variant(deep_structs)), -EINVAL);

        /* Each variant is a container: 70 of them nest deeper than any message may. */
        ck_assert_int_eq(append_to_new_message(nest_variants(g_variant_new_int32(1), 70)),
                         -EINVAL);
        ck_assert_int_eq(append_to_new_message(nest_variants(g_variant_new_int32(1),
                                                             PAYLOAD_DEPTH_MAX)),
                         -EINVAL);
}
END_TEST

/* The deepest values allowed go through, so the refusals above are about depth alone. */
START_TEST(test_nesting_limits_round_trip) {
        GVariant *v;

        /* With the carrying variant, PAYLOAD_DEPTH_MAX variants. */
        assert_round_trips(nest_variants(g_variant_new_int32(7), PAYLOAD_DEPTH_MAX - 1));

        v = g_variant_new_string("deep");
        for (unsigned i = 0; i < 32; i++)
                v = g_variant_new_array(NULL, &v, 1);
        assert_round_trips(v);

        v = g_variant_new_string("deep");
        for (unsigned i = 0; i < 32; i++)
                v = g_variant_new_tuple(&v, 1);
        assert_round_trips(v);

        /* Every variant starts a new signature: 32 arrays in each of two. */
        v = g_variant_new_byte(1);
        for (unsigned i = 0; i < 32; i++)
                v = g_variant_new_array(NULL, &v, 1);
        v = g_variant_new_variant(v);
        for (unsigned i = 0; i < 30; i++)
                v = g_variant_new_array(NULL, &v, 1);
        assert_round_trips(v);
}
END_TEST

/* Builds a message holding n variants nested in each other around an int32, without
 * payload_append_variant(), which would refuse to build what a hostile peer can send. */
static sd_bus_message *message_with_nested_variants(unsigned n) {
        sd_bus_message *m = message_new();
        int32_t x = 42;

        for (unsigned i = 0; i < n; i++)
                ck_assert_int_ge(sd_bus_message_open_container(m, 'v', i == n - 1 ? "i" : "v"), 0);
        ck_assert_int_ge(sd_bus_message_append_basic(m, 'i', &x), 0);
        for (unsigned i = 0; i < n; i++)
                ck_assert_int_ge(sd_bus_message_close_container(m), 0);
        message_seal_rewind(m);
        return m;
}

START_TEST(test_read_refuses_deep_variants) {
        static const unsigned depths[] = { PAYLOAD_DEPTH_MAX + 1, 70, 200 };

        for (size_t i = 0; i < G_N_ELEMENTS(depths); i++) {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *m =
                        message_with_nested_variants(depths[i]);
                GVariant *v = NULL;

                ck_assert_int_eq(payload_read_variant(m, &v), -EBADMSG);
                ck_assert_ptr_null(v);
        }
}
END_TEST

START_TEST(test_read_accepts_deepest_variants) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m =
                message_with_nested_variants(PAYLOAD_DEPTH_MAX);
        g_autoptr(GVariant) v = NULL;
        g_autoptr(GVariant) expected = g_variant_ref_sink(
                nest_variants(g_variant_new_int32(42), PAYLOAD_DEPTH_MAX - 1));

        ck_assert_int_eq(payload_read_variant(m, &v), 0);
        ck_assert(variants_identical(v, expected));
}
END_TEST

/* sd-bus accepts 32 arrays and 32 structs in one signature; inside the carrying variant that is
 * one container more than PAYLOAD_DEPTH_MAX, even when the array is empty. */
START_TEST(test_read_refuses_deep_signature) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = message_new();
        g_autofree char *structs = nested_type("(a", ")", 31);
        g_autofree char *type = g_strconcat("a", structs, NULL); /* 32 arrays, 31 structs */
        g_autofree char *inner = g_strconcat("(", type, ")", NULL);
        GVariant *v = NULL;

        ck_assert_int_ge(sd_bus_message_open_container(m, 'v', inner), 0);
        ck_assert_int_ge(sd_bus_message_open_container(m, 'r', type), 0);
        ck_assert_int_ge(sd_bus_message_open_container(m, 'a', type + 1), 0);
        ck_assert_int_ge(sd_bus_message_close_container(m), 0);
        ck_assert_int_ge(sd_bus_message_close_container(m), 0);
        ck_assert_int_ge(sd_bus_message_close_container(m), 0);
        message_seal_rewind(m);

        ck_assert_int_eq(payload_read_variant(m, &v), -EBADMSG);
        ck_assert_ptr_null(v);
}
END_TEST

START_TEST(test_read_not_a_variant) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = message_new();
        g_autoptr(GVariant) v = NULL;
        const char *s = NULL;

        ck_assert_int_ge(sd_bus_message_append(m, "sv", "not a variant", "i", 5), 0);
        message_seal_rewind(m);

        ck_assert_int_eq(payload_read_variant(m, &v), -ENXIO);
        ck_assert_ptr_null(v);
        /* Nothing was consumed. */
        ck_assert_int_gt(sd_bus_message_read_basic(m, 's', &s), 0);
        ck_assert_str_eq(s, "not a variant");

        ck_assert_int_eq(payload_read_variant(m, &v), 0);
        ck_assert_int_eq(g_variant_get_int32(v), 5);

        /* At the end of the message. */
        g_clear_pointer(&v, g_variant_unref);
        ck_assert_int_eq(payload_read_variant(m, &v), -ENXIO);
        ck_assert_ptr_null(v);
}
END_TEST

START_TEST(test_read_inside_container_not_a_variant) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = message_new();
        g_autoptr(GVariant) v = NULL;

        ck_assert_int_ge(sd_bus_message_append(m, "(i)", 1), 0);
        message_seal_rewind(m);
        ck_assert_int_eq(payload_read_variant(m, &v), -ENXIO);
        ck_assert_int_gt(sd_bus_message_enter_container(m, 'r', "i"), 0);
        ck_assert_int_eq(payload_read_variant(m, &v), -ENXIO);
        ck_assert_ptr_null(v);
}
END_TEST

START_TEST(test_noncharacter_strings_refused) {
        /* Valid for GLib, refused by sd-bus: the error must come back, not a crash. */
        ck_assert_int_eq(append_to_new_message(g_variant_new_string("a\xef\xbf\xbe")), -EINVAL);
        ck_assert_int_eq(append_to_new_message(g_variant_new_parsed("[<'\\ufdd0'>]")), -EINVAL);
        ck_assert_int_eq(append_to_new_message(g_variant_new_signature("()")), -EINVAL);
}
END_TEST

START_TEST(test_large_byte_array_round_trip) {
        const size_t size = 16 * 1024 * 1024;
        g_autofree uint8_t *bytes = g_malloc(size);
        g_autoptr(GVariant) sent = NULL;
        g_autoptr(GVariant) back = NULL;
        const uint8_t *got;
        gsize n;

        for (size_t i = 0; i < size; i++)
                bytes[i] = (uint8_t) (i * 2654435761u >> 13);
        sent = g_variant_ref_sink(g_variant_new_fixed_array(G_VARIANT_TYPE_BYTE, bytes, size, 1));

        back = round_trip(sent);
        ck_assert_str_eq(g_variant_get_type_string(back), "ay");
        got = g_variant_get_fixed_array(back, &n, 1);
        ck_assert_uint_eq(n, size);
        ck_assert(memcmp(got, bytes, size) == 0);
}
END_TEST

START_TEST(test_large_struct_array_round_trip) {
        const unsigned n = 100000;
        g_autoptr(GVariant) sent = NULL;
        g_autoptr(GVariant) back = NULL;
        GVariantBuilder b;

        g_variant_builder_init(&b, G_VARIANT_TYPE("a(si)"));
        for (unsigned i = 0; i < n; i++) {
                char key[32];

                snprintf(key, sizeof(key), "key-%u", i);
                g_variant_builder_add(&b, "(si)", key, (gint32) (i * 7919u));
        }
        sent = g_variant_ref_sink(g_variant_builder_end(&b));

        back = round_trip(sent);
        ck_assert_uint_eq(g_variant_n_children(back), n);
        ck_assert(variants_identical(sent, back));
}
END_TEST

START_TEST(test_append_consumes_floating_value) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = message_new();
        GVariant *kept = g_variant_ref_sink(g_variant_new_string("kept"));
        GVariant *floating = g_variant_new_string("floating");

        /* A reference of the caller's own survives the call untouched. */
        ck_assert_int_eq(payload_append_variant(m, kept), 0);
        ck_assert(!g_variant_is_floating(kept));
        ck_assert_str_eq(g_variant_get_string(kept, NULL), "kept");
        g_variant_unref(kept);

        /* The floating reference is sunk and dropped; the extra one keeps the value alive to
         * look at, and is the only one left to drop. */
        g_variant_ref(floating);
        ck_assert_int_eq(payload_append_variant(m, floating), 0);
        ck_assert(!g_variant_is_floating(floating));
        g_variant_unref(floating);
}
END_TEST

/* Appends value (own type checked) with the given hint and reads it back. */
static GVariant *append_read_back(GVariant *value, bool built) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = message_new();
        GVariant *back = NULL;

        ck_assert_int_eq(payload_check_value(value, NULL), 0);
        ck_assert_int_eq(payload_append_checked_variant(m, value, built), 0);
        message_seal_rewind(m);
        ck_assert_int_eq(payload_read_variant(m, &back), 0);
        return back;
}

/* A send whose value was handed over floating (most likely just built: a tree of GVariants)
 * walks it with GLib's accessors; any other is read from its serialized bytes. Both walks,
 * and a wrong hint either way, must give what the value holds. */
START_TEST(test_append_walks_agree) {
        guint32 seed = random_seed();
        unsigned count = random_count(RANDOM_VALUES / 4);

        for (unsigned i = 0; i < count; i++) {
                guint32 value_seed = seed + i;
                /* Built by GLib's constructors: a tree, until something asks for its bytes. */
                g_autoptr(GVariant) tree = random_payload(value_seed, false);
                g_autoptr(GVariant) flat = random_payload(value_seed, false);
                g_autoptr(GVariant) from_tree = append_read_back(tree, true);
                g_autoptr(GVariant) flat_built = NULL, flat_read = NULL, tree_read = NULL;

                (void) g_variant_get_data(flat);        /* serialized now */
                flat_built = append_read_back(flat, true);
                flat_read = append_read_back(flat, false);
                tree_read = append_read_back(tree, false);
                if (!variants_identical(flat, from_tree) || !variants_identical(flat, flat_built) ||
                    !variants_identical(flat, flat_read) || !variants_identical(flat, tree_read)) {
                        g_autofree char *text = print_truncated(flat);

                        ck_abort_msg("PAYLOAD_TEST_SEED=%u PAYLOAD_TEST_COUNT=1: the walks differ: "
                                     "%s %s", value_seed, g_variant_get_type_string(flat), text);
                }
        }
}
END_TEST

/* What sd-bus refuses to write goes packed instead, when it arrives as it is that way. */
START_TEST(test_packs_faithfully) {
        /* ("ab", 7) with the string's end offset past the 8 bytes: not in normal form. */
        static const uint8_t bad_offset[] = { 'a', 'b', 0, 0, 7, 0, 0, 0, 9 };
        g_autoptr(GVariant) tree = g_variant_ref_sink(g_variant_new("(si)", "x\xef\xbf\xbe", 1));
        g_autoptr(GVariant) flat = g_variant_ref_sink(g_variant_new_from_data(
                G_VARIANT_TYPE("(si)"), "x\xef\xbf\xbe\0\0\0\0\1\0\0\0\5", 13, false, NULL, NULL));
        g_autoptr(GVariant) untrusted = g_variant_ref_sink(g_variant_new_from_data(
                G_VARIANT_TYPE("(si)"), bad_offset, sizeof(bad_offset), false, NULL, NULL));
        g_autoptr(GVariant) trusted = g_variant_ref_sink(g_variant_new_from_data(
                G_VARIANT_TYPE("(si)"), bad_offset, sizeof(bad_offset), true, NULL, NULL));
        g_autoptr(GVariant) with_fd = g_variant_ref_sink(g_variant_new("(hs)", 0, "x"));

        ck_assert(g_variant_is_normal_form(flat));
        ck_assert(payload_packs_faithfully(tree));
        ck_assert(payload_packs_faithfully(flat));
        /* GLib knows it is not normal: packed in its normal form, which is what GLib reads. */
        ck_assert(payload_packs_faithfully(untrusted));
        /* Said to be normal, and not: the receiver would refuse the packed bytes. */
        ck_assert(!payload_packs_faithfully(trusted));
        /* Fds cannot be packed at all. */
        ck_assert(!payload_packs_faithfully(with_fd));
        ck_assert(!payload_packs_faithfully(NULL));
}
END_TEST

/* ---- packed batches ----------------------------------------------------------------------- */

static GPtrArray *unpack_ok(GBytes *packed, const char *element, size_t n_expected) {
        GPtrArray *values = NULL;

        ck_assert_int_eq(payload_unpack(packed, element, n_expected, PAYLOAD_VALUES_MAX, &values), 0);
        ck_assert_uint_eq(values->len, n_expected);
        return values;
}

static int unpack_raw(const char *element, const void *data, size_t size) {
        g_autoptr(GBytes) bytes = g_bytes_new(data, size);
        g_autoptr(GPtrArray) values = NULL;
        int r = payload_unpack(bytes, element, PAYLOAD_VALUES_MAX, PAYLOAD_VALUES_MAX, &values);

        if (r >= 0)
                for (guint i = 0; i < values->len; i++)
                        ck_assert_int_eq(payload_check_value(g_ptr_array_index(values, i), NULL), 0);
        return r;
}

START_TEST(test_packed_random_batches_round_trip) {
        guint32 seed = random_seed();
        unsigned count = random_count(RANDOM_VALUES) / 4;

        for (unsigned i = 0; i < count;) {
                unsigned n = 1 + (seed + i) % 24;
                g_autoptr(GPtrArray) sent = g_ptr_array_new_with_free_func((GDestroyNotify) g_variant_unref);
                g_autoptr(GPtrArray) back = NULL;
                g_autoptr(GBytes) packed = NULL;
                const char *element;
                bool same = true;

                for (unsigned k = 0; k < n; k++, i++) {
                        g_ptr_array_add(sent, random_payload(seed + i, true));
                        same = same && g_variant_type_equal(g_variant_get_type(sent->pdata[k]),
                                                            g_variant_get_type(sent->pdata[0]));
                }
                packed = payload_pack((GVariant *const *) sent->pdata, n, &element);
                /* Payloads of one type go as an array of that type, others as variants. */
                ck_assert_str_eq(element, same ? g_variant_get_type_string(sent->pdata[0]) : "v");
                back = unpack_ok(packed, element, n);
                for (unsigned k = 0; k < n; k++) {
                        GVariant *a = g_ptr_array_index(sent, k), *b = g_ptr_array_index(back, k);

                        ck_assert_msg(variants_identical(a, b), "PAYLOAD_TEST_SEED=%u: %s came back different",
                                      seed + i - n + k, g_variant_get_type_string(a));
                }
        }
}
END_TEST

/* The number of payloads in a batch is bounded on its own. */
START_TEST(test_packed_budget) {
        GVariant *values[3] = { g_variant_new_int32(1), g_variant_new_string("two"),
                                g_variant_new_parsed("[(1, 'x'), (2, 'y')]") };
        g_autoptr(GPtrArray) back = NULL;
        g_autoptr(GBytes) packed = NULL;
        const char *element;

        for (size_t i = 0; i < 3; i++)
                g_variant_ref_sink(values[i]);
        packed = payload_pack(values, 3, &element);
        ck_assert_str_eq(element, "v");
        ck_assert_int_eq(payload_unpack(packed, element, 2, PAYLOAD_VALUES_MAX, &back), -ENOBUFS);
        ck_assert_ptr_null(back);
        ck_assert_int_eq(payload_unpack(packed, element, 3, 1, &back), 0);
        ck_assert_uint_eq(back->len, 3);
        ck_assert_str_eq(g_variant_get_string(g_ptr_array_index(back, 1), NULL), "two");
        for (size_t i = 0; i < 3; i++)
                g_variant_unref(values[i]);
}
END_TEST

/* A value not in normal form is appended by GLib's reading of it (a string without its NUL reads
 * as "", a struct whose offset points past its end reads its members as their defaults), the
 * rest from the bytes themselves: both come back as GLib reads them. */
START_TEST(test_append_non_normal_value) {
        static const char abc[] = { 'a', 'b', 'c' };
        /* ("ab", 7): the string's end offset (the last byte) says 9, past the 8 bytes. */
        static const uint8_t bad_offset[] = { 'a', 'b', 0, 0, 7, 0, 0, 0, 9 };
        const struct {
                const char *type;
                const void *data;
                size_t size;
        } cases[] = {
                { "s", abc, sizeof(abc) },
                { "(si)", bad_offset, sizeof(bad_offset) },
                { "a(si)", bad_offset, sizeof(bad_offset) },
        };

        for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
                g_autoptr(GVariant) value = g_variant_ref_sink(g_variant_new_from_data(
                        G_VARIANT_TYPE(cases[i].type), cases[i].data, cases[i].size, false, NULL, NULL));
                g_autoptr(GVariant) back = NULL;

                ck_assert_msg(!g_variant_is_normal_form(value), "case %zu is normal", i);
                back = round_trip(value);
                ck_assert_msg(variants_identical(value, back), "case %zu changed", i);
        }

        /* The same bytes declared trusted: GLib takes them as normal without looking, and
         * they are appended from themselves. What cannot be read (a string without its NUL, an
         * offset past the end) is refused; what can is read as GLib reads it (the array's only
         * offset, 9, says its elements end where its offsets start: no elements). */
        for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
                g_autoptr(GVariant) trusted = g_variant_ref_sink(g_variant_new_from_data(
                        G_VARIANT_TYPE(cases[i].type), cases[i].data, cases[i].size, true, NULL, NULL));
                g_autoptr(GVariant) untrusted = g_variant_ref_sink(g_variant_new_from_data(
                        G_VARIANT_TYPE(cases[i].type), cases[i].data, cases[i].size, false, NULL, NULL));
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
                g_autoptr(GVariant) back = NULL;
                int r = round_trip_full(trusted, &m, &back);

                if (i < 2)
                        ck_assert_msg(r == -EINVAL, "trusted case %zu: %d", i, r);
                else {
                        ck_assert_msg(r == 0, "trusted case %zu: %d", i, r);
                        ck_assert_msg(variants_identical(untrusted, back), "trusted case %zu", i);
                        ck_assert_uint_eq(g_variant_n_children(back), 0);
                }
        }
}
END_TEST

/* Values above the size appended from their bytes go through GLib's accessors: the same
 * result, without serializing a value built in memory a second time. */
START_TEST(test_large_value_round_trip) {
        g_autofree char *text = g_malloc(200 * 1024);
        GVariantBuilder b;
        GVariant *value;

        memset(text, 'x', 200 * 1024 - 1);
        text[200 * 1024 - 1] = '\0';
        g_variant_builder_init(&b, G_VARIANT_TYPE("a(si)"));
        for (int i = 0; i < 10000; i++)
                g_variant_builder_add(&b, "(si)", i % 2 ? "odd" : "even", i);
        value = g_variant_new("(sa(si)v)", text, &b, g_variant_new_variant(g_variant_new_int32(7)));
        ck_assert_uint_gt(g_variant_get_size(value), 128 * 1024);
        assert_round_trips(value);
}
END_TEST

/* A payload made from another process's bytes may not be in normal form (a string without its
 * NUL reads as ""); packed as it is, it would make the receiver refuse the whole batch. It goes
 * in normal form. */
START_TEST(test_packed_non_normal_payload) {
        static const char abc[] = { 'a', 'b', 'c' };
        GVariant *values[2] = {
                g_variant_ref_sink(g_variant_new_string("x")),
                g_variant_ref_sink(g_variant_new_from_data(G_VARIANT_TYPE_STRING, abc, sizeof(abc),
                                                           FALSE, NULL, NULL)),
        };
        g_autoptr(GBytes) packed = NULL;
        g_autoptr(GPtrArray) back = NULL;
        const char *element;

        ck_assert(!g_variant_is_normal_form(values[1]));
        packed = payload_pack(values, 2, &element);
        ck_assert_str_eq(element, "s");
        back = unpack_ok(packed, element, 2);
        ck_assert_str_eq(g_variant_get_string(g_ptr_array_index(back, 0), NULL), "x");
        ck_assert_str_eq(g_variant_get_string(g_ptr_array_index(back, 1), NULL), "");
        for (size_t i = 0; i < 2; i++)
                g_variant_unref(values[i]);
}
END_TEST

/* The walk into a payload's variants is bounded, each payload on its own (alone, where every
 * value counts, it would take more): one "av" of 10 variants takes 12 (the payload, the array,
 * each variant), and so do each of three. */
START_TEST(test_packed_variants_walk_is_bounded) {
        GVariantBuilder b;
        GVariant *value;
        g_autoptr(GBytes) packed = NULL, three = NULL;
        g_autoptr(GPtrArray) back = NULL;
        const char *element;

        g_variant_builder_init(&b, G_VARIANT_TYPE("av"));
        for (int i = 0; i < 10; i++)
                g_variant_builder_add(&b, "v", g_variant_new_int32(i));
        value = g_variant_ref_sink(g_variant_builder_end(&b));
        packed = payload_pack(&value, 1, &element);
        ck_assert_str_eq(element, "av");
        ck_assert_int_eq(payload_unpack(packed, element, 1, 11, &back), -ENOBUFS);
        ck_assert_ptr_null(back);
        ck_assert_int_eq(payload_unpack(packed, element, 1, 12, &back), 0);
        ck_assert(g_variant_equal(value, g_ptr_array_index(back, 0)));
        g_clear_pointer(&back, g_ptr_array_unref);

        GVariant *values[3] = { value, value, value };
        three = payload_pack(values, 3, &element);
        ck_assert_int_eq(payload_unpack(three, element, 3, 11, &back), -ENOBUFS);
        ck_assert_int_eq(payload_unpack(three, element, 3, 12, &back), 0);
        ck_assert_uint_eq(back->len, 3);
        g_variant_unref(value);
}
END_TEST

/* Payloads that are variants themselves go wrapped, as mixed ones do: the element type "v"
 * always means "each payload in a variant", so the receiver gets the variants back. */
START_TEST(test_packed_variant_payloads) {
        GVariant *values[2] = { g_variant_ref_sink(g_variant_new_variant(g_variant_new_int32(7))),
                                g_variant_ref_sink(g_variant_new_variant(g_variant_new_string("x"))) };
        g_autoptr(GBytes) packed = NULL;
        g_autoptr(GPtrArray) back = NULL;
        const char *element;

        packed = payload_pack(values, 2, &element);
        ck_assert_str_eq(element, "v");
        back = unpack_ok(packed, element, 2);
        for (size_t i = 0; i < 2; i++) {
                ck_assert(g_variant_equal(values[i], g_ptr_array_index(back, i)));
                g_variant_unref(values[i]);
        }
}
END_TEST

START_TEST(test_packed_refusals) {
        /* An "av" holding one variant: its bytes, the NUL, its type, then the offset table. */
        static const uint8_t normal[] = { 0x05, 0x00, 'y', 0x03 };
        static const uint8_t short_value[] = { 0x05, 0x00, 'q', 0x03 };    /* a "q" of 1 byte */
        static const uint8_t maybe[] = { 0x05, 0x00, 'm', 'y', 0x04 };     /* no maybe on D-Bus */
        static const uint8_t unit[] = { 0x00, 0x00, '(', ')', 0x04 };      /* nor "()" */
        static const uint8_t bad_offset[] = { 0x05, 0x00, 'y', 0x09 };
        static const uint8_t not_utf8[] = { 0xff, 0xfe, 0x00, 0x00, 's', 0x05 };
        g_autoptr(GVariant) handle = g_variant_ref_sink(g_variant_new_handle(0));
        g_autoptr(GVariant) nested = g_variant_ref_sink(g_variant_new_variant(g_variant_new_handle(0)));
        g_autoptr(GVariant) dict = g_variant_ref_sink(g_variant_new_parsed("@a{sv} {'k': <(1, 'x')>}"));
        /* An "a(si)" of one element: "ab", NUL, padding to 4, 7, then the struct's framing
         * offset (3) and the array's (8). */
        static const uint8_t si[] = { 'a', 'b', 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, 0x03, 0x09 };
        static const uint8_t three_bytes[] = { 1, 2, 3 };      /* no whole "i" */
        static const uint8_t zero_handle[] = { 0, 0, 0, 0 };   /* an "ah" of one handle */
        g_autoptr(GBytes) with_fd = NULL, with_nested_fd = NULL;
        const char *element;
        const void *data;
        size_t size;

        ck_assert_int_eq(unpack_raw("v", normal, sizeof(normal)), 0);
        ck_assert_int_eq(unpack_raw("v", short_value, sizeof(short_value)), -EBADMSG);
        ck_assert_int_eq(unpack_raw("v", maybe, sizeof(maybe)), -EBADMSG);
        ck_assert_int_eq(unpack_raw("v", unit, sizeof(unit)), -EBADMSG);
        ck_assert_int_eq(unpack_raw("v", bad_offset, sizeof(bad_offset)), -EBADMSG);
        ck_assert_int_eq(unpack_raw("v", not_utf8, sizeof(not_utf8)), -EBADMSG);
        /* Arrays of one payload type. */
        ck_assert_int_eq(unpack_raw("(si)", si, sizeof(si)), 0);
        ck_assert_int_eq(unpack_raw("i", three_bytes, sizeof(three_bytes)), -EBADMSG);
        ck_assert_int_eq(unpack_raw("y", three_bytes, sizeof(three_bytes)), 0);
        /* Element types a payload cannot have, or that are not one type. */
        ck_assert_int_eq(unpack_raw("", three_bytes, sizeof(three_bytes)), -EBADMSG);
        ck_assert_int_eq(unpack_raw("yy", three_bytes, sizeof(three_bytes)), -EBADMSG);
        ck_assert_int_eq(unpack_raw("(y", three_bytes, sizeof(three_bytes)), -EBADMSG);
        ck_assert_int_eq(unpack_raw("my", three_bytes, sizeof(three_bytes)), -EBADMSG);
        ck_assert_int_eq(unpack_raw("()", three_bytes, sizeof(three_bytes)), -EBADMSG);
        ck_assert_int_eq(unpack_raw("h", three_bytes, sizeof(three_bytes)), -EBADMSG);
        /* Refused for the type itself, whatever the bytes: a well-formed "ah", an empty one. */
        ck_assert_int_eq(unpack_raw("h", zero_handle, sizeof(zero_handle)), -EBADMSG);
        ck_assert_int_eq(unpack_raw("h", "", 0), -EBADMSG);
        ck_assert_int_eq(unpack_raw("a{sh}", "", 0), -EBADMSG);
        ck_assert_int_eq(unpack_raw("a{sh}", three_bytes, sizeof(three_bytes)), -EBADMSG);
        ck_assert_int_eq(unpack_raw("a*", three_bytes, sizeof(three_bytes)), -EBADMSG);
        /* An "h" is an index into the message's fds, and a batch carries none. */
        ck_assert(payload_has_handles(handle));
        ck_assert(payload_has_handles(nested));
        ck_assert(!payload_has_handles(dict));
        with_fd = payload_pack(&handle, 1, &element);
        data = g_bytes_get_data(with_fd, &size);
        ck_assert_int_eq(unpack_raw(element, data, size), -EBADMSG);
        ck_assert_int_eq(unpack_raw("v", data, size), -EBADMSG);
        with_nested_fd = payload_pack(&nested, 1, &element);
        data = g_bytes_get_data(with_nested_fd, &size);
        ck_assert_int_eq(unpack_raw(element, data, size), -EBADMSG);
}
END_TEST

/* Packs values, then damages the bytes 20000 times: every result is a clean refusal or values
 * that pass the checks (unpack_raw()), and both happen. */
static void garbage_rounds(GRand *rand, GVariant **values, size_t n, const char *expect_element) {
        g_autoptr(GBytes) packed = NULL;
        unsigned ok = 0, refused = 0;
        const char *element;
        uint8_t buf[256];
        const uint8_t *data;
        size_t size;

        for (size_t i = 0; i < n; i++)
                g_variant_ref_sink(values[i]);
        packed = payload_pack(values, n, &element);
        ck_assert_str_eq(element, expect_element);
        data = g_bytes_get_data(packed, &size);
        ck_assert_uint_le(size, sizeof(buf));
        for (unsigned i = 0; i < 20000; i++) {
                memcpy(buf, data, size);
                for (unsigned k = 0, m = g_rand_int_range(rand, 1, 4); k < m; k++)
                        buf[g_rand_int_range(rand, 0, (gint32) size)] = (uint8_t) g_rand_int(rand);
                if (unpack_raw(element, buf, size) == 0)
                        ok++;
                else
                        refused++;
        }
        ck_assert_uint_gt(refused, 0);
        ck_assert_uint_gt(ok, 0);
        for (size_t i = 0; i < n; i++)
                g_variant_unref(values[i]);
}

START_TEST(test_packed_survives_garbage) {
        g_autoptr(GRand) rand = g_rand_new_with_seed(random_seed());
        GVariant *mixed[4] = { g_variant_new_parsed("(1, 'a string')"), g_variant_new_parsed("[1, 2, 3]"),
                               g_variant_new_parsed("@a{sv} {'k': <'v'>}"), g_variant_new_parsed("@ay [1]") };
        GVariant *same[3] = { g_variant_new_parsed("@(sia{sv}) ('one', 1, {'k': <'v'>})"),
                              g_variant_new_parsed("@(sia{sv}) ('two', 2, {})"),
                              g_variant_new_parsed("@(sia{sv}) ('', 3, {'x': <@ay [1, 2]>})") };

        garbage_rounds(rand, mixed, G_N_ELEMENTS(mixed), "v");
        garbage_rounds(rand, same, G_N_ELEMENTS(same), "(sia{sv})");
}
END_TEST

static Suite *payload_suite(void) {
        Suite *s = suite_create("payload");
        TCase *tc;

        tc = tcase_create("round-trip");
        tcase_add_checked_fixture(tc, bus_setup, bus_teardown);
        tcase_set_timeout(tc, 120);
        tcase_add_test(tc, test_basic_types_round_trip);
        tcase_add_test(tc, test_containers_round_trip);
        tcase_add_test(tc, test_random_nested_values_round_trip);
        tcase_add_test(tc, test_append_non_normal_value);
        tcase_add_test(tc, test_large_value_round_trip);
        tcase_add_test(tc, test_nesting_limits_round_trip);
        tcase_add_test(tc, test_large_byte_array_round_trip);
        tcase_add_test(tc, test_large_struct_array_round_trip);
        tcase_add_test(tc, test_append_consumes_floating_value);
        tcase_add_test(tc, test_append_walks_agree);
        tcase_add_test(tc, test_packs_faithfully);
        suite_add_tcase(s, tc);

        tc = tcase_create("unix-fds");
        tcase_add_checked_fixture(tc, bus_setup, bus_teardown);
        tcase_add_test(tc, test_unix_fds_round_trip_to_same_files);
        tcase_add_test(tc, test_unix_fd_append_keeps_caller_fd_open);
        tcase_add_test(tc, test_unix_fd_not_open_refused);
        suite_add_tcase(s, tc);

        tc = tcase_create("refusals");
        tcase_add_checked_fixture(tc, bus_setup, bus_teardown);
        tcase_add_test(tc, test_check_type_accepts_dbus_types);
        tcase_add_test(tc, test_check_type_refuses_maybe);
        tcase_add_test(tc, test_check_type_refuses_empty_tuple);
        tcase_add_test(tc, test_check_type_refuses_dict_entry_outside_array);
        tcase_add_test(tc, test_check_type_refuses_indefinite);
        tcase_add_test(tc, test_check_type_refuses_long_signature);
        tcase_add_test(tc, test_check_type_refuses_deep_nesting);
        tcase_add_test(tc, test_append_refuses_bad_values);
        tcase_add_test(tc, test_noncharacter_strings_refused);
        suite_add_tcase(s, tc);

        tc = tcase_create("socket");
        tcase_set_timeout(tc, 120);
        tcase_add_test(tc, test_random_values_round_trip_over_socket);
        tcase_add_test(tc, test_unix_fds_round_trip_over_socket);
        tcase_add_test(tc, test_unix_fd_refused_without_fd_passing);
        tcase_add_test(tc, test_read_refuses_corrupted_values);
        tcase_add_test(tc, test_read_survives_corrupted_messages);
        suite_add_tcase(s, tc);

        tc = tcase_create("hostile-input");
        tcase_add_checked_fixture(tc, bus_setup, bus_teardown);
        tcase_add_test(tc, test_read_refuses_deep_variants);
        tcase_add_test(tc, test_read_accepts_deepest_variants);
        tcase_add_test(tc, test_read_refuses_deep_signature);
        tcase_add_test(tc, test_read_not_a_variant);
        tcase_add_test(tc, test_read_inside_container_not_a_variant);
        suite_add_tcase(s, tc);

        tc = tcase_create("packed");
        tcase_set_timeout(tc, 120);
        tcase_add_test(tc, test_packed_random_batches_round_trip);
        tcase_add_test(tc, test_packed_budget);
        tcase_add_test(tc, test_packed_variant_payloads);
        tcase_add_test(tc, test_packed_variants_walk_is_bounded);
        tcase_add_test(tc, test_packed_non_normal_payload);
        tcase_add_test(tc, test_packed_refusals);
        tcase_add_test(tc, test_packed_survives_garbage);
        suite_add_tcase(s, tc);

        return s;
}

int main(void) {
        SRunner *sr;
        int failed;

        /* A GLib critical means a constructor was fed something invalid: fail, don't go on. */
        g_log_set_always_fatal(G_LOG_LEVEL_CRITICAL | G_LOG_LEVEL_WARNING);

        sr = srunner_create(payload_suite());
        srunner_run_all(sr, CK_ENV);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

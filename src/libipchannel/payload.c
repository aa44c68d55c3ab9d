/* SPDX-License-Identifier: MIT */
/* Payloads: converts GVariant values to and from the D-Bus variants that carry them in messages. */

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "macro.h"
#include "payload.h"

/* D-Bus specification limits, per signature (each variant's contents has its own signature). */
#define DBUS_SIGNATURE_MAX 255
#define DBUS_ARRAY_DEPTH_MAX 32
#define DBUS_STRUCT_DEPTH_MAX 32 /* dict entries count as structs, as in sd-bus and libdbus */

/* The largest value appended from its serialized bytes (the rest go through GLib's accessors):
 * the default memfd threshold. Larger payloads go inline when the threshold is raised or memfds
 * cannot be used (no fd passing, fds in the payload). */
#define APPEND_SERIALISED_MAX (128u * 1024)

/* x rounded up to a multiple of a, a power of 2. */
#define ALIGN_TO(x, a) (((x) + (a) - 1) & ~((size_t) (a) - 1))

static const char reason_indefinite[] = "indefinite types have no D-Bus signature";
static const char reason_signature_length[] = "the D-Bus signature is longer than 255 bytes";
static const char reason_maybe[] = "maybe types cannot travel over D-Bus";
static const char reason_unit[] = "the empty tuple \"()\" cannot travel over D-Bus";
static const char reason_dict_entry[] =
        "a dict entry can travel over D-Bus only as an array element";
static const char reason_arrays[] = "arrays are nested more than 32 deep";
static const char reason_structs[] = "structs and dict entries are nested more than 32 deep";
static const char reason_depth[] =
        "containers are nested more than " G_STRINGIFY(PAYLOAD_DEPTH_MAX)
        " deep, counting the carrying variant";
static const char reason_unknown[] = "unknown type";

/* depth counts the containers around type, the variant holding it included; arrays and structs
 * count only those within the current signature, which ends at the nearest enclosing variant.
 * Recursion is bounded by the signature length, checked by every caller. */
static const char *check_type_at(const GVariantType *type, bool in_array, unsigned arrays,
                                 unsigned structs, unsigned depth) {
        const char *reason;

        if (g_variant_type_is_basic(type))
                return NULL;

        /* Refuse what D-Bus cannot express before the limits, so the reason names the real
         * problem rather than a depth that would not matter once the type is fixed. */
        if (g_variant_type_is_maybe(type))
                return reason_maybe;
        if (g_variant_type_is_dict_entry(type) && !in_array)
                return reason_dict_entry;
        if (g_variant_type_is_tuple(type) && g_variant_type_n_items(type) == 0)
                return reason_unit;

        if (depth >= PAYLOAD_DEPTH_MAX)
                return reason_depth;

        /* Its contents have a signature of their own, checked when a value supplies them. */
        if (g_variant_type_is_variant(type))
                return NULL;

        if (g_variant_type_is_array(type)) {
                if (arrays >= DBUS_ARRAY_DEPTH_MAX)
                        return reason_arrays;
                return check_type_at(g_variant_type_element(type), true, arrays + 1, structs,
                                     depth + 1);
        }

        if (g_variant_type_is_tuple(type) || g_variant_type_is_dict_entry(type)) {
                if (structs >= DBUS_STRUCT_DEPTH_MAX)
                        return reason_structs;
                for (const GVariantType *t = g_variant_type_first(type); t;
                     t = g_variant_type_next(t)) {
                        reason = check_type_at(t, false, arrays, structs + 1, depth + 1);
                        if (reason)
                                return reason;
                }
                return NULL;
        }

        return reason_unknown;
}

/* Checks the contents type of a variant that sits at depth (1 for the carrying variant). */
static int check_variant_contents(const GVariantType *type, unsigned depth,
                                  const char **ret_reason) {
        const char *reason;

        if (!g_variant_type_is_definite(type))
                reason = reason_indefinite;
        else if (g_variant_type_get_string_length(type) > DBUS_SIGNATURE_MAX)
                reason = reason_signature_length;
        else
                reason = check_type_at(type, false, 0, 0, depth);

        if (!reason)
                return 0;
        if (ret_reason)
                *ret_reason = reason;
        return -EINVAL;
}

int payload_check_type(const GVariantType *type, const char **ret_reason) {
        if (!type) {
                if (ret_reason)
                        *ret_reason = "no type";
                return -EINVAL;
        }
        return check_variant_contents(type, 1, ret_reason);
}

static const char reason_too_many[] = "more values than the limit";

/* Walks only where a variant can hide: values whose type has no 'v' are settled by the type.
 * Each value walked takes one from *budget. */
static int check_value_at(GVariant *value, unsigned depth, size_t *budget, const char **ret_reason) {
        const GVariantType *type = g_variant_get_type(value);
        int r;

        if (!strchr(g_variant_get_type_string(value), 'v'))
                return 0;
        if (*budget == 0) {
                if (ret_reason)
                        *ret_reason = reason_too_many;
                return -ENOBUFS;
        }
        (*budget)--;
        if (g_variant_type_is_variant(type)) {
                g_autoptr(GVariant) contents = g_variant_get_variant(value);

                r = check_variant_contents(g_variant_get_type(contents), depth + 1, ret_reason);
                if (r < 0)
                        return r;
                return check_value_at(contents, depth + 1, budget, ret_reason);
        }
        for (size_t i = 0, n = g_variant_n_children(value); i < n; i++) {
                g_autoptr(GVariant) child = g_variant_get_child_value(value, i);

                r = check_value_at(child, depth + 1, budget, ret_reason);
                if (r < 0)
                        return r;
        }
        return 0;
}

int payload_check_value_budget(GVariant *value, size_t *budget, const char **ret_reason) {
        size_t unbounded = SIZE_MAX;
        int r;

        if (!value) {
                if (ret_reason)
                        *ret_reason = "no value";
                return -EINVAL;
        }
        r = check_variant_contents(g_variant_get_type(value), 1, ret_reason);
        if (r < 0)
                return r;
        return check_value_at(value, 1, budget ? budget : &unbounded, ret_reason);
}

int payload_check_value(GVariant *value, const char **ret_reason) {
        return payload_check_value_budget(value, NULL, ret_reason);
}

/* Basic types whose D-Bus and GVariant array encodings are the same packed native-endian
 * elements, so whole arrays can be copied at once. Not 'b': 4 bytes in D-Bus, 1 in GVariant.
 * Not 'h': every fd must be duplicated, and its number is an index on the wire. */
static size_t fixed_element_size(char c) {
        switch (c) {
        case 'y':
                return 1;
        case 'n':
        case 'q':
                return 2;
        case 'i':
        case 'u':
                return 4;
        case 'x':
        case 't':
        case 'd':
                return 8;
        default:
                return 0;
        }
}

static int append_value(sd_bus_message *m, GVariant *value, unsigned depth);
static int append_serialised(sd_bus_message *m, const char **s, const uint8_t *data, size_t size,
                             unsigned depth);

static int append_basic(sd_bus_message *m, GVariant *value) {
        char c = g_variant_get_type_string(value)[0];

        switch (c) {
        case 'b': {
                /* sd-bus reads sizeof(int) bytes for 'b': never hand it a C bool. */
                int b = g_variant_get_boolean(value);
                return sd_bus_message_append_basic(m, c, &b);
        }
        case 'y': {
                uint8_t v = g_variant_get_byte(value);
                return sd_bus_message_append_basic(m, c, &v);
        }
        case 'n': {
                int16_t v = g_variant_get_int16(value);
                return sd_bus_message_append_basic(m, c, &v);
        }
        case 'q': {
                uint16_t v = g_variant_get_uint16(value);
                return sd_bus_message_append_basic(m, c, &v);
        }
        case 'i': {
                int32_t v = g_variant_get_int32(value);
                return sd_bus_message_append_basic(m, c, &v);
        }
        case 'u': {
                uint32_t v = g_variant_get_uint32(value);
                return sd_bus_message_append_basic(m, c, &v);
        }
        case 'x': {
                int64_t v = g_variant_get_int64(value);
                return sd_bus_message_append_basic(m, c, &v);
        }
        case 't': {
                uint64_t v = g_variant_get_uint64(value);
                return sd_bus_message_append_basic(m, c, &v);
        }
        case 'd': {
                double v = g_variant_get_double(value);
                return sd_bus_message_append_basic(m, c, &v);
        }
        case 'h': {
                /* sd-bus duplicates the fd: the caller keeps its own. */
                int fd = g_variant_get_handle(value);
                return sd_bus_message_append_basic(m, c, &fd);
        }
        case 's':
        case 'o':
        case 'g':
                /* Strings are passed by pointer itself, not by pointer to a pointer. */
                return sd_bus_message_append_basic(m, c, g_variant_get_string(value, NULL));
        default:
                return -EINVAL;
        }
}

static int append_array(sd_bus_message *m, GVariant *value, unsigned depth) {
        const char *element = g_variant_get_type_string(value) + 1;
        size_t size = element[1] == '\0' ? fixed_element_size(element[0]) : 0;
        int r;

        if (size > 0) {
                gsize n;
                const void *p = g_variant_get_fixed_array(value, &n, size);
                return sd_bus_message_append_array(m, element[0], p, n * size);
        }

        r = sd_bus_message_open_container(m, 'a', element);
        if (r < 0)
                return r;

        size_t n = g_variant_n_children(value);
        for (size_t i = 0; i < n; i++) {
                g_autoptr(GVariant) child = g_variant_get_child_value(value, i);
                r = append_value(m, child, depth);
                if (r < 0)
                        return r;
        }

        return sd_bus_message_close_container(m);
}

/* Structs and dict entries: sd-bus wants the signature without the enclosing brackets. */
static int append_members(sd_bus_message *m, char container, GVariant *value, unsigned depth) {
        const char *type = g_variant_get_type_string(value);
        size_t length = strlen(type);
        char contents[DBUS_SIGNATURE_MAX + 1];
        int r;

        /* The signature check bounds every type string it lets through; this guards the copy. */
        if (length < 3 || length - 2 > DBUS_SIGNATURE_MAX)
                return -EINVAL;
        memcpy(contents, type + 1, length - 2);
        contents[length - 2] = '\0';

        r = sd_bus_message_open_container(m, container, contents);
        if (r < 0)
                return r;

        size_t n = g_variant_n_children(value);
        for (size_t i = 0; i < n; i++) {
                g_autoptr(GVariant) child = g_variant_get_child_value(value, i);
                r = append_value(m, child, depth);
                if (r < 0)
                        return r;
        }

        return sd_bus_message_close_container(m);
}

/* Appends a variant at depth; the declared type of a variant says nothing about what it holds,
 * so each one's contents is checked here, with the depth of everything around it. built: the
 * value was most likely just built in memory (see payload_append_checked_variant()). */
static int append_checked_variant(sd_bus_message *m, GVariant *contents, unsigned depth,
                                  bool built) {
        int r;

        r = sd_bus_message_open_container(m, 'v', g_variant_get_type_string(contents));
        if (r < 0)
                return r;

        /* A value built in memory (a tree of GVariants) would be serialized by
         * g_variant_get_data(): a copy, which costs more than walking the tree (its children
         * are at hand); a value in serialized form is read from its bytes, which costs less
         * than making a GVariant for each child. */
        if (!built && g_variant_get_size(contents) <= APPEND_SERIALISED_MAX &&
            g_variant_is_normal_form(contents)) {
                const char *t = g_variant_get_type_string(contents);
                const uint8_t *data = g_variant_get_data(contents);

                /* A value of size 0 (an empty array, a struct of them) may have no bytes at all. */
                r = append_serialised(m, &t, data ? data : (const uint8_t *) "",
                                      g_variant_get_size(contents), depth);
        } else
                r = append_value(m, contents, depth);
        if (r < 0)
                return r;

        return sd_bus_message_close_container(m);
}

static int append_variant(sd_bus_message *m, GVariant *contents, unsigned depth) {
        int r = check_variant_contents(g_variant_get_type(contents), depth, NULL);

        return r < 0 ? r : append_checked_variant(m, contents, depth, false);
}

/* depth counts the containers around value. */
static int append_value(sd_bus_message *m, GVariant *value, unsigned depth) {
        switch (g_variant_classify(value)) {
        case G_VARIANT_CLASS_VARIANT: {
                g_autoptr(GVariant) contents = g_variant_get_variant(value);
                return append_variant(m, contents, depth + 1);
        }
        case G_VARIANT_CLASS_ARRAY:
                return append_array(m, value, depth + 1);
        case G_VARIANT_CLASS_TUPLE:
                return append_members(m, 'r', value, depth + 1);
        case G_VARIANT_CLASS_DICT_ENTRY:
                return append_members(m, 'e', value, depth + 1);
        case G_VARIANT_CLASS_MAYBE:
                return -EINVAL;
        default:
                return append_basic(m, value);
        }
}

/* The carrying variant, at depth 1: checked (its own type) or not. */
static int append_top(sd_bus_message *m, GVariant *value, bool checked, bool built) {
        if (!m || !value)
                return -EINVAL;

        /* Like GLib's own constructors, take over a floating reference rather than leak it. */
        g_autoptr(GVariant) owned = g_variant_ref_sink(value);

        return checked ? append_checked_variant(m, owned, 1, built) : append_variant(m, owned, 1);
}

int payload_append_variant(sd_bus_message *m, GVariant *value) {
        return append_top(m, value, false, false);
}

int payload_append_checked_variant(sd_bus_message *m, GVariant *value, bool built) {
        return append_top(m, value, true, built);
}

/* ---- D-Bus -> GVariant ------------------------------------------------------------------
 * A received payload is written straight into GVariant's serialized form as sd-bus reads it,
 * then wrapped in one GVariant: building a GVariant per value, and each container again from
 * its children, cost about three times as much (callgrind). The writer follows GVariant's
 * rules (the GVariant specification; GLib's gvariant-serialiser.c): every value aligned to its
 * type's alignment, counted from the start of the payload; a boolean in one byte; a string with
 * its NUL; a variant as its value, a NUL and its type string; a container whose members are of
 * variable size ends with the offsets where they end (little-endian, each as wide as the
 * container's size needs; a struct leaves out its last member's and lists the others last to
 * first). What comes out is in normal form, so GLib can trust it: the unit tests and the
 * payload fuzzer check every value they decode against GLib's own reading of the same bytes. */

/* End offsets of up to this many variable-size members in the open containers are kept in the
 * writer itself: one allocation per payload (its bytes) for most payloads. */
#define WRITER_ENDS_INLINE 16

typedef struct gvs_writer {
        uint8_t *data;
        size_t size, allocated;
        /* End offsets of the variable-size members of the open containers, innermost last. */
        size_t *ends;
        size_t n_ends, allocated_ends;
        size_t ends_inline[WRITER_ENDS_INLINE];
} gvs_writer;

static void writer_init(gvs_writer *w) {
        *w = (gvs_writer) { .allocated_ends = WRITER_ENDS_INLINE };
        w->ends = w->ends_inline;
}

static void writer_done(gvs_writer *w) {
        g_free(w->data);
        if (w->ends != w->ends_inline)
                g_free(w->ends);
        writer_init(w);
}

/* n more bytes at the end, uninitialised; NULL when out of memory. */
static uint8_t *writer_grow(gvs_writer *w, size_t n) {
        uint8_t *p;

        if (n > w->allocated - w->size) {
                size_t want;

                if (n > SIZE_MAX / 4 - w->size)
                        return NULL;
                want = MAX(MAX(w->size + n, w->allocated * 2), (size_t) 64);
                p = g_try_realloc(w->data, want);
                if (!p)
                        return NULL;
                w->data = p;
                w->allocated = want;
        }
        p = w->data + w->size;
        w->size += n;
        return p;
}

static int writer_put(gvs_writer *w, const void *bytes, size_t n) {
        uint8_t *p;

        if (n == 0)
                return 0;
        p = writer_grow(w, n);
        if (!p)
                return -ENOMEM;
        memcpy(p, bytes, n);
        return 0;
}

/* Zeros up to the next multiple of alignment (a power of 2). */
static int writer_align(gvs_writer *w, size_t alignment) {
        size_t n = -w->size & (alignment - 1);
        uint8_t *p;

        if (n == 0)
                return 0;
        p = writer_grow(w, n);
        if (!p)
                return -ENOMEM;
        memset(p, 0, n);
        return 0;
}

static int writer_push_end(gvs_writer *w, size_t end) {
        if (w->n_ends == w->allocated_ends) {
                size_t want = w->allocated_ends * 2;
                size_t *p = g_try_new(size_t, want);

                if (!p)
                        return -ENOMEM;
                memcpy(p, w->ends, w->n_ends * sizeof(size_t));
                if (w->ends != w->ends_inline)
                        g_free(w->ends);
                w->ends = p;
                w->allocated_ends = want;
        }
        w->ends[w->n_ends++] = end;
        return 0;
}

/* Closes a container whose body started at start: writes the end offsets pushed since base
 * (in reverse for a struct) and drops them. */
static int writer_close(gvs_writer *w, size_t start, size_t base, bool reverse) {
        size_t n = w->n_ends - base, body = w->size - start, width;
        uint8_t *p;

        if (n == 0)
                return 0;
        if (body + n <= UINT8_MAX)
                width = 1;
        else if (body + 2 * n <= UINT16_MAX)
                width = 2;
        else if (body + 4 * n <= UINT32_MAX)
                width = 4;
        else
                width = 8;
        p = writer_grow(w, n * width);
        if (!p)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                uint64_t end = w->ends[reverse ? w->n_ends - 1 - i : base + i];

                for (size_t k = 0; k < width; k++)
                        *p++ = (uint8_t) (end >> (8 * k));
        }
        w->n_ends = base;
        return 0;
}

/* GVariant's alignment and fixed size (0: of variable size) of the complete type at *s, which
 * is moved past it. Signatures were checked before anything is read. */
static void type_layout(const char **s, size_t *ret_align, size_t *ret_fixed);

/* The same for the members of a struct or dict entry, from *s (past the opening bracket) up to
 * its closing bracket, moved past it; the end of the string stops it too, so that no string
 * is read past its end (signatures are checked before they get here). */
static void members_layout(const char **s, size_t *ret_align, size_t *ret_fixed) {
        size_t align = 1, offset = 0;
        bool fixed = true;

        while (**s != ')' && **s != '}' && **s != '\0') {
                size_t a, f;

                type_layout(s, &a, &f);
                align = MAX(align, a);
                if (f == 0)
                        fixed = false;
                else
                        offset = ALIGN_TO(offset, a) + f;
        }
        if (**s != '\0')
                (*s)++;
        *ret_align = align;
        /* "()" is one byte in GVariant; it cannot come over D-Bus, whose structs are never empty. */
        *ret_fixed = !fixed ? 0 : offset == 0 ? 1 : ALIGN_TO(offset, align);
}

static void type_layout(const char **s, size_t *ret_align, size_t *ret_fixed) {
        size_t ignored;

        switch (*(*s)++) {
        case 'y':
        case 'b':
                *ret_align = *ret_fixed = 1;
                return;
        case 'n':
        case 'q':
                *ret_align = *ret_fixed = 2;
                return;
        case 'i':
        case 'u':
        case 'h':
                *ret_align = *ret_fixed = 4;
                return;
        case 'x':
        case 't':
        case 'd':
                *ret_align = *ret_fixed = 8;
                return;
        case 'v':
                *ret_align = 8;
                *ret_fixed = 0;
                return;
        case 'a':
                type_layout(s, ret_align, &ignored);
                *ret_fixed = 0;
                return;
        case '(':
        case '{':
                members_layout(s, ret_align, ret_fixed);
                return;
        default: /* s, o, g */
                *ret_align = 1;
                *ret_fixed = 0;
                return;
        }
}

/* Takes one value from the budget of what one message may make us decode. It once bounded
 * memory: a GVariant per value cost ~170 bytes of heap however few the value took on the wire
 * (a "b" takes 4), and one 32 MiB message of booleans made a receiver peak at 1.4 GiB. Values
 * are now bytes, but the bound stays the contract (ipchannel_set_values_max()), and it still
 * bounds the work one message makes. A fixed array costs one. */
static int budget_take(size_t *budget) {
        if (*budget == 0)
                return -ENOBUFS;
        (*budget)--;
        return 0;
}

static int write_value(sd_bus_message *m, const char **s, unsigned depth, size_t *budget,
                       gvs_writer *w);

static int write_basic(sd_bus_message *m, char type, size_t *budget, gvs_writer *w) {
        union {
                uint8_t y;
                uint16_t q;
                uint32_t u;
                uint64_t t;
                int b;
                const char *s;
        } u = { 0 };
        size_t size;
        int r;

        r = budget_take(budget);
        if (r < 0)
                return r;
        r = sd_bus_message_read_basic(m, type, &u);
        if (r < 0)
                return r;
        if (r == 0)
                return -EBADMSG;

        switch (type) {
        case 'b':
                u.y = u.b != 0;
                _fallthrough_;
        case 'y':
                return writer_put(w, &u.y, 1);
        case 'n':
        case 'q':
        case 'i':
        case 'u':
        case 'h':
        case 'x':
        case 't':
        case 'd':
                size = type == 'n' || type == 'q' ? 2 : type == 'x' || type == 't' || type == 'd' ? 8 : 4;
                r = writer_align(w, size);
                if (r < 0)
                        return r;
                return writer_put(w, &u, size);
        /* sd-bus validated these already; GLib's rules are checked too, as GLib will trust
         * these bytes and its rules differ in places. */
        case 's':
                if (!g_utf8_validate(u.s, -1, NULL))
                        return -EBADMSG;
                break;
        case 'o':
                if (!g_variant_is_object_path(u.s))
                        return -EBADMSG;
                break;
        case 'g':
                if (!g_variant_is_signature(u.s))
                        return -EBADMSG;
                break;
        default:
                return -EBADMSG;
        }
        return writer_put(w, u.s, strlen(u.s) + 1);
}

static int write_fixed_array(sd_bus_message *m, char type, size_t size, size_t *budget,
                             gvs_writer *w) {
        const void *p = NULL;
        size_t n = 0;
        int r;

        r = budget_take(budget);
        if (r < 0)
                return r;
        r = sd_bus_message_read_array(m, type, &p, &n);
        if (r < 0)
                return r;
        if (n % size != 0)
                return -EBADMSG;
        r = writer_align(w, size);
        if (r < 0)
                return r;
        return writer_put(w, p, n);
}

/* The complete type at *s (moved past it) as a string of its own in buffer, without the
 * brackets of a struct or dict entry when strip: sd-bus takes container contents as strings. */
static int type_copy(const char **s, bool strip, char buffer[static DBUS_SIGNATURE_MAX + 1]) {
        const char *start = *s;
        size_t align, fixed, length;

        type_layout(s, &align, &fixed);
        length = *s - start;
        if (strip) {
                start++;
                length -= 2;
        }
        if (length > DBUS_SIGNATURE_MAX)
                return -EINVAL;
        memcpy(buffer, start, length);
        buffer[length] = '\0';
        return 0;
}

/* Enters the container at the read position and aligns the writer for its body, which starts
 * at *ret_start. */
static int write_enter(sd_bus_message *m, char type, const char *contents, size_t align,
                       gvs_writer *w, size_t *ret_start) {
        int r;

        r = sd_bus_message_enter_container(m, type, contents);
        if (r < 0)
                return r;
        if (r == 0)
                return -EBADMSG;
        r = writer_align(w, align);
        if (r < 0)
                return r;
        *ret_start = w->size;
        return 0;
}

/* An array of the complete type at *s (past the 'a', moved past the element type), at depth
 * (counting it). The signature says what comes: sd-bus is asked for exactly that, and refuses
 * (-ENXIO) if the message holds anything else. */
static int write_array(sd_bus_message *m, const char **s, unsigned depth, size_t *budget,
                       gvs_writer *w) {
        char element[DBUS_SIGNATURE_MAX + 1];
        size_t align, fixed, start, size, base = w->n_ends;
        const char *e = *s;
        int r;

        type_layout(&e, &align, &fixed);
        r = type_copy(s, false, element);
        if (r < 0)
                return -EBADMSG;
        size = element[1] == '\0' ? fixed_element_size(element[0]) : 0;
        if (size > 0)
                return write_fixed_array(m, element[0], size, budget, w);

        r = budget_take(budget);
        if (r < 0)
                return r;
        r = write_enter(m, 'a', element, align, w, &start);
        if (r < 0)
                return r;

        for (;;) {
                const char *t = element;

                r = sd_bus_message_at_end(m, false);
                if (r < 0)
                        return r;
                if (r > 0)
                        break;
                r = write_value(m, &t, depth, budget, w);
                if (r < 0)
                        return r;
                if (fixed == 0) {
                        r = writer_push_end(w, w->size - start);
                        if (r < 0)
                                return r;
                }
        }

        r = sd_bus_message_exit_container(m);
        if (r < 0)
                return r;
        return writer_close(w, start, base, false);
}

/* A struct or dict entry, the complete type at *s (moved past it), at depth (counting it). */
static int write_members(sd_bus_message *m, const char **s, unsigned depth, size_t *budget,
                         gvs_writer *w) {
        char contents[DBUS_SIGNATURE_MAX + 1];
        char type = **s == '(' ? 'r' : 'e';
        const char *t = *s + 1, *layout = *s;
        size_t align, fixed, start, base = w->n_ends;
        int r;

        type_layout(&layout, &align, &fixed);
        r = type_copy(s, true, contents);
        if (r < 0)
                return -EBADMSG;
        r = budget_take(budget);
        if (r < 0)
                return r;
        r = write_enter(m, type, contents, align, w, &start);
        if (r < 0)
                return r;

        while (*t != ')' && *t != '}') {
                const char *member = t;
                size_t member_align, member_fixed;

                type_layout(&t, &member_align, &member_fixed);
                r = write_value(m, &member, depth, budget, w);
                if (r < 0)
                        return r;
                /* A struct's last member ends where the struct's body does. */
                if (member_fixed == 0 && *t != ')' && *t != '}') {
                        r = writer_push_end(w, w->size - start);
                        if (r < 0)
                                return r;
                }
        }

        r = sd_bus_message_exit_container(m);
        if (r < 0)
                return r;
        if (fixed > 0)
                return writer_align(w, align);
        return writer_close(w, start, base, true);
}

/* Reads the variant at the read position, whose contents signature is contents and which sits
 * at depth, and writes its value (not the variant's framing) at the writer's end. */
static int write_variant_value(sd_bus_message *m, const char *contents, unsigned depth,
                               size_t *budget, gvs_writer *w) {
        const char *t = contents;
        int r;

        /* The signature is the sender's: check it all before building anything from it, so that
         * GLib never sees a type it rejects and too deep nesting is refused before recursing.
         * A stream of messages mostly carries one payload type: the last one that passed at the
         * top (depth 1) is kept, per thread, and the same string passes again unchecked. */
        static __thread char passed[DBUS_SIGNATURE_MAX + 1];

        if (!contents)
                return -EBADMSG;
        if (depth != 1 || passed[0] == '\0' || strcmp(contents, passed) != 0) {
                if (!g_variant_type_string_is_valid(contents) ||
                    check_variant_contents(G_VARIANT_TYPE(contents), depth, NULL) < 0)
                        return -EBADMSG;
                if (depth == 1 && strlen(contents) < sizeof(passed))
                        strcpy(passed, contents);
        }

        r = sd_bus_message_enter_container(m, 'v', contents);
        if (r < 0)
                return r;
        if (r == 0)
                return -EBADMSG;

        r = write_value(m, &t, depth, budget, w);
        if (r < 0)
                return r;

        return sd_bus_message_exit_container(m);
}

/* Reads one value of the complete type at *s (moved past it), inside depth containers, and
 * writes it at the writer's end, aligned. Only a variant's contents are asked of sd-bus: the
 * rest is known from the signature, which the enclosing variant's check let through. */
static int write_value(sd_bus_message *m, const char **s, unsigned depth, size_t *budget,
                       gvs_writer *w) {
        char c = *(*s)++;
        int r;

        switch (c) {
        case 'v': {
                /* The contents signature goes after the value, and the peek buffer it is in
                 * does not outlive the next peek. */
                char signature[DBUS_SIGNATURE_MAX + 1];
                const char *contents = NULL;
                char type;
                size_t length;

                if (depth >= PAYLOAD_DEPTH_MAX)
                        return -EBADMSG;
                r = sd_bus_message_peek_type(m, &type, &contents);
                if (r < 0)
                        return r;
                if (r == 0 || type != 'v' || !contents)
                        return -EBADMSG;
                length = strlen(contents);
                if (length > DBUS_SIGNATURE_MAX)
                        return -EBADMSG;
                memcpy(signature, contents, length + 1);
                r = budget_take(budget);
                if (r < 0)
                        return r;
                r = writer_align(w, 8);
                if (r < 0)
                        return r;
                r = write_variant_value(m, signature, depth + 1, budget, w);
                if (r < 0)
                        return r;
                r = writer_put(w, "", 1);
                if (r < 0)
                        return r;
                return writer_put(w, signature, length);
        }
        case 'a':
                if (depth >= PAYLOAD_DEPTH_MAX)
                        return -EBADMSG;
                return write_array(m, s, depth + 1, budget, w);
        case '(':
        case '{':
                if (depth >= PAYLOAD_DEPTH_MAX)
                        return -EBADMSG;
                (*s)--;
                return write_members(m, s, depth + 1, budget, w);
        default:
                return write_basic(m, c, budget, w);
        }
}

/* GLib describes each container type by a type info that lives while a value of the type does,
 * and makes it again, with its members', for the next value: for a stream of "(si)" payloads,
 * each received and dropped in turn, that was a third of the cost of decoding one. An empty
 * value of the last type decoded, kept per thread, keeps its type info alive. */
static void keep_type_info(const char *signature) {
        /* Dropped when its thread ends. */
        static GPrivate kept_key = G_PRIVATE_INIT((GDestroyNotify) g_variant_unref);
        GVariant *kept = g_private_get(&kept_key);

        if (kept && strcmp(g_variant_get_type_string(kept), signature) == 0)
                return;
        /* No bytes: GLib reads such a value as the default of its type, never past the end. */
        g_private_replace(&kept_key, g_variant_ref_sink(g_variant_new_from_data(
                                             G_VARIANT_TYPE(signature), NULL, 0, FALSE, NULL, NULL)));
}

int payload_read_variant_budget(sd_bus_message *m, size_t *budget, GVariant **ret) {
        char signature[DBUS_SIGNATURE_MAX + 1];
        const char *contents = NULL;
        gvs_writer w;
        size_t length;
        char type;
        int r;

        if (!m || !budget || !ret)
                return -EINVAL;

        r = sd_bus_message_peek_type(m, &type, &contents);
        if (r < 0)
                return r;
        if (r == 0 || type != 'v')
                return -ENXIO;
        if (!contents || (length = strlen(contents)) > DBUS_SIGNATURE_MAX)
                return -EBADMSG;
        memcpy(signature, contents, length + 1);

        writer_init(&w);
        r = write_variant_value(m, signature, 1, budget, &w);
        if (r < 0) {
                writer_done(&w);
                /* -ENXIO promises the caller that nothing was read; past this point it can only
                 * mean the sender's data disagreed with its own signature. */
                return r == -ENXIO ? -EBADMSG : r;
        }

        /* Large payloads give back what doubling the buffer left over. */
        if (w.allocated - w.size > 4096) {
                uint8_t *p = g_try_realloc(w.data, MAX(w.size, (size_t) 1));

                if (p)
                        w.data = p;
        }
        keep_type_info(signature);
        /* A single complete type that sd-bus and the writer accepted is a GVariant type: no
         * need for G_VARIANT_TYPE()'s check (a third of what wrapping the bytes costs). */
        *ret = g_variant_ref_sink(g_variant_new_from_data((const GVariantType *) signature, w.data,
                                                          w.size, TRUE, g_free, w.data));
        w.data = NULL;
        writer_done(&w);
        return 0;
}

/* ---- GVariant bytes -> D-Bus --------------------------------------------------------------
 * A value in normal form (every value GLib builds, every payload this library decodes) is
 * appended from its serialized bytes, read by the layout rules the decoder above writes by:
 * taking its children out of a GVariant makes a GVariant for each, which cost more than the
 * appending itself (callgrind). Other values (bytes from elsewhere that GLib has not checked)
 * go through GLib's accessors, which make sense of any bytes. */

/* The width of the offsets in a container of size bytes, and one of them read. */
static size_t offset_width(size_t size) {
        return size > UINT32_MAX ? 8 : size > UINT16_MAX ? 4 : size > UINT8_MAX ? 2 : size > 0 ? 1 : 0;
}

static size_t offset_read(const uint8_t *p, size_t width) {
        uint64_t v = 0;

        for (size_t k = 0; k < width; k++)
                v |= (uint64_t) p[k] << (8 * k);
        return (size_t) v;
}

static int append_serialised_basic(sd_bus_message *m, char c, const uint8_t *data, size_t size) {
        union {
                uint8_t y;
                int16_t n;
                int32_t i;
                int64_t x;
                double d;
        } u;

        switch (c) {
        case 'b': {
                /* sd-bus reads sizeof(int) bytes for 'b'. */
                int b = size == 1 && data[0] != 0;
                return sd_bus_message_append_basic(m, c, &b);
        }
        case 's':
        case 'o':
        case 'g':
                if (size == 0 || data[size - 1] != '\0')
                        return -EINVAL;
                return sd_bus_message_append_basic(m, c, data);
        default: {
                size_t align, fixed;
                const char *t = &c;

                type_layout(&t, &align, &fixed);
                if (fixed == 0 || size != fixed)
                        return -EINVAL;
                /* Copied out: sd-bus reads the value as its C type, which wants alignment. */
                memcpy(&u, data, size);
                return sd_bus_message_append_basic(m, c, &u);
        }
        }
}

static int append_serialised_array(sd_bus_message *m, const char **s, const uint8_t *data,
                                   size_t size, unsigned depth) {
        char element[DBUS_SIGNATURE_MAX + 1];
        size_t align, fixed, width = offset_width(size), n, start = 0;
        const char *e = *s;
        int r;

        r = type_copy(s, false, element);
        if (r < 0)
                return r;
        type_layout(&e, &align, &fixed);

        /* Packed native-endian elements in both forms: the whole array at once. */
        if (element[1] == '\0' && fixed_element_size(element[0]) > 0)
                return sd_bus_message_append_array(m, element[0], data, size);

        if (fixed > 0) {
                if (size % fixed != 0)
                        return -EINVAL;
                n = size / fixed;
        } else if (size == 0)
                n = 0;
        else {
                size_t last_end = offset_read(data + size - width, width);

                if (last_end > size || (size - last_end) % width != 0)
                        return -EINVAL;
                n = (size - last_end) / width;
        }

        r = sd_bus_message_open_container(m, 'a', element);
        if (r < 0)
                return r;
        for (size_t i = 0; i < n; i++) {
                const char *t = element;
                size_t end;

                start = ALIGN_TO(start, align);
                end = fixed > 0 ? start + fixed
                                : offset_read(data + size - (n - i) * width, width);
                if (start > end || end > size)
                        return -EINVAL;
                r = append_serialised(m, &t, data + start, end - start, depth);
                if (r < 0)
                        return r;
                start = end;
        }
        return sd_bus_message_close_container(m);
}

/* A struct or dict entry at *s, its first character ('(' or '{') given as c. */
static int append_serialised_members(sd_bus_message *m, char c, const char **s, const uint8_t *data,
                                     size_t size, unsigned depth) {
        char contents[DBUS_SIGNATURE_MAX + 1];
        size_t width = offset_width(size), start = 0, offsets = 0, body_end;
        const char *t = *s + 1;
        int r;

        r = type_copy(s, true, contents);
        if (r < 0)
                return r;

        /* Offsets: one for each member of variable size but the last. */
        for (const char *u = contents; *u;) {
                size_t align, fixed;

                type_layout(&u, &align, &fixed);
                if (fixed == 0 && *u != '\0')
                        offsets++;
        }
        if (offsets * width > size)
                return -EINVAL;
        body_end = size - offsets * width;

        r = sd_bus_message_open_container(m, c == '(' ? 'r' : 'e', contents);
        if (r < 0)
                return r;
        for (size_t k = 0; *t != ')' && *t != '}';) {
                const char *member = t;
                size_t align, fixed, end;

                type_layout(&t, &align, &fixed);
                start = ALIGN_TO(start, align);
                if (fixed > 0)
                        end = start + fixed;
                else if (*t == ')' || *t == '}')
                        end = body_end;
                else
                        end = offset_read(data + size - ++k * width, width);
                if (start > end || end > body_end)
                        return -EINVAL;
                r = append_serialised(m, &member, data + start, end - start, depth);
                if (r < 0)
                        return r;
                start = end;
        }
        return sd_bus_message_close_container(m);
}

static int append_serialised_variant(sd_bus_message *m, const uint8_t *data, size_t size,
                                     unsigned depth) {
        char signature[DBUS_SIGNATURE_MAX + 1];
        const uint8_t *nul = NULL;
        const char *t = signature;
        size_t length;
        int r;

        for (size_t i = size; i > 0; i--)
                if (data[i - 1] == '\0') {
                        nul = data + i - 1;
                        break;
                }
        if (!nul)
                return -EINVAL;
        length = data + size - nul - 1;
        if (length > DBUS_SIGNATURE_MAX)
                return -EINVAL;
        memcpy(signature, nul + 1, length);
        signature[length] = '\0';
        if (!g_variant_type_string_is_valid(signature))
                return -EINVAL;
        r = check_variant_contents(G_VARIANT_TYPE(signature), depth, NULL);
        if (r < 0)
                return r;

        r = sd_bus_message_open_container(m, 'v', signature);
        if (r < 0)
                return r;
        r = append_serialised(m, &t, data, nul - data, depth);
        if (r < 0)
                return r;
        return sd_bus_message_close_container(m);
}

/* Appends the value of the complete type at *s (moved past it) held in size bytes at data;
 * depth counts the containers around it. */
static int append_serialised(sd_bus_message *m, const char **s, const uint8_t *data, size_t size,
                             unsigned depth) {
        char c = **s;

        switch (c) {
        case 'v':
                (*s)++;
                return append_serialised_variant(m, data, size, depth + 1);
        case 'a':
                (*s)++;
                return append_serialised_array(m, s, data, size, depth + 1);
        case '(':
        case '{':
                return append_serialised_members(m, c, s, data, size, depth + 1);
        case 'm':
                return -EINVAL;
        default:
                (*s)++;
                return append_serialised_basic(m, c, data, size);
        }
}

int payload_read_variant(sd_bus_message *m, GVariant **ret) {
        size_t budget = PAYLOAD_VALUES_MAX;

        return payload_read_variant_budget(m, &budget, ret);
}

/* ---- payloads in sealed memfds ---------------------------------------------------------- */

bool payload_has_handles(GVariant *value) {
        const char *type = g_variant_get_type_string(value);

        if (strchr(type, 'h'))
                return true;
        if (!strchr(type, 'v'))
                return false;
        if (g_variant_is_of_type(value, G_VARIANT_TYPE_VARIANT)) {
                g_autoptr(GVariant) contents = g_variant_get_variant(value);
                return payload_has_handles(contents);
        }
        for (size_t i = 0, n = g_variant_n_children(value); i < n; i++) {
                g_autoptr(GVariant) child = g_variant_get_child_value(value, i);

                if (payload_has_handles(child))
                        return true;
        }
        return false;
}

static GVariant *dup_handles(GVariant *value, GArray *fds, int *error) {
        const char *type = g_variant_get_type_string(value);
        GVariant *copy;

        if (!strchr(type, 'h') && !strchr(type, 'v'))
                return g_variant_ref(value);
        if (g_variant_is_of_type(value, G_VARIANT_TYPE_HANDLE)) {
                int fd = fcntl(g_variant_get_handle(value), F_DUPFD_CLOEXEC, 3);

                if (fd < 0) {
                        *error = -errno;
                        return NULL;
                }
                g_array_append_val(fds, fd);
                return g_variant_ref_sink(g_variant_new_handle(fd));
        }
        if (g_variant_is_of_type(value, G_VARIANT_TYPE_VARIANT)) {
                g_autoptr(GVariant) contents = g_variant_get_variant(value);
                g_autoptr(GVariant) inner = dup_handles(contents, fds, error);

                return inner ? g_variant_ref_sink(g_variant_new_variant(inner)) : NULL;
        }

        size_t n = g_variant_n_children(value);
        g_autofree GVariant **children = g_new0(GVariant *, n);
        size_t done;

        for (done = 0; done < n; done++) {
                g_autoptr(GVariant) child = g_variant_get_child_value(value, done);

                children[done] = dup_handles(child, fds, error);
                if (!children[done])
                        break;
        }
        if (done < n)
                copy = NULL;
        else if (g_variant_is_of_type(value, G_VARIANT_TYPE_MAYBE))
                copy = g_variant_new_maybe(g_variant_type_element(g_variant_get_type(value)),
                                           n > 0 ? children[0] : NULL);
        else if (g_variant_is_of_type(value, G_VARIANT_TYPE_ARRAY))
                copy = g_variant_new_array(g_variant_type_element(g_variant_get_type(value)), children, n);
        else if (g_variant_is_of_type(value, G_VARIANT_TYPE_DICT_ENTRY))
                copy = g_variant_new_dict_entry(children[0], children[1]);
        else
                copy = g_variant_new_tuple(children, n);
        /* The new container took its own references to the children. */
        for (size_t i = 0; i < done; i++)
                g_variant_unref(children[i]);
        return copy ? g_variant_ref_sink(copy) : NULL;
}

/* Whether every fd in value is open. Checked before any is duplicated: a duplicate could
 * take the number of a closed fd found later in the value, and stand for it. */
static int check_handles_open(GVariant *value) {
        const char *type = g_variant_get_type_string(value);

        if (!strchr(type, 'h') && !strchr(type, 'v'))
                return 0;
        if (g_variant_is_of_type(value, G_VARIANT_TYPE_HANDLE))
                return fcntl(g_variant_get_handle(value), F_GETFD) < 0 ? -errno : 0;
        if (g_variant_is_of_type(value, G_VARIANT_TYPE_VARIANT)) {
                g_autoptr(GVariant) contents = g_variant_get_variant(value);
                return check_handles_open(contents);
        }
        for (size_t i = 0, n = g_variant_n_children(value); i < n; i++) {
                g_autoptr(GVariant) child = g_variant_get_child_value(value, i);
                int r = check_handles_open(child);

                if (r < 0)
                        return r;
        }
        return 0;
}

int payload_dup_handles(GVariant *value, GArray *fds, GVariant **ret) {
        guint before = fds->len;
        int error = check_handles_open(value);
        GVariant *copy;

        if (error < 0)
                return error;
        copy = dup_handles(value, fds, &error);

        if (!copy) {
                for (guint i = before; i < fds->len; i++)
                        close(g_array_index(fds, int, i));
                g_array_set_size(fds, before);
                return error < 0 ? error : -ENOMEM;
        }
        *ret = copy;
        return 0;
}

int payload_memfd_new(GVariant *value, int *ret_fd) {
        _cleanup_(closep) int fd = -1;
        const uint8_t *p;
        size_t size, done = 0;

        if (!value || !ret_fd)
                return -EINVAL;
        size = g_variant_get_size(value);
        p = g_variant_get_data(value);
        if (size > 0 && !p)
                return -ENOMEM;

        fd = memfd_create("ipchannel-payload", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd < 0)
                return -errno;
        /* write(), not a mapping: the pages are the file's, never in the sender's RSS twice. */
        while (done < size) {
                ssize_t n = write(fd, p + done, size - done);

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                done += (size_t) n;
        }
        if (fcntl(fd, F_ADD_SEALS, PAYLOAD_MEMFD_SEALS) < 0)
                return -errno;
        *ret_fd = TAKE_FD(fd);
        return 0;
}

typedef struct memfd_map {
        void *addr;
        size_t size;
} memfd_map;

static void memfd_map_free(void *userdata) {
        memfd_map *map = userdata;

        (void) munmap(map->addr, map->size);
        free(map);
}

static int memfd_refuse(payload_memfd_status status, const char *reason,
                        payload_memfd_status *ret_status, const char **ret_reason) {
        if (ret_status)
                *ret_status = status;
        if (ret_reason)
                *ret_reason = reason;
        return -EBADMSG;
}

int payload_memfd_map(int fd, const char *type_string, uint64_t size_max, size_t values_max,
                      GVariant **ret, payload_memfd_status *ret_status, const char **ret_reason) {
        g_autoptr(GVariant) value = NULL;
        const char *reason = NULL;
        memfd_map *map;
        struct stat st;
        int seals, r;

        if (fd < 0 || !type_string || !ret)
                return -EINVAL;

        if (!g_variant_type_string_is_valid(type_string))
                return memfd_refuse(PAYLOAD_MEMFD_BAD_TYPE, "the type is not one complete type",
                                    ret_status, ret_reason);
        r = payload_check_type(G_VARIANT_TYPE(type_string), &reason);
        if (r < 0)
                return memfd_refuse(PAYLOAD_MEMFD_BAD_TYPE, reason, ret_status, ret_reason);
        if (strchr(type_string, 'h'))
                return memfd_refuse(PAYLOAD_MEMFD_BAD_TYPE, "unix fds cannot travel in a memfd",
                                    ret_status, ret_reason);

        /* Only shared-memory files answer F_GET_SEALS; a pipe or a socket gets EINVAL. */
        if (fstat(fd, &st) < 0)
                return -errno;
        seals = fcntl(fd, F_GET_SEALS);
        if (!S_ISREG(st.st_mode) || seals < 0)
                return memfd_refuse(PAYLOAD_MEMFD_NOT_MEMFD, "the fd is not a memfd", ret_status,
                                    ret_reason);
        /* Further seals (F_SEAL_FUTURE_WRITE, F_SEAL_EXEC) only forbid more: accepted. */
        if ((seals & PAYLOAD_MEMFD_SEALS) != PAYLOAD_MEMFD_SEALS)
                return memfd_refuse(PAYLOAD_MEMFD_NOT_SEALED,
                                    "the memfd is not sealed against shrinking, growing and writing",
                                    ret_status, ret_reason);
        if (st.st_size <= 0)
                return memfd_refuse(PAYLOAD_MEMFD_EMPTY, "the memfd is empty", ret_status, ret_reason);
        if ((uint64_t) st.st_size > size_max || (uint64_t) st.st_size > SIZE_MAX)
                return memfd_refuse(PAYLOAD_MEMFD_TOO_LARGE, "the memfd is larger than this peer accepts",
                                    ret_status, ret_reason);

        /* Read, not mapped, up to PAYLOAD_MEMFD_READ_MAX (see payload.h). */
        if ((uint64_t) st.st_size <= PAYLOAD_MEMFD_READ_MAX) {
                size_t size = (size_t) st.st_size;
                uint8_t *bytes = g_try_malloc(size);
                ssize_t n;

                if (!bytes)
                        return -ENOMEM;
                n = pread(fd, bytes, size, 0);
                if (n < 0 || (size_t) n != size) {
                        r = n < 0 ? -errno : -EIO;
                        g_free(bytes);
                        return r;
                }
                value = g_variant_ref_sink(g_variant_new_from_data(G_VARIANT_TYPE(type_string), bytes,
                                                                   size, FALSE, g_free, bytes));
        } else {
                map = malloc(sizeof(*map));
                if (!map)
                        return -ENOMEM;
                *map = (memfd_map) { .size = (size_t) st.st_size };
                /* Populated at once: the pages are the memfd's own (the sender wrote them), so
                 * this costs no memory, and one call that maps them all is much cheaper than a
                 * page fault per page as the app reads them (in virtual machines most). */
                map->addr = mmap(NULL, map->size, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
                if (map->addr == MAP_FAILED) {
                        r = -errno;
                        free(map);
                        return r;
                }
                /* Untrusted: GLib checks every offset it reads from the bytes. */
                value = g_variant_ref_sink(g_variant_new_from_data(G_VARIANT_TYPE(type_string),
                                                                   map->addr, map->size, FALSE,
                                                                   memfd_map_free, map));
        }
        /* The walk into variants is bounded like an inline payload's decoding: a memfd of
         * tiny variants would otherwise cost the receiver CPU by the megabyte. */
        r = payload_check_value_budget(value, &values_max, &reason);
        if (r == -ENOBUFS)
                return memfd_refuse(PAYLOAD_MEMFD_TOO_MANY_VALUES, reason, ret_status, ret_reason);
        if (r < 0)
                return memfd_refuse(PAYLOAD_MEMFD_BAD_TYPE, reason, ret_status, ret_reason);
        if (payload_has_handles(value))
                return memfd_refuse(PAYLOAD_MEMFD_BAD_TYPE, "unix fds cannot travel in a memfd",
                                    ret_status, ret_reason);

        if (ret_status)
                *ret_status = PAYLOAD_MEMFD_OK;
        *ret = g_steal_pointer(&value);
        return 0;
}

/* ---- packed batches --------------------------------------------------------------------- */

/* The array that carries values[0..n) (tree form: GLib serializes it when asked), and its
 * element type. */
static GVariant *pack_array(GVariant *const *values, size_t n, const char **ret_element_type) {
        g_autofree GVariant **wrapped = NULL, **normal = NULL;
        g_autoptr(GPtrArray) owned = NULL;
        const GVariantType *type = n > 0 ? g_variant_get_type(values[0]) : G_VARIANT_TYPE_VARIANT;
        bool same = true;

        /* A payload that came from another process's bytes (a memfd, relayed) may not be in
         * normal form: GLib would copy those bytes as they are, and the receiver would refuse
         * the whole batch. Values built by GLib, and payloads of a checked batch, are known to
         * be normal without a walk. */
        for (size_t i = 0; i < n; i++) {
                if (g_variant_is_normal_form(values[i]))
                        continue;
                if (!normal) {
                        normal = g_memdup2(values, n * sizeof(GVariant *));
                        owned = g_ptr_array_new_with_free_func((GDestroyNotify) g_variant_unref);
                }
                normal[i] = g_variant_get_normal_form(values[i]);
                g_ptr_array_add(owned, normal[i]);
        }
        if (normal)
                values = normal;

        /* GLib interns types: one pointer per type, so the comparison is cheap. */
        for (size_t i = 1; i < n && same; i++)
                same = g_variant_get_type(values[i]) == type;
        /* Element "v" says the payloads are wrapped: payloads that are variants themselves are
         * wrapped too, or the receiver would unwrap them. */
        if (same && n > 0 && !g_variant_type_equal(type, G_VARIANT_TYPE_VARIANT)) {
                /* "aT": each element is a payload as it is, no variant around it. */
                *ret_element_type = g_variant_get_type_string(values[0]);
                return g_variant_ref_sink(g_variant_new_array(type, values, n));
        }
        wrapped = g_new(GVariant *, n);
        for (size_t i = 0; i < n; i++)
                wrapped[i] = g_variant_new_variant(values[i]);
        *ret_element_type = "v";
        return g_variant_ref_sink(g_variant_new_array(G_VARIANT_TYPE_VARIANT, wrapped, n));
}

GBytes *payload_pack(GVariant *const *values, size_t n, const char **ret_element_type) {
        g_autoptr(GVariant) array = pack_array(values, n, ret_element_type);

        return g_variant_get_data_as_bytes(array);
}

bool payload_packs_faithfully(GVariant *value) {
        g_autoptr(GVariant) untrusted = NULL;
        const void *data;

        if (!value || payload_has_handles(value))
                return false;
        /* A value GLib knows is not in normal form is packed in its normal form. */
        if (!g_variant_is_normal_form(value))
                return true;
        /* Bytes GLib was told to trust are taken as normal without a look, and would be packed
         * as they are: look. (A value built in memory is serialized here, in normal form.) */
        data = g_variant_get_data(value);
        untrusted = g_variant_ref_sink(g_variant_new_from_data(
                g_variant_get_type(value), data ? data : "", g_variant_get_size(value), false,
                NULL, NULL));
        return g_variant_is_normal_form(untrusted);
}

int payload_append_packed(sd_bus_message *m, GVariant *const *values, size_t n) {
        const char *element, *t;
        g_autoptr(GVariant) array = pack_array(values, n, &element);
        size_t size = g_variant_get_size(array), align, fixed;
        void *p = NULL;
        int r;

        r = sd_bus_message_append_basic(m, 'g', element);
        if (r < 0)
                return r;
        r = sd_bus_message_append_array_space(m, 'y', size, &p);
        if (r < 0)
                return r;
        if (size == 0)
                return 0;
        /* GLib serializes the array straight into the message, with no buffer in between, when
         * the bytes there are aligned as the array's type needs (as its element: up to 8; GLib
         * aborts otherwise). An "ay"'s bytes are only sure to be 4-aligned: whether they are
         * 8-aligned depends on the length of the event name and element type before them.
         * Else they are copied. */
        t = element;
        type_layout(&t, &align, &fixed);
        if (((uintptr_t) p & (align - 1)) == 0)
                g_variant_store(array, p);
        else
                memcpy(p, g_variant_get_data(array), size);
        return 0;
}

int payload_unpack(GBytes *bytes, const char *element_type, size_t payloads_max, size_t values_max,
                   GPtrArray **ret) {
        g_autoptr(GPtrArray) values = NULL;
        g_autoptr(GVariant) array = NULL;
        g_autofree char *array_type = NULL;
        const GVariantType *checked = NULL;
        bool wrapped;
        size_t n;
        int r;

        if (!bytes || !element_type || values_max == 0 || !ret)
                return -EINVAL;
        /* The element type is the sender's: one complete payload type (or "v"), checked before
         * GLib sees it. */
        if (!g_variant_type_string_is_valid(element_type) ||
            payload_check_type(G_VARIANT_TYPE(element_type), NULL) < 0 || strchr(element_type, 'h'))
                return -EBADMSG;
        wrapped = strcmp(element_type, "v") == 0;

        array_type = g_strconcat("a", element_type, NULL);
        array = g_variant_ref_sink(g_variant_new_from_bytes(G_VARIANT_TYPE(array_type), bytes, FALSE));
        /* Normal form, checked once over the bytes without building values: from here on every
         * offset and every variant's type in it are as a serializer would have written them. */
        if (!g_variant_is_normal_form(array))
                return -EBADMSG;
        n = g_variant_n_children(array);
        if (n > payloads_max)
                return -ENOBUFS;

        values = g_ptr_array_new_full(n, (GDestroyNotify) g_variant_unref);
        for (size_t i = 0; i < n; i++) {
                GVariant *value = g_variant_get_child_value(array, i);
                const GVariantType *type;

                if (wrapped) {
                        g_autoptr(GVariant) child = value;

                        value = g_variant_get_variant(child);
                }
                g_ptr_array_add(values, value);
                type = g_variant_get_type(value);
                /* Mostly one type over and over: a type without variants inside is settled
                 * once (GLib interns types, and the values keep theirs alive). */
                if (type == checked)
                        continue;
                /* Each payload on its own, as if it came alone: it takes one, and the walk into
                 * its variants one a value. An "h" here would be a number with no fd behind it. */
                size_t left = values_max - 1;
                r = payload_check_value_budget(value, &left, NULL);
                if (r == -ENOBUFS)
                        return r;
                if (r < 0 || payload_has_handles(value))
                        return -EBADMSG;
                if (!strchr(g_variant_get_type_string(value), 'v'))
                        checked = type;
        }
        *ret = g_steal_pointer(&values);
        return 0;
}

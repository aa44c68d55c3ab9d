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
 * so each one's contents is checked here, with the depth of everything around it. */
static int append_variant(sd_bus_message *m, GVariant *contents, unsigned depth) {
        const GVariantType *type = g_variant_get_type(contents);
        int r;

        r = check_variant_contents(type, depth, NULL);
        if (r < 0)
                return r;

        r = sd_bus_message_open_container(m, 'v', g_variant_get_type_string(contents));
        if (r < 0)
                return r;

        r = append_value(m, contents, depth);
        if (r < 0)
                return r;

        return sd_bus_message_close_container(m);
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

int payload_append_variant(sd_bus_message *m, GVariant *value) {
        if (!m || !value)
                return -EINVAL;

        /* Like GLib's own constructors, take over a floating reference rather than leak it. */
        g_autoptr(GVariant) owned = g_variant_ref_sink(value);

        return append_variant(m, owned, 1);
}

static int read_item(sd_bus_message *m, unsigned depth, size_t *budget, GVariant **ret);

/* Takes one value from the budget of what one message may make us build. A decoded value costs
 * ~170 bytes of heap however few it took on the wire (a "b" takes 4): without a bound, one
 * 32 MiB message of booleans made a receiver peak at 1.4 GiB. A fixed array costs one. */
static int budget_take(size_t *budget) {
        if (*budget == 0)
                return -ENOBUFS;
        (*budget)--;
        return 0;
}

static int read_basic(sd_bus_message *m, char type, size_t *budget, GVariant **ret) {
        union {
                uint8_t y;
                int16_t n;
                uint16_t q;
                int32_t i;
                uint32_t u;
                int64_t x;
                uint64_t t;
                double d;
                int b;
                int h;
                const char *s;
        } u = { 0 };
        GVariant *v;
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
        case 'y':
                v = g_variant_new_byte(u.y);
                break;
        case 'b':
                v = g_variant_new_boolean(u.b);
                break;
        case 'n':
                v = g_variant_new_int16(u.n);
                break;
        case 'q':
                v = g_variant_new_uint16(u.q);
                break;
        case 'i':
                v = g_variant_new_int32(u.i);
                break;
        case 'u':
                v = g_variant_new_uint32(u.u);
                break;
        case 'x':
                v = g_variant_new_int64(u.x);
                break;
        case 't':
                v = g_variant_new_uint64(u.t);
                break;
        case 'd':
                v = g_variant_new_double(u.d);
                break;
        case 'h':
                v = g_variant_new_handle(u.h);
                break;
        /* sd-bus validated these already; GLib's rules are checked too because its constructors
         * fail with a critical rather than an error on anything they disagree with. */
        case 's':
                if (!g_utf8_validate(u.s, -1, NULL))
                        return -EBADMSG;
                v = g_variant_new_string(u.s);
                break;
        case 'o':
                if (!g_variant_is_object_path(u.s))
                        return -EBADMSG;
                v = g_variant_new_object_path(u.s);
                break;
        case 'g':
                if (!g_variant_is_signature(u.s))
                        return -EBADMSG;
                v = g_variant_new_signature(u.s);
                break;
        default:
                return -EBADMSG;
        }

        *ret = g_variant_ref_sink(v);
        return 0;
}

static int read_fixed_array(sd_bus_message *m, char type, size_t size, size_t *budget,
                            GVariant **ret) {
        const void *p = NULL;
        size_t n = 0;
        char element[2] = { type, '\0' };
        int r;

        r = budget_take(budget);
        if (r < 0)
                return r;
        r = sd_bus_message_read_array(m, type, &p, &n);
        if (r < 0)
                return r;
        if (n % size != 0)
                return -EBADMSG;

        *ret = g_variant_ref_sink(g_variant_new_fixed_array(G_VARIANT_TYPE(element), p, n / size,
                                                            size));
        return 0;
}

/* Reads the items of the container just entered, up to its end. */
static int read_children(sd_bus_message *m, unsigned depth, size_t *budget, GPtrArray *children) {
        int r;

        for (;;) {
                GVariant *child = NULL;

                r = sd_bus_message_at_end(m, false);
                if (r < 0)
                        return r;
                if (r > 0)
                        return 0;

                r = read_item(m, depth, budget, &child);
                if (r < 0)
                        return r;
                g_ptr_array_add(children, child);
        }
}

static int read_container(sd_bus_message *m, char type, const char *contents, unsigned depth,
                          size_t *budget, GVariant **ret) {
        g_autoptr(GPtrArray) children = g_ptr_array_new_with_free_func(
                (GDestroyNotify) g_variant_unref);
        g_autoptr(GVariantType) element = NULL;
        GVariant *v = NULL;
        int r;

        r = budget_take(budget);
        if (r < 0)
                return r;

        /* contents points into sd-bus's peek buffer, which the first peek inside replaces. */
        if (type == 'a')
                element = g_variant_type_new(contents);

        r = sd_bus_message_enter_container(m, type, contents);
        if (r < 0)
                return r;
        if (r == 0)
                return -EBADMSG;

        r = read_children(m, depth, budget, children);
        if (r < 0)
                return r;

        r = sd_bus_message_exit_container(m);
        if (r < 0)
                return r;

        /* The enclosing variant's signature was checked, so these types are valid GVariant
         * types; the count checks only keep GLib's constructors from being called wrongly. */
        switch (type) {
        case 'a':
                v = g_variant_new_array(element,
                                        (GVariant **) children->pdata, children->len);
                break;
        case 'r':
                if (children->len == 0)
                        return -EBADMSG;
                v = g_variant_new_tuple((GVariant **) children->pdata, children->len);
                break;
        case 'e':
                if (children->len != 2)
                        return -EBADMSG;
                v = g_variant_new_dict_entry(children->pdata[0], children->pdata[1]);
                break;
        }
        if (!v)
                return -EBADMSG;

        *ret = g_variant_ref_sink(v);
        return 0;
}

/* Reads the contents of the variant at the read position, which sits at depth. */
static int read_variant_contents(sd_bus_message *m, const char *contents, unsigned depth,
                                 size_t *budget, GVariant **ret) {
        g_autoptr(GVariant) v = NULL;
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

        r = read_item(m, depth, budget, &v);
        if (r < 0)
                return r;

        r = sd_bus_message_exit_container(m);
        if (r < 0)
                return r;

        *ret = g_steal_pointer(&v);
        return 0;
}

/* Reads one complete item inside depth containers. */
static int read_item(sd_bus_message *m, unsigned depth, size_t *budget, GVariant **ret) {
        const char *contents = NULL;
        char type;
        int r;

        r = sd_bus_message_peek_type(m, &type, &contents);
        if (r < 0)
                return r;
        if (r == 0)
                return -EBADMSG;

        switch (type) {
        case 'v': {
                g_autoptr(GVariant) child = NULL;

                if (depth >= PAYLOAD_DEPTH_MAX)
                        return -EBADMSG;
                r = budget_take(budget);
                if (r < 0)
                        return r;
                r = read_variant_contents(m, contents, depth + 1, budget, &child);
                if (r < 0)
                        return r;
                *ret = g_variant_ref_sink(g_variant_new_variant(child));
                return 0;
        }
        case 'a': {
                size_t size;

                if (depth >= PAYLOAD_DEPTH_MAX || !contents)
                        return -EBADMSG;
                size = contents[1] == '\0' ? fixed_element_size(contents[0]) : 0;
                if (size > 0)
                        return read_fixed_array(m, contents[0], size, budget, ret);
                return read_container(m, type, contents, depth + 1, budget, ret);
        }
        case 'r':
        case 'e':
                if (depth >= PAYLOAD_DEPTH_MAX || !contents)
                        return -EBADMSG;
                return read_container(m, type, contents, depth + 1, budget, ret);
        default:
                return read_basic(m, type, budget, ret);
        }
}

int payload_read_variant_budget(sd_bus_message *m, size_t *budget, GVariant **ret) {
        g_autoptr(GVariant) v = NULL;
        const char *contents = NULL;
        char type;
        int r;

        if (!m || !budget || !ret)
                return -EINVAL;

        r = sd_bus_message_peek_type(m, &type, &contents);
        if (r < 0)
                return r;
        if (r == 0 || type != 'v')
                return -ENXIO;

        r = read_variant_contents(m, contents, 1, budget, &v);
        /* -ENXIO promises the caller that nothing was read; past this point it can only mean
         * the sender's data disagreed with its own signature. */
        if (r == -ENXIO)
                return -EBADMSG;
        if (r < 0)
                return r;

        *ret = g_steal_pointer(&v);
        return 0;
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

        map = malloc(sizeof(*map));
        if (!map)
                return -ENOMEM;
        *map = (memfd_map) { .size = (size_t) st.st_size };
        map->addr = mmap(NULL, map->size, PROT_READ, MAP_SHARED, fd, 0);
        if (map->addr == MAP_FAILED) {
                r = -errno;
                free(map);
                return r;
        }
        /* Untrusted: GLib checks every offset it reads from the bytes. */
        value = g_variant_ref_sink(g_variant_new_from_data(G_VARIANT_TYPE(type_string), map->addr,
                                                           map->size, FALSE, memfd_map_free, map));
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

int payload_append_packed(sd_bus_message *m, GVariant *const *values, size_t n) {
        const char *element;
        g_autoptr(GVariant) array = pack_array(values, n, &element);
        size_t size = g_variant_get_size(array);
        void *p = NULL;
        int r;

        r = sd_bus_message_append_basic(m, 'g', element);
        if (r < 0)
                return r;
        /* GLib serializes the array straight into the message: no buffer in between. */
        r = sd_bus_message_append_array_space(m, 'y', size, &p);
        if (r < 0)
                return r;
        if (size > 0)
                g_variant_store(array, p);
        return 0;
}

int payload_unpack(GBytes *bytes, const char *element_type, size_t *budget, GPtrArray **ret) {
        g_autoptr(GPtrArray) values = NULL;
        g_autoptr(GVariant) array = NULL;
        g_autofree char *array_type = NULL;
        const GVariantType *checked = NULL;
        bool wrapped;
        size_t n, left;
        int r;

        if (!bytes || !element_type || !budget || !ret)
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
        if (n > *budget)
                return -ENOBUFS;
        left = *budget - n;     /* each payload takes one; the walk into variants, one a value */

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
                /* An "h" here would be a number with no fd behind it. */
                r = payload_check_value_budget(value, &left, NULL);
                if (r == -ENOBUFS)
                        return r;
                if (r < 0 || payload_has_handles(value))
                        return -EBADMSG;
                if (!strchr(g_variant_get_type_string(value), 'v'))
                        checked = type;
        }
        *budget = left;
        *ret = g_steal_pointer(&values);
        return 0;
}

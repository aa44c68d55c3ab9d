/* SPDX-License-Identifier: MIT */
/* JSON output of the ipchannel tool: string literals, and GVariant values as JSON values. */
#include <math.h>
#include <string.h>

#include "tool.h"

/*
 * How a GVariant value is written (the type string travels next to it, so nothing is lost
 * that a reader needs):
 *   b                          true / false
 *   y n q i u x t h d          numbers (a non-finite double becomes null)
 *   s o g                      strings
 *   v                          {"type": "<signature>", "data": <value>}
 *   a{KV} with K one of s o g  an object
 *   a{KV} with other keys      an object, each key written as its GVariant text
 *   other arrays, tuples,      arrays
 *   dict entries
 *   m (never on D-Bus)         null or the value
 */

void json_append_string(GString *out, const char *s) {
        g_string_append_c(out, '"');
        for (const unsigned char *p = (const unsigned char *) s; *p; p++)
                switch (*p) {
                case '"':
                        g_string_append(out, "\\\"");
                        break;
                case '\\':
                        g_string_append(out, "\\\\");
                        break;
                case '\n':
                        g_string_append(out, "\\n");
                        break;
                case '\r':
                        g_string_append(out, "\\r");
                        break;
                case '\t':
                        g_string_append(out, "\\t");
                        break;
                default:
                        /* Other control characters are escaped; UTF-8 passes as it is (D-Bus
                         * strings are valid UTF-8, and so is GVariant text). */
                        if (*p < 0x20 || *p == 0x7f)
                                g_string_append_printf(out, "\\u%04x", *p);
                        else
                                g_string_append_c(out, (char) *p);
                }
        g_string_append_c(out, '"');
}

static void append_double(GString *out, double d) {
        char buf[G_ASCII_DTOSTR_BUF_SIZE];

        if (!isfinite(d)) {
                g_string_append(out, "null");
                return;
        }
        /* Locale-independent and exact when read back. */
        g_ascii_dtostr(buf, sizeof(buf), d);
        g_string_append(out, buf);
        if (!strpbrk(buf, ".eE"))
                g_string_append(out, ".0");
}

static bool dict_has_string_keys(GVariant *v) {
        const GVariantType *key = g_variant_type_key(g_variant_type_element(g_variant_get_type(v)));

        return g_variant_type_equal(key, G_VARIANT_TYPE_STRING) ||
               g_variant_type_equal(key, G_VARIANT_TYPE_OBJECT_PATH) ||
               g_variant_type_equal(key, G_VARIANT_TYPE_SIGNATURE);
}

static void append_dict(GString *out, GVariant *v) {
        bool string_keys = dict_has_string_keys(v);
        size_t n = g_variant_n_children(v);

        g_string_append_c(out, '{');
        for (size_t i = 0; i < n; i++) {
                g_autoptr(GVariant) entry = g_variant_get_child_value(v, i);
                g_autoptr(GVariant) key = g_variant_get_child_value(entry, 0);
                g_autoptr(GVariant) value = g_variant_get_child_value(entry, 1);

                if (i > 0)
                        g_string_append_c(out, ',');
                if (string_keys)
                        json_append_string(out, g_variant_get_string(key, NULL));
                else {
                        g_autofree char *text = g_variant_print(key, FALSE);
                        json_append_string(out, text);
                }
                g_string_append_c(out, ':');
                json_append_variant(out, value);
        }
        g_string_append_c(out, '}');
}

void json_append_variant(GString *out, GVariant *v) {
        const GVariantType *type = g_variant_get_type(v);

        switch (g_variant_classify(v)) {
        case G_VARIANT_CLASS_BOOLEAN:
                g_string_append(out, g_variant_get_boolean(v) ? "true" : "false");
                return;
        case G_VARIANT_CLASS_BYTE:
                g_string_append_printf(out, "%u", (unsigned) g_variant_get_byte(v));
                return;
        case G_VARIANT_CLASS_INT16:
                g_string_append_printf(out, "%d", (int) g_variant_get_int16(v));
                return;
        case G_VARIANT_CLASS_UINT16:
                g_string_append_printf(out, "%u", (unsigned) g_variant_get_uint16(v));
                return;
        case G_VARIANT_CLASS_INT32:
                g_string_append_printf(out, "%" G_GINT32_FORMAT, g_variant_get_int32(v));
                return;
        case G_VARIANT_CLASS_UINT32:
                g_string_append_printf(out, "%" G_GUINT32_FORMAT, g_variant_get_uint32(v));
                return;
        case G_VARIANT_CLASS_INT64:
                g_string_append_printf(out, "%" G_GINT64_FORMAT, g_variant_get_int64(v));
                return;
        case G_VARIANT_CLASS_UINT64:
                g_string_append_printf(out, "%" G_GUINT64_FORMAT, g_variant_get_uint64(v));
                return;
        case G_VARIANT_CLASS_HANDLE:
                g_string_append_printf(out, "%" G_GINT32_FORMAT, g_variant_get_handle(v));
                return;
        case G_VARIANT_CLASS_DOUBLE:
                append_double(out, g_variant_get_double(v));
                return;
        case G_VARIANT_CLASS_STRING:
        case G_VARIANT_CLASS_OBJECT_PATH:
        case G_VARIANT_CLASS_SIGNATURE:
                json_append_string(out, g_variant_get_string(v, NULL));
                return;
        case G_VARIANT_CLASS_VARIANT: {
                g_autoptr(GVariant) inner = g_variant_get_variant(v);

                g_string_append(out, "{\"type\":");
                json_append_string(out, g_variant_get_type_string(inner));
                g_string_append(out, ",\"data\":");
                json_append_variant(out, inner);
                g_string_append_c(out, '}');
                return;
        }
        case G_VARIANT_CLASS_MAYBE: {
                g_autoptr(GVariant) inner = g_variant_get_maybe(v);

                if (inner)
                        json_append_variant(out, inner);
                else
                        g_string_append(out, "null");
                return;
        }
        case G_VARIANT_CLASS_ARRAY:
                if (g_variant_type_is_dict_entry(g_variant_type_element(type))) {
                        append_dict(out, v);
                        return;
                }
                _fallthrough_;
        case G_VARIANT_CLASS_TUPLE:
        case G_VARIANT_CLASS_DICT_ENTRY: {
                size_t n = g_variant_n_children(v);

                g_string_append_c(out, '[');
                for (size_t i = 0; i < n; i++) {
                        g_autoptr(GVariant) child = g_variant_get_child_value(v, i);

                        if (i > 0)
                                g_string_append_c(out, ',');
                        json_append_variant(out, child);
                }
                g_string_append_c(out, ']');
                return;
        }
        }
        g_string_append(out, "null");
}

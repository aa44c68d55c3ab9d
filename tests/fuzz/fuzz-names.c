/* SPDX-License-Identifier: MIT */
/* libFuzzer target: the name checks, parsers and match-rule builders on arbitrary strings. */

/*
 * Bus names, event names and lock names arrive from other processes (NameOwnerChanged, Deliver,
 * Acquire), so the checks must hold for any bytes, and what they let through must be safe to
 * build names and match rules from. The input is split at NUL bytes into prefix, app, name and
 * event. Beyond "no crash", it checks the promises names.h makes:
 *   - names_parse_peer() returns an id only for exactly what names_peer() writes for it;
 *   - a valid event name is non-empty UTF-8 of at most IPCHANNEL_EVENT_NAME_MAX bytes with no
 *     Unicode noncharacter (sd-bus refuses those in a message), and a lock name follows the
 *     same rule;
 *   - names_broadcast_match() refuses every event that could break out of its quotes.
 */

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>

#include "ipchannel.h"
#include "names.h"

#define check(expr)                                                                        \
        do {                                                                               \
                if (!(expr)) {                                                             \
                        fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__,  \
                                #expr);                                                    \
                        abort();                                                           \
                }                                                                          \
        } while (0)

/* The next NUL-terminated field of the input, copied; the last one runs to the end. */
static char *next_field(const uint8_t **data, size_t *size) {
        const uint8_t *end = memchr(*data, '\0', *size);
        size_t n = end ? (size_t) (end - *data) : *size;
        char *s = g_strndup((const char *) *data, n);

        *data += end ? n + 1 : n;
        *size -= end ? n + 1 : n;
        return s;
}

/* Whether the valid UTF-8 string s holds a noncharacter: U+FDD0..U+FDEF, or the last two code
 * points of any plane. Written apart from names.c's scan, which skips bytes below 0xEF. */
static bool holds_noncharacter(const char *s) {
        for (; *s; s = g_utf8_next_char(s)) {
                gunichar c = g_utf8_get_char(s);

                if ((c >= 0xFDD0 && c <= 0xFDEF) || (c & 0xFFFF) == 0xFFFE || (c & 0xFFFF) == 0xFFFF)
                        return true;
        }
        return false;
}

static void check_event_rules(const char *event) {
        const char *reason = NULL;
        size_t n = strlen(event);
        bool valid = n > 0 && n <= IPCHANNEL_EVENT_NAME_MAX && g_utf8_validate(event, -1, NULL) &&
                     !holds_noncharacter(event);
        g_autofree char *match = NULL;

        check((names_check_event(event, &reason) == 0) == valid);
        check(valid || reason);
        check((names_check_lock(event) == 0) == valid);
        if (!valid)
                return;
        (void) names_event_is_local(event);

        match = names_broadcast_match("/org/ipchannel/app", event);
        if (strpbrk(event, "'\\,"))
                check(!match);
        else
                check(match && strstr(match, event));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        g_autofree char *prefix = NULL, *app = NULL, *name = NULL, *event = NULL;
        const char *reason = NULL;
        uint32_t id;

        if (size > 4096)
                return 0;
        prefix = next_field(&data, &size);
        app = next_field(&data, &size);
        name = next_field(&data, &size);
        event = next_field(&data, &size);

        check_event_rules(event);
        check_event_rules(name);

        if (names_check_prefix(prefix, &reason) < 0 || names_check_app(app, &reason) < 0) {
                check(reason);
                /* The parser must not trust its arguments either: it runs on any bus name. */
                (void) names_parse_peer(prefix, app, name);
                return 0;
        }

        id = names_parse_peer(prefix, app, name);
        check(id != IPCHANNEL_ALL);
        if (id > 0) {
                g_autofree char *again = names_peer(prefix, app, id);

                check(again && strcmp(again, name) == 0);
        }

        /* Every builder on valid input: each result must be a fresh string. */
        {
                g_autofree char *peer = names_peer(prefix, app, 1);
                g_autofree char *ns = names_peer_namespace(prefix, app);
                g_autofree char *locks = names_locks(prefix, app);
                g_autofree char *path = names_path(prefix, app);
                g_autofree char *locks_path = names_locks_path(prefix, app);
                g_autofree char *owner_match = names_owner_changed_match(ns, true);
                g_autofree char *all = names_broadcast_match_all(path);

                check(peer && ns && locks && path && locks_path && owner_match && all);
                check(names_parse_peer(prefix, app, peer) == 1);
                check(g_variant_is_object_path(path) && g_variant_is_object_path(locks_path));
        }
        return 0;
}

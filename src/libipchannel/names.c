/* SPDX-License-Identifier: MIT */
/* Names: maps an app name to its bus names, object paths and match rules, and back. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>

#include "ipchannel.h"
#include "names.h"

/* The prefix "org.ipchannel" becomes the path "/org/ipchannel": every element of a valid
 * prefix is also a valid path element, so the mapping needs no escaping and is injective. */

static bool is_element_start(char c) {
        return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}

static bool is_element_char(char c) {
        return is_element_start(c) || (c >= '0' && c <= '9');
}

static bool is_element(const char *s, size_t n) {
        if (n == 0 || !is_element_start(s[0]))
                return false;
        for (size_t i = 1; i < n; i++)
                if (!is_element_char(s[i]))
                        return false;
        return true;
}

int names_check_app(const char *app, const char **ret_reason) {
        const char *reason = NULL;

        if (!app)
                reason = "no app name given";
        else if (app[0] == '\0')
                reason = "the app name is empty";
        else if (strlen(app) > IPCHANNEL_APP_NAME_MAX)
                reason = "the app name is longer than 200 bytes";
        else if (app[0] >= '0' && app[0] <= '9')
                reason = "the app name starts with a digit (a D-Bus bus-name element cannot)";
        else if (!is_element(app, strlen(app)))
                reason = "the app name may hold only letters A-Z a-z, digits and '_' (it "
                         "becomes one D-Bus bus-name element)";

        if (reason) {
                if (ret_reason)
                        *ret_reason = reason;
                return -EINVAL;
        }
        return 0;
}

int names_check_prefix(const char *prefix, const char **ret_reason) {
        const char *reason = NULL;

        if (!prefix || prefix[0] == '\0')
                reason = "the name prefix is empty";
        else if (strlen(prefix) > 32)
                reason = "the name prefix is longer than 32 bytes";
        else
                for (const char *p = prefix, *dot;; p = dot + 1) {
                        dot = strchrnul(p, '.');
                        if (!is_element(p, (size_t) (dot - p))) {
                                reason = "the name prefix must be dot-separated elements of "
                                         "[A-Za-z_][A-Za-z0-9_]*";
                                break;
                        }
                        if (*dot == '\0')
                                break;
                }

        if (reason) {
                if (ret_reason)
                        *ret_reason = reason;
                return -EINVAL;
        }
        return 0;
}

int names_check_event(const char *event, const char **ret_reason) {
        return names_check_event_max(event, IPCHANNEL_EVENT_NAME_MAX, ret_reason);
}

/* Whether the valid UTF-8 s[0..n) holds a Unicode noncharacter (U+FDD0..U+FDEF, U+xFFFE,
 * U+xFFFF): allowed by GLib and the D-Bus specification, refused by sd-bus in a message. All of
 * them are encoded with a first byte of 0xEF or above. */
static bool has_noncharacter(const char *s, size_t n) {
        for (const char *p = s; p < s + n; p++) {
                if ((unsigned char) *p < 0xEF)
                        continue;
                gunichar c = g_utf8_get_char(p);
                if ((c >= 0xFDD0 && c <= 0xFDEF) || (c & 0xFFFE) == 0xFFFE)
                        return true;
        }
        return false;
}

int names_check_event_max(const char *event, size_t max, const char **ret_reason) {
        const char *reason = NULL;
        size_t n;

        if (!event)
                reason = "no event name given";
        else if (event[0] == '\0')
                reason = "the event name is empty";
        else if ((n = strnlen(event, max + 1)) > max)
                reason = max == IPCHANNEL_EVENT_NAME_MAX ? "the event name is longer than 255 bytes"
                                                         : "the event name is longer than the channel's limit";
        else if (!g_utf8_validate(event, (gssize) n, NULL))
                reason = "the event name is not valid UTF-8";
        else if (has_noncharacter(event, n))
                reason = "the event name holds a Unicode noncharacter, which sd-bus refuses";

        if (reason) {
                if (ret_reason)
                        *ret_reason = reason;
                return -EINVAL;
        }
        return 0;
}

int names_check_lock(const char *lock) {
        /* The same rules as event names: a lock is a string another process sends us. */
        return names_check_event(lock, NULL);
}

char *names_owner_changed_match(const char *name, bool below) {
        char *s;

        if (asprintf(&s, "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
                         "member='NameOwnerChanged',%s='%s'", below ? "arg0namespace" : "arg0", name) < 0)
                return NULL;
        return s;
}

bool names_event_is_local(const char *event) {
        static const char *const local[] = {
                IPCHANNEL_EVENT_CONNECT,   IPCHANNEL_EVENT_DISCONNECT, IPCHANNEL_EVENT_ERROR,
                IPCHANNEL_EVENT_PEER_JOIN, IPCHANNEL_EVENT_PEER_LEAVE,
        };

        for (size_t i = 0; i < G_N_ELEMENTS(local); i++)
                if (strcmp(event, local[i]) == 0)
                        return true;
        return false;
}

char *names_peer(const char *prefix, const char *app, uint32_t id) {
        char *s;

        if (asprintf(&s, "%s.%s.Peer%" PRIu32, prefix, app, id) < 0)
                return NULL;
        return s;
}

char *names_peer_namespace(const char *prefix, const char *app) {
        char *s;

        if (asprintf(&s, "%s.%s", prefix, app) < 0)
                return NULL;
        return s;
}

char *names_locks(const char *prefix, const char *app) {
        char *s;

        if (asprintf(&s, "%s.%s.Locks", prefix, app) < 0)
                return NULL;
        return s;
}

char *names_path(const char *prefix, const char *app) {
        char *s;

        if (asprintf(&s, "/%s/%s", prefix, app) < 0)
                return NULL;
        for (char *p = s; *p; p++)
                if (*p == '.')
                        *p = '/';
        return s;
}

char *names_locks_path(const char *prefix, const char *app) {
        g_autofree char *path = names_path(prefix, app);
        char *s;

        if (!path || asprintf(&s, "%s/Locks", path) < 0)
                return NULL;
        return s;
}

uint32_t names_parse_peer(const char *prefix, const char *app, const char *name) {
        size_t lp = strlen(prefix), la = strlen(app);
        uint64_t id = 0;
        const char *p;

        if (strncmp(name, prefix, lp) != 0 || name[lp] != '.' ||
            strncmp(name + lp + 1, app, la) != 0 || strncmp(name + lp + 1 + la, ".Peer", 5) != 0)
                return 0;

        p = name + lp + 1 + la + 5;
        if (*p < '1' || *p > '9')
                return 0;
        for (; *p; p++) {
                if (*p < '0' || *p > '9')
                        return 0;
                id = id * 10 + (uint64_t) (*p - '0');
                if (id >= IPCHANNEL_ALL)
                        return 0;
        }
        return (uint32_t) id;
}

/* Match rules are parsed twice, by sd-bus and by the broker, whose quoting rules differ for
 * backslashes and apostrophes; an event holding either (or a comma, to be safe) is matched
 * with the catch-all rule and filtered locally instead. */
static bool event_fits_match(const char *event) {
        return !strpbrk(event, "'\\,");
}

char *names_broadcast_match(const char *path, const char *event) {
        char *s;

        if (!event_fits_match(event))
                return NULL;
        if (asprintf(&s, "type='signal',interface='" IPCHANNEL_PEER_INTERFACE "',path='%s',arg0='%s'",
                     path, event) < 0)
                return NULL;
        return s;
}

char *names_broadcast_match_all(const char *path) {
        char *s;

        if (asprintf(&s, "type='signal',interface='" IPCHANNEL_PEER_INTERFACE "',path='%s'", path) < 0)
                return NULL;
        return s;
}

/* SPDX-License-Identifier: MIT */
/* Helpers the ipchannel tool's commands share: options, messages, the bus, DATA, peers. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "names.h"
#include "payload.h"
#include "tool.h"

bus_kind arg_bus = BUS_DEFAULT;
const char *arg_app;

static void vmessage(const char *prefix, const char *fmt, va_list ap) G_GNUC_PRINTF(2, 0);
static void vmessage(const char *prefix, const char *fmt, va_list ap) {
        fflush(stdout);         /* keep what was printed before the message in order */
        fprintf(stderr, "ipchannel: %s", prefix);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
}

int tool_fail(int code, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        vmessage("", fmt, ap);
        va_end(ap);
        return code;
}

void tool_warn(const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        vmessage("warning: ", fmt, ap);
        va_end(ap);
}

int tool_usage_error(const char *command, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        vmessage("", fmt, ap);
        va_end(ap);
        fprintf(stderr, "Try 'ipchannel %s%s--help'.\n", command ?: "", command ? " " : "");
        return EXIT_USAGE;
}

int tool_parse_common_option(int c, const char *arg, bool *ret_help) {
        const char *reason;

        switch (c) {
        case 'h':
                *ret_help = true;
                return 1;
        case ARG_USER:
                arg_bus = BUS_USER;
                return 1;
        case ARG_SYSTEM:
                arg_bus = BUS_SYSTEM;
                return 1;
        case 'a':
                if (ipchannel_check_app_name(arg, &reason) < 0) {
                        tool_fail(EXIT_USAGE, "invalid app name \"%s\": %s", arg, reason);
                        return -EINVAL;
                }
                arg_app = arg;
                return 1;
        default:
                return 0;
        }
}

int tool_bad_option(const char *command, int c, char *argv[]) {
        const char *opt = argv[optind - 1];
        char short_opt[3] = { '-', (char) optopt, '\0' };

        /* optopt names a short option; for a long one getopt leaves the word in argv. */
        if (c == '?' && optopt != 0)
                opt = short_opt;
        if (c == ':')
                tool_usage_error(command, "option %s needs an argument", opt);
        else
                tool_usage_error(command, "unknown option %s", opt);
        return -EINVAL;
}

int tool_require_app(const char *command) {
        const char *env = getenv("IPCHANNEL_APP"), *reason;

        if (arg_app)
                return 0;
        if (!env || env[0] == '\0') {
                tool_usage_error(command, "no app given: use --app NAME or set IPCHANNEL_APP");
                return -EINVAL;
        }
        if (ipchannel_check_app_name(env, &reason) < 0) {
                tool_usage_error(command, "invalid app name \"%s\" in $IPCHANNEL_APP: %s", env, reason);
                return -EINVAL;
        }
        arg_app = env;
        return 0;
}

static bool use_user_bus(void) {
        const char *a = getenv("DBUS_SESSION_BUS_ADDRESS");

        return arg_bus == BUS_USER || (arg_bus == BUS_DEFAULT && a && a[0] != '\0');
}

const char *tool_bus_label(void) {
        return use_user_bus() ? "user" : "system";
}

int tool_open_bus(sd_bus **ret) {
        int r;

        if (use_user_bus())
                r = sd_bus_open_user_with_description(ret, "ipchannel");
        else
                r = sd_bus_open_system_with_description(ret, "ipchannel");
        if (r < 0)
                tool_fail(EXIT_BUS, "cannot connect to the %s bus: %s", tool_bus_label(), strerror(-r));
        return r;
}

int tool_exit_code_for_bus_error(const sd_bus_error *error, int r) {
        static const char *const bus_errors[] = {
                SD_BUS_ERROR_SERVICE_UNKNOWN, SD_BUS_ERROR_NAME_HAS_NO_OWNER,
                SD_BUS_ERROR_ACCESS_DENIED,   SD_BUS_ERROR_NO_REPLY,
                SD_BUS_ERROR_DISCONNECTED,    SD_BUS_ERROR_NO_SERVER,
                SD_BUS_ERROR_AUTH_FAILED,     SD_BUS_ERROR_INTERACTIVE_AUTHORIZATION_REQUIRED,
                SD_BUS_ERROR_LIMITS_EXCEEDED,
        };

        if (error && sd_bus_error_is_set(error)) {
                for (size_t i = 0; i < G_N_ELEMENTS(bus_errors); i++)
                        if (sd_bus_error_has_name(error, bus_errors[i]))
                                return EXIT_BUS;
                return EXIT_FAILURE;
        }
        /* No D-Bus error: the connection itself failed. */
        return r == -ECONNRESET || r == -ENOTCONN || r == -ETIMEDOUT || r == -EACCES || r == -EPERM
                               ? EXIT_BUS
                               : EXIT_FAILURE;
}

int tool_channel_new(sd_bus *bus, sd_event *event, ipchannel **ret) {
        g_autoptr(ipchannel) ch = NULL;
        g_autofree char *saved = g_strdup(getenv("IPCHANNEL_PEER_ID"));
        int r;

        /* The library takes the id from the environment, which a unit sets for its fleet;
         * a tool started from such a unit must not take its process's id. No thread runs yet,
         * so changing the environment is safe; it is put back for the commands `run` starts. */
        unsetenv("IPCHANNEL_PEER_ID");
        r = ipchannel_new(&ch, arg_app);
        if (saved)
                setenv("IPCHANNEL_PEER_ID", saved, 1);
        if (r < 0)
                return r;
        r = ipchannel_set_bus(ch, bus);
        if (r < 0)
                return r;
        r = ipchannel_attach_event(ch, event, 0);
        if (r < 0)
                return r;
        *ret = g_steal_pointer(&ch);
        return 0;
}

void tool_block_signals(void) {
        sigset_t mask;

        sigemptyset(&mask);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGHUP);
        sigaddset(&mask, SIGCHLD);
        sigprocmask(SIG_BLOCK, &mask, NULL);
}

static int on_stop_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        bool *flag = userdata;

        *flag = true;
        return 0;
}

int tool_add_stop_signals(sd_event *e, bool *flag) {
        int r;

        tool_block_signals();
        r = sd_event_add_signal(e, NULL, SIGINT, on_stop_signal, flag);
        if (r < 0)
                return r;
        return sd_event_add_signal(e, NULL, SIGTERM, on_stop_signal, flag);
}

int tool_parse_seconds(const char *s, uint64_t *ret_usec) {
        char *end;
        double v;

        errno = 0;
        v = strtod(s, &end);
        if (errno != 0 || end == s || *end != '\0' || !isfinite(v) || v < 0 || v > 1e9)
                return -EINVAL;
        *ret_usec = (uint64_t) llround(v * 1e6);
        return 0;
}

int tool_parse_peer(const char *s, bool allow_all, uint32_t *ret) {
        char *end;
        unsigned long long v;

        if (allow_all && strcmp(s, "all") == 0) {
                *ret = IPCHANNEL_ALL;
                return 0;
        }
        if (s[0] < '1' || s[0] > '9')
                return -EINVAL;
        errno = 0;
        v = strtoull(s, &end, 10);
        if (errno != 0 || *end != '\0' || v == 0 || v >= IPCHANNEL_ALL)
                return -EINVAL;
        *ret = (uint32_t) v;
        return 0;
}

GVariant *tool_parse_data(const char *text) {
        g_autoptr(GError) error = NULL;
        g_autoptr(GVariant) v = NULL;
        const char *reason;

        v = g_variant_parse(NULL, text, NULL, NULL, &error);
        if (!v) {
                g_autofree char *context = g_variant_parse_error_print_context(error, text);
                const char *colon = strchr(error->message, ':'), *lines = strchr(context, '\n');

                /* GLib's message is "POSITIONS:what" (byte offsets from 0, START-END with END
                 * excluded, several ranges separated by ','); its context repeats "what" and
                 * then shows the text with carets under those bytes. */
                if (colon && lines)
                        tool_fail(EXIT_USAGE, "cannot parse DATA at %.*s: %s",
                                  (int) (colon - error->message), error->message, colon + 1);
                else
                        tool_fail(EXIT_USAGE, "cannot parse DATA: %s", error->message);
                fputs(lines ? lines + 1 : context, stderr);
                fprintf(stderr,
                        "DATA is GVariant text, such as 'a string', 42, uint64 7, (1, 'two'), [1, 2] "
                        "or {'key': <1>}; quote it for the shell.\n");
                return NULL;
        }
        if (payload_check_value(v, &reason) < 0) {
                g_autofree char *type = g_variant_type_dup_string(g_variant_get_type(v));

                tool_fail(EXIT_USAGE, "DATA of type %s cannot travel over D-Bus: %s", type, reason);
                return NULL;
        }
        return g_steal_pointer(&v);
}

static int peer_compare(const void *a, const void *b) {
        const tool_peer *x = a, *y = b;

        return x->id < y->id ? -1 : x->id > y->id;
}

void tool_peers_free(tool_peer *p, size_t n) {
        for (size_t i = 0; i < n; i++)
                free(p[i].unique_name);
        free(p);
}

int tool_list_peers(sd_bus *bus, tool_peer **ret, size_t *ret_n) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        tool_peer *peers = NULL;
        size_t n = 0;
        const char *name;
        int r;

        r = sd_bus_call_method(bus, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                               "ListNames", &error, &reply, NULL);
        if (r < 0) {
                tool_fail(EXIT_BUS, "cannot list the names on the %s bus: %s", tool_bus_label(),
                          error.message ?: strerror(-r));
                return r;
        }
        r = sd_bus_message_enter_container(reply, 'a', "s");
        if (r < 0)
                goto fail;
        while ((r = sd_bus_message_read_basic(reply, 's', &name)) > 0) {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *owner_reply = NULL;
                uint32_t id = names_parse_peer(IPCHANNEL_PREFIX_DEFAULT, arg_app, name);
                const char *owner;

                if (id == 0)
                        continue;
                /* The name may go away between the two calls: then it is not a live peer. */
                if (sd_bus_call_method(bus, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                       "org.freedesktop.DBus", "GetNameOwner", NULL, &owner_reply, "s",
                                       name) < 0 ||
                    sd_bus_message_read(owner_reply, "s", &owner) < 0)
                        continue;
                tool_peer *np = realloc(peers, (n + 1) * sizeof(*peers));
                if (!np) {
                        r = -ENOMEM;
                        goto fail;
                }
                peers = np;
                peers[n] = (tool_peer) { .id = id, .unique_name = strdup(owner) };
                if (!peers[n++].unique_name) {
                        r = -ENOMEM;
                        goto fail;
                }
        }
        if (r < 0)
                goto fail;
        if (n > 0)
                qsort(peers, n, sizeof(*peers), peer_compare);
        *ret = peers;
        *ret_n = n;
        return 0;

fail:
        tool_peers_free(peers, n);
        tool_fail(EXIT_FAILURE, "cannot read the names on the bus: %s", strerror(-r));
        return r;
}

uint32_t tool_name_pid(sd_bus *bus, const char *name) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        uint32_t pid = 0;

        if (!name || name[0] == '\0')
                return 0;
        if (sd_bus_call_method(bus, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                               "GetConnectionUnixProcessID", NULL, &reply, "s", name) < 0 ||
            sd_bus_message_read(reply, "u", &pid) < 0)
                return 0;
        return pid;
}

void tool_format_time(uint64_t realtime_usec, bool json, char *buf, size_t size) {
        time_t sec = (time_t) (realtime_usec / 1000000);
        unsigned usec = (unsigned) (realtime_usec % 1000000);
        char date[32] = "", zone[8] = "";
        struct tm tm;

        localtime_r(&sec, &tm);
        strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%S", &tm);
        if (!json) {
                snprintf(buf, size, "%s.%03u", date, usec / 1000);
                return;
        }
        /* RFC 3339 wants the offset as +hh:mm; strftime gives +hhmm. */
        strftime(zone, sizeof(zone), "%z", &tm);
        snprintf(buf, size, "%s.%06u%.3s:%s", date, usec, zone, zone[0] ? zone + 3 : "00");
}

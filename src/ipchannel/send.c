/* SPDX-License-Identifier: MIT */
/* ipchannel send / emit: joins the app as a peer, sends one message, and leaves. */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "names.h"
#include "tool.h"

/* A receiver accepts messages only from peers of its app (org.ipchannel.Error.NotAPeer), so
 * the tool joins as one: it takes the lowest free id (or --id), sends, makes sure the message
 * has left, and gives the id back. The message's sender id is the tool's id. */

#define JOIN_TIMEOUT_USEC (25 * 1000 * 1000ULL)        /* the D-Bus default call timeout */

static uint32_t arg_id;

typedef struct join_state {
        bool connected;
        bool stop;              /* SIGINT/SIGTERM */
        bool timed_out;
        int error;
        char *message;
} join_state;

static void help_send(void) {
        printf("Usage: ipchannel [--app NAME] send [--id ID] PEER|all DATA\n"
               "\n"
               "Sends DATA to peer PEER of the app (or to every peer, \"all\"), as the event\n"
               "\"message\" (the library's ipchannel_send()). The tool joins the app as a peer\n"
               "for the time it takes (peers accept messages only from peers): it takes the\n"
               "lowest free peer id, or ID, which the receiver sees as the sender. It exits\n"
               "once PEER has read the message (with all: once the message is on the bus).\n"
               "\n"
               "DATA is GVariant text: 'a string', 42, uint64 7, true, (1, 'two'), [1, 2],\n"
               "{'key': <1>}, @as []. Quote it for the shell, and put \"--\" before DATA that\n"
               "starts with \"-\". A syntax error is shown with its position (START-END in\n"
               "bytes from 0, END excluded, as GLib counts) and carets under the text.\n"
               "\n"
               "Options:\n"
               "      --id ID       join as peer ID instead of the lowest free id; fails if\n"
               "                    another process holds it\n"
               "  -a, --app NAME    the app (default: $IPCHANNEL_APP)\n"
               "      --user        use the user bus\n"
               "      --system      use the system bus\n"
               "  -h, --help        show this help\n"
               "\n"
               "Exit status: 0 sent, 1 failure (e.g. --id ID is taken), 2 bad usage or bad\n"
               "DATA, 3 no such peer (or it left before reading the message), 4 joining or\n"
               "PEER's answer timed out, 5 bus failure.\n");
}

static void help_emit(void) {
        printf("Usage: ipchannel [--app NAME] emit [--id ID] PEER|all EVENT [DATA]\n"
               "\n"
               "Sends the event EVENT to peer PEER of the app, or to every peer (\"all\", the\n"
               "library's IPCHANNEL_ALL), with DATA or with no data at all (the receiver's\n"
               "handler gets NULL). EVENT is any UTF-8 name of 1 to 255 bytes except the local\n"
               "events connect, disconnect, error, peer-join and peer-leave; \"message\" is\n"
               "the event of 'ipchannel send'. The tool joins the app as a peer for the time\n"
               "it takes: the receiver sees the tool's peer id as the sender. It exits once\n"
               "PEER has read the event (with all: once the event is on the bus).\n"
               "\n"
               "DATA is GVariant text, as for 'ipchannel send': 'a string', 42, (1, 'two').\n"
               "\n"
               "Options:\n"
               "      --id ID       join as peer ID instead of the lowest free id\n"
               "  -a, --app NAME    the app (default: $IPCHANNEL_APP)\n"
               "      --user        use the user bus\n"
               "      --system      use the system bus\n"
               "  -h, --help        show this help\n"
               "\n"
               "Exit status: 0 sent, 1 failure, 2 bad usage, bad EVENT or bad DATA, 3 no such\n"
               "peer (or it left before reading the event), 4 joining or PEER's answer timed\n"
               "out, 5 bus failure.\n");
}

static int parse_argv(const char *command, int argc, char *argv[], void (*help)(void)) {
        enum { ARG_ID = ARG_COMMON_MAX };
        static const struct option options[] = {
                COMMON_OPTIONS,
                { "id", required_argument, NULL, ARG_ID },
                {}
        };
        bool want_help = false;
        int c, r;

        while ((c = getopt_long(argc, argv, COMMON_SHORTOPTS, options, NULL)) >= 0) {
                r = tool_parse_common_option(c, optarg, &want_help);
                if (r < 0)
                        return r;
                if (r > 0)
                        continue;
                switch (c) {
                case ARG_ID:
                        if (tool_parse_peer(optarg, false, &arg_id) < 0) {
                                tool_usage_error(command, "invalid peer id \"%s\" for --id", optarg);
                                return -EINVAL;
                        }
                        break;
                default:
                        return tool_bad_option(command, c, argv);
                }
        }
        if (want_help) {
                help();
                return 0;
        }
        if (tool_require_app(command) < 0)
                return -EINVAL;
        return 1;
}

static void on_connect(ipchannel *ch, uint32_t sender, const char *event, GVariant *data,
                       void *userdata) {
        join_state *s = userdata;

        s->connected = true;
}

static void on_error(ipchannel *ch, uint32_t sender, const char *event, GVariant *data,
                     void *userdata) {
        join_state *s = userdata;
        int32_t error = -EIO;
        const char *message = "unknown error";

        if (s->connected || s->error)
                return;
        if (data && g_variant_is_of_type(data, G_VARIANT_TYPE("(is)")))
                g_variant_get(data, "(i&s)", &error, &message);
        s->error = error < 0 ? error : -EIO;
        s->message = g_strdup(message);
}

static int on_join_timeout(sd_event_source *source, uint64_t usec, void *userdata) {
        join_state *s = userdata;

        s->timed_out = true;
        return 0;
}

/* Returns once peer `to` has read what we sent it: a peer reads its messages in order, so its
 * answer to a Ping sent after them says it has. Leaving earlier could lose the message: a
 * receiver may still ask the bus who the sender is (sd-bus checks the sender's credentials
 * before it dispatches a method call, unless the method is marked unprivileged), and once
 * the sender has gone that check fails and the message is dropped. What the receiver made
 * of the message it cannot tell: the library sends it without asking for a reply. */
static int wait_until_read(sd_bus *bus, uint32_t to) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autofree char *dest = names_peer(IPCHANNEL_PREFIX_DEFAULT, arg_app, to);
        int r;

        if (!dest)
                return tool_fail(EXIT_FAILURE, "out of memory");
        r = sd_bus_call_method(bus, dest, "/", "org.freedesktop.DBus.Peer", "Ping", &error, NULL, NULL);
        if (r >= 0)
                return EXIT_SUCCESS;
        if (sd_bus_error_has_names(&error, SD_BUS_ERROR_SERVICE_UNKNOWN, SD_BUS_ERROR_NAME_HAS_NO_OWNER))
                return tool_fail(EXIT_NOT_FOUND, "peer %" PRIu32 " of app %s left before it read the message",
                                 to, arg_app);
        if (r == -ETIMEDOUT)
                return tool_fail(EXIT_TIMEOUT, "peer %" PRIu32 " of app %s did not answer: it may not have "
                                 "read the message", to, arg_app);
        return tool_fail(tool_exit_code_for_bus_error(&error, r),
                         "cannot tell whether peer %" PRIu32 " read the message: %s", to,
                         error.message ?: strerror(-r));
}

/* Joins, sends and leaves; returns the exit code. data may be NULL (no data). */
static int join_and_send(uint32_t to, const char *event, GVariant *data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        _cleanup_(sd_event_source_unrefp) sd_event_source *timer = NULL;
        g_autoptr(ipchannel) ch = NULL;
        join_state s = {};
        int r, code = EXIT_SUCCESS;

        if (tool_open_bus(&bus) < 0)
                return EXIT_BUS;
        r = sd_event_new(&e);
        if (r < 0)
                return tool_fail(EXIT_FAILURE, "cannot create an event loop: %s", strerror(-r));
        r = tool_add_stop_signals(e, &s.stop);
        if (r >= 0)
                r = sd_event_add_time_relative(e, &timer, CLOCK_MONOTONIC, JOIN_TIMEOUT_USEC, 0,
                                               on_join_timeout, &s);
        if (r >= 0)
                r = tool_channel_new(bus, e, &ch);
        if (r >= 0 && arg_id)
                r = ipchannel_set_peer_id(ch, arg_id);
        if (r >= 0)
                r = ipchannel_on(ch, IPCHANNEL_EVENT_CONNECT, on_connect, &s, NULL);
        if (r >= 0)
                r = ipchannel_on(ch, IPCHANNEL_EVENT_ERROR, on_error, &s, NULL);
        if (r < 0)
                return tool_fail(EXIT_FAILURE, "cannot set up the channel: %s", strerror(-r));

        r = ipchannel_connect(ch);
        if (r < 0)
                return tool_fail(EXIT_BUS, "cannot join app %s on the %s bus: %s", arg_app, tool_bus_label(),
                                 strerror(-r));

        /* The send waits for "connect": then the channel knows every peer, so a send to an
         * absent one fails here and now (-ENXIO) instead of being queued. */
        while (!s.connected && !s.error && !s.stop && !s.timed_out) {
                r = sd_event_run(e, UINT64_MAX);
                if (r < 0) {
                        code = tool_fail(EXIT_FAILURE, "event loop failed: %s", strerror(-r));
                        goto leave;
                }
        }
        if (s.stop)
                code = tool_fail(EXIT_FAILURE, "interrupted before the message was sent");
        else if (s.error == -EADDRINUSE)
                code = tool_fail(EXIT_FAILURE,
                                 "cannot join app %s as peer %" PRIu32 ": another process holds it", arg_app,
                                 arg_id);
        else if (s.error)
                code = tool_fail(s.error == -EACCES || s.error == -EPERM ? EXIT_BUS : EXIT_FAILURE,
                                 "cannot join app %s: %s", arg_app, s.message);
        else if (s.timed_out)
                code = tool_fail(EXIT_TIMEOUT, "timed out joining app %s", arg_app);
        if (code != EXIT_SUCCESS)
                goto leave;

        /* With PEER absent, the tool may have taken its id (the lowest free one): a send to
         * itself would reach no one the user meant. */
        if (to == ipchannel_get_peer_id(ch)) {
                code = tool_fail(EXIT_NOT_FOUND, "no peer %" PRIu32 " in app %s", to, arg_app);
                goto leave;
        }
        r = ipchannel_emit(ch, to, event, data);     /* not floating: emit takes its own reference */
        if (r == -ENXIO)
                code = tool_fail(EXIT_NOT_FOUND, "no peer %" PRIu32 " in app %s", to, arg_app);
        else if (r < 0)
                code = tool_fail(EXIT_FAILURE, "cannot send: %s", strerror(-r));
        else if (to != IPCHANNEL_ALL)
                code = wait_until_read(ipchannel_get_bus(ch), to);
        else {
                /* Out of our buffers before the id is given back: the receivers then still
                 * find the sender among the peers. */
                r = sd_bus_flush(ipchannel_get_bus(ch));
                if (r < 0)
                        code = tool_fail(EXIT_BUS, "cannot send: %s", strerror(-r));
        }

leave:
        (void) ipchannel_disconnect(ch);
        g_free(s.message);
        return code;
}

static int check_event(const char *command, const char *event) {
        const char *reason;

        if (names_check_event(event, &reason) < 0) {
                tool_usage_error(command, "invalid EVENT: %s", reason);
                return -EINVAL;
        }
        if (names_event_is_local(event)) {
                tool_usage_error(command, "\"%s\" is a local event: peers cannot send it", event);
                return -EINVAL;
        }
        return 0;
}

int verb_send(int argc, char *argv[]) {
        g_autoptr(GVariant) data = NULL;
        uint32_t to;
        int r;

        r = parse_argv("send", argc, argv, help_send);
        if (r <= 0)
                return r < 0 ? EXIT_USAGE : EXIT_SUCCESS;
        if (argc - optind != 2)
                return tool_usage_error("send", argc - optind < 2 ? "send needs PEER and DATA"
                                                                  : "send takes only PEER and DATA; "
                                                                    "quote DATA for the shell");
        if (tool_parse_peer(argv[optind], true, &to) < 0)
                return tool_usage_error("send", "invalid PEER \"%s\": a peer id (1, 2, ...) or all",
                                        argv[optind]);
        data = tool_parse_data(argv[optind + 1]);
        if (!data)
                return EXIT_USAGE;
        return join_and_send(to, IPCHANNEL_EVENT_MESSAGE, data);
}

int verb_emit(int argc, char *argv[]) {
        g_autoptr(GVariant) data = NULL;
        uint32_t to;
        int r, n;

        r = parse_argv("emit", argc, argv, help_emit);
        if (r <= 0)
                return r < 0 ? EXIT_USAGE : EXIT_SUCCESS;
        n = argc - optind;
        if (n < 2 || n > 3)
                return tool_usage_error("emit", n < 2 ? "emit needs PEER and EVENT"
                                                      : "emit takes only PEER, EVENT and DATA; "
                                                        "quote DATA for the shell");
        if (tool_parse_peer(argv[optind], true, &to) < 0)
                return tool_usage_error("emit", "invalid PEER \"%s\": a peer id (1, 2, ...) or all",
                                        argv[optind]);
        if (check_event("emit", argv[optind + 1]) < 0)
                return EXIT_USAGE;
        if (n == 3) {
                data = tool_parse_data(argv[optind + 2]);
                if (!data)
                        return EXIT_USAGE;
        }
        return join_and_send(to, argv[optind + 1], data);
}

/* SPDX-License-Identifier: MIT */
/* ipchannel listen: prints the messages an app's peers exchange, as a peer or as a monitor. */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "message.h"
#include "names.h"
#include "payload.h"
#include "tool.h"

/*
 * Two ways to listen:
 * - as a peer (the default): the tool joins the app through the library and prints what the
 *   library hands its handlers: messages sent to the tool's peer id and broadcasts. The
 *   sender id comes from the library, which has it from the bus.
 * - as a monitor (--monitor): a second connection becomes a bus monitor
 *   (org.freedesktop.DBus.Monitoring.BecomeMonitor) for the app's Peer1 traffic and sees
 *   every message between peers, without taking an id. A monitor cannot send, so the peer
 *   ids are known from a snapshot taken on a normal connection once the monitor is in place,
 *   updated by the NameOwnerChanged signals that the monitor sees in the same stream as the
 *   messages, hence in the broker's order.
 */

static bool arg_monitor;
static bool arg_json;
static bool arg_all;
static uint32_t arg_id;
static char **arg_events;       /* borrowed from argv; NULL-terminated */
static const char *const default_events[] = { IPCHANNEL_EVENT_MESSAGE, NULL };

static void help(void) {
        printf("Usage: ipchannel [--app NAME] listen [--monitor [--all]] [--json] [--id ID]\n"
               "                 [EVENT...]\n"
               "\n"
               "Prints each message of the events EVENT (default: \"message\", the event of\n"
               "'ipchannel send') as one line: time, sender's peer id, event, data (GVariant\n"
               "text; nothing when the message carries no data). Stops on Ctrl-C (SIGINT) or\n"
               "SIGTERM, with exit status 0.\n"
               "\n"
               "By default the tool joins the app as a peer (the lowest free id, or ID) and\n"
               "prints what reaches that peer: messages sent to its id and broadcasts to\n"
               "all. It also hears the local events peer-join and peer-leave when asked for\n"
               "(the sender is then the peer that came or went). It says on stderr which peer\n"
               "id it took once it has joined.\n"
               "\n"
               "With --monitor it takes no peer id (ipchannel peers does not list it) and\n"
               "prints every message between the app's peers, each line also saying to whom\n"
               "(\"-> peer N\" or \"-> all\"). It becomes a D-Bus monitor, which needs root on\n"
               "the system bus. A sender that is no peer is shown by its unique bus name.\n"
               "\n"
               "Options:\n"
               "      --monitor     watch the bus instead of joining the app\n"
               "      --all         with --monitor: every event, not only EVENT...\n"
               "      --json        one JSON object per message and line: {\"time\",\n"
               "                    \"sender\", \"event\", \"type\", \"data\", \"text\"}, with\n"
               "                    --monitor also \"sender_name\" and \"to\" (a peer id or\n"
               "                    \"all\"). \"data\" is the value as JSON, \"type\" its GVariant\n"
               "                    type and \"text\" its GVariant text (all null with no data)\n"
               "      --id ID       join as peer ID instead of the lowest free id\n"
               "  -a, --app NAME    the app (default: $IPCHANNEL_APP)\n"
               "      --user        use the user bus\n"
               "      --system      use the system bus\n"
               "  -h, --help        show this help\n"
               "\n"
               "Exit status: 0 when stopped by SIGINT or SIGTERM, 1 failure, 2 bad usage,\n"
               "5 bus failure (cannot connect, monitoring not allowed, the bus went away).\n");
}

static int parse_argv(int argc, char *argv[]) {
        enum { ARG_MONITOR = ARG_COMMON_MAX, ARG_JSON, ARG_ALL, ARG_ID };
        static const struct option options[] = {
                COMMON_OPTIONS,
                { "monitor", no_argument, NULL, ARG_MONITOR },
                { "json", no_argument, NULL, ARG_JSON },
                { "all", no_argument, NULL, ARG_ALL },
                { "id", required_argument, NULL, ARG_ID },
                {}
        };
        bool want_help = false;
        const char *reason;
        int c, r;

        while ((c = getopt_long(argc, argv, COMMON_SHORTOPTS, options, NULL)) >= 0) {
                r = tool_parse_common_option(c, optarg, &want_help);
                if (r < 0)
                        return r;
                if (r > 0)
                        continue;
                switch (c) {
                case ARG_MONITOR:
                        arg_monitor = true;
                        break;
                case ARG_JSON:
                        arg_json = true;
                        break;
                case ARG_ALL:
                        arg_all = true;
                        break;
                case ARG_ID:
                        if (tool_parse_peer(optarg, false, &arg_id) < 0) {
                                tool_usage_error("listen", "invalid peer id \"%s\" for --id", optarg);
                                return -EINVAL;
                        }
                        break;
                default:
                        return tool_bad_option("listen", c, argv);
                }
        }
        if (want_help) {
                help();
                return 0;
        }
        if (arg_all && !arg_monitor) {
                tool_usage_error("listen", "--all needs --monitor (a peer hears only the events it "
                                           "listens to)");
                return -EINVAL;
        }
        if (arg_id && arg_monitor) {
                tool_usage_error("listen", "--id and --monitor exclude each other (a monitor takes no id)");
                return -EINVAL;
        }
        if (arg_all && optind < argc) {
                tool_usage_error("listen", "--all and EVENT exclude each other");
                return -EINVAL;
        }
        for (int i = optind; i < argc; i++) {
                if (names_check_event(argv[i], &reason) < 0) {
                        tool_usage_error("listen", "invalid EVENT \"%s\": %s", argv[i], reason);
                        return -EINVAL;
                }
                if (arg_monitor && names_event_is_local(argv[i])) {
                        tool_usage_error("listen",
                                         "\"%s\" is a local event: it never travels on the bus, so "
                                         "a monitor cannot see it",
                                         argv[i]);
                        return -EINVAL;
                }
                /* Of the local events only these say something about the app; the others
                 * are about the tool's own channel. */
                if (names_event_is_local(argv[i]) && strcmp(argv[i], IPCHANNEL_EVENT_PEER_JOIN) != 0 &&
                    strcmp(argv[i], IPCHANNEL_EVENT_PEER_LEAVE) != 0) {
                        tool_usage_error("listen",
                                         "\"%s\" is a local event of the tool's own channel; of the "
                                         "local events, listen hears peer-join and peer-leave",
                                         argv[i]);
                        return -EINVAL;
                }
        }
        arg_events = optind < argc ? argv + optind : (char **) default_events;
        if (tool_require_app("listen") < 0)
                return -EINVAL;
        return 1;
}

static bool event_wanted(const char *event) {
        if (arg_all)
                return true;
        for (char **e = arg_events; *e; e++)
                if (strcmp(*e, event) == 0)
                        return true;
        return false;
}

/* One line per message. sender_name and to are for monitors (NULL / 0 when joined). */
static void print_message(uint32_t sender, const char *sender_name, uint32_t to, const char *event,
                          GVariant *data) {
        g_autoptr(GString) out = g_string_new(NULL);
        g_autofree char *text = data ? g_variant_print(data, TRUE) : NULL;
        char time[64];

        tool_format_time(clock_usec(CLOCK_REALTIME), arg_json, time, sizeof(time));
        if (arg_json) {
                g_string_append(out, "{\"time\":");
                json_append_string(out, time);
                if (sender)
                        g_string_append_printf(out, ",\"sender\":%" PRIu32, sender);
                else
                        g_string_append(out, ",\"sender\":null");
                if (sender_name) {
                        g_string_append(out, ",\"sender_name\":");
                        json_append_string(out, sender_name);
                        if (to == IPCHANNEL_ALL)
                                g_string_append(out, ",\"to\":\"all\"");
                        else
                                g_string_append_printf(out, ",\"to\":%" PRIu32, to);
                }
                g_string_append(out, ",\"event\":");
                json_append_string(out, event);
                if (data) {
                        g_string_append(out, ",\"type\":");
                        json_append_string(out, g_variant_get_type_string(data));
                        g_string_append(out, ",\"data\":");
                        json_append_variant(out, data);
                        g_string_append(out, ",\"text\":");
                        json_append_string(out, text);
                } else
                        g_string_append(out, ",\"type\":null,\"data\":null,\"text\":null");
                g_string_append_c(out, '}');
        } else {
                g_string_append(out, time);
                if (sender)
                        g_string_append_printf(out, " peer %" PRIu32, sender);
                else
                        g_string_append_printf(out, " %s", sender_name ?: "-");
                if (sender_name) {
                        if (to == IPCHANNEL_ALL)
                                g_string_append(out, " -> all");
                        else
                                g_string_append_printf(out, " -> peer %" PRIu32, to);
                }
                g_string_append_printf(out, " %s", event);
                if (text)
                        g_string_append_printf(out, " %s", text);
        }
        /* One write per line, and at once: listen is read through pipes. */
        g_string_append_c(out, '\n');
        fputs(out->str, stdout);
        fflush(stdout);
}

/* ---- as a peer ---------------------------------------------------------------------------- */

typedef struct joined {
        bool stop;
        uint32_t id;
} joined;

static void on_event(ipchannel *ch, uint32_t sender, const char *event, GVariant *data, void *userdata) {
        print_message(sender, NULL, 0, event, data);
}

static void on_connect(ipchannel *ch, uint32_t sender, const char *event, GVariant *data, void *userdata) {
        joined *j = userdata;

        j->id = ipchannel_get_peer_id(ch);
        fprintf(stderr, "Listening as peer %" PRIu32 " of app %s on the %s bus; Ctrl-C to stop.\n", j->id,
                arg_app, tool_bus_label());
}

static void on_disconnect(ipchannel *ch, uint32_t sender, const char *event, GVariant *data,
                          void *userdata) {
        tool_warn("lost the bus connection; reconnecting");
}

static void on_error(ipchannel *ch, uint32_t sender, const char *event, GVariant *data, void *userdata) {
        const char *message = "unknown error";
        int32_t error = 0;

        if (data && g_variant_is_of_type(data, G_VARIANT_TYPE("(is)")))
                g_variant_get(data, "(i&s)", &error, &message);
        tool_warn("%s", message);
}

static int listen_joined(void) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        g_autoptr(ipchannel) ch = NULL;
        joined j = {};
        int r;

        if (tool_open_bus(&bus) < 0)
                return EXIT_BUS;
        r = sd_event_new(&e);
        if (r >= 0)
                r = tool_add_stop_signals(e, &j.stop);
        if (r >= 0)
                r = tool_channel_new(bus, e, &ch);
        if (r >= 0 && arg_id)
                r = ipchannel_set_peer_id(ch, arg_id);
        for (char **ev = arg_events; r >= 0 && *ev; ev++)
                if (!g_strv_contains((const char *const *) ev + 1, *ev))    /* each once */
                        r = ipchannel_on(ch, *ev, on_event, &j, NULL);
        if (r >= 0)
                r = ipchannel_on(ch, IPCHANNEL_EVENT_CONNECT, on_connect, &j, NULL);
        if (r >= 0)
                r = ipchannel_on(ch, IPCHANNEL_EVENT_DISCONNECT, on_disconnect, &j, NULL);
        if (r >= 0)
                r = ipchannel_on(ch, IPCHANNEL_EVENT_ERROR, on_error, &j, NULL);
        if (r < 0)
                return tool_fail(EXIT_FAILURE, "cannot set up the channel: %s", strerror(-r));

        r = ipchannel_connect(ch);
        if (r < 0)
                return tool_fail(EXIT_BUS, "cannot join app %s on the %s bus: %s", arg_app, tool_bus_label(),
                                 strerror(-r));
        while (!j.stop) {
                r = sd_event_run(e, UINT64_MAX);
                if (r < 0)
                        return tool_fail(EXIT_FAILURE, "event loop failed: %s", strerror(-r));
        }
        (void) ipchannel_disconnect(ch);
        return EXIT_SUCCESS;
}

/* ---- as a monitor ------------------------------------------------------------------------- */

typedef struct monitor {
        sd_bus *bus;            /* the monitor connection */
        const char *unique_name;
        bool is_monitor;        /* the broker took our unique name: from here on we only watch */
        GHashTable *ids;        /* unique name → GUINT_TO_POINTER(peer id) */
        bool stop;
        int failed;             /* exit code, 0 while all is well */
} monitor;

static void monitor_owner_changed(monitor *mon, const char *name, const char *old_owner,
                                  const char *new_owner) {
        uint32_t id = names_parse_peer(IPCHANNEL_PREFIX_DEFAULT, arg_app, name);

        if (id == 0)
                return;
        if (old_owner[0] && GPOINTER_TO_UINT(g_hash_table_lookup(mon->ids, old_owner)) == id)
                g_hash_table_remove(mon->ids, old_owner);
        if (new_owner[0])
                g_hash_table_insert(mon->ids, g_strdup(new_owner), GUINT_TO_POINTER(id));
}

static void monitor_handle(monitor *mon, sd_bus_message *m) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        /* What the receiver would accept at its defaults, any event name it could be set to. */
        const message_limits limits = {
                .event_name_max = IPCHANNEL_EVENT_NAME_MAX_LIMIT,
                .values_max = IPCHANNEL_VALUES_MAX_DEFAULT,
                .memfd_max = IPCHANNEL_MEMFD_MAX_DEFAULT,
        };
        g_autoptr(GPtrArray) payloads = NULL;
        const char *member = sd_bus_message_get_member(m), *sender = sd_bus_message_get_sender(m);
        const char *event = NULL, *name, *old_owner, *new_owner;
        bool signal;
        int shape;
        uint32_t to = 0, from;

        if (!mon->is_monitor) {
                /* busctl's rule: the broker says NameLost for our unique name when the
                 * connection has become a monitor; what comes before is not monitored. */
                if (sd_bus_message_is_signal(m, "org.freedesktop.DBus", "NameLost") > 0 &&
                    sd_bus_message_read(m, "s", &name) >= 0 && strcmp(name, mon->unique_name) == 0)
                        mon->is_monitor = true;
                return;
        }
        if (sd_bus_message_is_signal(m, "org.freedesktop.DBus", "NameOwnerChanged") > 0) {
                if (sd_bus_message_read(m, "sss", &name, &old_owner, &new_owner) >= 0)
                        monitor_owner_changed(mon, name, old_owner, new_owner);
                return;
        }
        if (!member || g_strcmp0(sd_bus_message_get_interface(m), IPCHANNEL_PEER_INTERFACE) != 0)
                return;

        /* Decoded as a receiver would (message.c): what it would refuse is skipped, as it comes
         * from another process and is not trusted. A memfd payload shows only if the broker
         * passed its fd on to us. */
        signal = sd_bus_message_is_signal(m, NULL, NULL) > 0;
        if (!signal && sd_bus_message_is_method_call(m, NULL, NULL) <= 0)
                return;
        shape = message_shape_of(member, sd_bus_message_get_signature(m, true), signal);
        if (shape < 0)
                return;
        if (signal)
                to = IPCHANNEL_ALL;
        else {
                const char *dest = sd_bus_message_get_destination(m);

                to = dest ? names_parse_peer(IPCHANNEL_PREFIX_DEFAULT, arg_app, dest) : 0;
                if (to == 0 && dest)    /* addressed by unique name */
                        to = GPOINTER_TO_UINT(g_hash_table_lookup(mon->ids, dest));
        }
        if (message_read(m, shape, &limits, &event, &payloads, &error) < 0 || !event_wanted(event))
                return;
        from = sender ? GPOINTER_TO_UINT(g_hash_table_lookup(mon->ids, sender)) : 0;
        if (payloads->len == 0)
                print_message(from, sender ?: "-", to, event, NULL);
        for (guint i = 0; i < payloads->len; i++)
                print_message(from, sender ?: "-", to, event, payloads->pdata[i]);
}

static void monitor_drain(monitor *mon) {
        int r;

        for (;;) {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;

                /* A monitor connection is not dispatched (sd-bus hands every message to the
                 * caller of sd_bus_process()), so it is not attached to the loop either. */
                r = sd_bus_process(mon->bus, &m);
                if (r < 0) {
                        mon->failed = tool_fail(EXIT_BUS, "lost the bus connection: %s", strerror(-r));
                        return;
                }
                if (m) {
                        if (sd_bus_message_is_signal(m, "org.freedesktop.DBus.Local", "Disconnected") > 0) {
                                mon->failed = tool_fail(EXIT_BUS, "the bus closed the connection");
                                return;
                        }
                        monitor_handle(mon, m);
                        continue;
                }
                if (r == 0)
                        return;
        }
}

static int on_monitor_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        monitor_drain(userdata);
        return 0;
}

static int become_monitor(monitor *mon, const char *address) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        g_autofree char *path = names_path(IPCHANNEL_PREFIX_DEFAULT, arg_app);
        g_autofree char *ns = names_peer_namespace(IPCHANNEL_PREFIX_DEFAULT, arg_app);
        g_autofree char *calls = NULL, *signals = NULL, *owners = NULL;
        int r;

        if (!path || !ns)
                return tool_fail(EXIT_FAILURE, "out of memory");
        calls = g_strdup_printf("type='method_call',interface='%s',path='%s'", IPCHANNEL_PEER_INTERFACE,
                                path);
        signals = g_strdup_printf("type='signal',interface='%s',path='%s'", IPCHANNEL_PEER_INTERFACE, path);
        owners = names_owner_changed_match(ns, true);
        if (!owners)
                return tool_fail(EXIT_FAILURE, "out of memory");

        r = sd_bus_new(&mon->bus);
        if (r >= 0)
                r = sd_bus_set_address(mon->bus, address);
        if (r >= 0)
                r = sd_bus_set_bus_client(mon->bus, true);
        /* Else sd-bus would answer the method calls it sees ("unknown object"). */
        if (r >= 0)
                r = sd_bus_set_monitor(mon->bus, true);
        if (r >= 0)
                r = sd_bus_set_description(mon->bus, "ipchannel-monitor");
        if (r >= 0)
                r = sd_bus_start(mon->bus);
        if (r >= 0)
                r = sd_bus_get_unique_name(mon->bus, &mon->unique_name);
        if (r < 0)
                return tool_fail(EXIT_BUS, "cannot connect to the %s bus: %s", tool_bus_label(),
                                 strerror(-r));

        r = sd_bus_message_new_method_call(mon->bus, &m, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                           "org.freedesktop.DBus.Monitoring", "BecomeMonitor");
        if (r >= 0)
                r = sd_bus_message_append(m, "asu", 3, calls, signals, owners, 0);
        if (r < 0)
                return tool_fail(EXIT_FAILURE, "cannot build the BecomeMonitor call: %s", strerror(-r));
        r = sd_bus_call(mon->bus, m, 0, &error, NULL);
        if (r < 0)
                return tool_fail(
                        tool_exit_code_for_bus_error(&error, r) == EXIT_FAILURE ? EXIT_FAILURE : EXIT_BUS,
                        "cannot monitor the %s bus: %s", tool_bus_label(), error.message ?: strerror(-r));
        return 0;
}

static int listen_monitor(void) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        _cleanup_(sd_event_source_unrefp) sd_event_source *io = NULL;
        monitor mon = {
                .ids = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL),
        };
        tool_peer *peers = NULL;
        const char *address;
        size_t n = 0;
        int r, code = EXIT_SUCCESS;

        if (tool_open_bus(&bus) < 0) {
                code = EXIT_BUS;
                goto finish;
        }
        r = sd_bus_get_address(bus, &address);
        if (r < 0) {
                code = tool_fail(EXIT_BUS, "cannot tell the bus's address: %s", strerror(-r));
                goto finish;
        }
        code = become_monitor(&mon, address);
        if (code != EXIT_SUCCESS)
                goto finish;

        /* The snapshot comes after BecomeMonitor, so no change is missed: each later one is
         * in the monitor's stream, and applying an earlier one again changes nothing. */
        if (tool_list_peers(bus, &peers, &n) < 0) {
                code = EXIT_BUS;
                goto finish;
        }
        for (size_t i = 0; i < n; i++)
                g_hash_table_insert(mon.ids, g_strdup(peers[i].unique_name), GUINT_TO_POINTER(peers[i].id));
        tool_peers_free(peers, n);
        /* Only the snapshot needed a connection that can talk. */
        bus = sd_bus_flush_close_unref(bus);

        r = sd_event_new(&e);
        if (r >= 0)
                r = tool_add_stop_signals(e, &mon.stop);
        if (r >= 0)
                r = sd_event_add_io(e, &io, sd_bus_get_fd(mon.bus), EPOLLIN, on_monitor_io, &mon);
        if (r < 0) {
                code = tool_fail(EXIT_FAILURE, "cannot set up the event loop: %s", strerror(-r));
                goto finish;
        }
        fprintf(stderr, "Monitoring app %s on the %s bus; Ctrl-C to stop.\n", arg_app, tool_bus_label());

        /* What arrived with the reply to BecomeMonitor is already read and queued. */
        monitor_drain(&mon);
        while (!mon.stop && !mon.failed) {
                r = sd_event_run(e, UINT64_MAX);
                if (r < 0) {
                        code = tool_fail(EXIT_FAILURE, "event loop failed: %s", strerror(-r));
                        goto finish;
                }
        }
        code = mon.failed;

finish:
        io = sd_event_source_disable_unref(io);        /* before its fd closes */
        sd_bus_close_unref(mon.bus);
        g_hash_table_unref(mon.ids);
        return code;
}

int verb_listen(int argc, char *argv[]) {
        int r;

        r = parse_argv(argc, argv);
        if (r <= 0)
                return r < 0 ? EXIT_USAGE : EXIT_SUCCESS;
        return arg_monitor ? listen_monitor() : listen_joined();
}

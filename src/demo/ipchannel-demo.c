/* SPDX-License-Identifier: MIT */
/* ipchannel-demo: the seed's example in C, and with --serve a long-lived peer for a systemd fleet. */
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <systemd/sd-daemon.h>

#include <ipchannel.h>

#define TAKE_LOCK(d) ({ ipchannel_lock *_l = (d)->lock; (d)->lock = NULL; _l; })

/* What each peer does, as in the seed: peer 1 listens, 2 sends to 1, 3 emits a custom event
 * to 1, 4 sends and emits to everyone. Each waits until the whole fleet is up before it acts,
 * so nobody misses a message. Then every peer takes the cluster-wide lock "demo" (the seed's
 * synchronize), holds it for a moment without blocking its loop, and tells peer 1 when it is
 * done; when peer 1 has heard from everyone it broadcasts "bye" and every peer exits.
 *
 * With --serve it is instead one instance of a fleet that systemd runs
 * (units/ipchannel-demo@.service): it stays up, answers "ping" with "pong", and on "bump"
 * increments a counter file shared by the fleet inside the cluster-wide lock "counter". */

typedef enum { BUS_DEFAULT, BUS_USER, BUS_SYSTEM } bus_kind;

static const char *arg_app = "demo";
static unsigned arg_fleet = 4;
static unsigned arg_timeout_sec = 20;
static bool arg_timeout_set;
static bool arg_serve;
static bus_kind arg_bus = BUS_DEFAULT;
static const char *arg_counter_file;
static char *state_counter_file;        /* $STATE_DIRECTORY/counter, owned */

/* How long a "bump" holds the lock between reading the counter and writing it back. Long
 * enough that two bodies running at once would interleave and lose an increment, which is
 * what a fleet test looks for. */
#define BUMP_HOLD_USEC (10 * 1000ULL)

typedef struct {
        ipchannel *ch;
        unsigned n_received;    /* by peer 1: messages, custom events and "locked" reports */
        unsigned n_expected;
        int acted;
        ipchannel_lock *lock;   /* held while the section runs */
        sd_event_source *hold;
} demo;

static void print_data(const char *what, uint32_t self, uint32_t sender, GVariant *data) {
        g_autofree char *text = data ? g_variant_print(data, FALSE) : g_strdup("(nothing)");

        printf("peer %" PRIu32 ": %s from peer %" PRIu32 ": %s\n", self, what, sender, text);
        fflush(stdout);
}

static void maybe_done(demo *d) {
        if (ipchannel_get_peer_id(d->ch) == 1 && d->n_received == d->n_expected) {
                printf("peer 1: heard from every peer, and every peer had the lock; saying bye to all\n");
                fflush(stdout);
                ipchannel_emit(d->ch, IPCHANNEL_ALL, "bye", NULL);
        }
}

static void on_message(ipchannel *ch, uint32_t sender, const char *event, GVariant *data,
                       void *userdata) {
        demo *d = userdata;

        print_data("message", ipchannel_get_peer_id(ch), sender, data);
        if (ipchannel_get_peer_id(ch) == 1) {
                d->n_received++;
                maybe_done(d);
        }
}

static void on_custom_event(ipchannel *ch, uint32_t sender, const char *event, GVariant *data,
                            void *userdata) {
        demo *d = userdata;

        print_data("custom-event", ipchannel_get_peer_id(ch), sender, data);
        d->n_received++;
        maybe_done(d);
}

static void on_locked(ipchannel *ch, uint32_t sender, const char *event, GVariant *data,
                      void *userdata) {
        demo *d = userdata;

        d->n_received++;
        maybe_done(d);
}

/* The section ends asynchronously, from the loop: the lock is released when the work is done,
 * not when the body returns. */
static int on_hold_done(sd_event_source *s, uint64_t usec, void *userdata) {
        demo *d = userdata;

        d->hold = sd_event_source_unref(d->hold);
        printf("peer %" PRIu32 ": releasing the lock\n", ipchannel_get_peer_id(d->ch));
        fflush(stdout);
        ipchannel_lock_release(TAKE_LOCK(d), 0);
        return 0;
}

static void lock_body(ipchannel_lock *lock, void *userdata) {
        demo *d = userdata;

        printf("peer %" PRIu32 ": holds the lock \"demo\" (fencing token %" PRIu64 "); nobody else does\n",
               ipchannel_get_peer_id(d->ch), ipchannel_lock_get_token(lock));
        fflush(stdout);
        d->lock = lock;
        /* Accuracy 1 ms: 0 would let sd-event fire up to 250 ms late. */
        sd_event_add_time_relative(ipchannel_get_event(d->ch), &d->hold, CLOCK_MONOTONIC, 100 * 1000, 1000,
                                   on_hold_done, d);
}

static void lock_done(ipchannel *ch, int error, void *userdata) {
        if (error < 0) {
                fprintf(stderr, "peer %" PRIu32 ": the section failed: %s\n", ipchannel_get_peer_id(ch),
                        strerror(-error));
                ipchannel_exit(ch, EXIT_FAILURE);
                return;
        }
        /* Queued sends keep their order: peer 1 hears this after the messages above. */
        ipchannel_emit(ch, 1, "locked", NULL);
}

static void on_bye(ipchannel *ch, uint32_t sender, const char *event, GVariant *data,
                   void *userdata) {
        printf("peer %" PRIu32 ": bye from peer %" PRIu32 "\n", ipchannel_get_peer_id(ch), sender);
        fflush(stdout);
        ipchannel_exit(ch, EXIT_SUCCESS);
}

static void on_error(ipchannel *ch, uint32_t sender, const char *event, GVariant *data,
                     void *userdata) {
        int32_t error = 0;
        const char *message = "";

        if (data && g_variant_is_of_type(data, G_VARIANT_TYPE("(is)")))
                g_variant_get(data, "(i&s)", &error, &message);
        fprintf(stderr, "peer %" PRIu32 ": error: %s (%s)\n", ipchannel_get_peer_id(ch), message,
                strerror(-error));
}

/* Acts once every peer of the fleet is on the bus. */
static void act_when_fleet_is_up(demo *d) {
        ipchannel *ch = d->ch;
        uint32_t self = ipchannel_get_peer_id(ch);

        if (d->acted)
                return;
        for (uint32_t id = 1; id <= arg_fleet; id++)
                if (ipchannel_has_peer(ch, id) <= 0)
                        return;
        d->acted = 1;

        switch (self) {
        case 2:
                ipchannel_send(ch, 1, g_variant_new_string("Hi peer 1, I'm peer 2."));
                break;
        case 3:
                ipchannel_emit(ch, 1, "custom-event", g_variant_new_string("hello world"));
                break;
        case 4:
                ipchannel_send(ch, IPCHANNEL_ALL, g_variant_new_string("all attention"));
                ipchannel_emit(ch, IPCHANNEL_ALL, "custom-event",
                               g_variant_new_string("all attention"));
                break;
        default:
                break;
        }

        /* Everyone, peer 1 included, takes the lock once; the bodies run one at a time. */
        int r = ipchannel_synchronize(ch, "demo", lock_body, lock_done, d);
        if (r < 0)
                fprintf(stderr, "peer %" PRIu32 ": cannot synchronize: %s\n", self, strerror(-r));
}

static void on_peer_join(ipchannel *ch, uint32_t sender, const char *event, GVariant *data,
                         void *userdata) {
        act_when_fleet_is_up(userdata);
}

static void on_connect(ipchannel *ch, uint32_t sender, const char *event, GVariant *data,
                       void *userdata) {
        demo *d = userdata;
        uint32_t self = ipchannel_get_peer_id(ch);

        /* Now that the channel is connected, the peer id is known. */
        printf("peer %" PRIu32 ": connected (is_connected=%d)\n", self, ipchannel_is_connected(ch));
        fflush(stdout);

        if (self == 1) {
                /* Peer 1 hears from 2 (message), 3 (custom-event) and 4 (both, broadcast), and
                 * from every peer (itself too) when its section is done. */
                d->n_expected = (arg_fleet >= 4 ? 4 : arg_fleet - 1) + arg_fleet;
                ipchannel_on(ch, "custom-event", on_custom_event, d, NULL);
                maybe_done(d);
        }
        act_when_fleet_is_up(d);
}

/* ---- --serve: one instance of a fleet under systemd --------------------------------------- */

/*
 * Readiness, for service authors. A Type=notify unit is "started" when the service sends
 * READY=1, and units ordered after it wait for exactly that. A service on ipchannel is useful
 * once its channel owns its peer name, which is when the "connect" event fires; before that,
 * sends are only queued and other peers cannot reach it. So:
 *
 *   - call ipchannel_connect(), which returns at once, and run the loop;
 *   - in the "connect" handler, sd_notify(0, "READY=1") (a STATUS= line is a courtesy to
 *     `systemctl status`);
 *   - "connect" fires again after a reconnect; READY=1 a second time is harmless, and a
 *     "disconnect" handler can say in STATUS= that the bus was lost meanwhile.
 *
 * If the bus refuses the peer name (the bus policy does not let this user own
 * org.ipchannel.*, see units/org.ipchannel.conf), "error" fires with -EACCES instead and
 * "connect" never does: exit with an error rather than hang until systemd's start timeout.
 */

typedef struct {
        ipchannel *ch;
        const char *counter_file;
        bool was_connected;
} server;

/* One "bump" request: the sender to answer, and the section's state while it runs. */
typedef struct {
        server *srv;
        uint32_t sender;
        uint32_t value;                 /* the counter as written by this bump */
        ipchannel_lock *lock;           /* held from the body until the write is done */
        sd_event_source *hold;
} bump;

static void bump_free(bump *b) {
        sd_event_source_disable_unref(b->hold);
        free(b);
}

/* A missing file counts as 0, so a fresh StateDirectory needs no set-up. */
static int counter_read(const char *path, uint32_t *ret) {
        g_autoptr(GError) error = NULL;
        g_autofree char *text = NULL;
        char *end;
        unsigned long v;

        if (!g_file_get_contents(path, &text, NULL, &error)) {
                if (g_error_matches(error, G_FILE_ERROR, G_FILE_ERROR_NOENT)) {
                        *ret = 0;
                        return 0;
                }
                fprintf(stderr, "ipchannel-demo: cannot read %s: %s\n", path, error->message);
                return -EIO;
        }
        errno = 0;
        v = strtoul(text, &end, 10);
        if (errno != 0 || end == text || (*end != '\0' && *end != '\n') || v > UINT32_MAX) {
                fprintf(stderr, "ipchannel-demo: %s does not hold a counter\n", path);
                return -EBADMSG;
        }
        *ret = (uint32_t) v;
        return 0;
}

/* Written to a temporary file and renamed over the old one, so a reader never sees half a
 * number, even one that ignores the lock. */
static int counter_write(const char *path, uint32_t value) {
        g_autoptr(GError) error = NULL;
        char text[16];

        snprintf(text, sizeof(text), "%" PRIu32 "\n", value);
        if (!g_file_set_contents(path, text, -1, &error)) {
                fprintf(stderr, "ipchannel-demo: cannot write %s: %s\n", path, error->message);
                return -EIO;
        }
        return 0;
}

static int on_bump_hold_done(sd_event_source *s, uint64_t usec, void *userdata) {
        bump *b = userdata;
        int r;

        b->hold = sd_event_source_disable_unref(b->hold);
        r = counter_write(b->srv->counter_file, b->value);
        ipchannel_lock_release(TAKE_LOCK(b), r < 0 ? r : 0);
        return 0;
}

/* Read, wait, write: the wait is spent in the loop, holding the lock, so the process keeps
 * answering pings while it holds it. */
static void bump_body(ipchannel_lock *lock, void *userdata) {
        bump *b = userdata;
        uint32_t value;
        int r;

        r = counter_read(b->srv->counter_file, &value);
        if (r < 0) {
                ipchannel_lock_release(lock, r);
                return;
        }
        b->value = value + 1;
        b->lock = lock;
        /* Accuracy 1 ms: 0 would mean sd-event's default of 250 ms, per bump. */
        r = sd_event_add_time_relative(ipchannel_get_event(b->srv->ch), &b->hold, CLOCK_MONOTONIC,
                                       BUMP_HOLD_USEC, 1000, on_bump_hold_done, b);
        if (r < 0)
                ipchannel_lock_release(TAKE_LOCK(b), r);
}

static void bump_done(ipchannel *ch, int error, void *userdata) {
        bump *b = userdata;

        if (error < 0) {
                fprintf(stderr, "ipchannel-demo: bump for peer %" PRIu32 " failed: %s\n", b->sender,
                        strerror(-error));
                ipchannel_emit(ch, b->sender, "bump-failed", g_variant_new("(is)", error, strerror(-error)));
        } else
                ipchannel_emit(ch, b->sender, "bumped", g_variant_new("(u)", b->value));
        bump_free(b);
}

static void on_bump(ipchannel *ch, uint32_t sender, const char *event, GVariant *data, void *userdata) {
        server *srv = userdata;
        bump *b;
        int r;

        b = calloc(1, sizeof(*b));
        if (!b) {
                ipchannel_emit(ch, sender, "bump-failed", g_variant_new("(is)", -ENOMEM, strerror(ENOMEM)));
                return;
        }
        *b = (bump) { .srv = srv, .sender = sender };
        r = ipchannel_synchronize(ch, "counter", bump_body, bump_done, b);
        if (r < 0) {
                /* A call that fails never runs its callbacks: answer and clean up here. */
                fprintf(stderr, "ipchannel-demo: cannot synchronize: %s\n", strerror(-r));
                ipchannel_emit(ch, sender, "bump-failed", g_variant_new("(is)", r, strerror(-r)));
                bump_free(b);
        }
}

/* Answered to the sender only, whether the ping was broadcast or targeted: a test that
 * broadcasts one ping counts one pong per instance. */
static void on_ping(ipchannel *ch, uint32_t sender, const char *event, GVariant *data, void *userdata) {
        ipchannel_emit(ch, sender, "pong", g_variant_new("(u)", ipchannel_get_peer_id(ch)));
}

static void on_serve_connect(ipchannel *ch, uint32_t sender, const char *event, GVariant *data,
                             void *userdata) {
        server *srv = userdata;
        uint32_t self = ipchannel_get_peer_id(ch);

        fprintf(stderr, "ipchannel-demo: %s as peer %" PRIu32 " of app \"%s\"\n",
                srv->was_connected ? "reconnected" : "connected", self, arg_app);
        srv->was_connected = true;
        /* Only now can other peers reach us: this is when systemd may start what is ordered
         * after this unit. */
        (void) sd_notifyf(false, "READY=1\nSTATUS=peer %" PRIu32, self);
}

static void on_serve_disconnect(ipchannel *ch, uint32_t sender, const char *event, GVariant *data,
                                void *userdata) {
        fprintf(stderr, "ipchannel-demo: lost the bus; reconnecting\n");
        (void) sd_notify(false, "STATUS=bus lost; reconnecting");
}

static void on_serve_error(ipchannel *ch, uint32_t sender, const char *event, GVariant *data,
                           void *userdata) {
        server *srv = userdata;
        int32_t error = 0;
        const char *message = "";

        if (data && g_variant_is_of_type(data, G_VARIANT_TYPE("(is)")))
                g_variant_get(data, "(i&s)", &error, &message);
        fprintf(stderr, "ipchannel-demo: %s\n", message);
        if (!srv->was_connected && (error == -EACCES || error == -EPERM)) {
                fprintf(stderr, "ipchannel-demo: the bus does not let this user own a peer name of "
                                "\"%s\"; on the system bus it must be root or in the group that "
                                "org.ipchannel.conf allows\n", arg_app);
                ipchannel_exit(ch, EXIT_FAILURE);
        }
}

static int on_terminate(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        (void) sd_notify(false, "STOPPING=1");
        return sd_event_exit(sd_event_source_get_event(s), EXIT_SUCCESS);
}

static int serve_setup(ipchannel *ch, server *srv) {
        const char *path = arg_counter_file;

        if (!path) {
                const char *dirs = getenv("STATE_DIRECTORY");

                /* systemd passes StateDirectory= here, several directories separated by ':'. */
                if (dirs && dirs[0] != '\0') {
                        size_t n = strcspn(dirs, ":");

                        state_counter_file = g_strdup_printf("%.*s/counter", (int) n, dirs);
                        path = state_counter_file;
                }
        }
        *srv = (server) { .ch = ch, .counter_file = path };

        ipchannel_on(ch, IPCHANNEL_EVENT_CONNECT, on_serve_connect, srv, NULL);
        ipchannel_on(ch, IPCHANNEL_EVENT_DISCONNECT, on_serve_disconnect, srv, NULL);
        ipchannel_on(ch, IPCHANNEL_EVENT_ERROR, on_serve_error, srv, NULL);
        ipchannel_on(ch, "ping", on_ping, srv, NULL);
        if (path)
                ipchannel_on(ch, "bump", on_bump, srv, NULL);
        else
                fprintf(stderr, "ipchannel-demo: no --counter-file and no STATE_DIRECTORY: ignoring \"bump\"\n");
        return 0;
}

/* The loop exists only once the channel is connecting; the signals were blocked at the start
 * of main(), before the library started its thread, so they reach only this signalfd. */
static int serve_add_signals(ipchannel *ch) {
        sd_event *e = ipchannel_get_event(ch);
        int r;

        if (!e)
                return -ENOTCONN;
        r = sd_event_add_signal(e, NULL, SIGTERM, on_terminate, NULL);
        if (r < 0)
                return r;
        return sd_event_add_signal(e, NULL, SIGINT, on_terminate, NULL);
}

/* ---- command line ---------------------------------------------------------------------- */

static void help(void) {
        printf("Usage: ipchannel-demo [OPTIONS]\n"
               "       ipchannel-demo --serve [OPTIONS]\n"
               "\n"
               "The seed's example in C: start several of these on one bus. Each takes the\n"
               "lowest free peer id (or IPCHANNEL_PEER_ID). When the whole fleet is up, peer 2\n"
               "sends a message to peer 1, peer 3 emits a custom event to peer 1 and peer 4\n"
               "sends and emits to all; when peer 1 has heard from everyone it says bye to all\n"
               "and every peer exits.\n"
               "\n"
               "With --serve it is one long-lived instance of a fleet run by systemd\n"
               "(ipchannel-demo@N.service is peer N). It tells systemd it is ready\n"
               "(sd_notify READY=1, STATUS=peer N) once its channel is connected, and then:\n"
               "  on \"ping\" (broadcast or not)  emits \"pong\" (u: its peer id) to the sender;\n"
               "  on \"bump\"                     inside the cluster-wide lock \"counter\", reads\n"
               "                                the counter file, waits a moment, writes it back\n"
               "                                plus one, and emits \"bumped\" (u: the new value)\n"
               "                                to the sender (\"bump-failed\" (is) on error).\n"
               "It exits cleanly on SIGTERM or SIGINT.\n"
               "\n"
               "Options:\n"
               "  -a, --app NAME           the app name (default: demo)\n"
               "  -n, --fleet N            how many peers to wait for (default: 4)\n"
               "  -t, --timeout SEC        give up after SEC seconds (default: 20; with\n"
               "                           --serve: none); 0 waits for ever\n"
               "      --serve              run as a fleet instance, as described above\n"
               "      --counter-file PATH  the counter of \"bump\" (default:\n"
               "                           $STATE_DIRECTORY/counter when STATE_DIRECTORY is set)\n"
               "      --user               use the user bus\n"
               "      --system             use the system bus\n"
               "  -h, --help               show this help\n"
               "\n"
               "The bus is, without --user or --system, the user bus when DBUS_SESSION_BUS_ADDRESS\n"
               "is set, else the system bus.\n"
               "Exit status: 0 on success (with --serve: on SIGTERM or SIGINT), 1 on error or\n"
               "timeout, 2 on bad usage.\n");
}

static int parse_argv(int argc, char *argv[]) {
        enum { ARG_SERVE = 0x100, ARG_COUNTER_FILE, ARG_USER, ARG_SYSTEM };
        static const struct option options[] = {
                { "app", required_argument, NULL, 'a' },
                { "fleet", required_argument, NULL, 'n' },
                { "timeout", required_argument, NULL, 't' },
                { "serve", no_argument, NULL, ARG_SERVE },
                { "counter-file", required_argument, NULL, ARG_COUNTER_FILE },
                { "user", no_argument, NULL, ARG_USER },
                { "system", no_argument, NULL, ARG_SYSTEM },
                { "help", no_argument, NULL, 'h' },
                {}
        };
        const char *reason;
        int c;

        while ((c = getopt_long(argc, argv, "a:n:t:h", options, NULL)) >= 0)
                switch (c) {
                case 'a':
                        if (ipchannel_check_app_name(optarg, &reason) < 0) {
                                fprintf(stderr, "ipchannel-demo: invalid app name \"%s\": %s\n",
                                        optarg, reason);
                                return -EINVAL;
                        }
                        arg_app = optarg;
                        break;
                case 'n':
                        arg_fleet = (unsigned) strtoul(optarg, NULL, 10);
                        if (arg_fleet < 1 || arg_fleet > 1000) {
                                fprintf(stderr, "ipchannel-demo: --fleet must be 1..1000\n");
                                return -EINVAL;
                        }
                        break;
                case 't':
                        arg_timeout_sec = (unsigned) strtoul(optarg, NULL, 10);
                        arg_timeout_set = true;
                        break;
                case ARG_SERVE:
                        arg_serve = true;
                        break;
                case ARG_COUNTER_FILE:
                        if (optarg[0] == '\0') {
                                fprintf(stderr, "ipchannel-demo: --counter-file needs a path\n");
                                return -EINVAL;
                        }
                        arg_counter_file = optarg;
                        break;
                case ARG_USER:
                        arg_bus = BUS_USER;
                        break;
                case ARG_SYSTEM:
                        arg_bus = BUS_SYSTEM;
                        break;
                case 'h':
                        help();
                        return 0;
                default:
                        return -EINVAL;
                }
        if (optind < argc) {
                fprintf(stderr, "ipchannel-demo: unexpected argument \"%s\"\n", argv[optind]);
                return -EINVAL;
        }
        if (arg_serve && !arg_timeout_set)
                arg_timeout_sec = 0;
        return 1;
}

/* --user/--system: the channel gets a connection to that bus; without either, the library's
 * default applies. Reconnects go to the same address. */
static int channel_choose_bus(ipchannel *ch) {
        sd_bus *bus = NULL;
        int r;

        if (arg_bus == BUS_DEFAULT)
                return 0;
        if (arg_bus == BUS_USER)
                r = sd_bus_open_user_with_description(&bus, "ipchannel-demo");
        else
                r = sd_bus_open_system_with_description(&bus, "ipchannel-demo");
        if (r < 0)
                return r;
        r = ipchannel_set_bus(ch, bus);
        sd_bus_unref(bus);
        return r;
}

static int on_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        demo *d = userdata;

        fprintf(stderr, "peer %" PRIu32 ": timed out\n", ipchannel_get_peer_id(d->ch));
        return sd_event_exit(sd_event_source_get_event(s), EXIT_FAILURE);
}

int main(int argc, char *argv[]) {
        g_autoptr(ipchannel) ch = NULL;
        sd_event_source *timeout = NULL;
        demo d = {};
        server srv = {};
        sigset_t mask;
        int r;

        /* Before any thread exists (the library starts one per channel), so that SIGTERM and
         * SIGINT reach only the loop's signal sources in --serve mode. */
        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);

        r = parse_argv(argc, argv);
        if (r <= 0)
                return r < 0 ? 2 : EXIT_SUCCESS;
        if (arg_serve)
                sigprocmask(SIG_BLOCK, &mask, NULL);

        r = ipchannel_new(&ch, arg_app);
        if (r < 0) {
                fprintf(stderr, "ipchannel-demo: cannot create the channel: %s\n", strerror(-r));
                return EXIT_FAILURE;
        }
        r = channel_choose_bus(ch);
        if (r < 0) {
                fprintf(stderr, "ipchannel-demo: cannot connect to the %s bus: %s\n",
                        arg_bus == BUS_USER ? "user" : "system", strerror(-r));
                return EXIT_FAILURE;
        }
        d.ch = ch;

        if (arg_serve)
                serve_setup(ch, &srv);
        else {
                /* As in the seed: the peer id is not known, and the channel not connected, yet. */
                printf("before connect: peer id %" PRIu32 ", connected %d\n", ipchannel_get_peer_id(ch),
                       ipchannel_is_connected(ch));

                ipchannel_on(ch, IPCHANNEL_EVENT_MESSAGE, on_message, &d, NULL);
                ipchannel_on(ch, IPCHANNEL_EVENT_CONNECT, on_connect, &d, NULL);
                ipchannel_on(ch, IPCHANNEL_EVENT_PEER_JOIN, on_peer_join, &d, NULL);
                ipchannel_on(ch, IPCHANNEL_EVENT_ERROR, on_error, &d, NULL);
                ipchannel_on(ch, "bye", on_bye, &d, NULL);
                ipchannel_on(ch, "locked", on_locked, &d, NULL);
        }

        r = ipchannel_connect(ch);
        if (r < 0) {
                fprintf(stderr, "ipchannel-demo: cannot connect to the bus: %s\n", strerror(-r));
                return EXIT_FAILURE;
        }
        if (arg_serve) {
                r = serve_add_signals(ch);
                if (r < 0) {
                        fprintf(stderr, "ipchannel-demo: cannot watch signals: %s\n", strerror(-r));
                        return EXIT_FAILURE;
                }
        }
        if (arg_timeout_sec > 0)
                sd_event_add_time_relative(ipchannel_get_event(ch), &timeout, CLOCK_MONOTONIC,
                                           (uint64_t) arg_timeout_sec * 1000000, 0, on_timeout, &d);

        r = ipchannel_run(ch);
        sd_event_source_disable_unref(timeout);
        g_free(state_counter_file);
        return r < 0 ? EXIT_FAILURE : r;
}

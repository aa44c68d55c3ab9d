/* SPDX-License-Identifier: MIT */
/* ipchannel-demo: the seed's example in C; a fleet of peers that message each other. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ipchannel.h>

#define TAKE_LOCK(d) ({ ipchannel_lock *_l = (d)->lock; (d)->lock = NULL; _l; })

/* What each peer does, as in the seed: peer 1 listens, 2 sends to 1, 3 emits a custom event
 * to 1, 4 sends and emits to everyone. Each waits until the whole fleet is up before it acts,
 * so nobody misses a message. Then every peer takes the cluster-wide lock "demo" (the seed's
 * synchronize), holds it for a moment without blocking its loop, and tells peer 1 when it is
 * done; when peer 1 has heard from everyone it broadcasts "bye" and every peer exits. */

static const char *arg_app = "demo";
static unsigned arg_fleet = 4;
static unsigned arg_timeout_sec = 20;

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
        sd_event_add_time_relative(ipchannel_get_event(d->ch), &d->hold, CLOCK_MONOTONIC, 100 * 1000, 0,
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

static void help(void) {
        printf("Usage: ipchannel-demo [OPTIONS]\n"
               "\n"
               "The seed's example in C: start several of these on one bus. Each takes the\n"
               "lowest free peer id (or IPCHANNEL_PEER_ID). When the whole fleet is up, peer 2\n"
               "sends a message to peer 1, peer 3 emits a custom event to peer 1 and peer 4\n"
               "sends and emits to all; when peer 1 has heard from everyone it says bye to all\n"
               "and every peer exits.\n"
               "\n"
               "Options:\n"
               "  -a, --app NAME        the app name (default: demo)\n"
               "  -n, --fleet N         how many peers to wait for (default: 4)\n"
               "  -t, --timeout SEC     give up after SEC seconds (default: 20)\n"
               "  -h, --help            show this help\n"
               "\n"
               "The bus is the user bus when DBUS_SESSION_BUS_ADDRESS is set, else the system bus.\n"
               "Exit status: 0 on success, 1 on error or timeout, 2 on bad usage.\n");
}

static int parse_argv(int argc, char *argv[]) {
        static const struct option options[] = {
                { "app", required_argument, NULL, 'a' },
                { "fleet", required_argument, NULL, 'n' },
                { "timeout", required_argument, NULL, 't' },
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
        return 1;
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
        int r;

        r = parse_argv(argc, argv);
        if (r <= 0)
                return r < 0 ? 2 : EXIT_SUCCESS;

        r = ipchannel_new(&ch, arg_app);
        if (r < 0) {
                fprintf(stderr, "ipchannel-demo: cannot create the channel: %s\n", strerror(-r));
                return EXIT_FAILURE;
        }
        d.ch = ch;

        /* As in the seed: the peer id is not known, and the channel not connected, yet. */
        printf("before connect: peer id %" PRIu32 ", connected %d\n", ipchannel_get_peer_id(ch),
               ipchannel_is_connected(ch));

        ipchannel_on(ch, IPCHANNEL_EVENT_MESSAGE, on_message, &d, NULL);
        ipchannel_on(ch, IPCHANNEL_EVENT_CONNECT, on_connect, &d, NULL);
        ipchannel_on(ch, IPCHANNEL_EVENT_PEER_JOIN, on_peer_join, &d, NULL);
        ipchannel_on(ch, IPCHANNEL_EVENT_ERROR, on_error, &d, NULL);
        ipchannel_on(ch, "bye", on_bye, &d, NULL);
        ipchannel_on(ch, "locked", on_locked, &d, NULL);

        r = ipchannel_connect(ch);
        if (r < 0) {
                fprintf(stderr, "ipchannel-demo: cannot connect to the bus: %s\n", strerror(-r));
                return EXIT_FAILURE;
        }
        if (arg_timeout_sec > 0)
                sd_event_add_time_relative(ipchannel_get_event(ch), &timeout, CLOCK_MONOTONIC,
                                           (uint64_t) arg_timeout_sec * 1000000, 0, on_timeout, &d);

        r = ipchannel_run(ch);
        sd_event_source_disable_unref(timeout);
        return r < 0 ? EXIT_FAILURE : r;
}

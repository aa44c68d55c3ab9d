/* SPDX-License-Identifier: MIT */
/* fleet-client: a test peer that pings and bumps a running ipchannel-demo fleet, or tries to own a bus name. */
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ipchannel.h>

/*
 * Commands:
 *   ping N            broadcast "ping" and wait for a "pong" from N distinct peers; a pong
 *                     carries the answering peer's own id, which must match the sender id
 *                     the bus gave it. Prints "pong ID" per pong, then "pongs N".
 *   bump TIMES ID...  emit "bump" TIMES times to each peer ID and wait for every answer.
 *                     Prints "bumped COUNT min MIN max MAX contiguous yes|no" and
 *                     "failed K": inside the lock every bump writes the value before it plus
 *                     one, so the values of one run are distinct and contiguous.
 *   own NAME          ask the bus for NAME (without queueing) on a plain sd-bus connection;
 *                     prints "owned NAME", "exists NAME" or "error ERROR-NAME: MESSAGE".
 * Exit status: 0 when the command got what it waited for (own: the name), 1 otherwise, 2 on
 * bad usage.
 *
 * The peer id is explicit (--id, default 100) so the client never takes an id that a fleet
 * instance being restarted is about to claim again.
 */

static const char *arg_app = "demo";
static uint32_t arg_id = 100;
static unsigned arg_timeout_sec = 30;

typedef struct {
        ipchannel *ch;
        /* ping */
        unsigned n_expected;
        unsigned n_pongs;
        GHashTable *ponged;             /* peer id → 1 */
        bool pong_mismatch;
        /* bump */
        unsigned times;
        GArray *targets;                /* uint32_t */
        GArray *values;                 /* uint32_t, the answers */
        unsigned n_failed;
        unsigned n_wanted;
        sd_event_source *linger;
} client;

static void on_error(ipchannel *ch, uint32_t sender, const char *event, GVariant *data, void *userdata) {
        int32_t error = 0;
        const char *message = "";

        if (data && g_variant_is_of_type(data, G_VARIANT_TYPE("(is)")))
                g_variant_get(data, "(i&s)", &error, &message);
        fprintf(stderr, "fleet-client: error: %s (%s)\n", message, strerror(-error));
        /* Before "connect" an error means we will never be a peer (e.g. AccessDenied). */
        if (!ipchannel_is_connected(ch))
                ipchannel_exit(ch, EXIT_FAILURE);
}

/* After the last expected pong, wait a little longer: a broadcast must reach each instance
 * once, so a second pong from the same peer is a failure too. */
static int on_linger_done(sd_event_source *s, uint64_t usec, void *userdata) {
        client *c = userdata;
        bool ok = c->n_pongs == c->n_expected && g_hash_table_size(c->ponged) == c->n_expected &&
                  !c->pong_mismatch;

        printf("pongs %u\n", c->n_pongs);
        fflush(stdout);
        return ipchannel_exit(c->ch, ok ? EXIT_SUCCESS : EXIT_FAILURE);
}

static void on_pong(ipchannel *ch, uint32_t sender, const char *event, GVariant *data, void *userdata) {
        client *c = userdata;
        uint32_t self = 0;

        if (data && g_variant_is_of_type(data, G_VARIANT_TYPE("(u)")))
                g_variant_get(data, "(u)", &self);
        printf("pong %" PRIu32 "\n", sender);
        fflush(stdout);
        if (self != sender) {
                fprintf(stderr, "fleet-client: peer %" PRIu32 " says it is peer %" PRIu32 "\n", sender, self);
                c->pong_mismatch = true;
        }
        c->n_pongs++;
        g_hash_table_add(c->ponged, GUINT_TO_POINTER(sender));
        if (g_hash_table_size(c->ponged) == c->n_expected && !c->linger)
                sd_event_add_time_relative(ipchannel_get_event(ch), &c->linger, CLOCK_MONOTONIC,
                                           300 * 1000, 1000, on_linger_done, c);
}

static int compare_u32(const void *a, const void *b) {
        uint32_t x = *(const uint32_t *) a, y = *(const uint32_t *) b;

        return x < y ? -1 : x > y;
}

static void bump_maybe_done(client *c) {
        uint32_t *v = (uint32_t *) (void *) c->values->data;
        unsigned n = c->values->len;
        bool contiguous = true;

        if (n + c->n_failed < c->n_wanted)
                return;
        qsort(v, n, sizeof(uint32_t), compare_u32);
        for (unsigned i = 1; i < n; i++)
                if (v[i] != v[i - 1] + 1)
                        contiguous = false;
        printf("bumped %u min %" PRIu32 " max %" PRIu32 " contiguous %s\n", n, n ? v[0] : 0,
               n ? v[n - 1] : 0, contiguous ? "yes" : "no");
        printf("failed %u\n", c->n_failed);
        fflush(stdout);
        ipchannel_exit(c->ch, contiguous && c->n_failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE);
}

static void on_bumped(ipchannel *ch, uint32_t sender, const char *event, GVariant *data, void *userdata) {
        client *c = userdata;
        uint32_t value;

        if (!data || !g_variant_is_of_type(data, G_VARIANT_TYPE("(u)"))) {
                fprintf(stderr, "fleet-client: \"bumped\" from peer %" PRIu32 " without (u)\n", sender);
                c->n_failed++;
        } else {
                g_variant_get(data, "(u)", &value);
                g_array_append_val(c->values, value);
        }
        bump_maybe_done(c);
}

static void on_bump_failed(ipchannel *ch, uint32_t sender, const char *event, GVariant *data,
                           void *userdata) {
        client *c = userdata;
        g_autofree char *text = data ? g_variant_print(data, FALSE) : g_strdup("(nothing)");

        fprintf(stderr, "fleet-client: bump failed at peer %" PRIu32 ": %s\n", sender, text);
        c->n_failed++;
        bump_maybe_done(c);
}

static void on_connect(ipchannel *ch, uint32_t sender, const char *event, GVariant *data, void *userdata) {
        client *c = userdata;
        int r;

        if (c->n_expected > 0) {
                r = ipchannel_emit(ch, IPCHANNEL_ALL, "ping", NULL);
                if (r < 0) {
                        fprintf(stderr, "fleet-client: cannot broadcast: %s\n", strerror(-r));
                        ipchannel_exit(ch, EXIT_FAILURE);
                }
                return;
        }
        /* Round-robin over the targets, so every instance has requests queued at once and the
         * sections of different processes interleave. */
        for (unsigned t = 0; t < c->times; t++)
                for (unsigned i = 0; i < c->targets->len; i++) {
                        uint32_t to = g_array_index(c->targets, uint32_t, i);

                        r = ipchannel_emit(ch, to, "bump", NULL);
                        if (r < 0) {
                                fprintf(stderr, "fleet-client: cannot bump peer %" PRIu32 ": %s\n", to,
                                        strerror(-r));
                                ipchannel_exit(ch, EXIT_FAILURE);
                                return;
                        }
                }
}

static int on_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        client *c = userdata;

        fprintf(stderr, "fleet-client: timed out (pongs %u, bumped %u, failed %u)\n", c->n_pongs,
                c->values->len, c->n_failed);
        return sd_event_exit(sd_event_source_get_event(s), EXIT_FAILURE);
}

/* The same bus the library picks: the user bus when DBUS_SESSION_BUS_ADDRESS is set, else the
 * system bus (DBUS_SYSTEM_BUS_ADDRESS, or the standard socket). */
static int own_name(const char *name) {
        sd_bus_error error = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        sd_bus *bus = NULL;
        uint32_t ret = 0;
        int r;

        if (getenv("DBUS_SESSION_BUS_ADDRESS"))
                r = sd_bus_open_user(&bus);
        else
                r = sd_bus_open_system(&bus);
        if (r < 0) {
                fprintf(stderr, "fleet-client: cannot connect to the bus: %s\n", strerror(-r));
                return EXIT_FAILURE;
        }
        r = sd_bus_call_method(bus, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                               "RequestName", &error, &reply, "su", name, 4u /* DO_NOT_QUEUE */);
        if (r < 0)
                printf("error %s: %s\n", error.name ?: "?", error.message ?: strerror(-r));
        else if (sd_bus_message_read(reply, "u", &ret) >= 0 && ret == 1)
                printf("owned %s\n", name);
        else
                printf("exists %s\n", name);
        fflush(stdout);
        sd_bus_error_free(&error);
        sd_bus_message_unref(reply);
        sd_bus_flush_close_unref(bus);
        return r >= 0 && ret == 1 ? EXIT_SUCCESS : EXIT_FAILURE;
}

static void help(void) {
        printf("Usage: fleet-client [--app NAME] [--id N] [--timeout SEC] ping N\n"
               "       fleet-client [--app NAME] [--id N] [--timeout SEC] bump TIMES ID...\n"
               "       fleet-client own BUS-NAME\n");
}

static int parse_u32(const char *s, uint32_t *ret) {
        char *end;
        unsigned long v;

        errno = 0;
        v = strtoul(s, &end, 10);
        if (errno != 0 || end == s || *end != '\0' || v == 0 || v > UINT32_MAX - 1)
                return -EINVAL;
        *ret = (uint32_t) v;
        return 0;
}

int main(int argc, char *argv[]) {
        static const struct option options[] = {
                { "app", required_argument, NULL, 'a' },
                { "id", required_argument, NULL, 'i' },
                { "timeout", required_argument, NULL, 't' },
                { "help", no_argument, NULL, 'h' },
                {}
        };
        g_autoptr(ipchannel) ch = NULL;
        sd_event_source *timeout = NULL;
        client c = {};
        const char *cmd;
        uint32_t v;
        int opt, r;

        while ((opt = getopt_long(argc, argv, "+a:i:t:h", options, NULL)) >= 0)
                switch (opt) {
                case 'a':
                        arg_app = optarg;
                        break;
                case 'i':
                        if (parse_u32(optarg, &arg_id) < 0)
                                return 2;
                        break;
                case 't':
                        arg_timeout_sec = (unsigned) strtoul(optarg, NULL, 10);
                        break;
                case 'h':
                        help();
                        return 0;
                default:
                        return 2;
                }
        if (optind >= argc) {
                help();
                return 2;
        }
        cmd = argv[optind++];

        if (strcmp(cmd, "own") == 0) {
                if (optind + 1 != argc)
                        return 2;
                return own_name(argv[optind]);
        }

        c.ponged = g_hash_table_new(NULL, NULL);
        c.targets = g_array_new(FALSE, FALSE, sizeof(uint32_t));
        c.values = g_array_new(FALSE, FALSE, sizeof(uint32_t));
        if (strcmp(cmd, "ping") == 0) {
                if (optind + 1 != argc || parse_u32(argv[optind], &v) < 0)
                        return 2;
                c.n_expected = v;
        } else if (strcmp(cmd, "bump") == 0) {
                if (optind + 2 > argc || parse_u32(argv[optind++], &v) < 0)
                        return 2;
                c.times = v;
                for (; optind < argc; optind++) {
                        if (parse_u32(argv[optind], &v) < 0)
                                return 2;
                        g_array_append_val(c.targets, v);
                }
                c.n_wanted = c.times * c.targets->len;
        } else {
                help();
                return 2;
        }

        r = ipchannel_new(&ch, arg_app);
        if (r >= 0)
                r = ipchannel_set_peer_id(ch, arg_id);
        if (r < 0) {
                fprintf(stderr, "fleet-client: cannot create the channel: %s\n", strerror(-r));
                return EXIT_FAILURE;
        }
        c.ch = ch;
        ipchannel_on(ch, IPCHANNEL_EVENT_CONNECT, on_connect, &c, NULL);
        ipchannel_on(ch, IPCHANNEL_EVENT_ERROR, on_error, &c, NULL);
        ipchannel_on(ch, "pong", on_pong, &c, NULL);
        ipchannel_on(ch, "bumped", on_bumped, &c, NULL);
        ipchannel_on(ch, "bump-failed", on_bump_failed, &c, NULL);

        r = ipchannel_connect(ch);
        if (r < 0) {
                fprintf(stderr, "fleet-client: cannot connect: %s\n", strerror(-r));
                return EXIT_FAILURE;
        }
        sd_event_add_time_relative(ipchannel_get_event(ch), &timeout, CLOCK_MONOTONIC,
                                   (uint64_t) arg_timeout_sec * 1000000, 0, on_timeout, &c);
        r = ipchannel_run(ch);

        sd_event_source_disable_unref(timeout);
        sd_event_source_disable_unref(c.linger);
        g_hash_table_unref(c.ponged);
        g_array_unref(c.targets);
        g_array_unref(c.values);
        return r < 0 ? EXIT_FAILURE : r;
}

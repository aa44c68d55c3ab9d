/* SPDX-License-Identifier: MIT */
/* test-peer: a peer driven line by line on stdin that reports what it sees on stdout. */
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <pthread.h>
#include <signal.h>

#include <glib-unix.h>
#include <ipchannel.h>

/*
 * Commands (stdin, one per line):
 *   connect | disconnect | exit CODE
 *   send TO TEXT            TO: a peer id or "all"; TEXT: GVariant text, or "null"
 *   emit TO EVENT TEXT      (with --floating, send and emit hand over a floating copy of the
 *                           value built with GLib's constructors, as a program that builds
 *                           its payload in the call would)
 *   flood TO EVENT N        N sends of (u seq) with seq 0..N-1
 *   mixed TO N              N messages alternating targeted/broadcast, event "seq", (u seq)
 *   on EVENT | once EVENT | off EVENT
 *   count                   prints "count N": Broadcast signals this connection received
 *   members                 prints "members M=N ...": messages of each Peer1 member received
 *   set-limit NAME N        ipchannel_set_NAME(N) for memfd-threshold, memfd-max, values-max,
 *                           event-name-max; prints "result set-limit NAME R"
 *   big TO EVENT SIZE SEED  sends an "ay" of SIZE bytes, byte i = (i * 131 + SEED) mod 256;
 *                           a receiver prints such a payload (over 4096 bytes) as
 *                           "recv SENDER EVENT big SIZE SEED ok|bad" instead of its text
 *   big-order TO N SIZE     N sends of event "seq": every fourth an "ay" of SIZE bytes with
 *                           SEED seq, the others (u seq); eight to TO, eight to "all", ...
 *   state                   prints "state ID CONNECTED"
 *   bus-is-app              prints "bus-is-app 1" if the channel is on the connection given
 *                           with --no-fds, else "bus-is-app 0"
 *   sleep MS                blocks the loop for MS milliseconds, in the middle of its turn
 *   has ID                  prints "has ID R"
 *   acquire LOCK USEC       ipchannel_lock_acquire() from this (loop) thread; prints
 *                           "result acquire R TOKEN"
 *   acquire-thread LOCK USEC  the same from a new thread, while the loop keeps running
 *   release                 releases the lock last acquired; prints "result release R"
 * Output lines:
 *   ready | connect ID | disconnect | error ERRNO MESSAGE | state ID CONNECTED
 *   recv SENDER EVENT TEXT  (TEXT: GVariant text, or "null")
 *   result COMMAND R        (return value of the library call)
 *   peer-join ID | peer-leave ID | count N
 */

typedef enum { LOOP_DEFAULT, LOOP_SD_EVENT, LOOP_GLIB } loop_kind;

static const char *arg_app = "test";
static uint32_t arg_id;
static loop_kind arg_loop = LOOP_DEFAULT;
static size_t arg_queue_max;
static int64_t arg_flush_wait = -1;
static bool arg_connect;
static int64_t arg_memfd_threshold = -1;
static uint64_t arg_memfd_max;
static bool arg_no_fds;         /* the first connection cannot pass unix fds */
static sd_bus *app_bus;         /* that connection: the app's own, given to the channel */
static bool arg_floating;

typedef struct slot_entry {
        struct slot_entry *next;
        char *event;
        ipchannel_slot *slot;
} slot_entry;

static ipchannel *ch;
static slot_entry *slots;
static uint64_t n_broadcast_signals;
static GString *input;
static sd_bus_slot *count_filter;

static void out(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
static void out(const char *fmt, ...) {
        va_list ap;

        flockfile(stdout);      /* whole lines, also from the acquire thread */
        va_start(ap, fmt);
        vprintf(fmt, ap);
        va_end(ap);
        putchar('\n');
        fflush(stdout);
        funlockfile(stdout);
}

static const char *const peer_members[] = { "Deliver", "DeliverNull", "DeliverBatch", "DeliverMemfd",
                                            "Broadcast", "BroadcastNull", "BroadcastBatch",
                                            "BroadcastMemfd" };
static uint64_t n_members[G_N_ELEMENTS(peer_members)];

static int on_bus_message(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        if (sd_bus_message_is_signal(m, "org.ipchannel.Peer1", NULL))
                n_broadcast_signals++;
        if (g_strcmp0(sd_bus_message_get_interface(m), "org.ipchannel.Peer1") == 0)
                for (size_t i = 0; i < G_N_ELEMENTS(peer_members); i++)
                        if (g_strcmp0(sd_bus_message_get_member(m), peer_members[i]) == 0)
                                n_members[i]++;
        return 0;
}

#define BIG_MIN 4096

static GVariant *big_new(size_t size, unsigned seed) {
        uint8_t *p = g_malloc(size);

        for (size_t i = 0; i < size; i++)
                p[i] = (uint8_t) (i * 131 + seed);
        return g_variant_new_from_data(G_VARIANT_TYPE_BYTESTRING, p, size, TRUE, g_free, p);
}

/* "big SIZE SEED ok|bad" for a payload big_new() made, else NULL. */
static char *big_describe(GVariant *data) {
        const uint8_t *p;
        gsize n = 0;
        bool ok = true;

        if (!data || !g_variant_is_of_type(data, G_VARIANT_TYPE_BYTESTRING) ||
            g_variant_get_size(data) <= BIG_MIN)
                return NULL;
        p = g_variant_get_fixed_array(data, &n, 1);
        for (size_t i = 0; i < n && ok; i++)
                ok = p[i] == (uint8_t) (i * 131 + p[0]);
        return g_strdup_printf("big %zu %u %s", (size_t) n, p[0], ok ? "ok" : "bad");
}

static void on_event(ipchannel *c, uint32_t sender, const char *event, GVariant *data,
                     void *userdata) {
        g_autofree char *big = big_describe(data);
        g_autofree char *text = big ? g_steal_pointer(&big) : data ? g_variant_print(data, TRUE) : g_strdup("null");

        if (strcmp(event, IPCHANNEL_EVENT_CONNECT) == 0) {
                /* Count from here on what reaches this connection. */
                count_filter = sd_bus_slot_unref(count_filter);
                sd_bus_add_filter(ipchannel_get_bus(c), &count_filter, on_bus_message, NULL);
                out("connect %" PRIu32, ipchannel_get_peer_id(c));
        } else if (strcmp(event, IPCHANNEL_EVENT_DISCONNECT) == 0)
                out("disconnect");
        else if (strcmp(event, IPCHANNEL_EVENT_ERROR) == 0) {
                int32_t e = 0;
                const char *msg = "";

                g_variant_get(data, "(i&s)", &e, &msg);
                out("error %" PRIi32 " %s", e, msg);
        } else if (strcmp(event, IPCHANNEL_EVENT_PEER_JOIN) == 0 ||
                   strcmp(event, IPCHANNEL_EVENT_PEER_LEAVE) == 0)
                out("%s %" PRIu32, event, sender);
        else
                out("recv %" PRIu32 " %s %s", sender, event, text);
}

static int parse_to(const char *s, uint32_t *ret) {
        if (strcmp(s, "all") == 0) {
                *ret = IPCHANNEL_ALL;
                return 0;
        }
        *ret = (uint32_t) strtoul(s, NULL, 10);
        return 0;
}

static GVariant *parse_data(const char *text) {
        g_autoptr(GError) error = NULL;
        GVariant *v;

        if (strcmp(text, "null") == 0)
                return NULL;
        v = g_variant_parse(NULL, text, NULL, NULL, &error);
        if (!v) {
                out("parse-error %s", error->message);
                return NULL;
        }
        return v;
}

/* A floating copy of v built by GLib's constructors: a tree of GVariants. */
static GVariant *floating_copy(GVariant *v) {
        GVariantBuilder b;

        if (g_variant_is_of_type(v, G_VARIANT_TYPE_VARIANT)) {
                g_autoptr(GVariant) inner = g_variant_get_variant(v);
                return g_variant_new_variant(floating_copy(inner));
        }
        if (!g_variant_is_container(v)) {
                g_autoptr(GBytes) bytes = g_variant_get_data_as_bytes(v);
                return g_variant_new_from_bytes(g_variant_get_type(v), bytes, true);
        }
        if (g_variant_is_of_type(v, G_VARIANT_TYPE_MAYBE)) {
                g_autoptr(GVariant) child = g_variant_get_maybe(v);
                return g_variant_new_maybe(g_variant_type_element(g_variant_get_type(v)),
                                           child ? floating_copy(child) : NULL);
        }
        g_variant_builder_init(&b, g_variant_get_type(v));
        for (size_t i = 0; i < g_variant_n_children(v); i++) {
                g_autoptr(GVariant) child = g_variant_get_child_value(v, i);
                g_variant_builder_add_value(&b, floating_copy(child));
        }
        return g_variant_builder_end(&b);
}

/* What send and emit hand over: data itself (a full reference, kept by the caller), or with
 * --floating a floating copy, which the library takes. */
static GVariant *handed_over(GVariant *data) {
        return arg_floating && data ? floating_copy(data) : data;
}

static void add_listener(const char *event, bool once) {
        slot_entry *e = g_new0(slot_entry, 1);
        int r;

        r = (once ? ipchannel_once : ipchannel_on)(ch, event, on_event, NULL, &e->slot);
        out("result %s %d", once ? "once" : "on", r);
        if (r < 0) {
                g_free(e);
                return;
        }
        e->event = g_strdup(event);
        e->next = slots;
        slots = e;
}

static void remove_listener(const char *event) {
        for (slot_entry **p = &slots; *p; p = &(*p)->next)
                if (strcmp((*p)->event, event) == 0) {
                        slot_entry *e = *p;
                        *p = e->next;
                        ipchannel_slot_unref(e->slot);
                        g_free(e->event);
                        g_free(e);
                        out("result off 0");
                        return;
                }
        out("result off %d", -ENOENT);
}

static ipchannel_lock *held;

typedef struct {
        char *lock;
        uint64_t usec;
} acquire_args;

static void *acquire_thread(void *userdata) {
        acquire_args *a = userdata;
        ipchannel_lock *l = NULL;
        int r = ipchannel_lock_acquire(ch, a->lock, a->usec, &l);

        /* Kept before it is reported: the test's next command may release it. */
        if (r >= 0)
                held = l;
        out("result acquire-thread %d %" PRIu64, r, r >= 0 ? ipchannel_lock_get_token(l) : 0);
        g_free(a->lock);
        g_free(a);
        return NULL;
}

static void run_command(char *line) {
        g_auto(GStrv) w = g_strsplit(line, " ", 4);
        size_t n = g_strv_length(w);
        uint32_t to;
        int r;

        if (n == 0)
                return;
        if (strcmp(w[0], "connect") == 0)
                out("result connect %d", ipchannel_connect(ch));
        else if (strcmp(w[0], "disconnect") == 0)
                out("result disconnect %d", ipchannel_disconnect(ch));
        else if (strcmp(w[0], "exit") == 0)
                ipchannel_exit(ch, n > 1 ? atoi(w[1]) : 0);
        else if (strcmp(w[0], "sleep") == 0 && n >= 2)
                g_usleep((gulong) strtoul(w[1], NULL, 10) * 1000);
        else if (strcmp(w[0], "state") == 0)
                out("state %" PRIu32 " %d", ipchannel_get_peer_id(ch), ipchannel_is_connected(ch));
        else if (strcmp(w[0], "bus-is-app") == 0)
                out("bus-is-app %d", app_bus && ipchannel_get_bus(ch) == app_bus);
        else if (strcmp(w[0], "has") == 0 && n >= 2)
                out("has %s %d", w[1], ipchannel_has_peer(ch, (uint32_t) atoi(w[1])));
        else if (strcmp(w[0], "acquire") == 0 && n >= 3) {
                ipchannel_lock *l = NULL;
                r = ipchannel_lock_acquire(ch, w[1], strtoull(w[2], NULL, 10), &l);
                out("result acquire %d %" PRIu64, r, r >= 0 ? ipchannel_lock_get_token(l) : 0);
                if (r >= 0)
                        held = l;
        } else if (strcmp(w[0], "acquire-thread") == 0 && n >= 3) {
                acquire_args *a = g_new(acquire_args, 1);
                pthread_t t;

                a->lock = g_strdup(w[1]);
                a->usec = strtoull(w[2], NULL, 10);
                pthread_create(&t, NULL, acquire_thread, a);
                pthread_detach(t);
        } else if (strcmp(w[0], "release") == 0) {
                r = held ? ipchannel_lock_release(held, 0) : -ENOLCK;
                held = NULL;
                out("result release %d", r);
        } else if (strcmp(w[0], "count") == 0)
                out("count %" PRIu64, n_broadcast_signals);
        else if (strcmp(w[0], "members") == 0) {
                g_autoptr(GString) text = g_string_new("members");
                for (size_t i = 0; i < G_N_ELEMENTS(peer_members); i++)
                        g_string_append_printf(text, " %s=%" PRIu64, peer_members[i], n_members[i]);
                out("%s", text->str);
        } else if (strcmp(w[0], "set-limit") == 0 && n >= 3) {
                uint64_t v = strtoull(w[2], NULL, 10);
                r = strcmp(w[1], "memfd-threshold") == 0 ? ipchannel_set_memfd_threshold(ch, (size_t) v)
                    : strcmp(w[1], "memfd-max") == 0     ? ipchannel_set_memfd_max(ch, v)
                    : strcmp(w[1], "values-max") == 0    ? ipchannel_set_values_max(ch, (size_t) v)
                    : strcmp(w[1], "event-name-max") == 0 ? ipchannel_set_event_name_max(ch, (size_t) v)
                                                          : -ENOENT;
                out("result set-limit %s %d", w[1], r);
        } else if (strcmp(w[0], "big") == 0 && n >= 4) {
                g_auto(GStrv) a = g_strsplit(w[3], " ", 2);
                parse_to(w[1], &to);
                r = ipchannel_emit(ch, to, w[2],
                                   big_new(strtoull(a[0], NULL, 10), a[1] ? (unsigned) atoi(a[1]) : 0));
                out("result big %d", r);
        } else if (strcmp(w[0], "big-order") == 0 && n >= 4) {
                unsigned count = (unsigned) atoi(w[2]);
                size_t size = strtoull(w[3], NULL, 10);
                parse_to(w[1], &to);
                r = 0;
                for (unsigned i = 0; i < count && r >= 0; i++)
                        r = ipchannel_emit(ch, (i / 8) % 2 ? IPCHANNEL_ALL : to, "seq",
                                           i % 4 == 3 ? big_new(size, i) : g_variant_new("(u)", i));
                out("result big-order %d", r);
        } else if (strcmp(w[0], "on") == 0 && n >= 2)
                add_listener(w[1], false);
        else if (strcmp(w[0], "once") == 0 && n >= 2)
                add_listener(w[1], true);
        else if (strcmp(w[0], "off") == 0 && n >= 2)
                remove_listener(w[1]);
        else if (strcmp(w[0], "send") == 0 && n >= 3) {
                g_autofree char *rest = g_strjoinv(" ", w + 2);
                /* g_variant_parse() gives a full reference, which the library does not take. */
                g_autoptr(GVariant) data = parse_data(rest);
                parse_to(w[1], &to);
                r = ipchannel_send(ch, to, handed_over(data));
                out("result send %d", r);
        } else if (strcmp(w[0], "emit") == 0 && n >= 4) {
                g_autoptr(GVariant) data = parse_data(w[3]);
                parse_to(w[1], &to);
                r = ipchannel_emit(ch, to, w[2], handed_over(data));
                out("result emit %d", r);
        } else if (strcmp(w[0], "flood") == 0 && n >= 4) {
                unsigned count = (unsigned) atoi(w[3]);
                parse_to(w[1], &to);
                r = 0;
                for (unsigned i = 0; i < count && r >= 0; i++)
                        r = ipchannel_emit(ch, to, w[2], g_variant_new("(u)", i));
                out("result flood %d", r);
        } else if (strcmp(w[0], "mixed") == 0 && n >= 3) {
                unsigned count = (unsigned) atoi(w[2]);
                parse_to(w[1], &to);
                r = 0;
                for (unsigned i = 0; i < count && r >= 0; i++)
                        r = ipchannel_emit(ch, i % 2 ? IPCHANNEL_ALL : to, "seq", g_variant_new("(u)", i));
                out("result mixed %d", r);
        } else
                out("unknown-command %s", line);
}

static void handle_input(const char *buf, size_t n) {
        g_string_append_len(input, buf, (gssize) n);
        for (;;) {
                char *nl = memchr(input->str, '\n', input->len);
                if (!nl)
                        break;
                *nl = '\0';
                g_autofree char *line = g_strdup(input->str);
                g_string_erase(input, 0, (gssize) (nl - input->str + 1));
                run_command(line);
        }
}

static bool read_stdin(void) {
        char buf[4096];
        ssize_t n = read(STDIN_FILENO, buf, sizeof(buf));

        if (n <= 0)
                return false;
        handle_input(buf, (size_t) n);
        return true;
}

static int on_stdin_event(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        if (!read_stdin())
                ipchannel_exit(ch, 0);
        return 0;
}

static gboolean on_stdin_glib(gint fd, GIOCondition condition, gpointer userdata) {
        if (!read_stdin()) {
                ipchannel_exit(ch, 0);
                return G_SOURCE_REMOVE;
        }
        return G_SOURCE_CONTINUE;
}

static int parse_argv(int argc, char *argv[]) {
        static const struct option options[] = {
                { "app", required_argument, NULL, 'a' },
                { "id", required_argument, NULL, 'i' },
                { "loop", required_argument, NULL, 'l' },
                { "listen", required_argument, NULL, 'L' },
                { "queue-max", required_argument, NULL, 'q' },
                { "flush-wait", required_argument, NULL, 'f' },
                { "connect", no_argument, NULL, 'c' },
                { "memfd-threshold", required_argument, NULL, 'T' },
                { "memfd-max", required_argument, NULL, 'M' },
                { "no-fds", no_argument, NULL, 'N' },
                { "floating", no_argument, NULL, 'F' },

                {}
        };
        int c;

        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0)
                switch (c) {
                case 'a':
                        arg_app = optarg;
                        break;
                case 'i':
                        arg_id = (uint32_t) strtoul(optarg, NULL, 10);
                        break;
                case 'l':
                        arg_loop = strcmp(optarg, "glib") == 0       ? LOOP_GLIB
                                   : strcmp(optarg, "sd-event") == 0 ? LOOP_SD_EVENT
                                                                     : LOOP_DEFAULT;
                        break;
                case 'q':
                        arg_queue_max = strtoul(optarg, NULL, 10);
                        break;
                case 'f':
                        /* "forever": UINT64_MAX. */
                        arg_flush_wait = strcmp(optarg, "forever") == 0 ? INT64_MIN : strtoll(optarg, NULL, 10);
                        break;
                case 'c':
                        arg_connect = true;
                        break;
                case 'T':
                        arg_memfd_threshold = strtoll(optarg, NULL, 10);
                        break;
                case 'M':
                        arg_memfd_max = strtoull(optarg, NULL, 10);
                        break;
                case 'N':
                        arg_no_fds = true;
                        break;
                case 'F':
                        arg_floating = true;
                        break;

                case 'L':
                        break;  /* handled once the channel exists */
                default:
                        return -EINVAL;
                }
        return 0;
}

int main(int argc, char *argv[]) {
        g_autoptr(GMainContext) ctx = NULL;
        sd_event *e = NULL;
        sd_event_source *stdin_source = NULL;
        int r;

        /* The test that started us may die; we must not outlive it. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);

        if (parse_argv(argc, argv) < 0)
                return 2;
        input = g_string_new(NULL);

        r = ipchannel_new(&ch, arg_app);
        if (r < 0) {
                out("result new %d", r);
                return 1;
        }
        if (arg_id)
                out("result set-peer-id %d", ipchannel_set_peer_id(ch, arg_id));
        if (arg_queue_max)
                ipchannel_set_queue_max(ch, arg_queue_max);
        if (arg_flush_wait >= 0 || arg_flush_wait == INT64_MIN)
                ipchannel_set_flush_wait(ch, arg_flush_wait == INT64_MIN ? UINT64_MAX : (uint64_t) arg_flush_wait);
        if (arg_memfd_threshold >= 0)
                ipchannel_set_memfd_threshold(ch, (size_t) arg_memfd_threshold);
        if (arg_memfd_max)
                ipchannel_set_memfd_max(ch, arg_memfd_max);
        if (arg_no_fds) {
                sd_bus *bus = NULL;

                if (sd_bus_new(&bus) < 0 || sd_bus_set_address(bus, getenv("DBUS_SESSION_BUS_ADDRESS")) < 0 ||
                    sd_bus_set_bus_client(bus, 1) < 0 || sd_bus_negotiate_fds(bus, 0) < 0 ||
                    sd_bus_start(bus) < 0 || ipchannel_set_bus(ch, bus) < 0)
                        out("result no-fds -1");
                app_bus = bus;  /* kept open by the app, as an app does */
        }

        ipchannel_on(ch, IPCHANNEL_EVENT_CONNECT, on_event, NULL, NULL);
        ipchannel_on(ch, IPCHANNEL_EVENT_DISCONNECT, on_event, NULL, NULL);
        ipchannel_on(ch, IPCHANNEL_EVENT_ERROR, on_event, NULL, NULL);
        for (int i = 1; i < argc; i++)
                if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc)
                        ipchannel_on(ch, argv[++i], on_event, NULL, NULL);

        switch (arg_loop) {
        case LOOP_SD_EVENT:
                sd_event_new(&e);
                ipchannel_attach_event(ch, e, 0);
                sd_event_add_io(e, &stdin_source, STDIN_FILENO, EPOLLIN, on_stdin_event, NULL);
                break;
        case LOOP_GLIB:
                /* A context of our own, not the default one, to show nothing relies on it. */
                ctx = g_main_context_new();
                ipchannel_attach_glib(ch, ctx);
                GSource *s = g_unix_fd_source_new(STDIN_FILENO, G_IO_IN | G_IO_HUP);
                g_source_set_callback(s, G_SOURCE_FUNC(on_stdin_glib), NULL, NULL);
                g_source_attach(s, ctx);
                g_source_unref(s);
                break;
        case LOOP_DEFAULT:
                sd_event_default(&e);
                sd_event_add_io(e, &stdin_source, STDIN_FILENO, EPOLLIN, on_stdin_event, NULL);
                break;
        }

        out("state %" PRIu32 " %d", ipchannel_get_peer_id(ch), ipchannel_is_connected(ch));
        out("ready");
        if (arg_connect)
                out("result connect %d", ipchannel_connect(ch));

        r = ipchannel_run(ch);

        sd_event_source_disable_unref(stdin_source);
        count_filter = sd_bus_slot_unref(count_filter);
        while (slots) {
                slot_entry *s = slots;
                slots = s->next;
                ipchannel_slot_unref(s->slot);
                g_free(s->event);
                g_free(s);
        }
        ch = ipchannel_unref(ch);
        sd_bus_flush_close_unref(app_bus);
        sd_event_unref(e);
        g_string_free(input, TRUE);
        return r < 0 ? 1 : r;
}

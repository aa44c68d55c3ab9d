/* SPDX-License-Identifier: MIT */
/*
 * test-fault SCENARIO LOOP: sends at their edges. In the first four scenarios the bus
 * connection refuses one send with -ENOMEM at a chosen moment, and the library must report
 * what it could not send on "error", once, keep what it still can, and go on; the others
 * check what goes out, with no fault. This program defines sd_bus_send() itself: the library's calls land
 * here first (an executable's symbols come before a shared library's), are noted (the member
 * of each Deliver…), and pass on to libsystemd's unless a fault is armed for the calling
 * thread. Peers 1 (the sender), 2 and 3
 * are channels of this one process on one loop (LOOP: sd-event or glib), on the bus of
 * $DBUS_SESSION_BUS_ADDRESS. Exit status 0 when the scenario saw what it should.
 *
 *   ahead       From a handler, peer 1 sends peer 2 "a" (it goes at once), "b" and "c"
 *               (batched), then peer 3 "d", which sends the batch first; that send fails.
 *               The send of "d" succeeds and "d" arrives; "error" reports the 2 batched
 *               messages.
 *   full        From a handler, peer 1 sends peer 2 "first", which goes at once, then as many
 *               as fill a batch; the send of the batch they fill fails. The send that filled
 *               it returns 0 (it was accepted into the batch), "error" reports the whole
 *               batch, and "after", sent next, arrives.
 *   disconnect  From a handler, peer 1 sends peer 2 "a", "b" and "c", then disconnects; the
 *               send of the batch, made by the disconnect, fails. "error" reports the 2
 *               batched messages, before the disconnect returns.
 *   acquire     Peer 3 holds lock "L"; peer 1 waits for it in ipchannel_lock_acquire(), whose
 *               loop runs a timer that sends peer 2 "a" (at once) and "b" (batched) and then
 *               outlasts the acquire's timeout. The acquire sends the batch on its way out;
 *               that send fails, and the "error" handler drops the app's reference to peer 1.
 *               The acquire returns -ECANCELED (not a timeout, and not a lock), peer 2 gets
 *               "a", and "error" reports "b".
 *   large       No fault: with memfds off, peer 1 sends peer 2 from a handler "a", "b", 70 KB,
 *               "c", 40 KB and 40 KB. A payload as large as a batch (64 KiB) goes alone, after
 *               the batch; one that would take a batch past 64 KiB starts the next. Peer 2
 *               gets all six in order, in five messages: "a", the batch of "b" alone, 70 KB,
 *               the batch of "c" and 40 KB, the batch of the last 40 KB (a batch of one goes
 *               as a Deliver).
 *   matches     Run on a bus that allows 40 match rules per connection (dbus-daemon, as the
 *               stock system bus allows 512): peer 2 listens to "a,b" (which no rule can name:
 *               the catch-all rule serves it), then to 60 events. The bus refuses rules; peer
 *               2 stays connected, says so once on "error", and gets the broadcasts of its
 *               events (not of others) through the catch-all rule, also of an event it starts
 *               listening to after.
 *   matches-catchall  The same with 40 events, just over the limit: the catch-all rule,
 *               sent last, is among the rules refused.
 *   fd          No fault: before connecting, peer 1 sends peer 2 an fd (a memfd named "sent"),
 *               which waits in the queue, and closes it; the app then opens another memfd,
 *               which takes the same fd number. Peer 2 gets the file that was sent.
 *
 * Waits are multiplied by $IPCHANNEL_TEST_TIMEOUT_FACTOR (valgrind).
 */
#include <dlfcn.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <ipchannel.h>

#define BATCH 256                       /* payloads in a full batch (PAYLOAD_BATCH_MAX) */
#define GRACE_USEC (200 * 1000)         /* after all that is expected: time for extras */
#define TIMEOUT_USEC (10 * 1000 * 1000)

/* A negative errno: what the next sd_bus_send() of this thread returns. Per thread: the lock
 * service that a peer may host runs in a thread of its own, with its own sends. */
static _Thread_local int fail_next;
/* The members of the Deliver… calls sent, space-separated. */
static GString *delivers;

int sd_bus_send(sd_bus *bus, sd_bus_message *m, uint64_t *cookie) {
        static int (*real)(sd_bus *, sd_bus_message *, uint64_t *);
        const char *member = sd_bus_message_get_member(m);

        if (delivers && member && g_str_has_prefix(member, "Deliver")) {
                if (delivers->len > 0)
                        g_string_append_c(delivers, ' ');
                g_string_append(delivers, member);
        }
        if (fail_next) {
                int r = fail_next;

                fail_next = 0;
                return r;
        }
        if (!real)
                *(void **) &real = dlsym(RTLD_NEXT, "sd_bus_send");
        return real(bus, m, cookie);
}

typedef struct expected {
        const char *peer2, *peer3;      /* what each receiver gets, space-separated */
        size_t lost;                    /* the batched messages "error" reports (0: no error) */
        const char *delivers;           /* if set: the members of the Deliver… calls sent */
        bool refused;                   /* "error" says once that the bus refused a match rule */
} expected;

static const char *scenario;
static expected want;
static bool use_glib;
static sd_event *event;
static GMainContext *context;
static GMainLoop *loop;
static ipchannel *peer[4];              /* [1] sends, [2] and [3] receive */
static bool joined[4], stopping;
static GString *received[4];
static int n_errors, error_code;
static uint64_t acquire_deadline;       /* acquire: CLOCK_MONOTONIC µs */
static char *error_text;
static int failures;

#define expect(cond, ...)                                                      \
        do {                                                                   \
                if (!(cond)) {                                                 \
                        fprintf(stderr, "test-fault %s: ", scenario);          \
                        fprintf(stderr, __VA_ARGS__);                          \
                        fputc('\n', stderr);                                   \
                        failures++;                                            \
                }                                                              \
        } while (0)

static uint64_t scaled(uint64_t usec) {
        const char *f = getenv("IPCHANNEL_TEST_TIMEOUT_FACTOR");
        double factor = f ? strtod(f, NULL) : 1.0;

        return factor >= 1.0 ? (uint64_t) ((double) usec * factor) : usec;
}

/* What call_after() runs. */
typedef enum timed_call {
        CALL_STOP,              /* end the loop: all went as it should */
        CALL_TIME_OUT,          /* end the loop: what was awaited did not come */
        CALL_ACQUIRE_TIMER,
        CALL_BROADCAST_MATCHES,
} timed_call;

static void acquire_timer(void);
static void broadcast_matches(void);

static void call_now(timed_call which) {
        switch (which) {
        case CALL_STOP:
        case CALL_TIME_OUT:
                if (which == CALL_TIME_OUT) {
                        fprintf(stderr, "test-fault %s: %s\n", scenario, g_strerror(ETIMEDOUT));
                        failures++;
                }
                if (use_glib)
                        g_main_loop_quit(loop);
                else
                        (void) sd_event_exit(event, 0);
                break;
        case CALL_ACQUIRE_TIMER:
                acquire_timer();
                break;
        case CALL_BROADCAST_MATCHES:
                broadcast_matches();
                break;
        }
}

static int on_event_call(sd_event_source *s, uint64_t usec, void *userdata) {
        call_now(GPOINTER_TO_INT(userdata));
        return 0;
}

static gboolean on_glib_call(gpointer userdata) {
        call_now(GPOINTER_TO_INT(userdata));
        return G_SOURCE_REMOVE;
}

/* Runs which from the loop after usec. */
static int call_after(uint64_t usec, timed_call which) {
        if (!use_glib)
                return sd_event_add_time_relative(event, NULL, CLOCK_MONOTONIC, usec, 0, on_event_call,
                                                  GINT_TO_POINTER(which));
        GSource *t = g_timeout_source_new((guint) (usec / 1000));
        g_source_set_callback(t, on_glib_call, GINT_TO_POINTER(which), NULL);
        g_source_attach(t, context);
        g_source_unref(t);
        return 0;
}

/* Once everything expected has come: a grace time for anything that should not, then stop. */
static void maybe_done(void) {
        if (stopping || strcmp(received[2]->str, want.peer2) != 0 || strcmp(received[3]->str, want.peer3) != 0 ||
            n_errors < (want.lost > 0 || want.refused))
                return;
        stopping = true;
        if (call_after(scaled(GRACE_USEC), CALL_STOP) < 0)
                failures++;
}

static int send_to(uint32_t to, const char *s) {
        return ipchannel_send(peer[1], to, g_variant_new_string(s));
}

/* A string of size bytes (with its nul), which peer 2 notes as "[size]". */
static int send_large(size_t size) {
        g_autofree char *s = g_malloc(size);

        memset(s, 'x', size - 1);
        s[size - 1] = '\0';
        return send_to(2, s);
}

/* Sends peer 2 the first n of "a", "b", "c": "a" goes at once, the rest wait in a batch. */
static void send_words(size_t n) {
        static const char *const words[] = { "a", "b", "c" };

        for (size_t i = 0; i < n; i++)
                expect(send_to(2, words[i]) == 0, "send of %s failed", words[i]);
}

static void scenario_ahead(void) {
        int r;

        send_words(3);
        fail_next = -ENOMEM;
        r = send_to(3, "d");
        expect(r == 0, "the send of d returned %s: the batch's failure is not its own", g_strerror(-r));
        expect(fail_next == 0, "the batch was not sent ahead of d");
}

static void scenario_full(void) {
        int r;

        expect(send_to(2, "first") == 0, "the first send failed");
        for (int i = 1; i < BATCH; i++)
                expect(send_to(2, "batched") == 0, "batched send %d failed", i);
        fail_next = -ENOMEM;
        r = send_to(2, "batched");
        expect(r == 0, "the send that filled the batch returned %s", g_strerror(-r));
        expect(fail_next == 0, "the full batch was not sent at once");
        expect(send_to(2, "after") == 0, "the send after the failed batch failed");
}

static void scenario_disconnect(void) {
        int r;

        send_words(3);
        fail_next = -ENOMEM;
        r = ipchannel_disconnect(peer[1]);
        expect(r == 1, "ipchannel_disconnect() returned %d", r);
        expect(fail_next == 0, "the disconnect did not send the batch");
        expect(n_errors == 1, "%d errors when the disconnect returned, not 1", n_errors);
}

static void scenario_large(void) {
        expect(send_to(2, "a") == 0, "send of a failed");
        expect(send_to(2, "b") == 0, "send of b failed");
        expect(send_large(70000) == 0, "send of 70 KB failed");
        expect(send_to(2, "c") == 0, "send of c failed");
        expect(send_large(40000) == 0, "send of 40 KB failed");
        expect(send_large(40000) == 0, "send of 40 KB failed");
}

static void on_join(ipchannel *ch, uint32_t id, const char *ev, GVariant *data, void *userdata) {
        if (id < 2 || id > 3 || joined[id])
                return;
        joined[id] = true;
        if (!joined[2] || !joined[3])
                return;
        /* Inside a handler of the loop: sends after the first of this turn are batched. */
        if (strcmp(scenario, "ahead") == 0)
                scenario_ahead();
        else if (strcmp(scenario, "full") == 0)
                scenario_full();
        else if (strcmp(scenario, "large") == 0)
                scenario_large();
        else if (strcmp(scenario, "disconnect") == 0)
                scenario_disconnect();
        maybe_done();
}

static void on_message(ipchannel *ch, uint32_t from, const char *ev, GVariant *data, void *userdata) {
        GString *got = received[GPOINTER_TO_INT(userdata)];

        gsize length;
        const char *s;

        if (got->len > 0)
                g_string_append_c(got, ' ');
        if (g_variant_is_of_type(data, G_VARIANT_TYPE_HANDLE)) {
                /* The file the fd refers to. */
                g_autofree char *path = g_strdup_printf("/proc/self/fd/%d", g_variant_get_handle(data));
                g_autofree char *target = g_file_read_link(path, NULL);

                g_string_append(got, target ?: "(no file)");
                maybe_done();
                return;
        }
        s = g_variant_get_string(data, &length);
        if (length < 100)
                g_string_append(got, s);
        else
                g_string_append_printf(got, "[%zu]", length + 1);
        maybe_done();
}

/* matches: once peer 2 fell back to the catch-all rule (and its AddMatch had time to reach the
 * bus), peer 1 broadcasts. */
static void broadcast_matches(void) {
        expect(ipchannel_on(peer[2], "late", on_message, GINT_TO_POINTER(2), NULL) >= 0, "cannot listen to late");
        expect(ipchannel_emit(peer[1], IPCHANNEL_ALL, "e0", g_variant_new_string("x0")) == 0, "emit e0");
        expect(ipchannel_emit(peer[1], IPCHANNEL_ALL, "unheard", g_variant_new_string("no")) == 0, "emit");
        expect(ipchannel_emit(peer[1], IPCHANNEL_ALL, "a,b", g_variant_new_string("xab")) == 0, "emit a,b");
        expect(ipchannel_emit(peer[1], IPCHANNEL_ALL, "e37", g_variant_new_string("x37")) == 0, "emit e37");
        expect(ipchannel_emit(peer[1], IPCHANNEL_ALL, "late", g_variant_new_string("xl")) == 0, "emit late");
}

static void on_error(ipchannel *ch, uint32_t from, const char *ev, GVariant *data, void *userdata) {
        const char *text;

        n_errors++;
        g_variant_get(data, "(i&s)", &error_code, &text);
        free(error_text);
        error_text = strdup(text);
        if (g_str_has_prefix(scenario, "matches") && n_errors == 1)
                expect(call_after(scaled(300 * 1000), CALL_BROADCAST_MATCHES) >= 0, "cannot arm a timer");
        if (strcmp(scenario, "acquire") == 0 && ch == peer[1]) {
                /* The app lets go of peer 1 while its ipchannel_lock_acquire() is returning. */
                ipchannel_unref(peer[1]);
                peer[1] = NULL;
        }
        maybe_done();
}

static void on_sender_connect(ipchannel *ch, uint32_t id, const char *ev, GVariant *data,
                              void *userdata) {
        for (int i = 2; i <= 3; i++) {
                int r = ipchannel_connect(peer[i]);

                expect(r >= 0, "connect of peer %d: %s", i, g_strerror(-r));
        }
}

static int setup(void) {
        int r = 0;

        if (use_glib) {
                context = g_main_context_new();
                loop = g_main_loop_new(context, FALSE);
        } else
                r = sd_event_new(&event);
        for (int i = 1; i <= 3 && r >= 0; i++) {
                received[i] = g_string_new(NULL);
                r = ipchannel_new(&peer[i], "fault");
                if (r >= 0)
                        r = ipchannel_set_peer_id(peer[i], (uint32_t) i);
                if (r >= 0)
                        r = use_glib ? ipchannel_attach_glib(peer[i], context)
                                     : ipchannel_attach_event(peer[i], event, 0);
                if (r >= 0 && i > 1)
                        r = ipchannel_on(peer[i], IPCHANNEL_EVENT_MESSAGE, on_message, GINT_TO_POINTER(i), NULL);
        }
        if (r >= 0 && strcmp(scenario, "large") == 0)
                r = ipchannel_set_memfd_threshold(peer[1], 0);
        if (g_str_has_prefix(scenario, "matches")) {
                /* Listened first: its catch-all rule is sent last (the latest listener's rule
                 * goes first). */
                int n_events = strcmp(scenario, "matches") == 0 ? 60 : 40;

                if (r >= 0)
                        r = ipchannel_on(peer[2], "a,b", on_message, GINT_TO_POINTER(2), NULL);
                for (int i = 0; i < n_events && r >= 0; i++) {
                        char name[16];

                        snprintf(name, sizeof(name), "e%d", i);
                        r = ipchannel_on(peer[2], name, on_message, GINT_TO_POINTER(2), NULL);
                }
                if (r >= 0)
                        r = ipchannel_on(peer[2], IPCHANNEL_EVENT_ERROR, on_error, NULL, NULL);
        }
        if (r >= 0)
                r = ipchannel_on(peer[1], IPCHANNEL_EVENT_CONNECT, on_sender_connect, NULL, NULL);
        if (r >= 0)
                r = ipchannel_on(peer[1], IPCHANNEL_EVENT_PEER_JOIN, on_join, NULL, NULL);
        if (r >= 0)
                r = ipchannel_on(peer[1], IPCHANNEL_EVENT_ERROR, on_error, NULL, NULL);
        return r;
}

/* acquire: runs in the loop of peer 1's ipchannel_lock_acquire(). */
static void acquire_timer(void) {
        uint64_t now;

        send_words(2);
        fail_next = -ENOMEM;
        /* Outlast the acquire's deadline, so that it stops waiting right after this turn. */
        now = (uint64_t) g_get_monotonic_time();
        if (now < acquire_deadline + 20 * 1000)
                g_usleep(acquire_deadline + 20 * 1000 - now);
}

/* Runs the loop until *flag, or for at most usec. */
static int pump_until(const bool *flag, uint64_t usec) {
        uint64_t end = (uint64_t) g_get_monotonic_time() + usec;

        while (!*flag) {
                if ((uint64_t) g_get_monotonic_time() >= end)
                        return -ETIMEDOUT;
                if (use_glib)
                        g_main_context_iteration(context, TRUE);
                else {
                        int r = sd_event_run(event, 100 * 1000);
                        if (r < 0)
                                return r;
                }
        }
        return 0;
}

static int run_acquire(void) {
        ipchannel_lock *held = NULL, *got = NULL;
        bool both = false;
        int r;

        r = ipchannel_connect(peer[1]);
        if (r >= 0)
                r = pump_until(&joined[2], scaled(TIMEOUT_USEC));
        if (r >= 0)
                r = pump_until(&joined[3], scaled(TIMEOUT_USEC));
        /* No lease: under valgrind the wait below outlasts the default 5 s. */
        if (r >= 0)
                r = ipchannel_set_sync_timeout(peer[3], 0);
        if (r >= 0)
                r = ipchannel_lock_acquire(peer[3], "L", scaled(TIMEOUT_USEC), &held);
        if (r < 0)
                return r;

        r = call_after(10 * 1000, CALL_ACQUIRE_TIMER);
        if (r < 0)
                return r;
        acquire_deadline = (uint64_t) g_get_monotonic_time() + scaled(300 * 1000);
        r = ipchannel_lock_acquire(peer[1], "L", scaled(300 * 1000), &got);
        expect(r == -ECANCELED, "the acquire returned %s, not -ECANCELED", g_strerror(-r));
        expect(!got, "the acquire handed out a lock");
        expect(peer[1] == NULL, "the app's reference to peer 1 was not dropped");
        if (r >= 0)
                (void) ipchannel_lock_release(got, 0);

        /* What peer 2 gets, and nothing more. */
        r = pump_until(&both, scaled(GRACE_USEC));
        expect(r == -ETIMEDOUT, "the loop failed: %s", g_strerror(-r));
        return ipchannel_lock_release(held, 0);
}

/* fd: a send that waits in the queue keeps the file it was given. */
static int queue_fd(void) {
        int fd = memfd_create("sent", MFD_CLOEXEC), other, r;

        if (fd < 0)
                return -errno;
        r = ipchannel_send(peer[1], 2, g_variant_new_handle(fd));
        close(fd);
        if (r < 0)
                return r;
        other = memfd_create("other", MFD_CLOEXEC);
        if (other < 0)
                return -errno;
        expect(other == fd, "the fd number was not reused (%d, then %d): the test proves nothing", fd, other);
        /* Kept open until the end, as an app's files are. */
        return 0;
}

static int run(void) {
        int r = call_after(scaled(TIMEOUT_USEC), CALL_TIME_OUT);

        if (r >= 0 && strcmp(scenario, "fd") == 0)
                r = queue_fd();
        if (r >= 0)
                r = ipchannel_connect(peer[1]);
        if (r < 0)
                return r;
        if (use_glib) {
                g_main_loop_run(loop);
                return 0;
        }
        return sd_event_loop(event);
}

int main(int argc, char *argv[]) {
        g_autofree char *lost = NULL;
        int r;

        scenario = argc > 1 ? argv[1] : "";
        use_glib = argc > 2 && strcmp(argv[2], "glib") == 0;
        if (strcmp(scenario, "ahead") == 0)
                want = (expected) { .peer2 = "a", .peer3 = "d", .lost = 2 };
        else if (strcmp(scenario, "full") == 0)
                want = (expected) { .peer2 = "first after", .peer3 = "", .lost = BATCH };
        else if (strcmp(scenario, "disconnect") == 0 || strcmp(scenario, "acquire") == 0)
                want = (expected) { .peer2 = "a", .peer3 = "", .lost = strcmp(scenario, "acquire") == 0 ? 1 : 2 };
        else if (g_str_has_prefix(scenario, "matches"))
                want = (expected) { .peer2 = "x0 xab x37 xl", .peer3 = "", .refused = true };
        else if (strcmp(scenario, "fd") == 0)
                want = (expected) { .peer2 = "/memfd:sent (deleted)", .peer3 = "" };
        else if (strcmp(scenario, "large") == 0)
                want = (expected) { .peer2 = "a b [70000] c [40000] [40000]", .peer3 = "",
                                    .delivers = "Deliver Deliver Deliver DeliverBatch Deliver" };
        else {
                fprintf(stderr, "usage: test-fault ahead|full|disconnect|acquire|large|matches|matches-catchall|fd [sd-event|glib]\n");
                return EXIT_FAILURE;
        }

        delivers = g_string_new(NULL);
        r = setup();
        if (r >= 0)
                r = strcmp(scenario, "acquire") == 0 ? run_acquire() : run();
        if (r < 0) {
                fprintf(stderr, "test-fault %s: %s\n", scenario, g_strerror(-r));
                failures++;
        }
        lost = g_strdup_printf("%zu batched message%s could not be sent", want.lost, want.lost == 1 ? "" : "s");
        expect(strcmp(received[2]->str, want.peer2) == 0, "peer 2 got \"%s\", not \"%s\"", received[2]->str,
               want.peer2);
        expect(strcmp(received[3]->str, want.peer3) == 0, "peer 3 got \"%s\", not \"%s\"", received[3]->str,
               want.peer3);
        if (want.lost > 0) {
                expect(n_errors == 1, "%d errors, not 1", n_errors);
                expect(error_code == -ENOMEM, "the error's code is %d", error_code);
                expect(error_text && strstr(error_text, lost), "the error says \"%s\"", error_text ?: "");
        } else if (want.refused) {
                expect(n_errors == 1, "%d errors, not 1", n_errors);
                expect(error_text && strstr(error_text, "The bus refused a match rule"), "the error says \"%s\"",
                       error_text ?: "");
        } else
                expect(n_errors == 0, "%d errors, the last: %s", n_errors, error_text ?: "");
        if (want.delivers)
                expect(strcmp(delivers->str, want.delivers) == 0, "sent \"%s\", not \"%s\"", delivers->str,
                       want.delivers);

        for (int i = 1; i <= 3; i++) {
                ipchannel_unref(peer[i]);
                if (received[i])
                        g_string_free(received[i], TRUE);
        }
        free(error_text);
        g_string_free(delivers, TRUE);
        if (loop)
                g_main_loop_unref(loop);
        if (context)
                g_main_context_unref(context);
        sd_event_unref(event);
        return failures ? EXIT_FAILURE : EXIT_SUCCESS;
}

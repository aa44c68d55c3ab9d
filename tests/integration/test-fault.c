/* SPDX-License-Identifier: MIT */
/*
 * test-fault SCENARIO: the bus connection refuses one send with -ENOMEM at a chosen moment,
 * and the library must report what it could not send on "error", keep what it still can,
 * and go on. This program defines sd_bus_send() itself: the library's calls land here first
 * (an executable's symbols come before a shared library's), and pass on to libsystemd's
 * unless a fault is armed for the calling thread. Peers 1 (the sender), 2 and 3 are channels of this one process on
 * one sd-event loop, on the bus of $DBUS_SESSION_BUS_ADDRESS. Exit status 0 when the scenario
 * saw what it should.
 *
 *   ahead  From a handler, peer 1 sends peer 2 "a" (it goes at once), "b" and "c" (batched),
 *          then peer 3 "d", which sends the batch first; that send fails. The send of "d"
 *          succeeds and "d" arrives; "error" reports the 2 batched messages, once.
 *   full   From a handler, peer 1 sends peer 2 one message that goes at once, then as many as
 *          fill a batch; the send of the batch they fill fails. The send that filled it
 *          returns 0 (it was accepted into the batch), "error" reports the whole batch, once,
 *          and a send after it arrives.
 */
#include <dlfcn.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ipchannel.h>

#define BATCH 256                       /* payloads in a full batch (PAYLOAD_BATCH_MAX) */
#define DONE_GRACE_USEC (300 * 1000)    /* after the last expected event: time for extras */
#define TIMEOUT_USEC (10 * 1000 * 1000)

/* A negative errno: what the next sd_bus_send() of this thread returns. Per thread: the lock
 * service that a peer may host runs in a thread of its own, with its own sends. */
static _Thread_local int fail_next;

int sd_bus_send(sd_bus *bus, sd_bus_message *m, uint64_t *cookie) {
        static int (*real)(sd_bus *, sd_bus_message *, uint64_t *);

        if (fail_next) {
                int r = fail_next;

                fail_next = 0;
                return r;
        }
        if (!real)
                *(void **) &real = dlsym(RTLD_NEXT, "sd_bus_send");
        return real(bus, m, cookie);
}

static const char *scenario;
static sd_event *event;
static ipchannel *peer[4];              /* [1] sends, [2] and [3] receive */
static bool joined[4];
static GString *received[4];            /* the strings each receiver got, space-separated */
static int n_errors, error_code;
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

static int send_to(uint32_t to, const char *s) {
        return ipchannel_send(peer[1], to, g_variant_new_string(s));
}

static void scenario_ahead(void) {
        int r;

        expect(send_to(2, "a") == 0, "send of a failed");
        expect(send_to(2, "b") == 0, "send of b failed");
        expect(send_to(2, "c") == 0, "send of c failed");
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

static void on_join(ipchannel *ch, uint32_t id, const char *ev, GVariant *data, void *userdata) {
        if (id < 2 || id > 3 || joined[id])
                return;
        joined[id] = true;
        if (!joined[2] || !joined[3])
                return;
        /* Inside a handler of the loop: sends after the first of this turn are batched. */
        if (strcmp(scenario, "ahead") == 0)
                scenario_ahead();
        else
                scenario_full();
        (void) sd_event_add_time_relative(event, NULL, CLOCK_MONOTONIC, DONE_GRACE_USEC, 0, NULL,
                                          NULL);
}

static void on_message(ipchannel *ch, uint32_t from, const char *ev, GVariant *data, void *userdata) {
        GString *got = received[GPOINTER_TO_INT(userdata)];

        if (got->len > 0)
                g_string_append_c(got, ' ');
        g_string_append(got, g_variant_get_string(data, NULL));
}

static void on_error(ipchannel *ch, uint32_t from, const char *ev, GVariant *data, void *userdata) {
        const char *text;

        n_errors++;
        g_variant_get(data, "(i&s)", &error_code, &text);
        free(error_text);
        error_text = strdup(text);
}

static void on_sender_connect(ipchannel *ch, uint32_t id, const char *ev, GVariant *data,
                              void *userdata) {
        for (int i = 2; i <= 3; i++) {
                int r = ipchannel_connect(peer[i]);

                expect(r >= 0, "connect of peer %d: %s", i, g_strerror(-r));
        }
}

static int setup(void) {
        int r = sd_event_new(&event);

        for (int i = 1; i <= 3 && r >= 0; i++) {
                received[i] = g_string_new(NULL);
                r = ipchannel_new(&peer[i], "fault");
                if (r >= 0)
                        r = ipchannel_set_peer_id(peer[i], (uint32_t) i);
                if (r >= 0)
                        r = ipchannel_attach_event(peer[i], event, 0);
                if (r >= 0 && i > 1)
                        r = ipchannel_on(peer[i], IPCHANNEL_EVENT_MESSAGE, on_message, GINT_TO_POINTER(i),
                                         NULL);
        }
        if (r >= 0)
                r = ipchannel_on(peer[1], IPCHANNEL_EVENT_CONNECT, on_sender_connect, NULL, NULL);
        if (r >= 0)
                r = ipchannel_on(peer[1], IPCHANNEL_EVENT_PEER_JOIN, on_join, NULL, NULL);
        if (r >= 0)
                r = ipchannel_on(peer[1], IPCHANNEL_EVENT_ERROR, on_error, NULL, NULL);
        return r;
}

/* The grace timer (no callback) ends the loop; a timeout does too, and then fails. */
static int run(void) {
        int r = sd_event_add_time_relative(event, NULL, CLOCK_MONOTONIC, TIMEOUT_USEC, 0, NULL,
                                           GINT_TO_POINTER(-ETIMEDOUT));

        if (r >= 0)
                r = ipchannel_connect(peer[1]);
        if (r >= 0)
                r = sd_event_loop(event);
        return r;
}

int main(int argc, char *argv[]) {
        g_autofree char *full = NULL;
        int r;

        scenario = argc > 1 ? argv[1] : "";
        if (strcmp(scenario, "ahead") != 0 && strcmp(scenario, "full") != 0) {
                fprintf(stderr, "usage: test-fault ahead|full\n");
                return EXIT_FAILURE;
        }
        r = setup();
        if (r >= 0)
                r = run();
        if (r < 0) {
                fprintf(stderr, "test-fault %s: %s\n", scenario, g_strerror(-r));
                failures++;
        } else if (strcmp(scenario, "ahead") == 0) {
                expect(strcmp(received[2]->str, "a") == 0, "peer 2 got \"%s\", not \"a\"", received[2]->str);
                expect(strcmp(received[3]->str, "d") == 0, "peer 3 got \"%s\", not \"d\"", received[3]->str);
                expect(n_errors == 1, "%d errors, not 1", n_errors);
                expect(error_code == -ENOMEM, "the error's code is %d", error_code);
                expect(error_text && strstr(error_text, "2 batched messages"), "the error says \"%s\"",
                       error_text ?: "");
        } else {
                full = g_strdup_printf("%d batched messages", BATCH);
                expect(strcmp(received[2]->str, "first after") == 0, "peer 2 got \"%s\", not \"first after\"",
                       received[2]->str);
                expect(n_errors == 1, "%d errors, not 1", n_errors);
                expect(error_code == -ENOMEM, "the error's code is %d", error_code);
                expect(error_text && strstr(error_text, full), "the error says \"%s\"", error_text ?: "");
        }

        for (int i = 1; i <= 3; i++) {
                ipchannel_unref(peer[i]);
                if (received[i])
                        g_string_free(received[i], TRUE);
        }
        free(error_text);
        sd_event_unref(event);
        return failures ? EXIT_FAILURE : EXIT_SUCCESS;
}

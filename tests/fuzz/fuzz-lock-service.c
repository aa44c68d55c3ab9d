/* SPDX-License-Identifier: MIT */
/* libFuzzer target: the lock service's method handlers, driven by a scripted fake bus broker. */

/*
 * lock_service_new() wants a real bus client (it asks for its unique name and for the queue of
 * its service name), so this target gives it one: the service's connection is one end of a
 * socketpair, and the other end is an sd-bus connection in server mode that this file drives as
 * a tiny broker. It answers Hello, ListQueuedOwners, AddMatch, RemoveMatch and GetNameOwner,
 * announces disconnects with NameOwnerChanged, and forwards the fuzzer's method calls with the
 * sender field set, as dbus-daemon would. No daemon runs. The broker has a thread of its own,
 * since the service makes blocking calls to the bus (AddMatch for its tracking) that must be
 * answered while the service's thread waits; each connection is used by one thread only. After
 * each call the broker pings the service and waits for the answer, which keeps runs
 * reproducible: the service has read every call before the ping when it answers.
 *
 * Set FUZZ_LOCK_SERVICE_DEBUG=1 to see the traffic the broker sees.
 *
 * The input is a program of calls from five connections (four in the service name's queue, one
 * outside it): Acquire, TryAcquire, Release, Cancel, Reassert and ListLocks, and the cached-grant
 * calls AcquireCached, Park, Resume, ReassertCached and ListLocksEx, with lock names, leases and
 * tokens from the input, calls with a wrong signature, and disconnects. Tokens are the ones the
 * service handed out, or nearby stale ones. An op byte: bits 0-2 the call, bit 3 the cached-grant
 * set, bits 4-7 the caller.
 *
 * Checked beyond "no crash, no leak": every call gets exactly one reply (a method return or
 * error) by the time the service is freed, so no accepted call is lost or answered twice; a
 * call whose caller has since disconnected may instead go unanswered.
 */

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

#include <glib.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include "lock-service.h"
#include "macro.h"

#define N_SENDERS 5
#define N_MEMBERS 4     /* senders 0..3 are in the queue of SERVICE_NAME; 4 is not */
#define SERVICE_NAME "org.ipchannel.fuzz.Locks"
#define SERVICE_PATH "/org/ipchannel/fuzz/Locks"
#define SERVICE_UNIQUE ":1.0"
#define CALLS_MAX 256

static const char *const senders[N_SENDERS] = { ":1.1", ":1.2", ":1.3", ":1.4", ":1.5" };

#define check(expr)                                                                        \
        do {                                                                               \
                if (!(expr)) {                                                             \
                        fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__,  \
                                #expr);                                                    \
                        abort();                                                           \
                }                                                                          \
        } while (0)

typedef struct broker {
        sd_bus *bus;                    /* the broker's end: a server-mode connection */
        bool gone[N_SENDERS];
        uint64_t cookies[CALLS_MAX];    /* of the calls sent to the service */
        int callers[CALLS_MAX];         /* index into senders[] */
        unsigned n_replies[CALLS_MAX];
        size_t n_calls;
        uint64_t last_token;            /* the last token a reply carried */
        uint64_t ping_cookie;
        bool pinged;
        bool said_hello;                /* nothing may reach a client before its Hello reply */
        const uint8_t *data;
        size_t size;
        atomic_bool stop;               /* the program is done: free the service */
        atomic_bool freed;              /* the service is freed and its connection flushed */
} broker;

static int broker_reply(sd_bus_message *call, const char *types, ...) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        va_list ap;
        int r;

        r = sd_bus_message_new_method_return(call, &reply);
        if (r < 0)
                return r;
        /* Clients believe only the bus driver about the bus. */
        r = sd_bus_message_set_sender(reply, "org.freedesktop.DBus");
        if (r < 0)
                return r;
        va_start(ap, types);
        r = types ? sd_bus_message_appendv(reply, types, ap) : 0;
        va_end(ap);
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

static int broker_reply_error(sd_bus_message *call, const char *name) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int r;

        r = sd_bus_message_new_method_errorf(call, &reply, name, "Fake broker says no.");
        if (r < 0)
                return r;
        r = sd_bus_message_set_sender(reply, "org.freedesktop.DBus");
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

static int sender_index(const char *name) {
        for (int i = 0; i < N_SENDERS; i++)
                if (name && strcmp(name, senders[i]) == 0)
                        return i;
        return -1;
}

/* The bus driver's side of the few calls the service makes to it. */
static int broker_driver_call(broker *b, sd_bus_message *m) {
        const char *member = sd_bus_message_get_member(m);
        const char *name = NULL;

        if (strcmp(member, "Hello") == 0) {
                b->said_hello = true;
                return broker_reply(m, "s", SERVICE_UNIQUE);
        }
        if (strcmp(member, "AddMatch") == 0 || strcmp(member, "RemoveMatch") == 0)
                return broker_reply(m, NULL);
        if (strcmp(member, "ListQueuedOwners") == 0) {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
                int r;

                r = sd_bus_message_new_method_return(m, &reply);
                if (r >= 0)
                        r = sd_bus_message_set_sender(reply, "org.freedesktop.DBus");
                if (r >= 0)
                        r = sd_bus_message_open_container(reply, 'a', "s");
                if (r >= 0)
                        r = sd_bus_message_append_basic(reply, 's', SERVICE_UNIQUE);
                for (int i = 0; i < N_MEMBERS && r >= 0; i++)
                        if (!b->gone[i])
                                r = sd_bus_message_append_basic(reply, 's', senders[i]);
                if (r >= 0)
                        r = sd_bus_message_close_container(reply);
                if (r < 0)
                        return r;
                return sd_bus_send(NULL, reply, NULL);
        }
        if (strcmp(member, "GetNameOwner") == 0 && sd_bus_message_read(m, "s", &name) > 0) {
                int i = sender_index(name);

                if (strcmp(name, SERVICE_UNIQUE) == 0 || strcmp(name, SERVICE_NAME) == 0)
                        return broker_reply(m, "s", SERVICE_UNIQUE);
                if (i >= 0 && !b->gone[i])
                        return broker_reply(m, "s", name);
                return broker_reply_error(m, "org.freedesktop.DBus.Error.NameHasNoOwner");
        }
        return broker_reply_error(m, "org.freedesktop.DBus.Error.UnknownMethod");
}

static int broker_on_message(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        broker *b = userdata;
        uint64_t cookie;

        if (getenv("FUZZ_LOCK_SERVICE_DEBUG"))
                fprintf(stderr, "broker got %s %s\n", sd_bus_message_get_member(m) ?: "-",
                        sd_bus_message_get_signature(m, true));
        if (sd_bus_message_is_method_call(m, NULL, NULL)) {
                const char *destination = sd_bus_message_get_destination(m);

                check(destination && strcmp(destination, "org.freedesktop.DBus") == 0);
                (void) broker_driver_call(b, m);
                return 1;
        }
        if (sd_bus_message_get_reply_cookie(m, &cookie) < 0)
                return 0;       /* signals: LeaseExpired, PropertiesChanged */
        if (cookie == b->ping_cookie) {
                b->pinged = true;
                return 1;
        }

        if (getenv("FUZZ_LOCK_SERVICE_DEBUG"))
                fprintf(stderr, "reply to %" PRIu64 ": %s %s\n", cookie,
                        sd_bus_message_get_signature(m, true),
                        sd_bus_message_is_method_error(m, NULL) ? sd_bus_message_get_error(m)->name
                                                                : "");
        for (size_t i = 0; i < b->n_calls; i++) {
                if (b->cookies[i] != cookie)
                        continue;
                b->n_replies[i]++;
                check(b->n_replies[i] == 1);
                break;
        }
        /* Remember granted tokens, so that releases can name real grants. */
        if (!sd_bus_message_is_method_error(m, NULL) &&
            (sd_bus_message_has_signature(m, "t") || sd_bus_message_has_signature(m, "tb")))
                (void) sd_bus_message_read_basic(m, 't', &b->last_token);
        return 1;
}

/* Runs the broker until the Ping sent after the last call is answered: the service has then
 * read every call before it (held ones may still wait for a queue check, which this answers). */
static void broker_settle(broker *b) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *ping = NULL;
        uint64_t cookie;

        check(sd_bus_message_new_method_call(b->bus, &ping, SERVICE_UNIQUE, "/",
                                             "org.freedesktop.DBus.Peer", "Ping") >= 0);
        check(sd_bus_send(b->bus, ping, &cookie) >= 0);
        b->ping_cookie = cookie;
        b->pinged = false;
        for (int i = 0; i < 200 && !b->pinged; i++) {
                int r = sd_bus_process(b->bus, NULL);

                if (r < 0)
                        break;
                if (r == 0)
                        (void) sd_bus_wait(b->bus, 10 * 1000);
        }
}

/* The reader of the input program. */
typedef struct input {
        const uint8_t *p;
        size_t n;
} input;

static uint8_t input_byte(input *in) {
        uint8_t c = 0;

        if (in->n > 0) {
                c = *in->p++;
                in->n--;
        }
        return c;
}

/* A short lock name: one of a few common ones, or raw bytes from the input (then sd-bus itself
 * refuses what is not UTF-8, as a real client's library would). */
static void input_lock(input *in, char *buf, size_t size) {
        static const char *const common[] = { "a", "b", "c", "" };
        uint8_t c = input_byte(in);

        if (c < 0xf0) {
                snprintf(buf, size, "%s", common[c % 4]);
                return;
        }
        size_t n = MIN((size_t) (c & 0x0f), size - 1);
        for (size_t i = 0; i < n; i++)
                buf[i] = (char) input_byte(in);
        buf[n] = '\0';
}

static uint64_t input_token(input *in, broker *b) {
        uint8_t c = input_byte(in);

        /* The latest grant, one just before it, or a made-up small one. */
        if (c < 0x80)
                return b->last_token - (c & 3);
        return c & 0x7f;
}

/* Leases long enough never to run out during one input: expiry is the lockqueue target's. */
static uint64_t input_lease(input *in) {
        uint8_t c = input_byte(in);

        return c < 0x80 ? 0 : (uint64_t) c * 1000 * 1000 * 1000;
}

static int broker_call(broker *b, sd_bus_message *m, const char *sender) {
        uint64_t cookie;
        int r;

        r = sd_bus_message_set_sender(m, sender);
        if (r < 0)
                return r;
        r = sd_bus_send(b->bus, m, &cookie);
        if (r < 0)
                return r;
        check(b->n_calls < CALLS_MAX);
        b->callers[b->n_calls] = sender_index(sender);
        b->cookies[b->n_calls++] = cookie;
        return 0;
}

static int new_call(broker *b, const char *member, sd_bus_message **ret) {
        return sd_bus_message_new_method_call(b->bus, ret, SERVICE_UNIQUE, SERVICE_PATH,
                                              "org.ipchannel.LockService1", member);
}

/* One step of the program. */
static void run_op(broker *b, input *in) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        uint8_t op = input_byte(in);
        int who = (op >> 4) % N_SENDERS;
        char lock[16];
        int r = 0;

        if (b->gone[who])
                return;         /* a closed connection sends nothing more */

        if (op & 8)
                switch (op & 7) {
                case 0:
                        input_lock(in, lock, sizeof(lock));
                        r = new_call(b, "AcquireCached", &m);
                        if (r >= 0)
                                r = sd_bus_message_append(m, "st", lock, input_lease(in));
                        goto send;
                case 1:
                case 2:
                        input_lock(in, lock, sizeof(lock));
                        r = new_call(b, (op & 7) == 1 ? "Park" : "Resume", &m);
                        if (r >= 0)
                                r = sd_bus_message_append(m, "st", lock, input_token(in, b));
                        goto send;
                case 3: {
                        unsigned n = input_byte(in) % 4;

                        r = new_call(b, "ReassertCached", &m);
                        if (r >= 0)
                                r = sd_bus_message_open_container(m, 'a', "(stttb)");
                        for (unsigned i = 0; i < n && r >= 0; i++) {
                                uint8_t c;

                                input_lock(in, lock, sizeof(lock));
                                c = input_byte(in);
                                r = sd_bus_message_append(m, "(stttb)", lock, input_token(in, b),
                                                          input_lease(in), input_lease(in), (int) (c & 1));
                        }
                        if (r >= 0)
                                r = sd_bus_message_close_container(m);
                        goto send;
                }
                case 4: {
                        static const char *const members[] = { "AcquireCached", "Park", "Resume",
                                                               "ReassertCached" };
                        uint8_t c = input_byte(in);

                        r = new_call(b, members[c % 4], &m);
                        if (r >= 0)
                                r = (c & 4) ? sd_bus_message_append(m, "ts", (uint64_t) c, "a")
                                            : sd_bus_message_append(m, "as", 1, "a");
                        goto send;
                }
                case 5:
                        r = new_call(b, "ListLocksEx", &m);
                        goto send;
                default:
                        break;  /* the other calls, as below */
                }

        switch (op & 7) {
        case 0:
        case 1:
                input_lock(in, lock, sizeof(lock));
                r = new_call(b, (op & 7) == 0 ? "Acquire" : "TryAcquire", &m);
                if (r >= 0)
                        r = sd_bus_message_append(m, "st", lock, input_lease(in));
                break;
        case 2:
                input_lock(in, lock, sizeof(lock));
                r = new_call(b, "Release", &m);
                if (r >= 0)
                        r = sd_bus_message_append(m, "st", lock, input_token(in, b));
                break;
        case 3:
                input_lock(in, lock, sizeof(lock));
                r = new_call(b, "Cancel", &m);
                if (r >= 0)
                        r = sd_bus_message_append(m, "s", lock);
                break;
        case 4: {
                unsigned n = input_byte(in) % 4;

                r = new_call(b, "Reassert", &m);
                if (r >= 0)
                        r = sd_bus_message_open_container(m, 'a', "(stt)");
                for (unsigned i = 0; i < n && r >= 0; i++) {
                        input_lock(in, lock, sizeof(lock));
                        r = sd_bus_message_append(m, "(stt)", lock, input_token(in, b),
                                                  input_lease(in));
                }
                if (r >= 0)
                        r = sd_bus_message_close_container(m);
                break;
        }
        case 5:
                r = new_call(b, "ListLocks", &m);
                break;
        case 6: {
                /* The connection closes: the bus says so, as dbus-daemon would. */
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *signal = NULL;

                b->gone[who] = true;
                r = sd_bus_message_new_signal(b->bus, &signal, "/org/freedesktop/DBus",
                                              "org.freedesktop.DBus", "NameOwnerChanged");
                if (r >= 0)
                        r = sd_bus_message_set_sender(signal, "org.freedesktop.DBus");
                if (r >= 0)
                        r = sd_bus_message_append(signal, "sss", senders[who], senders[who], "");
                if (r >= 0)
                        r = sd_bus_send(b->bus, signal, NULL);
                check(r >= 0);
                return;
        }
        case 7: {
                /* A known method with the wrong arguments: sd-bus must refuse it for us. */
                static const char *const members[] = { "Acquire", "Release", "Cancel", "Reassert" };
                uint8_t c = input_byte(in);

                r = new_call(b, members[c % 4], &m);
                if (r >= 0)
                        r = (c & 4) ? sd_bus_message_append(m, "ts", (uint64_t) c, "a")
                                    : sd_bus_message_append(m, "as", 1, "a");
                break;
        }
        }

send:
        /* Arguments sd-bus would not let a client send (bad UTF-8) are not sent. */
        if (r < 0)
                return;
        check(broker_call(b, m, senders[who]) >= 0);
}

/* The broker's thread: the service makes blocking calls to the bus (AddMatch), which must be
 * answered while its own thread waits. Each connection is used by one thread only. */
static void *broker_run(void *userdata) {
        broker *b = userdata;
        input in = { .p = b->data, .n = b->size };

        for (int i = 0; i < 1000 && !b->said_hello; i++)
                if (sd_bus_process(b->bus, NULL) == 0)
                        (void) sd_bus_wait(b->bus, 10 * 1000);
        broker_settle(b);
        while (in.n > 0 && b->n_calls < CALLS_MAX) {
                run_op(b, &in);
                broker_settle(b);
        }
        atomic_store(&b->stop, true);

        /* Collect the replies the service sends as it is freed, until it hangs up. */
        for (int i = 0; i < 2000; i++) {
                int r = sd_bus_process(b->bus, NULL);

                if (r < 0)
                        break;
                if (r == 0) {
                        if (atomic_load(&b->freed) && sd_bus_is_open(b->bus) <= 0)
                                break;
                        (void) sd_bus_wait(b->bus, 10 * 1000);
                }
        }
        return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        sd_bus *client = NULL;
        sd_id128_t id = SD_ID128_MAKE(2b, 51, 7e, 0f, 93, 4c, 46, 1a, 8e, 22, 0b, 6d, 5f, 33, 91, c4);
        static broker b;
        lock_service *s = NULL;
        pthread_t thread;
        int fds[2];

        if (size > 512)
                return 0;

        b = (broker) { .data = data, .size = size };
        check(sd_event_new(&e) >= 0);
        check(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) >= 0);

        check(sd_bus_new(&client) >= 0);
        check(sd_bus_set_fd(client, fds[0], fds[0]) >= 0);
        check(sd_bus_set_bus_client(client, 1) >= 0);
        check(sd_bus_attach_event(client, e, 0) >= 0);

        check(sd_bus_new(&b.bus) >= 0);
        check(sd_bus_set_fd(b.bus, fds[1], fds[1]) >= 0);
        check(sd_bus_set_server(b.bus, 1, id) >= 0);
        check(sd_bus_add_filter(b.bus, NULL, broker_on_message, &b) >= 0);
        check(sd_bus_start(b.bus) >= 0);
        check(sd_bus_start(client) >= 0);

        check(pthread_create(&thread, NULL, broker_run, &b) == 0);

        /* Blocks until the broker thread has answered Hello. */
        {
                int r;

                /* Its wait for Hello is a ppoll() that libFuzzer's SIGALRM (-timeout) can
                 * interrupt; nothing was set up then, so it is asked again. */
                do
                        r = lock_service_new(&s, client, SERVICE_PATH, SERVICE_NAME, false);
                while (r == -EINTR);

                if (r < 0) {
                        fprintf(stderr, "lock_service_new: %s\n", strerror(-r));
                        abort();
                }
        }
        while (!atomic_load(&b.stop))
                (void) sd_event_run(e, 10 * 1000);
        s = lock_service_free(s);
        (void) sd_bus_flush(client);
        client = sd_bus_flush_close_unref(client);
        atomic_store(&b.freed, true);
        check(pthread_join(thread, NULL) == 0);

        /* A call whose caller has gone may go unanswered: there is nobody to answer. */
        for (size_t i = 0; i < b.n_calls; i++)
                if (b.n_replies[i] != 1 && !(b.n_replies[i] == 0 && b.gone[b.callers[i]])) {
                        fprintf(stderr, "call %zu (cookie %" PRIu64 ") got %u replies\n", i,
                                b.cookies[i], b.n_replies[i]);
                        abort();
                }

        b.bus = sd_bus_flush_close_unref(b.bus);
        return 0;
}

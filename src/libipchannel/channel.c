/* SPDX-License-Identifier: MIT */
/* The channel: a peer id claimed through a bus name, sends, broadcasts, listeners, reconnect. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <glib.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include "channel.h"
#include "glib-source.h"
#include "loop-timer.h"
#include "macro.h"
#include "message.h"
#include "names.h"
#include "payload.h"

/*
 * Connection states and their invariants:
 *
 *   IDLE ──connect()──▶ DISCOVERING ──▶ CLAIMING ──▶ CONNECTED
 *                            ▲              │  ▲          │
 *                            │              ▼  │          │ bus lost
 *                            │           WAITING          ▼
 *                            └────── reconnect timer ── LOST
 *
 * - DISCOVERING: the NameOwnerChanged match for the app's names is installed first, then the
 *   current owners are read (ListNames, GetNameOwner). Replies and signals are applied in the
 *   order they arrive, which is the order the broker produced them, so the map of peer id ⇄
 *   unique name is exact once the last reply is in. Only then are the broadcast matches added
 *   and a name claimed, so nothing addressed to us can arrive before we can name its sender.
 * - CLAIMING: RequestName for one id. Auto ids start at the lowest id nobody holds and step up
 *   on EXISTS; concurrent starters therefore end up with 1..N without gaps. An explicit id
 *   (set_peer_id, IPCHANNEL_PEER_ID, or the id held before the bus was lost) is never swapped
 *   for another: if it is taken we say so ("error", -EADDRINUSE) and wait in the bus's queue
 *   for it (WAITING).
 * - CONNECTED: peer_id != 0. Sends go out at once; before that they wait in ch->queue, in
 *   order, up to queue_max.
 * - LOST: the bus connection dropped. "disconnect" has fired; peer_id is 0 again and the id
 *   held is remembered for the reconnect, which retries with exponential backoff.
 */


#define RECONNECT_USEC_MIN (50 * 1000ULL)
#define RECONNECT_USEC_MAX (5 * 1000 * 1000ULL)

#define DBUS_NAME_FLAG_DO_NOT_QUEUE 4u
#define DBUS_REQUEST_NAME_REPLY_PRIMARY_OWNER 1u
#define DBUS_REQUEST_NAME_REPLY_IN_QUEUE 2u
#define DBUS_REQUEST_NAME_REPLY_EXISTS 3u
#define DBUS_REQUEST_NAME_REPLY_ALREADY_OWNER 4u

typedef enum {
        STATE_IDLE,
        STATE_DISCOVERING,
        STATE_CLAIMING,
        STATE_WAITING,
        STATE_CONNECTED,
        STATE_LOST,
} channel_state;

typedef struct pending_send pending_send;
struct pending_send {
        pending_send *next;
        uint32_t to;
        char *event;
        GVariant *data;         /* owned, may be NULL */
        GArray *fds;            /* int: the duplicates data's unix fds are; NULL if none */
};

struct ipchannel {
        unsigned n_ref;
        /* How many of those references the library itself holds (channel_hold()) while it
         * runs code that may call a handler: when they are all, the app has let go. */
        unsigned n_holds;
        pid_t pid;

        char *app;
        char *prefix;
        char *path;             /* /org/ipchannel/<app> */
        char *ns;               /* org.ipchannel.<app> */

        /* The loop: an sd-event loop, or a GLib main context, never both. */
        sd_event *event;
        int64_t priority;
        GMainContext *glib;
        GMainLoop *glib_loop;
        GSource *bus_source;
        int glib_exit_code;

        sd_bus *user_bus;       /* given by ipchannel_set_bus(); used while it is open */
        bool user_bus_used;
        bool user_bus_lost;     /* the channel was lost on it: never used again */
        sd_bus *bus;            /* the connection in use */
        char *address;          /* where to reconnect */
        sd_bus_slot *vtable_slot, *filter_slot, *noc_slot, *catchall_slot;
        sd_bus_slot *discover_slot, *claim_slot;
        GPtrArray *query_slots;         /* GetNameOwner calls in flight (sd_bus_slot *) */
        GHashTable *owner_queries;      /* their cookies (uint64_t *) → GUINT_TO_POINTER(id) */

        channel_state state;
        uint32_t want_id;       /* explicit id asked for, 0 = lowest free */
        uint32_t claim_id;      /* the id being claimed or held */
        uint32_t reclaim_id;    /* the id held before the bus was lost, 0 if none */
        uint32_t peer_id;       /* 0 until connected */
        char *unique_name;

        GHashTable *owner_by_id;        /* GUINT_TO_POINTER(id) → unique name */
        /* The other peers (id → unique name) when the bus was lost, or NULL: what came and
         * went meanwhile is told on "peer-leave"/"peer-join" at the reconnect. */
        GHashTable *peers_before;
        GHashTable *id_by_owner;        /* unique name → GUINT_TO_POINTER(id) */

        listeners listeners;
        size_t n_catchall;              /* listened events that no match rule can name */
        /* The bus refused a match rule (its limit of rules per connection: 512 on a stock
         * system bus): from then on, for the channel's life, broadcasts of every event come
         * through the catch-all rule alone and are filtered here. */
        bool matches_refused;

        pending_send *queue, *queue_tail;
        size_t n_queued, queue_max;
        size_t listener_max;

        /* Payloads: sent as a sealed memfd from this serialized size on (0: never); what this
         * peer accepts from others. */
        size_t memfd_threshold;
        uint64_t memfd_max;
        size_t values_max;
        size_t event_name_max;

        loop_timer reconnect_timer;
        uint64_t reconnect_usec;

        /* After connect, queued sends wait this long for their receivers to appear. */
        /* Sends made while the loop is busy (from a handler or callback) to one receiver with one
         * event are coalesced into one D-Bus message, sent when the batch is full or, from a
         * deferred event, before the loop next sleeps. A send that differs, or one made outside
         * the loop, sends the batch first: order is kept. */
        GPtrArray *batch;               /* GVariant * (sunk) */
        uint32_t batch_to;
        char *batch_event;
        size_t batch_bytes;
        sd_event_source *batch_defer;
        GSource *batch_glib;
        bool sent_alone;                /* GLib: a send of this loop iteration went out unbatched */
        /* Sends of batches that could not be sent (not for a disconnect: those wait for the
         * reconnect) and the error of the last: reported once on "error" by the deferred flush,
         * or by a disconnect or bus loss that comes first; never from inside the
         * ipchannel_send() whose send flushed them. */
        size_t batch_lost;
        int batch_lost_error;
        uint64_t alone_iteration;       /* sd-event: the same, as that iteration's number + 1 */
        char *dest;                     /* the bus name of peer dest_id */
        uint32_t dest_id;
        /* A Deliver to peer dest_id, made ready after the second send in a row to it has gone
         * out: the next send there (an answer, the next ping) then spends no time on the
         * message's header, about a fifth of what a send costs, between the arrival of what it
         * answers and its own going out. Not after a send to another peer than the one before,
         * so sends that take turns between peers build no message they throw away. NULL when
         * none is ready. */
        sd_bus_message *next_deliver;
        /* The type (no variant inside) of a payload that passed the checks, last: payloads of
         * that type pass too. */
        GVariantType *checked_type;

        lock_client *locks;             /* lock-client.c's state, once locks are used */
        uint64_t sync_timeout_usec;

        loop_timer flush_timer;
        uint64_t flush_wait_usec;
        bool flush_waited;
};

static void channel_teardown_bus(ipchannel *ch);
static int channel_open(ipchannel *ch);
static int channel_claim(ipchannel *ch);
static void channel_lost(ipchannel *ch);
static void channel_flush(ipchannel *ch);
static int channel_flush_batch(ipchannel *ch);
static void channel_requeue_batch(ipchannel *ch);
static void channel_report_batch_lost(ipchannel *ch);

/* ---- small helpers ---------------------------------------------------------------------- */

/* Every API call checks that it is not made from a forked child, and getpid() is a system call
 * (glibc stopped caching it): the pid is kept, and forgotten in a child forked by fork(). */
static pid_t pid_cached;

static void pid_forget(void) {
        __atomic_store_n(&pid_cached, 0, __ATOMIC_RELAXED);
}

static void pid_cache_init(void) {
        (void) pthread_atfork(NULL, NULL, pid_forget);
}

static pid_t self_pid(void) {
        static pthread_once_t once = PTHREAD_ONCE_INIT;
        pid_t pid;

        (void) pthread_once(&once, pid_cache_init);
        pid = __atomic_load_n(&pid_cached, __ATOMIC_RELAXED);
        if (pid == 0) {
                pid = getpid();
                __atomic_store_n(&pid_cached, pid, __ATOMIC_RELAXED);
        }
        return pid;
}

/* Takes data: a floating value, or a reference the caller hands over. */
static void emit_local(ipchannel *ch, uint32_t sender, const char *event, GVariant *data) {
        g_autoptr(GVariant) sunk = data ? g_variant_take_ref(data) : NULL;

        channel_hold(ch);
        listeners_dispatch(&ch->listeners, ch, sender, event, sunk);
        channel_release(ch);
}

void channel_emit_error(ipchannel *ch, int error, const char *fmt, ...) {
        g_autofree char *msg = NULL;
        va_list ap;

        va_start(ap, fmt);
        msg = g_strdup_vprintf(fmt, ap);
        va_end(ap);
        emit_local(ch, 0, IPCHANNEL_EVENT_ERROR, g_variant_new("(is)", error < 0 ? error : -error, msg));
}

static void pending_send_free(pending_send *p) {
        if (!p)
                return;
        free(p->event);
        if (p->data)
                g_variant_unref(p->data);
        if (p->fds) {
                for (guint i = 0; i < p->fds->len; i++)
                        close(g_array_index(p->fds, int, i));
                g_array_unref(p->fds);
        }
        free(p);
}

static void channel_queue_clear(ipchannel *ch) {
        while (ch->queue) {
                pending_send *p = ch->queue;
                ch->queue = p->next;
                pending_send_free(p);
        }
        ch->queue_tail = NULL;
        ch->n_queued = 0;
}

static void channel_map_clear(ipchannel *ch) {
        g_hash_table_remove_all(ch->owner_by_id);
        g_hash_table_remove_all(ch->id_by_owner);
}

static void channel_map_set(ipchannel *ch, uint32_t id, const char *owner) {
        const char *old = g_hash_table_lookup(ch->owner_by_id, GUINT_TO_POINTER(id));

        if (old) {
                gpointer v = g_hash_table_lookup(ch->id_by_owner, old);
                if (GPOINTER_TO_UINT(v) == id)
                        g_hash_table_remove(ch->id_by_owner, old);
                g_hash_table_remove(ch->owner_by_id, GUINT_TO_POINTER(id));
        }
        if (!owner || owner[0] == '\0')
                return;

        g_hash_table_insert(ch->owner_by_id, GUINT_TO_POINTER(id), g_strdup(owner));
        /* A connection owning several peer names is known by the lowest of them. */
        gpointer cur = g_hash_table_lookup(ch->id_by_owner, owner);
        if (!cur || GPOINTER_TO_UINT(cur) > id)
                g_hash_table_insert(ch->id_by_owner, g_strdup(owner), GUINT_TO_POINTER(id));
}

uint32_t channel_sender_id(ipchannel *ch, const char *unique_name) {
        if (!unique_name)
                return 0;
        return GPOINTER_TO_UINT(g_hash_table_lookup(ch->id_by_owner, unique_name));
}

static bool channel_peer_present(ipchannel *ch, uint32_t id) {
        return g_hash_table_contains(ch->owner_by_id, GUINT_TO_POINTER(id));
}

static void slot_unref_notify(void *slot) {
        sd_bus_slot_unref(slot);
}

/* Whether a send failed because the bus is going (sd-bus: -ENOTCONN once it knows, else the
 * write's -ECONNRESET): what it carried waits for the reconnect. */
static bool send_error_is_disconnect(int r) {
        return r == -ENOTCONN || r == -ECONNRESET;
}

static bool channel_usable(ipchannel *ch) {
        return ch && ch->n_ref > 0;
}

/* Every entry point from the loop that may run a handler (sd-bus callbacks, timers, the lock
 * client's dispatch, ipchannel_run()) holds the channel for as long as it uses it. A handler
 * may let go of the app's last reference: then the channel stays until the last hold ends,
 * and channel_let_go() tells the code holding it to do nothing more. */
ipchannel *channel_hold(ipchannel *ch) {
        ipchannel_ref(ch);
        ch->n_holds++;
        return ch;
}

void channel_release(ipchannel *ch) {
        ch->n_holds--;
        ipchannel_unref(ch);
}

bool channel_let_go(ipchannel *ch) {
        return ch->n_ref == ch->n_holds;
}

static void channel_releasep(ipchannel **ch) {
        if (*ch)
                channel_release(*ch);
}

/* ---- timers on either loop -------------------------------------------------------------- */

static void channel_reconnect_now(void *userdata) {
        ipchannel *ch = userdata;

        if (ch->state != STATE_LOST)
                return;
        if (channel_open(ch) < 0)
                channel_lost(ch);       /* still no bus: try again later, a little later each time */
}

static int channel_reconnect_schedule(ipchannel *ch) {
        uint64_t usec = ch->reconnect_usec;

        ch->reconnect_usec = MIN(MAX(usec * 2, RECONNECT_USEC_MIN), RECONNECT_USEC_MAX);
        /* Spread the peers out so they do not all knock at once after a broker restart. */
        usec += (uint64_t) g_random_int_range(0, (gint32) (usec / 4 + 1));
        return loop_timer_arm(&ch->reconnect_timer, ch->event, ch->glib, usec, channel_reconnect_now, ch);
}

/* ---- incoming messages ------------------------------------------------------------------ */

static void dispatch_payloads(ipchannel *ch, uint32_t sender, const char *event, GPtrArray *payloads) {
        if (payloads->len == 0) {
                emit_local(ch, sender, event, NULL);
                return;
        }
        /* A handler may let go of the app's last reference: the rest of a batch is dropped
         * then, and the channel goes only after the loop. */
        channel_hold(ch);
        for (guint i = 0; i < payloads->len && !channel_let_go(ch); i++)
                emit_local(ch, sender, event, g_variant_ref(g_ptr_array_index(payloads, i)));
        channel_release(ch);
}

static message_limits channel_limits(ipchannel *ch) {
        return (message_limits) {
                .event_name_max = ch->event_name_max,
                .values_max = ch->values_max,
                .memfd_max = ch->memfd_max,
        };
}

static int handle_deliver(sd_bus_message *m, ipchannel *ch, message_shape shape, sd_bus_error *error) {
        message_limits limits = channel_limits(ch);
        g_autoptr(GPtrArray) payloads = NULL;
        const char *event;
        uint32_t sender;
        int r;

        sender = channel_sender_id(ch, sd_bus_message_get_sender(m));
        if (sender == 0)
                return sd_bus_error_setf(error, IPCHANNEL_ERROR_NOT_A_PEER,
                                         "The sender does not own a peer name of the app \"%s\".",
                                         ch->app);

        r = message_read(m, shape, &limits, &event, &payloads, error);
        if (r < 0)
                return r;

        r = sd_bus_reply_method_return(m, NULL);
        if (r < 0)
                return r;

        dispatch_payloads(ch, sender, event, payloads);
        return 1;
}

static int method_deliver(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        return handle_deliver(m, userdata, MESSAGE_ONE, error);
}

static int method_deliver_null(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        return handle_deliver(m, userdata, MESSAGE_NULL, error);
}

static int method_deliver_batch(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        return handle_deliver(m, userdata, MESSAGE_BATCH, error);
}

static int method_deliver_memfd(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        return handle_deliver(m, userdata, MESSAGE_MEMFD, error);
}

static int property_get_peer_id(sd_bus *bus, const char *path, const char *interface,
                                const char *property, sd_bus_message *reply, void *userdata,
                                sd_bus_error *error) {
        ipchannel *ch = userdata;
        return sd_bus_message_append(reply, "u", ch->peer_id);
}

static int property_get_app(sd_bus *bus, const char *path, const char *interface,
                            const char *property, sd_bus_message *reply, void *userdata,
                            sd_bus_error *error) {
        ipchannel *ch = userdata;
        return sd_bus_message_append(reply, "s", ch->app);
}

/* Every method is callable by any connection the bus lets through: who may talk to whom is
 * the bus policy's call (units/), and the sender's identity is checked by its peer name. Without
 * SD_BUS_VTABLE_UNPRIVILEGED sd-bus would also ask the broker for each caller's uid, a round
 * trip per message, and refuse callers of another uid. */
static const sd_bus_vtable peer_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_METHOD_WITH_ARGS("Deliver", SD_BUS_ARGS("s", event, "v", data), SD_BUS_NO_RESULT,
                                method_deliver, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("DeliverNull", SD_BUS_ARGS("s", event), SD_BUS_NO_RESULT,
                                method_deliver_null, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("DeliverBatch", SD_BUS_ARGS("s", event, "g", element, "ay", batch),
                                SD_BUS_NO_RESULT,
                                method_deliver_batch, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("DeliverMemfd", SD_BUS_ARGS("s", event, "g", type, "h", data),
                                SD_BUS_NO_RESULT, method_deliver_memfd, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_SIGNAL_WITH_ARGS("Broadcast", SD_BUS_ARGS("s", event, "v", data), 0),
        SD_BUS_SIGNAL_WITH_ARGS("BroadcastNull", SD_BUS_ARGS("s", event), 0),
        SD_BUS_SIGNAL_WITH_ARGS("BroadcastBatch", SD_BUS_ARGS("s", event, "g", element, "ay", batch), 0),
        SD_BUS_SIGNAL_WITH_ARGS("BroadcastMemfd", SD_BUS_ARGS("s", event, "g", type, "h", data), 0),
        SD_BUS_PROPERTY("PeerId", "u", property_get_peer_id, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("App", "s", property_get_app, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_VTABLE_END,
};

static int handle_broadcast(sd_bus_message *m, ipchannel *ch, bool catchall) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autoptr(GPtrArray) payloads = NULL;
        message_limits limits = channel_limits(ch);
        const char *event;
        uint32_t sender;
        int shape, r;

        shape = message_shape_of(sd_bus_message_get_member(m), sd_bus_message_get_signature(m, true),
                                 true);
        if (shape < 0)
                return 0;

        /* Signals from connections that are not peers of the app are not ours to see. */
        sender = channel_sender_id(ch, sd_bus_message_get_sender(m));
        if (sender == 0)
                return 0;

        r = message_read(m, shape, &limits, &event, &payloads, &error);
        if (r < 0) {
                channel_emit_error(ch, r, "Dropped a broadcast from peer %" PRIu32 ": %s (%s)",
                                   sender, error.message, error.name);
                return 0;
        }
        /* The catch-all rule serves only events that have no rule of their own (all of them,
         * once the bus refused a rule). */
        if (catchall) {
                g_autofree char *rule = ch->matches_refused ? NULL : names_broadcast_match(ch->path, event);
                if (rule || !listeners_find(&ch->listeners, event))
                        return 0;
        }

        dispatch_payloads(ch, sender, event, payloads);
        return 0;
}

static int on_broadcast(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        return handle_broadcast(m, userdata, false);
}

static int on_broadcast_catchall(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        return handle_broadcast(m, userdata, true);
}

static void on_flush_timer(void *userdata) {
        ipchannel *ch = userdata;

        ch->flush_waited = true;
        channel_hold(ch);
        channel_flush(ch);
        channel_release(ch);
}

/* Sends what waited for the connection, in order. A message for a peer that is not (yet) on
 * the bus holds everything behind it, so no pair of peers sees its messages reordered, until
 * that peer appears or flush_wait_usec after connect; then it is reported as undeliverable. */
static void channel_flush(ipchannel *ch) {
        /* The caller holds the channel: an "error" handler may let go of the app's last
         * reference, and then nothing more is sent. */
        while (ch->queue && ch->state == STATE_CONNECTED && !channel_let_go(ch)) {
                pending_send *p = ch->queue;
                int r;

                if (p->to != IPCHANNEL_ALL && !channel_peer_present(ch, p->to) && !ch->flush_waited) {
                        if (!loop_timer_is_armed(&ch->flush_timer)) {
                                r = loop_timer_arm(&ch->flush_timer, ch->event, ch->glib,
                                                   ch->flush_wait_usec, on_flush_timer, ch);
                                if (r < 0)
                                        ch->flush_waited = true;
                        }
                        if (!ch->flush_waited)
                                return;
                }

                r = channel_send_now(ch, p->to, p->event, p->data, false);
                if (send_error_is_disconnect(r))
                        return;         /* the bus is going: keep it for the reconnect */

                ch->queue = p->next;
                if (!ch->queue)
                        ch->queue_tail = NULL;
                ch->n_queued--;
                if (r == -ENXIO)
                        channel_emit_error(ch, r, "A message queued for peer %" PRIu32
                                           " (event \"%s\") was not delivered: no such peer",
                                           p->to, p->event);
                else if (r < 0)
                        channel_emit_error(ch, r, "A queued message (event \"%s\") was not sent: %s",
                                           p->event, g_strerror(-r));
                pending_send_free(p);
        }
        if (!ch->queue)
                loop_timer_cancel(&ch->flush_timer);
}

static int compare_ids(gconstpointer a, gconstpointer b) {
        uint32_t x = *(const uint32_t *) a, y = *(const uint32_t *) b;

        return x < y ? -1 : x > y;
}

/* The ids of map whose owner other does not have (another owner, or none), but ch's own. */
static GArray *channel_peers_not_in(ipchannel *ch, GHashTable *map, GHashTable *other) {
        GArray *ids = g_array_new(FALSE, FALSE, sizeof(uint32_t));
        GHashTableIter i;
        gpointer id, owner;

        g_hash_table_iter_init(&i, map);
        while (g_hash_table_iter_next(&i, &id, &owner))
                if (GPOINTER_TO_UINT(id) != ch->peer_id &&
                    g_strcmp0(owner, g_hash_table_lookup(other, id)) != 0) {
                        uint32_t v = GPOINTER_TO_UINT(id);
                        g_array_append_val(ids, v);
                }
        g_array_sort(ids, compare_ids);
        return ids;
}

/* Back after a loss of the bus: the peers that went meanwhile (or came back on a new
 * connection) are told as having left, those that came as having joined, as if the channel
 * had seen it happen. A peer that comes back later is told on its own. The caller holds the
 * channel. */
static void channel_tell_peer_changes(ipchannel *ch) {
        g_autoptr(GHashTable) before = TAKE_PTR(ch->peers_before);
        g_autoptr(GArray) left = NULL, joined = NULL;

        if (!before)
                return;
        left = channel_peers_not_in(ch, before, ch->owner_by_id);
        joined = channel_peers_not_in(ch, ch->owner_by_id, before);
        for (guint i = 0; i < left->len; i++) {
                if (ch->state != STATE_CONNECTED || channel_let_go(ch))
                        return;
                emit_local(ch, g_array_index(left, uint32_t, i), IPCHANNEL_EVENT_PEER_LEAVE, NULL);
        }
        for (guint i = 0; i < joined->len; i++) {
                uint32_t id = g_array_index(joined, uint32_t, i);

                /* Still there: a handler may have run the loop, which told its going. */
                if (ch->state != STATE_CONNECTED || channel_let_go(ch))
                        return;
                if (channel_peer_present(ch, id))
                        emit_local(ch, id, IPCHANNEL_EVENT_PEER_JOIN, NULL);
        }
}

static void channel_become_connected(ipchannel *ch) {
        if (ch->state == STATE_CONNECTED)
                return;
        ch->state = STATE_CONNECTED;
        ch->peer_id = ch->claim_id;
        ch->reconnect_usec = 0;
        ch->claim_slot = sd_bus_slot_unref(ch->claim_slot);
        if (ch->unique_name)
                channel_map_set(ch, ch->peer_id, ch->unique_name);

        ch->flush_waited = false;
        channel_hold(ch);
        channel_flush(ch);

        if (ch->state == STATE_CONNECTED && !channel_let_go(ch)) {
                (void) sd_bus_emit_properties_changed(ch->bus, ch->path, IPCHANNEL_PEER_INTERFACE,
                                                      "PeerId", NULL);
                emit_local(ch, 0, IPCHANNEL_EVENT_CONNECT, NULL);
        }
        if (ch->state == STATE_CONNECTED && !channel_let_go(ch))
                channel_tell_peer_changes(ch);
        channel_release(ch);
}

static int on_name_owner_changed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        ipchannel *ch = userdata;
        const char *name, *old_owner, *new_owner;
        uint32_t id;
        int r;

        r = sd_bus_message_read(m, "sss", &name, &old_owner, &new_owner);
        if (r < 0)
                return 0;
        id = names_parse_peer(ch->prefix, ch->app, name);
        if (id == 0)
                return 0;

        channel_map_set(ch, id, new_owner);

        if (id == ch->claim_id && ch->unique_name) {
                if (g_strcmp0(new_owner, ch->unique_name) == 0 &&
                    (ch->state == STATE_CLAIMING || ch->state == STATE_WAITING)) {
                        channel_become_connected(ch);
                        return 0;
                }
                if (g_strcmp0(old_owner, ch->unique_name) == 0 && ch->state == STATE_CONNECTED) {
                        /* Nobody may take our name (we never allow replacement); if the bus
                         * took it anyway, wait in its queue to get it back. */
                        ch->state = STATE_CLAIMING;
                        ch->peer_id = 0;
                        /* The "error" handler may let go of the app's last reference. */
                        channel_hold(ch);
                        channel_emit_error(ch, -EADDRINUSE, "The bus took the name of peer %" PRIu32
                                           " away; claiming it again", id);
                        if (!channel_let_go(ch))
                                (void) channel_claim(ch);
                        channel_release(ch);
                        return 0;
                }
        }

        if (ch->state == STATE_CONNECTED && id != ch->peer_id) {
                channel_hold(ch);
                if (old_owner[0] != '\0')
                        emit_local(ch, id, IPCHANNEL_EVENT_PEER_LEAVE, NULL);
                if (new_owner[0] != '\0' && !channel_let_go(ch)) {
                        if (ch->queue)
                                channel_flush(ch);
                        if (!channel_let_go(ch))
                                emit_local(ch, id, IPCHANNEL_EVENT_PEER_JOIN, NULL);
                }
                channel_release(ch);
        }
        return 0;
}

/* Deliver* calls are answered here, ahead of sd-bus's match rules and object table, which
 * would cost about 3,000 instructions per call (callgrind; a ping-pong responder spends about
 * 33,000 per round trip). A call that leaves the interface out is taken too (D-Bus allows
 * that; sd-bus's object table would answer UnknownMethod). One with the wrong signature goes
 * on to the object table, which answers InvalidArgs (UnknownMethod if it also leaves the
 * interface out). sd-bus runs the newest filter first: filters an app added to its own
 * connection before ipchannel_connect() do not see these calls. */
static int on_filter(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        ipchannel *ch = userdata;
        const char *interface, *path;
        uint8_t type;
        int shape;

        if (sd_bus_message_get_type(m, &type) < 0)
                return 0;
        if (type == SD_BUS_MESSAGE_METHOD_CALL) {
                interface = sd_bus_message_get_interface(m);
                path = sd_bus_message_get_path(m);
                if (!path || strcmp(path, ch->path) != 0 ||
                    (interface && strcmp(interface, IPCHANNEL_PEER_INTERFACE) != 0))
                        return 0;
                shape = message_shape_of(sd_bus_message_get_member(m), sd_bus_message_get_signature(m, true),
                                         false);
                if (shape < 0)
                        return 0;
                return handle_deliver(m, ch, shape, ret_error);
        }
        if (type == SD_BUS_MESSAGE_SIGNAL && sd_bus_message_is_signal(m, "org.freedesktop.DBus.Local", "Disconnected"))
                channel_lost(ch);
        return 0;
}

static void on_glib_bus_error(int error, void *userdata) {
        channel_lost(userdata);
}

/* ---- claiming a peer id ----------------------------------------------------------------- */

static uint32_t channel_lowest_free_id(ipchannel *ch, uint32_t from) {
        uint32_t id = from;

        while (id < IPCHANNEL_ALL - 1 && channel_peer_present(ch, id))
                id++;
        return id;
}

static int on_request_name_reply(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error) {
        ipchannel *ch = userdata;
        const sd_bus_error *e;
        uint32_t ret;
        int r;

        ch->claim_slot = sd_bus_slot_unref(ch->claim_slot);
        if (ch->state != STATE_CLAIMING)
                return 0;

        e = sd_bus_message_get_error(reply);
        if (e) {
                r = -sd_bus_message_get_errno(reply);
                channel_emit_error(ch, r ?: -EIO, "Cannot claim peer id %" PRIu32 ": %s",
                                   ch->claim_id, e->message ?: e->name);
                return 0;
        }
        r = sd_bus_message_read(reply, "u", &ret);
        if (r < 0) {
                channel_emit_error(ch, r, "Cannot read the reply to RequestName");
                return 0;
        }

        switch (ret) {
        case DBUS_REQUEST_NAME_REPLY_PRIMARY_OWNER:
        case DBUS_REQUEST_NAME_REPLY_ALREADY_OWNER:
                channel_become_connected(ch);
                break;
        case DBUS_REQUEST_NAME_REPLY_IN_QUEUE:
                ch->state = STATE_WAITING;
                channel_emit_error(ch, -EADDRINUSE,
                                   "Peer id %" PRIu32 " is held by another process; waiting for it",
                                   ch->claim_id);
                break;
        case DBUS_REQUEST_NAME_REPLY_EXISTS:
                /* Someone was quicker: take the next id nobody holds. */
                ch->claim_id = channel_lowest_free_id(ch, ch->claim_id + 1);
                r = channel_claim(ch);
                if (r < 0)
                        channel_emit_error(ch, r, "Cannot claim a peer id: %s", g_strerror(-r));
                break;
        default:
                channel_emit_error(ch, -EPROTO, "Unexpected reply %" PRIu32 " to RequestName", ret);
        }
        return 0;
}

static int channel_claim(ipchannel *ch) {
        g_autofree char *name = names_peer(ch->prefix, ch->app, ch->claim_id);
        bool exact = ch->want_id != 0 || ch->reclaim_id != 0;

        if (!name)
                return -ENOMEM;
        ch->state = STATE_CLAIMING;
        ch->claim_slot = sd_bus_slot_unref(ch->claim_slot);
        return sd_bus_call_method_async(ch->bus, &ch->claim_slot, "org.freedesktop.DBus",
                                        "/org/freedesktop/DBus", "org.freedesktop.DBus",
                                        "RequestName", on_request_name_reply, ch, "su", name,
                                        exact ? 0u : DBUS_NAME_FLAG_DO_NOT_QUEUE);
}

/* ---- discovery -------------------------------------------------------------------------- */

static int on_match_installed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error);

static int channel_add_catchall_match(ipchannel *ch) {
        g_autofree char *all = NULL;

        if (ch->catchall_slot)
                return 0;
        all = names_broadcast_match_all(ch->path);
        if (!all)
                return -ENOMEM;
        return sd_bus_add_match_async(ch->bus, &ch->catchall_slot, all, on_broadcast_catchall,
                                      on_match_installed, ch);
}

/* The bus refused a rule: every event's own rule goes, and the catch-all rule serves them all
 * (the rules are removed before it is added, so it finds room). Reported once. */
static void channel_fall_back_to_catchall(ipchannel *ch, const sd_bus_error *error, int r) {
        int q;

        ch->matches_refused = true;
        /* The catch-all rule too, if there was one: it may be the rule refused, or be refused
         * on its way; added anew, it reaches the bus after the rules' removals. Slots dropped
         * here are not told of their AddMatch's reply: only the new rule's refusal is. */
        for (listener_event *ev = ch->listeners.events; ev; ev = ev->next)
                ev->match = sd_bus_slot_unref(ev->match);
        ch->catchall_slot = sd_bus_slot_unref(ch->catchall_slot);
        q = channel_add_catchall_match(ch);
        if (q < 0)
                channel_emit_error(ch, q, "The bus refused a match rule (%s: %s), and no broadcast can "
                                   "be listened to: %s", error->name, error->message, g_strerror(-q));
        else
                channel_emit_error(ch, r, "The bus refused a match rule (%s: %s): broadcasts of every "
                                   "event now come through one rule for the app and are filtered here",
                                   error->name, error->message);
}

/* The reply to AddMatch. Without this callback sd-bus closes the connection when the bus
 * refuses a rule, and every reconnect would add the same rules and fail alike. */
static int on_match_installed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        ipchannel *ch = userdata;
        const sd_bus_error *error = sd_bus_message_get_error(m);
        int r = sd_bus_message_get_errno(m);

        if (!error)
                return 0;
        /* An "error" handler may let go of the app's last reference. */
        _unused_ _cleanup_(channel_releasep) ipchannel *hold = channel_hold(ch);
        if (r <= 0)
                r = EIO;
        if (!ch->matches_refused)
                channel_fall_back_to_catchall(ch, error, -r);
        else
                /* Even the one rule left, added after the others were removed, was refused. */
                channel_emit_error(ch, -r, "The bus refused the match rule for the app's broadcasts "
                                   "(%s: %s): none will arrive", error->name, error->message);
        return 0;
}

static int channel_add_event_match(ipchannel *ch, listener_event *ev) {
        g_autofree char *rule = NULL;
        sd_bus_slot *slot = NULL;
        int r;

        if (ch->matches_refused)
                return channel_add_catchall_match(ch);
        rule = names_broadcast_match(ch->path, ev->name);
        if (!rule) {
                /* No rule can name this event: fall back to the catch-all rule. */
                if (ch->n_catchall++ == 0)
                        return channel_add_catchall_match(ch);
                return 0;
        }
        r = sd_bus_add_match_async(ch->bus, &slot, rule, on_broadcast, on_match_installed, ch);
        if (r < 0)
                return r;
        ev->match = slot;
        return 0;
}

static void channel_drop_event_match(ipchannel *ch, listener_event *ev) {
        g_autofree char *rule = NULL;

        if (ch->matches_refused)
                return;         /* the catch-all rule stays */
        rule = names_broadcast_match(ch->path, ev->name);
        if (!rule) {
                if (ch->n_catchall > 0 && --ch->n_catchall == 0)
                        ch->catchall_slot = sd_bus_slot_unref(ch->catchall_slot);
                return;
        }
        ev->match = sd_bus_slot_unref(ev->match);
}

/* Keeps the bus's match rules in step with the events someone listens to (a peer with no
 * listener for an event is not even woken by its broadcasts). */
static void on_listeners_change(listener_event *ev, bool added, void *userdata) {
        ipchannel *ch = userdata;
        int r;

        if (names_event_is_local(ev->name))
                return;
        if (!ch->bus || ch->state == STATE_LOST || ch->state == STATE_DISCOVERING)
                return; /* the matches are added when discovery completes */
        if (added) {
                r = channel_add_event_match(ch, ev);
                if (r < 0)
                        channel_emit_error(ch, r, "Cannot listen to broadcasts of \"%s\": %s",
                                           ev->name, g_strerror(-r));
        } else
                channel_drop_event_match(ch, ev);
}

static void channel_discovery_done(ipchannel *ch) {
        /* An "error" handler may let go of the app's last reference: then nothing more is done. */
        _unused_ _cleanup_(channel_releasep) ipchannel *hold = channel_hold(ch);
        const char *u = NULL;
        int r;

        ch->discover_slot = sd_bus_slot_unref(ch->discover_slot);
        g_ptr_array_set_size(ch->query_slots, 0);
        if (sd_bus_get_unique_name(ch->bus, &u) >= 0) {
                free(ch->unique_name);
                ch->unique_name = strdup(u);
        }

        ch->n_catchall = 0;
        for (listener_event *ev = ch->listeners.events; ev; ev = ev->next)
                if (ev->n_slots > 0 && !names_event_is_local(ev->name)) {
                        r = channel_add_event_match(ch, ev);
                        if (r < 0)
                                channel_emit_error(ch, r, "Cannot listen to broadcasts of \"%s\": %s",
                                                   ev->name, g_strerror(-r));
                }
        if (channel_let_go(ch))
                return;

        if (ch->reclaim_id != 0)
                ch->claim_id = ch->reclaim_id;  /* reconnecting: take our id back */
        else if (ch->want_id != 0)
                ch->claim_id = ch->want_id;
        else
                ch->claim_id = channel_lowest_free_id(ch, 1);

        r = channel_claim(ch);
        if (r < 0)
                channel_emit_error(ch, r, "Cannot claim a peer id: %s", g_strerror(-r));
}

static int on_owner_query_reply(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error) {
        ipchannel *ch = userdata;
        const char *owner = NULL;
        uint64_t cookie = 0;
        gpointer id;

        if (ch->state != STATE_DISCOVERING || sd_bus_message_get_reply_cookie(reply, &cookie) < 0 ||
            !g_hash_table_lookup_extended(ch->owner_queries, &cookie, NULL, &id))
                return 0;
        g_hash_table_remove(ch->owner_queries, &cookie);

        /* An error means the name went away meanwhile; its NameOwnerChanged came first. */
        if (!sd_bus_message_is_method_error(reply, NULL) && sd_bus_message_read(reply, "s", &owner) >= 0)
                channel_map_set(ch, GPOINTER_TO_UINT(id), owner);
        if (g_hash_table_size(ch->owner_queries) == 0)
                channel_discovery_done(ch);
        return 0;
}

static int channel_query_owner(ipchannel *ch, const char *name, uint32_t id) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        sd_bus_slot *slot = NULL;
        uint64_t cookie;
        int r;

        r = sd_bus_message_new_method_call(ch->bus, &m, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                           "org.freedesktop.DBus", "GetNameOwner");
        if (r < 0)
                return r;
        r = sd_bus_message_append(m, "s", name);
        if (r < 0)
                return r;
        r = sd_bus_call_async(ch->bus, &slot, m, on_owner_query_reply, ch, 0);
        if (r < 0)
                return r;
        g_ptr_array_add(ch->query_slots, slot);
        r = sd_bus_message_get_cookie(m, &cookie);
        if (r < 0)
                return r;
        g_hash_table_insert(ch->owner_queries, g_memdup2(&cookie, sizeof(cookie)), GUINT_TO_POINTER(id));
        return 0;
}

static int on_list_names_reply(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error) {
        ipchannel *ch = userdata;
        const char *name;
        int r;

        if (ch->state != STATE_DISCOVERING)
                return 0;
        if (sd_bus_message_is_method_error(reply, NULL)) {
                channel_emit_error(ch, -sd_bus_message_get_errno(reply) ?: -EIO,
                                   "Cannot list the bus's names: %s",
                                   sd_bus_message_get_error(reply)->message);
                return 0;
        }

        r = sd_bus_message_enter_container(reply, 'a', "s");
        if (r < 0)
                goto fail;
        while ((r = sd_bus_message_read_basic(reply, 's', &name)) > 0) {
                uint32_t id = names_parse_peer(ch->prefix, ch->app, name);

                if (id == 0)
                        continue;
                r = channel_query_owner(ch, name, id);
                if (r < 0)
                        goto fail;
        }
        if (r < 0)
                goto fail;
        if (g_hash_table_size(ch->owner_queries) == 0)
                channel_discovery_done(ch);
        return 0;

fail:
        channel_emit_error(ch, r, "Cannot read the bus's names: %s", g_strerror(-r));
        return 0;
}

/* ---- the bus connection ----------------------------------------------------------------- */

/* Where the channel connects: the caller's bus's address, else the user bus when
 * DBUS_SESSION_BUS_ADDRESS is set, else the system bus. Reconnects go to the same place. */
int channel_resolve_address(ipchannel *ch, const char **ret) {
        const char *a = NULL;

        if (!ch->address) {
                if (ch->user_bus)
                        (void) sd_bus_get_address(ch->user_bus, &a);
                if (!a || a[0] == '\0')
                        a = getenv("DBUS_SESSION_BUS_ADDRESS");
                if (!a || a[0] == '\0')
                        a = getenv("DBUS_SYSTEM_BUS_ADDRESS");
                if (!a || a[0] == '\0')
                        a = "unix:path=/run/dbus/system_bus_socket";
                ch->address = strdup(a);
                if (!ch->address)
                        return -ENOMEM;
        }
        *ret = ch->address;
        return 0;
}

static int channel_open_bus(ipchannel *ch, sd_bus **ret) {
        _cleanup_(sd_bus_unrefp) sd_bus *bus = NULL;
        const char *address;
        int r;

        r = channel_resolve_address(ch, &address);
        if (r < 0)
                return r;

        if (ch->user_bus && !ch->user_bus_lost && (!ch->user_bus_used || sd_bus_is_open(ch->user_bus) > 0)) {
                /* The caller's connection, while it is open (a connect after
                 * ipchannel_disconnect() takes it again); reconnects after a loss on it make
                 * our own, to its address. */
                ch->user_bus_used = true;
                *ret = sd_bus_ref(ch->user_bus);
                return 0;
        }

        r = sd_bus_new(&bus);
        if (r < 0)
                return r;
        r = sd_bus_set_address(bus, address);
        if (r < 0)
                return r;
        r = sd_bus_set_bus_client(bus, true);
        if (r < 0)
                return r;
        r = sd_bus_negotiate_fds(bus, true);
        if (r < 0)
                return r;
        (void) sd_bus_set_description(bus, "ipchannel");
        r = sd_bus_start(bus);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(bus);
        return 0;
}

static void channel_teardown_bus(ipchannel *ch) {
        if (!ch->bus)
                return;

        /* What was accepted goes out if it still can; else it waits in the queue. */
        if (sd_bus_is_open(ch->bus) > 0)
                (void) channel_flush_batch(ch);
        channel_requeue_batch(ch);
        ch->next_deliver = sd_bus_message_unref(ch->next_deliver);
        ch->batch_defer = sd_event_source_disable_unref(ch->batch_defer);
        if (ch->batch_glib) {
                g_source_destroy(ch->batch_glib);
                ch->batch_glib = (g_source_unref(ch->batch_glib), NULL);
        }
        ch->sent_alone = false;
        ch->alone_iteration = 0;

        for (listener_event *ev = ch->listeners.events; ev; ev = ev->next)
                ev->match = sd_bus_slot_unref(ev->match);
        ch->catchall_slot = sd_bus_slot_unref(ch->catchall_slot);
        ch->n_catchall = 0;
        ch->vtable_slot = sd_bus_slot_unref(ch->vtable_slot);
        ch->filter_slot = sd_bus_slot_unref(ch->filter_slot);
        ch->noc_slot = sd_bus_slot_unref(ch->noc_slot);
        ch->discover_slot = sd_bus_slot_unref(ch->discover_slot);
        ch->claim_slot = sd_bus_slot_unref(ch->claim_slot);
        g_ptr_array_set_size(ch->query_slots, 0);
        g_hash_table_remove_all(ch->owner_queries);

        if (ch->bus_source) {
                g_source_destroy(ch->bus_source);
                ch->bus_source = (g_source_unref(ch->bus_source), NULL);
        }

        if (ch->bus == ch->user_bus) {
                /* Not ours to close: give the name back and leave the connection be. */
                if (ch->state == STATE_CONNECTED || ch->state == STATE_WAITING ||
                    ch->state == STATE_CLAIMING) {
                        g_autofree char *name = names_peer(ch->prefix, ch->app, ch->claim_id);
                        if (name && sd_bus_is_open(ch->bus) > 0)
                                (void) sd_bus_call_method_async(ch->bus, NULL, "org.freedesktop.DBus",
                                                                "/org/freedesktop/DBus",
                                                                "org.freedesktop.DBus", "ReleaseName",
                                                                NULL, NULL, "s", name);
                }
                ch->bus = sd_bus_unref(ch->bus);
        } else {
                (void) sd_bus_detach_event(ch->bus);
                /* What was sent before the close still goes out. */
                ch->bus = sd_bus_flush_close_unref(ch->bus);
        }

        channel_map_clear(ch);
        ch->unique_name = (free(ch->unique_name), NULL);
}

static int channel_open(ipchannel *ch) {
        g_autofree char *noc = NULL;
        int r;

        r = channel_open_bus(ch, &ch->bus);
        if (r < 0)
                return r;

        if (ch->glib) {
                ch->bus_source = glib_bus_source_new(ch->bus, on_glib_bus_error, ch);
                g_source_attach(ch->bus_source, ch->glib);
        } else if (!sd_bus_get_event(ch->bus)) {
                r = sd_bus_attach_event(ch->bus, ch->event, ch->priority);
                if (r < 0)
                        goto fail;
        } else if (sd_bus_get_event(ch->bus) != ch->event) {
                r = -EBUSY;     /* the caller's bus runs on another loop */
                goto fail;
        }

        ch->state = STATE_DISCOVERING;

        r = sd_bus_add_filter(ch->bus, &ch->filter_slot, on_filter, ch);
        if (r < 0)
                goto fail;
        r = sd_bus_add_object_vtable(ch->bus, &ch->vtable_slot, ch->path, IPCHANNEL_PEER_INTERFACE,
                                     peer_vtable, ch);
        if (r < 0)
                goto fail;

        noc = names_owner_changed_match(ch->ns, true);
        if (!noc) {
                r = -ENOMEM;
                goto fail;
        }
        r = sd_bus_add_match_async(ch->bus, &ch->noc_slot, noc, on_name_owner_changed, NULL, ch);
        if (r < 0)
                goto fail;

        r = sd_bus_call_method_async(ch->bus, &ch->discover_slot, "org.freedesktop.DBus",
                                     "/org/freedesktop/DBus", "org.freedesktop.DBus", "ListNames",
                                     on_list_names_reply, ch, NULL);
        if (r < 0)
                goto fail;
        return 0;

fail:
        channel_teardown_bus(ch);
        ch->state = STATE_LOST;
        return r;
}

/* The bus connection is gone (or could not be made): tell the app, then retry with backoff. */
static void channel_lost(ipchannel *ch) {
        bool was_connected;
        int r;

        if (ch->state == STATE_IDLE ||
            (ch->state == STATE_LOST && !ch->bus && loop_timer_is_armed(&ch->reconnect_timer)))
                return;

        was_connected = ch->state == STATE_CONNECTED;
        if (ch->bus && ch->bus == ch->user_bus)
                ch->user_bus_lost = true;
        if (was_connected) {
                ch->reclaim_id = ch->peer_id;
                /* What the app knows of the other peers, to tell it what changed meanwhile. */
                g_clear_pointer(&ch->peers_before, g_hash_table_unref);
                ch->peers_before = g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL, g_free);
                GHashTableIter i;
                gpointer id, owner;
                g_hash_table_iter_init(&i, ch->owner_by_id);
                while (g_hash_table_iter_next(&i, &id, &owner))
                        if (GPOINTER_TO_UINT(id) != ch->peer_id)
                                g_hash_table_insert(ch->peers_before, id, g_strdup(owner));
        }
        ch->state = STATE_LOST;
        ch->peer_id = 0;
        loop_timer_cancel(&ch->flush_timer);
        channel_requeue_batch(ch);
        channel_teardown_bus(ch);

        /* An "error" handler may let go of the app's last reference, or disconnect. A loss the
         * deferred flush would have reported (it went with the bus) is reported here, once the
         * reconnect is scheduled. */
        channel_hold(ch);
        r = channel_reconnect_schedule(ch);
        if (r < 0)
                channel_emit_error(ch, r, "Cannot schedule a reconnect: %s", g_strerror(-r));
        if (!channel_let_go(ch))
                channel_report_batch_lost(ch);
        if (was_connected && ch->state == STATE_LOST && !channel_let_go(ch))
                emit_local(ch, 0, IPCHANNEL_EVENT_DISCONNECT, NULL);
        channel_release(ch);
}

/* ---- sending ---------------------------------------------------------------------------- */

/* Whether data goes as a sealed memfd: large enough, a bus that passes fds, and no fds of the
 * app's inside (those must be duplicated into the message, which only the inline form does). */
static bool channel_wants_memfd(ipchannel *ch, GVariant *data) {
        return data && ch->memfd_threshold > 0 && g_variant_get_size(data) >= ch->memfd_threshold &&
               sd_bus_can_send(ch->bus, 'h') > 0 && !payload_has_handles(data);
}

static int channel_new_deliver(ipchannel *ch, const char *member, sd_bus_message **ret) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        int r;

        r = sd_bus_message_new_method_call(ch->bus, &m, ch->dest, ch->path, IPCHANNEL_PEER_INTERFACE,
                                           member);
        if (r < 0)
                return r;
        /* No reply: the bus's per-connection limit on pending replies would turn a burst of
         * sends into errors. Whether the peer exists is checked before. */
        r = sd_bus_message_set_expect_reply(m, false);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(m);
        return 0;
}

typedef enum send_flags {
        SEND_MEMFD = 1 << 0,    /* the lone payload goes in a sealed memfd (…Memfd) */
        SEND_BUILT = 1 << 1,    /* it was handed over floating: most likely just built */
        SEND_PACKED = 1 << 2,   /* the payloads go packed (…Batch), even a lone one */
} send_flags;

/* Builds and queues one D-Bus message: n_data 0 (…Null), 1, a batch (…Batch), or one payload
 * in a sealed memfd (…Memfd). */
static int channel_send_message_full(ipchannel *ch, uint32_t to, const char *event,
                                     GVariant *const *data, size_t n_data, send_flags flags) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        _cleanup_(closep) int fd = -1;
        bool same_peer = false;         /* a targeted send to the peer of the one before */
        bool memfd = flags & SEND_MEMFD, packed = n_data > 1 || (flags & SEND_PACKED);
        const char *member;
        int r;

        /* No memfd to be had (out of fds or memory, no memfd_create()): the message can
         * still carry the payload itself. */
        if (memfd && payload_memfd_new(data[0], &fd) < 0)
                memfd = false;

        if (to == IPCHANNEL_ALL) {
                member = memfd ? "BroadcastMemfd"
                         : n_data == 0 ? "BroadcastNull"
                         : !packed ? "Broadcast"
                                   : "BroadcastBatch";
                r = sd_bus_message_new_signal(ch->bus, &m, ch->path, IPCHANNEL_PEER_INTERFACE, member);
        } else {
                /* The last receiver's name is kept: sends mostly go to one peer after another. */
                same_peer = to == ch->dest_id && ch->dest;
                if (!same_peer) {
                        ch->next_deliver = sd_bus_message_unref(ch->next_deliver);
                        free(ch->dest);
                        ch->dest = names_peer(ch->prefix, ch->app, to);
                        if (!ch->dest)
                                return -ENOMEM;
                        ch->dest_id = to;
                }
                member = memfd ? "DeliverMemfd"
                         : n_data == 0 ? "DeliverNull"
                         : !packed ? "Deliver"
                                   : "DeliverBatch";
                if (!memfd && n_data == 1 && !packed && ch->next_deliver) {
                        m = TAKE_PTR(ch->next_deliver);
                        r = 0;
                } else
                        r = channel_new_deliver(ch, member, &m);
        }
        if (r < 0)
                return r;

        r = sd_bus_message_append_basic(m, 's', event);
        if (r < 0)
                return r;
        if (memfd) {
                /* The message keeps a duplicate of fd. */
                r = sd_bus_message_append(m, "gh", g_variant_get_type_string(data[0]), fd);
                if (r < 0)
                        return r;
                n_data = 0;
        }
        if (packed)
                r = payload_append_packed(m, data, n_data);
        else if (n_data == 1) {
                /* Its type was checked by channel_send(). */
                r = payload_append_checked_variant(m, data[0], flags & SEND_BUILT);
                /* sd-bus refuses some values GLib allows (strings holding Unicode
                 * noncharacters, which D-Bus allows too; signature values D-Bus does not, such
                 * as "()"): those go packed, as a batch of one, which the receiver reads with
                 * GLib. */
                if (r == -EINVAL && payload_packs_faithfully(data[0]))
                        return channel_send_message_full(ch, to, event, data, 1, SEND_PACKED);
        }
        if (r < 0)
                return r;
        r = sd_bus_send(ch->bus, m, NULL);
        if (r < 0)
                return r;
        /* The next Deliver to this peer is made ready now, while the message just sent is on
         * its way. Without one, that send makes its own. */
        if (same_peer && !ch->next_deliver)
                (void) channel_new_deliver(ch, "Deliver", &ch->next_deliver);
        return 0;
}

static int channel_send_message(ipchannel *ch, uint32_t to, const char *event, GVariant *const *data,
                                size_t n_data) {
        bool memfd = n_data == 1 && channel_wants_memfd(ch, data[0]);

        return channel_send_message_full(ch, to, event, data, n_data, memfd ? SEND_MEMFD : 0);
}

/* The bus went before the batch did: its sends wait for the reconnect, ahead of the rest. */
static void channel_requeue_batch(ipchannel *ch) {
        for (guint i = ch->batch->len; i > 0; i--) {
                pending_send *p = malloc(sizeof(*p));

                if (!p)
                        break;
                *p = (pending_send) {
                        .next = ch->queue,
                        .to = ch->batch_to,
                        .event = strdup(ch->batch_event),
                        .data = g_variant_ref(g_ptr_array_index(ch->batch, i - 1)),
                };
                if (!p->event) {
                        pending_send_free(p);
                        break;
                }
                ch->queue = p;
                if (!ch->queue_tail)
                        ch->queue_tail = p;
                ch->n_queued++;
        }
        g_ptr_array_set_size(ch->batch, 0);
        ch->batch_bytes = 0;
        ch->batch_event = (free(ch->batch_event), NULL);
}

static int channel_flush_batch(ipchannel *ch) {
        int r;

        if (!ch->batch || ch->batch->len == 0)
                return 0;
        r = channel_send_message(ch, ch->batch_to, ch->batch_event, (GVariant *const *) ch->batch->pdata,
                                 ch->batch->len);
        /* The bus is going: the batch stays, and channel_lost() puts it ahead of the queue. */
        if (send_error_is_disconnect(r))
                return r;
        if (r < 0) {
                ch->batch_lost += ch->batch->len;
                ch->batch_lost_error = r;
        }
        g_ptr_array_set_size(ch->batch, 0);
        ch->batch_bytes = 0;
        ch->batch_event = (free(ch->batch_event), NULL);
        return r;
}

static void channel_flush_batch_deferred(ipchannel *ch);

void channel_flush_sends(ipchannel *ch) {
        if (ch->bus && ch->state == STATE_CONNECTED)
                channel_flush_batch_deferred(ch);
}

/* Reports the sends of batches that could not be sent, once. The "error" handler may let go of
 * the app's last reference: callers use nothing of the channel after, or hold it. */
static void channel_report_batch_lost(ipchannel *ch) {
        size_t lost = ch->batch_lost;

        if (lost == 0)
                return;
        ch->batch_lost = 0;
        channel_emit_error(ch, ch->batch_lost_error, "%zu batched message%s could not be sent: %s", lost,
                           lost == 1 ? "" : "s", g_strerror(-ch->batch_lost_error));
}

static void channel_flush_batch_deferred(ipchannel *ch) {
        (void) channel_flush_batch(ch);
        ch->sent_alone = false;
        channel_report_batch_lost(ch);
}

static int on_batch_defer(sd_event_source *s, void *userdata) {
        ipchannel *ch = userdata;

        (void) sd_event_source_set_enabled(ch->batch_defer, SD_EVENT_OFF);
        channel_flush_batch_deferred(ch);
        return 0;
}

static gboolean batch_glib_prepare(GSource *source, gint *timeout) {
        *timeout = 0;
        return TRUE;
}

static gboolean batch_glib_dispatch(GSource *source, GSourceFunc callback, gpointer userdata) {
        return callback(userdata);
}

static GSourceFuncs batch_glib_funcs = {
        .prepare = batch_glib_prepare,
        .dispatch = batch_glib_dispatch,
};

static gboolean on_batch_glib(gpointer userdata) {
        ipchannel *ch = userdata;

        g_source_unref(ch->batch_glib);
        ch->batch_glib = NULL;
        channel_flush_batch_deferred(ch);
        return G_SOURCE_REMOVE;
}

/* Runs the batch flush once the current callback is done and before the loop sleeps: a defer
 * source on sd-event (at the bus's priority, so it cannot starve behind incoming traffic; a
 * post source would wait for some other source to fire first), an always-ready source on
 * GLib. */
static int channel_arm_batch_flush(ipchannel *ch) {
        int r;

        if (ch->glib) {
                if (ch->batch_glib)
                        return 0;
                ch->batch_glib = g_source_new(&batch_glib_funcs, sizeof(GSource));
                g_source_set_callback(ch->batch_glib, on_batch_glib, ch, NULL);
                g_source_attach(ch->batch_glib, ch->glib);
                return 0;
        }
        if (!ch->batch_defer) {
                r = sd_event_add_defer(ch->event, &ch->batch_defer, on_batch_defer, ch);
                if (r < 0)
                        return r;
                (void) sd_event_source_set_priority(ch->batch_defer, ch->priority);
        }
        return sd_event_source_set_enabled(ch->batch_defer, SD_EVENT_ONESHOT);
}

/* Inside a callback of the channel's loop, whose iteration ends soon: a batch will go out. */
static bool channel_in_dispatch(ipchannel *ch) {
        if (ch->glib)
                return g_main_depth() > 0 && g_main_context_is_owner(ch->glib);
        return ch->event && sd_event_get_state(ch->event) == SD_EVENT_RUNNING;
}

static bool channel_sent_alone(ipchannel *ch) {
        uint64_t iteration;

        if (ch->glib)
                return ch->sent_alone;
        return sd_event_get_iteration(ch->event, &iteration) >= 0 && ch->alone_iteration == iteration + 1;
}

/* sd-event numbers its iterations, so nothing has to run when the next one begins; GLib does
 * not, and the batch source clears the flag. */
static void channel_mark_sent_alone(ipchannel *ch) {
        uint64_t iteration;

        if (ch->glib) {
                if (channel_arm_batch_flush(ch) >= 0)
                        ch->sent_alone = true;
        } else if (sd_event_get_iteration(ch->event, &iteration) >= 0)
                ch->alone_iteration = iteration + 1;
}

#define BATCH_MAX PAYLOAD_BATCH_MAX
#define BATCH_BYTES_MAX (64 * 1024)

int channel_send_now(ipchannel *ch, uint32_t to, const char *event, GVariant *data, bool built) {
        bool batchable, memfd;
        size_t size;
        int r;

        if (to != IPCHANNEL_ALL && !channel_peer_present(ch, to))
                return -ENXIO;

        /* Sends made from a callback of the loop wait in a batch for the end of the iteration;
         * a memfd payload, one holding fds (which cannot be packed) or one as large as a whole
         * batch goes alone, after the batch. A batch stays within BATCH_BYTES_MAX: one that a
         * payload would take past it goes first, so a batch never nears the bus's message size
         * limit that its payloads alone keep to. */
        memfd = channel_wants_memfd(ch, data);
        size = data ? g_variant_get_size(data) : 0;
        batchable = data && !memfd && size < BATCH_BYTES_MAX && channel_in_dispatch(ch) &&
                    !payload_has_handles(data);
        /* A batch that fails for another reason than a disconnect is the deferred flush's to
         * report, which is armed while there is a batch: not this send's failure. */
        if (ch->batch->len > 0 && (!batchable || to != ch->batch_to || strcmp(event, ch->batch_event) != 0 ||
                                   ch->batch_bytes + size > BATCH_BYTES_MAX)) {
                r = channel_flush_batch(ch);
                if (send_error_is_disconnect(r))
                        return r;
        }
        if (!batchable)
                return channel_send_message_full(ch, to, event, &data, data ? 1 : 0,
                                                 (memfd ? SEND_MEMFD : 0) | (built ? SEND_BUILT : 0));

        /* The first send of an iteration goes at once, so a lone message (a reply, a
         * ping-pong) waits for nothing; those after it in the same iteration are batched. */
        if (ch->batch->len == 0 && !channel_sent_alone(ch)) {
                channel_mark_sent_alone(ch);
                return channel_send_message_full(ch, to, event, &data, 1, built ? SEND_BUILT : 0);
        }

        if (ch->batch->len == 0) {
                ch->batch_to = to;
                ch->batch_event = strdup(event);
                if (!ch->batch_event)
                        return -ENOMEM;
                r = channel_arm_batch_flush(ch);
                if (r < 0) {
                        ch->batch_event = (free(ch->batch_event), NULL);
                        return channel_send_message(ch, to, event, &data, 1);
                }
        }
        g_ptr_array_add(ch->batch, g_variant_ref(data));
        ch->batch_bytes += size;
        /* This send is in the batch: kept for the reconnect if the bus is going, reported on
         * "error" with the rest if it fails otherwise. */
        if (ch->batch->len >= BATCH_MAX || ch->batch_bytes >= BATCH_BYTES_MAX)
                (void) channel_flush_batch(ch);
        return 0;
}

/* data: borrowed, not floating; built: it was handed over floating (channel_send_now()). */
static int channel_send(ipchannel *ch, uint32_t to, const char *event, GVariant *data,
                        bool built) {
        const char *reason;
        pending_send *p;
        int r;

        assert_return(to != 0, -EINVAL);
        r = names_check_event_max(event, ch->event_name_max, &reason);
        if (r < 0)
                return r;
        assert_return(!names_event_is_local(event), -EINVAL);
        if (data && !(ch->checked_type && g_variant_type_equal(g_variant_get_type(data), ch->checked_type))) {
                r = payload_check_value(data, &reason);
                if (r < 0)
                        return r;
                /* A type holding "v" says nothing of what the variants hold: not kept. */
                if (!strchr(g_variant_get_type_string(data), 'v')) {
                        if (ch->checked_type)
                                g_variant_type_free(ch->checked_type);
                        ch->checked_type = g_variant_type_copy(g_variant_get_type(data));
                }
        }

        if (ch->state == STATE_CONNECTED && !ch->queue) {
                r = channel_send_now(ch, to, event, data, built);
                if (!send_error_is_disconnect(r))
                        return r;
                /* The bus is going: this send waits for the reconnect, behind the batch. */
        }

        if (ch->n_queued >= ch->queue_max)
                return -ENOBUFS;
        p = malloc(sizeof(*p));
        if (!p)
                return -ENOMEM;
        *p = (pending_send) {
                .to = to,
                .event = strdup(event),
        };
        if (!p->event) {
                pending_send_free(p);
                return -ENOMEM;
        }
        /* The caller keeps its fds (sd-bus duplicates them when the message is built): a
         * send that waits duplicates them now, so that it sends the files it was given even if
         * the caller closes its fds and their numbers are reused meanwhile. */
        if (data && payload_has_handles(data)) {
                p->fds = g_array_new(FALSE, FALSE, sizeof(int));
                r = payload_dup_handles(data, p->fds, &p->data);
                if (r < 0) {
                        pending_send_free(p);
                        return r;
                }
        } else if (data)
                p->data = g_variant_ref(data);
        if (ch->queue_tail)
                ch->queue_tail->next = p;
        else
                ch->queue = p;
        ch->queue_tail = p;
        ch->n_queued++;
        return 0;
}

/* ---- public API ------------------------------------------------------------------------- */

#define assert_channel(ch)                                       \
        do {                                                     \
                assert_return(channel_usable(ch), -EINVAL);      \
                assert_return((ch)->pid == self_pid(), -ECHILD);   \
        } while (0)

_public_ int ipchannel_check_app_name(const char *app, const char **ret_reason) {
        return names_check_app(app, ret_reason);
}

_public_ int ipchannel_new(ipchannel **ret, const char *app) {
        ipchannel *ch;
        const char *prefix = IPCHANNEL_PREFIX_DEFAULT;
        int r;

        assert_return(ret, -EINVAL);
        r = names_check_app(app, NULL);
        if (r < 0)
                return r;

        ch = calloc(1, sizeof(*ch));
        if (!ch)
                return -ENOMEM;
        *ch = (ipchannel) {
                .n_ref = 1,
                .pid = self_pid(),
                .app = strdup(app),
                .prefix = strdup(prefix),
                .path = names_path(prefix, app),
                .ns = names_peer_namespace(prefix, app),
                .owner_by_id = g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL, g_free),
                .id_by_owner = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL),
                .query_slots = g_ptr_array_new_with_free_func(slot_unref_notify),
                .owner_queries = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free, NULL),
                .queue_max = IPCHANNEL_QUEUE_MAX_DEFAULT,
                .listener_max = IPCHANNEL_LISTENER_MAX_DEFAULT,
                .memfd_threshold = IPCHANNEL_MEMFD_THRESHOLD_DEFAULT,
                .memfd_max = IPCHANNEL_MEMFD_MAX_DEFAULT,
                .values_max = IPCHANNEL_VALUES_MAX_DEFAULT,
                .event_name_max = IPCHANNEL_EVENT_NAME_MAX,
                .batch = g_ptr_array_new_with_free_func((GDestroyNotify) g_variant_unref),
                .flush_wait_usec = IPCHANNEL_FLUSH_WAIT_USEC_DEFAULT,
                .sync_timeout_usec = IPCHANNEL_SYNC_TIMEOUT_USEC_DEFAULT,
        };
        listeners_init(&ch->listeners, on_listeners_change, ch);
        if (!ch->app || !ch->prefix || !ch->path || !ch->ns) {
                ipchannel_unref(ch);
                return -ENOMEM;
        }

        /* The environment gives the id; ipchannel_set_peer_id() may still override it. */
        const char *e = getenv("IPCHANNEL_PEER_ID");
        if (e && e[0]) {
                char *end;
                unsigned long v;

                errno = 0;
                v = strtoul(e, &end, 10);
                if (errno != 0 || *end != '\0' || v == 0 || v >= IPCHANNEL_ALL || e[0] == '-') {
                        ipchannel_unref(ch);
                        return -EINVAL;
                }
                ch->want_id = (uint32_t) v;
        }

        *ret = ch;
        return 0;
}

_public_ ipchannel *ipchannel_ref(ipchannel *ch) {
        if (ch)
                ch->n_ref++;
        return ch;
}

static void channel_free(ipchannel *ch) {
        lock_client_free(ch);
        loop_timer_cancel(&ch->reconnect_timer);
        loop_timer_cancel(&ch->flush_timer);
        channel_teardown_bus(ch);
        listeners_clear(&ch->listeners);
        channel_queue_clear(ch);

        if (ch->glib_loop)
                g_main_loop_unref(ch->glib_loop);
        if (ch->glib)
                g_main_context_unref(ch->glib);
        sd_event_unref(ch->event);
        sd_bus_unref(ch->user_bus);
        g_hash_table_unref(ch->owner_by_id);
        g_clear_pointer(&ch->peers_before, g_hash_table_unref);
        g_hash_table_unref(ch->id_by_owner);
        g_ptr_array_unref(ch->query_slots);
        g_hash_table_unref(ch->owner_queries);
        g_ptr_array_unref(ch->batch);
        free(ch->batch_event);
        free(ch->dest);
        if (ch->checked_type)
                g_variant_type_free(ch->checked_type);
        free(ch->address);
        free(ch->unique_name);
        free(ch->app);
        free(ch->prefix);
        free(ch->path);
        free(ch->ns);
        free(ch);
}

_public_ ipchannel *ipchannel_unref(ipchannel *ch) {
        if (!ch)
                return NULL;
        if (--ch->n_ref > 0)
                return NULL;
        channel_free(ch);
        return NULL;
}

_public_ int ipchannel_set_bus(ipchannel *ch, sd_bus *bus) {
        assert_channel(ch);
        assert_return(bus, -EINVAL);
        assert_return(ch->state == STATE_IDLE, -EBUSY);

        sd_bus_unref(ch->user_bus);
        ch->user_bus = sd_bus_ref(bus);
        ch->user_bus_used = false;
        free(ch->address);
        ch->address = NULL;
        return 0;
}

_public_ int ipchannel_set_peer_id(ipchannel *ch, uint32_t id) {
        assert_channel(ch);
        assert_return(id != 0 && id != IPCHANNEL_ALL, -EINVAL);
        assert_return(ch->state == STATE_IDLE, -EBUSY);

        ch->want_id = id;
        return 0;
}

_public_ int ipchannel_set_queue_max(ipchannel *ch, size_t n) {
        assert_channel(ch);
        assert_return(n > 0, -EINVAL);

        ch->queue_max = n;
        return 0;
}

_public_ int ipchannel_set_listener_max(ipchannel *ch, size_t n) {
        assert_channel(ch);
        assert_return(n > 0, -EINVAL);

        ch->listener_max = n;
        return 0;
}

_public_ int ipchannel_set_memfd_threshold(ipchannel *ch, size_t bytes) {
        assert_channel(ch);

        ch->memfd_threshold = bytes;
        return 0;
}

_public_ int ipchannel_set_memfd_max(ipchannel *ch, uint64_t bytes) {
        assert_channel(ch);
        assert_return(bytes > 0, -EINVAL);

        ch->memfd_max = bytes;
        return 0;
}

_public_ int ipchannel_set_values_max(ipchannel *ch, size_t n) {
        assert_channel(ch);
        assert_return(n > 0, -EINVAL);

        ch->values_max = n;
        return 0;
}

_public_ int ipchannel_set_event_name_max(ipchannel *ch, size_t bytes) {
        assert_channel(ch);
        assert_return(bytes > 0 && bytes <= IPCHANNEL_EVENT_NAME_MAX_LIMIT, -EINVAL);

        ch->event_name_max = bytes;
        return 0;
}

_public_ int ipchannel_set_flush_wait(ipchannel *ch, uint64_t usec) {
        assert_channel(ch);

        ch->flush_wait_usec = usec;
        return 0;
}

_public_ int ipchannel_attach_event(ipchannel *ch, sd_event *e, int64_t priority) {
        int r;

        assert_channel(ch);
        assert_return(!ch->event && !ch->glib, -EBUSY);
        assert_return(ch->state == STATE_IDLE, -EBUSY);

        if (e)
                ch->event = sd_event_ref(e);
        else {
                r = sd_event_default(&ch->event);
                if (r < 0)
                        return r;
        }
        ch->priority = priority;
        return 0;
}

_public_ int ipchannel_attach_glib(ipchannel *ch, GMainContext *ctx) {
        assert_channel(ch);
        assert_return(!ch->event && !ch->glib, -EBUSY);
        assert_return(ch->state == STATE_IDLE, -EBUSY);

        ch->glib = g_main_context_ref(ctx ?: g_main_context_default());
        return 0;
}

_public_ int ipchannel_connect(ipchannel *ch) {
        int r;

        assert_channel(ch);
        assert_return(ch->state == STATE_IDLE, -EALREADY);

        if (!ch->event && !ch->glib) {
                if (ch->user_bus && sd_bus_get_event(ch->user_bus))
                        ch->event = sd_event_ref(sd_bus_get_event(ch->user_bus));
                else {
                        r = sd_event_default(&ch->event);
                        if (r < 0)
                                return r;
                }
        }
        if (ch->glib && ch->user_bus && sd_bus_get_event(ch->user_bus))
                return -EBUSY;

        ch->reclaim_id = 0;
        ch->reconnect_usec = 0;
        r = channel_open(ch);
        if (r < 0) {
                ch->state = STATE_IDLE;
                return r;
        }
        /* Every channel queues for the lock service name, to host it when its turn comes. */
        r = lock_client_start(ch);
        if (r < 0)
                channel_emit_error(ch, r, "Cannot start the lock agent: %s", g_strerror(-r));
        return 0;
}

_public_ int ipchannel_disconnect(ipchannel *ch) {
        assert_channel(ch);

        if (ch->state == STATE_IDLE)
                return 0;
        loop_timer_cancel(&ch->reconnect_timer);
        loop_timer_cancel(&ch->flush_timer);
        channel_teardown_bus(ch);
        ch->state = STATE_IDLE;
        ch->peer_id = 0;
        ch->reclaim_id = 0;
        /* A connect after this starts afresh. */
        g_clear_pointer(&ch->peers_before, g_hash_table_unref);
        /* Last: the "error" handler may let go of the channel. */
        channel_report_batch_lost(ch);
        return 1;
}

_public_ int ipchannel_is_connected(ipchannel *ch) {
        return channel_usable(ch) && ch->state == STATE_CONNECTED;
}

_public_ uint32_t ipchannel_get_peer_id(ipchannel *ch) {
        return channel_usable(ch) ? ch->peer_id : 0;
}

lock_client **channel_lock_client(ipchannel *ch) {
        return &ch->locks;
}

GMainContext *channel_glib(ipchannel *ch) {
        return ch->glib;
}

const char *channel_prefix(ipchannel *ch) {
        return ch->prefix;
}

uint64_t channel_sync_timeout(ipchannel *ch) {
        return ch->sync_timeout_usec;
}

bool channel_check(ipchannel *ch) {
        return channel_usable(ch) && ch->pid == self_pid();
}

_public_ int ipchannel_set_sync_timeout(ipchannel *ch, uint64_t usec) {
        assert_channel(ch);

        ch->sync_timeout_usec = usec;
        return 0;
}

_public_ const char *ipchannel_get_app(ipchannel *ch) {
        return channel_usable(ch) ? ch->app : NULL;
}

_public_ sd_bus *ipchannel_get_bus(ipchannel *ch) {
        return channel_usable(ch) ? ch->bus : NULL;
}

_public_ sd_event *ipchannel_get_event(ipchannel *ch) {
        return channel_usable(ch) ? ch->event : NULL;
}

_public_ int ipchannel_has_peer(ipchannel *ch, uint32_t id) {
        assert_channel(ch);
        assert_return(ch->state == STATE_CONNECTED, -ENOTCONN);
        return channel_peer_present(ch, id);
}

_public_ int ipchannel_run(ipchannel *ch) {
        int r;

        assert_channel(ch);

        /* A handler may let go of the app's last reference while the loop runs. */
        channel_hold(ch);
        if (ch->glib) {
                if (!ch->glib_loop)
                        ch->glib_loop = g_main_loop_new(ch->glib, FALSE);
                ch->glib_exit_code = 0;
                g_main_loop_run(ch->glib_loop);
                r = ch->glib_exit_code;
        } else {
                if (!ch->event) {
                        r = sd_event_default(&ch->event);
                        if (r < 0) {
                                channel_release(ch);
                                return r;
                        }
                }
                r = sd_event_loop(ch->event);
        }
        /* The loop will not run the deferred flush any more: send what handlers left. */
        channel_flush_sends(ch);
        channel_release(ch);
        return r;
}

_public_ int ipchannel_exit(ipchannel *ch, int code) {
        assert_channel(ch);

        if (ch->glib) {
                if (!ch->glib_loop)
                        return -ENOTCONN;
                ch->glib_exit_code = code;
                g_main_loop_quit(ch->glib_loop);
                return 0;
        }
        assert_return(ch->event, -ENOTCONN);
        return sd_event_exit(ch->event, code);
}

static int channel_listen(ipchannel *ch, const char *event, ipchannel_handler_t handler,
                          void *userdata, bool once, ipchannel_slot **ret_slot) {
        int r;

        assert_channel(ch);
        assert_return(handler, -EINVAL);
        r = names_check_event_max(event, ch->event_name_max, NULL);
        if (r < 0)
                return r;
        /* Each listened event is a match rule at the broker, which limits them per connection. */
        if (ch->listeners.n_listeners >= ch->listener_max)
                return -ENOBUFS;
        return listeners_add(&ch->listeners, ch, event, handler, userdata, once, ret_slot);
}

_public_ int ipchannel_on(ipchannel *ch, const char *event, ipchannel_handler_t handler,
                          void *userdata, ipchannel_slot **ret_slot) {
        return channel_listen(ch, event, handler, userdata, false, ret_slot);
}

_public_ int ipchannel_once(ipchannel *ch, const char *event, ipchannel_handler_t handler,
                            void *userdata, ipchannel_slot **ret_slot) {
        return channel_listen(ch, event, handler, userdata, true, ret_slot);
}

_public_ int ipchannel_send(ipchannel *ch, uint32_t to, GVariant *data) {
        return ipchannel_emit(ch, to, IPCHANNEL_EVENT_MESSAGE, data);
}

_public_ int ipchannel_emit(ipchannel *ch, uint32_t to, const char *event, GVariant *data) {
        /* A floating value was most likely just built, as a tree of GVariants: walked as one
         * when the send goes at once, rather than serialized first. */
        bool built = data && g_variant_is_floating(data);
        /* Sunk first: a floating value handed over is consumed even when it is refused. */
        g_autoptr(GVariant) sunk = data ? g_variant_ref_sink(data) : NULL;

        assert_channel(ch);
        return channel_send(ch, to, event, sunk, built);
}

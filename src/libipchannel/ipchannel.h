/* SPDX-License-Identifier: MIT */
/* ipchannel: a message channel and cluster-wide locks for the processes of one app, over D-Bus. */
#pragma once

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>

#include <glib.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ipchannel ipchannel;
typedef struct ipchannel_slot ipchannel_slot;
typedef struct ipchannel_lock ipchannel_lock;

/* The seed's to("all"): every peer of the app, the sender included. */
#define IPCHANNEL_ALL UINT32_MAX

/* Local events: fired by the library in this process only; a peer can never send them. */
#define IPCHANNEL_EVENT_MESSAGE "message"       /* the event of ipchannel_send() */
#define IPCHANNEL_EVENT_CONNECT "connect"       /* the channel owns its peer name */
#define IPCHANNEL_EVENT_DISCONNECT "disconnect" /* the bus connection was lost */
#define IPCHANNEL_EVENT_ERROR "error"           /* data is (is): negative errno, message */
#define IPCHANNEL_EVENT_PEER_JOIN "peer-join"   /* sender is the id of a peer that appeared */
#define IPCHANNEL_EVENT_PEER_LEAVE "peer-leave" /* sender is the id of a peer that went away */

/* Longest event name, in bytes, by default (ipchannel_set_event_name_max() changes it). */
#define IPCHANNEL_EVENT_NAME_MAX 255

/* sender: peer id (>= 1) for peer messages; 0 for local events ("connect", ...), except
 * "peer-join"/"peer-leave", where it is the peer concerned.
 * data: borrowed; g_variant_ref() it to keep it. NULL when the sender sent NULL, and for
 * local events that carry nothing. A "h" (unix fd) value inside data is an fd number that
 * stays valid only while the handler runs: dup() it to keep it. */
typedef void (*ipchannel_handler_t)(ipchannel *ch, uint32_t sender, const char *event,
                                    GVariant *data, void *userdata);

/* Returns 0 if app can name an application (a D-Bus bus-name element:
 * [A-Za-z_][A-Za-z0-9_]*, at most IPCHANNEL_APP_NAME_MAX bytes), else -EINVAL and, when
 * ret_reason is not NULL, a static string saying why. */
#define IPCHANNEL_APP_NAME_MAX 200
int  ipchannel_check_app_name(const char *app, const char **ret_reason);

int  ipchannel_new(ipchannel **ret, const char *app);
ipchannel *ipchannel_ref(ipchannel *ch);
ipchannel *ipchannel_unref(ipchannel *ch);          /* NULL-safe, returns NULL */

/* Optional, before connect. The channel answers Deliver calls from a filter of its own, which
 * sd-bus runs before filters the app added to bus earlier: those do not see these calls. */
int  ipchannel_set_bus(ipchannel *ch, sd_bus *bus);
int  ipchannel_set_peer_id(ipchannel *ch, uint32_t id);     /* optional, before connect */
int  ipchannel_attach_event(ipchannel *ch, sd_event *e, int64_t priority);
int  ipchannel_attach_glib(ipchannel *ch, GMainContext *ctx);
int  ipchannel_connect(ipchannel *ch);      /* returns at once; "connect" fires when ready */
int  ipchannel_disconnect(ipchannel *ch);
int  ipchannel_is_connected(ipchannel *ch); /* 1 / 0 */
uint32_t ipchannel_get_peer_id(ipchannel *ch); /* 0 until connected */
int  ipchannel_run(ipchannel *ch);          /* run the attached/default loop until exit */
int  ipchannel_exit(ipchannel *ch, int code);

int  ipchannel_on(ipchannel *ch, const char *event, ipchannel_handler_t handler,
                  void *userdata, ipchannel_slot **ret_slot);
int  ipchannel_once(ipchannel *ch, const char *event, ipchannel_handler_t handler,
                    void *userdata, ipchannel_slot **ret_slot);
ipchannel_slot *ipchannel_slot_unref(ipchannel_slot *slot);  /* removes the listener */

int  ipchannel_send(ipchannel *ch, uint32_t to, GVariant *data);            /* event "message" */
int  ipchannel_emit(ipchannel *ch, uint32_t to, const char *event, GVariant *data);
/* data may be floating (sunk) or NULL (no arguments). Sends made at any time before
 * "connect" (also before ipchannel_connect()) are queued and flushed in order. Sends made from
 * handlers of the loop, after the first send of that loop iteration, are coalesced and go out
 * before the loop sleeps; a batch the bus connection then refuses is reported on "error". */

/* synchronize: body runs while this process holds `lock` cluster-wide, in FIFO order;
 * it calls ipchannel_lock_release() when its (possibly asynchronous) work is done. */
typedef void (*ipchannel_sync_body_t)(ipchannel_lock *lock, void *userdata);
typedef void (*ipchannel_sync_done_t)(ipchannel *ch, int error, void *userdata);
int  ipchannel_synchronize(ipchannel *ch, const char *lock, ipchannel_sync_body_t body,
                           ipchannel_sync_done_t done, void *userdata);
int  ipchannel_lock_release(ipchannel_lock *lock, int error);
uint64_t ipchannel_lock_get_token(ipchannel_lock *lock);     /* fencing token */
int  ipchannel_set_sync_timeout(ipchannel *ch, uint64_t usec); /* default 5 s; 0 = none */
#define IPCHANNEL_SYNC_TIMEOUT_USEC_DEFAULT (5 * 1000 * 1000ULL)

/* Blocking form for simple programs and worker threads: runs the channel's loop until the
 * lock is granted or timeout_usec passes (it may be called right after ipchannel_connect(),
 * before "connect" has fired). Release with ipchannel_lock_release(). 
 * Called from a thread other than the one that runs the channel's loop, it waits without
 * touching the loop. timeout_usec UINT64_MAX waits for ever. Errors: -ETIMEDOUT, -EBUSY
 * (called from a handler or callback of the channel's own loop), -ECANCELED (a handler run
 * while it waited let go of the app's last reference to ch: the channel is gone), -EACCES
 * (the lock service does not serve this uid), -ENOBUFS (a limit of the lock service),
 * -EINVAL. */
int  ipchannel_lock_acquire(ipchannel *ch, const char *lock, uint64_t timeout_usec,
                            ipchannel_lock **ret);

/* Extensions beyond the contract above. */

/* The app name, the bus in use (NULL before connect), the sd-event loop in use (NULL when
 * attached to GLib or before a loop is chosen). Borrowed. */
const char *ipchannel_get_app(ipchannel *ch);
sd_bus *ipchannel_get_bus(ipchannel *ch);
sd_event *ipchannel_get_event(ipchannel *ch);

/* 1 if a peer with this id is on the bus (as far as this channel has seen), 0 if not,
 * -ENOTCONN before "connect". */
int  ipchannel_has_peer(ipchannel *ch, uint32_t id);

/* Most sends kept while not connected (default IPCHANNEL_QUEUE_MAX_DEFAULT); past it a send
 * returns -ENOBUFS. */
#define IPCHANNEL_QUEUE_MAX_DEFAULT 65536u
int  ipchannel_set_queue_max(ipchannel *ch, size_t n);

/* Most listeners a channel may have (default IPCHANNEL_LISTENER_MAX_DEFAULT); past it
 * ipchannel_on()/ipchannel_once() return -ENOBUFS. */
#define IPCHANNEL_LISTENER_MAX_DEFAULT 4096u
int  ipchannel_set_listener_max(ipchannel *ch, size_t n);

/* After "connect", sends queued for a peer that is not on the bus yet wait up to this long
 * for it (default IPCHANNEL_FLUSH_WAIT_USEC_DEFAULT), holding back the sends queued after
 * them so that order is kept; then they are reported on "error" as undeliverable. This lets
 * peers that start, or come back after a bus restart, at slightly different times reach
 * each other. 0: report at once; UINT64_MAX: wait for ever. */
#define IPCHANNEL_FLUSH_WAIT_USEC_DEFAULT (2 * 1000 * 1000ULL)
int  ipchannel_set_flush_wait(ipchannel *ch, uint64_t usec);

/* Payloads whose serialized size (g_variant_get_size()) is at least this many bytes travel as
 * a sealed memfd passed as a unix fd, which the receiver reads (up to 4 MiB) or maps without a
 * copy (default IPCHANNEL_MEMFD_THRESHOLD_DEFAULT; 0: never). Smaller ones, payloads holding
 * unix fds ("h"), and all payloads on a bus connection that cannot pass fds travel inline, in
 * the message. */
#define IPCHANNEL_MEMFD_THRESHOLD_DEFAULT (128u * 1024)
int  ipchannel_set_memfd_threshold(ipchannel *ch, size_t bytes);

/* The largest memfd payload this peer accepts (default IPCHANNEL_MEMFD_MAX_DEFAULT); a larger
 * one is refused with org.freedesktop.DBus.Error.LimitsExceeded (a broadcast: dropped, and
 * reported on "error" with -EFBIG). Inline payloads are bounded by the bus's message size. */
#define IPCHANNEL_MEMFD_MAX_DEFAULT (256ULL * 1024 * 1024)
int  ipchannel_set_memfd_max(ipchannel *ch, uint64_t bytes);

/* The most values this peer decodes from one received message (each basic value, container
 * and variant; an array of a fixed-size type counts once), and the most payloads in one batch
 * (a batch arrives as GVariant bytes: each payload is a view on them, not decoded per value),
 * but never fewer than the 256 a sender packs in one; default IPCHANNEL_VALUES_MAX_DEFAULT;
 * past it org.freedesktop.DBus.Error.LimitsExceeded (a broadcast: dropped, "error" with
 * -ENOBUFS). Batched and memfd payloads are not decoded up front, but the values walked inside
 * them to check what their variants hold (only where the type has a "v") count against the
 * same limit, each payload of a batch on its own: a batch is taken when each of its payloads
 * would be taken alone. */
#define IPCHANNEL_VALUES_MAX_DEFAULT (1024u * 1024)
int  ipchannel_set_values_max(ipchannel *ch, size_t n);

/* The longest event name this channel sends, listens to and accepts (default
 * IPCHANNEL_EVENT_NAME_MAX), at most IPCHANNEL_EVENT_NAME_MAX_LIMIT: a listened event is a
 * match rule arg0='EVENT' at the broker, and dbus-daemon refuses rules over 1024 bytes (512
 * leaves room for the longest app's path). A longer name: -EINVAL from send/emit/on/once;
 * from the bus org.ipchannel.Error.InvalidEvent. */
#define IPCHANNEL_EVENT_NAME_MAX_LIMIT 512u
int  ipchannel_set_event_name_max(ipchannel *ch, size_t bytes);

/* Limits of the lock service while this process's lock agent hosts it (no effect while
 * ipchannel-lockd or another process hosts it): locks held or awaited per bus connection, and
 * waiters per lock; past them a caller gets org.ipchannel.Error.LimitsExceeded (a lock call of
 * this library: -ENOBUFS). 0 restores a default (IPCHANNEL_LOCKS_PER_CONNECTION_DEFAULT,
 * IPCHANNEL_WAITERS_PER_LOCK_DEFAULT). Any time: before connect, or later, when it applies at
 * once to a service hosted here (to later requests; nothing is evicted). Starts the lock agent. */
#define IPCHANNEL_LOCKS_PER_CONNECTION_DEFAULT 1024u
#define IPCHANNEL_WAITERS_PER_LOCK_DEFAULT 65536u
int  ipchannel_set_lock_limits(ipchannel *ch, uint32_t max_locks_per_connection,
                               uint32_t max_waiters_per_lock);

ipchannel_slot *ipchannel_slot_ref(ipchannel_slot *slot);

static inline void ipchannel_unrefp(ipchannel **ch) {
        if (*ch)
                ipchannel_unref(*ch);
}
static inline void ipchannel_slot_unrefp(ipchannel_slot **slot) {
        if (*slot)
                ipchannel_slot_unref(*slot);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC(ipchannel, ipchannel_unref)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(ipchannel_slot, ipchannel_slot_unref)

#ifdef __cplusplus
}
#endif

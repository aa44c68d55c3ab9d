/* SPDX-License-Identifier: MIT */
/* The lock agent: a library-owned thread per channel that talks to the lock service. */
#pragma once

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "ipchannel.h"

typedef struct lock_agent lock_agent;
typedef struct lock_op lock_op;

typedef enum {
        OP_SUBMIT,
        OP_RELEASE,
        OP_CANCEL,
        _OP_MAX,
} lock_op_kind;

/* A request's message to the agent. Each request carries one of each kind, so handing one
 * over never allocates (and so never fails). */
struct lock_op {
        lock_op *next;
        lock_op_kind kind;
        ipchannel_lock *lock;
        bool posted;
};

typedef enum {
        LOCK_NEW,               /* not yet submitted */
        LOCK_WAITING,           /* Acquire sent, no grant yet */
        LOCK_HELD,              /* granted: token is valid */
        LOCK_EXPIRED,           /* granted, then the lease ran out or the grant was lost */
        LOCK_FAILED,            /* never granted: error says why */
        LOCK_RELEASED,          /* released by its holder */
} lock_state;

/* One request for a lock, from ipchannel_synchronize() or ipchannel_lock_acquire(); it is the
 * public ipchannel_lock. Shared by the app's thread and the agent's: the fields marked
 * "agent lock" change only under the agent's mutex. It holds a reference on the agent, not on
 * the channel, so a worker thread can drop it without touching the channel's count. */
struct ipchannel_lock {
        unsigned n_ref;                 /* agent lock: the app's, the agent's, notifications' */
        lock_agent *agent;
        char *name;
        uint64_t lease_usec;

        lock_state state;               /* agent lock */
        uint64_t token;                 /* agent lock */
        int error;                      /* agent lock: why FAILED or EXPIRED */
        bool notified;                  /* agent lock: on the app's notification list */
        bool cancelled;                 /* agent lock: the app gave up waiting */
        bool done_pending;              /* agent lock: "done" waits for the app's loop */
        bool counted;                   /* agent lock: in the agent's count of local waits */
        uint64_t release_token;         /* agent lock: the agent sends Release for this grant */
        int done_error;
        lock_op ops[_OP_MAX];           /* agent lock */

        /* Agent thread only. */
        void *call_slot;                /* sd_bus_slot * of the Acquire call in flight */
        char *sent_to;                  /* the host the Acquire in flight went to */
        bool on_list;
        ipchannel_lock *agent_next;     /* the agent's list of live requests */
        ipchannel_lock *agent_prev;

        /* App side only. */
        ipchannel *ch;                  /* for "done"; used only from the channel's loop; NULL
                                         * once the channel went (lock_client_free()) */
        bool async;                     /* from ipchannel_synchronize() */
        bool body_ran;
        bool released;                  /* ipchannel_lock_release() was called */
        ipchannel_sync_body_t body;
        ipchannel_sync_done_t done;
        void *userdata;
};

/* Starts the agent thread: it connects to the bus at address, queues for the app's lock
 * service name (serving it when the bus hands it over) and answers the app's requests. */
int lock_agent_new(lock_agent **ret, const char *address, const char *prefix, const char *app);
/* The agent lives while the channel or any request holds a reference; the last unref stops
 * and joins the thread (requests still open fail with -ECONNRESET). Thread-safe. */
lock_agent *lock_agent_ref(lock_agent *a);
lock_agent *lock_agent_unref(lock_agent *a);
/* Stops the thread now (the channel is going): open requests fail with -ECONNRESET, their
 * grants end with the agent's connection, and later ops are refused. From the app's thread. */
void lock_agent_stop(lock_agent *a);

/* An fd that becomes readable when lock_agent_take_notifications() has something. */
int lock_agent_get_notify_fd(lock_agent *a);
/* kick, if set, wakes the app's loop (e.g. enables a deferred event) without a syscall; it is
 * called only from inside the app's dispatch of notifications (see below), on the loop's
 * thread, with the agent's mutex held. NULL: notify_fd only. */
void lock_agent_set_kick(lock_agent *a, void (*kick)(void *userdata), void *userdata);
/* The calling thread is (true) or is no longer (false) dispatching a's notifications from the
 * app's loop. */
void lock_agent_set_dispatching(lock_agent *a, bool dispatching);
/* Returns the requests whose state changed since the last call, each with a reference the
 * caller drops with lock_unref(); NULL if none. Free the array with g_ptr_array_unref(). */
GPtrArray *lock_agent_take_notifications(lock_agent *a);

/* Hands a request to the agent (takes its own reference). If this process keeps the lock's
 * grant parked and nobody here waits for it before, the request takes it at once, from this
 * thread (its state is LOCK_HELD on return, and a notification is queued). Fails with the
 * agent's sticky error if it could not join the service's queue. */
int lock_agent_submit(lock_agent *a, ipchannel_lock *l);
/* The holder is done with it: the grant is parked here (from this thread) unless someone else
 * waits for it, else the agent releases it. */
void lock_agent_release(lock_agent *a, ipchannel_lock *l);
/* The app gave up waiting: the agent withdraws the request, or releases it if granted. */
void lock_agent_cancel(lock_agent *a, ipchannel_lock *l);

/* Blocks until l leaves LOCK_WAITING/LOCK_NEW or until deadline (CLOCK_MONOTONIC usec). */
void lock_agent_wait(lock_agent *a, ipchannel_lock *l, uint64_t deadline);

/* Reads state/token/error consistently. */
lock_state lock_agent_get_state(lock_agent *a, ipchannel_lock *l, uint64_t *ret_token, int *ret_error);

/* Limits of the lock service while this agent hosts it (0: the default), now and later. */
void lock_agent_set_limits(lock_agent *a, uint32_t max_locks_per_connection, uint32_t max_waiters_per_lock);

ipchannel_lock *lock_new(lock_agent *a, const char *name, uint64_t lease_usec);
void lock_unref(ipchannel_lock *l);

/* SPDX-License-Identifier: MIT */
/* The lock agent: a library-owned thread per channel that talks to the lock service. */
#pragma once

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "ipchannel.h"

typedef struct lock_agent lock_agent;

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
 * "agent lock" change only under the agent's mutex. */
struct ipchannel_lock {
        unsigned n_ref;                 /* agent lock: one for the app, one for the agent */
        ipchannel *ch;                  /* app side; NULL once the channel is gone */
        lock_agent *agent;
        char *name;
        uint64_t lease_usec;

        lock_state state;               /* agent lock */
        uint64_t token;                 /* agent lock */
        int error;                      /* agent lock: why FAILED or EXPIRED */
        bool notified;                  /* agent lock: on the app's notification list */
        bool cancelled;                 /* agent lock: the app gave up waiting */
        bool done_pending;              /* agent lock: "done" waits for the app's loop */
        int done_error;

        /* Agent thread only. */
        void *call_slot;                /* sd_bus_slot * of the Acquire call in flight */
        char *granted_by;               /* unique name of the host that granted it */
        uint64_t granted_at;            /* CLOCK_MONOTONIC usec when the grant was read */
        ipchannel_lock *agent_next;     /* the agent's list of live requests */
        ipchannel_lock *agent_prev;

        /* App thread only. */
        ipchannel_sync_body_t body;     /* NULL for the blocking form */
        ipchannel_sync_done_t done;
        void *userdata;
        ipchannel_lock *notify_next;    /* agent lock: the app's notification list */
};

/* Starts the agent thread: it connects to the bus at address, queues for the app's lock
 * service name (serving it when the bus hands it over) and answers the app's requests. */
int lock_agent_new(lock_agent **ret, const char *address, const char *prefix, const char *app);
/* Stops and joins the thread. Requests still open fail with -ECONNRESET. */
lock_agent *lock_agent_free(lock_agent *a);

/* An fd that becomes readable when lock_agent_take_notifications() has something. */
int lock_agent_get_notify_fd(lock_agent *a);
/* Returns the requests whose state changed since the last call (each with a reference the
 * caller drops with lock_unref()), linked through notify_next. */
ipchannel_lock *lock_agent_take_notifications(lock_agent *a);

/* Hands a request to the agent (takes its own reference). */
int lock_agent_submit(lock_agent *a, ipchannel_lock *l);
/* The holder is done with it: the agent releases the grant. */
void lock_agent_release(lock_agent *a, ipchannel_lock *l);
/* The app gave up waiting: the agent withdraws the request, or releases it if granted. */
void lock_agent_cancel(lock_agent *a, ipchannel_lock *l);

/* Blocks until l leaves LOCK_WAITING/LOCK_NEW or until deadline (CLOCK_MONOTONIC usec). */
void lock_agent_wait(lock_agent *a, ipchannel_lock *l, uint64_t deadline);

/* Reads state/token/error consistently. */
lock_state lock_agent_get_state(lock_agent *a, ipchannel_lock *l, uint64_t *ret_token, int *ret_error);

ipchannel_lock *lock_new(ipchannel *ch, lock_agent *a, const char *name, uint64_t lease_usec);
void lock_unref(ipchannel_lock *l);

/* SPDX-License-Identifier: MIT */
/* What the channel offers the library's other modules (lock client, lock service). */
#pragma once

#include <stdarg.h>
#include <stdbool.h>

#include "ipchannel.h"
#include "listeners.h"
#include "message.h"     /* the named errors of org.ipchannel.Peer1 */


/* Fires the local "error" event with data (is). */
void channel_emit_error(ipchannel *ch, int error, const char *fmt, ...) G_GNUC_PRINTF(3, 4);

/* The peer id of the connection with this unique name, 0 if it owns no peer name. */
uint32_t channel_sender_id(ipchannel *ch, const char *unique_name);

typedef struct lock_client lock_client;

/* Accessors for the lock client (lock-client.c), which keeps its state in the channel. */
lock_client **channel_lock_client(ipchannel *ch);
GMainContext *channel_glib(ipchannel *ch);
const char *channel_prefix(ipchannel *ch);
uint64_t channel_sync_timeout(ipchannel *ch);
int channel_resolve_address(ipchannel *ch, const char **ret);
/* A usable channel in the process that made it. */
bool channel_check(ipchannel *ch);

/* Held by the library while it runs code that may call a handler (see channel.c);
 * channel_let_go(): every reference left is such a hold, the app has let go. */
ipchannel *channel_hold(ipchannel *ch);
void channel_release(ipchannel *ch);
bool channel_let_go(ipchannel *ch);

/* lock-client.c: starts the lock agent (idempotent); frees it with the channel. */
int lock_client_start(ipchannel *ch);
void lock_client_free(ipchannel *ch);

/* Sends what handlers coalesced, now: for callers that stop running the loop. */
void channel_flush_sends(ipchannel *ch);

/* Sends now; the channel must be connected. -ENXIO if no peer holds id `to`. built: data was
 * handed over floating, so most likely just built (payload_append_checked_variant()). */
int channel_send_now(ipchannel *ch, uint32_t to, const char *event, GVariant *data, bool built);

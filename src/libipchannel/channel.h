/* SPDX-License-Identifier: MIT */
/* What the channel offers the library's other modules (lock client, lock service). */
#pragma once

#include <stdarg.h>

#include "ipchannel.h"
#include "listeners.h"

/* Named D-Bus errors of the org.ipchannel.Peer1 interface. */
#define IPCHANNEL_ERROR_NOT_A_PEER "org.ipchannel.Error.NotAPeer"
#define IPCHANNEL_ERROR_INVALID_EVENT "org.ipchannel.Error.InvalidEvent"
#define IPCHANNEL_ERROR_RESERVED_EVENT "org.ipchannel.Error.ReservedEvent"

/* Fires the local "error" event with data (is). */
void channel_emit_error(ipchannel *ch, int error, const char *fmt, ...) G_GNUC_PRINTF(3, 4);

/* The peer id of the connection with this unique name, 0 if it owns no peer name. */
uint32_t channel_sender_id(ipchannel *ch, const char *unique_name);

/* Sends now; the channel must be connected. -ENXIO if no peer holds id `to`. */
int channel_send_now(ipchannel *ch, uint32_t to, const char *event, GVariant *data);

/* SPDX-License-Identifier: MIT */
/* Names: the bus names, object paths and match rules of an app. Pure: no bus I/O. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define IPCHANNEL_PREFIX_DEFAULT "org.ipchannel"
#define IPCHANNEL_PEER_INTERFACE "org.ipchannel.Peer1"
#define IPCHANNEL_LOCK_INTERFACE "org.ipchannel.LockService1"

/* 0 or -EINVAL with a static reason. */
int names_check_app(const char *app, const char **ret_reason);
int names_check_prefix(const char *prefix, const char **ret_reason);

/* 0 or -EINVAL: a non-empty UTF-8 event name of at most IPCHANNEL_EVENT_NAME_MAX bytes. */
int names_check_event(const char *event, const char **ret_reason);
/* The same with another bound (a channel's ipchannel_set_event_name_max()). */
int names_check_event_max(const char *event, size_t max, const char **ret_reason);
bool names_event_is_local(const char *event);

/* Newly allocated strings (NULL on out-of-memory). */
char *names_peer(const char *prefix, const char *app, uint32_t id);  /* <prefix>.<app>.Peer<id> */
char *names_peer_namespace(const char *prefix, const char *app);     /* <prefix>.<app> */
char *names_locks(const char *prefix, const char *app);              /* <prefix>.<app>.Locks */
char *names_path(const char *prefix, const char *app);               /* /org/ipchannel/<app> */
char *names_locks_path(const char *prefix, const char *app);         /* .../<app>/Locks */

/* The id N if name is exactly <prefix>.<app>.Peer<N> with N in 1..UINT32_MAX-1 written
 * without leading zeros, else 0. */
uint32_t names_parse_peer(const char *prefix, const char *app, const char *name);

/* 0 or -EINVAL: a lock name is non-empty UTF-8 of at most 255 bytes. */
int names_check_lock(const char *lock);

/* A match rule for NameOwnerChanged of the bus name `name`, or of every name below it when
 * below is true (arg0namespace). */
char *names_owner_changed_match(const char *name, bool below);

/* A match rule for the app's broadcasts of event, or NULL if the event cannot be written
 * into a match rule safely (then the caller matches every broadcast and filters itself). */
char *names_broadcast_match(const char *path, const char *event);
char *names_broadcast_match_all(const char *path);

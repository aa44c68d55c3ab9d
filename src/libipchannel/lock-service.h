/* SPDX-License-Identifier: MIT */
/* The lock service: org.ipchannel.LockService1 over a lock queue, on one bus connection. */
#pragma once

#include <stdbool.h>
#include <sys/types.h>

#include <systemd/sd-bus.h>

typedef struct lock_service lock_service;

/* Named D-Bus errors of org.ipchannel.LockService1. */
#define LOCK_ERROR_CANCELLED "org.ipchannel.Error.Cancelled"
#define LOCK_ERROR_SERVICE_MOVED "org.ipchannel.Error.ServiceMoved"
#define LOCK_ERROR_WOULD_BLOCK "org.ipchannel.Error.WouldBlock"
#define LOCK_ERROR_NOT_HOLDER "org.ipchannel.Error.NotHolder"
#define LOCK_ERROR_STALE_TOKEN "org.ipchannel.Error.StaleToken"
#define LOCK_ERROR_NO_SUCH_LOCK "org.ipchannel.Error.NoSuchLock"
#define LOCK_ERROR_NOT_WAITING "org.ipchannel.Error.NotWaiting"
#define LOCK_ERROR_ALREADY_HELD "org.ipchannel.Error.AlreadyHeld"
#define LOCK_ERROR_ALREADY_WAITING "org.ipchannel.Error.AlreadyWaiting"
#define LOCK_ERROR_LIMITS_EXCEEDED "org.ipchannel.Error.LimitsExceeded"
#define LOCK_ERROR_ACCESS_DENIED "org.ipchannel.Error.AccessDenied"
#define LOCK_ERROR_NOT_QUEUED "org.ipchannel.Error.NotQueued"
#define LOCK_ERROR_NOT_CACHED "org.ipchannel.Error.NotCached"

/* The negative errno a lock call of this library returns for a lock service's error reply:
 * org.ipchannel.Error.AccessDenied -EACCES, LimitsExceeded -ENOBUFS, NotQueued -EPERM, and so
 * on (see the map); the bus's own errors as sd-bus maps them; -EIO for any other. 0 if e is
 * not set. */
int lock_error_to_errno(const sd_bus_error *e);

/* Serves the object at path on bus, using the bus's sd-event loop, for the owner of the bus
 * name `name`. It starts in recovery: it grants nothing until every connection queued for
 * `name` (its own too when expect_self, i.e. when an agent of this process reports to it over
 * the bus) has reported its holds with Reassert, or has disconnected. */
int lock_service_new(lock_service **ret, sd_bus *bus, const char *path, const char *name,
                     bool expect_self);

/* Serves only callers whose uid, as the bus reports it, is uid ((uid_t) -1: anyone; the
 * default): others get org.ipchannel.Error.AccessDenied for Acquire, AcquireCached and
 * TryAcquire. Their reports after a takeover (Reassert, ReassertCached) still count, and the
 * holds they report are kept until released. */
void lock_service_set_allowed_uid(lock_service *s, uid_t uid);

/* Locks held or awaited per connection, waiters per lock; 0 leaves a limit as it is. */
int lock_service_set_limits(lock_service *s, size_t max_locks_per_owner, size_t max_waiters_per_lock);

/* Waiting Acquire calls get org.ipchannel.Error.ServiceMoved. NULL-safe; returns NULL. */
lock_service *lock_service_free(lock_service *s);

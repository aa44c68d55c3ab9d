/* SPDX-License-Identifier: MIT */
/* ipchannel-lockd: hosts an app's lock service (org.ipchannel.LockService1) as a daemon. */
#include <errno.h>
#include <getopt.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <systemd/sd-bus.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-event.h>

#include "ipchannel.h"
#include "lock-service.h"
#include "macro.h"
#include "names.h"

/* Peers of the app queue for the same name and serve it themselves while no daemon runs;
 * their claim allows replacement, so a daemon that starts later takes over from them, and
 * when the daemon stops the next peer in the queue takes over again (see lock-service.c for
 * why a takeover is safe). */

#define DBUS_NAME_FLAG_REPLACE_EXISTING 2u
#define DBUS_REQUEST_NAME_REPLY_PRIMARY_OWNER 1u
#define DBUS_REQUEST_NAME_REPLY_IN_QUEUE 2u

typedef enum { BUS_DEFAULT, BUS_USER, BUS_SYSTEM } bus_kind;

static const char *arg_app;
static bus_kind arg_bus = BUS_DEFAULT;
static bool arg_print_ready;
static uid_t arg_allowed_uid = (uid_t) -1;
static size_t arg_max_locks_per_connection;
static size_t arg_max_waiters_per_lock;

typedef struct {
        sd_event *event;
        sd_bus *bus;
        sd_bus_slot *noc_slot, *request_slot;
        char *name, *path;
        const char *unique_name;
        lock_service *service;
} lockd;

static void help(void) {
        printf("Usage: ipchannel-lockd --app NAME [OPTIONS]\n"
               "\n"
               "Hosts the lock service of the ipchannel app NAME: owns the bus name\n"
               "org.ipchannel.NAME.Locks and answers org.ipchannel.LockService1 calls at\n"
               "/org/ipchannel/NAME/Locks. While it runs, the app's peers use it instead of\n"
               "hosting the service themselves; when it stops, a peer takes over.\n"
               "\n"
               "Options:\n"
               "  -a, --app NAME      the app whose locks to serve (required)\n"
               "      --user          use the user bus\n"
               "      --system        use the system bus\n"
               "                      (default: the user bus if DBUS_SESSION_BUS_ADDRESS is\n"
               "                      set, else the system bus)\n"
               "      --allow-uid UID serve only callers of this uid (number or user name), as\n"
               "                      the bus reports it; others get AccessDenied\n"
               "      --max-locks-per-connection N\n"
               "                      locks one connection may hold or await (default 1024)\n"
               "      --max-waiters-per-lock N\n"
               "                      connections that may wait for one lock (default 65536)\n"
               "      --print-ready   print READY on stdout once the name is owned (and\n"
               "                      QUEUED while another daemon owns it)\n"
               "  -h, --help          show this help\n"
               "      --version       show the version\n"
               "\n"
               "It tells systemd it is ready (sd_notify READY=1) only once it owns the name,\n"
               "and exits cleanly on SIGTERM or SIGINT.\n"
               "\n"
               "Exit status: 0 on a clean stop, 1 on a bus failure, 2 on bad usage.\n");
}

static int parse_argv(int argc, char *argv[]) {
        enum { ARG_USER = 0x100, ARG_SYSTEM, ARG_PRINT_READY, ARG_VERSION, ARG_ALLOW_UID, ARG_MAX_LOCKS,
               ARG_MAX_WAITERS };
        static const struct option options[] = {
                { "app", required_argument, NULL, 'a' },
                { "user", no_argument, NULL, ARG_USER },
                { "system", no_argument, NULL, ARG_SYSTEM },
                { "print-ready", no_argument, NULL, ARG_PRINT_READY },
                { "allow-uid", required_argument, NULL, ARG_ALLOW_UID },
                { "max-locks-per-connection", required_argument, NULL, ARG_MAX_LOCKS },
                { "max-waiters-per-lock", required_argument, NULL, ARG_MAX_WAITERS },
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, ARG_VERSION },
                {}
        };
        const char *reason;
        int c;

        while ((c = getopt_long(argc, argv, "a:h", options, NULL)) >= 0)
                switch (c) {
                case 'a':
                        if (ipchannel_check_app_name(optarg, &reason) < 0) {
                                fprintf(stderr, "ipchannel-lockd: invalid app name \"%s\": %s\n", optarg,
                                        reason);
                                return -EINVAL;
                        }
                        arg_app = optarg;
                        break;
                case ARG_USER:
                        arg_bus = BUS_USER;
                        break;
                case ARG_SYSTEM:
                        arg_bus = BUS_SYSTEM;
                        break;
                case ARG_PRINT_READY:
                        arg_print_ready = true;
                        break;
                case ARG_ALLOW_UID: {
                        struct passwd *pw;
                        char *end;
                        unsigned long v;

                        errno = 0;
                        v = strtoul(optarg, &end, 10);
                        if (optarg[0] != '\0' && *end == '\0' && errno == 0 && v < (uid_t) -1)
                                arg_allowed_uid = (uid_t) v;
                        else if ((pw = getpwnam(optarg)))
                                arg_allowed_uid = pw->pw_uid;
                        else {
                                fprintf(stderr, "ipchannel-lockd: no such user \"%s\"\n", optarg);
                                return -EINVAL;
                        }
                        break;
                }
                case ARG_MAX_LOCKS:
                case ARG_MAX_WAITERS: {
                        char *end;
                        unsigned long v;

                        errno = 0;
                        v = strtoul(optarg, &end, 10);
                        if (optarg[0] == '\0' || *end != '\0' || errno != 0 || v == 0 || optarg[0] == '-') {
                                fprintf(stderr, "ipchannel-lockd: %s needs a number above 0\n",
                                        c == ARG_MAX_LOCKS ? "--max-locks-per-connection"
                                                           : "--max-waiters-per-lock");
                                return -EINVAL;
                        }
                        if (c == ARG_MAX_LOCKS)
                                arg_max_locks_per_connection = v;
                        else
                                arg_max_waiters_per_lock = v;
                        break;
                }
                case 'h':
                        help();
                        return 0;
                case ARG_VERSION:
                        printf("ipchannel-lockd %s\n", IPCHANNEL_VERSION);
                        return 0;
                default:
                        fprintf(stderr, "Try 'ipchannel-lockd --help'.\n");
                        return -EINVAL;
                }
        if (optind < argc) {
                fprintf(stderr, "ipchannel-lockd: unexpected argument \"%s\"\n", argv[optind]);
                return -EINVAL;
        }
        if (!arg_app) {
                fprintf(stderr, "ipchannel-lockd: --app NAME is required. Try 'ipchannel-lockd --help'.\n");
                return -EINVAL;
        }
        return 1;
}

static void lockd_serve(lockd *d) {
        int r;

        if (d->service)
                return;
        r = lock_service_new(&d->service, d->bus, d->path, d->name, false);
        if (r >= 0)
                r = lock_service_set_limits(d->service, arg_max_locks_per_connection, arg_max_waiters_per_lock);
        if (r < 0) {
                fprintf(stderr, "ipchannel-lockd: cannot serve %s: %s\n", d->name, strerror(-r));
                sd_event_exit(d->event, EXIT_FAILURE);
                return;
        }
        lock_service_set_allowed_uid(d->service, arg_allowed_uid);
        (void) sd_notifyf(false, "READY=1\nSTATUS=Serving %s", d->name);
        if (arg_print_ready) {
                printf("READY\n");
                fflush(stdout);
        }
}

static int on_name_owner_changed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        lockd *d = userdata;
        const char *name, *old_owner, *new_owner;

        if (sd_bus_message_read(m, "sss", &name, &old_owner, &new_owner) < 0 || strcmp(name, d->name) != 0)
                return 0;
        if (strcmp(new_owner, d->unique_name) == 0)
                lockd_serve(d);
        else if (new_owner[0] != '\0' && !d->service)
                /* We wait in the queue behind another host, which waits for a report from
                 * every queued connection before it grants: ours holds nothing. */
                (void) sd_bus_call_method_async(d->bus, NULL, d->name, d->path, IPCHANNEL_LOCK_INTERFACE,
                                                "Reassert", NULL, NULL, "a(stt)", 0);
        else if (strcmp(old_owner, d->unique_name) == 0) {
                /* Another daemon took the name over: it serves now. */
                fprintf(stderr, "ipchannel-lockd: %s was taken over by %s; exiting\n", d->name, new_owner);
                d->service = lock_service_free(d->service);
                sd_event_exit(d->event, EXIT_SUCCESS);
        }
        return 0;
}

static int on_request_name(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error) {
        lockd *d = userdata;
        const sd_bus_error *e = sd_bus_message_get_error(reply);
        uint32_t ret = 0;

        if (e) {
                fprintf(stderr, "ipchannel-lockd: cannot own %s: %s\n", d->name, e->message ?: e->name);
                sd_event_exit(d->event, EXIT_FAILURE);
                return 0;
        }
        (void) sd_bus_message_read(reply, "u", &ret);
        if (ret == DBUS_REQUEST_NAME_REPLY_PRIMARY_OWNER)
                lockd_serve(d);
        else if (ret == DBUS_REQUEST_NAME_REPLY_IN_QUEUE) {
                (void) sd_notifyf(false, "STATUS=Waiting for %s (another daemon serves it)", d->name);
                if (arg_print_ready) {
                        printf("QUEUED\n");
                        fflush(stdout);
                }
        }
        return 0;
}

static int setup(lockd *d) {
        g_autofree char *noc = NULL;
        sigset_t mask;
        int r;

        d->name = names_locks(IPCHANNEL_PREFIX_DEFAULT, arg_app);
        d->path = names_locks_path(IPCHANNEL_PREFIX_DEFAULT, arg_app);
        if (!d->name || !d->path)
                return -ENOMEM;

        r = sd_event_default(&d->event);
        if (r < 0)
                return r;
        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigprocmask(SIG_BLOCK, &mask, NULL);
        r = sd_event_add_signal(d->event, NULL, SIGTERM, NULL, NULL);
        if (r < 0)
                return r;
        r = sd_event_add_signal(d->event, NULL, SIGINT, NULL, NULL);
        if (r < 0)
                return r;

        if (arg_bus == BUS_USER || (arg_bus == BUS_DEFAULT && getenv("DBUS_SESSION_BUS_ADDRESS")))
                r = sd_bus_open_user_with_description(&d->bus, "ipchannel-lockd");
        else
                r = sd_bus_open_system_with_description(&d->bus, "ipchannel-lockd");
        if (r < 0)
                return r;
        r = sd_bus_attach_event(d->bus, d->event, 0);
        if (r < 0)
                return r;
        /* A lost bus is the end: systemd restarts us if it should. */
        (void) sd_bus_set_exit_on_disconnect(d->bus, true);
        r = sd_bus_get_unique_name(d->bus, &d->unique_name);
        if (r < 0)
                return r;

        noc = names_owner_changed_match(d->name, false);
        if (!noc)
                return -ENOMEM;
        r = sd_bus_add_match_async(d->bus, &d->noc_slot, noc, on_name_owner_changed, NULL, d);
        if (r < 0)
                return r;
        return sd_bus_call_method_async(d->bus, &d->request_slot, "org.freedesktop.DBus",
                                        "/org/freedesktop/DBus", "org.freedesktop.DBus", "RequestName",
                                        on_request_name, d, "su", d->name,
                                        DBUS_NAME_FLAG_REPLACE_EXISTING);
}

static int run(lockd *d) {
        int r;

        r = sd_event_loop(d->event);
        (void) sd_notify(false, "STOPPING=1");
        /* Hand the name on first, then tell the waiters the service moved: they ask again and
         * reach the next host, not us. */
        if (d->service)
                (void) sd_bus_call_method(d->bus, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                          "org.freedesktop.DBus", "ReleaseName", NULL, NULL, "s", d->name);
        d->service = lock_service_free(d->service);
        (void) sd_bus_flush(d->bus);
        return r;
}

static void lockd_done(lockd *d) {
        lock_service_free(d->service);
        sd_bus_slot_unref(d->noc_slot);
        sd_bus_slot_unref(d->request_slot);
        sd_bus_flush_close_unref(d->bus);
        sd_event_unref(d->event);
        free(d->name);
        free(d->path);
}

int main(int argc, char *argv[]) {
        lockd d = {};
        int r;

        r = parse_argv(argc, argv);
        if (r <= 0)
                return r < 0 ? 2 : EXIT_SUCCESS;

        r = setup(&d);
        if (r < 0) {
                fprintf(stderr, "ipchannel-lockd: cannot start: %s\n", strerror(-r));
                lockd_done(&d);
                return EXIT_FAILURE;
        }
        r = run(&d);
        lockd_done(&d);
        if (r < 0) {
                fprintf(stderr, "ipchannel-lockd: %s\n", strerror(-r));
                return EXIT_FAILURE;
        }
        return r;
}

/* SPDX-License-Identifier: MIT */
/* ipchannel locks: the app's cluster-wide locks, with holder, token, lease left and waiters. */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "names.h"
#include "tool.h"

/* The lock service answers ListLocksEx (ListLocks, without the parked flag, before it had that)
 * with the holders' and waiters' unique bus names. These
 * are the connections of the lock agents (a library thread with a connection of its own in
 * each process), not the peers' connections, so a holder's peer id cannot be told from the
 * bus: the listing shows each connection's pid instead. */

/* The lock service answers from its host's lock agent thread, whatever the host's app does:
 * one that does not answer within this is stopped or stuck, and waiting longer (the D-Bus
 * default is 25 s) only keeps the user waiting for the same failure. */
#define LOCKS_TIMEOUT_USEC (5 * 1000 * 1000ULL)

static bool arg_json;
static bool arg_legend = true;
static char **arg_locks;        /* borrowed from argv; NULL: every lock */

static void help(void) {
        printf("Usage: ipchannel [--app NAME] locks [--json] [--no-legend] [LOCK...]\n"
               "\n"
               "Lists the app's cluster-wide locks (those held or waited for), sorted by name,\n"
               "as the app's lock service (org.ipchannel.NAME.Locks) knows them: the holder's\n"
               "unique bus name and pid, the fencing token of the current grant, the lease\n"
               "left and the waiters in the order they will get the lock. Holders and waiters\n"
               "are the connections of the processes' lock agents, so they are shown by pid,\n"
               "not by peer id. With LOCK..., only those.\n"
               "\n"
               "LEASE is the time the holder has left, \"none\" when its grant has no lease, or\n"
               "\"parked\" when no critical section runs: the holder's process keeps the grant\n"
               "cached since its last one, to take it again without asking, and gives it up\n"
               "when another process asks (\"parked:T\" once one has, if the grant has a\n"
               "lease: T is the time it has to).\n"
               "\n"
               "Options:\n"
               "      --json        one JSON object per lock and line: {\"lock\", \"holder\",\n"
               "                    \"holder_pid\", \"token\", \"lease_left_usec\" (null: no\n"
               "                    lease), \"parked\" (true, false; null: the lock is free,\n"
               "                    or the service does not say), \"waiters\": [{\"name\",\n"
               "                    \"pid\"}...]}\n"
               "      --no-legend   no header line and no count at the end\n"
               "  -a, --app NAME    the app (default: $IPCHANNEL_APP)\n"
               "      --user        use the user bus\n"
               "      --system      use the system bus\n"
               "  -h, --help        show this help\n"
               "\n"
               "Exit status: 0 success (also when no lock is held), 2 bad usage, 3 no lock\n"
               "service runs for the app (no peer and no ipchannel-lockd), or a LOCK given\n"
               "is neither held nor waited for, 4 the lock service did not answer within\n"
               "5 seconds, 5 bus failure.\n");
}

static int parse_argv(int argc, char *argv[]) {
        enum { ARG_JSON = ARG_COMMON_MAX, ARG_NO_LEGEND };
        static const struct option options[] = {
                COMMON_OPTIONS,
                { "json", no_argument, NULL, ARG_JSON },
                { "no-legend", no_argument, NULL, ARG_NO_LEGEND },
                {}
        };
        bool want_help = false;
        int c, r;

        while ((c = getopt_long(argc, argv, COMMON_SHORTOPTS, options, NULL)) >= 0) {
                r = tool_parse_common_option(c, optarg, &want_help);
                if (r < 0)
                        return r;
                if (r > 0)
                        continue;
                switch (c) {
                case ARG_JSON:
                        arg_json = true;
                        break;
                case ARG_NO_LEGEND:
                        arg_legend = false;
                        break;
                default:
                        return tool_bad_option("locks", c, argv);
                }
        }
        if (want_help) {
                help();
                return 0;
        }
        for (int i = optind; i < argc; i++)
                if (names_check_lock(argv[i]) < 0) {
                        tool_usage_error("locks", "invalid lock name \"%s\": 1 to 255 bytes of UTF-8",
                                         argv[i]);
                        return -EINVAL;
                }
        arg_locks = optind < argc ? argv + optind : NULL;
        if (tool_require_app("locks") < 0)
                return -EINVAL;
        return 1;
}

typedef struct lock_row {
        char *lock;
        char *holder;           /* "" when free */
        uint32_t holder_pid;
        uint64_t token;
        uint64_t lease_left;    /* UINT64_MAX: no lease */
        int parked;             /* 1 / 0; -1: not known (ListLocks) */
        char **waiters;
        uint32_t *waiter_pids;
        size_t n_waiters;
} lock_row;

static void lock_rows_free(lock_row *rows, size_t n) {
        for (size_t i = 0; i < n; i++) {
                free(rows[i].lock);
                free(rows[i].holder);
                g_strfreev(rows[i].waiters);
                free(rows[i].waiter_pids);
        }
        free(rows);
}

static int lock_row_compare(const void *a, const void *b) {
        return strcmp(((const lock_row *) a)->lock, ((const lock_row *) b)->lock);
}

static bool lock_wanted(const char *lock) {
        if (!arg_locks)
                return true;
        for (char **l = arg_locks; *l; l++)
                if (strcmp(*l, lock) == 0)
                        return true;
        return false;
}

/* ex: the answer to ListLocksEx, a(ssttbas); else to ListLocks, a(ssttas). */
static int read_locks(sd_bus *bus, sd_bus_message *reply, bool ex, lock_row **ret, size_t *ret_n) {
        lock_row *rows = NULL;
        size_t n = 0;
        int r;

        r = sd_bus_message_enter_container(reply, 'a', ex ? "(ssttbas)" : "(ssttas)");
        if (r < 0)
                return r;
        for (;;) {
                const char *lock, *holder, *waiter;
                uint64_t token, lease;
                int parked = -1;
                g_autoptr(GPtrArray) waiters = g_ptr_array_new_with_free_func(g_free);

                r = sd_bus_message_enter_container(reply, 'r', ex ? "ssttbas" : "ssttas");
                if (r <= 0)
                        break;
                r = sd_bus_message_read(reply, "sstt", &lock, &holder, &token, &lease);
                if (r >= 0 && ex)
                        r = sd_bus_message_read_basic(reply, 'b', &parked);
                if (r < 0)
                        break;
                r = sd_bus_message_enter_container(reply, 'a', "s");
                if (r < 0)
                        break;
                while ((r = sd_bus_message_read_basic(reply, 's', &waiter)) > 0)
                        g_ptr_array_add(waiters, g_strdup(waiter));
                if (r < 0)
                        break;
                r = sd_bus_message_exit_container(reply);
                if (r >= 0)
                        r = sd_bus_message_exit_container(reply);
                if (r < 0)
                        break;
                if (!lock_wanted(lock))
                        continue;

                lock_row *nr = realloc(rows, (n + 1) * sizeof(*rows));
                if (!nr) {
                        r = -ENOMEM;
                        break;
                }
                rows = nr;
                rows[n] = (lock_row) {
                        .lock = g_strdup(lock),
                        .holder = g_strdup(holder),
                        .holder_pid = tool_name_pid(bus, holder),
                        .token = token,
                        .lease_left = lease,
                        .parked = parked,
                        .n_waiters = waiters->len,
                        .waiter_pids = calloc(waiters->len ?: 1, sizeof(uint32_t)),
                };
                for (size_t i = 0; i < waiters->len; i++)
                        rows[n].waiter_pids[i] = tool_name_pid(bus, waiters->pdata[i]);
                g_ptr_array_add(waiters, NULL);
                rows[n].waiters = (char **) g_ptr_array_free(g_steal_pointer(&waiters), FALSE);
                n++;
        }
        if (r < 0) {
                lock_rows_free(rows, n);
                return r;
        }
        if (n > 0)
                qsort(rows, n, sizeof(*rows), lock_row_compare);
        *ret = rows;
        *ret_n = n;
        return 0;
}

static char *format_lease(const lock_row *row) {
        uint64_t usec = row->lease_left;

        if (usec == UINT64_MAX)
                return g_strdup(row->parked > 0 ? "parked" : "none");
        return g_strdup_printf("%s%" PRIu64 ".%03" PRIu64 "s", row->parked > 0 ? "parked:" : "",
                               usec / 1000000, usec % 1000000 / 1000);
}

static char *format_waiters(const lock_row *row) {
        GString *s = g_string_new(NULL);

        for (size_t i = 0; i < row->n_waiters; i++) {
                if (i > 0)
                        g_string_append(s, ", ");
                g_string_append(s, row->waiters[i]);
                if (row->waiter_pids[i])
                        g_string_append_printf(s, " (pid %" PRIu32 ")", row->waiter_pids[i]);
        }
        if (s->len == 0)
                g_string_append_c(s, '-');
        return g_string_free(s, FALSE);
}

static void print_table(const lock_row *rows, size_t n) {
        int w_lock = 4, w_holder = 6, w_pid = 3, w_token = 5, w_lease = 5;
        char buf[32];

        if (n == 0) {
                if (arg_legend)
                        printf("No lock of app %s is held or waited for.\n", arg_app);
                return;
        }
        for (size_t i = 0; i < n; i++) {
                g_autofree char *lease = format_lease(&rows[i]);

                w_lock = MAX(w_lock, (int) strlen(rows[i].lock));
                w_holder = MAX(w_holder, (int) strlen(rows[i].holder));
                w_pid = MAX(w_pid, snprintf(buf, sizeof(buf), "%" PRIu32, rows[i].holder_pid));
                w_token = MAX(w_token, snprintf(buf, sizeof(buf), "%" PRIu64, rows[i].token));
                w_lease = MAX(w_lease, (int) strlen(lease));
        }
        if (arg_legend)
                printf("%-*s %-*s %*s %*s %*s %s\n", w_lock, "LOCK", w_holder, "HOLDER", w_pid, "PID",
                       w_token, "TOKEN", w_lease, "LEASE", "WAITERS");
        for (size_t i = 0; i < n; i++) {
                g_autofree char *lease = format_lease(&rows[i]);
                g_autofree char *waiters = format_waiters(&rows[i]);
                char pid[16], token[32];
                bool held = rows[i].holder[0] != '\0';

                snprintf(pid, sizeof(pid), "%" PRIu32, rows[i].holder_pid);
                snprintf(token, sizeof(token), "%" PRIu64, rows[i].token);
                printf("%-*s %-*s %*s %*s %*s %s\n", w_lock, rows[i].lock, w_holder,
                       held ? rows[i].holder : "-", w_pid, held && rows[i].holder_pid ? pid : "-", w_token,
                       held ? token : "-", w_lease, held ? lease : "-", waiters);
        }
        if (arg_legend)
                printf("\n%zu lock%s of app %s.\n", n, n == 1 ? "" : "s", arg_app);
}

static void print_json(const lock_row *rows, size_t n) {
        for (size_t i = 0; i < n; i++) {
                g_autoptr(GString) out = g_string_new("{\"lock\":");
                bool held = rows[i].holder[0] != '\0';

                json_append_string(out, rows[i].lock);
                if (held) {
                        g_string_append(out, ",\"holder\":");
                        json_append_string(out, rows[i].holder);
                        if (rows[i].holder_pid)
                                g_string_append_printf(out, ",\"holder_pid\":%" PRIu32, rows[i].holder_pid);
                        else
                                g_string_append(out, ",\"holder_pid\":null");
                        g_string_append_printf(out, ",\"token\":%" PRIu64, rows[i].token);
                        if (rows[i].lease_left == UINT64_MAX)
                                g_string_append(out, ",\"lease_left_usec\":null");
                        else
                                g_string_append_printf(out, ",\"lease_left_usec\":%" PRIu64,
                                                       rows[i].lease_left);
                        g_string_append_printf(out, ",\"parked\":%s",
                                               rows[i].parked < 0 ? "null" : rows[i].parked ? "true" : "false");
                } else
                        g_string_append(out, ",\"holder\":null,\"holder_pid\":null,\"token\":null,"
                                             "\"lease_left_usec\":null,\"parked\":null");
                g_string_append(out, ",\"waiters\":[");
                for (size_t w = 0; w < rows[i].n_waiters; w++) {
                        g_string_append(out, w > 0 ? ",{\"name\":" : "{\"name\":");
                        json_append_string(out, rows[i].waiters[w]);
                        if (rows[i].waiter_pids[w])
                                g_string_append_printf(out, ",\"pid\":%" PRIu32 "}", rows[i].waiter_pids[w]);
                        else
                                g_string_append(out, ",\"pid\":null}");
                }
                g_string_append(out, "]}");
                puts(out->str);
        }
}

int verb_locks(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        g_autofree char *name = NULL, *path = NULL;
        lock_row *rows = NULL;
        size_t n = 0;
        int r, recovering = 0, code = EXIT_SUCCESS;
        bool ex = true;

        r = parse_argv(argc, argv);
        if (r <= 0)
                return r < 0 ? EXIT_USAGE : EXIT_SUCCESS;

        name = names_locks(IPCHANNEL_PREFIX_DEFAULT, arg_app);
        path = names_locks_path(IPCHANNEL_PREFIX_DEFAULT, arg_app);
        if (!name || !path)
                return tool_fail(EXIT_FAILURE, "out of memory");
        if (tool_open_bus(&bus) < 0)
                return EXIT_BUS;
        r = sd_bus_set_method_call_timeout(bus, LOCKS_TIMEOUT_USEC);
        if (r < 0)
                return tool_fail(EXIT_FAILURE, "cannot set the bus's call timeout: %s", strerror(-r));

        r = sd_bus_call_method(bus, name, path, IPCHANNEL_LOCK_INTERFACE, "ListLocksEx", &error, &reply, NULL);
        if (r < 0 && sd_bus_error_has_name(&error, SD_BUS_ERROR_UNKNOWN_METHOD)) {
                /* A lock service from before ListLocksEx. */
                ex = false;
                sd_bus_error_free(&error);
                r = sd_bus_call_method(bus, name, path, IPCHANNEL_LOCK_INTERFACE, "ListLocks", &error, &reply,
                                       NULL);
        }
        if (r < 0) {
                if (sd_bus_error_has_names(&error, SD_BUS_ERROR_SERVICE_UNKNOWN,
                                           SD_BUS_ERROR_NAME_HAS_NO_OWNER))
                        return tool_fail(EXIT_NOT_FOUND,
                                         "no lock service for app %s on the %s bus (no peer of the app "
                                         "and no ipchannel-lockd runs)",
                                         arg_app, tool_bus_label());
                if (r == -ETIMEDOUT ||
                    sd_bus_error_has_names(&error, SD_BUS_ERROR_NO_REPLY, SD_BUS_ERROR_TIMEOUT)) {
                        uint32_t pid = tool_name_pid(bus, name);

                        if (pid == 0)
                                return tool_fail(EXIT_TIMEOUT,
                                                 "the lock service of app %s did not answer within %llu "
                                                 "seconds",
                                                 arg_app, LOCKS_TIMEOUT_USEC / 1000000);
                        return tool_fail(EXIT_TIMEOUT,
                                         "the lock service of app %s did not answer within %llu seconds: "
                                         "its host (pid %" PRIu32 ") may be stopped or stuck",
                                         arg_app, LOCKS_TIMEOUT_USEC / 1000000, pid);
                }
                return tool_fail(tool_exit_code_for_bus_error(&error, r),
                                 "cannot list the locks of app %s: %s", arg_app,
                                 error.message ?: strerror(-r));
        }
        r = read_locks(bus, reply, ex, &rows, &n);
        if (r < 0)
                return tool_fail(EXIT_FAILURE, "cannot read the lock service's answer: %s", strerror(-r));

        /* A new host lists only what has been reported to it so far. */
        if (sd_bus_get_property_trivial(bus, name, path, IPCHANNEL_LOCK_INTERFACE, "Recovering", NULL, 'b',
                                        &recovering) >= 0 &&
            recovering)
                tool_warn("the lock service has just moved and is still collecting the holders' reports: "
                          "the listing may be incomplete");

        if (arg_json)
                print_json(rows, n);
        else
                print_table(rows, n);

        for (char **l = arg_locks; l && *l; l++) {
                bool found = false;

                for (size_t i = 0; i < n && !found; i++)
                        found = strcmp(rows[i].lock, *l) == 0;
                if (!found)
                        code = tool_fail(EXIT_NOT_FOUND,
                                         "lock \"%s\" of app %s is neither held nor waited for", *l,
                                         arg_app);
        }
        lock_rows_free(rows, n);
        if (fflush(stdout) != 0)
                return EXIT_FAILURE;
        return code;
}

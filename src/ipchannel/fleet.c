/* SPDX-License-Identifier: MIT */
/* ipchannel fleet: starts, stops and shows instances 1..N of a systemd template unit. */
#include <getopt.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tool.h"

/*
 * PM2's "-i max", the systemd way: a template unit app@.service whose instance name is the
 * peer id (Environment=IPCHANNEL_PEER_ID=%i), instances 1..COUNT started with one command and
 * stopped with one. systemd restarts an instance that dies (Restart=on-failure) and brings
 * enabled instances back at boot. This talks to the service manager
 * (org.freedesktop.systemd1.Manager) on the chosen bus, never to ipchannel peers.
 */

#define COUNT_MAX 65536u
#define SYSTEMD_NAME "org.freedesktop.systemd1"
#define SYSTEMD_PATH "/org/freedesktop/systemd1"
#define SYSTEMD_MANAGER "org.freedesktop.systemd1.Manager"
#define SYSTEMD_ERROR_NO_SUCH_UNIT "org.freedesktop.systemd1.NoSuchUnit"

typedef enum { FLEET_START, FLEET_STOP, FLEET_STATUS } fleet_action;

static fleet_action arg_action;
static char *arg_prefix;        /* "app" of "app@.service" */
static unsigned arg_count;
static bool arg_enable, arg_disable, arg_wait, arg_json;
static bool arg_legend = true;
static uint64_t arg_timeout_usec = UINT64_MAX;

static void help(void) {
        printf("Usage: ipchannel fleet start TEMPLATE COUNT [--enable] [--wait [--timeout SEC]]\n"
               "       ipchannel fleet stop TEMPLATE [--disable] [--wait [--timeout SEC]]\n"
               "       ipchannel fleet status TEMPLATE [--json] [--no-legend]\n"
               "\n"
               "Runs a fleet of peers the way PM2's \"-i max\" does, with systemd: TEMPLATE is\n"
               "a template unit such as ipchannel-demo@ or ipchannel-demo@.service, whose\n"
               "instance name is the peer id (Environment=IPCHANNEL_PEER_ID=%%i) and which\n"
               "systemd restarts when it dies (Restart=on-failure).\n"
               "\n"
               "  start    starts TEMPLATE@1.service ... TEMPLATE@COUNT.service and stops the\n"
               "           running instances numbered above COUNT. COUNT is a number (1 to\n"
               "           %u) or \"max\": the number of CPUs this process may run on.\n"
               "  stop     stops every loaded instance of TEMPLATE.\n"
               "  status   one line per loaded instance: unit, active state, sub state and\n"
               "           main pid (\"-\" when none), numbered instances in order.\n"
               "\n"
               "It talks to the system service manager, or with --user to the user's (the\n"
               "default follows the bus: the user's manager when DBUS_SESSION_BUS_ADDRESS is\n"
               "set). No --app is needed.\n"
               "\n"
               "Options:\n"
               "      --enable       start: also enable instances 1..COUNT, so they come back\n"
               "                     at boot, and disable the loaded ones above COUNT\n"
               "                     (TEMPLATE needs an [Install] section)\n"
               "      --disable      stop: also disable the instances\n"
               "      --wait         wait until the jobs are done; start then checks that every\n"
               "                     instance is active (exit status 1 if one is not)\n"
               "      --timeout SEC  with --wait: give up after SEC seconds (exit status 4)\n"
               "      --json         status: one JSON object per instance and line: {\"unit\",\n"
               "                     \"active\", \"sub\", \"main_pid\"}\n"
               "      --no-legend    status: no header line\n"
               "      --user         the user's service manager\n"
               "      --system       the system service manager\n"
               "  -h, --help         show this help\n"
               "\n"
               "Exit status: 0 success, 1 failure (a job failed, an instance is not active),\n"
               "2 bad usage (bad TEMPLATE or COUNT), 3 no such unit (start: no such template;\n"
               "status: no instance loaded), 4 --wait timed out, 5 bus failure (no service\n"
               "manager on the bus, access denied).\n",
               COUNT_MAX);
}

/* "app@" or "app@.service" → "app". Unit names allow [A-Za-z0-9:_.\-] and, once, '@'. */
static int parse_template(const char *s, char **ret) {
        size_t n = strlen(s);
        const char *at = strchr(s, '@');

        if (!at || (strcmp(at, "@") != 0 && strcmp(at, "@.service") != 0) || at == s || n > 200)
                return -EINVAL;
        for (const char *p = s; p < at; p++)
                if (!g_ascii_isalnum(*p) && !strchr(":_.-\\", *p))
                        return -EINVAL;
        *ret = g_strndup(s, (size_t) (at - s));
        return 0;
}

/* The CPUs this process may run on, as PM2's "max" counts them. */
static unsigned cpu_count(void) {
        cpu_set_t set;
        long n;

        if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0)
                return (unsigned) CPU_COUNT(&set);
        n = sysconf(_SC_NPROCESSORS_ONLN);
        return n > 0 ? (unsigned) n : 1;
}

static int parse_count(const char *s, unsigned *ret) {
        unsigned long v;
        char *end;

        if (strcmp(s, "max") == 0) {
                *ret = MIN(cpu_count(), COUNT_MAX);
                return 0;
        }
        if (s[0] < '1' || s[0] > '9')
                return -EINVAL;
        errno = 0;
        v = strtoul(s, &end, 10);
        if (errno != 0 || *end != '\0' || v == 0 || v > COUNT_MAX)
                return -EINVAL;
        *ret = (unsigned) v;
        return 0;
}

static int parse_argv(int argc, char *argv[]) {
        enum { ARG_ENABLE = ARG_COMMON_MAX, ARG_DISABLE, ARG_WAIT, ARG_TIMEOUT, ARG_JSON, ARG_NO_LEGEND };
        static const struct option options[] = {
                COMMON_OPTIONS,
                { "enable", no_argument, NULL, ARG_ENABLE },
                { "disable", no_argument, NULL, ARG_DISABLE },
                { "wait", no_argument, NULL, ARG_WAIT },
                { "timeout", required_argument, NULL, ARG_TIMEOUT },
                { "json", no_argument, NULL, ARG_JSON },
                { "no-legend", no_argument, NULL, ARG_NO_LEGEND },
                {}
        };
        static const char *const actions[] = { "start", "stop", "status" };
        bool want_help = false, have_timeout = false;
        const char *action;
        int c, r, n;

        while ((c = getopt_long(argc, argv, COMMON_SHORTOPTS, options, NULL)) >= 0) {
                r = tool_parse_common_option(c, optarg, &want_help);
                if (r < 0)
                        return r;
                if (r > 0)
                        continue;
                switch (c) {
                case ARG_ENABLE:
                        arg_enable = true;
                        break;
                case ARG_DISABLE:
                        arg_disable = true;
                        break;
                case ARG_WAIT:
                        arg_wait = true;
                        break;
                case ARG_TIMEOUT:
                        if (tool_parse_seconds(optarg, &arg_timeout_usec) < 0 || arg_timeout_usec == 0) {
                                tool_usage_error("fleet", "invalid --timeout \"%s\": seconds, more than 0",
                                                 optarg);
                                return -EINVAL;
                        }
                        have_timeout = true;
                        break;
                case ARG_JSON:
                        arg_json = true;
                        break;
                case ARG_NO_LEGEND:
                        arg_legend = false;
                        break;
                default:
                        return tool_bad_option("fleet", c, argv);
                }
        }
        if (want_help) {
                help();
                return 0;
        }

        n = argc - optind;
        if (n < 1) {
                tool_usage_error("fleet", "fleet needs an action: start, stop or status");
                return -EINVAL;
        }
        action = argv[optind];
        for (c = 0; c < (int) G_N_ELEMENTS(actions) && strcmp(action, actions[c]) != 0; c++)
                ;
        if (c == (int) G_N_ELEMENTS(actions)) {
                tool_usage_error("fleet", "unknown fleet action \"%s\": start, stop or status", action);
                return -EINVAL;
        }
        arg_action = (fleet_action) c;

        if (n < 2) {
                tool_usage_error("fleet", "fleet %s needs TEMPLATE (such as ipchannel-demo@)", action);
                return -EINVAL;
        }
        if (parse_template(argv[optind + 1], &arg_prefix) < 0) {
                tool_usage_error("fleet", "invalid TEMPLATE \"%s\": a template unit name such as "
                                          "app@ or app@.service", argv[optind + 1]);
                return -EINVAL;
        }
        if (arg_action == FLEET_START) {
                if (n < 3) {
                        tool_usage_error("fleet", "fleet start needs COUNT: a number or max");
                        return -EINVAL;
                }
                if (parse_count(argv[optind + 2], &arg_count) < 0) {
                        tool_usage_error("fleet", "invalid COUNT \"%s\": a number from 1 to %u, or max",
                                         argv[optind + 2], COUNT_MAX);
                        return -EINVAL;
                }
        }
        if (n > (arg_action == FLEET_START ? 3 : 2)) {
                tool_usage_error("fleet", "unexpected argument \"%s\"",
                                 argv[optind + (arg_action == FLEET_START ? 3 : 2)]);
                return -EINVAL;
        }
        if (arg_enable && arg_action != FLEET_START) {
                tool_usage_error("fleet", "--enable goes with fleet start");
                return -EINVAL;
        }
        if (arg_disable && arg_action != FLEET_STOP) {
                tool_usage_error("fleet", "--disable goes with fleet stop");
                return -EINVAL;
        }
        if (arg_wait && arg_action == FLEET_STATUS) {
                tool_usage_error("fleet", "--wait goes with fleet start or stop");
                return -EINVAL;
        }
        if (have_timeout && !arg_wait) {
                tool_usage_error("fleet", "--timeout goes with --wait");
                return -EINVAL;
        }
        if ((arg_json || !arg_legend) && arg_action != FLEET_STATUS) {
                tool_usage_error("fleet", "--json and --no-legend go with fleet status");
                return -EINVAL;
        }
        return 1;
}

/* ---- the service manager ------------------------------------------------------------------ */

static const char *manager_label(void) {
        return arg_bus == BUS_USER || (arg_bus == BUS_DEFAULT && strcmp(tool_bus_label(), "user") == 0)
                       ? "user service manager"
                       : "system service manager";
}

/* The message for a failed manager call; returns the exit code. */
static int manager_fail(const char *what, const sd_bus_error *error, int r) {
        if (sd_bus_error_has_names(error, SD_BUS_ERROR_SERVICE_UNKNOWN, SD_BUS_ERROR_NAME_HAS_NO_OWNER))
                return tool_fail(EXIT_BUS, "no systemd %s on the %s bus (%s is not there)", manager_label(),
                                 tool_bus_label(), SYSTEMD_NAME);
        if (sd_bus_error_has_name(error, SYSTEMD_ERROR_NO_SUCH_UNIT))
                return tool_fail(EXIT_NOT_FOUND, "%s: %s", what, error->message);
        return tool_fail(tool_exit_code_for_bus_error(error, r), "%s: %s", what,
                         sd_bus_error_is_set(error) && error->message ? error->message : strerror(-r));
}

typedef struct instance {
        char *unit;
        long number;            /* the instance as a number, -1 if it is not one */
        char *active, *sub;
        char *path;
} instance;

static void instances_free(instance *v, size_t n) {
        for (size_t i = 0; i < n; i++) {
                free(v[i].unit);
                free(v[i].active);
                free(v[i].sub);
                free(v[i].path);
        }
        free(v);
}

static int instance_compare(const void *a, const void *b) {
        const instance *x = a, *y = b;

        if (x->number >= 0 && y->number >= 0)
                return x->number < y->number ? -1 : x->number > y->number;
        if ((x->number >= 0) != (y->number >= 0))
                return x->number >= 0 ? -1 : 1;
        return strcmp(x->unit, y->unit);
}

static long instance_number(const char *unit) {
        const char *p = unit + strlen(arg_prefix) + 1;  /* after "app@" */
        char *end;
        long v;

        if (*p < '1' || *p > '9')
                return -1;
        v = strtol(p, &end, 10);
        return strcmp(end, ".service") == 0 ? v : -1;
}

/* The loaded instances of the template (ListUnitsByPatterns), sorted. Returns an exit code. */
static int list_instances(sd_bus *bus, instance **ret, size_t *ret_n) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        g_autofree char *pattern = g_strdup_printf("%s@*.service", arg_prefix);
        const char *name, *active, *sub, *path;
        instance *v = NULL;
        size_t n = 0;
        int r;

        r = sd_bus_message_new_method_call(bus, &m, SYSTEMD_NAME, SYSTEMD_PATH, SYSTEMD_MANAGER,
                                           "ListUnitsByPatterns");
        if (r >= 0)
                r = sd_bus_message_append(m, "asas", 0, 1, pattern);
        if (r < 0)
                return tool_fail(EXIT_FAILURE, "cannot build a call: %s", strerror(-r));
        r = sd_bus_call(bus, m, 0, &error, &reply);
        if (r < 0)
                return manager_fail("cannot list the units", &error, r);

        r = sd_bus_message_enter_container(reply, 'a', "(ssssssouso)");
        while (r >= 0 && (r = sd_bus_message_read(reply, "(ssssssouso)", &name, NULL, NULL, &active, &sub,
                                                  NULL, &path, NULL, NULL, NULL)) > 0) {
                instance *nv = realloc(v, (n + 1) * sizeof(*v));

                if (!nv) {
                        r = -ENOMEM;
                        break;
                }
                v = nv;
                v[n++] = (instance) {
                        .unit = g_strdup(name),
                        .number = instance_number(name),
                        .active = g_strdup(active),
                        .sub = g_strdup(sub),
                        .path = g_strdup(path),
                };
        }
        if (r < 0) {
                instances_free(v, n);
                return tool_fail(EXIT_FAILURE, "cannot read the list of units: %s", strerror(-r));
        }
        if (n > 0)
                qsort(v, n, sizeof(*v), instance_compare);
        *ret = v;
        *ret_n = n;
        return EXIT_SUCCESS;
}

/* Jobs being waited for: job path → NULL until JobRemoved says its result. */
typedef struct waiter {
        GHashTable *jobs;       /* job path → result (NULL: still running) */
        GHashTable *units;      /* job path → unit */
        size_t n_pending;
        bool stop, timed_out;
} waiter;

static int on_job_removed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        waiter *w = userdata;
        const char *path, *unit, *result;
        uint32_t id;

        if (sd_bus_message_read(m, "uoss", &id, &path, &unit, &result) < 0)
                return 0;
        if (!g_hash_table_contains(w->jobs, path) || g_hash_table_lookup(w->jobs, path))
                return 0;
        g_hash_table_replace(w->jobs, g_strdup(path), g_strdup(result));
        w->n_pending--;
        return 0;
}

/* Queues a job (StartUnit or StopUnit) for unit; remembers it when waiting. */
static int queue_job(sd_bus *bus, waiter *w, const char *method, const char *unit) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        g_autofree char *what =
                g_strdup_printf("cannot %s %s", strcmp(method, "StartUnit") == 0 ? "start" : "stop", unit);
        const char *job;
        int r;

        r = sd_bus_call_method(bus, SYSTEMD_NAME, SYSTEMD_PATH, SYSTEMD_MANAGER, method, &error, &reply,
                               "ss", unit, "replace");
        if (r < 0)
                return manager_fail(what, &error, r);
        r = sd_bus_message_read(reply, "o", &job);
        if (r < 0)
                return tool_fail(EXIT_FAILURE, "%s: cannot read the reply: %s", what, strerror(-r));
        if (w && w->jobs) {
                /* JobRemoved signals are dispatched only after these calls, so none is missed. */
                g_hash_table_insert(w->jobs, g_strdup(job), NULL);
                g_hash_table_insert(w->units, g_strdup(job), g_strdup(unit));
                w->n_pending++;
        }
        return EXIT_SUCCESS;
}

static int on_wait_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        waiter *w = userdata;

        w->timed_out = true;
        return 0;
}

/* Runs until every job is removed; returns an exit code. */
static int wait_for_jobs(sd_bus *bus, waiter *w) {
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        _cleanup_(sd_event_source_unrefp) sd_event_source *timer = NULL;
        GHashTableIter it;
        gpointer path, result;
        int r, code = EXIT_SUCCESS;

        r = sd_event_new(&e);
        if (r >= 0)
                r = tool_add_stop_signals(e, &w->stop);
        if (r >= 0 && arg_timeout_usec != UINT64_MAX)
                r = sd_event_add_time_relative(e, &timer, CLOCK_MONOTONIC, arg_timeout_usec, 0,
                                               on_wait_timeout, w);
        if (r >= 0)
                r = sd_bus_attach_event(bus, e, 0);
        if (r < 0)
                return tool_fail(EXIT_FAILURE, "cannot set up the event loop: %s", strerror(-r));

        while (w->n_pending > 0 && !w->stop && !w->timed_out) {
                r = sd_event_run(e, UINT64_MAX);
                if (r < 0) {
                        code = tool_fail(EXIT_FAILURE, "event loop failed: %s", strerror(-r));
                        break;
                }
                if (sd_bus_is_open(bus) <= 0) {
                        code = tool_fail(EXIT_BUS, "lost the connection to the %s", manager_label());
                        break;
                }
        }
        (void) sd_bus_detach_event(bus);
        if (code != EXIT_SUCCESS)
                return code;
        if (w->stop)
                return tool_fail(EXIT_FAILURE, "interrupted while waiting; the jobs go on");
        if (w->timed_out)
                return tool_fail(EXIT_TIMEOUT, "timed out waiting for %zu job%s", w->n_pending,
                                 w->n_pending == 1 ? "" : "s");

        g_hash_table_iter_init(&it, w->jobs);
        while (g_hash_table_iter_next(&it, &path, &result))
                if (strcmp(result, "done") != 0)
                        code = tool_fail(EXIT_FAILURE, "job for %s: %s",
                                         (const char *) g_hash_table_lookup(w->units, path),
                                         (const char *) result);
        return code;
}

static int waiter_setup(sd_bus *bus, waiter *w, sd_bus_slot **ret_slot) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        w->jobs = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
        w->units = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
        r = sd_bus_match_signal(bus, ret_slot, SYSTEMD_NAME, SYSTEMD_PATH, SYSTEMD_MANAGER, "JobRemoved",
                                on_job_removed, w);
        if (r < 0)
                return tool_fail(EXIT_BUS, "cannot watch the %s's jobs: %s", manager_label(), strerror(-r));
        /* The manager sends its signals only while someone has subscribed. */
        r = sd_bus_call_method(bus, SYSTEMD_NAME, SYSTEMD_PATH, SYSTEMD_MANAGER, "Subscribe", &error, NULL,
                               NULL);
        if (r < 0)
                return manager_fail("cannot subscribe to the service manager", &error, r);
        return EXIT_SUCCESS;
}

static void waiter_done(waiter *w) {
        if (w->jobs)
                g_hash_table_unref(w->jobs);
        if (w->units)
                g_hash_table_unref(w->units);
}

/* EnableUnitFiles / DisableUnitFiles, then Reload as systemctl does. Returns an exit code. */
static int change_unit_files(sd_bus *bus, bool enable, char **units) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        int r, carries_install_info = 1;

        if (!units || !units[0])
                return EXIT_SUCCESS;
        r = sd_bus_message_new_method_call(bus, &m, SYSTEMD_NAME, SYSTEMD_PATH, SYSTEMD_MANAGER,
                                           enable ? "EnableUnitFiles" : "DisableUnitFiles");
        if (r >= 0)
                r = sd_bus_message_append_strv(m, units);
        if (r >= 0)
                r = enable ? sd_bus_message_append(m, "bb", 0, 0) : sd_bus_message_append(m, "b", 0);
        if (r < 0)
                return tool_fail(EXIT_FAILURE, "cannot build a call: %s", strerror(-r));
        r = sd_bus_call(bus, m, 0, &error, &reply);
        if (r < 0)
                return manager_fail(enable ? "cannot enable the instances" : "cannot disable the instances",
                                    &error, r);
        if (enable && sd_bus_message_read(reply, "b", &carries_install_info) >= 0 && !carries_install_info)
                tool_warn("%s@.service has no [Install] section: enabling its instances does nothing",
                          arg_prefix);

        sd_bus_error_free(&error);
        r = sd_bus_call_method(bus, SYSTEMD_NAME, SYSTEMD_PATH, SYSTEMD_MANAGER, "Reload", &error, NULL,
                               NULL);
        if (r < 0)
                return manager_fail("cannot reload the service manager", &error, r);
        return EXIT_SUCCESS;
}

static int unit_property(sd_bus *bus, const char *path, const char *interface, const char *property,
                         char **ret) {
        return sd_bus_get_property_string(bus, SYSTEMD_NAME, path, interface, property, NULL, ret);
}

/* After --wait: every instance 1..COUNT must be active. */
static int check_active(sd_bus *bus) {
        int code = EXIT_SUCCESS;

        for (unsigned i = 1; i <= arg_count; i++) {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
                g_autofree char *unit = g_strdup_printf("%s@%u.service", arg_prefix, i);
                g_autofree char *active = NULL, *sub = NULL;
                const char *path;

                if (sd_bus_call_method(bus, SYSTEMD_NAME, SYSTEMD_PATH, SYSTEMD_MANAGER, "GetUnit", NULL,
                                       &reply, "s", unit) < 0 ||
                    sd_bus_message_read(reply, "o", &path) < 0 ||
                    unit_property(bus, path, "org.freedesktop.systemd1.Unit", "ActiveState", &active) < 0) {
                        code = tool_fail(EXIT_FAILURE, "%s is not loaded", unit);
                        continue;
                }
                (void) unit_property(bus, path, "org.freedesktop.systemd1.Unit", "SubState", &sub);
                if (strcmp(active, "active") != 0)
                        code = tool_fail(EXIT_FAILURE, "%s is %s (%s)", unit, active, sub ?: "?");
        }
        return code;
}

static int fleet_start(sd_bus *bus) {
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *slot = NULL;
        g_autoptr(GPtrArray) enable = g_ptr_array_new_with_free_func(g_free);
        g_autoptr(GPtrArray) extra = g_ptr_array_new_with_free_func(g_free);
        instance *v = NULL;
        waiter w = {};
        size_t n = 0;
        int code;

        /* First, so that a missing manager is reported before anything changes. */
        code = list_instances(bus, &v, &n);
        if (code != EXIT_SUCCESS)
                return code;
        for (size_t i = 0; i < n; i++)
                if (v[i].number > (long) arg_count)
                        g_ptr_array_add(extra, g_strdup(v[i].unit));
        g_ptr_array_add(extra, NULL);

        if (arg_enable) {
                for (unsigned i = 1; i <= arg_count; i++)
                        g_ptr_array_add(enable, g_strdup_printf("%s@%u.service", arg_prefix, i));
                g_ptr_array_add(enable, NULL);
                code = change_unit_files(bus, true, (char **) enable->pdata);
                if (code == EXIT_SUCCESS)
                        code = change_unit_files(bus, false, (char **) extra->pdata);
                if (code != EXIT_SUCCESS)
                        goto finish;
        }
        if (arg_wait) {
                code = waiter_setup(bus, &w, &slot);
                if (code != EXIT_SUCCESS)
                        goto finish;
        }
        for (unsigned i = 1; i <= arg_count && code == EXIT_SUCCESS; i++) {
                g_autofree char *unit = g_strdup_printf("%s@%u.service", arg_prefix, i);

                code = queue_job(bus, &w, "StartUnit", unit);
        }
        for (size_t i = 0; i < n && code == EXIT_SUCCESS; i++)
                if (v[i].number > (long) arg_count && strcmp(v[i].active, "inactive") != 0 &&
                    strcmp(v[i].active, "failed") != 0)
                        code = queue_job(bus, &w, "StopUnit", v[i].unit);
        if (code == EXIT_SUCCESS && arg_wait) {
                code = wait_for_jobs(bus, &w);
                if (code == EXIT_SUCCESS)
                        code = check_active(bus);
        }

finish:
        waiter_done(&w);
        instances_free(v, n);
        return code;
}

static int fleet_stop(sd_bus *bus) {
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *slot = NULL;
        g_autoptr(GPtrArray) units = g_ptr_array_new_with_free_func(g_free);
        instance *v = NULL;
        waiter w = {};
        size_t n = 0;
        int code;

        code = list_instances(bus, &v, &n);
        if (code != EXIT_SUCCESS)
                return code;
        if (n == 0) {
                fprintf(stderr, "No instance of %s@.service is loaded: nothing to stop.\n", arg_prefix);
                goto finish;
        }
        if (arg_wait) {
                code = waiter_setup(bus, &w, &slot);
                if (code != EXIT_SUCCESS)
                        goto finish;
        }
        for (size_t i = 0; i < n && code == EXIT_SUCCESS; i++) {
                code = queue_job(bus, &w, "StopUnit", v[i].unit);
                g_ptr_array_add(units, g_strdup(v[i].unit));
        }
        g_ptr_array_add(units, NULL);
        if (code == EXIT_SUCCESS && arg_disable)
                code = change_unit_files(bus, false, (char **) units->pdata);
        if (code == EXIT_SUCCESS && arg_wait)
                code = wait_for_jobs(bus, &w);

finish:
        waiter_done(&w);
        instances_free(v, n);
        return code;
}

static int fleet_status(sd_bus *bus) {
        instance *v = NULL;
        uint32_t *pids;
        size_t n = 0;
        int code, w_unit = 4, w_active = 6, w_sub = 3;

        code = list_instances(bus, &v, &n);
        if (code != EXIT_SUCCESS)
                return code;
        if (n == 0) {
                instances_free(v, n);
                return tool_fail(EXIT_NOT_FOUND, "no instance of %s@.service is loaded", arg_prefix);
        }
        pids = calloc(n, sizeof(*pids));
        if (!pids) {
                instances_free(v, n);
                return tool_fail(EXIT_FAILURE, "out of memory");
        }
        for (size_t i = 0; i < n; i++) {
                (void) sd_bus_get_property_trivial(bus, SYSTEMD_NAME, v[i].path,
                                                   "org.freedesktop.systemd1.Service", "MainPID", NULL, 'u',
                                                   &pids[i]);
                w_unit = MAX(w_unit, (int) strlen(v[i].unit));
                w_active = MAX(w_active, (int) strlen(v[i].active));
                w_sub = MAX(w_sub, (int) strlen(v[i].sub));
        }
        if (!arg_json && arg_legend)
                printf("%-*s %-*s %-*s %s\n", w_unit, "UNIT", w_active, "ACTIVE", w_sub, "SUB", "PID");
        for (size_t i = 0; i < n; i++) {
                if (arg_json) {
                        g_autoptr(GString) out = g_string_new("{\"unit\":");

                        json_append_string(out, v[i].unit);
                        g_string_append(out, ",\"active\":");
                        json_append_string(out, v[i].active);
                        g_string_append(out, ",\"sub\":");
                        json_append_string(out, v[i].sub);
                        if (pids[i])
                                g_string_append_printf(out, ",\"main_pid\":%" PRIu32 "}", pids[i]);
                        else
                                g_string_append(out, ",\"main_pid\":null}");
                        puts(out->str);
                } else if (pids[i])
                        printf("%-*s %-*s %-*s %" PRIu32 "\n", w_unit, v[i].unit, w_active, v[i].active,
                               w_sub, v[i].sub, pids[i]);
                else
                        printf("%-*s %-*s %-*s -\n", w_unit, v[i].unit, w_active, v[i].active, w_sub,
                               v[i].sub);
        }
        free(pids);
        instances_free(v, n);
        return fflush(stdout) == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

int verb_fleet(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        int r, code;

        r = parse_argv(argc, argv);
        if (r <= 0) {
                g_free(arg_prefix);
                return r < 0 ? EXIT_USAGE : EXIT_SUCCESS;
        }
        if (tool_open_bus(&bus) < 0) {
                g_free(arg_prefix);
                return EXIT_BUS;
        }
        /* Let polkit ask for a password, as systemctl does, when someone is there to type it. */
        (void) sd_bus_set_allow_interactive_authorization(bus, isatty(STDIN_FILENO));

        switch (arg_action) {
        case FLEET_START:
                code = fleet_start(bus);
                break;
        case FLEET_STOP:
                code = fleet_stop(bus);
                break;
        default:
                code = fleet_status(bus);
                break;
        }
        g_free(arg_prefix);
        return code;
}

/* SPDX-License-Identifier: MIT */
/* fake-systemd: the part of org.freedesktop.systemd1.Manager that ipchannel fleet uses, for tests. */
#include <errno.h>
#include <fnmatch.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>

#include <glib.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

/*
 * Owns org.freedesktop.systemd1 on the bus it is given and keeps a table of units in memory.
 * Templates are declared on the command line; a start or stop job completes (JobRemoved) on
 * the next loop iteration. Units stay loaded once started, as systemd keeps them while they are
 * referenced. Method signatures follow org.freedesktop.systemd1(5).
 *
 *   --template NAME      NAME@.service exists and has an [Install] section
 *   --no-install NAME    NAME@.service exists without an [Install] section
 *   --fail NAME@N        starting NAME@N.service fails (job result "failed")
 *   --hang NAME          jobs of NAME@*.service never finish
 *
 * For the tests, interface org.ipchannel.test.FakeManager at the same path: Enabled() → as (the
 * enabled units, sorted), Reloads() → u, Jobs() → a(ss) (unit, job type, in order).
 * Prints "ready" on stdout once the name is owned.
 */

#define MANAGER_PATH "/org/freedesktop/systemd1"
#define UNIT_PREFIX "/org/freedesktop/systemd1/unit"

typedef struct unit {
        char *name;
        const char *active, *sub;
        uint32_t main_pid;
} unit;

static GPtrArray *arg_templates, *arg_no_install, *arg_fail, *arg_hang;
static GHashTable *units;       /* name → unit */
static GHashTable *enabled;     /* name → NULL */
static GPtrArray *jobs_log;     /* "unit type" strings */
static uint32_t n_reloads, next_job = 1, next_pid = 4000;
static sd_bus *bus;
static sd_event *event;

static void unit_free(void *p) {
        unit *u = p;

        g_free(u->name);
        g_free(u);
}

/* The template of name ("app" for "app@3.service"), if it is one of ours. */
static bool template_known(const char *name, const char **ret_kind) {
        const char *at = strchr(name, '@');
        g_autofree char *prefix = at ? g_strndup(name, (size_t) (at - name)) : NULL;

        if (!prefix || !g_str_has_suffix(name, ".service") || at[1] == '.')
                return false;
        for (guint i = 0; i < arg_templates->len; i++)
                if (strcmp(arg_templates->pdata[i], prefix) == 0) {
                        *ret_kind = "install";
                        return true;
                }
        for (guint i = 0; i < arg_no_install->len; i++)
                if (strcmp(arg_no_install->pdata[i], prefix) == 0) {
                        *ret_kind = "no-install";
                        return true;
                }
        for (guint i = 0; i < arg_hang->len; i++)
                if (strcmp(arg_hang->pdata[i], prefix) == 0) {
                        *ret_kind = "hang";
                        return true;
                }
        return false;
}

static bool in_list(GPtrArray *list, const char *s) {
        for (guint i = 0; i < list->len; i++)
                if (strcmp(list->pdata[i], s) == 0)
                        return true;
        return false;
}

static char *unit_path(const char *name) {
        char *path = NULL;

        (void) sd_bus_path_encode(UNIT_PREFIX, name, &path);
        return path;
}

typedef struct job {
        uint32_t id;
        char *path, *unit, *result;
        sd_event_source *done;
} job;

static int on_job_done(sd_event_source *s, void *userdata) {
        job *j = userdata;

        (void) sd_bus_emit_signal(bus, MANAGER_PATH, "org.freedesktop.systemd1.Manager", "JobRemoved",
                                  "uoss", j->id, j->path, j->unit, j->result);
        g_free(j->path);
        g_free(j->unit);
        g_free(j->result);
        g_free(j);
        sd_event_source_disable_unref(s);       /* sd-event keeps it alive until we return */
        return 0;
}

/* Runs a start or stop job: the state changes now, JobRemoved follows after this call's reply. */
static int method_job(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        bool start = strcmp(sd_bus_message_get_member(m), "StartUnit") == 0;
        const char *name, *mode, *kind;
        job *j;
        unit *u;
        int r;

        r = sd_bus_message_read(m, "ss", &name, &mode);
        if (r < 0)
                return r;
        if (!template_known(name, &kind))
                return sd_bus_error_setf(error, "org.freedesktop.systemd1.NoSuchUnit", "Unit %s not found.",
                                         name);

        u = g_hash_table_lookup(units, name);
        if (!u) {
                u = g_new0(unit, 1);
                u->name = g_strdup(name);
                u->active = "inactive";
                u->sub = "dead";
                g_hash_table_insert(units, u->name, u);
        }
        j = g_new0(job, 1);
        j->id = next_job++;
        j->path = g_strdup_printf(MANAGER_PATH "/job/%" PRIu32, j->id);
        j->unit = g_strdup(name);
        g_ptr_array_add(jobs_log, g_strdup_printf("%s %s", name, start ? "start" : "stop"));
        if (!start) {
                u->active = "inactive";
                u->sub = "dead";
                u->main_pid = 0;
                j->result = g_strdup("done");
        } else if (in_list(arg_fail, name)) {
                u->active = "failed";
                u->sub = "failed";
                u->main_pid = 0;
                j->result = g_strdup("failed");
        } else {
                u->active = "active";
                u->sub = "running";
                if (!u->main_pid)
                        u->main_pid = next_pid++;
                j->result = g_strdup("done");
        }
        r = sd_bus_reply_method_return(m, "o", j->path);
        /* A hanging job stays queued for ever: its JobRemoved never comes. */
        if (strcmp(kind, "hang") != 0 && sd_event_add_defer(event, &j->done, on_job_done, j) >= 0)
                return r;
        g_free(j->path);
        g_free(j->unit);
        g_free(j->result);
        g_free(j);
        return r;
}

static bool matches_any(const char *name, char **patterns) {
        if (!patterns || !patterns[0])
                return true;
        for (char **p = patterns; *p; p++)
                if (fnmatch(*p, name, 0) == 0)
                        return true;
        return false;
}

static int method_list_units_by_patterns(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        g_auto(GStrv) states = NULL, patterns = NULL;
        sd_bus_message *reply = NULL;
        GHashTableIter it;
        gpointer value;
        int r;

        r = sd_bus_message_read_strv(m, &states);
        if (r >= 0)
                r = sd_bus_message_read_strv(m, &patterns);
        if (r < 0)
                return r;
        r = sd_bus_message_new_method_return(m, &reply);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'a', "(ssssssouso)");
        g_hash_table_iter_init(&it, units);
        while (r >= 0 && g_hash_table_iter_next(&it, NULL, &value)) {
                unit *u = value;
                g_autofree char *path = unit_path(u->name);

                if (!matches_any(u->name, patterns))
                        continue;
                if (states && states[0] && !g_strv_contains((const char *const *) states, u->active))
                        continue;
                r = sd_bus_message_append(reply, "(ssssssouso)", u->name, "fake unit", "loaded", u->active,
                                          u->sub, "", path, (uint32_t) 0, "", "/");
        }
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        if (r >= 0)
                r = sd_bus_send(NULL, reply, NULL);
        sd_bus_message_unref(reply);
        return r;
}

static int method_unit_files(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        bool enable = strcmp(sd_bus_message_get_member(m), "EnableUnitFiles") == 0;
        g_auto(GStrv) files = NULL;
        sd_bus_message *reply = NULL;
        bool carries_install_info = true;
        const char *kind;
        int runtime = 0, force = 0, r;

        r = sd_bus_message_read_strv(m, &files);
        if (r >= 0)
                r = enable ? sd_bus_message_read(m, "bb", &runtime, &force)
                           : sd_bus_message_read(m, "b", &runtime);
        if (r < 0)
                return r;
        for (char **f = files; f && *f; f++) {
                if (!template_known(*f, &kind))
                        return sd_bus_error_setf(error, "org.freedesktop.DBus.Error.FileNotFound",
                                                 "Unit file %s does not exist.", *f);
                if (strcmp(kind, "no-install") == 0)
                        carries_install_info = false;
                else if (enable)
                        g_hash_table_add(enabled, g_strdup(*f));
                else
                        g_hash_table_remove(enabled, *f);
        }
        r = sd_bus_message_new_method_return(m, &reply);
        if (r >= 0 && enable)
                r = sd_bus_message_append(reply, "b", carries_install_info);
        if (r >= 0)
                r = sd_bus_message_append(reply, "a(sss)", 0);
        if (r >= 0)
                r = sd_bus_send(NULL, reply, NULL);
        sd_bus_message_unref(reply);
        return r;
}

static int method_reload(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        n_reloads++;
        return sd_bus_reply_method_return(m, NULL);
}

static int method_subscribe(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        return sd_bus_reply_method_return(m, NULL);
}

static int method_get_unit(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        g_autofree char *path = NULL;
        const char *name;
        int r;

        r = sd_bus_message_read(m, "s", &name);
        if (r < 0)
                return r;
        if (!g_hash_table_contains(units, name))
                return sd_bus_error_setf(error, "org.freedesktop.systemd1.NoSuchUnit", "Unit %s not loaded.",
                                         name);
        path = unit_path(name);
        return sd_bus_reply_method_return(m, "o", path);
}

static int compare_strings(const void *a, const void *b) {
        return strcmp(*(const char *const *) a, *(const char *const *) b);
}

static int method_enabled(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        g_autofree const char **names = (const char **) g_hash_table_get_keys_as_array(enabled, NULL);
        sd_bus_message *reply = NULL;
        int r;

        qsort(names, g_hash_table_size(enabled), sizeof(char *), compare_strings);
        r = sd_bus_message_new_method_return(m, &reply);
        if (r >= 0)
                r = sd_bus_message_append_strv(reply, (char **) names);
        if (r >= 0)
                r = sd_bus_send(NULL, reply, NULL);
        sd_bus_message_unref(reply);
        return r;
}

static int method_reloads(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        return sd_bus_reply_method_return(m, "u", n_reloads);
}

static int method_jobs(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        sd_bus_message *reply = NULL;
        int r;

        r = sd_bus_message_new_method_return(m, &reply);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'a', "(ss)");
        for (guint i = 0; r >= 0 && i < jobs_log->len; i++) {
                g_auto(GStrv) w = g_strsplit(jobs_log->pdata[i], " ", 2);
                r = sd_bus_message_append(reply, "(ss)", w[0], w[1]);
        }
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        if (r >= 0)
                r = sd_bus_send(NULL, reply, NULL);
        sd_bus_message_unref(reply);
        return r;
}

static const sd_bus_vtable manager_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_METHOD("StartUnit", "ss", "o", method_job, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("StopUnit", "ss", "o", method_job, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("ListUnitsByPatterns", "asas", "a(ssssssouso)", method_list_units_by_patterns,
                      SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("EnableUnitFiles", "asbb", "ba(sss)", method_unit_files, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("DisableUnitFiles", "asb", "a(sss)", method_unit_files, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("Reload", "", "", method_reload, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("Subscribe", "", "", method_subscribe, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("GetUnit", "s", "o", method_get_unit, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_SIGNAL("JobRemoved", "uoss", 0),
        SD_BUS_VTABLE_END,
};

static const sd_bus_vtable test_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_METHOD("Enabled", "", "as", method_enabled, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("Reloads", "", "u", method_reloads, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("Jobs", "", "a(ss)", method_jobs, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_VTABLE_END,
};

static int property_get(sd_bus *b, const char *path, const char *interface, const char *property,
                        sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        unit *u = userdata;

        if (strcmp(property, "ActiveState") == 0)
                return sd_bus_message_append(reply, "s", u->active);
        if (strcmp(property, "SubState") == 0)
                return sd_bus_message_append(reply, "s", u->sub);
        return sd_bus_message_append(reply, "u", u->main_pid);
}

static const sd_bus_vtable unit_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("ActiveState", "s", property_get, 0, 0),
        SD_BUS_PROPERTY("SubState", "s", property_get, 0, 0),
        SD_BUS_VTABLE_END,
};

static const sd_bus_vtable service_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("MainPID", "u", property_get, 0, 0),
        SD_BUS_VTABLE_END,
};

static int find_unit(sd_bus *b, const char *path, const char *interface, void *userdata, void **ret_found,
                     sd_bus_error *error) {
        g_autofree char *name = NULL;
        unit *u;

        if (sd_bus_path_decode(path, UNIT_PREFIX, &name) <= 0)
                return 0;
        u = g_hash_table_lookup(units, name);
        if (!u)
                return 0;
        *ret_found = u;
        return 1;
}

int main(int argc, char *argv[]) {
        static const struct option options[] = {
                { "template", required_argument, NULL, 't' },
                { "no-install", required_argument, NULL, 'n' },
                { "fail", required_argument, NULL, 'f' },
                { "hang", required_argument, NULL, 'H' },
                {}
        };
        sigset_t mask;
        int c, r;

        prctl(PR_SET_PDEATHSIG, SIGKILL);
        arg_templates = g_ptr_array_new();
        arg_no_install = g_ptr_array_new();
        arg_fail = g_ptr_array_new_with_free_func(g_free);
        arg_hang = g_ptr_array_new();
        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0)
                switch (c) {
                case 't':
                        g_ptr_array_add(arg_templates, optarg);
                        break;
                case 'n':
                        g_ptr_array_add(arg_no_install, optarg);
                        break;
                case 'f':
                        g_ptr_array_add(arg_fail, g_strdup_printf("%s.service", optarg));
                        break;
                case 'H':
                        g_ptr_array_add(arg_hang, optarg);
                        break;
                default:
                        return 2;
                }
        units = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, unit_free);
        enabled = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
        jobs_log = g_ptr_array_new_with_free_func(g_free);

        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigprocmask(SIG_BLOCK, &mask, NULL);
        r = sd_event_default(&event);
        if (r >= 0)
                r = sd_event_add_signal(event, NULL, SIGTERM, NULL, NULL);
        if (r >= 0)
                r = sd_event_add_signal(event, NULL, SIGINT, NULL, NULL);
        if (r >= 0)
                r = sd_bus_open_user(&bus);
        if (r >= 0)
                r = sd_bus_attach_event(bus, event, 0);
        if (r >= 0)
                r = sd_bus_add_object_vtable(bus, NULL, MANAGER_PATH, "org.freedesktop.systemd1.Manager",
                                             manager_vtable, NULL);
        if (r >= 0)
                r = sd_bus_add_object_vtable(bus, NULL, MANAGER_PATH, "org.ipchannel.test.FakeManager",
                                             test_vtable, NULL);
        if (r >= 0)
                r = sd_bus_add_fallback_vtable(bus, NULL, UNIT_PREFIX, "org.freedesktop.systemd1.Unit",
                                               unit_vtable, find_unit, NULL);
        if (r >= 0)
                r = sd_bus_add_fallback_vtable(bus, NULL, UNIT_PREFIX, "org.freedesktop.systemd1.Service",
                                               service_vtable, find_unit, NULL);
        if (r >= 0)
                r = sd_bus_request_name(bus, "org.freedesktop.systemd1", 0);
        if (r < 0) {
                fprintf(stderr, "fake-systemd: %s\n", strerror(-r));
                return 1;
        }
        printf("ready\n");
        fflush(stdout);
        r = sd_event_loop(event);
        sd_bus_flush_close_unref(bus);
        sd_event_unref(event);
        return r < 0 ? 1 : 0;
}

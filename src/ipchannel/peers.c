/* SPDX-License-Identifier: MIT */
/* ipchannel peers: the live peers of an app, with their bus names, pids and systemd units. */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "tool.h"

static bool arg_json;
static bool arg_legend = true;
static bool arg_ids_only;

static void help(void) {
        printf("Usage: ipchannel [--app NAME] peers [--json] [--no-legend] [--ids-only]\n"
               "\n"
               "Lists the live peers of the app, sorted by peer id: the processes that own a\n"
               "bus name org.ipchannel.NAME.Peer<ID>. For each: the peer id, the unique bus\n"
               "name of its connection, its pid and its systemd unit (\"-\" when it runs in\n"
               "none; a user unit is shown when there is one).\n"
               "\n"
               "Options:\n"
               "      --json        one JSON object per peer and line: {\"id\", \"name\",\n"
               "                    \"pid\", \"unit\"} (unit null when there is none)\n"
               "      --no-legend   no header line and no count at the end\n"
               "      --ids-only    only the peer ids, one per line (for scripts and shell\n"
               "                    completion)\n"
               "  -a, --app NAME    the app (default: $IPCHANNEL_APP)\n"
               "      --user        use the user bus\n"
               "      --system      use the system bus\n"
               "  -h, --help        show this help\n"
               "\n"
               "Exit status: 0 (also when there is no peer), 2 bad usage, 5 bus failure.\n");
}

static int parse_argv(int argc, char *argv[]) {
        enum { ARG_JSON = ARG_COMMON_MAX, ARG_NO_LEGEND, ARG_IDS_ONLY };
        static const struct option options[] = {
                COMMON_OPTIONS,
                { "json", no_argument, NULL, ARG_JSON },
                { "no-legend", no_argument, NULL, ARG_NO_LEGEND },
                { "ids-only", no_argument, NULL, ARG_IDS_ONLY },
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
                case ARG_IDS_ONLY:
                        arg_ids_only = true;
                        break;
                default:
                        return tool_bad_option("peers", c, argv);
                }
        }
        if (want_help) {
                help();
                return 0;
        }
        if (optind < argc) {
                tool_usage_error("peers", "unexpected argument \"%s\"", argv[optind]);
                return -EINVAL;
        }
        if (tool_require_app("peers") < 0)
                return -EINVAL;
        return 1;
}

typedef struct peer_row {
        uint32_t id;
        const char *name;
        uint32_t pid;
        char *unit;
} peer_row;

/* The pid and unit of the connection; a user unit when the process runs in one (a fleet
 * started with --user), else the system unit. Both stay empty when the broker will not say. */
static void peer_row_fill(sd_bus *bus, peer_row *row) {
        _cleanup_(sd_bus_creds_unrefp) sd_bus_creds *creds = NULL;
        const char *unit = NULL;
        pid_t pid = 0;

        if (sd_bus_get_name_creds(bus, row->name,
                                  SD_BUS_CREDS_PID | SD_BUS_CREDS_UNIT | SD_BUS_CREDS_USER_UNIT |
                                          SD_BUS_CREDS_AUGMENT,
                                  &creds) < 0)
                return;
        if (sd_bus_creds_get_pid(creds, &pid) >= 0)
                row->pid = (uint32_t) pid;
        if (sd_bus_creds_get_user_unit(creds, &unit) >= 0 ||
            sd_bus_creds_get_unit(creds, &unit) >= 0)
                row->unit = strdup(unit);
}

static void print_table(peer_row *rows, size_t n) {
        int w_id = (int) strlen("PEER"), w_name = (int) strlen("NAME"), w_pid = (int) strlen("PID");
        char buf[16];

        if (n == 0) {
                if (arg_legend)
                        printf("No peer of app %s is on the %s bus.\n", arg_app, tool_bus_label());
                return;
        }
        for (size_t i = 0; i < n; i++) {
                w_id = MAX(w_id, snprintf(buf, sizeof(buf), "%" PRIu32, rows[i].id));
                w_name = MAX(w_name, (int) strlen(rows[i].name));
                w_pid = MAX(w_pid, snprintf(buf, sizeof(buf), "%" PRIu32, rows[i].pid));
        }
        if (arg_legend)
                printf("%-*s %-*s %*s %s\n", w_id, "PEER", w_name, "NAME", w_pid, "PID", "UNIT");
        for (size_t i = 0; i < n; i++) {
                if (rows[i].pid)
                        snprintf(buf, sizeof(buf), "%" PRIu32, rows[i].pid);
                else
                        strcpy(buf, "-");
                printf("%-*" PRIu32 " %-*s %*s %s\n", w_id, rows[i].id, w_name, rows[i].name, w_pid, buf,
                       rows[i].unit ?: "-");
        }
        if (arg_legend)
                printf("\n%zu peer%s of app %s.\n", n, n == 1 ? "" : "s", arg_app);
}

static void print_json(peer_row *rows, size_t n) {
        for (size_t i = 0; i < n; i++) {
                g_autoptr(GString) out = g_string_new(NULL);

                g_string_append_printf(out, "{\"id\":%" PRIu32 ",\"name\":", rows[i].id);
                json_append_string(out, rows[i].name);
                if (rows[i].pid)
                        g_string_append_printf(out, ",\"pid\":%" PRIu32, rows[i].pid);
                else
                        g_string_append(out, ",\"pid\":null");
                g_string_append(out, ",\"unit\":");
                if (rows[i].unit)
                        json_append_string(out, rows[i].unit);
                else
                        g_string_append(out, "null");
                g_string_append_c(out, '}');
                puts(out->str);
        }
}

int verb_peers(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        tool_peer *peers = NULL;
        peer_row *rows;
        size_t n = 0;
        int r;

        r = parse_argv(argc, argv);
        if (r <= 0)
                return r < 0 ? EXIT_USAGE : EXIT_SUCCESS;

        if (tool_open_bus(&bus) < 0)
                return EXIT_BUS;
        if (tool_list_peers(bus, &peers, &n) < 0)
                return EXIT_BUS;

        if (arg_ids_only) {
                for (size_t i = 0; i < n; i++)
                        printf("%" PRIu32 "\n", peers[i].id);
                tool_peers_free(peers, n);
                return EXIT_SUCCESS;
        }

        rows = calloc(n ?: 1, sizeof(*rows));
        if (!rows) {
                tool_peers_free(peers, n);
                return tool_fail(EXIT_FAILURE, "out of memory");
        }
        for (size_t i = 0; i < n; i++) {
                rows[i] = (peer_row) { .id = peers[i].id, .name = peers[i].unique_name };
                peer_row_fill(bus, &rows[i]);
        }
        if (arg_json)
                print_json(rows, n);
        else
                print_table(rows, n);

        for (size_t i = 0; i < n; i++)
                free(rows[i].unit);
        free(rows);
        tool_peers_free(peers, n);
        return fflush(stdout) == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

/* SPDX-License-Identifier: MIT */
/* ipchannel-bench: runs one process of a benchmark case for tests/bench/run-bench. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>

#include "bench-util.h"

typedef struct role {
        const char *name;
        int (*run)(const bench_opts *o);
        const char *help;
        bool needs_file;        /* runs critical sections on the counter file */
} role;

static const role roles[] = {
        { "ipc-recv", role_ipc_recv, "peer that counts \"(si)\" messages (--count)" },
        { "ipc-send", role_ipc_send, "peer that sends --count messages to --to from its loop" },
        { "ipc-send-queued", role_ipc_send_queued, "sends --count messages before connecting" },
        { "ipc-bcast", role_ipc_bcast, "broadcast peer; counts; --sender sends to all" },
        { "ipc-pingpong", role_ipc_pingpong, "echoes (--to 0) or measures round trips to --to" },
        { "ipc-sync", role_ipc_sync, "--count sections under ipchannel_synchronize()", true },
        { "ipc-acquire", role_ipc_acquire, "--count sections under ipchannel_lock_acquire()",
          true },
        { "ipc-payload-send", role_ipc_payload_send, "sends --size byte payloads to --to" },
        { "ipc-payload-recv", role_ipc_payload_recv, "checks --size byte payloads and acks" },
        { "ipc-idle", role_ipc_idle, "idle peer; RSS after --settle-msec" },
        { "raw-server", role_raw_server, "sd-bus server: Deliver (counts), Ping, Data" },
        { "raw-send", role_raw_send, "sd-bus no-reply calls to Raw<to> from the loop" },
        { "raw-send-queued", role_raw_send_queued, "sd-bus sends queued before the bus is up" },
        { "raw-bcast", role_raw_bcast, "sd-bus signal receiver; --sender emits" },
        { "raw-pingpong", role_raw_pingpong, "sd-bus method call round trips" },
        { "raw-echo", role_raw_echo, "ipchannel's Deliver calls by hand: echoes (--to 0) or "
                                     "measures round trips to --to" },
        { "raw-payload-send", role_raw_payload_send, "sd-bus \"ay\" method calls" },
        { "raw-idle", role_raw_idle, "idle sd-bus client; RSS after --settle-msec" },
        { "unix-pingpong", role_unix_pingpong, "AF_UNIX socketpair round trips (forks)" },
        { "flock", role_flock, "--count sections under flock(2) on --file", true },
        { "glib-floor", role_glib_floor, "the bench's own GLib work per message of case a" },
};

static void help(void) {
        printf("Usage: ipchannel-bench ROLE [OPTIONS]\n\n"
               "One process of a benchmark case; tests/bench/run-bench starts and drives them\n"
               "(\"go\" on stdin starts the work, EOF ends the process). Roles:\n");
        for (size_t i = 0; i < sizeof(roles) / sizeof(roles[0]); i++)
                printf("  %-18s %s\n", roles[i].name, roles[i].help);
        printf("\nOptions: --app NAME --peer-id N --to N --count N --warmup N --chunk N\n"
               "         --size BYTES --file PATH --lock NAME --settle-msec N --sender --empty\n"
               "         --memfd-threshold BYTES (0: payloads always inline)\n");
}

static int parse_u64(const char *s, uint64_t *ret) {
        char *end;

        errno = 0;
        *ret = strtoull(s, &end, 10);
        return errno != 0 || end == s || *end != '\0' || s[0] == '-' ? -EINVAL : 0;
}

static int parse_argv(int argc, char *argv[], bench_opts *o) {
        enum { ARG_APP = 0x100, ARG_PEER_ID, ARG_TO, ARG_COUNT, ARG_WARMUP, ARG_CHUNK, ARG_SIZE,
               ARG_FILE, ARG_LOCK, ARG_SETTLE, ARG_SENDER, ARG_EMPTY, ARG_MEMFD_THRESHOLD };
        static const struct option options[] = {
                { "app", required_argument, NULL, ARG_APP },
                { "peer-id", required_argument, NULL, ARG_PEER_ID },
                { "to", required_argument, NULL, ARG_TO },
                { "count", required_argument, NULL, ARG_COUNT },
                { "warmup", required_argument, NULL, ARG_WARMUP },
                { "chunk", required_argument, NULL, ARG_CHUNK },
                { "size", required_argument, NULL, ARG_SIZE },
                { "file", required_argument, NULL, ARG_FILE },
                { "lock", required_argument, NULL, ARG_LOCK },
                { "settle-msec", required_argument, NULL, ARG_SETTLE },
                { "sender", no_argument, NULL, ARG_SENDER },
                { "empty", no_argument, NULL, ARG_EMPTY },
                { "memfd-threshold", required_argument, NULL, ARG_MEMFD_THRESHOLD },
                { "help", no_argument, NULL, 'h' },
                {}
        };
        uint64_t v = 0;
        int c;

        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0) {
                if (c == 'h') {
                        help();
                        exit(EXIT_SUCCESS);
                }
                if (c == '?')
                        return -EINVAL;
                if (optarg && c != ARG_APP && c != ARG_FILE && c != ARG_LOCK &&
                    parse_u64(optarg, &v) < 0) {
                        fprintf(stderr, "ipchannel-bench: not a number: %s\n", optarg);
                        return -EINVAL;
                }
                switch (c) {
                case ARG_APP: o->app = optarg; break;
                case ARG_PEER_ID: o->peer_id = (uint32_t) v; break;
                case ARG_TO: o->to = (uint32_t) v; break;
                case ARG_COUNT: o->count = (unsigned) v; break;
                case ARG_WARMUP: o->warmup = (unsigned) v; break;
                case ARG_CHUNK: o->chunk = v > 0 ? (unsigned) v : 1; break;
                case ARG_SIZE: o->size = (size_t) v; break;
                case ARG_FILE: o->file = optarg; break;
                case ARG_LOCK: o->lock = optarg; break;
                case ARG_SETTLE: o->settle_msec = (unsigned) v; break;
                case ARG_SENDER: o->sender = true; break;
                case ARG_EMPTY: o->empty = true; break;
                case ARG_MEMFD_THRESHOLD: o->memfd_threshold = (int64_t) v; break;
                default: return -EINVAL;
                }
        }
        if (optind != argc) {
                fprintf(stderr, "ipchannel-bench: unexpected argument: %s\n", argv[optind]);
                return -EINVAL;
        }
        return 0;
}

int main(int argc, char *argv[]) {
        bench_opts o = {
                .app = "bench",
                .to = 1,
                .count = 1000,
                .chunk = 1000,
                .lock = "counter",
                .settle_msec = 500,
                .memfd_threshold = -1,
        };

        /* Never outlive the conductor, whatever happens to it. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        /* A closed pipe to the conductor must be an error from write(), not a silent death. */
        signal(SIGPIPE, SIG_IGN);

        if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
                help();
                return argc < 2 ? 2 : 0;
        }
        for (size_t i = 0; i < sizeof(roles) / sizeof(roles[0]); i++)
                if (strcmp(argv[1], roles[i].name) == 0) {
                        if (parse_argv(argc - 1, argv + 1, &o) < 0)
                                return 2;
                        if (roles[i].needs_file && !o.file && !o.empty) {
                                fprintf(stderr, "ipchannel-bench: %s needs --file or --empty\n",
                                        argv[1]);
                                return 2;
                        }
                        return roles[i].run(&o);
                }
        fprintf(stderr, "ipchannel-bench: unknown role: %s (see --help)\n", argv[1]);
        return 2;
}

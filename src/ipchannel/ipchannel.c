/* SPDX-License-Identifier: MIT */
/* ipchannel: see and poke an ipchannel app from a shell: peers, messages, locks, the fleet. */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "tool.h"

typedef struct verb {
        const char *name;
        int (*run)(int argc, char *argv[]);
} verb;

static const verb verbs[] = {
        { "peers", verb_peers },   { "send", verb_send },   { "emit", verb_emit },
        { "listen", verb_listen }, { "locks", verb_locks }, { "run", verb_run },
        { "fleet", verb_fleet },
};

static void help(void) {
        printf("Usage: ipchannel [--user|--system] [--app NAME] COMMAND [ARG...]\n"
               "\n"
               "See and poke the processes (peers) of an ipchannel app from a shell: which\n"
               "peers are up, what they send each other, who holds a cluster-wide lock; run a\n"
               "command under a cluster-wide lock; start and stop a fleet of systemd instances.\n"
               "\n"
               "Commands:\n"
               "  peers                         list the live peers of the app\n"
               "  send PEER|all DATA            send DATA (event \"message\") to a peer\n"
               "  emit PEER|all EVENT [DATA]    send a named event to a peer, or to all\n"
               "  listen [EVENT...]             print the messages a peer gets (or --monitor)\n"
               "  locks [LOCK...]               list the app's locks, holders and waiters\n"
               "  run LOCK -- CMD [ARG...]      run CMD while holding LOCK cluster-wide\n"
               "  fleet start|stop|status ...   manage instances of a systemd template unit\n"
               "\n"
               "Options (also accepted after COMMAND):\n"
               "  -a, --app NAME    the app (default: $IPCHANNEL_APP); all commands but fleet\n"
               "                    need one\n"
               "      --user        use the user bus (for fleet: the user's service manager)\n"
               "      --system      use the system bus (for fleet: the system manager)\n"
               "                    (default: the user bus if DBUS_SESSION_BUS_ADDRESS is set,\n"
               "                    else the system bus, as the library does)\n"
               "  -h, --help        show this help; 'ipchannel COMMAND --help' for a command\n"
               "      --version     show the version\n"
               "\n"
               "DATA is GVariant text: 'a string', 42, uint64 7, (1, 'two'), [1, 2],\n"
               "{'key': <1>}. Quote it for the shell: ipchannel send 1 \"('hello', 42)\".\n"
               "\n"
               "Exit status:\n"
               "  0  success\n"
               "  1  failure\n"
               "  2  bad usage: unknown option, missing argument, bad DATA, TEMPLATE or COUNT\n"
               "  3  not found: no such peer, lock, lock service or unit\n"
               "  4  timeout: the lock (run --timeout) or the wait (fleet --wait) timed out\n"
               "  5  bus failure: cannot connect, access denied, no service manager\n"
               "  run exits with its command's status (128+N if it was killed by signal N).\n"
               "\n"
               "See ipchannel(1).\n");
}

static int parse_argv(int argc, char *argv[]) {
        static const struct option options[] = {
                COMMON_OPTIONS,
                { "version", no_argument, NULL, ARG_VERSION },
                {}
        };
        bool want_help = false;
        int c, r;

        opterr = 0;     /* messages of our own, in our format */
        /* "+": stop at the command, whose options are its own. */
        while ((c = getopt_long(argc, argv, "+" COMMON_SHORTOPTS, options, NULL)) >= 0) {
                r = tool_parse_common_option(c, optarg, &want_help);
                if (r < 0)
                        return r;
                if (r > 0)
                        continue;
                switch (c) {
                case ARG_VERSION:
                        printf("ipchannel %s\n", IPCHANNEL_VERSION);
                        return 0;
                default:
                        return tool_bad_option(NULL, c, argv);
                }
        }
        if (want_help) {
                help();
                return 0;
        }
        if (optind >= argc) {
                tool_usage_error(NULL, "no command given");
                return -EINVAL;
        }
        return 1;
}

int main(int argc, char *argv[]) {
        int r;

        r = parse_argv(argc, argv);
        if (r <= 0)
                return r < 0 ? EXIT_USAGE : EXIT_SUCCESS;

        if (strcmp(argv[optind], "help") == 0) {
                if (optind + 1 >= argc) {
                        help();
                        return EXIT_SUCCESS;
                }
                /* "ipchannel help COMMAND" is "ipchannel COMMAND --help". */
                char *args[] = { argv[optind + 1], (char *) "--help", NULL };
                for (size_t i = 0; i < G_N_ELEMENTS(verbs); i++)
                        if (strcmp(verbs[i].name, args[0]) == 0)
                                return verbs[i].run(2, args);
                return tool_usage_error(NULL, "unknown command \"%s\"", args[0]);
        }
        for (size_t i = 0; i < G_N_ELEMENTS(verbs); i++)
                if (strcmp(verbs[i].name, argv[optind]) == 0) {
                        char **sub = argv + optind;

                        /* Each command parses its own options from scratch. */
                        optind = 0;
                        return verbs[i].run(argc - (int) (sub - argv), sub);
                }
        return tool_usage_error(NULL, "unknown command \"%s\"", argv[optind]);
}

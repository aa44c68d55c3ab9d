/* SPDX-License-Identifier: MIT */
/* What the commands of the ipchannel tool share: options, exit codes, bus access, output. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <glib.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include <ipchannel.h>

#include "macro.h"

/* Exit codes, documented in --help and ipchannel(1). `run` exits with its command's status
 * once the command has started. */
enum {
        EXIT_USAGE = 2,         /* bad command line, bad DATA, bad TEMPLATE or COUNT */
        EXIT_NOT_FOUND = 3,     /* no such peer, lock, lock service or unit */
        EXIT_TIMEOUT = 4,       /* a lock or a wait timed out */
        EXIT_BUS = 5,           /* cannot connect, access denied, the service is not there */
};

typedef enum {
        BUS_DEFAULT,            /* as the library: the user bus if DBUS_SESSION_BUS_ADDRESS is set */
        BUS_USER,
        BUS_SYSTEM,
} bus_kind;

/* Options every command accepts, before or after its name. */
extern bus_kind arg_bus;
extern const char *arg_app;

enum {
        ARG_USER = 0x100,
        ARG_SYSTEM,
        ARG_VERSION,
        ARG_COMMON_MAX,         /* commands number their own long-only options from here */
};

#define COMMON_OPTIONS                                               \
        { "help", no_argument, NULL, 'h' },                          \
        { "user", no_argument, NULL, ARG_USER },                     \
        { "system", no_argument, NULL, ARG_SYSTEM },                 \
        { "app", required_argument, NULL, 'a' }
/* Options and operands may come in any order (getopt permutes); "--" ends the options, for
 * DATA that starts with "-". ':' first: a missing argument is reported as ':'. */
#define COMMON_SHORTOPTS ":ha:"

/* The common part of every command's option loop: 1 if c was one of the common options,
 * 0 if not, -EINVAL (message printed) if its argument is bad. Sets *ret_help for -h. */
int tool_parse_common_option(int c, const char *arg, bool *ret_help);
/* For getopt's '?' and ':': prints which option is unknown or lacks its argument, and a hint
 * at command's --help. Returns -EINVAL. */
int tool_bad_option(const char *command, int c, char *argv[]);

/* Prints "ipchannel: <message>" on stderr and returns code. */
int tool_fail(int code, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
void tool_warn(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
/* For a bad command line: the message, then a hint at the command's --help; EXIT_USAGE. */
int tool_usage_error(const char *command, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

/* The app from --app or $IPCHANNEL_APP (message printed and -EINVAL when neither is set). */
int tool_require_app(const char *command);

/* "user" or "system", for messages. */
const char *tool_bus_label(void);

/* Opens the chosen bus (message printed on failure; the caller exits EXIT_BUS). */
int tool_open_bus(sd_bus **ret);

/* The exit code for a failed method call: EXIT_BUS for a bus-level failure (the name has no
 * owner, access denied, no reply), else EXIT_FAILURE. */
int tool_exit_code_for_bus_error(const sd_bus_error *error, int r);

/* A new channel for arg_app that ignores $IPCHANNEL_PEER_ID (the tool is not one of the
 * fleet's processes; --id says which id to take), on the chosen bus and loop. */
int tool_channel_new(sd_bus *bus, sd_event *event, ipchannel **ret);

/* Blocks SIGINT, SIGTERM, SIGHUP and SIGCHLD so sd-event signal sources get them. Commands
 * that watch signals call it before the library starts a thread (its lock agent), so that
 * every thread has them blocked; the others leave Ctrl-C its default effect. */
void tool_block_signals(void);
/* Blocks the signals as above and adds SIGINT and SIGTERM sources to e that set *flag. */
int tool_add_stop_signals(sd_event *e, bool *flag);

/* Parses a duration in seconds ("5", "0.5"); -EINVAL unless finite and in [0, 1e9]. */
int tool_parse_seconds(const char *s, uint64_t *ret_usec);
/* Parses a peer id (1..UINT32_MAX-1), or "all" when allow_all. */
int tool_parse_peer(const char *s, bool allow_all, uint32_t *ret);

/* Parses DATA (GVariant text). On a syntax error prints the error with its position and a
 * caret under it, like g_variant_parse_error_print_context(); also refuses values D-Bus
 * cannot carry. Returns a new reference, or NULL (message printed). */
GVariant *tool_parse_data(const char *text);

/* Peers of arg_app on bus: their ids, sorted, and the unique name owning each.
 * Name owners that vanish while we ask are left out. */
typedef struct tool_peer {
        uint32_t id;
        char *unique_name;
} tool_peer;
int tool_list_peers(sd_bus *bus, tool_peer **ret, size_t *ret_n);
void tool_peers_free(tool_peer *p, size_t n);

/* The pid of the connection with this (unique or well-known) name, 0 if unknown. */
uint32_t tool_name_pid(sd_bus *bus, const char *name);

/* JSON output: appends s as a JSON string literal; a GVariant value as JSON (see json.c). */
void json_append_string(GString *out, const char *s);
void json_append_variant(GString *out, GVariant *v);

/* Wall-clock time for output: "2025-01-31T12:34:56.789" (local time) and ISO 8601 with
 * microseconds and offset for JSON. */
void tool_format_time(uint64_t realtime_usec, bool json, char *buf, size_t size);

/* The commands: each parses its own argv (argv[0] is the command name) and returns the
 * process's exit code. */
int verb_peers(int argc, char *argv[]);
int verb_send(int argc, char *argv[]);
int verb_emit(int argc, char *argv[]);
int verb_listen(int argc, char *argv[]);
int verb_locks(int argc, char *argv[]);
int verb_run(int argc, char *argv[]);
int verb_fleet(int argc, char *argv[]);

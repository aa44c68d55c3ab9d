#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# The ipchannel tool's command line: --help of every command, --version, usage errors and
# their exit code (2), bad DATA shown with its position, and fleet's argument checks.
import os
import sys

from clitest import Tool, check, finish

IPC = sys.argv[1]
tool = Tool(IPC, app="usagetest")
bare = Tool(IPC)
COMMANDS = ["peers", "send", "emit", "listen", "locks", "run", "fleet"]

# 1. --help: exit 0, a usage line naming the command, options and the exit status.
code, out, err = bare.run("--help")
check(code == 0 and out.startswith("Usage: ipchannel ") and err == "", "ipchannel --help exits 0 with a usage line")
for c in COMMANDS:
    check(f"  {c} " in out, f"ipchannel --help lists the command {c}")
for n in range(6):
    check(f"  {n}  " in out, f"ipchannel --help documents exit status {n}")
for c in COMMANDS:
    for args in ([c, "--help"], [c, "-h"], ["help", c]):
        code, out, err = bare.run(*args)
        first = out.splitlines()[0] if out else ""
        check(code == 0 and first.startswith("Usage: ipchannel") and f" {c} " in first + " "
              and "Exit status" in out and err == "",
              f"ipchannel {' '.join(args)} exits 0 and starts with its usage line", (code, first, err))
# --help wins over missing arguments and the missing app.
code, out, err = bare.run("send", "--help", env={"IPCHANNEL_APP": ""})
check(code == 0, "send --help needs no app and no arguments")

code, out, err = bare.run("--version")
check(code == 0 and out.startswith("ipchannel ") and len(out.split()) == 2, "--version prints 'ipchannel VERSION'")


# 2. Usage errors: one line "ipchannel: ..." and a hint, exit status 2.
def usage_error(args, what, needle=None, env=None, t=tool):
    code, out, err = t.run(*args, env=env)
    lines = err.splitlines()
    ok = (code == 2 and out == "" and len(lines) >= 1 and lines[0].startswith("ipchannel: ")
          and (needle is None or needle in err))
    check(ok, f"{what}: exit 2 and a clear message", (code, err))
    return err


usage_error([], "no command", "no command given", t=bare)
usage_error(["frobnicate"], "an unknown command", 'unknown command "frobnicate"')
usage_error(["--bogus", "peers"], "an unknown global option", "unknown option --bogus")
usage_error(["peers", "--bogus"], "an unknown command option", "unknown option --bogus")
usage_error(["peers", "-z"], "an unknown short option", "unknown option -z")
usage_error(["peers", "extra"], "an extra argument", 'unexpected argument "extra"')
usage_error(["--app"], "--app without its argument", "needs an argument", t=bare)
usage_error(["peers"], "no app and no IPCHANNEL_APP", "--app NAME or set IPCHANNEL_APP",
            env={"IPCHANNEL_APP": ""}, t=bare)
usage_error(["--app", "9lives", "peers"], "an app name that cannot be a bus name element",
            "invalid app name", t=bare)
usage_error(["peers"], "a bad $IPCHANNEL_APP", "IPCHANNEL_APP", env={"IPCHANNEL_APP": "a.b"}, t=bare)
# The app from the environment is taken (the bus is reachable: exit 0).
code, out, err = bare.run("peers", "--no-legend", env={"IPCHANNEL_APP": "fromenv"})
check(code == 0 and err == "", "IPCHANNEL_APP gives the app when --app is not given", (code, err))
# Global options after the command.
code, out, err = bare.run("peers", "--app", "after", "--user")
check(code == 0 and "after" in out, "--app and --user are accepted after the command", (code, out, err))

usage_error(["send", "1"], "send without DATA", "PEER and DATA")
usage_error(["send", "1", "1", "2"], "send with an extra argument", "quote DATA")
usage_error(["send", "zero", "1"], "send to a PEER that is no number", 'invalid PEER "zero"')
usage_error(["send", "0", "1"], "send to peer 0", 'invalid PEER "0"')
usage_error(["send", "4294967295", "1"], "send to a PEER out of range", "invalid PEER")
usage_error(["send", "--id", "x", "1", "1"], "send --id that is no id", "--id")
usage_error(["emit", "1"], "emit without EVENT", "PEER and EVENT")
usage_error(["emit", "1", "connect"], "emit of a local event", "local event")
usage_error(["emit", "1", ""], "emit of an empty event", "invalid EVENT")
usage_error(["emit", "1", "x" * 256], "emit of an event longer than 255 bytes", "invalid EVENT")

# Bad DATA: the position GLib gives (bytes from 0, START-END) and carets under the text.
err = usage_error(["send", "1", "(hello, 42)"], "send with DATA that does not parse", "at 1-6: unknown keyword")
lines = err.splitlines()
check(len(lines) >= 3 and lines[1].strip() == "(hello, 42)" and lines[2].index("^") - lines[1].index("(") == 1
      and lines[2].count("^") == 5,
      "the DATA error shows the text and carets under the bad word", err)
err = usage_error(["emit", "all", "ev", "[1, 'x']"], "emit with DATA of mixed types", "at 1-2,4-7:")
err = usage_error(["send", "1", "(1, 'a'"], "send with DATA cut short", "at 7:")
usage_error(["send", "1", "just 5"], "send with DATA D-Bus cannot carry (maybe)", "maybe types")
usage_error(["send", "1", "()"], "send with the empty tuple", "empty tuple")
usage_error(["send", "1", "--", "-5x"], "DATA after -- that starts with '-' is DATA", "cannot parse DATA")

usage_error(["listen", "--all"], "listen --all without --monitor", "--all needs --monitor")
usage_error(["listen", "--monitor", "--id", "3"], "listen --monitor --id", "exclude")
usage_error(["listen", "--monitor", "peer-join"], "listen --monitor of a local event", "local event")
usage_error(["listen", "--id", "0"], "listen --id 0", "--id")
usage_error(["listen", "error"], "listen of the local event error", "local event of the tool's own channel")

usage_error(["locks", ""], "locks with an empty lock name", "invalid lock name")
usage_error(["run"], "run without LOCK", "needs LOCK")
usage_error(["run", "L"], "run without CMD", "no CMD given")
usage_error(["run", "L", "--"], "run with nothing after --", "no CMD given")
usage_error(["run", "--timeout", "0", "L", "true"], "run --timeout 0", "invalid --timeout")
usage_error(["run", "L", "--timeout", "soon", "--", "true"], "run --timeout that is no number", "invalid --timeout")
usage_error(["run", "L", "--lease", "-1", "--", "true"], "run --lease below 0", "invalid --lease")

# 3. fleet: its arguments are checked before any bus is asked (no --app needed).
usage_error(["fleet"], "fleet without an action", "start, stop or status", t=bare)
usage_error(["fleet", "restart", "a@"], "fleet with an unknown action", 'unknown fleet action "restart"', t=bare)
usage_error(["fleet", "start"], "fleet start without TEMPLATE", "needs TEMPLATE", t=bare)
usage_error(["fleet", "start", "app@"], "fleet start without COUNT", "needs COUNT", t=bare)
for bad in ["app", "app@1", "app@.socket", "@", "@.service", "a b@", "a@b@", "app@1.service"]:
    usage_error(["fleet", "start", bad, "2"], f"fleet start with TEMPLATE {bad!r}", "invalid TEMPLATE", t=bare)
usage_error(["fleet", "start", "app@", "--", "-1"], "fleet start with COUNT -1", "invalid COUNT", t=bare)
for bad in ["0", "+2", "two", "1.5", "65537", "", "MAX", "99999999999999999999"]:
    usage_error(["fleet", "start", "app@", bad], f"fleet start with COUNT {bad!r}", "invalid COUNT", t=bare)
usage_error(["fleet", "start", "app@", "2", "3"], "fleet start with an extra argument", "unexpected argument", t=bare)
usage_error(["fleet", "stop", "app@", "--enable"], "fleet stop --enable", "--enable goes with fleet start", t=bare)
usage_error(["fleet", "start", "app@", "2", "--disable"], "fleet start --disable", "--disable goes with", t=bare)
usage_error(["fleet", "status", "app@", "--wait"], "fleet status --wait", "--wait goes with", t=bare)
usage_error(["fleet", "start", "app@", "2", "--timeout", "5"], "fleet --timeout without --wait",
            "--timeout goes with --wait", t=bare)
usage_error(["fleet", "start", "app@", "2", "--json"], "fleet start --json", "go with fleet status", t=bare)

finish()

#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# The bash completion of ipchannel: sourced into a bash that has no other completion loaded,
# it completes commands, options, live peer ids (asking the tool on the private bus), lock
# names, fleet actions, and the command line that `run` runs.
import os
import shlex
import subprocess
import sys
import tempfile

from clitest import WRAPPER, Peer, check, finish, scaled, wait_until, wrapped

IPC, TEST_PEER, TEST_LOCKER, COMPLETION = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[5]
APP = "comptest"
env = dict(os.environ)
env["PATH"] = os.path.dirname(os.path.abspath(IPC)) + os.pathsep + env["PATH"]
if WRAPPER:
    # The completion runs "ipchannel": a script first in PATH runs it through the wrapper.
    shim = tempfile.mkdtemp()
    with open(os.path.join(shim, "ipchannel"), "w") as f:
        f.write(f"#!/bin/sh\nexec {shlex.quote(WRAPPER)} {shlex.quote(os.path.abspath(IPC))} \"$@\"\n")
    os.chmod(os.path.join(shim, "ipchannel"), 0o755)
    env["PATH"] = shim + os.pathsep + env["PATH"]
env.pop("IPCHANNEL_APP", None)


def complete(line, extra_env=None):
    """COMPREPLY for the command line `line`, the cursor at its end."""
    words = shlex.split(line) + ([""] if line.endswith(" ") else [])
    script = (f"source {shlex.quote(COMPLETION)}\n"
              f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})\n"
              f"COMP_CWORD={len(words) - 1}\n"
              f"COMP_LINE={shlex.quote(line)}\n"
              "COMP_POINT=${#COMP_LINE}\n"
              '_ipchannel ipchannel "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"\n'
              'printf "%s\\n" "${COMPREPLY[@]}"\n')
    e = dict(env)
    if extra_env:
        e.update(extra_env)
    p = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True, text=True, env=e,
                       timeout=scaled(20))
    return [w for w in p.stdout.split("\n") if w], p.stderr


got, err = complete("ipchannel ")
check(got == ["peers", "send", "emit", "listen", "locks", "run", "fleet", "help"] and err == "",
      "ipchannel <TAB> offers the commands", (got, err))
got, err = complete("ipchannel --")
check(sorted(got) == ["--app", "--help", "--system", "--user", "--version"], "ipchannel --<TAB> offers the global options", got)
got, err = complete("ipchannel l")
check(got == ["listen", "locks"], "ipchannel l<TAB> offers listen and locks", got)
got, err = complete("ipchannel --app x peers --")
check({"--json", "--no-legend", "--ids-only", "--app"} <= set(got), "peers --<TAB> offers its options", got)
got, err = complete("ipchannel fleet ")
check(got == ["start", "stop", "status"], "fleet <TAB> offers its actions", got)
got, err = complete("ipchannel fleet start --")
check({"--enable", "--wait", "--timeout"} <= set(got) and "--disable" not in got, "fleet start --<TAB> offers its options", got)
got, err = complete("ipchannel help ")
check("peers" in got and "help" not in got, "help <TAB> offers the commands", got)

# Live peer ids, from the bus of the test.
code = subprocess.run(wrapped([IPC, "--app", APP, "peers", "--ids-only"]), capture_output=True, text=True, env=env)
got, err = complete(f"ipchannel --app {APP} send ")
check(got == ["all"], "with no peer up, send <TAB> offers only all", got)
peers = [Peer(TEST_PEER, APP) for _ in range(3)]
check(sorted(p.connect() for p in peers) == [1, 2, 3], "three test peers join")
got, err = complete(f"ipchannel --app {APP} send ")
check(got == ["1", "2", "3", "all"] and err == "", "send <TAB> offers the live peer ids and all", (got, err))
got, err = complete(f"ipchannel send --app {APP} ")
check(got == ["1", "2", "3", "all"], "--app after the command counts too", got)
got, err = complete("ipchannel emit ", {"IPCHANNEL_APP": APP})
check(got == ["1", "2", "3", "all"], "emit <TAB> takes the app from IPCHANNEL_APP", got)
got, err = complete(f"ipchannel --system --app {APP} emit 2")
check(got == ["2"], "emit 2<TAB> completes to the peer id", got)
got, err = complete(f"ipchannel --app {APP} send 2 ")
check(got == [], "send PEER <TAB> offers nothing for DATA", got)
got, err = complete(f"ipchannel --app {APP} send --id ")
check(got == [], "send --id <TAB> offers nothing", got)
got, err = complete("ipchannel --app ")
check(APP in got, "--app <TAB> offers the apps on the bus", got)
peers[1].stop()
check(wait_until(lambda: complete(f"ipchannel --app {APP} send ")[0] == ["1", "3", "all"], timeout=10),
      "a peer that left is no longer offered")

# Locks, and the command run runs.
tmp = tempfile.mkdtemp()
# It holds "counter" until go exists (its lease, 60 s, outlasts the slowest run of the checks).
locker = subprocess.Popen(wrapped([TEST_LOCKER, "--app", APP, "--file", f"{tmp}/c", "--count", "1", "--lease-usec",
                                   "60000000", "--pause-file", f"{tmp}/go"]),
                          stdout=subprocess.PIPE, text=True)
check(locker.stdout.readline().strip() == "started", "a test locker starts")
check(wait_until(lambda: complete(f"ipchannel --app {APP} run ")[0] == ["counter"], timeout=10),
      "run <TAB> offers the locks held", complete(f"ipchannel --app {APP} run ")[0])
got, err = complete(f"ipchannel --app {APP} locks c")
check(got == ["counter"], "locks c<TAB> offers counter", got)
got, err = complete(f"ipchannel --app {APP} run counter --timeout 5 -- ech")
check("echo" in got, "run LOCK -- ech<TAB> completes the command", got)
got, err = complete(f"ipchannel --app {APP} run counter ech")
check("echo" in got, "run LOCK ech<TAB> completes the command without --", got)
got, err = complete(f"ipchannel --app {APP} run counter --")
check("--timeout" in got and "--lease" in got, "run LOCK --<TAB> offers run's options", got)
open(f"{tmp}/go", "w").close()
locker.wait(timeout=scaled(10))

for p in peers:
    p.stop()
finish()

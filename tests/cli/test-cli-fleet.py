#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# ipchannel fleet without a real systemd: first the clear error when no service manager is on
# the bus, then against fake-systemd (the Manager methods fleet calls, on the private bus):
# which units it starts, stops, enables and disables, COUNT "max", --wait and its failures.
import os
import shutil
import signal
import subprocess
import sys

from clitest import Proc, Tool, check, finish, json_lines, wrapped

IPC, FAKE = sys.argv[1], sys.argv[4]
tool = Tool(IPC)
CPUS = len(os.sched_getaffinity(0))

# 1. No service manager on the bus: one clear line, exit 5, for both managers.
for args, manager in ((["fleet", "start", "fleetdemo@", "2"], "user"),
                      (["--system", "fleet", "stop", "fleetdemo@.service"], "system"),
                      (["fleet", "status", "fleetdemo@", "--user"], "user")):
    code, out, err = tool.run(*args)
    check(code == 5 and out == "" and err ==
          f"ipchannel: no systemd {manager} service manager on the {manager} bus "
          "(org.freedesktop.systemd1 is not there)\n",
          f"ipchannel {' '.join(args)} with no service manager: exit 5, one line", (code, err))
code, out, err = tool.run("fleet", "start", "fleetdemo@", "max")
check(code == 5, "COUNT max is accepted (then the missing manager is reported)", (code, err))
code, out, err = tool.run("fleet", "start", "fleetdemo@", "2", env={"DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent"})
check(code == 5 and err.startswith("ipchannel: cannot connect to the user bus"), "fleet with no bus: exit 5", (code, err))

# 2. A fake service manager.
fake = Proc(wrapped([FAKE, "--template", "fleetdemo", "--no-install", "bare", "--fail", "flaky@2", "--template",
                     "flaky", "--hang", "slow"]))
check(fake.out.next() == "ready", "fake-systemd owns org.freedesktop.systemd1")


def fake_call(method, sig_out):
    out = subprocess.run(["busctl", "--user", "--json=short", "call", "org.freedesktop.systemd1",
                          "/org/freedesktop/systemd1", "org.ipchannel.test.FakeManager", method],
                         capture_output=True, text=True, check=True).stdout
    import json
    return json.loads(out)["data"][0]


def status(template="fleetdemo@"):
    code, out, err = tool.run("fleet", "status", template, "--json")
    return code, {o["unit"]: o for o in (json_lines(out) or [])}, err


def jobs_since(n):
    return [tuple(j) for j in fake_call("Jobs", "a(ss)")[n:]]


code, units, err = status()
check(code == 3 and err == "ipchannel: no instance of fleetdemo@.service is loaded\n", "status with no instance: exit 3", (code, err))

code, out, err = tool.run("fleet", "start", "fleetdemo@", "3")
check(code == 0 and out == "" and err == "", "fleet start TEMPLATE 3 exits 0 silently", (code, out, err))
check(jobs_since(0) == [(f"fleetdemo@{i}.service", "start") for i in (1, 2, 3)], "it starts instances 1, 2, 3 in order")
code, units, err = status()
check(code == 0 and sorted(units) == [f"fleetdemo@{i}.service" for i in (1, 2, 3)]
      and all(u["active"] == "active" and u["sub"] == "running" and u["main_pid"] > 0 for u in units.values()),
      "status --json: three active instances with their main pids", units)
code, out, err = tool.run("fleet", "status", "fleetdemo@.service")
lines = out.splitlines()
check(code == 0 and lines[0].split() == ["UNIT", "ACTIVE", "SUB", "PID"] and len(lines) == 4
      and lines[1].split()[:3] == ["fleetdemo@1.service", "active", "running"],
      "status prints a table, instances in order", out)

# Fewer: the running instances above COUNT are stopped, nothing else is touched.
n = len(fake_call("Jobs", "a(ss)"))
code, out, err = tool.run("fleet", "start", "fleetdemo@.service", "2", "--wait")
check(code == 0, "fleet start TEMPLATE 2 --wait exits 0", (code, err))
check(jobs_since(n) == [("fleetdemo@1.service", "start"), ("fleetdemo@2.service", "start"),
                        ("fleetdemo@3.service", "stop")], "it starts 1 and 2 and stops 3", jobs_since(n))
code, units, err = status()
check(units["fleetdemo@3.service"]["active"] == "inactive" and units["fleetdemo@3.service"]["main_pid"] is None,
      "instance 3 is inactive, with no main pid", units.get("fleetdemo@3.service"))

# max: one instance per CPU this process may run on.
n = len(fake_call("Jobs", "a(ss)"))
code, out, err = tool.run("fleet", "start", "fleetdemo@", "max", "--wait")
started = [u for u, t in jobs_since(n) if t == "start"]
check(code == 0 and started == [f"fleetdemo@{i}.service" for i in range(1, CPUS + 1)],
      f"COUNT max starts one instance per CPU ({CPUS})", (code, err, started))
if shutil.which("taskset"):
    n = len(fake_call("Jobs", "a(ss)"))
    p = subprocess.run(["taskset", "-c", "0", *wrapped([IPC, "fleet", "start", "fleetdemo@", "max"])], capture_output=True, text=True)
    started = [u for u, t in jobs_since(n) if t == "start"]
    check(p.returncode == 0 and started == ["fleetdemo@1.service"], "max counts the CPUs of the affinity mask (taskset -c 0: 1)",
          (p.returncode, p.stderr, started))

# --enable: instances 1..COUNT enabled, the loaded ones above disabled; systemd reloaded.
reloads = fake_call("Reloads", "u")
code, out, err = tool.run("fleet", "start", "fleetdemo@", "2", "--enable")
check(code == 0 and fake_call("Enabled", "as") == ["fleetdemo@1.service", "fleetdemo@2.service"],
      "start --enable enables instances 1 and 2", (code, err, fake_call("Enabled", "as")))
check(fake_call("Reloads", "u") > reloads, "and reloads the manager, as systemctl enable does")
code, out, err = tool.run("fleet", "start", "fleetdemo@", "1", "--enable")
check(code == 0 and fake_call("Enabled", "as") == ["fleetdemo@1.service"],
      "start 1 --enable disables instance 2 again", fake_call("Enabled", "as"))
code, out, err = tool.run("fleet", "start", "bare@", "1", "--enable")
check(code == 0 and "has no [Install] section" in err, "--enable of a template without [Install] warns", (code, err))

# stop: every loaded instance; --disable too.
n = len(fake_call("Jobs", "a(ss)"))
code, out, err = tool.run("fleet", "stop", "fleetdemo@", "--disable", "--wait")
stopped = sorted(u for u, t in jobs_since(n) if t == "stop")
code2, units, err2 = status()
check(code == 0 and len(stopped) == len(units) and all(u["active"] == "inactive" for u in units.values()),
      "stop --wait stops every loaded instance", (code, err, stopped))
check(fake_call("Enabled", "as") == [], "stop --disable disables them", fake_call("Enabled", "as"))
code, out, err = tool.run("fleet", "stop", "nothing@")
check(code == 0 and "nothing to stop" in err, "stop with no instance loaded: exit 0, says so", (code, err))

# Errors: no such template (3), a failed start with --wait (1), --wait --timeout (4).
code, out, err = tool.run("fleet", "start", "nosuch@", "2")
check(code == 3 and err == "ipchannel: cannot start nosuch@1.service: Unit nosuch@1.service not found.\n",
      "start of a template that does not exist: exit 3", (code, err))
code, out, err = tool.run("fleet", "start", "flaky@", "3", "--wait")
check(code == 1 and err == "ipchannel: job for flaky@2.service: failed\n",
      "start --wait with an instance that fails: exit 1 and which", (code, err))
code, out, err = tool.run("fleet", "start", "slow@", "2", "--wait", "--timeout", "0.3")
check(code == 4 and err == "ipchannel: timed out waiting for 2 jobs\n", "start --wait --timeout with jobs that hang: exit 4",
      (code, err))
code, out, err = tool.run("fleet", "start", "flaky@", "3")
check(code == 0, "without --wait, start does not wait for the jobs' results", (code, err))

fake.signal(signal.SIGTERM)
check(fake.wait() == 0, "fake-systemd stops")
finish()

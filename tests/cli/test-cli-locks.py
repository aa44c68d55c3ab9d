#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# ipchannel locks and ipchannel run against test lockers on a private bus: the listing shows
# holder and waiters, run holds the lock around its command, passes its exit status on, times
# out, and the lock is released when the command or the tool ends, however it ends.
import os
import signal
import subprocess
import sys
import tempfile
import time

from clitest import Peer, Tool, check, finish, json_lines, scaled, wait_until, wrapped

IPC, TEST_PEER, TEST_LOCKER, LOCKD = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[5]
APP = "lockstest"
tool = Tool(IPC, app=APP)
tmp = tempfile.mkdtemp()
lockers = []


def locker(*args):
    p = subprocess.Popen(wrapped([TEST_LOCKER, "--app", APP, "--file", f"{tmp}/counter", *args]),
                         stdout=subprocess.PIPE, text=True, bufsize=1)
    lockers.append(p)
    return p


def expect(p, prefix, timeout=10.0):
    deadline = time.monotonic() + scaled(timeout)
    while time.monotonic() < deadline:
        line = p.stdout.readline()
        if not line:
            return None
        if line.startswith(prefix):
            return line.strip()
    return None


def locks_json(*args):
    code, out, err = tool.run("locks", "--json", *args)
    return code, json_lines(out) or [], err


# 1. No lock service at all (no peer of the app, no ipchannel-lockd): not found.
code, out, err = tool.run("locks")
check(code == 3 and err.startswith("ipchannel: no lock service for app lockstest") and out == "",
      "locks with no lock service: exit 3 and why", (code, err))

# 2. A locker holds "counter" (it pauses inside its section), another waits for it.
holder = locker("--count", "1", "--pause-file", f"{tmp}/go", "--lease-usec", "30000000")
held = expect(holder, "holding")
check(held is not None, "a test locker holds the lock 'counter'")
token = int(held.split()[1]) if held else 0
waiter = locker("--count", "1")
check(expect(waiter, "started") is not None, "a second test locker starts")
rows = wait_until(lambda: [r for r in locks_json()[1] if len(r["waiters"]) == 1], timeout=10)
check(bool(rows), "locks --json shows the lock with one waiter", rows)
if rows:
    r = rows[0]
    check(r["lock"] == "counter" and r["holder"].startswith(":") and r["holder_pid"] == holder.pid
          and r["token"] == token, "the holder is shown by unique name, with the holder's pid and token", r)
    check(r["lease_left_usec"] is not None and 0 < r["lease_left_usec"] <= 30000000,
          "the lease left is shown (30 s lease)", r)
    check(r["waiters"][0]["pid"] == waiter.pid and r["waiters"][0]["name"].startswith(":"),
          "the waiter is shown with its pid", r)
    check(r["parked"] is False, "a grant whose critical section runs is not parked", r)
code, out, err = tool.run("locks")
lines = out.splitlines()
check(code == 0 and lines[0].split() == ["LOCK", "HOLDER", "PID", "TOKEN", "LEASE", "WAITERS"]
      and lines[-1] == "1 lock of app lockstest.", "locks prints a table with a header and a count", out)
row = lines[1].split() if len(lines) > 1 else []
check(len(row) >= 7 and row[0] == "counter" and row[2] == str(holder.pid) and row[3] == str(token)
      and row[4].endswith("s") and row[5].startswith(":") and " ".join(row[6:]) == f"(pid {waiter.pid})",
      "the table row: lock, holder, pid, token, lease left, waiters with pids", row)
code, out, err = tool.run("locks", "--no-legend", "counter")
check(code == 0 and len(out.splitlines()) == 1 and out.startswith("counter "), "locks LOCK shows that lock only")
code, out, err = tool.run("locks", "nosuch")
check(code == 3 and 'lock "nosuch" of app lockstest is neither held nor waited for' in err,
      "locks of a lock nobody holds: exit 3", (code, err))

# A locker that has done its one section keeps its grant parked (cached, to take it again without
# asking) while it lingers: listed as parked, with no lease, not as a holder inside its section.
parker = subprocess.Popen(wrapped([TEST_LOCKER, "--app", APP, "--file", f"{tmp}/parked", "--lock", "P",
                                   "--count", "1", "--linger", "--lease-usec", "30000000"]),
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
lockers.append(parker)
check(expect(parker, "done 1 0") is not None, "a lingering locker did its one section on lock P")
# (Park is a one-way call: the service may see it a moment after "done".)
rows = wait_until(lambda: [r for r in locks_json("P")[1] if r["parked"]], timeout=10)
check(len(rows) == 1 and rows[0]["holder_pid"] == parker.pid and rows[0]["lease_left_usec"] is None
      and rows[0]["waiters"] == [], "locks --json shows P parked by the lingering locker, with no lease", rows)
code, out, err = tool.run("locks", "--no-legend", "P")
row = out.split()
check(code == 0 and len(row) == 6 and row[0] == "P" and row[2] == str(parker.pid) and row[4] == "parked"
      and row[5] == "-", "the table shows LEASE \"parked\" for it", out)
# Stopped, it cannot give P up when another locker asks: the service gives it its lease (30 s)
# to answer, and the listing says so. Let go on, it gives P up.
parker.send_signal(signal.SIGSTOP)
asker = locker("--lock", "P", "--file", f"{tmp}/parked", "--count", "1")
rows = wait_until(lambda: [r for r in locks_json("P")[1] if r["parked"] and len(r["waiters"]) == 1
                           and r["lease_left_usec"] is not None], timeout=10)
check(len(rows) == 1 and rows[0]["holder_pid"] == parker.pid and rows[0]["waiters"][0]["pid"] == asker.pid
      and 0 < rows[0]["lease_left_usec"] <= 30000000,
      "asked to give P up while stopped, the parked grant has its lease to answer", rows)
code, out, err = tool.run("locks", "--no-legend", "P")
row = out.split()
check(code == 0 and len(row) >= 5 and row[4].startswith("parked:") and row[4].endswith("s"),
      "the table shows LEASE \"parked:T\"", out)
parker.send_signal(signal.SIGCONT)
check(asker.wait(timeout=scaled(10)) == 0, "let go on, the lingering locker gives P up to the one that asked")
parker.stdin.close()
check(parker.wait(timeout=scaled(10)) == 0, "the lingering locker ends when its stdin closes")

# 3. run while another holds the lock: --timeout gives up with exit 4, and takes no lock.
start = time.monotonic()
code, out, err = tool.run("run", "counter", "--timeout", "0.5", "--", "sh", "-c", "echo ran")
took = time.monotonic() - start
check(code == 4 and out == "" and err == 'ipchannel: timed out waiting for lock "counter" of app lockstest\n',
      "run --timeout while another holds the lock: exit 4, CMD not run", (code, out, err))
check(0.4 < took < scaled(5), f"run gave up after about 0.5 s (took {took:.2f} s)")

# A run that waits gets the lock after the two lockers, in FIFO order.
runner = tool.start("run", "counter", "--", "sh", "-c", 'echo "token=$IPCHANNEL_LOCK_TOKEN lock=$IPCHANNEL_LOCK"')
rows = wait_until(lambda: [r for r in locks_json()[1] if len(r["waiters"]) == 2], timeout=10)
check(bool(rows) and rows[0]["waiters"][1]["pid"] == runner.pid, "a waiting run is listed as the second waiter", rows)
open(f"{tmp}/go", "w").close()
check(holder.wait(timeout=scaled(10)) == 0 and waiter.wait(timeout=scaled(10)) == 0, "both lockers finish")
check(runner.wait() == 0, "the waiting run then runs its command and exits 0")
line = runner.out.next()
check(line is not None and line.startswith("token=") and int(line.split()[0][6:]) > token
      and line.endswith("lock=counter"), "CMD sees IPCHANNEL_LOCK and a larger IPCHANNEL_LOCK_TOKEN", line)
with open(f"{tmp}/counter") as f:
    check(f.read().strip() == "2", "the lockers' shared counter is 2")

# 4. Exit status: passed through; 128+N when CMD is killed by signal N; 127 not found.
code, out, err = tool.run("run", "L", "--", "sh", "-c", "exit 7")
check(code == 7, "run passes CMD's exit status on (7)", code)
code, out, err = tool.run("run", "L", "true")
check(code == 0, "run without -- works, CMD's status 0", (code, err))
code, out, err = tool.run("run", "L", "--", "sh", "-c", "kill -KILL $$")
check(code == 137, "CMD killed by SIGKILL gives 137", code)
code, out, err = tool.run("run", "L", "--", "sh", "-c", "kill -TERM $$")
check(code == 143, "CMD killed by SIGTERM gives 143", code)
code, out, err = tool.run("run", "L", "--", f"{tmp}/no-such-command")
check(code == 127 and "cannot run" in err, "a CMD that does not exist gives 127", (code, err))
code, out, err = tool.run("run", "L", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
check(code == 3 and out == "out\n" and err == "err\n", "CMD's output and errors pass through untouched", (out, err))
code, out, err = tool.run("run", "--timeout", "5", "L", "--lease", "10", "sh", "-c", 'echo "$0 $1"', "a", "b")
check(code == 0 and out == "a b\n", "options before and after LOCK; CMD's own arguments", (code, out, err))

# 5. The lock is released when CMD ends: a second run gets it at once.
code, out, err = tool.run("run", "L", "--timeout", "2", "--", "true")
check(code == 0, "after a run ends, the next run gets the lock at once")
check(locks_json("L")[0] == 3, "and no lock L is left held")

# Mutual exclusion: three runs of a section that detects overlaps.
section = (f'mkdir {tmp}/inside 2>/dev/null || echo OVERLAP; sleep 0.2; rmdir {tmp}/inside')
runs = [tool.start("run", "M", "--", "sh", "-c", section) for _ in range(3)]
codes = [r.wait(timeout=20) for r in runs]
outs = [l for r in runs for l in r.out.rest()]
check(codes == [0, 0, 0] and "OVERLAP" not in outs, "three concurrent runs never overlap", (codes, outs))

# 6. The lock is released when the tool dies (SIGKILL): another run gets it at once, and CMD,
# no longer protected, is stopped. A peer that stays hosts the lock service meanwhile, so the
# release is the service seeing the holder's connection close.
host = Peer(TEST_PEER, APP)
check(host.connect() == 1, "a test peer joins and hosts the app's lock service")
victim = tool.start("run", "K", "--", "sh", "-c", f"echo $$ > {tmp}/cmd.pid; exec sleep 60")
check(wait_until(lambda: os.path.exists(f"{tmp}/cmd.pid") and open(f"{tmp}/cmd.pid").read().strip(), 10),
      "a run holds lock K while its command sleeps")
cmd_pid = int(open(f"{tmp}/cmd.pid").read().strip())
rows = locks_json("K")[1]
check(rows and rows[0]["holder_pid"] == victim.pid, "locks shows the run as the holder of K", rows)
victim.signal(signal.SIGKILL)
victim.wait()
start = time.monotonic()
code, out, err = tool.run("run", "K", "--timeout", "3", "--", "true")
took = time.monotonic() - start
check(code == 0 and took < scaled(2.5), f"after the tool is SIGKILLed another run gets K at once ({took:.2f} s)", (code, err))


def gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie waiting for its reaper counts as gone.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[1].split()[0] == "Z"


check(wait_until(lambda: gone(cmd_pid), timeout=5), "the command of the killed run got SIGTERM and ended")

# SIGTERM to the tool while CMD runs is passed on to CMD; the tool exits with CMD's status.
fwd = tool.start("run", "F", "--", "sh", "-c", f"trap 'echo got-term; exit 42' TERM; echo ready; while :; do sleep 0.05; done")
check(fwd.out.next() == "ready", "a run's command is up")
fwd.signal(signal.SIGTERM)
check(fwd.wait() == 42 and fwd.out.next() == "got-term", "SIGTERM to run goes to CMD, and run exits with CMD's status")

# SIGINT while waiting for the lock ends the tool (it dies by the signal); nothing is left waiting.
blocker = tool.start("run", "W", "--", "sleep", "30")
check(wait_until(lambda: locks_json("W")[0] == 0, timeout=10), "a run holds lock W")
waiting = tool.start("run", "W", "--", "true")
check(wait_until(lambda: any(len(r["waiters"]) == 1 for r in locks_json("W")[1]), timeout=10), "another run waits for W")
waiting.signal(signal.SIGINT)
check(waiting.wait() == -signal.SIGINT, "SIGINT ends a run that waits for its lock")
check(wait_until(lambda: any(len(r["waiters"]) == 0 for r in locks_json("W")[1]), timeout=10),
      "and it no longer waits for W")
blocker.signal(signal.SIGKILL)
blocker.wait()

# 7. A lease that runs out while CMD runs: CMD is stopped and run exits 4.
start = time.monotonic()
code, out, err = tool.run("run", "E", "--lease", "0.3", "--", "sleep", "10")
took = time.monotonic() - start
check(code == 4 and "lease" in err and took < scaled(5), f"run --lease 0.3 with a longer CMD: exit 4 ({took:.2f} s)", (code, err))

# 8. The bus cannot be reached: exit 5.
code, out, err = tool.run("run", "L", "true", env={"DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent"})
check(code == 5 and err.startswith("ipchannel: cannot connect"), "run with no bus: exit 5", (code, err))
code, out, err = tool.run("locks", env={"DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent"})
check(code == 5, "locks with no bus: exit 5", (code, err))

# 9. Refusals of the lock service reach the tool as what they are (they all were "Input/output
# error" once): access denied is a bus failure (exit 5); a limit is a plain failure, said so.
def lockd(app, *args):
    p = subprocess.Popen(wrapped([LOCKD, "--app", app, "--print-ready", *args]), stdout=subprocess.PIPE,
                         text=True, bufsize=1)
    lockers.append(p)
    check(expect(p, "READY") is not None, f"ipchannel-lockd serves app {app}")
    return p


lockd("lockdeny", "--allow-uid", "12345")
code, out, err = Tool(IPC, app="lockdeny").run("run", "L", "--timeout", "5", "--", "true")
check(code == 5 and err.startswith('ipchannel: cannot take lock "L" of app lockdeny: access denied'),
      "run refused by the lock service's --allow-uid: exit 5, access denied", (code, err))

lockd("lockfull", "--max-waiters-per-lock", "1")
full = Tool(IPC, app="lockfull")
full_holder = full.start("run", "L", "--", "sleep", "30")
# The holder first: started together, the waiter could take L, run and be gone.
check(wait_until(lambda: any(r["holder"] for r in json_lines(full.run("locks", "--json")[1]) or []),
                 timeout=10),
      "one run holds L of app lockfull")
full_waiter = full.start("run", "L", "--", "true")
check(wait_until(lambda: any(len(r["waiters"]) == 1 for r in json_lines(full.run("locks", "--json")[1]) or []),
                 timeout=10),
      "another run waits for L")
code, out, err = full.run("run", "L", "--timeout", "5", "--", "true")
check(code == 1 and "the lock service's limits are reached" in err,
      "a run past the waiters-per-lock limit: exit 1, and the limit said", (code, err))
full_holder.signal(signal.SIGKILL)
full_holder.wait()
check(full_waiter.wait() == 0, "the waiting run gets L once the holder is gone")

# 10. A lock service whose host is stopped: locks gives up after 5 s with exit 4 (it waited
# the D-Bus default 25 s, then exited 1).
stopped = Peer(TEST_PEER, "lockstop")
check(stopped.connect() == 1, "a test peer hosts the lock service of app lockstop")
stop_tool = Tool(IPC, app="lockstop")
check(wait_until(lambda: stop_tool.run("locks")[0] == 0, timeout=10), "locks answers while it runs")
stopped.p.send_signal(signal.SIGSTOP)
start = time.monotonic()
code, out, err = stop_tool.run("locks", timeout=40)
took = time.monotonic() - start
stopped.p.send_signal(signal.SIGCONT)
check(code == 4 and "did not answer within 5 seconds" in err and f"(pid {stopped.pid})" in err
      and 4.5 < took < scaled(10), f"locks against a stopped host: exit 4 after 5 s ({took:.2f} s)", (code, err))
stopped.stop()

host.stop()
for p in lockers:
    if p.poll() is None:
        p.kill()
        p.wait()
finish()

# SPDX-License-Identifier: MIT
# Helpers for the ipchannel tool's tests: run the tool, start test peers and lockers, check.
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time

failures = []
_children = []

# $IPCHANNEL_TEST_WRAPPER (tests/harness/valgrind-wrap under meson test --setup valgrind) runs
# every program of ours a test starts; every wait may take IPCHANNEL_TEST_TIMEOUT_FACTOR
# times longer (default 1). The helpers below apply both; tests use wrapped() and scaled()
# for the programs they start and the waits they time themselves.
WRAPPER = os.environ.get("IPCHANNEL_TEST_WRAPPER") or ""
try:
    FACTOR = max(1, int(os.environ.get("IPCHANNEL_TEST_TIMEOUT_FACTOR") or 1))
except ValueError:
    FACTOR = 1


# Outside with-bus (which checks the logs itself), the logs go to a directory of ours that
# finish() checks: an error fails the test whatever the exit status of its process.
_own_logs = None
if WRAPPER and not os.environ.get("IPCHANNEL_TEST_VALGRIND_LOGDIR"):
    _own_logs = tempfile.mkdtemp(prefix="ipchannel-valgrind-")
    os.environ["IPCHANNEL_TEST_VALGRIND_LOGDIR"] = _own_logs


def wrapped(argv):
    """argv, run through the wrapper when there is one."""
    return ([WRAPPER] if WRAPPER else []) + list(argv)


def scaled(seconds):
    return seconds * FACTOR


def check(cond, what, detail=None):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)
        if detail is not None:
            print("     " + str(detail).replace("\n", "\n     "), flush=True)
    return cond


def finish():
    """Ends every process still running and exits 1 if a check failed."""
    for p in _children:
        if p.poll() is None:
            p.kill()
            p.wait()
    if _own_logs:
        check(subprocess.run([WRAPPER, "--check", _own_logs]).returncode == 0,
              "valgrind found no error in the processes of the test")
        shutil.rmtree(_own_logs, ignore_errors=True)
    print(f"{len(failures)} failed" if failures else "all passed", flush=True)
    sys.exit(1 if failures else 0)


class Tool:
    """The ipchannel binary under test."""

    def __init__(self, path, app=None):
        self.path = path
        self.app = app

    def argv(self, args, app=True):
        base = [self.path]
        if app and self.app:
            base += ["--app", self.app]
        return wrapped(base + list(args))

    def run(self, *args, app=True, timeout=20, env=None, input=None):
        """Runs the tool to its end; returns (exit code, stdout, stderr)."""
        e = dict(os.environ)
        if env:
            e.update(env)
        p = subprocess.run(self.argv(args, app), capture_output=True, text=True, timeout=scaled(timeout),
                           env=e, input=input)
        return p.returncode, p.stdout, p.stderr

    def start(self, *args, app=True, env=None):
        """Starts the tool in the background; returns a Proc."""
        e = dict(os.environ)
        if env:
            e.update(env)
        return Proc(self.argv(args, app), env=e)


class Lines:
    """Reads a pipe's lines in a thread of its own, so that waiting for one can time out."""

    def __init__(self, stream):
        self.queue = queue.Queue()
        self.all = []
        t = threading.Thread(target=self._read, args=(stream,), daemon=True)
        t.start()
        self.thread = t

    def _read(self, stream):
        for line in stream:
            self.queue.put(line.rstrip("\n"))
        self.queue.put(None)

    def next(self, timeout=10.0):
        """The next line, or None on timeout (scaled) or end of file."""
        return self._next(scaled(timeout))

    def _next(self, timeout):
        try:
            line = self.queue.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        if line is None:
            self.queue.put(None)        # stays at the end
            return None
        self.all.append(line)
        return line

    def expect(self, prefix, timeout=10.0):
        """Reads lines until one starts with prefix; returns it, or None."""
        deadline = time.monotonic() + scaled(timeout)
        while True:
            line = self._next(deadline - time.monotonic())
            if line is None:
                return None
            if line.startswith(prefix):
                return line

    def rest(self, timeout=10.0):
        """Every line until end of file."""
        out = []
        self.thread.join(scaled(timeout))
        while True:
            line = self._next(0)
            if line is None:
                return out
            out.append(line)


class Proc:
    """A tool process started in the background, with its stdout and stderr read by lines."""

    def __init__(self, argv, env=None):
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL, text=True, bufsize=1, env=env)
        _children.append(self.p)
        self.pid = self.p.pid
        self.out = Lines(self.p.stdout)
        self.err = Lines(self.p.stderr)

    def signal(self, sig):
        self.p.send_signal(sig)

    def wait(self, timeout=10.0):
        """The exit code, or None if it did not exit in time (then it is killed)."""
        try:
            return self.p.wait(timeout=scaled(timeout))
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            return None


class Peer:
    """A tests/integration/test-peer process, driven on stdin."""

    def __init__(self, path, app, *args):
        self.p = subprocess.Popen(wrapped([path, "--app", app, *args]), stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, bufsize=1)
        _children.append(self.p)
        self.pid = self.p.pid
        self.id = None
        self.out = Lines(self.p.stdout)

    def connect(self):
        self.cmd("connect")
        line = self.expect("connect ")
        self.id = int(line.split()[1]) if line else None
        return self.id

    def cmd(self, text):
        self.p.stdin.write(text + "\n")
        self.p.stdin.flush()

    def expect(self, prefix, timeout=10.0):
        return self.out.expect(prefix, timeout)

    def quiet(self, prefix, seconds):
        """True if no line starting with prefix comes within seconds."""
        return self.out.expect(prefix, seconds) is None

    def drain(self):
        """Forgets the lines that came so far."""
        while self.out.next(0) is not None:
            pass

    def knows(self, peer_id, timeout=10.0):
        """Waits until this peer has seen peer_id join (so that a send to it is not refused)."""
        deadline = time.monotonic() + scaled(timeout)
        while time.monotonic() < deadline:
            self.cmd(f"has {peer_id}")
            if self.out.expect(f"has {peer_id} ", (deadline - time.monotonic()) / FACTOR) == f"has {peer_id} 1":
                return True
            time.sleep(0.02)
        return False

    def stop(self):
        if self.p.poll() is None:
            self.p.stdin.close()
            try:
                self.p.wait(timeout=scaled(10))
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def wait_until(cond, timeout=10.0, step=0.02):
    deadline = time.monotonic() + scaled(timeout)
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(step)
    return cond()


def json_lines(text):
    """Parses JSON lines; returns the list, or None if a line is not JSON."""
    try:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError:
        return None



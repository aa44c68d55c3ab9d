#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Checks what busctl users see: the interface XML files match live introspection, busctl
# introspect lists the members, busctl monitor shows payloads as real variants, and busctl
# shows the lock service's listing.
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), "..", "cli"))
from clitest import scaled, wrapped  # noqa: E402  (the wrapper and the wait factor)

TEST_PEER, PEER_XML, LOCK_XML, TEST_LOCKER = sys.argv[1:5]
APP = "busctltest"
NAME = f"org.ipchannel.{APP}.Peer1"
PATH = f"/org/ipchannel/{APP}"
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


def start_peer(*args):
    p = subprocess.Popen(wrapped([TEST_PEER, "--app", APP, *args]), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, bufsize=1)
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


def interface_summary(root, name):
    """The members of an interface, in a form that ignores order and whitespace."""
    for iface in root.iter("interface"):
        if iface.get("name") != name:
            continue
        out = set()
        for m in iface:
            if m.tag in ("method", "signal"):
                args = tuple((a.get("name"), a.get("type"), a.get("direction", "in" if m.tag == "method" else None))
                             for a in m.findall("arg"))
                out.add((m.tag, m.get("name"), args))
            elif m.tag == "property":
                ann = tuple(sorted((a.get("name"), a.get("value")) for a in m.findall("annotation")))
                out.add((m.tag, m.get("name"), m.get("type"), m.get("access"), ann))
        return out
    return None


peer = start_peer("--listen", "message", "--connect")
check(expect(peer, "connect ") == "connect 1", "a peer connects as peer 1")

# 1. The XML files in the tree describe what the live objects say.
def compare_xml(xml_file, interface, name, path):
    live = subprocess.run(["busctl", "--user", "introspect", "--xml-interface", name, path],
                          capture_output=True, text=True, check=True).stdout
    want = interface_summary(ET.parse(xml_file).getroot(), interface)
    got = interface_summary(ET.fromstring(live), interface)
    check(want is not None and want == got,
          f"dbus-interfaces/{interface}.xml matches the live introspection of {name}")
    if want != got:
        print("  in the file only:", sorted(map(str, (want or set()) - (got or set()))))
        print("  live only:       ", sorted(map(str, (got or set()) - (want or set()))))


compare_xml(PEER_XML, "org.ipchannel.Peer1", NAME, PATH)
# The peer, alone, hosts its app's lock service.
LOCKS, LOCKS_PATH = f"org.ipchannel.{APP}.Locks", f"{PATH}/Locks"
compare_xml(LOCK_XML, "org.ipchannel.LockService1", LOCKS, LOCKS_PATH)

# 2. busctl introspect shows the members.
table = subprocess.run(["busctl", "--user", "introspect", NAME, PATH, "org.ipchannel.Peer1"],
                       capture_output=True, text=True, check=True).stdout
for member in (".Deliver", ".Broadcast", ".PeerId", ".App"):
    check(any(line.split()[:1] == [member] for line in table.splitlines()),
          f"busctl introspect lists {member}")
peer_id = subprocess.run(["busctl", "--user", "get-property", NAME, PATH, "org.ipchannel.Peer1", "PeerId"],
                         capture_output=True, text=True, check=True).stdout.strip()
check(peer_id == "u 1", f"busctl get-property PeerId says 'u 1' (got {peer_id!r})")

# 3. busctl monitor shows the payload as a variant with its real type.
mon = subprocess.Popen(["busctl", "--user", "monitor", "--json=short", "--match",
                        f"interface='org.ipchannel.Peer1',path='{PATH}'"],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
time.sleep(0.5)
peer.stdin.write("send all ('hello', 42)\n")
peer.stdin.flush()
check(expect(peer, "recv ") == "recv 1 message ('hello', 42)", "the peer hears its own broadcast")
seen = None
deadline = time.monotonic() + scaled(10)
while time.monotonic() < deadline:
    line = mon.stdout.readline()
    if not line:
        break
    msg = json.loads(line)
    if msg.get("member") == "Broadcast":
        seen = msg
        break
mon.terminate()
mon.wait()
check(seen is not None, "busctl monitor sees the Broadcast signal")
if seen:
    payload = seen.get("payload", {})
    check(payload.get("type") == "sv", f"the signal's signature is 'sv' (got {payload.get('type')!r})")
    data = payload.get("data", [])
    check(len(data) == 2 and data[0] == "message", "its first argument is the event")
    check(len(data) == 2 and data[1] == {"type": "(si)", "data": ["hello", 42]},
          f"its second is a variant of type (si) holding ['hello', 42] (got {data[1:]!r})")

# 4. busctl shows who holds a lock and who waits.
tmp = tempfile.mkdtemp()
holder = subprocess.Popen(wrapped([TEST_LOCKER, "--app", APP, "--file", f"{tmp}/c", "--count", "1",
                                   "--lease-usec", "60000000", "--pause-file", f"{tmp}/go"]),
                          stdout=subprocess.PIPE, text=True)
check(expect(holder, "holding") is not None, "a locker holds the lock 'counter'")
waiter = subprocess.Popen(wrapped([TEST_LOCKER, "--app", APP, "--file", f"{tmp}/c", "--count", "1"]),
                          stdout=subprocess.PIPE, text=True)
listing = None
for _ in range(scaled(200)):
    out = subprocess.run(["busctl", "--user", "--json=short", "call", LOCKS, LOCKS_PATH,
                          "org.ipchannel.LockService1", "ListLocks"],
                         capture_output=True, text=True, check=True).stdout
    locks = json.loads(out)["data"][0]
    if locks and len(locks[0][4]) == 1:
        listing = locks
        break
    time.sleep(0.02)
check(listing is not None and listing[0][0] == "counter" and listing[0][1].startswith(":")
      and listing[0][2] > 0 and len(listing[0][4]) == 1,
      f"busctl call ListLocks shows the lock, its holder, token and one waiter (got {listing!r})")
open(f"{tmp}/go", "w").close()
check(holder.wait(timeout=scaled(10)) == 0 and waiter.wait(timeout=scaled(10)) == 0, "both lockers finish")
with open(f"{tmp}/c") as f:
    check(f.read().strip() == "2", "and the counter they share is 2")

peer.stdin.close()
peer.wait(timeout=scaled(10))
sys.exit(1 if failures else 0)

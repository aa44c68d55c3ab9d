#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Checks what busctl users see: the interface XML matches live introspection, busctl
# introspect lists the members, and busctl monitor shows payloads as real variants.
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

TEST_PEER, XML_FILE = sys.argv[1], sys.argv[2]
APP = "busctltest"
NAME = f"org.ipchannel.{APP}.Peer1"
PATH = f"/org/ipchannel/{APP}"
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


def start_peer(*args):
    p = subprocess.Popen([TEST_PEER, "--app", APP, *args], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, bufsize=1)
    return p


def expect(p, prefix, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = p.stdout.readline()
        if not line:
            return None
        if line.startswith(prefix):
            return line.strip()
    return None


def interface_summary(root):
    """The members of org.ipchannel.Peer1, in a form that ignores order and whitespace."""
    for iface in root.iter("interface"):
        if iface.get("name") != "org.ipchannel.Peer1":
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

# 1. The XML file in the tree describes what the live object says.
live = subprocess.run(["busctl", "--user", "introspect", "--xml-interface", NAME, PATH],
                      capture_output=True, text=True, check=True).stdout
want = interface_summary(ET.parse(XML_FILE).getroot())
got = interface_summary(ET.fromstring(live))
check(want is not None and want == got,
      "dbus-interfaces/org.ipchannel.Peer1.xml matches the live introspection")
if want != got:
    print("  in the file only:", sorted(map(str, (want or set()) - (got or set()))))
    print("  live only:       ", sorted(map(str, (got or set()) - (want or set()))))

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
deadline = time.monotonic() + 10
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

peer.stdin.close()
peer.wait(timeout=10)
sys.exit(1 if failures else 0)

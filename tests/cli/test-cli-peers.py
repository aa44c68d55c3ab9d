#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# ipchannel peers, send, emit and listen (as a peer and as a monitor) against test peers on a
# private bus: what the tool shows and sends is what the peers see, and the error paths.
import json
import os
import signal
import subprocess
import sys

from clitest import Peer, Tool, check, finish, json_lines, wait_until

IPC, TEST_PEER = sys.argv[1], sys.argv[2]
APP = "clitest"
tool = Tool(IPC, app=APP)


def name_owner(name):
    out = subprocess.run(["busctl", "--user", "call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
                          "org.freedesktop.DBus", "GetNameOwner", "s", name],
                         capture_output=True, text=True).stdout.split()
    return out[1].strip('"') if len(out) == 2 else None


# 1. No peer yet.
code, out, err = tool.run("peers")
check(code == 0 and "No peer of app clitest" in out and err == "", "peers with no peer says so, exit 0", (code, out, err))
code, out, err = tool.run("peers", "--json")
check(code == 0 and out == "", "peers --json with no peer prints nothing")
code, out, err = tool.run("send", "1", "'anyone?'")
check(code == 3 and err == "ipchannel: no peer 1 in app clitest\n",
      "send to peer 1 with no peer up: exit 3 (the tool, as peer 1 itself, does not count)", (code, err))

# 2. Three peers: ids 1..3, their unique names and pids, sorted by id.
peers = [Peer(TEST_PEER, APP, "--listen", "message", "--listen", "ev") for _ in range(3)]
ids = [p.connect() for p in peers]
check(sorted(ids) == [1, 2, 3], "three test peers connect as 1, 2, 3", ids)
by_id = {p.id: p for p in peers}

code, out, err = tool.run("peers")
lines = out.splitlines()
check(code == 0 and lines[0].split() == ["PEER", "NAME", "PID", "UNIT"] and lines[-1] == "3 peers of app clitest.",
      "peers prints a header, one line per peer and a count", out)
rows = [l.split() for l in lines[1:4]]
check([int(r[0]) for r in rows] == [1, 2, 3], "peers are sorted by id", rows)
check(all(int(r[2]) == by_id[int(r[0])].pid for r in rows), "each peer's pid is the test peer's pid", rows)
check(all(r[1] == name_owner(f"org.ipchannel.{APP}.Peer{r[0]}") for r in rows),
      "each peer's name is the owner of org.ipchannel.clitest.Peer<ID>", rows)
check(all(len(r) == 4 for r in rows), "each peer line has a unit column ('-' outside a unit)", rows)

code, out, err = tool.run("peers", "--json")
objs = json_lines(out)
check(code == 0 and objs is not None and [o["id"] for o in objs] == [1, 2, 3]
      and all(o["pid"] == by_id[o["id"]].pid and o["name"].startswith(":") and "unit" in o for o in objs),
      "peers --json: one object per peer with id, name, pid, unit", out)
code, out, err = tool.run("peers", "--ids-only")
check(code == 0 and out == "1\n2\n3\n", "peers --ids-only prints the ids", out)
code, out, err = tool.run("peers", "--no-legend")
check(code == 0 and len(out.splitlines()) == 3 and not out.startswith("PEER"), "peers --no-legend: just the rows")
code, out, err = Tool(IPC, app="otherapp").run("peers", "--ids-only")
check(code == 0 and out == "", "another app's peers are not listed")
code, out, err = tool.run("--system", "peers", "--ids-only")
check(code == 0 and out == "1\n2\n3\n", "--system works (the test bus is both buses)", (code, out, err))

# 3. send: the peer receives exactly the value, with the tool's peer id (4) as the sender.
code, out, err = tool.run("send", "2", "('hello', 42)")
check(code == 0 and out == "" and err == "", "send exits 0 silently", (code, out, err))
line = by_id[2].expect("recv ")
check(line == "recv 4 message ('hello', 42)", "peer 2 gets ('hello', 42) from peer 4 (the tool)", line)
check(by_id[1].quiet("recv ", 0.3) and by_id[3].quiet("recv ", 0.1), "the other peers get nothing")
code, out, err = tool.run("peers", "--ids-only")
check(out == "1\n2\n3\n", "the tool has left the app after sending", out)

code, out, err = tool.run("send", "--id", "9", "1", "{'k': <uint64 7>, 'l': <[1.5, 2.0]>}")
line = by_id[1].expect("recv ")
check(code == 0 and line == "recv 9 message {'k': <uint64 7>, 'l': <[1.5, 2.0]>}",
      "send --id 9: the receiver sees sender 9 and the exact value", (code, err, line))
code, out, err = tool.run("send", "all", "@as []")
got = [p.expect("recv ") for p in peers]
check(code == 0 and all(g == "recv 4 message @as []" for g in got), "send all reaches every peer", got)

# emit: a named event, with and without data.
code, out, err = tool.run("emit", "3", "ev", "(uint32 1, 'two', [byte 3])")
line = by_id[3].expect("recv ")
check(code == 0 and line == "recv 4 ev (uint32 1, 'two', [byte 0x03])", "emit PEER EVENT DATA arrives as sent", line)
code, out, err = tool.run("emit", "all", "ev")
got = [p.expect("recv ") for p in peers]
check(code == 0 and all(g == "recv 4 ev null" for g in got), "emit all EVENT without DATA: every peer gets no data", got)
code, out, err = tool.run("emit", "1", "unheard", "1")
check(code == 0 and by_id[1].quiet("recv ", 0.3), "an event nobody listens to is sent, and dropped at the receiver")

# Error paths.
code, out, err = tool.run("send", "7", "1")
check(code == 3 and err == "ipchannel: no peer 7 in app clitest\n", "send to an absent peer: exit 3, one line", (code, err))
code, out, err = tool.run("emit", "7", "ev")
check(code == 3 and "no peer 7" in err, "emit to an absent peer: exit 3", (code, err))
code, out, err = tool.run("send", "--id", "2", "1", "1")
check(code == 1 and err.startswith("ipchannel: cannot join app clitest as peer 2: another process holds it"),
      "send --id of a taken id: exit 1", (code, err))
code, out, err = tool.run("send", "1", "'unterminated")
check(code == 2 and "cannot parse DATA at" in err and "^" in err, "bad DATA: exit 2 with its position", err)
check(by_id[1].quiet("recv ", 0.2), "nothing is sent when DATA is bad")
code, out, err = Tool(IPC, app=APP).run("send", "1", "1", env={"DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent"})
check(code == 5 and err.startswith("ipchannel: cannot connect to the user bus"),
      "send when the bus cannot be reached: exit 5", (code, err))
code, out, err = tool.run("send", "1", "1", env={"IPCHANNEL_PEER_ID": "2"})
line = by_id[1].expect("recv ")
check(code == 0 and line == "recv 4 message 1", "the tool ignores IPCHANNEL_PEER_ID (it is no fleet member)", (code, err, line))

# 4. listen as a peer: one JSON object per line; Ctrl-C ends it with status 0.
lis = tool.start("listen", "--json", "message", "ev")
ready = lis.err.expect("Listening as peer ")
check(ready is not None and ready.startswith("Listening as peer 4 of app clitest"), "listen joins as peer 4 and says so", ready)
check(all(p.knows(4) for p in peers), "the peers see the listener join")
by_id[1].cmd("send 4 ('to listener', 1)")
by_id[2].cmd("emit all ev [true, false]")
by_id[3].cmd("send all 'hi all'")
by_id[3].cmd("emit 4 ev null")
got = [lis.out.next() for _ in range(4)]
objs = json_lines("\n".join(g or "" for g in got))
check(objs is not None and len(objs) == 4, "listen --json prints one JSON object per message", got)
if objs and len(objs) == 4:
    # Only each sender's own messages keep their order.
    objs.sort(key=lambda o: (o["sender"], o["event"]))
    check(objs[0]["sender"] == 1 and objs[0]["event"] == "message" and objs[0]["data"] == ["to listener", 1]
          and objs[0]["type"] == "(si)" and objs[0]["text"] == "('to listener', 1)",
          "a message to the listener: sender, event, type, data and text", objs[0])
    check(objs[1]["sender"] == 2 and objs[1]["event"] == "ev" and objs[1]["data"] == [True, False]
          and objs[1]["type"] == "ab", "a broadcast event from peer 2", objs[1])
    check(objs[3]["sender"] == 3 and objs[3]["event"] == "message" and objs[3]["data"] == "hi all",
          "a broadcast message from peer 3", objs[3])
    check(objs[2]["sender"] == 3 and objs[2]["event"] == "ev" and objs[2]["data"] is None
          and objs[2]["type"] is None and objs[2]["text"] is None,
          "an event without data has null data, type and text", objs[2])
    check(all("T" in o["time"] and o["time"][:2] == "20" for o in objs), "each object has an ISO time", objs[0]["time"])
lis.signal(signal.SIGINT)
check(lis.wait() == 0, "listen exits 0 on SIGINT (Ctrl-C)")
code, out, err = tool.run("peers", "--ids-only")
check(out == "1\n2\n3\n", "the listener has left the app", out)

# Text lines, the default event "message", and SIGTERM.
lis = tool.start("listen", "--id", "8")
check(lis.err.expect("Listening as peer 8") is not None, "listen --id 8 joins as peer 8")
check(by_id[2].knows(8), "peer 2 sees peer 8 join")
by_id[2].cmd("emit 8 ev 1")
by_id[2].cmd("send 8 ('x', <1>)")
line = lis.out.next()
parts = line.split(" ", 4) if line else []
check(len(parts) == 5 and parts[1:4] == ["peer", "2", "message"] and parts[4] == "('x', <1>)",
      "listen with no EVENT prints only \"message\": time, peer id, event, data", line)
lis.signal(signal.SIGTERM)
check(lis.wait() == 0, "listen exits 0 on SIGTERM")

# peer-join and peer-leave: peers coming and going, the sender being the peer concerned.
lis = tool.start("listen", "--json", "peer-join", "peer-leave")
check(lis.err.expect("Listening as peer 4") is not None, "listen peer-join peer-leave joins")
newcomer = Peer(TEST_PEER, APP)
new_id = newcomer.connect()
newcomer.stop()
got = json_lines("\n".join(l or "" for l in (lis.out.next(), lis.out.next())))
check(got is not None and [(o["event"], o["sender"], o["data"]) for o in got] ==
      [("peer-join", new_id, None), ("peer-leave", new_id, None)], "listen shows a peer joining and leaving", got)
lis.signal(signal.SIGINT)
check(lis.wait() == 0, "and exits 0 on SIGINT")

# 5. listen --monitor: sees messages between two peers without taking an id.
mon = tool.start("listen", "--monitor", "--json", "--all")
check(mon.err.expect("Monitoring app clitest") is not None, "listen --monitor starts monitoring")
code, out, err = tool.run("peers", "--ids-only")
check(out == "1\n2\n3\n", "the monitor takes no peer id (peers does not list it)", out)
mon2 = tool.start("listen", "--monitor")
check(mon2.err.expect("Monitoring app clitest") is not None, "a second, text monitor starts")
for p in peers:
    p.drain()
by_id[2].cmd("send 1 ('between', 2)")
check(by_id[1].expect("recv ") == "recv 2 message ('between', 2)", "peer 1 gets peer 2's message")
by_id[3].cmd("emit all ev 5")
late = Peer(TEST_PEER, APP)     # joins after the monitor started: its id is learnt on the way
late_id = late.connect()
late.cmd("emit 1 ev 'late'")
got = [mon.out.next() for _ in range(3)]
objs = json_lines("\n".join(g or "" for g in got))
check(objs is not None and len(objs) == 3, "the monitor prints one JSON object per message", got)
if objs and len(objs) == 3:
    check(objs[0]["sender"] == 2 and objs[0]["to"] == 1 and objs[0]["event"] == "message"
          and objs[0]["data"] == ["between", 2] and objs[0]["sender_name"] == name_owner(f"org.ipchannel.{APP}.Peer2"),
          "the monitor sees peer 2 -> peer 1 with the data", objs[0])
    check(objs[1]["sender"] == 3 and objs[1]["to"] == "all" and objs[1]["event"] == "ev" and objs[1]["data"] == 5,
          "the monitor sees a broadcast of another event with --all", objs[1])
    check(objs[2]["sender"] == late_id and objs[2]["to"] == 1 and objs[2]["data"] == "late",
          "a peer that joined after the monitor started is named by its id", objs[2])
# Sends made in one turn of a peer's loop may travel coalesced (DeliverBatch, BroadcastBatch):
# the monitor still shows one line per message, in order.
by_id[3].cmd("flood 1 ev 5")
by_id[3].cmd("flood all ev 3")
got = json_lines("\n".join(l or "" for l in (mon.out.next() for _ in range(8))))
check(got is not None and [(o["sender"], o["to"], o["data"]) for o in got] ==
      [(3, 1, [i]) for i in range(5)] + [(3, "all", [i]) for i in range(3)],
      "a burst of sends shows as one line per message, in order", got)
# A payload over the sender's memfd threshold travels as DeliverMemfd/BroadcastMemfd with its fd;
# the monitor maps it as a receiver would.
by_id[3].cmd("set-limit memfd-threshold 16")
check(by_id[3].expect("result set-limit memfd-threshold 0") is not None, "peer 3 sends memfds from 16 bytes")
by_id[3].cmd("emit 1 ev ('carried in a sealed memfd', 42)")
by_id[3].cmd("emit all ev ('a broadcast in a memfd', 43)")
got = json_lines("\n".join(l or "" for l in (mon.out.next() for _ in range(2))))
check(got is not None and [(o["sender"], o["to"], o["data"]) for o in got] ==
      [(3, 1, ["carried in a sealed memfd", 42]), (3, "all", ["a broadcast in a memfd", 43])],
      "the monitor shows memfd payloads, targeted and broadcast", got)
line = mon2.out.next()
check(line is not None and line.split(" ", 1)[1] == "peer 2 -> peer 1 message ('between', 2)",
      "the text monitor prints 'peer 2 -> peer 1 message DATA' and, by default, only \"message\"", line)
check(mon2.out.next(0.3) is None, "the text monitor skips the other events")
mon.signal(signal.SIGINT)
mon2.signal(signal.SIGINT)
check(mon.wait() == 0 and mon2.wait() == 0, "monitors exit 0 on SIGINT")
late.stop()

for p in peers:
    p.stop()
finish()

#!/usr/bin/env python3
"""14 presence on two servers: channel presence and join/leave across two servers on one Redis; one is SIGKILLed.

Setup: a real redis-server; server-a and server-b with ``broker=redis://...`` and the
namespace "room" with presence and join/leave. CLIENTS clients, the first half on
server-a (given only its URL: they do not move), the rest on server-b, subscribe to
"room:1" one after another, each recording every message, join and leave of the channel
in the order its handler saw them.
Workload: both servers' ``presence_of`` and a client's ``presence()`` list all CLIENTS
members. server-b publishes "before", the last client unsubscribes, server-b publishes
"after": every other client sees before, that client's leave, after, in that order
(the leave travels the channel's message path through Redis).
Fault: SIGKILL server-a: its members get no clean leave.
Recovery: server-a's members expire in Redis within ``presence_ttl_s`` (6 s): server-b's
``presence_of`` and a server-b client's ``presence()`` converge to the members left on
server-b, within PRESENCE_TTL_S + SLACK_S of the kill.
Check: client i saw exactly the joins of clients i..CLIENTS, in order; the leave order
above; the survivors' view converged, and in time.
"""

from __future__ import annotations

import sys

import _repo  # noqa: F401  (the repository's sente_lite/ first: test_scripts/_repo.py)

import time
from typing import Any, Dict, List

from sente_lite.discovery import wait_for
from sente_lite.errors import DiscoveryTimeout
from sente_lite.testing import (FIG_CLIENTS, FIG_RECOVERY_S, ProcessContext, ProcessResult,
                                Report, Run, run_scenario)
from sente_lite.testing.redis_server import RedisServer, with_redis_server

CLIENTS = 4
HALF = CLIENTS // 2
CHANNEL = "room:1"
NAMESPACES = {"room": {"presence": True, "join_leave": True}}
#: The broker's presence_ttl_s (RedisBroker's default): a dead server's members live this long.
PRESENCE_TTL_S = 6.0
#: Beyond the ttl: the survivor's poll interval and a loaded machine's delays.
SLACK_S = 3.0
#: Seconds a client may take to see a join, a leave or a message.
SEE_TIMEOUT_S = 10.0


def client(ctx: ProcessContext, url: str) -> Dict[str, Any]:
    """Subscribe with join/leave handlers; answer presence questions; unsubscribe when told."""
    with ctx.connect(url, client_id=ctx.name, auto_reconnect=False) as c:
        rec = ctx.history.record
        c.subscribe(CHANNEL, lambda m: rec("room", what="msg", data=m.data),
                    on_join=lambda ch: rec("room", what="join", who=ch.member["client-id"]),
                    on_leave=lambda ch: rec("room", what="leave", who=ch.member["client-id"]),
                    timeout=SEE_TIMEOUT_S)
        ctx.mark("ready", client_id=c.client_id, server_id=c.server_id)

        def seen(data: Dict[str, Any]) -> int:
            """Wait for the message ``data`` (or ``count`` events) on the channel."""
            def done() -> bool:
                room = ctx.history.events_of("room")
                if "data" in data:
                    return any(e.get("data") == data["data"] for e in room)
                return len(room) >= data["count"]
            return ctx.wait_until(lambda: done() or None, f"{data} on {CHANNEL}", SEE_TIMEOUT_S)

        ctx.serve_commands({
            "presence": lambda data: sorted(m["client-id"] for m in c.presence(CHANNEL)),
            "unsubscribe": lambda data: c.unsubscribe(CHANNEL) or True,
            "seen": seen,
        })
        return {"client_id": c.client_id,
                "room": [{k: e.get(k) for k in ("what", "who", "data")}
                         for e in ctx.history.events_of("room")]}


def story(run: Run, report: Report) -> None:
    with_redis_server(run, report, scenario)


def scenario(run: Run, report: Report, redis_srv: RedisServer) -> None:
    server_a = run.start_server("server-a", broker=redis_srv.url, namespaces=NAMESPACES)
    server_b = run.start_server("server-b", broker=redis_srv.url, namespaces=NAMESPACES)
    report.step(f"server-a on {server_a.port}, server-b on {server_b.port}, both on Redis")
    clients = []
    for i in range(1, CLIENTS + 1):  # one after another: client i sees the joins of i..CLIENTS
        handle = run.start_process(f"client{i}", client,
                                   (server_a if i <= HALF else server_b).url)
        run.wait_mark([handle], "ready")
        clients.append(handle)
    ids = [h.name for h in clients]  # each client's client-id is its name
    run.request(clients[:1], "seen", count=CLIENTS)  # the first saw every join
    members = {s.name: sorted(m["client-id"] for m in run.server_command(s, "presence-of",
                                                                        channel=CHANNEL))
               for s in (server_a, server_b)}
    asked = run.request(clients[-1:], "presence")[clients[-1].name]
    report.check(len(set(map(tuple, members.values()))) == 1 and len(members["server-a"]) == CLIENTS
                 and asked == members["server-a"],
                 f"both servers and a client see the {CLIENTS} members", f"{members}, {asked}")

    run.server_command(server_b, "publish", channel=CHANNEL, data="before")
    run.request(clients[-1:], "unsubscribe")
    run.server_command(server_b, "publish", channel=CHANNEL, data="after")
    run.request(clients[:-1], "seen", data="after")
    report.step("server-b published before/after around the last client's unsubscribe")

    killed = time.monotonic()
    server_a.kill()
    report.step(f"SIGKILL server-a (pid {server_a.pid}): its {HALF} members get no clean leave")
    left = sorted(ids[HALF:-1])

    def converged() -> Any:
        view = sorted(m["client-id"] for m in run.server_command(server_b, "presence-of",
                                                                 channel=CHANNEL))
        return view if view == left else None

    try:
        view = wait_for(converged, PRESENCE_TTL_S + SLACK_S + 5, "server-b's view without server-a")
    except DiscoveryTimeout:
        view = sorted(m["client-id"] for m in run.server_command(server_b, "presence-of",
                                                                 channel=CHANNEL))
    took = time.monotonic() - killed
    asked_after = run.request(clients[HALF:HALF + 1], "presence")[clients[HALF].name]
    run.command(clients, "finish")
    results = run.results(clients)
    run.stop_server(server_b)
    check(report, results, ids, view, asked_after, took)


def check(report: Report, results: Dict[str, ProcessResult], ids: List[str], view: List[str],
          asked_after: List[str], took: float) -> None:
    by_name = {name: r.value for name, r in results.items() if r.value}
    for i, name in enumerate(ids):
        room = by_name.get(name, {}).get("room", [])
        joins = [e["who"] for e in room if e["what"] == "join"]
        wanted = ids[i:]
        report.check(joins == wanted, f"{name}: the joins of itself and every later client, in order",
                     f"{joins}", name)
        if i < len(ids) - 1:
            tail = [(e["what"], e.get("who") or e.get("data")) for e in room
                    if e["what"] != "join"]
            last = ids[-1]
            report.check(tail == [("msg", "before"), ("leave", last), ("msg", "after")],
                         f"{name}: before, the leave of {ids[-1]}, after (in order)", f"{tail}", name)
    report.check(view == sorted(ids[HALF:-1]) and asked_after == view,
                 "server-b and its client see only the members left on server-b", f"{view}, {asked_after}")
    report.check(took <= PRESENCE_TTL_S + SLACK_S,
                 f"server-a's members vanished within presence_ttl_s ({PRESENCE_TTL_S:g}s) + {SLACK_S:g}s",
                 f"{took:.2f}s")
    report.figure(FIG_CLIENTS, len(results))
    report.figure(FIG_RECOVERY_S, round(took, 3))


if __name__ == "__main__":
    sys.exit(run_scenario(story, f"2 servers on Redis, {CLIENTS} clients on a presence channel; "
                                 "SIGKILL one server, the survivor's presence converges"))

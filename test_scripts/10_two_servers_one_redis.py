#!/usr/bin/env python3
"""10 two servers, one Redis: two servers share channels and users through one Redis; one dies, its clients move.

Setup: a real redis-server (started here, on a free port, no persistence); server-a
and server-b with ``broker=redis://...``; CLIENTS clients, half on each server, each
given both URLs (its own first), all subscribed to "news". The server's
``authenticate`` makes the token the uid: client1 (on a) and client{HALF+1} (on b)
are both user "alice".
Workload 1: every client publishes ROUND messages (acknowledged): each client gets
every message once, in one offset order, the same on both servers.
Workload 2: server-a sends an event to user "alice": it reaches her connection on
server-a and, through Redis, the one on server-b; presence counts her 2 on both.
Fault: SIGKILL server-a. Its clients fail over to server-b (the next URL) while the
clients of server-b publish another round. On server-b each re-subscribes with its
last offset and gets ``recovered: true`` with what it missed replayed from the
stream. Then they publish a round of their own.
Check: every client got every acknowledged message exactly once, in offset order,
in one epoch (nothing lost across the failover); server-a's clients recovered, and
ended connected to server-b; alice's event came twice, once per connection.
"""

from __future__ import annotations

import sys

import _repo  # noqa: F401  (the repository's sente_lite/ first: test_scripts/_repo.py)

import time
from typing import Any, Dict, List, Optional

from sente_lite.discovery import wait_for
from sente_lite.errors import DiscoveryTimeout
from sente_lite.testing import (FIG_CLIENTS, FIG_MESSAGES, FIG_P99_MS, FIG_RECOVERY_S,
                                ProcessContext, ProcessResult, Report, Run, duplicates,
                                latencies_ms, latency_summary, order_problem, run_scenario, stamp)
from sente_lite.testing.redis_server import RedisServer, with_redis_server

CLIENTS = 6
HALF = CLIENTS // 2
CHANNEL = "news"
#: Messages each publisher sends per round.
ROUND = 20
#: Clients' reconnect backoff cap (s): failover in a fraction of a second.
BACKOFF_MAX_S = 0.5
#: Seconds the moved clients may take to be connected to server-b and recovered.
FAILOVER_TIMEOUT_S = 15.0
#: Seconds the servers' presence entries in Redis may take to show every user.
PRESENCE_TIMEOUT_S = 5.0
#: The user with a connection on each server.
SHARED_USER = "alice"
HELLO = "app/hello"


def authenticate(request: Any) -> Optional[str]:
    """The token is the uid (a test's stand-in for a real credential check)."""
    return request.token


def client(ctx: ProcessContext, urls: List[str], token: str) -> Dict[str, Any]:
    """Subscribe; publish rounds and await them when told to; record recoveries and events."""
    with ctx.connect(urls, backoff_max=BACKOFF_MAX_S, token=token) as c:
        def on_recovery(r: Any) -> None:
            ctx.history.record("recovery", channel=r.channel_id, recovered=r.recovered,
                               reason=r.reason, offset=r.offset, epoch=r.epoch, since=r.since,
                               server_id=c.server_id)
            ctx.mark("recovery", recovered=r.recovered, server_id=c.server_id)

        c.on_recovery(on_recovery)
        c.on(HELLO, lambda data: ctx.history.record("hello", data=data, server_id=c.server_id))
        ctx.subscribe(c, CHANNEL)
        ctx.mark("ready", server_id=c.server_id)

        def publish(data: Dict[str, Any]) -> List[int]:
            return [c.publish(CHANNEL, stamp(by=ctx.name, round=data["round"], n=n),
                              ack=True)["offset"] for n in range(data["count"])]

        def await_round(data: Dict[str, Any]) -> int:
            want = data["count"]
            return ctx.wait_until(
                lambda: sum(1 for d in ctx.history.messages(CHANNEL)
                            if d.data.get("round") == data["round"]) >= want or None,
                f"{want} messages of round {data['round']!r}")

        def await_hello(data: Dict[str, Any]) -> int:
            return ctx.wait_until(lambda: len(ctx.history.events_of("hello")) or None, "the hello")

        ctx.serve_commands({"publish": publish, "await": await_round, "await-hello": await_hello})
        return {"uid": c.uid, "stats": c.stats(), "server_id": c.server_id}


def story(run: Run, report: Report) -> None:
    with_redis_server(run, report, scenario)


def scenario(run: Run, report: Report, redis_srv: RedisServer) -> None:
    server_a = run.start_server("server-a", broker=redis_srv.url, authenticate=authenticate)
    server_b = run.start_server("server-b", broker=redis_srv.url, authenticate=authenticate)
    report.step(f"server-a on {server_a.port}, server-b on {server_b.port}, both on Redis")
    on_a = [run.start_process(f"client{i}", client, [server_a.url, server_b.url],
                              SHARED_USER if i == 1 else f"user{i}") for i in range(1, HALF + 1)]
    on_b = [run.start_process(f"client{i}", client, [server_b.url, server_a.url],
                              SHARED_USER if i == HALF + 1 else f"user{i}")
            for i in range(HALF + 1, CLIENTS + 1)]
    clients = on_a + on_b
    ready = run.wait_mark(clients, "ready")
    report.check(all(ready[h.name]["server_id"] == server_a.server_id for h in on_a)
                 and all(ready[h.name]["server_id"] == server_b.server_id for h in on_b),
                 f"{HALF} clients on each server", "")
    run.server_command(server_a, "await-subscribers", channel=CHANNEL, count=HALF)
    run.server_command(server_b, "await-subscribers", channel=CHANNEL, count=HALF)
    report.step(f"{CLIENTS} clients subscribed, {HALF} per server")

    # workload 1: everyone publishes, everyone receives
    run.request(clients, "publish", round="r1", count=ROUND)
    run.request(clients, "await", round="r1", count=CLIENTS * ROUND)
    report.step(f"round r1: {CLIENTS * ROUND} messages from both servers reached everyone")

    # workload 2: one user, one connection on each server
    expected = {"presence": 2, "users": CLIENTS - 1}
    presence: Dict[str, Any] = {}
    for s in (server_a, server_b):  # each server refreshes its part in Redis as users come
        try:
            presence[s.name] = wait_for(lambda: (lambda v: v if v == expected else None)(
                run.server_command(s, "presence", uid=SHARED_USER)), PRESENCE_TIMEOUT_S,
                "presence")
        except DiscoveryTimeout:
            presence[s.name] = run.server_command(s, "presence", uid=SHARED_USER)
    here = run.server_command(server_a, "send-to-user", uid=SHARED_USER, event=HELLO,
                              data={"from": "server-a"})
    run.request([on_a[0], on_b[0]], "await-hello")
    report.step(f"send_to_user({SHARED_USER!r}) on server-a reached both of her connections")

    # fault: server-a dies; its clients move to server-b
    killed_ns = time.monotonic_ns()
    server_a.kill()
    report.step(f"SIGKILL server-a (pid {server_a.pid})")
    run.request(on_b, "publish", round="r2", count=ROUND)  # while server-a's clients move
    moved = run.wait_mark(on_a, "status", FAILOVER_TIMEOUT_S,
                          accept=lambda m: m["status"] == "connected"
                          and m["server_id"] == server_b.server_id)
    connected_ns = max(m["at_ns"] for m in moved.values())
    recovered = run.wait_mark(on_a, "recovery", FAILOVER_TIMEOUT_S)
    recovered_ns = max(m["t_ns"] for m in recovered.values())
    report.step(f"server-a's clients on server-b after {(connected_ns - killed_ns) / 1e9:.2f}s, "
                f"recovered after {(recovered_ns - killed_ns) / 1e9:.2f}s")
    run.server_command(server_b, "await-subscribers", channel=CHANNEL, count=CLIENTS)
    run.request(on_a, "publish", round="r3", count=ROUND)
    for rnd in ("r2", "r3"):
        run.request(clients, "await", round=rnd, count=HALF * ROUND)
    run.command(clients, "finish")
    results = run.results(clients)
    run.stop_server(server_b)

    check(report, results, [h.name for h in on_a], server_b.server_id, presence, here)
    report.figure("failover_s", round((connected_ns - killed_ns) / 1e9, 3))
    report.figure(FIG_RECOVERY_S, round((recovered_ns - killed_ns) / 1e9, 3))


def check(report: Report, results: Dict[str, ProcessResult], moved: List[str], server_b: str,
          presence: Dict[str, Any], here: int) -> None:
    total = CLIENTS * ROUND + 2 * HALF * ROUND
    reference: Optional[List[Any]] = None
    for name, r in results.items():
        got = [(d.offset, d.data["by"], d.data["round"], d.data["n"]) for d in r.deliveries]
        epochs = {d.epoch for d in r.deliveries}
        report.check([g[0] for g in got] == list(range(1, total + 1)) and len(epochs) == 1,
                     f"{name}: offsets 1..{total} exactly once, in order, one epoch",
                     f"{len(got)} messages, epochs {sorted(epochs)}", name)
        problem = order_problem(r.deliveries) or (f"duplicates {duplicates(r.deliveries)}"
                                                   if duplicates(r.deliveries) else None)
        report.check(problem is None, f"{name}: nothing out of order or duplicated",
                     problem or "", name)
        reference = got if reference is None else reference
        report.check(got == reference, f"{name}: the same messages in the same order as client1",
                     "", name)
        sent = {(by, rnd, n) for _, by, rnd, n in got}
        report.check(len(sent) == total, f"{name}: every acknowledged publish arrived",
                     f"{len(sent)} distinct of {total}", name)
        recoveries = [e for e in r.events if e["kind"] == "recovery"]
        if name in moved:
            report.check(len(recoveries) == 1 and recoveries[0]["recovered"] is True
                         and recoveries[0]["server_id"] == server_b,
                         f"{name}: moved to server-b and recovered (recovered: true)",
                         f"{recoveries}", name)
            report.check(r.value["server_id"] == server_b, f"{name}: ended on server-b",
                         r.value["server_id"], name)
        else:
            report.check(not recoveries and [s for s in r.statuses() if s != "closed"]
                         == ["connecting", "connected"],
                         f"{name}: stayed on server-b, nothing to recover", f"{r.statuses()}", name)
    hellos = {name: [e["data"] for e in r.events if e["kind"] == "hello"]
              for name, r in results.items()}
    alice = {"client1", f"client{HALF + 1}"}
    report.check(all(len(v) == (1 if name in alice else 0) for name, v in hellos.items())
                 and here == 1,
                 f"send_to_user({SHARED_USER!r}) reached her connection on each server, once "
                 "(one counted on server-a, one through Redis)",
                 f"{ {k: len(v) for k, v in hellos.items()} }, counted here {here}")
    report.check(all(v == {"presence": 2, "users": CLIENTS - 1} for v in presence.values())
                 and len(presence) == 2,
                 f"presence({SHARED_USER!r}) is 2 and user_count {CLIENTS - 1} on both servers",
                 f"{presence}")
    lat = latency_summary(latencies_ms(d for r in results.values() for d in r.deliveries
                                       if d.data.get("round") == "r1"))
    report.figure(FIG_CLIENTS, len(results))
    report.figure(FIG_MESSAGES, total)
    report.figure(FIG_P99_MS, lat["p99_ms"])


if __name__ == "__main__":
    sys.exit(run_scenario(story, f"2 servers on Redis, {CLIENTS} clients; SIGKILL one server, "
                                 "its clients fail over and recover"))

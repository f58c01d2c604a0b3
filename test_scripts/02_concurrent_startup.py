#!/usr/bin/env python3
"""02 concurrent startup: 10 client processes launched at once all connect and hear a broadcast.

Setup: a server; CLIENTS client processes started back to back.
Workload: each connects, subscribes to "announcements" and marks ready; the
server publishes one message on the channel itself (server-side publish).
Check: every client connected within CONNECT_BOUND_S of the start of its main
(reported: the max, and the max from process launch, which includes the
interpreter's start-up on a busy machine); every client got the announcement
exactly once, from the server (``from`` null), at offset 1.
"""

from __future__ import annotations

import sys

import _repo  # noqa: F401  (the repository's sente_lite/ first: test_scripts/_repo.py)

from typing import Any, Dict, Optional

from sente_lite.testing import (FIG_CLIENTS, FIG_MESSAGES, FIG_P99_MS, ProcessContext,
                                ProcessResult, Report, Run, latencies_ms, latency_summary,
                                run_scenario)

CLIENTS = 10
CHANNEL = "announcements"
#: Seconds from the start of a client's main to its handshake (the issue's bound).
CONNECT_BOUND_S = 1.0


def client(ctx: ProcessContext) -> Dict[str, Any]:
    """Connect, subscribe to the announcements, wait for one."""
    with ctx.connect() as c:
        ctx.subscribe(c, CHANNEL)
        ctx.mark("ready")
        ctx.wait_until(lambda: ctx.history.count(CHANNEL) >= 1, "the announcement")
        ctx.mark("received")
        ctx.wait_command("finish")
        return {"uid": c.uid}


def story(run: Run, report: Report) -> None:
    # setup
    server = run.start_server()
    clients = run.start_clients(client, CLIENTS)
    report.step(f"launched {CLIENTS} client processes at once")
    run.wait_mark(clients, "ready")
    report.step("all connected and subscribed")

    # workload: one announcement from the server itself
    published = run.server_command(server, "publish", channel=CHANNEL, data={"text": "hello all"})
    run.wait_mark(clients, "received")
    run.command(clients, "finish")
    results = run.results(clients)
    run.stop_server(server)

    check(report, results, published)


def connected_ns(r: ProcessResult) -> Optional[int]:
    """When the client's first handshake completed (from its history)."""
    return next((e["t_ns"] for e in r.events
                 if e["kind"] == "status" and e["status"] == "connected"), None)


def check(report: Report, results: Dict[str, ProcessResult], published: Dict[str, Any]) -> None:
    from_main = {n: (connected_ns(r) - r.started_ns) / 1e9 for n, r in results.items()
                 if connected_ns(r) is not None and r.started_ns is not None}
    from_launch = {n: (connected_ns(r) - r.launched_ns) / 1e9 for n, r in results.items()
                   if connected_ns(r) is not None and r.launched_ns is not None}
    slowest = max(from_main, key=lambda n: from_main[n]) if from_main else None
    report.check(len(from_main) == CLIENTS and all(t <= CONNECT_BOUND_S for t in from_main.values()),
                 f"every client connected within {CONNECT_BOUND_S:.1f}s of the start of its main",
                 f"max {from_main.get(slowest, float('nan')):.3f}s ({slowest})", slowest)
    report.check(published.get("delivered") == CLIENTS,
                 f"the server's publish reached {CLIENTS} subscribers",
                 f"delivered={published.get('delivered')}")
    for name, r in results.items():
        got = [(d.channel, d.offset, d.from_uid, d.data.get("text")) for d in r.deliveries]
        report.check(got == [(CHANNEL, 1, None, "hello all")],
                     f"{name} got the announcement once, from the server, at offset 1",
                     "" if len(got) == 1 else f"got {got}", name)
    lat = latency_summary(latencies_ms(d for r in results.values() for d in r.deliveries))
    report.figure(FIG_CLIENTS, len(results))
    report.figure(FIG_MESSAGES, 1)
    report.figure("max_connect_s", round(max(from_main.values()), 3) if from_main else None)
    report.figure("max_launch_to_connect_s",
                  round(max(from_launch.values()), 3) if from_launch else None)
    report.figure(FIG_P99_MS, lat["p99_ms"])


if __name__ == "__main__":
    sys.exit(run_scenario(story, f"{CLIENTS} clients launched at once connect and get a broadcast"))

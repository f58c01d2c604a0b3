#!/usr/bin/env python3
"""01 basic: 1 server + 2 clients, each on its own channel, hears only its own messages.

Setup: a server; client1 subscribes to A, client2 to B.
Workload: on the parent's "publish" command each publishes MESSAGES_PER_CLIENT
messages to its own channel.
Check: each client received exactly its own channel's messages (offsets 1..N,
in order, from itself), none of the other channel's; the server counted every
publish and delivery once.
"""

from __future__ import annotations

import sys

import _repo  # noqa: F401  (the repository's sente_lite/ first: test_scripts/_repo.py)

from typing import Any, Dict

from sente_lite.testing import (FIG_CLIENTS, FIG_MESSAGES, FIG_P99_MS, ProcessContext,
                                ProcessResult, Report, Run, channels_seen, duplicates,
                                latencies_ms, latency_summary, order_problem, run_scenario, stamp)

CHANNEL_OF = {"client1": "A", "client2": "B"}
MESSAGES_PER_CLIENT = 20


def client(ctx: ProcessContext, channel: str, count: int) -> Dict[str, Any]:
    """Subscribe to ``channel``, publish ``count`` messages to it on command, await them back."""
    with ctx.connect() as c:
        ctx.subscribe(c, channel)
        ctx.mark("ready")
        ctx.wait_command("publish")
        for seq in range(count):
            c.publish(channel, stamp(by=ctx.name, seq=seq))
        ctx.wait_until(lambda: ctx.history.count(channel) >= count,
                       f"{count} messages on {channel}")
        ctx.mark("received")
        ctx.wait_command("finish")
        return {"uid": c.uid, "stats": c.stats()}


def story(run: Run, report: Report) -> None:
    # setup
    server = run.start_server()
    report.step(f"server {server.name} pid {server.pid} on port {server.port}")
    clients = [run.start_process(name, client, channel, MESSAGES_PER_CLIENT)
               for name, channel in CHANNEL_OF.items()]
    run.wait_mark(clients, "ready")
    report.step("both clients connected and subscribed")

    # workload
    run.command(clients, "publish")
    run.wait_mark(clients, "received")
    run.command(clients, "finish")
    results = run.results(clients)
    server_stats = run.stop_server(server).value
    report.step("all processes reported")

    check(report, results, server_stats)


def check(report: Report, results: Dict[str, ProcessResult], server_stats: Dict[str, Any]) -> None:
    n = MESSAGES_PER_CLIENT
    for name, channel in CHANNEL_OF.items():
        r = results[name]
        seen = channels_seen(r.deliveries)
        report.check(seen == {channel: n}, f"{name} received exactly {n} messages, all on {channel}",
                     f"got {seen}", name)
        report.check(order_problem(r.deliveries) is None and not duplicates(r.deliveries)
                     and [d.offset for d in r.deliveries] == list(range(1, n + 1)),
                     f"{name} got offsets 1..{n} in order, once each",
                     order_problem(r.deliveries) or "", name)
        report.check(all(d.from_uid == r.value["uid"] and d.data["by"] == name
                         for d in r.deliveries)
                     and [d.data["seq"] for d in r.deliveries] == list(range(n)),
                     f"{name}'s messages are its own, in the order it sent them", "", name)
    report.check(server_stats.get("publishes") == 2 * n and server_stats.get("deliveries") == 2 * n,
                 f"server counted {2 * n} publishes and {2 * n} deliveries",
                 f"publishes={server_stats.get('publishes')} "
                 f"deliveries={server_stats.get('deliveries')}")
    lat = latency_summary(latencies_ms(d for r in results.values() for d in r.deliveries))
    report.figure(FIG_CLIENTS, len(results))
    report.figure(FIG_MESSAGES, 2 * n)
    report.figure(FIG_P99_MS, lat["p99_ms"])


if __name__ == "__main__":
    sys.exit(run_scenario(story, "1 server + 2 clients; each receives only its own channel"))

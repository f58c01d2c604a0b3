#!/usr/bin/env python3
"""A tiny scenario made to fail: client2 is frozen while messages flow, then held to a latency bound.

Test data for the HTML report (tests/testing/test_report.py), not one of the project's scenarios.
1 server, 2 clients on "news". Round 1: client1 publishes ROUND messages, one every
PUBLISH_INTERVAL_S; both get them. Then SIGSTOP client2; round 2 goes the same way
and client1 gets it; then SIGCONT client2, which gets round 2 late. The check that
client2 got every message within LATENCY_BOUND_MS fails, naming client2: its first
message of round 2 waited at least (ROUND - 1) x PUBLISH_INTERVAL_S in the frozen process.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Dict

from sente_lite.testing import (FIG_CLIENTS, FIG_MESSAGES, FIG_P99_MS, ProcessContext, Report,
                                Run, latencies_ms, latency_summary, run_scenario, stamp)

CHANNEL = "news"
ROUND = 40
#: Seconds between two publishes of client1: the workload's pace, not a synchronisation.
PUBLISH_INTERVAL_S = 0.01
#: The bound client2 cannot meet: a round takes at least 0.39 s to publish.
LATENCY_BOUND_MS = 250.0


def client(ctx: ProcessContext) -> Dict[str, Any]:
    with ctx.connect() as c:
        ctx.subscribe(c, CHANNEL)
        ctx.mark("ready")

        def publish(data: Dict[str, Any]) -> None:
            for i in range(ROUND):
                c.publish(CHANNEL, stamp(by=ctx.name, n=i))
                time.sleep(PUBLISH_INTERVAL_S)

        def await_count(data: Dict[str, Any]) -> int:
            return ctx.wait_until(lambda: ctx.history.count() >= data["count"] or None,
                                  f"{data['count']} messages")

        ctx.serve_commands({"publish": publish, "await": await_count})
        return {"uid": c.uid}


def story(run: Run, report: Report) -> None:
    server = run.start_server()
    client1, client2 = run.start_clients(client, 2)
    run.wait_mark([client1, client2], "ready")
    run.request(client1, "publish")
    run.request([client1, client2], "await", count=ROUND)
    report.step("round 1 reached both clients")
    client2.pause()
    run.request(client1, "publish")
    run.request(client1, "await", count=2 * ROUND)
    client2.resume()
    report.step("round 2 published while client2 was frozen")
    run.request(client2, "await", count=2 * ROUND)
    run.command([client1, client2], "finish")
    results = run.results([client1, client2])
    run.stop_server(server)
    report.check(len(results["client1"].deliveries) == 2 * ROUND,
                 f"client1 got all {2 * ROUND} messages", "", "client1")
    lat = latency_summary(latencies_ms(results["client2"].deliveries))
    report.check(lat["count"] == 2 * ROUND and lat["max_ms"] <= LATENCY_BOUND_MS,
                 f"client2 got all {2 * ROUND} messages within {LATENCY_BOUND_MS:.0f} ms",
                 f"{lat['count']} messages, max {lat['max_ms']} ms", "client2")
    report.figure(FIG_CLIENTS, len(results))
    report.figure(FIG_MESSAGES, 2 * ROUND)
    report.figure(FIG_P99_MS, latency_summary(latencies_ms(
        d for r in results.values() for d in r.deliveries))["p99_ms"])


if __name__ == "__main__":
    sys.exit(run_scenario(story, "client2 is frozen while messages flow, then held to a "
                                 "latency bound (made to fail)"))

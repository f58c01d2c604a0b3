#!/usr/bin/env python3
"""A tiny scenario that passes: 1 server, 2 clients; each message reaches both.

Test data for the HTML report (tests/testing/test_report.py), not one of the project's scenarios.
"""

from __future__ import annotations

import sys
from typing import Any, Dict

from sente_lite.testing import (FIG_CLIENTS, FIG_MESSAGES, FIG_P99_MS, ProcessContext, Report, Run,
                                latencies_ms, latency_summary, run_scenario, stamp)

CHANNEL = "news"
MESSAGES = 5


def client(ctx: ProcessContext) -> Dict[str, Any]:
    with ctx.connect() as c:
        ctx.subscribe(c, CHANNEL)
        ctx.mark("ready")
        data = ctx.wait_command("publish")
        for i in range(data["count"]):
            c.publish(CHANNEL, stamp(by=ctx.name, n=i))
        ctx.wait_until(lambda: ctx.history.count() >= 2 * MESSAGES or None, "every message")
        ctx.wait_command("finish")
        return {"uid": c.uid}


def story(run: Run, report: Report) -> None:
    server = run.start_server()
    clients = run.start_clients(client, 2)
    run.wait_mark(clients, "ready")
    run.command(clients, "publish", count=MESSAGES)
    run.command(clients, "finish")
    results = run.results(clients)
    run.stop_server(server)
    for name, r in results.items():
        report.check(len(r.deliveries) == 2 * MESSAGES, f"{name} got all {2 * MESSAGES} messages",
                     f"got {len(r.deliveries)}", name)
    report.figure(FIG_CLIENTS, len(results))
    report.figure(FIG_MESSAGES, 2 * MESSAGES)
    report.figure(FIG_P99_MS, latency_summary(latencies_ms(
        d for r in results.values() for d in r.deliveries))["p99_ms"])


if __name__ == "__main__":
    sys.exit(run_scenario(story, "2 clients hear each other (made to pass)"))

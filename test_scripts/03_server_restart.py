#!/usr/bin/env python3
"""03 server restart: clients outlive a SIGKILLed server and come back by themselves.

Setup: a server; CLIENTS clients subscribed to "news"; a first round of messages
(each client publishes one) reaches everyone.
Fault: SIGKILL the server. Every client reports ``reconnecting``. A new server
process (new PID) starts on the same port.
Recovery: the clients reconnect and re-subscribe on their own (the scenario never
subscribes again); the time from the restart until the new server has every
client subscribed again is the recovery time.
Check: a second round published after the restart reaches all clients, in a new
epoch starting again at offset 1; every history shows connected -> reconnecting
-> connected (to the new server id), nothing lost, duplicated or out of order.
"""

from __future__ import annotations

import sys

import _repo  # noqa: F401  (the repository's sente_lite/ first: test_scripts/_repo.py)

import time
from typing import Any, Dict, List

from sente_lite.testing import (FIG_CLIENTS, FIG_MESSAGES, FIG_P99_MS, FIG_RECOVERY_S,
                                ProcessContext, ProcessResult, Report, Run, duplicates,
                                latencies_ms, latency_summary, order_problem, run_scenario, stamp)

CLIENTS = 3
CHANNEL = "news"
#: Clients' reconnect backoff cap (s): keeps the recovery time in seconds, not tens.
BACKOFF_MAX_S = 1.0
#: Seconds the clients may take to see the dead server, and to come back after the restart.
DETECT_TIMEOUT_S = 5.0
RECOVER_TIMEOUT_S = 10.0


def client(ctx: ProcessContext) -> Dict[str, Any]:
    """Subscribe once; publish and await rounds of messages when told to."""
    with ctx.connect(backoff_max=BACKOFF_MAX_S) as c:
        ctx.subscribe(c, CHANNEL)
        ctx.mark("ready")

        def of_round(name: str) -> int:
            return sum(1 for d in ctx.history.messages(CHANNEL) if d.data.get("round") == name)

        def publish(data: Dict[str, Any]) -> None:
            c.publish(CHANNEL, stamp(by=ctx.name, round=data["round"]))

        def await_round(data: Dict[str, Any]) -> int:
            return ctx.wait_until(lambda: of_round(data["round"]) >= CLIENTS or None,
                                  f"{CLIENTS} messages of round {data['round']!r}")

        ctx.serve_commands({"publish": publish, "await": await_round})
        return {"uid": c.uid, "stats": c.stats()}


def story(run: Run, report: Report) -> None:
    # setup and a first round
    server = run.start_server()
    clients = run.start_clients(client, CLIENTS)
    run.wait_mark(clients, "ready")
    run.request(clients, "publish", round="before")
    run.request(clients, "await", round="before")
    report.step(f"{CLIENTS} clients subscribed; round 'before' delivered")

    # fault: the server dies without a word
    killed_ns = time.monotonic_ns()
    server.kill()
    report.step(f"SIGKILL {server.name} (pid {server.pid})")
    run.wait_mark(clients, "status", DETECT_TIMEOUT_S,
                  accept=lambda m: m["status"] == "reconnecting")
    report.step("every client reports reconnecting")

    # recovery: same port, new process; the clients do the rest
    restart_ns = time.monotonic_ns()
    server2 = run.restart_server(server)
    report.step(f"restarted as {server2.name} (pid {server2.pid}) on port {server2.port}")
    run.wait_mark(clients, "status", RECOVER_TIMEOUT_S,
                  accept=lambda m: m["status"] == "connected" and m["server_id"] == server2.server_id)
    run.server_command(server2, "await-subscribers", channel=CHANNEL, count=CLIENTS,
                       timeout=RECOVER_TIMEOUT_S)
    recovered_ns = time.monotonic_ns()
    report.step("every client reconnected and re-subscribed")

    # workload after the restart
    run.request(clients, "publish", round="after")
    run.request(clients, "await", round="after")
    run.command(clients, "finish")
    results = run.results(clients)
    run.stop_server(server2)

    check(report, results, server.pid, server2.pid, server.port, server2.port,
          [server.server_id, server2.server_id])
    report.figure(FIG_RECOVERY_S, round((recovered_ns - restart_ns) / 1e9, 3))
    report.figure("outage_s", round((recovered_ns - killed_ns) / 1e9, 3))


def check(report: Report, results: Dict[str, ProcessResult], pid1: int, pid2: int,
          port1: int, port2: int, server_ids: List[str]) -> None:
    report.check(pid1 != pid2 and port1 == port2,
                 "the restarted server is a new process on the same port",
                 f"pid {pid1} -> {pid2}, port {port1} -> {port2}")
    publishers = {f"client{i}" for i in range(1, CLIENTS + 1)}
    for name, r in results.items():
        statuses = [s for s in r.statuses() if s != "closed"]
        connected_to = [e["server_id"] for e in r.events
                        if e["kind"] == "status" and e["status"] == "connected"]
        report.check(statuses == ["connecting", "connected", "reconnecting", "connected"]
                     and connected_to == server_ids,
                     f"{name}: connected -> reconnecting -> connected to the new server",
                     f"statuses {statuses}", name)
        report.check(len([e for e in r.events if e["kind"] == "subscribed"]) == 1,
                     f"{name} subscribed once; the client re-subscribed by itself", "", name)
        rounds = {}
        for rnd in ("before", "after"):
            got = [d for d in r.deliveries if d.data.get("round") == rnd]
            rounds[rnd] = {d.epoch for d in got}
            report.check(sorted(d.offset for d in got) == list(range(1, CLIENTS + 1))
                         and {d.data["by"] for d in got} == publishers and len(rounds[rnd]) == 1,
                         f"{name} got round {rnd!r}: offsets 1..{CLIENTS} from every client, one epoch",
                         f"got {[(d.offset, d.data['by']) for d in got]}", name)
        report.check(rounds["before"] != rounds["after"],
                     f"{name}: the restart started a new epoch", f"{rounds}", name)
        problem = order_problem(r.deliveries) or (f"duplicates {duplicates(r.deliveries)}"
                                                   if duplicates(r.deliveries) else None)
        report.check(problem is None, f"{name}: nothing out of order or duplicated", problem or "",
                     name)
    lat = latency_summary(latencies_ms(d for r in results.values() for d in r.deliveries))
    report.figure(FIG_CLIENTS, len(results))
    report.figure(FIG_MESSAGES, 2 * CLIENTS)
    report.figure(FIG_P99_MS, lat["p99_ms"])


if __name__ == "__main__":
    sys.exit(run_scenario(story, f"SIGKILL the server; {CLIENTS} clients reconnect to its restart"))

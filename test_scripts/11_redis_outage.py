#!/usr/bin/env python3
"""11 Redis outage: SIGKILL Redis under load and restart it; loud while down, no silent loss.

Setup: a real redis-server (started here, no persistence); server-a and server-b
with ``broker=redis://...``; CLIENTS clients, half on each, subscribed to "news".
Workload: every client publishes continuously (one acknowledged publish every
PUBLISH_INTERVAL_S), recording each answer: acknowledged (offset, epoch) or refused.
Fault: SIGKILL Redis. Degradation must be visible: both servers' ``/health`` answer
503 ``degraded``; every publisher gets ``unavailable`` errors. Then Redis restarts on
the same port, empty (every channel's history and epoch are gone).
Recovery: both links come back by themselves; every subscriber is told with a
``sente-lite/subscribed`` notice carrying ``recovered: false`` (its on_recovery
callback); publishes are acknowledged again. Each client then publishes a fence
and awaits everyone's fence (the channel has one order: all before it has arrived).
Check (no silent loss): every acknowledged publish reached every subscriber exactly
once, in offset order, or a ``recovered: false`` notice that subscriber got covers
it (its epoch and offset lie in the gap the notice names). Refused publishes are
counted; none was acknowledged. A publish in flight when Redis died is answered
``outcome-unknown`` (docs/protocol.md section 4): its caller may stop waiting
(PUBLISH_TIMEOUT_S) while the client resends it, same id, until Redis is back; at
most one per client, each counted by the client and each in the channel at the end
(every client's outbox empty before the fences).
"""

from __future__ import annotations

import sys

import _repo  # noqa: F401  (the repository's sente_lite/ first: test_scripts/_repo.py)

import time
from typing import Any, Dict, List, Optional, Set, Tuple

from sente_lite.discovery import wait_for
from sente_lite.testing import (FIG_CLIENTS, FIG_MESSAGES, FIG_P99_MS, FIG_RECOVERY_S,
                                ProcessContext, ProcessResult, Report, Run, latencies_ms,
                                covered_by_notice, latency_summary, run_scenario)
from sente_lite.testing.publishing import PublishLoop
from sente_lite.testing.redis_server import RedisServer, with_redis_server

CLIENTS = 4
HALF = CLIENTS // 2
CHANNEL = "news"
#: Pace of each client's publishes (s between one answer and the next publish).
PUBLISH_INTERVAL_S = 0.02
#: Seconds a publish may wait for its answer before it counts as unanswered.
PUBLISH_TIMEOUT_S = 5.0
#: Publishes per client whose caller stopped waiting: the one in flight at the kill
#: (outcome-unknown, resent with backoff; its caller's wait ends before Redis is back).
MAX_UNANSWERED = 1
#: Seconds a client's outbox may take to empty after the restart (resends back off to 5 s).
OUTBOX_DRAIN_S = 20.0
#: Acknowledged publishes per client before the fault, refusals per client during it.
ACKED_BEFORE = 20
REFUSED_DURING = 25
#: Seconds the servers may take to report the outage, and to recover after the restart.
DETECT_TIMEOUT_S = 10.0
RECOVER_TIMEOUT_S = 20.0
UNAVAILABLE = "unavailable"


def client(ctx: ProcessContext, urls: List[str]) -> Dict[str, Any]:
    """Subscribe; publish continuously between ``start`` and ``stop``, recording every answer."""
    with ctx.connect(urls) as c:
        recoveries: List[Dict[str, Any]] = []

        def on_recovery(r: Any) -> None:
            event = ctx.history.record("recovery", channel=r.channel_id, recovered=r.recovered,
                                       reason=r.reason, offset=r.offset, epoch=r.epoch,
                                       since=r.since)
            recoveries.append(event)
            ctx.mark("recovery", count=len(recoveries), recovered=r.recovered)

        c.on_recovery(on_recovery)
        ctx.subscribe(c, CHANNEL)
        ctx.mark("ready")
        loop = PublishLoop(ctx, c, CHANNEL, PUBLISH_INTERVAL_S, PUBLISH_TIMEOUT_S)
        ctx.serve_commands(loop.commands(OUTBOX_DRAIN_S))
        return dict(loop.results(), stats=c.stats())


def story(run: Run, report: Report) -> None:
    with_redis_server(run, report, scenario)


def _health(run: Run, servers: List[Any]) -> Dict[str, Dict[str, Any]]:
    return {s.name: run.server_command(s, "health") for s in servers}


def scenario(run: Run, report: Report, redis_srv: RedisServer) -> None:
    servers = [run.start_server(f"server-{x}", broker=redis_srv.url) for x in "ab"]
    clients = [run.start_process(f"client{i}", client,
                                 [servers[(i - 1) // HALF].url, servers[1 - (i - 1) // HALF].url])
               for i in range(1, CLIENTS + 1)]
    run.wait_mark(clients, "ready")
    for s in servers:
        run.server_command(s, "await-subscribers", channel=CHANNEL, count=HALF)
    report.step(f"{CLIENTS} clients subscribed, {HALF} per server")
    run.command(clients, "start")
    run.wait_mark(clients, "acked", accept=lambda m: m["count"] >= ACKED_BEFORE)
    report.step(f"every client had {ACKED_BEFORE} publishes acknowledged")

    # fault: Redis dies, and everything in it
    killed_ns = time.monotonic_ns()
    redis_srv.kill()
    run.record_event("redis-sigkill", None)
    report.step("SIGKILL redis-server")
    degraded = wait_for(lambda: (lambda h: h if all(v["body"]["status"] == "degraded"
                                                    for v in h.values()) else None)(
        _health(run, servers)), DETECT_TIMEOUT_S, "both servers degraded")
    detected_ns = time.monotonic_ns()
    refused = run.wait_mark(clients, "refused", DETECT_TIMEOUT_S,
                            accept=lambda m: m["count"] >= REFUSED_DURING)
    report.step(f"both servers degraded after {(detected_ns - killed_ns) / 1e9:.2f}s; "
                f"every client got {REFUSED_DURING} refusals")

    # recovery: a fresh, empty Redis on the same port
    restart_ns = time.monotonic_ns()
    redis_srv.start()
    run.record_event("redis-restart", None, pid=redis_srv.pid)
    healthy = wait_for(lambda: (lambda h: h if all(v["status"] == 200 for v in h.values())
                                else None)(_health(run, servers)), RECOVER_TIMEOUT_S, "both healthy")
    linked_ns = time.monotonic_ns()
    told = run.wait_mark(clients, "recovery", RECOVER_TIMEOUT_S)
    told_ns = max(m["t_ns"] for m in told.values())
    report.step(f"Redis restarted: links back after {(linked_ns - restart_ns) / 1e9:.2f}s, "
                f"every subscriber told after {(told_ns - restart_ns) / 1e9:.2f}s")
    counts = {h.name: run.wait_mark(h, "acked")[h.name]["count"] for h in clients}
    for h in clients:  # publishes are acknowledged again
        run.wait_mark(h, "acked", RECOVER_TIMEOUT_S,
                      accept=lambda m, base=counts[h.name]: m["count"] >= base + 5)
    stopped = run.request(clients, "stop")
    run.request(clients, "fence")
    run.request(clients, "await-fences", names=[h.name for h in clients])
    run.command(clients, "finish")
    results = run.results(clients)
    for s in servers:
        run.stop_server(s)

    check(report, results, degraded, healthy, refused, stopped, restart_ns)
    report.figure("detect_s", round((detected_ns - killed_ns) / 1e9, 3))
    report.figure("outage_s", round((restart_ns - killed_ns) / 1e9, 3))
    report.figure("relink_s", round((linked_ns - restart_ns) / 1e9, 3))
    report.figure(FIG_RECOVERY_S, round((told_ns - restart_ns) / 1e9, 3))



def check(report: Report, results: Dict[str, ProcessResult], degraded: Dict[str, Any],
          healthy: Dict[str, Any], refused: Dict[str, Any], stopped: Dict[str, Any],
          restart_ns: int) -> None:
    report.check(all(v["status"] == 503 and v["body"]["broker-status"] == "down"
                     for v in degraded.values()),
                 "while Redis was down both servers' /health answered 503 degraded",
                 f"{ {k: (v['status'], v['body'].get('broker-error')) for k, v in degraded.items()} }")
    report.check(all(m["code"] == UNAVAILABLE for m in refused.values()),
                 f"publishes were refused with {UNAVAILABLE!r}", f"{refused}")
    report.check(all(v["status"] == 200 and v["body"]["status"] == "ok" for v in healthy.values()),
                 "both servers healthy again after the restart", "")
    # every acknowledged publish: who published it, its offset, and its epoch (from deliveries)
    by_key: Dict[Tuple[str, int], Tuple[int, Optional[str]]] = {}
    delivered_somewhere: Dict[Tuple[str, int], str] = {}
    for r in results.values():
        for d in r.deliveries:
            if "by" in d.data:
                delivered_somewhere[(d.data["by"], d.data["n"])] = d.epoch
    acked_total = refused_total = 0
    refused_keys: Set[Tuple[str, int]] = set()
    unanswered_keys: Set[Tuple[str, int]] = set()
    # an acknowledgement names no epoch: one that came before Redis restarted was made in
    # the first Redis, whose epoch every first delivery carries (a publish acknowledged
    # just before the kill may reach no subscriber: its epoch is known only this way)
    first_epoch = next((r.deliveries[0].epoch for r in results.values() if r.deliveries), None)
    for name, r in results.items():
        for a in r.value["acked"]:
            epoch = delivered_somewhere.get((name, a["n"]))
            if epoch is None and a["t_ns"] < restart_ns:
                epoch = first_epoch
            by_key[(name, a["n"])] = (a["offset"], epoch)
        acked_total += len(r.value["acked"])
        refused_total += len(r.value["refused"])
        refused_keys |= {(name, x["n"]) for x in r.value["refused"]}
        unanswered = r.value["unanswered"]
        unknown = r.value["stats"].get("publish_outcome_unknown", 0)
        report.check(len(unanswered) <= MAX_UNANSWERED and unknown >= len(unanswered),
                     f"{name}: every publish was answered, but for at most {MAX_UNANSWERED} in flight "
                     "at the kill (outcome-unknown, resent)",
                     f"unanswered {unanswered[:5]}, outcome-unknown answers {unknown}", name)
        unanswered_keys |= {(name, n) for n in unanswered}
    lost: List[str] = []
    covered_n = 0
    for name, r in results.items():
        notices = [e for e in r.events if e["kind"] == "recovery" and not e["recovered"]]
        report.check(len(notices) >= 1 and all(n["reason"] == "epoch-changed" for n in notices),
                     f"{name}: told that Redis lost the channel (recovered: false, epoch-changed)",
                     f"{notices}", name)
        got = {(d.data["by"], d.data["n"]): (d.epoch, d.offset) for d in r.deliveries
               if "by" in d.data}
        seen = [(d.epoch, d.offset) for d in r.deliveries]
        report.check(len(seen) == len(set(seen)), f"{name}: no message delivered twice", "", name)
        order_ok = all(b[1] > a[1] for a, b in zip(seen, seen[1:]) if a[0] == b[0])
        report.check(order_ok, f"{name}: offsets increase within each epoch", "", name)
        for key, (offset, epoch) in by_key.items():
            if key in got:
                continue
            if epoch is not None and covered_by_notice(notices, epoch, offset):
                covered_n += 1
                continue
            lost.append(f"{name} missed {key[0]}#{key[1]} (offset {offset}, epoch {epoch})")
    report.check(not lost, "every acknowledged publish reached every subscriber exactly once, "
                           "or a recovered: false notice covers it",
                 f"{len(lost)} lost: {lost[:5]}")
    landed = [k for k in refused_keys if k in delivered_somewhere]
    stranded = sorted(unanswered_keys - set(delivered_somewhere))
    report.check(not stranded, "every publish whose caller stopped waiting (outcome-unknown) "
                               "was resent and landed in the channel",
                 f"never delivered: {stranded[:5]}")
    report.check(acked_total > 0 and refused_total > 0,
                 "publishes were acknowledged before and after, and refused during the outage",
                 f"acked {acked_total}, refused {refused_total}")
    lat = latency_summary(latencies_ms(d for r in results.values() for d in r.deliveries))
    report.figure(FIG_CLIENTS, len(results))
    report.figure(FIG_MESSAGES, acked_total)
    report.figure(FIG_P99_MS, lat["p99_ms"])
    report.figure("refused", refused_total)
    report.figure("acked_lost", len(lost))
    report.figure("acked_covered_by_notice", covered_n)
    report.figure("refused_but_delivered", len(landed))
    report.figure("outcome_unknown_resent", len(unanswered_keys))


if __name__ == "__main__":
    sys.exit(run_scenario(story, "SIGKILL Redis under load and restart it: loud while down, "
                                 "recovered after, nothing lost silently"))

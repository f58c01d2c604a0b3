#!/usr/bin/env python3
"""15 Redis Cluster failover: SIGKILL the master of a channel's slot under load; its replica takes over, nothing acknowledged is lost.

Setup: a local Redis Cluster (3 masters + 3 replicas, ``cluster-node-timeout`` 1000 ms);
server-a and server-b with ``broker=redis+cluster://...``; CLIENTS clients, half on
each, all subscribed to "news" and publishing on it continuously (one acknowledged
publish every PUBLISH_INTERVAL_S), recording each answer: acknowledged (offset) or
refused (its code).
Fault: SIGKILL the master serving the channel's slot. Both servers' ``/health`` answer
503 ``degraded`` naming the unreachable master; publishes are refused (``unavailable``,
or ``outcome-unknown`` for one in flight: resent by the client, same id).
Recovery: the replica is promoted (after the node timeout); both links come back by
themselves, re-subscribe the channel's shard channel on the new master, and publishes are
acknowledged again. Each client publishes a fence and awaits everyone's.
Check: 0 acknowledged-then-lost: every acknowledged publish reached every subscriber
exactly once (a publish is acknowledged only once a replica holds it); no message twice;
every publish whose caller stopped waiting landed; delivery resumed after the promotion.
"""

from __future__ import annotations

import sys

import _repo  # noqa: F401  (the repository's sente_lite/ first: test_scripts/_repo.py)

import time
from typing import Any, Dict, List, Set, Tuple

from sente_lite.brokers.redis.space import hash_tag
from sente_lite.discovery import wait_for
from sente_lite.testing import (FIG_CLIENTS, FIG_MESSAGES, FIG_P99_MS, FIG_RECOVERY_S,
                                ProcessContext, ProcessResult, Report, Run, latencies_ms,
                                latency_summary, run_scenario)
from sente_lite.testing.publishing import PublishLoop
from sente_lite.testing.redis_cluster import LocalCluster, with_redis_cluster

CLIENTS = 4
HALF = CLIENTS // 2
CHANNEL = "news"
#: Pace of each client's publishes (s between one answer and the next publish).
PUBLISH_INTERVAL_S = 0.02
#: Seconds a publish may wait for its answer before it counts as unanswered.
PUBLISH_TIMEOUT_S = 3.0
#: Seconds a client's outbox may take to empty after the promotion (resends back off).
OUTBOX_DRAIN_S = 12.0
#: Acknowledged publishes per client before the fault, and after the promotion.
ACKED_BEFORE = 20
ACKED_AFTER = 10
#: Seconds the servers may take to report the failure, and to be linked again.
DETECT_TIMEOUT_S = 5.0
RECOVER_TIMEOUT_S = 15.0


def client(ctx: ProcessContext, url: str) -> Dict[str, Any]:
    """Subscribe; publish continuously between ``start`` and ``stop``, recording every answer."""
    with ctx.connect(url) as c:
        c.on_recovery(lambda r: ctx.history.record(
            "recovery", channel=r.channel_id, recovered=r.recovered, reason=r.reason,
            offset=r.offset, epoch=r.epoch, since=r.since))
        ctx.subscribe(c, CHANNEL)
        ctx.mark("ready")
        loop = PublishLoop(ctx, c, CHANNEL, PUBLISH_INTERVAL_S, PUBLISH_TIMEOUT_S)
        ctx.serve_commands(loop.commands(OUTBOX_DRAIN_S))
        return dict(loop.results(), stats=c.stats())


def story(run: Run, report: Report) -> None:
    with_redis_cluster(run, report, scenario)


def _health(run: Run, servers: List[Any]) -> Dict[str, Dict[str, Any]]:
    return {s.name: run.server_command(s, "health") for s in servers}


def scenario(run: Run, report: Report, cluster: LocalCluster) -> None:
    servers = [run.start_server(f"server-{x}", broker=cluster.url) for x in "ab"]
    clients = [run.start_process(f"client{i}", client, servers[(i - 1) // HALF].url)
               for i in range(1, CLIENTS + 1)]
    run.wait_mark(clients, "ready")
    for s in servers:
        run.server_command(s, "await-subscribers", channel=CHANNEL, count=HALF)
    report.step(f"{CLIENTS} clients subscribed and publishing, {HALF} per server")
    run.command(clients, "start")
    run.wait_mark(clients, "acked", accept=lambda m: m["count"] >= ACKED_BEFORE)
    victim = cluster.master_of(hash_tag(CHANNEL).encode())

    killed_ns = time.monotonic_ns()
    cluster.kill(victim)
    run.record_event("redis-master-sigkill", None, port=victim)
    report.step(f"every client had {ACKED_BEFORE} publishes acknowledged; SIGKILL the master "
                f"of {CHANNEL!r}'s slot (port {victim})")
    degraded = wait_for(lambda: (lambda h: h if any(
        f"127.0.0.1:{victim}" in v["body"].get("broker-unreachable-masters", ())
        for v in h.values()) else None)(_health(run, servers)), DETECT_TIMEOUT_S,
        "a server's /health naming the dead master")
    healthy = wait_for(lambda: (lambda h: h if all(v["status"] == 200 for v in h.values())
                                else None)(_health(run, servers)), RECOVER_TIMEOUT_S, "both healthy")
    linked_ns = time.monotonic_ns()
    report.step(f"/health named the dead master; both servers linked again after "
                f"{(linked_ns - killed_ns) / 1e9:.2f}s (masters now {cluster.masters()})")
    counts = {h.name: run.wait_mark(h, "acked")[h.name]["count"] for h in clients}
    for h in clients:  # delivery resumes: publishes acknowledged again
        run.wait_mark(h, "acked", RECOVER_TIMEOUT_S,
                      accept=lambda m, base=counts[h.name]: m["count"] >= base + ACKED_AFTER)
    resumed_ns = time.monotonic_ns()
    run.request(clients, "stop")
    run.request(clients, "fence")
    run.request(clients, "await-fences", names=[h.name for h in clients])
    run.command(clients, "finish")
    results = run.results(clients)
    for s in servers:
        run.stop_server(s)

    check(report, results, degraded, healthy, victim)
    report.figure("failover_s", round((linked_ns - killed_ns) / 1e9, 3))
    report.figure(FIG_RECOVERY_S, round((resumed_ns - killed_ns) / 1e9, 3))


def check(report: Report, results: Dict[str, ProcessResult], degraded: Dict[str, Any],
          healthy: Dict[str, Any], victim: int) -> None:
    named = {k: v["body"] for k, v in degraded.items() if v["status"] == 503}
    report.check(bool(named) and all(b["broker-status"] == "down" for b in named.values()),
                 f"while the master was dead /health answered 503 degraded, naming 127.0.0.1:{victim}",
                 f"{ {k: (v['status'], v['body'].get('broker-unreachable-masters')) for k, v in degraded.items()} }")
    report.check(all(v["status"] == 200 for v in healthy.values()),
                 "both servers healthy again after the promotion", "")
    acked: Set[Tuple[str, int]] = set()
    stranded: List[Tuple[str, int]] = []
    refused_total = 0
    delivered_somewhere = {(d.data["by"], d.data["n"]) for r in results.values()
                           for d in r.deliveries if "by" in d.data}
    for name, r in results.items():
        acked |= {(name, a["n"]) for a in r.value["acked"]}
        refused_total += len(r.value["refused"])
        stranded += [(name, n) for n in r.value["unanswered"] if (name, n) not in delivered_somewhere]
    lost: List[str] = []
    for name, r in results.items():
        got = [(d.data["by"], d.data["n"]) for d in r.deliveries if "by" in d.data]
        report.check(len(got) == len(set(got)), f"{name}: no message delivered twice", "", name)
        missed = sorted(acked - set(got))
        lost += [f"{name} missed {by}#{n}" for by, n in missed]
    report.check(not lost, "0 acknowledged-then-lost: every acknowledged publish reached every "
                           "subscriber", f"{len(lost)} lost: {lost[:5]}")
    report.check(not stranded, "every publish whose caller stopped waiting (outcome-unknown) was "
                               "resent and landed", f"never delivered: {stranded[:5]}")
    report.check(refused_total > 0, "publishes were refused during the failover",
                 f"refused {refused_total}")
    codes = sorted({x["code"] for r in results.values() for x in r.value["refused"]})
    report.check(set(codes) <= {"unavailable", "outcome-unknown"},
                 "refusals were unavailable or outcome-unknown only", f"{codes}")
    lat = latency_summary(latencies_ms(d for r in results.values() for d in r.deliveries))
    report.figure(FIG_CLIENTS, len(results))
    report.figure(FIG_MESSAGES, len(acked))
    report.figure(FIG_P99_MS, lat["p99_ms"])
    report.figure("refused", refused_total)
    report.figure("acked_lost", len(lost))
    report.figure("outcome_unknown_resent", sum(len(r.value["unanswered"]) for r in results.values()))


if __name__ == "__main__":
    sys.exit(run_scenario(story, "SIGKILL the master of a channel's slot in a Redis Cluster "
                                 "under load: refused meanwhile, promoted replica, nothing "
                                 "acknowledged lost"))

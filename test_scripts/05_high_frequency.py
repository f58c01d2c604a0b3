#!/usr/bin/env python3
"""05 high frequency: 20 clients publish 100 msg/s each for 10 s; all get all, once, in order.

Setup: a server and CLIENTS clients subscribed to "events", every one on the
library's default settings (nothing tuned for this load).
Workload: on one command all clients publish RATE_PER_CLIENT messages per second
for DURATION_S seconds, paced on a common clock (client i shifted by i/CLIENTS of
an interval, so the load is spread, not in bursts). Every client then waits until
it received all CLIENTS x RATE_PER_CLIENT x DURATION_S messages.
Check: every client received every message exactly once, in offset order, and
each publisher's messages in the order sent; the server counted each publish and
each delivery once. Measured: publish-to-receive latency p50/p99/max over all
deliveries, delivery throughput, server RSS growth over the workload, its steady
growth per 1,000 messages and that of the server's bounded stores (sampled during the
workload; the runner's memory criterion judges the first net of the second) and peak
RSS of server and clients; what bounds the latency: the machine's CPU busy share and
CPU pressure (the share of time some task waited for a CPU) while the clients publish,
and the server's and the clients' (all together) share of one CPU. Latency has no
pass/fail bound here; loss, duplication and order must be perfect.
"""

from __future__ import annotations

import sys

import _repo  # noqa: F401  (the repository's sente_lite/ first: test_scripts/_repo.py)

import time
from typing import Any, Dict, List, Tuple

from sente_lite.testing import (FIG_CLIENTS, FIG_MESSAGES, FIG_P99_MS, HarnessTimeout,
                                ProcessContext, ProcessResult, Report, Run, latencies_ms,
                                latency_summary, order_problem, proc_memory_kb,
                                rss_growth_per_1000, run_scenario, stamp)
from sente_lite.brokers.local import DEFAULT_HISTORY_SIZE
from sente_lite.testing.checks import cpu_load, cpu_reading, proc_cpu_s
from sente_lite.testing.criteria import FIG_BOUNDED_GROWTH, FIG_RSS_GROWTH

CLIENTS = 20
RATE_PER_CLIENT = 100          # messages per second, per client
DURATION_S = 10
MESSAGES = CLIENTS * RATE_PER_CLIENT * DURATION_S   # published in total; each client gets all
CHANNEL = "events"
#: Seconds between the "publish" command and the common start (every client is waiting by then).
START_DELAY_S = 1.0
#: Seconds every client may take, after its last publish, to receive the rest.
DRAIN_TIMEOUT_S = 90.0
#: This scenario's whole time budget (heavier than the default SCENARIO_TIMEOUT_S).
TIMEOUT_S = 180.0
#: Seconds between two samples of the server's RSS and publish count during the workload.
RSS_SAMPLE_EVERY_S = 0.5
#: Publishes after which the channel's history (DEFAULT_HISTORY_SIZE messages) is full and
#: RSS growth per message is measured. Publish ids are remembered per publisher for
#: publish_dedup_s (bounded by publish_ids_per_publisher, not reached by 1,000 publishes
#: per client), so their store still grows during the run: the server's stats say how
#: much it holds (publish_ids_bytes), sampled with RSS, and its growth is reported beside
#: RSS growth (FIG_BOUNDED_GROWTH), which the runner's memory criterion subtracts.
RSS_WARMUP_MESSAGES = DEFAULT_HISTORY_SIZE


def client(ctx: ProcessContext) -> Dict[str, Any]:
    """Subscribe, publish at a steady rate on command, then await every message."""
    with ctx.connect() as c:
        ctx.subscribe(c, CHANNEL)
        ctx.mark("ready")
        go = ctx.wait_command("publish")
        interval_ns = 1_000_000_000 // RATE_PER_CLIENT
        start_ns = go["start_ns"] + interval_ns * go["index"] // CLIENTS
        behind_max_ns = 0
        cpu_start = None
        for seq in range(RATE_PER_CLIENT * DURATION_S):
            due = start_ns + seq * interval_ns
            now = time.monotonic_ns()
            if due > now:
                time.sleep((due - now) / 1e9)
            else:
                behind_max_ns = max(behind_max_ns, now - due)
            if cpu_start is None:
                cpu_start = cpu_reading()  # the machine's CPU from the first publish on
                own_cpu_start, own_wall_start = time.process_time(), time.monotonic()
            c.publish(CHANNEL, stamp(by=ctx.name, seq=seq))
        published_s = (time.monotonic_ns() - start_ns) / 1e9
        load = cpu_load(cpu_start, cpu_reading())
        own_cpu_pct = 100 * (time.process_time() - own_cpu_start) / max(
            time.monotonic() - own_wall_start, 1e-9)
        ctx.mark("published")
        # count() of every channel (this client has one) only counts: per-channel
        # counting would build all 20,000 deliveries at once while the last are in flight
        ctx.wait_until(lambda: ctx.history.count() >= MESSAGES or None,
                       f"all {MESSAGES} messages", DRAIN_TIMEOUT_S)
        ctx.mark("received")
        ctx.wait_command("finish")
        return {"uid": c.uid, "published_s": published_s, "behind_max_ms": behind_max_ns / 1e6,
                "stats": c.stats(), "index": go["index"], "cpu_load": load,
                "cpu_pct": own_cpu_pct}


def story(run: Run, report: Report) -> None:
    # setup
    server = run.start_server()
    clients = run.start_clients(client, CLIENTS)
    run.wait_mark(clients, "ready")
    run.server_command(server, "await-subscribers", channel=CHANNEL, count=CLIENTS)
    mem_before = proc_memory_kb(server.pid)
    report.step(f"{CLIENTS} clients subscribed; server RSS {mem_before.get('rss_kb')} KiB")

    # workload
    start_ns = time.monotonic_ns() + int(START_DELAY_S * 1e9)
    for i, h in enumerate(clients):
        run.command(h, "publish", start_ns=start_ns, index=i)
    server_cpu_before = proc_cpu_s(server.pid)
    samples = sample_rss(run, server, clients, "published")
    server_cpu = proc_cpu_s(server.pid)
    publish_s = (time.monotonic_ns() - start_ns) / 1e9
    report.step(f"{MESSAGES} messages published")
    samples += sample_rss(run, server, clients, "received")
    mem_after = proc_memory_kb(server.pid)
    report.step(f"every client received every message; server RSS {mem_after.get('rss_kb')} KiB")
    run.command(clients, "finish")
    results = run.results(clients)
    server_result = run.stop_server(server)

    check(report, results, server_result, mem_before, mem_after, start_ns)
    # what bounds latency here: the machine's CPU during the publishing (one client's view)
    first = next(r.value for r in results.values() if r.value.get("index") == 0)
    for key, value in first["cpu_load"].items():
        report.figure(key, value)
    if server_cpu is not None and server_cpu_before is not None and publish_s > 0:
        report.figure("server_cpu_pct_during_load",
                      round(100 * (server_cpu - server_cpu_before) / publish_s, 1))
    report.figure("clients_cpu_pct_during_load",  # all of them, in % of one CPU
                  round(sum(r.value["cpu_pct"] for r in results.values()), 1))
    report.figure(FIG_RSS_GROWTH, rss_growth_per_1000([(m, kb) for m, kb, _ in samples],
                                                      RSS_WARMUP_MESSAGES))
    report.figure(FIG_BOUNDED_GROWTH, rss_growth_per_1000([(m, b) for m, _, b in samples],
                                                          RSS_WARMUP_MESSAGES))
    report.note("server RSS during the workload (publishes: KiB, of which its bounded "
                "stores hold): " + ", ".join(f"{m}: {kb} ({b})" for m, kb, b in samples))


def sample_rss(run: Run, server: Any, clients: List[Any], mark: str) -> List[Tuple[int, int, int]]:
    """(publishes, server RSS KiB, KiB its bounded stores hold: publish ids and history)
    every RSS_SAMPLE_EVERY_S until every client wrote ``mark``."""
    samples: List[Tuple[int, int, int]] = []
    while run.remaining() > RSS_SAMPLE_EVERY_S:
        try:
            run.wait_mark(clients, mark, timeout=RSS_SAMPLE_EVERY_S)
            break
        except HarnessTimeout:
            stats = run.server_command(server, "stats")
            bounded = (stats["publish_ids_bytes"] + stats["history_bytes"]) // 1024
            samples.append((stats["publishes"], proc_memory_kb(server.pid).get("rss_kb", 0),
                            bounded))
    run.wait_mark(clients, mark)  # at once, or the failure naming who is missing
    return samples


def check(report: Report, results: Dict[str, ProcessResult], server_result: ProcessResult,
          mem_before: Dict[str, int], mem_after: Dict[str, int], start_ns: int) -> None:
    per_publisher = RATE_PER_CLIENT * DURATION_S
    for name, r in results.items():
        offsets = [d.offset for d in r.deliveries]
        epochs = {d.epoch for d in r.deliveries}
        report.check(offsets == list(range(1, MESSAGES + 1)) and len(epochs) == 1,
                     f"{name} received offsets 1..{MESSAGES} exactly once, in order",
                     order_problem(r.deliveries) or f"{len(offsets)} messages, epochs {len(epochs)}",
                     name)
        seqs: Dict[str, list] = {}
        for d in r.deliveries:
            seqs.setdefault(d.data["by"], []).append(d.data["seq"])
        report.check(len(seqs) == CLIENTS and all(s == list(range(per_publisher))
                                                  for s in seqs.values()),
                     f"{name} got each publisher's {per_publisher} messages in the order sent",
                     "", name)
    stats = server_result.value
    report.check(stats.get("publishes") == MESSAGES and stats.get("deliveries") == MESSAGES * CLIENTS,
                 f"server counted {MESSAGES} publishes and {MESSAGES * CLIENTS} deliveries",
                 f"publishes={stats.get('publishes')} deliveries={stats.get('deliveries')}", "server")
    cut = {k: v for k, v in stats.get("closes_by_code", {}).items() if k in ("4000", "4001")}
    report.check(not cut and not stats.get("heartbeat_timeouts")
                 and not stats.get("slow_consumer_closes"),
                 "no client was cut off (no slow-consumer or heartbeat close), none reconnected",
                 f"closes_by_code={stats.get('closes_by_code')}", "server")
    reconnected = [n for n, r in results.items() if "reconnecting" in r.statuses()]
    report.check(not reconnected, "every client kept its one connection", f"{reconnected}")

    lat = latency_summary(latencies_ms(d for r in results.values() for d in r.deliveries))
    last_recv = max(d.recv_ns for r in results.values() for d in r.deliveries)
    span_s = (last_recv - start_ns) / 1e9
    report.figure(FIG_CLIENTS, CLIENTS)
    report.figure(FIG_MESSAGES, MESSAGES)
    report.figure("deliveries", lat["count"])
    report.figure("p50_ms", lat["p50_ms"])
    report.figure(FIG_P99_MS, lat["p99_ms"])
    report.figure("max_ms", lat["max_ms"])
    report.figure("publish_s_max", round(max(r.value["published_s"] for r in results.values()), 2))
    report.figure("deliveries_per_s", round(lat["count"] / span_s))
    report.figure("server_rss_before_kb", mem_before.get("rss_kb"))
    report.figure("server_rss_after_kb", mem_after.get("rss_kb"))
    report.figure("server_rss_growth_kb", mem_after.get("rss_kb", 0) - mem_before.get("rss_kb", 0))
    report.figure("server_peak_rss_kb", server_result.maxrss_kb)
    report.figure("client_peak_rss_kb_max", max(r.maxrss_kb or 0 for r in results.values()))
    report.figure("server_cpu_s", server_result.cpu_s)
    report.figure("client_cpu_s_mean", round(sum(r.cpu_s or 0 for r in results.values())
                                             / len(results), 2))
    reads = sum(r.value["stats"].get("reads", 0) for r in results.values())
    report.figure("client_messages_per_read", round(lat["count"] / reads, 2) if reads else None)


if __name__ == "__main__":
    sys.exit(run_scenario(story, f"{CLIENTS} clients x {RATE_PER_CLIENT} msg/s x {DURATION_S}s: "
                                 "no loss, no duplicate, in order", timeout=TIMEOUT_S))

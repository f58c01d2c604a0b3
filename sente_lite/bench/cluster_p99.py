"""Latency across two servers on a Redis Cluster: ``python -m sente_lite.bench.sharded --cluster``.

Two server processes on one broker, every publisher connected to the first and every
subscriber to the second, so each message crosses Redis (the load of
:mod:`sente_lite.bench.fanout`: ``--publishers`` connections publishing ``--rate``
messages per second each, paced, on one channel, ``--subscribers`` connections receiving
all of them; latency is publish-to-receive across processes). The same load runs on a
local Redis Cluster (3 masters + 3 replicas: a publish is acknowledged once a replica
holds it, ``replica_ack_timeout_ms``) and on a single redis-server, alternated, ``--runs``
times each; it prints medians of p50/p99/max and loss side by side. The machine is
shared and noisy: compare the two within one run, not figures across machines.
"""

from __future__ import annotations

import array
import statistics
import time
from dataclasses import replace
from typing import Any, Callable, Dict, List, Tuple

from . import fanout

#: What one run measures, in print order.
FIGURES = ("p50_ms", "p99_ms", "max_ms", "lost", "duplicates", "out_of_order", "delivered")
#: The latency target of the cluster (issue: p99 across 2 servers at scenario-5 load).
P99_TARGET_MS = 5.0


def one_run(broker: str, wl: fanout.Workload) -> Dict[str, float]:
    """Two servers on ``broker``; publishers on the first, subscribers on the second."""
    fleet = fanout._Fleet()
    try:
        started = [fanout._start_server(fleet, fanout.REDIS, wl, broker) for _ in range(2)]
        pub_url, sub_url = (info["url"] for _, _, info in started)
        subs = [k for k in range(wl.connections) if wl.role(k)[1]]
        pubs = [k for k in range(wl.connections) if not wl.role(k)[1]]
        groups = [(sub_url, ks[i:i + wl.conns_per_proc]) for ks in (subs,)
                  for i in range(0, len(ks), wl.conns_per_proc)]
        groups += [(pub_url, pubs[i:i + wl.conns_per_proc])
                   for i in range(0, len(pubs), wl.conns_per_proc)]
        loads = [fleet.spawn(fanout._load_main, wl, url, ks, False) for url, ks in groups]
        for _, pipe in loads:
            msg = fanout._recv(pipe, fanout.SETUP_TIMEOUT_S, "load process ready")
            if msg[0] != "ready":
                raise RuntimeError(f"load process failed to start: {msg!r}")
        t0_ns = time.monotonic_ns() + 300_000_000
        for _, pipe in loads:
            pipe.send(("start", t0_ns, 0.0))
        results = [fanout._recv(pipe, wl.seconds + wl.drain_s + 60.0, "load result")[1]
                   for _, pipe in loads]
        for _, pipe in loads:
            pipe.send("close")
        for proc, _ in loads:
            proc.join(30.0)
        for _, pipe, _ in started:
            fanout._stop_server(pipe)
    finally:
        fleet.stop()
    return summarize(results)


def summarize(results: List[Dict[str, Any]]) -> Dict[str, float]:
    """Latency percentiles and loss of the load processes' ``results``."""
    lat = array.array("q")
    for r in results:
        lat.frombytes(r["latencies"])
    ordered = sorted(lat)
    published = sum(r["published"] for r in results)
    expected = published * sum(r["subscribers"] for r in results)
    distinct = sum(r["distinct"] for r in results)
    return {"p50_ms": fanout._percentile(ordered, 0.50),
            "p99_ms": fanout._percentile(ordered, 0.99),
            "max_ms": ordered[-1] / 1e6 if ordered else float("nan"),
            "lost": expected - distinct, "delivered": distinct,
            "duplicates": sum(r["duplicates"] for r in results),
            "out_of_order": sum(r["out_of_order"] for r in results)}


def compare(wl: fanout.Workload, runs: int) -> Dict[str, List[Dict[str, float]]]:
    """``runs`` runs on a local cluster and on one redis-server, alternated."""
    from ..brokers.redis.local_cluster import LocalCluster
    from ..brokers.redis.local_server import RedisServer

    figures: Dict[str, List[Dict[str, float]]] = {"cluster": [], "one redis": []}
    with LocalCluster() as cluster, RedisServer() as single:
        brokers: Dict[str, Tuple[str, Callable[[], None]]] = {
            "cluster": (cluster.url, lambda: _flush(list(cluster.masters().values()))),
            "one redis": (single.url, lambda: _flush([single.port]))}
        for run in range(runs):
            order = list(brokers) if run % 2 == 0 else list(brokers)[::-1]
            for name in order:
                url, flush = brokers[name]
                flush()  # every run starts from empty channels
                figures[name].append(one_run(url, wl))
    return figures


def _flush(ports: List[int]) -> None:
    import redis

    for port in ports:
        client = redis.Redis(port=port)
        try:
            client.flushall()
        finally:
            client.close()


def report(wl: fanout.Workload, figures: Dict[str, List[Dict[str, float]]]) -> List[str]:
    """The table's lines: medians of each figure per broker, and the target's verdict."""
    runs = len(figures["cluster"])
    lines = [f"2 servers: {wl.publishers} publishers on one x {wl.rate:g} msg/s, "
             f"{wl.subscribers} subscribers on the other, one channel, {wl.seconds:g} s, "
             f"driver {wl.driver}; median of {runs} run(s), alternated (shared, noisy machine)",
             f"{'figure':>13} | {'cluster':>10} | {'one redis':>10}"]
    med = {name: {k: statistics.median(r[k] for r in rows) for k in FIGURES}
           for name, rows in figures.items()}
    for key in FIGURES:
        lines.append(f"{key:>13} | {med['cluster'][key]:>10.2f} | {med['one redis'][key]:>10.2f}")
    for name, rows in figures.items():
        within = sum(r["p99_ms"] <= P99_TARGET_MS for r in rows)
        lines.append(f"{name} p99 per run (ms): "
                     + ", ".join(f"{r['p99_ms']:.2f}" for r in rows)
                     + f" ({within} of {len(rows)} within {P99_TARGET_MS:g} ms)")
    p99 = med["cluster"]["p99_ms"]
    lost = max(r["lost"] for rows in figures.values() for r in rows)
    lines.append(f"cluster p99 {p99:.2f} ms: target <= {P99_TARGET_MS:g} ms "
                 f"{'met' if p99 <= P99_TARGET_MS else 'NOT met'}; loss in any run: {lost:.0f}")
    return lines


def main(args: Any) -> None:
    """Run with the options of :mod:`sente_lite.bench.sharded` (``--cluster``)."""
    fanout.raise_nofile()
    wl = replace(fanout.Workload(), subscribers=args.subscribers, publishers=args.publishers,
                 rate=args.rate, seconds=args.seconds, driver=args.driver,
                 conns_per_proc=args.conns_per_proc)
    for line in report(wl, compare(wl, args.runs)):
        print(line)


__all__ = ["one_run", "compare", "report", "summarize", "main", "P99_TARGET_MS"]

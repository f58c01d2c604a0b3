"""Benchmark of the history API and server-side subscriptions:
``python -m sente_lite.bench.history --runs 3``.

One process (server, client and, for Redis, a ``redis-server`` of its own started by
:class:`~sente_lite.brokers.redis.local_server.RedisServer`), per run and per broker
(local, redis):

* **history page**: ``Client.history(ch, 100)`` round trips (random pages of a channel
  holding ``--kept`` messages, forwards and backwards), p50/p99; side by side, the
  baseline: a plain ``Client.request`` round trip to a handler that answers at once;
* **Redis read** (redis only): ``RedisBroker.history`` of one page as it reads now (only
  the page's range) next to reading the whole stream and slicing (how it read before);
* **server subscription**: ``srv.subscribe(conn_id, ch)`` then ``srv.publish(ch)`` to the
  client's handler holding that message, p50/p99; baseline side by side: the client's own
  ``subscribe(ch)`` (waiting for its answer) then the same publish.

Prints each run, then medians over ``--runs``. The machine is shared and noisy: compare the
ratios measured in the same run rather than absolute figures across machines.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional

from ..client.client import Client
from ..server.server import Server
from .figures import pct
from ..wire.channels import Since

CHANNEL = "bench.history"
PAGE = 100


def _pct(samples: List[float], q: float) -> float:
    return pct(samples, q) * 1000.0


def _timed(n: int, call: Callable[[int], Any]) -> List[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        call(i)
        out.append(time.perf_counter() - t0)
    return out


def _history_pages(c: Client, kept: int, n: int) -> List[float]:
    rng = random.Random(7)
    top = c.history(CHANNEL, 1, reverse=True)
    epoch, base = top["epoch"], top["offset"] - kept  # the channel may outlive a run (Redis)

    def one(i: int) -> None:
        at = base + rng.randrange(0, kept - PAGE)
        page = c.history(CHANNEL, PAGE, reverse=bool(i % 2), page={"offset": at + 1, "epoch": epoch}
                         if i % 2 else None, since={"offset": at, "epoch": epoch} if not i % 2 else None)
        if not i % 2 and len(page["publications"]) != PAGE:
            raise RuntimeError(f"a short page after {at}: {len(page['publications'])} messages")
    return _timed(n, one)


def _server_subs(srv: Server, c: Client, n: int, own: bool) -> List[float]:
    got = threading.Event()
    c.on_server_channel(lambda msg: got.set())
    out = []
    for i in range(n):
        ch = f"bench.sub.{'own' if own else 'srv'}.{i}"
        got.clear()
        t0 = time.perf_counter()
        if own:
            c.subscribe(ch, lambda msg: got.set())
        else:
            srv.subscribe(c.conn_id, ch)  # type: ignore[arg-type]
            deadline = time.monotonic() + 5
            while ch not in c.server_subscriptions() and time.monotonic() < deadline:
                time.sleep(0.0002)  # the server-sub is on its way; the publish must follow it
        srv.publish(ch, i)
        if not got.wait(5):
            raise RuntimeError(f"no message on {ch} within 5 s")
        out.append(time.perf_counter() - t0)
    return out


def _redis_reads(srv: Server, kept: int, n: int) -> Dict[str, List[float]]:
    broker = srv.channels
    rng = random.Random(11)
    top = broker.history(CHANNEL, None, 1, True)
    ranged, whole = [], []
    for _ in range(n):
        at = Since(top.offset - kept + rng.randrange(0, kept - PAGE), top.epoch or "")
        t0 = time.perf_counter()
        broker.history(CHANNEL, at, PAGE)
        ranged.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        broker.history(CHANNEL, at, None).publications[:PAGE]  # how every page was read before
        whole.append(time.perf_counter() - t0)
    return {"redis read, page range": ranged, "redis read, whole stream": whole}


def run_once(broker: Optional[str], kept: int, n: int) -> Dict[str, List[float]]:
    """One run on ``broker`` (None: local): samples (seconds) per figure."""
    settings: Dict[str, Any] = {"history_size": kept, "rate_limit": None}
    if broker is not None:
        settings["broker"] = broker
    with Server(**settings) as srv:
        srv.on("bench/echo", lambda conn, data: data)
        deadline = time.monotonic() + 10
        while srv.channels.health().get("broker-status", "up") != "up" and time.monotonic() < deadline:
            time.sleep(0.01)
        for i in range(kept):
            srv.publish(CHANNEL, {"n": i, "pad": "x" * 64})
        c = Client(srv.url)
        try:
            if not c.wait_connected(10):
                raise RuntimeError("the client did not connect")
            out = {"history page (Client.history)": _history_pages(c, kept, n),
                   "baseline: request round trip": _timed(n, lambda i: c.request("bench/echo", i)),
                   "srv.subscribe -> first message": _server_subs(srv, c, n // 4, own=False),
                   "baseline: own subscribe -> first message": _server_subs(srv, c, n // 4, own=True)}
            if broker is not None:
                out.update(_redis_reads(srv, kept, n))
            return out
        finally:
            c.close()


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--samples", type=int, default=400, help="round trips per figure and run")
    ap.add_argument("--kept", type=int, default=1000, help="messages the channel holds")
    ap.add_argument("--no-redis", action="store_true")
    args = ap.parse_args(argv)
    kinds: List[Optional[str]] = [None]
    redis_ctx = None
    if not args.no_redis:
        from ..brokers.redis.local_server import RedisServer, redis_server_path
        if redis_server_path() is None:
            print("redis: skipped (no redis-server on PATH)")
        else:
            redis_ctx = RedisServer()
            kinds.append(redis_ctx.__enter__().url)
    try:
        for broker in kinds:
            name = "local" if broker is None else "redis"
            p99s: Dict[str, List[float]] = {}
            for r in range(args.runs):
                figures = run_once(broker, args.kept, args.samples)
                for what, samples in figures.items():
                    p99s.setdefault(what, []).append(_pct(samples, 0.99))
                    print(f"{name} run {r + 1}: {what}: p50 {_pct(samples, 0.5):.2f} ms, "
                          f"p99 {_pct(samples, 0.99):.2f} ms ({len(samples)} samples)")
            for what, values in p99s.items():
                print(f"{name} median p99 over {args.runs} runs: {what}: {statistics.median(values):.2f} ms")
            pairs = [("history page (Client.history)", "baseline: request round trip"),
                     ("srv.subscribe -> first message", "baseline: own subscribe -> first message"),
                     ("redis read, page range", "redis read, whole stream")]
            for a, b in pairs:
                if a in p99s and b in p99s:
                    ratio = statistics.median(p99s[a]) / max(statistics.median(p99s[b]), 1e-9)
                    print(f"{name} ratio of median p99s: {a} / {b} = {ratio:.2f}")
        print("(one shared, noisy 2-core machine: compare ratios within a run)")
    finally:
        if redis_ctx is not None:
            redis_ctx.__exit__(None, None, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())

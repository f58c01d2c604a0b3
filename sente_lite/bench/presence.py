"""``python -m sente_lite.bench.presence``: channel presence and join/leave, measured.

1. **Presence of a big channel**: a channel of ``--members`` members (1,000) with one real
   :class:`~sente_lite.Client` subscribed, the server in a process of its own (as
   deployed: in one process the client's and the server's threads would take turns on
   one interpreter lock, which is not what a deployment pays); the time of its ``c.presence(ch)`` round trip
   (request, the broker's read, the reply of every member, decoding) ``--asks`` times,
   p50/p99, on one server (local broker) and on a server with a Redis broker (a
   ``redis-server`` started here, when one is installed). Members are recorded through the
   broker seam (``presence_add``), as the hub records a subscriber, so the channel needs
   no 1,000 sockets. Side by side, the same client's empty request (``chsk/ws-ping``, answered
   at once): the round trip a presence request cannot beat.
2. **Memory per member**: the in-process table (``tracemalloc`` over 10,000 members,
   ``info`` null) and Redis (``MEMORY USAGE`` of the channel's two keys / members).
3. **``--load``**: scenario 5's shape, the server in its own process and the clients in
   ``--procs`` others (4): ``--clients`` clients each publishing
   ``--rate`` msg/s for ``--seconds`` on one shared channel (every client receives every
   message), while ``--channels`` other channels (10,000) each have one subscriber, with
   presence and join/leave on; the same run again with a namespace that has neither,
   side by side. Loss (every message at every client, exactly once) and the p99 of
   publish-to-receive latency; the ratio presence / without. Each run is ABBA (without,
   with, with, without): on this machine the second of two back-to-back runs is the slower,
   whichever it is.

Every figure is the median over ``--runs`` runs. The machine is shared and noisy (two cores,
several other processes): read ratios measured in the same run, not absolute numbers.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import statistics
import threading
import time
import tracemalloc
import uuid
from typing import Any, Dict, List, Optional

from ..brokers.presence_table import PresenceTable
from ..brokers.redis.local_server import RedisServer, redis_server_path
from ..client.client import Client
from ..core.namespaces import Namespace
from ..server.server import Server
from .figures import pct

BIG = "room:big"
LOAD = "room:load"
#: Seconds a client may take to connect, subscribe, or see the last message.
WAIT_S = 30.0


def member(i: int) -> Dict[str, Any]:
    """A member as the hub records one (no JWT: ``info`` null)."""
    return {"client-id": f"client-{i:06d}", "uid": f"user-{i:06d}",
            "conn-id": f"0123456789abcdef-{i}", "info": None}


def serve_members(broker: Optional[str], channel: str, members: int, urls: Any, stop: Any) -> None:
    """A server process (as deployed: not sharing the client's interpreter lock) whose
    ``channel`` has ``members`` - 1 members; puts its URL on ``urls``, serves until
    ``stop`` is set."""
    spaces = {"room": Namespace(presence=True)}
    kwargs: Dict[str, Any] = {"broker": broker} if broker else {}
    with Server("127.0.0.1", 0, namespaces=spaces, **kwargs) as srv:
        _linked(srv)
        for i in range(members - 1):
            srv.channels.presence_add(channel, member(i))
        urls.put(srv.url)
        stop.wait(WAIT_S * 10)


def ask_presence(broker: Optional[str], members: int, asks: int) -> Dict[str, float]:
    """p50/p99 (ms) of a client's presence() of a channel with ``members`` members, the
    server in a process of its own."""
    ctx = multiprocessing.get_context("spawn")
    urls, stop = ctx.Queue(), ctx.Event()
    big = f"{BIG}-{uuid.uuid4().hex[:8]}"  # a run's own (a stopped server's members linger in Redis)
    proc = ctx.Process(target=serve_members, args=(broker, big, members, urls, stop), daemon=True)
    proc.start()
    try:
        url = urls.get(timeout=WAIT_S)
        with Client(url) as c:
            c.wait_connected(WAIT_S)
            c.subscribe(big, timeout=WAIT_S)
            assert len(c.presence(big)) == members, "every member listed"
            times, pings = [], []
            for _ in range(asks):  # alternated with the baseline: a request answered at once
                t0 = time.perf_counter()
                c.presence(big)
                t1 = time.perf_counter()
                c.request("chsk/ws-ping")
                times.append((t1 - t0) * 1000)
                pings.append((time.perf_counter() - t1) * 1000)
    finally:
        stop.set()
        proc.join(WAIT_S)
        if proc.is_alive():
            proc.kill()
            proc.join(WAIT_S)
    return {"p50_ms": pct(times, 0.5), "p99_ms": pct(times, 0.99),
            "ping_p50_ms": pct(pings, 0.5), "ping_p99_ms": pct(pings, 0.99)}


def _linked(srv: Server) -> None:
    """Wait until the server's broker is up (a Redis link comes up in the background)."""
    deadline = time.monotonic() + WAIT_S
    while srv.channels.health()["broker-status"] != "up":
        if time.monotonic() > deadline:
            raise RuntimeError("the broker did not come up")
        time.sleep(0.02)


def table_bytes_per_member(n: int = 10_000) -> float:
    """Bytes the in-process presence table holds per member (tracemalloc)."""
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    table = PresenceTable()
    for i in range(n):
        table.add("room:x", member(i))
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    del table
    return grown / n


def redis_bytes_per_member(url: str, n: int = 1000) -> float:
    """Bytes Redis holds per member of a channel (``MEMORY USAGE`` of its two keys)."""
    import redis

    _Server = Server  # the broker's key names, through a real server

    with _Server("127.0.0.1", 0, broker=url, namespaces={"room": Namespace(presence=True)}) as srv:
        _linked(srv)
        for i in range(n):
            srv.channels.presence_add("room:mem", member(i))
        r = redis.Redis.from_url(url)
        keys = srv.channels._channel_presence._keys("room:mem")  # this channel's two keys only
        total = sum(int(r.memory_usage(k) or 0) for k in keys)
    return total / n


# -- the load ---------------------------------------------------------------------------
class Receiver:
    """One client's view of the load channel: every message once, and its latency."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.seen: Dict[Any, int] = {}
        self.latencies: List[float] = []
        self.done = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, msg: Any) -> None:
        now = time.monotonic_ns()
        data = msg.data
        with self.lock:
            key = (data["by"], data["n"])
            self.seen[key] = self.seen.get(key, 0) + 1
            self.latencies.append((now - data["t"]) / 1e6)
            if len(self.seen) >= self.expected:
                self.done.set()


def serve_load(presence: bool, channels: int, urls: Any, stop: Any) -> None:
    """The load's server process: namespace ``room`` with (or without) presence and
    join/leave; puts its URL on ``urls``, serves until ``stop`` is set."""
    spaces = {"room": Namespace(presence=presence, join_leave=presence)}
    with Server("127.0.0.1", 0, namespaces=spaces, max_subscriptions_per_conn=channels + 10) as srv:
        urls.put(srv.url)
        stop.wait(WAIT_S * 20)


def load_clients(url: str, ids: List[int], clients: int, rate: int, seconds: float,
                 channels: int, ready: Any, go: Any, out: Any) -> None:
    """A process of the load's clients ``ids`` (of ``clients``): each subscribes to its
    share of the ``channels`` other channels and to the load channel, says so on
    ``ready``, publishes on ``go``, then puts what its clients received on ``out``."""
    per_client = int(rate * seconds)
    conns = [Client(url, client_id=f"load-{i}") for i in ids]
    receivers = [Receiver(clients * per_client) for _ in conns]
    try:
        for c in conns:
            c.wait_connected(WAIT_S)
        for i, c, rec in zip(ids, conns, receivers):
            mine = range(i, channels, clients)  # the other channels: one subscriber each
            for k in mine:
                c.subscribe(f"room:c{k}", timeout=None)
            c.subscribe(LOAD, rec, timeout=WAIT_S)
            if len(mine):  # answered after every subscribe sent before it
                c.subscribe(f"room:c{mine[-1]}", timeout=WAIT_S)
            c.request("chsk/ws-ping", timeout=WAIT_S)
        ready.put(len(conns))
        go.wait(WAIT_S * 4)
        publishers = [threading.Thread(target=_publish, args=(c, i, rate, per_client, clients))
                      for i, c in zip(ids, conns)]
        for t in publishers:
            t.start()
        for t in publishers:
            t.join()
        for rec in receivers:
            rec.done.wait(WAIT_S)
    finally:
        for c in conns:
            c.close()
    out.put({"lost": sum(rec.expected - len(rec.seen) for rec in receivers),
             "duplicates": sum(n - 1 for rec in receivers for n in rec.seen.values()),
             "latencies": [x for rec in receivers for x in rec.latencies]})


def load_run(presence: bool, clients: int, rate: int, seconds: float,
             channels: int, procs: int) -> Dict[str, float]:
    """One load run, as scenario 5 runs it (the server in its own process, the clients in
    ``procs`` others): loss and p99 latency (ms) on the load channel."""
    ctx = multiprocessing.get_context("spawn")
    urls, stop, ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue(), ctx.Event(), ctx.Queue()
    server = ctx.Process(target=serve_load, args=(presence, channels, urls, stop), daemon=True)
    server.start()
    workers: List[Any] = []
    try:
        url = urls.get(timeout=WAIT_S)
        groups = [ids for ids in (list(range(p, clients, procs)) for p in range(procs)) if ids]
        workers = [ctx.Process(target=load_clients, daemon=True, args=(
            url, ids, clients, rate, seconds, channels, ready, go, out)) for ids in groups]
        for w in workers:
            w.start()
        for _ in workers:
            ready.get(timeout=WAIT_S * 4)
        go.set()
        results = [out.get(timeout=seconds + WAIT_S * 4) for _ in workers]
    finally:
        for proc in workers + [server]:
            stop.set()
            proc.join(WAIT_S)
            if proc.is_alive():
                proc.kill()
                proc.join(WAIT_S)
    lat = [x for r in results for x in r["latencies"]]
    return {"lost": sum(r["lost"] for r in results),
            "duplicates": sum(r["duplicates"] for r in results),
            "p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99)}


def _publish(c: Client, by: int, rate: int, count: int, clients: int) -> None:
    t0 = time.monotonic() + by / (rate * clients)  # spread over the interval, as scenario 5
    for n in range(count):
        due = t0 + n / rate
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)  # pacing the load, not synchronization
        c.publish(LOAD, {"by": by, "n": n, "t": time.monotonic_ns()})


def median(rows: List[Dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--members", type=int, default=1000)
    ap.add_argument("--asks", type=int, default=500)
    ap.add_argument("--load", action="store_true", help="also the 10,000-channel load, with/without")
    ap.add_argument("--channels", type=int, default=10_000)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--rate", type=int, default=100, help="messages per second per client")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--procs", type=int, default=4, help="processes the load's clients run in")
    args = ap.parse_args(argv)
    print(f"presence bench: {args.runs} runs, medians; a shared, noisy 2-core machine")
    local = [ask_presence(None, args.members, args.asks) for _ in range(args.runs)]
    print(f"presence() of {args.members} members, one server (local broker): "
          f"p50 {median(local, 'p50_ms'):.2f} ms, p99 {median(local, 'p99_ms'):.2f} ms (target <= 2 ms); "
          f"empty request side by side p50 {median(local, 'ping_p50_ms'):.2f} ms, "
          f"p99 {median(local, 'ping_p99_ms'):.2f} ms")
    print(f"memory per member, in-process table: {table_bytes_per_member():.0f} bytes")
    if redis_server_path() is None:
        print("Redis: no redis-server installed; the Redis figures are not measured")
    else:
        with RedisServer() as redis_srv:
            remote = [ask_presence(redis_srv.url, args.members, args.asks) for _ in range(args.runs)]
            print(f"presence() of {args.members} members, server on Redis: "
                  f"p50 {median(remote, 'p50_ms'):.2f} ms, p99 {median(remote, 'p99_ms'):.2f} ms "
                  f"(target <= 5 ms); empty request p50 {median(remote, 'ping_p50_ms'):.2f} ms, "
                  f"p99 {median(remote, 'ping_p99_ms'):.2f} ms")
            print(f"memory per member, Redis (pz + ph keys): "
                  f"{redis_bytes_per_member(redis_srv.url):.0f} bytes")
    if args.load:
        rows: Dict[bool, List[Dict[str, float]]] = {True: [], False: []}
        for _ in range(args.runs):  # side by side, ABBA: the second of two runs is the slower
            for on in (False, True, True, False):
                gc.collect()
                rows[on].append(load_run(on, args.clients, args.rate, args.seconds, args.channels,
                                         args.procs))
        for on in (False, True):
            r = rows[on]
            print(f"load {'with' if on else 'without'} presence+join/leave on {args.channels} channels, "
                  f"{args.clients} clients x {args.rate} msg/s x {args.seconds:g} s: "
                  f"lost {max(x['lost'] for x in r):.0f}, duplicates {max(x['duplicates'] for x in r):.0f}, "
                  f"p50 {median(r, 'p50_ms'):.2f} ms, p99 {median(r, 'p99_ms'):.2f} ms")
        ratio = median(rows[True], "p99_ms") / max(median(rows[False], "p99_ms"), 1e-9)
        print(f"p99 ratio with / without presence: {ratio:.2f} (target <= 1.5)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

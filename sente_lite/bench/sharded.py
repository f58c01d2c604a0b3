"""Benchmark of sharded subscription: ``python -m sente_lite.bench.sharded``.

``--servers`` (4) servers in this process on one redis-server started for the run, each
with ``--channels`` (100) channels of its own, subscribed to by one client connected to
that server only. A ``Publisher("redis://...")`` publishes ``--per-channel`` messages on
every channel of every server, round-robin. Per server it prints what it received from
Redis (messages and bytes: pubsub channel name and payload, without RESP framing) against
the messages of the channels it serves, for ``subscription=sharded`` (each server
``SSUBSCRIBE``s its channels) side by side with ``subscription=pattern`` (each hears every
channel), medians over ``--runs`` runs, alternated. Every client checks that it got every
message of its channels (0 loss). The machine is shared and noisy: compare the two
designs within one run, not figures across machines.

``--cluster``: latency across 2 servers on a local Redis Cluster instead, publishers on
one and subscribers on the other, side by side with one redis-server
(:mod:`sente_lite.bench.cluster_p99`; ``--publishers``, ``--subscribers``, ``--rate``,
``--seconds``, ``--driver``, ``--conns-per-proc``).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from typing import Any, Dict, List

from ..api.publisher import Publisher
from ..brokers.redis.local_server import RedisServer
from .. import Client, Server

WAIT_S = 30.0


def _wait(cond: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)


def one_run(url: str, subscription: str, servers: int, channels: int,
            per_channel: int) -> List[Dict[str, float]]:
    """Per server: messages and bytes received from Redis, and messages it serves."""
    broker = f"{url}?subscription={subscription}"
    srvs = [Server(port=0, broker=broker) for _ in range(servers)]
    clients: List[Client] = []
    try:
        for srv in srvs:
            srv.start()
        _wait(lambda: all(s.channels.healthy for s in srvs), "every link up")
        got = [0] * servers
        lock = threading.Lock()
        names = [[f"s{i}-c{j}" for j in range(channels)] for i in range(servers)]
        for i, srv in enumerate(srvs):
            client = Client(srv.url)
            clients.append(client)
            client.wait_connected(WAIT_S)

            def on_msg(msg: Any, i: int = i) -> None:
                with lock:
                    got[i] += 1
            for name in names[i]:
                client.subscribe(name, on_msg)
        before = [s.stats() for s in srvs]
        pub = Publisher(broker)
        try:
            for _ in range(per_channel):
                for i in range(servers):
                    pub.publish_many([(name, {"i": i}) for name in names[i]])
        finally:
            pub.close()
        served = channels * per_channel
        _wait(lambda: all(g == served for g in got), "every message at its subscriber")
        # messages for channels nobody serves are read, too: wait until the pattern design's
        # copies have all been counted
        total = servers * served
        _wait(lambda: all(s.stats()["broker_heard"] + s.stats()["broker_unserved"]
                          - b["broker_heard"] - b["broker_unserved"]
                          >= (served if subscription == "sharded" else total)
                          for s, b in zip(srvs, before)), "every message read")
        out = []
        for srv, b in zip(srvs, before):
            st = srv.stats()
            msgs = (st["broker_heard"] + st["broker_unserved"]
                    - b["broker_heard"] - b["broker_unserved"])
            out.append({"served": served, "inbound": msgs,
                        "bytes": st["broker_inbound_bytes"] - b["broker_inbound_bytes"]})
        return out
    finally:
        for client in clients:
            client.close()
        for srv in srvs:
            srv.stop()


def main(argv: Any = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--servers", type=int, default=4)
    ap.add_argument("--channels", type=int, default=100)
    ap.add_argument("--per-channel", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cluster", action="store_true",
                    help="p99 across 2 servers on a local Redis Cluster beside one redis-server")
    ap.add_argument("--publishers", type=int, default=20, help="--cluster: publishing connections")
    ap.add_argument("--subscribers", type=int, default=20, help="--cluster: subscribing connections")
    ap.add_argument("--rate", type=float, default=100.0, help="--cluster: msg/s per publisher")
    ap.add_argument("--seconds", type=float, default=5.0, help="--cluster: publishing time")
    ap.add_argument("--driver", choices=("client", "asyncio", "raw"), default="raw",
                    help="--cluster: the load generator's client (see bench.fanout)")
    ap.add_argument("--conns-per-proc", type=int, default=10,
                    help="--cluster: connections per load process")
    args = ap.parse_args(argv)
    if args.cluster:
        from . import cluster_p99
        cluster_p99.main(args)
        return
    figures: Dict[str, List[List[Dict[str, float]]]] = {"sharded": [], "pattern": []}
    with RedisServer() as redis_srv:
        for _ in range(args.runs):
            for design in ("sharded", "pattern"):
                figures[design].append(one_run(redis_srv.url, design, args.servers,
                                               args.channels, args.per_channel))
    print(f"{args.servers} servers, {args.channels} channels each, {args.per_channel} messages "
          f"per channel, median of {args.runs} runs (shared, noisy machine; 0 loss checked)")
    print(f"{'server':>6} {'served':>7} | {'sharded msgs':>12} {'ratio':>6} {'bytes':>9} | "
          f"{'pattern msgs':>12} {'ratio':>6} {'bytes':>9}")
    for i in range(args.servers):
        row = []
        for design in ("sharded", "pattern"):
            msgs = statistics.median(run[i]["inbound"] for run in figures[design])
            size = statistics.median(run[i]["bytes"] for run in figures[design])
            served = figures[design][0][i]["served"]
            row.append((msgs, msgs / served, size))
        print(f"{i:>6} {figures['sharded'][0][i]['served']:>7} | "
              f"{row[0][0]:>12.0f} {row[0][1]:>6.2f} {row[0][2]:>9.0f} | "
              f"{row[1][0]:>12.0f} {row[1][1]:>6.2f} {row[1][2]:>9.0f}")


if __name__ == "__main__":
    main()

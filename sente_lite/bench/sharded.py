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

Users, on the same servers: ``--users`` (10) users connected to each server (one
connection each, a uid of its own); the ``Publisher`` sends ``--per-user`` (10)
``send_to_user`` to every user of every server. Per server it prints the user messages it
read from Redis against those for its own users (sharded: each user's shard channel, heard
by its server only; pattern: the one user channel every server reads), and the median time
from opening a user's connection to its handshake (sharded: the upgrade waits for the
user's ``SSUBSCRIBE``), each checked for 0 loss.

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


def one_run(url: str, subscription: str, servers: int, channels: int, per_channel: int,
            users: int = 0, per_user: int = 0) -> List[Dict[str, float]]:
    """Per server: messages and bytes received from Redis, and messages it serves; with
    ``users``, the same for user messages (:func:`user_run`)."""
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
        if users:
            for row, user_row in zip(out, user_run(broker, subscription, srvs, clients, users,
                                                   per_user)):
                row.update(user_row)
        return out
    finally:
        for client in clients:
            client.close()
        for srv in srvs:
            srv.stop()


def user_run(broker: str, subscription: str, srvs: List[Server], clients: List[Client],
             users: int, per_user: int) -> List[Dict[str, float]]:
    """``users`` users on each server (their clients added to ``clients``), ``per_user``
    sends to each from a Publisher: per server the user messages read from Redis, those
    for its users, their bytes, and the median ms from a connection's start to its
    handshake."""
    got = [0] * len(srvs)
    lock = threading.Lock()
    connect_ms: List[List[float]] = [[] for _ in srvs]
    uids = [[f"s{i}-u{j}" for j in range(users)] for i in range(len(srvs))]
    for i, srv in enumerate(srvs):
        for uid in uids[i]:
            start = time.perf_counter()
            client = Client(srv.url, client_id=uid)
            clients.append(client)

            def on_msg(data: Any, i: int = i) -> None:
                with lock:
                    got[i] += 1
            client.on("bench/u", on_msg)
            if not client.wait_connected(WAIT_S):
                raise RuntimeError(f"{uid} did not connect")
            connect_ms[i].append((time.perf_counter() - start) * 1000)
    before = [s.stats() for s in srvs]
    with Publisher(broker) as pub:
        for _ in range(per_user):
            for row in uids:
                for uid in row:
                    pub.send_to_user(uid, "bench/u", 1)
    served = users * per_user
    _wait(lambda: all(g == served for g in got), "every user message at its user")

    def heard(srv: Server, was: Dict[str, Any]) -> int:
        return int(srv.stats()["broker_user_heard"] - was["broker_user_heard"])
    expected = served * (len(srvs) if subscription == "pattern" else 1)
    _wait(lambda: all(heard(s, b) >= expected for s, b in zip(srvs, before)), "every read")
    return [{"user_served": served, "user_inbound": heard(s, b),
             "user_bytes": s.stats()["broker_user_inbound_bytes"] - b["broker_user_inbound_bytes"],
             "connect_ms": statistics.median(ms)}
            for s, b, ms in zip(srvs, before, connect_ms)]


def _print_users(figures: Dict[str, List[List[Dict[str, float]]]], servers: int) -> None:
    print("user messages (send_to_user from a Publisher) and connect time (open to handshake)")
    print(f"{'server':>6} {'served':>7} | {'sharded msgs':>12} {'ratio':>6} {'bytes':>9} "
          f"{'conn ms':>7} | {'pattern msgs':>12} {'ratio':>6} {'bytes':>9} {'conn ms':>7}")
    for i in range(servers):
        cells = []
        for design in ("sharded", "pattern"):
            msgs = statistics.median(run[i]["user_inbound"] for run in figures[design])
            size = statistics.median(run[i]["user_bytes"] for run in figures[design])
            conn = statistics.median(run[i]["connect_ms"] for run in figures[design])
            served = figures[design][0][i]["user_served"]
            cells.append(f"{msgs:>12.0f} {msgs / served:>6.2f} {size:>9.0f} {conn:>7.2f}")
        print(f"{i:>6} {figures['sharded'][0][i]['user_served']:>7.0f} | "
              f"{cells[0]} | {cells[1]}")


def main(argv: Any = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--servers", type=int, default=4)
    ap.add_argument("--channels", type=int, default=100)
    ap.add_argument("--per-channel", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--users", type=int, default=10, help="users connected to each server (0: none)")
    ap.add_argument("--per-user", type=int, default=10, help="send_to_user to each user")
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
                                               args.channels, args.per_channel,
                                               args.users, args.per_user))
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
    if args.users:
        _print_users(figures, args.servers)


if __name__ == "__main__":
    main()

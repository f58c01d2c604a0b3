"""Benchmark of a binary payload through a real server, for each pair of packers.

``python -m sente_lite.bench.binary [--bytes 1000000] [--messages 20] [--runs 3]``

One server on loopback (``max_message_bytes`` raised to fit the JSON form), one
subscriber and one publisher per packer. For each (publisher packer, subscriber packer)
pair the publisher sends ``--messages`` publishes of ``--bytes`` random bytes, each
one delivered to the subscriber (and checked equal) before the next is sent. Prints, per
pair, the median over ``--runs`` of the time from the first publish to the last delivery,
as milliseconds per message (publish to delivery) and MB/s of payload, and the size of
the channel message frame each subscriber receives. A second table times the codec alone: one
frame encoded and decoded in each packer (no socket).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .. import Client, Server
from ..wire import packers
from ..wire import protocol as p

log = logging.getLogger("sente_lite.bench.binary")
PACKERS = (packers.JSON, packers.MSGPACK)


class _Sink:
    """Counts deliveries and checks each one is the payload."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.count = 0
        self.bad = 0
        self.cond = threading.Condition()

    def __call__(self, msg: Any) -> None:
        with self.cond:
            if msg.data != self.payload:
                self.bad += 1
            self.count += 1
            self.cond.notify_all()

    def wait(self, n: int, timeout: float) -> bool:
        """True once ``n`` deliveries arrived, False after ``timeout`` seconds."""
        with self.cond:
            return self.cond.wait_for(lambda: self.count >= n, timeout)


def _pair_run(srv: Server, pub_packer: str, sub_packer: str, payload: bytes, messages: int,
              channel: str) -> float:
    """Seconds from the first publish to the last delivery of one run."""
    sink = _Sink(payload)
    sub = Client(srv.url, packer=sub_packer)
    pub = Client(srv.url, packer=pub_packer)
    try:
        if not (sub.wait_connected(10) and pub.wait_connected(10)):
            raise RuntimeError("the clients did not connect")
        sub.subscribe(channel, sink)
        started = time.perf_counter()
        for i in range(messages):
            pub.publish(channel, payload)
            if not sink.wait(i + 1, 60):
                raise RuntimeError(f"{sink.count} of {i + 1} delivered")
        elapsed = time.perf_counter() - started
        if sink.bad:
            raise RuntimeError(f"{sink.bad} deliveries differ from the payload")
        return elapsed
    finally:
        pub.close()
        sub.close()


def _frame_size(packer: str, payload: bytes) -> int:
    """Bytes of a channel message frame carrying ``payload`` in ``packer``."""
    body = {p.K_CHANNEL: "bin", p.K_DATA: payload, p.K_FROM: "u", p.K_OFFSET: 1, p.K_EPOCH: "e.1"}
    return len(packers.get(packer).encode(p.EV_CHANNEL_MSG, body))


def _codec(packer: str, payload: bytes, runs: int) -> Tuple[float, float]:
    """Median milliseconds to encode and to decode one channel message frame of ``payload``."""
    pk = packers.get(packer)
    body = {p.K_CHANNEL: "bin", p.K_DATA: payload, p.K_FROM: "u", p.K_OFFSET: 1, p.K_EPOCH: "e.1"}
    enc: List[float] = []
    dec: List[float] = []
    for _ in range(max(runs, 5)):
        t0 = time.perf_counter()
        frame = pk.encode(p.EV_CHANNEL_MSG, body)
        t1 = time.perf_counter()
        got = pk.decode(frame if pk.binary else frame.decode("utf-8"))
        t2 = time.perf_counter()
        if got.data[p.K_DATA] != payload:
            raise RuntimeError(f"{packer} changed the payload")
        enc.append((t1 - t0) * 1000)
        dec.append((t2 - t1) * 1000)
    return statistics.median(enc), statistics.median(dec)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sente_lite.bench.binary", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bytes", type=int, default=1_000_000, help="payload size (random bytes)")
    ap.add_argument("--messages", type=int, default=20, help="publishes per pair and run")
    ap.add_argument("--runs", type=int, default=3, help="runs per pair; medians reported")
    args = ap.parse_args(argv)
    payload = os.urandom(args.bytes)
    srv = Server("127.0.0.1", 0, max_message_bytes=max(1 << 20, 2 * args.bytes + 4096),
                 history_size=16)
    srv.start()
    rows: Dict[Tuple[str, str], List[float]] = {}
    try:
        n = 0
        for _ in range(args.runs):
            for pub in PACKERS:
                for sub in PACKERS:
                    n += 1
                    rows.setdefault((pub, sub), []).append(
                        _pair_run(srv, pub, sub, payload, args.messages, f"bin-{n}"))
    finally:
        srv.stop()
    mb = args.bytes / 1e6
    print(f"payload {args.bytes} random bytes, {args.messages} publishes per run, each delivered before the next, "
          f"median of {args.runs} runs")
    print(f"{'publisher':>10} {'subscriber':>10} {'ms/msg':>8} {'MB/s':>7} {'frame to subscriber':>20}")
    for (pub, sub), times in rows.items():
        per = statistics.median(times) / args.messages
        print(f"{pub:>10} {sub:>10} {per * 1000:8.2f} {mb / per:7.1f} {_frame_size(sub, payload):>20}")
    print(f"\n{'codec':>10} {'encode ms':>10} {'decode ms':>10} {'frame bytes':>12}")
    for packer in PACKERS:
        enc, dec = _codec(packer, payload, args.runs)
        print(f"{packer:>10} {enc:10.2f} {dec:10.2f} {_frame_size(packer, payload):>12}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark of the server API and the Publisher: ``python -m sente_lite.bench.api``.

Starts a server (``sente-lite serve`` in its own process, with a redis-server for the
Redis figure) and prints the median over ``--runs`` runs of:

* ``POST /api/publish`` latency p50/p99 at ``--rate`` requests/s on one keep-alive connection;
* publishes/s on one keep-alive connection, one request after the other;
* ``batch`` messages/s (``--batch`` publishes per request);
* ``Publisher("redis://")`` publishes/s from this process: ``publish`` one blocking call
  each (``redis``), ``publish(..., wait=False)`` one call each, pipelined by the
  publisher's flusher (``redis_nowait``, timed until the last is answered), and
  ``publish_many`` (``--batch`` per pipeline, ``redis_many``), each checked by a subscriber
  in its own process: every message arrived, in order (0 loss);
* next to them the floor of a blocking call: bare redis-py ``EVALSHA`` round trips of the
  same script and arguments, one after the other (``redis_floor``; no subscriber).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional

from .. import discovery
from ..api.publisher import Publisher
from .token_rtt import stop_server as _stop

KEY = "bench-key-" + "0" * 16


def _serve(port_file: str, broker: Optional[str] = None) -> subprocess.Popen:
    args = [sys.executable, "-m", "sente_lite", "serve", "--port", "0", "--port-file", port_file,
            "--api-key", KEY, "--api-rate-limit", "0"]
    if broker:
        args += ["--broker", broker]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL)


class RawClient:
    """A minimal keep-alive HTTP/1.1 client (one request at a time), so the figures
    measure the server rather than ``http.client``'s own cost."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def request_bytes(self, method: str, body: bytes) -> bytes:
        return (f"POST /api/{method} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: apikey {KEY}"
                f"\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body

    def call(self, request: bytes) -> bytes:
        """Send ``request`` (from :meth:`request_bytes`); the answer's body (200 only)."""
        self.sock.sendall(request)
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                head = self.buf[:end]
                length = int(head.split(b"Content-Length: ", 1)[1].split(b"\r\n", 1)[0])
                if len(self.buf) >= end + 4 + length:
                    body = self.buf[end + 4:end + 4 + length]
                    self.buf = self.buf[end + 4 + length:]
                    if not head.startswith(b"HTTP/1.1 200"):
                        raise RuntimeError(f"HTTP answer {head[:40]!r}: {body[:200]!r}")
                    return body
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise RuntimeError("the server closed the connection")
            self.buf += chunk

    def close(self) -> None:
        self.sock.close()


def latency_at_rate(port: int, rate: float, seconds: float) -> Dict[str, float]:
    """p50/p99 (ms) of publishes sent at ``rate`` per second, paced on a schedule."""
    conn = RawClient(port)
    request = conn.request_bytes("publish", json.dumps({"channel": "bench", "data": {"n": 1}}).encode())
    conn.call(request)
    n = int(rate * seconds)
    start = time.perf_counter()
    lat: List[float] = []
    for i in range(n):
        due = start + i / rate
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)  # pacing the open-loop schedule, not synchronisation
        sent = max(due, time.perf_counter())
        conn.call(request)
        lat.append((time.perf_counter() - sent) * 1000)  # from when it was due: no omission
    conn.close()
    lat.sort()
    return {"p50_ms": lat[len(lat) // 2], "p99_ms": lat[int(len(lat) * 0.99) - 1]}


def serial_rate(port: int, seconds: float, method: str, body: bytes, per_call: int) -> float:
    """Messages per second over one keep-alive connection, one request after the other."""
    conn = RawClient(port)
    request = conn.request_bytes(method, body)
    conn.call(request)
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        conn.call(request)
        done += per_call
    elapsed = time.perf_counter() - start
    conn.close()
    return done / elapsed


def redis_rate(redis_url: str, port_file: str, channel: str, count: int,
               publish: Callable[[Publisher, int], None]) -> Dict[str, Any]:
    """Publishes/s of ``publish`` from this process; a subscriber process checks them."""
    url = str(discovery.read_port_file(port_file, timeout=30)["url"])
    sub = subprocess.Popen([sys.executable, "-m", "sente_lite", "sub", channel, "--url", url],
                           stdout=subprocess.PIPE, text=True)
    seen: List[int] = []
    ready = threading.Event()

    def read() -> None:
        assert sub.stdout is not None
        for line in sub.stdout:
            data = json.loads(line)["data"]
            if data == "ready":
                ready.set()
            else:
                seen.append(data)
                if len(seen) == count:
                    return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    with Publisher(redis_url) as pub:
        while not ready.is_set():  # the subscriber is in: its first message arrived
            pub.publish(channel, "ready")
            ready.wait(0.2)
        start = time.perf_counter()
        publish(pub, count)
        elapsed = time.perf_counter() - start
    reader.join(60)
    _stop(sub)
    return {"per_s": count / elapsed, "lost": count - len(seen),
            "in_order": seen == list(range(len(seen)))}


def _one_by_one(channel: str) -> Callable[[Publisher, int], None]:
    def run(pub: Publisher, count: int) -> None:
        for i in range(count):
            pub.publish(channel, i)
    return run


def _no_wait(channel: str) -> Callable[[Publisher, int], None]:
    def run(pub: Publisher, count: int) -> None:
        for i in range(count):
            pub.publish(channel, i, wait=False)
        pub.flush()
    return run


def redis_floor(redis_url: str, count: int) -> float:
    """EVALSHA round trips/s of the publish script through a plain ``redis.Redis`` client
    (default options), the arguments of one publish made once: the floor of a blocking
    publish, which adds only its encoding."""
    import redis

    from ..brokers.local import DEFAULT_HISTORY_SIZE, DEFAULT_HISTORY_TTL_S, DEFAULT_PUBLISH_DEDUP_S
    from ..brokers.redis.broker import DEFAULT_CHANNEL_TTL_S, DEFAULT_PREFIX
    from ..brokers.redis.channels import ChannelSpace
    from ..brokers.redis.publish import PUBLISH_SCRIPT, publish_command
    from ..wire.channels import message_head
    client = redis.Redis.from_url(redis_url)
    space = ChannelSpace(DEFAULT_PREFIX, "bench-floor", DEFAULT_HISTORY_SIZE, DEFAULT_HISTORY_TTL_S,
                         DEFAULT_PUBLISH_DEDUP_S, DEFAULT_CHANNEL_TTL_S)
    head = message_head('"floor"', "1", "null", None).encode()
    command = publish_command(space, client.script_load(PUBLISH_SCRIPT), "floor", head, None,
                              None, None)
    try:
        client.execute_command(*command)
        start = time.perf_counter()
        for _ in range(count):
            client.execute_command(*command)
        return count / (time.perf_counter() - start)
    finally:
        client.close()


def _pipelined(channel: str, batch: int) -> Callable[[Publisher, int], None]:
    def run(pub: Publisher, count: int) -> None:
        for first in range(0, count, batch):
            pub.publish_many([(channel, i) for i in range(first, min(count, first + batch))])
    return run


def one_run(args: argparse.Namespace, tmp: str, run: int, redis_url: Optional[str]) -> Dict[str, float]:
    out: Dict[str, float] = {}
    port_file = os.path.join(tmp, f"api-{run}.json")
    proc = _serve(port_file)
    try:
        port = int(discovery.read_port_file(port_file, timeout=30)["port"])
        lat = latency_at_rate(port, args.rate, args.seconds)
        out["p50_ms"], out["p99_ms"] = lat["p50_ms"], lat["p99_ms"]
        body = json.dumps({"channel": "bench", "data": {"n": 1}}).encode()
        out["keepalive_per_s"] = serial_rate(port, args.seconds, "publish", body, 1)
        commands = [{"method": "publish", "params": {"channel": "bench", "data": i}}
                    for i in range(args.batch)]
        out["batch_msgs_per_s"] = serial_rate(port, args.seconds, "batch",
                                              json.dumps({"commands": commands}).encode(), args.batch)
    finally:
        _stop(proc)
    if redis_url:
        port_file = os.path.join(tmp, f"redis-{run}.json")
        proc = _serve(port_file, redis_url)
        try:
            out["redis_floor_per_s"] = redis_floor(redis_url, args.redis_count)
            for name, channel, fn in (
                    ("redis", f"r1-{run}", _one_by_one(f"r1-{run}")),
                    ("redis_nowait", f"r3-{run}", _no_wait(f"r3-{run}")),
                    ("redis_many", f"r2-{run}", _pipelined(f"r2-{run}", args.batch))):
                r = redis_rate(redis_url, port_file, channel, args.redis_count, fn)
                out[f"{name}_per_s"] = r["per_s"]
                out[f"{name}_lost"] = r["lost"]
                out[f"{name}_in_order"] = float(r["in_order"])
        finally:
            _stop(proc)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sente_lite.bench.api", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=1000.0, help="requests/s for the latency run")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each measure")
    parser.add_argument("--batch", type=int, default=1000, help="publishes per batch/pipeline")
    parser.add_argument("--redis-count", type=int, default=50_000,
                        help="publishes of each Publisher(redis) run")
    parser.add_argument("--no-redis", action="store_true", help="skip the Publisher(redis) figure")
    args = parser.parse_args(argv)
    runs: List[Dict[str, float]] = []
    if not args.no_redis:
        from redis.utils import HIREDIS_AVAILABLE
        print(f"redis-py parser: {'hiredis' if HIREDIS_AVAILABLE else 'Python (no hiredis)'}; "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        redis_srv = None
        if not args.no_redis:
            from ..brokers.redis.local_server import RedisServer
            redis_srv = RedisServer().start()
        try:
            for run in range(args.runs):
                runs.append(one_run(args, tmp, run, redis_srv.url if redis_srv else None))
                print(f"run {run + 1}: " + ", ".join(f"{k}={v:,.2f}" for k, v in runs[-1].items()),
                      flush=True)
        finally:
            if redis_srv is not None:
                redis_srv.stop()
    print(f"median of {args.runs} runs (load average {os.getloadavg()[0]:.1f}):")
    for key in runs[0]:
        print(f"  {key:22} {statistics.median(r[key] for r in runs):>12,.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

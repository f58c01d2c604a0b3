"""The peer of ``sente-lite bench --broker redis``: python-socketio servers on Redis.

Runs the same fan-out workload (every connection joins one room and publishes paced
messages to it) against two python-socketio ``AsyncServer`` processes (aiohttp) that
share a ``redis-server`` through ``AsyncRedisManager``, the connections split across
them, and prints deliveries/s, loss, latency and CPU per delivery (both servers and
Redis). Needs ``pip install "python-socketio[client]" aiohttp redis`` and Debian's
``redis-server``; not part of the package's dependencies.

    python -m sente_lite.bench.socketio -S 20 -R 100 -T 10
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import time
from typing import Any, Dict, List, Tuple

from .fanout import _proc_cpu_s
from .sio import connect_room, install_room
from ..brokers.redis.local_server import free_port
from ..brokers.redis.local_server import RedisServer


def _server_main(port: int, redis_url: str, ready: Any) -> None:
    import socketio
    from aiohttp import web

    sio = socketio.AsyncServer(async_mode="aiohttp", client_manager=socketio.AsyncRedisManager(redis_url),
                               ping_interval=5, ping_timeout=15)
    app = web.Application()
    sio.attach(app)
    install_room(sio)

    async def run() -> None:
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        while True:
            await asyncio.sleep(3600)

    asyncio.run(run())


def _load_main(urls: List[str], conns: int, rate: float, seconds: float, start_at: float,
               out: Any) -> None:
    async def run() -> Dict[str, Any]:
        clients = []
        latencies: List[int] = []
        seen: Dict[Tuple[int, int, int], int] = {}
        for k in range(conns):
            def on_msg(data: Any, k: int = k) -> None:
                latencies.append(time.monotonic_ns() - data["t"])
                key = (k, data["p"], data["s"])  # per receiving connection
                seen[key] = seen.get(key, 0) + 1

            clients.append(await connect_room(urls[k % len(urls)], on_msg))
        while time.time() < start_at:
            await asyncio.sleep(0.005)
        t0 = time.monotonic()
        n = int(rate * seconds)

        async def pub(k: int, c: Any) -> None:
            for s in range(n):
                due = t0 + s / rate + k / (rate * conns)
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await c.emit("publish", {"p": os.getpid() * 1000 + k, "s": s, "t": time.monotonic_ns()})

        await asyncio.gather(*(pub(k, c) for k, c in enumerate(clients)))
        last, quiet = len(latencies), time.monotonic()
        while time.monotonic() - quiet < 2.0:  # drain: until nothing arrives for 2 s
            await asyncio.sleep(0.1)
            if len(latencies) != last:
                last, quiet = len(latencies), time.monotonic()
        for c in clients:
            await c.disconnect()
        return {"latencies": latencies, "published": n * conns, "seen": len(seen),
                "dups": sum(v - 1 for v in seen.values())}

    try:
        out.send(asyncio.run(run()))
    except Exception as exc:  # report, so the parent does not wait for nothing
        out.send({"error": repr(exc)})


def run(subscribers: int, rate: float, seconds: float, procs: int = 2) -> Dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    redis = RedisServer().start()
    servers = []
    try:
        urls = []
        for _ in range(2):
            port = free_port()
            ready = ctx.Event()
            proc = ctx.Process(target=_server_main, args=(port, redis.url, ready), daemon=True)
            proc.start()
            if not ready.wait(30):
                raise RuntimeError("socket.io server did not start")
            servers.append(proc)
            urls.append(f"http://127.0.0.1:{port}")
        start_at = time.time() + 3.0 + subscribers * 0.05
        loads = []
        per = -(-subscribers // procs)
        for i in range(procs):
            a, b = ctx.Pipe(False)
            n = min(per, subscribers - i * per)
            p = ctx.Process(target=_load_main, args=(urls, n, rate, seconds, start_at, b), daemon=True)
            p.start()
            loads.append((p, a, n))
        time.sleep(max(0.0, start_at - time.time()))
        cpu0 = sum(_proc_cpu_s(p.pid) for p in servers) + _proc_cpu_s(redis.pid)
        results = [a.recv() for _, a, _ in loads]
        errors = [r["error"] for r in results if "error" in r]
        if errors:
            raise RuntimeError(f"load process failed: {errors[0]}")
        cpu1 = sum(_proc_cpu_s(p.pid) for p in servers) + _proc_cpu_s(redis.pid)
        for p, _, _ in loads:
            p.join(10)
    finally:
        for p in servers:
            p.kill()
            p.join(5)
        redis.stop()
    published = sum(r["published"] for r in results)
    expected = published * subscribers
    lat = sorted(x for r in results for x in r["latencies"])
    delivered = len(lat)
    return {"system": "python-socketio x2 + Redis", "expected": expected, "delivered": delivered,
            "lost": expected - delivered, "duplicates": sum(r["dups"] for r in results),
            "deliveries_per_s": delivered / seconds,
            "p50_ms": statistics.median(lat) / 1e6 if lat else float("nan"),
            "p99_ms": lat[int(0.99 * (len(lat) - 1))] / 1e6 if lat else float("nan"),
            "cpu_us_per_delivery": (cpu1 - cpu0) * 1e6 / delivered if delivered else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-S", "--subscribers", type=int, default=20)
    parser.add_argument("-R", "--rate", type=float, default=100.0)
    parser.add_argument("-T", "--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    rows = [run(args.subscribers, args.rate, args.seconds) for _ in range(args.runs)]
    for r in rows:
        print(", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()),
              flush=True)
    if len(rows) > 1:
        for key in ("deliveries_per_s", "p50_ms", "p99_ms", "cpu_us_per_delivery", "lost"):
            print(f"median {key}: {statistics.median(r[key] for r in rows):.2f}")


if __name__ == "__main__":
    main()

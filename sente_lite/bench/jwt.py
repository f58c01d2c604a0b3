"""Benchmark of JWT connection tokens: ``python -m sente_lite.bench.jwt`` (extra ``[jwt]``).

Starts ``sente-lite serve --jwt-key`` in its own process and, per run:

* **a stream across refreshes**: a publisher and a subscriber (``Client(token=callable)``,
  tokens of ``--ttl`` seconds, so each refreshes every ~0.75 x ttl) carry ``--messages``
  channel messages at ``--rate`` per second; it checks that the subscriber got every offset
  once, in order (lost, duplicates), that neither client reconnected or saw a 4002 close,
  kept its conn-id, and refreshed at least ``--min-refreshes`` (3) times during the stream;
* **the refresh round trip**: ``chsk/refresh`` to reply on a raw socket, one connection per
  sample in turn (the server checks one refresh per connection per 0.5 s), ``--samples``
  samples on the idle server and as many during the stream; p50 and p99.

Prints each run, then the medians over ``--runs`` runs; exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Sequence

import websocket  # websocket-client

from .. import discovery
from ..client.client import ChannelMessage, Client
from ..core.jwt_tokens import mint
from ..session import MIN_REFRESH_INTERVAL_S
from ..wire import protocol as p

KEY = "bench-jwt-secret-" + "0" * 16
#: Refreshes each client must make during the stream for the run to count (``--min-refreshes``).
MIN_REFRESHES = 3
#: Connections the round-trip sampler takes turns on (more than one refresh per
#: ``MIN_REFRESH_INTERVAL_S`` per connection would be refused ``rate-limited``).
SAMPLER_CONNECTIONS = 50
CHANNEL = "bench.jwt"


def _serve(port_file: str) -> subprocess.Popen:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, SENTE_LITE_JWT_KEY=KEY,
               PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "sente_lite", "serve", "--port", "0",
                             "--port-file", port_file, "--heartbeat-ms", "1000",
                             "--rate-limit", "0"], env=env, stdout=subprocess.DEVNULL)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Sampler:
    """Times ``chsk/refresh`` round trips on raw sockets, one connection per sample in turn."""

    def __init__(self, url: str, connections: int = SAMPLER_CONNECTIONS) -> None:
        self.socks = []
        for i in range(connections):
            token = mint(f"sampler-{i}", 3600, KEY)
            ws = websocket.create_connection(url, timeout=10,
                                             header=[f"Authorization: Bearer {token}"])
            self._until(ws, lambda f: f[0] == p.EV_HANDSHAKE)
            self.socks.append((ws, f"sampler-{i}"))
        self.seq = 0
        self.last = [0.0] * connections  # when each connection's last refresh was answered

    @staticmethod
    def _until(ws: websocket.WebSocket, wanted: Any) -> list:
        while True:
            frame = json.loads(ws.recv())
            if frame == [p.EV_PING]:
                ws.send(json.dumps([p.EV_PONG]))
                continue
            if wanted(frame):
                return frame

    def sample(self, count: int, stop: Optional[threading.Event] = None) -> List[float]:
        """Round trips in ms (tokens are minted before the clock starts), taking the
        connections in turn, each at most once per ``MIN_REFRESH_INTERVAL_S`` (+10%)."""
        out: List[float] = []
        gap = MIN_REFRESH_INTERVAL_S * 1.1
        while len(out) < count and not (stop is not None and stop.is_set()):
            i = self.seq % len(self.socks)
            ws, sub = self.socks[i]
            wait = self.last[i] + gap - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # pacing: the server's bound per connection, not a sync
            self.seq += 1
            cb = f"r{self.seq}"
            frame = json.dumps([p.EV_REFRESH, {"token": mint(sub, 3600 + self.seq, KEY)}, cb])
            t0 = time.perf_counter()
            ws.send(frame)
            answer = self._until(ws, lambda f, cb=cb: len(f) == 3 and f[2] == cb)
            out.append((time.perf_counter() - t0) * 1000)
            self.last[i] = time.monotonic()
            if answer[0] != p.EV_REPLY:
                raise RuntimeError(f"refresh refused: {answer[1]}")
        return out

    def close(self) -> None:
        for ws, _ in self.socks:
            ws.close()


def _percentiles(ms: List[float]) -> Dict[str, float]:
    ordered = sorted(ms)
    return {"p50": round(ordered[len(ordered) // 2], 3),
            "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3)}


def _stream(url: str, messages: int, rate: float, ttl: float, sampler: Sampler,
            samples: int) -> Dict[str, Any]:
    """One stream of ``messages`` across refreshes, with round trips sampled meanwhile."""
    got: List[int] = []
    done = threading.Event()

    def on_msg(msg: ChannelMessage) -> None:
        got.append(msg.offset)
        if len(got) >= messages:
            done.set()

    def source(sub: str) -> Any:
        return lambda: mint(sub, ttl, KEY)

    sub_client = Client(url, token=source("bench-sub"))
    pub_client = Client(url, token=source("bench-pub"))
    try:
        for c in (sub_client, pub_client):
            if not c.wait_connected(10):
                raise RuntimeError("a client did not connect")
        ids = (sub_client.conn_id, pub_client.conn_id)
        base = sub_client.subscribe(CHANNEL, on_msg)["offset"]
        under_load: List[float] = []
        stop = threading.Event()
        sampling = threading.Thread(
            target=lambda: under_load.extend(sampler.sample(samples, stop)), name="bench-sampler")
        refreshes_before = [c.stats().get("token_refreshes", 0) for c in (sub_client, pub_client)]
        started = time.monotonic()
        sampling.start()
        try:
            for i in range(messages):
                due = started + i / rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # pacing the stream at --rate
                pub_client.publish(CHANNEL, {"i": i})
            finished = done.wait(30)
            elapsed = time.monotonic() - started
        finally:
            stop.set()
            sampling.join(30)
        refreshes = [c.stats().get("token_refreshes", 0) - b
                     for c, b in zip((sub_client, pub_client), refreshes_before)]
        offsets = got[:]
        expected = list(range(base + 1, base + messages + 1))
        lost = len(set(expected) - set(offsets))
        stats = [c.stats() for c in (sub_client, pub_client)]
        return {
            "finished": finished, "seconds": round(elapsed, 2), "lost": lost,
            "duplicates": len(offsets) - len(set(offsets)), "in_order": offsets == sorted(offsets),
            "reconnects": sum(s.get("reconnect_attempts", 0) for s in stats),
            "closes_4002": sum(s.get(f"closed_by_server_{p.CLOSE_TOKEN_EXPIRED}", 0) for s in stats),
            "same_conn": (sub_client.conn_id, pub_client.conn_id) == ids,
            "refreshes": refreshes,
            "refresh_failures": sum(s.get("token_refresh_failures", 0) for s in stats),
            "rtt_under_load": _percentiles(under_load) if under_load else None,
        }
    finally:
        sub_client.close()
        pub_client.close()


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sente_lite.bench.jwt", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=10_000, help="channel messages per run")
    ap.add_argument("--rate", type=float, default=1500.0, help="messages per second")
    ap.add_argument("--ttl", type=float, default=2.0, help="token life in seconds")
    ap.add_argument("--samples", type=int, default=200, help="refresh round trips per figure")
    ap.add_argument("--runs", type=int, default=3, help="runs; medians reported")
    ap.add_argument("--min-refreshes", type=int, default=MIN_REFRESHES,
                    help="refreshes each client must make during the stream")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        port_file = os.path.join(tmp, "port.json")
        proc = _serve(port_file)
        try:
            url = str(discovery.read_port_file(port_file, timeout=20)["url"])
            results = []
            for run in range(1, args.runs + 1):
                sampler = Sampler(url)
                try:
                    idle = _percentiles(sampler.sample(args.samples))
                    result = _stream(url, args.messages, args.rate, args.ttl, sampler, args.samples)
                finally:
                    sampler.close()
                result["rtt_idle"] = idle
                results.append(result)
                print(f"run {run}: {json.dumps(result)}", flush=True)
        finally:
            _stop(proc)
    ok = all(r["finished"] and r["lost"] == 0 and r["duplicates"] == 0 and r["in_order"]
             and r["reconnects"] == 0 and r["closes_4002"] == 0 and r["same_conn"]
             and min(r["refreshes"]) >= args.min_refreshes for r in results)

    def med(get: Any) -> float:
        return round(statistics.median(get(r) for r in results), 3)

    print(f"\n{args.messages} messages at {args.rate:g}/s, tokens of {args.ttl:g} s, "
          f"median of {args.runs} runs:")
    print(f"  stream: {med(lambda r: r['seconds'])} s, lost {sum(r['lost'] for r in results)}, "
          f"duplicates {sum(r['duplicates'] for r in results)}, reconnects "
          f"{sum(r['reconnects'] for r in results)}, 4002 closes "
          f"{sum(r['closes_4002'] for r in results)}, refreshes per client "
          f"{med(lambda r: min(r['refreshes']))} (at least {args.min_refreshes})")
    print(f"  refresh round trip, idle server: p50 {med(lambda r: r['rtt_idle']['p50'])} ms, "
          f"p99 {med(lambda r: r['rtt_idle']['p99'])} ms ({args.samples} samples a run)")
    if all(r["rtt_under_load"] for r in results):
        print(f"  refresh round trip during the stream: p50 "
              f"{med(lambda r: r['rtt_under_load']['p50'])} ms, p99 "
              f"{med(lambda r: r['rtt_under_load']['p99'])} ms")
    print("  targets: " + ("met" if ok else "NOT met"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

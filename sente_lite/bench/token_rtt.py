"""What the token benchmarks share (:mod:`sente_lite.bench.jwt`,
:mod:`sente_lite.bench.sub_refresh`): the server in its own process with JWT tokens, a
sampler of request round trips on raw sockets, percentiles, and a paced stream.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import websocket  # websocket-client

from ..client.client import ChannelMessage, Client
from ..core.jwt_tokens import mint
from ..session import MIN_REFRESH_INTERVAL_S, MIN_SUB_REFRESH_INTERVAL_S
from ..wire import protocol as p
from .figures import pct

KEY = "bench-jwt-secret-" + "0" * 16
#: Connections the round-trip sampler takes turns on (more than one refresh per
#: ``MIN_REFRESH_INTERVAL_S`` per connection would be refused ``rate-limited``).
SAMPLER_CONNECTIONS = 50


def serve(port_file: str, extra: Sequence[str] = ()) -> subprocess.Popen:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, SENTE_LITE_JWT_KEY=KEY,
               PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "sente_lite", "serve", "--port", "0",
                             "--port-file", port_file, "--heartbeat-ms", "1000",
                             "--rate-limit", "0", *extra], env=env, stdout=subprocess.DEVNULL)


def stop_server(proc: subprocess.Popen) -> None:
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

    @staticmethod
    def refresh(i: int, sub: str, seq: int) -> list:
        """The ``chsk/refresh`` of connection ``i`` (uid ``sub``), number ``seq``."""
        return [p.EV_REFRESH, {"token": mint(sub, 3600 + seq, KEY)}]

    def sample(self, count: int, stop: Optional[threading.Event] = None,
               make: Optional[Callable[[int, str, int], list]] = None) -> List[float]:
        """Round trips in ms of the requests ``make(i, uid, seq)`` builds (``chsk/refresh``
        by default; built before the clock starts), taking the connections in turn, each
        at most once per ``MIN_REFRESH_INTERVAL_S`` (+10%; the same for sub-refresh)."""
        make = make or self.refresh
        out: List[float] = []
        gap = max(MIN_REFRESH_INTERVAL_S, MIN_SUB_REFRESH_INTERVAL_S) * 1.1
        while len(out) < count and not (stop is not None and stop.is_set()):
            i = self.seq % len(self.socks)
            ws, sub = self.socks[i]
            wait = self.last[i] + gap - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # pacing: the server's bound per connection, not a sync
            self.seq += 1
            cb = f"r{self.seq}"
            frame = json.dumps(make(i, sub, self.seq) + [cb])
            t0 = time.perf_counter()
            ws.send(frame)
            answer = self._until(ws, lambda f, cb=cb: len(f) == 3 and f[2] == cb)
            out.append((time.perf_counter() - t0) * 1000)
            self.last[i] = time.monotonic()
            if answer[0] != p.EV_REPLY:
                raise RuntimeError(f"{frame[:40]}... refused: {answer[1]}")
        return out

    def close(self) -> None:
        for ws, _ in self.socks:
            ws.close()


def percentiles(ms: List[float]) -> Dict[str, float]:
    return {"p50": round(pct(ms, 0.5), 3), "p99": round(pct(ms, 0.99), 3)}


class Offsets:
    """A subscriber's channel handler for a stream: the offsets it got; ``done`` once
    ``expected`` messages came."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.got: List[int] = []
        self.done = threading.Event()

    def __call__(self, msg: ChannelMessage) -> None:
        self.got.append(msg.offset)
        if len(self.got) >= self.expected:
            self.done.set()

    def tally(self, base: int) -> Dict[str, Any]:
        """``lost`` (of the offsets after ``base``), ``duplicates``, ``in_order``."""
        offsets = self.got[:]
        return {"lost": len(set(range(base + 1, base + self.expected + 1)) - set(offsets)),
                "duplicates": len(offsets) - len(set(offsets)),
                "in_order": offsets == sorted(offsets)}


def paced(pub_client: Client, channel: str, messages: int, rate: float, done: threading.Event,
          sample: Callable[[threading.Event], List[float]]) -> Tuple[bool, float, List[float]]:
    """Publish ``messages`` on ``channel`` at ``rate`` per second while ``sample(stop)``
    runs on a thread; (every message came (``done``), seconds, the round trips sampled)."""
    under_load: List[float] = []
    stop = threading.Event()
    sampling = threading.Thread(target=lambda: under_load.extend(sample(stop)),
                                name="bench-sampler")
    started = time.monotonic()
    sampling.start()
    try:
        for i in range(messages):
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing the stream at --rate
            pub_client.publish(channel, {"i": i})
        finished = done.wait(30)
        return finished, time.monotonic() - started, under_load
    finally:
        stop.set()
        sampling.join(30)


__all__ = ["KEY", "Sampler", "serve", "stop_server", "percentiles", "paced", "Offsets",
           "SAMPLER_CONNECTIONS"]

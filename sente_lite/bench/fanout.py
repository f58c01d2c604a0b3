"""``sente-lite bench``: the fan-out benchmark, side by side with a baseline server.

Workload: ``S`` subscriber connections and ``P`` publisher connections on one
channel (or ``--same``: each of the ``S`` connections also publishes). Every
publisher publishes ``R`` messages per second, *paced* (message ``j`` of
publisher ``i`` is due at ``t0 + i/P/R + j/R``), for ``T`` seconds; each
message's data is a JSON object of about ``--payload-bytes`` bytes carrying
the publisher index, a sequence number and ``time.monotonic_ns()`` taken just
before the send (``CLOCK_MONOTONIC`` is system-wide on Linux, so latency is
publish-to-receive across processes).

The measured server runs alone in its own process; its CPU comes from
``/proc/<pid>/stat`` over the publishing window plus drain, its memory from
``/proc/<pid>/status``. The load generator runs in other processes (spawned),
one per connection by default or ``--conns-per-proc K``; it is the same code
for sente_lite and for the baseline (:mod:`sente_lite.bench.baseline`), so on a
small machine it costs both the same. ``--driver client`` (default) uses
:class:`sente_lite.Client`; ``--driver asyncio`` a lean ``websockets`` asyncio
client speaking the protocol subset directly (cheaper per connection).

Each subscriber checks every delivery: lost, duplicate, out of order (channel
offset or per-publisher sequence going backwards). ``--baseline`` runs the
identical workload against the baseline and prints the ratios sente_lite /
baseline of p99 latency and of server CPU per delivery; ``--runs N``
alternates the two systems N times and reports medians.

Other modes: ``--rates A,B,...`` (saturation sweep), ``--idle N`` (N idle
connections with heartbeats: RSS per connection, threads), ``--rss-at
100000,1000000`` (server RSS when the server has made that many deliveries),
``--profile DIR`` (py-spy of the server process during the publishing window).

Run it as ``sente-lite bench ...`` or ``python -m sente_lite.bench.fanout ...``.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import gc
import hashlib
import json
import multiprocessing
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union
from urllib.parse import urlsplit

from ..wire.framing import OP_BINARY, OP_CLOSE, OP_TEXT, FrameParser, ProtocolError, encode_frame

try:  # the load generator parses with orjson when the [fast] extra is installed
    from orjson import loads as _loads
except ImportError:  # pragma: no cover
    _loads = json.loads

CHANNEL = "bench"
SYSTEMS = ("sente_lite", "baseline")
#: sente_lite with channel history off (``--history-off-too``): the cost of history, side by side.
NO_HISTORY = "sente_lite_nohistory"
#: ``--broker redis``: a redis-server and REDIS_SERVERS sente_lite servers sharing it, the
#: connections split across them round-robin; CPU counts every server and Redis.
REDIS = "sente_lite_redis"
#: The ASGI face (sente_lite.asgi.App) under uvicorn: ``sente_lite.bench.asgi``.
ASGI = "asgi"
#: python-socketio's ASGIApp under uvicorn, driven by socket.io clients (``sente_lite.bench.sio``).
SOCKETIO_ASGI = "socketio_asgi"
REDIS_SERVERS = 2
#: Seconds a server on Redis may take to link up before the load starts.
REDIS_LINK_TIMEOUT_S = 30.0
#: The latency target the saturation sweep and the checks use.
P99_TARGET_MS = 10.0
P50_TARGET_MS = 1.5
#: Seconds to wait for processes to start, connect and subscribe.
SETUP_TIMEOUT_S = 120.0
#: After publishing, a load process waits for missing deliveries until --drain
#: seconds have passed or nothing arrived for this long.
DRAIN_STALL_S = 2.0
#: How many connection attempts one load process has in flight at once.
CONNECT_CONCURRENCY = 50
_MB = 1024 * 1024


# --------------------------------------------------------------------------- workload
@dataclass(frozen=True)
class Workload:
    """One benchmark configuration (see the module docstring)."""

    subscribers: int = 5
    publishers: int = 5
    same: bool = False
    rate: float = 100.0
    seconds: float = 10.0
    payload_bytes: int = 100
    conns_per_proc: int = 1
    driver: str = "client"
    heartbeat_ms: int = 5000
    write_delay_ms: float = 0.0  # sente_lite's Server(write_delay_ms=); the baseline has none
    drain_s: float = 30.0
    rss_at: Tuple[int, ...] = ()
    profile_dir: Optional[str] = None
    packer: str = "json"  # the raw driver's packer (negotiated with packer=)
    batch: bool = False  # the raw driver asks for batches (batch=1)
    compression: Optional[str] = None  # sente_lite's Server(compression=); asyncio driver offers deflate

    @property
    def connections(self) -> int:
        """Connections in total."""
        return self.subscribers if self.same else self.subscribers + self.publishers

    @property
    def n_publishers(self) -> int:
        """Connections that publish."""
        return self.subscribers if self.same else self.publishers

    @property
    def msgs_per_publisher(self) -> int:
        """Messages each publisher publishes."""
        return max(1, round(self.rate * self.seconds))

    def role(self, k: int) -> Tuple[Optional[int], bool]:
        """(publisher index or None, is subscriber) of connection ``k``."""
        if self.same:
            return k, True
        if k < self.subscribers:
            return None, True
        return k - self.subscribers, False


class Tally:
    """What one subscriber received: counts, ordering checks, latencies (ns)."""

    __slots__ = ("seen", "last_seq", "last_offset", "received", "duplicates",
                 "out_of_order", "malformed", "latencies", "distinct", "expected")

    def __init__(self, n_publishers: int, msgs_per_publisher: int) -> None:
        self.seen = [bytearray(msgs_per_publisher) for _ in range(n_publishers)]
        self.last_seq = [-1] * n_publishers
        self.last_offset = 0
        self.received = 0
        self.distinct = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.malformed = 0
        self.latencies = array.array("q")
        self.expected = n_publishers * msgs_per_publisher

    def record(self, data: Any, offset: Any, now_ns: int) -> None:
        """Check and record one delivery received at ``now_ns``."""
        try:
            pub, seq, sent = data["p"], data["s"], data["t"]
            seen = self.seen[pub]
            dup = seen[seq]
        except (TypeError, KeyError, IndexError):
            self.malformed += 1
            return
        self.received += 1
        if dup:
            self.duplicates += 1
            return
        seen[seq] = 1
        self.distinct += 1
        backwards = seq < self.last_seq[pub]
        if not backwards:
            self.last_seq[pub] = seq
        if isinstance(offset, int):
            if offset <= self.last_offset:
                backwards = True
            else:
                self.last_offset = offset
        if backwards:
            self.out_of_order += 1
        self.latencies.append(now_ns - sent)

    @property
    def complete(self) -> bool:
        """True once every expected message arrived."""
        return self.distinct >= self.expected


def _payload_pad(payload_bytes: int) -> str:
    sample = json.dumps({"p": 10, "s": 1000, "t": time.monotonic_ns(), "x": ""},
                        separators=(",", ":"))
    return "x" * max(0, payload_bytes - len(sample))


def _schedule(wl: Workload, pubs: Sequence[int], t0_ns: int) -> List[Tuple[int, int, int]]:
    """(due ns, publisher index, seq) of every local publish, in due order."""
    period = 1e9 / wl.rate
    phase = {pi: int(period * pi / wl.n_publishers) for pi in pubs}
    out = [(t0_ns + phase[pi] + int(j * period), pi, j)
           for j in range(wl.msgs_per_publisher) for pi in pubs]
    out.sort()
    return out


# --------------------------------------------------------------------------- processes
def raise_nofile(wanted: int = 65536) -> int:
    """Raise this process's RLIMIT_NOFILE soft limit toward ``wanted``; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_status(pid: int) -> Dict[str, int]:
    """VmRSS / VmHWM (bytes) and Threads of process ``pid``."""
    out: Dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
            elif key == "Threads":
                out[key] = int(value)
    try:
        out["FDs"] = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        out["FDs"] = -1
    return out


#: The server's max_connections in a benchmark: capacity is what is measured.
BENCH_MAX_CONNECTIONS = 1_000_000


def _server_main(system: str, heartbeat_ms: int, rss_at: Tuple[int, ...], write_delay_ms: float,
                 compression: Optional[str], broker: Optional[str], pipe: Any) -> None:
    """Server process: run one server until told to stop; answer ``stats``."""
    raise_nofile()
    if system.startswith("sente_lite"):
        from ..brokers.local import DEFAULT_HISTORY_SIZE
        from ..server.server import Server
        srv: Any = Server("127.0.0.1", 0, heartbeat_ms=heartbeat_ms, write_delay_ms=write_delay_ms,
                          max_connections=BENCH_MAX_CONNECTIONS, broker=broker,
                          history_size=0 if system == NO_HISTORY else DEFAULT_HISTORY_SIZE,
                          compression=compression)
    elif system == ASGI:
        from ..brokers.local import DEFAULT_HISTORY_SIZE as HISTORY
        from .asgi_server import UvicornApp
        srv = UvicornApp(heartbeat_ms, BENCH_MAX_CONNECTIONS, HISTORY)
    elif system == SOCKETIO_ASGI:
        from .sio import asgi_server
        srv = asgi_server(heartbeat_ms)
    else:
        from .baseline import BaselineServer
        srv = BaselineServer("127.0.0.1", 0, heartbeat_ms=heartbeat_ms)
    srv.start()
    if broker is not None:
        from ..discovery import wait_for
        wait_for(lambda: srv.channels.healthy or None, REDIS_LINK_TIMEOUT_S, "the Redis link")
    rss_marks: Dict[int, int] = {}
    object_marks: Dict[int, int] = {}
    stop = threading.Event()

    def sample_rss() -> None:  # RSS when the server's delivery count passes each mark
        pending = sorted(rss_at)
        while pending and not stop.wait(0.02):
            done = srv.stats().get("deliveries", 0)
            while pending and done >= pending[0]:
                mark = pending.pop(0)
                rss_marks[mark] = _proc_status(os.getpid())["VmRSS"]
                object_marks[mark] = len(gc.get_objects())  # Python objects alive (leak check)

    sampler = threading.Thread(target=sample_rss, name="bench-rss", daemon=True)
    if rss_at:
        sampler.start()
    pipe.send({"url": srv.url, "pid": os.getpid()})
    try:
        while True:
            cmd = pipe.recv()
            if cmd == "stats":
                stats = srv.stats()
                stats["rss_at"] = dict(rss_marks)
                stats["objects_at"] = dict(object_marks)
                pipe.send(stats)
            else:
                break
    finally:
        stop.set()
        if sampler.is_alive():
            sampler.join(1.0)
        srv.stop()
    pipe.send("stopped")


class _Conn:
    """One load-generator connection: its index, publisher index and tally."""

    def __init__(self, k: int, pub: Optional[int], tally: Optional[Tally]) -> None:
        self.k = k
        self.pub = pub
        self.tally = tally
        self.handle: Any = None
        self.pings = 0
        self.closed_code: Optional[int] = None


class _ClientDriver:
    """Connections made with :class:`sente_lite.Client` (two threads each)."""

    def __init__(self, url: str, conns: List[_Conn], subscribe_all: bool) -> None:
        self.url = url
        self.conns = conns
        self.subscribe_all = subscribe_all

    def connect(self, timeout: float) -> None:
        from ..client.client import Client
        for c in self.conns:
            c.handle = Client(self.url, client_id=f"bench-{c.k}", request_timeout=timeout,
                              max_pending_sends=100_000)
        for c in self.conns:
            if not c.handle.wait_connected(timeout):
                raise RuntimeError(f"connection {c.k} not connected within {timeout}s")
        for c in self.conns:
            tally = c.tally
            if tally is not None:
                def on_msg(msg: Any, tally: Tally = tally) -> None:
                    tally.record(msg.data, msg.offset, time.monotonic_ns())
                c.handle.subscribe(CHANNEL, on_msg, timeout=timeout)
            elif self.subscribe_all:
                c.handle.subscribe(CHANNEL, None, timeout=timeout)

    def publish_all(self, schedule: List[Tuple[int, int, int]], by_pub: Dict[int, _Conn],
                    pad: str) -> int:
        lag = 0
        clock = time.monotonic_ns
        for due, pi, seq in schedule:
            now = clock()
            if due > now:
                time.sleep((due - now) / 1e9)
            else:
                lag = max(lag, now - due)
            by_pub[pi].handle.publish(CHANNEL, {"p": pi, "s": seq, "t": clock(), "x": pad})
        return lag

    def extra_stats(self) -> Dict[str, int]:
        out: Counter = Counter()
        for c in self.conns:
            st = c.handle.stats()
            for key in ("channel_gaps", "handler_queue_overflows", "reconnect_attempts",
                        "bad_frames_from_server"):
                out[key] += st.get(key, 0)
            if st.get("status") != "connected":
                out["not_connected"] += 1
        return dict(out)

    def close(self) -> None:
        for c in self.conns:
            if c.handle is not None:
                c.handle.close()


class _AsyncioDriver:
    """Connections made with ``websockets``' asyncio client on one event loop thread,
    speaking the benchmark's protocol subset directly."""

    def __init__(self, url: str, conns: List[_Conn], subscribe_all: bool) -> None:
        self.url = url
        self.conns = conns
        self.subscribe_all = subscribe_all
        self.connect_failures = 0
        self.wl_compression: Optional[str] = None  # offer permessage-deflate (set by the load process)
        self.packer = "json"  # the raw driver's packer
        self.query = ""  # added to the raw driver's upgrade path
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bench-loop", daemon=True)
        self.thread.start()

    def _run(self, coro: Any, timeout: Optional[float] = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def connect(self, timeout: float) -> None:
        self._run(self._connect_all(timeout), timeout + 5.0)

    async def _connect_all(self, timeout: float) -> None:
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one(c: _Conn) -> None:
            async with gate:
                await asyncio.wait_for(self._open(c), timeout)

        await asyncio.gather(*(one(c) for c in self.conns))

    async def _open(self, c: _Conn) -> None:
        from websockets.asyncio.client import connect
        try:
            ws = await connect(f"{self.url}?client-id=bench-{c.k}",
                               compression="deflate" if self.wl_compression else None,
                               ping_interval=None, max_size=1 << 20, open_timeout=30)
        except Exception:
            self.connect_failures += 1
            raise
        handshake, subscribed = asyncio.Event(), asyncio.Event()
        c.handle = (ws, asyncio.get_running_loop().create_task(
            self._reader(c, ws, handshake, subscribed)))
        await handshake.wait()
        if c.tally is not None or self.subscribe_all:
            await ws.send(json.dumps(["sente-lite/subscribe", {"channel-id": CHANNEL}, "sub"]))
            await subscribed.wait()

    async def _reader(self, c: _Conn, ws: Any, handshake: asyncio.Event,
                      subscribed: asyncio.Event) -> None:
        from websockets.exceptions import ConnectionClosed
        loads, clock, tally = json.loads, time.monotonic_ns, c.tally
        try:
            async for text in ws:
                now = clock()
                frame = loads(text)
                event = frame[0]
                if event == "sente-lite/channel-msg":
                    if tally is not None:
                        body = frame[1]
                        tally.record(body["data"], body["offset"], now)
                elif event == "chsk/ws-ping":
                    c.pings += 1
                    await ws.send('["chsk/ws-pong"]')
                elif event == "chsk/handshake":
                    handshake.set()
                elif event == "chsk/reply":
                    subscribed.set()
        except ConnectionClosed:
            pass
        c.closed_code = ws.close_code if ws.close_code is not None else 1006

    def publish_all(self, schedule: List[Tuple[int, int, int]], by_pub: Dict[int, _Conn],
                    pad: str) -> int:
        return self._run(self._publish_all(schedule, by_pub, pad))

    async def _publish_all(self, schedule: List[Tuple[int, int, int]], by_pub: Dict[int, _Conn],
                           pad: str) -> int:
        dumps = json.JSONEncoder(separators=(",", ":")).encode
        clock = time.monotonic_ns
        lag = 0
        for due, pi, seq in schedule:
            now = clock()
            if due > now:
                await asyncio.sleep((due - now) / 1e9)
            else:
                lag = max(lag, now - due)
            ws = by_pub[pi].handle[0]
            await ws.send(self._publish_text(dumps, {"p": pi, "s": seq, "t": clock(), "x": pad}))
        return lag

    @staticmethod
    def _publish_text(dumps: Callable[[Any], str], data: Any) -> str:
        """The frame that publishes ``data`` on the channel."""
        return dumps(["sente-lite/publish", {"channel-id": CHANNEL, "data": data,
                                             "exclude-sender?": False}])

    def extra_stats(self) -> Dict[str, int]:
        out: Counter = Counter(connect_failures=self.connect_failures)
        for c in self.conns:
            if c.closed_code is not None:
                out["closed"] += 1
                out[f"closed_{c.closed_code}"] += 1
        pings = [c.pings for c in self.conns]
        out["min_pings"] = min(pings) if pings else 0
        return dict(out)

    def close(self) -> None:
        async def close_all() -> None:
            await asyncio.gather(*(c.handle[0].close() for c in self.conns if c.handle),
                                 return_exceptions=True)
        try:
            self._run(close_all(), 30.0)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5.0)
            self.loop.close()


_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class _RawWSProtocol(asyncio.Protocol):
    """A minimal WebSocket client connection (RFC 6455) as an asyncio protocol: the
    upgrade request, masked text frames out, unmasked frames in, parsed from each
    chunk the event loop hands over (:mod:`sente_lite.wire.framing` both ways; a frame
    that breaks RFC 6455 ends the connection, counted as ``closed_1002``). Far cheaper per message than a full client,
    so a 2-core machine spends its time on the server under test."""

    def __init__(self, c: _Conn, path: str, host: str, on_ready: "asyncio.Future[None]",
                 packer: str = "json") -> None:
        self.c = c
        self.msgpack: Any = None
        if packer == "msgpack":
            import msgpack
            self.msgpack = msgpack
        self.path = path
        self.host = host
        self.key = base64.b64encode(os.urandom(16))
        self.on_ready = on_ready
        self.subscribed: "asyncio.Future[None]" = on_ready.get_loop().create_future()
        self.transport: Any = None
        self.buf = b""  # the upgrade response, until it is whole
        self.upgraded = False
        self.parser = FrameParser()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(b"GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
                        b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                        b"Sec-WebSocket-Version: 13\r\n\r\n"
                        % (self.path.encode(), self.host.encode(), self.key))

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        if not self.upgraded:
            buf = self.buf + data
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            head, data = buf[:end], buf[end + 4:]
            self.buf = b""
            accept = base64.b64encode(hashlib.sha1(self.key + _WS_GUID).digest())
            if not head.startswith(b"HTTP/1.1 101") or accept not in head:
                self._fail(RuntimeError(f"upgrade refused: {head[:80]!r}"))
                return
            self.upgraded = True
        try:
            messages = self.parser.feed(data)
        except ProtocolError:
            self.c.closed_code = 1002  # the code this client would close with
            self.transport.close()
            return
        for opcode, payload in messages:
            self._on_frame(opcode, payload, now)

    def _on_frame(self, opcode: int, payload: bytes, now: int) -> None:
        if opcode == OP_CLOSE:
            self.c.closed_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self.transport.close()
            return
        if opcode == OP_TEXT:
            frame = _loads(payload)
        elif opcode == OP_BINARY and self.msgpack is not None:
            frame = self.msgpack.unpackb(payload)
        else:
            return  # pings and pongs
        if frame[0] == "chsk/batch":
            for inner in frame[1]:
                self._on_value(inner, now)
        else:
            self._on_value(frame, now)

    def _on_value(self, frame: Any, now: int) -> None:
        event = frame[0]
        if event == "sente-lite/channel-msg":
            if self.c.tally is not None:
                body = frame[1]
                self.c.tally.record(body["data"], body["offset"], now)
        elif event == "chsk/ws-ping":
            self.c.pings += 1
            self.send_now(b'["chsk/ws-pong"]') if self.msgpack is None else self.send_now(
                self.msgpack.packb(["chsk/ws-pong"]), OP_BINARY)
        elif event == "chsk/handshake":
            if not self.on_ready.done():
                self.on_ready.set_result(None)
        elif event == "chsk/reply" and not self.subscribed.done():
            self.subscribed.set_result(None)

    def send_now(self, payload: bytes, opcode: int = OP_TEXT) -> None:
        """Write one masked frame."""
        self.transport.write(encode_frame(payload, opcode, mask=os.urandom(4)))

    async def send(self, text: str) -> None:
        if self.msgpack is not None:
            self.send_now(self.msgpack.packb(json.loads(text)), OP_BINARY)
        else:
            self.send_now(text.encode("utf-8"))

    async def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.send_now((1000).to_bytes(2, "big"), opcode=OP_CLOSE)
            self.transport.close()

    def _fail(self, exc: BaseException) -> None:
        if not self.on_ready.done():
            self.on_ready.set_exception(exc)
        self.transport.close()

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        if self.c.closed_code is None:
            self.c.closed_code = 1006
        if not self.on_ready.done():
            self.on_ready.set_exception(ConnectionError("connection lost before the handshake"))


class _RawDriver(_AsyncioDriver):
    """Connections made with :class:`_RawWSProtocol` on one event loop thread."""

    async def _open(self, c: _Conn) -> None:
        parts = urlsplit(self.url)
        loop = asyncio.get_running_loop()
        ready: "asyncio.Future[None]" = loop.create_future()
        try:
            _, proto = await loop.create_connection(
                lambda: _RawWSProtocol(c, f"{parts.path}?client-id=bench-{c.k}{self.query}",
                                       parts.netloc, ready, self.packer),
                parts.hostname, parts.port)
            await ready
        except Exception:
            self.connect_failures += 1
            raise
        c.handle = (proto, None)
        if c.tally is not None or self.subscribe_all:
            await proto.send(json.dumps(["sente-lite/subscribe", {"channel-id": CHANNEL}, "sub"]))
            await proto.subscribed


#: Where a socket.io server (engine.io 4) takes WebSocket connections.
SOCKETIO_PATH = "/socket.io/?EIO=4&transport=websocket"


class _RawSocketIOProtocol(_RawWSProtocol):
    """The raw driver's connection to a socket.io server: engine.io 4 over a WebSocket
    (open ``0``, connect to ``/`` with ``40``, ping ``2`` / pong ``3``, events ``42``,
    acks ``43``). Joining the room is acknowledged; the room's ``msg`` events are the
    deliveries (no offset)."""

    def _on_frame(self, opcode: int, payload: bytes, now: int) -> None:
        if opcode != OP_TEXT:
            super()._on_frame(opcode, payload, now)  # close; pings and pongs
            return
        if payload.startswith(b'42["msg",'):
            if self.c.tally is not None:
                self.c.tally.record(_loads(payload[2:])[1], None, now)
        elif payload == b"2":
            self.c.pings += 1
            self.send_now(b"3")
        elif payload.startswith(b"0"):  # engine.io open: connect to the default namespace
            self.send_now(b"40")
        elif payload.startswith(b"40"):
            if not self.on_ready.done():
                self.on_ready.set_result(None)
        elif payload.startswith(b"43") and not self.subscribed.done():  # the join's ack
            self.subscribed.set_result(None)


class _RawSocketIODriver(_RawDriver):
    """Connections made with :class:`_RawSocketIOProtocol` on one event loop thread: the
    raw driver's cost per message, against a socket.io server."""

    async def _open(self, c: _Conn) -> None:
        parts = urlsplit(self.url)
        loop = asyncio.get_running_loop()
        ready: "asyncio.Future[None]" = loop.create_future()
        try:
            _, proto = await loop.create_connection(
                lambda: _RawSocketIOProtocol(c, SOCKETIO_PATH, parts.netloc, ready),
                parts.hostname, parts.port)
            await ready
        except Exception:
            self.connect_failures += 1
            raise
        c.handle = (proto, None)
        if c.tally is not None or self.subscribe_all:
            await proto.send('421["join",{}]')
            await proto.subscribed

    @staticmethod
    def _publish_text(dumps: Callable[[Any], str], data: Any) -> str:
        return "42" + dumps(["publish", data])


def _load_main(wl: Workload, url: str, ks: List[int], subscribe_all: bool, pipe: Any) -> None:
    """Load process: connect ``ks``, publish on cue, report what was seen."""
    raise_nofile()
    conns: List[_Conn] = []
    for k in ks:
        pub, is_sub = wl.role(k)
        conns.append(_Conn(k, pub, Tally(wl.n_publishers, wl.msgs_per_publisher) if is_sub else None))
    driver_cls: Any
    if wl.driver == "socketio":
        from .sio import SocketIODriver
        driver_cls = SocketIODriver
    else:
        driver_cls = {"client": _ClientDriver, "asyncio": _AsyncioDriver, "raw": _RawDriver,
                      "socketio-raw": _RawSocketIODriver}[wl.driver]
    driver: Any = driver_cls(url, conns, subscribe_all)
    driver.wl_compression = wl.compression
    driver.packer = wl.packer
    driver.query = (f"&packer={wl.packer}" if wl.packer != "json" else "") + ("&batch=1" if wl.batch else "")
    try:
        driver.connect(SETUP_TIMEOUT_S / 2)
        pipe.send(("ready", os.getpid()))
        cmd = pipe.recv()
        if cmd[0] != "start":
            return
        t0_ns, hold_s = cmd[1], cmd[2]
        cpu0 = os.times()
        by_pub = {c.pub: c for c in conns if c.pub is not None}
        lag = 0
        if by_pub:
            lag = driver.publish_all(_schedule(wl, sorted(by_pub), t0_ns), by_pub,
                                     _payload_pad(wl.payload_bytes))
        tallies = [c.tally for c in conns if c.tally is not None]
        if hold_s:
            time.sleep(max(0.0, t0_ns / 1e9 + hold_s - time.monotonic()))
        deadline = time.monotonic() + wl.drain_s
        seen, progress_at = -1, time.monotonic()
        while not all(t.complete for t in tallies):  # polling the tallies the connections fill
            now = time.monotonic()
            got = sum(t.received for t in tallies)
            if got != seen:
                seen, progress_at = got, now
            if now >= deadline or now - progress_at > DRAIN_STALL_S:
                break
            time.sleep(0.01)
        cpu1 = os.times()
        lat = array.array("q")
        for t in tallies:
            lat.extend(t.latencies)
        pipe.send(("result", {
            "published": len(by_pub) * wl.msgs_per_publisher,
            "subscribers": len(tallies),
            "received": sum(t.received for t in tallies),
            "distinct": sum(t.distinct for t in tallies),
            "duplicates": sum(t.duplicates for t in tallies),
            "out_of_order": sum(t.out_of_order for t in tallies),
            "malformed": sum(t.malformed for t in tallies),
            "latencies": lat.tobytes(),
            "pub_lag_ns": lag,
            "cpu_s": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "extra": driver.extra_stats(),
        }))
        pipe.recv()  # "close": everyone is done and the server was measured
    finally:
        driver.close()


# --------------------------------------------------------------------------- one run
def _recv(pipe: Any, timeout: float, what: str) -> Any:
    if not pipe.poll(timeout):
        raise TimeoutError(f"no {what} within {timeout:.0f}s")
    return pipe.recv()


def _percentile(sorted_values: Sequence[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    idx = min(len(sorted_values) - 1, max(0, int(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[idx] / 1e6


class _Fleet:
    """The server process and the load processes of one run; stops all of them."""

    def __init__(self) -> None:
        self.ctx = multiprocessing.get_context("spawn")
        self.procs: List[Any] = []

    def spawn(self, target: Callable[..., None], *args: Any) -> Tuple[Any, Any]:
        mine, theirs = self.ctx.Pipe()
        proc = self.ctx.Process(target=target, args=(*args, theirs), daemon=False)
        proc.start()
        theirs.close()
        self.procs.append(proc)
        return proc, mine

    def stop(self) -> None:
        for proc in self.procs:
            proc.join(10.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(5.0)
            if proc.is_alive():
                proc.kill()
                proc.join()


def _start_server(fleet: _Fleet, system: str, wl: Workload,
                  broker: Optional[str] = None) -> Tuple[Any, Any, dict]:
    proc, pipe = fleet.spawn(_server_main, system, wl.heartbeat_ms, wl.rss_at, wl.write_delay_ms,
                             wl.compression, broker)
    info = _recv(pipe, SETUP_TIMEOUT_S, f"{system} server start")
    return proc, pipe, info


def _start_loads(fleet: _Fleet, wl: Workload, url: Union[str, List[str]],
                 subscribe_all: bool) -> List[Tuple[Any, Any]]:
    """Load processes; with several ``url``s their groups go to each in turn."""
    urls = [url] if isinstance(url, str) else url
    ks = list(range(wl.connections))
    groups = [ks[i:i + wl.conns_per_proc] for i in range(0, len(ks), wl.conns_per_proc)]
    loads = [fleet.spawn(_load_main, wl, urls[n % len(urls)], g, subscribe_all)
             for n, g in enumerate(groups)]
    for _, pipe in loads:
        msg = _recv(pipe, SETUP_TIMEOUT_S, "load process ready")
        if msg[0] != "ready":
            raise RuntimeError(f"load process failed to start: {msg!r}")
    return loads


def _stop_server(pipe: Any) -> None:
    try:
        pipe.send("stop")
        _recv(pipe, 30.0, "server stop")
    except (OSError, EOFError, TimeoutError):
        pass


def _finish_run(spipe: Any, loads: List[Tuple[Any, Any]], join_s: float) -> Any:
    """Fetch the server's stats, close every load process, stop the server; return the stats."""
    spipe.send("stats")
    sstats = _recv(spipe, 30.0, "server stats")
    for _, pipe in loads:
        pipe.send("close")
    for proc, _ in loads:
        proc.join(join_s)
    _stop_server(spipe)
    return sstats


def run_once(system: str, wl: Workload) -> dict:
    """Run the fan-out workload once against ``system``; return its measurements."""
    fleet = _Fleet()
    spy: Optional[subprocess.Popen] = None
    spy_out = None
    load_before = os.getloadavg()[0]
    redis_srv: Any = None
    redis_cpu = 0.0
    try:
        if system == REDIS:
            from ..brokers.redis.local_server import RedisServer
            redis_srv = RedisServer().start()
            started = [_start_server(fleet, system, wl, redis_srv.url) for _ in range(REDIS_SERVERS)]
        else:
            started = [_start_server(fleet, system, wl)]
        server, spipe, info = started[0]
        if not system.startswith("sente_lite"):  # the baseline speaks JSON only
            wl = replace(wl, packer="json", batch=False)
        if system == SOCKETIO_ASGI:  # socket.io clients for a socket.io server: the raw
            # driver's engine.io client, or python-socketio's AsyncClient
            wl = replace(wl, driver="socketio-raw" if wl.driver == "raw" else "socketio")
        loads = _start_loads(fleet, wl, [i["url"] for _, _, i in started], subscribe_all=False)
        t0_ns = time.monotonic_ns() + 300_000_000
        cpu0 = sum(_proc_cpu_s(proc.pid) for proc, _, _ in started)
        rcpu0 = _proc_cpu_s(redis_srv.pid) if redis_srv is not None else 0.0
        for _, pipe in loads:
            pipe.send(("start", t0_ns, 0.0))
        if wl.profile_dir:
            spy, spy_out = _start_profile(server.pid, system, wl)
        results = [_recv(pipe, wl.seconds + wl.drain_s + 60.0, "load result")[1]
                   for _, pipe in loads]
        cpu1 = sum(_proc_cpu_s(proc.pid) for proc, _, _ in started)
        if redis_srv is not None:
            redis_cpu = _proc_cpu_s(redis_srv.pid) - rcpu0
        statuses = [_proc_status(proc.pid) for proc, _, _ in started]
        status = max(statuses, key=lambda st: st.get("VmHWM", 0))
        others = []
        for _, pipe, _ in started[1:]:
            pipe.send("stats")
            others.append(_recv(pipe, 30.0, "server stats"))
        sstats = _finish_run(spipe, loads, 30.0)
        for other in others:  # bytes out of every server
            if "wire_bytes_out" in sstats:
                sstats["wire_bytes_out"] += other.get("wire_bytes_out", 0)
        for _, pipe, _ in started[1:]:
            _stop_server(pipe)
    finally:
        if redis_srv is not None:
            redis_srv.close()
        if spy is not None:
            try:
                spy.wait(wl.seconds + 30.0)
            except subprocess.TimeoutExpired:
                spy.terminate()
                spy.wait()
        fleet.stop()

    lat = array.array("q")
    for r in results:
        lat.frombytes(r["latencies"])
    ordered = sorted(lat)
    published = sum(r["published"] for r in results)
    n_subs = sum(r["subscribers"] for r in results)
    expected = published * n_subs
    distinct = sum(r["distinct"] for r in results)
    extra: Counter = Counter()
    for r in results:
        extra.update(r["extra"])
    cpu = cpu1 - cpu0 + redis_cpu  # with Redis: every server and Redis itself
    out = {
        "system": system,
        "servers": len(started),
        "redis_cpu_s": redis_cpu,
        "loadavg_1m_before": load_before,
        "offered_per_s": wl.n_publishers * wl.rate * wl.subscribers,
        "expected": expected,
        "delivered": distinct,
        "lost": expected - distinct,
        "duplicates": sum(r["duplicates"] for r in results),
        "out_of_order": sum(r["out_of_order"] for r in results),
        "malformed": sum(r["malformed"] for r in results),
        "deliveries_per_s": distinct / wl.seconds,
        "p50_ms": _percentile(ordered, 0.50),
        "p90_ms": _percentile(ordered, 0.90),
        "p99_ms": _percentile(ordered, 0.99),
        "max_ms": ordered[-1] / 1e6 if ordered else float("nan"),
        "server_cpu_s": cpu,
        "cpu_us_per_delivery": cpu * 1e6 / distinct if distinct else float("nan"),
        # bytes the server handed its sockets (frames whole, compressed when deflate is on),
        # handshakes and pings included; the baseline does not count them
        "wire_bytes_per_delivery": (sstats["wire_bytes_out"] / distinct
                                    if distinct and "wire_bytes_out" in sstats else float("nan")),
        "server_peak_rss_mb": status.get("VmHWM", 0) / _MB,
        "server_threads": status.get("Threads", 0),
        "client_peak_rss_mb": max(r["peak_rss"] for r in results) / _MB,
        "client_cpu_s": sum(r["cpu_s"] for r in results),
        "pub_lag_max_ms": max(r["pub_lag_ns"] for r in results) / 1e6,
        "server_rss_at_mb": {str(k): v / _MB for k, v in sorted(sstats.get("rss_at", {}).items())},
        "server_objects_at": {str(k): v for k, v in sorted(sstats.get("objects_at", {}).items())},
        "server_closes": sstats.get("closes_by_code", {}),
        "server_slow_consumer_closes": sstats.get("slow_consumer_closes", 0),
        "client_extra": dict(extra),
    }
    if spy_out is not None:
        out["profile"] = spy_out
    return out


def _start_profile(pid: int, system: str, wl: Workload) -> Tuple[subprocess.Popen, str]:
    exe = shutil.which("py-spy")
    if exe is None:
        raise RuntimeError("--profile needs py-spy (pip install py-spy)")
    assert wl.profile_dir is not None
    os.makedirs(wl.profile_dir, exist_ok=True)
    path = os.path.join(wl.profile_dir, f"{system}-{pid}.txt")
    cmd = [exe, "record", "--pid", str(pid), "--duration", str(max(1, int(wl.seconds))),
           "--rate", "100", "--gil", "--format", "raw", "--nonblocking", "--output", path]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), path


_LINE_RE = re.compile(r":\d+\)")


def profile_top(path: str, n: int = 15) -> Tuple[List[Tuple[str, float]], List[Tuple[str, float]]]:
    """Top ``n`` functions of a py-spy raw profile: (self %, inclusive %) lists."""
    self_c: Counter = Counter()
    incl: Counter = Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            c = int(count)
            total += c
            frames = [_LINE_RE.sub(")", fr) for fr in stack.split(";")]
            self_c[frames[-1]] += c
            for fr in set(frames):
                incl[fr] += c
    if not total:
        return [], []
    return ([(k, 100.0 * v / total) for k, v in self_c.most_common(n)],
            [(k, 100.0 * v / total) for k, v in incl.most_common(n)])


# --------------------------------------------------------------------------- idle mode
def run_idle(system: str, wl: Workload, hold_s: float) -> dict:
    """Open ``wl.subscribers`` idle subscribed connections, hold them ``hold_s`` seconds
    with heartbeats on, and report what the server spent on them."""
    fleet = _Fleet()
    try:
        server, spipe, info = _start_server(fleet, system, wl)
        time.sleep(0.5)  # let the fresh server settle before the reference reading
        before = _proc_status(server.pid)
        t_conn = time.monotonic()
        loads = _start_loads(fleet, wl, info["url"], subscribe_all=True)
        connect_s = time.monotonic() - t_conn
        connected = _proc_status(server.pid)
        spipe.send("stats")
        sstats0 = _recv(spipe, 30.0, "server stats")
        t0_ns = time.monotonic_ns()
        for _, pipe in loads:
            pipe.send(("start", t0_ns, hold_s))
        results = [_recv(pipe, hold_s + wl.drain_s + 60.0, "load result")[1] for _, pipe in loads]
        after = _proc_status(server.pid)
        sstats = _finish_run(spipe, loads, 60.0)
    finally:
        fleet.stop()
    extra: Counter = Counter()
    min_pings = min(r["extra"].get("min_pings", 0) for r in results)
    for r in results:
        extra.update({k: v for k, v in r["extra"].items() if k != "min_pings"})
    n = wl.connections
    return {
        "system": system, "connections": n, "hold_s": hold_s, "heartbeat_ms": wl.heartbeat_ms,
        "connect_s": connect_s,
        "server_connections_at_start": sstats0.get("connections"),
        "server_connections_at_end": sstats.get("connections"),
        "server_closes": sstats.get("closes_by_code", {}),
        "client_closed": extra.get("closed", 0),
        "connect_failures": extra.get("connect_failures", 0),
        "min_pings_per_conn": min_pings,
        "server_rss_before_mb": before["VmRSS"] / _MB,
        "server_rss_connected_mb": connected["VmRSS"] / _MB,
        "server_rss_after_mb": after["VmRSS"] / _MB,
        "rss_per_conn_kb": (after["VmRSS"] - before["VmRSS"]) / n / 1024,
        "server_threads": after["Threads"],
        "server_fds": after["FDs"],
        "client_peak_rss_mb": max(r["peak_rss"] for r in results) / _MB,
    }


# --------------------------------------------------------------------------- reporting
_COLUMNS = [
    ("system", "system", None), ("delivered", "delivered", "d"), ("lost", "lost", "d"),
    ("duplicates", "dup", "d"), ("out_of_order", "ooo", "d"),
    ("deliveries_per_s", "deliv/s", ".0f"), ("p50_ms", "p50 ms", ".2f"),
    ("p90_ms", "p90 ms", ".2f"), ("p99_ms", "p99 ms", ".2f"), ("max_ms", "max ms", ".1f"),
    ("server_cpu_s", "srv CPU s", ".2f"), ("cpu_us_per_delivery", "srv CPU us/deliv", ".2f"),
    ("wire_bytes_per_delivery", "srv out B/deliv", ".0f"),
    ("server_peak_rss_mb", "srv RSS MB", ".1f"), ("client_peak_rss_mb", "cli RSS MB", ".1f"),
    ("client_cpu_s", "cli CPU s", ".1f"), ("pub_lag_max_ms", "pub lag ms", ".1f"),
]
_NUMERIC = [key for key, _, fmt in _COLUMNS if fmt is not None]


def median_of(runs: List[dict]) -> dict:
    """Per-metric median over ``runs`` (of one system)."""
    out = {"system": runs[0]["system"], "runs": len(runs)}
    for key in _NUMERIC:
        values = [r[key] for r in runs]
        med = statistics.median(values)
        out[key] = int(med) if all(isinstance(v, int) for v in values) and med == int(med) else med
    return out


def ratios(mine: dict, base: dict) -> dict:
    """sente_lite / baseline for p50, p99 and server CPU per delivery."""
    def ratio(key: str) -> float:
        return mine[key] / base[key] if base[key] else float("nan")
    return {"p50": ratio("p50_ms"), "p99": ratio("p99_ms"),
            "cpu_per_delivery": ratio("cpu_us_per_delivery")}


def _table(rows: List[dict], label: Optional[str] = None) -> str:
    from tabulate import tabulate
    headers = ([] if label is None else [""]) + [h for _, h, _ in _COLUMNS]
    body = []
    for r in rows:
        line = [] if label is None else [r.get(label, "")]
        for key, _, fmt in _COLUMNS:
            v = r[key]
            if fmt is None:
                line.append(v)
            elif fmt == "d":
                line.append(f"{v:,.0f}")
            else:
                line.append(format(v, fmt))
        body.append(line)
    return tabulate(body, headers=headers, disable_numparse=True, stralign="right")


def describe(wl: Workload) -> str:
    """One line saying what the workload is."""
    shape = (f"--same: {wl.subscribers} connections each publish+subscribe" if wl.same
             else f"{wl.subscribers} subscribers, {wl.publishers} publishers")
    procs = -(-wl.connections // wl.conns_per_proc)
    return (f"{shape}; {wl.rate:g} msg/s per publisher, {wl.seconds:g} s, ~{wl.payload_bytes} B "
            f"payload; offered {wl.n_publishers * wl.rate * wl.subscribers:,.0f} deliveries/s; "
            f"load: {procs} process(es) x {wl.conns_per_proc} conn, driver={wl.driver}"
            + (f"; sente_lite write_delay_ms={wl.write_delay_ms:g}" if wl.write_delay_ms else ""))


def meets_targets(row: dict) -> List[str]:
    """The issue's per-system targets that ``row`` misses (empty when all met)."""
    misses = []
    for key in ("lost", "duplicates", "out_of_order"):
        if row[key]:
            misses.append(f"{key}={row[key]}")
    if not row["p99_ms"] < P99_TARGET_MS:
        misses.append(f"p99={row['p99_ms']:.2f}ms (target < {P99_TARGET_MS:g})")
    if not row["p50_ms"] < P50_TARGET_MS:
        misses.append(f"p50={row['p50_ms']:.2f}ms (target < {P50_TARGET_MS:g})")
    return misses


def run_compare(wl: Workload, runs: int, baseline: bool,
                emit: Callable[[str], None] = print, history_off: bool = False,
                redis: bool = False) -> dict:
    """Run sente_lite (and the baseline, sente_lite without history, sente_lite on
    Redis) ``runs`` times, alternating; medians and ratios."""
    systems = (list(SYSTEMS if baseline else SYSTEMS[:1]) + ([NO_HISTORY] if history_off else [])
               + ([REDIS] if redis else []))
    per: Dict[str, List[dict]] = {s: [] for s in systems}
    for i in range(runs):
        order = systems if i % 2 == 0 else systems[::-1]
        for s in order:
            r = run_once(s, wl)
            r["run"] = i + 1
            per[s].append(r)
            emit(f"  run {i + 1}/{runs} {s}: delivered {r['delivered']:,} lost {r['lost']:,} "
                 f"p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms "
                 f"CPU {r['cpu_us_per_delivery']:.2f} us/deliv "
                 f"(machine load average before: {r['loadavg_1m_before']:.1f})")
            if "profile" in r:
                emit(f"    profile: {r['profile']}")
    medians = {s: median_of(per[s]) for s in systems}
    out: Dict[str, Any] = {"workload": asdict(wl), "runs": per, "medians": medians}
    if baseline:
        out["ratios"] = ratios(medians["sente_lite"], medians["baseline"])
    if history_off:
        out["history_ratios"] = ratios(medians["sente_lite"], medians[NO_HISTORY])
    if redis:
        out["redis_ratios"] = ratios(medians[REDIS], medians["sente_lite"])
    return out


def print_compare(result: dict, emit: Callable[[str], None] = print) -> None:
    """Print the per-run table, the median table and the ratios."""
    rows = [r for s in result["runs"].values() for r in s]
    if len(rows) > len(result["medians"]):
        emit(_table(sorted(rows, key=lambda r: (r["system"], r["run"])), label="run"))
        emit("")
    emit(f"medians of {next(iter(result['medians'].values()))['runs']} run(s):")
    emit(_table(list(result["medians"].values())))
    if "ratios" in result:
        rt = result["ratios"]
        emit(f"\nsente_lite / baseline: p99 x{rt['p99']:.2f}, p50 x{rt['p50']:.2f}, "
             f"server CPU per delivery x{rt['cpu_per_delivery']:.2f}")
    if "redis_ratios" in result:
        rt = result["redis_ratios"]
        emit(f"{REDIS_SERVERS} servers on Redis / 1 server: p99 x{rt['p99']:.2f}, p50 x{rt['p50']:.2f}, "
             f"CPU per delivery (servers + Redis) x{rt['cpu_per_delivery']:.2f}")
    if "history_ratios" in result:
        rt = result["history_ratios"]
        emit(f"history on / off: p99 x{rt['p99']:.2f}, p50 x{rt['p50']:.2f}, "
             f"server CPU per delivery x{rt['cpu_per_delivery']:.2f}")
    for s, m in result["medians"].items():
        misses = meets_targets(m)
        emit(f"{s}: " + ("meets 0 loss/dup/ooo, p99 < 10 ms, p50 < 1.5 ms" if not misses
                         else "misses " + ", ".join(misses)))
    for s, runs in result["runs"].items():
        notes = set()
        for r in runs:
            if r["server_closes"]:
                notes.add(f"server closes by code {r['server_closes']}")
            odd = {k: v for k, v in r["client_extra"].items() if v and k != "min_pings"}
            if odd:
                notes.add(f"client {odd}")
            if r["server_rss_at_mb"]:
                marks = ", ".join(f"{int(k):,}: {v:.1f} MB" for k, v in r["server_rss_at_mb"].items())
                notes.add(f"run {r['run']} server RSS after deliveries {marks}")
                objs = ", ".join(f"{int(k):,}: {v:,}" for k, v in r["server_objects_at"].items())
                notes.add(f"run {r['run']} server Python objects after deliveries {objs}")
        for note in sorted(notes):
            emit(f"  {s}: {note}")


# --------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the bench options to ``parser`` (used by ``sente-lite bench``)."""
    parser.add_argument("-S", "--subscribers", type=int, default=5,
                        help="subscriber connections (with --same: all connections)")
    parser.add_argument("-P", "--publishers", type=int, default=5,
                        help="publisher connections (ignored with --same)")
    parser.add_argument("--same", action="store_true",
                        help="every connection both subscribes and publishes")
    parser.add_argument("-R", "--rate", type=float, default=100.0,
                        help="messages per second per publisher (paced)")
    parser.add_argument("--rates", default=None,
                        help="saturation sweep: comma-separated rates; reports the highest with "
                             f"0 loss and p99 < {P99_TARGET_MS:g} ms")
    parser.add_argument("-T", "--seconds", type=float, default=10.0, help="publishing time")
    parser.add_argument("--payload-bytes", type=int, default=100,
                        help="approximate JSON size of each message's data")
    parser.add_argument("--conns-per-proc", type=int, default=1,
                        help="load-generator connections per process (default 1: a process each)")
    parser.add_argument("--driver", choices=("client", "asyncio", "raw"), default="client",
                        help="load-generator client: sente_lite.Client (client), websockets' "
                             "asyncio client (asyncio), or a minimal asyncio WebSocket protocol "
                             "(raw, the cheapest per message)")
    parser.add_argument("--heartbeat-ms", type=int, default=5000)
    parser.add_argument("--write-delay-ms", type=float, default=0.0,
                        help="sente_lite's Server(write_delay_ms=): trade up to this much latency "
                             "for fewer writes (default 0, as the server's)")
    parser.add_argument("--drain", type=float, default=30.0,
                        help="at most this many seconds to wait for in-flight deliveries after "
                             f"publishing (less when nothing arrives for {DRAIN_STALL_S:g} s)")
    parser.add_argument("--baseline", action="store_true",
                        help="also run the websockets asyncio baseline; print ratios")
    parser.add_argument("--runs", type=int, default=1, help="runs per system; medians reported")
    parser.add_argument("--packer", choices=("json", "msgpack"), default="json",
                        help="the raw driver's packer (sente_lite only; the baseline speaks JSON)")
    parser.add_argument("--batch", action="store_true",
                        help="the raw driver asks for batches (batch=1): frames waiting for a busy "
                             "connection come as one chsk/batch frame")
    parser.add_argument("--compression", choices=("none", "deflate"), default="none",
                        help="sente_lite's Server(compression=); with --driver asyncio the load "
                             "generators offer permessage-deflate")
    parser.add_argument("--history-off-too", action="store_true",
                        help="also run sente_lite with history_size=0 and print the cost of "
                             "channel history (history on / off)")
    parser.add_argument("--broker", choices=("redis",), default=None,
                        help=f"also run {REDIS_SERVERS} servers sharing a redis-server started "
                             "here (connections split across them) and print it beside one "
                             "server without (needs redis-server and the [redis] extra)")
    parser.add_argument("--idle", type=int, default=0, metavar="N",
                        help="idle mode: hold N subscribed idle connections for --seconds")
    parser.add_argument("--rss-at", default="",
                        help="comma-separated server delivery counts at which to sample server RSS")
    parser.add_argument("--profile", default=None, metavar="DIR",
                        help="record the server with py-spy during publishing into DIR")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write results as JSON")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a target (0 loss, p99/p50, CPU ratio <= 1) is missed")


def _workload(args: argparse.Namespace) -> Workload:
    return Workload(
        subscribers=args.idle or args.subscribers, publishers=0 if args.idle else args.publishers,
        same=args.same and not args.idle, rate=args.rate, seconds=args.seconds,
        payload_bytes=args.payload_bytes, conns_per_proc=max(1, args.conns_per_proc),
        driver=args.driver, heartbeat_ms=args.heartbeat_ms, drain_s=args.drain,
        write_delay_ms=args.write_delay_ms,
        rss_at=tuple(int(x) for x in args.rss_at.split(",") if x.strip()),
        profile_dir=args.profile, packer=args.packer, batch=args.batch,
        compression=None if args.compression == "none" else args.compression,
    )


def run(args: argparse.Namespace) -> int:
    """Run the benchmark the parsed ``args`` describe; print; return the exit status."""
    raise_nofile()
    wl = _workload(args)
    failed = False
    if args.idle:
        if wl.driver == "client":
            print("idle mode uses --driver raw (two threads per sente_lite.Client is the "
                  "load generator's cost, not the server's)")
            wl = replace(wl, driver="raw")
        systems = list(SYSTEMS if args.baseline else SYSTEMS[:1])
        rows = [run_idle(s, wl, args.seconds) for s in systems]
        from tabulate import tabulate
        keys = list(rows[0].keys())

        def cell(v: Any) -> Any:
            return f"{v:,.1f}" if isinstance(v, float) else v

        print(tabulate([[k] + [cell(r[k]) for r in rows] for k in keys[1:]],
                       headers=["idle"] + [r["system"] for r in rows], disable_numparse=True,
                       floatfmt=".1f"))
        for r in rows:
            ok = (r["server_connections_at_end"] == r["connections"] and not r["client_closed"]
                  and not r["connect_failures"] and r["min_pings_per_conn"] >= 1)
            print(f"{r['system']}: {'all' if ok else 'NOT all'} {r['connections']} connections "
                  f"served for {r['hold_s']:g} s")
            failed |= not ok
        result: Any = {"idle": rows}
    elif args.rates:
        rates = [float(x) for x in args.rates.split(",") if x.strip()]
        result = {"sweep": []}
        best: Dict[str, Optional[float]] = {}
        for rate in rates:
            wr = replace(wl, rate=rate)
            print(f"\n== rate {rate:g}: {describe(wr)}")
            res = run_compare(wr, args.runs, args.baseline)
            print_compare(res)
            result["sweep"].append(res)
            for s, m in res["medians"].items():
                if not m["lost"] and m["p99_ms"] < P99_TARGET_MS:
                    best[s] = max(best.get(s) or 0.0, rate)
                else:
                    best.setdefault(s, None)
        for s, rate in best.items():
            if rate is None:
                print(f"{s}: no rate in the sweep had 0 loss and p99 < {P99_TARGET_MS:g} ms")
            else:
                print(f"{s}: highest rate with 0 loss and p99 < {P99_TARGET_MS:g} ms: {rate:g} "
                      f"msg/s per publisher ({rate * wl.n_publishers * wl.subscribers:,.0f} "
                      f"deliveries/s)")
        result["best"] = best
    else:
        print(describe(wl))
        result = run_compare(wl, args.runs, args.baseline, history_off=args.history_off_too,
                             redis=args.broker == "redis")
        print_compare(result)
        for s, m in result["medians"].items():
            failed |= bool(meets_targets(m)) if s == "sente_lite" else False
        if "ratios" in result:
            failed |= not result["ratios"]["cpu_per_delivery"] <= 1.0
        for runs in result["runs"].values():
            for r in runs:
                if "profile" in r:
                    self_top, incl_top = profile_top(r["profile"])
                    print(f"\nprofile of {r['system']} run {r['run']} ({r['profile']}), "
                          "top by own time:")
                    for name, pct in self_top:
                        print(f"  {pct:5.1f}%  {name}")
                    print("top inclusive:")
                    for name, pct in incl_top:
                        print(f"  {pct:5.1f}%  {name}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1, default=str)
    return 1 if (args.check and failed) else 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``sente-lite bench`` / ``python -m sente_lite.bench.fanout``."""
    parser = argparse.ArgumentParser(prog="sente-lite bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    from .fanout import main as _main  # spawned children import this module by name

    sys.exit(_main())

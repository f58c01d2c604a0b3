"""python-socketio for the benchmarks: the room every connection joins and publishes to, the
client that joins it (``socketio.AsyncClient``, websocket transport), a load-generator driver
of such clients for :mod:`sente_lite.bench.fanout`, and ``socketio.ASGIApp`` under uvicorn
(system ``socketio_asgi``). Needs ``pip install python-socketio aiohttp`` (the client's
websocket transport is aiohttp's); not part of the package's dependencies."""

from __future__ import annotations

import asyncio
import importlib.util
import threading
import time
from collections import Counter
from typing import Any, Callable, Dict, List, Optional, Tuple

#: The room every connection joins: the sente_lite benchmark's one channel.
ROOM = "bench"
#: (module, the package that provides it) that the socket.io side needs.
NEEDS = (("socketio", "python-socketio"), ("aiohttp", "aiohttp"))
#: How many connection attempts the driver has in flight at once.
CONNECT_CONCURRENCY = 20


def missing() -> List[str]:
    """The packages of :data:`NEEDS` that are not installed (by their pip names)."""
    return [pkg for module, pkg in NEEDS if importlib.util.find_spec(module) is None]


def install_room(sio: Any) -> None:
    """The server's two events: ``join`` (enter the room) and ``publish`` (emit ``msg`` with
    the data to the whole room, the sender included, as a sente_lite channel does)."""

    @sio.event
    async def join(sid: str, data: Any = None) -> None:
        await sio.enter_room(sid, ROOM)

    @sio.event
    async def publish(sid: str, data: Any = None) -> None:
        await sio.emit("msg", data, room=ROOM)


async def connect_room(url: str, on_msg: Optional[Callable[[Any], None]],
                       timeout: float = 10.0) -> Any:
    """A ``socketio.AsyncClient`` connected to ``url`` (``http://host:port``) over the
    websocket transport; with ``on_msg`` it joined the room and gets ``on_msg(data)``."""
    import socketio

    c = socketio.AsyncClient(reconnection=False)
    if on_msg is not None:
        c.on("msg", on_msg)
    await c.connect(url, transports=["websocket"], wait_timeout=int(timeout))
    if on_msg is not None:
        await c.call("join", {}, timeout=timeout)
    return c


class SocketIODriver:
    """The fan-out benchmark's connections as ``socketio.AsyncClient`` on one event loop
    thread (the same interface as fanout's drivers: connect, publish_all, extra_stats, close).
    A delivery is the room's ``msg`` event; it carries no offset."""

    def __init__(self, url: str, conns: List[Any], subscribe_all: bool) -> None:
        self.url = url.replace("ws://", "http://", 1)
        self.conns = conns
        self.subscribe_all = subscribe_all
        self.connect_failures = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bench-sio-loop",
                                       daemon=True)
        self.thread.start()

    def _run(self, coro: Any, timeout: Optional[float] = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def connect(self, timeout: float) -> None:
        self._run(self._connect_all(timeout), timeout + 5.0)

    async def _connect_all(self, timeout: float) -> None:
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one(c: Any) -> None:
            async with gate:
                try:
                    c.handle = await asyncio.wait_for(self._open(c, timeout), timeout)
                except Exception:
                    self.connect_failures += 1
                    raise

        await asyncio.gather(*(one(c) for c in self.conns))

    async def _open(self, c: Any, timeout: float) -> Any:
        tally = c.tally
        on_msg: Optional[Callable[[Any], None]] = None
        if tally is not None:
            def on_msg(data: Any) -> None:
                tally.record(data, None, time.monotonic_ns())
        elif self.subscribe_all:
            def on_msg(data: Any) -> None:
                pass
        return await connect_room(self.url, on_msg, timeout)

    def publish_all(self, schedule: List[Tuple[int, int, int]], by_pub: Dict[int, Any],
                    pad: str) -> int:
        return self._run(self._publish_all(schedule, by_pub, pad))  # type: ignore[no-any-return]

    async def _publish_all(self, schedule: List[Tuple[int, int, int]], by_pub: Dict[int, Any],
                           pad: str) -> int:
        clock = time.monotonic_ns
        lag = 0
        for due, pi, seq in schedule:
            now = clock()
            if due > now:
                await asyncio.sleep((due - now) / 1e9)
            else:
                lag = max(lag, now - due)
            await by_pub[pi].handle.emit("publish", {"p": pi, "s": seq, "t": clock(), "x": pad})
        return lag

    def extra_stats(self) -> Dict[str, int]:
        out: Counter = Counter(connect_failures=self.connect_failures)
        for c in self.conns:
            if c.handle is not None and not c.handle.connected:
                out["closed"] += 1
        return dict(out)

    def close(self) -> None:
        async def close_all() -> None:
            await asyncio.gather(*(c.handle.disconnect() for c in self.conns if c.handle),
                                 return_exceptions=True)
        try:
            self._run(close_all(), 30.0)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5.0)
            self.loop.close()


def asgi_server(heartbeat_ms: int) -> Any:
    """python-socketio's ``ASGIApp`` over an ``AsyncServer(async_mode="asgi")`` with the
    room's events, served by uvicorn as the ASGI face is (:class:`.asgi_server.Uvicorn`);
    pings every ``heartbeat_ms``, as the sente_lite servers' heartbeat."""
    import socketio

    from .asgi_server import Uvicorn

    sio = socketio.AsyncServer(async_mode="asgi", ping_interval=heartbeat_ms / 1000,
                               ping_timeout=3 * heartbeat_ms / 1000)
    install_room(sio)
    return Uvicorn(socketio.ASGIApp(sio), "")


__all__ = ["ROOM", "NEEDS", "missing", "install_room", "connect_room", "SocketIODriver",
           "asgi_server"]

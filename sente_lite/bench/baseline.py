"""BASELINE SERVER for ``sente-lite bench --baseline``. Not part of sente_lite's API.

The yardstick the benchmark compares sente_lite's server against: a minimal
channel server written the idiomatic way on ``websockets``' asyncio
implementation, speaking only the subset of protocol v1 the benchmark uses:

* the ``chsk/handshake`` frame (uid = client-id, no CSRF);
* ``sente-lite/subscribe`` as a request or plain event;
* ``sente-lite/publish`` (plain or as a request), delivered as
  ``sente-lite/channel-msg`` with per-channel offsets, encoded once per publish
  and fanned out with :func:`websockets.asyncio.server.broadcast`;
* ``chsk/ws-ping`` every ``heartbeat_ms`` and ``chsk/ws-pong`` answers.

Everything else (validation, limits, auth, slow-consumer handling, metrics) is
deliberately left out: it is a floor to measure against, not a server to use.
It runs its event loop on one thread so the benchmark can drive it exactly like
:class:`sente_lite.Server` (``start()``, ``stats()``, ``stop()``).
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from typing import Any, Dict, Optional, Set
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class BaselineServer:
    """Minimal asyncio channel server (see the module docstring). Threaded wrapper."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, heartbeat_ms: int = 5000) -> None:
        self.host = host
        self.requested_port = port
        self.heartbeat_ms = heartbeat_ms
        self.port = 0
        self.server_id = uuid.uuid4().hex[:16]
        self._subscribers: Dict[str, Set[ServerConnection]] = {}
        self._offsets: Dict[str, int] = {}
        self._conns: Set[ServerConnection] = set()
        self._counts = {"publishes": 0, "deliveries": 0, "connections_opened": 0}
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._started = threading.Event()
        self._stop: Optional[asyncio.Event] = None
        self._seq = 0

    @property
    def url(self) -> str:
        """The WebSocket URL clients connect to."""
        return f"ws://{self.host}:{self.port}/chsk"

    def start(self) -> "BaselineServer":
        """Start the event loop thread and wait until the port is bound."""
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()),
                                        name="baseline-loop", daemon=True)
        self._thread.start()
        if not self._started.wait(10.0):
            raise RuntimeError("baseline server did not start within 10 s")
        return self

    def stop(self) -> None:
        """Stop serving and join the loop thread."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10.0)

    def stats(self) -> dict:
        """Counters: publishes, deliveries, connections (live)."""
        out = dict(self._counts)
        out["connections"] = len(self._conns)
        return out

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(self._handle, self.host, self.requested_port, compression=None,
                         ping_interval=None, max_size=1 << 20) as server:
            self.port = server.sockets[0].getsockname()[1]
            beat = asyncio.create_task(self._heartbeat())
            self._started.set()
            await self._stop.wait()
            beat.cancel()

    async def _heartbeat(self) -> None:
        ping = _dumps(["chsk/ws-ping"])
        while True:
            await asyncio.sleep(self.heartbeat_ms / 1000.0)
            broadcast(self._conns, ping)

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        query = parse_qs(urlsplit(ws.request.path).query)
        uid = (query.get("client-id") or [uuid.uuid4().hex])[0]
        self._seq += 1
        await ws.send(_dumps(["chsk/handshake", [uid, None, {
            "conn-id": f"{self.server_id}-{self._seq}", "client-id": uid,
            "server-id": self.server_id, "protocol": 1, "heartbeat-ms": self.heartbeat_ms,
            "max-message-bytes": 1 << 20}, True]]))
        self._conns.add(ws)
        self._counts["connections_opened"] += 1
        mine: Set[str] = set()
        try:
            async for text in ws:
                self._on_frame(ws, uid, mine, text)
        except ConnectionClosed:
            pass
        finally:
            self._conns.discard(ws)
            for channel in mine:
                self._subscribers.get(channel, set()).discard(ws)

    def _on_frame(self, ws: ServerConnection, uid: str, mine: Set[str], text: Any) -> None:
        frame = json.loads(text)
        event = frame[0]
        data = frame[1] if len(frame) > 1 else None
        cb_id = frame[2] if len(frame) > 2 else None
        if event == "sente-lite/publish":
            channel = data["channel-id"]
            offset = self._offsets.get(channel, 0) + 1
            self._offsets[channel] = offset
            subs = self._subscribers.get(channel, ())
            if subs:
                broadcast(subs, _dumps(["sente-lite/channel-msg", {
                    "channel-id": channel, "data": data.get("data"), "from": uid,
                    "offset": offset, "epoch": self.server_id}]))
            self._counts["publishes"] += 1
            self._counts["deliveries"] += len(subs)
            if cb_id is not None:
                self._reply(ws, cb_id, {"channel-id": channel, "offset": offset,
                                        "delivered": len(subs)})
        elif event == "chsk/ws-ping":
            broadcast((ws,), _dumps(["chsk/ws-pong"]))
        elif event == "sente-lite/subscribe":
            channel = data["channel-id"]
            self._subscribers.setdefault(channel, set()).add(ws)
            mine.add(channel)
            body = {"channel-id": channel, "offset": self._offsets.get(channel, 0),
                    "epoch": self.server_id}
            if cb_id is not None:
                self._reply(ws, cb_id, body)
            else:
                broadcast((ws,), _dumps(["sente-lite/subscribed", body]))

    @staticmethod
    def _reply(ws: ServerConnection, cb_id: str, body: Any) -> None:
        broadcast((ws,), _dumps(["chsk/reply", body, cb_id]))


__all__ = ["BaselineServer"]

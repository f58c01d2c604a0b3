"""What a :class:`sente_lite.asgi.App` says to its connections, users and channels, and
what it tells of itself: coroutines over the calls every face shares
(:class:`~sente_lite.core.messaging.MessagingMixin`). A call that may wait on the broker
(Redis: ``broker.waits_on_io``) runs on a worker thread, so the event loop never waits
on it; with the in-process broker it runs at once (it never blocks).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Mapping, Optional

from ..brokers.base import Broker
from ..core.hub import Hub
from ..core.messaging import MessagingMixin
from ..core.metrics import LatencyHistogram
from ..core.presence import Member, PresenceCalls
from ..core.security import Gate
from ..counters import Counters
from ..errors import Disconnected
from ..wire import protocol as p
from ..wire.channels import Published


#: Counts each connection keeps; stats() adds those of the ended ones, as Server.stats().
CONN_TOTALS = ("frames_in", "frames_out", "bytes_in", "bytes_out")


class Face(MessagingMixin, PresenceCalls):
    """The shared, blocking calls over one App's hub (``srv.publish`` and the like)."""

    def __init__(self, hub: Hub, channels: Broker, counters: Counters,
                 max_channel_id_chars: int) -> None:
        self._hub = hub
        self.channels = channels
        self.counters = counters
        self.max_channel_id_chars = max_channel_id_chars


class CallsMixin:
    """The App's public calls (see the module)."""

    server_id: str
    channels: Broker
    counters: Counters
    _hub: Hub
    _face: Face
    _dispatcher: Any
    _gate: Gate
    _latency: LatencyHistogram
    _started_at: float
    _closes_by_code: Dict[int, int]
    _closed_totals: Dict[str, int]

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    async def publish(self, channel_id: str, data: Any = None, *,
                      idempotency_key: Optional[str] = None, publisher: Optional[str] = None,
                      traceparent: Optional[str] = None) -> Published:
        """Publish on a channel as the server (``from`` is null); the same path as the
        clients' publishes. ``idempotency_key``: a publish id (a resend with it is
        answered ``duplicate=True`` and not delivered again). Returns the
        :class:`~sente_lite.wire.channels.Published` (offset, epoch, delivered)."""
        return await self._call(self._face.publish, channel_id, data,
                                idempotency_key=idempotency_key, publisher=publisher,
                                traceparent=traceparent)

    async def send_to_user(self, uid: str, event: str, data: Any = None) -> int:
        """Send an event to every live connection of ``uid`` (with Redis, on every
        server); how many here took it."""
        return await self._call(self._face.send_to_user, uid, event, data)

    async def broadcast(self, event: str, data: Any = None) -> int:
        """Send an event to every live connection (with Redis, on every server)."""
        return await self._call(self._face.broadcast, event, data)

    async def disconnect_user(self, uid: str, code: int = p.CLOSE_NORMAL, reason: str = "") -> int:
        """Close every connection of ``uid`` (with Redis, on every server); how many here."""
        return await self._call(self._face.disconnect_user, uid, code, reason)

    async def history(self, channel_id: str, limit: int = 100,
                      since: Optional[Mapping[str, Any]] = None,
                      reverse: bool = False, page: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
        """A page of a channel's kept messages, as ``Server.history`` gives it."""
        return await self._call(self._face.history, channel_id, limit, since, reverse, page)

    async def presence_of(self, channel_id: str) -> List[Member]:
        """The members of ``channel_id`` on every server, as ``Server.presence_of`` gives them."""
        return await self._call(self._face.presence_of, channel_id)  # type: ignore[no-any-return]

    async def presence_stats(self, channel_id: str) -> Dict[str, int]:
        """``{"members": N, "users": M}`` of ``channel_id``, as ``Server.presence_stats``."""
        return await self._call(self._face.presence_stats, channel_id)  # type: ignore[no-any-return]

    async def subscribe(self, target: str, channel_id: str) -> int:
        """Subscribe connection (or user) ``target`` to ``channel_id``, as ``Server.subscribe``."""
        return await self._call(self._dispatcher.server_subs.subscribe, target, channel_id)

    async def unsubscribe(self, target: str, channel_id: str) -> int:
        """Take back what :meth:`subscribe` gave, as ``Server.unsubscribe``."""
        return await self._call(self._dispatcher.server_subs.unsubscribe, target, channel_id)

    def send(self, conn_id: str, event: str, data: Any = None) -> bool:
        """Queue an event to one connection (never blocks). False when it is gone."""
        return self._face.send(conn_id, event, data)

    def disconnect(self, conn_id: str, code: int = p.CLOSE_NORMAL, reason: str = "") -> bool:
        """Close one connection. False when it is not live."""
        return self._face.disconnect(conn_id, code, reason)

    async def request(self, conn_id: str, event: str, data: Any = None,
                      timeout: float = 5.0) -> Any:
        """Ask a client: send a request and await its reply (``RemoteError``,
        ``RequestTimeout``, ``Disconnected``)."""
        conn = self._hub.conns.get(conn_id)
        if conn is None:
            raise Disconnected(f"no live connection {conn_id}")
        return await conn.request(event, data, timeout)

    # -- inspection ---------------------------------------------------------------------
    def connection(self, conn_id: str) -> Any:
        """The live connection ``conn_id`` (None when gone)."""
        return self._hub.conns.get(conn_id)

    def connections(self) -> List[dict]:
        """One map per live connection, as ``Server.connections()``: ids, remote, channels,
        queue, seconds connected, frames in and out."""
        now = time.time()
        return [{"conn-id": c.conn_id, "uid": c.uid, "client-id": c.client_id,
                 "remote": c.remote_address, "channels": self.channels.channels_of(c.conn_id),
                 "queued-bytes": c.queued_bytes, "connected-s": round(now - c.connected_at, 3),
                 "frames-in": c.frames_in, "frames-out": c.frames_out}
                for c in self._hub.snapshot()]

    def presence(self, uid: str) -> int:
        """Live connections of ``uid`` here."""
        return self._hub.presence(uid)

    def user_count(self) -> int:
        return self._hub.user_count()

    def channel_counts(self) -> Dict[str, int]:
        return dict(self.channels.subscriber_counts())

    def nodes(self) -> List[str]:
        across = self._hub.presence_broker
        return sorted(across.nodes()) if across is not None else [self.server_id]

    def stats(self) -> dict:
        """Counters since start, as ``Server.stats()`` names them where they apply."""
        out: Dict[str, Any] = self.counters.snapshot()
        live = self._hub.snapshot()
        out["closes_by_code"] = dict(self._closes_by_code)
        out["connections"] = len(live)
        out["users"] = self._hub.user_count()
        out["remembered_clients"] = self._hub.remembered_clients()
        for key in CONN_TOTALS:
            out[key] = self._closed_totals[key] + sum(getattr(c, key) for c in live)
        out["queued_bytes"] = sum(c.queued_bytes for c in live)
        out["inbound_frames"] = sum(c.inflow.frames for c in live)
        out["inbound_bytes"] = sum(c.inflow.bytes for c in live)
        out.update(self.channels.stats())
        out.update(self._gate.stats())
        out["request_latency"] = self._latency.summary()
        out["uptime_s"] = round(time.monotonic() - self._started_at, 3) if self._started_at else 0.0
        out["server_id"] = self.server_id
        return out


__all__ = ["CallsMixin", "Face", "CONN_TOTALS"]

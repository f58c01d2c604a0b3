"""What a :class:`sente_lite.Server` tells about itself: ``stats()``, ``connections()``,
presence of users (part of the Server class)."""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, List

from ..counters import Counter

from .ports import ConnectionPort

#: Counts each connection keeps; stats() adds those of the ended ones.
PER_CONN_TOTALS = ("frames_in", "frames_out", "writes_out", "frames_inline", "bytes_in", "bytes_out",
                   "wire_bytes_out", "batches_out")


class InspectionMixin:
    """Counters and registries of a server, read from any thread."""

    _count_lock: threading.Lock

    def presence(self, uid: str) -> int:
        """How many live connections user ``uid`` has on this server (with a shared
        broker: on every server; raises BrokerUnavailable while it is down)."""
        across = self._hub.presence_broker
        return across.presence(uid) if across is not None else self._hub.presence(uid)

    def user_count(self) -> int:
        """How many distinct users are connected to this server (with a shared broker:
        to any server; raises BrokerUnavailable while it is down)."""
        across = self._hub.presence_broker
        return across.user_count() if across is not None else self._hub.user_count()

    def connections(self) -> List[dict]:
        """One dict per live connection: ids, remote, channels, queue, counters."""
        now = time.time()
        return [{
            "conn-id": c.conn_id, "uid": c.uid, "client-id": c.client_id,
            "remote": c.remote_address, "channels": self.channels.channels_of(c.conn_id),
            "queued-bytes": c.queued_bytes, "connected-s": round(now - c.connected_at, 3),
            "frames-in": c.frames_in, "frames-out": c.frames_out,
        } for c in self._snapshot()]

    def stats(self) -> dict:
        """Counters since start: connections, frames, errors, closes by code, channels."""
        out: Dict[str, Any] = self.counters.snapshot()
        with self._count_lock:
            closed = dict(self._closed_totals)
            out["closes_by_code"] = dict(self._closes_by_code)
        live = self._snapshot()
        out["connections"] = len(live)
        out["users"] = self._hub.user_count()
        out["remembered_clients"] = self._hub.remembered_clients()
        for key in PER_CONN_TOTALS:
            out[key] = closed[key] + sum(getattr(c, key) for c in live)
        out["queued_bytes"] = sum(c.queued_bytes for c in live)
        out["inbound_frames"] = sum(c.inflow.frames for c in live)
        out["inbound_bytes"] = sum(c.inflow.bytes for c in live)
        out.update(self.channels.stats())
        out.update(self._gate.stats())
        loop = self._loop
        if loop is not None:
            for key, value in loop.counts.items():
                out[key] = out.get(key, 0) + value
            out["pending_handshakes"] = loop.pending_count()
        out["handler_threads"] = self._pool.threads
        out["handler_thread_start_failures"] = self._pool.start_failures
        out["request_latency"] = self._latency.summary()
        out["uptime_s"] = round(time.monotonic() - self._started_at, 3) if self._started_at else 0.0
        out["server_id"] = self.server_id
        return out

    def channel_counts(self) -> Dict[str, int]:
        """Channel -> subscribers, for every channel with subscribers on this server (with
        a shared broker too: Redis keeps no count of other servers' subscribers)."""
        return dict(self.channels.subscriber_counts())

    def nodes(self) -> List[str]:
        """The server-ids serving these channels: this one, or with a shared broker every
        live server on it (raises BrokerUnavailable while it is down)."""
        across = self._hub.presence_broker
        return sorted(across.nodes()) if across is not None else [self.server_id]

    def _snapshot(self) -> List[ConnectionPort]:
        return self._hub.snapshot()

    @property
    def _conns(self) -> Dict[str, ConnectionPort]:
        return self._hub.conns

    def _closed_conn(self, conn: ConnectionPort, code: int) -> None:
        """Keep the totals of a connection that ended."""
        self.counters.add(Counter.CONNECTIONS_CLOSED)
        with self._count_lock:
            self._closes_by_code[code] = self._closes_by_code.get(code, 0) + 1
            for key in PER_CONN_TOTALS:
                self._closed_totals[key] += getattr(conn, key)



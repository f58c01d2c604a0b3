"""What a server says to its connections, users and channels: ``send``, ``send_to_user``,
``broadcast``, ``publish``, ``request``, ``disconnect`` and ``disconnect_user`` (part of the
threaded :class:`sente_lite.Server`, callable from any thread; the ASGI face's
:class:`sente_lite.asgi.App` wraps the same calls in coroutines)."""

from __future__ import annotations

import logging
from typing import Any, Dict, Mapping, Optional

from . import history_api as hist
from .hub import Hub
from .security import report
from ..counters import Counter, Counters
from ..errors import Disconnected
from ..wire import protocol as p
from ..wire import tracing as tracing_mod
from ..wire.channels import Published, Since

log = logging.getLogger("sente_lite.server")


def check_event_id(event: str) -> None:
    """ValueError unless ``event`` is a valid event-id."""
    if not p.is_valid_event_id(event):
        raise ValueError(f"invalid event-id {event!r}: use 'namespace/name' with "
                         "[A-Za-z0-9_.-], 1-64 chars per part")


class MessagingMixin:
    """Sending to connections, users and channels, through the server's hub."""

    _hub: Hub
    counters: Counters
    max_channel_id_chars: int
    max_history_page: int = hist.MAX_HISTORY_PAGE

    def send(self, conn_id: str, event: str, data: Any = None) -> bool:
        """Queue an event to one connection. False when it is unknown or closing."""
        conn = self._hub.conns.get(conn_id)
        return conn.send(event, data) if conn is not None else False

    def send_to_user(self, uid: str, event: str, data: Any = None) -> int:
        """Queue an event to every live connection of ``uid``; returns how many here took it.

        With a shared broker (Redis) it also goes, through Redis, to the user's
        connections on every other server (not counted in the result; while the broker
        is down, BrokerUnavailable is raised after the local sends)."""
        check_event_id(event)
        return self._hub.to_user(uid, event, data, p.encode_bytes(event, data))

    def broadcast(self, event: str, data: Any = None) -> int:
        """Queue an event to every live connection; returns how many here took it.

        With a shared broker (Redis) it also goes to every other server's connections
        (not counted; while the broker is down, BrokerUnavailable after the local sends)."""
        check_event_id(event)
        return self._hub.to_all(event, data, p.encode_bytes(event, data))

    def publish(self, channel_id: str, data: Any = None, *, idempotency_key: Optional[str] = None,
                publisher: Optional[str] = None, traceparent: Optional[str] = None) -> Published:
        """Publish on a channel as the server (``from`` is null). Same path as clients'.

        ``idempotency_key`` is a publish id (PROTOCOL 9, 1-128 characters): a resend
        with the same key by the same ``publisher`` (default: the server) is answered
        with the first one's ``Published`` (``duplicate=True``) and not delivered again.
        ``traceparent`` (W3C) rides on every delivery."""
        problem = p.channel_id_problem(channel_id, self.max_channel_id_chars)
        if problem:
            raise ValueError(problem)
        if idempotency_key is not None and not (
                isinstance(idempotency_key, str) and 0 < len(idempotency_key) <= p.MAX_PUBLISH_ID_CHARS):
            raise ValueError(f"idempotency_key must be a string of 1-{p.MAX_PUBLISH_ID_CHARS} "
                             "characters")
        if traceparent is not None and tracing_mod.valid(traceparent) is None:
            raise ValueError("traceparent must be a W3C version-00 traceparent")
        result = self._hub.publish(channel_id, p.encode_channel_data(data), None, None,
                                   publish_id=idempotency_key, traceparent=traceparent,
                                   publisher=publisher)
        assert result is not None  # waited for
        return result

    def request(self, conn_id: str, event: str, data: Any = None, timeout: float = 5.0) -> Any:
        """Ask a client: send a request and wait for its reply.

        Raises :class:`RemoteError` (the client's error code), :class:`RequestTimeout`
        or :class:`Disconnected`.
        """
        conn = self._hub.conns.get(conn_id)
        if conn is None:
            raise Disconnected(f"no live connection {conn_id}")
        return conn.request(event, data, timeout)

    def disconnect(self, conn_id: str, code: int = p.CLOSE_NORMAL, reason: str = "") -> bool:
        """Close one connection. False when it is not live."""
        conn = self._hub.conns.get(conn_id)
        if conn is None:
            return False
        conn.close(code, reason)
        return True

    def disconnect_user(self, uid: str, code: int = p.CLOSE_NORMAL, reason: str = "") -> int:
        """Close every live connection of ``uid`` with ``code``; returns how many.

        With 1008 the reference clients stop reconnecting; with 1000 they
        reconnect and meet ``authenticate`` again. With a shared broker (Redis) the
        user's connections on every other server are closed too (not counted).
        """
        closed = self._disconnect_user_here(uid, code, reason)
        self.channels.disconnect_user(uid, code, reason)  # raises BrokerUnavailable while down
        return closed

    def _disconnect_user_here(self, uid: str, code: int, reason: str) -> int:
        conns = self._hub.of_user(uid)
        for conn in conns:
            self.counters.add(Counter.FORCED_CLOSES)
            report(log, "closed", "disconnect-user", conn_id=conn.conn_id, uid=uid,
                   remote=conn.remote_address, code=code, message=reason)
            conn.close(code, reason)
        return len(conns)

    def history(self, channel_id: str, limit: int = hist.MAX_HISTORY_PAGE,
                since: Optional[Mapping[str, Any]] = None, reverse: bool = False,
                page: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
        """One page of ``channel_id``'s history, oldest first (``reverse``: newest first),
        at most ``limit`` (and the ``max_history_page`` setting); with ``since`` (``{"offset",
        "epoch"}``) only those after it, and ``recovered``: False when history no longer
        reaches back to it. Returns ``{"channel", "offset", "epoch", "publications":
        [{offset, epoch, data, from}], "next"}`` (``offset``/``epoch`` of the newest held;
        ``next``: pass it as ``page`` for the next page, None on the last)."""
        problem = p.channel_id_problem(channel_id, self.max_channel_id_chars)
        if problem:
            raise ValueError(problem)
        marks = [None if raw is None else Since(int(raw["offset"]), raw.get("epoch"))
                 for raw in (since, page)]
        size = hist.page_size(max(1, limit), self.max_history_page, self.counters)
        got, nxt = hist.read_page(self.channels, channel_id, size, marks[0], reverse, marks[1])
        return hist.answer(channel_id, got, nxt, hist.publication, "channel")


__all__ = ["MessagingMixin", "check_event_id"]

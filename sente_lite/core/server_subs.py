"""Server-side subscriptions (feature ``server-subs``): the server subscribes a connection
to a channel itself, by its conn-id or its user, or at connect (channels the
``authenticate`` hook returned with :class:`Authenticated`, or a JWT's ``channels`` claim).

The connection is told with ``["sente-lite/server-sub", {channel-id, offset, epoch}]``
(live messages follow ``offset``) and ``["sente-lite/server-unsub", {channel-id}]``; the
client holds such a channel like its own and, after a reconnect, re-subscribes it with
``since``. A subscribe with ``since`` to a channel the server holds for that connection
(given again at connect) *takes it over*: the server's subscription is dropped and the
client's, from ``since``, replays what it missed (the channel's rules are not asked again:
the server chose it). A user's channels (``subscribe(uid, ...)``) are given to each of its
connections here, now and at each connect, until ``unsubscribe(uid, ...)``.

At most :data:`MAX_CONNECT_CHANNELS` channels are given to one connection at connect; the
rest are refused: counted (``connect_channels_refused``), logged, and told to the client
(``chsk/error`` ``limit-exceeded``).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set

from ..counters import Counter, Counters
from ..wire import protocol as p
from ..wire.channels import RecoveryResult
from .connect_channels import MAX_CONNECT_CHANNELS, Authenticated, connect_channels
from .hub import Hub
from .ports import ConnectionPort

log = logging.getLogger("sente_lite.server")

class ServerSubs:
    """Which channels the server holds for which connections and users (see the module)."""

    def __init__(self, hub: Hub, counters: Counters, max_channel_id_chars: int) -> None:
        self.hub = hub
        self.counters = counters
        self.max_channel_id_chars = max_channel_id_chars
        self._lock = threading.Lock()
        self._held: Dict[str, Set[str]] = {}   # conn-id -> channels the server holds for it
        self._users: Dict[str, Set[str]] = {}  # uid -> channels given to each connection

    # -- the server's calls ------------------------------------------------------------
    def check(self, channel_id: str) -> None:
        """ValueError naming what is wrong with ``channel_id``."""
        problem = p.channel_id_problem(channel_id, self.max_channel_id_chars)
        if problem:
            raise ValueError(problem)

    def subscribe(self, target: str, channel_id: str) -> int:
        """Subscribe connection ``target``, or else every connection of user ``target``
        (and its later ones here), to ``channel_id``; how many connections here."""
        self.check(channel_id)
        conn = self.hub.conns.get(target)
        if conn is not None:
            self.add(conn, channel_id)
            return 1
        with self._lock:
            held = self._users.setdefault(target, set())
            if channel_id not in held and len(held) >= MAX_CONNECT_CHANNELS:
                raise ValueError(f"user {target!r} holds {len(held)} server channels "
                                 f"(MAX_CONNECT_CHANNELS={MAX_CONNECT_CHANNELS})")
            held.add(channel_id)
        conns = self.hub.of_user(target)
        for conn in conns:
            self.add(conn, channel_id)
        return len(conns)

    def unsubscribe(self, target: str, channel_id: str) -> int:
        """Take ``channel_id`` back from connection ``target``, or from every connection of
        user ``target`` (and its later ones); how many connections here held it."""
        self.check(channel_id)
        conn = self.hub.conns.get(target)
        if conn is not None:
            return int(self.remove(conn, channel_id))
        with self._lock:
            held = self._users.get(target)
            if held is not None:
                held.discard(channel_id)
                if not held:
                    del self._users[target]
        return sum(self.remove(conn, channel_id) for conn in self.hub.of_user(target))

    # -- one connection ------------------------------------------------------------------
    def add(self, conn: ConnectionPort, channel_id: str) -> None:
        """Subscribe ``conn`` to ``channel_id`` and tell it (``server-sub``)."""
        with self._lock:
            self._held.setdefault(conn.conn_id, set()).add(channel_id)
        told: List[bool] = []

        def announce(offset: int, epoch: str, recovery: Optional[RecoveryResult]) -> None:
            if told:  # a later notice: a replay lost its place (PROTOCOL 9)
                conn.send_frame(conn.session.subscribed(channel_id, offset, epoch, recovery, None))
                return
            told.append(True)
            conn.send_frame(conn.session.packer.encode(
                p.EV_SERVER_SUB, {p.K_CHANNEL: channel_id, p.K_OFFSET: offset, p.K_EPOCH: epoch}))

        def refuse(exc: BaseException) -> None:  # the broker refused this channel
            log.warning("server subscription of %s to %r failed: %s", conn.conn_id, channel_id, exc)
            with self._lock:
                self._held.get(conn.conn_id, set()).discard(channel_id)

        announce.refuse = refuse  # type: ignore[attr-defined]
        self.counters.add(Counter.SERVER_SUBSCRIBES)
        self.hub.subscribe(conn, channel_id, announce, None, None)

    def remove(self, conn: ConnectionPort, channel_id: str) -> bool:
        """Unsubscribe ``conn`` from ``channel_id`` and tell it (``server-unsub``)."""
        with self._lock:
            self._held.get(conn.conn_id, set()).discard(channel_id)
        if not self.hub.unsubscribe(conn, channel_id):  # the hub: its presence learns the leave
            return False
        conn.send_frame(conn.session.packer.encode(p.EV_SERVER_UNSUB, {p.K_CHANNEL: channel_id}))
        return True

    def take_over(self, conn: ConnectionPort, channel_id: str) -> bool:
        """True when the server holds ``channel_id`` for ``conn``: it no longer does (the
        client's subscribe replaces it)."""
        with self._lock:
            held = self._held.get(conn.conn_id)
            if held is None or channel_id not in held:
                return False
            held.discard(channel_id)
        self.hub.broker.unsubscribe(conn.conn_id, channel_id)
        return True

    def opened(self, conn: ConnectionPort, given: Sequence[str]) -> None:
        """``conn`` is open (its handshake sent): subscribe it to the channels given at
        connect and its user's, at most :data:`MAX_CONNECT_CHANNELS`."""
        with self._lock:
            users = sorted(self._users.get(conn.uid, ()))
        channels = list(dict.fromkeys([*given, *users]))
        if not channels:
            return
        valid = [ch for ch in channels
                 if not p.channel_id_problem(ch, self.max_channel_id_chars)]
        if len(valid) < len(channels):
            log.warning("connect channels of %s: %d invalid channel-ids ignored", conn.conn_id,
                        len(channels) - len(valid))
        if len(valid) > MAX_CONNECT_CHANNELS:
            self._refuse_beyond(conn, valid[MAX_CONNECT_CHANNELS:])
        for channel_id in valid[:MAX_CONNECT_CHANNELS]:
            self.add(conn, channel_id)

    def _refuse_beyond(self, conn: ConnectionPort, refused: Iterable[str]) -> None:
        names = list(refused)
        self.counters.add(Counter.CONNECT_CHANNELS_REFUSED, len(names))
        log.warning("connect channels of %s: %d beyond MAX_CONNECT_CHANNELS=%d not subscribed",
                    conn.conn_id, len(names), MAX_CONNECT_CHANNELS)
        conn.send_frame(conn.session.error(
            p.ERR_LIMIT_EXCEEDED, f"{len(names)} channels given at connect were not subscribed "
            f"(MAX_CONNECT_CHANNELS={MAX_CONNECT_CHANNELS})", None, p.EV_SERVER_SUB))

    def closed(self, conn: ConnectionPort) -> None:
        """``conn`` ended: forget what the server held for it."""
        with self._lock:
            self._held.pop(conn.conn_id, None)


class ServerSubsCalls:
    """``srv.subscribe`` / ``srv.unsubscribe`` of the threaded :class:`sente_lite.Server`
    (the ASGI App wraps the same calls in coroutines)."""

    _dispatcher: Any

    def subscribe(self, target: str, channel_id: str) -> int:
        """Subscribe connection ``target`` (a conn-id), or else every connection of user
        ``target`` here, now and as each connects, to ``channel_id``; each is told
        (``sente-lite/server-sub``) and then gets its messages. Returns how many
        connections here. ValueError for a bad channel-id, or a user's channels over
        ``MAX_CONNECT_CHANNELS``."""
        return int(self._dispatcher.server_subs.subscribe(target, channel_id))

    def unsubscribe(self, target: str, channel_id: str) -> int:
        """Take back what :meth:`subscribe` gave (the connection is told:
        ``sente-lite/server-unsub``); how many connections here held it."""
        return int(self._dispatcher.server_subs.unsubscribe(target, channel_id))


__all__ = ["ServerSubs", "ServerSubsCalls", "Authenticated", "connect_channels", "MAX_CONNECT_CHANNELS"]

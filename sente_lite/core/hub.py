"""The hub: who is connected, which user has which connections, and channel fan-out.

No sockets and no threads: a connection is anything with a ``conn_id``, a ``uid``
and a ``deliver(wire, size) -> bool`` that never blocks (the server's queues the
bytes of one whole WebSocket frame). A publish is encoded once, as one whole
frame, for every subscriber.

Channels go through a :class:`~sente_lite.brokers.base.Broker`: the seam where another
implementation of publish, subscribe, history and user routing plugs in (a backplane
shared by several server processes). The default is
:class:`~sente_lite.brokers.local.LocalBroker`, this process's channels. The hub is the
broker's :class:`~sente_lite.brokers.base.BrokerEvents`: every broker hands it the
messages it has for this node (built here, once) and the frames routed to its users.
"""

from __future__ import annotations

import collections
import threading
from typing import (Any, Callable, Dict, Hashable, List, Optional, Protocol, Set)

from ..wire import compression
from ..wire import protocol as p
from ..wire import tracing
from ..wire.packers import JSON_PACKER, Packer
from ..brokers.base import Announce, Broker, BrokerEvents, PresenceBroker
from ..brokers.local import LocalBroker
from ..wire.channels import Built, Published, Since, message_head
from ..counters import Counter, Counters

Deliver = Callable[[Hashable, Any], bool]
#: ``close_user(uid, code, reason)``: close the connections of ``uid`` here; how many.
CloseUser = Callable[[str, int, str], int]


class ChannelMoves(Protocol):
    """What the hub tells when a connection joins or leaves channels."""

    def joined(self, conn: Any, channel: str) -> None: ...

    def left(self, conn: Any, channels: List[str]) -> None: ...


class Member(Protocol):
    """What the hub needs of a connection."""

    conn_id: str
    uid: str

    packer: Packer

    def deliver(self, wire: bytes, size: int) -> bool: ...


#: JSON text of recently published channel ids, uids and epochs (bounded; cleared when full).
MAX_CACHED_JSON_STRINGS = 4096


class Hub:
    """Registries of live connections and users, and channel fan-out through a broker."""

    def __init__(self, broker: Broker, counters: Counters, max_remembered_clients: int,
                 ws_frame: Callable[..., bytes],
                 spans: Optional[tracing.Spans] = None,
                 min_compress: int = compression.DEFAULT_COMPRESSION_MIN_BYTES,
                 close_user: Optional[CloseUser] = None) -> None:
        self.spans = spans or tracing.Spans(False)
        self.min_compress = min_compress
        self.broker = broker
        self.counters = counters
        self.max_remembered_clients = max_remembered_clients
        self._ws_frame = ws_frame
        self._lock = threading.Lock()
        self.conns: Dict[str, Any] = {}
        self._by_uid: Dict[str, Set[str]] = {}
        # the hash of each client-id seen, least recently seen first: about 140 bytes each,
        # whatever the id's length (kept whole, a 32-character id costs about 185, a
        # 128-character one about 280)
        self._seen_clients: "collections.OrderedDict[int, None]" = collections.OrderedDict()
        self._json: Dict[str, str] = {}
        #: Users across nodes, when the broker has other nodes.
        self.presence_broker: Optional[PresenceBroker] = broker.presence
        self._close_user = close_user
        #: Told when a connection joins or leaves a channel (presence, join/leave); the
        #: dispatcher sets it (:class:`~sente_lite.core.presence.ChannelPresence`).
        self.channel_presence: Optional[ChannelMoves] = None

    # -- registry ---------------------------------------------------------------------
    def first_visit(self, client_id: str) -> bool:
        """True the first time ``client_id`` connects (remembering the latest
        ``max_remembered_clients``, by their hash: two ids of the same 64-bit hash, of
        this process's seed, count as one)."""
        key = hash(client_id)
        with self._lock:
            first = key not in self._seen_clients
            self._seen_clients[key] = None
            self._seen_clients.move_to_end(key)
            while len(self._seen_clients) > self.max_remembered_clients:
                self._seen_clients.popitem(last=False)
        return first

    def remembered_clients(self) -> int:
        """How many client-ids :meth:`first_visit` remembers (at most ``max_remembered_clients``)."""
        with self._lock:
            return len(self._seen_clients)

    def add(self, conn: Member) -> None:
        with self._lock:
            self.conns[conn.conn_id] = conn
            self._by_uid.setdefault(conn.uid, set()).add(conn.conn_id)
        self.counters.add(Counter.CONNECTIONS_OPENED)
        if self.presence_broker is not None:
            self.presence_broker.users_changed()

    def remove(self, conn: Member) -> None:
        """Forget ``conn`` and its subscriptions."""
        with self._lock:
            self.conns.pop(conn.conn_id, None)
            ids = self._by_uid.get(conn.uid)
            if ids is not None:
                ids.discard(conn.conn_id)
                if not ids:
                    del self._by_uid[conn.uid]
        left = self.broker.remove_member(conn.conn_id)
        if left and self.channel_presence is not None:
            self.channel_presence.left(conn, left)
        if self.presence_broker is not None:
            self.presence_broker.users_changed()

    def snapshot(self) -> List[Any]:
        with self._lock:
            return list(self.conns.values())

    def of_user(self, uid: str) -> List[Any]:
        with self._lock:
            return [self.conns[c] for c in self._by_uid.get(uid, ()) if c in self.conns]

    def presence(self, uid: str) -> int:
        """How many live connections ``uid`` has here."""
        with self._lock:
            return len(self._by_uid.get(uid, ()))

    def user_count(self) -> int:
        with self._lock:
            return len(self._by_uid)

    def user_counts(self) -> Dict[str, int]:
        """uid -> live connections here."""
        with self._lock:
            return {uid: len(ids) for uid, ids in self._by_uid.items()}

    # -- fan-out -------------------------------------------------------------------------
    def json_string(self, value: Optional[str]) -> str:
        """``p.dumps(value)`` for a str or None, remembered: every publish names the same few."""
        if value is None:
            return "null"
        text = self._json.get(value)
        if text is None:
            text = p.dumps(value)
            if len(self._json) >= MAX_CACHED_JSON_STRINGS:
                self._json.clear()
            self._json[value] = text
        return text

    def publish(self, channel: str, data_json: str, from_uid: Optional[str],
                exclude: Optional[str], answer: Optional[Callable[[Any], None]] = None,
                publish_id: Optional[str] = None,
                traceparent: Optional[str] = None,
                publisher: Optional[str] = None) -> Optional[Published]:
        """Publish ``data_json`` (already encoded) on ``channel``. With ``answer``
        never wait: ``answer(result)`` gets the Published (or the exception) and
        None may be returned; without, wait and return the Published. Every
        delivery carries ``traceparent`` when given. ``publish_id`` is deduplicated
        among the publishes of ``publisher`` (default: ``from_uid``)."""
        js = self.json_string
        head = message_head(js(channel), data_json, js(from_uid), traceparent)
        counters = self.counters

        def done(result: Any) -> None:
            if isinstance(result, Published) and not result.duplicate:
                counters.add(Counter.PUBLISHES)
            if answer is not None:
                answer(result)

        return self.broker.publish(channel, head, exclude=exclude, done=done,
                                   wait=answer is None, publish_id=publish_id,
                                   publisher=from_uid if publisher is None else publisher,
                                   traceparent=traceparent)

    # -- BrokerEvents: what the broker hands this node ------------------------------------
    def build(self, text: bytes, traceparent: Optional[str] = None) -> Built:
        """A channel message's whole text, built once as a WebSocket frame for every
        subscriber here (and, on first use, for each other packer in use)."""
        return Built(self._ws_frame(text, False), len(text), traceparent)

    def deliver(self, member: Any, built: Any) -> bool:
        """Hand one built channel frame to connection ``member``."""
        conn = self.conns.get(member)
        if conn is None:
            return False
        if built.traceparent is not None and self.spans.enabled:
            self.spans.event("deliver", built.traceparent, {"sente_lite.conn_id": conn.conn_id})
        if conn.packer is JSON_PACKER and not conn.deflate_bits:
            return conn.deliver(built.wire, built.size)
        return conn.deliver(*built.for_packer(conn.packer, self._ws_frame, conn.deflate_bits,
                                              self.min_compress))

    def lost(self, member: Hashable, channel: str, offset: int, epoch: str,
             reason: str) -> None:
        """Tell ``member`` that messages of ``channel`` are lost (``sente-lite/subscribed``
        with ``recovered: false``); live ones go on from ``offset``."""
        self.to_member(member, p.EV_SUBSCRIBED, {
            p.K_CHANNEL: channel, p.K_OFFSET: offset, p.K_EPOCH: epoch,
            p.K_RECOVERED: False, p.K_REASON: reason})

    def disconnect_user_here(self, uid: str, code: int, reason: str) -> int:
        """Close the connections of ``uid`` here (the server's ``close_user``); how many."""
        return self._close_user(uid, code, reason) if self._close_user is not None else 0

    def to_member(self, member: Hashable, event: str, data: Any) -> bool:
        """Send ``event`` to connection ``member``; False when it is gone or closing."""
        conn = self.conns.get(member)  # type: ignore[call-overload]
        if conn is None:
            return False
        return self._send([conn], event, data, p.encode_bytes(event, data)) == 1

    def subscribe(self, conn: Member, channel: str, announce: Announce,
                  since: Optional[Since], replay_budget: Optional[int] = None) -> None:
        """Subscribe ``conn``; a replay for ``since`` is at most ``replay_budget`` messages.
        Once it is answered, the channel's presence learns that ``conn`` joined."""
        moves = self.channel_presence
        if moves is None:
            self.broker.subscribe(conn.conn_id, channel, announce, since, replay_budget)
            return
        state = {"answered": False, "returned": False}

        def answered(offset: int, epoch: str, recovery: Any) -> None:
            announce(offset, epoch, recovery)
            if not state["answered"]:
                state["answered"] = True
                if state["returned"]:  # answered later, on the broker's thread
                    moves.joined(conn, channel)

        refuse = getattr(announce, "refuse", None)
        if refuse is not None:
            answered.refuse = refuse  # type: ignore[attr-defined]
        self.broker.subscribe(conn.conn_id, channel, answered, since, replay_budget)
        state["returned"] = True
        if state["answered"]:  # answered under the broker's locks: join now they are let go
            moves.joined(conn, channel)

    def unsubscribe(self, conn: Member, channel: str) -> bool:
        """Remove ``conn`` from ``channel`` (its presence learns it left); True when it was in."""
        was = self.broker.unsubscribe(conn.conn_id, channel)
        if was and self.channel_presence is not None:
            self.channel_presence.left(conn, [channel])
        return was

    def _send(self, conns: List[Any], event: str, data: Any, json_payload: bytes) -> int:
        """Send ``event`` to ``conns``, encoded once per packer in use (``json_payload``:
        its JSON encoding, already made)."""
        payloads = {JSON_PACKER.name: json_payload}
        built = {JSON_PACKER.name: (self._ws_frame(json_payload, False), len(json_payload))}
        taken = 0
        for conn in conns:
            packer = conn.packer
            payload = payloads.get(packer.name)
            if payload is None:
                payload = payloads[packer.name] = packer.encode(event, data)
            if conn.deflate_bits:  # compressed for that connection's window
                taken += bool(conn.send_frame(payload))
                continue
            wire = built.get(packer.name)
            if wire is None:
                wire = built[packer.name] = (self._ws_frame(payload, packer.binary), len(payload))
            taken += bool(conn.deliver(*wire))
        return taken

    def to_user(self, uid: str, event: str, data: Any, json_payload: bytes) -> int:
        """Send ``event`` to every live connection of ``uid`` (with a shared broker, on
        every server); how many here took it."""
        taken = self._send(self.of_user(uid), event, data, json_payload)
        self.broker.to_user(uid, json_payload)  # raises BrokerUnavailable while it is down
        return taken

    def to_user_here(self, uid: str, json_payload: bytes) -> int:
        """Send an encoded event frame to the connections of ``uid`` on this server."""
        return self._send_encoded(self.of_user(uid), json_payload)

    def _send_encoded(self, conns: List[Any], json_payload: bytes) -> int:
        if not conns:
            return 0
        frame = p.loads(json_payload.decode("utf-8"))
        return self._send(conns, frame[0], frame[1] if len(frame) > 1 else None, json_payload)

    def to_all(self, event: str, data: Any, json_payload: bytes) -> int:
        """Send ``event`` to every live connection (with a shared broker, on every
        server); how many here took it."""
        taken = self._send(self.snapshot(), event, data, json_payload)
        self.broker.broadcast(json_payload)  # raises BrokerUnavailable while it is down
        return taken

    def to_all_here(self, json_payload: bytes) -> int:
        """Send an encoded event frame to every connection on this server."""
        return self._send_encoded(self.snapshot(), json_payload)


__all__ = ["Hub", "Broker", "BrokerEvents", "LocalBroker", "Member", "Built", "message_head"]

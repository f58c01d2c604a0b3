"""The hub: who is connected, which user has which connections, and channel fan-out.

No sockets and no threads: a connection is anything with a ``conn_id``, a ``uid``
and a ``deliver(wire, size) -> bool`` that never blocks (the server's queues the
bytes of one whole WebSocket frame). A publish is encoded once, as one whole
frame, for every subscriber.

Channels go through a :class:`Broker`: the seam where another implementation of
publish, subscribe, history and presence plugs in (a backplane shared by several
server processes). The default is :class:`LocalBroker`, this process's
:class:`~sente_lite.brokers.local.ChannelRegistry`.
"""

from __future__ import annotations

import collections
import threading
from typing import (Any, Callable, Dict, Hashable, List, Optional, Protocol, Set, Tuple)

from ..wire import compression
from ..wire import protocol as p
from ..wire import tracing
from ..wire.packers import JSON_PACKER, Packer
from ..brokers.local import ChannelRegistry
from ..wire.channels import Built, Published, RecoveryResult, Since, message_head
from ..counters import Counter, Counters

Announce = Callable[[int, str, Optional[RecoveryResult]], None]
Deliver = Callable[[Hashable, Any], bool]


class Member(Protocol):
    """What the hub needs of a connection."""

    conn_id: str
    uid: str

    packer: Packer

    def deliver(self, wire: bytes, size: int) -> bool: ...


class Broker(Protocol):
    """Channels: publish in one offset order per channel, subscribe (with recovery
    from history), and presence of users across every process sharing it."""

    def publish(self, name: str, make_frame: Callable[[int, str], Any], deliver: Deliver,
                exclude: Optional[Hashable] = None, done: Optional[Callable[[Any], None]] = None,
                wait: bool = True, publish_id: Optional[str] = None,
                publisher: Optional[str] = None) -> Optional[Published]: ...

    def subscribe(self, member: Hashable, name: str, announce: Optional[Announce] = None,
                  since: Optional[Since] = None, deliver: Optional[Deliver] = None,
                  replay_budget: Optional[int] = None,
                  ) -> Tuple[int, str, bool, Optional[RecoveryResult]]: ...

    def unsubscribe(self, member: Hashable, name: str) -> bool: ...

    def remove_member(self, member: Hashable) -> List[str]: ...

    def channels_of(self, member: Hashable) -> List[str]: ...

    def history_of(self, name: str) -> List[Tuple[int, Any]]: ...

    def stats(self) -> dict: ...


class LocalBroker(ChannelRegistry):
    """The in-process broker: this process's channels, history and offsets."""


#: JSON text of recently published channel ids, uids and epochs (bounded; cleared when full).
MAX_CACHED_JSON_STRINGS = 4096


class Hub:
    """Registries of live connections and users, and channel fan-out through a broker."""

    def __init__(self, broker: Broker, counters: Counters, max_remembered_clients: int,
                 ws_frame: Callable[..., bytes],
                 spans: Optional[tracing.Spans] = None,
                 min_compress: int = compression.DEFAULT_COMPRESSION_MIN_BYTES) -> None:
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
        # A broker shared by several servers (RedisBroker) also routes users and presence.
        self.shared: Any = broker if getattr(broker, "shared", False) else None
        if self.shared is not None:
            self.shared.bind(self)

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
        if self.shared is not None:
            self.shared.presence_changed()

    def remove(self, conn: Member) -> None:
        """Forget ``conn`` and its subscriptions."""
        with self._lock:
            self.conns.pop(conn.conn_id, None)
            ids = self._by_uid.get(conn.uid)
            if ids is not None:
                ids.discard(conn.conn_id)
                if not ids:
                    del self._by_uid[conn.uid]
        self.broker.remove_member(conn.conn_id)
        if self.shared is not None:
            self.shared.presence_changed()

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
        if publisher is None:
            publisher = from_uid
        ws_frame = self._ws_frame

        def make_frame(offset: int, epoch: str) -> Any:
            # Encoded once per publish, as a whole WebSocket frame, for every subscriber
            # (and once more for each other packer in use, when first needed).
            frame = f'{head}{offset},"{p.K_EPOCH}":{js(epoch)}}}]'.encode("utf-8")
            return Built(ws_frame(frame, False), len(frame), traceparent)

        counters = self.counters
        if self.shared is not None:  # the frame is finished in Redis, with its offset
            def counted(result: Any) -> None:
                if isinstance(result, Published) and not result.duplicate:
                    counters.add(Counter.PUBLISHES)
                if answer is not None:
                    answer(result)

            return self.shared.publish_text(channel, head, exclude, counted,
                                            wait=answer is None, publish_id=publish_id,
                                            publisher=publisher)

        def done(result: Any) -> None:
            if isinstance(result, Published) and not result.duplicate:
                counters.add(Counter.PUBLISHES)
                counters.add(Counter.DELIVERIES, result.delivered)
            if answer is not None:
                answer(result)

        return self.broker.publish(channel, make_frame, self.deliver, exclude, done,
                                   wait=answer is None, publish_id=publish_id,
                                   publisher=publisher)

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

    def built_from_text(self, payload: bytes) -> Built:
        """A channel message already encoded as JSON (``payload``), built for delivery."""
        return Built(self._ws_frame(payload, False), len(payload))

    def to_member(self, member: Hashable, event: str, data: Any) -> bool:
        """Send ``event`` to connection ``member``; False when it is gone or closing."""
        conn = self.conns.get(member)  # type: ignore[call-overload]
        if conn is None:
            return False
        return self._send([conn], event, data, p.encode_bytes(event, data)) == 1

    def subscribe(self, conn: Member, channel: str, announce: Announce,
                  since: Optional[Since], replay_budget: Optional[int] = None) -> None:
        """Subscribe ``conn``; a replay for ``since`` is at most ``replay_budget`` messages."""
        self.broker.subscribe(conn.conn_id, channel, announce, since, self.deliver, replay_budget)

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
        if self.shared is not None:  # raises BrokerUnavailable while it is down
            self.shared.to_user(uid, json_payload)
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
        if self.shared is not None:  # raises BrokerUnavailable while it is down
            self.shared.broadcast(json_payload)
        return taken

    def to_all_here(self, json_payload: bytes) -> int:
        """Send an encoded event frame to every connection on this server."""
        return self._send_encoded(self.snapshot(), json_payload)


__all__ = ["Hub", "Broker", "LocalBroker", "Member", "Built", "message_head"]

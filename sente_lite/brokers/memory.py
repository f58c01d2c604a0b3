"""A second broker, all in memory: nodes (servers) of one process sharing channels, history,
publish ids and users as servers on one Redis do; it proves the seam (:mod:`.base`) and
tests several servers without Redis. Each server gets a :class:`MemoryBroker` over one
:class:`MemoryLog` (``Server(broker=log.node())``), whose one lock orders everything: a
publish takes its offset and reaches every node's subscribers under it; a replay is handed
over inside its subscribe. No idle eviction: a channel lives as long as its log."""

from __future__ import annotations

import collections
import itertools
import threading
import time
from typing import Any, Callable, Deque, Dict, Hashable, List, Optional, Tuple

from ..counters import Counter, Counters
from ..wire.channels import HistoryPage, Published, RecoveryResult, Since, message_text
from .base import Announce, BrokerEvents, Dispatch, Done, HistoryLimits
from .presence_table import PresenceTable, TablePresence
from .recovery import Kept, count_recovery, decide, history_page, replay_limit


class _Channel:
    __slots__ = ("epoch", "offset", "kept", "members", "size", "ttl_s")

    def __init__(self, epoch: str, size: int, ttl_s: float) -> None:
        self.epoch = epoch
        self.offset = 0
        self.size, self.ttl_s = size, ttl_s
        #: (offset, head, traceparent, time), oldest first; the oldest go beyond ``size``
        self.kept: Deque[Tuple[int, bytes, Optional[str], float]] = collections.deque(maxlen=size)
        self.members: Dict["MemoryBroker", Dict[Hashable, None]] = {}  # node -> its members


class MemoryLog:
    """Channels shared by the nodes made with :meth:`node` (offsets, epochs, ``history_size``
    messages younger than ``history_ttl_s``, publish ids for ``publish_dedup_s``) under one
    lock; the nodes' :class:`~.base.PresenceBroker` (users of every started node)."""

    def __init__(self, name: str = "mem", history_size: int = 1000,
                 history_ttl_s: float = 300.0, publish_dedup_s: float = 300.0,
                 max_replay_per_subscribe: int = 1000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name, self.clock = name, clock
        self.history_size, self.history_ttl_s = history_size, history_ttl_s
        self.publish_dedup_s, self.max_replay = publish_dedup_s, max_replay_per_subscribe
        self.lock = threading.RLock()  # re-entered: remove_member unsubscribes under it
        self.channels: Dict[str, _Channel] = {}
        #: (publisher, channel, epoch, id) -> (offset, delivered, time), oldest first
        self.ids: Dict[Tuple[Any, ...], Tuple[int, int, float]] = {}
        self.started: List["MemoryBroker"] = []  # the nodes serving a server
        self._seq = itertools.count(1)
        #: a channel's own (history size, ttl) when smaller (:meth:`MemoryBroker.limit_history`)
        self.limits: Optional[HistoryLimits] = None
        #: channel presence of every node
        self.presence_table = PresenceTable()

    def node(self, node_id: Optional[str] = None, counters: Optional[Counters] = None) -> Any:
        """A :class:`MemoryBroker` for one more server on this log."""
        return MemoryBroker(self, node_id or f"{self.name}-{next(self._seq)}", counters)

    def channel(self, name: str) -> _Channel:
        """The channel ``name``, made on first use. Caller holds ``lock``."""
        if name not in self.channels:
            own = self.limits(name) if self.limits is not None else None
            size, ttl_s = own if own is not None else (self.history_size, self.history_ttl_s)
            self.channels[name] = _Channel(f"{self.name}.{next(self._seq)}",
                                           min(size, self.history_size), min(ttl_s, self.history_ttl_s))
        return self.channels[name]

    def kept(self, ch: _Channel, most: int) -> Kept:
        """What history says of ``ch`` (expired messages dropped). Caller holds ``lock``."""
        while ch.kept and ch.kept[0][3] < self.clock() - ch.ttl_s:
            ch.kept.popleft()
        return Kept(ch.epoch, ch.offset, ch.kept[0][0] if ch.kept else None,
                    ch.size > 0, most)

    def first_publish(self, key: Tuple[Any, ...]) -> Optional[Tuple[int, int, float]]:
        """The publish that first had this id within ``publish_dedup_s``. Caller holds ``lock``."""
        while self.ids and next(iter(self.ids.values()))[2] < self.clock() - self.publish_dedup_s:
            del self.ids[next(iter(self.ids))]  # the oldest first: insertion order
        return self.ids.get(key)

    def events(self, but: Optional["MemoryBroker"] = None) -> List[BrokerEvents]:
        """The events of every started node (except ``but``)."""
        with self.lock:
            return [n.events for n in self.started if n is not but and n.events is not None]

    def users_changed(self) -> None:
        """Nothing to publish: every node's users are read when asked."""

    def route_user(self, uid: str, ready: Callable[[], None]) -> bool:
        """Every node hears every user at once."""
        return True

    def presence(self, uid: str) -> int:
        return sum(events.user_counts().get(uid, 0) for events in self.events())

    def user_count(self) -> int:
        return len({uid for events in self.events() for uid in events.user_counts()})

    def nodes(self) -> List[str]:
        with self.lock:
            return [n.node_id for n in self.started]


class MemoryBroker(TablePresence):
    """One node's :class:`~sente_lite.brokers.base.Broker` on a :class:`MemoryLog` (its
    ``presence`` too). ``counters`` gets its deliveries, duplicates and recoveries."""

    waits_on_io = False  # nothing here waits on another process

    def __init__(self, log: MemoryLog, node_id: str, counters: Optional[Counters] = None) -> None:
        self.log, self.node_id = log, node_id
        self.counters = counters if counters is not None else Counters()
        self.events: Optional[BrokerEvents] = None
        self.presence = log
        self.presence_table = log.presence_table
        self._held: Dict[Hashable, Dict[str, None]] = {}  # member -> its channels (under log.lock)

    def start(self, events: BrokerEvents, dispatch: Optional[Dispatch] = None) -> None:
        with self.log.lock:
            self.events = events
            self.log.started.append(self)

    def stop(self, timeout: float = 5.0) -> None:
        with self.log.lock:
            self.log.started = [n for n in self.log.started if n is not self]
            for member in list(self._held):
                self.remove_member(member)

    def health(self) -> Dict[str, Any]:
        return {"broker": "memory", "broker-status": "up"}  # nothing here can be down

    def stats(self) -> Dict[str, Any]:
        log = self.log
        with log.lock:
            chans = log.channels.values()
            return {"channels": len(chans), "channels_evicted": 0, "publish_ids": len(log.ids),
                    "active_channels": sum(1 for ch in chans if ch.members.get(self)),
                    "subscriptions": sum(len(names) for names in self._held.values()),
                    "history_messages": sum(len(ch.kept) for ch in chans),
                    "history_size": log.history_size, "history_ttl_s": log.history_ttl_s,
                    "publish_dedup_s": log.publish_dedup_s,
                    "max_replay_per_subscribe": log.max_replay, "broker": "memory"}

    def sweep_idle(self) -> int:
        return 0  # no idle eviction: a channel lives as long as its log

    def limit_history(self, limits: HistoryLimits) -> None:
        """Per channel, a smaller history (a namespace's), for every node of the log."""
        self.log.limits = limits

    def publish(self, channel: str, head: str, *, exclude: Optional[Hashable] = None,
                done: Optional[Done] = None, wait: bool = True,
                publish_id: Optional[str] = None, publisher: Optional[str] = None,
                traceparent: Optional[str] = None) -> Optional[Published]:
        """See :meth:`~sente_lite.brokers.base.Broker.publish`: handed to the subscribers of
        every node here and now; ``delivered`` counts this node's that took it."""
        log = self.log
        with log.lock:
            ch = log.channel(channel)
            key = (publisher, channel, ch.epoch, publish_id)
            first = log.first_publish(key) if publish_id is not None else None
            if first is not None:
                self.counters.add(Counter.DUPLICATE_PUBLISHES)
                result = Published(channel, first[0], ch.epoch, first[1], True)
            else:
                ch.offset, encoded = ch.offset + 1, head.encode("utf-8")
                ch.kept.append((ch.offset, encoded, traceparent, log.clock()))
                text = message_text(encoded, ch.offset, ch.epoch)
                delivered = sum(node._hand(members, text, traceparent, exclude, node is self)
                                for node, members in ch.members.items())
                if publish_id is not None:
                    log.ids[key] = (ch.offset, delivered, log.clock())
                result = Published(channel, ch.offset, ch.epoch, delivered)
            if done is not None:
                done(result)  # in channel order, as every broker answers
        return result

    def publish_event(self, channel: str, text: bytes) -> None:
        """See :meth:`~sente_lite.brokers.base.Broker.publish_event`: under the log's lock,
        as messages are, to every node's subscribers."""
        with self.log.lock:
            ch = self.log.channels.get(channel)
            for node, members in (ch.members.items() if ch is not None else ()):
                if node.events is not None and members:
                    built = node.events.build(text, None)
                    for m in list(members):
                        node.events.deliver(m, built)

    def _hand(self, members: Dict[Hashable, None], text: bytes, traceparent: Optional[str],
              exclude: Optional[Hashable], counted: bool) -> int:
        """Deliver to ``members`` here, built once; how many took it if ``counted``, else 0."""
        if self.events is None or not members:
            return 0
        built = self.events.build(text, traceparent)
        taken = sum(1 for m in list(members) if m != exclude and self.events.deliver(m, built))
        self.counters.add(Counter.DELIVERIES, taken)
        return taken if counted else 0

    def subscribe(self, member: Hashable, channel: str, announce: Optional[Announce] = None,
                  since: Optional[Since] = None, replay_budget: Optional[int] = None,
                  ) -> Tuple[int, str, bool, Optional[RecoveryResult]]:
        """See :meth:`~sente_lite.brokers.base.Broker.subscribe`: the replay is handed over
        here, after ``announce`` and before any later publish."""
        log = self.log
        with log.lock:
            ch = log.channel(channel)
            members = ch.members.setdefault(self, {})
            held = member in members
            recovery = None
            if since is not None:
                most = replay_limit(log.max_replay, replay_budget)
                recovery = decide(since, log.kept(ch, most), held)
                count_recovery(self.counters, recovery)
            if announce is not None:
                announce(ch.offset, ch.epoch, recovery)
            if recovery is not None and recovery.replayed and self.events is not None:
                # the last ``replayed`` kept are since.offset + 1 to the top (decide said so)
                for offset, head, traceparent, _ in list(ch.kept)[-recovery.replayed:]:
                    built = self.events.build(message_text(head, offset, ch.epoch), traceparent)
                    self.events.deliver(member, built)
                self.counters.add(Counter.REPLAYED_MESSAGES, recovery.replayed)
            members[member] = None
            self._held.setdefault(member, {})[channel] = None
            return ch.offset, ch.epoch, not held, recovery

    def unsubscribe(self, member: Hashable, channel: str) -> bool:
        with self.log.lock:
            names = self._held.get(member)
            if names is None or channel not in names:
                return False
            del names[channel]
            if not names:
                del self._held[member]
            del self.log.channels[channel].members[self][member]
            return True

    def remove_member(self, member: Hashable) -> List[str]:
        with self.log.lock:
            return [name for name in sorted(self._held.get(member, ()))
                    if self.unsubscribe(member, name)]

    def channels_of(self, member: Hashable) -> List[str]:
        with self.log.lock:
            return sorted(self._held.get(member, ()))

    def subscriber_count(self, channel: str) -> int:
        return self.subscriber_counts().get(channel, 0)

    def subscriber_counts(self) -> Dict[str, int]:
        with self.log.lock:
            return {name: len(ch.members[self]) for name, ch in self.log.channels.items()
                    if ch.members.get(self)}

    def history(self, channel: str, since: Optional[Since] = None, limit: Optional[int] = None,
                reverse: bool = False) -> HistoryPage:
        with self.log.lock:
            ch = self.log.channels.get(channel)
            kept = None if ch is None else self.log.kept(ch, self.log.max_replay)
            entries = [(o, message_text(h, o, ch.epoch)) for o, h, _, _ in ch.kept] if ch else []
        return history_page(kept, entries, since, limit, reverse)

    def to_user(self, uid: str, json_payload: bytes) -> None:
        for events in self.log.events(but=self):
            events.to_user_here(uid, json_payload)

    def broadcast(self, json_payload: bytes) -> None:
        for events in self.log.events(but=self):
            events.to_all_here(json_payload)

    def disconnect_user(self, uid: str, code: int, reason: str) -> None:
        for events in self.log.events(but=self):
            events.disconnect_user_here(uid, code, reason)


__all__ = ["MemoryLog", "MemoryBroker"]

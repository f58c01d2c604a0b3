"""The in-process broker: subscriptions, per-channel offsets and epochs. No I/O.

:class:`ChannelRegistry` is thread-safe. A publish assigns the next offset and hands
the frame to every subscriber *while holding the channel's lock*, so all subscribers
of a channel receive its messages in offset order even when several threads publish
at once. The hand-off (``deliver``) must therefore never block; the server's is a
non-blocking write or an append to a bounded per-connection queue.

Each channel keeps a bounded history (``history_size`` messages, none older than
``history_ttl_s``; :mod:`~sente_lite.brokers.history`) so a subscriber that names the
last offset and epoch it saw (``since``) gets every later message replayed in order
before the live ones, or is told exactly why not (PROTOCOL 9). Publishes may carry an
id; a repeated id within ``publish_dedup_s`` is answered with the first result and not
delivered again.

Publishes that find the channel busy join its queue of pending publishes and the
thread holding the lock publishes them too, in arrival order, before it lets go
(flat combining): a busy channel costs no thread a sleep and a wake-up per
publish. A publish with ``wait=False`` returns at once in that case and learns
its result through ``done``.

:class:`LocalBroker` is the :class:`~sente_lite.brokers.base.Broker` over one
registry: the server's default, this process's channels only.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, ContextManager, Dict, Hashable, Iterator, List, Optional, Set, Tuple

from ..counters import Counter, Counters
from ..wire.channels import (Built, HistoryPage, Published, RecoveryResult, Since,  # noqa: F401
                             message_text)
from .base import Announce, BrokerEvents, Dispatch, Done, HistoryLimits, PresenceBroker
from .presence_table import PresenceTable, TablePresence
from .history import (DEFAULT_HISTORY_MAX_BYTES_PER_CHANNEL, DEFAULT_HISTORY_MAX_BYTES_TOTAL,
                      DEFAULT_HISTORY_SIZE, DEFAULT_HISTORY_TTL_S, DEFAULT_MAX_REPLAY_PER_SUBSCRIBE,
                      DEFAULT_PUBLISH_DEDUP_S, History, _Channel)
from .publish_ids import DEFAULT_PUBLISH_IDS_MAX, DEFAULT_PUBLISH_IDS_PER_PUBLISHER
from .recovery import (REASON_ALREADY_SUBSCRIBED, REASON_EPOCH_CHANGED,
                       REASON_HISTORY_EXPIRED, REASON_HISTORY_OFF, REASON_REPLAY_LIMIT, Kept,
                       count_recovery, history_page)

log = logging.getLogger("sente_lite.brokers.local")

DEFAULT_MAX_IDLE_CHANNELS = 10_000
#: Messages of a replay handed over per hold of the channel's lock (publishes pass in between).
REPLAY_PAGE_MESSAGES = 64
#: Channels without subscribers have their history and publish ids expired every this
#: part of ``history_ttl_s`` (no one touches them to expire them otherwise).
IDLE_SWEEP_FRACTION = 0.1


class _Publish:
    """One publish waiting for (or run by) the thread holding its channel's lock."""

    __slots__ = ("make_frame", "deliver", "exclude", "done", "result", "finished", "publish_id",
                 "publisher", "event")

    def __init__(self, make_frame: Callable[[int, str], Any], deliver: Callable[[Hashable, Any], bool],
                 exclude: Optional[Hashable], done: Optional[Callable[[Any], None]],
                 publish_id: Optional[str] = None, publisher: Optional[str] = None) -> None:
        self.publish_id = publish_id
        self.publisher = publisher
        self.make_frame = make_frame
        self.deliver = deliver
        self.exclude = exclude
        self.done = done
        self.result: Any = None  # a Published, or the exception that ended this publish
        self.finished: Optional[threading.Event] = None  # set for a waiting publisher
        self.event = False  # an event frame (join/leave): no offset, no history



def _hand(member: Hashable, frames: List[Any], deliver: Callable[[Hashable, Any], bool],
          ) -> Tuple[int, bool]:
    """Hand ``frames`` to ``member`` in order: (how many it took, whether it took them all)."""
    for n, frame in enumerate(frames):
        if not deliver(member, frame):
            return n, False
    return len(frames), True


class MemberIndex:
    """Which channels each member holds, for a registry that keeps ``_by_member``
    under ``_lock`` and leaves one channel with ``_leave(member, name)``."""

    _lock: threading.Lock
    _by_member: Dict[Hashable, Any]

    def _leave(self, member: Hashable, name: str) -> Any:
        raise NotImplementedError

    def remove_member(self, member: Hashable) -> List[str]:
        """Remove ``member`` from every channel (exactly once). Returns the channel names."""
        with self._lock:
            names = sorted(self._by_member.pop(member, ()))
            for name in names:
                self._leave(member, name)
            return names

    def channels_of(self, member: Hashable) -> List[str]:
        """The channels ``member`` is subscribed to."""
        with self._lock:
            return sorted(self._by_member.get(member, ()))


class ReplayPager:
    """Replays a page at a time, for a registry with ``history`` and ``dispatch``: the
    channel's lock is taken per page, and held only for the last page and the switch to
    live messages (no gap, no duplicate)."""

    history: History
    dispatch: Optional[Callable[[Callable[[], None]], None]]
    holding: Callable[[_Channel], ContextManager[None]]  # FlatCombining's

    def _replay(self, ch: _Channel, member: Hashable, first: int,
                deliver: Callable[[Hashable, Any], bool],
                announce: Optional[Callable[[int, str, Optional[RecoveryResult]], None]]) -> None:
        """Hand ``member`` the messages of ``ch`` from ``first`` on, a page at a time, then
        make it a subscriber: here, or a page per call of ``dispatch`` when set."""
        cursor = [first]

        def step() -> bool:
            return self._replay_page(ch, member, cursor, deliver, announce)

        dispatch = self.dispatch
        if dispatch is None:
            while step():
                pass
            return

        def run() -> None:
            if step():
                dispatch(run)

        dispatch(run)

    def _replay_page(self, ch: _Channel, member: Hashable, cursor: List[int],
                     deliver: Callable[[Hashable, Any], bool],
                     announce: Optional[Callable[[int, str, Optional[RecoveryResult]], None]],
                     ) -> bool:
        """Hand over the page from ``cursor[0]`` (under the lock only when it is the last:
        live messages follow it). True when more remains. Stops at the first frame
        ``deliver`` refuses (its queue is full: it is on its way out)."""
        counters = self.history.counters
        with self.holding(ch):
            if member not in ch.catching_up:
                return False  # unsubscribed or gone meanwhile
            page = self.history.page(ch, cursor[0], REPLAY_PAGE_MESSAGES)
            if page is None:  # history moved past the next message: say so, go live
                self._join(ch, member)
                result = RecoveryResult(False, REASON_HISTORY_EXPIRED, 0)
                count_recovery(counters, result)
                if announce is not None:
                    announce(ch.offset, ch.epoch, result)
                return False
            if cursor[0] + len(page) > ch.offset:
                handed = _hand(member, page, deliver)[0]
                counters.add(Counter.REPLAYED_MESSAGES, handed)
                self._join(ch, member)
                return False
        handed, taking = _hand(member, page, deliver)
        cursor[0] += handed
        counters.add(Counter.REPLAYED_MESSAGES, handed)
        if not taking:
            with self.holding(ch):
                if member in ch.catching_up:
                    self._join(ch, member)
        return taking

    @staticmethod
    def _join(ch: _Channel, member: Hashable) -> None:
        """``member`` has had its replay: live messages from now on. Caller holds ``ch.lock``."""
        del ch.catching_up[member]
        ch.subscribers[member] = None


class FlatCombining:
    """The publish path of a registry with ``history``, ``_lock``, ``_idle`` and
    ``_get_or_create``: offsets taken and frames handed over under the channel's lock;
    a publish finding it busy is run by the thread holding it (see the module)."""

    history: History
    _lock: threading.Lock
    _idle: "OrderedDict[str, None]"

    def _get_or_create(self, name: str) -> _Channel:
        raise NotImplementedError

    def publish(
        self,
        name: str,
        make_frame: Callable[[int, str], Any],
        deliver: Callable[[Hashable, Any], bool],
        exclude: Optional[Hashable] = None,
        done: Optional[Callable[[Any], None]] = None,
        wait: bool = True,
        publish_id: Optional[str] = None,
        publisher: Optional[str] = None,
        event: bool = False,
    ) -> Optional[Published]:
        """Publish one message on ``name`` (``event``: an event frame, a join or leave,
        handed to every subscriber in order with the messages, taking no offset).

        ``make_frame(offset, epoch)`` is called once; its result goes to
        ``deliver(member, frame)`` for every subscriber except ``exclude``, in
        offset order per channel. ``deliver`` returns False when it did not take
        the frame (that member is on its way out); it is not counted as delivered.
        ``done(result)``, if given, is called with the :class:`Published` (or the
        exception that ended the publish) by the thread that ran it, still in
        channel order. With ``wait`` the result is returned (and an exception
        raised); without, a publish that another thread runs returns None at once
        (and one that failed returns None: ``done`` has the exception).

        A ``publish_id`` already accepted from the same ``publisher`` (uid, or
        None for the server) on ``name`` within ``publish_dedup_s`` is not
        delivered again: the result is the first one's, with ``duplicate=True``.
        """
        entry = _Publish(make_frame, deliver, exclude, done, publish_id, publisher)
        entry.event = event
        with self._lock:
            ch = self._get_or_create(name)
            if name in self._idle:
                self._idle.move_to_end(name)
            if wait:
                entry.finished = threading.Event()
            ch.pending.append(entry)
            # Never waits here: subscribe and unsubscribe take the registry lock, then
            # the channel's (a publisher waiting for the channel's under the registry
            # lock was a deadlock). A busy channel's holder runs this publish instead.
            holding = ch.lock.acquire(False)
        if holding:
            self._run_pending(ch)
        if not wait:  # the result, if this thread ran it; done() has it in every case
            return entry.result if isinstance(entry.result, Published) else None
        assert entry.finished is not None
        entry.finished.wait()  # set by whichever thread ran it (this one, if it held the lock)
        if isinstance(entry.result, BaseException):
            raise entry.result
        return entry.result

    @contextlib.contextmanager
    def holding(self, ch: _Channel) -> Iterator[None]:
        """``ch``'s lock for anything but a publish (reading or trimming its history, a
        replay, forgetting it): a publish that finds the lock taken meanwhile queues
        itself for the holder to run, so it runs before the lock is let go."""
        ch.lock.acquire()
        try:
            yield
        finally:
            self._run_pending(ch, trim=False)

    def _run_pending(self, ch: _Channel, trim: bool = True) -> None:
        """Run the channel's pending publishes in order; the caller holds ``ch.lock``,
        which this releases. A publish queued while letting go is run too: it was
        queued when the lock looked taken, so no other thread will run it. With
        ``trim``, then bring every history back within ``history_max_bytes_total``
        (without: the next publish's run does)."""
        pending = ch.pending
        lock = ch.lock
        while True:
            try:
                while pending:
                    self._run_one(ch, pending.popleft())
            finally:
                lock.release()
            if not pending or not lock.acquire(False):
                if trim and self.history.over_total():
                    self.history.trim_total(self.holding)
                return  # nothing left, or another thread holds the lock and runs the rest

    def _run_one(self, ch: _Channel, entry: _Publish) -> None:
        try:
            if entry.event:
                frame = entry.make_frame(0, ch.epoch)
                for member in ch.subscribers:
                    entry.deliver(member, frame)
                self._finish(ch, entry)
                return
            history = self.history
            publish_id = entry.publish_id
            if publish_id is not None:
                first = history.first_publish(ch, entry.publisher, publish_id)
                if first is not None:
                    entry.result = Published(ch.name, first[0], ch.epoch, first[1], True)
                    self._finish(ch, entry)
                    return
            ch.offset += 1
            offset = ch.offset
            frame = entry.make_frame(offset, ch.epoch)
            delivered = 0
            exclude = entry.exclude
            deliver = entry.deliver
            for member in ch.subscribers:
                if member != exclude and deliver(member, frame):
                    delivered += 1
            if history.size or publish_id is not None:
                history.record(ch, offset, frame, publish_id, delivered, entry.publisher)
            if delivered:
                history.counters.add(Counter.DELIVERIES, delivered)
            entry.result = Published(ch.name, offset, ch.epoch, delivered)
        except Exception as exc:  # a bug in make_frame or deliver: this publish fails alone
            entry.result = exc
            if entry.finished is None and entry.done is None:
                log.error("publish on %r failed", ch.name, exc_info=exc)
        self._finish(ch, entry)

    @staticmethod
    def _finish(ch: _Channel, entry: _Publish) -> None:
        if entry.done is not None:
            try:
                entry.done(entry.result)
            except Exception:
                log.exception("publish callback for %r raised", ch.name)
        if entry.finished is not None:
            entry.finished.set()


class ChannelRegistry(MemberIndex, ReplayPager, FlatCombining):
    """Named channels with subscribers, offsets and epochs.

    ``epoch_prefix`` (one per server start) plus a per-channel generation make the
    epoch: it changes whenever a channel's offsets restart. A channel with no
    subscribers keeps its offset until more than ``max_idle_channels`` idle
    channels exist; then the least recently used idle ones are forgotten (counted
    in ``evicted``) and restart at offset 1 under a new epoch.
    """

    def __init__(self, epoch_prefix: str, max_idle_channels: int = DEFAULT_MAX_IDLE_CHANNELS, *,
                 history_size: int = DEFAULT_HISTORY_SIZE,
                 history_ttl_s: float = DEFAULT_HISTORY_TTL_S,
                 publish_dedup_s: float = DEFAULT_PUBLISH_DEDUP_S,
                 publish_ids_per_publisher: int = DEFAULT_PUBLISH_IDS_PER_PUBLISHER,
                 publish_ids_max: int = DEFAULT_PUBLISH_IDS_MAX,
                 counters: Optional[Counters] = None,
                 clock: Callable[[], float] = time.monotonic,
                 history_max_bytes_per_channel: int = DEFAULT_HISTORY_MAX_BYTES_PER_CHANNEL,
                 history_max_bytes_total: int = DEFAULT_HISTORY_MAX_BYTES_TOTAL,
                 max_replay_per_subscribe: int = DEFAULT_MAX_REPLAY_PER_SUBSCRIBE) -> None:
        if max_idle_channels < 1:
            # 0 would evict a channel in the moment it is created, before its first use
            raise ValueError(f"max_idle_channels must be >= 1, got {max_idle_channels}")
        self.history = History(history_size, history_ttl_s, publish_dedup_s,
                               counters if counters is not None else Counters(), clock,
                               publish_ids_per_publisher, publish_ids_max,
                               history_max_bytes_per_channel, history_max_bytes_total,
                               max_replay_per_subscribe)
        self._clock = clock
        self._epoch_prefix = epoch_prefix
        self._max_idle = max_idle_channels
        self._lock = threading.Lock()
        self._channels: Dict[str, _Channel] = {}
        self._idle: "OrderedDict[str, None]" = OrderedDict()
        self._by_member: Dict[Hashable, Set[str]] = {}
        self._generation = itertools.count(1)
        self.evicted = 0
        self._next_sweep = 0.0
        #: Runs each page of a replay after the last (the server's network thread, a page
        #: per pass); None: the whole replay within ``subscribe``.
        self.dispatch: Optional[Callable[[Callable[[], None]], None]] = None

    # -- internal -------------------------------------------------------------
    def _get_or_create(self, name: str) -> _Channel:
        """Return the channel, creating it. Caller holds ``self._lock``."""
        ch = self._channels.get(name)
        if ch is None:
            ch = _Channel(name, f"{self._epoch_prefix}.{next(self._generation)}")
            self.history.limit(ch)
            self._channels[name] = ch
            self._mark_idle(ch)
        return ch

    def _mark_idle(self, ch: _Channel) -> None:
        """Record ``ch`` as idle and evict beyond the limit. Caller holds ``self._lock``."""
        self._idle[ch.name] = None
        self._idle.move_to_end(ch.name)
        while len(self._idle) > self._max_idle:
            victim, _ = self._idle.popitem(last=False)
            gone = self._channels.pop(victim)
            with gone.lock:  # a publish queues only under self._lock: none can meanwhile
                self.history.forget(gone)
            self.evicted += 1

    # -- public ---------------------------------------------------------------
    def subscribe(self, member: Hashable, name: str,
                  announce: Optional[Callable[[int, str, Optional[RecoveryResult]], None]] = None,
                  since: Optional[Since] = None,
                  deliver: Optional[Callable[[Hashable, Any], bool]] = None,
                  replay_budget: Optional[int] = None,
                  ) -> Tuple[int, str, bool, Optional[RecoveryResult]]:
        """Add ``member`` to channel ``name``.

        Returns (top offset, epoch, newly added, recovery). ``announce(offset,
        epoch, recovery)``, if given, runs under the channel's lock, so whatever it
        queues precedes every message published after this subscribe. With
        ``since``, the recovery says whether every message after ``since`` is still
        in history and at most ``max_replay_per_subscribe`` (and ``replay_budget``)
        of them; if so each is handed to ``deliver(member, frame)`` in offset order
        right after ``announce``, a page at a time (publishes pass in between; with
        ``dispatch`` set, every page runs later, one per call of it), then live
        ones: no gap, no duplicate, whatever publishes race this. If history
        loses the next page meanwhile, ``announce`` runs once more with
        ``recovered: false, history-expired`` and live messages follow. A member that
        already holds ``name`` gets ``already-subscribed`` and no replay.
        """
        replay = None
        with self._lock:
            ch = self._get_or_create(name)
            with ch.lock:  # under self._lock: no publish can queue meanwhile
                held = member in ch.subscribers or member in ch.catching_up
                if not held:
                    self._by_member.setdefault(member, set()).add(name)
                    self._idle.pop(name, None)
                recovery: Optional[RecoveryResult] = None
                if since is not None:
                    recovery = self.history.recover(ch, since, replay_budget, held)
                if announce is not None:
                    announce(ch.offset, ch.epoch, recovery)
                top, epoch = ch.offset, ch.epoch
                if not held:
                    if since is not None and recovery is not None and recovery.replayed \
                            and deliver is not None:
                        ch.catching_up[member] = None
                        replay = (since.offset + 1, deliver)
                    else:
                        ch.subscribers[member] = None
        if replay is not None:
            self._replay(ch, member, replay[0], replay[1], announce)
        return top, epoch, not held, recovery

    def unsubscribe(self, member: Hashable, name: str) -> bool:
        """Remove ``member`` from ``name``. True when it was subscribed."""
        with self._lock:
            return self._remove(member, name)

    def _remove(self, member: Hashable, name: str) -> bool:
        ch = self._channels.get(name)
        if ch is None:
            return False
        with ch.lock:  # the caller holds self._lock: no publish can queue meanwhile
            if member in ch.catching_up:
                del ch.catching_up[member]
            elif member in ch.subscribers:
                del ch.subscribers[member]
            else:
                return False
            empty = not ch.subscribers and not ch.catching_up
        names = self._by_member.get(member)
        if names is not None:
            names.discard(name)
            if not names:
                del self._by_member[member]
        if empty:
            self._mark_idle(ch)
        return True

    _leave = _remove  # MemberIndex: leave one channel
    def subscriber_count(self, name: str) -> int:
        """How many members channel ``name`` has now."""
        with self._lock:
            ch = self._channels.get(name)
            return len(ch.subscribers) + len(ch.catching_up) if ch else 0

    def subscriber_counts(self) -> Dict[str, int]:
        """Channel -> members, for every channel with subscribers."""
        with self._lock:
            return {name: len(ch.subscribers) for name, ch in self._channels.items()
                    if ch.subscribers}

    def history_of(self, name: str) -> List[Tuple[int, Any]]:
        """(offset, frame) of every message in the history of ``name``, oldest first."""
        with self._lock:
            ch = self._channels.get(name)
        if ch is None:
            return []
        with self.holding(ch):
            self.history.expire(ch, self._clock())
            return [(offset, frame) for offset, frame, _, _ in ch.history]

    def kept(self, name: str) -> Tuple[Optional[Kept], List[Tuple[int, Any]]]:
        """What the history of ``name`` says (None: a channel it does not know) and
        (offset, frame) of every message it keeps, oldest first."""
        with self._lock:
            ch = self._channels.get(name)
        if ch is None:
            return None, []
        with self.holding(ch):
            return self.history.kept(ch), [(o, frame) for o, frame, _, _ in ch.history]

    def sweep_idle(self) -> int:
        """Expire the history and publish ids of the channels without subscribers, at
        most once every ``IDLE_SWEEP_FRACTION`` of ``history_ttl_s``: what churn leaves
        in them is gone within about 1.1 ``history_ttl_s`` (ids: ``publish_dedup_s``)
        even when no one publishes or subscribes there again. Returns the channels
        looked at (0 between sweeps)."""
        now = self._clock()
        if now < self._next_sweep:
            return 0
        self._next_sweep = now + self.history.ttl_s * IDLE_SWEEP_FRACTION
        with self._lock:
            idle = [self._channels[name] for name in self._idle]
        self.history.ids.expire()
        for ch in idle:
            # a busy channel is left to its publisher (which expires it); a publish
            # queued while this holds the lock runs before the lock is let go
            if ch.history and ch.lock.acquire(False):
                try:
                    self.history.expire(ch, now)
                finally:
                    self._run_pending(ch)
        return len(idle)

    def stats(self) -> dict:
        """Counts: channels known, channels with subscribers, subscriptions, evicted,
        messages, bytes and publish ids held (and the ids' bytes), and the history settings."""
        with self._lock:
            channels = list(self._channels.values())
            active = len(channels) - len(self._idle)
            subs = sum(len(v) for v in self._by_member.values())
        return {"channels": len(channels), "active_channels": active,
                "subscriptions": subs, "channels_evicted": self.evicted,
                "history_messages": sum(len(ch.history) for ch in channels),
                "publish_ids": len(self.history.ids),
                "publish_ids_bytes": self.history.ids.held_bytes(),
                "history_bytes": self.history.total_bytes,
                "history_size": self.history.size, "history_ttl_s": self.history.ttl_s,
                "publish_dedup_s": self.history.dedup_s,
                "history_max_bytes_per_channel": self.history.max_bytes_per_channel,
                "history_max_bytes_total": self.history.max_bytes_total,
                "max_replay_per_subscribe": self.history.max_replay}


class LocalBroker(TablePresence):
    """The :class:`~sente_lite.brokers.base.Broker` of one process (the server's default):
    its channels live in a :class:`ChannelRegistry` (``registry``; keyword arguments are
    its settings); every user is on this node, so routing to other nodes does nothing
    and there is no ``presence`` across nodes."""

    waits_on_io = False
    presence: Optional[PresenceBroker] = None

    def __init__(self, epoch_prefix: str, max_idle_channels: int = DEFAULT_MAX_IDLE_CHANNELS,
                 **settings: Any) -> None:
        self.registry = ChannelRegistry(epoch_prefix, max_idle_channels, **settings)
        self._events: Optional[BrokerEvents] = None
        self.presence_table = PresenceTable()

    @classmethod
    def over(cls, registry: ChannelRegistry) -> "LocalBroker":
        """The broker of an existing ``registry`` (an in-memory test server's)."""
        broker = cls.__new__(cls)
        broker.registry = registry
        broker._events = None
        broker.presence_table = PresenceTable()
        return broker

    # -- lifecycle -------------------------------------------------------------------
    def start(self, events: BrokerEvents, dispatch: Optional[Dispatch] = None) -> None:
        """Deliver through ``events``; replays run a page per call of ``dispatch`` when given."""
        self._events = events
        self.registry.dispatch = dispatch

    def stop(self, timeout: float = 5.0) -> None:
        """Nothing to stop: no thread of its own."""

    def health(self) -> Dict[str, Any]:
        return {"broker": "local", "broker-status": "up"}

    def stats(self) -> Dict[str, Any]:
        return {**self.registry.stats(), "broker": "local"}

    def sweep_idle(self) -> int:
        return self.registry.sweep_idle()

    def limit_history(self, limits: HistoryLimits) -> None:
        self.registry.history.set_limits(limits)

    def _started(self) -> BrokerEvents:
        events = self._events
        if events is None:
            raise RuntimeError("the broker is not started (Server.start starts it)")
        return events

    # -- channels --------------------------------------------------------------------
    def publish(self, channel: str, head: str, *, exclude: Optional[Hashable] = None,
                done: Optional[Done] = None, wait: bool = True,
                publish_id: Optional[str] = None, publisher: Optional[str] = None,
                traceparent: Optional[str] = None) -> Optional[Published]:
        """See :meth:`~sente_lite.brokers.base.Broker.publish`: ``delivered`` counts the
        subscribers whose queue took the message (every subscriber is on this node)."""
        events = self._events  # not _started(): this is the hot path
        if events is None:
            raise RuntimeError("the broker is not started (Server.start starts it)")
        build = events.build

        def make_frame(offset: int, epoch: str) -> Built:
            # built once per publish, as a whole WebSocket frame, for every subscriber
            return build(message_text(head.encode("utf-8"), offset, epoch), traceparent)

        return self.registry.publish(channel, make_frame, events.deliver, exclude, done, wait,
                                     publish_id, publisher)

    def subscribe(self, member: Hashable, channel: str, announce: Optional[Announce] = None,
                  since: Optional[Since] = None, replay_budget: Optional[int] = None,
                  ) -> Tuple[int, str, bool, Optional[RecoveryResult]]:
        """See :meth:`ChannelRegistry.subscribe` (the answer is known at once)."""
        return self.registry.subscribe(member, channel, announce, since,
                                       self._started().deliver, replay_budget)

    def unsubscribe(self, member: Hashable, channel: str) -> bool:
        return self.registry.unsubscribe(member, channel)

    def publish_event(self, channel: str, text: bytes) -> None:
        """See :meth:`~sente_lite.brokers.base.Broker.publish_event`: through the channel's
        publish queue, so in order with its messages."""
        if not self.registry.subscriber_count(channel):
            return
        events = self._started()
        built = events.build(text, None)
        self.registry.publish(channel, lambda offset, epoch: built, events.deliver,
                              wait=False, event=True)

    def remove_member(self, member: Hashable) -> List[str]:
        return self.registry.remove_member(member)

    def channels_of(self, member: Hashable) -> List[str]:
        return self.registry.channels_of(member)

    def subscriber_count(self, channel: str) -> int:
        return self.registry.subscriber_count(channel)

    def subscriber_counts(self) -> Dict[str, int]:
        return self.registry.subscriber_counts()

    def history(self, channel: str, since: Optional[Since] = None, limit: Optional[int] = None,
                reverse: bool = False) -> HistoryPage:
        kept, frames = self.registry.kept(channel)
        return history_page(kept, [(o, built.text()) for o, built in frames], since, limit,
                            reverse)

    def history_of(self, channel: str) -> List[Tuple[int, Any]]:
        """(offset, built message) of every message kept for ``channel``, oldest first."""
        return self.registry.history_of(channel)

    # -- users on other nodes: there are none ---------------------------------------------
    def to_user(self, uid: str, json_payload: bytes) -> None:
        """No other node."""

    def broadcast(self, json_payload: bytes) -> None:
        """No other node."""

    def disconnect_user(self, uid: str, code: int, reason: str) -> None:
        """No other node."""


__all__ = ["LocalBroker", "ChannelRegistry", "MemberIndex", "ReplayPager", "FlatCombining",
           "History", "Published", "RecoveryResult", "Since", "DEFAULT_MAX_IDLE_CHANNELS",
           "DEFAULT_HISTORY_SIZE", "DEFAULT_HISTORY_TTL_S", "DEFAULT_PUBLISH_DEDUP_S",
           "DEFAULT_HISTORY_MAX_BYTES_PER_CHANNEL", "DEFAULT_HISTORY_MAX_BYTES_TOTAL",
           "DEFAULT_MAX_REPLAY_PER_SUBSCRIBE", "DEFAULT_PUBLISH_IDS_PER_PUBLISHER",
           "DEFAULT_PUBLISH_IDS_MAX", "REPLAY_PAGE_MESSAGES", "IDLE_SWEEP_FRACTION",
           "REASON_EPOCH_CHANGED", "REASON_HISTORY_EXPIRED", "REASON_HISTORY_OFF",
           "REASON_REPLAY_LIMIT", "REASON_ALREADY_SUBSCRIBED"]

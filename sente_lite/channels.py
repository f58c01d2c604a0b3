"""Channel registry: subscriptions, per-channel offsets and epochs. No I/O.

Thread-safe. A publish assigns the next offset and hands the frame to every
subscriber *while holding the channel's lock*, so all subscribers of a channel
receive its messages in offset order even when several threads publish at once.
The hand-off (``deliver``) must therefore never block; the server's is a
non-blocking write or an append to a bounded per-connection queue.

Each channel keeps a bounded history (``history_size`` messages, none older than
``history_ttl_s``) so a subscriber that names the last offset and epoch it saw
(``since``) gets every later message replayed in order before the live ones,
or is told exactly why not (PROTOCOL 9). Publishes may carry an id; a repeated
id within ``publish_dedup_s`` is answered with the first result and not
delivered again.

Publishes that find the channel busy join its queue of pending publishes and the
thread holding the lock publishes them too, in arrival order, before it lets go
(flat combining): a busy channel costs no thread a sleep and a wake-up per
publish. A publish with ``wait=False`` returns at once in that case and learns
its result through ``done``.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, Hashable, List, NamedTuple, Optional, Set, Tuple

from .counters import Counter, Counters
from .publish_ids import (DEFAULT_PUBLISH_IDS_MAX, DEFAULT_PUBLISH_IDS_PER_PUBLISHER,
                          PublishIds)

log = logging.getLogger("sente_lite.channels")

DEFAULT_MAX_IDLE_CHANNELS = 10_000
#: Messages kept per channel for recovery (0 turns history off).
DEFAULT_HISTORY_SIZE = 1000
#: Seconds a message stays in its channel's history.
DEFAULT_HISTORY_TTL_S = 300.0
#: Seconds a publish id is remembered (at least ``history_ttl_s``).
DEFAULT_PUBLISH_DEDUP_S = 300.0
#: Why a subscribe with ``since`` was not recovered (PROTOCOL 9).
REASON_EPOCH_CHANGED = "epoch-changed"
REASON_HISTORY_EXPIRED = "history-expired"
REASON_HISTORY_OFF = "history-off"


@dataclass
class _Channel:
    name: str
    epoch: str
    offset: int = 0
    subscribers: Dict[Hashable, None] = field(default_factory=dict)  # insertion-ordered set
    lock: threading.Lock = field(default_factory=threading.Lock)
    pending: Deque["_Publish"] = field(default_factory=collections.deque)  # for the lock's holder
    # (offset, built frame, monotonic time), oldest first; under ``lock``
    history: Deque[Tuple[int, Any, float]] = field(default_factory=collections.deque)


class _Publish:
    """One publish waiting for (or run by) the thread holding its channel's lock."""

    __slots__ = ("make_frame", "deliver", "exclude", "done", "result", "finished", "publish_id",
                 "publisher")

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


class Published(NamedTuple):
    """What a publish did: the offset it got, the epoch, and how many it reached.

    ``duplicate``: its id was already accepted; the rest is the first one's result.
    """

    channel_id: str
    offset: int
    epoch: str
    delivered: int
    duplicate: bool = False


class Since(NamedTuple):
    """The last message a subscriber saw: recover every later one."""

    offset: int
    epoch: str


class RecoveryResult(NamedTuple):
    """The answer to a subscribe with ``since``: ``reason`` is set when not recovered."""

    recovered: bool
    reason: Optional[str]
    replayed: int


def count_recovery(counters: Counters, result: RecoveryResult) -> None:
    """Count the answer to one subscribe with ``since`` (any broker)."""
    if result.recovered:
        counters.add(Counter.RECOVERED_SUBSCRIBES)
        if result.replayed:
            counters.add(Counter.REPLAYED_MESSAGES, result.replayed)
    else:
        counters.add(Counter.UNRECOVERED_SUBSCRIBES)


class History:
    """The history and publish-id rules of every channel (PROTOCOL 9): what is kept, for
    how long, and whether a subscriber's ``since`` can be recovered. Callers hold
    the channel's lock."""

    def __init__(self, size: int, ttl_s: float, dedup_s: float, counters: Counters,
                 clock: Callable[[], float],
                 ids_per_publisher: int = DEFAULT_PUBLISH_IDS_PER_PUBLISHER,
                 ids_max: int = DEFAULT_PUBLISH_IDS_MAX) -> None:
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"history_size must be an int >= 0 (0: off), got {size!r}")
        if not ttl_s > 0:
            raise ValueError(f"history_ttl_s must be > 0, got {ttl_s!r}")
        if not dedup_s >= ttl_s:
            raise ValueError(f"publish_dedup_s ({dedup_s!r}) must be at least "
                             f"history_ttl_s ({ttl_s!r})")
        self.size = size
        self.ttl_s = float(ttl_s)
        self.dedup_s = float(dedup_s)
        self.counters = counters
        self.clock = clock
        self.ids = PublishIds(dedup_s, ids_per_publisher, ids_max, counters, clock)

    def recover(self, ch: _Channel, since: Since) -> Tuple[RecoveryResult, List[Any]]:
        """Whether ``since`` can be recovered on ``ch``, and the frames to replay."""
        if since.epoch != ch.epoch or since.offset > ch.offset or since.offset < 0:
            # an offset beyond the top cannot come from this epoch's history either
            result = RecoveryResult(False, REASON_EPOCH_CHANGED, 0)
            replay: List[Any] = []
        elif since.offset == ch.offset:
            result, replay = RecoveryResult(True, None, 0), []
        elif not self.size:
            result, replay = RecoveryResult(False, REASON_HISTORY_OFF, 0), []
        else:
            self.expire(ch, self.clock())
            history = ch.history
            if not history or history[0][0] > since.offset + 1:
                result, replay = RecoveryResult(False, REASON_HISTORY_EXPIRED, 0), []
            else:
                skip = since.offset + 1 - history[0][0]
                replay = [frame for _, frame, _ in itertools.islice(history, skip, None)]
                result = RecoveryResult(True, None, len(replay))
        count_recovery(self.counters, result)
        return result, replay

    def first_publish(self, ch: _Channel, publisher: Optional[str],
                      publish_id: str) -> Optional[Tuple[int, int]]:
        """(offset, delivered) of the publish that first had ``publish_id`` from
        ``publisher`` on ``ch`` within the dedup window (counted as a duplicate), else None."""
        first = self.ids.first(publisher, ch.name, ch.epoch, publish_id)
        if first is not None:
            self.counters.add(Counter.DUPLICATE_PUBLISHES)
        return first

    def record(self, ch: _Channel, offset: int, frame: Any, publish_id: Optional[str],
               delivered: int, publisher: Optional[str] = None) -> None:
        """Keep a published message (and its publisher's id), within the limits."""
        now = self.clock()
        if self.size:
            history = ch.history
            history.append((offset, frame, now))
            if len(history) > self.size:
                history.popleft()
                self.counters.add(Counter.HISTORY_EVICTED)
            if now - history[0][2] > self.ttl_s:
                self.expire(ch, now)
        if publish_id is not None:
            self.ids.remember(publisher, ch.name, ch.epoch, publish_id, offset, delivered)

    def expire(self, ch: _Channel, now: float) -> None:
        """Drop history older than ``ttl_s``."""
        history = ch.history
        if history and now - history[0][2] > self.ttl_s:
            oldest = now - self.ttl_s
            dropped = 0
            while history and history[0][2] < oldest:
                history.popleft()
                dropped += 1
            self.counters.add(Counter.HISTORY_EVICTED, dropped)


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


class ChannelRegistry(MemberIndex):
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
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_idle_channels < 1:
            # 0 would evict a channel in the moment it is created, before its first use
            raise ValueError(f"max_idle_channels must be >= 1, got {max_idle_channels}")
        self.history = History(history_size, history_ttl_s, publish_dedup_s,
                               counters if counters is not None else Counters(), clock,
                               publish_ids_per_publisher, publish_ids_max)
        self._clock = clock
        self._epoch_prefix = epoch_prefix
        self._max_idle = max_idle_channels
        self._lock = threading.Lock()
        self._channels: Dict[str, _Channel] = {}
        self._idle: "OrderedDict[str, None]" = OrderedDict()
        self._by_member: Dict[Hashable, Set[str]] = {}
        self._generation = itertools.count(1)
        self.evicted = 0

    # -- internal -------------------------------------------------------------
    def _get_or_create(self, name: str) -> _Channel:
        """Return the channel, creating it. Caller holds ``self._lock``."""
        ch = self._channels.get(name)
        if ch is None:
            ch = _Channel(name, f"{self._epoch_prefix}.{next(self._generation)}")
            self._channels[name] = ch
            self._mark_idle(ch)
        return ch

    def _mark_idle(self, ch: _Channel) -> None:
        """Record ``ch`` as idle and evict beyond the limit. Caller holds ``self._lock``."""
        self._idle[ch.name] = None
        self._idle.move_to_end(ch.name)
        while len(self._idle) > self._max_idle:
            victim, _ = self._idle.popitem(last=False)
            del self._channels[victim]
            self.evicted += 1

    # -- public ---------------------------------------------------------------
    def subscribe(self, member: Hashable, name: str,
                  announce: Optional[Callable[[int, str, Optional[RecoveryResult]], None]] = None,
                  since: Optional[Since] = None,
                  deliver: Optional[Callable[[Hashable, Any], bool]] = None,
                  ) -> Tuple[int, str, bool, Optional[RecoveryResult]]:
        """Add ``member`` to channel ``name``.

        Returns (top offset, epoch, newly added, recovery). ``announce(offset,
        epoch, recovery)``, if given, runs under the channel's lock, so whatever it
        queues precedes every message published after this subscribe. With
        ``since``, the recovery says whether every message after ``since`` is still
        in history; if so each is handed to ``deliver(member, frame)`` in offset
        order right after ``announce``, still under the lock (no gap, no
        duplicate, whatever publishes race this); if not, nothing is replayed.
        """
        with self._lock:
            ch = self._get_or_create(name)
            with ch.lock:
                added = member not in ch.subscribers
                if added:
                    ch.subscribers[member] = None
                    self._by_member.setdefault(member, set()).add(name)
                    self._idle.pop(name, None)
                recovery: Optional[RecoveryResult] = None
                replay: List[Any] = []
                if since is not None:
                    recovery, replay = self.history.recover(ch, since)
                if announce is not None:
                    announce(ch.offset, ch.epoch, recovery)
                if replay and deliver is not None:
                    for frame in replay:
                        deliver(member, frame)
                return ch.offset, ch.epoch, added, recovery

    def unsubscribe(self, member: Hashable, name: str) -> bool:
        """Remove ``member`` from ``name``. True when it was subscribed."""
        with self._lock:
            return self._remove(member, name)

    def _remove(self, member: Hashable, name: str) -> bool:
        ch = self._channels.get(name)
        if ch is None:
            return False
        with ch.lock:
            if member not in ch.subscribers:
                return False
            del ch.subscribers[member]
            empty = not ch.subscribers
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
            return len(ch.subscribers) if ch else 0

    def subscriber_counts(self) -> Dict[str, int]:
        """Channel -> members, for every channel with subscribers."""
        with self._lock:
            return {name: len(ch.subscribers) for name, ch in self._channels.items()
                    if ch.subscribers}

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
    ) -> Optional[Published]:
        """Publish one message on ``name``.

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
        with self._lock:
            ch = self._get_or_create(name)
            if not ch.subscribers:
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

    def _run_pending(self, ch: _Channel) -> None:
        """Run the channel's pending publishes in order; the caller holds ``ch.lock``,
        which this releases. A publish queued while letting go is run too: it was
        queued when the lock looked taken, so no other thread will run it."""
        pending = ch.pending
        lock = ch.lock
        while True:
            try:
                while pending:
                    self._run_one(ch, pending.popleft())
            finally:
                lock.release()
            if not pending or not lock.acquire(False):
                return  # nothing left, or another thread holds the lock and runs the rest

    def _run_one(self, ch: _Channel, entry: _Publish) -> None:
        try:
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

    def history_of(self, name: str) -> List[Tuple[int, Any]]:
        """(offset, frame) of every message in the history of ``name``, oldest first."""
        with self._lock:
            ch = self._channels.get(name)
        if ch is None:
            return []
        with ch.lock:
            self.history.expire(ch, self._clock())
            return [(offset, frame) for offset, frame, _ in ch.history]

    def stats(self) -> dict:
        """Counts: channels known, channels with subscribers, subscriptions, evicted,
        messages and publish ids held, and the history settings."""
        with self._lock:
            channels = list(self._channels.values())
            active = len(channels) - len(self._idle)
            subs = sum(len(v) for v in self._by_member.values())
        return {"channels": len(channels), "active_channels": active,
                "subscriptions": subs, "channels_evicted": self.evicted,
                "history_messages": sum(len(ch.history) for ch in channels),
                "publish_ids": len(self.history.ids),
                "history_size": self.history.size, "history_ttl_s": self.history.ttl_s,
                "publish_dedup_s": self.history.dedup_s}

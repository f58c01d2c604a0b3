"""Per-channel history and publish ids of the in-process broker (PROTOCOL 9): what is
kept, for how long, in how many bytes, and what a subscriber's ``since`` can recover
(decided by :func:`~sente_lite.brokers.recovery.decide`). No I/O; callers hold the
channel's lock (see :class:`History`)."""

from __future__ import annotations

import collections
import itertools
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Deque, Dict, Hashable, List, Optional, Tuple

from ..counters import Counter, Counters
from ..wire.channels import RecoveryResult, Since
from .publish_ids import DEFAULT_PUBLISH_IDS_MAX, DEFAULT_PUBLISH_IDS_PER_PUBLISHER, PublishIds
from .recovery import Kept, count_recovery, decide, replay_limit

#: Messages kept per channel for recovery (0 turns history off).
DEFAULT_HISTORY_SIZE = 1000
#: Seconds a message stays in its channel's history.
DEFAULT_HISTORY_TTL_S = 300.0
#: Seconds a publish id is remembered (at least ``history_ttl_s``).
DEFAULT_PUBLISH_DEDUP_S = 300.0
#: Bytes of frames kept in one channel's history; older messages are dropped beyond (counted).
DEFAULT_HISTORY_MAX_BYTES_PER_CHANNEL = 16 << 20
#: Bytes of frames kept in the history of every channel together; the oldest go first beyond.
DEFAULT_HISTORY_MAX_BYTES_TOTAL = 256 << 20
#: Messages one subscribe with ``since`` may replay; more is ``recovered: false``, ``replay-limit``.
DEFAULT_MAX_REPLAY_PER_SUBSCRIBE = 1000

@dataclass
class _Channel:
    name: str
    epoch: str
    offset: int = 0
    subscribers: Dict[Hashable, None] = field(default_factory=dict)  # insertion-ordered set
    lock: threading.Lock = field(default_factory=threading.Lock)
    pending: Deque[Any] = field(default_factory=collections.deque)  # for the lock's holder
    # (offset, built frame, monotonic time, bytes), oldest first; under ``lock``
    history: Deque[Tuple[int, Any, float, int]] = field(default_factory=collections.deque)
    history_bytes: int = 0  # sum of the history's bytes; under ``lock``
    low: int = 1  # the oldest offset history may still hold (every older one is gone)
    # members being handed their replay, a page at a time: subscribers after it; under ``lock``
    catching_up: Dict[Hashable, None] = field(default_factory=dict)
    # this channel's history bounds (History.limits_of at its creation); None: History's own
    size: Optional[int] = None
    ttl_s: Optional[float] = None


def held_bytes(frame: Any) -> int:
    """Bytes a history entry keeps alive: ``frame.held_bytes()`` when it has one, else its length."""
    sized = getattr(frame, "held_bytes", None)
    if sized is not None:
        return int(sized())
    try:
        return len(frame)
    except TypeError:
        return sys.getsizeof(frame)


def _validate_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


class History:
    """The history and publish-id rules of every channel (PROTOCOL 9): what is kept, for
    how long, in how many bytes, and whether a subscriber's ``since`` can be recovered.
    Callers hold the channel's lock, except for :meth:`trim_total` (no lock at all)."""

    def __init__(self, size: int, ttl_s: float, dedup_s: float, counters: Counters,
                 clock: Callable[[], float],
                 ids_per_publisher: int = DEFAULT_PUBLISH_IDS_PER_PUBLISHER,
                 ids_max: int = DEFAULT_PUBLISH_IDS_MAX,
                 max_bytes_per_channel: int = DEFAULT_HISTORY_MAX_BYTES_PER_CHANNEL,
                 max_bytes_total: int = DEFAULT_HISTORY_MAX_BYTES_TOTAL,
                 max_replay: int = DEFAULT_MAX_REPLAY_PER_SUBSCRIBE) -> None:
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"history_size must be an int >= 0 (0: off), got {size!r}")
        if not ttl_s > 0:
            raise ValueError(f"history_ttl_s must be > 0, got {ttl_s!r}")
        if not dedup_s >= ttl_s:
            raise ValueError(f"publish_dedup_s ({dedup_s!r}) must be at least "
                             f"history_ttl_s ({ttl_s!r})")
        self.max_bytes_per_channel = _validate_count("history_max_bytes_per_channel",
                                                     max_bytes_per_channel, 1)
        self.max_bytes_total = _validate_count("history_max_bytes_total", max_bytes_total, 1)
        self.max_replay = _validate_count("max_replay_per_subscribe", max_replay, 0)
        self.size = size
        self.ttl_s = float(ttl_s)
        #: channel name -> (history size, ttl) when a channel's own are smaller
        #: (:meth:`set_limits`); None: every channel has ``size`` and ``ttl_s``.
        self._limits: Optional[Callable[[str], Optional[Tuple[int, float]]]] = None
        self.dedup_s = float(dedup_s)
        self.counters = counters
        self.clock = clock
        self.ids = PublishIds(dedup_s, ids_per_publisher, ids_max, counters, clock)
        self._bytes_lock = threading.Lock()  # taken after a channel's lock, never before
        self.total_bytes = 0  # under _bytes_lock
        self.held = 0  # messages kept, every channel; under _bytes_lock
        # (channel, offset) of every kept message in publish order (some already dropped)
        self._order: Deque[Tuple[_Channel, int]] = collections.deque()

    def set_limits(self, limits: Optional[Callable[[str], Optional[Tuple[int, float]]]]) -> None:
        """Per channel name, (history size, ttl) smaller than or equal to ``size`` and
        ``ttl_s`` (a namespace's own), or None for those; read once per channel, when it
        is made. Raises ValueError for a channel whose limits exceed them."""
        self._limits = limits

    def limit(self, ch: _Channel) -> None:
        """Give the new channel ``ch`` its history bounds."""
        found = self._limits(ch.name) if self._limits is not None else None
        size, ttl_s = found if found is not None else (self.size, self.ttl_s)
        ch.size, ch.ttl_s = min(size, self.size), min(float(ttl_s), self.ttl_s)

    def _size(self, ch: _Channel) -> int:
        return self.size if ch.size is None else ch.size

    def _ttl(self, ch: _Channel) -> float:
        return self.ttl_s if ch.ttl_s is None else ch.ttl_s

    def kept(self, ch: _Channel, budget: Optional[int] = None) -> Kept:
        """What the history of ``ch`` says for a recovery (expired messages dropped first)."""
        size = self._size(ch)
        if size:
            self.expire(ch, self.clock())
        return Kept(ch.epoch, ch.offset, ch.history[0][0] if ch.history else None,
                    bool(size), replay_limit(self.max_replay, budget))

    def recover(self, ch: _Channel, since: Since, budget: Optional[int] = None,
                held: bool = False) -> RecoveryResult:
        """Whether ``since`` can be recovered on ``ch`` (counted): ``replayed`` messages from
        ``since.offset + 1`` are in history and at most ``max_replay`` (and ``budget``)."""
        result = decide(since, self.kept(ch, budget), held)
        count_recovery(self.counters, result)
        return result

    @staticmethod
    def page(ch: _Channel, first: int, most: int) -> Optional[List[Any]]:
        """Up to ``most`` frames from offset ``first`` on; None when ``first`` is no longer kept."""
        if first > ch.offset:
            return []
        if first < ch.low or not ch.history:
            return None
        skip = first - ch.history[0][0]
        return [frame for _, frame, _, _ in itertools.islice(ch.history, skip, skip + most)]

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
        size = self._size(ch)
        if size:
            shed = getattr(frame, "shed", None)
            if shed is not None:
                shed()  # keep one copy: the frame every JSON subscriber got
            self._keep(ch, offset, frame, now)
            history = ch.history
            if len(history) > size:
                self._drop(ch, len(history) - size, Counter.HISTORY_EVICTED)
            if ch.history_bytes > self.max_bytes_per_channel:
                over = 0
                extra = ch.history_bytes - self.max_bytes_per_channel
                for _, _, _, size in history:
                    over += 1
                    extra -= size
                    if extra <= 0:
                        break
                self._drop(ch, over, Counter.HISTORY_BYTES_EVICTED)
            if history and now - history[0][2] > self._ttl(ch):
                self.expire(ch, now)
        if publish_id is not None:
            self.ids.remember(publisher, ch.name, ch.epoch, publish_id, offset, delivered)

    def _keep(self, ch: _Channel, offset: int, frame: Any, now: float) -> None:
        size = held_bytes(frame)
        ch.history.append((offset, frame, now, size))
        ch.history_bytes += size
        with self._bytes_lock:
            self.total_bytes += size
            self.held += 1
            order = self._order
            order.append((ch, offset))
            if len(order) > 2 * self.held + 1024:  # mostly entries dropped by their channel
                self._order = collections.deque(e for e in order if e[1] >= e[0].low)

    def _drop(self, ch: _Channel, count: int, counter: Optional[Counter]) -> None:
        """Drop the ``count`` oldest messages of ``ch`` (caller holds its lock)."""
        history = ch.history
        freed = dropped = 0
        while history and dropped < count:
            offset, _, _, size = history.popleft()
            ch.low = offset + 1
            freed += size
            dropped += 1
        ch.history_bytes -= freed
        with self._bytes_lock:
            self.total_bytes -= freed
            self.held -= dropped
        if counter is not None and dropped:
            self.counters.add(counter, dropped)

    def forget(self, ch: _Channel) -> None:
        """``ch`` is forgotten: release its history (caller holds its lock)."""
        self._drop(ch, len(ch.history), None)
        ch.low = ch.offset + 1

    def over_total(self) -> bool:
        """True when the histories together hold more than ``max_bytes_total``."""
        return self.total_bytes > self.max_bytes_total

    def trim_total(self, holding: Callable[[_Channel], ContextManager[None]]) -> None:
        """Drop the oldest messages of any channel until ``max_bytes_total`` holds.
        The caller holds no channel's lock."""
        while True:
            with self._bytes_lock:
                if self.total_bytes <= self.max_bytes_total or not self._order:
                    return
                ch, offset = self._order.popleft()
            if offset < ch.low:
                continue  # already dropped by its channel
            with holding(ch):  # the channel's lock; publishes queued meanwhile run after
                history = ch.history
                count = 0
                for kept, _, _, _ in history:
                    if kept > offset:
                        break
                    count += 1
                self._drop(ch, count, Counter.HISTORY_BYTES_EVICTED)

    def expire(self, ch: _Channel, now: float) -> None:
        """Drop history older than the channel's ``ttl_s``."""
        history = ch.history
        ttl_s = self._ttl(ch)
        if history and now - history[0][2] > ttl_s:
            oldest = now - ttl_s
            dropped = 0
            for _, _, kept, _ in history:
                if kept >= oldest:
                    break
                dropped += 1
            self._drop(ch, dropped, Counter.HISTORY_EVICTED)


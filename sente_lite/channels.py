"""Channel registry: subscriptions, per-channel offsets and epochs. No I/O.

Thread-safe. A publish assigns the next offset and hands the frame to every
subscriber *while holding the channel's lock*, so all subscribers of a channel
receive its messages in offset order even when several threads publish at once.
The hand-off (``deliver``) must therefore never block; the server's is a
non-blocking write or an append to a bounded per-connection queue.

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
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, Hashable, List, NamedTuple, Optional, Set, Tuple

log = logging.getLogger("sente_lite.channels")

DEFAULT_MAX_IDLE_CHANNELS = 10_000


@dataclass
class _Channel:
    name: str
    epoch: str
    offset: int = 0
    subscribers: Dict[Hashable, None] = field(default_factory=dict)  # insertion-ordered set
    lock: threading.Lock = field(default_factory=threading.Lock)
    pending: Deque["_Publish"] = field(default_factory=collections.deque)  # for the lock's holder


class _Publish:
    """One publish waiting for (or run by) the thread holding its channel's lock."""

    __slots__ = ("make_frame", "deliver", "exclude", "done", "result", "finished")

    def __init__(self, make_frame: Callable[[int, str], Any], deliver: Callable[[Hashable, Any], bool],
                 exclude: Optional[Hashable], done: Optional[Callable[[Any], None]]) -> None:
        self.make_frame = make_frame
        self.deliver = deliver
        self.exclude = exclude
        self.done = done
        self.result: Any = None  # a Published, or the exception that ended this publish
        self.finished: Optional[threading.Event] = None  # set for a waiting publisher


class Published(NamedTuple):
    """What a publish did: the offset it got, the epoch, and how many it reached."""

    channel_id: str
    offset: int
    epoch: str
    delivered: int


class ChannelRegistry:
    """Named channels with subscribers, offsets and epochs.

    ``epoch_prefix`` (one per server start) plus a per-channel generation make the
    epoch: it changes whenever a channel's offsets restart. A channel with no
    subscribers keeps its offset until more than ``max_idle_channels`` idle
    channels exist; then the least recently used idle ones are forgotten (counted
    in ``evicted``) and restart at offset 1 under a new epoch.
    """

    def __init__(self, epoch_prefix: str, max_idle_channels: int = DEFAULT_MAX_IDLE_CHANNELS) -> None:
        if max_idle_channels < 1:
            # 0 would evict a channel in the moment it is created, before its first use
            raise ValueError(f"max_idle_channels must be >= 1, got {max_idle_channels}")
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
                  announce: Optional[Callable[[int, str], None]] = None) -> Tuple[int, str, bool]:
        """Add ``member`` to channel ``name``. Returns (top offset, epoch, newly added).

        ``announce(offset, epoch)``, if given, runs under the channel's lock, so
        whatever it queues precedes every message published after this subscribe.
        """
        with self._lock:
            ch = self._get_or_create(name)
            with ch.lock:
                added = member not in ch.subscribers
                if added:
                    ch.subscribers[member] = None
                    self._by_member.setdefault(member, set()).add(name)
                    self._idle.pop(name, None)
                if announce is not None:
                    announce(ch.offset, ch.epoch)
                return ch.offset, ch.epoch, added

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

    def remove_member(self, member: Hashable) -> List[str]:
        """Remove ``member`` from every channel (exactly once). Returns the channel names."""
        with self._lock:
            names = sorted(self._by_member.get(member, ()))
            for name in names:
                self._remove(member, name)
            return names

    def channels_of(self, member: Hashable) -> List[str]:
        """The channels ``member`` is subscribed to."""
        with self._lock:
            return sorted(self._by_member.get(member, ()))

    def subscriber_count(self, name: str) -> int:
        """How many members channel ``name`` has now."""
        with self._lock:
            ch = self._channels.get(name)
            return len(ch.subscribers) if ch else 0

    def publish(
        self,
        name: str,
        make_frame: Callable[[int, str], Any],
        deliver: Callable[[Hashable, Any], bool],
        exclude: Optional[Hashable] = None,
        done: Optional[Callable[[Any], None]] = None,
        wait: bool = True,
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
        """
        entry = _Publish(make_frame, deliver, exclude, done)
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

    @staticmethod
    def _run_one(ch: _Channel, entry: _Publish) -> None:
        try:
            ch.offset += 1
            frame = entry.make_frame(ch.offset, ch.epoch)
            delivered = 0
            exclude = entry.exclude
            deliver = entry.deliver
            for member in ch.subscribers:
                if member != exclude and deliver(member, frame):
                    delivered += 1
            entry.result = Published(ch.name, ch.offset, ch.epoch, delivered)
        except Exception as exc:  # a bug in make_frame or deliver: this publish fails alone
            entry.result = exc
            if entry.finished is None and entry.done is None:
                log.error("publish on %r failed", ch.name, exc_info=exc)
        if entry.done is not None:
            try:
                entry.done(entry.result)
            except Exception:
                log.exception("publish callback for %r raised", ch.name)
        if entry.finished is not None:
            entry.finished.set()

    def stats(self) -> dict:
        """Counts: channels known, channels with subscribers, subscriptions, evicted."""
        with self._lock:
            active = len(self._channels) - len(self._idle)
            subs = sum(len(v) for v in self._by_member.values())
            return {"channels": len(self._channels), "active_channels": active,
                    "subscriptions": subs, "channels_evicted": self.evicted}

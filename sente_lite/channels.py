"""Channel registry: subscriptions, per-channel offsets and epochs. No I/O.

Thread-safe. A publish assigns the next offset and hands the frame to every
subscriber *while holding the channel's lock*, so all subscribers of a channel
receive its messages in offset order even when several threads publish at once.
The hand-off (``deliver``) must therefore never block; the server's is an append
to a bounded per-connection queue.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, Hashable, List, NamedTuple, Optional, Set, Tuple

DEFAULT_MAX_IDLE_CHANNELS = 10_000


@dataclass
class _Channel:
    name: str
    epoch: str
    offset: int = 0
    subscribers: Dict[Hashable, None] = field(default_factory=dict)  # insertion-ordered set
    lock: threading.Lock = field(default_factory=threading.Lock)


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
        make_frame: Callable[[int, str], bytes],
        deliver: Callable[[Hashable, bytes], bool],
        exclude: Optional[Hashable] = None,
    ) -> Published:
        """Publish one message on ``name``.

        ``make_frame(offset, epoch)`` is called once; its result goes to
        ``deliver(member, frame)`` for every subscriber except ``exclude``, in
        offset order per channel. ``deliver`` returns False when it did not take
        the frame (that member is on its way out); it is not counted as delivered.
        """
        while True:
            with self._lock:
                ch = self._get_or_create(name)
                if not ch.subscribers:
                    self._idle.move_to_end(name)
                chlock = ch.lock
                if chlock.acquire(False):
                    break
            # Another publish holds the channel: wait for it without holding the registry
            # lock (publishers of other channels must not queue behind this one), then try
            # again from the registry (the channel may have been evicted meanwhile). Never
            # wait for the registry lock while holding a channel's: subscribe and
            # unsubscribe take the two in the other order (that wait was a deadlock).
            chlock.acquire()
            chlock.release()
        try:
            ch.offset += 1
            frame = make_frame(ch.offset, ch.epoch)
            delivered = 0
            for member in ch.subscribers:
                if member != exclude and deliver(member, frame):
                    delivered += 1
            return Published(name, ch.offset, ch.epoch, delivered)
        finally:
            chlock.release()

    def stats(self) -> dict:
        """Counts: channels known, channels with subscribers, subscriptions, evicted."""
        with self._lock:
            active = len(self._channels) - len(self._idle)
            subs = sum(len(v) for v in self._by_member.values())
            return {"channels": len(self._channels), "active_channels": active,
                    "subscriptions": subs, "channels_evicted": self.evicted}

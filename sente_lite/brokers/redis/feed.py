"""Live messages of a :class:`~sente_lite.brokers.redis.broker.RedisBroker` on one server:
each channel's messages from the subscription handed to its local subscribers in offset
order, with no gap and no duplicate; a gap (or an outage) is caught up from the
channel's stream, or its subscribers are told what is lost (:class:`LiveFeed`)."""

from __future__ import annotations

import logging
import threading
from typing import Dict, List, Optional, Tuple

from ...counters import Counter, Counters
from ...wire.channels import message_text
from ..base import BrokerEvents
from ..recovery import REASON_EPOCH_CHANGED, REASON_HISTORY_EXPIRED
from .channel_presence import EVENT_MARK
from .link import RedisLink
from .space import MAX_PENDING_PER_CHANNEL, Chan, ChannelSpace, command_refused, read_stream

log = logging.getLogger("sente_lite.redis")


class LiveFeed:
    """The live half of :class:`~sente_lite.brokers.redis.channels.RedisChannels`: messages
    from the subscription (:meth:`on_messages`), catch-ups from the stream (the link's
    I/O thread) and notices of lost messages."""

    _space: ChannelSpace
    _link: RedisLink
    _counters: Counters
    _lock: threading.Lock
    _chans: Dict[str, Chan]
    _shard_names: Dict[bytes, str]
    heard: int
    unserved: int
    inbound_bytes: int
    events: Optional[BrokerEvents]
    notices: int
    caught_up: int

    # -- live messages ---------------------------------------------------------------
    def on_messages(self, batch: List[Tuple[bytes, bytes]]) -> None:
        """Live messages read from the subscription, (pubsub channel, data) in order."""
        for channel, data in batch:
            self._on_message(channel, data)

    def _on_message(self, channel: bytes, data: bytes) -> None:
        self.inbound_bytes += len(channel) + len(data)
        if self._space.sharded:
            name: Optional[str] = self._shard_names.get(channel)
        else:
            name = channel[len(self._space.msg_prefix):].decode("utf-8", "replace")
        with self._lock:
            ch = self._chans.get(name) if name is not None else None
        if ch is None:
            self.unserved += 1  # a message of a channel nobody here subscribes to
            return
        self.heard += 1
        if data.startswith(EVENT_MARK):  # a join/leave: to every subscriber, in order
            self._deliver_event(ch, data[len(EVENT_MARK):])
            return
        offset_b, epoch_b, exclude_b, traced_b, head = data.split(b" ", 4)
        offset, epoch, exclude = int(offset_b), epoch_b.decode(), exclude_b.decode()
        traceparent = None if traced_b == b"-" else traced_b.decode()
        with ch.lock:
            if ch.dead:
                return
            if ch.synced and epoch == ch.epoch:
                if offset <= ch.last:
                    return
                if offset == ch.last + 1:
                    self._deliver_locked(ch, head, exclude, traceparent)
                    if ch.pending:
                        self._drain_locked(ch)
                    return
            if len(ch.pending) < MAX_PENDING_PER_CHANNEL:
                ch.pending[offset] = (epoch, exclude, traceparent, head)
            if ch.synced and not self._link.down:
                self._queue_resync(ch)  # a gap, or a new epoch: catch up from the stream

    def _deliver_event(self, ch: Chan, text: bytes) -> None:
        events = self.events
        with ch.lock:
            if ch.dead or events is None or not ch.subs:
                return
            built = events.build(text, None)
            for member, deliver in ch.subs.items():
                deliver(member, built)

    def _deliver_locked(self, ch: Chan, head: bytes, exclude: str,
                        traceparent: Optional[str]) -> None:
        """Hand the message after ``ch.last`` to every local subscriber, built once.
        Caller holds ``ch.lock``."""
        ch.last += 1
        events = self.events
        if events is None or not ch.subs:
            return
        assert ch.epoch is not None
        built = events.build(message_text(head, ch.last, ch.epoch), traceparent)
        delivered = 0
        for member, deliver in ch.subs.items():
            if member != exclude and deliver(member, built):
                delivered += 1
        self._counters.add(Counter.DELIVERIES, delivered)

    def _drain_locked(self, ch: Chan) -> None:
        """Deliver held live messages that follow ``ch.last``; go live, or catch up again
        if one is missing. Caller holds ``ch.lock``."""
        pending = ch.pending
        while pending:
            item = pending.pop(ch.last + 1, None)
            if item is None:
                break
            if item[0] == ch.epoch:
                self._deliver_locked(ch, item[3], item[1], item[2])
        for offset in [o for o, item in pending.items() if o <= ch.last or item[0] != ch.epoch]:
            del pending[offset]
        ch.synced = not pending
        if pending:
            self._queue_resync(ch)

    def _queue_resync(self, ch: Chan) -> None:
        """Catch ``ch`` up on the broker thread. Caller holds ``ch.lock``."""
        ch.synced = False
        if not ch.resync_queued and not self._link.down:
            ch.resync_queued = True
            self._link.submit(lambda: self._resync(ch) if not ch.dead else None)

    # -- catching up with Redis ------------------------------------------------------
    def _resync(self, ch: Chan) -> None:
        """Catch ``ch`` up with Redis (broker thread): deliver what its subscribers
        missed from the stream, or tell them it is lost; then go live."""
        with ch.lock:
            known, first = ch.epoch, ch.last + 1
            ch.resync_queued = False
        if known is None:  # new here: no subscriber has seen anything yet
            epoch, top, _, entries = read_stream(self._link, self._space, ch.name, 0, "", False)
        else:
            epoch, top, _, entries = read_stream(self._link, self._space, ch.name, first, known,
                                                 True)
        with ch.lock:
            if ch.dead:
                return
            if ch.epoch is None:
                ch.epoch, ch.last = epoch, top
            elif (epoch != ch.epoch or top < ch.last
                  or (first <= top and (not entries or entries[0][0] != first))):
                # Redis lost the channel (new epoch), or its stream no longer reaches back,
                # or a failover lost messages handed out here (top below them: rolled back)
                reason = REASON_EPOCH_CHANGED if epoch != ch.epoch else REASON_HISTORY_EXPIRED
                start = entries[0][0] - 1 if entries else top
                log.warning("channel %r: %s after %s:%d; %d subscriber(s) told (recovered: false)",
                            ch.name, reason, ch.epoch, ch.last, len(ch.subs))
                ch.epoch, ch.last = epoch, start
                for member in list(ch.subs):
                    self._notice(member, ch, reason)
            for entry in entries:
                if entry.offset == ch.last + 1:
                    self._deliver_locked(ch, entry.head, entry.exclude, entry.traceparent)
                    self.caught_up += 1
            self._drain_locked(ch)

    def catch_up(self) -> int:
        """The link is back: catch every channel up (broker thread). Returns how many."""
        with self._lock:
            chans = list(self._chans.values())
        for ch in chans:
            with ch.lock:
                ch.synced = False
            try:
                self._resync(ch)
            except self._link.redis_mod.RedisError as exc:
                if self._link.is_link_error(exc):
                    raise
                command_refused(self._counters, ch.name, "catch up", exc)  # this channel alone waits
        return len(chans)

    def link_down(self) -> None:
        """The link went down: live messages wait until each channel is caught up."""
        with self._lock:
            chans = list(self._chans.values())
        for ch in chans:
            with ch.lock:
                ch.synced = False  # live messages wait until it is caught up

    def _notice(self, member: object, ch: Chan, reason: str) -> None:
        """Tell ``member`` that messages of ``ch`` are lost (counted)."""
        events = self.events
        if events is None:
            return
        self.notices += 1
        self._counters.add(Counter.UNRECOVERED_SUBSCRIBES)
        events.lost(member, ch.name, ch.last, ch.epoch or "", reason)


__all__ = ["LiveFeed"]

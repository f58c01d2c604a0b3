"""Channels of a :class:`~sente_lite.brokers.redis.broker.RedisBroker` seen from one server.

:class:`~sente_lite.brokers.redis.space.ChannelSpace` names a channel's keys in Redis and
holds the history limits; :class:`RedisChannels` keeps this server's subscribers of each
channel and hands them every message in offset order: a subscribe (with ``since``) is
answered from the channel's stream (:data:`~sente_lite.brokers.redis.space.SYNC_SCRIPT`;
recovery decided by :func:`~sente_lite.brokers.recovery.decide`), live messages from
the subscription follow with no gap and no duplicate, and after an outage every
channel is caught up from its stream, or its subscribers are told it is lost
(:class:`~sente_lite.brokers.redis.feed.LiveFeed`).
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Dict, Hashable, List, Optional, Tuple

from ...counters import Counter, Counters
from ...wire.channels import Built, RecoveryResult, Since, message_text
from ..base import Announce, BrokerEvents, Dispatch
from ..local import REPLAY_PAGE_MESSAGES, MemberIndex
from ..recovery import REASON_HISTORY_EXPIRED, Kept, count_recovery, decide
from .feed import LiveFeed
from .link import RedisLink
from .space import (DEFAULT_CHANNEL_TTL_S, MAX_PENDING_PER_CHANNEL,  # noqa: F401 (importable here)
                    MAX_SUBSCRIBE_TRIES, SYNC_SCRIPT, Chan, ChannelSpace, Entry, command_refused,
                    digest, read_stream)


class _Catching:
    """A subscriber being handed its replay, a page per pass of the network thread; live
    messages for it wait in ``held`` meanwhile (at most MAX_PENDING_PER_CHANNEL: past
    that it is told ``history-expired`` and goes on live)."""

    __slots__ = ("owner", "ch", "member", "replay", "events", "held", "lost", "sent", "next",
                 "hold")

    def __init__(self, owner: "RedisChannels", ch: Chan, member: Hashable, replay: List[Entry],
                 events: BrokerEvents) -> None:
        self.owner, self.ch, self.member = owner, ch, member
        self.replay, self.events = replay, events
        self.held: List[Built] = []
        self.lost = False
        self.sent = self.next = 0
        self.hold = self._hold  # the one bound method ch.subs holds meanwhile

    def _hold(self, member: Hashable, built: Built) -> bool:
        """A live message during the replay (the channel's lock is held)."""
        if len(self.held) >= MAX_PENDING_PER_CHANNEL:
            self.lost = True
            return False
        self.held.append(built)
        return True

    def hand(self, most: int) -> bool:
        """Hand over the next ``most`` replayed messages; False at the first refused."""
        events, epoch = self.events, self.ch.epoch or ""
        for entry in self.replay[self.next:self.next + most]:
            built = events.build(message_text(entry.head, entry.offset, epoch), entry.traceparent)
            if not events.deliver(self.member, built):
                return False
            self.sent += 1
        self.next += most
        return True

    def start(self) -> None:
        """Hand the replay over: on the network thread a page per pass when there is
        one (live messages for the member wait meanwhile), else here, at once. The
        caller holds the channel's lock."""
        owner = self.owner
        if owner.dispatch is None:
            self.hand(len(self.replay))
            owner._counters.add(Counter.REPLAYED_MESSAGES, self.sent)
        else:
            self.ch.subs[self.member] = self.hold
            owner.dispatch(self.page)

    def page(self) -> None:
        """One page (network thread); then the next one, at a later pass, or go live."""
        taking = self.hand(REPLAY_PAGE_MESSAGES)
        dispatch = self.owner.dispatch
        if taking and self.next < len(self.replay) and dispatch is not None:
            dispatch(self.page)
        else:
            self.finish(taking)

    def finish(self, taking: bool) -> None:
        """The replay is over: hand over what waited, then live messages."""
        ch, member, owner = self.ch, self.member, self.owner
        with ch.lock:
            if ch.subs.get(member) is self.hold:  # still subscribed
                for built in self.held if taking else ():
                    if not self.events.deliver(member, built):
                        break
                ch.subs[member] = self.events.deliver
                if self.lost:
                    owner._notice(member, ch, REASON_HISTORY_EXPIRED)
        owner._counters.add(Counter.REPLAYED_MESSAGES, self.sent)


class RedisChannels(MemberIndex, LiveFeed):
    """This server's subscribers of each channel, kept in step with Redis.

    Subscribes, catch-ups and resyncs run on the link's I/O thread; live messages
    arrive through :meth:`on_messages` (the server's network thread, or the link's).
    """

    def __init__(self, space: ChannelSpace, link: RedisLink, counters: Counters) -> None:
        self._space = space
        self._link = link
        self._counters = counters
        self.events: Optional[BrokerEvents] = None
        self._lock = threading.Lock()  # guards _chans and _by_member
        self._chans: Dict[str, Chan] = {}
        self._by_member: Dict[Hashable, Dict[str, None]] = {}
        #: Runs work on the server's network thread (see RedisBroker.start); None: here.
        self.dispatch: Optional[Dispatch] = None
        self.notices = 0  # recovered:false notices sent to local subscribers
        self.caught_up = 0  # messages delivered from a stream after a gap or an outage
        self._shard_names: Dict[bytes, str] = {}  # shard channel listened to -> channel
        self.heard = 0  # channel messages read from Redis for a channel served here
        self.unserved = 0  # ... for a channel nobody here subscribes to (dropped)
        self.inbound_bytes = 0  # pubsub channel name and payload bytes of those messages

    # -- subscribe -------------------------------------------------------------------
    def subscribe(self, member: Hashable, name: str, announce: Optional[Announce] = None,
                  since: Optional[Since] = None, replay_budget: Optional[int] = None,
                  ) -> Tuple[int, str, bool, Optional[RecoveryResult]]:
        """See :meth:`RedisBroker.subscribe`."""
        with self._lock:
            names = self._by_member.setdefault(member, {})
            added = name not in names
            names[name] = None
        limit = self._space.max_replay
        if replay_budget is not None:
            limit = min(limit, replay_budget)
        if not added and since is not None:
            limit = -1  # already held: answered without a replay
        self._link.submit(lambda: self._subscribe_op(member, name, announce, since, limit))
        return 0, "", added, None

    def _subscribe_op(self, member: Hashable, name: str, announce: Any, since: Optional[Since],
                      limit: int) -> None:
        """:meth:`_do_subscribe`; when Redis refuses a command of this channel the subscribe
        fails alone: ``announce.refuse(error)`` (when the caller gave one) answers it."""
        try:
            self._do_subscribe(member, name, announce, since, limit)
        except self._link.redis_mod.RedisError as exc:
            if self._link.is_link_error(exc):
                raise  # the link thread reconnects and runs it again
            self.unsubscribe(member, name)
            error = command_refused(self._counters, name, "subscribe to", exc)
            refuse = getattr(announce, "refuse", None)
            if refuse is not None:
                refuse(error)

    def _chan(self, name: str) -> Chan:
        with self._lock:
            ch = self._chans.get(name)
            if ch is None:
                ch = self._chans[name] = Chan(name)
            return ch

    def _do_subscribe(self, member: Hashable, name: str, announce: Any, since: Optional[Since],
                      limit: int) -> None:
        with self._lock:
            if name not in self._by_member.get(member, ()):
                return  # unsubscribed (or gone) before its turn
        events = self.events
        assert events is not None  # subscribes run on the link's thread: the broker started
        for _ in range(MAX_SUBSCRIBE_TRIES):
            ch = self._chan(name)
            if self._space.sharded:
                self._listen(name)  # confirmed before the stream is read: no window
            if not ch.synced:
                self._resync(ch)
            read = self._read_for(ch, since, limit)
            with ch.lock:
                if ch.dead or not ch.synced:
                    continue
                recovery: Optional[RecoveryResult] = None
                replay: List[Entry] = []
                if since is not None:
                    answer = self._recover(ch, since, read, limit)
                    if answer is None:
                        continue  # live messages came past what was read: read again
                    recovery, replay = answer
                ch.subs[member] = events.deliver
                if announce is not None:
                    announce(ch.last, ch.epoch or "", recovery)
                if replay:
                    _Catching(self, ch, member, replay, events).start()
                return
        raise RuntimeError(f"subscribe to {name!r} could not catch up with Redis in "
                           f"{MAX_SUBSCRIBE_TRIES} tries")

    def _read_for(self, ch: Chan, since: Optional[Since], limit: int,
                  ) -> Optional[Tuple[int, List[Entry]]]:
        """(Redis ms, entries from ``since.offset + 1``) when the stream may recover
        ``since`` (at most ``limit`` of them; only the first when more are missed: whether
        it is still kept decides between history-expired and replay-limit), else None."""
        with ch.lock:
            last, epoch = ch.last, ch.epoch
        if (since is None or limit < 0 or since.epoch != epoch or not 0 <= since.offset < last
                or not self._space.history_of(ch.name)[0]):
            return None
        missed = last - since.offset
        _, _, now_ms, entries = read_stream(self._link, self._space, ch.name, since.offset + 1,
                                            since.epoch, False, missed if missed <= limit else 1)
        return now_ms, entries

    def _recover(self, ch: Chan, since: Since, read: Optional[Tuple[int, List[Entry]]],
                 limit: int) -> Optional[Tuple[RecoveryResult, List[Entry]]]:
        """(recovery, entries to replay) for ``since`` on ``ch`` (counted), or None when
        the stream must be read again (the channel moved past what was read). Caller
        holds ``ch.lock``."""
        size, ttl_s = self._space.history_of(ch.name)
        history_on = bool(size)
        if (read is None and limit >= 0 and since.epoch == ch.epoch
                and 0 <= since.offset < ch.last and history_on):
            return None  # the channel moved on after the read was decided against
        first: Optional[int] = None
        entries: List[Entry] = []
        if read is not None:
            now_ms, entries = read
            oldest = now_ms - int(ttl_s * 1000)
            if entries and entries[0].ms >= oldest:
                first = entries[0].offset
        result = decide(since, Kept(ch.epoch, ch.last, first, history_on, max(limit, 0)),
                        held=limit < 0)
        if result.recovered and result.replayed:
            if read is None or entries[-1].offset < ch.last:
                return None
            entries = [e for e in entries if e.offset <= ch.last]
        else:
            entries = []
        count_recovery(self._counters, result)
        return result, entries

    # -- local registry --------------------------------------------------------------
    def unsubscribe(self, member: Hashable, name: str) -> bool:
        """Remove ``member`` from ``name``. True when it was subscribed."""
        with self._lock:
            names = self._by_member.get(member)
            if names is None or name not in names:
                return False
            del names[name]
            if not names:
                del self._by_member[member]
            self._drop(member, name)
            return True

    def _drop(self, member: Hashable, name: str) -> None:
        """Caller holds ``self._lock``."""
        ch = self._chans.get(name)
        if ch is None:
            return
        with ch.lock:
            ch.subs.pop(member, None)
            if not ch.subs:
                ch.dead = True
                del self._chans[name]
                if self._space.sharded:
                    self._link.submit(functools.partial(self._unlisten, name))

    def _listen(self, name: str) -> None:
        """Listen to the shard channel of ``name`` (I/O thread; once)."""
        shard = self._space.shard_channel(name)
        if shard not in self._shard_names:
            self._shard_names[shard] = name
            self._link.listen(shard)

    def listening(self) -> int:
        """How many channels' shard channels this server listens to."""
        return len(self._shard_names)

    def _unlisten(self, name: str) -> None:
        """Stop listening to ``name`` unless a subscriber came back (I/O thread)."""
        with self._lock:
            if name in self._chans:
                return
        shard = self._space.shard_channel(name)
        if self._shard_names.pop(shard, None) is not None:
            self._link.unlisten(shard)

    _leave = _drop

    def subscriber_count(self, name: str) -> int:
        """How many members of this server channel ``name`` has now."""
        with self._lock:
            ch = self._chans.get(name)
        if ch is None:
            return 0
        with ch.lock:
            return len(ch.subs)

    def members_here(self, name: str, exclude: Optional[str]) -> int:
        """This server's subscribers of ``name`` a message excluding ``exclude`` goes to."""
        with self._lock:
            ch = self._chans.get(name)
        if ch is None:
            return 0
        with ch.lock:
            return len(ch.subs) - (exclude in ch.subs)

    def subscriber_counts(self) -> Dict[str, int]:
        """Channel -> members here, for every channel with subscribers on this server."""
        with self._lock:
            chans = list(self._chans.items())
        return {name: len(ch.subs) for name, ch in chans if ch.subs}

    def counts(self) -> Tuple[int, int]:
        """(channels with subscribers here, subscriptions here)."""
        with self._lock:
            return len(self._chans), sum(len(v) for v in self._by_member.values())


__all__ = ["RedisChannels", "ChannelSpace", "SYNC_SCRIPT", "DEFAULT_CHANNEL_TTL_S",
           "MAX_PENDING_PER_CHANNEL", "MAX_SUBSCRIBE_TRIES", "command_refused", "digest"]

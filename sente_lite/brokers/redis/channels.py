"""Channels of a :class:`~sente_lite.brokers.redis.broker.RedisBroker` seen from one server.

:class:`ChannelSpace` names a channel's keys in Redis and holds the history
limits; :class:`RedisChannels` keeps this server's subscribers of each channel
and hands them every message in offset order: a subscribe (with ``since``) is
answered from the channel's stream (:data:`SYNC_SCRIPT`), live messages from
the subscription follow with no gap and no duplicate, and after an outage every
channel is caught up from its stream (or its subscribers are told it is lost).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import threading
from typing import (TYPE_CHECKING, Any, Callable, Dict, Hashable, List, Optional, Tuple)

from ...wire import protocol as p
from ..local import (DEFAULT_MAX_REPLAY_PER_SUBSCRIBE, REASON_ALREADY_SUBSCRIBED,
                     REPLAY_PAGE_MESSAGES, REASON_EPOCH_CHANGED, REASON_REPLAY_LIMIT, MemberIndex,
                     count_recovery, REASON_HISTORY_EXPIRED, REASON_HISTORY_OFF, RecoveryResult,
                     Since)
from ...counters import Counter, Counters
from ..publish_ids import (DEFAULT_PUBLISH_IDS_MAX, DEFAULT_PUBLISH_IDS_PER_PUBLISHER,
                           validate_id_bounds)
from ...errors import BrokerCommandError
from ...logsafe import safe
from .link import RedisLink, as_text

if TYPE_CHECKING:
    from ...core.hub import Hub

log = logging.getLogger("sente_lite.redis")

#: Seconds a channel nobody publishes on keeps its offset, epoch and history in Redis.
DEFAULT_CHANNEL_TTL_S = 86_400.0
#: Live messages of one channel held while it catches up; beyond, it catches up again from the stream.
MAX_PENDING_PER_CHANNEL = 10_000
#: Reads of a channel's stream one subscribe may take while live messages keep passing it.
MAX_SUBSCRIBE_TRIES = 20

# KEYS: 1 meta hash, 2 stream
# ARGV: 1 epoch if a new one is needed, 2 channel ms, 3 first offset wanted (0: none),
#       4 most entries, 5 the epoch the caller knows, 6 "1": from offset 1 when the epoch differs
# Returns {epoch, top offset, Redis time in ms, entries}.
SYNC_SCRIPT = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local top = tonumber(redis.call('HGET', KEYS[1], 'offset'))
local t = redis.call('TIME')
local now = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
local from = tonumber(ARGV[3])
if epoch ~= ARGV[5] then
  if ARGV[6] == '1' then from = 1 else from = 0 end
end
local entries = {}
if from > 0 and from <= top then
  entries = redis.call('XRANGE', KEYS[2], from .. '-0', '+', 'COUNT', ARGV[4])
end
return {epoch, top, now, entries}
"""


def digest(*parts: str) -> str:
    """A hex digest naming ``parts`` unambiguously (each is length-prefixed)."""
    h = hashlib.sha256()
    for part in parts:
        raw = part.encode("utf-8", "surrogatepass")
        h.update(b"%d:" % len(raw))
        h.update(raw)
    return h.hexdigest()[:32]


def command_refused(counters: Counters, name: str, what: str,
                    exc: BaseException) -> BrokerCommandError:
    """Count and log a command Redis refused (not a lost link) on channel ``name``;
    returns the error that answers it (``what``: the operation, e.g. "publish on")."""
    counters.add(Counter.BROKER_COMMAND_ERRORS)
    answer = f"{type(exc).__name__}: {exc}"
    log.error("%s channel %s refused by Redis: %s", what, safe(repr(name)), answer)
    return BrokerCommandError(f"the channel broker (Redis) refused to {what} this channel "
                              f"({answer}); not done")


class ChannelSpace:
    """Where channels live in Redis: key names under ``prefix``, the epochs this
    server makes (``<server_id>.<n>``) and the history limits (see RedisBroker).

    Key names never contain a client's string: a channel's keys are
    ``<prefix>:ch:{<digest of the channel>}:meta|log``, a publish id's
    ``<prefix>:ch:{<digest of the channel>}:id:<digest of publisher, id>``, so no
    channel or publish id can name another's key. The ``{...}`` hash tag keeps a
    channel's keys in one Redis Cluster slot.
    """

    def __init__(self, prefix: str, server_id: str, history_size: int, history_ttl_s: float,
                 publish_dedup_s: float, channel_ttl_s: float,
                 publish_ids_per_publisher: int = DEFAULT_PUBLISH_IDS_PER_PUBLISHER,
                 publish_ids_max: int = DEFAULT_PUBLISH_IDS_MAX,
                 max_replay: int = DEFAULT_MAX_REPLAY_PER_SUBSCRIBE) -> None:
        validate_id_bounds(publish_ids_per_publisher, publish_ids_max)
        if isinstance(max_replay, bool) or not isinstance(max_replay, int) or max_replay < 0:
            raise ValueError(f"max_replay_per_subscribe must be an int >= 0, got {max_replay!r}")
        self.max_replay = max_replay
        self.prefix = prefix
        self.server_id = server_id
        self.history_size = history_size
        self.history_ttl_s = float(history_ttl_s)
        self.publish_dedup_s = float(publish_dedup_s)
        self.channel_ttl_s = channel_ttl_s
        self.publish_ids_per_publisher = publish_ids_per_publisher
        self.publish_ids_max = publish_ids_max
        self.msg_prefix = f"{prefix}:msg:".encode()
        self._epoch_seq = itertools.count(1)

    def _chan(self, name: str) -> str:
        return f"{self.prefix}:ch:{{{digest(name)}}}"

    def meta_key(self, name: str) -> str:
        return self._chan(name) + ":meta"

    def log_key(self, name: str) -> str:
        return self._chan(name) + ":log"

    def id_key(self, name: str, publish_id: str, publisher: Optional[str] = None) -> str:
        """The key remembering ``publish_id`` of ``publisher`` (None: the server) on ``name``."""
        who = "s" if publisher is None else "u" + publisher
        return f"{self._chan(name)}:id:{digest(name, who, publish_id)}"

    def publisher_ids_key(self, publisher: Optional[str]) -> str:
        """The list of the id keys ``publisher`` made, oldest first (its bound)."""
        who = "s" if publisher is None else "u" + publisher
        return f"{self.prefix}:ids:{digest(who)}"

    def all_ids_key(self) -> str:
        """The list of every id key, oldest first (the total bound)."""
        return f"{self.prefix}:ids"

    def msg_channel(self, name: str) -> bytes:
        return self.msg_prefix + name.encode("utf-8")

    def new_epoch(self) -> str:
        return f"{self.server_id}.{next(self._epoch_seq)}"


class _Chan:
    """One channel with local subscribers: who, and the last offset handed to them."""

    __slots__ = ("name", "epoch", "last", "subs", "lock", "synced", "pending", "dead",
                 "resync_queued")

    def __init__(self, name: str) -> None:
        self.name = name
        self.epoch: Optional[str] = None  # None until first caught up with Redis
        self.last = 0
        self.subs: Dict[Hashable, Callable[[Hashable, Any], bool]] = {}
        self.lock = threading.Lock()
        self.synced = False  # False: live messages wait in ``pending`` (catching up)
        self.pending: Dict[int, Tuple[str, str, bytes]] = {}  # offset -> (epoch, exclude, payload)
        self.dead = False  # forgotten (no subscribers left): a new _Chan replaces it
        self.resync_queued = False


class _Catching:
    """A subscriber being handed its replay, a page per pass of the network thread; live
    messages for it wait in ``held`` meanwhile (at most MAX_PENDING_PER_CHANNEL: past
    that it is told ``history-expired`` and goes on live)."""

    __slots__ = ("owner", "ch", "member", "replay", "deliver", "held", "lost", "sent", "next",
                 "hold")

    def __init__(self, owner: "RedisChannels", ch: _Chan, member: Hashable, replay: List[bytes],
                 deliver: Callable[[Hashable, Any], bool]) -> None:
        self.owner, self.ch, self.member = owner, ch, member
        self.replay, self.deliver = replay, deliver
        self.held: List[Any] = []
        self.lost = False
        self.sent = self.next = 0
        self.hold = self._hold  # the one bound method ch.subs holds meanwhile

    def _hold(self, member: Hashable, built: Any) -> bool:
        """A live message during the replay (the channel's lock is held)."""
        if len(self.held) >= MAX_PENDING_PER_CHANNEL:
            self.lost = True
            return False
        self.held.append(built)
        return True

    def hand(self, most: int) -> bool:
        """Hand over the next ``most`` replayed messages; False at the first refused."""
        hub = self.owner.hub
        if hub is None:
            return False
        for payload in self.replay[self.next:self.next + most]:
            if not self.deliver(self.member, hub.built_from_text(payload)):
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
                    if not self.deliver(member, built):
                        break
                ch.subs[member] = self.deliver
                if self.lost:
                    owner._notice(member, ch, REASON_HISTORY_EXPIRED)
        owner._counters.add(Counter.REPLAYED_MESSAGES, self.sent)


class RedisChannels(MemberIndex):
    """This server's subscribers of each channel, kept in step with Redis.

    Subscribes, catch-ups and resyncs run on the link's I/O thread; live messages
    arrive through :meth:`on_messages` (the server's network thread, or the link's).
    """

    def __init__(self, space: ChannelSpace, link: RedisLink, counters: Counters) -> None:
        self._space = space
        self._link = link
        self._counters = counters
        self.hub: Optional["Hub"] = None
        self._lock = threading.Lock()  # guards _chans and _by_member
        self._chans: Dict[str, _Chan] = {}
        self._by_member: Dict[Hashable, Dict[str, None]] = {}
        #: Runs work on the server's network thread (see RedisBroker.dispatch); None: here.
        self.dispatch: Optional[Callable[[Callable[[], None]], None]] = None
        self.notices = 0  # recovered:false notices sent to local subscribers
        self.caught_up = 0  # messages delivered from a stream after a gap or an outage

    # -- subscribe -------------------------------------------------------------------
    def subscribe(self, member: Hashable, name: str, announce: Optional[Any] = None,
                  since: Optional[Since] = None, deliver: Optional[Any] = None,
                  replay_budget: Optional[int] = None,
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
        self._link.submit(lambda: self._subscribe_op(member, name, announce, since, deliver, limit))
        return 0, "", added, None

    def _subscribe_op(self, member: Hashable, name: str, announce: Any, since: Optional[Since],
                      deliver: Any, limit: int) -> None:
        """:meth:`_do_subscribe`; when Redis refuses a command of this channel the subscribe
        fails alone: ``announce.refuse(error)`` (when the caller gave one) answers it."""
        try:
            self._do_subscribe(member, name, announce, since, deliver, limit)
        except self._link.redis_mod.RedisError as exc:
            if self._link.is_link_error(exc):
                raise  # the link thread reconnects and runs it again
            self.unsubscribe(member, name)
            error = command_refused(self._counters, name, "subscribe to", exc)
            refuse = getattr(announce, "refuse", None)
            if refuse is not None:
                refuse(error)

    def _chan(self, name: str) -> _Chan:
        with self._lock:
            ch = self._chans.get(name)
            if ch is None:
                ch = self._chans[name] = _Chan(name)
            return ch

    def _do_subscribe(self, member: Hashable, name: str, announce: Any, since: Optional[Since],
                      deliver: Any, limit: int) -> None:
        with self._lock:
            if name not in self._by_member.get(member, ()):
                return  # unsubscribed (or gone) before its turn
        for _ in range(MAX_SUBSCRIBE_TRIES):
            ch = self._chan(name)
            if not ch.synced:
                self._resync(ch)
            entries: List[Tuple[int, bytes, int, str]] = []
            now_ms = 0
            read = (since is not None and since.epoch == ch.epoch and since.offset < ch.last
                    and self._space.history_size > 0 and ch.last - since.offset <= limit)
            if read:
                assert since is not None
                _, _, now_ms, entries = self._sync(name, since.offset + 1, since.epoch, False,
                                                   limit)
            with ch.lock:
                if ch.dead or not ch.synced:
                    continue
                recovery: Optional[RecoveryResult] = None
                replay: List[bytes] = []
                if since is not None:
                    recovery, replay, short = self._recover(ch, since, entries, now_ms, read, limit)
                    if short:
                        continue  # live messages came past what was read: read again
                ch.subs[member] = deliver
                if announce is not None:
                    announce(ch.last, ch.epoch or "", recovery)
                if replay and self.hub is not None and deliver is not None:
                    _Catching(self, ch, member, replay, deliver).start()
                return
        raise RuntimeError(f"subscribe to {name!r} could not catch up with Redis in "
                           f"{MAX_SUBSCRIBE_TRIES} tries")

    def _recover(self, ch: _Chan, since: Since, entries: List[Tuple[int, bytes, int, str]],
                 now_ms: int, read: bool, limit: int) -> Tuple[RecoveryResult, List[bytes], bool]:
        """(recovery, payloads to replay, read again?) for ``since`` on ``ch``, replaying
        at most ``limit`` (-1: ``ch`` is already held). Caller holds ``ch.lock``."""
        counters = self._counters
        replay: List[bytes] = []
        if limit < 0:
            result = RecoveryResult(False, REASON_ALREADY_SUBSCRIBED, 0)
        elif since.epoch != ch.epoch or since.offset > ch.last or since.offset < 0:
            result = RecoveryResult(False, REASON_EPOCH_CHANGED, 0)
        elif since.offset == ch.last:
            result = RecoveryResult(True, None, 0)
        elif not self._space.history_size:
            result = RecoveryResult(False, REASON_HISTORY_OFF, 0)
        elif ch.last - since.offset > limit:
            result = RecoveryResult(False, REASON_REPLAY_LIMIT, 0)
        elif not read:
            return RecoveryResult(False, None, 0), [], True  # the channel moved on meanwhile
        else:
            oldest = now_ms - int(self._space.history_ttl_s * 1000)
            want = since.offset + 1
            if not entries or entries[0][0] != want or entries[0][2] < oldest:
                result = RecoveryResult(False, REASON_HISTORY_EXPIRED, 0)
            else:
                if entries[-1][0] < ch.last:
                    return RecoveryResult(False, None, 0), [], True
                replay = [payload for offset, payload, _, _ in entries if offset <= ch.last]
                result = RecoveryResult(True, None, len(replay))
        count_recovery(counters, result)
        return result, replay, False

    # -- catching up with Redis ------------------------------------------------------
    def _sync(self, name: str, first: int, known_epoch: str, from_one: bool,
              most: Optional[int] = None) -> Tuple[str, int, int, List[Tuple[int, bytes, int, str]]]:
        """(epoch, top, Redis ms, [(offset, payload, ms)...] from ``first``, at most ``most``)
        of ``name``, read atomically (a channel Redis does not know gets a new epoch)."""
        space = self._space
        count = space.history_size if most is None else min(space.history_size, most)
        raw = self._link.evalsha(SYNC_SCRIPT, 2, space.meta_key(name), space.log_key(name),
                                 space.new_epoch(), str(int(space.channel_ttl_s * 1000)),
                                 str(first), str(max(count, 1)), known_epoch,
                                 "1" if from_one else "0")
        epoch, top, now_ms, rows = raw
        entries: List[Tuple[int, bytes, int, str]] = []
        for entry_id, fields in rows:
            values = dict(zip(fields[::2], fields[1::2]))
            entries.append((int(entry_id.split(b"-", 1)[0]), values[b"m"], int(values[b"t"]),
                            as_text(values.get(b"x", b"-"))))
        return as_text(epoch), int(top), int(now_ms), entries

    def _resync(self, ch: _Chan) -> None:
        """Catch ``ch`` up with Redis (broker thread): deliver what its subscribers
        missed from the stream, or tell them it is lost; then go live."""
        with ch.lock:
            known, first = ch.epoch, ch.last + 1
            ch.resync_queued = False
        if known is None:  # new here: no subscriber has seen anything yet
            epoch, top, _, entries = self._sync(ch.name, 0, "", False)
        else:
            epoch, top, _, entries = self._sync(ch.name, first, known, True)
        with ch.lock:
            if ch.dead:
                return
            if ch.epoch is None:
                ch.epoch, ch.last = epoch, top
            elif epoch != ch.epoch or (first <= top and (not entries or entries[0][0] != first)):
                # Redis lost the channel (new epoch), or its stream no longer reaches back
                reason = REASON_EPOCH_CHANGED if epoch != ch.epoch else REASON_HISTORY_EXPIRED
                start = entries[0][0] - 1 if entries else top
                log.warning("channel %r: %s after %s:%d; %d subscriber(s) told (recovered: false)",
                            ch.name, reason, ch.epoch, ch.last, len(ch.subs))
                ch.epoch, ch.last = epoch, start
                for member in list(ch.subs):
                    self._notice(member, ch, reason)
            for offset, payload, _, exclude in entries:
                if offset == ch.last + 1:
                    self._deliver_locked(ch, payload, exclude)
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

    def _notice(self, member: Hashable, ch: _Chan, reason: str) -> None:
        """Tell ``member`` that messages of ``ch`` are lost (``sente-lite/subscribed``)."""
        hub = self.hub
        if hub is None:
            return
        self.notices += 1
        self._counters.add(Counter.UNRECOVERED_SUBSCRIBES)
        hub.to_member(member, p.EV_SUBSCRIBED, {
            p.K_CHANNEL: ch.name, p.K_OFFSET: ch.last, p.K_EPOCH: ch.epoch,
            p.K_RECOVERED: False, p.K_REASON: reason})

    # -- local delivery --------------------------------------------------------------
    def _deliver_locked(self, ch: _Chan, payload: bytes, exclude: str) -> None:
        """Hand the message after ``ch.last`` to every local subscriber. Caller holds ``ch.lock``."""
        ch.last += 1
        hub = self.hub
        if hub is None or not ch.subs:
            return
        built = hub.built_from_text(payload)
        delivered = 0
        for member, deliver in ch.subs.items():
            if member != exclude and deliver(member, built):
                delivered += 1
        self._counters.add(Counter.DELIVERIES, delivered)

    def _drain_locked(self, ch: _Chan) -> None:
        """Deliver held live messages that follow ``ch.last``; go live, or catch up again
        if one is missing. Caller holds ``ch.lock``."""
        pending = ch.pending
        while pending:
            item = pending.pop(ch.last + 1, None)
            if item is None:
                break
            if item[0] == ch.epoch:
                self._deliver_locked(ch, item[2], item[1])
        for offset in [o for o, item in pending.items() if o <= ch.last or item[0] != ch.epoch]:
            del pending[offset]
        ch.synced = not pending
        if pending:
            self._queue_resync(ch)

    def _queue_resync(self, ch: _Chan) -> None:
        """Catch ``ch`` up on the broker thread. Caller holds ``ch.lock``."""
        ch.synced = False
        if not ch.resync_queued and not self._link.down:
            ch.resync_queued = True
            self._link.submit(lambda: self._resync(ch) if not ch.dead else None)

    def on_messages(self, batch: List[Tuple[bytes, bytes]]) -> None:
        """Live messages read from the subscription, (pubsub channel, data) in order."""
        for channel, data in batch:
            self._on_message(channel, data)

    def _on_message(self, channel: bytes, data: bytes) -> None:
        name = channel[len(self._space.msg_prefix):].decode("utf-8", "replace")
        with self._lock:
            ch = self._chans.get(name)
        if ch is None:
            return
        offset_b, epoch_b, exclude_b, payload = data.split(b" ", 3)
        offset, epoch, exclude = int(offset_b), epoch_b.decode(), exclude_b.decode()
        with ch.lock:
            if ch.dead:
                return
            if ch.synced and epoch == ch.epoch:
                if offset <= ch.last:
                    return
                if offset == ch.last + 1:
                    self._deliver_locked(ch, payload, exclude)
                    if ch.pending:
                        self._drain_locked(ch)
                    return
            if len(ch.pending) < MAX_PENDING_PER_CHANNEL:
                ch.pending[offset] = (epoch, exclude, payload)
            if ch.synced and not self._link.down:
                self._queue_resync(ch)  # a gap, or a new epoch: catch up from the stream

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

    _leave = _drop
    def subscriber_count(self, name: str) -> int:
        """How many members of this server channel ``name`` has now."""
        with self._lock:
            ch = self._chans.get(name)
        if ch is None:
            return 0
        with ch.lock:
            return len(ch.subs)

    def subscriber_counts(self) -> Dict[str, int]:
        """Channel -> members here, for every channel with subscribers on this server."""
        with self._lock:
            chans = list(self._chans.items())
        return {name: len(ch.subs) for name, ch in chans if ch.subs}

    def counts(self) -> Tuple[int, int]:
        """(channels with subscribers here, subscriptions here)."""
        with self._lock:
            return len(self._chans), sum(len(v) for v in self._by_member.values())

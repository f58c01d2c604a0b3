"""Channels, history and presence shared by several server processes through Redis.

``Server(broker="redis://host:port/db")`` makes a :class:`RedisBroker`. Every
publish runs one Lua script (:data:`PUBLISH_SCRIPT`): it takes the channel's next
offset (``HINCRBY``), appends the message to the channel's stream (``XADD`` with
``MAXLEN history_size``, the stream id is the offset), remembers the publish id
(``SET`` with expiry) and ``PUBLISH``es it, all atomically, so every server sees
one offset order per channel. Each server listens to every channel's messages
with one pattern subscription and hands each message, built once as a WebSocket
frame, to its local subscribers in offset order. A subscribe with ``since`` is
replayed from the stream, on whichever server the client reaches.

Two threads per server: ``sente-lite-redis-io`` runs every command (publishes are
pipelined in arrival order: the calling thread never waits for Redis unless it
asks to) and ``sente-lite-redis-link`` reads the subscription, watches the link
with pings and reconnects it with backoff. While the link is down publishes
fail at once with :class:`~sente_lite.errors.BrokerUnavailable` (``unavailable``
on the wire); when it is back every channel with local subscribers is caught up
from its stream, or, when Redis lost the stream, each subscriber is told with a
``sente-lite/subscribed`` notice carrying ``recovered: false``. See docs/redis.md.
"""

from __future__ import annotations

import collections
import functools
import itertools
import json
import logging
import random
import threading
import time
import uuid
from typing import (TYPE_CHECKING, Any, Callable, Deque, Dict, Hashable, List, Optional, Tuple,
                    Union)

from . import protocol as p
from .channels import (REASON_EPOCH_CHANGED, REASON_HISTORY_EXPIRED, REASON_HISTORY_OFF,
                       Published, RecoveryResult, Since)
from .counters import Counter, Counters
from .errors import BrokerUnavailable

if TYPE_CHECKING:
    from .hub import Hub

log = logging.getLogger("sente_lite.redis")

#: Prefix of every key and pubsub channel (``Server(broker_prefix=)``; letters, digits, ``_.-:``).
DEFAULT_PREFIX = "sente-lite"
#: Seconds a channel nobody publishes on keeps its offset, epoch and history in Redis.
DEFAULT_CHANNEL_TTL_S = 86_400.0
#: Seconds to open a connection to Redis, and to wait for any answer, before it counts as down.
DEFAULT_CONNECT_TIMEOUT_S = 1.0
DEFAULT_COMMAND_TIMEOUT_S = 2.0
#: Seconds between pings on the subscription link, and of silence after which it is down.
DEFAULT_LINK_CHECK_S = 0.5
DEFAULT_LINK_TIMEOUT_S = 2.0
#: Reconnect delay: random(0, min(max, base * 2**attempt)) seconds.
DEFAULT_RECONNECT_BASE_S = 0.1
DEFAULT_RECONNECT_MAX_S = 2.0
#: Seconds a server's presence entry lives in Redis without a refresh (a SIGKILLed
#: server's users vanish after this); it is refreshed every third of it.
DEFAULT_PRESENCE_TTL_S = 6.0
#: Publishes sent to Redis in one pipeline at most.
MAX_PUBLISH_BATCH = 256
#: Live messages of one channel held while it catches up; beyond, it catches up again from the stream.
MAX_PENDING_PER_CHANNEL = 10_000
#: Live messages read from the subscription and handed to the network thread in one go, at most.
MAX_DISPATCH_BATCH = 512
#: Reads of a channel's stream one subscribe may take while live messages keep passing it.
MAX_SUBSCRIBE_TRIES = 20
#: Seconds the link thread blocks reading the subscription before it checks its clock.
_LISTEN_TICK_S = 0.1

# KEYS: 1 meta hash, 2 stream, 3 publish-id key ("" for none)
# ARGV: 1 frame text up to the offset, 2 epoch if a new one is needed, 3 history size,
#       4 publish-id ms, 5 channel ms, 6 pubsub channel, 7 excluded conn-id ("-": none)
PUBLISH_SCRIPT = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[2]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
end
if KEYS[3] ~= '' then
  local first = redis.call('GET', KEYS[3])
  if first then
    local sep = string.find(first, ' ', 1, true)
    if string.sub(first, 1, sep - 1) == epoch then
      return {1, tonumber(string.sub(first, sep + 1)), epoch, 0}
    end
  end
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local payload = ARGV[1] .. offset .. ',"epoch":"' .. epoch .. '"}]'
if ARGV[3] ~= '0' then
  local t = redis.call('TIME')
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], offset .. '-0', 'm', payload, 'x', ARGV[7],
             't', t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000)))
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
if KEYS[3] ~= '' then
  redis.call('SET', KEYS[3], epoch .. ' ' .. offset, 'PX', ARGV[4])
end
local n = redis.call('PUBLISH', ARGV[6], offset .. ' ' .. epoch .. ' ' .. ARGV[7] .. ' ' .. payload)
return {0, offset, epoch, n}
"""

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


def _import_redis() -> Any:
    try:
        import redis
    except ImportError:
        raise ImportError("the Redis broker needs redis-py: pip install 'sente-lite[redis]'") from None
    return redis


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


class _Pub:
    __slots__ = ("channel", "head", "exclude", "done", "publish_id", "result", "finished")

    def __init__(self, channel: str, head: bytes, exclude: Optional[str],
                 done: Optional[Callable[[Any], None]], publish_id: Optional[str],
                 finished: Optional[threading.Event]) -> None:
        self.channel = channel
        self.head = head
        self.exclude = exclude
        self.done = done
        self.publish_id = publish_id
        self.result: Any = None
        self.finished = finished


class RedisBroker:
    """A :class:`~sente_lite.hub.Broker` whose channels live in Redis (see the module).

    ``url``: ``redis://host:port/db``; ``server_id``: the server's (``Server(broker=url)``
    passes it; made up when None). History, publish ids and their limits mean
    what they mean for :class:`~sente_lite.hub.LocalBroker` (PROTOCOL 9), but are
    kept in Redis: ``history_size`` messages per channel (the stream's MAXLEN),
    replayed only while younger than ``history_ttl_s``; publish ids for
    ``publish_dedup_s``. Every other limit is a ``DEFAULT_*`` of this module.
    """

    shared = True  # the hub routes users and presence through it

    def __init__(self, url: str, server_id: Optional[str] = None, *, history_size: int = 1000,
                 history_ttl_s: float = 300.0, publish_dedup_s: float = 300.0,
                 counters: Optional[Counters] = None, prefix: str = DEFAULT_PREFIX,
                 channel_ttl_s: float = DEFAULT_CHANNEL_TTL_S,
                 connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
                 command_timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S,
                 link_check_s: float = DEFAULT_LINK_CHECK_S,
                 link_timeout_s: float = DEFAULT_LINK_TIMEOUT_S,
                 reconnect_base_s: float = DEFAULT_RECONNECT_BASE_S,
                 reconnect_max_s: float = DEFAULT_RECONNECT_MAX_S,
                 presence_ttl_s: float = DEFAULT_PRESENCE_TTL_S) -> None:
        redis = _import_redis()
        if not isinstance(history_size, int) or history_size < 0:
            raise ValueError(f"history_size must be an int >= 0 (0: off), got {history_size!r}")
        if not publish_dedup_s >= history_ttl_s > 0:
            raise ValueError("need publish_dedup_s >= history_ttl_s > 0")
        if not prefix or any(not (c.isalnum() or c in "_.-:") for c in prefix):
            raise ValueError(f"prefix must be letters, digits and _.-: only, got {prefix!r}")
        self._redis_mod = redis
        self.url = url
        self.server_id = server_id or uuid.uuid4().hex[:16]  # names its epochs and its presence
        self.history_size = history_size
        self.history_ttl_s = float(history_ttl_s)
        self.publish_dedup_s = float(publish_dedup_s)
        self.prefix = prefix
        self.channel_ttl_s = channel_ttl_s
        self.link_check_s = link_check_s
        self.link_timeout_s = link_timeout_s
        self.reconnect_base_s = reconnect_base_s
        self.reconnect_max_s = reconnect_max_s
        self.presence_ttl_s = presence_ttl_s
        self._counters = counters if counters is not None else Counters()
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # No retries inside redis-py: a publish whose answer was lost is reported
        # unavailable, never sent twice behind the caller's back.
        options = dict(socket_connect_timeout=connect_timeout_s, socket_timeout=command_timeout_s,
                       retry=Retry(NoBackoff(), 0), health_check_interval=0)
        self._redis = redis.Redis.from_url(url, **options)
        self._listen_options = dict(options, socket_timeout=None)
        self._publish_sha: Optional[str] = None
        self._sync_sha: Optional[str] = None
        self._hub: Optional["Hub"] = None
        self.on_disconnect_user: Optional[Callable[[str, int, str], int]] = None
        #: Runs live deliveries on the server's network thread (set by the server), which
        #: writes what it sends in one pass once per connection; None: the link thread.
        self.dispatch: Optional[Callable[[Callable[[], None]], None]] = None
        self._lock = threading.Lock()  # guards _chans and _by_member
        self._chans: Dict[str, _Chan] = {}
        self._by_member: Dict[Hashable, Dict[str, None]] = {}
        self._ops: Deque[Any] = collections.deque()
        self._ops_cond = threading.Condition()
        self._deferred: List[Callable[[], None]] = []
        self._down = True
        self._down_since = time.monotonic()
        self._down_reason = "not connected yet"
        self._stop = threading.Event()
        self._threads: List[threading.Thread] = []
        self._epoch_seq = itertools.count(1)
        self._presence_queued = False
        self._lost_gen = 0  # bumped by every failure: the link thread then reconnects
        self._msg_prefix = f"{prefix}:msg:".encode()
        self._user_channel = f"{prefix}:user".encode()
        self.links = 0  # times the link came up
        self.outages = 0
        self.unavailable_publishes = 0
        self.notices = 0  # recovered:false notices sent to local subscribers
        self.caught_up = 0  # messages delivered from a stream after a gap or an outage

    # -- lifecycle -------------------------------------------------------------------
    def bind(self, hub: "Hub") -> None:
        """Called by the hub it serves (frames, deliveries, users)."""
        self._hub = hub

    def start(self) -> None:
        """Start the two threads; the link comes up in the background (``healthy``)."""
        if self._threads:
            return
        for name, target in (("sente-lite-redis-io", self._io_loop),
                             ("sente-lite-redis-link", self._link_loop)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 5.0) -> None:
        """Remove this server's presence, stop both threads, close the connections."""
        if self._stop.is_set():
            return
        if not self._down:
            try:
                self._redis.delete(self._presence_key(self.server_id))
                self._redis.srem(self._servers_key(), self.server_id)
            except self._redis_mod.RedisError:
                pass
        self._stop.set()
        with self._ops_cond:
            self._ops_cond.notify_all()
        for t in self._threads:
            t.join(timeout)
        self._fail_queued(BrokerUnavailable("server stopping"))
        try:
            self._redis.close()
        except Exception:
            pass

    @property
    def healthy(self) -> bool:
        """True while the link to Redis is up and caught up."""
        return not self._down

    def health(self) -> Dict[str, Any]:
        """``broker``, ``broker-status`` (up/down), and while down why and for how long."""
        out: Dict[str, Any] = {"broker": "redis", "broker-status": "down" if self._down else "up"}
        if self._down:
            out["broker-down-s"] = round(time.monotonic() - self._down_since, 3)
            out["broker-error"] = self._down_reason
        return out

    # -- keys ------------------------------------------------------------------------
    def _meta_key(self, name: str) -> str:
        return f"{self.prefix}:ch:{name}:meta"

    def _log_key(self, name: str) -> str:
        return f"{self.prefix}:ch:{name}:log"

    def _id_key(self, name: str, publish_id: str) -> str:
        return f"{self.prefix}:ch:{name}:id:{publish_id}"

    def _msg_channel(self, name: str) -> bytes:
        return self._msg_prefix + name.encode("utf-8")

    def _presence_key(self, server_id: str) -> str:
        return f"{self.prefix}:presence:{server_id}"

    def _servers_key(self) -> str:
        return f"{self.prefix}:servers"

    def _new_epoch(self) -> str:
        return f"{self.server_id}.{next(self._epoch_seq)}"

    # -- publish ---------------------------------------------------------------------
    def publish(self, name: str, make_frame: Callable[[int, str], Any], deliver: Any,
                exclude: Optional[Hashable] = None, done: Optional[Callable[[Any], None]] = None,
                wait: bool = True, publish_id: Optional[str] = None) -> Optional[Published]:
        """Not used: the hub publishes through :meth:`publish_text` (the frame is made in Redis)."""
        raise NotImplementedError("RedisBroker publishes through publish_text")

    def publish_text(self, name: str, head: str, exclude: Optional[str],
                     done: Optional[Callable[[Any], None]], wait: bool = True,
                     publish_id: Optional[str] = None) -> Optional[Published]:
        """Publish the channel message whose text up to its offset is ``head``.

        ``done(result)`` gets the :class:`Published` (``delivered``: how many
        servers received it) or a :class:`BrokerUnavailable`, on the broker's
        thread (at once, on the caller's, while the link is down). With ``wait``
        the result is returned (or raised).
        """
        finished = threading.Event() if wait else None
        entry = _Pub(name, head.encode("utf-8"), exclude, done, publish_id, finished)
        if self._down or self._stop.is_set():
            self._finish(entry, self._unavailable())
        else:
            self._submit(entry)
        if finished is None:
            return None
        finished.wait()
        if isinstance(entry.result, BaseException):
            raise entry.result
        return entry.result

    def _unavailable(self) -> BrokerUnavailable:
        self.unavailable_publishes += 1
        return BrokerUnavailable(f"the channel broker (Redis) is unreachable: {self._down_reason}")

    def _finish(self, entry: _Pub, result: Any) -> None:
        entry.result = result
        if entry.done is not None:
            try:
                entry.done(result)
            except Exception:
                log.exception("publish callback for %r raised", entry.channel)
        if entry.finished is not None:
            entry.finished.set()

    def _run_publishes(self, batch: List[_Pub]) -> None:
        """Run ``batch`` in one pipeline, in order; answer each."""
        if self._down:
            for entry in batch:
                self._finish(entry, self._unavailable())
            return
        pipe = self._redis.pipeline(transaction=False)
        history = str(self.history_size)
        dedup_ms = str(int(self.publish_dedup_s * 1000))
        channel_ms = str(int(self.channel_ttl_s * 1000))
        for e in batch:
            id_key = self._id_key(e.channel, e.publish_id) if e.publish_id is not None else ""
            pipe.execute_command("EVALSHA", self._publish_sha, 3, self._meta_key(e.channel),
                                 self._log_key(e.channel), id_key, e.head, self._new_epoch(),
                                 history, dedup_ms, channel_ms, self._msg_channel(e.channel),
                                 e.exclude or "-")
        try:
            results = pipe.execute(raise_on_error=False)
        except self._redis_mod.RedisError as exc:
            self._link_lost(exc)
            for entry in batch:
                self._finish(entry, self._unavailable())
            return
        retry: List[_Pub] = []
        for entry, result in zip(batch, results):
            if isinstance(result, self._redis_mod.exceptions.NoScriptError):
                retry.append(entry)  # Redis restarted: the script never ran
            elif isinstance(result, Exception):
                log.error("publish on %r failed in Redis: %s", entry.channel, result)
                self._finish(entry, result)
            else:
                self._finish(entry, self._published(entry.channel, result))
        if retry:
            try:
                self._load_scripts()
            except self._redis_mod.RedisError as exc:
                self._link_lost(exc)
                for entry in retry:
                    self._finish(entry, self._unavailable())
                return
            self._run_publishes(retry)

    def _published(self, name: str, result: List[Any]) -> Published:
        duplicate, offset, epoch, receivers = result
        if duplicate:
            self._counters.add(Counter.DUPLICATE_PUBLISHES)
        return Published(name, int(offset), _text(epoch), int(receivers), bool(duplicate))

    # -- subscribe -------------------------------------------------------------------
    def subscribe(self, member: Hashable, name: str, announce: Optional[Any] = None,
                  since: Optional[Since] = None, deliver: Optional[Any] = None,
                  ) -> Tuple[int, str, bool, Optional[RecoveryResult]]:
        """Add ``member`` to ``name``; answered later, on the broker's thread:
        ``announce(top, epoch, recovery)`` then, if recovered, the replay, then live
        messages (no gap, no duplicate). While Redis is down the subscribe waits.
        Returns (0, "", newly added, None): the real answer is ``announce``'s."""
        with self._lock:
            names = self._by_member.setdefault(member, {})
            added = name not in names
            names[name] = None
        self._submit(lambda: self._do_subscribe(member, name, announce, since, deliver))
        return 0, "", added, None

    def _chan(self, name: str) -> _Chan:
        with self._lock:
            ch = self._chans.get(name)
            if ch is None:
                ch = self._chans[name] = _Chan(name)
            return ch

    def _do_subscribe(self, member: Hashable, name: str, announce: Any, since: Optional[Since],
                      deliver: Any) -> None:
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
                    and self.history_size > 0)
            if read:
                assert since is not None
                _, _, now_ms, entries = self._sync(name, since.offset + 1, since.epoch, False)
            with ch.lock:
                if ch.dead or not ch.synced:
                    continue
                recovery: Optional[RecoveryResult] = None
                replay: List[bytes] = []
                if since is not None:
                    recovery, replay, short = self._recover(ch, since, entries, now_ms, read)
                    if short:
                        continue  # live messages came past what was read: read again
                ch.subs[member] = deliver
                if announce is not None:
                    announce(ch.last, ch.epoch or "", recovery)
                hub = self._hub
                if replay and hub is not None and deliver is not None:
                    for payload in replay:
                        deliver(member, hub.built_from_text(payload))
                return
        raise RuntimeError(f"subscribe to {name!r} could not catch up with Redis in "
                           f"{MAX_SUBSCRIBE_TRIES} tries")

    def _recover(self, ch: _Chan, since: Since, entries: List[Tuple[int, bytes, int, str]],
                 now_ms: int, read: bool) -> Tuple[RecoveryResult, List[bytes], bool]:
        """(recovery, payloads to replay, read again?) for ``since`` on ``ch``. Caller holds ``ch.lock``."""
        counters = self._counters
        replay: List[bytes] = []
        if since.epoch != ch.epoch or since.offset > ch.last or since.offset < 0:
            result = RecoveryResult(False, REASON_EPOCH_CHANGED, 0)
        elif since.offset == ch.last:
            result = RecoveryResult(True, None, 0)
        elif not self.history_size:
            result = RecoveryResult(False, REASON_HISTORY_OFF, 0)
        elif not read:
            return RecoveryResult(False, None, 0), [], True  # the channel moved on meanwhile
        else:
            oldest = now_ms - int(self.history_ttl_s * 1000)
            want = since.offset + 1
            if not entries or entries[0][0] != want or entries[0][2] < oldest:
                result = RecoveryResult(False, REASON_HISTORY_EXPIRED, 0)
            else:
                if entries[-1][0] < ch.last:
                    return RecoveryResult(False, None, 0), [], True
                replay = [payload for offset, payload, _, _ in entries if offset <= ch.last]
                result = RecoveryResult(True, None, len(replay))
        if result.recovered:
            counters.add(Counter.RECOVERED_SUBSCRIBES)
            if replay:
                counters.add(Counter.REPLAYED_MESSAGES, len(replay))
        else:
            counters.add(Counter.UNRECOVERED_SUBSCRIBES)
        return result, replay, False

    def _sync(self, name: str, first: int, known_epoch: str, from_one: bool,
              ) -> Tuple[str, int, int, List[Tuple[int, bytes, int, str]]]:
        """(epoch, top, Redis ms, [(offset, payload, ms)...] from ``first``) of ``name``, read
        atomically (a channel Redis does not know gets a new epoch)."""
        raw = self._evalsha(self._sync_sha, SYNC_SCRIPT, 2, self._meta_key(name),
                            self._log_key(name), self._new_epoch(),
                            str(int(self.channel_ttl_s * 1000)), str(first),
                            str(max(self.history_size, 1)), known_epoch, "1" if from_one else "0")
        epoch, top, now_ms, rows = raw
        entries: List[Tuple[int, bytes, int, str]] = []
        for entry_id, fields in rows:
            values = dict(zip(fields[::2], fields[1::2]))
            entries.append((int(entry_id.split(b"-", 1)[0]), values[b"m"], int(values[b"t"]),
                            _text(values.get(b"x", b"-"))))
        return _text(epoch), int(top), int(now_ms), entries

    def _evalsha(self, sha: Optional[str], script: str, *args: Any) -> Any:
        try:
            return self._redis.execute_command("EVALSHA", sha, *args)
        except self._redis_mod.exceptions.NoScriptError:
            self._load_scripts()
            return self._redis.execute_command("EVAL", script, *args)

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

    def _notice(self, member: Hashable, ch: _Chan, reason: str) -> None:
        """Tell ``member`` that messages of ``ch`` are lost (``sente-lite/subscribed``)."""
        hub = self._hub
        if hub is None:
            return
        self.notices += 1
        self._counters.add(Counter.UNRECOVERED_SUBSCRIBES)
        hub.to_member(member, p.EV_SUBSCRIBED, {
            p.K_CHANNEL: ch.name, p.K_OFFSET: ch.last, p.K_EPOCH: ch.epoch,
            p.K_RECOVERED: False, p.K_REASON: reason})

    def _deliver_locked(self, ch: _Chan, payload: bytes, exclude: str) -> None:
        """Hand the message after ``ch.last`` to every local subscriber. Caller holds ``ch.lock``."""
        ch.last += 1
        hub = self._hub
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
        if not ch.resync_queued and not self._down:
            ch.resync_queued = True
            self._submit(lambda: self._resync(ch) if not ch.dead else None)

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

    def remove_member(self, member: Hashable) -> List[str]:
        """Remove ``member`` from every channel. Returns the channel names."""
        with self._lock:
            names = sorted(self._by_member.pop(member, ()))
            for name in names:
                self._drop(member, name)
            return names

    def channels_of(self, member: Hashable) -> List[str]:
        """The channels ``member`` is subscribed to here."""
        with self._lock:
            return sorted(self._by_member.get(member, ()))

    def subscriber_count(self, name: str) -> int:
        """How many members of this server channel ``name`` has now."""
        with self._lock:
            ch = self._chans.get(name)
        if ch is None:
            return 0
        with ch.lock:
            return len(ch.subs)

    def history_of(self, name: str) -> List[Tuple[int, Any]]:
        """(offset, frame text) of every message in the stream of ``name``, oldest first."""
        rows = self._redis.xrange(self._log_key(name))
        return [(int(i.split(b"-", 1)[0]), f[b"m"]) for i, f in rows]

    def stats(self) -> dict:
        """Local counts (channels with subscribers here, subscriptions) and the link's state."""
        with self._lock:
            chans = len(self._chans)
            subs = sum(len(v) for v in self._by_member.values())
        return {"channels": chans, "active_channels": chans, "subscriptions": subs,
                "channels_evicted": 0, "history_messages": 0, "publish_ids": 0,
                "history_size": self.history_size, "history_ttl_s": self.history_ttl_s,
                "publish_dedup_s": self.publish_dedup_s, "broker": "redis",
                "broker_up": not self._down, "broker_links": self.links,
                "broker_outages": self.outages,
                "broker_unavailable_publishes": self.unavailable_publishes,
                "broker_notices": self.notices, "broker_caught_up": self.caught_up}

    # -- users and presence ------------------------------------------------------------
    def to_user(self, uid: str, json_payload: bytes) -> None:
        """Send one event frame to the connections of ``uid`` on every other server."""
        self._user_message({"k": "send", "uid": uid, "frame": json_payload.decode("utf-8")})

    def disconnect_user(self, uid: str, code: int, reason: str) -> None:
        """Close the connections of ``uid`` on every other server."""
        self._user_message({"k": "disconnect", "uid": uid, "code": code, "reason": reason})

    def _user_message(self, body: Dict[str, Any]) -> None:
        body["origin"] = self.server_id
        data = json.dumps(body, separators=(",", ":"))
        if self._down:
            raise BrokerUnavailable(f"the broker (Redis) is unreachable: {self._down_reason}")
        self._submit(lambda: self._redis.publish(self._user_channel, data))

    def presence_changed(self) -> None:
        """The local users changed: refresh this server's presence entry soon."""
        with self._ops_cond:
            if self._presence_queued:
                return
            self._presence_queued = True
        self._submit(self._refresh_presence)

    def _refresh_presence(self) -> None:
        with self._ops_cond:
            self._presence_queued = False
        hub = self._hub
        if hub is None or self._down:
            return
        counts = hub.user_counts()
        key = self._presence_key(self.server_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(key)
        if counts:
            pipe.hset(key, mapping=counts)
        pipe.pexpire(key, int(self.presence_ttl_s * 1000))
        pipe.sadd(self._servers_key(), self.server_id)
        pipe.execute()

    def _servers(self) -> List[str]:
        servers = [_text(s) for s in self._redis.smembers(self._servers_key())]
        pipe = self._redis.pipeline(transaction=False)
        for s in servers:
            pipe.exists(self._presence_key(s))
        alive = pipe.execute()
        gone = [s for s, ok in zip(servers, alive) if not ok]
        if gone:
            self._redis.srem(self._servers_key(), *gone)
        return [s for s, ok in zip(servers, alive) if ok]

    def presence(self, uid: str) -> int:
        """Live connections of ``uid`` on every server (raises BrokerUnavailable while down)."""
        try:
            servers = self._servers()
            pipe = self._redis.pipeline(transaction=False)
            for s in servers:
                pipe.hget(self._presence_key(s), uid)
            return sum(int(v) for v in pipe.execute() if v is not None)
        except self._redis_mod.RedisError as exc:
            raise BrokerUnavailable(f"presence needs Redis: {exc}") from None

    def user_count(self) -> int:
        """Distinct users connected to any server (raises BrokerUnavailable while down)."""
        try:
            servers = self._servers()
            pipe = self._redis.pipeline(transaction=False)
            for s in servers:
                pipe.hkeys(self._presence_key(s))
            return len({u for keys in pipe.execute() for u in keys})
        except self._redis_mod.RedisError as exc:
            raise BrokerUnavailable(f"presence needs Redis: {exc}") from None

    # -- the broker thread -----------------------------------------------------------
    def _submit(self, op: Any) -> None:
        with self._ops_cond:
            self._ops.append(op)
            self._ops_cond.notify()

    def _io_loop(self) -> None:
        ops = self._ops
        while True:
            with self._ops_cond:
                while not ops and not self._stop.is_set():
                    self._ops_cond.wait()
                if self._stop.is_set():
                    return
                batch = list(ops)
                ops.clear()
            publishes: List[_Pub] = []
            for op in batch:
                if isinstance(op, _Pub):
                    publishes.append(op)
                    if len(publishes) >= MAX_PUBLISH_BATCH:
                        self._run_publishes(publishes)
                        publishes = []
                    continue
                if publishes:
                    self._run_publishes(publishes)
                    publishes = []
                self._run_op(op)
            if publishes:
                self._run_publishes(publishes)

    def _run_op(self, op: Callable[[], None]) -> None:
        if self._down and op != self._relink:
            self._deferred.append(op)  # subscribes and catch-ups wait for the link
            return
        try:
            op()
        except self._redis_mod.RedisError as exc:
            self._link_lost(exc)
            self._deferred.append(op)
        except Exception:
            log.exception("broker operation failed")

    def _fail_queued(self, exc: BaseException) -> None:
        with self._ops_cond:
            batch = list(self._ops)
            self._ops.clear()
        for op in batch:
            if isinstance(op, _Pub):
                self._finish(op, exc)

    def _load_scripts(self) -> None:
        self._publish_sha = _text(self._redis.script_load(PUBLISH_SCRIPT))
        self._sync_sha = _text(self._redis.script_load(SYNC_SCRIPT))

    def _relink(self) -> None:
        """The subscription is back: catch every channel up, then accept publishes again."""
        self._redis.connection_pool.disconnect()  # connections from before the outage are dead
        self._load_scripts()
        with self._lock:
            chans = list(self._chans.values())
        for ch in chans:
            with ch.lock:
                ch.synced = False
            self._resync(ch)
        was_down_s = time.monotonic() - self._down_since
        self._down = False
        self.links += 1
        log.info("Redis link up (%s) after %.2fs; %d channel(s) caught up", self.url, was_down_s,
                 len(chans))
        deferred, self._deferred = self._deferred, []
        for op in deferred:
            self._run_op(op)
        self._refresh_presence()

    def _link_lost(self, exc: BaseException) -> None:
        """Mark the link down (any thread); the link thread reconnects."""
        self._lost_gen += 1
        if self._down:
            return
        self._down = True
        self._down_since = time.monotonic()
        self._down_reason = f"{type(exc).__name__}: {exc}"
        self.outages += 1
        log.error("Redis link down (%s): %s; publishes fail with %r until it is back",
                  self.url, self._down_reason, p.ERR_UNAVAILABLE)
        with self._lock:
            chans = list(self._chans.values())
        for ch in chans:
            with ch.lock:
                ch.synced = False  # live messages wait until it is caught up

    # -- the link thread -------------------------------------------------------------
    def _link_loop(self) -> None:
        attempt = 0
        redis = self._redis_mod
        while not self._stop.is_set():
            client = redis.Redis.from_url(self.url, **self._listen_options)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.psubscribe(self._msg_prefix + b"*")
                pubsub.subscribe(self._user_channel)
                self._submit(self._relink)
                attempt = 0
                self._listen(pubsub)
            except (redis.RedisError, OSError) as exc:
                self._link_lost(exc)
            finally:
                try:
                    pubsub.close()
                    client.close()
                except Exception:
                    pass
            delay = random.uniform(0.0, min(self.reconnect_max_s,
                                            self.reconnect_base_s * 2 ** min(attempt, 16)))
            attempt += 1
            self._stop.wait(delay)

    def _listen(self, pubsub: Any) -> None:
        """Read messages until the link fails (raises) or the broker stops."""
        gen = self._lost_gen
        now = time.monotonic()
        last_heard = now
        next_ping = now + self.link_check_s
        next_presence = now
        get = pubsub.get_message
        while not self._stop.is_set():
            msg = get(timeout=_LISTEN_TICK_S)
            batch: List[Tuple[bytes, bytes]] = []
            while msg is not None:  # every message already read, handed over in one go
                last_heard = time.monotonic()
                kind = msg["type"]
                if kind == "pmessage":
                    batch.append((msg["channel"], msg["data"]))
                    if len(batch) >= MAX_DISPATCH_BATCH:
                        break
                elif kind == "message":
                    self._on_user_message(msg["data"])
                msg = get(timeout=0)
            if batch:
                dispatch = self.dispatch
                if dispatch is not None:
                    dispatch(functools.partial(self._on_messages, batch))
                else:
                    self._on_messages(batch)
            now = time.monotonic()
            if now >= next_ping:
                pubsub.ping()
                next_ping = now + self.link_check_s
            if self._lost_gen != gen:
                raise self._redis_mod.exceptions.ConnectionError("a command failed: reconnecting")
            if now - last_heard > self.link_timeout_s:
                raise self._redis_mod.exceptions.TimeoutError(
                    f"no answer on the subscription for {now - last_heard:.1f}s")
            if now >= next_presence and not self._down:
                next_presence = now + self.presence_ttl_s / 3
                self.presence_changed()

    def _on_messages(self, batch: List[Tuple[bytes, bytes]]) -> None:
        for channel, data in batch:
            self._on_message(channel, data)

    def _on_message(self, channel: bytes, data: bytes) -> None:
        name = channel[len(self._msg_prefix):].decode("utf-8", "replace")
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
            if ch.synced and not self._down:
                self._queue_resync(ch)  # a gap, or a new epoch: catch up from the stream

    def _on_user_message(self, data: bytes) -> None:
        try:
            body = json.loads(data)
        except ValueError:
            log.warning("malformed user message from Redis")
            return
        if body.get("origin") == self.server_id:
            return
        hub = self._hub
        if body.get("k") == "send" and hub is not None:
            hub.to_user_here(body["uid"], body["frame"].encode("utf-8"))
        elif body.get("k") == "disconnect" and self.on_disconnect_user is not None:
            self.on_disconnect_user(body["uid"], int(body["code"]), str(body.get("reason", "")))


def _text(value: Union[bytes, str]) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


__all__ = ["RedisBroker", "PUBLISH_SCRIPT", "SYNC_SCRIPT", "DEFAULT_PREFIX",
           "DEFAULT_CHANNEL_TTL_S", "DEFAULT_CONNECT_TIMEOUT_S", "DEFAULT_COMMAND_TIMEOUT_S",
           "DEFAULT_LINK_CHECK_S", "DEFAULT_LINK_TIMEOUT_S", "DEFAULT_RECONNECT_BASE_S",
           "DEFAULT_RECONNECT_MAX_S", "DEFAULT_PRESENCE_TTL_S", "MAX_PUBLISH_BATCH", "MAX_DISPATCH_BATCH",
           "MAX_PENDING_PER_CHANNEL"]

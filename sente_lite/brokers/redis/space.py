"""Where the channels of a :class:`~sente_lite.brokers.redis.broker.RedisBroker` live in
Redis (:class:`ChannelSpace`: key names, epochs, history limits), how one server reads a
channel's stream (:data:`SYNC_SCRIPT`, :func:`read_stream`), and what it keeps of each
channel with local subscribers (:class:`Chan`)."""

from __future__ import annotations

import hashlib
import itertools
import logging
import threading
from typing import Any, Callable, Dict, Hashable, List, NamedTuple, Optional, Tuple

from ...counters import Counter, Counters
from ...errors import BrokerCommandError
from ...logsafe import safe
from ..history import DEFAULT_MAX_REPLAY_PER_SUBSCRIBE
from ..publish_ids import (DEFAULT_PUBLISH_IDS_MAX, DEFAULT_PUBLISH_IDS_PER_PUBLISHER,
                           validate_id_bounds)
from .link import RedisLink, as_text

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


def hash_tag(name: str) -> str:
    """``{<digest of the channel>}``: the Redis Cluster hash tag every key and the shard
    channel of channel ``name`` carry, so they share one slot (one node runs its scripts)."""
    return "{" + digest(name) + "}"


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
                 max_replay: int = DEFAULT_MAX_REPLAY_PER_SUBSCRIBE, *,
                 sharded: bool = True, cluster: bool = False) -> None:
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
        #: True: messages go to each channel's shard channel (SPUBLISH; servers SSUBSCRIBE
        #: the channels they serve); False: to ``<prefix>:msg:<C>`` (PUBLISH; PSUBSCRIBE).
        self.sharded = sharded
        #: True (Redis Cluster): the publish-id lists are kept per channel, in its slot
        self.cluster = cluster
        self._epoch_seq = itertools.count(1)
        #: channel name -> (history size, ttl) of a channel whose own bounds are smaller
        #: (a namespace's), or None for ``history_size``/``history_ttl_s``
        self.limits: Optional[Callable[[str], Optional[Tuple[int, float]]]] = None

    def history_of(self, name: str) -> Tuple[int, float]:
        """(history size, ttl in seconds) of channel ``name``: its own, at most the space's."""
        found = self.limits(name) if self.limits is not None else None
        if found is None:
            return self.history_size, self.history_ttl_s
        return min(found[0], self.history_size), min(float(found[1]), self.history_ttl_s)

    def _chan(self, name: str) -> str:
        return f"{self.prefix}:ch:{hash_tag(name)}"

    def key_root(self, name: str) -> str:
        """``<prefix>:ch:{<H>}``: what every key of channel ``name`` starts with (one slot)."""
        return self._chan(name)

    def meta_key(self, name: str) -> str:
        return self._chan(name) + ":meta"

    def log_key(self, name: str) -> str:
        return self._chan(name) + ":log"

    def presence_key(self, name: str, part: str) -> str:
        """A key of ``name``'s channel presence (``part``: ``pz`` the expiries, ``ph`` the members)."""
        return f"{self._chan(name)}:{part}"

    def id_key(self, name: str, publish_id: str, publisher: Optional[str] = None) -> str:
        """The key remembering ``publish_id`` of ``publisher`` (None: the server) on ``name``."""
        who = "s" if publisher is None else "u" + publisher
        return f"{self._chan(name)}:id:{digest(name, who, publish_id)}"

    def publisher_ids_key(self, publisher: Optional[str], name: str = "") -> str:
        """The list of the id keys ``publisher`` made, oldest first (its bound); in a
        cluster, on channel ``name`` (in its slot)."""
        who = "s" if publisher is None else "u" + publisher
        if self.cluster:
            return f"{self._chan(name)}:ids:{digest(who)}"
        return f"{self.prefix}:ids:{digest(who)}"

    def all_ids_key(self, name: str = "") -> str:
        """The list of every id key, oldest first (the total bound); in a cluster, of
        channel ``name`` (in its slot)."""
        if self.cluster:
            return f"{self._chan(name)}:ids"
        return f"{self.prefix}:ids"

    def msg_channel(self, name: str) -> bytes:
        return self.msg_prefix + name.encode("utf-8")

    def shard_channel(self, name: str) -> bytes:
        """``<prefix>:ch:{<H>}:sm``: the shard channel of ``name`` (its keys' slot)."""
        return (self._chan(name) + ":sm").encode()

    def delivery(self, name: str) -> Tuple[str, bytes]:
        """(command, pubsub channel) carrying every message of ``name`` to the servers:
        the one delivery path of a channel (``SPUBLISH`` on its shard channel, or
        ``PUBLISH`` on ``<prefix>:msg:<C>`` with ``sharded=False``)."""
        if self.sharded:
            return "SPUBLISH", self.shard_channel(name)
        return "PUBLISH", self.msg_channel(name)

    def new_epoch(self) -> str:
        return f"{self.server_id}.{next(self._epoch_seq)}"


class Entry(NamedTuple):
    """One message of a channel's stream: its offset, text up to the offset
    (:func:`~sente_lite.wire.channels.message_head`), Redis time in ms, the conn-id it
    excludes ("-": none) and its traceparent (None: untraced)."""

    offset: int
    head: bytes
    ms: int
    exclude: str
    traceparent: Optional[str]


def read_stream(link: RedisLink, space: ChannelSpace, name: str, first: int, known_epoch: str,
                from_one: bool, most: Optional[int] = None) -> Tuple[str, int, int, List[Entry]]:
    """(epoch, top, Redis ms, entries from ``first``, at most ``most``) of channel
    ``name``, read atomically (a channel Redis does not know gets a new epoch)."""
    size = space.history_of(name)[0]
    count = size if most is None else min(size, most)
    raw = link.evalsha(SYNC_SCRIPT, 2, space.meta_key(name), space.log_key(name),
                       space.new_epoch(), str(int(space.channel_ttl_s * 1000)),
                       str(first), str(max(count, 1)), known_epoch, "1" if from_one else "0")
    epoch, top, now_ms, rows = raw
    return as_text(epoch), int(top), int(now_ms), [entry_of(i, f) for i, f in rows]


def entry_of(entry_id: bytes, fields: Any) -> Entry:
    """The :class:`Entry` of one stream entry (fields as a flat list or a dict)."""
    values = fields if isinstance(fields, dict) else dict(zip(fields[::2], fields[1::2]))
    traceparent = values.get(b"p", b"-")
    return Entry(int(entry_id.split(b"-", 1)[0]), values[b"h"], int(values[b"t"]),
                 as_text(values.get(b"x", b"-")),
                 None if traceparent == b"-" else as_text(traceparent))


class Chan:
    """One channel with local subscribers: who, and the last offset handed to them."""

    __slots__ = ("name", "epoch", "last", "subs", "lock", "synced", "pending", "dead",
                 "resync_queued")

    def __init__(self, name: str) -> None:
        self.name = name
        self.epoch: Optional[str] = None  # None until first caught up with Redis
        self.last = 0
        #: member -> what takes its messages (the broker's events, or a replay's hold)
        self.subs: Dict[Hashable, Callable[[Hashable, Any], bool]] = {}
        self.lock = threading.Lock()
        self.synced = False  # False: live messages wait in ``pending`` (catching up)
        # offset -> (epoch, exclude, traceparent, head)
        self.pending: Dict[int, Tuple[str, str, Optional[str], bytes]] = {}
        self.dead = False  # forgotten (no subscribers left): a new Chan replaces it
        self.resync_queued = False

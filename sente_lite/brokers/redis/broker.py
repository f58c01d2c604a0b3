"""Channels, history and presence shared by several server processes through Redis.

``Server(broker="redis://host:port/db")`` makes a :class:`RedisBroker`. Every
publish runs one Lua script (:data:`PUBLISH_SCRIPT`): it takes the channel's next
offset (``HINCRBY``), appends the message to the channel's stream (``XADD`` with
``MAXLEN history_size``, the stream id is the offset), remembers the publish id
(``SET`` with expiry) and ``SPUBLISH``es it on the channel's shard channel, all
atomically, so every server sees one offset order per channel. Each server listens
only to the channels it has subscribers for (``SSUBSCRIBE``; ``subscription="pattern"``:
one pattern subscription to every channel) and hands each message, built once as a WebSocket
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

import functools
import logging
import uuid
from typing import Any, Dict, Hashable, List, Optional, Tuple

from ...counters import Counter, Counters
from ...wire.channels import HistoryPage, Published, RecoveryResult, Since, message_text
from ..base import Announce, BrokerEvents, Dispatch, Done, HistoryLimits, PresenceBroker
from ..history import DEFAULT_MAX_REPLAY_PER_SUBSCRIBE
from ..recovery import Kept, history_page
from .channels import (DEFAULT_CHANNEL_TTL_S, MAX_PENDING_PER_CHANNEL, MAX_SUBSCRIBE_TRIES,
                       SYNC_SCRIPT, ChannelSpace, RedisChannels)
from .space import entry_of
from .link import (DEFAULT_COMMAND_TIMEOUT_S, DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_LINK_CHECK_S,
                   DEFAULT_LINK_TIMEOUT_S, DEFAULT_RECONNECT_BASE_S, DEFAULT_RECONNECT_MAX_S,
                   DEFAULT_START_WAIT_S, MAX_DISPATCH_BATCH, MAX_PUBLISH_BATCH, LinkHooks, RedisLink, import_redis)
from ..publish_ids import DEFAULT_PUBLISH_IDS_MAX, DEFAULT_PUBLISH_IDS_PER_PUBLISHER
from . import presence as redis_presence
from .presence import DEFAULT_PRESENCE_TTL_S, RedisPresence
from .channel_presence import SCRIPTS as CHANNEL_PRESENCE_SCRIPTS, RedisChannelPresence
from .publish import PUBLISH_SCRIPT, RedisPublisher
from .acks import REPLICA_ACK_LANES
from .failover import (DEFAULT_REPLICA_ACK_TIMEOUT_MS, ReplicatedPublishes,
                       check_replica_ack_timeout)
from .url import SHARDED, cluster_client_problem, parse_broker_url
from .users import user_shard_prefix

log = logging.getLogger("sente_lite.redis")

#: Prefix of every key and pubsub channel (``Server(broker_prefix=)``; letters, digits, ``_.-:``).
DEFAULT_PREFIX = "sente-lite"


class _Delegated:
    """An attribute of the broker kept by one of its parts (read and written there)."""

    def __init__(self, part: str) -> None:
        self.part = part

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: type) -> Any:
        if instance is None:
            return self
        return getattr(getattr(instance, self.part), self.name)

    def __set__(self, instance: Any, value: Any) -> None:
        setattr(getattr(instance, self.part), self.name, value)


class _Hooks(LinkHooks):
    """What the link tells the broker, handed to the part it concerns."""

    def __init__(self, broker: "RedisBroker") -> None:
        self._broker = broker

    def run_batch(self, batch: List[Any]) -> None:
        self._broker._publisher.run_publishes(batch)

    def fail_batched(self, op: Any, exc: BaseException) -> None:
        self._broker._publisher.finish(op, exc)

    def catch_up(self) -> int:
        return self._broker._channels.catch_up()

    def relinked(self) -> None:
        self._broker._presence.expiry_due()
        self._broker._channel_presence.refresh()

    def link_down(self) -> None:
        self._broker._channels.link_down()

    def on_messages(self, batch: List[Tuple[bytes, bytes]]) -> None:
        channels = self._broker._channels
        dispatch = self._broker.dispatch
        if dispatch is not None:
            dispatch(functools.partial(channels.on_messages, batch))
        else:
            channels.on_messages(batch)

    def on_user_message(self, channel: bytes, data: bytes) -> None:
        self._broker._presence.on_user_message(channel, data)

    def refresh_due(self) -> None:
        self._broker._presence.expiry_due()
        self._broker._link.submit(self._broker._channel_presence.refresh)

    def command_failed(self, exc: BaseException) -> None:
        self._broker._counters.add(Counter.BROKER_COMMAND_ERRORS)
        log.error("a Redis command failed (the link stays up): %s", exc)


def _replicated(publisher: RedisPublisher, space: ChannelSpace, link: RedisLink,
                counters: Counters, timeout_ms: int) -> ReplicatedPublishes:
    """The cluster publishes of ``publisher`` (see :mod:`.failover`), installed in it."""
    replicated = ReplicatedPublishes(
        link, counters, timeout_ms, publisher._command, lambda e: space.meta_key(e.channel),
        publisher.answer, publisher.finish, publisher.unavailable)
    publisher.replicated = replicated.run
    return replicated


def _user_stats(presence: RedisPresence) -> Dict[str, int]:
    routes = presence.routes
    return {"broker_user_heard": presence.user_heard,
            "broker_user_unserved": presence.user_unserved,
            "broker_user_inbound_bytes": presence.user_inbound_bytes,
            "broker_users_listening": routes.listened() if routes else 0,
            "broker_user_routes_waited": routes.routed_later if routes else 0}


def _replication_stats(replicated: Optional[ReplicatedPublishes]) -> Dict[str, int]:
    return {"broker_unreplicated_publishes": replicated.unreplicated if replicated else 0,
            "broker_publishes_without_replica": replicated.without_replica if replicated else 0,
            "broker_publish_lane_waits": replicated.lane_waits if replicated else 0}


def _check_settings(history_size: Any, history_ttl_s: float, publish_dedup_s: float,
                    prefix: str, start_wait_s: float) -> None:
    """ValueError naming the first of these :class:`RedisBroker` settings that is wrong."""
    if not isinstance(history_size, int) or history_size < 0:
        raise ValueError(f"history_size must be an int >= 0 (0: off), got {history_size!r}")
    if not publish_dedup_s >= history_ttl_s > 0:
        raise ValueError("need publish_dedup_s >= history_ttl_s > 0")
    if not prefix or any(not (c.isalnum() or c in "_.-:") for c in prefix):
        raise ValueError(f"prefix must be letters, digits and _.-: only, got {prefix!r}")
    if not start_wait_s >= 0:
        raise ValueError(f"start_wait_s must be >= 0 (0: no wait), got {start_wait_s!r}")


def _wait_first_up(link: RedisLink, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds (``start_wait_s``) for the link's first coming up;
    True once it did. Logs a WARNING when it did not."""
    if not timeout or link.first_up.wait(timeout):
        return link.first_up.is_set()
    log.warning("Redis link not up %.1fs after start (start_wait_s; %s): serving anyway, "
                "publishes are answered 'unavailable' until it is", timeout, link.down_reason)
    return False


class RedisBroker:
    """A :class:`~sente_lite.brokers.base.Broker` whose channels live in Redis (see the module).

    ``url``: ``redis://host:port/db``; ``server_id``: the server's (``Server(broker=url)``
    passes it; made up when None). History, publish ids and their limits mean
    what they mean for :class:`~sente_lite.brokers.local.LocalBroker` (PROTOCOL 9), but are
    kept in Redis: ``history_size`` messages per channel (the stream's MAXLEN),
    replayed only while younger than ``history_ttl_s``; publish ids for
    ``publish_dedup_s``. Every other limit is a ``DEFAULT_*`` of this module.
    ``subscription``: ``"sharded"`` (each server ``SSUBSCRIBE``s the channels it serves;
    Redis >= 7) or ``"pattern"`` (each hears every channel); None: the URL's
    ``?subscription=``, else sharded. ``replica_ack_timeout_ms`` (a Redis Cluster only): a
    publish is acknowledged once a replica holds it (``WAIT 1 <ms>``), else answered
    ``outcome-unknown`` (:mod:`~sente_lite.brokers.redis.failover`); 0: no wait.

    Its parts: :class:`~sente_lite.brokers.redis.link.RedisLink` (the two threads, up/down),
    :class:`~sente_lite.brokers.redis.publish.RedisPublisher` (publishes),
    :class:`~sente_lite.brokers.redis.channels.RedisChannels` (local subscribers, catch-ups)
    and :class:`~sente_lite.brokers.redis.presence.RedisPresence` (users across servers).
    """

    waits_on_io = True  # history, presence and routing are Redis commands
    presence: Optional[PresenceBroker]

    url = _Delegated("_link")
    link_check_s = _Delegated("_link")
    link_timeout_s = _Delegated("_link")
    reconnect_base_s = _Delegated("_link")
    reconnect_max_s = _Delegated("_link")
    links = _Delegated("_link")  # times the link came up
    outages = _Delegated("_link")
    history_size = _Delegated("_space")
    history_ttl_s = _Delegated("_space")
    publish_dedup_s = _Delegated("_space")
    channel_ttl_s = _Delegated("_space")
    unavailable_publishes = _Delegated("_publisher")
    notices = _Delegated("_channels")  # recovered:false notices sent to local subscribers
    caught_up = _Delegated("_channels")  # messages delivered from a stream after a gap or an outage
    presence_ttl_s = _Delegated("_presence")
    #: Runs live deliveries and replays on the server's network thread (given to
    #: :meth:`start`), which writes what it sends in one pass once per connection; None:
    #: the link's threads.
    dispatch = _Delegated("_channels")

    def __init__(self, url: str, server_id: Optional[str] = None, *, history_size: int = 1000,
                 history_ttl_s: float = 300.0, publish_dedup_s: float = 300.0,
                 publish_ids_per_publisher: int = DEFAULT_PUBLISH_IDS_PER_PUBLISHER,
                 publish_ids_max: int = DEFAULT_PUBLISH_IDS_MAX,
                 counters: Optional[Counters] = None, prefix: str = DEFAULT_PREFIX,
                 channel_ttl_s: float = DEFAULT_CHANNEL_TTL_S,
                 connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
                 command_timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S,
                 link_check_s: float = DEFAULT_LINK_CHECK_S,
                 link_timeout_s: float = DEFAULT_LINK_TIMEOUT_S,
                 reconnect_base_s: float = DEFAULT_RECONNECT_BASE_S,
                 reconnect_max_s: float = DEFAULT_RECONNECT_MAX_S,
                 presence_ttl_s: float = DEFAULT_PRESENCE_TTL_S,
                 max_replay_per_subscribe: int = DEFAULT_MAX_REPLAY_PER_SUBSCRIBE,
                 subscription: Optional[str] = None,
                 replica_ack_timeout_ms: int = DEFAULT_REPLICA_ACK_TIMEOUT_MS,
                 start_wait_s: float = DEFAULT_START_WAIT_S) -> None:
        import_redis()
        _check_settings(history_size, history_ttl_s, publish_dedup_s, prefix, start_wait_s)
        self._start_wait_s = start_wait_s
        check_replica_ack_timeout(replica_ack_timeout_ms)
        parsed = parse_broker_url(url, subscription)
        if parsed.nodes is not None and cluster_client_problem() is not None:
            raise RuntimeError(cluster_client_problem())
        self.subscription = parsed.subscription
        self.server_id = server_id or uuid.uuid4().hex[:16]  # names its epochs and its presence
        self.prefix = prefix
        counters = counters if counters is not None else Counters()
        self._counters = counters
        self._space = ChannelSpace(prefix, self.server_id, history_size, history_ttl_s,
                                   publish_dedup_s, channel_ttl_s, publish_ids_per_publisher,
                                   publish_ids_max, max_replay_per_subscribe,
                                   sharded=parsed.subscription == SHARDED,
                                   cluster=parsed.nodes is not None)
        user_channel = redis_presence.user_channel(prefix)
        patterns = () if self._space.sharded else (self._space.msg_prefix + b"*",)
        self._link = RedisLink(
            parsed.url, _Hooks(self), patterns=patterns, channels=(user_channel,),
            scripts=(PUBLISH_SCRIPT, SYNC_SCRIPT) + CHANNEL_PRESENCE_SCRIPTS,
            connect_timeout_s=connect_timeout_s,
            command_timeout_s=command_timeout_s, link_check_s=link_check_s,
            link_timeout_s=link_timeout_s, reconnect_base_s=reconnect_base_s,
            reconnect_max_s=reconnect_max_s, refresh_every_s=presence_ttl_s / 3,
            nodes=parsed.nodes, user_prefix=user_shard_prefix(prefix) if self._space.sharded else None)
        self._channels = RedisChannels(self._space, self._link, counters)
        self._publisher = RedisPublisher(self._space, self._link, counters,
                                         self._channels.members_here)
        # a cluster: a publish is acknowledged once a replica holds it
        self._replicated = None if parsed.nodes is None else _replicated(
            self._publisher, self._space, self._link, counters, replica_ack_timeout_ms)
        self._presence = RedisPresence(prefix, self.server_id, self._link, user_channel,
                                       presence_ttl_s, sharded=self._space.sharded)
        self.presence = self._presence
        self._channel_presence = RedisChannelPresence(self._space, self._link, presence_ttl_s)

    # -- lifecycle -------------------------------------------------------------------
    def start(self, events: BrokerEvents, dispatch: Optional[Dispatch] = None) -> None:
        """Serve the node behind ``events``; start the two threads, then wait up to
        ``start_wait_s`` for the link (``healthy``): the first clients' publishes are not
        refused only because the server just started."""
        self._channels.events = events
        self._presence.events = events
        self._channels.dispatch = dispatch
        self._link.start()
        _wait_first_up(self._link, self._start_wait_s)

    def stop(self, timeout: float = 5.0) -> None:
        """Remove this server's presence, stop both threads, close the connections."""
        if self._link.stopping:
            return
        if not self._link.down:
            self._presence.remove()
        if self._replicated is not None:  # its ack threads first: the I/O thread may wait on them
            self._replicated.close(timeout)
        self._link.stop(timeout)

    @property
    def healthy(self) -> bool:
        """True while the link to Redis is up and caught up."""
        return not self._link.down

    def health(self) -> Dict[str, Any]:
        """``broker``, ``broker-status`` (up/down), and while down why and for how long."""
        return self._link.health()

    def sweep_idle(self) -> int:
        """Nothing to sweep here: Redis expires idle channels' keys itself."""
        return 0

    # -- publish ---------------------------------------------------------------------
    def publish(self, channel: str, head: str, *, exclude: Optional[Hashable] = None,
                done: Optional[Done] = None, wait: bool = True,
                publish_id: Optional[str] = None, publisher: Optional[str] = None,
                traceparent: Optional[str] = None) -> Optional[Published]:
        """Publish the channel message whose text up to its offset is ``head`` (Redis
        gives it its offset and epoch; every server finishes the text and delivers it to
        its subscribers, in offset order, from the subscription).

        ``done(result)`` gets the :class:`Published` (``delivered``: this server's
        subscribers it goes to; 0 for a duplicate), a :class:`BrokerUnavailable` (not
        published), a :class:`PublishOutcomeUnknown` (maybe published) or a
        :class:`BrokerCommandError` (Redis refused it: not published), on the broker's
        thread (at once, on the caller's, while the link is down). With ``wait`` the
        result is returned (or raised). ``publish_id`` deduplicates against earlier
        publishes of ``publisher`` (uid; None: the server) only.
        """
        return self._publisher.publish(channel, head, None if exclude is None else str(exclude),
                                       done, wait, publish_id, publisher, traceparent)

    # -- subscribe -------------------------------------------------------------------
    def subscribe(self, member: Hashable, channel: str, announce: Optional[Announce] = None,
                  since: Optional[Since] = None, replay_budget: Optional[int] = None,
                  ) -> Tuple[int, str, bool, Optional[RecoveryResult]]:
        """Add ``member`` to ``channel``; answered later, on the broker's thread:
        ``announce(top, epoch, recovery)`` then, if recovered, the replay (at most
        ``max_replay_per_subscribe`` and ``replay_budget`` messages, else
        ``replay-limit``), then live messages (no gap, no duplicate). A member that
        already holds ``channel`` gets ``already-subscribed`` and no replay. While Redis
        is down the subscribe waits. Returns (0, "", newly added, None): the real
        answer is ``announce``'s."""
        return self._channels.subscribe(member, channel, announce, since, replay_budget)

    def unsubscribe(self, member: Hashable, channel: str) -> bool:
        """Remove ``member`` from ``channel``. True when it was subscribed."""
        return self._channels.unsubscribe(member, channel)

    def remove_member(self, member: Hashable) -> List[str]:
        """Remove ``member`` from every channel. Returns the channel names."""
        return self._channels.remove_member(member)

    def channels_of(self, member: Hashable) -> List[str]:
        """The channels ``member`` is subscribed to here."""
        return self._channels.channels_of(member)

    def subscriber_count(self, channel: str) -> int:
        """How many members of this server ``channel`` has now."""
        return self._channels.subscriber_count(channel)

    def subscriber_counts(self) -> Dict[str, int]:
        """Channel -> members on this server (Redis keeps no count of other servers')."""
        return self._channels.subscriber_counts()

    def limit_history(self, limits: HistoryLimits) -> None:
        """Per channel, a smaller history (a namespace's): its stream's MAXLEN and TTL at
        each publish, and what reads and recoveries count as kept."""
        self._space.limits = limits

    def history(self, channel: str, since: Optional[Since] = None, limit: Optional[int] = None,
                reverse: bool = False) -> HistoryPage:
        """The stream of ``channel`` (messages younger than ``history_ttl_s``), read in one
        transaction with its epoch and offset; see :meth:`Broker.history`. With a
        ``limit``, only that range is read (``XRANGE``/``XREVRANGE`` with ``COUNT``) while
        the stream's oldest entry is not expired; else the whole stream."""
        space = self._space
        log_key = space.log_key(channel)
        # one transaction; in a cluster, TIME has no slot: read in order instead
        pipe = self._link.redis.pipeline(transaction=self._link.nodes is None)
        pipe.hmget(space.meta_key(channel), "epoch", "offset")
        if self._link.nodes is None:
            pipe.time()
        else:  # TIME of the channel's node
            pipe.execute_command("EVAL", "return redis.call('TIME')", 1, space.meta_key(channel))
        ranged = limit is not None
        if ranged:
            low = b"-" if since is None else f"{since.offset + 1}-0".encode()
            pipe.xrange(log_key, count=1)
            if reverse:
                pipe.xrevrange(log_key, b"+", low, count=limit)
            else:
                pipe.xrange(log_key, low, b"+", count=limit)
        else:
            pipe.xrange(log_key)
        answers = pipe.execute()
        (epoch_b, top_b), (secs, micros) = answers[0], map(int, answers[1])
        if epoch_b is None:
            return history_page(None, [], since, limit, reverse)
        epoch, top = epoch_b.decode(), int(top_b or 0)
        size, ttl_s = space.history_of(channel)
        oldest = secs * 1000 + micros // 1000 - int(ttl_s * 1000)
        if ranged:
            head = [entry_of(i, f) for i, f in answers[2]]
            if head and head[0].ms < oldest:  # expired entries lead: read it all
                full = self.history(channel, since, None, reverse)
                return full._replace(publications=full.publications[:limit])
            rows = answers[3][::-1] if reverse else answers[3]
            low_kept = max(head[0].offset if head else top + 1, top - size + 1)
            entries = [e for e in (entry_of(i, f) for i, f in rows) if e.offset >= low_kept] if size else []
            first: Optional[int] = low_kept if head and size and low_kept <= top else None
        else:
            entries = [e for e in (entry_of(i, f) for i, f in answers[2])
                       if e.ms >= oldest][-size:] if size else []
            first = entries[0].offset if entries else None
        kept = Kept(epoch, top, first, bool(size), space.max_replay)
        return history_page(kept, [(e.offset, message_text(e.head, e.offset, epoch))
                                   for e in entries], since, limit, reverse)

    def history_of(self, name: str) -> List[Tuple[int, bytes]]:
        """(offset, message text) of every message in the stream of ``name``, oldest first."""
        return self.history(name).publications

    def stats(self) -> dict:
        """Local counts (channels with subscribers here, subscriptions) and the link's state."""
        chans, subs = self._channels.counts()
        return {"channels": chans, "active_channels": chans, "subscriptions": subs,
                "channels_evicted": 0, "history_messages": 0, "publish_ids": 0,
                "publish_ids_bytes": 0,
                "history_size": self.history_size, "history_ttl_s": self.history_ttl_s,
                "publish_dedup_s": self.publish_dedup_s,
                "max_replay_per_subscribe": self._space.max_replay, "broker": "redis",
                "broker_up": not self._link.down, "broker_links": self.links,
                "broker_outages": self.outages,
                "broker_unavailable_publishes": self.unavailable_publishes,
                "broker_notices": self.notices, "broker_caught_up": self.caught_up,
                "broker_subscription": self.subscription,
                "broker_listening": self._channels.listening(),
                "broker_shard_subscribes": self._link.shard_subscribes,
                "broker_heard": self._channels.heard, "broker_unserved": self._channels.unserved,
                "broker_inbound_bytes": self._channels.inbound_bytes, **_user_stats(self._presence),
                **_replication_stats(self._replicated)}

    # -- channel presence (Redis keys <chan>:pz / <chan>:ph, expiring in presence_ttl_s) --
    def presence_add(self, channel: str, member: Dict[str, Any]) -> bool:
        """Record ``member`` of this server in ``channel`` (waits on Redis); True when new."""
        return self._channel_presence.add(channel, member)

    def presence_remove(self, channel: str, conn_id: str) -> bool:
        return self._channel_presence.remove(channel, conn_id)

    def presence_of(self, channel: str) -> List[Dict[str, Any]]:
        """The members of ``channel`` on every server (a SIGKILLed server's expire within
        ``presence_ttl_s``)."""
        return self._channel_presence.members(channel)

    def presence_stats(self, channel: str) -> Dict[str, int]:
        return self._channel_presence.stats(channel)

    def presence_json(self, channel: str) -> bytes:
        return self._channel_presence.members_json(channel)

    def publish_event(self, channel: str, text: bytes) -> None:
        """A join/leave, by the channel's pubsub channel (in order with its messages)."""
        self._channel_presence.publish_event(channel, text)

    # -- users on other servers ---------------------------------------------------------
    def to_user(self, uid: str, json_payload: bytes) -> None:
        """Send one event frame to the connections of ``uid`` on every other server."""
        self._presence.to_user(uid, json_payload)

    def disconnect_user(self, uid: str, code: int, reason: str) -> None:
        """Close the connections of ``uid`` on every other server."""
        self._presence.disconnect_user(uid, code, reason)

    def broadcast(self, json_payload: bytes) -> None:
        """Send one event frame to every connection of every other server."""
        self._presence.broadcast(json_payload)


__all__ = ["RedisBroker", "PUBLISH_SCRIPT", "SYNC_SCRIPT", "DEFAULT_PREFIX",
           "DEFAULT_CHANNEL_TTL_S", "DEFAULT_CONNECT_TIMEOUT_S", "DEFAULT_COMMAND_TIMEOUT_S",
           "DEFAULT_LINK_CHECK_S", "DEFAULT_LINK_TIMEOUT_S", "DEFAULT_RECONNECT_BASE_S",
           "DEFAULT_RECONNECT_MAX_S", "DEFAULT_START_WAIT_S", "DEFAULT_PRESENCE_TTL_S", "MAX_PUBLISH_BATCH", "MAX_DISPATCH_BATCH",
           "MAX_PENDING_PER_CHANNEL", "MAX_SUBSCRIBE_TRIES", "REPLICA_ACK_LANES"]

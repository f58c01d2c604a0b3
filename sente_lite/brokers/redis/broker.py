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

import functools
import logging
import uuid
from typing import TYPE_CHECKING, Any, Callable, Dict, Hashable, List, Optional, Tuple

from ..local import DEFAULT_MAX_REPLAY_PER_SUBSCRIBE, Published, RecoveryResult, Since
from ...counters import Counter, Counters
from .channels import (DEFAULT_CHANNEL_TTL_S, MAX_PENDING_PER_CHANNEL, MAX_SUBSCRIBE_TRIES,
                       SYNC_SCRIPT, ChannelSpace, RedisChannels)
from .link import (DEFAULT_COMMAND_TIMEOUT_S, DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_LINK_CHECK_S,
                   DEFAULT_LINK_TIMEOUT_S, DEFAULT_RECONNECT_BASE_S, DEFAULT_RECONNECT_MAX_S,
                   MAX_DISPATCH_BATCH, MAX_PUBLISH_BATCH, LinkHooks, RedisLink, import_redis)
from ..publish_ids import DEFAULT_PUBLISH_IDS_MAX, DEFAULT_PUBLISH_IDS_PER_PUBLISHER
from . import presence as redis_presence
from .presence import DEFAULT_PRESENCE_TTL_S, RedisPresence
from .publish import PUBLISH_SCRIPT, RedisPublisher

if TYPE_CHECKING:
    from ...core.hub import Hub

log = logging.getLogger("sente_lite.redis")

#: Prefix of every key and pubsub channel (``Server(broker_prefix=)``; letters, digits, ``_.-:``).
DEFAULT_PREFIX = "sente-lite"


class _Delegated:
    """An attribute of the broker kept by one of its parts (read and written there)."""

    def __init__(self, part: str) -> None:
        self.part = part

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, broker: Any, owner: type) -> Any:
        if broker is None:
            return self
        return getattr(getattr(broker, self.part), self.name)

    def __set__(self, broker: Any, value: Any) -> None:
        setattr(getattr(broker, self.part), self.name, value)


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
        self._broker._presence.refresh()

    def link_down(self) -> None:
        self._broker._channels.link_down()

    def on_messages(self, batch: List[Tuple[bytes, bytes]]) -> None:
        channels = self._broker._channels
        dispatch = self._broker.dispatch
        if dispatch is not None:
            dispatch(functools.partial(channels.on_messages, batch))
        else:
            channels.on_messages(batch)

    def on_user_message(self, data: bytes) -> None:
        self._broker._presence.on_user_message(data)

    def refresh_due(self) -> None:
        self._broker._presence.changed()

    def command_failed(self, exc: BaseException) -> None:
        self._broker._counters.add(Counter.BROKER_COMMAND_ERRORS)
        log.error("a Redis command failed (the link stays up): %s", exc)


class RedisBroker:
    """A :class:`~sente_lite.core.hub.Broker` whose channels live in Redis (see the module).

    ``url``: ``redis://host:port/db``; ``server_id``: the server's (``Server(broker=url)``
    passes it; made up when None). History, publish ids and their limits mean
    what they mean for :class:`~sente_lite.core.hub.LocalBroker` (PROTOCOL 9), but are
    kept in Redis: ``history_size`` messages per channel (the stream's MAXLEN),
    replayed only while younger than ``history_ttl_s``; publish ids for
    ``publish_dedup_s``. Every other limit is a ``DEFAULT_*`` of this module.

    Its parts: :class:`~sente_lite.brokers.redis.link.RedisLink` (the two threads, up/down),
    :class:`~sente_lite.brokers.redis.publish.RedisPublisher` (publishes),
    :class:`~sente_lite.brokers.redis.channels.RedisChannels` (local subscribers, catch-ups)
    and :class:`~sente_lite.brokers.redis.presence.RedisPresence` (users across servers).
    """

    shared = True  # the hub routes users and presence through it

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
    #: Runs live deliveries and replays on the server's network thread (set by the server),
    #: which writes what it sends in one pass once per connection; None: the link's threads.
    dispatch = _Delegated("_channels")
    on_disconnect_user = _Delegated("_presence")

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
                 max_replay_per_subscribe: int = DEFAULT_MAX_REPLAY_PER_SUBSCRIBE) -> None:
        import_redis()
        if not isinstance(history_size, int) or history_size < 0:
            raise ValueError(f"history_size must be an int >= 0 (0: off), got {history_size!r}")
        if not publish_dedup_s >= history_ttl_s > 0:
            raise ValueError("need publish_dedup_s >= history_ttl_s > 0")
        if not prefix or any(not (c.isalnum() or c in "_.-:") for c in prefix):
            raise ValueError(f"prefix must be letters, digits and _.-: only, got {prefix!r}")
        self.server_id = server_id or uuid.uuid4().hex[:16]  # names its epochs and its presence
        self.prefix = prefix
        counters = counters if counters is not None else Counters()
        self._counters = counters
        self._space = ChannelSpace(prefix, self.server_id, history_size, history_ttl_s,
                                   publish_dedup_s, channel_ttl_s, publish_ids_per_publisher,
                                   publish_ids_max, max_replay_per_subscribe)
        user_channel = redis_presence.user_channel(prefix)
        self._link = RedisLink(
            url, _Hooks(self), patterns=(self._space.msg_prefix + b"*",), channels=(user_channel,),
            scripts=(PUBLISH_SCRIPT, SYNC_SCRIPT), connect_timeout_s=connect_timeout_s,
            command_timeout_s=command_timeout_s, link_check_s=link_check_s,
            link_timeout_s=link_timeout_s, reconnect_base_s=reconnect_base_s,
            reconnect_max_s=reconnect_max_s, refresh_every_s=presence_ttl_s / 3)
        self._publisher = RedisPublisher(self._space, self._link, counters)
        self._channels = RedisChannels(self._space, self._link, counters)
        self._presence = RedisPresence(prefix, self.server_id, self._link, user_channel,
                                       presence_ttl_s)

    # -- lifecycle -------------------------------------------------------------------
    def bind(self, hub: "Hub") -> None:
        """Called by the hub it serves (frames, deliveries, users)."""
        self._channels.hub = hub
        self._presence.hub = hub

    def start(self) -> None:
        """Start the two threads; the link comes up in the background (``healthy``)."""
        self._link.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Remove this server's presence, stop both threads, close the connections."""
        if self._link.stopping:
            return
        if not self._link.down:
            self._presence.remove()
        self._link.stop(timeout)

    @property
    def healthy(self) -> bool:
        """True while the link to Redis is up and caught up."""
        return not self._link.down

    def health(self) -> Dict[str, Any]:
        """``broker``, ``broker-status`` (up/down), and while down why and for how long."""
        return self._link.health()

    # -- publish ---------------------------------------------------------------------
    def publish(self, name: str, make_frame: Callable[[int, str], Any], deliver: Any,
                exclude: Optional[Hashable] = None, done: Optional[Callable[[Any], None]] = None,
                wait: bool = True, publish_id: Optional[str] = None,
                publisher: Optional[str] = None) -> Optional[Published]:
        """Not used: the hub publishes through :meth:`publish_text` (the frame is made in Redis)."""
        raise NotImplementedError("RedisBroker publishes through publish_text")

    def publish_text(self, name: str, head: str, exclude: Optional[str],
                     done: Optional[Callable[[Any], None]], wait: bool = True,
                     publish_id: Optional[str] = None,
                     publisher: Optional[str] = None) -> Optional[Published]:
        """Publish the channel message whose text up to its offset is ``head``.

        ``done(result)`` gets the :class:`Published` (``delivered``: how many
        servers received it), a :class:`BrokerUnavailable` (not published),
        a :class:`PublishOutcomeUnknown` (maybe published) or a
        :class:`BrokerCommandError` (Redis refused it: not published), on the
        broker's thread (at once, on the caller's, while the link is down). With
        ``wait`` the result is returned (or raised). ``publish_id`` deduplicates
        against earlier publishes of ``publisher`` (uid; None: the server) only.
        """
        return self._publisher.publish_text(name, head, exclude, done, wait, publish_id,
                                            publisher)

    # -- subscribe -------------------------------------------------------------------
    def subscribe(self, member: Hashable, name: str, announce: Optional[Any] = None,
                  since: Optional[Since] = None, deliver: Optional[Any] = None,
                  replay_budget: Optional[int] = None,
                  ) -> Tuple[int, str, bool, Optional[RecoveryResult]]:
        """Add ``member`` to ``name``; answered later, on the broker's thread:
        ``announce(top, epoch, recovery)`` then, if recovered, the replay (at most
        ``max_replay_per_subscribe`` and ``replay_budget`` messages, else
        ``replay-limit``), then live messages (no gap, no duplicate). A member that
        already holds ``name`` gets ``already-subscribed`` and no replay. While Redis
        is down the subscribe waits. Returns (0, "", newly added, None): the real
        answer is ``announce``'s."""
        return self._channels.subscribe(member, name, announce, since, deliver, replay_budget)

    def unsubscribe(self, member: Hashable, name: str) -> bool:
        """Remove ``member`` from ``name``. True when it was subscribed."""
        return self._channels.unsubscribe(member, name)

    def remove_member(self, member: Hashable) -> List[str]:
        """Remove ``member`` from every channel. Returns the channel names."""
        return self._channels.remove_member(member)

    def channels_of(self, member: Hashable) -> List[str]:
        """The channels ``member`` is subscribed to here."""
        return self._channels.channels_of(member)

    def subscriber_count(self, name: str) -> int:
        """How many members of this server channel ``name`` has now."""
        return self._channels.subscriber_count(name)

    def subscriber_counts(self) -> Dict[str, int]:
        """Channel -> members on this server (Redis keeps no count of other servers')."""
        return self._channels.subscriber_counts()

    def history_of(self, name: str) -> List[Tuple[int, Any]]:
        """(offset, frame text) of every message in the stream of ``name``, oldest first."""
        rows = self._link.redis.xrange(self._space.log_key(name))
        return [(int(i.split(b"-", 1)[0]), f[b"m"]) for i, f in rows]

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
                "broker_notices": self.notices, "broker_caught_up": self.caught_up}

    # -- users and presence ------------------------------------------------------------
    def to_user(self, uid: str, json_payload: bytes) -> None:
        """Send one event frame to the connections of ``uid`` on every other server."""
        self._presence.to_user(uid, json_payload)

    def disconnect_user(self, uid: str, code: int, reason: str) -> None:
        """Close the connections of ``uid`` on every other server."""
        self._presence.disconnect_user(uid, code, reason)

    def presence_changed(self) -> None:
        """The local users changed: refresh this server's presence entry soon."""
        self._presence.changed()

    def presence(self, uid: str) -> int:
        """Live connections of ``uid`` on every server (raises BrokerUnavailable while down)."""
        return self._presence.presence(uid)

    def user_count(self) -> int:
        """Distinct users connected to any server (raises BrokerUnavailable while down)."""
        return self._presence.user_count()

    def broadcast(self, json_payload: bytes) -> None:
        """Send one event frame to every connection of every other server."""
        self._presence.broadcast(json_payload)

    def servers(self) -> List[str]:
        """The server-ids of every live server on this Redis (raises BrokerUnavailable)."""
        return self._presence.servers()


__all__ = ["RedisBroker", "PUBLISH_SCRIPT", "SYNC_SCRIPT", "DEFAULT_PREFIX",
           "DEFAULT_CHANNEL_TTL_S", "DEFAULT_CONNECT_TIMEOUT_S", "DEFAULT_COMMAND_TIMEOUT_S",
           "DEFAULT_LINK_CHECK_S", "DEFAULT_LINK_TIMEOUT_S", "DEFAULT_RECONNECT_BASE_S",
           "DEFAULT_RECONNECT_MAX_S", "DEFAULT_PRESENCE_TTL_S", "MAX_PUBLISH_BATCH", "MAX_DISPATCH_BATCH",
           "MAX_PENDING_PER_CHANNEL", "MAX_SUBSCRIBE_TRIES"]

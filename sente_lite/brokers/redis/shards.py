"""Which pubsub channels the link of a :class:`~sente_lite.brokers.redis.broker.RedisBroker`
listens to, and when Redis confirmed them (:class:`Listening`, a part of
:class:`~sente_lite.brokers.redis.link.RedisLink`).

With sharded subscription a server listens only to the channels it serves: the first
local subscriber of a channel makes the I/O thread ``SSUBSCRIBE`` its shard channel and
wait for Redis's confirmation (read by the link thread) *before* the channel's stream is
read, so every message published after that read arrives live: no message is neither in
the replay nor delivered. After a reconnect every subscription is made again and
confirmed before the channels are caught up from their streams.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

log = logging.getLogger("sente_lite.redis")


class Listening:
    """The subscriptions of a link: fixed patterns and channels, and shard channels
    added and removed while it runs (:meth:`listen`, :meth:`unlisten`)."""

    _patterns: Tuple[bytes, ...]
    _channels: Tuple[bytes, ...]
    command_timeout_s: float
    redis_mod: Any
    submit: Callable[[Any], None]
    _relink: Callable[[], None]
    nodes: Optional[List[Tuple[str, int]]]
    url: str
    redis: Any
    _options: Dict[str, Any]

    def _client(self, options: Dict[str, Any]) -> Any:
        """A redis-py client of the URL (``redis.cluster.RedisCluster`` of ``nodes``)."""
        if self.nodes is None:
            return self.redis_mod.Redis.from_url(self.url, **options)
        from redis.cluster import ClusterNode, RedisCluster

        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in self.nodes], **options)

    def node_client(self, host: str, port: int, **options: Any) -> Any:
        """A ``redis.Redis`` of one node (a cluster's master) with the link's timeouts and
        no retries, ``options`` overriding them (e.g. ``max_connections=1``)."""
        return self.redis_mod.Redis(host=host, port=port, **dict(self._options, **options))

    def _renew_commands_client(self) -> None:
        """Drop the connections from before an outage (a cluster: its slot map too)."""
        if self.nodes is None:
            self.redis.connection_pool.disconnect()
            return
        old, self.redis = self.redis, self._client(self._options)
        try:
            old.close()
        except Exception:
            pass

    def publish_user(self, channel: bytes, data: bytes, shard: bool = False) -> None:
        """Publish on the user channel (``SPUBLISH`` in a cluster: one slot's node), or
        on a user's shard channel (``shard``)."""
        self.redis.execute_command("SPUBLISH" if self.nodes or shard else "PUBLISH", channel, data)

    def _init_listening(self) -> None:
        self._shards: Dict[bytes, None] = {}  # shard channels wanted, in order
        self._pubsub: Optional[Any] = None  # the link thread's, once subscribed
        self._sub_lock = threading.Lock()
        self._confirm: Dict[bytes, threading.Event] = {}
        #: shard channel -> (when sent, callbacks) of :meth:`listen_then` awaiting Redis
        self._then: Dict[bytes, Tuple[float, List[Callable[[], None]]]] = {}
        self._awaiting = 0  # confirmations due before the link counts as back
        #: ``SSUBSCRIBE`` / ``SUNSUBSCRIBE`` sent (for stats and tests)
        self.shard_subscribes = 0
        self.shard_unsubscribes = 0

    def listening_to(self) -> int:
        """How many shard channels the link listens to now."""
        return len(self._shards)

    def listen(self, shard: bytes) -> None:
        """``SSUBSCRIBE`` ``shard`` and wait until Redis confirmed it (I/O thread). Raises
        a Redis ``ConnectionError`` when it is not confirmed in ``command_timeout_s``."""
        with self._sub_lock:
            if shard in self._shards:
                return
            self._shards[shard] = None
            pubsub = self._pubsub
            if pubsub is None:  # the link thread subscribes to it when the link is back
                raise self.redis_mod.exceptions.ConnectionError("no subscription yet")
            confirmed = self._confirm[shard] = threading.Event()
            self.shard_subscribes += 1
            pubsub.ssubscribe(shard)
        if not confirmed.wait(self.command_timeout_s):
            raise self.redis_mod.exceptions.TimeoutError(
                f"SSUBSCRIBE not confirmed in {self.command_timeout_s}s")

    def listen_then(self, shard: bytes, confirmed: Callable[[], None]) -> None:
        """``SSUBSCRIBE`` ``shard`` without waiting (I/O thread): ``confirmed()`` runs once
        Redis confirmed it (on the link thread), or at once when it already is, or when the
        link is down or lost meanwhile (it is subscribed again with the others when the
        link is back)."""
        with self._sub_lock:
            waiting = self._then.get(shard)
            if waiting is not None:
                waiting[1].append(confirmed)
                return
            known = shard in self._shards
            self._shards[shard] = None
            pubsub = self._pubsub
            if not known and pubsub is not None:
                self._then[shard] = (time.monotonic(), [confirmed])
                self.shard_subscribes += 1
                pubsub.ssubscribe(shard)
                return
        confirmed()

    def overdue(self) -> Optional[float]:
        """Seconds the oldest :meth:`listen_then` has waited for Redis (None: none waits)."""
        with self._sub_lock:
            if not self._then:
                return None
            return time.monotonic() - min(sent for sent, _ in self._then.values())

    def _release_then(self, shard: Optional[bytes] = None) -> None:
        """Run the callbacks waiting for ``shard`` (None: every one: the link is lost)."""
        with self._sub_lock:
            if shard is None:
                waiting = [cbs for _, cbs in self._then.values()]
                self._then.clear()
            else:
                found = self._then.pop(shard, None)
                waiting = [] if found is None else [found[1]]
        for callbacks in waiting:
            for callback in callbacks:
                try:
                    callback()
                except Exception:
                    log.exception("a shard subscription callback failed")

    def unlisten(self, shard: bytes) -> None:
        """``SUNSUBSCRIBE`` ``shard`` (I/O thread; not waited for)."""
        with self._sub_lock:
            if self._shards.pop(shard, 0) is not None:
                return
            self._confirm.pop(shard, None)
            pubsub = self._pubsub
            if pubsub is not None:
                self.shard_unsubscribes += 1
                pubsub.sunsubscribe(shard)

    def _subscribe_all(self, pubsub: Any) -> None:
        """Make every subscription on a new ``pubsub`` (link thread); the link counts as
        back (``_relink`` queued) once Redis confirmed them all (:meth:`_confirmed`)."""
        with self._sub_lock:
            self._pubsub = None
            self._awaiting = len(self._patterns) + len(self._channels) + len(self._shards)
            if self._patterns:
                pubsub.psubscribe(*self._patterns)
            if self._channels and self.nodes:
                pubsub.ssubscribe(*self._channels)  # PUBLISH would reach every node
            elif self._channels:
                pubsub.subscribe(*self._channels)
            if self._shards:
                pubsub.ssubscribe(*self._shards)
            self._pubsub = pubsub
            if not self._awaiting:
                self.submit(self._relink)

    def _forget_pubsub(self) -> None:
        with self._sub_lock:
            self._pubsub = None
        self._release_then()  # nobody waits on a lost link

    def _confirmed(self, channel: bytes) -> None:
        """Redis confirmed a subscription (link thread)."""
        with self._sub_lock:
            event = self._confirm.pop(channel, None)
            if self._awaiting:
                self._awaiting -= 1
                if not self._awaiting:
                    self.submit(self._relink)
        if event is not None:
            event.set()
        if self._then:
            self._release_then(channel)


def wait_readable(pubsub: Any, timeout: float) -> bool:
    """Wait until a node connection of a cluster ``pubsub`` has bytes to read, or
    ``timeout`` seconds. redis-py's ``get_sharded_message(timeout=)`` polls its nodes in
    turn, each for a share of ``timeout``, so a message on one node waits out the others'
    shares (tens of ms); this waits on every socket at once. False (nothing waited) when a
    connection's socket is not reachable: then poll with redis-py's timeout."""
    socks = []
    for node_pubsub in list(getattr(pubsub, "node_pubsub_mapping", {}).values()):
        sock = getattr(getattr(node_pubsub, "connection", None), "_sock", None)
        if sock is None:
            return False
        socks.append(sock)
    if not socks:
        return False
    try:
        select.select(socks, [], [], timeout)
    except (OSError, ValueError):  # a socket closed meanwhile: the read reports it
        pass
    return True


__all__ = ["Listening", "wait_readable"]

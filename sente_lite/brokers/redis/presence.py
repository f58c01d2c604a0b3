"""Users across the servers of a :class:`~sente_lite.brokers.redis.broker.RedisBroker`.

Each server keeps a presence entry in Redis (a hash uid -> its connections
there, expiring unless refreshed; it counts ``user_count``), writes its connections
into each of its users' own presence hash (:func:`~sente_lite.brokers.redis.users.user_key`:
``presence(uid)`` reads that one key) and is listed in a set of servers. Sends and
closes aimed at a user's connections on other servers go to the user's shard channel,
which only the servers holding that user listen to
(:class:`~sente_lite.brokers.redis.users.UserRoutes`; with ``subscription=pattern``: the
one user channel every server reads, as broadcasts always do) (:class:`RedisPresence`).
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Callable, Dict, List, Optional

from ...errors import BrokerUnavailable
from ..base import BrokerEvents
from .link import RedisLink, as_text
from .users import UserRoutes, user_key, user_shard

log = logging.getLogger("sente_lite.redis")

#: Seconds a server's presence entry lives in Redis without a refresh (a SIGKILLed
#: server's users vanish after this); it is refreshed every third of it.
DEFAULT_PRESENCE_TTL_S = 6.0


def user_channel(prefix: str) -> bytes:
    """The pubsub channel of user messages (sends, closes, broadcasts) under ``prefix``."""
    return f"{prefix}:user".encode()


def user_message(body: Dict[str, Any], origin: str) -> str:
    """The text of a user message ``body`` sent by ``origin`` (a server-id: it skips its own)."""
    body["origin"] = origin
    return json.dumps(body, separators=(",", ":"))


class RedisPresence:
    """This server's presence entry, and user messages to and from the other servers: the
    :class:`~sente_lite.brokers.base.PresenceBroker` of a RedisBroker."""

    def __init__(self, prefix: str, server_id: str, link: RedisLink, user_channel: bytes,
                 presence_ttl_s: float = DEFAULT_PRESENCE_TTL_S, sharded: bool = True) -> None:
        self.prefix = prefix
        self.server_id = server_id
        self.presence_ttl_s = presence_ttl_s
        self._link = link
        self._user_channel = user_channel
        self.events: Optional[BrokerEvents] = None
        self._queued_lock = threading.Lock()
        self._queued = False  # a refresh waits on the link's I/O thread
        #: the users whose shard channels this server listens to (None: the user channel)
        self.routes: Optional[UserRoutes] = UserRoutes(prefix, link) if sharded else None
        self._written: Dict[str, int] = {}  # user -> connections its presence hash has for us
        self._rewrite_all = True  # the next refresh rewrites every user's field (expiry)
        self.user_heard = 0  # user messages read from Redis (sends, closes, broadcasts)
        self.user_unserved = 0  # ... a send or close that reached no connection here
        self.user_inbound_bytes = 0  # their pubsub channel names and payloads

    def _presence_key(self, server_id: str) -> str:
        return f"{self.prefix}:presence:{server_id}"

    def _alive_key(self, server_id: str) -> str:
        """Exists while ``server_id`` runs (its presence entry exists only with users)."""
        return f"{self.prefix}:alive:{server_id}"

    def _servers_key(self) -> str:
        return f"{self.prefix}:servers"

    # -- users on other servers ------------------------------------------------------
    def to_user(self, uid: str, json_payload: bytes) -> None:
        """Send one event frame to the connections of ``uid`` on every other server."""
        self._user_message({"k": "send", "uid": uid, "frame": json_payload.decode("utf-8")}, uid)

    def disconnect_user(self, uid: str, code: int, reason: str) -> None:
        """Close the connections of ``uid`` on every other server."""
        self._user_message({"k": "disconnect", "uid": uid, "code": code, "reason": reason}, uid)

    def broadcast(self, json_payload: bytes) -> None:
        """Send one event frame to every connection of every other server."""
        self._user_message({"k": "broadcast", "frame": json_payload.decode("utf-8")}, None)

    def route_user(self, uid: str, ready: Callable[[], None]) -> bool:
        """Have this server hear the messages sent to ``uid`` (its shard channel; a new
        connection's upgrade waits for it). True: it does already (or cannot until the
        link is back), go on; False: ``ready()`` runs once Redis confirmed it (on the
        link's thread). Always True with ``subscription=pattern`` (one user channel)."""
        routes = self.routes
        return True if routes is None else routes.route(uid, ready)

    def _user_message(self, body: Dict[str, Any], uid: Optional[str]) -> None:
        data = user_message(body, self.server_id)
        link = self._link
        if link.down:
            raise BrokerUnavailable(f"the broker (Redis) is unreachable: {link.down_reason}")
        if uid is not None and self.routes is not None:
            shard = user_shard(self.prefix, uid)
            link.submit(lambda: link.publish_user(shard, data, True))
        else:
            link.submit(lambda: link.publish_user(self._user_channel, data))

    def on_user_message(self, channel: bytes, data: bytes) -> None:
        """A user message read from the subscription (link thread)."""
        self.user_heard += 1
        self.user_inbound_bytes += len(channel) + len(data)
        try:
            body = json.loads(data)
        except ValueError:
            log.warning("malformed user message from Redis")
            return
        if body.get("origin") == self.server_id:
            return
        events = self.events
        if events is None:
            return
        kind = body.get("k")
        if kind == "broadcast":
            events.to_all_here(body["frame"].encode("utf-8"))
            return
        if kind == "send":
            reached = events.to_user_here(body["uid"], body["frame"].encode("utf-8"))
        elif kind == "disconnect":
            reached = events.disconnect_user_here(body["uid"], int(body["code"]),
                                                  str(body.get("reason", "")))
        else:
            return
        if not reached:
            self.user_unserved += 1

    # -- this server's entry ---------------------------------------------------------
    def expiry_due(self) -> None:
        """Every third of ``presence_ttl_s``, and after a reconnect: rewrite this server's
        field in every user's presence hash (they expire), not only the changed ones."""
        self._rewrite_all = True
        self.users_changed()

    def users_changed(self) -> None:
        """The local users changed: refresh this server's presence entry soon."""
        with self._queued_lock:
            if self._queued:
                return
            self._queued = True
        self._link.submit(self.refresh)

    def refresh(self) -> None:
        """Write this server's presence entry (link's I/O thread; raises RedisError)."""
        with self._queued_lock:
            self._queued = False
        events = self.events
        link = self._link
        if events is None or link.down:
            return
        counts = events.user_counts()
        key = self._presence_key(self.server_id)
        pipe = link.redis.pipeline(transaction=link.nodes is None)  # a cluster: other slots
        pipe.delete(key)
        if counts:
            pipe.hset(key, mapping=counts)
        pipe.pexpire(key, int(self.presence_ttl_s * 1000))
        pipe.set(self._alive_key(self.server_id), "1", px=int(self.presence_ttl_s * 1000))
        pipe.sadd(self._servers_key(), self.server_id)
        pipe.execute()
        self._write_users(counts)
        if self.routes is not None:
            self.routes.sync(counts)

    def _write_users(self, counts: Dict[str, int]) -> None:
        """This server's connections in each of its users' presence hash (expiring in
        ``presence_ttl_s`` unless rewritten): the changed ones, or every one when due; its
        field dropped from those it left."""
        link = self._link
        ttl_ms = int(self.presence_ttl_s * 1000)
        written = self._written
        full, self._rewrite_all = self._rewrite_all, False
        changed = (list(counts.items()) if full else
                   [(uid, n) for uid, n in counts.items() if written.get(uid) != n])
        gone = [uid for uid in written if uid not in counts]
        if not changed and not gone:
            return
        pipe = link.redis.pipeline(transaction=False)  # a cluster: one slot per user
        for uid, n in changed:
            key = user_key(self.prefix, uid)
            pipe.hset(key, self.server_id, n)
            pipe.pexpire(key, ttl_ms)
        for uid in gone:
            pipe.hdel(user_key(self.prefix, uid), self.server_id)
        pipe.execute()
        self._written = dict(counts)

    def remove(self) -> None:
        """Delete this server's presence entry now (the server stops); Redis errors are ignored."""
        redis = self._link.redis
        try:
            redis.delete(self._presence_key(self.server_id), self._alive_key(self.server_id))
            redis.srem(self._servers_key(), self.server_id)
            self._write_users({})
        except self._link.redis_mod.RedisError:
            pass

    # -- every server's users --------------------------------------------------------
    def nodes(self) -> List[str]:
        """The server-ids of every running server (raises BrokerUnavailable while down)."""
        try:
            return self._servers(alive=True)
        except self._link.redis_mod.RedisError as exc:
            raise BrokerUnavailable(f"the server list needs Redis: {exc}") from None

    def _servers(self, alive: bool = False) -> List[str]:
        """The servers with users (``alive``: every running one); forgets the stopped."""
        redis = self._link.redis
        servers = [as_text(s) for s in redis.smembers(self._servers_key())]
        pipe = redis.pipeline(transaction=False)
        for s in servers:
            pipe.exists(self._presence_key(s))
            pipe.exists(self._alive_key(s))
        flags = pipe.execute()
        users, running = flags[0::2], flags[1::2]
        gone = [s for s, u, r in zip(servers, users, running) if not u and not r]
        if gone:
            redis.srem(self._servers_key(), *gone)
        return [s for s, u, r in zip(servers, users, running) if (r if alive else u)]

    def presence(self, uid: str) -> int:
        """Live connections of ``uid`` on every server, from the user's presence hash
        (a server whose alive key expired counts none: its field is dropped); raises
        BrokerUnavailable while down."""
        try:
            redis = self._link.redis
            key = user_key(self.prefix, uid)
            fields = {as_text(s): int(n) for s, n in redis.hgetall(key).items()}
            if not fields:
                return 0
            pipe = redis.pipeline(transaction=False)
            for s in fields:
                pipe.exists(self._alive_key(s))
            alive = dict(zip(fields, pipe.execute()))
            dead = [s for s, up in alive.items() if not up]
            if dead:
                redis.hdel(key, *dead)
            return sum(n for s, n in fields.items() if alive[s])
        except self._link.redis_mod.RedisError as exc:
            raise BrokerUnavailable(f"presence needs Redis: {exc}") from None

    def user_count(self) -> int:
        """Distinct users connected to any server (raises BrokerUnavailable while down)."""
        try:
            servers = self._servers()
            pipe = self._link.redis.pipeline(transaction=False)
            for s in servers:
                pipe.hkeys(self._presence_key(s))
            return len({u for keys in pipe.execute() for u in keys})
        except self._link.redis_mod.RedisError as exc:
            raise BrokerUnavailable(f"presence needs Redis: {exc}") from None

"""Users across the servers of a :class:`~sente_lite.brokers.redis.broker.RedisBroker`.

Each server keeps a presence entry in Redis (a hash uid -> its connections
there, expiring unless refreshed) and is listed in a set of servers; sends and
closes aimed at a user's connections on other servers go through one pubsub
channel, which every server's link thread reads (:class:`RedisPresence`).
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Dict, List, Optional

from ...errors import BrokerUnavailable
from ..base import BrokerEvents
from .link import RedisLink, as_text

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
                 presence_ttl_s: float = DEFAULT_PRESENCE_TTL_S) -> None:
        self.prefix = prefix
        self.server_id = server_id
        self.presence_ttl_s = presence_ttl_s
        self._link = link
        self._user_channel = user_channel
        self.events: Optional[BrokerEvents] = None
        self._queued_lock = threading.Lock()
        self._queued = False  # a refresh waits on the link's I/O thread

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
        self._user_message({"k": "send", "uid": uid, "frame": json_payload.decode("utf-8")})

    def disconnect_user(self, uid: str, code: int, reason: str) -> None:
        """Close the connections of ``uid`` on every other server."""
        self._user_message({"k": "disconnect", "uid": uid, "code": code, "reason": reason})

    def broadcast(self, json_payload: bytes) -> None:
        """Send one event frame to every connection of every other server."""
        self._user_message({"k": "broadcast", "frame": json_payload.decode("utf-8")})

    def _user_message(self, body: Dict[str, Any]) -> None:
        data = user_message(body, self.server_id)
        link = self._link
        if link.down:
            raise BrokerUnavailable(f"the broker (Redis) is unreachable: {link.down_reason}")
        link.submit(lambda: link.publish_user(self._user_channel, data))

    def on_user_message(self, data: bytes) -> None:
        """A user message read from the subscription (link thread)."""
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
        if body.get("k") == "send":
            events.to_user_here(body["uid"], body["frame"].encode("utf-8"))
        elif body.get("k") == "broadcast":
            events.to_all_here(body["frame"].encode("utf-8"))
        elif body.get("k") == "disconnect":
            events.disconnect_user_here(body["uid"], int(body["code"]),
                                        str(body.get("reason", "")))

    # -- this server's entry ---------------------------------------------------------
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

    def remove(self) -> None:
        """Delete this server's presence entry now (the server stops); Redis errors are ignored."""
        redis = self._link.redis
        try:
            redis.delete(self._presence_key(self.server_id), self._alive_key(self.server_id))
            redis.srem(self._servers_key(), self.server_id)
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
        """Live connections of ``uid`` on every server (raises BrokerUnavailable while down)."""
        try:
            servers = self._servers()
            pipe = self._link.redis.pipeline(transaction=False)
            for s in servers:
                pipe.hget(self._presence_key(s), uid)
            return sum(int(v) for v in pipe.execute() if v is not None)
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

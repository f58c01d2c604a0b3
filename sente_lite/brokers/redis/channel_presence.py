"""Channel presence on Redis: who is subscribed to a channel, on every server, and the
join/leave events of its subscribers (:class:`RedisChannelPresence`).

Each channel with presence has two keys beside its others, in its ``{...}`` hash tag:
``<chan>:pz``, a ZSET of conn-ids scored by when each expires (Redis time, ms), and
``<chan>:ph``, a HASH conn-id -> the member as JSON. Every server writes its own members
again every third of ``presence_ttl_s`` (the link's refresh), so a server that dies
(SIGKILL) leaves members that expire within ``presence_ttl_s``: readers drop expired
scores (:data:`PRESENCE_READ_SCRIPT`) and both keys expire with them.

Join and leave events go the way the channel's messages go (its ``delivery``: an
``SPUBLISH`` on its shard channel, or a ``PUBLISH``; from the link's I/O thread, after the
publishes queued before them), marked with :data:`EVENT_MARK` so the feed tells them from messages.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Dict, List

from ...errors import BrokerUnavailable
from .link import RedisLink
from .space import ChannelSpace

log = logging.getLogger("sente_lite.redis")

#: First bytes of a join/leave event on a channel's pubsub channel (a message starts
#: with its offset, a digit).
EVENT_MARK = b"e "
#: Members written per script call when a server refreshes its members of one channel.
REFRESH_CHUNK = 500

# KEYS: 1 the ZSET, 2 the HASH; ARGV: 1 ttl ms, then conn-id, member JSON pairs.
# Returns how many were not present (absent or expired).
PRESENCE_ADD_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local new = 0
for i = 2, #ARGV, 2 do
  local old = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if not old or tonumber(old) <= now then new = new + 1 end
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[i])
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return new
"""

# KEYS: 1 the ZSET, 2 the HASH. Drops the expired; returns the live members' JSON texts
# joined by commas (one bulk reply: a client parses one string, not one per member).
PRESENCE_READ_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, id in ipairs(expired) do redis.call('HDEL', KEYS[2], id) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return table.concat(redis.call('HVALS', KEYS[2]), ',')
"""

# KEYS: 1 the ZSET, 2 the HASH; ARGV: 1 conn-id. Returns 1 when it was there (live).
PRESENCE_REMOVE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local old = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if old and tonumber(old) > now then return 1 end
return 0
"""

SCRIPTS = (PRESENCE_ADD_SCRIPT, PRESENCE_READ_SCRIPT, PRESENCE_REMOVE_SCRIPT)


class RedisChannelPresence:
    """The channel presence calls of a RedisBroker (see the module); its own members are
    kept here too, to write them again (:meth:`refresh`)."""

    def __init__(self, space: ChannelSpace, link: RedisLink, presence_ttl_s: float) -> None:
        self._space = space
        self._link = link
        self._ttl_ms = int(presence_ttl_s * 1000)
        self._lock = threading.Lock()
        #: channel -> conn-id -> member JSON, of this server's connections
        self._mine: Dict[str, Dict[str, str]] = {}

    def _keys(self, channel: str) -> List[str]:
        return [self._space.presence_key(channel, "pz"), self._space.presence_key(channel, "ph")]

    def _run(self, script: str, channel: str, *args: Any) -> Any:
        link = self._link
        if link.down:
            raise BrokerUnavailable(f"channel presence needs Redis: {link.down_reason}")
        try:
            return link.evalsha(script, 2, *self._keys(channel), *args)
        except link.redis_mod.RedisError as exc:
            raise BrokerUnavailable(f"channel presence needs Redis: {exc}") from None

    def add(self, channel: str, member: Dict[str, Any]) -> bool:
        """Record ``member`` of this server in ``channel``; True when new."""
        text = json.dumps(member, separators=(",", ":"))
        conn_id = member["conn-id"]
        with self._lock:
            self._mine.setdefault(channel, {})[conn_id] = text
        return bool(self._run(PRESENCE_ADD_SCRIPT, channel, self._ttl_ms, conn_id, text))

    def remove(self, channel: str, conn_id: str) -> bool:
        """Forget ``conn_id`` in ``channel``; True when it was there."""
        with self._lock:
            mine = self._mine.get(channel)
            if mine is not None:
                mine.pop(conn_id, None)
                if not mine:
                    del self._mine[channel]
        return bool(self._run(PRESENCE_REMOVE_SCRIPT, channel, conn_id))

    def members(self, channel: str) -> List[Dict[str, Any]]:
        """The live members of ``channel`` on every server."""
        return json.loads(self.members_json(channel))

    def members_json(self, channel: str) -> bytes:
        """The live members of ``channel`` as a JSON array (their texts joined)."""
        return b"[" + self._run(PRESENCE_READ_SCRIPT, channel) + b"]"  # joined by the script

    def stats(self, channel: str) -> Dict[str, int]:
        members = self.members(channel)
        return {"members": len(members), "users": len({m.get("uid") for m in members})}

    def refresh(self) -> None:
        """Write this server's members again (the link's I/O thread): their expiry moves on."""
        with self._lock:
            mine = {channel: list(members.items()) for channel, members in self._mine.items()}
        for channel, pairs in mine.items():
            for i in range(0, len(pairs), REFRESH_CHUNK):
                flat = [x for pair in pairs[i:i + REFRESH_CHUNK] for x in pair]
                self._link.evalsha(PRESENCE_ADD_SCRIPT, 2, *self._keys(channel), self._ttl_ms, *flat)

    def publish_event(self, channel: str, text: bytes) -> None:
        """Send a join/leave event the way ``channel``'s messages go (never waits)."""
        link = self._link
        if link.down:
            log.info("a join/leave of %r is lost: Redis is unreachable", channel)
            return
        data = EVENT_MARK + text
        command, target = self._space.delivery(channel)  # the one path of its messages
        link.submit(lambda: link.redis.execute_command(command, target, data))

    def local_members(self) -> int:
        """Members of this server's connections, over every channel."""
        with self._lock:
            return sum(len(m) for m in self._mine.values())


__all__ = ["RedisChannelPresence", "EVENT_MARK", "SCRIPTS", "PRESENCE_ADD_SCRIPT",
           "PRESENCE_READ_SCRIPT", "PRESENCE_REMOVE_SCRIPT"]

"""Publishes of a :class:`~sente_lite.redis_broker.RedisBroker`: one Lua script each.

:data:`PUBLISH_SCRIPT` takes the channel's next offset (``HINCRBY``), appends the
message to the channel's stream (``XADD`` with ``MAXLEN history_size``, the
stream id is the offset), remembers the publish id (``SET`` with expiry) and
``PUBLISH``es it, all atomically. Publishes queued on the link's I/O thread run
in one pipeline, in arrival order (:class:`RedisPublisher`).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, List, Optional

from .channels import Published
from .counters import Counter, Counters
from .errors import BrokerUnavailable
from .redis_channels import ChannelSpace
from .redis_link import BatchedOp, RedisLink, as_text

log = logging.getLogger("sente_lite.redis")

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


class _Pub(BatchedOp):
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


class RedisPublisher:
    """Queues publishes for the link's I/O thread and answers each (see :meth:`publish_text`)."""

    def __init__(self, space: ChannelSpace, link: RedisLink, counters: Counters) -> None:
        self._space = space
        self._link = link
        self._counters = counters
        self.unavailable_publishes = 0

    def publish_text(self, name: str, head: str, exclude: Optional[str],
                     done: Optional[Callable[[Any], None]], wait: bool = True,
                     publish_id: Optional[str] = None) -> Optional[Published]:
        """See :meth:`RedisBroker.publish_text`."""
        finished = threading.Event() if wait else None
        entry = _Pub(name, head.encode("utf-8"), exclude, done, publish_id, finished)
        if self._link.down or self._link.stopping:
            self.finish(entry, self._unavailable())
        else:
            self._link.submit(entry)
        if finished is None:
            return None
        finished.wait()
        if isinstance(entry.result, BaseException):
            raise entry.result
        return entry.result

    def _unavailable(self) -> BrokerUnavailable:
        self.unavailable_publishes += 1
        return BrokerUnavailable(
            f"the channel broker (Redis) is unreachable: {self._link.down_reason}")

    def finish(self, entry: _Pub, result: Any) -> None:
        """Answer ``entry`` with ``result`` (a :class:`Published` or an exception)."""
        entry.result = result
        if entry.done is not None:
            try:
                entry.done(result)
            except Exception:
                log.exception("publish callback for %r raised", entry.channel)
        if entry.finished is not None:
            entry.finished.set()

    def run_publishes(self, batch: List[_Pub]) -> None:
        """Run ``batch`` in one pipeline, in order; answer each."""
        link = self._link
        if link.down:
            for entry in batch:
                self.finish(entry, self._unavailable())
            return
        space = self._space
        pipe = link.redis.pipeline(transaction=False)
        history = str(space.history_size)
        dedup_ms = str(int(space.publish_dedup_s * 1000))
        channel_ms = str(int(space.channel_ttl_s * 1000))
        sha = link.sha(PUBLISH_SCRIPT)
        for e in batch:
            id_key = space.id_key(e.channel, e.publish_id) if e.publish_id is not None else ""
            pipe.execute_command("EVALSHA", sha, 3, space.meta_key(e.channel),
                                 space.log_key(e.channel), id_key, e.head, space.new_epoch(),
                                 history, dedup_ms, channel_ms, space.msg_channel(e.channel),
                                 e.exclude or "-")
        redis = link.redis_mod
        try:
            results = pipe.execute(raise_on_error=False)
        except redis.RedisError as exc:
            link.lost(exc)
            for entry in batch:
                self.finish(entry, self._unavailable())
            return
        retry: List[_Pub] = []
        for entry, result in zip(batch, results):
            if isinstance(result, redis.exceptions.NoScriptError):
                retry.append(entry)  # Redis restarted: the script never ran
            elif isinstance(result, Exception):
                log.error("publish on %r failed in Redis: %s", entry.channel, result)
                self.finish(entry, result)
            else:
                self.finish(entry, self._published(entry.channel, result))
        if retry:
            try:
                link.load_scripts()
            except redis.RedisError as exc:
                link.lost(exc)
                for entry in retry:
                    self.finish(entry, self._unavailable())
                return
            self.run_publishes(retry)

    def _published(self, name: str, result: List[Any]) -> Published:
        duplicate, offset, epoch, receivers = result
        if duplicate:
            self._counters.add(Counter.DUPLICATE_PUBLISHES)
        return Published(name, int(offset), as_text(epoch), int(receivers), bool(duplicate))

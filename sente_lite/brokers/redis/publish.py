"""Publishes of a :class:`~sente_lite.brokers.redis.broker.RedisBroker`: one Lua script each.

:data:`PUBLISH_SCRIPT` takes the channel's next offset (``HINCRBY``), appends the
message to the channel's stream (``XADD`` with ``MAXLEN history_size``, the
stream id is the offset), remembers the publish id (``SET`` with expiry) and
``PUBLISH``es it, all atomically. Publishes queued on the link's I/O thread run
in one pipeline, in arrival order (:class:`RedisPublisher`).

The script only supplies the offset and the epoch: the stream and the message on
the subscription carry the text up to the offset
(:func:`~sente_lite.wire.channels.message_head`), and every reader finishes it with
:func:`~sente_lite.wire.channels.message_text`, as every other broker does.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, List, Optional, Tuple

from ...counters import Counter, Counters
from ...errors import BrokerUnavailable, PublishOutcomeUnknown
from ...wire.channels import Published
from .channels import ChannelSpace, command_refused
from .link import BatchedOp, RedisLink, as_text

log = logging.getLogger("sente_lite.redis")

# KEYS: 1 meta hash, 2 stream, 3 publish-id key ("" or absent for none), 4 the publisher's
#       id list, 5 the list of every id (in a cluster: all in the channel's slot, and only
#       keys 1-2 for a publish without an id)
# ARGV: 1 message text up to the offset, 2 epoch if a new one is needed, 3 history size,
#       4 publish-id ms, 5 channel ms, 6 pubsub channel, 7 excluded conn-id ("-": none),
#       8 history ms, 9 ids per publisher, 10 ids in all, 11 PUBLISH or SPUBLISH (ARGV 6 is
#       then the channel's shard channel), 12 traceparent ("-": none)
# Returns {duplicate, offset, epoch, servers reached, ids evicted}. Every command that can
# fail on a key of the wrong type runs before the first write that publishes (a failed
# publish changed nothing but, at most, a new epoch). The stream entry and the pubsub
# message carry the text up to the offset ('h'); readers finish it with offset and epoch.
PUBLISH_SCRIPT = """
local idk = KEYS[3] or ''
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if epoch and idk ~= '' then
  local first = redis.call('GET', idk)
  if first then
    local sep = string.find(first, ' ', 1, true)
    if sep and string.sub(first, 1, sep - 1) == epoch then
      return {1, tonumber(string.sub(first, sep + 1)), epoch, 0, 0}
    end
  end
end
if not epoch then
  epoch = ARGV[2]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
end
local offset = tonumber(redis.call('HGET', KEYS[1], 'offset') or '0') + 1
if ARGV[3] ~= '0' then
  local t = redis.call('TIME')
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], offset .. '-0', 'h', ARGV[1], 'x', ARGV[7],
             'p', ARGV[12], 't', t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000)))
  redis.call('PEXPIRE', KEYS[2], ARGV[8])
end
redis.call('HSET', KEYS[1], 'offset', offset)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
local evicted = 0
if idk ~= '' then
  redis.call('SET', idk, epoch .. ' ' .. offset, 'PX', ARGV[4])
  for i, most in ipairs({ARGV[9], ARGV[10]}) do
    local list = KEYS[3 + i]
    local n = redis.pcall('RPUSH', list, idk)
    if type(n) == 'number' then
      redis.call('PEXPIRE', list, ARGV[4])
      while n > tonumber(most) do
        local old = redis.call('LPOP', list)
        if old ~= idk then evicted = evicted + redis.call('DEL', old) end
        n = n - 1
      end
    end
  end
end
local n = redis.call(ARGV[11], ARGV[6],
                     offset .. ' ' .. epoch .. ' ' .. ARGV[7] .. ' ' .. ARGV[12] .. ' ' .. ARGV[1])
return {0, offset, epoch, n, evicted}
"""


class _Pub(BatchedOp):
    __slots__ = ("channel", "head", "exclude", "done", "publish_id", "publisher", "result",
                 "finished", "traceparent")

    def __init__(self, channel: str, head: bytes, exclude: Optional[str],
                 done: Optional[Callable[[Any], None]], publish_id: Optional[str],
                 publisher: Optional[str], finished: Optional[threading.Event],
                 traceparent: Optional[str] = None) -> None:
        self.traceparent = traceparent
        self.channel = channel
        self.head = head
        self.exclude = exclude
        self.done = done
        self.publish_id = publish_id
        self.publisher = publisher
        self.result: Any = None
        self.finished = finished


class RedisPublisher:
    """Queues publishes for the link's I/O thread and answers each (see :meth:`publish`).

    Answers: a :class:`Published`; :class:`BrokerUnavailable` when the publish was
    never sent (the link was down); :class:`PublishOutcomeUnknown` when the link
    failed while it was in flight (it may have been published);
    :class:`BrokerCommandError` when Redis refused this one publish (not made).
    """

    def __init__(self, space: ChannelSpace, link: RedisLink, counters: Counters,
                 members_here: Callable[[str, Optional[str]], int]) -> None:
        self._space = space
        self._link = link
        self._counters = counters
        #: ``members_here(channel, exclude)``: this server's subscribers the message goes to.
        self._members_here = members_here
        self.unavailable_publishes = 0
        #: Runs a batch on a Redis Cluster (``failover.ReplicatedPublishes.run``: one pipeline
        #: per master, answered once a replica holds it); returns the entries to run again.
        #: None: one pipeline.
        self.replicated: Optional[Callable[[List[_Pub]], List[_Pub]]] = None

    def publish(self, name: str, head: str, exclude: Optional[str],
                done: Optional[Callable[[Any], None]], wait: bool = True,
                publish_id: Optional[str] = None, publisher: Optional[str] = None,
                traceparent: Optional[str] = None) -> Optional[Published]:
        """See :meth:`RedisBroker.publish`."""
        finished = threading.Event() if wait else None
        entry = _Pub(name, head.encode("utf-8"), exclude, done, publish_id, publisher, finished,
                     traceparent)
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

    def unavailable(self) -> BrokerUnavailable:
        """The answer to a publish that was never run (counted)."""
        return self._unavailable()

    def _unavailable(self) -> BrokerUnavailable:
        self.unavailable_publishes += 1
        return BrokerUnavailable(
            f"the channel broker (Redis) is unreachable: {self._link.down_reason}; "
            "not published")

    def _unknown(self, exc: BaseException) -> PublishOutcomeUnknown:
        self._counters.add(Counter.OUTCOME_UNKNOWN_PUBLISHES)
        return PublishOutcomeUnknown(
            f"the link to the channel broker (Redis) failed with the publish in flight "
            f"({type(exc).__name__}: {exc}): it may have been published; resend it with the "
            "same id once the broker is back")

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

    def _command(self, entry: _Pub) -> Tuple[Any, ...]:
        """The EVALSHA arguments of ``entry``."""
        return publish_command(self._space, self._link.sha(PUBLISH_SCRIPT), entry.channel,
                               entry.head, entry.exclude, entry.publish_id, entry.publisher,
                               entry.traceparent)

    def run_publishes(self, batch: List[_Pub]) -> None:
        """Run ``batch`` in one pipeline, in order; answer each."""
        link = self._link
        if link.down:
            for entry in batch:
                self.finish(entry, self._unavailable())  # never sent
            return
        retry = self._run_pipeline(batch) if self.replicated is None else self.replicated(batch)
        if retry:
            try:
                link.load_scripts()
            except link.redis_mod.RedisError as exc:
                if link.is_link_error(exc):
                    link.lost(exc)
                for entry in retry:
                    self.finish(entry, self._unavailable())  # the script never ran
                return
            self.run_publishes(retry)

    def _run_pipeline(self, batch: List[_Pub]) -> List[_Pub]:
        """Run ``batch`` in one pipeline; answer each. Returns those to run again."""
        link = self._link
        pipe = link.redis.pipeline(transaction=False)
        for e in batch:
            pipe.execute_command(*self._command(e))
        redis = link.redis_mod
        try:
            results = pipe.execute(raise_on_error=False)
        except redis.RedisError as exc:
            # Sent, or partly: Redis may run them yet (a stalled server reads them when it
            # resumes), so they are not "unavailable" but of unknown outcome.
            if link.is_link_error(exc):
                link.lost(exc)
            else:
                log.error("publish pipeline failed: %s", exc)
            for entry in batch:
                self.finish(entry, self._unknown(exc))
            return []
        retry: List[_Pub] = []
        for entry, result in zip(batch, results):
            self.answer(entry, result, retry)
        return retry

    def answer(self, entry: _Pub, result: Any, retry: List[_Pub]) -> None:
        """Answer ``entry`` with what its script returned (or put it in ``retry``)."""
        link = self._link
        if isinstance(result, link.redis_mod.exceptions.NoScriptError):
            retry.append(entry)  # Redis restarted: the script never ran
        elif isinstance(result, Exception) and link.is_link_error(result):
            link.lost(result)  # READONLY, MOVED, CLUSTERDOWN: refused before any write
            self.finish(entry, self._unavailable())
        elif isinstance(result, Exception):  # Redis refused it (e.g. WRONGTYPE): not made
            self.finish(entry, command_refused(self._counters, entry.channel, "publish on",
                                               result))
        else:
            self.finish(entry, self._published(entry, result))

    def _published(self, entry: _Pub, result: List[Any]) -> Published:
        """The answer to ``entry``: ``delivered`` is this server's subscribers the message
        goes to (through the subscription, in offset order), 0 for a duplicate."""
        published = published_of(entry.channel, result)
        if published.duplicate:
            self._counters.add(Counter.DUPLICATE_PUBLISHES)
        else:
            published = published._replace(
                delivered=self._members_here(entry.channel, entry.exclude))
        if result[4]:
            self._counters.add(Counter.PUBLISH_IDS_EVICTED, int(result[4]))
        return published


def publish_command(space: ChannelSpace, sha: Optional[str], name: str, head: bytes,
                    exclude: Optional[str], publish_id: Optional[str],
                    publisher: Optional[str], traceparent: Optional[str] = None,
                    epoch: Optional[str] = None) -> Tuple[Any, ...]:
    """The ``EVALSHA`` arguments of :data:`PUBLISH_SCRIPT` (``sha``) publishing the message
    whose text up to its offset is ``head`` on channel ``name`` in ``space``; ``epoch``
    names the channel's epoch should the publish start one (default: a new one of ``space``).
    The layout (``EVALSHA sha 5``, keys 1-5, then ARGV 1-12) is what the script reads."""
    if publish_id is None:
        ids: Tuple[str, ...] = () if space.cluster else ("", "", "")
    else:
        ids = (space.id_key(name, publish_id, publisher),
               space.publisher_ids_key(publisher, name), space.all_ids_key(name))
    size, ttl_s = space.history_of(name)
    verb, delivery = space.delivery(name)
    return ("EVALSHA", sha, 2 + len(ids), space.meta_key(name), space.log_key(name), *ids, head,
            space.new_epoch() if epoch is None else epoch, str(size),
            str(int(space.publish_dedup_s * 1000)),
            str(int(space.channel_ttl_s * 1000)), delivery, exclude or "-",
            str(int(ttl_s * 1000)), str(space.publish_ids_per_publisher),
            str(space.publish_ids_max), verb, traceparent or "-")


def published_of(name: str, result: List[Any]) -> Published:
    """The :class:`Published` of one :data:`PUBLISH_SCRIPT` answer on channel ``name``
    (``delivered``: the servers Redis handed it to; the broker answers with its own
    subscribers instead, and a :class:`~sente_lite.Publisher` has none: 0)."""
    duplicate, offset, epoch, receivers, _evicted = result
    return Published(name, int(offset), as_text(epoch), int(receivers), bool(duplicate))

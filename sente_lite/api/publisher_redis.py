"""``Publisher("redis://...")``: one Redis connection, each publish one ``EVALSHA`` of the
broker's publish script (:data:`~sente_lite.brokers.redis.publish.PUBLISH_SCRIPT`).

A blocking publish is one round trip. ``publish(..., wait=False)`` queues the publish and
returns a :class:`concurrent.futures.Future`; a flusher thread owned by the publisher sends
what is queued as one pipeline (at most :data:`PIPELINE_MAX` per round trip), in the order
of the calls, while the caller goes on. At most ``max_unacked_publishes`` queued publishes
await their answer; one more waits up to ``publish_block_s`` for room, then raises
:class:`~sente_lite.errors.SendQueueFull`. A blocking call made while publishes are queued
runs after them (it sends them itself), so one publisher's publishes keep their order.

Commands are written in RESP by this module (the keys and constant arguments of each
channel are encoded once) and answers read by redis-py's connection (its hiredis parser
when ``hiredis`` is installed). Redis-py never resends: a publish whose answer was lost is
reported :class:`~sente_lite.errors.PublishOutcomeUnknown`, never sent twice behind the
caller's back.

Answers, as a server's publish (:class:`~sente_lite.brokers.redis.publish.RedisPublisher`):
a :class:`~sente_lite.wire.channels.Published`; :class:`~sente_lite.errors.BrokerUnavailable`
when it was not sent (Redis unreachable, or a publish queued before it failed on the
link: those behind a failure are not sent, so resending them keeps their order);
:class:`~sente_lite.errors.PublishOutcomeUnknown` when the link failed with it in flight;
:class:`~sente_lite.errors.BrokerCommandError` when Redis refused this one publish.
"""

from __future__ import annotations

import collections
import hashlib
import threading
import time
from concurrent.futures import Future
from typing import Any, Deque, Dict, List, Optional, Sequence

from ..brokers.redis.channels import ChannelSpace
from ..brokers.redis.link import as_text, import_redis
from ..brokers.redis.presence import user_message
from ..brokers.redis.users import user_shard
from ..brokers.redis.publish import PUBLISH_SCRIPT, publish_command, published_of
from ..errors import (BrokerCommandError, BrokerUnavailable, ClientClosed, PublishOutcomeUnknown,
                      SendQueueFull)
from ..wire import protocol as p
from ..wire.channels import Published, message_head

#: Publishes sent in one pipeline (one round trip) at most by the flusher.
PIPELINE_MAX = 1000
#: Default ``max_unacked_publishes``: ``wait=False`` publishes queued or in flight at most.
DEFAULT_MAX_UNACKED_PUBLISHES = 10_000
#: Default ``publish_block_s``: how long ``publish(wait=False)`` waits for room.
DEFAULT_PUBLISH_BLOCK_S = 5.0
#: Channels whose encoded keys are kept (the cache is emptied when it holds more).
CHANNEL_CACHE_MAX = 4096
#: The name of the flusher thread.
FLUSHER_THREAD = "sente-lite-publisher-flush"

_UNSET: Any = object()     # an entry not answered yet
_CANCELLED: Any = object()  # an entry whose future was cancelled before it was sent


def _bulk(raw: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(raw), raw)


def _arg(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return (value if isinstance(value, str) else str(value)).encode("utf-8")


class _Entry:
    __slots__ = ("name", "body", "future", "result")

    def __init__(self, name: str, body: bytes, future: Optional[Future]) -> None:
        self.name = name
        self.body = body
        self.future = future
        self.result: Any = _UNSET


class _Chan:
    """A channel's command, encoded once: the text before the publish ids, the channel's
    JSON and the text after the epoch (``EVALSHA`` ... as :func:`publish_command` lays it)."""

    __slots__ = ("json", "before_ids", "after_epoch")

    def __init__(self, json_text: str, before_ids: bytes, after_epoch: bytes) -> None:
        self.json = json_text
        self.before_ids = before_ids
        self.after_epoch = after_epoch


#: Where :func:`publish_command` puts each argument: EVALSHA sha numkeys meta log (0-4),
#: the 3 publish-id keys (5-7), the head (8), the epoch (9), the rest (10-).
_IDS, _HEAD, _EPOCH, _REST = 5, 8, 9, 10
#: The command's last argument when a publish carries no traceparent.
_NO_TRACE = _bulk(b"-")


class _ScriptRunner:
    """One connection to Redis running the publish script: connecting, loading the script,
    running commands, and what a failure means (not sent, outcome unknown, refused)."""

    def _disconnect(self) -> None:
        self._connected = False
        self._conn.disconnect()

    def _ensure_connected(self) -> None:
        """Connect (and load the script) if needed; a connection the server closed is
        replaced before anything is written on it. Raises BrokerUnavailable or
        BrokerCommandError: nothing was sent."""
        conn = self._conn
        if self._connected:
            try:
                stale = conn.can_read(0)  # nothing is due: readable means closed (or garbage)
            except self._link_errors:
                stale = True
            if not stale:
                return
            self._disconnect()
        try:
            conn.connect()
            conn.send_command("SCRIPT", "LOAD", PUBLISH_SCRIPT, check_health=False)
            sha = as_text(conn.read_response())
        except self._errors.ResponseError as exc:  # e.g. NOPERM: this user may not run scripts
            self._disconnect()
            raise self._refused(exc, "load the publish script") from exc
        except self._link_errors as exc:
            self._disconnect()
            raise BrokerUnavailable(f"the channel broker (Redis) is unreachable "
                                    f"({type(exc).__name__}: {exc}); not published") from exc
        if sha != self._sha:  # pragma: no cover - Redis names a script by its SHA1
            self._disconnect()
            raise BrokerCommandError(f"Redis named the publish script {sha}, not {self._sha}")
        self._connected = True

    def _run(self, names: Sequence[str], bodies: Sequence[bytes], again: bool = True) -> List[Any]:
        """Send ``bodies`` in one pipeline; a Published or an exception for each, in order."""
        try:
            self._ensure_connected()
        except (BrokerUnavailable, BrokerCommandError) as exc:
            return [_copy(exc) for _ in names]
        conn = self._conn
        errors = self._errors
        try:
            conn.send_packed_command([bodies[0] if len(bodies) == 1 else b"".join(bodies)],
                                     check_health=False)
        except self._link_errors as exc:
            self._disconnect()
            return [self._unknown(exc) for _ in names]
        results: List[Any] = []
        no_script: List[int] = []
        for i, name in enumerate(names):
            try:
                results.append(published_of(name, conn.read_response())._replace(delivered=0))
            except errors.NoScriptError:
                no_script.append(i)  # Redis restarted or flushed its scripts: it never ran
                results.append(None)
            except self._replica_errors as exc:  # a replica, or no primary: refused, not made
                results.append(BrokerUnavailable(f"the channel broker (Redis) refused it "
                                                 f"({type(exc).__name__}: {exc}); not published"))
            except errors.ResponseError as exc:  # refused (e.g. WRONGTYPE): not made
                results.append(self._refused(exc, "publish on"))
            except (errors.RedisError,) + self._link_errors as exc:
                self._disconnect()
                results.extend(self._unknown(exc) for _ in names[i:])
                return results
        if any(isinstance(r, BrokerUnavailable) for r in results):
            self._disconnect()  # the replica case: connect again next time
        if no_script:
            if again:
                self._disconnect()  # the next connection loads the script
                retried = self._run([names[i] for i in no_script], [bodies[i] for i in no_script],
                                    again=False)
            else:
                retried = [BrokerCommandError("the publish script vanished from Redis twice "
                                              "(NOSCRIPT); not published") for _ in no_script]
            for i, result in zip(no_script, retried):
                results[i] = result
        return results

    @staticmethod
    def _unknown(exc: BaseException, what: str = "it") -> PublishOutcomeUnknown:
        return PublishOutcomeUnknown(
            f"the link to the channel broker (Redis) failed with {what} in flight "
            f"({type(exc).__name__}: {exc}): it may have been published; resend it with the "
            "same idempotency_key once the broker is back")

    @staticmethod
    def _refused(exc: BaseException, what: str) -> BrokerCommandError:
        return BrokerCommandError(f"the channel broker (Redis) refused to {what} this channel "
                                  f"({type(exc).__name__}: {exc}); not done")


class RedisSender(_ScriptRunner):
    """The Redis side of a :class:`~sente_lite.api.publisher.Publisher` (see the module)."""

    def __init__(self, url: str, timeout: float, space: ChannelSpace, publisher: Optional[str],
                 user_channel: bytes, server_id: str, max_unacked_publishes: int,
                 publish_block_s: float) -> None:
        if isinstance(max_unacked_publishes, bool) or not isinstance(max_unacked_publishes, int) \
                or max_unacked_publishes < 1:
            raise ValueError(f"max_unacked_publishes must be an int >= 1, "
                             f"got {max_unacked_publishes!r}")
        if not publish_block_s >= 0:
            raise ValueError(f"publish_block_s must be >= 0, got {publish_block_s!r}")
        redis = import_redis()
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self._errors = redis.exceptions
        self._link_errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                             OSError)
        self._replica_errors = tuple(getattr(redis.exceptions, n) for n in
                                     ("ReadOnlyError", "MasterDownError")
                                     if hasattr(redis.exceptions, n))
        # No retries inside redis-py (see the module); no health-check PING before commands.
        self._pool = redis.ConnectionPool.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0), health_check_interval=0)
        self._conn = self._pool.make_connection()
        self._connected = False
        self._space = space
        self._publisher = publisher
        self._user_channel = user_channel
        self._server_id = server_id
        self._sha = hashlib.sha1(PUBLISH_SCRIPT.encode("utf-8")).hexdigest()
        self._chans: Dict[str, _Chan] = {}
        self._no_ids = b"".join(_bulk(b"") for _ in range(_HEAD - _IDS))
        self._ids_tail = _bulk(_arg(space.publisher_ids_key(publisher))) + \
            _bulk(_arg(space.all_ids_key()))
        self.max_unacked_publishes = max_unacked_publishes
        self.publish_block_s = float(publish_block_s)
        self._io = threading.Lock()    # one round trip at a time, queued publishes first
        self._lock = threading.Lock()  # the queue and the counts below
        self._work = threading.Condition(self._lock)  # the flusher waits for publishes
        self._room = threading.Condition(self._lock)  # callers wait for room
        self._queue: Deque[_Entry] = collections.deque()
        self._unacked = 0
        self._thread: Optional[threading.Thread] = None
        self._idle = False  # the flusher waits for work
        self._closed = False

    # -- building commands (the caller's thread) ----------------------------------------
    def _chan(self, name: str) -> _Chan:
        chan = self._chans.get(name)
        if chan is None:
            args = [_bulk(_arg(a)) for a in
                    publish_command(self._space, self._sha, name, b"", None, None,
                                    self._publisher, epoch="")]
            chan = _Chan(p.dumps(name), b"*%d\r\n" % len(args) + b"".join(args[:_IDS]),
                         b"".join(args[_REST:]))
            if len(self._chans) >= CHANNEL_CACHE_MAX:
                self._chans.clear()
            self._chans[name] = chan
        return chan

    def command(self, name: str, data: Any, key: Optional[str], traceparent: Optional[str]) -> bytes:
        """The RESP text of publishing ``data`` on ``name``; raises ValueError/EncodeError."""
        if key is not None and not (isinstance(key, str) and 0 < len(key) <= p.MAX_PUBLISH_ID_CHARS):
            raise ValueError(f"idempotency_key must be a string of 1-{p.MAX_PUBLISH_ID_CHARS} "
                             "characters")
        chan = self._chan(name)
        head = message_head(chan.json, p.encode_channel_data(data), "null", traceparent)
        ids = self._no_ids if key is None else \
            _bulk(_arg(self._space.id_key(name, key, self._publisher))) + self._ids_tail
        tail = chan.after_epoch if traceparent is None else (  # the last argument: "-" or it
            chan.after_epoch[:-len(_NO_TRACE)] + _bulk(traceparent.encode("utf-8")))
        return b"".join((chan.before_ids, ids, _bulk(head.encode("utf-8")),
                         _bulk(self._space.new_epoch().encode("utf-8")), tail))

    # -- the calls -----------------------------------------------------------------------
    def publish(self, name: str, body: bytes) -> Published:
        """Send one publish and wait for its answer (after every queued one)."""
        result = self._call([name], [body])[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def publish_many(self, names: Sequence[str], bodies: Sequence[bytes]) -> List[Published]:
        """Send these publishes in one pipeline, in order; raise the first failure."""
        results = self._call(names, bodies)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results

    def submit(self, name: str, body: bytes) -> "Future[Published]":
        """Queue a publish for the flusher; its future (see the module)."""
        future: Future = Future()
        entry = _Entry(name, body, future)
        with self._lock:
            if self._closed:
                raise ClientClosed("the Publisher is closed: publish(wait=False) needs an open one")
            if self._unacked >= self.max_unacked_publishes:
                self._wait_for_room()
            self._queue.append(entry)
            self._unacked += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._flush_loop, name=FLUSHER_THREAD,
                                                daemon=True)
                self._thread.start()
            elif self._idle:
                self._work.notify()
        return future

    def _wait_for_room(self) -> None:
        """Wait (holding ``_lock``) until fewer than ``max_unacked_publishes`` await."""
        most = self.max_unacked_publishes
        block_s = self.publish_block_s
        if threading.current_thread() is self._thread:
            block_s = 0.0  # a future's callback on the flusher: only the flusher makes room
        deadline = time.monotonic() + block_s
        while self._unacked >= most:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SendQueueFull(
                    f"{most} publishes made with wait=False await their answer "
                    f"(max_unacked_publishes) and none was answered within {block_s:g} s "
                    "(publish_block_s): Redis is slow or unreachable; not published")
            self._room.wait(remaining)
            if self._closed:
                raise ClientClosed("the Publisher was closed while this publish waited for room")

    def flush(self) -> None:
        """Send every publish queued so far and wait for their answers."""
        with self._io:
            last = self._queue[-1] if self._queue else None
            done: List[_Entry] = []
            while last is not None and last.result is _UNSET:
                done += self._run_batch()
        self._answer(done)

    def send_to_user(self, body: dict) -> None:
        """Send a user message (``uid`` in ``body``: to that user's shard channel with
        sharded subscription; else, and a broadcast, to the user channel)."""
        message = user_message(body, self._server_id)
        command, channel = "PUBLISH", self._user_channel
        uid = body.get("uid")
        if uid is not None and self._space.sharded:
            command, channel = "SPUBLISH", user_shard(self._space.prefix, uid)
        self.flush()  # after the publishes queued before it
        with self._io:
            self._ensure_connected()
            try:
                self._conn.send_command(command, channel, message, check_health=False)
                self._conn.read_response()
            except self._errors.ResponseError as exc:
                raise self._refused(exc, "send on the user channel") from exc
            except self._link_errors as exc:
                self._disconnect()
                raise self._unknown(exc, "the message") from exc

    def close(self) -> None:
        """Send what is queued, stop the flusher, close the connection (idempotent)."""
        with self._lock:
            self._closed = True
            self._work.notify()
            self._room.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()  # it ends once the queue is empty
        with self._io:
            self._disconnect()
        self._pool.disconnect()

    # -- the flusher -----------------------------------------------------------------------
    def _flush_loop(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._idle = True
                    self._work.wait()
                    self._idle = False
                if not self._queue:
                    return  # closed, and everything queued is answered
            with self._io:
                done = self._run_batch()
            self._answer(done)

    def _call(self, names: Sequence[str], bodies: Sequence[bytes]) -> List[Any]:
        with self._io:
            if not self._queue:
                return self._run(names, bodies)
            entries = [_Entry(n, b, None) for n, b in zip(names, bodies)]
            with self._lock:
                self._queue.extend(entries)
                self._unacked += len(entries)
            done: List[_Entry] = []
            while entries[-1].result is _UNSET:
                done += self._run_batch()
        self._answer(done)
        return [e.result for e in entries]

    def _run_batch(self) -> List[_Entry]:
        """Send the oldest queued publishes (at most PIPELINE_MAX) in one pipeline; answer
        each entry (holding ``_io``). After a failure of the link, everything queued is
        answered "not sent". Returns the entries whose futures are to be set."""
        queue = self._queue
        with self._lock:
            taken = [queue.popleft() for _ in range(min(len(queue), PIPELINE_MAX))]
        batch: List[_Entry] = []
        done: List[_Entry] = []
        for entry in taken:
            if entry.future is not None and not entry.future.set_running_or_notify_cancel():
                entry.result = _CANCELLED  # cancelled before it was sent: never sent
            else:
                batch.append(entry)
        if batch:
            results = self._run([e.name for e in batch], [e.body for e in batch])
            failure = None
            for entry, result in zip(batch, results):
                entry.result = result
                if failure is None and isinstance(result, OSError):
                    failure = result
            done = batch
        else:
            failure = None
        with self._lock:
            self._unacked -= len(taken)
            if failure is not None:
                while self._queue:
                    entry = self._queue.popleft()
                    self._unacked -= 1
                    if entry.future is not None and not entry.future.set_running_or_notify_cancel():
                        entry.result = _CANCELLED
                        continue
                    entry.result = BrokerUnavailable(
                        f"not sent: a publish queued before it failed ({failure}); resend it "
                        "(with the same idempotency_key) once the broker is back")
                    done.append(entry)
            self._room.notify_all()
        return done

    @staticmethod
    def _answer(done: List[_Entry]) -> None:
        for entry in done:
            future = entry.future
            if future is None or entry.result is _CANCELLED:
                continue
            if isinstance(entry.result, BaseException):
                future.set_exception(entry.result)
            else:
                future.set_result(entry.result)

    # -- the round trip ----------------------------------------------------------------------
def _copy(exc: BaseException) -> BaseException:
    """A new exception like ``exc`` (one per publish: each carries its own traceback)."""
    new = type(exc)(*exc.args)
    new.__cause__ = exc.__cause__
    return new


__all__ = ["RedisSender", "PIPELINE_MAX", "DEFAULT_MAX_UNACKED_PUBLISHES",
           "DEFAULT_PUBLISH_BLOCK_S"]

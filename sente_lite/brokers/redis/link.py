"""The link of a :class:`~sente_lite.brokers.redis.broker.RedisBroker` to Redis: its two threads.

``sente-lite-redis-io`` runs every command queued with :meth:`RedisLink.submit`
(publishes, :class:`BatchedOp`, are pipelined in arrival order: the calling
thread never waits for Redis unless it asks to); ``sente-lite-redis-link``
reads the subscription, watches the link with pings and reconnects it with
backoff. The link knows nothing of channels or users: what it reads, and what
happens when it goes down or comes back, it hands to its :class:`LinkHooks`.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple, Union

from ...wire import protocol as p
from ...errors import BrokerUnavailable
from .failover import ClusterWatch, cluster_errors
from .shards import Listening, wait_readable

log = logging.getLogger("sente_lite.redis")

#: Seconds to open a connection to Redis, and to wait for any answer, before it counts as down.
DEFAULT_CONNECT_TIMEOUT_S = 1.0
DEFAULT_COMMAND_TIMEOUT_S = 2.0
#: Seconds between pings on the subscription link, and of silence after which it is down.
DEFAULT_LINK_CHECK_S = 0.5
DEFAULT_LINK_TIMEOUT_S = 2.0
#: Reconnect delay: random(0, min(max, base * 2**attempt)) seconds.
DEFAULT_RECONNECT_BASE_S = 0.1
DEFAULT_RECONNECT_MAX_S = 2.0
#: Seconds a broker's ``start`` waits for its first link to Redis (0: not at all), so a
#: server starting to listen can take publishes at once; past it, the server serves
#: degraded (publishes answered ``unavailable``) until the link is up, and says so.
DEFAULT_START_WAIT_S = 2.0
#: Publishes sent to Redis in one pipeline at most.
MAX_PUBLISH_BATCH = 256
#: Live messages read from the subscription and handed to the network thread in one go, at most.
MAX_DISPATCH_BATCH = 512
_CONFIRMATIONS = ("subscribe", "psubscribe", "ssubscribe")
_USER_KINDS = ("smessage", "message")
#: Seconds the link thread blocks reading the subscription before it checks its clock.
_LISTEN_TICK_S = 0.1


def import_redis() -> Any:
    try:
        import redis
    except ImportError:
        raise ImportError("the Redis broker needs redis-py: pip install 'sente-lite[redis]'") from None
    return redis


def as_text(value: Union[bytes, str]) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


class BatchedOp:
    """An op the I/O thread runs in a batch (:meth:`LinkHooks.run_batch`), not by calling it."""

    __slots__ = ()


class LinkHooks:
    """What a :class:`RedisLink` tells its owner (every method on one of the link's threads)."""

    def run_batch(self, batch: List[Any]) -> None:
        """Run these :class:`BatchedOp` (at most ``MAX_PUBLISH_BATCH``, in order)."""

    def fail_batched(self, op: Any, exc: BaseException) -> None:
        """``op`` will never run (the link stops): answer it with ``exc``."""

    def catch_up(self) -> int:
        """The link is back: catch everything up with Redis (raises RedisError to retry
        later). Returns how many channels were caught up."""
        return 0

    def relinked(self) -> None:
        """The link is up again, caught up, and the ops it deferred have run."""

    def link_down(self) -> None:
        """The link just went down."""

    def on_messages(self, batch: List[Tuple[bytes, bytes]]) -> None:
        """(pubsub channel, data) of channel messages read on the subscription, in order."""

    def on_user_message(self, channel: bytes, data: bytes) -> None:
        """A message read on the user channel or on a user's shard channel."""

    def refresh_due(self) -> None:
        """Called every ``refresh_every_s`` while the link is up (and once it is read again)."""

    def command_failed(self, exc: BaseException) -> None:
        """Redis refused a command of a queued op (not a link failure): that op is dropped."""


class RedisLink(Listening):
    """The commands connection, the subscription, their threads and up/down state.

    ``patterns`` and ``channels`` (bytes) are what the link thread subscribes to (and the
    shard channels of :meth:`listen`);
    ``scripts`` are Lua scripts it loads on every (re)link (:meth:`sha`, :meth:`evalsha`).
    """

    def __init__(self, url: str, hooks: LinkHooks, *, patterns: Tuple[bytes, ...] = (),
                 channels: Tuple[bytes, ...] = (), scripts: Tuple[str, ...] = (),
                 connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
                 command_timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S,
                 link_check_s: float = DEFAULT_LINK_CHECK_S,
                 link_timeout_s: float = DEFAULT_LINK_TIMEOUT_S,
                 reconnect_base_s: float = DEFAULT_RECONNECT_BASE_S,
                 reconnect_max_s: float = DEFAULT_RECONNECT_MAX_S,
                 refresh_every_s: float = 1.0,
                 nodes: Optional[List[Tuple[str, int]]] = None,
                 user_prefix: Optional[bytes] = None) -> None:
        redis = import_redis()
        self.redis_mod = redis
        self.url = url
        self.link_check_s = link_check_s
        self.link_timeout_s = link_timeout_s
        self.reconnect_base_s = reconnect_base_s
        self.reconnect_max_s = reconnect_max_s
        self.refresh_every_s = refresh_every_s
        self.command_timeout_s = command_timeout_s
        self.nodes = nodes  # a Redis Cluster's start-up nodes; None: one Redis
        self._errors = (redis.RedisError, OSError) + cluster_errors(redis)
        self._init_listening()
        self._hooks = hooks
        self._patterns = patterns
        self._channels = channels
        #: what the shard channels of users start with (their messages are user messages)
        self._user_prefix = user_prefix
        self._shas: Dict[str, Optional[str]] = {script: None for script in scripts}
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # No retries inside redis-py: a publish whose answer was lost is reported
        # outcome-unknown, never sent twice behind the caller's back.
        options = dict(socket_connect_timeout=connect_timeout_s, socket_timeout=command_timeout_s,
                       retry=Retry(NoBackoff(), 0), health_check_interval=0)
        self._options = options
        #: while down, which masters of the cluster do not answer (``/health``)
        self.watch = ClusterWatch(redis, nodes, options) if nodes else None
        self.redis = self._client(options)
        self._listen_options = dict(options, socket_timeout=None)
        self._ops: Deque[Any] = collections.deque()
        self._ops_cond = threading.Condition()
        self._deferred: List[Callable[[], None]] = []
        self.down = True
        self.down_since = time.monotonic()
        self.down_reason = "not connected yet"
        self.first_up = threading.Event()  # set once the link first came up
        self._stop = threading.Event()
        self._threads: List[threading.Thread] = []
        self._lost_gen = 0  # bumped by every failure: the link thread then reconnects
        self.links = 0  # times the link came up
        self.outages = 0

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        """Start the two threads; the link comes up in the background (``down`` False)."""
        if self._threads:
            return
        for name, target in (("sente-lite-redis-io", self._io_loop),
                             ("sente-lite-redis-link", self._link_loop)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop both threads, answer what is still queued, close the connections."""
        self._stop.set()
        with self._ops_cond:
            self._ops_cond.notify_all()
        for t in self._threads:
            t.join(timeout)
        self._fail_queued(BrokerUnavailable("server stopping"))
        try:
            self.redis.close()
        except Exception:
            pass

    def health(self) -> Dict[str, Any]:
        """``broker``, ``broker-status`` (up/down), and while down why and for how long."""
        out: Dict[str, Any] = {"broker": "redis", "broker-status": "down" if self.down else "up"}
        if self.down:
            out["broker-down-s"] = round(time.monotonic() - self.down_since, 3)
            out["broker-error"] = self.down_reason
            if self.watch is not None:
                out.update(self.watch.health())
        return out

    # -- scripts ---------------------------------------------------------------------
    def load_scripts(self) -> None:
        for script in self._shas:
            self._shas[script] = as_text(self.redis.script_load(script))

    def sha(self, script: str) -> Optional[str]:
        """The SHA1 of ``script`` as loaded (None before the first link)."""
        return self._shas[script]

    def evalsha(self, script: str, *args: Any) -> Any:
        """Run ``script`` by its SHA1; when Redis lost it, load every script and run it."""
        try:
            return self.redis.execute_command("EVALSHA", self._shas[script], *args)
        except self.redis_mod.exceptions.NoScriptError:
            self.load_scripts()
            return self.redis.execute_command("EVAL", script, *args)

    def is_link_error(self, exc: BaseException) -> bool:
        """True when ``exc`` means the link is lost (connection or timeout, or a Redis that
        is no primary); False for an error Redis answered to one command (WRONGTYPE, OOM,
        a script error...), which fails that operation alone."""
        errors = self.redis_mod.exceptions
        # READONLY / MASTERDOWN: this Redis is (now) a replica, or lost its primary: reconnect
        replica = tuple(getattr(errors, name) for name in ("ReadOnlyError", "MasterDownError")
                        if hasattr(errors, name))
        return isinstance(exc, (errors.ConnectionError, errors.TimeoutError, OSError) + replica
                          + cluster_errors(self.redis_mod))

    # -- the broker thread -----------------------------------------------------------
    def submit(self, op: Any) -> None:
        """Queue ``op`` (a callable, or a :class:`BatchedOp`) for the I/O thread."""
        with self._ops_cond:
            self._ops.append(op)
            self._ops_cond.notify()

    def _io_loop(self) -> None:
        ops = self._ops
        run_batch = self._hooks.run_batch
        while True:
            with self._ops_cond:
                while not ops and not self._stop.is_set():
                    self._ops_cond.wait()
                if self._stop.is_set():
                    return
                batch = list(ops)
                ops.clear()
            publishes: List[Any] = []
            for op in batch:
                if isinstance(op, BatchedOp):
                    publishes.append(op)
                    if len(publishes) >= MAX_PUBLISH_BATCH:
                        run_batch(publishes)
                        publishes = []
                    continue
                if publishes:
                    run_batch(publishes)
                    publishes = []
                self._run_op(op)
            if publishes:
                run_batch(publishes)

    def _run_op(self, op: Callable[[], None]) -> None:
        if self.down and op != self._relink:
            self._deferred.append(op)  # subscribes and catch-ups wait for the link
            return
        try:
            op()
        except self._errors as exc:
            if not self.is_link_error(exc):
                self._hooks.command_failed(exc)  # that op fails alone; the link stays up
                return
            self.lost(exc)
            self._deferred.append(op)
        except Exception:
            log.exception("broker operation failed")

    def _fail_queued(self, exc: BaseException) -> None:
        with self._ops_cond:
            batch = list(self._ops)
            self._ops.clear()
        for op in batch:
            if isinstance(op, BatchedOp):
                self._hooks.fail_batched(op, exc)

    def _relink(self) -> None:
        """The subscription is back: catch every channel up, then accept publishes again."""
        self._renew_commands_client()  # connections from before the outage are dead
        self.load_scripts()
        caught_up = self._hooks.catch_up()
        was_down_s = time.monotonic() - self.down_since
        self.down = False
        self.first_up.set()
        self.links += 1
        if self.watch is not None:
            self.watch.clear()
        log.info("Redis link up (%s) after %.2fs; %d channel(s) caught up", self.url, was_down_s,
                 caught_up)
        deferred, self._deferred = self._deferred, []
        for op in deferred:
            self._run_op(op)
        self._hooks.relinked()

    def lost(self, exc: BaseException) -> None:
        """Mark the link down (any thread); the link thread reconnects."""
        self._lost_gen += 1
        if self.down:
            return
        self.down = True
        self.down_since = time.monotonic()
        self.down_reason = f"{type(exc).__name__}: {exc}"
        self.outages += 1
        log.error("Redis link down (%s): %s; publishes fail with %r until it is back",
                  self.url, self.down_reason, p.ERR_UNAVAILABLE)
        self._hooks.link_down()

    # -- the link thread -------------------------------------------------------------
    def _link_loop(self) -> None:
        attempt = 0
        redis = self.redis_mod
        while not self._stop.is_set():
            client = pubsub = None
            try:
                client = self._client(self._listen_options)  # a cluster: reads its nodes
                pubsub = client.pubsub()
                self._subscribe_all(pubsub)  # _relink queued once Redis confirmed them all
                attempt = 0
                self._listen(pubsub)
            except self._errors as exc:
                self.lost(exc)
                if self.watch is not None and not self._stop.is_set():
                    self.watch.probe()  # which masters do not answer, for /health
            finally:
                self._forget_pubsub()
                try:
                    pubsub.close()
                    client.close()
                except Exception:
                    pass
            delay = random.uniform(0.0, min(self.reconnect_max_s,
                                            self.reconnect_base_s * 2 ** min(attempt, 16)))
            attempt += 1
            self._stop.wait(delay)

    def _is_user(self, channel: bytes) -> bool:
        prefix = self._user_prefix
        return channel in self._channels or (prefix is not None and channel.startswith(prefix))

    def _listen(self, pubsub: Any) -> None:
        """Read messages until the link fails (raises) or the broker stops."""
        gen = self._lost_gen
        hooks = self._hooks
        now = time.monotonic()
        last_heard = now
        next_ping = now + self.link_check_s
        next_refresh = now
        get = pubsub.get_sharded_message if self.nodes else pubsub.get_message
        while not self._stop.is_set():
            if self.nodes and wait_readable(pubsub, _LISTEN_TICK_S):
                msg = get(timeout=0)  # every node's socket waited on at once
            else:
                msg = get(timeout=_LISTEN_TICK_S)
            batch: List[Tuple[bytes, bytes]] = []
            while msg is not None:  # every message already read, handed over in one go
                last_heard = time.monotonic()
                kind = msg["type"]
                if kind in _USER_KINDS and self._is_user(msg["channel"]):
                    hooks.on_user_message(msg["channel"], msg["data"])  # sharded in a cluster
                elif kind == "smessage" or kind == "pmessage":
                    batch.append((msg["channel"], msg["data"]))
                    if len(batch) >= MAX_DISPATCH_BATCH:
                        break
                elif kind == "message":
                    hooks.on_user_message(msg["channel"], msg["data"])
                elif kind in _CONFIRMATIONS:
                    self._confirmed(msg["channel"])
                msg = get(timeout=0)
            if batch:
                hooks.on_messages(batch)
            now = time.monotonic()
            if self.nodes:  # redis-py's cluster pubsub watches its nodes itself
                last_heard = now
            elif now >= next_ping:
                pubsub.ping()
                next_ping = now + self.link_check_s
            if self._then and (self.overdue() or 0.0) > self.command_timeout_s:
                raise self.redis_mod.exceptions.TimeoutError(
                    f"SSUBSCRIBE not confirmed in {self.command_timeout_s}s")
            if self._lost_gen != gen:
                raise self.redis_mod.exceptions.ConnectionError("a command failed: reconnecting")
            if now - last_heard > self.link_timeout_s:
                raise self.redis_mod.exceptions.TimeoutError(
                    f"no answer on the subscription for {now - last_heard:.1f}s")
            if now >= next_refresh and not self.down:
                next_refresh = now + self.refresh_every_s
                hooks.refresh_due()

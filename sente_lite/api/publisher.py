"""A write-only publisher for processes that hold no WebSocket (workers, cron jobs, views).

``Publisher("redis://host:port/db")`` publishes through the Redis broker's own publish
script and key layout (:mod:`sente_lite.brokers.redis.publish`), so offsets, history and
publish-id deduplication are exactly a server's; needs only ``pip install
'sente-lite[redis]'``. ``Publisher("http://host:port", api_key=...)`` goes through the
server API (docs/api.md) over one keep-alive connection (stdlib ``http.client``).

Over Redis, ``publish(..., wait=False)`` returns a :class:`concurrent.futures.Future` at
once and a flusher thread pipelines what is queued, in order
(:mod:`sente_lite.api.publisher_redis`).
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import uuid
import weakref
from concurrent.futures import Future
from typing import Any, Iterable, List, Optional, Sequence, Tuple, Union
from urllib.parse import urlsplit

from ..wire import protocol as p
from ..brokers.local import (DEFAULT_HISTORY_SIZE, DEFAULT_HISTORY_TTL_S, DEFAULT_PUBLISH_DEDUP_S,
                             Published)
from ..errors import RemoteError, SenteLiteError
from ..brokers.publish_ids import DEFAULT_PUBLISH_IDS_MAX, DEFAULT_PUBLISH_IDS_PER_PUBLISHER
from ..brokers.redis.broker import DEFAULT_CHANNEL_TTL_S, DEFAULT_PREFIX
from ..brokers.redis.channels import ChannelSpace
from ..brokers.redis.presence import user_channel
from ..brokers.redis.url import SHARDED, parse_broker_url
from .publisher_redis import DEFAULT_MAX_UNACKED_PUBLISHES, DEFAULT_PUBLISH_BLOCK_S, RedisSender


class ApiCallError(RemoteError):
    """The server API refused a call: ``.status`` (HTTP), ``.code`` and ``.message``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(code, message)
        self.status = status


def _check_event(event: str) -> None:
    if not p.is_valid_event_id(event) or p.is_reserved(event):
        raise ValueError(f"invalid event-id {event!r}: use 'namespace/name' with [A-Za-z0-9_.-], "
                         "1-64 chars per part, outside the reserved namespaces")


def _check_channel(channel: str) -> None:
    problem = p.channel_id_problem(channel)
    if problem:
        raise ValueError(problem)


class Publisher:
    """Publish, send to users and broadcast without a WebSocket (see the module).

    The same calls as :class:`~sente_lite.Server`: :meth:`publish` (``idempotency_key``:
    a resend with the same key is delivered once, PROTOCOL 9), :meth:`send_to_user`,
    :meth:`broadcast`. Thread-safe. Use as a context manager or call :meth:`close`.

    Over Redis, ``publish(..., wait=False)`` queues the publish and returns a
    :class:`concurrent.futures.Future` of its :class:`Published`; a flusher thread sends
    what is queued in pipelines, in call order. ``max_unacked_publishes`` bounds the
    ``wait=False`` publishes queued or in flight; one more waits up to
    ``publish_block_s`` for room, then raises :class:`~sente_lite.errors.SendQueueFull`.
    :meth:`flush` waits for every queued publish; :meth:`close` sends them first.

    Over Redis the settings must match the servers' (``prefix``, ``history_size``,
    ``history_ttl_s``, ``publish_dedup_s``, ``publish_ids_*``); ``publisher`` names the
    deduplication namespace of ``idempotency_key`` (default: the servers' own, as for
    ``Server.publish``). Over HTTP it is the API key's; ``ssl_context`` verifies an
    ``https://`` server (default: the system's trusted certificates).
    """

    def __init__(self, url: str, *, api_key: Optional[str] = None, timeout: float = 5.0,
                 prefix: str = DEFAULT_PREFIX, history_size: int = DEFAULT_HISTORY_SIZE,
                 history_ttl_s: float = DEFAULT_HISTORY_TTL_S,
                 publish_dedup_s: Optional[float] = None,
                 publish_ids_per_publisher: int = DEFAULT_PUBLISH_IDS_PER_PUBLISHER,
                 publish_ids_max: int = DEFAULT_PUBLISH_IDS_MAX,
                 publisher: Optional[str] = None,
                 ssl_context: Optional[ssl.SSLContext] = None,
                 max_unacked_publishes: int = DEFAULT_MAX_UNACKED_PUBLISHES,
                 publish_block_s: float = DEFAULT_PUBLISH_BLOCK_S) -> None:
        scheme = urlsplit(url).scheme
        self.url = url
        if scheme in ("redis", "rediss", "unix"):
            dedup = publish_dedup_s if publish_dedup_s is not None else max(
                DEFAULT_PUBLISH_DEDUP_S, history_ttl_s)
            self._backend: Any = _RedisBackend(url, timeout, prefix, history_size, history_ttl_s,
                                               dedup, publish_ids_per_publisher, publish_ids_max,
                                               publisher, max_unacked_publishes, publish_block_s)
        elif scheme in ("http", "https"):
            if not api_key:
                raise ValueError("Publisher over HTTP needs api_key= (one of the server's "
                                 "api_keys)")
            self._backend = _HttpBackend(url, api_key, timeout, ssl_context)
        else:
            raise ValueError(f"Publisher URL must be redis://, rediss://, http:// or https://, "
                             f"got {url[:64]!r}")
        # a Publisher dropped, or left open at exit, still sends what it queued
        self._finalizer = weakref.finalize(self, self._backend.close)

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def publish(self, channel: str, data: Any = None, idempotency_key: Optional[str] = None,
                traceparent: Optional[str] = None, *,
                wait: bool = True) -> Union[Published, "Future[Published]"]:
        """Publish ``data`` on ``channel``; its :class:`Published` (offset, epoch).

        ``wait=False`` (Redis only): queue it and return a :class:`concurrent.futures.Future`
        of its :class:`Published` at once (see the class). A bad channel, data or key
        raises here either way; the future carries what Redis answered.
        """
        _check_channel(channel)
        return self._backend.publish(channel, data, idempotency_key, traceparent, wait)

    def publish_many(self, messages: Iterable[Tuple[str, Any]]) -> List[Published]:
        """Publish each ``(channel, data)`` in order, in one round trip (a Redis pipeline,
        or one API ``batch``); their :class:`Published`, in order."""
        items = list(messages)
        for channel, _ in items:
            _check_channel(channel)
        return self._backend.publish_many(items)

    def flush(self) -> None:
        """Wait until every ``publish(..., wait=False)`` made so far is answered (its future
        done). Over HTTP: nothing to do."""
        self._backend.flush()

    def send_to_user(self, uid: str, event: str, data: Any = None) -> Optional[int]:
        """Send ``event`` to every connection of user ``uid`` on every server. Over HTTP:
        how many connections of the answering server took it; over Redis: None."""
        _check_event(event)
        return self._backend.send_to_user(uid, event, data)

    def broadcast(self, event: str, data: Any = None) -> Optional[int]:
        """Send ``event`` to every connection of every server (counts as :meth:`send_to_user`)."""
        _check_event(event)
        return self._backend.broadcast(event, data)

    def close(self) -> None:
        """Send the publishes still queued (their futures are answered), stop the flusher
        and close the connection (idempotent)."""
        self._finalizer()


class _RedisBackend:
    def __init__(self, url: str, timeout: float, prefix: str, history_size: int,
                 history_ttl_s: float, publish_dedup_s: float, ids_per_publisher: int,
                 ids_max: int, publisher: Optional[str], max_unacked_publishes: int,
                 publish_block_s: float) -> None:
        server_id = "pub-" + uuid.uuid4().hex[:12]  # names the epochs of channels it starts
        parsed = parse_broker_url(url)
        space = ChannelSpace(prefix, server_id, history_size, history_ttl_s, publish_dedup_s,
                             DEFAULT_CHANNEL_TTL_S, ids_per_publisher, ids_max,
                             sharded=parsed.subscription == SHARDED)
        self._sender = RedisSender(parsed.url, timeout, space, publisher, user_channel(prefix),
                                   server_id, max_unacked_publishes, publish_block_s)

    def publish(self, channel: str, data: Any, key: Optional[str], traceparent: Optional[str],
                wait: bool = True) -> Any:
        body = self._sender.command(channel, data, key, traceparent)
        if wait:
            return self._sender.publish(channel, body)
        return self._sender.submit(channel, body)

    def publish_many(self, items: Sequence[Tuple[str, Any]]) -> List[Published]:
        command = self._sender.command
        return self._sender.publish_many([c for c, _ in items],
                                         [command(c, d, None, None) for c, d in items])

    def flush(self) -> None:
        self._sender.flush()

    def send_to_user(self, uid: str, event: str, data: Any) -> Optional[int]:
        self._sender.send_to_user({"k": "send", "uid": uid, "frame": p.encode(event, data)})
        return None

    def broadcast(self, event: str, data: Any) -> Optional[int]:
        self._sender.send_to_user({"k": "broadcast", "frame": p.encode(event, data)})
        return None

    def close(self) -> None:
        self._sender.close()


class _HttpBackend:
    def __init__(self, url: str, api_key: str, timeout: float,
                 ssl_context: Optional[ssl.SSLContext]) -> None:
        parts = urlsplit(url)
        self._ssl_context = ssl_context
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._https else 80)
        self._base = parts.path.rstrip("/")
        self._timeout = timeout
        self._headers = {"Authorization": f"apikey {api_key}", "Content-Type": "application/json"}
        self._conn: Optional[http.client.HTTPConnection] = None
        self._lock = threading.Lock()  # one request at a time on the connection

    def call(self, method: str, params: Any) -> Any:
        """POST one API method; its result, or :class:`ApiCallError`."""
        body = p.dumps(params).encode("utf-8")
        with self._lock:
            return self._post(method, body)

    def _post(self, method: str, body: bytes) -> Any:
        for attempt in (1, 2):
            reused = self._conn is not None
            conn = self._conn or self._connect()
            try:
                conn.request("POST", f"{self._base}/api/{method}", body, self._headers)
                response = conn.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self._close()
                if reused and attempt == 1:
                    continue  # the server closed an idle keep-alive connection: once more
                raise
            if response.will_close:
                self._close()
            return _result(response.status, data)
        raise AssertionError("unreachable")  # pragma: no cover

    def _connect(self) -> http.client.HTTPConnection:
        if self._https:
            self._conn = http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout,
                                                     context=self._ssl_context)
        else:
            self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        return self._conn

    def publish(self, channel: str, data: Any, key: Optional[str], traceparent: Optional[str],
                wait: bool) -> Published:
        if not wait:
            raise ValueError("publish(wait=False) pipelines over redis:// only; over HTTP "
                             "use publish_many (one batch request)")
        params: dict = {"channel": channel, "data": data}
        if key is not None:
            params["idempotency_key"] = key
        if traceparent is not None:
            params["traceparent"] = traceparent
        return _published(self.call("publish", params))

    def publish_many(self, items: Sequence[Tuple[str, Any]]) -> List[Published]:
        commands = [{"method": "publish", "params": {"channel": c, "data": d}} for c, d in items]
        replies = self.call("batch", {"commands": commands})["replies"]
        out = []
        for reply in replies:
            if "error" in reply:
                raise ApiCallError(200, reply["error"]["code"], reply["error"]["message"])
            out.append(_published(reply["result"]))
        return out

    def send_to_user(self, uid: str, event: str, data: Any) -> Optional[int]:
        return int(self.call("send_to_user", {"user": uid, "event": event, "data": data})["delivered"])

    def broadcast(self, event: str, data: Any) -> Optional[int]:
        return int(self.call("broadcast", {"event": event, "data": data})["delivered"])

    def flush(self) -> None:
        pass  # nothing is queued: every call waits for its answer

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _result(status: int, data: bytes) -> Any:
    try:
        answer = json.loads(data)
    except ValueError:
        raise ApiCallError(status, "bad-answer", f"HTTP {status} without a JSON answer: "
                                                 f"{data[:200]!r}") from None
    if status == 200 and isinstance(answer, dict) and "result" in answer:
        return answer["result"]
    error = answer.get("error", {}) if isinstance(answer, dict) else {}
    raise ApiCallError(status, str(error.get("code", "bad-answer")), str(error.get("message", "")))


def _published(result: dict) -> Published:
    return Published(result["channel"], int(result["offset"]), str(result["epoch"]),
                     int(result["delivered"]), bool(result.get("duplicate", False)))


__all__ = ["Publisher", "ApiCallError", "SenteLiteError"]

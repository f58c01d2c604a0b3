"""The server API's methods, sans-I/O: ``handle(server, method, body, publisher)``.

Each method takes a JSON object and answers ``{"result": ...}`` or ``{"error":
{"code", "message"}}`` with a matching HTTP status (docs/api.md). Everything runs
through the :class:`~sente_lite.Server`'s public methods, so a method means the same
here as in Python, and, with the Redis broker, across every server. No I/O of its
own: an HTTP face (the network loop's, or an ASGI one) hands it a method name and a
body and writes back the ``(status, body)`` it returns.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from ..wire import protocol as p
from ..wire import tracing
from ..errors import BrokerCommandError, BrokerUnavailable, EncodeError, PublishOutcomeUnknown

from ..core.face import ServerFace
from ..version import __version__
from ..limits import MAX_KEY_CHARS, MIN_KEY_CHARS, check_keys  # noqa: F401 (public here too)

#: HTTP status of each error code.
STATUS = {"bad-request": 400, "invalid-channel": 400, "unauthorized": 401, "unknown-method": 404,
          "not-found": 404, "method-not-allowed": 405, "too-large": 413, "rate-limited": 429,
          "internal-error": 500, "broker-error": 502, p.ERR_UNAVAILABLE: 503,
          p.ERR_OUTCOME_UNKNOWN: 503}
#: Close codes ``disconnect_user`` may use: normal, policy (the reference clients stop
#: reconnecting), and the application range.
_CLOSE_CODES = (1000, 1008)
_MAX_REASON_BYTES = 123


class ApiError(Exception):
    """A method's refusal: ``code`` (a key of :data:`STATUS`) and a message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ApiKeys:
    """The keys the API accepts (several at once, for rotation); compared in constant time."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = [(k.encode("utf-8"), key_identity(k)) for k in check_keys(keys)]

    def identify(self, authorization: Optional[str]) -> Optional[str]:
        """The publisher identity of the key in an ``Authorization: apikey <key>`` value,
        or None. Every key is compared, in constant time, whatever matches."""
        if authorization is None:
            return None
        scheme, _, given = authorization.strip().partition(" ")
        if scheme.lower() != "apikey":
            return None
        raw = given.strip().encode("utf-8", "replace")
        found = None
        for key, identity in self._keys:
            if hmac.compare_digest(raw, key) and found is None:
                found = identity
        return found


def key_identity(key: str) -> str:
    """The publisher a key publishes as (publish-id deduplication): ``api:`` and a digest."""
    return "api:" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def error_body(code: str, message: str) -> bytes:
    """``{"error": {"code", "message"}}`` as JSON bytes."""
    return json.dumps({"error": {"code": code, "message": message}}).encode("utf-8")


def handle(server: ServerFace, method: str, body: bytes, publisher: str) -> Tuple[int, bytes]:
    """Run API ``method`` with the JSON object ``body`` as ``publisher``; the HTTP status
    and JSON body of the answer. Never raises."""
    try:
        params = parse_params(body)
        result = call(server, method, params, publisher)
        return 200, p.dumps({"result": result}).encode("utf-8")
    except ApiError as exc:
        return STATUS[exc.code], error_body(exc.code, exc.message)


def parse_params(body: bytes) -> Dict[str, Any]:
    """The JSON object of a request body (empty: ``{}``), tagged forms read as bytes;
    ApiError ``bad-request`` else."""
    if not body.strip():
        return {}
    try:
        text = body.decode("utf-8")
        problem = p.depth_problem(text)
        if problem:
            raise ApiError("bad-request", f"body is not usable JSON: {problem}")
        params = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ApiError("bad-request", f"body is not valid JSON: {type(exc).__name__}") from None
    if p.may_hold_tags(text):  # bytes in their tagged form {"$bytes": base64} (PROTOCOL 10)
        try:
            params = p.untag(params)
        except ValueError as exc:
            raise ApiError("bad-request", f"body holds malformed bytes: {exc}") from None
    if not isinstance(params, dict):
        raise ApiError("bad-request", "body must be a JSON object")
    return params


def call(server: ServerFace, method: str, params: Dict[str, Any], publisher: str) -> Any:
    """Run one method; its result, or ApiError."""
    fn = METHODS.get(method)
    if fn is None:
        raise ApiError("unknown-method", f"unknown method {method[:64]!r}: use one of "
                                         f"{', '.join(sorted(METHODS))}")
    try:
        return fn(server, params, publisher)
    except ApiError:
        raise
    except BrokerUnavailable as exc:
        raise ApiError(p.ERR_UNAVAILABLE, str(exc)) from None
    except PublishOutcomeUnknown as exc:
        raise ApiError(p.ERR_OUTCOME_UNKNOWN, str(exc)) from None
    except BrokerCommandError as exc:
        raise ApiError("broker-error", str(exc)) from None
    except EncodeError as exc:
        raise ApiError("bad-request", str(exc)) from None


# -- parameters ------------------------------------------------------------------------
def _str(params: Dict[str, Any], name: str, *, optional: bool = False,
         most: int = 256) -> Optional[str]:
    value = params.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= most:
        raise ApiError("bad-request", f"{name} must be a string of 1-{most} characters")
    return value


def _int(params: Dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ApiError("bad-request", f"{name} must be an integer from {low} to {high}")
    return value


def _channel(server: ServerFace, params: Dict[str, Any]) -> str:
    channel = params.get("channel")
    problem = p.channel_id_problem(channel, server.max_channel_id_chars)
    if problem:
        raise ApiError("invalid-channel", f"channel: {problem}")
    return channel  # type: ignore[return-value]


def _event(params: Dict[str, Any]) -> str:
    event = params.get("event")
    if not p.is_valid_event_id(event) or p.is_reserved(event):  # type: ignore[arg-type]
        raise ApiError("bad-request", "event must be 'namespace/name' ([A-Za-z0-9_.-], 1-64 "
                                      "chars per part) outside the reserved namespaces")
    return event  # type: ignore[return-value]


# -- the methods -----------------------------------------------------------------------
def _publish(server: ServerFace, params: Dict[str, Any], publisher: str) -> Any:
    channel = _channel(server, params)
    if "data" not in params:
        raise ApiError("bad-request", "data is required (null is a value)")
    key = _str(params, "idempotency_key", optional=True, most=p.MAX_PUBLISH_ID_CHARS)
    traceparent = params.get("traceparent")
    if traceparent is not None and tracing.valid(traceparent) is None:
        raise ApiError("bad-request", "traceparent must be a W3C version-00 traceparent")
    pub = server.publish(channel, params["data"], idempotency_key=key, publisher=publisher,
                         traceparent=traceparent)
    out = {"channel": channel, "offset": pub.offset, "epoch": pub.epoch,
           "delivered": pub.delivered}
    if pub.duplicate:
        out["duplicate"] = True
    return out


def _broadcast(server: ServerFace, params: Dict[str, Any], publisher: str) -> Any:
    return {"delivered": server.broadcast(_event(params), params.get("data"))}


def _send_to_user(server: ServerFace, params: Dict[str, Any], publisher: str) -> Any:
    uid = _str(params, "user")
    return {"delivered": server.send_to_user(uid, _event(params), params.get("data"))}  # type: ignore[arg-type]


def _disconnect_user(server: ServerFace, params: Dict[str, Any], publisher: str) -> Any:
    uid = _str(params, "user")
    code = _int(params, "code", 1000, 1000, 4999)
    if code not in _CLOSE_CODES and code < 4000:
        raise ApiError("bad-request", "code must be 1000, 1008 or 4000-4999")
    reason = params.get("reason", "")
    if not isinstance(reason, str) or len(reason.encode("utf-8")) > _MAX_REASON_BYTES:
        raise ApiError("bad-request", f"reason must be a string of at most {_MAX_REASON_BYTES} "
                                      "bytes")
    return {"closed": server.disconnect_user(uid, code, reason)}  # type: ignore[arg-type]


def _presence(server: ServerFace, params: Dict[str, Any], publisher: str) -> Any:
    uid = _str(params, "user")
    return {"user": uid, "connections": server.presence(uid)}  # type: ignore[arg-type]


def _channel_presence(server: ServerFace, params: Dict[str, Any], publisher: str) -> Any:
    channel = _channel(server, params)
    stats = params.get("stats", False)
    if not isinstance(stats, bool):
        raise ApiError("bad-request", "stats must be true or false")
    if stats:
        return {"channel": channel, **server.presence_stats(channel)}
    return {"channel": channel, "members": server.presence_of(channel)}


def _history(server: ServerFace, params: Dict[str, Any], publisher: str) -> Any:
    channel = _channel(server, params)
    limit = _int(params, "limit", 100, 0, 10_000)
    reverse = params.get("reverse", False)
    if not isinstance(reverse, bool):
        raise ApiError("bad-request", "reverse must be true or false")
    marks = [params.get(key) for key in ("since", "page")]
    for key, mark in zip(("since", "page"), marks):
        if mark is not None and (not isinstance(mark, dict) or isinstance(mark.get("offset"), bool)
                                 or not isinstance(mark.get("offset"), int)
                                 or mark["offset"] < 0 or not isinstance(mark.get("epoch"), str)):
            raise ApiError("bad-request", key + ' must be {"offset": integer >= 0, "epoch": string}')
    return server.history(channel, limit=limit, since=marks[0], reverse=reverse, page=marks[1])


def _server_sub(server: ServerFace, params: Dict[str, Any], publisher: str, on: bool) -> Any:
    channel, target = _channel(server, params), _str(params, "target")
    if on:
        return {"subscribed": server.subscribe(target, channel)}  # type: ignore[arg-type]
    return {"unsubscribed": server.unsubscribe(target, channel)}  # type: ignore[arg-type]


def _channels(server: ServerFace, params: Dict[str, Any], publisher: str) -> Any:
    return {"channels": server.channel_counts()}


def _info(server: ServerFace, params: Dict[str, Any], publisher: str) -> Any:
    return {"version": __version__, "server-id": server.server_id, "nodes": server.nodes(),
            "connections": len(server.connections()), "users": server.user_count()}


#: Commands of one ``batch``; one more is ``bad-request``.
MAX_BATCH_COMMANDS = 10_000


def _batch(server: ServerFace, params: Dict[str, Any], publisher: str) -> Any:
    commands = params.get("commands")
    if not isinstance(commands, list) or len(commands) > MAX_BATCH_COMMANDS:
        raise ApiError("bad-request", f"commands must be a list of at most {MAX_BATCH_COMMANDS} "
                                      '{"method", "params"} objects')
    replies: List[Dict[str, Any]] = []
    for command in commands:
        try:
            if not isinstance(command, dict) or not isinstance(command.get("method"), str):
                raise ApiError("bad-request", 'each command must be {"method": string, '
                                              '"params": object}')
            method, sub = command["method"], command.get("params", {})
            if method == "batch":
                raise ApiError("bad-request", "a batch cannot hold a batch")
            if not isinstance(sub, dict):
                raise ApiError("bad-request", "params must be a JSON object")
            replies.append({"result": call(server, method, sub, publisher)})
        except ApiError as exc:
            replies.append({"error": {"code": exc.code, "message": exc.message}})
    return {"replies": replies}


METHODS: Dict[str, Callable[[ServerFace, Dict[str, Any], str], Any]] = {
    "publish": _publish, "broadcast": _broadcast, "send_to_user": _send_to_user,
    "disconnect_user": _disconnect_user, "presence": _presence, "history": _history,
    "subscribe": lambda s, params, pub: _server_sub(s, params, pub, True),
    "unsubscribe": lambda s, params, pub: _server_sub(s, params, pub, False),
    "channel_presence": _channel_presence,
    "channels": _channels, "info": _info, "batch": _batch,
}

__all__ = ["handle", "call", "parse_params", "ApiKeys", "ApiError", "METHODS", "STATUS",
           "check_keys", "key_identity", "error_body", "MIN_KEY_CHARS", "MAX_KEY_CHARS",
           "MAX_BATCH_COMMANDS"]

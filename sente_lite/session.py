"""Sans-I/O protocol sessions: every rule of the wire protocol for one connection.

:class:`ServerSession` and :class:`ClientSession` take received text and the
current time as arguments and give back events for the application and the
frames (UTF-8 JSON payloads) to send. They open no socket, start no thread and
read no clock, so every protocol rule is tested in memory (``tests/core/test_session.py``
joins a client and a server session the way a socket would). The threaded
:class:`sente_lite.Server` and :class:`sente_lite.Client` are adapters: they move
bytes, run handlers and wait on futures.

Each call returns what it produced (no shared output buffer), so a session may be
called from the thread that read a frame and from a handler's thread at once; its
request table is guarded by a lock of its own.
"""

from __future__ import annotations

import itertools
import logging
import random
import secrets
import threading
from dataclasses import dataclass, field
from typing import (Any, Callable, Dict, List, NamedTuple, Optional, Tuple, Union)
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from . import limits as lim
from .wire import protocol as p
from .wire import tracing
from .wire.channels import Published, RecoveryResult, Since
from .counters import Counter, Counters  # noqa: F401 (Counter: for callers)
from .errors import Disconnected, LimitExceeded, MessageTooLarge, RemoteError, RequestTimeout
from .logsafe import safe
from .wire.packers import JSON_PACKER, Packer

log = logging.getLogger("sente_lite.session")

Waiter = Any  # whatever the adapter waits on (a Future); the session only hands it back


def resolve(waiter: Optional[Waiter], result: Any, error: Optional[BaseException]) -> None:
    """Complete ``waiter`` (a Future, or None) with ``result`` or ``error`` unless done: how
    every face hands a request's outcome to whoever waits for it."""
    if waiter is None or waiter.done():
        return
    if error is not None:
        waiter.set_exception(error)
    else:
        waiter.set_result(result)


# -- what a session gives back -------------------------------------------------------
# Every event a server session gives says what handling it may involve (``kind``: the
# server face picks the thread from it), the request it answers (``cb_id``), its
# ``event`` and ``traceparent``: read as plain attributes, never probed.
_ANSWER, _BUILTIN, _CHANNEL, _APP = (p.FrameKind.ANSWER, p.FrameKind.BUILTIN,
                                     p.FrameKind.CHANNEL, p.FrameKind.APP)


class AppEvent(NamedTuple):
    """An application event for the handler of ``event`` (``cb_id``: a reply is due;
    ``traceparent``: the valid W3C traceparent of its data map, if any)."""

    event: str
    data: Any
    cb_id: Optional[str]
    traceparent: Optional[str] = None
    kind = _APP


class SubscribeRequest(NamedTuple):
    channel_id: str
    since: Optional[Since]
    cb_id: Optional[str]
    token: Optional[str] = None  # a subscription token (feature sub-token)
    kind = _CHANNEL
    event = p.EV_SUBSCRIBE
    traceparent = None


class UnsubscribeRequest(NamedTuple):
    channel_id: str
    cb_id: Optional[str]
    kind = _CHANNEL
    event = p.EV_UNSUBSCRIBE
    traceparent = None


class PublishRequest(NamedTuple):
    """A publish; ``data_json`` is its data already encoded once for every subscriber."""

    channel_id: str
    data_json: str
    publish_id: Optional[str]
    exclude_sender: bool
    cb_id: Optional[str]
    traceparent: Optional[str] = None
    kind = _CHANNEL
    event = p.EV_PUBLISH


class PresenceRequest(NamedTuple):
    """A ``sente-lite/presence`` (``stats``: ``sente-lite/presence-stats``) request."""

    channel_id: str
    stats: bool
    cb_id: str
    kind = _CHANNEL
    event = p.EV_PRESENCE
    traceparent = None


class RefreshRequest(NamedTuple):
    """A ``chsk/refresh``: the client presents a fresh connection token (a reply is due)."""

    token: str
    cb_id: str
    kind = _BUILTIN
    event = p.EV_REFRESH
    traceparent = None


class HistoryRequest(NamedTuple):
    """A ``sente-lite/history`` read (feature ``history-api``): at most ``limit`` (None:
    the server's page) of ``channel_id``'s kept messages after ``since``, oldest first
    (``reverse``: newest first), from ``page`` (a previous answer's ``next``) on."""

    channel_id: str
    limit: Optional[int]
    since: Optional[Since]
    reverse: bool
    page: Optional[Since]
    cb_id: Optional[str]
    kind = _CHANNEL
    event = p.EV_HISTORY
    traceparent = None


class SubRefreshRequest(NamedTuple):
    """A ``sente-lite/sub-refresh``: a fresh subscription token for one channel (a reply is due)."""

    channel_id: str
    token: str
    cb_id: str
    kind = _CHANNEL
    event = p.EV_SUB_REFRESH
    traceparent = None


class ReplyArrived(NamedTuple):
    """The answer to one of our requests: ``error`` set for a ``chsk/error``."""

    waiter: Waiter
    result: Any
    error: Optional[RemoteError]
    kind = _ANSWER
    event = None
    cb_id = None  # it answers a request; none is due
    traceparent = None


class CloseConnection(NamedTuple):
    """The session decided the connection must close (``why``: a log reason)."""

    code: int
    reason: str
    why: str
    message: str
    kind = _BUILTIN  # after what is queued before it
    event = None
    cb_id = None
    traceparent = None


class Received(NamedTuple):
    """What one received frame produced: events and frames to send."""

    events: List[Any]
    frames: List[bytes]

    @property
    def kind(self) -> p.FrameKind:
        """What acting on this (a server session's) may involve: the most of its events'
        kinds; ``BUILTIN`` at least when it has frames to send (they go in order),
        ``ANSWER`` when it only settles requests, or does nothing."""
        kind = _BUILTIN if self.frames else _ANSWER
        for ev in self.events:
            if ev.kind > kind:
                kind = ev.kind
        return kind


_NOTHING = Received([], [])
_new_tuple = tuple.__new__
#: What :meth:`ClientSession.channel_message` returns for a frame that is not a JSON
#: channel message (to be given to :meth:`ClientSession.receive`).
NOT_CHANNEL_MSG: Any = object()
#: How every JSON channel message a server writes begins (:meth:`ClientSession.receive`).
_CHANNEL_MSG_TEXT = f'["{p.EV_CHANNEL_MSG}",'
_CHANNEL_MSG_HEAD = _CHANNEL_MSG_TEXT.encode("ascii")


def _from_server(packer: Packer, text: Union[str, bytes], binary: Optional[bool],
                 tags: bool) -> Tuple[str, Any, Optional[str]]:
    """``packer.decode(text, binary, tags)``, shorter for a JSON channel message (most
    frames a client reads): once parsed, a 2-element array that starts so is one."""
    if packer is JSON_PACKER and (
            (type(text) is bytes and binary is False and text.startswith(_CHANNEL_MSG_HEAD))
            or (type(text) is str and not binary and text.startswith(_CHANNEL_MSG_TEXT))):
        value = p.decode_value(text, tags)
        if type(value) is list and len(value) == 2:
            return p.EV_CHANNEL_MSG, value[1], None
        return p.frame_of(value)
    return packer.decode(text, binary, tags)


def _frame(text: str) -> bytes:
    return text.encode("utf-8")


def error_frame(code: str, message: str, cb_id: Optional[str], event: Optional[str] = None,
                packer: Packer = JSON_PACKER) -> bytes:
    """A ``chsk/error`` frame (a reply when ``cb_id`` is set)."""
    if cb_id is not None:
        return packer.encode(p.EV_ERROR, p.error_data(code, message), cb_id)
    return packer.encode(p.EV_ERROR, p.error_data(code, message, event))


def reply_frame(event: str, result: Any, cb_id: str, packer: Packer = JSON_PACKER,
                max_bytes: Optional[int] = None) -> Tuple[bytes, bool]:
    """The answer to request ``cb_id`` of ``event`` whose handler returned ``result``:
    ``(chsk/reply frame, True)``, or ``(handler-error frame, False)`` when ``result``
    cannot be encoded or its frame is over ``max_bytes`` (logged). One rule for both sides."""
    try:
        frame = packer.encode(p.EV_REPLY, result, cb_id)
        check_frame_size(frame, max_bytes)
        return frame, True
    except MessageTooLarge as exc:
        log.error("reply of handler for %s not sent: %s", event, exc)
        return error_frame(p.ERR_HANDLER_ERROR, f"reply of {event} is too large", cb_id,
                           None, packer), False
    except p.EncodeError:
        log.error("reply of handler for %s is not %s-encodable", event, packer.name.upper())
        return error_frame(p.ERR_HANDLER_ERROR,
                           f"reply of {event} is not {packer.name.upper()}-encodable", cb_id,
                           None, packer), False


def check_frame_size(frame: bytes, max_bytes: Optional[int]) -> None:
    """Raise :class:`MessageTooLarge` when ``frame`` is over ``max_bytes`` (a server's
    ``max-message-bytes``: it would close the connection with 1009); None: no limit."""
    if max_bytes is not None and len(frame) > max_bytes:
        raise MessageTooLarge(
            f"frame of {len(frame)} bytes is over the server's max-message-bytes ({max_bytes})"
            + ("; JSON carries bytes in base64 (4/3 their size)"
               if frame.find(b'"' + p.BYTES_TAG.encode("ascii") + b'"') >= 0 else ""))


def message_limit(handshake: Optional["Handshake"]) -> Optional[int]:
    """The ``max-message-bytes`` a handshake gave (None before any, or when it gives none)."""
    limit = handshake.info.get("max-message-bytes") if handshake is not None else None
    return limit if type(limit) is int and limit > 0 else None


def handler_error_frames(event: str, cb_id: Optional[str], exc: BaseException,
                         packer: Packer = JSON_PACKER) -> List[bytes]:
    """The answer to a request ``cb_id`` whose handler raised ``exc`` (none to a plain
    event): ``handler-error`` naming the exception's type, never its text. Both sides."""
    if cb_id is None:
        return []
    return [error_frame(p.ERR_HANDLER_ERROR, f"handler for {event} raised {type(exc).__name__}",
                        cb_id, None, packer)]


def no_handler_frames(event: str, cb_id: Optional[str], packer: Packer = JSON_PACKER) -> List[bytes]:
    """The answer to a request ``cb_id`` nobody handles (none to a plain event). Both sides."""
    if cb_id is None:
        return []
    return [error_frame(p.ERR_NO_HANDLER, f"no handler for {event}", cb_id, None, packer)]


class _Requests:
    """Our outstanding requests to the peer: cb-id -> (waiter, event, deadline)."""

    __slots__ = ("_table", "_lock", "_ids", "_prefix", "max_bytes")

    def __init__(self, prefix: str) -> None:
        self._table: Dict[str, Tuple[Waiter, str, float]] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._prefix = prefix
        #: the peer's ``max-message-bytes``: a larger frame raises MessageTooLarge (None: no limit)
        self.max_bytes: Optional[int] = None

    def __len__(self) -> int:
        return len(self._table)

    def add_encoded(self, waiter: Waiter, event: str, data: Any, deadline: float,
                    limit: Optional[int] = None, packer: Packer = JSON_PACKER) -> Tuple[str, bytes]:
        """Register a request and encode its frame (nothing stays registered when
        ``data`` cannot be encoded, or its frame is over ``max_bytes``: the EncodeError or
        MessageTooLarge propagates)."""
        cb_id = self.add(waiter, event, deadline, limit)
        try:
            frame = packer.encode(event, data, cb_id)
            check_frame_size(frame, self.max_bytes)
            return cb_id, frame
        except BaseException:
            self.pop(cb_id)
            raise

    def add(self, waiter: Waiter, event: str, deadline: float, limit: Optional[int] = None) -> str:
        with self._lock:
            if limit is not None and len(self._table) >= limit:
                raise LimitExceeded(f"{len(self._table)} requests already await a reply "
                                    f"(max_outstanding_requests={limit})")
            cb_id = f"{self._prefix}{next(self._ids)}"
            self._table[cb_id] = (waiter, event, deadline)
            return cb_id

    def has(self, cb_id: str) -> bool:
        return cb_id in self._table

    def put(self, cb_id: str, entry: Tuple[Waiter, str, float]) -> None:
        """Register ``cb_id`` again (a publish resent with its cb-id)."""
        with self._lock:
            self._table[cb_id] = entry

    def pop(self, cb_id: Optional[str]) -> Optional[Tuple[Waiter, str, float]]:
        if cb_id is None:
            return None
        with self._lock:
            return self._table.pop(cb_id, None)

    def expire(self, now: float) -> List[Tuple[Waiter, str]]:
        with self._lock:
            late = [cb for cb, (_, _, deadline) in self._table.items() if deadline <= now]
            return [(w, e) for w, e, _ in (self._table.pop(cb) for cb in late)]

    def remove(self, cb_ids: List[str]) -> List[Tuple[Waiter, str]]:
        with self._lock:
            return [(w, e) for w, e, _ in
                    (self._table.pop(cb) for cb in cb_ids if cb in self._table)]

    def drain(self) -> List[Tuple[Waiter, str]]:
        with self._lock:
            entries, self._table = self._table, {}
        return [(w, e) for w, e, _ in entries.values()]


# -- server side -------------------------------------------------------------------
@dataclass(frozen=True)
class ServerRules:
    """The protocol settings a server applies to every connection."""

    heartbeat_ms: int = 5000
    heartbeat_timeout_ms: int = 15000
    max_bad_frames_in_row: int = 100
    max_outstanding_requests: int = lim.DEFAULT_MAX_OUTSTANDING_REQUESTS
    max_channel_id_chars: int = p.MAX_CHANNEL_ID_CHARS
    rate_limit: Optional[float] = lim.DEFAULT_RATE_LIMIT
    rate_burst: Optional[int] = None
    max_rate_limited: int = lim.DEFAULT_MAX_RATE_LIMITED
    max_history_page: int = lim.DEFAULT_MAX_HISTORY_PAGE
    max_history_reads_per_conn: int = lim.DEFAULT_MAX_HISTORY_READS_PER_CONN
    features: Tuple[str, ...] = (p.FEATURE_HISTORY, p.FEATURE_PUBLISH_ID, p.FEATURE_BATCH,
                                 p.FEATURE_BYTES, p.FEATURE_HISTORY_API, p.FEATURE_SERVER_SUBS)


#: Most frames one ``chsk/batch`` may hold (more is a bad-frame).
MAX_BATCH_FRAMES = 1000
#: Least time between two ``chsk/refresh`` of one connection that are checked: one sooner
#: is answered ``rate-limited`` unchecked (a token check costs a signature verification).
MIN_REFRESH_INTERVAL_S = 0.5
#: Longest token a ``chsk/refresh`` may carry (a longer one is a bad-frame).
MAX_REFRESH_TOKEN_CHARS = p.MAX_TOKEN_CHARS
#: Least time between two ``sente-lite/sub-refresh`` of one channel of one connection that
#: are checked: one sooner is answered ``rate-limited`` unchecked.
MIN_SUB_REFRESH_INTERVAL_S = 0.5
#: Channels whose last sub-refresh time a connection remembers (older ones are forgotten
#: beyond this: they were over MIN_SUB_REFRESH_INTERVAL_S ago).
MAX_SUB_REFRESH_TIMES = 1024

HEARTBEAT_PING = "ping"
HEARTBEAT_TIMEOUT = "timeout"


class _ServerAnswers:
    """The frames a server session answers with, in its connection's packer (what the
    server's dispatcher sends when a handler, the hub or the channel policy is done)."""

    packer: Packer
    counters: Counters

    def reply(self, event: str, cb_id: str, result: Any, traceparent: Optional[str] = None) -> bytes:
        """The reply to request ``cb_id`` whose handler returned ``result`` (a
        ``handler-error`` frame when it cannot be encoded). A traced request's reply
        map carries its ``traceparent`` (unless the handler set one)."""
        if traceparent is not None and isinstance(result, dict) and tracing.TRACEPARENT not in result:
            result = dict(result, **{tracing.TRACEPARENT: traceparent})
        frame, ok = reply_frame(event, result, cb_id, self.packer)
        if not ok:
            self.counters.add(Counter.HANDLER_ERRORS)
        return frame

    def handler_failed(self, event: str, cb_id: Optional[str], exc: BaseException) -> List[bytes]:
        """A handler raised: counted; a ``handler-error`` reply when one was asked."""
        self.counters.add(Counter.HANDLER_ERRORS)
        return handler_error_frames(event, cb_id, exc, self.packer)

    def no_handler(self, event: str, cb_id: Optional[str]) -> List[bytes]:
        """An event nobody handles: ``no-handler`` to a request, else counted."""
        if cb_id is None:
            self.counters.add(Counter.UNHANDLED_EVENTS)
        return no_handler_frames(event, cb_id, self.packer)

    def error(self, code: str, message: str, cb_id: Optional[str], event: Optional[str] = None) -> bytes:
        """A ``chsk/error`` frame in this connection's packer."""
        return error_frame(code, message, cb_id, event, self.packer)

    def subscribed(self, channel_id: str, offset: int, epoch: str,
                   recovery: Optional[RecoveryResult], cb_id: Optional[str]) -> bytes:
        """The answer to a subscribe (reply, or ``sente-lite/subscribed``)."""
        body: Dict[str, Any] = {p.K_CHANNEL: channel_id, p.K_OFFSET: offset, p.K_EPOCH: epoch}
        if recovery is not None:
            body[p.K_RECOVERED] = recovery.recovered
            if not recovery.recovered:
                body[p.K_REASON] = recovery.reason
        return (self.packer.encode(p.EV_REPLY, body, cb_id) if cb_id is not None
                else self.packer.encode(p.EV_SUBSCRIBED, body))

    def unsubscribed(self, channel_id: str, cb_id: Optional[str]) -> bytes:
        body = {p.K_CHANNEL: channel_id}
        return (self.packer.encode(p.EV_REPLY, body, cb_id) if cb_id is not None
                else self.packer.encode(p.EV_UNSUBSCRIBED, body))

    def published(self, result: Published, cb_id: str, traceparent: Optional[str] = None) -> bytes:
        body: Dict[str, Any] = {p.K_CHANNEL: result.channel_id, p.K_OFFSET: result.offset,
                                p.K_DELIVERED: result.delivered}
        if result.duplicate:
            body[p.K_DUPLICATE] = True
        if traceparent is not None:
            body[tracing.TRACEPARENT] = traceparent
        return self.packer.encode(p.EV_REPLY, body, cb_id)


class _TokenRules:
    """A server connection's token: its deadline and ``chsk/refresh`` (feature ``refresh``;
    checking the token is the dispatcher's, with the server's JWT settings)."""

    rules: ServerRules
    counters: Counters
    packer: Packer
    last_seen: float
    closing: bool
    token_deadline: Optional[float]
    token_exp: Optional[float]
    token_info: Optional[Dict[str, Any]]
    _last_refresh: float
    _bad_frame: Callable[[str, Optional[str]], "Received"]

    def _init_token(self) -> None:
        #: when this connection's token expires (its ``exp`` + leeway, on the clock of
        #: ``now``); None: no token bounds it
        self.token_deadline: Optional[float] = None
        #: the ``info`` claim of its last token
        self.token_info: Optional[Dict[str, Any]] = None
        #: its last token's ``exp`` (seconds since the epoch)
        self.token_exp: Optional[float] = None
        self._last_refresh = float("-inf")

    def _refresh(self, data: Any, cb_id: Optional[str]) -> Received:
        """``["chsk/refresh", {"token": T}, cb-id]``: only on a server with feature
        ``refresh``; at most one checked per ``MIN_REFRESH_INTERVAL_S``."""
        if p.FEATURE_REFRESH not in self.rules.features:
            self.counters.add(Counter.UNKNOWN_EVENTS)
            return Received([], [error_frame(p.ERR_UNKNOWN_EVENT, f"unknown reserved event "
                                             f"{p.EV_REFRESH} (no feature refresh)", cb_id,
                                             p.EV_REFRESH, self.packer)])
        token = data.get(p.K_TOKEN) if isinstance(data, dict) else None
        if cb_id is None or not isinstance(token, str) or not (
                0 < len(token) <= MAX_REFRESH_TOKEN_CHARS):
            return self._bad_frame(f"{p.EV_REFRESH} is a request whose data is {{\"token\": "
                                   f"string of 1-{MAX_REFRESH_TOKEN_CHARS} characters}}", cb_id)
        now = self.last_seen
        if now - self._last_refresh < MIN_REFRESH_INTERVAL_S:
            self.counters.add(Counter.RATE_LIMITED)
            return Received([], [error_frame(
                p.ERR_RATE_LIMITED, f"one {p.EV_REFRESH} per {MIN_REFRESH_INTERVAL_S:g}s "
                "(MIN_REFRESH_INTERVAL_S)", cb_id, p.EV_REFRESH, self.packer)])
        self._last_refresh = now
        return Received([RefreshRequest(token, cb_id)], [])

    def grant(self, deadline: float, exp: float, info: Optional[Dict[str, Any]]) -> None:
        """A token passed (at the upgrade or in a refresh): the connection may live until
        ``deadline`` (``exp`` + leeway, on the clock of ``now``)."""
        self.token_deadline, self.token_exp, self.token_info = deadline, exp, info

    def token_expired(self, now: float) -> bool:
        """True, once, when the connection's token deadline passed (then it closes 4002)."""
        if self.token_deadline is None or self.closing or now < self.token_deadline:
            return False
        self.closing = True
        self.counters.add(Counter.TOKEN_EXPIRED_CLOSES)
        return True


class _SubTokenRules:
    """A server connection's subscription tokens (feature ``sub-token``): the deadline of
    each channel subscribed with one, and ``sente-lite/sub-refresh`` (checking the token
    is the dispatcher's: :mod:`sente_lite.core.sub_tokens`)."""

    rules: ServerRules
    counters: Counters
    packer: Packer
    last_seen: float
    _channel: Callable[..., Any]
    _bad_frame: Callable[[str, Optional[str]], "Received"]

    def _init_sub_tokens(self) -> None:
        #: channel-id -> when its subscription token expires (``exp`` + leeway, on the
        #: clock of ``now``), for each channel subscribed with one
        self.sub_deadlines: Dict[str, float] = {}
        self._sub_refreshed: Dict[str, float] = {}

    def _sub_refresh(self, data: Any, cb_id: Optional[str]) -> Received:
        """``["sente-lite/sub-refresh", {"channel-id": C, "token": T}, cb-id]``: only with
        feature ``sub-token``; one per channel checked per ``MIN_SUB_REFRESH_INTERVAL_S``."""
        if p.FEATURE_SUB_TOKEN not in self.rules.features:
            self.counters.add(Counter.UNKNOWN_EVENTS)
            return Received([], [error_frame(p.ERR_UNKNOWN_EVENT, f"unknown reserved event "
                                             f"{p.EV_SUB_REFRESH} (no feature sub-token)", cb_id,
                                             p.EV_SUB_REFRESH, self.packer)])
        channel = self._channel(data, cb_id, p.EV_SUB_REFRESH)
        if isinstance(channel, Received):
            return channel
        token = data.get(p.K_TOKEN)
        if cb_id is None or not isinstance(token, str) or not (
                0 < len(token) <= MAX_REFRESH_TOKEN_CHARS):
            return self._bad_frame(f"{p.EV_SUB_REFRESH} is a request whose data is "
                                   f"{{\"channel-id\": C, \"token\": string of "
                                   f"1-{MAX_REFRESH_TOKEN_CHARS} characters}}", cb_id)
        now, times = self.last_seen, self._sub_refreshed
        if now - times.get(channel, float("-inf")) < MIN_SUB_REFRESH_INTERVAL_S:
            self.counters.add(Counter.RATE_LIMITED)
            return Received([], [error_frame(
                p.ERR_RATE_LIMITED, f"one {p.EV_SUB_REFRESH} per channel per "
                f"{MIN_SUB_REFRESH_INTERVAL_S:g}s (MIN_SUB_REFRESH_INTERVAL_S)", cb_id,
                p.EV_SUB_REFRESH, self.packer)])
        if len(times) >= MAX_SUB_REFRESH_TIMES:
            self._sub_refreshed = times = {c: t for c, t in times.items()
                                           if now - t < MIN_SUB_REFRESH_INTERVAL_S}
        times[channel] = now
        return Received([SubRefreshRequest(channel, token, cb_id)], [])


class ServerSession(_ServerAnswers, _TokenRules, _SubTokenRules):
    """The protocol state of one server-side connection."""

    def __init__(self, conn_id: str, rules: ServerRules, now: float,
                 counters: Optional[Counters] = None, packer: Packer = JSON_PACKER) -> None:
        self.conn_id = conn_id
        self.packer = packer
        self.rules = rules
        self.counters = counters if counters is not None else Counters()
        self.last_seen = now
        self.bad_in_row = 0
        self.closing = False
        self._requests = _Requests("s")
        self._time = now
        self._init_token()
        self._init_sub_tokens()
        self._rate: Optional[lim.RateGuard] = None
        if rules.rate_limit is not None:
            self._rate = lim.RateGuard(rules.rate_limit, rules.rate_burst, rules.max_rate_limited,
                                       clock=self._now)

    def _now(self) -> float:
        return self._time

    # -- greeting -------------------------------------------------------------------
    def handshake(self, uid: str, csrf_token: Optional[str], info: Dict[str, Any], first: bool) -> bytes:
        """The ``chsk/handshake`` frame: ``[uid, csrf-token, info, first?]``."""
        info = dict(info, **{"protocol": p.PROTOCOL_VERSION, "heartbeat-ms": self.rules.heartbeat_ms,
                             p.K_FEATURES: list(self.rules.features)})
        if self.packer is not JSON_PACKER:
            info[p.K_PACKER] = self.packer.name
        return self.packer.encode(p.EV_HANDSHAKE, [uid, csrf_token, info, first])

    # -- inbound ----------------------------------------------------------------------
    def admit(self, text: Union[str, bytes], now: float) -> Optional[Received]:
        """Record the peer's life and apply ``rate_limit``: None to go on with
        :meth:`receive`; else what refusing this frame produced."""
        self.last_seen = now
        if self._rate is None:
            return None
        self._time = now
        if self.packer.frame_kind(text) is p.FrameKind.BATCH:
            return None  # each frame in it is checked by receive_parts / receive
        return self._rate_verdict(text)

    def _rate_verdict(self, text: Any) -> Optional[Received]:
        """Apply ``rate_limit`` to one frame (text, or a decoded frame of a batch)."""
        guard = self._rate
        assert guard is not None
        verdict = guard.check()
        if verdict is lim.RateGuard.OK:
            return None
        self.counters.add(Counter.RATE_LIMITED)
        if verdict is lim.RateGuard.CLOSE:
            if self.closing:
                return _NOTHING
            self.closing = True
            self.counters.add(Counter.RATE_LIMIT_CLOSES)
            return Received([CloseConnection(
                p.CLOSE_POLICY, "rate limit exceeded", "rate-limit",
                f"kept sending over {self.rules.rate_limit:g} frames/s (max_rate_limited="
                f"{self.rules.max_rate_limited} refused frames per {lim.RATE_PATIENCE_WINDOW_S:g}s)")],
                [])
        return Received([], self._rate_refusal(text, True))

    def _rate_refusal(self, text: Any, expand: bool) -> List[bytes]:
        """The ``rate-limited`` answer to one refused frame (none to an answer; with
        ``expand``, one to each frame of a refused batch)."""
        data: Any = None
        try:
            event, data, cb_id = (p.frame_of(text) if isinstance(text, list)
                                  else self.packer.decode(text))
        except p.FrameError as exc:
            cb_id, event = exc.cb_id, None
        if event in (p.EV_REPLY, p.EV_ERROR):
            return []  # never answer an answer
        if expand and event == p.EV_BATCH and isinstance(data, list):
            return [f for value in data[:MAX_BATCH_FRAMES] for f in self._rate_refusal(value, False)]
        return [error_frame(
            p.ERR_RATE_LIMITED, f"over {self.rules.rate_limit:g} frames/s (rate_limit): frame dropped",
            cb_id, event, self.packer)]

    def replay_budget(self) -> Optional[int]:
        """Messages a replay may send this connection now under ``rate_limit`` (None: no limit)."""
        return None if self._rate is None else self._rate.budget()

    def charge_replay(self, messages: int) -> None:
        """Count ``messages`` replayed to this connection against its ``rate_limit``, one
        frame each (thread-safe)."""
        if self._rate is not None and messages:
            self._rate.charge(messages)

    def receive(self, text: Union[str, bytes]) -> Received:
        """Decode one frame the peer sent and apply the protocol's rules to it."""
        parts = self.receive_parts(text)
        if len(parts) == 1:
            return parts[0]
        return Received([e for r in parts for e in r.events], [f for r in parts for f in r.frames])

    def receive_parts(self, text: Union[str, bytes]) -> List[Received]:
        """Like :meth:`receive`, one :class:`Received` per frame: a ``chsk/batch`` gives
        one per frame in it, in order (so each may be handled where it belongs)."""
        try:
            event, data, cb_id = self.packer.decode(text)
        except p.FrameError as exc:
            return [self._bad_frame(exc.message, exc.cb_id)]
        if event == p.EV_BATCH:
            return self._batch(data, cb_id,
                               checked_first=self.packer.frame_kind(text) is not p.FrameKind.BATCH)
        return [self._one(event, data, cb_id)]

    def _batch(self, data: Any, cb_id: Optional[str], checked_first: bool) -> List[Received]:
        """A ``chsk/batch`` frame: each frame in it, in order, as if sent alone; each one
        counts against ``rate_limit`` (the first not when ``checked_first``: :meth:`admit`
        counted the batch as that frame)."""
        if not isinstance(data, list) or cb_id is not None:
            return [self._bad_frame("chsk/batch data must be an array of frames (and no cb-id)",
                                    cb_id)]
        if len(data) > MAX_BATCH_FRAMES:
            return [self._bad_frame(f"a batch holds at most {MAX_BATCH_FRAMES} frames "
                                    "(MAX_BATCH_FRAMES)", None)]
        parts: List[Received] = []
        for i, value in enumerate(data):
            if (i or not checked_first) and self._rate is not None:
                refused = self._rate_verdict(value)
                if refused is not None:
                    parts.append(refused)
                    if self.closing:
                        break
                    continue
            try:
                event, body, inner_cb = p.frame_of(value)
            except p.FrameError as exc:
                parts.append(self._bad_frame(exc.message, exc.cb_id))
            else:
                parts.append(self._bad_frame("a batch cannot hold a batch", inner_cb)
                             if event == p.EV_BATCH else self._one(event, body, inner_cb))
        return parts

    def _one(self, event: str, data: Any, cb_id: Optional[str]) -> Received:
        self.bad_in_row = 0
        if not p.is_reserved(event):
            return Received([AppEvent(event, data, cb_id, tracing.of(data))], [])
        builtin = _SERVER_BUILTINS.get(event)
        if builtin is None:
            self.counters.add(Counter.UNKNOWN_EVENTS)
            return Received([], [error_frame(p.ERR_UNKNOWN_EVENT, f"unknown reserved event {event}",
                                             cb_id, event, self.packer)])
        return builtin(self, data, cb_id)

    def _bad_frame(self, message: str, cb_id: Optional[str]) -> Received:
        self.counters.add(Counter.BAD_FRAMES)
        self.bad_in_row += 1
        frames = [error_frame(p.ERR_BAD_FRAME, message, cb_id, None, self.packer)]
        limit = self.rules.max_bad_frames_in_row
        if self.bad_in_row > limit and not self.closing:
            self.closing = True
            self.counters.add(Counter.BAD_FRAME_CLOSES)
            return Received([CloseConnection(
                p.CLOSE_POLICY, "too many bad frames", "bad-frames",
                f"{self.bad_in_row} bad frames in a row (max_bad_frames_in_row={limit})")], frames)
        return Received([], frames)

    def _ping(self, data: Any, cb_id: Optional[str]) -> Received:
        if cb_id is not None:
            return Received([], [self.packer.encode(p.EV_REPLY, None, cb_id)])
        return Received([], [_PONG if self.packer is JSON_PACKER else self.packer.encode(p.EV_PONG)])

    def _pong(self, data: Any, cb_id: Optional[str]) -> Received:
        return _NOTHING  # life was recorded by admit()

    def _reply(self, data: Any, cb_id: Optional[str]) -> Received:
        entry = self._requests.pop(cb_id)
        if entry is None:
            self.counters.add(Counter.STRAY_REPLIES)
            return _NOTHING
        return Received([ReplyArrived(entry[0], data, None)], [])

    def _error(self, data: Any, cb_id: Optional[str]) -> Received:
        err = p.remote_error(data)
        entry = self._requests.pop(cb_id)
        if entry is None:
            self.counters.add(Counter.ERRORS_FROM_CLIENTS)
            log.info("error from %s: %s", self.conn_id, safe(err))
            return _NOTHING
        return Received([ReplyArrived(entry[0], None, err)], [])

    def _channel(self, data: Any, cb_id: Optional[str], event: str) -> Union[str, Received]:
        channel = data.get(p.K_CHANNEL) if isinstance(data, dict) else None
        problem = (p.channel_id_problem(channel, self.rules.max_channel_id_chars)
                   if isinstance(data, dict) else f"{event} data must be an object with {p.K_CHANNEL}")
        if problem:
            self.counters.add(Counter.INVALID_CHANNEL)
            return Received([], [error_frame(p.ERR_INVALID_CHANNEL, problem, cb_id, event, self.packer)])
        assert isinstance(channel, str)
        return channel

    def _subscribe(self, data: Any, cb_id: Optional[str]) -> Received:
        channel = self._channel(data, cb_id, p.EV_SUBSCRIBE)
        if isinstance(channel, Received):
            return channel
        raw = data.get(p.K_SINCE)
        since: Optional[Since] = None
        if raw is not None:
            since = parse_since(raw)
            if since is None:
                return self._bad_frame(f"{p.K_SINCE} must be {{\"offset\": integer >= 0, "
                                       f"\"epoch\": string}}", cb_id)
        token = data.get(p.K_TOKEN)
        if token is not None and not (isinstance(token, str)
                                      and 0 < len(token) <= MAX_REFRESH_TOKEN_CHARS):
            return self._bad_frame(f"{p.K_TOKEN} must be a string of 1-{MAX_REFRESH_TOKEN_CHARS} "
                                   "characters", cb_id)
        return Received([SubscribeRequest(channel, since, cb_id, token)], [])

    def _unsubscribe(self, data: Any, cb_id: Optional[str]) -> Received:
        channel = self._channel(data, cb_id, p.EV_UNSUBSCRIBE)
        if isinstance(channel, Received):
            return channel
        return Received([UnsubscribeRequest(channel, cb_id)], [])

    def _publish(self, data: Any, cb_id: Optional[str]) -> Received:
        channel = self._channel(data, cb_id, p.EV_PUBLISH)
        if isinstance(channel, Received):
            return channel
        publish_id = data.get(p.K_ID)
        if publish_id is not None and not (isinstance(publish_id, str)
                                           and 1 <= len(publish_id) <= p.MAX_PUBLISH_ID_CHARS):
            return self._bad_frame(f"{p.K_ID} must be a string of 1-{p.MAX_PUBLISH_ID_CHARS} "
                                   "characters", cb_id)
        try:
            data_json = p.encode_channel_data(data.get(p.K_DATA))
        except p.EncodeError as exc:  # every subscriber, of either packer, must be able to read it
            return self._bad_frame(f"publish data cannot reach every subscriber: {exc}", cb_id)
        return Received([PublishRequest(channel, data_json, publish_id,
                                        data.get(p.K_EXCLUDE_SENDER) is True, cb_id,
                                        tracing.of(data))], [])

    def _presence(self, data: Any, cb_id: Optional[str], event: str = p.EV_PRESENCE) -> Received:
        if p.FEATURE_PRESENCE not in self.rules.features:
            self.counters.add(Counter.UNKNOWN_EVENTS)
            return Received([], [error_frame(p.ERR_UNKNOWN_EVENT, f"unknown reserved event {event} "
                                             "(no feature presence)", cb_id, event, self.packer)])
        channel = self._channel(data, cb_id, event)
        if isinstance(channel, Received):
            return channel
        if cb_id is None:
            return self._bad_frame(f"{event} is a request (it needs a cb-id)", None)
        return Received([PresenceRequest(channel, event == p.EV_PRESENCE_STATS, cb_id)], [])

    def _presence_stats(self, data: Any, cb_id: Optional[str]) -> Received:
        return self._presence(data, cb_id, p.EV_PRESENCE_STATS)

    # -- our requests to the peer ------------------------------------------------------
    def request(self, event: str, data: Any, waiter: Waiter, now: float,
                timeout: float) -> Tuple[str, bytes]:
        """Register a request; returns its cb-id and frame. Raises
        :class:`LimitExceeded` over ``max_outstanding_requests``."""
        try:
            return self._requests.add_encoded(waiter, event, data, now + timeout,
                                              self.rules.max_outstanding_requests, self.packer)
        except LimitExceeded:
            self.counters.add(Counter.OUTSTANDING_REQUEST_LIMIT)
            raise

    def forget(self, cb_id: str) -> None:
        """Stop waiting for ``cb_id`` (its caller gave up)."""
        self._requests.pop(cb_id)

    def expire(self, now: float) -> List[Tuple[Waiter, RequestTimeout]]:
        """Requests past their deadline, removed, with the error each gets."""
        return [(w, RequestTimeout(f"no reply to {e} from {self.conn_id}")) for w, e in
                self._requests.expire(now)]

    def fail_requests(self) -> List[Tuple[Waiter, Disconnected]]:
        """Every outstanding request, removed: the connection ended."""
        return [(w, Disconnected(f"connection {self.conn_id} closed")) for w, _ in
                self._requests.drain()]

    @property
    def outstanding(self) -> int:
        return len(self._requests)

    # -- heartbeat ------------------------------------------------------------------
    def heartbeat(self, now: float, stalled_s: float = 0.0) -> Optional[str]:
        """``HEARTBEAT_TIMEOUT`` when the peer was silent past ``heartbeat_timeout_ms``
        (not counting ``stalled_s``, a stretch in which the caller itself could not
        read), else None. The caller sends pings every ``heartbeat_ms``."""
        if stalled_s:
            self.last_seen = min(now, self.last_seen + stalled_s)
        if self.closing:
            return None
        if now - self.last_seen > self.rules.heartbeat_timeout_ms / 1000.0:
            self.closing = True
            self.counters.add(Counter.HEARTBEAT_TIMEOUTS)
            return HEARTBEAT_TIMEOUT
        return None


def _history(session: ServerSession, data: Any, cb_id: Optional[str]) -> Received:
    """``["sente-lite/history", {channel-id, limit?, since?, reverse?, page?}, cb-id]``."""
    channel = session._channel(data, cb_id, p.EV_HISTORY)
    if isinstance(channel, Received):
        return channel
    if cb_id is None:
        return session._bad_frame(f"{p.EV_HISTORY} is a request (it needs a cb-id)", None)
    limit, reverse = data.get(p.K_LIMIT), data.get(p.K_REVERSE, False)
    if limit is not None and (type(limit) is not int or limit < 1):
        return session._bad_frame(f"{p.K_LIMIT} must be an integer >= 1", cb_id)
    if not isinstance(reverse, bool):
        return session._bad_frame(f"{p.K_REVERSE} must be true or false", cb_id)
    marks = []
    for key in (p.K_SINCE, p.K_PAGE):
        raw = data.get(key)
        mark = None if raw is None else parse_since(raw)
        if raw is not None and mark is None:
            return session._bad_frame(f"{key} must be {{\"offset\": integer >= 0, "
                                      f"\"epoch\": string}}", cb_id)
        marks.append(mark)
    return Received([HistoryRequest(channel, limit, marks[0], reverse, marks[1], cb_id)], [])


_PONG = _frame(p.encode(p.EV_PONG))
_SERVER_BUILTINS: Dict[str, Callable[[ServerSession, Any, Optional[str]], Received]] = {
    p.EV_PING: ServerSession._ping,
    p.EV_PONG: ServerSession._pong,
    p.EV_REPLY: ServerSession._reply,
    p.EV_ERROR: ServerSession._error,
    p.EV_SUBSCRIBE: ServerSession._subscribe,
    p.EV_UNSUBSCRIBE: ServerSession._unsubscribe,
    p.EV_PUBLISH: ServerSession._publish,
    p.EV_REFRESH: ServerSession._refresh,
    p.EV_HISTORY: _history,
    p.EV_PRESENCE: ServerSession._presence,
    p.EV_PRESENCE_STATS: ServerSession._presence_stats,
    p.EV_SUB_REFRESH: ServerSession._sub_refresh,
}



def parse_since(raw: Any) -> Optional[Since]:
    """``{"offset": N >= 0, "epoch": E}`` (a dict, or a Since) as a Since; None when malformed."""
    if isinstance(raw, Since):
        raw = raw._asdict()
    if not isinstance(raw, dict):
        return None
    offset, epoch = raw.get(p.K_OFFSET), raw.get(p.K_EPOCH)
    if type(offset) is not int or offset < 0 or not isinstance(epoch, str) or not epoch:
        return None
    return Since(offset, epoch)


def history_data(channel_id: str, limit: Optional[int], since: Any, reverse: bool,
                 page: Any) -> Dict[str, Any]:
    """The data of a client's ``sente-lite/history`` request; ValueError naming what to fix."""
    problem = p.channel_id_problem(channel_id)
    if problem:
        raise ValueError(problem)
    data: Dict[str, Any] = {p.K_CHANNEL: channel_id}
    if limit is not None:
        if type(limit) is not int or limit < 1:
            raise ValueError(f"limit must be an int >= 1, got {limit!r}")
        data[p.K_LIMIT] = limit
    if reverse:
        data[p.K_REVERSE] = True
    for key, raw in ((p.K_SINCE, since), (p.K_PAGE, page)):
        if raw is not None:
            mark = parse_since(raw)
            if mark is None:
                raise ValueError(f"{key} must be {{'offset': int >= 0, 'epoch': str}}, got {raw!r}")
            data[key] = {p.K_OFFSET: mark.offset, p.K_EPOCH: mark.epoch}
    return data


# -- client side -------------------------------------------------------------------
CONNECTING = "connecting"
CONNECTED = "connected"
RECONNECTING = "reconnecting"
CLOSED = "closed"

#: Inputs of the client's status machine.
ON_HANDSHAKE = "handshake"
ON_LOST = "lost"          # the connection dropped (or a connect attempt failed); will retry
ON_GIVE_UP = "give-up"    # lost, and no retry (refused, or auto_reconnect off)
ON_CLOSE = "close"        # close() by the application

#: The client's status transitions: (status, input) -> new status. Anything else is
#: not a transition (``closed`` is final).
TRANSITIONS: Dict[Tuple[str, str], str] = {
    (CONNECTING, ON_HANDSHAKE): CONNECTED,
    (CONNECTING, ON_LOST): RECONNECTING,
    (CONNECTING, ON_GIVE_UP): CLOSED,
    (CONNECTING, ON_CLOSE): CLOSED,
    (CONNECTED, ON_LOST): RECONNECTING,
    (CONNECTED, ON_GIVE_UP): CLOSED,
    (CONNECTED, ON_CLOSE): CLOSED,
    (RECONNECTING, ON_HANDSHAKE): CONNECTED,
    (RECONNECTING, ON_LOST): RECONNECTING,
    (RECONNECTING, ON_GIVE_UP): CLOSED,
    (RECONNECTING, ON_CLOSE): CLOSED,
}

#: A server silent this long past 2 x heartbeat is dead (PROTOCOL 5).
DEAD_SERVER_SLACK_S = 1.0


def with_traceparent(data: Any, traceparent: Optional[str]) -> Any:
    """``data`` (a map, or None) with ``traceparent`` added: a request's or event's trace
    context travels in its data map (PROTOCOL 10). ValueError when it cannot carry one."""
    if traceparent is None:
        return data
    if tracing.valid(traceparent) is None:
        raise ValueError(f"traceparent must be a W3C version-00 traceparent, got {traceparent!r}")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError("traceparent travels in the data map: data must be a dict (or None)")
    return dict(data, **{tracing.TRACEPARENT: traceparent})


def backoff_delay(attempt: int, base: float, maximum: float,
                  rng: Callable[[float, float], float] = random.uniform) -> float:
    """Full-jitter backoff before reconnect attempt ``attempt`` (PROTOCOL 8):
    random(0, min(maximum, base * 2**attempt))."""
    return rng(0.0, min(maximum, base * (2 ** min(attempt, 32))))


def upgrade_url(url: str, client_id: str, packer: str, batch: bool, csrf_token: Optional[str],
                token_given: bool) -> str:
    """The URL of one upgrade of a client (PROTOCOL 1): ``url`` with the client-id, the
    packer (when not JSON), ``batch=1``, ``bytes=1`` and the CSRF token in its query. A
    ``?token=`` already in ``url`` is kept only when no ``token`` is given (a credential
    goes in a header: :func:`upgrade_headers`; servers and proxies log URLs)."""
    parts = urlsplit(url)
    drop = {"client-id", "packer", "batch", p.K_BYTES, "csrf-token"}
    if token_given:
        drop.add("token")
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in drop]
    query.append(("client-id", client_id))
    if packer != "json":
        query.append(("packer", packer))
    if batch:
        query.append(("batch", "1"))
    query.append((p.K_BYTES, "1"))
    if csrf_token:
        query.append(("csrf-token", csrf_token))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


def upgrade_headers(headers: Dict[str, str], token: Optional[str]) -> Dict[str, str]:
    """The headers of one upgrade: ``headers``, plus ``Authorization: Bearer <token>``
    when there is a token (replacing any other Authorization)."""
    out = dict(headers)
    if token:
        for name in [k for k in out if k.lower() == "authorization"]:
            del out[name]
        out["Authorization"] = f"Bearer {token}"
    return out
#: The heartbeat assumed when the handshake gives no usable ``heartbeat-ms``.
DEFAULT_HEARTBEAT_S = 5.0


def _offset_of(value: Any) -> Optional[int]:
    """``value`` as an offset, or None when it is not an integer (JSON has one number
    type, so ``5.0`` is 5, as a JavaScript peer reads it)."""
    if type(value) is int:
        return value
    if type(value) is float and value.is_integer():
        return int(value)
    return None


def _is_number(value: Any) -> bool:
    return type(value) is int or type(value) is float
DEFAULT_MAX_UNACKED_PUBLISHES = 1000
#: Seconds before resending a publish answered ``outcome-unknown`` (doubling per answer, at
#: most the max): the server's broker link failed with it in flight (PROTOCOL 9).
UNKNOWN_RESEND_BASE_S = 0.25
UNKNOWN_RESEND_MAX_S = 5.0


class Handshake(NamedTuple):
    uid: Optional[str]
    csrf_token: Optional[str]
    info: Dict[str, Any]
    first: Optional[bool]


class Unsubscribed(NamedTuple):
    """The server ended a held subscription by itself (``sente-lite/unsubscribed`` with a
    ``reason``, e.g. ``token-expired``); it is no longer held."""

    channel_id: str
    reason: str


class ChannelMessage(NamedTuple):
    """One channel delivery as a channel handler receives it (``traceparent``: the
    publisher's, when it traced the publish)."""

    channel_id: str
    data: Any
    from_uid: Optional[str]
    offset: int
    epoch: str
    traceparent: Optional[str] = None


class Recovery(NamedTuple):
    """The server's answer to a subscribe sent with ``since`` (after every reconnect).

    ``recovered`` False means messages after ``since`` are lost for good
    (``reason``: ``epoch-changed``, ``history-expired`` or ``history-off``): the
    application should reload the channel's state. ``offset``/``epoch``: where
    live messages continue from.
    """

    channel_id: str
    recovered: bool
    reason: Optional[str]
    offset: int
    epoch: str
    since: Optional[Dict[str, Any]]


class Subscribed(NamedTuple):
    """A subscribe was answered: ``reply`` (``error`` set when refused)."""

    channel_id: str
    reply: Any
    error: Optional[RemoteError]
    recovery: Optional[Recovery]


class PublishAnswered(NamedTuple):
    """A publish with an id was answered (``waiter`` set when someone waits)."""

    waiter: Optional[Waiter]
    reply: Any
    error: Optional[RemoteError]


class PresenceChange(NamedTuple):
    """A member joined (``joined``) or left a subscribed channel (``sente-lite/join`` /
    ``sente-lite/leave``); ``member``: ``{client-id, uid, conn-id, info}``."""

    channel_id: str
    joined: bool
    member: Dict[str, Any]


def presence_body(channel_id: str) -> Dict[str, Any]:
    """The data of a client's presence request for ``channel_id`` (ValueError when invalid)."""
    problem = p.channel_id_problem(channel_id)
    if problem:
        raise ValueError(problem)
    return {p.K_CHANNEL: channel_id}


class ServerChannel(NamedTuple):
    """The server subscribed this client to ``channel_id`` (``subscribed``), or took that
    subscription back (feature ``server-subs``); ``offset``/``epoch``: where its live
    messages start (None when taken back)."""

    channel_id: str
    subscribed: bool
    offset: Optional[int]
    epoch: Optional[str]


class EventRequest(NamedTuple):
    """An application event from the server (``cb_id``: the server waits for a reply)."""

    event: str
    data: Any
    cb_id: Optional[str]


@dataclass
class _ClientSub:
    epoch: Optional[str] = None
    last_offset: int = 0
    since: Optional[Since] = None  # given by the application for the first subscribe
    server: bool = False  # the server subscribed this client to it (feature server-subs)
    awaiting: bool = False  # a subscribe with since is not answered yet


@dataclass
class _Unacked:
    publish_id: str
    frame: bytes
    waiter: Optional[Waiter]
    sent_on: int = 0  # connection number it was last written on (0: never)
    unknown: int = 0  # answers of outcome-unknown so far: resent (same id) until settled
    resend_at: float = 0.0  # when it is due again (after an outcome-unknown answer)


def _kept_for_resend(unacked: Optional[_Unacked], error: RemoteError, now: float) -> bool:
    """Keep a publish whose outcome the server could not know (``outcome-unknown``, or
    ``unavailable`` after that: still unknown) for a resend with its id, after a backoff.
    True when kept."""
    if unacked is None or not (error.code == p.ERR_OUTCOME_UNKNOWN or (
            unacked.unknown and error.code == p.ERR_UNAVAILABLE)):
        return False
    unacked.unknown += 1
    unacked.sent_on = 0
    unacked.resend_at = now + min(UNKNOWN_RESEND_MAX_S,
                                  UNKNOWN_RESEND_BASE_S * 2 ** min(unacked.unknown - 1, 16))
    return True


#: What the server says of a held channel by itself: subscribed, join/leave, server-sub/unsub.
_CHANNEL_NOTICES = frozenset({p.EV_SUBSCRIBED, p.EV_UNSUBSCRIBED, p.EV_JOIN, p.EV_LEAVE,
                              p.EV_SERVER_SUB, p.EV_SERVER_UNSUB})
_SUBSCRIBE_KIND = "subscribe"
_PUBLISH_KIND = "publish"


class _ChannelRules:
    """The channel rules of :class:`ClientSession`: the subscriptions it holds, their
    positions (offset and epoch), and what a channel message or a server's own
    ``sente-lite/subscribed`` notice does to them."""

    _subs: Dict[str, _ClientSub]
    _requests: _Requests
    _kinds: Dict[str, Tuple[str, Any]]
    packer: Packer
    bytes_on: bool
    last_recv: float

    def _count(self, key: str, n: int = 1) -> None:
        raise NotImplementedError

    def add_subscription(self, channel_id: str, since: Optional[Since] = None) -> bool:
        """Hold ``channel_id`` (True when new). ``since`` recovers from a stored position."""
        if channel_id in self._subs:
            return False
        self._subs[channel_id] = _ClientSub(since=since)
        return True

    def drop_subscription(self, channel_id: str) -> bool:
        return self._subs.pop(channel_id, None) is not None

    def subscriptions(self) -> List[str]:
        return sorted(self._subs)

    def server_subscriptions(self) -> List[str]:
        """The channels the server subscribed this client to (feature ``server-subs``)."""
        return sorted(ch for ch, sub in self._subs.items() if sub.server)

    def position(self, channel_id: str) -> Optional[Since]:
        """The last offset and epoch seen on ``channel_id`` (store it to resume later)."""
        sub = self._subs.get(channel_id)
        if sub is None or sub.epoch is None:
            return None
        return Since(sub.last_offset, sub.epoch)

    def subscribe_frame(self, channel_id: str, waiter: Waiter, now: float,
                        timeout: float, token: Optional[str] = None) -> Tuple[str, bytes]:
        """The subscribe for ``channel_id`` with ``since`` when a position is known (and
        ``token``, a subscription token, when given)."""
        sub = self._subs[channel_id]
        body: Dict[str, Any] = {p.K_CHANNEL: channel_id}
        if token is not None:
            body[p.K_TOKEN] = token
        since = Since(sub.last_offset, sub.epoch) if sub.epoch is not None else sub.since
        if since is not None:
            body[p.K_SINCE] = {p.K_OFFSET: since.offset, p.K_EPOCH: since.epoch}
        cb_id, frame = self._requests.add_encoded(waiter, p.EV_SUBSCRIBE, body, now + timeout,
                                                  packer=self.packer)
        self._kinds[cb_id] = (_SUBSCRIBE_KIND, (channel_id, since))
        sub.awaiting = since is not None
        return cb_id, frame

    def _server_channel(self, data: Any, subscribed: bool) -> Received:
        """``sente-lite/server-sub`` / ``server-unsub``: the server subscribed this client
        to a channel (held from then on like its own, re-subscribed with ``since`` after a
        reconnect), or took it back."""
        channel_id = data.get(p.K_CHANNEL) if isinstance(data, dict) else None
        if not isinstance(channel_id, str):
            self._count("bad_frames_from_server")
            return _NOTHING
        if not subscribed:
            self._subs.pop(channel_id, None)
            return Received([ServerChannel(channel_id, False, None, None)], [])
        top, epoch = _offset_of(data.get(p.K_OFFSET)), data.get(p.K_EPOCH)
        sub = self._subs.get(channel_id)
        if sub is None:  # new: live messages follow top (a held one keeps its position)
            sub = self._subs[channel_id] = _ClientSub()
            if top is not None and isinstance(epoch, str):
                sub.epoch, sub.last_offset = epoch, top
        sub.server = True
        return Received([ServerChannel(channel_id, True, top, epoch if isinstance(epoch, str)
                                       else None)], [])

    def _unsubscribed_notice(self, data: Any) -> Received:
        """A ``sente-lite/unsubscribed`` the server sent by itself with a ``reason``: the
        subscription is dropped (not renewed at the next handshake)."""
        channel_id = data.get(p.K_CHANNEL) if isinstance(data, dict) else None
        reason = data.get(p.K_REASON) if isinstance(data, dict) else None
        if not isinstance(channel_id, str) or not isinstance(reason, str) or not (
                self.drop_subscription(channel_id)):
            return _NOTHING
        return Received([Unsubscribed(channel_id, reason)], [])

    def _subscribed_notice(self, data: Any) -> Received:
        """A ``sente-lite/subscribed`` the server sent by itself with ``recovered``: its
        broker lost messages of a held channel (``recovered: false``; PROTOCOL 9).
        Live messages continue after ``offset`` in ``epoch``."""
        if not isinstance(data, dict) or not isinstance(data.get(p.K_RECOVERED), bool):
            return _NOTHING
        channel_id = data.get(p.K_CHANNEL)
        sub = self._subs.get(channel_id) if isinstance(channel_id, str) else None
        top, epoch = _offset_of(data.get(p.K_OFFSET)), data.get(p.K_EPOCH)
        if sub is None or top is None or not isinstance(epoch, str):
            return _NOTHING
        assert isinstance(channel_id, str)
        since = ({p.K_OFFSET: sub.last_offset, p.K_EPOCH: sub.epoch} if sub.epoch is not None
                 else None)
        recovered = data[p.K_RECOVERED]
        recovery = Recovery(channel_id, recovered, data.get(p.K_REASON), top, epoch, since)
        if not recovered:
            self._count("recovery_failures")
            sub.epoch, sub.last_offset = epoch, top
        return Received([Subscribed(channel_id, data, None, recovery)], [])

    def _notice(self, event: str, data: Any) -> Received:
        """A frame the server sends about a held channel: ``subscribed``, ``unsubscribed``
        (sent by the server itself, it ends the subscription), server-sub/-unsub, join or leave."""
        if event == p.EV_SUBSCRIBED:
            return self._subscribed_notice(data)
        if event == p.EV_UNSUBSCRIBED:
            return self._unsubscribed_notice(data)
        if event == p.EV_SERVER_SUB or event == p.EV_SERVER_UNSUB:
            return self._server_channel(data, event == p.EV_SERVER_SUB)
        return self._presence_change(event, data)

    def _presence_change(self, event: str, data: Any) -> Received:
        """A ``sente-lite/join`` / ``sente-lite/leave``: its data must be {channel-id: str,
        member: {conn-id: str, ...}}; dropped (counted) for a channel not held."""
        channel_id = data.get(p.K_CHANNEL) if isinstance(data, dict) else None
        member = data.get(p.K_MEMBER) if isinstance(data, dict) else None
        if not isinstance(channel_id, str) or not isinstance(member, dict) or not isinstance(
                member.get(p.K_CONN_ID), str):
            self._count("bad_frames_from_server")
            log.warning("malformed %s: %s", event, safe(repr(data)))
            return _NOTHING
        if channel_id not in self._subs:
            self._count("unsubscribed_channel_msgs")
            return _NOTHING
        return Received([PresenceChange(channel_id, event == p.EV_JOIN, member)], [])

    def channel_message(self, text: Union[str, bytes], now: float, binary: bool) -> Any:
        """:meth:`receive` of the frame most of what a client reads is, the short way: for
        a JSON channel message its :class:`ChannelMessage` when taken, None when dropped
        (counted as :meth:`receive` counts it); :data:`NOT_CHANNEL_MSG` for any other
        frame, which then goes to :meth:`receive`."""
        if (binary or type(text) is not bytes or self.packer is not JSON_PACKER
                or not text.startswith(_CHANNEL_MSG_HEAD)):
            return NOT_CHANNEL_MSG
        try:
            value = p.decode_value(text, self.bytes_on)
        except p.FrameError:
            return NOT_CHANNEL_MSG  # receive() counts and logs it
        if type(value) is not list or len(value) != 2:
            return NOT_CHANNEL_MSG
        self.last_recv = now
        return self._channel_event(value[1])

    def _channel_msg(self, data: Any) -> Received:
        """A delivery: its data must be {channel-id: str, offset: int, epoch: str, ...}."""
        msg = self._channel_event(data)
        return _NOTHING if msg is None else Received([msg], [])

    def _channel_event(self, data: Any) -> Optional[ChannelMessage]:
        """The :class:`ChannelMessage` a delivery's ``data`` stands for when this client
        takes it, else None (malformed, unsubscribed, held for a replay or a duplicate:
        counted)."""
        # the most frequent frame of all: each field read once, the common case first
        offset = channel = epoch = None
        if isinstance(data, dict):
            offset = data.get(p.K_OFFSET)
            if type(offset) is not int:
                offset = _offset_of(offset)
            channel, epoch = data.get(p.K_CHANNEL), data.get(p.K_EPOCH)
        if offset is None or not isinstance(channel, str) or not isinstance(epoch, str):
            self._count("bad_frames_from_server")
            log.warning("malformed channel message: %s", safe(repr(data)))
            return None
        sub = self._subs.get(channel)
        if sub is None:
            self._count("unsubscribed_channel_msgs")
            return None
        if sub.awaiting and sub.server:
            # the server held it for us at connect and replays from our since once it
            # answers: taking these now would skip the replay's older messages
            return None
        if sub.epoch == epoch:
            if offset <= sub.last_offset:
                self._count("duplicate_channel_msgs")
                return None
            if offset > sub.last_offset + 1:
                self._count("channel_gaps", offset - sub.last_offset - 1)
        sub.epoch = epoch
        sub.last_offset = offset
        counts = self.counts
        counts["channel_msgs"] = counts.get("channel_msgs", 0) + 1
        trace = data.get(tracing.TRACEPARENT)
        # tuple.__new__ directly: a NamedTuple's own __new__ is one more Python call
        return _new_tuple(ChannelMessage, (channel, data.get(p.K_DATA), data.get(p.K_FROM),
                                           offset, epoch,
                                           None if trace is None else tracing.valid(trace)))


@dataclass
class ClientSession(_ChannelRules):
    """The protocol state of a client across its connections."""

    client_id: str
    max_unacked_publishes: int = DEFAULT_MAX_UNACKED_PUBLISHES
    status: str = CONNECTING
    heartbeat_s: float = DEFAULT_HEARTBEAT_S
    last_recv: float = 0.0
    connection: int = 0  # number of the current connection (1, 2, ...); 0 before any
    handshake_info: Optional[Handshake] = None
    counts: Dict[str, int] = field(default_factory=dict)
    packer: Packer = JSON_PACKER
    bytes_on: bool = False  # the last handshake said "bytes": true (tagged forms read as bytes)

    def __post_init__(self) -> None:
        self._subs: Dict[str, _ClientSub] = {}
        self._requests = _Requests("c")
        self._kinds: Dict[str, Tuple[str, Any]] = {}  # cb-id -> (kind, detail) for our own requests
        self._unacked: Dict[str, _Unacked] = {}       # cb-id -> publish awaiting its ack
        self._publish_seq = itertools.count(1)
        # ids no other client can guess (they deduplicate per publisher anyway: PROTOCOL 9)
        self._publish_prefix = secrets.token_urlsafe(12)
        self._sent: set = set()                        # cb-ids of requests written on this connection

    def _count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    # -- status ----------------------------------------------------------------------
    def transition(self, on: str) -> Optional[str]:
        """Apply input ``on``; the new status, or None when nothing changes."""
        new = TRANSITIONS.get((self.status, on))
        if new is None or new == self.status:
            return None
        self.status = new
        return new

    def connection_opened(self, now: float) -> None:
        """A socket opened (the handshake is still to come)."""
        self.connection += 1
        self.last_recv = now

    def connection_lost(self) -> List[Tuple[Waiter, BaseException]]:
        """The socket ended: requests written on it fail (their effect is unknown);
        subscribes are redone and publishes resent at the next handshake. Returns
        the waiters to fail."""
        return self.fail_sent_requests()

    def dead(self, now: float) -> bool:
        """True when the server has been silent past 2 x heartbeat + slack."""
        return now - self.last_recv > 2 * self.heartbeat_s + DEAD_SERVER_SLACK_S

    # -- requests and publishes ---------------------------------------------------------
    def request(self, event: str, data: Any, waiter: Waiter, now: float,
                timeout: float) -> Tuple[str, bytes]:
        """Register a request; returns its cb-id and frame."""
        return self._requests.add_encoded(waiter, event, data, now + timeout, packer=self.packer)

    def forget(self, cb_id: str) -> None:
        """Stop waiting for ``cb_id`` (its caller gave up). A publish stays in the
        outbox: it is resent until acknowledged."""
        if cb_id in self._unacked:
            self._unacked[cb_id].waiter = None
            return
        self._requests.pop(cb_id)
        self._kinds.pop(cb_id, None)
        self._sent.discard(cb_id)

    def pending(self, cb_id: str) -> bool:
        """True while ``cb_id`` awaits its answer."""
        return self._requests.has(cb_id)

    def publish(self, channel_id: str, data: Any, exclude_sender: bool, waiter: Optional[Waiter],
                now: float, traceparent: Optional[str] = None) -> Tuple[str, bytes]:
        """A publish with a fresh id, kept until acknowledged (and resent after a
        reconnect). Raises :class:`LimitExceeded` past ``max_unacked_publishes``."""
        if len(self._unacked) >= self.max_unacked_publishes:
            self._count("unacked_publish_overflows")
            raise LimitExceeded(f"{len(self._unacked)} publishes already await their ack "
                                f"(max_unacked_publishes={self.max_unacked_publishes})")
        publish_id = f"{self._publish_prefix}:{next(self._publish_seq)}"
        body = {p.K_CHANNEL: channel_id, p.K_DATA: data, p.K_ID: publish_id}
        if exclude_sender:
            body[p.K_EXCLUDE_SENDER] = True
        if traceparent is not None:
            body[tracing.TRACEPARENT] = traceparent
        cb_id, frame = self._requests.add_encoded(waiter, p.EV_PUBLISH, body, float("inf"),
                                                  packer=self.packer)
        self._kinds[cb_id] = (_PUBLISH_KIND, publish_id)
        self._unacked[cb_id] = _Unacked(publish_id, frame, waiter)
        return cb_id, frame

    def mark_sent(self, cb_id: str) -> None:
        """The request ``cb_id`` was written on the current connection."""
        entry = self._unacked.get(cb_id)
        if entry is not None:
            entry.sent_on = self.connection
        else:
            self._sent.add(cb_id)

    def is_publish(self, cb_id: str) -> bool:
        """True when ``cb_id`` is a publish kept in the outbox until acknowledged."""
        return cb_id in self._unacked

    def unacked(self) -> int:
        return len(self._unacked)

    def expire(self, now: float) -> List[Tuple[Waiter, RequestTimeout]]:
        """Requests past their deadline, removed (publishes never expire: they are
        resent until acknowledged)."""
        out = [(w, RequestTimeout(f"no reply to {e}")) for w, e in self._requests.expire(now)]
        for cb_id in [cb for cb in self._kinds if not self._requests.has(cb)]:
            self._kinds.pop(cb_id, None)
        self._sent = {cb for cb in self._sent if self._requests.has(cb)}
        return out

    def fail_sent_requests(self) -> List[Tuple[Waiter, Disconnected]]:
        """The connection dropped: plain requests fail (their effect is unknown);
        subscribes are redone and publishes resent at the next handshake."""
        sent, self._sent = list(self._sent), set()
        for cb_id in sent:
            self._kinds.pop(cb_id, None)
        return [(w, Disconnected("connection lost with the request outstanding"))
                for w, _ in self._requests.remove(sent) if w is not None]

    def fail_all(self, exc: BaseException) -> List[Tuple[Waiter, BaseException]]:
        """The client is closing: every waiter fails with ``exc``."""
        self._kinds.clear()
        self._unacked.clear()
        self._sent.clear()
        return [(w, exc) for w, _ in self._requests.drain() if w is not None]

    # -- answers to the server's requests -------------------------------------------------
    def reply(self, event: str, cb_id: str, result: Any) -> bytes:
        """The reply to the server's request ``cb_id`` whose handler returned ``result``
        (a ``handler-error`` frame, counted, when it cannot be encoded)."""
        frame, ok = reply_frame(event, result, cb_id, self.packer, self._requests.max_bytes)
        if not ok:
            self._count("handler_errors")
        return frame

    def handler_failed(self, event: str, cb_id: Optional[str], exc: BaseException) -> List[bytes]:
        """A handler raised: counted; a ``handler-error`` reply (naming the exception's
        type, never its text) when the server asked."""
        self._count("handler_errors")
        return handler_error_frames(event, cb_id, exc, self.packer)

    def no_handler(self, event: str, cb_id: Optional[str]) -> List[bytes]:
        """An event the application does not handle: ``no-handler`` to a request, else counted."""
        if cb_id is None:
            self._count("unhandled_events")
        return no_handler_frames(event, cb_id, self.packer)

    # -- inbound -----------------------------------------------------------------------
    def receive(self, text: Union[str, bytes], now: float, binary: Optional[bool] = None) -> Received:
        """Decode one frame from the server (``binary``: it came in a binary message) and
        apply the protocol's rules."""
        self.last_recv = now
        try:
            event, data, cb_id = _from_server(self.packer, text, binary, self.bytes_on)
        except p.FrameError as exc:
            self._count("bad_frames_from_server")
            log.warning("bad frame from server: %s", safe(exc.message))
            return _NOTHING
        if event == p.EV_BATCH:
            return self._batch(data)
        return self._one(event, data, cb_id)

    def _batch(self, data: Any) -> Received:
        """A ``chsk/batch`` frame: each frame in it, in order."""
        if not isinstance(data, list):
            self._count("bad_frames_from_server")
            return _NOTHING
        self._count("batches_in")
        events: List[Any] = []
        frames: List[bytes] = []
        for value in data:
            try:
                event, body, cb_id = p.frame_of(value)
            except p.FrameError as exc:
                self._count("bad_frames_from_server")
                log.warning("bad frame in a batch from server: %s", safe(exc.message))
                continue
            if event == p.EV_BATCH:
                self._count("bad_frames_from_server")
                continue
            out = self._one(event, body, cb_id)
            events.extend(out.events)
            frames.extend(out.frames)
        return Received(events, frames)

    def _one(self, event: str, data: Any, cb_id: Optional[str]) -> Received:
        if event == p.EV_CHANNEL_MSG:  # by far the most frequent: tested first
            return self._channel_msg(data)
        if event == p.EV_PING:
            if cb_id is not None:  # a request: exactly one reply, with its cb-id
                return Received([], [self.packer.encode(p.EV_REPLY, None, cb_id)])
            return Received([], [_PONG if self.packer is JSON_PACKER else self.packer.encode(p.EV_PONG)])
        if event in _CHANNEL_NOTICES:
            return self._notice(event, data)
        if event == p.EV_PONG:
            return _NOTHING
        if event in (p.EV_REPLY, p.EV_ERROR):
            return self._answer(event, data, cb_id)
        if event == p.EV_HANDSHAKE:
            return self._handshake(data)
        if p.is_reserved(event):  # a reserved event this client does not know
            if cb_id is None:
                self._count("unhandled_events")
                return _NOTHING
            return Received([], [error_frame(p.ERR_UNKNOWN_EVENT, f"unknown reserved event {event}",
                                             cb_id, None, self.packer)])
        return Received([EventRequest(event, data, cb_id)], [])

    def _handshake(self, data: Any) -> Received:
        try:
            uid, csrf, info, first = data
            info = dict(info)
        except (TypeError, ValueError):
            self._count("bad_frames_from_server")
            log.error("malformed handshake from server: %s", safe(repr(data)))
            return _NOTHING
        heartbeat_ms = info.get("heartbeat-ms")
        self.heartbeat_s = (heartbeat_ms / 1000.0 if _is_number(heartbeat_ms) and heartbeat_ms > 0
                            else DEFAULT_HEARTBEAT_S)
        self.handshake_info = Handshake(uid, csrf, info, first)
        self.bytes_on = info.get(p.K_BYTES) is True
        self._requests.max_bytes = message_limit(self.handshake_info)
        self._count("handshakes")
        events: List[Any] = [self.handshake_info]
        status = self.transition(ON_HANDSHAKE)
        if status is not None:
            events.append(status)
        return Received(events, [])

    def resend_unacked(self) -> List[Tuple[str, bytes]]:
        """Publishes not yet acknowledged and not written on this connection, in order."""
        return [(cb, u.frame) for cb, u in self._unacked.items() if u.sent_on != self.connection]

    def due_resends(self, now: float) -> List[Tuple[str, bytes]]:
        """Publishes answered ``outcome-unknown`` whose resend is due (same id, same
        cb-id), in order; each is then waited for again."""
        due = [(cb, u.frame) for cb, u in self._unacked.items()
               if u.unknown and u.sent_on == 0 and u.resend_at <= now]
        for cb, _ in due:
            self._unacked[cb].sent_on = -1  # handed to the writer (mark_sent sets the connection)
        return due

    def _answer(self, event: str, data: Any, cb_id: Optional[str]) -> Received:
        error = p.remote_error(data) if event == p.EV_ERROR else None
        if cb_id is None:
            if error is not None:
                self._count("errors_from_server")
                log.warning("error from server: %s", safe(repr(data)))
            return _NOTHING
        entry = self._requests.pop(cb_id)
        kind = self._kinds.pop(cb_id, None)
        if entry is None:
            self._count("stray_replies")
            return _NOTHING
        waiter = entry[0]
        if kind is None:
            return Received([ReplyArrived(waiter, data, error)], [])
        if kind[0] == _PUBLISH_KIND:
            if error is not None and _kept_for_resend(self._unacked.get(cb_id), error,
                                                      self.last_recv):
                self._requests.put(cb_id, entry)  # the caller keeps waiting
                self._kinds[cb_id] = kind
                if error.code == p.ERR_OUTCOME_UNKNOWN:
                    self._count("publish_outcome_unknown")
                return _NOTHING
            self._unacked.pop(cb_id, None)
            if error is not None:
                self._count("publish_errors")
                if waiter is None:
                    log.warning("publish %s refused: %s", kind[1], safe(error))
            elif isinstance(data, dict) and data.get(p.K_DUPLICATE):
                self._count("duplicate_publish_acks")
            return Received([PublishAnswered(waiter, data, error)], [])
        channel_id, since = kind[1]
        sub = self._subs.get(channel_id)
        recovery: Optional[Recovery] = None
        if error is None and sub is not None and isinstance(data, dict):
            top, epoch = data.get(p.K_OFFSET), data.get(p.K_EPOCH)
            top = _offset_of(top) or 0  # a malformed offset: count from 0
            recovered = data.get(p.K_RECOVERED)
            if since is not None and isinstance(recovered, bool):
                recovery = Recovery(channel_id, recovered, data.get(p.K_REASON),
                                    top, str(epoch),
                                    {p.K_OFFSET: since.offset, p.K_EPOCH: since.epoch})
                if not recovered:
                    self._count("recovery_failures")
            if recovered is not True and (sub.epoch != epoch or recovered is False):
                # a fresh start (no since, or nothing recovered): live messages follow TOP
                sub.epoch = epoch if isinstance(epoch, str) else None
                sub.last_offset = top
            sub.since, sub.awaiting = None, False
        elif error is not None and sub is not None:
            self._subs.pop(channel_id, None)
        return Received([Subscribed(channel_id, data, error, recovery),
                         ReplyArrived(waiter, data, error)], [])


class ServerChannelsMixin:
    """The part of :class:`sente_lite.Client` and :class:`sente_lite.aio.AsyncClient` for the
    channels the server subscribes them to (feature ``server-subs``): ``on_server_channel``,
    ``server_subscriptions``, and what the reader does with a :class:`ServerChannel`."""

    _subs: Dict[str, object]
    _session: "ClientSession"

    @property
    def _server_handlers(self) -> List[Callable[[ChannelMessage], Any]]:
        return self.__dict__.setdefault("_on_server_channel", [])  # type: ignore[no-any-return]

    def on_server_channel(self, fn: Callable[[ChannelMessage], Any]) -> Callable[[ChannelMessage], Any]:
        """Call ``fn(msg)`` for each message of every channel the server subscribes this
        client to (``srv.subscribe``, or at connect), where channel handlers run; handlers
        given to ``subscribe`` for such a channel run too."""
        self._server_handlers.append(fn)
        for channel_id in self.server_subscriptions():
            handlers = self._subs[channel_id].handlers  # type: ignore[attr-defined]
            if fn not in handlers:
                handlers.append(fn)
        return fn

    def server_subscriptions(self) -> List[str]:
        """The channels the server subscribed this client to (among :meth:`subscriptions`;
        renewed with ``since`` after a reconnect like the client's own)."""
        return self._session.server_subscriptions()

    def _server_channel(self, ev: ServerChannel, make_sub: Callable[[], object]) -> None:
        """The server subscribed this client to a channel, or took it back (reader side)."""
        if not ev.subscribed:
            self._subs.pop(ev.channel_id, None)
            return
        if ev.channel_id not in self._subs:
            sub = make_sub()
            sub.handlers.extend(self._server_handlers)  # type: ignore[attr-defined]
            sub.acked.set()  # type: ignore[attr-defined]  # a later subscribe() has its answer
            self._subs[ev.channel_id] = sub


__all__ = ["ServerSession", "ServerRules", "ClientSession", "AppEvent", "SubscribeRequest",
           "UnsubscribeRequest", "PublishRequest", "RefreshRequest", "HistoryRequest", "PresenceRequest",
           "PresenceChange", "ReplyArrived", "CloseConnection", "Received",
           "Handshake", "ChannelMessage", "Recovery", "Subscribed", "ServerChannel", "ServerChannelsMixin",
           "EventRequest", "TRANSITIONS",
           "SubRefreshRequest", "Unsubscribed",
           "CONNECTING", "CONNECTED", "RECONNECTING", "CLOSED", "parse_since", "history_data", "error_frame",
           "HEARTBEAT_TIMEOUT", "HEARTBEAT_PING", "reply_frame", "check_frame_size",
           "message_limit", "backoff_delay", "upgrade_url", "upgrade_headers", "with_traceparent"]

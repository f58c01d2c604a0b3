"""Wire protocol v1: frames <-> events, validation, names. No I/O.

A frame is one WebSocket text message holding a JSON array
``[event-id, data?, cb-id?]`` (see ``docs/protocol.md``). This module turns
text into :class:`Frame` objects and back, and names every protocol string once.
Bytes (``bytes``, ``bytearray``, ``memoryview``) are written in JSON's tagged form
``{"$bytes": "<base64>"}`` and read back as ``bytes`` (section 10).
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import re
from array import array
from itertools import accumulate
from typing import Any, Dict, NamedTuple, Optional, Union

from ..errors import EncodeError, FrameError, RemoteError

PROTOCOL_VERSION = 1

# Reserved namespaces.
NS_CHSK = "chsk"
NS_SENTE = "sente-lite"
RESERVED_NAMESPACES = frozenset({NS_CHSK, NS_SENTE})
#: First bytes of every frame of a ``sente-lite/*`` event as :func:`encode` writes it
#: (compact JSON). The server handles such frames on its network thread when it can.
SENTE_FRAME_PREFIX = f'["{NS_SENTE}/'.encode("ascii")

# Reserved events.
EV_HANDSHAKE = "chsk/handshake"
EV_PING = "chsk/ws-ping"
EV_PONG = "chsk/ws-pong"
EV_REPLY = "chsk/reply"
EV_ERROR = "chsk/error"
EV_SUBSCRIBE = "sente-lite/subscribe"
EV_SUBSCRIBED = "sente-lite/subscribed"
EV_UNSUBSCRIBE = "sente-lite/unsubscribe"
EV_UNSUBSCRIBED = "sente-lite/unsubscribed"
EV_PUBLISH = "sente-lite/publish"
EV_CHANNEL_MSG = "sente-lite/channel-msg"
EV_BATCH = "chsk/batch"
#: A client presents a fresh connection token over the open socket (feature ``refresh``).
EV_REFRESH = "chsk/refresh"
#: A client reads a page of a channel's history (feature ``history-api``).
EV_HISTORY = "sente-lite/history"
#: The server subscribed this connection to a channel / took that subscription back
#: (feature ``server-subs``).
EV_SERVER_SUB = "sente-lite/server-sub"
EV_SERVER_UNSUB = "sente-lite/server-unsub"
#: Presence of a channel (feature ``presence``): a request, answered ``{members: [...]}``.
EV_PRESENCE = "sente-lite/presence"
#: Presence counts of a channel: a request, answered ``{members: N, users: M}``.
EV_PRESENCE_STATS = "sente-lite/presence-stats"
#: A connection joined / left a channel whose namespace has ``join_leave`` (to its subscribers).
EV_JOIN = "sente-lite/join"
EV_LEAVE = "sente-lite/leave"
#: A client presents a fresh subscription token for one channel (feature ``sub-token``).
EV_SUB_REFRESH = "sente-lite/sub-refresh"

# Error codes (section 4).
ERR_BAD_FRAME = "bad-frame"
ERR_UNKNOWN_EVENT = "unknown-event"
ERR_INVALID_CHANNEL = "invalid-channel"
ERR_FORBIDDEN = "forbidden"
ERR_LIMIT_EXCEEDED = "limit-exceeded"
ERR_TOO_LARGE = "too-large"
ERR_RATE_LIMITED = "rate-limited"
ERR_NO_HANDLER = "no-handler"
ERR_HANDLER_ERROR = "handler-error"
#: The channel's namespace (before its first ``:``) is not one the server serves.
ERR_UNKNOWN_NAMESPACE = "unknown-namespace"
#: The server's channel broker is unreachable: the publish was not made (retry later).
ERR_UNAVAILABLE = "unavailable"
#: The broker's link failed while the publish was in flight: it may have been published.
#: Resend it with the same id once the broker is back (the id makes it count once).
ERR_OUTCOME_UNKNOWN = "outcome-unknown"
#: The broker refused this one operation (e.g. a Redis key of the wrong type): not made.
ERR_BROKER_ERROR = "broker-error"
#: A ``chsk/refresh`` whose token does not pass (expired, bad signature, ...).
ERR_INVALID_TOKEN = "invalid-token"
#: A ``sente-lite/sub-refresh`` for a channel the connection is not subscribed to.
ERR_NOT_SUBSCRIBED = "not-subscribed"
ERR_TIMEOUT = "timeout"
ERR_DISCONNECTED = "disconnected"

# Close codes (section 7).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_HEARTBEAT_TIMEOUT = 4000
CLOSE_SLOW_CONSUMER = 4001
#: The connection's token expired (``exp`` + leeway) and no valid ``chsk/refresh`` came.
CLOSE_TOKEN_EXPIRED = 4002

# Field names.
K_CHANNEL = "channel-id"
K_DATA = "data"
K_OFFSET = "offset"
K_EPOCH = "epoch"
K_FROM = "from"
K_EXCLUDE_SENDER = "exclude-sender?"
K_DELIVERED = "delivered"
K_CODE = "code"
K_MESSAGE = "message"
K_EVENT = "event"
K_SINCE = "since"
K_RECOVERED = "recovered"
K_REASON = "reason"
K_ID = "id"
K_DUPLICATE = "duplicate"
K_FEATURES = "features"
K_PACKER = "packer"
K_BATCH = "batch"
K_TOKEN = "token"
#: The handshake's info: when the connection's token expires (seconds since the epoch).
K_TOKEN_EXP = "token-exp"
K_EXP = "exp"
#: Presence (feature ``presence``): a member is {client-id, uid, conn-id, info}.
K_MEMBERS = "members"
K_MEMBER = "member"
K_USERS = "users"
K_CLIENT_ID = "client-id"
K_UID = "uid"
K_CONN_ID = "conn-id"
K_INFO = "info"

#: What this implementation adds to version 1 (the handshake's ``features``).
FEATURE_HISTORY = "history"
FEATURE_PUBLISH_ID = "publish-id"
#: The server reads ``chsk/batch`` frames from clients (and sends them when asked: batch=1).
FEATURE_BATCH = "batch"
#: Bytes travel as bytes (PROTOCOL 10): MessagePack ``bin``, JSON's tagged form. A client
#: asks with ``bytes=1`` in the upgrade's query; the handshake's info then says ``"bytes": true``.
FEATURE_BYTES = "bytes"
K_BYTES = "bytes"
#: The only key of JSON's tagged form of bytes: ``{"$bytes": "<standard base64>"}``.
BYTES_TAG = "$bytes"
#: The server answers ``sente-lite-console/nrepl`` events (to the uids in its ``console_users``).
FEATURE_CONSOLE = "console"
#: The server has channel namespaces (``Server(namespaces=...)``): a channel of a namespace
#: it does not serve is refused ``unknown-namespace``; each namespace says who may
#: subscribe and publish (refusals are ``forbidden``).
FEATURE_NAMESPACES = "namespaces"
#: The server checks JWT connection tokens, closes a connection whose token expired (4002)
#: and reads ``chsk/refresh`` frames (docs/protocol.md section 12).
FEATURE_REFRESH = "refresh"
#: The server answers ``sente-lite/history`` requests: paged reads of a channel's history.
FEATURE_HISTORY_API = "history-api"
#: The server may subscribe a connection itself (``sente-lite/server-sub``/``server-unsub``).
FEATURE_SERVER_SUBS = "server-subs"
K_LIMIT = "limit"
K_REVERSE = "reverse"
K_PAGE = "page"
K_NEXT = "next"
K_PUBLICATIONS = "publications"
#: The server answers ``sente-lite/presence`` and ``sente-lite/presence-stats`` requests and
#: sends ``sente-lite/join`` / ``sente-lite/leave`` events, per namespace (section 15).
FEATURE_PRESENCE = "presence"
#: A channel may require a subscription token (JWT with ``channel``) in the subscribe,
#: refreshed with ``sente-lite/sub-refresh``; one that expires ends that subscription
#: with ``sente-lite/unsubscribed`` and ``reason: "token-expired"`` (section 16).
FEATURE_SUB_TOKEN = "sub-token"
#: The ``reason`` of a ``sente-lite/unsubscribed`` notice for an expired subscription token.
REASON_TOKEN_EXPIRED = "token-expired"
#: Longest connection token read, at the upgrade or in a ``chsk/refresh`` (section 12).
MAX_TOKEN_CHARS = 8192
#: Longest publish id (PROTOCOL 9).
MAX_PUBLISH_ID_CHARS = 128

MAX_CB_ID_CHARS = 64
MAX_CHANNEL_ID_CHARS = 256
#: Deepest nesting of arrays and objects in a frame, its own outer array included
#: (``[]`` is 1 deep, ``["a/b", {"k": [1]}]`` 3). Checked on the frame's text before
#: it is decoded (a deeper frame is ``bad-frame``) and after every encode (deeper data
#: raises :class:`EncodeError`), on servers and clients alike, so whether a frame is
#: accepted never depends on the Python stack of the thread that reads it, and a frame
#: one side accepts the other side can read. Well below the interpreter's recursion
#: limit (1000) and orjson's own limit (1024).
MAX_JSON_DEPTH = 100
#: Deepest ``data`` of a publish: a channel message's frame and body take two levels.
MAX_CHANNEL_DATA_DEPTH = MAX_JSON_DEPTH - 2

_EVENT_ID_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}/[A-Za-z0-9_.\-]{1,64}")
_CONTROL_CHARS_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Surrogate code points cannot be encoded as UTF-8, so no text frame can carry them.
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE_RE = re.compile(r"\\u[dD][89a-fA-F]")


class FrameKind(enum.IntEnum):
    """What handling a server-bound frame may involve, least to most. A server face
    picks the thread from it: an ``ANSWER`` settles one of the server's own requests
    (a handler may be waiting in ``request()`` for it), a ``BUILTIN`` (``chsk/*``) and
    a ``CHANNEL`` operation (``sente-lite/*``) run no application code unless the
    server has an ``authorize`` hook (which channel operations call), an ``APP`` event
    runs its handler. A ``BATCH`` holds frames, each of its own kind. Told from a
    frame's first bytes by its packer (:meth:`sente_lite.wire.packers.Packer.frame_kind`)
    and carried by every event a server session gives (``kind``)."""

    ANSWER = 0
    BUILTIN = 1
    CHANNEL = 2
    APP = 3
    BATCH = 4


#: Events that answer the server's own requests (:attr:`FrameKind.ANSWER`).
ANSWER_EVENTS = (EV_REPLY, EV_ERROR, EV_PONG)


class Frame(NamedTuple):
    """One decoded frame. ``cb_id`` is set when the frame is a request."""

    event: str
    data: Any = None
    cb_id: Optional[str] = None


def is_valid_event_id(event_id: object) -> bool:
    """True when ``event_id`` is a string ``namespace/name`` as section 2 requires."""
    return isinstance(event_id, str) and _EVENT_ID_RE.fullmatch(event_id) is not None


def is_reserved(event_id: str) -> bool:
    """True when ``event_id`` lies in a namespace reserved for the protocol."""
    return event_id.split("/", 1)[0] in RESERVED_NAMESPACES


def is_valid_cb_id(cb_id: object) -> bool:
    """True when ``cb_id`` is a string of 1-64 characters."""
    return isinstance(cb_id, str) and 0 < len(cb_id) <= MAX_CB_ID_CHARS


def channel_id_problem(channel_id: object, max_chars: int = MAX_CHANNEL_ID_CHARS) -> Optional[str]:
    """Why ``channel_id`` is not a valid channel id, or None when it is."""
    if not isinstance(channel_id, str):
        return f"channel-id must be a string, got {type(channel_id).__name__}"
    if not channel_id:
        return "channel-id must not be empty"
    if len(channel_id) > max_chars:
        return f"channel-id is {len(channel_id)} chars, the limit is {max_chars}"
    if _CONTROL_CHARS_RE.search(channel_id):
        return "channel-id must not contain control characters"
    return None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value - value != 0.0:  # 1e400 is JSON grammar but no finite double: it could not be sent on
        raise ValueError(f"number {text[:40]} is out of range")
    return value


# -- nesting depth -------------------------------------------------------------------
#: ``bytes.translate``: "[" and "{" -> +1, "]" and "}" -> -1 (as signed bytes), the rest deleted.
_DEPTH_STEP = bytes(1 if b in (0x5B, 0x7B) else 0xFF if b in (0x5D, 0x7D) else 0 for b in range(256))
_NOT_BRACKET = bytes(b for b in range(256) if b not in (0x5B, 0x5D, 0x7B, 0x7D))
#: ``bytes.translate`` table: ASCII digit -> "0", "[" and "{" -> "[", "]" and "}" -> "]",
#: the double quote and the backslash kept, anything else -> " ". One C pass over a frame
#: then answers the fast parser's questions (19 digits in a row, more brackets than
#: MAX_JSON_DEPTH; a ``\d{19}`` regex search alone costs about 5 us on a 200-byte frame)
#: and leaves, without its spaces and digits, what the depth of the frame depends on.
_SHAPE_TABLE = bytes(0x30 if 0x30 <= b <= 0x39 else 0x5B if b in (0x5B, 0x7B)
                     else 0x5D if b in (0x5D, 0x7D) else b if b in (0x22, 0x5C) else 0x20
                     for b in range(256))
#: ``bytes.translate`` table of the depth: "[" -> +1, "]" -> -1 (as a signed byte).
_SHAPE_STEP = bytes(1 if b == 0x5B else 0xFF if b == 0x5D else 0 for b in range(256))


def json_depth(text: Union[str, bytes, bytearray]) -> int:
    """The deepest nesting of arrays and objects in JSON ``text`` (brackets inside
    strings do not count). For invalid JSON, a number that still bounds the nesting
    a decoder could reach.

    Strings are cut out with C-speed string operations: inside a JSON string every
    backslash starts a two-character escape, so removing ``\\\\`` pairs left to right
    and then ``\\"`` leaves only the quotes that open and close strings; splitting on
    them, every other piece is outside any string.
    """
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    depth = _shape_depth(data.translate(_SHAPE_TABLE))
    if depth is not None:
        return depth
    if b"\\" in data:
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(data.split(b'"')[::2])
    steps = array("b", outside.translate(_DEPTH_STEP, _NOT_BRACKET))
    return max(accumulate(steps), default=0)


def _shape_depth(shape: bytes) -> Optional[int]:
    """The depth of the JSON whose :data:`_SHAPE_TABLE` translation is ``shape`` when no
    string holds a bracket (the usual frame), in C-speed passes; None when that is not
    certain (a backslash, or a bracket between quotes). Without backslashes every quote
    opens or closes a string, so when the quotes and brackets alone read ``""`` pair
    after pair, each string holds none."""
    marks = shape.translate(None, b" 0")
    if b"\\" in marks:
        return None
    quotes = marks.count(b'"')
    if quotes:
        if marks.count(b'""') * 2 != quotes:
            return None
        marks = marks.translate(None, b'"')
    return max(accumulate(array("b", marks.translate(_SHAPE_STEP))), default=0)


def depth_problem(text: Union[str, bytes, bytearray], limit: int = MAX_JSON_DEPTH) -> Optional[str]:
    """Why JSON ``text`` nests too deeply (more than ``limit``), or None. Cheap for
    almost every frame: only text holding more than ``limit`` brackets is scanned."""
    if isinstance(text, str):
        openers = text.count("[") + text.count("{")
    else:
        openers = text.count(b"[") + text.count(b"{")
    if openers <= limit:
        return None
    depth = json_depth(text)
    if depth <= limit:
        return None
    return f"nests arrays and objects {depth} deep, the limit is {limit} (MAX_JSON_DEPTH)"


# -- bytes: JSON's tagged form (section 10) --------------------------------------------
_TAG_TEXT = f'"{BYTES_TAG}"'
_TAG_UTF8 = _TAG_TEXT.encode("ascii")


def _tagged(obj: Any) -> Dict[str, str]:
    """The JSON encoder's ``default`` hook (it runs only for values JSON has no form
    for): bytes as the tagged form; TypeError for anything else."""
    if isinstance(obj, (bytes, bytearray)):
        return {BYTES_TAG: base64.b64encode(obj).decode("ascii")}
    if isinstance(obj, memoryview):
        return {BYTES_TAG: base64.b64encode(obj.tobytes()).decode("ascii")}
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def tag_shaped_problem(value: Any) -> Optional[str]:
    """Why ``value`` cannot be sent as it is: it holds a dict whose only key is
    ``"$bytes"``, which every receiver would read as bytes; None when it holds none."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            if len(v) == 1 and BYTES_TAG in v:
                return (f'a dict whose only key is "{BYTES_TAG}" is the tagged form of bytes '
                        "(docs/protocol.md section 10): give it a second key, or send bytes")
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return None


def may_hold_tags(text: Union[str, bytes, bytearray]) -> bool:
    """False when JSON ``text`` certainly holds no tagged bytes: it has neither the
    key's literal text nor a ``\\u`` escape (which could spell the key)."""
    # One-character searches first (memchr): most frames hold neither "$" nor a backslash.
    if isinstance(text, str):
        return ("$" in text and _TAG_TEXT in text) or ("\\" in text and "\\u" in text)
    # bytes.find: ``in`` first tries the needle as an int, at a cost of its own
    return ((text.find(b"$") >= 0 and text.find(_TAG_UTF8) >= 0)
            or (text.find(b"\\") >= 0 and text.find(b"\\u") >= 0))


def _unbase64(value: Any) -> bytes:
    """The bytes of a tagged form's value; ValueError unless it is standard base64."""
    if not isinstance(value, str):
        raise ValueError(f'"{BYTES_TAG}" must hold a string of standard base64, got '
                         f"{type(value).__name__}")
    try:
        if len(value) % 4:
            raise ValueError("not a whole number of 4-character groups")
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f'"{BYTES_TAG}" must hold standard base64 (A-Z a-z 0-9 + /, '
                         "padded with =)") from None


def untag(value: Any) -> Any:
    """``value`` (decoded JSON) with every tagged form in it replaced by its bytes (in
    place, and returned); ValueError when one does not hold standard base64."""
    if type(value) is dict and len(value) == 1 and BYTES_TAG in value:
        return _unbase64(value[BYTES_TAG])
    stack = [value]
    while stack:
        node = stack.pop()
        pairs = (node.items() if type(node) is dict else
                 enumerate(node) if type(node) is list else ())
        for key, v in pairs:
            kind = type(v)
            if kind is dict:
                if len(v) == 1 and BYTES_TAG in v:
                    node[key] = _unbase64(v[BYTES_TAG])  # a value replaced: sizes stay
                else:
                    stack.append(v)
            elif kind is list:
                stack.append(v)
    return value


_decoder = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                            default=_tagged)


def dumps(obj: Any, max_depth: int = MAX_JSON_DEPTH) -> str:
    """Encode ``obj`` as compact JSON text, bytes in their tagged form; raise
    :class:`EncodeError` if it cannot be, if it nests deeper than ``max_depth``
    (:data:`MAX_JSON_DEPTH`; a tagged form is one level), or if it holds a dict
    shaped as a tagged form."""
    text = _dumps_as_is(obj, max_depth)
    if _TAG_TEXT in text:  # rare: only then is the value walked
        problem = tag_shaped_problem(obj)
        if problem is not None:
            raise EncodeError(problem)
    return text


def _dumps_as_is(obj: Any, max_depth: int) -> str:
    """:func:`dumps` without the check for dicts shaped as a tagged form."""
    try:
        text = _encoder.encode(obj)
    except (TypeError, ValueError, RecursionError) as exc:
        raise EncodeError(f"data is not JSON-encodable: {exc}") from None
    problem = depth_problem(text, max_depth)
    if problem is not None:
        raise EncodeError(f"data {problem}: a peer would refuse it")
    if not text.isascii() and _SURROGATE_RE.search(text):
        raise EncodeError("data is not JSON-encodable: it contains a lone surrogate "
                          "(U+D800-U+DFFF), which UTF-8 text cannot carry")
    return text


def encode(event: str, data: Any = None, cb_id: Optional[str] = None) -> str:
    """Encode one frame as text. ``[event]`` when data is None and no cb-id."""
    if cb_id is not None:
        return dumps([event, data, cb_id])
    if data is None:
        return dumps([event])
    return dumps([event, data])


def encode_channel_data(data: Any) -> str:
    """The JSON text of a publish's ``data``, at most :data:`MAX_CHANNEL_DATA_DEPTH` deep,
    so the channel message carrying it is at most :data:`MAX_JSON_DEPTH` deep."""
    return dumps(data, MAX_CHANNEL_DATA_DEPTH)


def encode_bytes(event: str, data: Any = None, cb_id: Optional[str] = None) -> bytes:
    """Like :func:`encode`, as UTF-8 bytes ready for a text frame."""
    return encode(event, data, cb_id).encode("utf-8")


def error_data(code: str, message: str, event: Optional[str] = None) -> dict:
    """The data of a ``chsk/error`` frame."""
    body: dict = {K_CODE: code, K_MESSAGE: message}
    if event is not None:
        body[K_EVENT] = event
    return body


def encode_error(code: str, message: str, cb_id: Optional[str] = None,
                 event: Optional[str] = None) -> str:
    """Encode a ``chsk/error`` frame: a reply when ``cb_id`` is given, else standalone."""
    if cb_id is not None:
        return encode(EV_ERROR, error_data(code, message), cb_id)
    return encode(EV_ERROR, error_data(code, message, event))


def encode_reply(event: str, result: Any, cb_id: str) -> "tuple[str, bool]":
    """The answer to request ``cb_id`` of ``event`` whose handler returned ``result``:
    ``(chsk/reply frame, True)``, or ``(handler-error frame, False)`` when ``result`` is
    not JSON-encodable. One rule for both sides."""
    try:
        return encode(EV_REPLY, result, cb_id), True
    except EncodeError:
        return encode_error(ERR_HANDLER_ERROR, f"reply of {event} is not JSON-encodable", cb_id), False


def remote_error(data: Any) -> RemoteError:
    """The :class:`RemoteError` a ``chsk/error`` frame's data stands for (both sides)."""
    code = data.get(K_CODE) if isinstance(data, dict) else None
    message = data.get(K_MESSAGE) if isinstance(data, dict) else None
    return RemoteError(code if isinstance(code, str) and code else "unknown",
                       message if isinstance(message, str) else "")


def value_depth(value: Any, limit: int) -> int:
    """How deeply ``value``'s lists and dicts nest (``[]`` is 1); stops counting past ``limit``."""
    depth = 0
    level = [value]
    while level and depth <= limit:
        nxt: list = []
        for v in level:
            if isinstance(v, (list, tuple)):
                nxt.extend(v)
            elif isinstance(v, dict):
                nxt.extend(v.values())
            else:
                continue
        if len(nxt) == 0 and not any(isinstance(v, (list, tuple, dict)) for v in level):
            break
        depth += 1
        level = [v for v in nxt if isinstance(v, (list, tuple, dict))]
    return depth


def loads(text: str, tags: bool = True) -> Any:
    """The value of JSON ``text`` this module wrote (no frame checks); with ``tags``,
    tagged forms are read as bytes (ValueError when one is malformed)."""
    value = _decoder.decode(text)
    if tags and may_hold_tags(text):
        value = untag(value)
    return value


def _reencode_problem(value: Any) -> Optional[str]:
    """Why a decoded value could not be sent on in a text frame, or None."""
    try:
        _dumps_as_is(value, MAX_JSON_DEPTH)
    except EncodeError as exc:
        return str(exc)
    return None


def _parse(text: Union[str, bytes, bytearray, memoryview]) -> Any:
    """The JSON value of a frame's text, with the standard library; FrameError if none."""
    if not isinstance(text, str):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FrameError(f"frame is not valid UTF-8: {exc.reason} at byte {exc.start}") from None
        except TypeError:
            raise FrameError(f"frame must be text, got {type(text).__name__}") from None
    # Depth before parsing (MAX_JSON_DEPTH): fewer brackets than the limit cannot nest
    # deeper, so almost every frame costs two C-speed counts here and nothing more.
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH:
        problem = depth_problem(text)
        if problem is not None:
            raise FrameError(f"frame {problem}")
    try:
        value = _decoder.decode(text)
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, int too long
        raise FrameError(f"frame is not valid JSON: {exc}") from None
    except RecursionError:
        raise FrameError("frame is nested too deeply") from None
    if _SURROGATE_ESCAPE_RE.search(text) or (not text.isascii() and _SURROGATE_RE.search(text)):
        problem = _reencode_problem(value)  # paired surrogate escapes are fine
        if problem is not None:
            raise FrameError(f"frame holds text that is not valid Unicode: {problem}")
    return value


# Optional fast path (``pip install sente-lite[fast]``): orjson parses frames. It is
# used only where its answer is provably the standard library's: anything orjson
# refuses (invalid UTF-8 or JSON, NaN/Infinity, 1e400, lone surrogates, deep
# nesting) and anything it would read differently (integers beyond 64 bits, which
# it turns into floats) goes to :func:`_parse`, which decides and words the error.
# Encoding stays on the standard library: orjson writes floats differently (1e16,
# not 1e+16), NaN as null, and accepts Enum and UUID values the stdlib refuses.
try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the [fast] extra
    _orjson = None

_NOT_PARSED = object()
_LONG_NUMBER_STR = re.compile(r"\d{19}")
_DIGIT_RUN = b"0" * 19


def _fast_parse(text: Any) -> Any:
    """orjson's value of ``text`` when it is certainly the stdlib's, else ``_NOT_PARSED``."""
    if isinstance(text, bytes) or (isinstance(text, str) and text.isascii()):
        # On bytes and on ASCII text, \d is exactly [0-9]: the shape test is the regex's.
        shape = (text if isinstance(text, bytes) else text.encode("ascii")).translate(_SHAPE_TABLE)
        if shape.find(_DIGIT_RUN) >= 0:  # not ``in``: it first tries the needle as an int
            return _NOT_PARSED
        if shape.count(b"[") > MAX_JSON_DEPTH:  # only then can it nest too deep
            depth = _shape_depth(shape)
            if depth is None or depth > MAX_JSON_DEPTH:
                return _NOT_PARSED  # _parse measures it the slow way and words the error
    elif isinstance(text, str):  # non-ASCII text: \d also matches other scripts' digits
        if _LONG_NUMBER_STR.search(text) or text.count("[") + text.count("{") > MAX_JSON_DEPTH:
            return _NOT_PARSED
    else:
        return _NOT_PARSED
    try:
        return _orjson.loads(text)  # type: ignore[union-attr]
    except (ValueError, RecursionError):
        return _NOT_PARSED


def decode(text: Union[str, bytes, bytearray, memoryview], tags: bool = True) -> Frame:
    """Decode one frame; with ``tags``, tagged forms are read as bytes (section 10).

    Raises :class:`FrameError` (code ``bad-frame``) for anything that is not a
    valid frame, or a tagged form that does not hold standard base64; its ``cb_id``
    is set when the frame named a usable cb-id, so the error can go back as that
    request's reply. Nesting deeper than :data:`MAX_JSON_DEPTH` is refused before
    any parsing, on either path.
    """
    return frame_of(decode_value(text, tags))


def decode_value(text: Union[str, bytes, bytearray, memoryview], tags: bool = True) -> Any:
    """The JSON value of one frame, as :func:`decode` reads it (tagged forms as bytes with
    ``tags``), before its shape is checked; :class:`FrameError` as :func:`decode`."""
    value = _fast_parse(text) if _orjson is not None else _NOT_PARSED
    if value is _NOT_PARSED:
        value = _parse(text)
    if tags and may_hold_tags(text if not isinstance(text, memoryview) else text.tobytes()):
        try:
            value = untag(value)
        except ValueError as exc:
            cb_id = (value[2] if type(value) is list and len(value) == 3
                     and is_valid_cb_id(value[2]) else None)
            raise FrameError(f"frame holds malformed bytes: {exc}", cb_id) from None
    return value


def frame_of(value: Any) -> Frame:
    """The frame a decoded value stands for (any packer); :class:`FrameError` if none."""
    if not isinstance(value, list):
        raise FrameError(f"frame must be an array, got {type(value).__name__}")
    n = len(value)
    if not 1 <= n <= 3:
        raise FrameError(f"frame must have 1 to 3 elements, got {n}")
    cb_id = None
    if n == 3:
        cb_id = value[2]
        if not is_valid_cb_id(cb_id):
            raise FrameError("cb-id must be a string of 1-64 characters")
    event = value[0]
    if not is_valid_event_id(event):
        raise FrameError(
            "event-id must be a string 'namespace/name' of [A-Za-z0-9_.-], 1-64 chars each part",
            cb_id,
        )
    return Frame(event, value[1] if n > 1 else None, cb_id)

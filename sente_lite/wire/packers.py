"""Packers: how a frame ``[event-id, data, cb-id]`` becomes bytes on one connection.

``json`` (the default) writes UTF-8 JSON in text frames. ``msgpack`` writes
MessagePack in binary frames; a client asks for it with the upgrade's query
parameter ``packer=msgpack`` and the server's handshake, then a binary frame,
echoes ``"packer": "msgpack"`` (docs/protocol.md section 10). It needs the
``msgpack`` package: ``pip install 'sente-lite[msgpack]'``.

Bytes travel as bytes: JSON writes them in the tagged form ``{"$bytes": "<base64>"}``
(:mod:`.protocol`), MessagePack as ``bin``; both read them back as ``bytes``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Union

from . import protocol as p
from ..errors import EncodeError, FrameError

JSON = "json"
MSGPACK = "msgpack"
#: Packer names a client may ask for.
PACKER_NAMES = (JSON, MSGPACK)
MISSING_MSGPACK = ("the msgpack packer needs the msgpack package: "
                   "pip install 'sente-lite[msgpack]'")


#: How every sender of this package writes a frame (compact JSON): the first characters
#: of each kind of frame, for :meth:`Packer.frame_kind`.
_JSON_CHSK = f'["{p.NS_CHSK}/'
_JSON_SENTE = f'["{p.NS_SENTE}/'
_JSON_ANSWERS = tuple(f'["{e}"' for e in p.ANSWER_EVENTS)
_JSON_BATCH = f'["{p.EV_BATCH}"'
#: MessagePack: a fixarray, then the event-id as a fixstr (reserved ids are short).
_MSGPACK_CHSK = f"{p.NS_CHSK}/".encode("ascii")
_MSGPACK_SENTE = f"{p.NS_SENTE}/".encode("ascii")
_MSGPACK_ANSWERS = frozenset(e.encode("ascii") for e in p.ANSWER_EVENTS)
_MSGPACK_BATCH = bytes((0x92, 0xA0 | len(p.EV_BATCH))) + p.EV_BATCH.encode("ascii")
_ANSWER, _BUILTIN, _CHANNEL, _APP, _BATCH = (p.FrameKind.ANSWER, p.FrameKind.BUILTIN,
                                             p.FrameKind.CHANNEL, p.FrameKind.APP,
                                             p.FrameKind.BATCH)


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class Packer:
    """Encodes and decodes frames for one wire format."""

    name = JSON
    #: Frames go in binary WebSocket messages (else text).
    binary = False
    #: Channel messages carry bytes in this format's own binary type (MessagePack
    #: ``bin``); False: as JSON's tagged form, for a peer that did not ask for bytes.
    native_bytes = False

    def encode(self, event: str, data: Any = None, cb_id: Optional[str] = None) -> bytes:
        """One frame's bytes; :class:`EncodeError` when ``data`` cannot be written."""
        return p.encode_bytes(event, data, cb_id)

    def encode_value(self, value: Any, checked: bool = False) -> bytes:
        """Any value (a reply body, channel data) in this format; ``checked``: its depth
        and its dicts were already checked (it came from a JSON encoding of this process)."""
        return p.dumps(value).encode("utf-8")

    def batch(self, frames: List[bytes]) -> bytes:
        """One ``chsk/batch`` frame holding ``frames`` (each already encoded), in order."""
        return b'["chsk/batch",[' + b",".join(frames) + b"]]"

    def frame_kind(self, payload: Union[str, bytes]) -> p.FrameKind:
        """What a frame received in this format is, from its first characters alone
        (nothing decoded; a sender that writes it otherwise than compactly gets ``APP``
        or ``BUILTIN``, handled in order with the connection's events)."""
        if type(payload) is not str:
            return _APP  # the wrong frame type for this packer: a bad frame, in order
        if payload.startswith(_JSON_CHSK):
            if payload.startswith(_JSON_ANSWERS):
                return _ANSWER
            return _BATCH if payload.startswith(_JSON_BATCH) else _BUILTIN
        return _CHANNEL if payload.startswith(_JSON_SENTE) else _APP

    def decode(self, payload: Union[str, bytes], binary: Optional[bool] = None,
               tags: bool = True) -> p.Frame:
        """The frame in ``payload`` (``binary``: it came in a binary message; by default,
        when it is not a str); :class:`FrameError` (``bad-frame``) when it is none.
        ``tags``: JSON's tagged forms are read as bytes (MessagePack has ``bin``)."""
        if binary if binary is not None else not isinstance(payload, str):
            raise FrameError("binary frames need the msgpack packer (packer=msgpack at the "
                             "upgrade); this connection speaks JSON in text frames")
        return p.decode(payload, tags)


class MsgpackPacker(Packer):
    """MessagePack in binary frames (same ``[event-id, data, cb-id]`` shape)."""

    name = MSGPACK
    binary = True

    def __init__(self, native_bytes: bool = True) -> None:
        try:
            import msgpack
        except ImportError:
            raise MissingExtra(MISSING_MSGPACK) from None
        self._msgpack = msgpack
        self.native_bytes = native_bytes
        self._errors = (ValueError, TypeError, msgpack.exceptions.ExtraData,
                        msgpack.exceptions.StackError, msgpack.exceptions.FormatError)

    def encode(self, event: str, data: Any = None, cb_id: Optional[str] = None) -> bytes:
        frame: list = [event] if data is None and cb_id is None else (
            [event, data] if cb_id is None else [event, data, cb_id])
        return self.encode_value(frame)

    def encode_value(self, value: Any, checked: bool = False) -> bytes:
        if not checked and p.value_depth(value, p.MAX_JSON_DEPTH) > p.MAX_JSON_DEPTH:
            raise EncodeError(f"value nests deeper than {p.MAX_JSON_DEPTH} (MAX_JSON_DEPTH)")
        try:
            out = self._msgpack.packb(value, use_bin_type=True)
        except (TypeError, ValueError, OverflowError, BufferError) as exc:
            raise EncodeError(f"not MessagePack-encodable: {exc}") from None
        if not checked and out.find(_TAG_KEY) >= 0:  # rare: only then is the value walked
            problem = p.tag_shaped_problem(value)
            if problem is not None:
                raise EncodeError(problem)
        return out

    def batch(self, frames: List[bytes]) -> bytes:
        n = len(frames)
        head = bytes((0x90 | n,)) if n < 16 else (
            b"\xdc" + n.to_bytes(2, "big") if n < 65536 else b"\xdd" + n.to_bytes(4, "big"))
        return b"\x92" + self._msgpack.packb(p.EV_BATCH) + head + b"".join(frames)

    def frame_kind(self, payload: Union[str, bytes]) -> p.FrameKind:
        if type(payload) is str:
            return _APP  # the wrong frame type for this packer: a bad frame, in order
        if payload[2:7] == _MSGPACK_CHSK:
            if payload[2:2 + (payload[1] & 0x1F)] in _MSGPACK_ANSWERS:
                return _ANSWER
            return _BATCH if payload.startswith(_MSGPACK_BATCH) else _BUILTIN
        return _CHANNEL if payload[2:13] == _MSGPACK_SENTE else _APP

    def decode(self, payload: Union[str, bytes], binary: Optional[bool] = None,
               tags: bool = True) -> p.Frame:
        if not (binary if binary is not None else not isinstance(payload, str)):
            try:  # answer the request it was, if it was one
                cb_id = p.decode(payload).cb_id
            except FrameError as exc:
                cb_id = exc.cb_id
            raise FrameError("this connection negotiated msgpack: send binary frames, not text",
                             cb_id)
        try:
            value = self._msgpack.unpackb(payload, raw=False, strict_map_key=False,
                                          object_pairs_hook=_string_keyed, ext_hook=_no_ext)
        except _Refused as exc:
            raise FrameError(str(exc), self._cb_id_of(payload)) from None
        except self._errors as exc:
            raise FrameError(f"frame is not valid MessagePack: {type(exc).__name__}") from None
        if p.value_depth(value, p.MAX_JSON_DEPTH) > p.MAX_JSON_DEPTH:
            raise FrameError(f"frame nests deeper than {p.MAX_JSON_DEPTH} levels")
        return p.frame_of(value)

    def _cb_id_of(self, payload: Union[str, bytes]) -> Optional[str]:
        """The cb-id of a frame refused for its map keys, when it has a usable one."""
        try:
            value = self._msgpack.unpackb(payload, raw=False, strict_map_key=False,
                                          object_pairs_hook=list)
        except self._errors:
            return None
        if isinstance(value, list) and len(value) == 3 and p.is_valid_cb_id(value[2]):
            return value[2]
        return None


#: ``"$bytes"`` as a MessagePack fixstr: a map key that may make a tagged form.
_TAG_KEY = bytes((0xA0 | len(p.BYTES_TAG),)) + p.BYTES_TAG.encode("ascii")


class _Refused(ValueError):
    """A MessagePack map with a key that is not a string, or an ext value."""


def _no_ext(code: int, data: bytes) -> Any:
    """``unpackb``'s ``ext_hook``: an extension type is refused (bin is bytes)."""
    raise _Refused(f"ext type {code}: frames carry what JSON can, and bytes as bin, "
                        "no extension types")


def _string_keyed(pairs: List[Tuple[Any, Any]]) -> Dict[str, Any]:
    """A decoded map, refused unless every key is a string: JSON peers of the same
    channel would read ``{1: "a", "1": "b"}`` as one name twice."""
    for key, _ in pairs:
        if type(key) is not str:
            shown = repr(key) if len(repr(key)) <= 40 else repr(key)[:37] + "..."
            raise _Refused(f"map key {shown} is a {type(key).__name__}: MessagePack map keys "
                                "must be strings (JSON peers have no other kind of key)")
    return dict(pairs)


_PACKERS: Dict[str, Packer] = {JSON: Packer()}
#: MessagePack for a peer that did not ask for bytes (``bytes=1``): channel messages keep
#: JSON's tagged form, a map, as that peer has always read them.
_TAGGED_MSGPACK = MSGPACK + "/tagged"


def get(name: str, native_bytes: bool = True) -> Packer:
    """The packer called ``name`` (for MessagePack, carrying bytes in channel messages as
    ``bin`` unless ``native_bytes`` is False); :class:`ValueError` for an unknown name,
    :class:`MissingExtra` when its package is not installed."""
    key = _TAGGED_MSGPACK if name == MSGPACK and not native_bytes else name
    packer = _PACKERS.get(key)
    if packer is None:
        if name != MSGPACK:
            raise ValueError(f"unknown packer {name!r}: use one of {', '.join(PACKER_NAMES)}")
        packer = _PACKERS[key] = MsgpackPacker(native_bytes)
    return packer


def available(name: str) -> bool:
    """True when packer ``name`` can be used here."""
    try:
        get(name)
    except (ValueError, MissingExtra):
        return False
    return True


JSON_PACKER = _PACKERS[JSON]

__all__ = ["Packer", "MsgpackPacker", "MissingExtra", "get", "available", "JSON", "MSGPACK",
           "PACKER_NAMES", "JSON_PACKER"]

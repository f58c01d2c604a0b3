"""Bencode, the nREPL TCP transport's encoding: a small strict codec with bounds.

Values: ``int``, ``str`` (written as UTF-8), ``bytes``, ``list``/``tuple`` and
``dict`` with string keys (written sorted by their UTF-8 bytes, as the format
requires). Decoding returns a string as ``str`` when it is valid UTF-8, else as
``bytes`` (``text=False``: always ``bytes``).

Every decode is bounded: ``max_message_bytes`` (a message, or a string length
prefix, larger than that is refused before it is buffered), ``max_depth``
(nesting of lists and dicts) and ``max_int_digits``. Anything malformed raises
:class:`BencodeError`, whose message says what is wrong and at which offset.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Union

#: Largest message (bytes) a decoder accepts; the TCP transport's ``max_message_bytes``.
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20
#: Deepest nesting of lists and dicts a decoder accepts.
DEFAULT_MAX_DEPTH = 32
#: Most digits an integer may have.
DEFAULT_MAX_INT_DIGITS = 1000

Value = Union[int, str, bytes, List[Any], Dict[str, Any]]


class BencodeError(ValueError):
    """Input that is not bencode this codec accepts (or a value it cannot encode)."""


class Incomplete(BencodeError):
    """The input ends before its first value does: more bytes are needed."""


def encode(value: Any) -> bytes:
    """Encode ``value``; raises :class:`BencodeError` for a type bencode cannot carry."""
    out: List[bytes] = []
    _encode(value, out, 0)
    return b"".join(out)


def _encode(value: Any, out: List[bytes], depth: int) -> None:
    if depth > 1000:
        raise BencodeError("value nested too deeply to encode")
    if isinstance(value, bool) or value is None:
        raise BencodeError(f"bencode has no {type(value).__name__}: send an int or a string")
    if isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, str):
        raw = value.encode("utf-8", "surrogatepass")
        out.append(b"%d:" % len(raw))
        out.append(raw)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        out.append(b"%d:" % len(raw))
        out.append(raw)
    elif isinstance(value, (list, tuple)):
        out.append(b"l")
        for item in value:
            _encode(item, out, depth + 1)
        out.append(b"e")
    elif isinstance(value, dict):
        items = []
        for key, item in value.items():
            if isinstance(key, str):
                raw = key.encode("utf-8", "surrogatepass")
            elif isinstance(key, bytes):
                raw = key
            else:
                raise BencodeError(f"dict key {key!r} is a {type(key).__name__}: keys must be strings")
            items.append((raw, item))
        items.sort(key=lambda kv: kv[0])
        out.append(b"d")
        for i, (raw, item) in enumerate(items):
            if i and items[i - 1][0] == raw:
                raise BencodeError(f"dict key {raw!r} appears twice")
            out.append(b"%d:" % len(raw))
            out.append(raw)
            _encode(item, out, depth + 1)
        out.append(b"e")
    else:
        raise BencodeError(f"cannot bencode a {type(value).__name__}")


class _Parser:
    """One pass over ``data`` from ``pos``: raises Incomplete at the end of the input."""

    def __init__(self, data: bytes, max_bytes: int, max_depth: int, max_int_digits: int,
                 text: bool) -> None:
        self.data = data
        self.max_bytes = max_bytes
        self.max_depth = max_depth
        self.max_int_digits = max_int_digits
        self.text = text

    def value(self, pos: int, depth: int) -> Tuple[Any, int]:
        data = self.data
        if pos >= len(data):
            raise Incomplete(f"input ends at offset {pos}, inside a value")
        lead = data[pos]
        if lead == 0x69:  # i
            return self.integer(pos + 1)
        if 0x30 <= lead <= 0x39:
            return self.string(pos)
        if lead in (0x6C, 0x64):  # l, d
            if depth >= self.max_depth:
                raise BencodeError(f"nesting deeper than {self.max_depth} at offset {pos} (max_depth)")
            return (self.listing(pos + 1, depth + 1) if lead == 0x6C
                    else self.mapping(pos + 1, depth + 1))
        raise BencodeError(f"unexpected byte {data[pos:pos + 1]!r} at offset {pos}: "
                           "expected i, l, d or a string length")

    def _digits(self, start: int, end_byte: bytes, limit: int, what: str,
                limit_name: str) -> Tuple[bytes, int]:
        end = self.data.find(end_byte, start, start + limit + 1)
        if end < 0:
            window = self.data[start:start + limit + 1]
            number = window.lstrip(b"-").isdigit() and window.count(b"-") <= 1
            if len(window) > limit:
                if number:
                    raise BencodeError(f"{what} at offset {start} has more than {limit} characters "
                                       f"(over {limit_name})")
                raise BencodeError(f"bad {what} at offset {start}: {window[:20]!r}")
            if window not in (b"", b"-") and not number:
                raise BencodeError(f"bad {what} at offset {start}: {window[:20]!r}")
            raise Incomplete(f"input ends inside {what} at offset {start}")
        return self.data[start:end], end + 1

    def integer(self, pos: int) -> Tuple[int, int]:
        digits, after = self._digits(pos, b"e", self.max_int_digits + 1, "integer",
                                     f"max_int_digits {self.max_int_digits}")
        body = digits[1:] if digits[:1] == b"-" else digits
        if not body.isdigit() or not body.isascii():
            raise BencodeError(f"bad integer {digits[:40]!r} at offset {pos}")
        if len(body) > self.max_int_digits:
            raise BencodeError(f"integer of {len(body)} digits at offset {pos} "
                               f"(max_int_digits {self.max_int_digits})")
        if (body[:1] == b"0" and len(body) > 1) or digits == b"-0":
            raise BencodeError(f"integer {digits[:40]!r} at offset {pos} is not canonical")
        return int(digits), after

    def raw_string(self, pos: int) -> Tuple[bytes, int]:
        digits, start = self._digits(pos, b":", len(str(self.max_bytes)), "string length",
                                    f"max_message_bytes {self.max_bytes}")
        if not digits.isdigit() or not digits.isascii():
            raise BencodeError(f"bad string length {digits[:20]!r} at offset {pos}")
        if digits[:1] == b"0" and len(digits) > 1:
            raise BencodeError(f"string length {digits!r} at offset {pos} is not canonical")
        length = int(digits)
        if length > self.max_bytes:
            raise BencodeError(f"string of {length} bytes at offset {pos} is over "
                               f"max_message_bytes {self.max_bytes}")
        end = start + length
        if end > len(self.data):
            raise Incomplete(f"input ends inside a {length}-byte string at offset {pos}")
        return self.data[start:end], end

    def string(self, pos: int) -> Tuple[Union[str, bytes], int]:
        raw, after = self.raw_string(pos)
        if self.text:
            try:
                return raw.decode("utf-8"), after
            except UnicodeDecodeError:
                pass
        return raw, after

    def listing(self, pos: int, depth: int) -> Tuple[List[Any], int]:
        items: List[Any] = []
        while True:
            if pos >= len(self.data):
                raise Incomplete(f"input ends at offset {pos}, inside a list")
            if self.data[pos] == 0x65:
                return items, pos + 1
            item, pos = self.value(pos, depth)
            items.append(item)

    def mapping(self, pos: int, depth: int) -> Tuple[Dict[Any, Any], int]:
        result: Dict[Any, Any] = {}
        while True:
            if pos >= len(self.data):
                raise Incomplete(f"input ends at offset {pos}, inside a dict")
            if self.data[pos] == 0x65:
                return result, pos + 1
            if not 0x30 <= self.data[pos] <= 0x39:
                raise BencodeError(f"dict key at offset {pos} is not a string")
            key, pos = self.string(pos)
            if key in result:
                raise BencodeError(f"dict key {key!r} appears twice (offset {pos})")
            result[key], pos = self.value(pos, depth)


def decode(data: bytes, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
           max_depth: int = DEFAULT_MAX_DEPTH, max_int_digits: int = DEFAULT_MAX_INT_DIGITS,
           text: bool = True) -> Any:
    """Decode exactly one value filling ``data``; :class:`BencodeError` otherwise."""
    data = bytes(data)
    if len(data) > max_message_bytes:
        raise BencodeError(f"{len(data)} bytes is over max_message_bytes {max_message_bytes}")
    value, end = _Parser(data, max_message_bytes, max_depth, max_int_digits, text).value(0, 0)
    if end != len(data):
        raise BencodeError(f"{len(data) - end} bytes after the value (offset {end})")
    return value


class Decoder:
    """Incremental decoder of a stream of values: ``feed(bytes) -> [values]``.

    Holds at most ``max_message_bytes`` of an unfinished value; more, or any
    malformed value, raises :class:`BencodeError` (the stream is then unusable).
    """

    def __init__(self, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 max_depth: int = DEFAULT_MAX_DEPTH, max_int_digits: int = DEFAULT_MAX_INT_DIGITS,
                 text: bool = True) -> None:
        for name, v in (("max_message_bytes", max_message_bytes), ("max_depth", max_depth),
                        ("max_int_digits", max_int_digits)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        self.max_message_bytes = max_message_bytes
        self._limits = (max_message_bytes, max_depth, max_int_digits, text)
        self._buf = b""
        self.failed: Optional[BencodeError] = None

    @property
    def buffered(self) -> int:
        """Bytes held of a value not complete yet."""
        return len(self._buf)

    def feed(self, chunk: bytes) -> List[Any]:
        """Add ``chunk``; return every value it completes, in order."""
        if self.failed is not None:
            raise self.failed
        self._buf += chunk
        values: List[Any] = []
        try:
            while self._buf:
                parser = _Parser(self._buf, *self._limits)
                try:
                    value, end = parser.value(0, 0)
                except Incomplete:
                    if len(self._buf) > self.max_message_bytes:
                        raise BencodeError(f"message over max_message_bytes {self.max_message_bytes}"
                                           f" ({len(self._buf)} bytes and not complete)") from None
                    break
                if end > self.max_message_bytes:
                    raise BencodeError(f"message of {end} bytes is over max_message_bytes "
                                       f"{self.max_message_bytes}")
                values.append(value)
                self._buf = self._buf[end:]
        except BencodeError as exc:
            self.failed = exc
            self._buf = b""
            raise
        return values

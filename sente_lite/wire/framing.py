"""WebSocket framing (RFC 6455 5.2): the package's one encoder and parser.

* :func:`text_frame` - one unmasked final text frame (the server's fan-out).
* :func:`encode_frame` - any frame, masked or not; every header field may be
  set wrong on purpose (reserved bits, opcode, declared length).
* :func:`mask_bytes` - the XOR mask of RFC 6455 5.3.
* :class:`FrameParser` - incremental parser of the frames a client receives:
  :meth:`FrameParser.feed` returns the whole messages and control frames in the
  bytes given so far.
* :class:`SocketFrameReader` - a :class:`FrameParser` reading a blocking socket.

No extension is negotiated: a reserved bit is a protocol error. Text is not
checked for UTF-8 and close payloads are not checked; callers do that.
Nothing here imports websockets or websocket-client.
"""

from __future__ import annotations

import socket
import struct
from typing import List, Optional, Tuple, Type

__all__ = ["OP_CONT", "OP_TEXT", "OP_BINARY", "OP_CLOSE", "OP_PING", "OP_PONG",
           "READ_CHUNK", "MAX_CONTROL_PAYLOAD", "ProtocolError", "mask_bytes", "encode_frame", "text_frame",
           "frames_span",
           "FrameParser", "SocketFrameReader", "Message"]

OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
#: Bytes asked of the socket per read; one read usually holds many small frames.
READ_CHUNK = 256 * 1024
#: Longest payload of a control frame (RFC 6455 5.5).
MAX_CONTROL_PAYLOAD = 125

_HEAD_16 = struct.Struct("!BBH")
_HEAD_64 = struct.Struct("!BBQ")

#: ``(opcode, payload)``: a whole (reassembled) data message or a control frame.
Message = Tuple[int, bytes]


class ProtocolError(ValueError):
    """Bytes that break RFC 6455 framing (or a message over the size limit)."""


def mask_bytes(data: bytes, mask: bytes) -> bytes:
    """``data`` XOR the 4-byte ``mask`` repeated (RFC 6455 5.3); masks and unmasks."""
    n = len(data)
    if not n:
        return b""
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(data, "big") ^ key).to_bytes(n, "big")


def text_frame(payload: bytes) -> bytes:
    """``payload`` as one unmasked, final text frame: the bytes websockets'
    ``send_text`` writes for a server without extensions."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return _HEAD_16.pack(0x81, 126, n) + payload
    return _HEAD_64.pack(0x81, 127, n) + payload


def encode_frame(payload: bytes, opcode: int = OP_TEXT, fin: bool = True, rsv: int = 0,
                 mask: Optional[bytes] = None, declared_length: Optional[int] = None) -> bytes:
    """One frame. ``mask`` (4 bytes) masks it, as a client must; None sends it unmasked.

    The header is not checked, so that a peer's refusals can be tested: ``fin``,
    ``rsv`` (3 bits, RSV1 is 4), ``opcode`` (4 bits) and ``declared_length`` (the
    length written in the header; ``len(payload)`` when None) may all be wrong.
    """
    length = len(payload) if declared_length is None else declared_length
    b0 = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0xF)
    mask_bit = 0x80 if mask is not None else 0
    if length < 126:
        head = bytes((b0, mask_bit | length))
    elif length < 65536:
        head = _HEAD_16.pack(b0, mask_bit | 126, length)
    else:
        head = _HEAD_64.pack(b0, mask_bit | 127, length)
    if mask is None:
        return head + payload
    if len(mask) != 4:
        raise ValueError("a mask is 4 bytes")
    return head + mask + mask_bytes(payload, mask)


def frames_span(data: bytes, pos: int, max_frames: int, max_bytes: int) -> Tuple[int, int]:
    """How much of ``data`` from ``pos`` to hand to a parser at once: whole frames, at
    most ``max_frames`` of them and no more once their payloads reach ``max_bytes`` (at
    least one), and a compressed frame (RSV1) only alone, since its payload may inflate.

    Returns ``(end, left)``: ``data[pos:end]`` is the span; when its last frame is cut
    off, ``left`` of its bytes are still to come (else 0). ``end == pos`` when not even
    a frame's header is whole.
    """
    n = len(data)
    count = payload = 0
    while pos < n and count < max_frames and (not count or payload < max_bytes):
        if n - pos < 2:
            break
        b0, b1 = data[pos], data[pos + 1]
        if count and b0 & 0x40:
            break
        length, head = b1 & 0x7F, 2
        if length == 126:
            if n - pos < 4:
                break
            length, head = int.from_bytes(data[pos + 2:pos + 4], "big"), 4
        elif length == 127:
            if n - pos < 10:
                break
            length, head = int.from_bytes(data[pos + 2:pos + 10], "big"), 10
        if b1 & 0x80:
            head += 4
        count += 1
        payload += length
        if pos + head + length > n:
            return n, pos + head + length - n
        pos += head + length
        if b0 & 0x40:
            break
    return pos, 0


class FrameParser:
    """Incremental parser of a server's frames: :meth:`feed` bytes as they come, get
    whole messages.

    Data messages come back reassembled from their fragments; control frames
    (close, ping, pong) come back as they arrive, even between fragments. A masked
    frame, a reserved bit, an unknown opcode, a bad fragment sequence, a
    fragmented or over-125-byte control frame, or a message over ``max_size``
    bytes raises ``error`` (:class:`ProtocolError` by default); the parser is
    then unusable. A frame over :data:`READ_CHUNK` bytes is joined once, when all
    of it has come.
    """

    __slots__ = ("_error", "_max_size", "_limit", "_ext", "_buf", "_parts", "_have", "_need",
                 "_frag", "_frag_op", "_frag_size")

    def __init__(self, error: Type[Exception] = ProtocolError,
                 max_size: Optional[int] = None) -> None:
        if max_size is not None and max_size < 0:
            raise ValueError("max_size must be at least 0")
        self._error = error
        self._max_size = max_size
        self._limit = max_size if max_size is not None else 1 << 64
        # Lengths from ``_ext`` up go the slow way: 126 and 127 announce an extended
        # length, and any 7-bit length over a small ``max_size`` is refused.
        self._ext = min(126, self._limit + 1)
        self._buf = b""
        self._parts: List[bytes] = []  # received bytes of a frame bigger than READ_CHUNK
        self._have = 0
        self._need = 0
        self._frag: Optional[List[bytes]] = None
        self._frag_op = 0
        self._frag_size = 0

    def feed(self, data: bytes) -> List[Message]:
        """Take the next bytes (any bytes-like object); return ``(opcode, payload)`` of
        each message they complete, in order."""
        if type(data) is not bytes:
            data = bytes(data)
        if self._need:  # the rest of one big frame: join once, when it is all here
            self._parts.append(data)
            self._have += len(data)
            if self._have < self._need:
                return []
            data = b"".join(self._parts)
            self._parts, self._have, self._need = [], 0, 0
        elif self._buf:
            data = self._buf + data
        ext = self._ext
        out: List[Message] = []
        pos, end = 0, len(data)
        while end - pos >= 2:
            b0, b1 = data[pos], data[pos + 1]
            n = b1 & 0x7F
            head = 2
            if n >= ext:
                if n == 126:
                    if end - pos < 4:
                        break
                    n = (data[pos + 2] << 8) | data[pos + 3]
                    head = 4
                elif n == 127:
                    if end - pos < 10:
                        break
                    n = int.from_bytes(data[pos + 2:pos + 10], "big")
                    head = 10
                if n > self._limit:
                    raise self._error(f"message over the limit of {self._max_size} bytes")
            if b1 & 0x80 or b0 & 0x70:
                raise self._error("frame sets a reserved bit" if b0 & 0x70 else "server frame is masked")
            stop = pos + head + n
            if stop > end:
                if stop - pos > READ_CHUNK:
                    self._parts, self._have, self._need = [data[pos:]], end - pos, stop - pos
                    self._buf = b""
                    return out
                break
            payload = data[pos + head:stop]
            pos = stop
            op = b0 & 0x0F
            if b0 & 0x80 and (op == OP_TEXT or op == OP_BINARY) and self._frag is None:
                out.append((op, payload))  # a whole data message: most frames, kept inline
            else:
                self._other_frame(op, b0 & 0x80, payload, out)
        self._buf = data[pos:] if pos < end else b""
        return out

    @property
    def cut_frame_bytes(self) -> int:
        """The size a frame cut by the last bytes fed announces (its head and payload),
        0 when none is cut or its head is not complete yet."""
        if self._need:
            return self._need
        buf = self._buf
        if len(buf) < 2:
            return 0
        n = buf[1] & 0x7F
        if n == 126:
            return 4 + int.from_bytes(buf[2:4], "big") if len(buf) >= 4 else 0
        if n == 127:
            return 10 + int.from_bytes(buf[2:10], "big") if len(buf) >= 10 else 0
        return 2 + n

    def _other_frame(self, op: int, fin: int, payload: bytes, out: List[Message]) -> None:
        """A frame that is not a whole data message: a fragment, a control frame, or a
        protocol error (raised). What it completes goes to ``out``."""
        if op == OP_TEXT or op == OP_BINARY:
            if self._frag is not None:
                raise self._error("new message inside a fragmented one")
            self._frag, self._frag_op, self._frag_size = [payload], op, len(payload)
        elif op == OP_CONT:
            if self._frag is None:
                raise self._error("continuation frame with no message")
            self._frag.append(payload)
            self._frag_size += len(payload)
            if self._frag_size > self._limit:
                raise self._error(f"message over the limit of {self._max_size} bytes")
            if fin:
                out.append((self._frag_op, b"".join(self._frag)))
                self._frag = None
        elif op == OP_CLOSE or op == OP_PING or op == OP_PONG:
            if not fin or len(payload) > MAX_CONTROL_PAYLOAD:
                raise self._error("control frame fragmented or too long")
            out.append((op, payload))
        else:
            raise self._error(f"unknown opcode {op}")


class SocketFrameReader(FrameParser):
    """A :class:`FrameParser` over a blocking socket: one ``recv`` per :meth:`read`.

    One ``recv`` may hold many frames; :meth:`read` returns every whole message
    in it. The end of the stream raises ``closed``.
    """

    __slots__ = ("_sock", "_closed", "_recv_into", "_chunk", "_chunk_view")

    def __init__(self, sock: socket.socket, error: Type[Exception] = ProtocolError,
                 closed: Type[Exception] = ConnectionError, max_size: Optional[int] = None) -> None:
        super().__init__(error, max_size)
        self._sock = sock
        self._closed = closed
        # ``recv(256 KiB)`` would allocate (mmap) and shrink (mremap, munmap) a fresh
        # 256 KiB object per call, about 10 us of system time each: read into one
        # reused buffer instead and copy out only the bytes that came.
        self._recv_into = getattr(sock, "recv_into", None)
        self._chunk = bytearray(READ_CHUNK) if self._recv_into is not None else bytearray()
        self._chunk_view = memoryview(self._chunk)

    def read(self) -> List[Message]:
        """Block for one ``recv``; return the ``(opcode, payload)`` of each whole message."""
        if self._recv_into is not None:
            data = self._chunk_view[:self._recv_into(self._chunk)].tobytes()
        else:  # a socket-like object without recv_into
            data = self._sock.recv(READ_CHUNK)
        if not data:
            raise self._closed("connection closed by the server")
        return self.feed(data)

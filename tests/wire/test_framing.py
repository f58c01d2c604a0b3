"""sente_lite.wire.framing: frames round-trip for every length class, fragments are
reassembled around control frames, every violation the parser refuses is refused
wherever the read boundaries fall, and websockets' own sans-I/O protocols agree
with both the encoder and the parser."""

from __future__ import annotations

import os
import socket
import struct
import threading
from typing import Any, List, Optional, Tuple

import pytest
import websocket  # websocket-client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from sente_lite.server import server as server_module
from sente_lite.wire.framing import (OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT,
                                     READ_CHUNK, FrameParser, ProtocolError, SocketFrameReader,
                                     encode_frame, mask_bytes, text_frame)

Message = Tuple[int, bytes]
#: Payload lengths at and around the three header sizes (7-bit, 16-bit and 64-bit length).
SIZES = [0, 1, 125, 126, 127, 65535, 65536, 70000]
KEY = b"\x9a\x01\xfe\x37"


def payload_of(size: int) -> bytes:
    return bytes(range(256)) * (size // 256) + b"x" * (size % 256)


def head_len(size: int) -> int:
    return 2 if size < 126 else 4 if size < 65536 else 10


def feed_all(chunks: List[bytes], **kwargs: Any) -> List[Message]:
    parser = FrameParser(**kwargs)
    out: List[Message] = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    return out


def server_protocol() -> ServerProtocol:
    """websockets' server side, already open: it receives (masked) client frames."""
    return ServerProtocol(state=State.OPEN, max_size=None)


def client_protocol() -> ClientProtocol:
    """websockets' client side, already open: it receives (unmasked) server frames."""
    return ClientProtocol(parse_uri("ws://127.0.0.1/"), state=State.OPEN, max_size=None)


def events_of(proto: Any, data: bytes) -> List[Tuple[int, bytes, bool]]:
    """What a websockets protocol makes of ``data``: (opcode, payload, fin) of each frame."""
    proto.receive_data(data)
    events = [(int(f.opcode), bytes(f.data), f.fin) for f in proto.events_received()]
    assert proto.state is State.OPEN or events and events[-1][0] == OP_CLOSE, "websockets refused the frames"
    return events


# --------------------------------------------------------------------------- encoding
@pytest.mark.parametrize("size", SIZES)
def test_text_frame_is_one_final_unmasked_text_frame(size: int) -> None:
    payload = payload_of(size)
    frame = text_frame(payload)
    assert frame == encode_frame(payload)
    assert len(frame) == head_len(size) + size
    assert frame[0] == 0x81 and not frame[1] & 0x80
    assert FrameParser().feed(frame) == [(OP_TEXT, payload)]


@pytest.mark.parametrize("size", SIZES)
def test_text_frame_is_what_websockets_and_the_server_send(size: int) -> None:
    payload = payload_of(size)
    proto = server_protocol()
    proto.send_text(payload)
    assert text_frame(payload) == b"".join(proto.data_to_send())
    server_frame = getattr(server_module, "_text_frame", None)
    if server_frame is not None:  # the server's own copy, until it imports this one
        assert text_frame(payload) == server_frame(payload)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY])
def test_unmasked_round_trip(size: int, opcode: int) -> None:
    payload = payload_of(size)
    frame = encode_frame(payload, opcode)
    assert FrameParser().feed(frame) == [(opcode, payload)]
    assert events_of(client_protocol(), frame) == [(opcode, payload, True)]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY])
def test_masked_round_trip(size: int, opcode: int) -> None:
    payload = payload_of(size)
    frame = encode_frame(payload, opcode, mask=KEY)
    head = head_len(size)
    assert frame[0] == 0x80 | opcode and frame[1] & 0x80
    assert frame[head:head + 4] == KEY
    assert len(frame) == head + 4 + size
    assert mask_bytes(frame[head + 4:], KEY) == payload
    assert events_of(server_protocol(), frame) == [(opcode, payload, True)]
    with pytest.raises(ProtocolError, match="masked"):  # a client frame is no server frame
        FrameParser().feed(frame)


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 7, 8, 9, 1000, 4099])
def test_mask_bytes_is_the_rfc_xor(size: int) -> None:
    data = os.urandom(size)
    masked = mask_bytes(data, KEY)
    assert masked == bytes(b ^ KEY[i % 4] for i, b in enumerate(data))
    assert mask_bytes(masked, KEY) == data


def test_encode_frame_writes_wrong_fields_on_request() -> None:
    assert encode_frame(b"ab", opcode=0xF, fin=False, rsv=4) == bytes((0x4F, 2)) + b"ab"
    assert encode_frame(b"ab", rsv=7)[0] == 0xF1
    assert encode_frame(b"x" * 5, declared_length=3) == bytes((0x81, 3)) + b"x" * 5
    assert encode_frame(b"x", declared_length=300)[:4] == bytes((0x81, 126)) + struct.pack("!H", 300)
    assert encode_frame(b"x", declared_length=1 << 40)[:10] == bytes((0x81, 127)) + struct.pack("!Q", 1 << 40)
    frame = encode_frame(b"hello", declared_length=300, mask=KEY)
    assert frame[:8] == bytes((0x81, 0xFE)) + struct.pack("!H", 300) + KEY
    assert mask_bytes(frame[8:], KEY) == b"hello"
    with pytest.raises(ValueError):
        encode_frame(b"x", mask=b"abc")


# --------------------------------------------------------------------------- parsing
def test_fragments_are_reassembled_around_control_frames() -> None:
    stream = (encode_frame(b"ab", fin=False) + encode_frame(b"p1", OP_PING)
              + encode_frame(b"", OP_CONT, fin=False) + encode_frame(b"cd", OP_CONT, fin=False)
              + encode_frame(b"", OP_PONG) + encode_frame(b"ef", OP_CONT)
              + encode_frame(b"\x00\x01", OP_BINARY, fin=False) + encode_frame(b"\x02", OP_CONT)
              + encode_frame(b"\x03\xe8", OP_CLOSE))
    assert FrameParser().feed(stream) == [(OP_PING, b"p1"), (OP_PONG, b""), (OP_TEXT, b"abcdef"),
                                          (OP_BINARY, b"\x00\x01\x02"), (OP_CLOSE, b"\x03\xe8")]


#: (stream, why) of every violation the parser refuses.
VIOLATIONS = [
    (bytes((0x81, 0x82)) + KEY + b"xy", "a masked server frame"),
    (encode_frame(b"x", rsv=4), "RSV1 without an extension"),
    (encode_frame(b"x", rsv=2), "RSV2"),
    (encode_frame(b"x", rsv=1), "RSV3"),
    (encode_frame(b"x" * 300, rsv=4), "a reserved bit on a 16-bit-length frame"),
    (encode_frame(b"x", OP_CONT), "a continuation with no message"),
    (encode_frame(b"x", OP_CONT, fin=False), "an unfinished continuation with no message"),
    (encode_frame(b"a", fin=False) + encode_frame(b"b"), "a new message inside a fragmented one"),
    (encode_frame(b"a", fin=False) + encode_frame(b"b", OP_BINARY), "a binary one inside a text one"),
    (encode_frame(b"p" * 126, OP_PING), "a control frame over 125 bytes"),
    (encode_frame(b"\x03\xe8" + b"c" * 124, OP_CLOSE), "a close frame over 125 bytes"),
    (encode_frame(b"p", OP_PING, fin=False), "a fragmented control frame"),
    (encode_frame(b"p", OP_PONG, fin=False), "a fragmented pong"),
] + [(encode_frame(b"", op), f"reserved opcode {op}") for op in (3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF)]


@pytest.mark.parametrize("stream,why", VIOLATIONS, ids=[why for _, why in VIOLATIONS])
def test_violations_are_refused(stream: bytes, why: str) -> None:
    good = encode_frame(b"fine")
    with pytest.raises(ProtocolError):
        FrameParser().feed(good + stream)

    class Refused(Exception):
        pass

    parser = FrameParser(error=Refused)  # fed byte by byte: refused all the same
    with pytest.raises(Refused):
        for i in range(len(stream)):
            parser.feed(stream[i:i + 1])


def test_max_size_bounds_frames_and_messages() -> None:
    assert FrameParser(max_size=300).feed(encode_frame(b"x" * 300)) == [(OP_TEXT, b"x" * 300)]
    for size in (10, 125, 300, 70000):
        with pytest.raises(ProtocolError, match="limit"):
            FrameParser(max_size=size - 1).feed(encode_frame(b"x" * size))
    # refused from the header alone, before the payload comes
    with pytest.raises(ProtocolError, match="limit"):
        FrameParser(max_size=1 << 20).feed(encode_frame(b"", declared_length=(1 << 20) + 1))
    with pytest.raises(ProtocolError, match="limit"):
        FrameParser(max_size=100).feed(encode_frame(b"", declared_length=101))
    # fragments count together
    parts = [encode_frame(b"a" * 60, fin=False), encode_frame(b"b" * 40, OP_CONT, fin=False),
             encode_frame(b"", OP_PING), encode_frame(b"c", OP_CONT)]
    assert feed_all(parts, max_size=101) == [(OP_PING, b""), (OP_TEXT, b"a" * 60 + b"b" * 40 + b"c")]
    with pytest.raises(ProtocolError, match="limit"):
        feed_all(parts, max_size=100)
    assert FrameParser(max_size=0).feed(encode_frame(b"") + encode_frame(b"", OP_PING)) == [
        (OP_TEXT, b""), (OP_PING, b"")]
    with pytest.raises(ValueError):
        FrameParser(max_size=-1)


def _mixed_stream() -> Tuple[bytes, List[Message]]:
    """Frames of every header size (one with a non-minimal 64-bit length), fragments and
    control frames, and the messages they make."""
    stream = (encode_frame(b"hello") + encode_frame(b"m" * 126, OP_BINARY)
              + bytes((0x81, 127)) + struct.pack("!Q", 3) + b"abc"
              + encode_frame(b"f1" * 100, fin=False) + encode_frame(b"ping", OP_PING)
              + encode_frame(b"f2", OP_CONT) + encode_frame(b"", OP_TEXT)
              + encode_frame(b"\x03\xe8bye", OP_CLOSE))
    return stream, [(OP_TEXT, b"hello"), (OP_BINARY, b"m" * 126), (OP_TEXT, b"abc"),
                    (OP_PING, b"ping"), (OP_TEXT, b"f1" * 100 + b"f2"), (OP_TEXT, b""),
                    (OP_CLOSE, b"\x03\xe8bye")]


def test_a_split_at_every_byte_position_changes_nothing() -> None:
    stream, expected = _mixed_stream()
    for i in range(len(stream) + 1):
        assert feed_all([stream[:i], stream[i:]]) == expected, i
    assert feed_all([stream[i:i + 1] for i in range(len(stream))]) == expected
    for size in (65535, 65536):  # the 16- and 64-bit headers and the payload's two ends
        frame = text_frame(payload_of(size))
        for i in list(range(16)) + list(range(len(frame) - 16, len(frame) + 1)):
            assert feed_all([frame[:i], frame[i:]]) == [(OP_TEXT, payload_of(size))], (size, i)


def test_the_same_bytes_come_back_as_bytes_from_any_buffer_type() -> None:
    frame = encode_frame(b"abc")
    for data in (bytearray(frame), memoryview(frame)):
        out = FrameParser().feed(data)
        assert out == [(OP_TEXT, b"abc")] and type(out[0][1]) is bytes


def test_frames_bigger_than_one_read_are_joined_once_complete() -> None:
    big1, big2 = b"a" * (READ_CHUNK + 10), b"b" * (3 * READ_CHUNK)
    stream = encode_frame(b"x") + encode_frame(big1) + encode_frame(big2, OP_BINARY) + encode_frame(b"y")
    want = [(OP_TEXT, b"x"), (OP_TEXT, big1), (OP_BINARY, big2), (OP_TEXT, b"y")]
    for step in (1000, 65536, READ_CHUNK, READ_CHUNK + 1, len(stream)):
        assert feed_all([stream[i:i + step] for i in range(0, len(stream), step)]) == want, step


@st.composite
def framed_messages(draw: Any) -> Tuple[bytes, List[Message]]:
    """A stream of data messages cut into fragments, control frames among them, and the
    messages a parser must return."""
    payloads = st.one_of(st.binary(max_size=300),
                         st.sampled_from([125, 126, 65535, 65536]).map(lambda n: b"y" * n))
    frames: List[bytes] = []
    expected: List[Message] = []

    def control() -> None:
        op = draw(st.sampled_from([OP_PING, OP_PONG, OP_CLOSE]))
        payload = draw(st.binary(max_size=125))
        frames.append(encode_frame(payload, op))
        expected.append((op, payload))

    for _ in range(draw(st.integers(0, 8))):
        if draw(st.booleans()):
            control()
            continue
        op = draw(st.sampled_from([OP_TEXT, OP_BINARY]))
        payload = draw(payloads)
        cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=3)))
        pieces = [payload[a:b] for a, b in zip([0] + cuts, cuts + [len(payload)])]
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            frames.append(encode_frame(piece, op if i == 0 else OP_CONT, fin=last))
            if not last and draw(st.integers(0, 3)) == 0:
                control()
        expected.append((op, payload))
    return b"".join(frames), expected


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(framed_messages(), st.data())
def test_encoded_messages_come_back_whatever_the_chunking(case: Tuple[bytes, List[Message]],
                                                          data: Any) -> None:
    stream, expected = case
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    chunks = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])]
    assert feed_all(chunks) == expected


# --------------------------------------------------------------------------- websockets agrees
def test_frames_websockets_sends_parse() -> None:
    proto = server_protocol()
    proto.send_text(b"one")
    proto.send_binary(b"\x00two")
    proto.send_text(b"thr", fin=False)
    proto.send_ping(b"p")
    proto.send_continuation(b"ee", fin=False)
    proto.send_pong(b"q")
    proto.send_continuation(b"!", fin=True)
    proto.send_text(payload_of(70000))
    proto.send_close(1000, "bye")
    stream = b"".join(proto.data_to_send())
    want = [(OP_TEXT, b"one"), (OP_BINARY, b"\x00two"), (OP_PING, b"p"), (OP_PONG, b"q"),
            (OP_TEXT, b"three!"), (OP_TEXT, payload_of(70000)), (OP_CLOSE, b"\x03\xe8bye")]
    assert FrameParser().feed(stream) == want
    assert feed_all([stream[i:i + 7] for i in range(0, len(stream), 7)]) == want


def test_masked_frames_websockets_receives() -> None:
    frames = [encode_frame(payload_of(n), OP_BINARY, mask=os.urandom(4)) for n in SIZES]
    frames += [encode_frame(b"ab", fin=False, mask=KEY), encode_frame(b"p", OP_PING, mask=KEY),
               encode_frame(b"cd", OP_CONT, mask=KEY), encode_frame(b"\x03\xe8", OP_CLOSE, mask=KEY)]
    events = events_of(server_protocol(), b"".join(frames))
    assert [(int(Opcode.BINARY), payload_of(n), True) for n in SIZES] == events[:len(SIZES)]
    assert events[len(SIZES):] == [(OP_TEXT, b"ab", False), (OP_PING, b"p", True),
                                   (OP_CONT, b"cd", True), (OP_CLOSE, b"\x03\xe8", True)]


def test_unmasked_frames_websockets_refuses_from_a_client() -> None:
    proto = server_protocol()
    proto.receive_data(encode_frame(b"x"))  # what abuse's RawPeer sends with mask=False
    assert proto.state is not State.OPEN


def test_masked_frames_of_websockets_client_are_refused() -> None:
    proto = client_protocol()
    proto.send_text(b"from a client")
    with pytest.raises(ProtocolError, match="masked"):
        FrameParser().feed(b"".join(proto.data_to_send()))


# --------------------------------------------------------------------------- socket reader
class ChunkSocket:
    """A socket stand-in returning ``data`` in the given chunk sizes, then EOF."""

    def __init__(self, data: bytes, sizes: List[int]) -> None:
        self.data = data
        self.sizes = list(sizes)

    def recv(self, n: int) -> bytes:
        size = min(n, self.sizes.pop(0) if self.sizes else n)
        out, self.data = self.data[:size], self.data[size:]
        return out


class ChunkSocketInto(ChunkSocket):
    """:class:`ChunkSocket` with ``recv_into``, the path a real socket takes."""

    def recv_into(self, buf: bytearray) -> int:
        out = self.recv(len(buf))
        buf[:len(out)] = out
        return len(out)


def read_until_error(reader: Any) -> Tuple[List[Message], Optional[type]]:
    out: List[Message] = []
    try:
        while True:
            out.extend(reader.read())
    except Exception as exc:  # noqa: BLE001 - the type is the result
        return out, type(exc)


def test_socket_reader_on_a_real_socket() -> None:
    stream, expected = _mixed_stream()
    big = encode_frame(payload_of(READ_CHUNK + 5), OP_BINARY)
    a, b = socket.socketpair()
    try:
        writer = threading.Thread(target=lambda: (a.sendall(stream + big + stream), a.close()))
        writer.start()
        out, error = read_until_error(SocketFrameReader(b))
        writer.join()
    finally:
        b.close()
    assert out == expected + [(OP_BINARY, payload_of(READ_CHUNK + 5))] + expected
    assert error is ConnectionError


def test_socket_reader_raises_the_given_exceptions() -> None:
    stream, expected = _mixed_stream()
    reader = SocketFrameReader(ChunkSocketInto(stream, [5, 1, 300]),  # type: ignore[arg-type]
                               websocket.WebSocketProtocolException,
                               websocket.WebSocketConnectionClosedException)
    assert read_until_error(reader) == (expected, websocket.WebSocketConnectionClosedException)
    for bad, _ in VIOLATIONS:
        for cls in (ChunkSocket, ChunkSocketInto):
            reader = SocketFrameReader(cls(stream + bad, []),  # type: ignore[arg-type]
                                       websocket.WebSocketProtocolException,
                                       websocket.WebSocketConnectionClosedException)
            assert read_until_error(reader)[1] is websocket.WebSocketProtocolException


@pytest.mark.parametrize("size", [0, 125, 126, 65_535, 65_536, 300_000])
def test_cut_frame_bytes_is_the_size_the_cut_frames_head_announces(size: int) -> None:
    frame = encode_frame(b"x" * size)
    for cut in (1, 2, 3, 5, 9, 11, len(frame) - 1):
        if not 0 < cut < len(frame):
            continue
        parser = FrameParser()
        assert parser.feed(frame[:cut]) == []
        head = 2 if size < 126 else 4 if size < 65_536 else 10
        assert parser.cut_frame_bytes == (len(frame) if cut >= head else 0), cut
        assert parser.feed(frame[cut:]) == [(OP_TEXT, b"x" * size)]
        assert parser.cut_frame_bytes == 0

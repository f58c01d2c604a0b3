"""The hot path's shortcuts give exactly what the plain path gives.

* the server's pre-built WebSocket frames equal websockets' own bytes, and its
  direct (no hand-off) writes keep order and lose nothing when a peer's socket
  fills up and part of a frame waits;
* the client's frame reader parses what websocket-client would, whatever the
  read boundaries, and refuses what RFC 6455 forbids;
* the orjson decode path (``[fast]`` extra) answers exactly as the stdlib path.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from typing import Any, Callable, List, Tuple

import pytest
import websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

from sente_lite import Client, Server
from sente_lite.wire import protocol as p
from sente_lite.client.io import _FrameReader
from sente_lite.discovery import wait_for
from sente_lite.server.server import _text_frame
from support import WAIT_S, RawWS


# --------------------------------------------------------------------------- server
@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_prebuilt_frame_is_what_websockets_sends(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    assert _text_frame(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])


def _read_frames(sock: socket.socket, want: int, deadline_s: float = WAIT_S) -> List[Tuple[int, bytes]]:
    """Read ``want`` frames from a raw socket (server frames are unmasked)."""
    sock.settimeout(deadline_s)
    buf = b""
    out: List[Tuple[int, bytes]] = []
    while len(out) < want:
        chunk = sock.recv(1 << 16)
        assert chunk, "server closed the connection"
        buf += chunk
        while len(buf) >= 2:
            n, head = buf[1] & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    break
                n, head = struct.unpack("!H", buf[2:4])[0], 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n, head = struct.unpack("!Q", buf[2:10])[0], 10
            if len(buf) < head + n:
                break
            assert buf[0] & 0x80 and not buf[1] & 0x80, "frame not final or masked"
            out.append((buf[0] & 0x0F, buf[head:head + n]))
            buf = buf[head + n:]
    return out


def test_direct_writes_keep_order_when_the_peer_stalls(make_server: Callable[..., Server]) -> None:
    """A peer with a tiny receive buffer that reads nothing for a while: the server's
    sends go partly direct, partly into websockets' buffer, partly to the queue; a
    WebSocket ping answered meanwhile must not cut a frame. All arrive, in order."""
    srv = make_server(max_queued_bytes_per_conn=64 << 20, start=False)
    # small kernel buffers on both sides, so sends soon fail or go out in part
    srv.on_connect(lambda conn: conn._ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096))
    srv.start()
    raw = RawWS(srv.url, sockopt=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)])
    try:
        raw.send_frame(p.EV_SUBSCRIBE, {p.K_CHANNEL: "c"}, "s1")
        assert raw.recv()[0] == p.EV_REPLY
        sock = raw.ws.sock
        n_msgs = 300
        publisher = threading.Thread(
            target=lambda: [srv.publish("c", {"i": i, "pad": "y" * (300 + 97 * i)})
                            for i in range(n_msgs)],
            name="test-publisher")
        publisher.start()
        wait_for(lambda: srv.stats()["queued_bytes"] > 0 or not publisher.is_alive(), WAIT_S,
                 "the server to queue for the stalled peer")
        raw.ws.ping(b"mid-stream")  # websockets answers with a pong while frames are pending
        frames = _read_frames(sock, n_msgs + 1)
        publisher.join(WAIT_S)
        assert not publisher.is_alive()
    finally:
        raw.ws.close()
    texts = [json.loads(data) for op, data in frames if op == 0x1]
    pongs = [data for op, data in frames if op == 0xA]
    assert pongs == [b"mid-stream"]
    msgs = [t for t in texts if t[0] == p.EV_CHANNEL_MSG]
    assert [m[1]["data"]["i"] for m in msgs] == list(range(n_msgs))
    assert [m[1]["offset"] for m in msgs] == list(range(1, n_msgs + 1))


def test_slow_consumer_still_closed_with_direct_writes(make_server: Callable[..., Server]) -> None:
    srv = make_server(max_queued_bytes_per_conn=64 * 1024, close_timeout=0.5)
    raw = RawWS(srv.url, sockopt=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)])
    try:
        raw.send_frame(p.EV_SUBSCRIBE, {p.K_CHANNEL: "c"}, "s1")
        assert raw.recv()[0] == p.EV_REPLY
        for i in range(20_000):
            if srv.publish("c", {"i": i, "pad": "z" * 500}).delivered == 0:
                break
        wait_for(lambda: srv.stats()["closes_by_code"].get(p.CLOSE_SLOW_CONSUMER) == 1, WAIT_S,
                 "the slow consumer to be closed with 4001")
        assert srv.stats()["slow_consumer_closes"] == 1
    finally:
        raw.ws.abort()


def test_fan_out_reaches_every_client_in_order(make_server: Callable[..., Server],
                                               make_client: Callable[..., Client]) -> None:
    srv = make_server()
    n_clients, n_msgs = 4, 500
    got: List[List[int]] = [[] for _ in range(n_clients)]
    done = [threading.Event() for _ in range(n_clients)]
    clients = []
    for k in range(n_clients):
        def handler(msg: Any, k: int = k) -> None:
            got[k].append(msg.offset)
            if len(got[k]) == n_msgs * n_clients:
                done[k].set()
        c = make_client(srv.url)
        c.subscribe("fan", handler)
        clients.append(c)

    def publish(c: Client) -> None:
        for i in range(n_msgs):
            c.publish("fan", {"i": i})

    threads = [threading.Thread(target=publish, args=(c,), name="test-pub") for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    for ev in done:
        assert ev.wait(WAIT_S)
    for offsets in got:
        assert offsets == list(range(1, n_msgs * n_clients + 1))


# --------------------------------------------------------------------------- client
def _server_frame(op: int, payload: bytes, fin: bool = True) -> bytes:
    n = len(payload)
    b0 = (0x80 if fin else 0) | op
    if n < 126:
        return bytes((b0, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", b0, 126, n) + payload
    return struct.pack("!BBQ", b0, 127, n) + payload


class _ChunkSocket:
    """A socket stand-in that returns ``data`` in the given chunk sizes, then EOF."""

    def __init__(self, data: bytes, sizes: List[int]) -> None:
        self.data = data
        self.sizes = sizes

    def recv(self, n: int) -> bytes:
        size = min(n, self.sizes.pop(0) if self.sizes else n)
        out, self.data = self.data[:size], self.data[size:]
        return out


def _read_all(data: bytes, sizes: List[int]) -> List[Tuple[int, bytes]]:
    reader = _FrameReader(_ChunkSocket(data, sizes))  # type: ignore[arg-type]
    out: List[Tuple[int, bytes]] = []
    with pytest.raises(websocket.WebSocketConnectionClosedException):
        while True:
            out.extend(reader.read())
    return out


_MESSAGES = [(0x1, b"[\"a/b\"]"), (0x9, b"hi"), (0x1, b"x" * 200), (0x2, b"\x00\x01"),
             (0x1, b"y" * 70_000), (0x1, b"z" * 400_000), (0xA, b""), (0x8, b"\x03\xe8")]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(1, 100_000), max_size=60))
def test_frame_reader_any_read_boundaries(sizes: List[int]) -> None:
    data = b"".join(_server_frame(op, payload) for op, payload in _MESSAGES)
    assert _read_all(data, list(sizes)) == _MESSAGES


def test_frame_reader_reassembles_fragments_around_control_frames() -> None:
    data = (_server_frame(0x1, b"ab", fin=False) + _server_frame(0x9, b"p")
            + _server_frame(0x0, b"cd", fin=False) + _server_frame(0x0, b"ef"))
    assert _read_all(data, [3, 1, 2, 100]) == [(0x9, b"p"), (0x1, b"abcdef")]


@pytest.mark.parametrize("data", [
    bytes((0x81, 0x82, 1, 2, 3, 4, 5, 6)),           # masked server frame
    bytes((0xC1, 0x01)) + b"x",                      # RSV1 without an extension
    _server_frame(0x0, b"x"),                        # continuation with no message
    _server_frame(0x1, b"a", fin=False) + _server_frame(0x1, b"b"),  # new message mid-fragment
    _server_frame(0x9, b"p" * 126),                  # control frame too long
    _server_frame(0x3, b""),                         # reserved opcode
])
def test_frame_reader_refuses_protocol_errors(data: bytes) -> None:
    reader = _FrameReader(_ChunkSocket(data, []))  # type: ignore[arg-type]
    with pytest.raises(websocket.WebSocketProtocolException):
        reader.read()


# --------------------------------------------------------------------------- codec
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12)

_TRICKY = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "18446744073709551616",
           "-9223372036854775809", "123456789012345678901234567890", '"\\ud800"',
           '"\\ud83d\\ude00"', '"\\udc00\\ud800"', "[" * 300 + "]" * 300, "1.0", "-0",
           '"\x01"', "01", "[1,]", '{"a":1,"a":2}', "tru", '"\\x41"', "\ufeff[]"]


def _outcome(decode: Callable[[Any], p.Frame], text: Any) -> Tuple[str, Any]:
    try:
        return "ok", decode(text)
    except p.FrameError as exc:
        return "error", (exc.message, exc.cb_id)


def _stdlib_decode(text: Any, monkeypatch: pytest.MonkeyPatch) -> Tuple[str, Any]:
    with monkeypatch.context() as m:
        m.setattr(p, "_orjson", None)
        return _outcome(p.decode, text)


def _same_both_ways(text: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fast = _outcome(p.decode, text)
    assert fast == _stdlib_decode(text, monkeypatch), text
    assert repr(fast) == repr(_stdlib_decode(text, monkeypatch))  # int vs float, -0.0 vs 0.0


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(json_values, st.sampled_from(["app/ev", "bad event"]), st.none() | st.text(max_size=70),
       st.booleans())
def test_fast_decode_matches_stdlib_on_frames(monkeypatch: pytest.MonkeyPatch, value: Any,
                                              event: str, cb_id: Any, as_bytes: bool) -> None:
    pytest.importorskip("orjson")
    items = [event, value] + ([cb_id] if cb_id is not None else [])
    text = json.dumps(items, ensure_ascii=bool(cb_id and len(cb_id) % 2))
    _same_both_ways(text.encode("utf-8", "surrogatepass") if as_bytes else text, monkeypatch)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(_TRICKY + ['"a/b"', ",", "[", "]", "{", "}", ":", '"k"', "1"]),
                max_size=8), st.binary(max_size=6), st.booleans())
def test_fast_decode_matches_stdlib_on_odd_text(monkeypatch: pytest.MonkeyPatch, parts: List[str],
                                                junk: bytes, as_bytes: bool) -> None:
    pytest.importorskip("orjson")
    text = '["a/b",' + "".join(parts) + "]"
    _same_both_ways(text.encode("utf-8", "surrogatepass") + junk if as_bytes else text, monkeypatch)


@pytest.mark.parametrize("token", _TRICKY)
def test_fast_decode_matches_stdlib_on_tricky_tokens(token: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("orjson")
    for text in (f'["a/b",{token}]', f'["a/b",{token}]'.encode("utf-8", "surrogatepass"),
                 b'["a/b","\xff"]', b'["a/b","\xed\xa0\x80"]'):
        _same_both_ways(text, monkeypatch)


def test_publish_waiting_for_a_busy_channel_does_not_block_other_channels() -> None:
    from sente_lite.brokers.local import ChannelRegistry
    reg = ChannelRegistry("e")
    reg.subscribe("m", "a")
    reg.subscribe("m", "b")
    inside, release = threading.Event(), threading.Event()

    def slow_deliver(member: Any, frame: Any) -> bool:
        inside.set()
        return release.wait(WAIT_S)

    first = threading.Thread(target=reg.publish, args=("a", lambda o, e: b"1", slow_deliver),
                             name="test-pub-a1")
    first.start()
    assert inside.wait(WAIT_S)
    second = threading.Thread(target=reg.publish, args=("a", lambda o, e: b"2", lambda m, f: True),
                              name="test-pub-a2")
    second.start()  # waits for channel "a"
    try:
        wait_for(lambda: second.is_alive() or None, WAIT_S, "the second publish to start waiting")
        done = threading.Event()
        other = threading.Thread(
            target=lambda: (reg.publish("b", lambda o, e: b"3", lambda m, f: True), done.set()),
            name="test-pub-b")
        other.start()
        assert done.wait(WAIT_S), "a publish on another channel waited for channel 'a'"
        other.join(WAIT_S)
    finally:
        release.set()
        first.join(WAIT_S)
        second.join(WAIT_S)
    assert reg.publish("a", lambda o, e: b"4", lambda m, f: True).offset == 3

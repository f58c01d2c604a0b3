"""What a connection's input may hold while its handler is slow is bounded in frames and
bytes: above the mark the server stops reading that socket (TCP pushes back), and reads
again when the handler catches up; nothing is dropped, order is kept."""

from __future__ import annotations

import json
import threading
import tracemalloc
import zlib
from typing import Any, Callable, List

import pytest

from sente_lite import Client, Server
from sente_lite.wire import protocol as p
from sente_lite.testing.abuse import OP_TEXT, RawPeer, encode_frame
from support import WAIT_S, Recorder, wait_until

QUIET = {"heartbeat_ms": 600_000}
INFLATED = 1_000_000


def deflated(text: bytes) -> bytes:
    """``text`` as one permessage-deflate message's payload (RFC 7692 7.2.1)."""
    c = zlib.compressobj(wbits=-15)
    data = c.compress(text) + c.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]


def opened(srv: Server, deflate: bool) -> RawPeer:
    peer = RawPeer(srv.host, srv.port, timeout=WAIT_S)
    headers = [("Sec-WebSocket-Extensions", "permessage-deflate")] if deflate else []
    answer = peer.upgrade(headers=headers, timeout=WAIT_S)
    assert answer.status == 101
    assert ("permessage-deflate" in answer.headers.get("sec-websocket-extensions", "")) == deflate
    return peer


def slow_server(make_server: Callable[..., Server], **kwargs: Any) -> tuple:
    srv = make_server(**QUIET, **kwargs)
    release = threading.Event()
    handled = Recorder()

    @srv.on("app/slow")
    def slow(conn: Any, data: Any) -> None:
        release.wait(WAIT_S)
        handled(data[0])

    srv.on("app/echo", lambda conn, data: data)
    return srv, release, handled


def sender(peer: RawPeer, frames: List[bytes]) -> threading.Thread:
    """Write every frame from a thread of its own (it blocks while the server pushes back)."""
    def run() -> None:
        try:
            for frame in frames:
                peer.send(frame)
        except OSError:
            pass

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_deflated_flood_to_a_slow_handler_holds_a_bounded_input(
        make_server: Callable[..., Server], make_client: Callable[..., Client]) -> None:
    srv, release, handled = slow_server(make_server, compression="deflate")
    limit = srv.inbound.max_inbound_bytes
    other = make_client(srv.url)
    count = 200
    frames = [encode_frame(deflated(json.dumps(["app/slow", [i, "a" * INFLATED]]).encode()),
                           OP_TEXT, rsv=4) for i in range(count)]
    tracemalloc.start()
    try:
        with opened(srv, deflate=True) as peer:
            base = tracemalloc.get_traced_memory()[0]
            t = sender(peer, frames)
            wait_until(lambda: srv.stats()["inbound_pauses"] >= 1, what="reading paused")
            for i in range(3):  # everyone else is served meanwhile
                assert other.request("app/echo", i, timeout=WAIT_S) == i
            stats = srv.stats()
            held = tracemalloc.get_traced_memory()[0] - base
            assert stats["inbound_bytes"] <= limit + srv.max_message_bytes
            assert held < 3 * (limit + srv.max_message_bytes), f"{held / 1e6:.0f} MB held"
            tracemalloc.stop()
            release.set()
            assert handled.wait_count(count, timeout=60) == list(range(count))
            t.join(WAIT_S)
    finally:
        release.set()
        tracemalloc.stop()
    wait_until(lambda: srv.stats()["inbound_bytes"] == 0, what="input drained")


@pytest.mark.parametrize("max_frames", [1, 10, 100])
def test_many_small_frames_wait_within_max_inbound_frames(
        make_server: Callable[..., Server], max_frames: int) -> None:
    srv, release, handled = slow_server(make_server, max_inbound_frames=max_frames)
    count = 3000
    batch = b"".join(encode_frame(json.dumps(["app/slow", [i]]).encode(), OP_TEXT)
                     for i in range(count))
    with opened(srv, deflate=False) as peer:
        t = sender(peer, [batch])
        wait_until(lambda: srv.stats()["inbound_pauses"] >= 1, what="reading paused")
        highest = max(srv.stats()["inbound_frames"] for _ in range(20))
        assert highest <= max_frames
        release.set()
        assert handled.wait_count(count, timeout=60) == list(range(count))
        t.join(WAIT_S)
    stats = srv.stats()
    assert stats["inbound_frames"] == 0 and stats["inbound_pauses"] >= 1


def test_a_paused_connection_is_not_closed_for_silence(make_server: Callable[..., Server]) -> None:
    """While the server does not read a peer, its silence is not the peer's."""
    srv = make_server(heartbeat_ms=200, max_inbound_frames=2)
    release = threading.Event()
    handled = Recorder()

    @srv.on("app/slow")
    def slow(conn: Any, data: Any) -> None:
        release.wait(WAIT_S)
        handled(data)

    with opened(srv, deflate=False) as peer:
        peer.send(b"".join(encode_frame(json.dumps(["app/slow", i]).encode(), OP_TEXT)
                           for i in range(10)))
        wait_until(lambda: srv.stats()["inbound_pauses"] >= 1, what="reading paused")
        # three heartbeat timeouts (0.6 s each) pass while paused; a tick reads the gauge
        wait_until(lambda: srv.stats()["uptime_s"] > 2.5, what="time to pass")
        assert srv.stats()["heartbeat_timeouts"] == 0
        release.set()
        assert handled.wait_count(10) == list(range(10))


@pytest.mark.parametrize("name,bad", [("max_inbound_frames", 0), ("max_inbound_bytes", -5),
                                      ("max_inbound_bytes", 2.5), ("max_inbound_frames", None),
                                      ("max_inbound_bytes", float("nan")),
                                      ("max_inbound_frames", 10 ** 30)])
def test_inbound_settings_are_validated(name: str, bad: object) -> None:
    with pytest.raises(ValueError, match=f"{name} must be"):
        Server(**{name: bad})


@pytest.mark.parametrize("deferred", [False, True], ids=["decided-at-once", "authenticate"])
def test_frames_sent_with_the_upgrade_request_are_handled_after_the_101(
        make_server: Callable[..., Server], deferred: bool) -> None:
    """Bytes after the request's head are counted as frames from their start, and wait
    for the 101 when the upgrade is decided on a worker."""
    from sente_lite.testing.abuse import upgrade_request
    kwargs = {"authenticate": lambda request: "u1"} if deferred else {}
    srv = make_server(max_inbound_frames=2, **QUIET, **kwargs)
    srv.on("app/echo", lambda conn, data: data)
    with RawPeer(srv.host, srv.port, timeout=WAIT_S) as peer:
        frames = b"".join(encode_frame(json.dumps(["app/echo", i, f"c{i}"]).encode(), OP_TEXT)
                          for i in range(20))
        peer.send(upgrade_request(srv.host, srv.port) + frames)
        assert peer.read_http(WAIT_S).status == 101
        assert peer.read_text(WAIT_S)[0] == p.EV_HANDSHAKE
        assert [peer.read_text(WAIT_S)[1] for _ in range(20)] == list(range(20))


def test_a_reply_behind_a_few_frames_reaches_a_handler_waiting_for_it(
        make_server: Callable[..., Server]) -> None:
    """While the server awaits a reply on a connection, reading goes on up to twice the
    marks, so a reply sent after a few more frames still arrives."""
    srv = make_server(max_inbound_frames=4, **QUIET)
    answers = Recorder()
    srv.on("app/ask", lambda conn, data: answers(conn.request("app/q", data, timeout=WAIT_S)))
    srv.on("app/noop", lambda conn, data: None)
    with opened(srv, deflate=False) as peer:
        assert peer.read_text(WAIT_S)[0] == p.EV_HANDSHAKE
        peer.send(encode_frame(json.dumps(["app/ask", "x"]).encode(), OP_TEXT))
        question = peer.read_text(WAIT_S)
        assert question[0] == "app/q"
        more = [encode_frame(json.dumps(["app/noop", i]).encode(), OP_TEXT) for i in range(5)]
        reply = encode_frame(json.dumps([p.EV_REPLY, "yes", question[2]]).encode(), OP_TEXT)
        peer.send(b"".join(more) + reply)
        assert answers.wait_count(1, timeout=WAIT_S / 3) == ["yes"]

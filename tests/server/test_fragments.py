"""Fragmented messages: a bounded number of fragments, a bounded time, no per-fragment
memory; each limit closes with 1008 and is counted."""

from __future__ import annotations

import threading
import tracemalloc
from typing import Callable

import pytest

from sente_lite import Client, Server
from sente_lite.wire import protocol as p
from sente_lite.testing.abuse import OP_BINARY, OP_CONT, OP_TEXT, encode_frame
from rawpeers import open_raw
from support import WAIT_S, wait_until

QUIET = {"heartbeat_ms": 600_000}


def fragments(first: bytes, rest: int, size: int, opcode: int = OP_TEXT, fin: bool = False) -> bytes:
    """A message's first frame, then ``rest`` continuations of ``size`` spaces (the last
    final when ``fin``)."""
    out = [encode_frame(first, opcode, fin=False)]
    out += [encode_frame(b" " * size, OP_CONT, fin=fin and i == rest - 1) for i in range(rest)]
    return b"".join(out)


@pytest.mark.parametrize("size,opcode", [(10, OP_TEXT), (1, OP_TEXT), (0, OP_BINARY)])
def test_a_message_in_too_many_fragments_is_closed_and_counted(
        make_server: Callable[..., Server], make_client: Callable[..., Client],
        size: int, opcode: int) -> None:
    srv = make_server(**QUIET)  # default max_fragments
    srv.on("app/echo", lambda conn, data: data)
    good = make_client(srv.url)
    with open_raw(srv) as peer:
        peer.send(fragments(b'["app/x",', 5000, size, opcode))
        code, _ = peer.read_until_close(WAIT_S)
    assert code == 1008
    assert srv.stats()["fragment_limit_closes"] == 1
    assert good.request("app/echo", "still here", timeout=WAIT_S) == "still here"


@pytest.mark.parametrize("limit", [1, 3, 50])
def test_max_fragments_is_exact(make_server: Callable[..., Server], limit: int) -> None:
    srv = make_server(max_fragments=limit, **QUIET)
    srv.on("app/echo", lambda conn, data: data)
    with open_raw(srv) as peer:  # exactly limit frames: handled
        text = b'["app/echo","' + b"a" * (limit - 1) + b'","c1"]'
        head, body = text[:len(text) - limit + 1], text[len(text) - limit + 1:]
        parts = [encode_frame(head, OP_TEXT, fin=limit == 1)]
        parts += [encode_frame(body[i:i + 1], OP_CONT, fin=i == len(body) - 1)
                  for i in range(len(body))]
        peer.send(b"".join(parts))
        assert peer.read_text(WAIT_S) == [p.EV_REPLY, "a" * (limit - 1), "c1"]
    with open_raw(srv) as peer:  # one more: closed
        peer.send(fragments(b'["app/echo",', limit, 1))
        code, _ = peer.read_until_close(WAIT_S)
    assert code == 1008
    assert srv.stats()["fragment_limit_closes"] == 1


def test_a_fragmented_message_left_unfinished_is_closed_in_time(
        make_server: Callable[..., Server]) -> None:
    """Each fragment is life for the heartbeat: the message itself has a deadline."""
    srv = make_server(fragment_timeout=0.5, **QUIET)
    stop = threading.Event()
    with open_raw(srv) as peer:
        peer.send(encode_frame(b'["app/x",', OP_TEXT, fin=False))

        def dribble() -> None:
            while not stop.wait(0.1):
                try:
                    peer.send(encode_frame(b" ", OP_CONT, fin=False))
                except OSError:
                    return

        t = threading.Thread(target=dribble)
        t.start()
        try:
            code, _ = peer.read_until_close(WAIT_S)
        finally:
            stop.set()
            t.join()
    assert code == 1008
    assert srv.stats()["fragment_timeout_closes"] == 1


def test_the_fragment_deadline_defaults_to_the_heartbeat_timeout(
        make_server: Callable[..., Server]) -> None:
    srv = make_server(heartbeat_ms=200)
    assert srv.inbound.fragment_timeout == pytest.approx(0.6)
    with open_raw(srv) as peer:
        peer.send(encode_frame(b'["app/x",', OP_TEXT, fin=False))
        for _ in range(3):
            peer.send(encode_frame(b" ", OP_CONT, fin=False))
        wait_until(lambda: srv.stats()["fragment_timeout_closes"] == 1, what="fragment deadline")


@pytest.mark.parametrize("name,bad", [
    ("max_fragments", 0), ("max_fragments", -1), ("max_fragments", 1.5), ("max_fragments", "10"),
    ("max_fragments", True), ("max_fragments", 10 ** 30), ("fragment_timeout", float("nan")),
    ("fragment_timeout", float("inf")), ("fragment_timeout", 0), ("fragment_timeout", "1")])
def test_fragment_settings_are_validated(name: str, bad: object) -> None:
    with pytest.raises(ValueError, match=f"{name} must be"):
        Server(**{name: bad})


def test_one_byte_fragments_hold_no_more_than_the_message(
        make_server: Callable[..., Server]) -> None:
    """Memory held for an unfinished message is its bytes, not one object per fragment."""
    limit = 64 * 1024
    srv = make_server(max_message_bytes=limit, max_fragments=1_000_000, **QUIET)
    n = limit - 100
    data = fragments(b"[", n, 1)
    tracemalloc.start()
    try:
        with open_raw(srv) as peer:
            before = tracemalloc.get_traced_memory()[0]
            peer.send(data)
            conn = wait_until(lambda: next(iter(srv._conns.values()), None))
            wait_until(lambda: conn._link.fragments_bytes == n + 1, what="every fragment read")
            held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 4 * limit, f"{held} bytes held for a {n}-byte unfinished message"

"""Application code never runs on the network thread, whatever the framing: events in a
``chsk/batch`` go to the connection's lane like frames sent alone, in arrival order."""

from __future__ import annotations

import random
import threading
from typing import Any, Callable, List, Optional, Tuple

import pytest

from sente_lite import Client, Server
from sente_lite.wire import protocol as p
from rawpeers import PackedPeer, packers_available
from support import WAIT_S, Recorder, wait_until

QUIET = {"heartbeat_ms": 600_000}


def net_thread(srv: Server) -> Optional[int]:
    return srv._loop.thread_ident  # type: ignore[union-attr]


@pytest.mark.parametrize("packer", packers_available())
def test_a_slow_handler_reached_by_a_batch_does_not_stall_other_connections(
        make_server: Callable[..., Server], make_client: Callable[..., Client], packer: str) -> None:
    srv = make_server(**QUIET)
    entered, release = threading.Event(), threading.Event()
    threads: List[str] = []

    @srv.on("app/slow")
    def slow(conn: Any, data: Any) -> None:
        threads.append(threading.current_thread().name)
        entered.set()
        release.wait(WAIT_S)

    srv.on("app/echo", lambda conn, data: data)
    other = make_client(srv.url)
    try:
        with PackedPeer(srv, packer) as peer:
            peer.send_payloads([peer.packer.batch([peer.encode("app/slow", 1),
                                                   peer.encode("app/slow", 2)])])
            assert entered.wait(WAIT_S), "the batched handler never ran"
            for i in range(3):  # the network thread still serves everyone
                assert other.request("app/echo", i, timeout=5.0) == i
    finally:
        release.set()
    wait_until(lambda: len(threads) == 2, what="both batched events handled")
    assert all(name.startswith("sente-lite-worker-") for name in threads), threads


@pytest.mark.parametrize("reply_batched", [True, False], ids=["reply-in-batch", "reply-alone"])
@pytest.mark.parametrize("packer", packers_available())
def test_request_from_a_handler_reached_by_a_batch_works(
        make_server: Callable[..., Server], packer: str, reply_batched: bool) -> None:
    srv = make_server(**QUIET)
    answers = Recorder()

    @srv.on("app/ask")
    def ask(conn: Any, data: Any) -> Any:
        answer = conn.request("app/q", data, timeout=WAIT_S)
        answers((data, answer, threading.get_ident() != net_thread(srv)))
        return answer

    with PackedPeer(srv, packer) as peer:
        peer.send_payloads([peer.packer.batch([peer.encode("app/noop"),
                                               peer.encode("app/ask", "x", "c1")])])
        question = peer.read()
        assert question is not None and question.event == "app/q" and question.data == "x"
        reply = peer.encode(p.EV_REPLY, "X!", question.cb_id)
        peer.send_payloads([peer.packer.batch([reply, peer.encode("app/noop")])
                            if reply_batched else reply])
        answered = peer.read()
        assert answered is not None and (answered.event, answered.data, answered.cb_id) == (
            p.EV_REPLY, "X!", "c1")
    assert answers.wait_count(1) == [("x", "X!", True)]


def test_request_from_a_handler_works_with_a_buffering_client(
        make_server: Callable[..., Server], make_client: Callable[..., Client]) -> None:
    """The project's own client batches (send_buf_ms): its events and its answers to the
    server's requests arrive in chsk/batch frames."""
    srv = make_server(**QUIET)
    srv.on("app/ask", lambda conn, data: conn.request("app/q", data, timeout=WAIT_S))
    srv.on("app/noop", lambda conn, data: None)
    c = make_client(srv.url, send_buf_ms=30)
    c.on("app/q", lambda data: f"answer {data}")
    for i in range(3):
        c.send("app/noop", i)
        assert c.request("app/ask", i, timeout=WAIT_S) == f"answer {i}"
    assert c.stats().get("batches_out", 0) >= 1


def mixed_messages(peer: PackedPeer, rng: random.Random, n: int) -> Tuple[List[bytes], List[Any]]:
    """``n`` frames (app events, requests, publishes) in single or batched messages; the
    payloads to send and the order in which they must be handled."""
    frames: List[bytes] = []
    expected: List[Any] = []
    for i in range(n):
        kind = rng.choice(["event", "request", "publish", "ping"])
        if kind == "ping":
            frames.append(peer.encode(p.EV_PING, None, f"k{i}"))
            continue
        if kind == "publish":
            frames.append(peer.encode(p.EV_PUBLISH, {p.K_CHANNEL: f"ch-{i}", p.K_DATA: i},
                                      f"p{i}" if rng.random() < 0.5 else None))
            expected.append(("publish", f"ch-{i}"))
        else:
            frames.append(peer.encode("app/seq", i, f"r{i}" if kind == "request" else None))
            expected.append(("app/seq", i))
    payloads: List[bytes] = []
    while frames:
        k = rng.choice([1, 1, 2, 3, 5])
        group, frames = frames[:k], frames[k:]
        payloads.append(group[0] if len(group) == 1 else peer.packer.batch(group))
    return payloads, expected


@pytest.mark.parametrize("seed", range(6))
def test_frames_are_handled_in_arrival_order_whatever_their_framing(
        make_server: Callable[..., Server], seed: int) -> None:
    rng = random.Random(seed)
    handled = Recorder()
    release = threading.Event()
    packer = packers_available()[seed % len(packers_available())]
    block_first = seed % 2 == 0

    def authorize(conn: Any, action: str, channel_id: str) -> bool:
        handled(("publish", channel_id, threading.get_ident() != net_thread(srv)))
        return True

    srv = make_server(authorize=authorize, **QUIET)

    @srv.on("app/seq")
    def seq(conn: Any, data: Any) -> Any:
        if data == "block":
            release.wait(WAIT_S)
        handled(("app/seq", data, threading.get_ident() != net_thread(srv)))
        return data

    with PackedPeer(srv, packer) as peer:
        payloads, expected = mixed_messages(peer, rng, 60)
        if block_first:  # the lane is busy while everything else arrives
            payloads.insert(0, peer.encode("app/seq", "block"))
            expected.insert(0, ("app/seq", "block"))
        for i in range(0, len(payloads), 7):
            peer.send_payloads(payloads[i:i + 7])
        release.set()
        got = handled.wait_count(len(expected))
        asked = [peer.packer.decode(x, peer.packer.binary) for x in payloads]
        inner = [f for a in asked for f in ([p.frame_of(v) for v in a.data]
                                            if a.event == p.EV_BATCH else [a])]
        want = [f.cb_id for f in inner if f.cb_id is not None]
        answered: List[str] = []
        while len(answered) < len(want):
            frame = peer.read()
            assert frame is not None, "closed"
            if frame.cb_id is not None:
                answered.append(frame.cb_id)
    assert [g[:2] for g in got] == expected
    assert all(g[2] for g in got), "application code ran on the network thread"
    assert answered == want, "answers out of the order of their requests"

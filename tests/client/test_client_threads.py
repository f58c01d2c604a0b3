"""The client's two threads: whoever read a batch runs its handlers; the other
takes over reading when a handler is slow or waits for a reply; reads closer
together than ``read_coalesce_ms`` are merged."""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, Callable, List

import pytest

import sente_lite.client.io as client_mod
from sente_lite import Client, Server
from sente_lite.wire.framing import OP_BINARY, OP_CLOSE, OP_PING, OP_TEXT
from support import WAIT_S, Recorder, wait_until


def test_handlers_run_one_at_a_time_in_arrival_order(make_server: Callable[..., Server],
                                                     make_client: Callable[..., Client]) -> None:
    # Either thread may run handlers (the roles move between them); never two at once.
    srv = make_server()
    c = make_client(srv.url, read_coalesce_ms=0)
    running = [0]
    overlaps: List[int] = []
    got = Recorder()

    def handler(msg: Any) -> None:
        running[0] += 1
        if running[0] > 1:
            overlaps.append(msg.data)
        sum(range(20_000))  # some work, so that two handlers at once would overlap
        running[0] -= 1
        got(msg)

    c.subscribe("ch", handler)
    for i in range(50):
        srv.publish("ch", i)
    got.wait_count(50)
    assert [m.data for m in got.items] == list(range(50))
    assert overlaps == []


def test_request_from_a_handler_is_answered_at_once(make_server: Callable[..., Server],
                                                     make_client: Callable[..., Client],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # with the slow-handler fallback out of reach, only the explicit hand-off can
    # get the reply read while the handler waits for it
    monkeypatch.setattr(client_mod, "HANDLER_HANDOFF_S", 60.0)
    srv = make_server()
    srv.on("app/echo", lambda conn, data: data)
    c = make_client(srv.url)
    answers: List[Any] = []
    done = threading.Event()

    def on_ask(data: Any) -> Any:
        answers.append(c.request("app/echo", data, timeout=WAIT_S))
        answers.append(c.publish("ch", data, ack=True, timeout=WAIT_S)["delivered"])
        done.set()
        return "ok"

    c.on("app/ask", on_ask)
    started = time.monotonic()
    assert srv.request(c.conn_id, "app/ask", 7, timeout=WAIT_S) == "ok"  # type: ignore[arg-type]
    assert done.wait(WAIT_S)
    assert answers == [7, 0]
    assert time.monotonic() - started < 5.0  # not a request timeout (WAIT_S) in disguise


def test_subscribe_from_a_handler_gets_its_answer(make_server: Callable[..., Server],
                                                  make_client: Callable[..., Client],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_mod, "HANDLER_HANDOFF_S", 60.0)
    srv = make_server()
    c = make_client(srv.url)
    replies: List[Any] = []
    c.on("app/join", lambda data: replies.append(c.subscribe(data, timeout=WAIT_S)))
    srv.send(c.conn_id, "app/join", "room")  # type: ignore[arg-type]
    wait_until(lambda: replies, what="the subscribe answer inside the handler")
    assert replies[0]["channel-id"] == "room"
    c.unsubscribe("room")


def test_a_slow_handler_hands_reading_over_and_keeps_order(make_server: Callable[..., Server],
                                                           make_client: Callable[..., Client]) -> None:
    srv = make_server(heartbeat_ms=200, heartbeat_timeout_ms=30_000)
    c = make_client(srv.url)
    release = threading.Event()
    entered = threading.Event()
    seen: List[int] = []

    def handler(msg: Any) -> None:
        if msg.data == 0:
            entered.set()
            release.wait(WAIT_S)
        seen.append(msg.data)

    c.subscribe("ch", handler)
    srv.publish("ch", 0)
    try:
        assert entered.wait(WAIT_S)
        for i in range(1, 101):
            srv.publish("ch", i)
        # the other thread reads meanwhile: the messages arrive and wait in order
        wait_until(lambda: c.stats()["channel_msgs"] == 101, what="101 messages read")
        # counted as read before they are queued: wait for the queue, then it must hold them all
        wait_until(lambda: c.stats()["handler_queue"] == 100, what="100 messages queued")
        assert seen == []  # the first handler still runs: none of them overtook it
        frames_in = srv.connections()[0]["frames-in"]
        wait_until(lambda: srv.connections()[0]["frames-in"] >= frames_in + 2,
                   what="pongs while the handler blocks")
    finally:
        release.set()
    wait_until(lambda: len(seen) == 101, what="every handler ran")
    assert seen == list(range(101))
    assert c.stats()["handler_queue"] == 0 and c.connected


def test_close_from_a_handler_stops_both_threads(make_server: Callable[..., Server],
                                                 make_client: Callable[..., Client]) -> None:
    srv = make_server()
    c = make_client(srv.url)
    closed = threading.Event()
    c.on("app/bye", lambda data: (c.close(), closed.set()))
    srv.send(c.conn_id, "app/bye")  # type: ignore[arg-type]
    assert closed.wait(WAIT_S)
    wait_until(lambda: not any(t.is_alive() for t in c._threads), what="both threads ended")
    assert c.status == "closed"


def test_close_while_a_handler_blocks_returns_within_its_timeout(
        make_server: Callable[..., Server], make_client: Callable[..., Client]) -> None:
    srv = make_server()
    c = make_client(srv.url)
    entered, release = threading.Event(), threading.Event()
    c.on("app/block", lambda data: (entered.set(), release.wait(WAIT_S)))
    srv.send(c.conn_id, "app/block")  # type: ignore[arg-type]
    assert entered.wait(WAIT_S)
    started = time.monotonic()
    c.close(timeout=1.0)
    assert time.monotonic() - started < 2.0
    release.set()
    wait_until(lambda: not any(t.is_alive() for t in c._threads), what="both threads ended")


def test_frames_arriving_close_together_are_read_together(make_server: Callable[..., Server],
                                                          make_client: Callable[..., Client]) -> None:
    srv = make_server()
    c = make_client(srv.url, read_coalesce_ms=20)
    got = Recorder()
    c.subscribe("ch", got)
    reads_before = c.stats().get("reads", 0)
    for i in range(60):  # about 60 ms of frames, one every millisecond
        srv.publish("ch", i)
        time.sleep(0.001)
    got.wait_count(60)
    reads = c.stats()["reads"] - reads_before
    # without coalescing this is up to 60 reads; with it, about one per 20 ms
    assert reads <= 15, reads
    assert [m.data for m in got.items] == list(range(60))


def test_a_frame_after_a_quiet_spell_is_read_at_once(make_server: Callable[..., Server],
                                                     make_client: Callable[..., Client]) -> None:
    srv = make_server()
    c = make_client(srv.url, read_coalesce_ms=50)
    arrived: List[float] = []
    c.subscribe("ch", lambda msg: arrived.append(time.monotonic() - msg.data))
    delays: List[float] = []
    for _ in range(5):
        time.sleep(0.08)  # the workload itself: frames further apart than 50 ms
        n = len(arrived)
        srv.publish("ch", time.monotonic())
        wait_until(lambda: len(arrived) > n, what="the frame")
        delays.append(arrived[-1])
    # a frame after a quiet spell is not held back for read_coalesce_ms
    assert sorted(delays)[2] < 0.04, delays


def test_a_busy_connection_checks_liveness_at_most_every_liveness_every_s(
        make_server: Callable[..., Server], make_client: Callable[..., Client],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # a check walks every request and unacknowledged publish: not one per read
    srv = make_server()
    c = make_client(srv.url, read_coalesce_ms=0)
    checks: List[float] = []
    check = c._roles._check_liveness
    monkeypatch.setattr(c._roles, "_check_liveness", lambda: (checks.append(time.monotonic()),
                                                              check())[1])
    got = Recorder()
    c.subscribe("ch", got)
    reads_before, checks_before, started = c.stats()["reads"], len(checks), time.monotonic()
    for i in range(300):  # the workload: about 300 ms of frames, one every millisecond
        srv.publish("ch", i)
        time.sleep(0.001)
    got.wait_count(300)
    elapsed = time.monotonic() - started
    reads, made = c.stats()["reads"] - reads_before, len(checks) - checks_before
    assert reads >= 30, reads  # busy: read after read
    assert 1 <= made <= elapsed / client_mod.LIVENESS_EVERY_S + 2, (made, reads, elapsed)


@pytest.mark.parametrize("bad", [-1, 51, float("nan"), "2"])
def test_read_coalesce_ms_is_validated(bad: Any) -> None:
    with pytest.raises(ValueError, match="read_coalesce_ms"):
        Client("ws://127.0.0.1:9/chsk", start=False, read_coalesce_ms=bad)


def test_a_request_round_trip_pays_no_coalescing_wait(make_server: Callable[..., Server],
                                                      make_client: Callable[..., Client]) -> None:
    """Coalescing holds reads back to batch a stream; a caller blocked on a reply ends the
    wait, and the rest of a reply cut across reads is read at once. With the largest
    read_coalesce_ms (50 ms) 20 requests in a row, and one reply of 1 MB (many reads),
    would take over a second if each read waited."""
    srv = make_server(max_message_bytes=4 << 20)
    srv.on("app/echo", lambda conn, data: data)
    srv.on("app/big", lambda conn, data: "x" * 1_000_000)
    c = make_client(srv.url, read_coalesce_ms=50)
    c.request("app/echo", 0, timeout=WAIT_S)
    started = time.monotonic()
    for i in range(20):
        assert c.request("app/echo", i, timeout=WAIT_S) == i
    small = time.monotonic() - started
    started = time.monotonic()
    assert len(c.request("app/big", timeout=WAIT_S)) == 1_000_000
    big = time.monotonic() - started
    assert c.stats()["reads"] > 20  # the reply came in many reads
    assert small < 0.5, f"20 requests took {small:.3f}s: reads waited to coalesce"
    assert big < 0.5, f"a 1 MB reply took {big:.3f}s: its reads waited to coalesce"


def test_the_coalescing_latch_waits_until_set_and_is_clear_after() -> None:
    latch = client_mod._Latch()
    t0 = time.monotonic()
    latch.wait_and_clear(0.05)  # not set: the whole timeout
    assert time.monotonic() - t0 >= 0.045
    latch.set()
    latch.set()  # twice is once
    t0 = time.monotonic()
    latch.wait_and_clear(WAIT_S)  # set: at once, and clear after
    assert time.monotonic() - t0 < WAIT_S / 2
    t0 = time.monotonic()
    latch.wait_and_clear(0.05)
    assert time.monotonic() - t0 >= 0.045
    latch.set()
    latch.wait_and_clear(-1.0)  # no time left: clears at once
    t0 = time.monotonic()
    latch.wait_and_clear(0.05)  # cleared: waits again
    assert time.monotonic() - t0 >= 0.045
    t0 = time.monotonic()
    latch.wait_and_clear(0.0)  # not set, no time: returns at once
    assert time.monotonic() - t0 < WAIT_S / 2
    woken = threading.Event()

    def waiter() -> None:
        latch.wait_and_clear(WAIT_S)
        woken.set()

    t = threading.Thread(target=waiter)
    t.start()
    latch.set()  # from another thread: ends the wait
    assert woken.wait(WAIT_S)
    t.join(WAIT_S)


def test_one_read_is_acted_on_in_order_data_frames_together() -> None:
    """Data frames of one read go to the client in runs (one lock each); a ping between
    them is answered after the frames before it and before those after; a close ends
    the read (what follows it is not handled)."""
    calls: List[Any] = []

    class Port:
        _counts: Any = collections.Counter()

        def _on_frames(self, frames: Any, tasks: List[tuple], now: float) -> bool:
            calls.append(("frames", [payload for _, payload in frames]))
            return False

    class Ws:
        def pong(self, payload: bytes) -> None:
            calls.append(("pong", payload))

        def send_close(self) -> None:
            calls.append(("close",))

    conn = client_mod.Connector(Port())  # type: ignore[arg-type]
    conn._take(Ws(), [(OP_TEXT, b"a"), (OP_BINARY, b"b"), (OP_PING, b"p"), (OP_TEXT, b"c")],
               [], 0.0)
    assert calls == [("frames", [b"a", b"b"]), ("pong", b"p"), ("frames", [b"c"])]
    calls.clear()
    conn._take(Ws(), [(OP_PING, b"p"), (OP_TEXT, b"a"), (OP_CLOSE, b"\x03\xe8"), (OP_TEXT, b"z")],
               [], 0.0)
    assert calls == [("pong", b"p"), ("frames", [b"a"]), ("close",)]
    assert conn._close_code == 1000
    assert Port._counts["frames_in"] == 4

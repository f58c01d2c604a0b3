"""Client behaviour on loss (PROTOCOL 8): reconnect to a restarted server, resubscribe,
flush queued sends, bounded queue, failing outstanding requests, backoff, refusal, close."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, List, Union

import pytest

from sente_lite import (ClientClosed, Client, ConnectRefused, Connection, Disconnected, RequestTimeout,
                        SendQueueFull, Server)
from sente_lite.client import io as client_module
from sente_lite.client.client import backoff_delay
from support import WAIT_S, AsgiFace, Recorder, ThreadedFace, free_port, sente_threads, wait_until

#: The tests taking ``make_face`` run on both faces: the threaded Server and the ASGI App
#: under uvicorn.
Face = Union[ThreadedFace, AsgiFace]

FAST_BACKOFF = {"backoff_base": 0.02, "backoff_max": 0.1}


def run_in_thread(fn: Callable[[], Any]) -> "Future[Any]":
    """Run ``fn`` on a plain thread; its result or exception lands in the future."""
    fut: "Future[Any]" = Future()

    def target() -> None:
        try:
            fut.set_result(fn())
        except BaseException as exc:
            fut.set_exception(exc)

    threading.Thread(target=target, daemon=True).start()
    return fut


def test_reconnects_to_a_new_server_on_the_same_port(make_server: Callable[..., Server],
                                                     make_client: Callable[..., Client]) -> None:
    srv1 = make_server()
    port = srv1.port
    c = make_client(srv1.url, **FAST_BACKOFF)
    statuses = Recorder()
    c.on_status(statuses)
    feed = Recorder()
    before = c.subscribe("feed", feed)
    srv1.publish("feed", "before")
    feed.wait_count(1)
    assert c.first is True

    srv1.stop()
    assert c.wait_status("reconnecting", WAIT_S)
    for i in range(5):
        c.send("app/queued", i)  # queued while disconnected
    queued_request = run_in_thread(lambda: c.request("app/echo", "asked while down", timeout=WAIT_S))
    wait_until(lambda: c.stats()["pending_sends"] == 6, what="6 queued sends")

    srv2 = make_server(port=port, start=False)
    got = Recorder()
    srv2.on("app/queued", lambda conn, data: got(data))
    srv2.on("app/echo", lambda conn, data: data)
    srv2.start()
    assert c.wait_connected(WAIT_S)
    assert c.server_id == srv2.server_id != srv1.server_id
    assert c.first is True  # first connection of this client-id to this server process
    assert got.wait_count(5) == [0, 1, 2, 3, 4]  # flushed in order
    assert queued_request.result(WAIT_S) == "asked while down"
    assert c.stats()["pending_sends"] == 0

    wait_until(lambda: srv2.channels.subscriber_count("feed") == 1, what="resubscribe")
    after = srv2.publish("feed", "after")
    assert after.delivered == 1
    msgs = feed.wait_count(2)
    assert [m.data for m in msgs] == ["before", "after"]
    assert msgs[1].offset == 1
    assert msgs[1].epoch != msgs[0].epoch == before["epoch"]  # type: ignore[index]
    assert c.stats().get("channel_gaps", 0) == 0
    assert statuses.items[:2] == ["reconnecting", "connected"]


def test_send_queue_is_bounded(make_client: Callable[..., Client]) -> None:
    c = make_client(f"ws://127.0.0.1:{free_port()}/chsk", connect=False, max_pending_sends=3,
                    **FAST_BACKOFF)
    for i in range(3):
        c.send("app/x", i)
    with pytest.raises(SendQueueFull, match="max_pending_sends=3"):
        c.send("app/x", 3)
    with pytest.raises(SendQueueFull):
        c.request("app/x", 4, timeout=1)
    stats = c.stats()
    assert stats["pending_sends"] == 3
    assert stats["pending_overflows"] == 2
    assert stats["outstanding_requests"] == 0
    assert not c.connected


def test_outstanding_request_fails_with_disconnected_when_server_dies(
        make_server: Callable[..., Server], make_client: Callable[..., Client]) -> None:
    srv = make_server(close_timeout=0.5)
    entered, release = threading.Event(), threading.Event()

    @srv.on("app/slow")
    def slow(conn: Connection, data: Any) -> Any:
        entered.set()
        release.wait(WAIT_S)
        return "too late"

    c = make_client(srv.url, **FAST_BACKOFF)
    pending = run_in_thread(lambda: c.request("app/slow", timeout=WAIT_S))
    assert entered.wait(WAIT_S)
    stopping = run_in_thread(srv.stop)
    try:
        with pytest.raises(Disconnected):
            pending.result(WAIT_S)
    finally:
        release.set()
    stopping.result(WAIT_S)
    assert c.status in ("reconnecting", "connecting")
    assert c.stats()["outstanding_requests"] == 0


def test_request_timeout(make_face: Callable[..., Face], make_client: Callable[..., Client]) -> None:
    srv = make_face()
    release = threading.Event()
    srv.on("app/slow", lambda conn, data: release.wait(WAIT_S) and "late")
    srv.on("app/echo", lambda conn, data: data)
    c = make_client(srv.url)
    started = time.monotonic()
    try:
        with pytest.raises(RequestTimeout, match="app/slow"):
            c.request("app/slow", timeout=0.2)
        elapsed = time.monotonic() - started
    finally:
        release.set()
    assert 0.2 <= elapsed < 0.2 + 3.0  # room for a loaded machine, below the 5 s default timeout
    wait_until(lambda: c.stats().get("stray_replies") == 1, what="late reply counted as stray")
    assert c.request("app/echo", 5) == 5
    assert c.stats()["outstanding_requests"] == 0


def test_backoff_delay_full_jitter_bounds() -> None:
    assert backoff_delay(0, 0.25, 10.0, rng=lambda lo, hi: hi) == 0.25
    assert backoff_delay(3, 0.25, 10.0, rng=lambda lo, hi: hi) == 2.0
    assert backoff_delay(6, 0.25, 10.0, rng=lambda lo, hi: hi) == 10.0  # capped
    assert backoff_delay(10_000, 0.25, 10.0, rng=lambda lo, hi: hi) == 10.0  # no overflow
    assert backoff_delay(5, 0.25, 10.0, rng=lambda lo, hi: lo) == 0.0
    rng = random.Random(7)
    for attempt in range(12):
        cap = min(10.0, 0.25 * 2 ** attempt)
        samples = [backoff_delay(attempt, 0.25, 10.0, rng=rng.uniform) for _ in range(300)]
        assert all(0.0 <= s <= cap for s in samples)
        # full jitter: spread over the whole range, not clustered near the cap
        assert min(samples) < 0.1 * cap and max(samples) > 0.9 * cap


def test_client_waits_the_backoff_and_resets_it_after_a_handshake(
        make_server: Callable[..., Server], make_client: Callable[..., Client],
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: List[tuple] = []  # (attempt, base, maximum, delay, when)

    def recording_backoff(attempt: int, base: float, maximum: float, rng: Any = None) -> float:
        delay = backoff_delay(attempt, base, maximum, rng=lambda lo, hi: hi)  # the cap: deterministic
        calls.append((attempt, base, maximum, delay, time.monotonic()))
        return delay

    monkeypatch.setattr(client_module, "backoff_delay", recording_backoff)
    port = free_port()
    c = make_client(f"ws://127.0.0.1:{port}/chsk", connect=False, backoff_base=0.02, backoff_max=0.1)
    wait_until(lambda: len(calls) >= 5, what="5 reconnect attempts")
    first = calls[:5]
    assert [x[0] for x in first] == [0, 1, 2, 3, 4]
    assert [x[3] for x in first] == [0.02, 0.04, 0.08, 0.1, 0.1]
    assert all((x[1], x[2]) == (0.02, 0.1) for x in first)
    for before, after in zip(first, first[1:]):
        assert after[4] - before[4] >= before[3]  # it really waited the delay
    srv = make_server(port=port)
    assert c.wait_connected(WAIT_S)
    seen = len(calls)
    srv.disconnect(c.conn_id)  # type: ignore[arg-type]
    wait_until(lambda: len(calls) > seen, what="a reconnect after the handshake")
    assert calls[seen][0] == 0  # n resets after a handshake
    assert c.wait_connected(WAIT_S)


def test_close_1008_stops_retrying(make_face: Callable[..., Face],
                                   make_client: Callable[..., Client]) -> None:
    srv = make_face()
    c = make_client(srv.url, **FAST_BACKOFF)
    assert srv.disconnect(c.conn_id, 1008, "go away")  # type: ignore[arg-type]
    assert c.wait_status("closed", WAIT_S)
    assert isinstance(c.refusal, ConnectRefused)
    assert c.refusal.close_code == 1008
    with pytest.raises(ConnectRefused):
        c.wait_connected(1)
    wait_until(lambda: not [t for t in sente_threads() if t.name.startswith("sente-lite-client")],
               what="client threads to end by themselves")
    assert c.stats().get("reconnect_attempts", 0) == 0
    assert srv.stats()["connections_opened"] == 1
    with pytest.raises(ClientClosed):
        c.send("app/x", 1)


class PausingClient(Client):
    """Holds the reader thread between "refused for good" and the ``closed`` status."""

    paused = threading.Event()
    proceed = threading.Event()

    def _fail_requests(self, exc: BaseException) -> None:
        if isinstance(exc, ConnectRefused):
            self.paused.set()
            self.proceed.wait(WAIT_S)
        super()._fail_requests(exc)


def test_waiting_for_closed_after_a_refusal_does_not_raise(make_face: Callable[..., Face],
                                                            no_leaked_threads: None) -> None:
    srv = make_face()
    PausingClient.paused.clear()  # the events are the class's: a test run before set them
    PausingClient.proceed.clear()
    c = PausingClient(srv.url, **FAST_BACKOFF)
    try:
        assert c.wait_connected(WAIT_S)
        srv.disconnect(c.conn_id, 1008)  # type: ignore[arg-type]
        assert PausingClient.paused.wait(WAIT_S)
        assert c.refusal is not None and c.status != "closed"
        assert c.wait_status("closed", 0.05) is False  # not closed yet: a plain timeout
        with pytest.raises(ConnectRefused):
            c.wait_connected(0.05)
        PausingClient.proceed.set()
        assert c.wait_status("closed", WAIT_S)
    finally:
        PausingClient.proceed.set()
        c.close()


def test_http_refusal_stops_retrying(make_face: Callable[..., Face],
                                     make_client: Callable[..., Client]) -> None:
    srv = make_face()
    c = make_client(f"ws://127.0.0.1:{srv.port}/wrong-path", connect=False, **FAST_BACKOFF)
    with pytest.raises(ConnectRefused) as info:
        c.wait_connected(WAIT_S)
    assert info.value.status == 404
    assert c.wait_status("closed", WAIT_S)
    assert c.stats().get("reconnect_attempts", 0) == 0


def test_no_auto_reconnect_closes_on_loss(make_face: Callable[..., Face],
                                          make_client: Callable[..., Client]) -> None:
    srv = make_face()
    c = make_client(srv.url, auto_reconnect=False)
    srv.disconnect(c.conn_id)  # type: ignore[arg-type]
    assert c.wait_status("closed", WAIT_S)
    with pytest.raises(ClientClosed):
        c.request("app/x")


def client_threads() -> List[str]:
    return [t.name for t in sente_threads() if t.name.startswith("sente-lite-client")]


@pytest.mark.parametrize("state", ["connected", "backing-off", "connecting-to-nothing"])
def test_close_stops_threads_within_one_second(make_server: Callable[..., Server],
                                               make_client: Callable[..., Client], state: str) -> None:
    if state == "connected":
        srv = make_server()
        c = make_client(srv.url)
    elif state == "backing-off":
        srv = make_server()
        c = make_client(srv.url, backoff_base=30.0, backoff_max=30.0)
        srv.stop()
        assert c.wait_status("reconnecting", WAIT_S)
    else:
        c = make_client(f"ws://127.0.0.1:{free_port()}/chsk", connect=False, backoff_base=0.001,
                        backoff_max=0.001)
        wait_until(lambda: c.stats().get("connect_failures", 0) >= 3, what="failing connects")
    assert len(client_threads()) == 2
    started = time.monotonic()
    c.close()
    took = time.monotonic() - started
    assert client_threads() == []  # close() joins both threads (1 s budget)
    assert took < 1.0 + 0.3  # the budget plus the 0.2 s wait for the send lock
    assert c.status == "closed"
    with pytest.raises(ClientClosed):
        c.send("app/x")


def test_close_fails_outstanding_requests(make_face: Callable[..., Face],
                                          make_client: Callable[..., Client]) -> None:
    srv = make_face()
    entered, release = threading.Event(), threading.Event()
    srv.on("app/slow", lambda conn, data: (entered.set(), release.wait(WAIT_S)))
    c = make_client(srv.url)
    pending = run_in_thread(lambda: c.request("app/slow", timeout=WAIT_S))
    try:
        assert entered.wait(WAIT_S)
        c.close()
        with pytest.raises((ClientClosed, Disconnected)):
            pending.result(WAIT_S)
    finally:
        release.set()

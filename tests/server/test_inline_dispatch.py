"""Built-in frames handled on the network thread: order, use, errors, bad UTF-8."""

from __future__ import annotations

import json
import threading
from typing import Any, Callable, List

import pytest

from sente_lite import Server
from sente_lite.wire import protocol as p
from sente_lite.session import ServerSession
from sente_lite.server.server import Connection
from sente_lite.testing.abuse import RawPeer
from support import WAIT_S, wait_until

CHANNEL = "inline-news"
#: No heartbeat pings while a test runs: every frame on the wire is the test's own.
QUIET = {"heartbeat_ms": 600_000}


def opened(srv: Server) -> RawPeer:
    peer = RawPeer(srv.host, srv.port, timeout=WAIT_S)
    assert peer.upgrade(timeout=WAIT_S).status == 101
    assert peer.read_text(WAIT_S)[0] == p.EV_HANDSHAKE
    return peer


def send(peer: RawPeer, *items: Any) -> None:
    peer.send_text(json.dumps(list(items), separators=(",", ":")))


def reply_to(peer: RawPeer, cb_id: str, seen: List[Any]) -> Any:
    """Read frames into ``seen`` until the reply to ``cb_id``; return that frame."""
    while True:
        frame = peer.read_text(WAIT_S)
        seen.append(frame)
        if len(frame) == 3 and frame[2] == cb_id:
            return frame


def only_conn(srv: Server) -> Connection:
    return wait_until(lambda: next(iter(srv._conns.values()), None), what="connection registered")


def reader_idle(srv: Server) -> None:
    """Wait until the workers have handled every message of the connection."""
    conn = only_conn(srv)
    wait_until(lambda: conn.lane.idle, what="connection's lane idle")


def publish(peer: RawPeer, cb_id: str, data: Any, seen: List[Any]) -> Any:
    send(peer, p.EV_PUBLISH, {p.K_CHANNEL: CHANNEL, p.K_DATA: data}, cb_id)
    return reply_to(peer, cb_id, seen)


def send_while_blocked(srv: Server, peer: RawPeer, entered: threading.Event) -> None:
    conn = only_conn(srv)
    received = conn.frames_in
    send(peer, "app/block", None, "b1")
    assert entered.wait(WAIT_S), "handler did not start"
    send(peer, p.EV_PUBLISH, {p.K_CHANNEL: CHANNEL, p.K_DATA: "after-block"}, "p1")
    # The publish has reached the server: it was published (wrong) or passed to the
    # connection's lane, behind the blocked handler (right).
    wait_until(lambda: srv.stats().get("publishes", 0) > 0 or conn.frames_in >= received + 2,
               what="publish frame received")
    assert srv.stats().get("publishes", 0) == 0, "publish handled while a handler before it ran"


def test_publish_waits_for_the_user_handler_before_it(make_server: Callable[..., Server]) -> None:
    srv = make_server(**QUIET)
    entered, release = threading.Event(), threading.Event()
    publishes_when_returning: List[int] = []

    @srv.on("app/block")
    def block(conn: Any, data: Any) -> str:
        entered.set()
        assert release.wait(WAIT_S), "test never released the handler"
        publishes_when_returning.append(srv.stats().get("publishes", 0))
        return "unblocked"

    with opened(srv) as peer:
        seen: List[Any] = []
        send(peer, p.EV_SUBSCRIBE, {p.K_CHANNEL: CHANNEL}, "s1")
        assert reply_to(peer, "s1", seen)[1][p.K_OFFSET] == 0
        try:
            send_while_blocked(srv, peer, entered)
        finally:
            release.set()
        seen.clear()
        reply_to(peer, "p1", seen)
        assert publishes_when_returning == [0]
        events = [(f[0], f[2] if len(f) == 3 else None) for f in seen]
        assert events == [(p.EV_REPLY, "b1"), (p.EV_CHANNEL_MSG, None), (p.EV_REPLY, "p1")]
        assert seen[1][1][p.K_DATA] == "after-block" and seen[1][1][p.K_OFFSET] == 1
        assert seen[2][1][p.K_OFFSET] == 1
        # once the reader is idle again, built-ins go back to the network thread
        reader_idle(srv)
        before = srv.stats()["frames_inline"]
        assert publish(peer, "p2", "idle", seen)[1][p.K_OFFSET] == 2
        assert srv.stats()["frames_inline"] == before + 1


def test_builtins_run_inline_when_idle_and_user_events_never(make_server: Callable[..., Server]) -> None:
    srv = make_server(**QUIET)
    handler_threads: List[str] = []

    @srv.on("app/echo")
    def echo(conn: Any, data: Any) -> Any:
        handler_threads.append(threading.current_thread().name)
        return data

    with opened(srv) as peer:
        seen: List[Any] = []
        send(peer, p.EV_SUBSCRIBE, {p.K_CHANNEL: CHANNEL}, "s1")
        reply_to(peer, "s1", seen)
        reader_idle(srv)
        start = srv.stats()
        n = 10
        for i in range(n):
            assert publish(peer, f"p{i}", i, seen)[1][p.K_OFFSET] == i + 1
        mid = srv.stats()
        assert mid["frames_inline"] - start["frames_inline"] == n
        assert mid["frames_in"] - start["frames_in"] == n
        assert mid["publishes"] - start.get("publishes", 0) == n
        for i in range(n):
            send(peer, "app/echo", i, f"e{i}")
            assert reply_to(peer, f"e{i}", seen)[1] == i
        end = srv.stats()
        assert end["frames_inline"] == mid["frames_inline"]
        assert end["frames_in"] - mid["frames_in"] == n
        assert len(handler_threads) == n
        assert all(t.startswith("sente-lite-worker-") for t in handler_threads)
        deliveries = [f[1][p.K_DATA] for f in seen if f[0] == p.EV_CHANNEL_MSG]
        assert deliveries == list(range(n))


def test_inline_delivery_and_reply_go_out_in_one_write(make_server: Callable[..., Server]) -> None:
    """The network thread holds what it sends during one pass over ready sockets and
    writes it with one write per peer: a publish's delivery to its own publisher and
    the publish's reply go out together, and nothing is left queued."""
    srv = make_server(**QUIET)
    with opened(srv) as peer:
        seen: List[Any] = []
        send(peer, p.EV_SUBSCRIBE, {p.K_CHANNEL: CHANNEL}, "s1")
        reply_to(peer, "s1", seen)
        reader_idle(srv)
        conn = only_conn(srv)
        wait_until(lambda: conn.writes_out >= 3, what="101, handshake and reply written")
        before, frames_before = conn.writes_out, conn.frames_out
        publish(peer, "p1", "me", seen)
        assert [f[0] for f in seen[-2:]] == [p.EV_CHANNEL_MSG, p.EV_REPLY]
        wait_until(lambda: conn.writes_out > before, what="the write counted")
        assert conn.writes_out == before + 1 and conn.frames_out == frames_before + 2
        assert conn.queued_bytes == 0


def test_exception_in_the_inline_path_answers_handler_error_and_keeps_serving(
        make_server: Callable[..., Server], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    srv = make_server(**QUIET)
    with opened(srv) as peer:
        seen: List[Any] = []
        publish(peer, "p0", "warm-up", seen)
        reader_idle(srv)
        start = srv.stats()

        # 1. a built-in raises: the dispatcher answers for it
        def broken(*args: Any) -> None:
            raise RuntimeError("bug in the publish path")

        monkeypatch.setattr(srv._dispatcher.hub, "publish", broken)
        error = publish(peer, "p1", "x", seen)
        assert error[0] == p.EV_ERROR and error[1][p.K_CODE] == p.ERR_HANDLER_ERROR
        assert "internal error handling sente-lite/publish" in error[1][p.K_MESSAGE]
        assert "bug in the publish path" in caplog.text
        monkeypatch.undo()

        # 2. anything else on the network thread raises: the safety net answers
        original = ServerSession.receive
        failures = [RuntimeError("bug below the network thread")]

        def fails_once(self: ServerSession, msg: Any) -> Any:
            if failures:
                raise failures.pop()
            return original(self, msg)

        monkeypatch.setattr(ServerSession, "receive", fails_once)
        error = publish(peer, "p2", "y", seen)
        assert error[0] == p.EV_ERROR and error[1][p.K_CODE] == p.ERR_HANDLER_ERROR
        assert error[1][p.K_MESSAGE] == "internal error handling sente-lite/publish"
        assert "bug below the network thread" in caplog.text

        # the connection keeps serving, still inline
        ok = publish(peer, "p3", "z", seen)
        assert ok[0] == p.EV_REPLY and ok[1][p.K_CHANNEL] == CHANNEL
        end = srv.stats()
        assert end["internal_errors"] - start.get("internal_errors", 0) == 2
        assert end["frames_inline"] - start["frames_inline"] == 3
        assert end["connections"] == 1 and end.get("connections_closed", 0) == 0


def test_invalid_utf8_after_the_prefix_still_closes_1007(make_server: Callable[..., Server]) -> None:
    srv = make_server(**QUIET)
    with opened(srv) as peer:
        seen: List[Any] = []
        publish(peer, "p0", "warm-up", seen)
        reader_idle(srv)
        inline_before = srv.stats()["frames_inline"]
        payload = b'["sente-lite/publish",{"channel-id":"' + CHANNEL.encode() + b'","data":"\xff\xfe"}]'
        assert payload.startswith(p.SENTE_FRAME_PREFIX)
        peer.send_frame(payload)
        assert peer.read_until_close(WAIT_S)[0] == 1007
    wait_until(lambda: srv.stats()["closes_by_code"] == {1007: 1}, what="close recorded")
    stats = srv.stats()
    assert stats.get("protocol_error_closes") == 1
    assert stats["frames_inline"] == inline_before
    assert stats["publishes"] == 1  # only the warm-up


def test_authorize_never_runs_on_the_network_thread_and_may_ask_its_client(
        make_server: Callable[..., Server]) -> None:
    """authorize is application code: it runs on a worker, never on the network thread,
    so request() from it works (the network thread reads the reply meanwhile)."""
    calls: List[Any] = []

    def authorize(conn: Connection, action: str, channel_id: str) -> bool:
        calls.append((action, threading.current_thread().name,
                      threading.get_ident() == srv._loop.thread_ident))  # type: ignore[union-attr]
        return conn.request("app/may-i", action, timeout=WAIT_S) == "yes"

    def answer(peer: RawPeer, verdict: str) -> None:
        ask = peer.read_text(WAIT_S)
        assert ask[0] == "app/may-i" and len(ask) == 3
        send(peer, p.EV_REPLY, verdict, ask[2])

    srv = make_server(authorize=authorize, **QUIET)
    with opened(srv) as peer:
        seen: List[Any] = []
        send(peer, p.EV_SUBSCRIBE, {p.K_CHANNEL: CHANNEL}, "s1")
        answer(peer, "yes")
        assert reply_to(peer, "s1", seen)[0] == p.EV_REPLY
        reader_idle(srv)
        send(peer, p.EV_PUBLISH, {p.K_CHANNEL: CHANNEL, p.K_DATA: "x"}, "p1")
        answer(peer, "no")
        refused = reply_to(peer, "p1", seen)
        assert refused[0] == p.EV_ERROR and refused[1][p.K_CODE] == p.ERR_FORBIDDEN
    assert [c[0] for c in calls] == ["subscribe", "publish"]
    assert all(name.startswith("sente-lite-worker") and not on_net for _, name, on_net in calls)

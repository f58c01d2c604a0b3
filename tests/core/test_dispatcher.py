"""The server's dispatcher, checked in memory: client sessions joined by a
:class:`~sente_lite.testing.pair.SessionPair` to the same
:class:`~sente_lite.core.dispatcher.ServerDispatcher` the threaded server drives, with a
test clock and a real hub and channel registry. No socket, no thread."""

from __future__ import annotations

import json
import logging
from typing import Any, List, Optional

import pytest

from sente_lite import session as ss
from sente_lite.counters import Counter
from sente_lite.errors import Disconnected, RemoteError, RequestTimeout
from sente_lite.wire import packers
from sente_lite.wire import protocol as p
from sente_lite.wire.protocol import FrameKind
from sente_lite.testing.pair import SessionPair

HEARTBEAT_MS = 1000
TIMEOUT_MS = 3000


def connected(**kwargs: Any) -> SessionPair:
    rules = kwargs.pop("rules", None) or ss.ServerRules(
        rate_limit=None, heartbeat_ms=HEARTBEAT_MS, heartbeat_timeout_ms=TIMEOUT_MS)
    pair = SessionPair(rules, **kwargs)
    pair.connect()
    return pair


def remote_error(waiter: Any) -> RemoteError:
    assert isinstance(waiter.error, RemoteError), (waiter.result, waiter.error)
    return waiter.error


def frames_to_client(pair: SessionPair) -> List[Any]:
    return [json.loads(f) for f in pair.to_client]


# -- application events ----------------------------------------------------------------------
def test_a_request_is_answered_with_what_its_handler_returns_given_the_connection() -> None:
    pair = connected()
    seen: List[Any] = []
    pair.on("app/who", lambda conn, data: seen.append(conn) or {"uid": conn.uid, "got": data})
    waiter = pair.request("app/who", [1, "ü"])
    pair.pump()
    assert waiter.result == {"uid": "u1", "got": [1, "ü"]}
    assert seen == [pair.conn]


def test_no_handler_answers_a_request_and_counts_a_plain_event() -> None:
    pair = connected()
    waiter = pair.request("app/nobody-home")
    pair.send(pair.client.packer.encode("app/nobody-home", 1))
    pair.pump()
    err = remote_error(waiter)
    assert err.code == p.ERR_NO_HANDLER and "app/nobody-home" in err.message
    assert pair.counters.get(Counter.UNHANDLED_EVENTS) == 1
    assert pair.client.counts.get("errors_from_server", 0) == 0  # nothing sent back to the event


def test_a_raising_handler_answers_handler_error_naming_only_the_exception_type(
        caplog: pytest.LogCaptureFixture) -> None:
    pair = connected()

    def boom(data: Any) -> Any:
        raise ValueError("kaboom-123")

    pair.handlers["app/boom"] = boom
    pair.handlers["app/echo"] = lambda data: data
    with caplog.at_level(logging.ERROR, logger="sente_lite.server"):
        waiter = pair.request("app/boom")
        pair.send(pair.client.packer.encode("app/boom", 2))  # plain: logged and counted only
        after = pair.request("app/echo", "still here")
        pair.pump()
    err = remote_error(waiter)
    assert err.code == p.ERR_HANDLER_ERROR and "ValueError" in err.message
    assert "kaboom-123" not in err.message and "kaboom-123" in caplog.text
    assert after.result == "still here"
    assert pair.counters.get(Counter.HANDLER_ERRORS) == 2
    assert pair.closed is None


def test_a_bug_in_a_builtin_costs_one_handler_error_answer_not_the_connection(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    pair = connected()
    pair.handlers["app/echo"] = lambda data: data

    def broken(*args: Any) -> None:
        raise RuntimeError("bug in the subscribe path")

    monkeypatch.setattr(pair.side.hub, "subscribe", broken)
    waiter = pair.subscribe("news")
    pair.pump()
    err = remote_error(waiter)
    assert err.code == p.ERR_HANDLER_ERROR
    assert err.message == "internal error handling sente-lite/subscribe"
    assert pair.counters.get(Counter.INTERNAL_ERRORS) == 1
    assert "bug in the subscribe path" in caplog.text  # logged with its traceback
    echo = pair.request("app/echo", {"still": "here"})
    pair.pump()
    assert echo.result == {"still": "here"} and pair.closed is None


# -- the server's own requests ---------------------------------------------------------------
def server_asks(pair: SessionPair, timeout: float = 5.0) -> Any:
    """The server sends a request to the client; returns the waiter."""
    assert pair.conn is not None
    waiter = _Future()
    _, frame = pair.conn.session.request("app/q", 1, waiter, pair.now, timeout)
    pair.conn.send_frame(frame)
    return waiter


class _Future:
    def __init__(self) -> None:
        self.outcome: Optional[tuple] = None

    def done(self) -> bool:
        return self.outcome is not None

    def set_result(self, value: Any) -> None:
        self.outcome = ("result", value)

    def set_exception(self, exc: BaseException) -> None:
        self.outcome = ("error", exc)


def test_the_clients_reply_settles_the_servers_request() -> None:
    pair = connected()
    waiter = server_asks(pair)
    pair.pump()
    (asked,) = [e for e in pair.client_events if type(e) is ss.EventRequest]
    pair.send(pair.client.reply(asked.event, asked.cb_id, {"answer": 42}))
    pair.pump()
    assert waiter.outcome == ("result", {"answer": 42})
    assert pair.conn is not None and pair.conn.session.outstanding == 0


def test_a_servers_request_expires_at_its_deadline_and_fails_when_the_connection_ends() -> None:
    pair = connected()
    late, cut = server_asks(pair, timeout=2.0), server_asks(pair, timeout=60.0)
    pair.now = 1.9
    pair.tick()
    assert late.outcome is None
    pair.now = 2.0
    pair.tick()
    assert late.outcome[0] == "error" and isinstance(late.outcome[1], RequestTimeout)
    assert cut.outcome is None
    pair.cut()
    assert cut.outcome[0] == "error" and isinstance(cut.outcome[1], Disconnected)


# -- channel policy ------------------------------------------------------------------------
def test_max_subscriptions_per_conn_refuses_limit_exceeded_counted() -> None:
    pair = connected(max_subscriptions_per_conn=3)
    for name in ("a", "b", "c"):
        pair.subscribe(name)
    refused = pair.subscribe("d")
    again = pair.request(p.EV_SUBSCRIBE, {p.K_CHANNEL: "a"})  # held already: allowed
    pair.pump()
    err = remote_error(refused)
    assert err.code == p.ERR_LIMIT_EXCEEDED and "max_subscriptions_per_conn=3" in err.message
    assert again.result[p.K_CHANNEL] == "a"
    pair.send(pair.client.packer.encode(p.EV_UNSUBSCRIBE, {p.K_CHANNEL: "a"}))
    room = pair.request(p.EV_SUBSCRIBE, {p.K_CHANNEL: "d"})
    pair.pump()
    assert room.error is None
    assert pair.counters.get(Counter.SUBSCRIPTION_LIMIT) == 1
    assert sorted(pair.registry.channels_of(pair.conn.conn_id)) == ["b", "c", "d"]  # type: ignore[union-attr]


def test_authorize_false_forbids_subscribe_and_publish_and_never_sees_unsubscribe() -> None:
    calls: List[tuple] = []

    def authorize(conn: Any, action: str, channel: str) -> bool:
        calls.append((conn.uid, action, channel))
        return channel == "open"

    pair = connected(authorize=authorize)
    sub, pub, ok = pair.subscribe("closed"), pair.publish("closed", 1), pair.subscribe("open")
    pair.send(pair.client.packer.encode(p.EV_UNSUBSCRIBE, {p.K_CHANNEL: "open"}))
    pair.pump()
    assert remote_error(sub).code == remote_error(pub).code == p.ERR_FORBIDDEN
    assert ok.error is None
    assert calls == [("u1", "subscribe", "closed"), ("u1", "publish", "closed"),
                     ("u1", "subscribe", "open")]
    assert pair.counters.get(Counter.FORBIDDEN) == 2
    assert pair.registry.history_of("closed") == []  # never published


def test_an_authorize_hook_that_raises_forbids_and_is_counted(caplog: pytest.LogCaptureFixture) -> None:
    def authorize(conn: Any, action: str, channel: str) -> bool:
        raise RuntimeError("policy store down")

    pair = connected(authorize=authorize)
    waiter = pair.publish("news", 1)
    pair.pump()
    assert remote_error(waiter).code == p.ERR_FORBIDDEN
    assert pair.counters.get(Counter.FORBIDDEN) == 1
    assert pair.counters.get(Counter.HOOK_ERRORS) == 1
    assert "policy store down" in caplog.text


def test_channel_operations_run_application_code_only_with_an_authorize_hook() -> None:
    assert connected().dispatcher.app_code_from is FrameKind.APP
    assert connected(authorize=lambda *a: True).dispatcher.app_code_from is FrameKind.CHANNEL


# -- publish, subscribe, unsubscribe ---------------------------------------------------------
def test_a_publish_is_answered_with_its_offset_and_delivered_with_the_channels_epoch() -> None:
    pair = connected()
    pair.subscribe("ch")
    pair.pump()
    first, second = pair.publish("ch", "a"), pair.publish("ch", "b")
    pair.pump()
    assert first.result == {p.K_CHANNEL: "ch", p.K_OFFSET: 1, p.K_DELIVERED: 1}
    assert second.result[p.K_OFFSET] == 2
    epoch = pair.registry.subscribe("probe", "ch")[1]
    assert [(m.data, m.offset, m.epoch, m.from_uid) for m in pair.messages()] == [
        ("a", 1, epoch, "u1"), ("b", 2, epoch, "u1")]
    assert pair.counters.get(Counter.PUBLISHES) == 2
    assert pair.counters.get(Counter.DELIVERIES) == 2


def test_a_publish_reaches_each_connection_subscribed_once() -> None:
    alice = connected()
    bob = alice.another("c2")
    bob.connect("u2")
    for pair in (alice, bob):
        pair.subscribe("room")
        pair.subscribe("room")  # twice: still one subscription
        pair.pump()
    waiter = bob.publish("room", "hello")
    bob.pump()
    alice.pump()
    assert waiter.result[p.K_DELIVERED] == 2
    for pair in (alice, bob):
        assert [(m.data, m.offset, m.from_uid) for m in pair.messages()] == [("hello", 1, "u2")]
        assert pair.client.counts.get("duplicate_channel_msgs", 0) == 0


def test_exclude_sender_skips_only_the_publishing_connection() -> None:
    alice = connected()
    bob = alice.another("c2")
    bob.connect("u2")
    for pair in (alice, bob):
        pair.subscribe("chat")
        pair.pump()
    mine = alice.publish("chat", "mine", exclude_sender=True)
    echoed = alice.publish("chat", "echoed")
    alice.pump()
    bob.pump()
    assert (mine.result[p.K_DELIVERED], echoed.result[p.K_DELIVERED]) == (1, 2)
    assert [m.data for m in bob.messages()] == ["mine", "echoed"]
    assert [(m.data, m.offset) for m in alice.messages()] == [("echoed", 2)]


def test_unsubscribe_is_answered_and_stops_deliveries() -> None:
    pair = connected()
    pair.subscribe("t")
    pair.pump()
    pair.server_publish("t", 1)
    done = pair.request(p.EV_UNSUBSCRIBE, {p.K_CHANNEL: "t"})
    pair.pump()
    assert done.result == {p.K_CHANNEL: "t"}
    pair.server_publish("t", 2)
    assert pair.to_client == []
    assert [m.data for m in pair.messages()] == [1]
    assert pair.registry.channels_of(pair.conn.conn_id) == []  # type: ignore[union-attr]
    again = pair.request(p.EV_UNSUBSCRIBE, {p.K_CHANNEL: "t"})  # not subscribed: answered all the same
    pair.pump()
    assert again.result == {p.K_CHANNEL: "t"}


# -- closes and the heartbeat -------------------------------------------------------------------
def test_too_many_bad_frames_in_a_row_close_with_1008_after_the_last_answer() -> None:
    pair = connected(rules=ss.ServerRules(rate_limit=None, max_bad_frames_in_row=3))
    for _ in range(3):
        pair.send(b"garbage")
    pair.send(pair.client.packer.encode(p.EV_PING))  # a good frame resets the run
    for _ in range(4):
        pair.send(b"garbage")
    pair.send(pair.client.packer.encode(p.EV_PING))  # after the close: never read
    pair.server_reads()
    frames = frames_to_client(pair)
    assert [f[1][p.K_CODE] for f in frames if f[0] == p.EV_ERROR] == [p.ERR_BAD_FRAME] * 7
    assert frames[-1][0] == p.EV_ERROR  # the last bad frame is still answered, then the close
    assert pair.closed == (p.CLOSE_POLICY, "too many bad frames")
    assert pair.counters.get(Counter.BAD_FRAME_CLOSES) == 1


def test_pings_go_out_each_heartbeat_and_any_frame_counts_as_life() -> None:
    pair = connected()
    pair.tick()
    assert frames_to_client(pair) == [[p.EV_PING]]
    pair.to_client.clear()
    pair.now = 0.5
    pair.tick()
    assert pair.to_client == []  # not a heartbeat yet
    for second in range(1, 10):  # never a pong, but a frame each second: alive
        pair.now = float(second)
        pair.send(pair.client.packer.encode("app/still-here", second))
        pair.to_client.clear()
        pair.server_reads()
        pair.tick()
        assert frames_to_client(pair)[-1] == [p.EV_PING]
    assert pair.closed is None
    assert pair.counters.get(Counter.HEARTBEAT_TIMEOUTS) == 0


def test_a_silent_peer_is_closed_with_4000_and_leaves_every_channel() -> None:
    pair = connected()
    pair.subscribe("a")
    pair.subscribe("b")
    pair.pump()
    pair.now = TIMEOUT_MS / 1000
    pair.tick()
    assert pair.closed is None  # silent for exactly the timeout: not past it
    pair.now += 0.001
    pair.tick()
    assert pair.closed == (p.CLOSE_HEARTBEAT_TIMEOUT, "heartbeat timeout")
    assert pair.registry.channels_of(pair.conn.conn_id) == []  # type: ignore[union-attr]
    assert pair.counters.get(Counter.HEARTBEAT_TIMEOUTS) == 1
    pair.now += 100
    pair.tick()
    assert pair.counters.get(Counter.HEARTBEAT_TIMEOUTS) == 1  # closed once


def test_a_peer_the_server_stopped_reading_is_not_judged_silent() -> None:
    pair = connected()
    assert pair.conn is not None
    pair.conn.input_paused = True
    pair.now = 100.0
    pair.tick()
    assert pair.closed is None
    pair.conn.input_paused = False
    pair.now = 100.0 + TIMEOUT_MS / 1000 + 0.001
    pair.tick()
    assert pair.closed is not None and pair.closed[0] == p.CLOSE_HEARTBEAT_TIMEOUT


# -- what a face routes by ----------------------------------------------------------------------
@pytest.mark.parametrize("name", [n for n in packers.PACKER_NAMES if packers.available(n)])
def test_the_packer_tells_each_frames_kind_from_its_first_bytes(name: str) -> None:
    packer = packers.get(name)
    kinds = {
        p.EV_REPLY: FrameKind.ANSWER, p.EV_ERROR: FrameKind.ANSWER, p.EV_PONG: FrameKind.ANSWER,
        p.EV_PING: FrameKind.BUILTIN, p.EV_HANDSHAKE: FrameKind.BUILTIN,
        p.EV_SUBSCRIBE: FrameKind.CHANNEL, p.EV_PUBLISH: FrameKind.CHANNEL,
        p.EV_UNSUBSCRIBE: FrameKind.CHANNEL, "app/echo": FrameKind.APP,
        "chsk-like/x": FrameKind.APP,
    }
    for event, kind in kinds.items():
        frame = packer.encode(event, {"x": 1}, "c1")
        assert packer.frame_kind(frame if packer.binary else frame.decode()) is kind, event
    batch = packer.batch([packer.encode("app/a", 1)])
    assert packer.frame_kind(batch if packer.binary else batch.decode()) is FrameKind.BATCH
    wrong = "text" if packer.binary else b"\x92\xaachsk/reply"  # the other frame type: in order
    assert packer.frame_kind(wrong) is FrameKind.APP


def test_what_a_session_received_says_where_it_may_be_handled() -> None:
    server = ss.ServerSession("x", ss.ServerRules(rate_limit=None), 0.0)
    waiter = object()
    cb_id, _ = server.request("app/q", None, waiter, 0.0, 5.0)
    assert server.receive(p.encode(p.EV_REPLY, 1, cb_id)).kind is FrameKind.ANSWER
    assert server.receive(p.encode(p.EV_PONG)).kind is FrameKind.ANSWER  # nothing to do
    assert server.receive(p.encode(p.EV_PING)).kind is FrameKind.BUILTIN  # answered in order
    assert server.receive("not json").kind is FrameKind.BUILTIN
    assert server.receive(p.encode(p.EV_PUBLISH, {p.K_CHANNEL: "c", p.K_DATA: 1})).kind \
        is FrameKind.CHANNEL
    assert server.receive(p.encode("app/x", 1)).kind is FrameKind.APP
    batch = p.encode(p.EV_BATCH, [[p.EV_PING], ["app/x", 1]])
    assert [r.kind for r in server.receive_parts(batch)] == [FrameKind.BUILTIN, FrameKind.APP]

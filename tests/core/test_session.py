"""Protocol rules, checked on sans-I/O sessions joined in memory (no socket, no thread)."""

from __future__ import annotations

import itertools
import json
from typing import Optional

import pytest

from sente_lite.wire import protocol as p
from sente_lite import session as ss
from sente_lite.brokers.local import ChannelRegistry, Since
from sente_lite.counters import Counters
from sente_lite.errors import Disconnected, LimitExceeded, RemoteError, RequestTimeout
from sente_lite.testing.pair import SessionPair


def connected_pair(**rules: object) -> SessionPair:
    pair = SessionPair(ss.ServerRules(**{"rate_limit": None, **rules}))  # type: ignore[arg-type]
    pair.connect()
    return pair


# -- handshake and status -------------------------------------------------------------------
def test_handshake_connects_and_announces_features() -> None:
    pair = connected_pair(heartbeat_ms=1234)
    assert pair.client.status == ss.CONNECTED
    hs = pair.client.handshake_info
    assert hs is not None and hs.uid == "u1" and hs.first is True
    assert hs.info["features"] == ["history", "publish-id", "batch", "bytes", "history-api",
                                   "server-subs"]
    assert pair.client.heartbeat_s == pytest.approx(1.234)


def test_status_table_is_complete_and_closed_is_final() -> None:
    statuses = [ss.CONNECTING, ss.CONNECTED, ss.RECONNECTING, ss.CLOSED]
    inputs = [ss.ON_HANDSHAKE, ss.ON_LOST, ss.ON_GIVE_UP, ss.ON_CLOSE]
    for status, on in itertools.product(statuses, inputs):
        session = ss.ClientSession("c", status=status)
        new = session.transition(on)
        if status == ss.CLOSED:
            assert new is None and session.status == ss.CLOSED
        elif on in (ss.ON_GIVE_UP, ss.ON_CLOSE):
            assert new == ss.CLOSED
        elif on == ss.ON_HANDSHAKE:
            assert session.status == ss.CONNECTED
        else:
            assert session.status == ss.RECONNECTING


def test_malformed_handshake_is_counted_not_applied() -> None:
    session = ss.ClientSession("c")
    out = session.receive(p.encode(p.EV_HANDSHAKE, "nonsense"), 0.0)
    assert out.events == [] and session.status == ss.CONNECTING
    assert session.counts["bad_frames_from_server"] == 1


# -- requests, replies, errors ---------------------------------------------------------------
def test_request_reply_and_every_error_shape() -> None:
    pair = connected_pair()
    pair.handlers["app/echo"] = lambda data: {"echo": data}
    pair.handlers["app/boom"] = lambda data: 1 / 0
    pair.handlers["app/odd"] = lambda data: object()
    ok, boom, odd, missing = (pair.request("app/echo", [1]), pair.request("app/boom"),
                              pair.request("app/odd"), pair.request("app/none"))
    pair.pump()
    assert ok.result == {"echo": [1]} and ok.error is None
    for waiter, code in ((boom, "handler-error"), (odd, "handler-error"), (missing, "no-handler")):
        assert isinstance(waiter.error, RemoteError) and waiter.error.code == code
    assert pair.counters.get(ss.Counter.HANDLER_ERRORS) == 2


def test_server_request_table_limit_expiry_and_failure() -> None:
    server = ss.ServerSession("x", ss.ServerRules(max_outstanding_requests=2, rate_limit=None), 0.0)
    a, b = object(), object()
    cb_a, frame = server.request("app/q", 1, a, now=0.0, timeout=1.0)
    assert json.loads(frame) == ["app/q", 1, cb_a]
    server.request("app/q", 2, b, now=0.0, timeout=5.0)
    with pytest.raises(LimitExceeded):
        server.request("app/q", 3, object(), now=0.0, timeout=5.0)
    assert server.counters.get(ss.Counter.OUTSTANDING_REQUEST_LIMIT) == 1
    assert server.expire(0.5) == []
    late = server.expire(1.0)
    assert [w for w, _ in late] == [a] and isinstance(late[0][1], RequestTimeout)
    failed = server.fail_requests()
    assert [w for w, _ in failed] == [b] and isinstance(failed[0][1], Disconnected)
    assert server.outstanding == 0


def test_reply_to_unknown_request_is_counted_as_stray() -> None:
    server = ss.ServerSession("x", ss.ServerRules(rate_limit=None), 0.0)
    assert server.receive(p.encode(p.EV_REPLY, 1, "s99")).events == []
    assert server.counters.get(ss.Counter.STRAY_REPLIES) == 1
    server.receive(p.encode(p.EV_ERROR, {"code": "x"}))
    assert server.counters.get(ss.Counter.ERRORS_FROM_CLIENTS) == 1


def test_a_request_whose_data_cannot_be_encoded_registers_nothing() -> None:
    client = ss.ClientSession("c")
    with pytest.raises(p.EncodeError):
        client.request("app/x", {1, 2}, object(), 0.0, 5.0)
    assert len(client._requests) == 0


# -- bad frames and limits -----------------------------------------------------------------------
def test_bad_frames_in_a_row_close_with_1008_and_a_good_frame_resets_the_count() -> None:
    server = ss.ServerSession("x", ss.ServerRules(max_bad_frames_in_row=3, rate_limit=None), 0.0)
    for _ in range(3):
        out = server.receive("not json")
        assert out.events == [] and json.loads(out.frames[0])[1]["code"] == "bad-frame"
    server.receive(p.encode(p.EV_PING))
    for _ in range(3):
        assert server.receive("[1]").events == []
    out = server.receive(b"binary")
    assert out.events[0].code == p.CLOSE_POLICY
    assert server.counters.get(ss.Counter.BAD_FRAME_CLOSES) == 1
    assert server.receive("x").events == []  # closes once


def test_rate_limit_refuses_then_closes_and_refills_with_time() -> None:
    rules = ss.ServerRules(rate_limit=10, rate_burst=2, max_rate_limited=2)
    server = ss.ServerSession("x", rules, 0.0)
    frame = p.encode("app/x", None, "c1")
    assert server.admit(frame, 0.0) is None and server.admit(frame, 0.0) is None
    refused = server.admit(frame, 0.0)
    assert refused is not None and json.loads(refused.frames[0])[1]["code"] == "rate-limited"
    assert json.loads(refused.frames[0])[2] == "c1"
    assert server.admit(p.encode(p.EV_REPLY, 1, "s1"), 0.0).frames == []  # never answer an answer
    closing = server.admit(frame, 0.0)
    assert closing is not None and closing.events[0].code == p.CLOSE_POLICY
    fresh = ss.ServerSession("y", rules, 0.0)
    fresh.admit(frame, 0.0), fresh.admit(frame, 0.0)
    assert fresh.admit(frame, 0.2) is None  # 0.2 s at 10/s refilled two tokens


def test_invalid_since_and_publish_id_are_bad_frames() -> None:
    server = ss.ServerSession("x", ss.ServerRules(rate_limit=None), 0.0)
    for since in ({"offset": -1, "epoch": "e"}, {"offset": 1}, {"offset": "1", "epoch": "e"},
                  {"offset": True, "epoch": "e"}, [1, "e"], {"offset": 1, "epoch": ""}):
        out = server.receive(p.encode(p.EV_SUBSCRIBE, {"channel-id": "c", "since": since}, "c1"))
        assert out.events == [] and json.loads(out.frames[0])[1]["code"] == "bad-frame", since
    for pid in ("", "x" * 129, 7, ["a"]):
        out = server.receive(p.encode(p.EV_PUBLISH, {"channel-id": "c", "id": pid}, "c1"))
        assert out.events == [] and json.loads(out.frames[0])[1]["code"] == "bad-frame", pid
    out = server.receive(p.encode(p.EV_PUBLISH, {"channel-id": "c", "id": "x" * 128}, "c1"))
    assert type(out.events[0]) is ss.PublishRequest


def test_unknown_reserved_event_and_invalid_channel() -> None:
    server = ss.ServerSession("x", ss.ServerRules(rate_limit=None), 0.0)
    out = server.receive(p.encode("chsk/whatever", None, "c1"))
    assert json.loads(out.frames[0])[1]["code"] == "unknown-event"
    out = server.receive(p.encode(p.EV_SUBSCRIBE, {"channel-id": ""}, "c2"))
    assert json.loads(out.frames[0])[1]["code"] == "invalid-channel"


# -- heartbeat -----------------------------------------------------------------------------------------
def test_heartbeat_timeout_and_stall_credit() -> None:
    rules = ss.ServerRules(heartbeat_ms=1000, heartbeat_timeout_ms=3000, rate_limit=None)
    server = ss.ServerSession("x", rules, 0.0)
    assert server.heartbeat(3.0) is None
    assert server.heartbeat(4.0, stalled_s=2.0) is None  # 2 s of our own stall not held against it
    server.admit("[]", 4.5)
    assert server.heartbeat(7.4) is None
    assert server.heartbeat(7.6) == ss.HEARTBEAT_TIMEOUT
    assert server.heartbeat(9.0) is None  # decided once
    client = ss.ClientSession("c", heartbeat_s=1.0, last_recv=0.0)
    assert not client.dead(2.9) and client.dead(3.1)


# -- channels, offsets, recovery ---------------------------------------------------------------------------
def subscribed_then_cut(registry: Optional[ChannelRegistry] = None) -> SessionPair:
    """A client subscribed to "ch" that got message 0 (offset 1), then lost its connection."""
    pair = SessionPair(registry=registry, rules=ss.ServerRules(rate_limit=None))
    if registry is not None:
        registry._clock = registry.history.clock = lambda: pair.now
    pair.connect()
    pair.subscribe("ch")
    pair.pump()
    pair.server_publish("ch", 0)
    pair.pump()
    pair.cut()
    return pair

def test_messages_arrive_in_order_and_a_repeated_offset_is_dropped() -> None:
    pair = connected_pair()
    pair.subscribe("ch")
    pair.pump()
    for n in range(3):
        pair.server_publish("ch", n)
    pair.to_client.append(pair.to_client[1])  # offset 2 again
    pair.pump()
    assert [(m.offset, m.data) for m in pair.messages()] == [(1, 0), (2, 1), (3, 2)]
    assert pair.client.counts["duplicate_channel_msgs"] == 1


def test_reconnect_recovers_every_missed_message_exactly_once() -> None:
    pair = connected_pair()
    pair.subscribe("ch")
    pair.pump()
    pair.server_publish("ch", "a")
    pair.pump()
    pair.server_publish("ch", "lost-in-flight")  # queued to the client, never read
    pair.cut()
    for n in range(3):
        pair.server_publish("ch", f"away-{n}")
    pair.connect()
    pair.server_publish("ch", "live")
    pair.pump()
    assert [m.data for m in pair.messages()] == ["a", "lost-in-flight", "away-0", "away-1",
                                                 "away-2", "live"]
    assert [m.offset for m in pair.messages()] == [1, 2, 3, 4, 5, 6]
    (rec,) = pair.recoveries()
    assert rec.recovered is True and rec.reason is None and rec.since == {"offset": 1, "epoch": rec.epoch}
    assert rec.offset == 5


def test_recovery_fails_loudly_when_history_is_too_short() -> None:
    pair = subscribed_then_cut(ChannelRegistry("e", history_size=2))
    for n in range(1, 5):
        pair.server_publish("ch", n)
    pair.connect()
    pair.server_publish("ch", "live")
    pair.pump()
    (rec,) = pair.recoveries()
    assert (rec.recovered, rec.reason, rec.offset) == (False, "history-expired", 5)
    assert [m.data for m in pair.messages()] == [0, "live"]  # nothing partial replayed
    assert pair.client.counts.get("channel_gaps", 0) == 0  # the gap was announced, not silent


def test_recovery_after_a_server_restart_reports_epoch_changed() -> None:
    pair = subscribed_then_cut()
    pair.registry = ChannelRegistry("restarted")
    pair.server_publish("ch", "new-1")
    pair.connect()
    pair.server_publish("ch", "new-2")
    pair.pump()
    (rec,) = pair.recoveries()
    assert (rec.recovered, rec.reason) == (False, "epoch-changed")
    assert [(m.data, m.offset) for m in pair.messages()] == [(0, 1), ("new-2", 2)]


def test_history_off_is_said() -> None:
    pair = subscribed_then_cut(ChannelRegistry("e", history_size=0))
    pair.server_publish("ch", 1)
    pair.connect()
    (rec,) = pair.recoveries()
    assert (rec.recovered, rec.reason) == (False, "history-off")


def test_history_expires_by_age() -> None:
    pair = subscribed_then_cut(ChannelRegistry("e", history_ttl_s=10.0, publish_dedup_s=10.0))
    pair.server_publish("ch", 1)
    pair.now = 11.0
    pair.connect()
    (rec,) = pair.recoveries()
    assert (rec.recovered, rec.reason) == (False, "history-expired")


def test_subscribe_with_a_stored_position_resumes_there() -> None:
    pair = connected_pair()
    for n in range(4):
        pair.server_publish("ch", n)
    epoch = pair.registry.subscribe("probe", "ch")[1]
    pair.subscribe("ch", since=Since(2, epoch))
    pair.pump()
    assert [m.data for m in pair.messages()] == [2, 3]
    assert pair.recoveries()[0].recovered is True
    assert pair.client.position("ch") == Since(4, epoch)


# -- idempotent publish ----------------------------------------------------------------------------------
def test_a_publish_whose_ack_was_lost_lands_once() -> None:
    pair = connected_pair()
    pair.subscribe("ch")
    pair.pump()
    waiter = pair.publish("ch", "once")
    while pair.to_server:  # the server gets it and publishes; the ack and the message are lost
        pair._server_receives(pair.to_server.pop(0))
    assert pair.client.unacked() == 1
    pair.cut()
    pair.connect()  # the client resends it, same id
    assert pair.client.unacked() == 0
    assert waiter.result["duplicate"] is True and waiter.result["offset"] == 1
    assert [m.data for m in pair.messages()] == ["once"]  # recovered from history, once
    assert pair.registry.history_of("ch")[-1][0] == 1
    assert pair.counters.get(ss.Counter.DUPLICATE_PUBLISHES) == 1


def test_publishes_made_while_disconnected_are_sent_after_the_handshake() -> None:
    pair = connected_pair()
    pair.subscribe("ch")
    pair.pump()
    pair.cut()
    waiters = [pair.publish("ch", n) for n in range(3)]
    assert pair.client.unacked() == 3
    pair.connect()
    assert [m.data for m in pair.messages()] == [0, 1, 2]
    assert all(w.result["duplicate"] is not True for w in waiters if "duplicate" in w.result)
    assert [w.result["offset"] for w in waiters] == [1, 2, 3]


def test_the_publish_outbox_is_bounded() -> None:
    client = ss.ClientSession("c", max_unacked_publishes=2)
    client.publish("ch", 1, False, None, 0.0)
    client.publish("ch", 2, False, None, 0.0)
    with pytest.raises(LimitExceeded):
        client.publish("ch", 3, False, None, 0.0)
    assert client.counts["unacked_publish_overflows"] == 1


def test_publish_ids_are_unique_per_client_and_kept_after_the_caller_gives_up() -> None:
    client_id = "client-id-of-test-c9"  # long: a random 16-character prefix never holds it
    client = ss.ClientSession(client_id)
    ids = set()
    for _ in range(5):
        cb_id, frame = client.publish("ch", None, False, object(), 0.0)
        ids.add(json.loads(frame)[1]["id"])
        client.forget(cb_id)  # a caller that timed out: the publish stays queued
    assert len(ids) == 5 and client.unacked() == 5
    prefixes = {i.rsplit(":", 1)[0] for i in ids}
    assert len(prefixes) == 1 and client_id not in prefixes.pop()  # not guessable from the client-id
    other = ss.ClientSession(client_id)  # the same client-id elsewhere: other ids
    _, frame = other.publish("ch", None, False, None, 0.0)
    assert json.loads(frame)[1]["id"] not in ids


def test_lost_connection_fails_sent_requests_but_keeps_publishes() -> None:
    pair = connected_pair()
    pair.handlers["app/slow"] = lambda d: d
    req = pair.request("app/slow", 1)
    pub = pair.publish("ch", 1)
    failed = pair.cut()
    assert [w for w, _ in failed] == [req] and pair.client.unacked() == 1
    assert not pub.settled
    pair.connect()
    assert pub.result["offset"] == 1


def test_dedup_window_and_id_count_limit() -> None:
    now = [0.0]
    counters = Counters()
    reg = ChannelRegistry("e", history_ttl_s=5.0, publish_dedup_s=5.0, publish_ids_per_publisher=2,
                          counters=counters, clock=lambda: now[0])

    def pub(pid: str) -> object:
        return reg.publish("ch", lambda o, e: o, lambda m, f: True, publish_id=pid)

    assert pub("a").duplicate is False and pub("a").duplicate is True
    now[0] = 6.0
    assert pub("a").duplicate is False  # the window passed: a new publish
    pub("b"), pub("c")  # a third id: the oldest is forgotten early, and counted
    assert counters.get(ss.Counter.PUBLISH_IDS_EVICTED) == 1
    with pytest.raises(ValueError):
        ChannelRegistry("e", history_ttl_s=10.0, publish_dedup_s=5.0)


def test_outcome_unknown_publishes_stay_in_the_outbox_and_are_resent_with_their_id() -> None:
    client = ss.ClientSession("c1")
    waiter = object()
    cb_id, frame = client.publish("ch", "x", False, waiter, 0.0)
    client.mark_sent(cb_id)
    answer = ss.error_frame(p.ERR_OUTCOME_UNKNOWN, "in flight", cb_id).decode()
    assert client.receive(answer, 10.0).events == []  # kept: the caller keeps waiting
    assert client.unacked() == 1 and client.pending(cb_id)
    assert client.due_resends(10.0) == []  # not before its backoff
    assert client.due_resends(10.3) == [(cb_id, frame)]  # same frame: same id, same cb-id
    assert client.due_resends(10.3) == []  # handed over once
    client.mark_sent(cb_id)
    # the broker is still down: unavailable leaves the outcome unknown, it stays
    assert client.receive(ss.error_frame(p.ERR_UNAVAILABLE, "down", cb_id).decode(), 11.0).events == []
    assert client.due_resends(11.4) == [] and client.due_resends(11.6) == [(cb_id, frame)]
    client.mark_sent(cb_id)
    for n in range(3, 12):  # the backoff doubles, up to its max
        client.receive(ss.error_frame(p.ERR_OUTCOME_UNKNOWN, "again", cb_id).decode(), 100.0 * n)
        assert client.due_resends(100.0 * n + ss.UNKNOWN_RESEND_MAX_S + 0.01) == [(cb_id, frame)]
        client.mark_sent(cb_id)
    ack, _ = p.encode_reply(p.EV_PUBLISH, {"channel-id": "ch", "offset": 1, "delivered": 1,
                                           "duplicate": True}, cb_id)
    events = client.receive(ack, 2000.0).events
    assert [type(e) for e in events] == [ss.PublishAnswered] and events[0].waiter is waiter
    assert events[0].error is None and client.unacked() == 0 and not client.pending(cb_id)
    assert client.counts["publish_outcome_unknown"] == 10


@pytest.mark.parametrize("code", [p.ERR_UNAVAILABLE, p.ERR_BROKER_ERROR, p.ERR_FORBIDDEN])
def test_publishes_refused_for_sure_leave_the_outbox(code: str) -> None:
    client = ss.ClientSession("c1")
    cb_id, _ = client.publish("ch", "x", False, object(), 0.0)
    events = client.receive(ss.error_frame(code, "no", cb_id).decode(), 1.0).events
    assert [type(e) for e in events] == [ss.PublishAnswered] and events[0].error.code == code
    assert client.unacked() == 0 and client.due_resends(100.0) == []

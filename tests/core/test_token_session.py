"""The rules of a connection token, in memory: ``chsk/refresh`` on the server session
(feature, shape, one per ``MIN_REFRESH_INTERVAL_S``), the 4002 close at the deadline, and
the client's refresh schedule (no socket, no clock)."""

from __future__ import annotations

import base64
import json
from typing import Any, Dict

from sente_lite import session as ss
from sente_lite.counters import Counter, Counters
from sente_lite.testing.pair import SessionPair
from sente_lite.wire import protocol as p
from sente_lite.wire import token_expiry as te

WITH_REFRESH = ss.ServerRules(rate_limit=None,
                              features=ss.ServerRules.features + (p.FEATURE_REFRESH,))


def server(rules: ss.ServerRules = WITH_REFRESH) -> ss.ServerSession:
    return ss.ServerSession("s-1", rules, 0.0, Counters())


def receive(session: ss.ServerSession, frame: list, now: float) -> ss.Received:
    text = json.dumps(frame)
    assert session.admit(text, now) is None
    return session.receive(text)


def answer(out: ss.Received) -> list:
    [frame] = out.frames
    return json.loads(frame)


def test_refresh_needs_the_feature() -> None:
    out = receive(server(ss.ServerRules(rate_limit=None)), [p.EV_REFRESH, {"token": "t"}, "c1"], 0)
    assert out.events == [] and answer(out)[1]["code"] == p.ERR_UNKNOWN_EVENT


def test_refresh_is_a_request_with_a_token_at_most_once_per_interval() -> None:
    session = server()
    for bad in ([p.EV_REFRESH, {"token": "t"}], [p.EV_REFRESH, {"tok": "t"}, "c1"],
                [p.EV_REFRESH, {"token": ""}, "c1"],
                [p.EV_REFRESH, {"token": "x" * (ss.MAX_REFRESH_TOKEN_CHARS + 1)}, "c1"]):
        out = receive(session, bad, 0.0)
        assert out.events == [] and answer(out)[1]["code"] == p.ERR_BAD_FRAME
    out = receive(session, [p.EV_REFRESH, {"token": "t1"}, "c2"], 1.0)
    assert out.events == [ss.RefreshRequest("t1", "c2")] and out.frames == []
    assert out.events[0].kind is p.FrameKind.BUILTIN
    soon = receive(session, [p.EV_REFRESH, {"token": "t2"}, "c3"],
                   1.0 + ss.MIN_REFRESH_INTERVAL_S / 2)
    assert soon.events == [] and answer(soon)[1]["code"] == p.ERR_RATE_LIMITED
    later = receive(session, [p.EV_REFRESH, {"token": "t3"}, "c4"], 1.0 + ss.MIN_REFRESH_INTERVAL_S)
    assert later.events == [ss.RefreshRequest("t3", "c4")]


def test_the_deadline_passes_once() -> None:
    session = server()
    assert not session.token_expired(1e9)  # no token: no deadline
    session.grant(10.0, 1234.0, {"k": 1})
    assert (session.token_exp, session.token_info) == (1234.0, {"k": 1})
    assert not session.token_expired(9.999)
    assert session.token_expired(10.0)
    assert not session.token_expired(11.0)  # closing already
    assert session.counters.get(Counter.TOKEN_EXPIRED_CLOSES) == 1


def test_the_dispatcher_closes_an_expired_connection_with_4002_and_it_leaves_its_channels() -> None:
    pair = SessionPair(ss.ServerRules(rate_limit=None, heartbeat_ms=1000,
                                      heartbeat_timeout_ms=60_000))
    pair.connect()
    pair.subscribe("a")
    pair.pump()
    assert pair.conn is not None
    pair.conn.session.grant(5.0, 100.0, None)
    pair.now = 4.9
    pair.tick()
    assert pair.closed is None
    pair.now = 5.0
    pair.tick()
    assert pair.closed == (p.CLOSE_TOKEN_EXPIRED, "token expired")
    assert pair.registry.channels_of(pair.conn.conn_id) == []


# -- the client's schedule ------------------------------------------------------------------
def token(claims: Dict[str, Any]) -> str:
    def seg(obj: Dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return f"{seg({'alg': 'HS256'})}.{seg(claims)}.c2lnbmF0dXJl"


FEATURES = [p.FEATURE_REFRESH]


def test_claims_are_read_without_a_jwt_library_and_garbage_is_none() -> None:
    assert te.unverified_claims(token({"sub": "a", "exp": 5})) == {"sub": "a", "exp": 5}
    for bad in (None, 5, "abc", "a.b", "a.!!!.c", f"x.{'e' * 10}.y", "a." + "x" * te.MAX_TOKEN_CHARS + ".b",
                token([1, 2])):  # type: ignore[arg-type]
        assert te.unverified_claims(bad) is None


def test_a_refresh_is_due_when_a_quarter_of_the_life_is_left() -> None:
    plan = te.RefreshSchedule()
    plan.connected(token({"iat": 1000, "exp": 1004}), {}, FEATURES, 1000.5)
    assert plan.due_at == 1003.0 and not plan.due(1002.9) and plan.due(1003.0)
    plan.sent()
    assert not plan.due(1003.5)  # one at a time
    assert plan.answered(token({"iat": 1003, "exp": 1007}), 1007, 1003.1)
    assert plan.due_at == 1006.0
    # the server's token-exp wins over the token's own; without iat the life starts when got
    plan.connected(token({"exp": 2000}), {p.K_TOKEN_EXP: 1100}, FEATURES, 1000.0)
    assert plan.due_at == 1075.0
    # a day-long token: at most MAX_REFRESH_AHEAD_S early
    plan.connected(token({"iat": 0, "exp": 86400}), {}, FEATURES, 0.0)
    assert plan.due_at == 86400 - te.MAX_REFRESH_AHEAD_S


def test_no_plan_without_the_feature_a_token_or_an_exp() -> None:
    plan = te.RefreshSchedule()
    for tok, features in ((token({"exp": 10}), []), (None, FEATURES), ("opaque", FEATURES)):
        plan.connected(tok, {}, features, 0.0)
        assert plan.due_at is None and not plan.due(1e9)


def test_a_failed_refresh_is_tried_again_until_exp_unless_forbidden() -> None:
    plan = te.RefreshSchedule()
    plan.connected(token({"iat": 0, "exp": 100}), {}, FEATURES, 0.0)
    plan.sent()
    assert not plan.answered("t", None, 80.0)
    assert plan.due_at == 80.0 + te.REFRESH_RETRY_S
    plan.sent()
    assert not plan.answered(token({"exp": 100}), 100, 81.0)  # no later exp: a failure
    assert plan.due_at == 81.0 + te.REFRESH_RETRY_S
    plan.sent()
    assert not plan.answered("t", None, 99.5)  # too late to try again: 4002 comes
    assert plan.due_at is None
    plan.connected(token({"iat": 0, "exp": 100}), {}, FEATURES, 0.0)
    plan.sent()
    assert not plan.answered("t", None, 80.0, retry=False)  # forbidden: another sub
    assert plan.due_at is None


def test_a_token_source_answer_must_be_a_token() -> None:
    assert te.checked_token("abc") == "abc"
    for bad in (None, "", 5, b"abc"):
        try:
            te.checked_token(bad)
        except te.TokenSourceRefused:
            continue
        raise AssertionError(f"{bad!r} accepted")

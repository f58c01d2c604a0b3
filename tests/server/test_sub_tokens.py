"""Subscription tokens (feature ``sub-token``) with real signed tokens (PyJWT): a channel
that needs one, its refresh over the open socket, and its expiry ending that subscription
only (docs/protocol.md section 13)."""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List

import pytest

jwt = pytest.importorskip("jwt")

from sente_lite import JWT, TOKEN_REQUIRED, Namespace  # noqa: E402
from sente_lite.core.jwt_tokens import mint  # noqa: E402
from sente_lite.wire import protocol as p  # noqa: E402
from support import WAIT_S, wait_until  # noqa: E402

KEY = "test-secret-of-32-bytes-or-more!"
#: Subscription tokens live this long in the refresh tests: three refreshes fit in ~5 s.
SHORT_TTL_S = 2


def bearer(token: str) -> Dict[str, Any]:
    return {"header": [f"Authorization: Bearer {token}"]}


def sub_server(make_server: Callable[..., Any], **kw: Any) -> Any:
    """A server whose namespace ``room`` needs subscription tokens (ticks every 0.25 s)."""
    kw.setdefault("namespaces", {"room": Namespace(subscribe_token=True), "": {}})
    return make_server(jwt=JWT(key=KEY), heartbeat_ms=1000, **kw)


def subscribe(peer: Any, channel: str, cb_id: str, token: Any = None) -> list:
    data: Dict[str, Any] = {p.K_CHANNEL: channel}
    if token is not None:
        data[p.K_TOKEN] = token
    return peer.request(p.EV_SUBSCRIBE, data, cb_id)


def test_namespace_option_is_checked_and_needs_jwt(make_server) -> None:
    with pytest.raises(TypeError, match="subscribe_token must be True or False"):
        Namespace(subscribe_token="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs the server's jwt"):
        make_server(start=False, namespaces={"room": Namespace(subscribe_token=True)})


def test_handshake_lists_the_feature_with_jwt_only(make_server, raw_ws) -> None:
    srv = sub_server(make_server)
    peer = raw_ws(srv.url, **bearer(mint("alice", 60, KEY)))
    assert p.FEATURE_SUB_TOKEN in peer.handshake[1][2]["features"]
    plain = raw_ws(make_server().url)
    assert p.FEATURE_SUB_TOKEN not in plain.handshake[1][2]["features"]
    answer = plain.request(p.EV_SUB_REFRESH, {p.K_CHANNEL: "a", p.K_TOKEN: "x"}, "c1")
    assert answer[1]["code"] == p.ERR_UNKNOWN_EVENT


def test_refusals_missing_wrong_channel_wrong_sub_expired_alg_none(make_server, raw_ws) -> None:
    srv = sub_server(make_server)
    peer = raw_ws(srv.url, **bearer(mint("alice", 60, KEY)))
    cases = [
        (None, p.ERR_INVALID_TOKEN, "needs a subscription token"),
        (mint("alice", 60, KEY, channel="room:2"), p.ERR_FORBIDDEN, "another channel"),
        (mint("bob", 60, KEY, channel="room:1"), p.ERR_FORBIDDEN, "another sub"),
        (mint("alice", -5, KEY, channel="room:1"), p.ERR_INVALID_TOKEN, "token expired"),
        (jwt.encode({"sub": "alice", "channel": "room:1", "exp": time.time() + 60}, None,
                    algorithm="none"), p.ERR_INVALID_TOKEN, "algorithm not allowed"),
        (mint("alice", 60, "another-secret-of-32-bytes-long!", channel="room:1"),
         p.ERR_INVALID_TOKEN, "bad signature"),
        (mint("alice", 60, KEY), p.ERR_INVALID_TOKEN, "not a subscription token"),
    ]
    for i, (token, code, words) in enumerate(cases):
        answer = subscribe(peer, "room:1", f"c{i}", token)
        assert answer[0] == p.EV_ERROR and answer[1]["code"] == code, (i, answer)
        assert words in answer[1]["message"], (i, answer)
    assert srv.stats()["sub_token_refused"] == len(cases)
    ok = subscribe(peer, "room:1", "ok", mint("alice", 60, KEY, channel="room:1"))
    assert ok[0] == p.EV_REPLY and ok[1][p.K_CHANNEL] == "room:1"
    assert subscribe(peer, "lobby", "free")[0] == p.EV_REPLY  # no token where none is needed


def test_a_subscription_token_is_refused_as_a_connection_token(make_server, raw_ws) -> None:
    import websocket
    srv = sub_server(make_server)
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        raw_ws(srv.url, **bearer(mint("alice", 60, KEY, channel="room:1")))
    assert b"not a connection token" in (info.value.resp_body or b"")
    peer = raw_ws(srv.url, **bearer(mint("alice", 60, KEY)))
    answer = peer.request(p.EV_REFRESH, {p.K_TOKEN: mint("alice", 60, KEY, channel="x")}, "r")
    assert answer[1]["code"] == p.ERR_INVALID_TOKEN


def test_authorize_can_require_a_token(make_server, raw_ws) -> None:
    def authorize(conn: Any, action: str, channel_id: str) -> Any:
        return TOKEN_REQUIRED if channel_id.startswith("vip") else True

    srv = make_server(jwt=JWT(key=KEY), heartbeat_ms=1000, authorize=authorize)
    peer = raw_ws(srv.url, **bearer(mint("alice", 60, KEY)))
    assert subscribe(peer, "vip", "a")[1]["code"] == p.ERR_INVALID_TOKEN
    assert peer.request(p.EV_PUBLISH, {p.K_CHANNEL: "vip", "data": 1}, "b")[1]["code"] == p.ERR_FORBIDDEN
    assert subscribe(peer, "vip", "c", mint("alice", 60, KEY, channel="vip"))[0] == p.EV_REPLY
    assert peer.request(p.EV_PUBLISH, {p.K_CHANNEL: "vip", "data": 1}, "d")[0] == p.EV_REPLY
    assert subscribe(peer, "other", "e")[0] == p.EV_REPLY


def test_sub_refresh_answers_and_refusals(make_server, raw_ws) -> None:
    srv = sub_server(make_server)
    peer = raw_ws(srv.url, **bearer(mint("alice", 60, KEY)))
    fresh = mint("alice", 120, KEY, channel="room:1")
    answer = peer.request(p.EV_SUB_REFRESH, {p.K_CHANNEL: "room:9", p.K_TOKEN: fresh}, "r0")
    assert answer[1]["code"] == p.ERR_NOT_SUBSCRIBED
    subscribe(peer, "room:1", "s", mint("alice", 60, KEY, channel="room:1"))
    answer = peer.request(p.EV_SUB_REFRESH, {p.K_CHANNEL: "room:1", p.K_TOKEN: fresh}, "r1")
    exp = jwt.decode(fresh, KEY, algorithms=["HS256"])["exp"]
    assert answer == [p.EV_REPLY, {p.K_CHANNEL: "room:1", p.K_EXP: exp}, "r1"]
    again = peer.request(p.EV_SUB_REFRESH, {p.K_CHANNEL: "room:1", p.K_TOKEN: fresh}, "r2")
    assert again[1]["code"] == p.ERR_RATE_LIMITED  # MIN_SUB_REFRESH_INTERVAL_S
    assert peer.request(p.EV_SUB_REFRESH, {p.K_CHANNEL: "room:1"}, "r3")[1]["code"] == p.ERR_BAD_FRAME
    assert srv.stats()["sub_token_refreshes"] == 1


def test_without_a_refresh_only_that_channel_ends_with_a_notice(make_server, raw_ws) -> None:
    srv = sub_server(make_server)
    peer = raw_ws(srv.url, **bearer(mint("alice", 60, KEY)))
    subscribe(peer, "room:1", "s1", mint("alice", SHORT_TTL_S, KEY, channel="room:1"))
    subscribe(peer, "room:2", "s2", mint("alice", 60, KEY, channel="room:2"))
    subscribe(peer, "lobby", "s3")
    started = time.time()
    notice = peer.recv(WAIT_S)
    while notice[0] != p.EV_UNSUBSCRIBED:
        notice = peer.recv(WAIT_S)
    assert notice[1] == {p.K_CHANNEL: "room:1", p.K_REASON: p.REASON_TOKEN_EXPIRED}
    assert time.time() - started >= SHORT_TTL_S - 1.5  # not before exp
    assert srv.stats()["sub_token_expired"] == 1
    srv.publish("room:1", "gone")
    srv.publish("room:2", "kept")
    srv.publish("lobby", "kept too")
    got = [peer.recv(WAIT_S) for _ in range(2)]
    assert sorted(f[1]["channel-id"] for f in got) == ["lobby", "room:2"]
    assert peer.request(p.EV_PING, None, "alive")[0] == p.EV_REPLY  # the connection stays


# -- the Python client -------------------------------------------------------------------------
def test_client_refreshes_three_times_without_reconnect_or_loss(make_server, make_client) -> None:
    srv = sub_server(make_server)
    minted: List[str] = []

    def source() -> str:
        minted.append(mint("alice", SHORT_TTL_S, KEY, channel="room:1"))
        return minted[-1]

    c = make_client(srv.url, token=mint("alice", 60, KEY))
    conn_id = c.conn_id
    got: List[Any] = []
    c.subscribe("room:1", lambda m: got.append(m.data), token=source)
    sent = 0
    deadline = time.monotonic() + WAIT_S
    while srv.stats()["sub_token_refreshes"] < 3 and time.monotonic() < deadline:
        srv.publish("room:1", sent)
        sent += 1
        time.sleep(0.02)  # a steady stream while the tokens are refreshed
    assert srv.stats()["sub_token_refreshes"] >= 3
    wait_until(lambda: len(got) == sent, what="every message delivered")
    assert got == list(range(sent))
    # the server counts a refresh as it answers it, the client once it reads the answer
    wait_until(lambda: c.stats()["sub_token_refreshes"] >= 3, what="the client's 3 refreshes")
    assert c.conn_id == conn_id
    assert srv.stats()["sub_token_expired"] == 0 and len(minted) >= 4


def test_client_without_refresh_loses_that_channel_only(make_server, make_client) -> None:
    srv = sub_server(make_server)
    c = make_client(srv.url, token=mint("alice", 60, KEY))
    conn_id = c.conn_id
    refused: List[Any] = []
    got: List[Any] = []
    c.subscribe("room:1", token=mint("alice", SHORT_TTL_S, KEY, channel="room:1"),
                on_token_refused=lambda ch, err: refused.append((ch, err.code)))
    c.subscribe("room:2", lambda m: got.append(m.data),
                token=mint("alice", 60, KEY, channel="room:2"))
    wait_until(lambda: refused, what="the expiry notice")
    assert refused == [("room:1", p.REASON_TOKEN_EXPIRED)]
    assert c.subscriptions() == ["room:2"] and c.conn_id == conn_id
    srv.publish("room:2", "still here")
    wait_until(lambda: got == ["still here"])
    assert c.stats()["sub_token_expired"] == 1


def test_client_gets_a_fresh_token_on_resubscribe_after_reconnect(make_server, make_client) -> None:
    srv = sub_server(make_server)
    minted: List[str] = []

    def source() -> str:
        minted.append(mint("alice", 60, KEY, channel="room:1"))
        return minted[-1]

    c = make_client(srv.url, token=mint("alice", 60, KEY))
    c.subscribe("room:1", token=source)
    first = c.conn_id
    srv.disconnect(first)
    wait_until(lambda: c.conn_id not in (None, first) and c.connected, what="a reconnect")
    got: List[Any] = []
    c.subscribe("room:1", lambda m: got.append(m.data))
    wait_until(lambda: len(minted) == 2, what="a second token")
    wait_until(lambda: (srv.publish("room:1", "x"), got)[1], what="delivery after resubscribe")


def test_client_source_refusing_at_a_refresh_unsubscribes(make_server, make_client) -> None:
    srv = sub_server(make_server)
    calls: List[int] = []

    def source() -> Any:
        calls.append(1)
        return mint("alice", SHORT_TTL_S, KEY, channel="room:1") if len(calls) == 1 else None

    c = make_client(srv.url, token=mint("alice", 60, KEY))
    refused: List[Any] = []
    c.subscribe("room:1", token=source, on_token_refused=lambda ch, err: refused.append((ch, err)))
    wait_until(lambda: refused, what="the source's refusal told")
    assert refused[0][0] == "room:1" and "gave no token" in str(refused[0][1])
    assert c.subscriptions() == [] and len(calls) == 2
    wait_until(lambda: srv.channels.subscriber_count("room:1") == 0, what="the server's unsubscribe")
    assert srv.stats()["sub_token_expired"] == 0 and c.connected


def test_client_refused_token_calls_the_handler(make_server, make_client) -> None:
    srv = sub_server(make_server)
    c = make_client(srv.url, token=mint("alice", 60, KEY))
    refused: List[Any] = []
    with pytest.raises(Exception) as info:
        c.subscribe("room:1", token=mint("bob", 60, KEY, channel="room:1"),
                    on_token_refused=lambda ch, err: refused.append((ch, err.code)))
    assert getattr(info.value, "code", None) == p.ERR_FORBIDDEN
    wait_until(lambda: refused == [("room:1", p.ERR_FORBIDDEN)])
    with pytest.raises(TypeError):
        c.subscribe("room:3", token=42)  # type: ignore[arg-type]


def test_token_command_mints_a_subscription_token(capsys, monkeypatch) -> None:
    from sente_lite import cli
    monkeypatch.delenv("SENTE_LITE_JWT_KEY", raising=False)
    assert cli.main(["token", "--sub", "alice", "--channel", "room:1", "--ttl", "60",
                     "--key", KEY]) == 0
    grant = JWT(key=KEY).check(capsys.readouterr().out.strip(), channel_token=True)
    assert (grant.uid, grant.channel) == ("alice", "room:1")


def test_history_of_a_token_channel_needs_a_live_subscription_token(make_server, raw_ws) -> None:
    srv = sub_server(make_server)
    srv.publish("room:1", "kept")
    peer = raw_ws(srv.url, **bearer(mint("alice", 60, KEY)))
    read = {p.K_CHANNEL: "room:1"}
    assert peer.request(p.EV_HISTORY, read, "h1")[1]["code"] == p.ERR_FORBIDDEN
    subscribe(peer, "room:1", "s", mint("alice", 60, KEY, channel="room:1"))
    answer = peer.request(p.EV_HISTORY, read, "h2")
    assert answer[0] == p.EV_REPLY and [m["data"] for m in answer[1]["publications"]] == ["kept"]

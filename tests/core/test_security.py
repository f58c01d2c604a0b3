"""Authentication, user routing, authorization, Origin and CSRF: every refusal path.

Each refusal is checked for its HTTP status / close code / error code and for
its counter in ``Server.stats()``.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Dict, List, Optional

import pytest

from sente_lite import Authenticated, ConnectRefused, Namespace, RemoteError, Server
from sente_lite.core.security import (CsrfTokens, HandshakeRequest, bearer_token,
                                      fetch_csrf_token, origin_problem, normalize_origins)
from sente_lite.testing.abuse import RawPeer, http_get
from support import WAIT_S, Recorder, free_port, wait_until


def refused(srv: Server, reason: str) -> int:
    return srv.stats()["handshakes_refused"].get(reason, 0)


def upgrade_status(srv: Server, path: str = "/chsk", headers: Any = ()) -> int:
    with RawPeer(srv.host, srv.port) as peer:
        return peer.upgrade(path, headers).status  # type: ignore[return-value]


# -- authenticate ----------------------------------------------------------------------
def test_authenticate_sees_the_request_and_its_uid_lands_in_the_handshake(make_face, make_client):
    seen: List[HandshakeRequest] = []

    def authenticate(req: HandshakeRequest) -> Optional[str]:
        seen.append(req)
        return {"s3cret": "alice"}.get(req.token or "")

    srv = make_face(authenticate=authenticate)
    c = make_client(srv.url + "?app=demo", token="s3cret", client_id="cid-1",
                    headers={"X-Trace": "t1"})
    assert c.uid == "alice"
    wait_until(lambda: srv.connections(), what="server lists the connection")
    req = seen[-1]
    assert req.path == "/chsk" and req.client_id == "cid-1" and req.token == "s3cret"
    # the Python client sends its credential as a header, never in the URL (which gets logged)
    assert req.query["app"] == "demo" and "token" not in req.query
    assert req.header("authorization") == "Bearer s3cret"
    assert req.header("x-trace") == "t1" and req.header("X-TRACE") == "t1"
    assert req.remote_address.startswith("127.0.0.1:")
    [conn] = srv.connections()
    assert conn["uid"] == "alice" and conn["client-id"] == "cid-1"


def test_authenticate_accepts_authorization_bearer(make_face, make_client):
    srv = make_face(authenticate=lambda req: "bob" if req.token == "tok" else None)
    c = make_client(srv.url, headers={"Authorization": "Bearer tok"})
    assert c.uid == "bob"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None and bearer_token(None) is None


def test_missing_or_bad_credential_is_401_and_the_client_stops_for_good(make_face, make_client):
    calls = []
    srv = make_face(authenticate=lambda req: calls.append(req.token) or None)
    status = upgrade_status(srv)
    assert status == 401
    c = make_client(srv.url, connect=False, token="wrong", backoff_base=0.01, backoff_max=0.02)
    with pytest.raises(ConnectRefused) as info:
        c.wait_connected(WAIT_S)
    assert info.value.status == 401
    wait_until(lambda: c.status == "closed", what="client closed after the refusal")
    # no retry loop: exactly one attempt by the client, and it made no reconnect attempt
    assert calls == [None, "wrong"]
    assert c.stats().get("reconnect_attempts", 0) == 0
    assert refused(srv, "unauthenticated") == 2


def test_authenticate_hook_errors_are_500_and_counted(make_face, caplog):
    def broken(req: HandshakeRequest) -> str:
        raise KeyError("db down")

    srv = make_face(authenticate=broken)
    with caplog.at_level(logging.ERROR, logger="sente_lite.core.security"):
        assert upgrade_status(srv) == 500
    assert refused(srv, "auth-error") == 1
    assert any("authenticate hook raised" in r.message for r in caplog.records)
    srv2 = make_face(authenticate=lambda req: 42)  # not a str: a bug in the hook
    assert upgrade_status(srv2) == 500
    assert refused(srv2, "auth-error") == 1


def test_authenticate_info_is_the_connections_presence_info(make_face, make_client):
    info = {"name": "Alice", "seat": 12}
    srv = make_face(authenticate=lambda req: Authenticated("alice", ("room:lobby",), info),
                    namespaces={"room": Namespace(presence=True)})
    c = make_client(srv.url)
    c.subscribe("room:1", timeout=WAIT_S)
    [member] = c.presence("room:1")
    assert member["uid"] == "alice" and member["info"] == info
    wait_until(lambda: "room:lobby" in c.server_subscriptions(), what="the channel given at connect")
    assert [m["info"] for m in srv.presence_of("room:1")] == [info]
    assert srv.presence_stats("room:1") == {"members": 1, "users": 1}


@pytest.mark.parametrize("bad", [["a", "list"], {"big": "x" * 5000}, {"nan": float("nan")},
                                 {"obj": object()}], ids=["list", "too-big", "nan", "not-json"])
def test_an_invalid_authenticate_info_is_500_naming_it(make_face, caplog, bad: Any):
    srv = make_face(authenticate=lambda req: Authenticated("alice", (), bad))
    with caplog.at_level(logging.ERROR, logger="sente_lite.core.security"):
        assert upgrade_status(srv) == 500
    assert refused(srv, "auth-error") == 1
    assert any("info" in r.getMessage() for r in caplog.records)


def test_token_callable_is_evaluated_at_every_reconnect_across_a_restart(make_server, make_client):
    port = free_port()
    current = {"token": "t1"}
    asked: List[str] = []

    def token() -> str:
        asked.append(current["token"])
        return current["token"]

    srv1 = make_server(port=port, authenticate=lambda r: "u-" + r.token if r.token == "t1" else None)
    c = make_client(srv1.url, token=token, backoff_base=0.01, backoff_max=0.05)
    assert c.uid == "u-t1"
    first_server = c.server_id
    srv1.stop()
    current["token"] = "t2"  # the old credential expired meanwhile
    srv2 = make_server(port=port, authenticate=lambda r: "u-" + r.token if r.token == "t2" else None)
    wait_until(lambda: c.connected and c.server_id == srv2.server_id, what="reconnect to srv2")
    assert c.server_id != first_server and c.uid == "u-t2"
    assert asked[0] == "t1" and asked[-1] == "t2"


# -- user routing ------------------------------------------------------------------------
def test_send_to_user_reaches_every_connection_of_that_uid_only(make_face, make_client):
    srv = make_face(authenticate=lambda r: r.token.split(":")[0] if r.token else None)
    got: Dict[str, Recorder] = {}
    for name in ("ann:1", "ann:2", "ann:3", "ben:1"):
        c = make_client(srv.url, token=name)
        got[name] = Recorder()
        c.on("app/note", got[name])
    wait_until(lambda: len(srv.connections()) == 4, what="server lists 4 connections")
    assert srv.send_to_user("ann", "app/note", {"n": 1}) == 3
    for name in ("ann:1", "ann:2", "ann:3"):
        assert got[name].wait_count(1) == [{"n": 1}]
    assert srv.send_to_user("nobody", "app/note", 1) == 0
    assert srv.send_to_user("ben", "app/note", {"n": 2}) == 1
    assert got["ben:1"].wait_count(1) == [{"n": 2}]  # ben never saw ann's note
    assert len(got["ann:1"]) == 1


def test_disconnect_user_closes_every_connection_of_that_uid(make_face, make_client):
    srv = make_face(authenticate=lambda r: r.token.split(":")[0] if r.token else None)
    anns = [make_client(srv.url, token=f"ann:{i}", backoff_base=0.01) for i in range(3)]
    ben = make_client(srv.url, token="ben:1")
    wait_until(lambda: len(srv.connections()) == 4, what="server lists 4 connections")
    assert srv.disconnect_user("ann", 1008, "account suspended") == 3
    for c in anns:
        with pytest.raises(ConnectRefused) as info:
            wait_until(lambda: c.status == "closed" or None, what="ann's client to stop")
            c.wait_connected(0.01)
        assert info.value.close_code == 1008
    wait_until(lambda: srv.stats()["closes_by_code"].get(1008) == 3, what="3 closes with 1008")
    assert ben.connected and ben.request("sente-lite/subscribe", {"channel-id": "x"})["offset"] == 0
    assert srv.disconnect_user("ann") == 0
    st = srv.stats()
    assert st["forced_closes"] == 3 and st["connections"] == 1


# -- authorize ---------------------------------------------------------------------------
def test_authorize_hook_guards_subscribe_and_publish(make_face, make_client):
    calls: List[tuple] = []

    def authorize(conn: Any, action: str, channel: str) -> bool:
        calls.append((conn.uid, action, channel))
        return channel.startswith(f"user.{conn.uid}.") or (action == "subscribe" and channel == "public")

    srv = make_face(authenticate=lambda r: r.token, authorize=authorize)
    c = make_client(srv.url, token="ann")
    assert c.subscribe("user.ann.inbox")["channel-id"] == "user.ann.inbox"
    assert c.subscribe("public")["offset"] == 0
    with pytest.raises(RemoteError) as info:
        c.subscribe("user.ben.inbox")
    assert info.value.code == "forbidden"
    with pytest.raises(RemoteError) as info:
        c.publish("public", {"x": 1}, ack=True)
    assert info.value.code == "forbidden"
    assert c.publish("user.ann.inbox", 1, ack=True)["delivered"] == 1
    c.unsubscribe("public")  # unsubscribe is never refused and never asks the hook
    assert ("ann", "subscribe", "user.ben.inbox") in calls and ("ann", "publish", "public") in calls
    assert not any(action == "unsubscribe" for _, action, _ in calls)
    assert srv.stats()["forbidden"] == 2


# -- Origin ------------------------------------------------------------------------------
def test_origin_default_accepts_no_origin_and_same_host_refuses_others(make_face):
    srv = make_face()
    assert upgrade_status(srv) == 101  # no Origin: not a browser
    assert upgrade_status(srv, headers=[("Origin", f"http://{srv.host}:{srv.port}")]) == 101
    assert upgrade_status(srv, headers=[("Origin", f"https://{srv.host}:9")]) == 101  # same host
    for evil in ("https://evil.example", "null", f"http://{srv.host}.evil.example", "garbage"):
        assert upgrade_status(srv, headers=[("Origin", evil)]) == 403, evil
    assert refused(srv, "origin") == 4


def test_allowed_origins_list_and_explicit_star(make_face):
    srv = make_face(allowed_origins=["https://app.example.com", "http://localhost:3000/"])
    assert upgrade_status(srv, headers=[("Origin", "https://APP.example.com")]) == 101
    assert upgrade_status(srv, headers=[("Origin", "http://localhost:3000")]) == 101
    assert upgrade_status(srv, headers=[("Origin", "https://app.example.com:8443")]) == 403
    # the server's own origin stays allowed beside the list (tests/wire/test_origin.py)
    assert upgrade_status(srv, headers=[("Origin", f"http://{srv.host}:{srv.port}")]) == 101
    assert upgrade_status(srv, headers=[("Origin", f"http://{srv.host}:{srv.port + 1}")]) == 403
    assert upgrade_status(srv) == 101
    assert refused(srv, "origin") == 2
    anywhere = make_face(allowed_origins=["*"])
    assert upgrade_status(anywhere, headers=[("Origin", "https://evil.example")]) == 101
    with pytest.raises(TypeError):
        Server(allowed_origins="https://app.example.com")  # a string, not a list


def test_origin_problem_is_pure_and_precise():
    assert origin_problem(None, "h:1", None) is None
    assert origin_problem("http://h:2", "h:1", None) is None
    assert "not the host" in origin_problem("http://x", "h:1", None)
    assert origin_problem("http://[::1]:5", "[::1]:8", None) is None
    allowed = normalize_origins(["https://a.example"])
    assert origin_problem("https://a.example/", "h", allowed) is None
    assert "allowed_origins" in origin_problem("https://b.example", "h", allowed)


# -- CSRF --------------------------------------------------------------------------------
def test_csrf_token_is_required_per_client_id_and_sent_in_the_handshake(make_face, make_client):
    srv = make_face(csrf=True)
    assert upgrade_status(srv, "/chsk?client-id=c1") == 403  # no token
    answer = http_get(srv.host, srv.port, "/csrf-token?client-id=c1")
    assert answer.status == 200 and answer.headers["cache-control"] == "no-store"
    token = json.loads(answer.body)["csrf-token"]
    assert token == srv.csrf_token("c1") != srv.csrf_token("c2")
    assert upgrade_status(srv, f"/chsk?client-id=c2&csrf-token={token}") == 403  # another id's
    assert upgrade_status(srv, f"/chsk?csrf-token={token}") == 403  # no client-id
    assert upgrade_status(srv, f"/chsk?client-id=c1&csrf-token={token}x") == 403
    assert refused(srv, "csrf") == 4
    c = make_client(srv.url, client_id="c1", csrf_token=token)
    assert c.handshake is not None and c.csrf_token == token
    # a page of another origin cannot get a token; off means no endpoint
    assert http_get(srv.host, srv.port, "/csrf-token?client-id=c1",
                    [("Origin", "https://evil.example")]).status == 403
    assert http_get(srv.host, srv.port, "/csrf-token").status == 400
    plain = make_face()
    assert http_get(plain.host, plain.port, "/csrf-token?client-id=c1").status == 404
    assert plain.csrf_token("c1") is None


def test_csrf_tokens_are_hmacs_under_a_per_server_secret():
    a, b = CsrfTokens(), CsrfTokens()
    assert a.token_for("x") != b.token_for("x")  # not one global constant
    assert a.check("x", a.token_for("x")) and not a.check("x", b.token_for("x"))
    assert not a.check("x", None) and not a.check("x", "")
    shared = CsrfTokens("0123456789abcdef-shared")
    assert shared.token_for("x") == CsrfTokens("0123456789abcdef-shared").token_for("x")
    with pytest.raises(ValueError):
        CsrfTokens("short")


def test_client_resends_the_csrf_token_it_learned_after_a_restart(make_server, make_client):
    port = free_port()
    secret = "a-secret-shared-by-restarts"
    srv1 = make_server(port=port, csrf=True, csrf_secret=secret)
    c = make_client(srv1.url, client_id="cid", backoff_base=0.01, backoff_max=0.05,
                    csrf_token=fetch_csrf_token(srv1.url, "cid"))
    srv1.stop()
    srv2 = make_server(port=port, csrf=True, csrf_secret=secret)
    wait_until(lambda: c.connected and c.server_id == srv2.server_id, what="reconnect to srv2")
    assert refused(srv2, "csrf") == 0


def test_a_stale_csrf_token_stops_the_client_and_a_callable_refreshes_it(make_server, make_client):
    port = free_port()
    srv1 = make_server(port=port, csrf=True)  # random secret: a restart invalidates tokens
    url = srv1.url
    stale = make_client(url, client_id="s", backoff_base=0.01, csrf_token=fetch_csrf_token(url, "s"))
    fresh = make_client(url, client_id="f", backoff_base=0.01, backoff_max=0.05,
                        csrf_token=lambda: fetch_csrf_token(url, "f", timeout=1.0))
    srv1.stop()
    srv2 = make_server(port=port, csrf=True)
    wait_until(lambda: fresh.connected and fresh.server_id == srv2.server_id, what="fresh reconnects")
    with pytest.raises(ConnectRefused) as info:
        wait_until(lambda: stale.status == "closed" or None, what="stale client to stop")
        stale.wait_connected(0.01)
    assert info.value.status == 403
    assert refused(srv2, "csrf") >= 1


def test_handshake_csrf_slot_is_null_when_csrf_is_off(make_face, raw_ws):
    srv = make_face()
    hs = raw_ws(srv.url).handshake
    assert hs[0] == "chsk/handshake" and hs[1][1] is None


def test_refusals_are_logged_as_structured_lines(make_face, caplog):
    srv = make_face(authenticate=lambda r: None)
    with caplog.at_level(logging.INFO, logger="sente_lite"):
        assert upgrade_status(srv, headers=[("Origin", "https://evil.example")]) == 403
        assert upgrade_status(srv) == 401
    lines = [r for r in caplog.records if getattr(r, "sente_lite", None)]
    reasons = [r.sente_lite["reason"] for r in lines]
    assert reasons == ["origin", "unauthenticated"]
    msg = lines[0].getMessage()
    assert msg.startswith("refused-upgrade reason=origin ") and "status=403" in msg
    assert "remote=127.0.0.1:" in msg and "uid=-" in msg and "conn-id=-" in msg


def test_log_lines_of_a_flood_are_folded_not_lost(caplog):
    from sente_lite.core import security

    logger = logging.getLogger("sente_lite.test-fold")
    with caplog.at_level(logging.WARNING, logger="sente_lite.test-fold"):
        for _ in range(security.LOG_LINES_PER_S * 3):
            security.report(logger, "closed", "test-fold", conn_id="c", code=1008)
    lines = [r for r in caplog.records if r.name == "sente_lite.test-fold"]
    assert 1 <= len(lines) <= 2 * security.LOG_LINES_PER_S  # at most two one-second windows

"""JWT connection tokens (``Server(jwt=JWT(...))``), with real signed tokens: admission at
the upgrade (401 with a short reason), ``chsk/refresh`` over the open socket, the 4002
close of a connection whose token expired, the Python client's refresh and reconnect, and
logs that never hold a token."""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Any, Callable, Dict, List

import pytest
import websocket  # websocket-client

jwt = pytest.importorskip("jwt", reason="PyJWT is not installed (pip install 'sente-lite[jwt]')")
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: E402

from sente_lite import JWT, Client, ConnectRefused  # noqa: E402
from sente_lite.core import jwt_tokens  # noqa: E402
from sente_lite.core.jwt_tokens import mint  # noqa: E402
from sente_lite.wire import protocol as p  # noqa: E402
from support import WAIT_S, RawWS, wait_until  # noqa: E402

KEY = "test-secret-of-32-bytes-or-more!"
OLD_KEY = "the-previous-secret-of-32-bytes!"
#: Tokens live this long in the refresh tests: three refreshes fit in about 10 s.
SHORT_TTL_S = 3


def hs_server(make_server: Callable[..., Any], **jwt_kw: Any) -> Any:
    """A server taking HS256 tokens signed with ``KEY`` (ticks every 0.25 s)."""
    return make_server(jwt=JWT(key=jwt_kw.pop("key", KEY), **jwt_kw), heartbeat_ms=1000)


def bearer(token: str) -> Dict[str, Any]:
    return {"header": [f"Authorization: Bearer {token}"]}


def refused(url: str, **kw: Any) -> websocket.WebSocketBadStatusException:
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        RawWS(url, **kw)
    return info.value


def body(exc: websocket.WebSocketBadStatusException) -> str:
    return (exc.resp_body or b"").decode("utf-8").strip()


def unsigned(claims: Dict[str, Any]) -> str:
    """A token with ``alg: none`` (no signature), written by hand."""
    def seg(obj: Dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return f"{seg({'alg': 'none', 'typ': 'JWT'})}.{seg(claims)}."


# -- the settings ---------------------------------------------------------------------------
def test_the_none_algorithm_and_unusable_settings_are_refused_at_construction(make_server) -> None:
    for algs in (["none"], ["HS256", "None"], ["NONE"]):
        with pytest.raises(ValueError, match="'none' algorithm is never accepted"):
            JWT(key=KEY, algorithms=algs)
    with pytest.raises(ValueError, match="not supported"):
        JWT(key=KEY, algorithms=["HS1"])
    with pytest.raises(TypeError, match="a list"):
        JWT(key=KEY, algorithms="HS256")
    with pytest.raises(ValueError, match="key="):
        JWT()
    with pytest.raises(ValueError, match="leeway"):
        JWT(key=KEY, leeway=-1)
    with pytest.raises(ValueError, match="leeway"):
        JWT(key=KEY, leeway=jwt_tokens.MAX_LEEWAY_S + 1)
    with pytest.raises(ValueError, match="jwt or authenticate"):
        make_server(start=False, jwt=JWT(key=KEY), authenticate=lambda r: "u")
    with pytest.raises(TypeError, match="sente_lite.JWT"):
        make_server(start=False, jwt={"key": KEY})
    assert KEY not in repr(JWT(key=KEY))
    with pytest.raises(ValueError, match="never used"):
        mint("u", 10, KEY, "none")


def test_without_pyjwt_the_error_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "jwt", None)
    with pytest.raises(ImportError, match=r"pip install 'sente-lite\[jwt\]'"):
        JWT(key=KEY)


# -- admission ------------------------------------------------------------------------------
def test_a_valid_token_sets_the_uid_info_and_announces_refresh(make_server, raw_ws) -> None:
    srv = hs_server(make_server)
    seen: List[Any] = []
    srv.on_connect(lambda conn: seen.append((conn.uid, conn.info, conn.token_exp)))
    token = mint("alice", 60, KEY, info={"name": "Alice"})
    uid, _, info, _ = raw_ws(srv.url, **bearer(token)).handshake[1]
    assert uid == "alice"
    assert p.FEATURE_REFRESH in info["features"]
    assert info[p.K_TOKEN_EXP] == jwt.decode(token, KEY, algorithms=["HS256"])["exp"]
    wait_until(lambda: seen)
    assert seen == [("alice", {"name": "Alice"}, info[p.K_TOKEN_EXP])]


def test_query_token_still_works(make_server, raw_ws) -> None:
    srv = hs_server(make_server)
    assert raw_ws(f"{srv.url}?token={mint('bob', 60, KEY)}").handshake[1][0] == "bob"


def test_a_browser_passes_the_token_as_a_subprotocol_and_gets_sente_lite_back(make_server, raw_ws) -> None:
    srv = hs_server(make_server)
    token = mint("carol", 60, KEY)
    peer = raw_ws(srv.url, subprotocols=["sente-lite", f"bearer.{token}"])
    assert peer.handshake[1][0] == "carol"
    assert peer.ws.getsubprotocol() == "sente-lite"
    # without sente-lite the offer is not read as a token
    exc = refused(srv.url, subprotocols=[f"bearer.{token}"])
    assert exc.status_code == 401 and body(exc) == "invalid token: no token"


def test_expired_at_connect_is_401_with_the_reason(make_server) -> None:
    srv = hs_server(make_server)
    exc = refused(srv.url, **bearer(mint("alice", -5, KEY)))
    assert exc.status_code == 401
    assert body(exc) == "invalid token: token expired"
    assert 'error="invalid_token"' in exc.resp_headers["www-authenticate"]
    assert srv.stats()["handshakes_refused"] == {"unauthenticated": 1}


def test_no_token_wrong_signature_malformed_and_missing_claims_are_401(make_server) -> None:
    srv = hs_server(make_server)
    now = int(time.time())
    cases = {
        "": "no token",
        mint("alice", 60, "another-secret-entirely-32-bytes"): "bad signature",
        "not.a.jwt": "malformed token",
        jwt.encode({"exp": now + 60}, KEY, algorithm="HS256"): "missing claim sub",
        jwt.encode({"sub": "alice"}, KEY, algorithm="HS256"): "missing claim exp",
        jwt.encode({"sub": "a", "exp": now + 60, "info": [1]}, KEY, algorithm="HS256"):
            "claim info must be an object",
        jwt.encode({"sub": "a", "exp": now + 60, "info": {"x": "y" * 5000}}, KEY,
                   algorithm="HS256"): "claim info over 4096 bytes",
    }
    for token, reason in cases.items():
        exc = refused(srv.url, **(bearer(token) if token else {}))
        assert (exc.status_code, body(exc)) == (401, f"invalid token: {reason}"), token


def test_alg_none_is_refused_even_unsigned_with_good_claims(make_server) -> None:
    srv = hs_server(make_server)
    token = unsigned({"sub": "mallory", "exp": int(time.time()) + 60})
    exc = refused(srv.url, **bearer(token))
    assert (exc.status_code, body(exc)) == (401, "invalid token: algorithm not allowed")


def test_audience_and_issuer(make_server, raw_ws) -> None:
    srv = hs_server(make_server, audience="rt", issuer="auth.example")
    good = mint("alice", 60, KEY, audience="rt", issuer="auth.example")
    assert raw_ws(srv.url, **bearer(good)).handshake[1][0] == "alice"
    for token, reason in (
            (mint("alice", 60, KEY, audience="other", issuer="auth.example"), "wrong audience"),
            (mint("alice", 60, KEY, issuer="auth.example"), "missing claim aud"),
            (mint("alice", 60, KEY, audience="rt", issuer="evil.example"), "wrong issuer")):
        exc = refused(srv.url, **bearer(token))
        assert (exc.status_code, body(exc)) == (401, f"invalid token: {reason}")
    # a server with no audience refuses a token that names one (it is meant for another)
    plain = hs_server(make_server)
    exc = refused(plain.url, **bearer(mint("alice", 60, KEY, audience="rt")))
    assert body(exc) == "invalid token: wrong audience"


def test_clock_skew_within_leeway_is_accepted_beyond_it_refused(make_server, raw_ws) -> None:
    lenient = hs_server(make_server, leeway=10)
    strict = hs_server(make_server)
    now = int(time.time())
    ahead = jwt.encode({"sub": "a", "iat": now + 5, "nbf": now + 5, "exp": now + 60}, KEY,
                       algorithm="HS256")  # the issuer's clock runs 5 s ahead
    just_expired = jwt.encode({"sub": "a", "iat": now - 60, "exp": now - 3}, KEY, algorithm="HS256")
    for token in (ahead, just_expired):
        assert raw_ws(lenient.url, **bearer(token)).handshake[1][0] == "a"
    assert body(refused(strict.url, **bearer(ahead))).startswith("invalid token: token not yet valid")
    assert body(refused(strict.url, **bearer(just_expired))) == "invalid token: token expired"


def test_key_rotation_accepts_every_listed_key(make_server, raw_ws) -> None:
    rotating = hs_server(make_server, key=[KEY, OLD_KEY])
    assert raw_ws(rotating.url, **bearer(mint("a", 60, OLD_KEY))).handshake[1][0] == "a"
    assert raw_ws(rotating.url, **bearer(mint("b", 60, KEY))).handshake[1][0] == "b"
    rotated = hs_server(make_server, key=[KEY])
    assert body(refused(rotated.url, **bearer(mint("a", 60, OLD_KEY)))) == "invalid token: bad signature"


def _pem_public(private: Any) -> bytes:
    return private.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)


def test_rs256_and_es256_with_pem_keys_and_no_algorithm_confusion(make_server, raw_ws) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    srv = make_server(jwt=JWT(key=[_pem_public(rsa_key), _pem_public(ec_key)],
                              algorithms=["RS256", "ES256"]))
    assert raw_ws(srv.url, **bearer(mint("r", 60, rsa_key, "RS256"))).handshake[1][0] == "r"
    assert raw_ws(srv.url, **bearer(mint("e", 60, ec_key, "ES256"))).handshake[1][0] == "e"
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert body(refused(srv.url, **bearer(mint("r", 60, other, "RS256")))) == \
        "invalid token: bad signature"
    # an HS256 token "signed" with the public key as a secret: refused (HS256 not listed)
    assert body(refused(srv.url, **bearer(jwt.encode(
        {"sub": "x", "exp": int(time.time()) + 60}, KEY, algorithm="HS256")))) == \
        "invalid token: algorithm not allowed"


def test_a_jwks_file_picks_the_key_by_kid_and_is_read_again_when_it_changes(
        make_server, raw_ws, tmp_path, monkeypatch) -> None:
    from jwt.algorithms import ECAlgorithm, RSAAlgorithm
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())

    def jwk(key: Any, algorithm: Any, kid: str, alg: str) -> Dict[str, Any]:
        return dict(json.loads(algorithm.to_jwk(key.public_key())), kid=kid, alg=alg)

    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk(rsa_key, RSAAlgorithm, "r1", "RS256")]}))
    monkeypatch.setattr(jwt_tokens, "JWKS_RECHECK_S", 0.0)  # look at the file at every check
    srv = make_server(jwt=JWT(jwks_file=str(path), algorithms=["RS256", "ES256"]))
    assert raw_ws(srv.url, **bearer(mint("r", 60, rsa_key, "RS256", kid="r1"))).handshake[1][0] == "r"
    new = mint("e", 60, ec_key, "ES256", kid="e1")
    assert body(refused(srv.url, **bearer(new))) == "invalid token: no key for ES256"
    path.write_text(json.dumps({"keys": [jwk(rsa_key, RSAAlgorithm, "r1", "RS256"),
                                         jwk(ec_key, ECAlgorithm, "e1", "ES256")]}))
    later = time.time() + 5  # another mtime, whatever the file system's resolution
    import os
    os.utime(path, (later, later))
    assert raw_ws(srv.url, **bearer(new)).handshake[1][0] == "e"
    with pytest.raises(ValueError, match="jwks_file"):
        JWT(jwks_file=str(tmp_path / "missing.json"))


# -- refresh on the wire ----------------------------------------------------------------------
def test_refresh_extends_the_deadline_and_keeps_the_sub(make_server, raw_ws) -> None:
    srv = hs_server(make_server)
    conns: List[Any] = []
    srv.on_connect(conns.append)
    peer = raw_ws(srv.url, **bearer(mint("alice", 60, KEY)))
    fresh = mint("alice", 120, KEY, info={"v": 2})
    reply = peer.request(p.EV_REFRESH, {"token": fresh}, "c1")
    exp = jwt.decode(fresh, KEY, algorithms=["HS256"])["exp"]
    assert reply == ["chsk/reply", {"exp": exp}, "c1"]
    wait_until(lambda: conns)
    assert conns[0].info == {"v": 2} and conns[0].token_exp == exp
    assert srv.stats()["token_refreshes"] == 1
    # each refusal on a connection of its own (one refresh per MIN_REFRESH_INTERVAL_S each)
    other = raw_ws(srv.url, **bearer(mint("alice", 60, KEY)))
    answer = other.request(p.EV_REFRESH, {"token": mint("bob", 120, KEY)}, "c2")
    assert answer[1]["code"] == p.ERR_FORBIDDEN and answer[2] == "c2"
    third = raw_ws(srv.url, **bearer(mint("alice", 60, KEY)))
    bad = third.request(p.EV_REFRESH, {"token": mint("alice", -1, KEY)}, "c3")
    assert bad[1] == {"code": p.ERR_INVALID_TOKEN, "message": "token expired"}
    assert srv.stats()["token_refresh_refused"] == 2


def test_refresh_frames_are_checked_and_bounded(make_server, raw_ws) -> None:
    srv = hs_server(make_server)
    peer = raw_ws(srv.url, **bearer(mint("alice", 60, KEY)))
    assert peer.request(p.EV_REFRESH, {"tok": "x"}, "c1")[1]["code"] == p.ERR_BAD_FRAME
    peer.send_frame(p.EV_REFRESH, {"token": mint("alice", 60, KEY)})  # not a request
    assert peer.recv()[1]["code"] == p.ERR_BAD_FRAME
    assert peer.request(p.EV_REFRESH, {"token": mint("alice", 60, KEY)}, "c2")[0] == "chsk/reply"
    again = peer.request(p.EV_REFRESH, {"token": mint("alice", 60, KEY)}, "c3")
    assert again[1]["code"] == p.ERR_RATE_LIMITED  # within MIN_REFRESH_INTERVAL_S


def test_a_server_without_jwt_answers_refresh_unknown_event(make_server, raw_ws) -> None:
    srv = make_server()
    peer = raw_ws(srv.url)
    assert p.FEATURE_REFRESH not in peer.handshake[1][2]["features"]
    assert p.K_TOKEN_EXP not in peer.handshake[1][2]
    assert peer.request(p.EV_REFRESH, {"token": "x"}, "c1")[1]["code"] == p.ERR_UNKNOWN_EVENT


def test_without_a_refresh_the_server_closes_with_4002_at_exp(make_server, raw_ws) -> None:
    srv = hs_server(make_server)
    peer = raw_ws(srv.url, **bearer(mint("alice", 2, KEY)))
    exp = peer.handshake[1][2][p.K_TOKEN_EXP]
    assert peer.recv_close(WAIT_S) == p.CLOSE_TOKEN_EXPIRED
    assert time.time() >= exp  # not before exp (+ leeway, 0 here)
    assert srv.stats().get("token_expired_closes") == 1
    wait_until(lambda: srv.stats()["closes_by_code"].get(p.CLOSE_TOKEN_EXPIRED) == 1)


# -- the Python client -------------------------------------------------------------------------
def test_three_refreshes_in_a_ten_second_connection_without_reconnect(make_server, make_client) -> None:
    srv = hs_server(make_server)
    got: List[str] = []

    def source() -> str:
        got.append(mint("alice", SHORT_TTL_S, KEY))
        return got[-1]

    c = make_client(srv.url, token=source)
    conn_id = c.conn_id
    started = time.monotonic()
    wait_until(lambda: c.stats().get("token_refreshes", 0) >= 3, 20, "three refreshes")
    wait_until(lambda: time.monotonic() - started >= 10, 20, "a 10 s connection")
    stats = c.stats()
    assert c.connected and c.conn_id == conn_id
    assert stats.get("reconnect_attempts", 0) == 0 and stats.get("token_refresh_failures", 0) == 0
    assert stats["token_refreshes"] >= 3 and len(got) >= 4
    assert srv.stats().get("token_expired_closes", 0) == 0


def test_after_a_4002_close_the_client_reconnects_with_a_fresh_token(make_server, make_client) -> None:
    srv = hs_server(make_server)
    holder: List[Client] = []

    def source() -> str:  # refreshes get a token the server refuses; connects a good one
        c = holder[0] if holder else None
        return mint("alice", SHORT_TTL_S, KEY if c is None or not c.connected else OLD_KEY)

    c = make_client(srv.url, token=source, connect=False)
    holder.append(c)
    assert c.wait_connected(WAIT_S)
    first = c.conn_id
    wait_until(lambda: c.stats().get("closed_by_server_4002", 0) >= 1, 20, "a 4002 close")
    wait_until(lambda: c.connected and c.conn_id != first, 20, "a reconnect")
    assert c.uid == "alice" and c.refusal is None
    assert c.stats()["token_refresh_failures"] >= 1


def test_a_token_source_that_refuses_stops_the_client(make_server, make_client) -> None:
    srv = hs_server(make_server)
    calls: List[int] = []

    def source() -> Any:  # a token for the connect, then none
        calls.append(1)
        return mint("alice", SHORT_TTL_S, KEY) if len(calls) == 1 else None

    c = make_client(srv.url, token=source)
    assert c.wait_status("closed", 20)
    assert isinstance(c.refusal, ConnectRefused) and "gave no token" in str(c.refusal)
    with pytest.raises(ConnectRefused):
        c.wait_connected(0.1)

    def raising() -> str:
        raise RuntimeError("identity provider down")

    c2 = make_client(srv.url, token=raising, connect=False)
    assert c2.wait_status("closed", WAIT_S)
    assert "raised RuntimeError" in str(c2.refusal)


def test_a_fixed_token_is_not_refreshed(make_server, make_client) -> None:
    srv = hs_server(make_server)
    c = make_client(srv.url, token=mint("alice", 60, KEY))
    assert c._refresh.due_at is None  # nothing to refresh with: it reconnects after 4002
    assert c.uid == "alice"


# -- logs ----------------------------------------------------------------------------------
def test_no_token_reaches_the_logs(make_server, make_client, raw_ws, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    srv = hs_server(make_server)
    tokens: List[str] = []

    def source() -> str:
        tokens.append(mint("alice", SHORT_TTL_S, KEY))
        return tokens[-1]

    c = make_client(srv.url, token=source)
    wait_until(lambda: c.stats().get("token_refreshes", 0) >= 1, 20, "a refresh")
    refused_tokens = [mint("x", -5, KEY), mint("x", 60, OLD_KEY), unsigned({"sub": "x", "exp": 1})]
    for t in refused_tokens:
        refused(srv.url, **bearer(t))
        refused(f"{srv.url}?token={t}")
        refused(srv.url, subprotocols=["sente-lite", f"bearer.{t}"])
    good = mint("bob", 60, KEY)
    peer = raw_ws(srv.url, subprotocols=["sente-lite", f"bearer.{good}"])
    peer.request(p.EV_REFRESH, {"token": mint("bob", 60, OLD_KEY)}, "c1")
    text = "\n".join(logging.Formatter().format(r) + " " + str(getattr(r, "sente_lite", ""))
                     for r in caplog.records)
    assert "invalid token: token expired" in text or "token expired" in text
    for secret in tokens + refused_tokens + [good]:
        for part in secret.split("."):
            if len(part) > 20:  # header, claims and signature segments each
                assert part not in text


def test_refresh_in_a_batch_and_over_msgpack(make_server, make_client, raw_ws) -> None:
    pytest.importorskip("msgpack", reason="the [msgpack] extra is not installed")
    srv = hs_server(make_server)
    peer = raw_ws(srv.url, **bearer(mint("alice", 60, KEY)))
    peer.send_frame(p.EV_BATCH, [[p.EV_PING, None, "c1"],
                                 [p.EV_REFRESH, {"token": mint("alice", 90, KEY)}, "c2"]])
    answers = [peer.recv(), peer.recv()]
    assert [a[2] for a in answers] == ["c1", "c2"] and answers[1][0] == p.EV_REPLY
    c = make_client(srv.url, token=lambda: mint("bob", 2, KEY), packer="msgpack")
    conn_id = c.conn_id
    wait_until(lambda: c.stats().get("token_refreshes", 0) >= 1, 20, "a refresh over msgpack")
    assert c.conn_id == conn_id and c.stats().get("reconnect_attempts", 0) == 0


def test_a_token_holder_is_authenticated_for_a_namespace_policy(make_server: Callable[..., Any],
                                                                 make_client: Callable[..., Any]) -> None:
    """A uid granted by a JWT counts as authenticated (``conn.authenticated``): a namespace
    that lets authenticated connections only subscribe and publish serves it."""
    from sente_lite import Namespace, RemoteError

    srv = make_server(jwt=JWT(key=KEY), namespaces={
        "private": Namespace(subscribe="authenticated", publish="authenticated"),
        "feed": Namespace(publish="server")})
    seen: List[bool] = []
    srv.on_connect(lambda conn: seen.append(conn.authenticated))
    c = make_client(srv.url, token=mint("ann", 60, KEY))
    assert c.subscribe("private:ann")["channel-id"] == "private:ann"
    assert c.publish("private:ann", 1, ack=True)["offset"] == 1
    assert seen == [True]
    with pytest.raises(RemoteError) as info:
        c.publish("feed:x", 1, ack=True)
    assert info.value.code == "forbidden"

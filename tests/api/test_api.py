"""The HTTP server API (docs/api.md): every method, every error, its limits, on real sockets."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import time
from typing import Any, Dict, List, Optional, Tuple

import pytest

from sente_lite import Server
from sente_lite.counters import Counter
from sente_lite.limits import InvalidSetting
from sente_lite.testing.abuse import HttpAnswer, RawPeer
from support import WAIT_S, wait_until

KEY = "test-key-0123456789abcdef"
KEY2 = "other-key-0123456789abcdef"


def call(srv: Server, method: str, body: Any = None, key: Optional[str] = KEY,
         conn: Optional[http.client.HTTPConnection] = None,
         headers: Optional[Dict[str, str]] = None) -> Tuple[int, Any]:
    """POST one API method; (status, decoded JSON answer)."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", srv.port, timeout=WAIT_S)
    sent = {"Content-Type": "application/json"}
    if key is not None:
        sent["Authorization"] = f"apikey {key}"
    sent.update(headers or {})
    data = body if isinstance(body, bytes) else json.dumps({} if body is None else body).encode()
    try:
        conn.request("POST", f"/api/{method}", data, sent)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        if own:
            conn.close()


def raw(srv: Server, request: bytes, answers: int = 1, timeout: float = WAIT_S) -> List[HttpAnswer]:
    with RawPeer("127.0.0.1", srv.port) as peer:
        peer.send(request)
        return [peer.read_http(timeout) for _ in range(answers)]


def post(path: str, body: bytes, key: Optional[str] = KEY, extra: str = "",
         host: str = "127.0.0.1") -> bytes:
    auth = f"Authorization: apikey {key}\r\n" if key else ""
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: {len(body)}\r\n"
            f"{extra}\r\n").encode() + body


@pytest.fixture
def srv(make_server) -> Server:
    return make_server(api_keys=[KEY, KEY2])


def subscribe(make_client, srv: Server, channel: str, got: List[Any], **kwargs: Any) -> Any:
    client = make_client(srv.url, **kwargs)
    client.subscribe(channel, lambda m: got.append(m), timeout=WAIT_S)
    return client


# ---------------------------------------------------------------- publish and idempotency

def test_publish_reaches_subscribers_with_the_answered_offset(srv: Server, make_client) -> None:
    got: List[Any] = []
    subscribe(make_client, srv, "news", got)
    status, answer = call(srv, "publish", {"channel": "news", "data": {"title": "hi"}})
    assert status == 200
    result = answer["result"]
    assert result["delivered"] == 1 and result["channel"] == "news"
    wait_until(lambda: got, what="the message")
    assert (got[0].data, got[0].offset, got[0].epoch, got[0].from_uid) == (
        {"title": "hi"}, result["offset"], result["epoch"], None)
    status, answer = call(srv, "publish", {"channel": "news", "data": None})
    assert status == 200 and answer["result"]["offset"] == result["offset"] + 1


def test_same_idempotency_key_twice_is_one_delivery(srv: Server, make_client) -> None:
    got: List[Any] = []
    subscribe(make_client, srv, "orders", got)
    first = call(srv, "publish", {"channel": "orders", "data": 1, "idempotency_key": "o-1"})[1]
    for _ in range(3):  # retries, on new connections and with other data
        again = call(srv, "publish", {"channel": "orders", "data": 2, "idempotency_key": "o-1"})[1]
        assert again["result"]["duplicate"] is True
        assert again["result"]["offset"] == first["result"]["offset"]
    call(srv, "publish", {"channel": "orders", "data": 3, "idempotency_key": "o-2"})
    call(srv, "publish", {"channel": "other", "data": 4, "idempotency_key": "o-1"})
    call(srv, "publish", {"channel": "orders", "data": 5, "idempotency_key": "o-3"})
    # in channel order: a duplicate delivered would stand before the last publish
    wait_until(lambda: len(got) >= 3, what="three deliveries")
    assert [m.data for m in got] == [1, 3, 5]
    assert srv.stats()["duplicate_publishes"] == 3


def test_idempotency_keys_belong_to_their_api_key(srv: Server, make_client) -> None:
    got: List[Any] = []
    subscribe(make_client, srv, "c", got)
    a = call(srv, "publish", {"channel": "c", "data": "a", "idempotency_key": "same"})[1]["result"]
    b = call(srv, "publish", {"channel": "c", "data": "b", "idempotency_key": "same"},
             key=KEY2)[1]["result"]
    assert "duplicate" not in a and "duplicate" not in b and b["offset"] == a["offset"] + 1
    srv_pub = srv.publish("c", "s", idempotency_key="same")  # the server is another publisher
    assert not srv_pub.duplicate
    wait_until(lambda: len(got) == 3, what="three deliveries")


@pytest.mark.parametrize("body,code", [
    ({"data": 1}, "invalid-channel"),
    ({"channel": "", "data": 1}, "invalid-channel"),
    ({"channel": 5, "data": 1}, "invalid-channel"),
    ({"channel": "c"}, "bad-request"),
    ({"channel": "c", "data": 1, "idempotency_key": ""}, "bad-request"),
    ({"channel": "c", "data": 1, "idempotency_key": "x" * 129}, "bad-request"),
    ({"channel": "c", "data": 1, "idempotency_key": 7}, "bad-request"),
    ({"channel": "c", "data": 1, "traceparent": "00-nope"}, "bad-request"),
])
def test_bad_publish_parameters_are_400_and_publish_nothing(srv: Server, body: Dict[str, Any],
                                                             code: str) -> None:
    status, answer = call(srv, "publish", body)
    assert (status, answer["error"]["code"]) == (400, code)
    assert srv.stats()["publishes"] == 0


def test_traceparent_rides_on_the_delivery(srv: Server, make_client) -> None:
    got: List[Any] = []
    subscribe(make_client, srv, "t", got)
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert call(srv, "publish", {"channel": "t", "data": 1, "traceparent": tp})[0] == 200
    wait_until(lambda: got, what="the message")
    assert got[0].traceparent == tp


# ---------------------------------------------------------------- the other methods

def test_send_to_user_broadcast_presence_disconnect(make_server, make_client) -> None:
    srv = make_server(api_keys=[KEY], authenticate=lambda req: req.query.get("u"))
    events: Dict[str, List[Any]] = {"alice": [], "bob": []}
    clients = {}
    for uid in events:
        c = make_client(srv.url + f"?u={uid}")
        c.on("app/note", lambda data, uid=uid: events[uid].append(data))
        clients[uid] = c
    wait_until(lambda: srv.presence("alice") == 1 and srv.presence("bob") == 1, what="both in")
    assert call(srv, "send_to_user", {"user": "alice", "event": "app/note", "data": 1}) == (
        200, {"result": {"delivered": 1}})
    assert call(srv, "broadcast", {"event": "app/note", "data": 2}) == (
        200, {"result": {"delivered": 2}})
    wait_until(lambda: events == {"alice": [1, 2], "bob": [2]}, what="the events")
    assert call(srv, "presence", {"user": "alice"}) == (
        200, {"result": {"user": "alice", "connections": 1}})
    assert call(srv, "presence", {"user": "nobody"})[1]["result"]["connections"] == 0
    assert call(srv, "disconnect_user", {"user": "bob", "code": 4003, "reason": "bye"}) == (
        200, {"result": {"closed": 1}})
    # counted at the close itself: bob's client reconnects (4003 is not final), so a poll of
    # presence("bob") == 0 may never see the gap
    wait_until(lambda: srv.stats().get("closes_by_code", {}).get(4003) == 1, what="bob closed with 4003")
    assert srv.presence("alice") == 1
    info = call(srv, "info")[1]["result"]
    assert info["nodes"] == [srv.server_id] and info["server-id"] == srv.server_id
    assert info["version"] and info["users"] >= 1


@pytest.mark.parametrize("method,body", [
    ("broadcast", {"event": "chsk/ws-ping"}),
    ("broadcast", {"event": "noslash"}),
    ("broadcast", {}),
    ("send_to_user", {"event": "app/x"}),
    ("send_to_user", {"user": "", "event": "app/x"}),
    ("disconnect_user", {"user": "u", "code": 1001}),
    ("disconnect_user", {"user": "u", "code": "1000"}),
    ("disconnect_user", {"user": "u", "reason": "r" * 200}),
    ("presence", {"user": 5}),
    ("history", {"channel": "c", "limit": -1}),
    ("history", {"channel": "c", "limit": True}),
    ("history", {"channel": "c", "reverse": "yes"}),
    ("history", {"channel": "c", "since": {"offset": "1", "epoch": "e"}}),
    ("history", {"channel": "c", "since": 3}),
])
def test_bad_parameters_of_every_method_are_400(srv: Server, method: str, body: Any) -> None:
    status, answer = call(srv, method, body)
    assert status == 400 and answer["error"]["code"] in ("bad-request", "invalid-channel")
    assert answer["error"]["message"]


def test_history_limit_reverse_since(srv: Server) -> None:
    offsets = [call(srv, "publish", {"channel": "h", "data": i})[1]["result"]["offset"]
               for i in range(5)]
    h = call(srv, "history", {"channel": "h"})[1]["result"]
    assert [x["data"] for x in h["publications"]] == [0, 1, 2, 3, 4]
    assert h["offset"] == offsets[-1]
    epoch = h["epoch"]
    assert [x["data"] for x in call(srv, "history", {"channel": "h", "limit": 2, "reverse": True}
                                    )[1]["result"]["publications"]] == [4, 3]
    since = call(srv, "history", {"channel": "h", "since": {"offset": offsets[2], "epoch": epoch}}
                 )[1]["result"]
    assert since["recovered"] is True and [x["data"] for x in since["publications"]] == [3, 4]
    other = call(srv, "history", {"channel": "h", "since": {"offset": 1, "epoch": "gone"}}
                 )[1]["result"]
    assert other["recovered"] is False and other["publications"] == []
    empty = call(srv, "history", {"channel": "never"})[1]["result"]
    assert empty["publications"] == [] and empty["offset"] == 0


def test_channels_lists_subscriber_counts(srv: Server, make_client) -> None:
    subscribe(make_client, srv, "a", [])
    subscribe(make_client, srv, "a", [])
    subscribe(make_client, srv, "b", [])
    assert call(srv, "channels")[1]["result"]["channels"] == {"a": 2, "b": 1}


def test_batch_answers_in_order_and_a_failure_stops_nothing(srv: Server, make_client) -> None:
    got: List[Any] = []
    subscribe(make_client, srv, "bt", got)
    commands = [{"method": "publish", "params": {"channel": "bt", "data": 1}},
                {"method": "publish", "params": {"channel": "bt"}},
                {"method": "nope", "params": {}},
                {"method": "batch", "params": {"commands": []}},
                "not an object",
                {"method": "publish", "params": {"channel": "bt", "data": 2}},
                {"method": "presence", "params": {"user": "x"}}]
    status, answer = call(srv, "batch", {"commands": commands})
    assert status == 200
    replies = answer["result"]["replies"]
    assert [("result" if "result" in r else r["error"]["code"]) for r in replies] == [
        "result", "bad-request", "unknown-method", "bad-request", "bad-request", "result", "result"]
    assert replies[5]["result"]["offset"] == replies[0]["result"]["offset"] + 1
    wait_until(lambda: [m.data for m in got] == [1, 2], what="both published")
    for bad in ({}, {"commands": "x"}, {"commands": [{}] * 10_001}):
        status, answer = call(srv, "batch", bad)
        assert status == 400 and answer["error"]["code"] == "bad-request"


# ---------------------------------------------------------------- keys

@pytest.mark.parametrize("auth", [None, "", "apikey", "apikey ", f"Bearer {KEY}", f"apikey {KEY[:-1]}",
                                  f"apikey {KEY}x", f"apikey x{KEY}", "apikey " + "k" * 300,
                                  f"apikey {KEY.upper()}", f"Basic {KEY}"])
def test_a_wrong_or_missing_key_is_401_counted_and_closes(srv: Server, auth: Optional[str]) -> None:
    extra = f"Authorization: {auth}\r\n" if auth is not None else ""
    answer = raw(srv, post("/api/publish", b'{"channel": "c", "data": 1}', key=None, extra=extra))[0]
    assert answer.status == 401
    assert answer.headers.get("connection") == "close"
    assert answer.headers.get("www-authenticate") == "apikey"
    assert json.loads(answer.body)["error"]["code"] == "unauthorized"
    assert srv.counters.get(Counter.API_UNAUTHORIZED) == 1
    assert srv.stats()["publishes"] == 0


def test_every_key_works_for_rotation_and_keys_are_never_logged(
        srv: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    assert call(srv, "info", key=KEY)[0] == 200
    assert call(srv, "info", key=KEY2)[0] == 200
    wrong = "wrong-key-" + "z" * 20
    assert call(srv, "info", key=wrong)[0] == 401
    assert any("wrong API key" in r.getMessage() for r in caplog.records)
    for secret in (KEY, KEY2, wrong):
        assert not any(secret in r.getMessage() for r in caplog.records)


def test_api_off_without_keys(make_server) -> None:
    srv = make_server()
    answer = raw(srv, post("/api/publish", b'{"channel": "c", "data": 1}'))[0]
    assert answer.status == 404 and "api_keys" in json.loads(answer.body)["error"]["message"]
    assert srv.stats()["publishes"] == 0


@pytest.mark.parametrize("keys", [[], ["short"], "a-single-string-key-xxxxx", ["has space in it 0123456"],
                                  ["comma,in-it-0123456789"], [None], ["x" * 257]])
def test_bad_api_keys_are_refused_naming_what_to_fix(keys: Any) -> None:
    with pytest.raises(ValueError, match="api_keys|API key"):
        Server(api_keys=keys)


def test_the_api_refuses_plaintext_beyond_loopback_unless_told() -> None:
    with pytest.raises(ValueError, match="api_insecure_ok"):
        Server("0.0.0.0", api_keys=[KEY])
    with pytest.raises(ValueError, match="api_insecure_ok"):
        Server("192.0.2.1", api_keys=[KEY])
    Server("0.0.0.0", api_keys=[KEY], api_insecure_ok=True)  # the operator said so
    Server("0.0.0.0")  # no API: nothing to refuse
    Server("::1", api_keys=[KEY])


@pytest.mark.parametrize("name,value", [("api_max_body_bytes", 0), ("api_max_body_bytes", 1.5),
                                        ("api_rate_limit", 0), ("api_rate_limit", -1),
                                        ("api_rate_limit", float("inf"))])
def test_api_settings_are_bounded(name: str, value: Any) -> None:
    with pytest.raises(InvalidSetting, match=name):
        Server(**{name: value})


# ---------------------------------------------------------------- HTTP errors

@pytest.mark.parametrize("body", [b"{", b"[1, 2]", b'"x"', b"\xff\xfe", b"[" * 200 + b"]" * 200,
                                  b'{"channel": "c", "data": ' + b"[" * 150 + b"]" * 150 + b"}",
                                  b"nul", b"{}{}"])
def test_bad_json_is_400_and_the_connection_stays_usable(srv: Server, body: bytes) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=WAIT_S)
    status, answer = call(srv, "publish", body, conn=conn)
    assert status == 400 and answer["error"]["code"] == "bad-request"
    assert call(srv, "publish", {"channel": "c", "data": 1}, conn=conn)[0] == 200
    conn.close()


def test_unknown_method_is_404_naming_the_methods(srv: Server) -> None:
    status, answer = call(srv, "publsh", {})
    assert status == 404 and answer["error"]["code"] == "unknown-method"
    assert "publish" in answer["error"]["message"]
    assert call(srv, "", {})[0] == 404
    assert call(srv, "publish/x", {})[0] == 404


def test_oversize_body_is_413_counted_and_read_no_further(make_server) -> None:
    srv = make_server(api_keys=[KEY], api_max_body_bytes=100)
    body = json.dumps({"channel": "c", "data": "x" * 100}).encode()
    answer = raw(srv, post("/api/publish", body))[0]
    assert answer.status == 413 and json.loads(answer.body)["error"]["code"] == "too-large"
    assert "api_max_body_bytes" in json.loads(answer.body)["error"]["message"]
    # refused on its Content-Length alone, before any byte of the body
    with RawPeer("127.0.0.1", srv.port) as peer:
        peer.send(b"POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: apikey "
                  + KEY.encode() + b"\r\nContent-Length: 999999999\r\n\r\n")
        assert peer.read_http().status == 413
    assert srv.counters.get(Counter.API_TOO_LARGE) == 2
    exact = json.dumps({"channel": "c", "data": "x"}).encode()
    exact = exact[:-1] + b" " * (100 - len(exact)) + b"}"
    assert len(exact) == 100 and raw(srv, post("/api/publish", exact))[0].status == 200
    assert srv.stats()["publishes"] == 1


@pytest.mark.parametrize("request_bytes,status", [
    (b"POST /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: apikey " + KEY.encode()
     + b"\r\n\r\n", 411),
    (b"POST /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
     501),
    (b"POST /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
     400),
    (b"POST /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST /api/info HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n", 400),
    (b"POST /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nbad header line\r\n\r\n", 400),
    (b"POST /api/info HTTP/1.1\r\n" + b"X-A: b\r\n" * 70 + b"\r\n", 431),
    (b"POST /api/info HTTP/1.1\r\nX-A: " + b"b" * 20_000 + b"\r\n\r\n", 431),
    (b"POST /api/info HTTP/1.1\r\nHost: evil.example\r\nAuthorization: apikey " + KEY.encode()
     + b"\r\nContent-Length: 2\r\n\r\n{}", 403),
])
def test_malformed_http_gets_its_status_and_a_close(srv: Server, request_bytes: bytes,
                                                    status: int) -> None:
    answer = raw(srv, request_bytes)[0]
    assert answer.status == status and answer.headers.get("connection") == "close"
    assert "error" in json.loads(answer.body)


def test_rate_limit_is_429_per_key_and_counted(make_server) -> None:
    srv = make_server(api_keys=[KEY, KEY2], api_rate_limit=5)
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=WAIT_S)
    statuses = [call(srv, "info", conn=conn)[0] for _ in range(30)]
    assert statuses.count(200) >= 5 and statuses.count(429) >= 10
    conn.request("POST", "/api/info", b"{}", {"Authorization": f"apikey {KEY}"})
    response = conn.getresponse()
    response.read()
    if response.status == 429:
        assert response.getheader("Retry-After") == "1"
    assert call(srv, "info", key=KEY2)[0] == 200  # the other key has its own rate
    assert srv.counters.get(Counter.API_RATE_LIMITED) >= 10
    conn.close()


# ---------------------------------------------------------------- the connection

def test_keep_alive_serves_many_requests_on_one_connection(srv: Server) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=WAIT_S)
    call(srv, "info", conn=conn)
    sock = conn.sock
    offsets = [call(srv, "publish", {"channel": "k", "data": i}, conn=conn)[1]["result"]["offset"]
               for i in range(300)]
    assert conn.sock is sock  # never reconnected
    assert offsets == list(range(1, 301))
    conn.close()


def test_pipelined_requests_are_answered_in_order(srv: Server) -> None:
    requests = b"".join(post("/api/publish", json.dumps({"channel": "p", "data": i}).encode())
                        for i in range(10))
    answers = raw(srv, requests + post("/api/nope", b"{}"), answers=11)
    assert [a.status for a in answers] == [200] * 10 + [404]
    assert [json.loads(a.body)["result"]["offset"] for a in answers[:10]] == list(range(1, 11))


def test_http_1_0_and_connection_close_are_honoured(srv: Server) -> None:
    for request in (post("/api/info", b"{}").replace(b"HTTP/1.1", b"HTTP/1.0"),
                    post("/api/info", b"{}", extra="Connection: close\r\n")):
        with RawPeer("127.0.0.1", srv.port) as peer:
            peer.send(request)
            answer = peer.read_http()
            assert answer.status == 200 and answer.headers.get("connection") == "close"
            assert peer.read_http(WAIT_S).status is None  # the server closed


def test_expect_100_continue_is_answered(srv: Server) -> None:
    body = json.dumps({"channel": "e", "data": 1}).encode()
    with RawPeer("127.0.0.1", srv.port) as peer:
        peer.send(post("/api/publish", b"", extra="Expect: 100-continue\r\n").replace(
            b"Content-Length: 0", b"Content-Length: %d" % len(body)))
        assert peer.read_http().status == 100
        peer.send(body)
        assert peer.read_http().status == 200


def test_other_methods_on_api_paths(srv: Server) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=WAIT_S)
    assert call(srv, "info", conn=conn)[0] == 200
    conn.request("GET", "/api/info")  # on an API connection: 405 naming POST
    response = conn.getresponse()
    assert response.status == 405 and response.getheader("Allow") == "POST"
    conn.close()
    other = raw(srv, post("/health", b"{}"))[0]  # not the API: websockets' parser, as before
    assert other.status in (400, 405) and not other.body.startswith(b'{"error"')


def test_a_partial_first_request_is_dropped_within_the_handshake_timeout(make_server) -> None:
    srv = make_server(api_keys=[KEY], handshake_timeout=1.0, request_line_timeout=0.5)
    started = time.monotonic()
    with RawPeer("127.0.0.1", srv.port) as peer, RawPeer("127.0.0.1", srv.port) as line_only:
        peer.send(post("/api/publish", b'{"channel": "c", "data": 1}')[:-5])  # body cut short
        line_only.send(b"POST /api/publish HTT")  # not even a request line
        assert peer.read_http(WAIT_S).status is None
        assert line_only.read_http(WAIT_S).status is None
    assert time.monotonic() - started < 1.0 + 5.0
    assert srv.stats()["publishes"] == 0
    wait_until(lambda: srv.stats()["pending_handshakes"] == 0, what="nothing pending")


def test_a_slow_next_request_on_keep_alive_is_408(make_server) -> None:
    srv = make_server(api_keys=[KEY], handshake_timeout=1.0)
    with RawPeer("127.0.0.1", srv.port) as peer, RawPeer("127.0.0.1", srv.port) as idle:
        peer.send(post("/api/info", b"{}"))
        idle.send(post("/api/info", b"{}"))
        assert peer.read_http().status == 200 and idle.read_http().status == 200
        peer.send(post("/api/info", b"{}")[:20])  # then nothing
        answer = peer.read_http(WAIT_S)
        assert answer.status == 408 and "handshake_timeout" in json.loads(answer.body)["error"]["message"]
        assert idle.read_http(WAIT_S).status is None  # an idle connection is closed quietly
    assert srv.counters.get(Counter.API_BAD_REQUESTS) == 1


def test_too_much_pipelined_ahead_is_refused(make_server) -> None:
    srv = make_server(api_keys=[KEY], api_max_body_bytes=64)
    with RawPeer("127.0.0.1", srv.port) as peer:
        try:
            peer.send(post("/api/info", b"{}") * 5000)
        except OSError:
            pass  # the server may close before all of it is written
        statuses = []
        while True:
            try:
                answer = peer.read_http(WAIT_S)
            except OSError:
                break
            if answer.status is None:
                break
            statuses.append(answer.status)
    assert statuses and statuses[-1] == 413 and set(statuses[:-1]) <= {200}


def test_api_and_websockets_share_the_port(srv: Server, make_client) -> None:
    got: List[Any] = []
    subscribe(make_client, srv, "mix", got)
    for i in range(20):
        assert call(srv, "publish", {"channel": "mix", "data": i})[0] == 200
    wait_until(lambda: len(got) == 20, what="every message")
    with socket.create_connection(("127.0.0.1", srv.port), timeout=WAIT_S) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 200")
    assert srv.counters.get(Counter.API_REQUESTS) == 20


@pytest.mark.parametrize("hosts", [[], ["127.0.0.1", "127.0.0.1"], ["evil.example"], ["bad host"]])
def test_the_host_check_holds_on_every_keep_alive_request(srv: Server, hosts: List[str]) -> None:
    good = post("/api/info", b"{}")
    bad = post("/api/info", b"{}").replace(b"Host: 127.0.0.1\r\n", b"".join(
        b"Host: " + h.encode() + b"\r\n" for h in hosts))
    for first in ([], [good]):  # as the first request, and after one that passed
        answers = raw(srv, b"".join(first) + bad, answers=len(first) + 1)
        assert [a.status for a in answers] == [200] * len(first) + [
            403 if hosts and hosts[0] == "evil.example" else 400]


def test_channel_presence(make_server, make_client) -> None:
    from sente_lite import Namespace

    srv = make_server(api_keys=[KEY], authenticate=lambda req: req.query.get("u"),
                      namespaces={"room": Namespace(presence=True), "open": Namespace()})
    c = make_client(srv.url + "?u=alice", client_id="c-alice")
    c.subscribe("room:1")
    status, body = call(srv, "channel_presence", {"channel": "room:1"})
    assert status == 200 and body["result"]["channel"] == "room:1"
    assert [(m["client-id"], m["uid"], m["conn-id"]) for m in body["result"]["members"]] == [
        ("c-alice", "alice", c.conn_id)]
    assert call(srv, "channel_presence", {"channel": "room:1", "stats": True}) == (
        200, {"result": {"channel": "room:1", "members": 1, "users": 1}})
    assert call(srv, "channel_presence", {"channel": "open:1"})[1]["result"]["members"] == []
    assert call(srv, "channel_presence", {"channel": "room:1", "stats": 1})[0] == 400
    assert call(srv, "channel_presence", {})[0] == 400

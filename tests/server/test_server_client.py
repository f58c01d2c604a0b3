"""Server and client in one process: handshake (PROTOCOL 3), requests, replies and errors
(4), server -> client requests, targeted sends and broadcast; on both server faces."""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, List, Union

import pytest
import websocket  # websocket-client

from sente_lite import Client, Connection, Disconnected, RemoteError, RequestTimeout
from support import WAIT_S, AsgiFace, RawWS, Recorder, ThreadedFace, wait_until

#: Every test here runs on both faces (the ``make_face`` fixture): the threaded Server and
#: the ASGI App under uvicorn.
Face = Union[ThreadedFace, AsgiFace]

# -- handshake (section 3) -------------------------------------------------------


def test_handshake_shape_and_first_flag(make_face: Callable[..., Face],
                                        raw_ws: Callable[..., RawWS]) -> None:
    srv = make_face(heartbeat_ms=4000, max_message_bytes=12345)
    a = raw_ws(srv.url + "?client-id=abc")
    event, payload = a.handshake  # type: ignore[misc]
    assert event == "chsk/handshake"
    uid, csrf, info, first = payload
    assert uid == "abc"
    assert csrf is None
    assert first is True
    assert info["client-id"] == "abc"
    assert info["server-id"] == srv.server_id
    assert info["protocol"] == 1
    assert info["heartbeat-ms"] == 4000
    assert info["max-message-bytes"] == 12345
    assert isinstance(info["conn-id"], str) and info["conn-id"]

    again = raw_ws(srv.url + "?client-id=abc")
    uid2, _, info2, first2 = again.handshake[1]  # type: ignore[index]
    assert (uid2, first2) == ("abc", False)
    assert info2["conn-id"] != info["conn-id"]

    other = raw_ws(srv.url + "?client-id=xyz")
    assert other.handshake[1][3] is True  # type: ignore[index]


def test_server_makes_a_client_id_when_none_is_given(make_face: Callable[..., Face],
                                                     raw_ws: Callable[..., RawWS]) -> None:
    srv = make_face()
    a, b = raw_ws(srv.url), raw_ws(srv.url)
    ids = [r.handshake[1][2]["client-id"] for r in (a, b)]  # type: ignore[index]
    assert all(ids) and ids[0] != ids[1]
    assert [r.handshake[1][0] for r in (a, b)] == ids  # type: ignore[index]  # uid == client-id
    assert all(r.handshake[1][3] is True for r in (a, b))  # type: ignore[index]


def test_bad_client_id_is_refused_with_400(make_face: Callable[..., Face]) -> None:
    srv = make_face()
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        websocket.create_connection(srv.url + "?client-id=" + "x" * 200, timeout=WAIT_S)
    assert info.value.status_code == 400


def test_client_first_then_not_first_on_reconnect(make_face: Callable[..., Face],
                                                  make_client: Callable[..., Client]) -> None:
    srv = make_face()
    c = make_client(srv.url, backoff_base=0.01, backoff_max=0.05)
    assert c.first is True
    assert c.uid == c.client_id
    assert c.server_id == srv.server_id
    conns = srv.connections()
    assert [(x["conn-id"], x["uid"], x["client-id"]) for x in conns] == [
        (c.conn_id, c.client_id, c.client_id)]
    old_conn = c.conn_id
    assert srv.disconnect(old_conn)
    wait_until(lambda: c.stats().get("handshakes") == 2 and c.connected, what="reconnect")
    assert c.first is False
    assert c.conn_id != old_conn
    assert c.uid == c.client_id


def test_a_peer_holding_its_handshake_is_already_reachable(make_face: Callable[..., Face],
                                                           raw_ws: Callable[..., RawWS]) -> None:
    srv = make_face()
    for i in range(40):
        r = raw_ws(srv.url + f"?client-id=k{i}")
        conn_id = r.handshake[1][2]["conn-id"]  # type: ignore[index]
        assert srv.send(conn_id, "app/hello", i), f"connection {i} unknown after its handshake"
        assert srv.send_to_user(f"k{i}", "app/hello", -i) == 1
        assert [r.recv(), r.recv()] == [["app/hello", i], ["app/hello", -i]]
        r.close()


def test_conn_ids_are_unique(make_face: Callable[..., Face], make_client: Callable[..., Client],
                             raw_ws: Callable[..., RawWS]) -> None:
    srv = make_face()
    seen = [raw_ws(srv.url + "?client-id=same").handshake[1][2]["conn-id"]  # type: ignore[index]
            for _ in range(10)]
    c = make_client(srv.url, backoff_base=0.01, backoff_max=0.05)
    for n in range(2, 5):
        seen.append(c.conn_id)  # type: ignore[arg-type]
        srv.disconnect(c.conn_id)  # type: ignore[arg-type]
        wait_until(lambda: c.stats().get("handshakes") == n and c.connected, what="reconnect")
    seen.append(c.conn_id)  # type: ignore[arg-type]
    assert len(seen) == len(set(seen)) == 14


# -- requests, replies, errors (section 4) --------------------------------------------


def test_request_reply(make_face: Callable[..., Face], make_client: Callable[..., Client]) -> None:
    srv = make_face()
    seen: List[Connection] = []

    @srv.on("app/echo")
    def echo(conn: Connection, data: Any) -> Any:
        seen.append(conn)
        return {"got": data, "uid": conn.uid}

    c = make_client(srv.url)
    assert c.request("app/echo", {"x": [1, "ü"]}) == {"got": {"x": [1, "ü"]}, "uid": c.client_id}
    assert c.request("app/echo") == {"got": None, "uid": c.client_id}
    assert seen[0].conn_id == c.conn_id and seen[0].client_id == c.client_id
    replies = [c.request("app/echo", i) for i in range(50)]
    assert [r["got"] for r in replies] == list(range(50))


def test_plain_events_reach_the_handler_in_order(make_face: Callable[..., Face],
                                                 make_client: Callable[..., Client]) -> None:
    srv = make_face()
    got = Recorder()
    srv.on("app/note", lambda conn, data: got(data))
    c = make_client(srv.url)
    for i in range(100):
        c.send("app/note", i)
    assert got.wait_count(100) == list(range(100))


def test_handler_error_is_reported_logged_and_server_keeps_serving(
        make_face: Callable[..., Face], make_client: Callable[..., Client],
        caplog: pytest.LogCaptureFixture) -> None:
    srv = make_face()

    @srv.on("app/boom")
    def boom(conn: Connection, data: Any) -> Any:
        raise ValueError("kaboom-123")

    srv.on("app/echo", lambda conn, data: data)
    srv.on("app/unencodable", lambda conn, data: {1, 2})
    c = make_client(srv.url)
    with caplog.at_level(logging.ERROR, logger="sente_lite.server"):
        with pytest.raises(RemoteError) as info:
            c.request("app/boom", 1)
    assert info.value.code == "handler-error"
    assert "ValueError" in info.value.message
    assert "kaboom-123" not in info.value.message  # internals stay in the server log
    records = [r for r in caplog.records if "app/boom" in r.getMessage()]
    assert records and records[0].exc_info is not None
    assert "kaboom-123" in caplog.text and "Traceback" in caplog.text
    # same connection, still served
    assert c.request("app/echo", "still here") == "still here"
    c.send("app/boom", 2)  # plain event: logged and counted, nothing sent back
    wait_until(lambda: srv.stats().get("handler_errors") == 2, what="handler error count")
    with pytest.raises(RemoteError) as info2:
        c.request("app/unencodable")
    assert info2.value.code == "handler-error"
    assert c.request("app/echo", 7) == 7
    assert srv.stats()["connections"] == 1


@pytest.mark.parametrize("event", ["chsk/bogus", "sente-lite/bogus", "chsk/handshake"])
def test_unknown_reserved_event(make_face: Callable[..., Face], make_client: Callable[..., Client],
                                event: str) -> None:
    srv = make_face()
    c = make_client(srv.url)
    with pytest.raises(RemoteError) as info:
        c.request(event, {})
    assert info.value.code == "unknown-event"


def test_unknown_reserved_plain_event_gets_standalone_error(make_face: Callable[..., Face],
                                                             raw_ws: Callable[..., RawWS]) -> None:
    srv = make_face()
    r = raw_ws(srv.url)
    r.send_frame("sente-lite/bogus")
    event, body = r.recv()
    assert event == "chsk/error"
    assert body["code"] == "unknown-event"
    assert body["event"] == "sente-lite/bogus"


def test_reserved_names_cannot_get_handlers(make_face: Callable[..., Face],
                                            make_client: Callable[..., Client]) -> None:
    srv = make_face()
    with pytest.raises(ValueError):
        srv.on("chsk/mine", lambda conn, data: None)
    with pytest.raises(ValueError):
        srv.on("not-an-event", lambda conn, data: None)
    c = make_client(srv.url)
    with pytest.raises(ValueError):
        c.on("sente-lite/channel-msg", lambda data: None)
    with pytest.raises(ValueError):
        c.request("bad event id")


@pytest.mark.parametrize("event", ["sente-lite/subscribe", "sente-lite/unsubscribe", "sente-lite/publish"])
@pytest.mark.parametrize("data", [{"channel-id": ""}, {"channel-id": "x" * 257}, {"channel-id": "a\nb"},
                                  {"channel-id": 5}, {}, ["channel-id", "a"], "a", None])
def test_invalid_channel(make_face: Callable[..., Face], make_client: Callable[..., Client],
                         event: str, data: Any) -> None:
    srv = make_face()
    c = make_client(srv.url)
    with pytest.raises(RemoteError) as info:
        c.request(event, data)
    assert info.value.code == "invalid-channel"
    assert srv.channels.stats()["channels"] == 0


def test_invalid_channel_plain_event_gets_standalone_error(make_face: Callable[..., Face],
                                                            raw_ws: Callable[..., RawWS]) -> None:
    srv = make_face()
    r = raw_ws(srv.url)
    r.send_frame("sente-lite/subscribe", {"channel-id": ""})
    event, body = r.recv()
    assert (event, body["code"], body["event"]) == ("chsk/error", "invalid-channel", "sente-lite/subscribe")
    assert "empty" in body["message"]


def test_client_refuses_invalid_channel_ids_locally(make_face: Callable[..., Face],
                                                    make_client: Callable[..., Client]) -> None:
    srv = make_face()
    c = make_client(srv.url)
    for bad in ("", "a\x00", "x" * 257):
        with pytest.raises(ValueError):
            c.subscribe(bad)
        with pytest.raises(ValueError):
            c.publish(bad, 1)


def test_server_max_channel_id_chars_setting(make_face: Callable[..., Face],
                                             make_client: Callable[..., Client]) -> None:
    srv = make_face(max_channel_id_chars=8)
    c = make_client(srv.url)
    assert c.subscribe("12345678")["channel-id"] == "12345678"  # type: ignore[index]
    with pytest.raises(RemoteError) as info:
        c.subscribe("123456789")
    assert info.value.code == "invalid-channel"
    assert c.subscriptions() == ["12345678"]  # a refused subscribe is not kept for reconnects
    with pytest.raises(ValueError):
        srv.publish("123456789", 1)


# -- server -> client requests ---------------------------------------------------------


def test_server_requests_client(make_face: Callable[..., Face], make_client: Callable[..., Client],
                                caplog: pytest.LogCaptureFixture) -> None:
    srv = make_face()
    c = make_client(srv.url)
    c.on("app/double", lambda x: x * 2)

    def fail(data: Any) -> Any:
        raise KeyError("client-side")

    c.on("app/fail", fail)
    c.on("app/unencodable", lambda data: object())
    assert srv.request(c.conn_id, "app/double", 21) == 42  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="sente_lite.client"):
        with pytest.raises(RemoteError) as info:
            srv.request(c.conn_id, "app/fail", None)  # type: ignore[arg-type]
    assert info.value.code == "handler-error"
    assert "KeyError" in info.value.message
    assert "client-side" in caplog.text
    with pytest.raises(RemoteError) as info:
        srv.request(c.conn_id, "app/unknown")  # type: ignore[arg-type]
    assert info.value.code == "no-handler"
    with pytest.raises(RemoteError) as info:
        srv.request(c.conn_id, "app/unencodable")  # type: ignore[arg-type]
    assert info.value.code == "handler-error"
    assert c.stats()["handler_errors"] == 2  # the raising handler and the unencodable reply
    assert srv.request(c.conn_id, "app/double", "ab") == "abab"  # type: ignore[arg-type]


def test_server_request_timeout_and_unknown_conn(make_face: Callable[..., Face],
                                                 make_client: Callable[..., Client]) -> None:
    srv = make_face()
    c = make_client(srv.url)
    release = threading.Event()
    c.on("app/stall", lambda data: release.wait(WAIT_S))
    try:
        with pytest.raises(RequestTimeout):
            srv.request(c.conn_id, "app/stall", timeout=0.2)  # type: ignore[arg-type]
    finally:
        release.set()
    with pytest.raises(Disconnected):
        srv.request("no-such-conn", "app/x")


def test_request_from_own_handler_gets_its_reply(
        make_face: Callable[..., Face], make_client: Callable[..., Client]) -> None:
    """A handler may ask its own client: replies are read by the network thread, never
    queued behind the handler waiting for them."""
    srv = make_face()
    srv.on("app/ask-back", lambda conn, data: srv.ask(conn, "app/x", data) + 1)
    c = make_client(srv.url)
    c.on("app/x", lambda data: data * 10)
    assert c.request("app/ask-back", 4, timeout=WAIT_S) == 41


def test_server_requests_from_another_thread_while_handler_runs(
        make_face: Callable[..., Face], make_client: Callable[..., Client]) -> None:
    """Server handler of client A asks client B: allowed (different connection)."""
    srv = make_face()
    b = make_client(srv.url)
    b.on("app/value", lambda data: "from-b")
    srv.on("app/relay", lambda conn, data: srv.request(data, "app/value", timeout=WAIT_S))
    a = make_client(srv.url)
    assert a.request("app/relay", b.conn_id) == "from-b"


# -- targeted sends and broadcast ---------------------------------------------------


def test_send_to_user_and_broadcast(make_face: Callable[..., Face],
                                    make_client: Callable[..., Client]) -> None:
    srv = make_face()
    clients = {name: make_client(srv.url, client_id=cid)
               for name, cid in (("alice1", "alice"), ("alice2", "alice"), ("bob", "bob"))}
    got = {name: Recorder() for name in clients}
    for name, c in clients.items():
        c.on("app/note", lambda data, r=got[name]: r(("note", data)))
        c.on("app/all", lambda data, r=got[name]: r(("all", data)))
    assert srv.send_to_user("alice", "app/note", {"n": 1}) == 2
    assert srv.send_to_user("nobody", "app/note", 0) == 0
    assert srv.broadcast("app/all", "hi") == 3
    for name in ("alice1", "alice2"):
        assert got[name].wait_count(2) == [("note", {"n": 1}), ("all", "hi")]
    # bob's broadcast arrived; the note, queued before it if at all, did not
    assert got["bob"].wait_count(1) == [("all", "hi")]
    assert srv.send(clients["bob"].conn_id, "app/note", 2) is True  # type: ignore[arg-type]
    assert got["bob"].wait_count(2)[1] == ("note", 2)
    assert srv.send("no-such-conn", "app/note", 3) is False
    with pytest.raises(ValueError):
        srv.broadcast("bad id", 1)


def test_client_counts_unhandled_server_events(make_face: Callable[..., Face],
                                               make_client: Callable[..., Client]) -> None:
    srv = make_face()
    c = make_client(srv.url)
    marker = Recorder()
    c.on("app/marker", marker)
    srv.send(c.conn_id, "app/unhandled", 1)  # type: ignore[arg-type]
    srv.send(c.conn_id, "app/marker", 2)  # type: ignore[arg-type]
    marker.wait_count(1)
    assert c.stats()["unhandled_events"] == 1


def test_connect_and_disconnect_hooks(make_face: Callable[..., Face],
                                      make_client: Callable[..., Client],
                                      caplog: pytest.LogCaptureFixture) -> None:
    srv = make_face()
    opened, closed = Recorder(), Recorder()
    srv.on_connect(lambda conn: opened(conn.conn_id))
    srv.on_disconnect(lambda conn, code, reason: closed((conn.conn_id, code)))

    @srv.on_connect
    def broken(conn: Connection) -> None:
        raise RuntimeError("hook bug")

    c = make_client(srv.url)
    assert opened.wait_count(1) == [c.conn_id]
    conn_id = c.conn_id
    c.close()
    assert closed.wait_count(1) == [(conn_id, 1000)]
    wait_until(lambda: srv.stats()["connections"] == 0, what="connection gone")
    assert srv.stats()["hook_errors"] == 1
    assert srv.stats()["closes_by_code"] == {1000: 1}
    assert len(closed) == 1


def test_a_reply_that_is_not_json_is_a_handler_error_on_both_sides(
        make_face: Callable[..., Face], make_client: Callable[..., Client]) -> None:
    srv = make_face()
    srv.on("app/odd", lambda conn, data: object())
    c = make_client(srv.url)
    c.on("app/odd", lambda data: {1, 2})
    with pytest.raises(RemoteError) as info:
        c.request("app/odd", timeout=WAIT_S)
    assert info.value.code == "handler-error" and "not JSON-encodable" in info.value.message
    with pytest.raises(RemoteError) as info:
        srv.request(c.conn_id, "app/odd", timeout=WAIT_S)  # type: ignore[arg-type]
    assert info.value.code == "handler-error" and "not JSON-encodable" in info.value.message
    assert srv.stats()["handler_errors"] == 1 and c.stats()["handler_errors"] == 1
    assert c.request("sente-lite/subscribe", {"channel-id": "still-fine"}, timeout=WAIT_S)


def test_namespaces_end_to_end(make_server: Callable[..., Server], make_client: Callable[..., Client]) -> None:
    """A threaded server with namespaces: the handshake names the feature; a client is
    refused a namespace the server does not serve and what a namespace's policy forbids,
    with the codes of docs/protocol.md, and served the rest."""
    from sente_lite import Namespace

    srv = make_server(authenticate=lambda req: req.query.get("u"), namespaces={
        "room": Namespace(publish="subscribers"), "feed": {"publish": "server"}})
    c = make_client(srv.url + "?u=alice")
    assert "namespaces" in c.handshake["features"]
    with pytest.raises(RemoteError) as unknown:
        c.subscribe("lobby")
    assert unknown.value.code == "unknown-namespace"
    assert "without a namespace" in unknown.value.message and "'room'" in unknown.value.message
    with pytest.raises(RemoteError) as outsider:
        c.publish("room:1", "hi", ack=True)
    assert outsider.value.code == "forbidden"
    got: List[Any] = []
    c.subscribe("room:1", lambda m: got.append(m.data))
    c.subscribe("feed:prices", lambda m: got.append(m.data))
    assert c.publish("room:1", "hi", ack=True)["offset"] == 1
    with pytest.raises(RemoteError) as feed:
        c.publish("feed:prices", 1, ack=True)
    assert feed.value.code == "forbidden"
    srv.publish("feed:prices", 42)
    wait_until(lambda: got == ["hi", 42], what="the member's and the server's messages")
    assert srv.stats()["unknown_namespace"] == 1 and srv.stats()["forbidden"] == 2


def test_a_namespace_history_bounds_what_a_client_recovers(make_server: Callable[..., Server],
                                                          make_client: Callable[..., Client]) -> None:
    srv = make_server(namespaces={"chat": {"history_size": 2}, "": {}})
    epoch = [srv.publish("chat:a", i) for i in range(5)][0].epoch
    [srv.publish("news", i) for i in range(5)]
    assert [p["offset"] for p in srv.history("chat:a")["publications"]] == [4, 5]
    assert len(srv.history("news")["publications"]) == 5
    c = make_client(srv.url)
    recoveries: List[Any] = []
    c.on_recovery(recoveries.append)
    got: List[Any] = []
    c.subscribe("chat:a", lambda m: got.append(m.offset), since={"offset": 3, "epoch": epoch})
    wait_until(lambda: got == [4, 5], what="the two kept messages replayed")
    late = make_client(srv.url)
    late_recoveries: List[Any] = []
    late.on_recovery(late_recoveries.append)
    late.subscribe("chat:a", since={"offset": 1, "epoch": epoch})
    wait_until(lambda: late_recoveries, what="the late subscriber's answer")
    assert (late_recoveries[0].recovered, late_recoveries[0].reason) == (False, "history-expired")

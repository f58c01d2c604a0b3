"""Bytes travel as bytes (docs/protocol.md section 10): a ``bytes`` value anywhere in data
reaches every receiver as ``bytes``, whatever packer each connection uses: MessagePack
``bin``, JSON's tagged form ``{"$bytes": "<base64>"}``."""

from __future__ import annotations

import base64
import http.client
import json
import os
from typing import Any, Callable, Dict, Tuple, Union

import pytest

msgpack = pytest.importorskip("msgpack", reason="the [msgpack] extra (msgpack) is not installed")

from sente_lite import Client, EncodeError, MessageTooLarge, Server, Since  # noqa: E402
from sente_lite.wire import protocol as p  # noqa: E402
from sente_lite import session as ss  # noqa: E402
from sente_lite.testing.pair import SessionPair  # noqa: E402
from rawpeers import PackedPeer  # noqa: E402
from support import WAIT_S, AsgiFace, FaceMaker, RawWS, Recorder, ThreadedFace  # noqa: E402

#: The tests taking ``make_face`` run on both faces: the threaded Server and the ASGI App
#: under uvicorn.
Face = Union[ThreadedFace, AsgiFace]

#: Data holding bytes in every position a value can take, and the same data as received.
SENT = {"img": b"\x00\x01\xfe\xff", "empty": b"", "list": [bytearray(b"ba"), {"mv": memoryview(b"mv")}],
        "text": "not bytes", "n": 1}
RECEIVED = {"img": b"\x00\x01\xfe\xff", "empty": b"", "list": [b"ba", {"mv": b"mv"}],
            "text": "not bytes", "n": 1}
PACKERS = ("json", "msgpack")


def clients(make_client: Callable[..., Client], srv: Server) -> Dict[str, Client]:
    """One connected client per packer."""
    return {name: make_client(srv.url, packer=name) for name in PACKERS}


def assert_exact_bytes(value: Any, want: Any) -> None:
    """``value == want``, with every bytes value of type ``bytes`` (not bytearray)."""
    assert value == want
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, (bytes, bytearray, memoryview)):
            assert type(v) is bytes, type(v)
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


# -- in memory: the session rules ---------------------------------------------------------
@pytest.mark.parametrize("packer", PACKERS)
def test_the_session_rules_carry_bytes(packer: str) -> None:
    """A client session and a server session joined in memory: bytes in a request, its
    reply and a channel message come back as bytes."""
    pair = SessionPair(ss.ServerRules(rate_limit=None), packer=packer)
    pair.connect()
    assert pair.client.bytes_on
    pair.handlers["app/echo"] = lambda data: {"echo": data, "mine": b"\xff"}
    ok = pair.request("app/echo", SENT)
    pair.subscribe("ch")
    pair.pump()
    assert_exact_bytes(ok.result, {"echo": RECEIVED, "mine": b"\xff"})
    pair.publish("ch", SENT)
    pair.pump()
    pair.server_publish("ch", b"")
    pair.pump()
    assert [m.data for m in pair.messages()] == [RECEIVED, b""]


# -- through a server: every packer to every packer ------------------------------------------
def test_json_and_msgpack_clients_get_each_others_bytes_on_a_channel(
        make_face: Callable[..., Face], make_client: Callable[..., Client]) -> None:
    srv = make_face()
    cs = clients(make_client, srv)
    got = {name: Recorder() for name in PACKERS}
    for name, c in cs.items():
        assert c.handshake is not None and c.handshake.get("bytes") is True
        assert p.FEATURE_BYTES in c.handshake["features"]
        c.subscribe("bin", got[name])
    for name in PACKERS:
        assert cs[name].publish("bin", dict(SENT, by=name), ack=True)["offset"] >= 1
    cs["msgpack"].publish("bin", b"\x00" * 3, ack=True)  # bytes as the whole of data
    srv.publish("bin", [b"server", {"k": b""}])
    for name in PACKERS:
        msgs = got[name].wait_count(4)
        assert [m.data for m in msgs] == [dict(RECEIVED, by="json"), dict(RECEIVED, by="msgpack"),
                                          b"\x00\x00\x00", [b"server", {"k": b""}]], name
        for m in msgs:
            assert_exact_bytes(m.data, m.data)


def test_requests_replies_and_server_pushes_carry_bytes_both_ways(
        make_face: Callable[..., Face], make_client: Callable[..., Client]) -> None:
    srv = make_face()
    srv.on("app/echo", lambda conn, data: {"echo": data, "packer": conn.packer.name, "raw": b"\x01"})
    cs = clients(make_client, srv)
    pushed = {name: Recorder() for name in PACKERS}
    for name, c in cs.items():
        c.on("app/push", pushed[name])
        c.on("app/ask", lambda data: {"back": data, "tail": [b"\x02"]})
    for name, c in cs.items():
        reply = c.request("app/echo", SENT)
        assert_exact_bytes(reply, {"echo": RECEIVED, "packer": name, "raw": b"\x01"})
        answer = srv.request(c.conn_id, "app/ask", {"q": b"?"})
        assert_exact_bytes(answer, {"back": {"q": b"?"}, "tail": [b"\x02"]})
        assert srv.send_to_user(c.client_id, "app/push", {"to": b"user"}) == 1
    assert srv.broadcast("app/push", [b"all", b""]) == 2
    for name in PACKERS:
        assert [d for d in pushed[name].wait_count(2)] == [{"to": b"user"}, [b"all", b""]], name


# -- sizes: 1 MB, and the limit counted on the encoded frame --------------------------------------
def test_a_1mb_binary_payload_reaches_both_packers(
        make_face: Callable[..., Face], make_client: Callable[..., Client]) -> None:
    """1 MB of random bytes, published from each packer, arrives intact on each; the JSON
    frame is 4/3 larger, so ``max_message_bytes`` is raised for it, as a user would."""
    srv = make_face(max_message_bytes=2 << 20)
    cs = clients(make_client, srv)
    got = {name: Recorder() for name in PACKERS}
    for name, c in cs.items():
        c.subscribe("big", got[name])
    blob = os.urandom(1_000_000)
    for name in PACKERS:
        cs[name].publish("big", {"blob": blob, "from": name}, ack=True, timeout=30)
    for name in PACKERS:
        assert [(m.data["from"], m.data["blob"] == blob) for m in got[name].wait_count(2, 30)] == [
            ("json", True), ("msgpack", True)], name


def test_the_limit_counts_the_encoded_frame_and_refuses_it_clearly(
        make_face: Callable[..., Face], make_client: Callable[..., Client]) -> None:
    """With the default 1 MiB limit, 1 MB of bytes fits a MessagePack frame but not a JSON
    one (base64): the JSON client refuses it before sending, naming both sizes, and keeps
    its connection; nothing is published, nothing waits in its outbox."""
    srv = make_face()
    cs = clients(make_client, srv)
    got = Recorder()
    cs["json"].subscribe("big", got)
    blob = os.urandom(1_000_000)
    for call in (lambda: cs["json"].publish("big", blob), lambda: cs["json"].request("app/x", blob),
                 lambda: cs["json"].send("app/x", blob)):
        with pytest.raises(MessageTooLarge) as err:
            call()
        assert err.value.code == "too-large"
        assert "max-message-bytes (1048576)" in str(err.value) and "base64" in str(err.value)
    assert cs["json"].stats()["unacked_publishes"] == 0 and cs["json"].stats()["outstanding_requests"] == 0
    assert cs["msgpack"].publish("big", blob, ack=True, timeout=30)["offset"] == 1
    assert got.wait_count(1, 30)[0].data == blob  # the server sends its JSON form (1.33 MB) on
    assert cs["json"].publish("big", b"small", ack=True)["offset"] == 2
    with pytest.raises(MessageTooLarge):
        cs["msgpack"].publish("big", os.urandom(1 << 20))


# -- history ------------------------------------------------------------------------------------
@pytest.mark.parametrize("packer", PACKERS)
def test_history_replay_with_since_delivers_bytes(
        packer: str, make_face: Callable[..., Face], make_client: Callable[..., Client]) -> None:
    srv = make_face()
    first = srv.publish("hist", {"n": 0})
    publisher = make_client(srv.url, packer="msgpack" if packer == "json" else "json")
    for i in range(1, 4):
        publisher.publish("hist", {"n": i, "b": bytes([i]) * i}, ack=True)
    got = Recorder()
    late = make_client(srv.url, packer=packer)
    late.subscribe("hist", got, since=Since(first.offset, first.epoch))
    assert [m.data for m in got.wait_count(3)] == [{"n": i, "b": bytes([i]) * i} for i in (1, 2, 3)]


# -- the server API (JSON over HTTP) -----------------------------------------------------------
KEY = "test-key-0123456789abcdef"


def api(srv: Server, method: str, body: Any) -> Tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=WAIT_S)
    try:
        conn.request("POST", f"/api/{method}", json.dumps(body).encode(),
                     {"Authorization": f"apikey {KEY}", "Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_api_publish_takes_the_tagged_form(make_face: FaceMaker,
                                           make_client: Callable[..., Client]) -> None:
    make_face.skip_on("asgi", "the HTTP server API (api_keys) is the threaded server's")
    srv = make_face(api_keys=[KEY])
    cs = clients(make_client, srv)
    got = {name: Recorder() for name in PACKERS}
    for name, c in cs.items():
        c.subscribe("api", got[name])
        c.on("app/push", got[name])
    tagged = {"$bytes": base64.b64encode(b"\x00api\xff").decode()}
    status, answer = api(srv, "publish", {"channel": "api", "data": {"img": tagged, "l": [tagged]}})
    assert status == 200, answer
    assert api(srv, "broadcast", {"event": "app/push", "data": tagged})[0] == 200
    for name in PACKERS:
        msg, pushed = got[name].wait_count(2)
        assert msg.data == {"img": b"\x00api\xff", "l": [b"\x00api\xff"]} and pushed == b"\x00api\xff"
    status, answer = api(srv, "history", {"channel": "api"})
    assert status == 200 and answer["result"]["publications"][0]["data"]["img"] == tagged
    for bad in ({"$bytes": "not base64"}, {"$bytes": 5}):
        status, answer = api(srv, "publish", {"channel": "api", "data": bad})
        assert status == 400 and answer["error"]["code"] == "bad-request" and "$bytes" in answer["error"]["message"]


# -- what is refused -----------------------------------------------------------------------------
@pytest.mark.parametrize("packer", PACKERS)
def test_a_dict_shaped_as_the_tagged_form_is_refused_before_sending(
        packer: str, make_face: Callable[..., Face], make_client: Callable[..., Client]) -> None:
    srv = make_face()
    c = make_client(srv.url, packer=packer)
    for data in ({"$bytes": "AA=="}, [{"x": {"$bytes": b"raw"}}], {"$bytes": None}):
        with pytest.raises(EncodeError, match=r"\$bytes"):
            c.publish("x", data)
        with pytest.raises(EncodeError):
            c.send("app/x", data)
    assert c.publish("x", {"$bytes": "AA==", "second": "key"}, ack=True)["offset"] == 1


def test_the_server_refuses_malformed_tags_and_tag_shaped_msgpack_maps(
        make_face: Callable[..., Face]) -> None:
    """A JSON frame whose tagged form is not base64 is a bad-frame (to its request); so is a
    MessagePack publish holding a map of that shape (its JSON subscribers would read bytes),
    and an ext value. In a MessagePack event such a map means nothing: it stays a map."""
    srv = make_face()
    seen = Recorder()
    srv.on("app/x", lambda conn, data: seen(data))
    raw = RawWS(srv.url)
    try:
        for body in ({"channel-id": "c", "data": {"$bytes": "!!!!"}}, {"channel-id": "c", "data": [{"$bytes": 5}]}):
            answer = raw.request(p.EV_PUBLISH, body, "c1")
            assert answer[0] == p.EV_ERROR and answer[1]["code"] == "bad-frame" and answer[2] == "c1"
            assert "$bytes" in answer[1]["message"]
        answer = raw.request("app/x", {"$bytes": "AAA"}, "c2")
        assert answer[1]["code"] == "bad-frame" and answer[2] == "c2"
    finally:
        raw.close()
    with PackedPeer(srv, "msgpack", "bytes=1") as peer:
        peer.send_payloads([msgpack.packb([p.EV_PUBLISH, {"channel-id": "c", "data": {"$bytes": "AA=="}}, "m1"]),
                            msgpack.packb(["app/x", msgpack.ExtType(1, b"x"), "m2"]),
                            msgpack.packb(["app/x", {"$bytes": "AA=="}])])
        for cb_id, words in (("m1", "$bytes"), ("m2", "ext type")):
            frame = peer.read()
            assert frame.event == p.EV_ERROR and frame.data["code"] == "bad-frame" and frame.cb_id == cb_id
            assert words in frame.data["message"]
    assert seen.wait_count(1) == [{"$bytes": "AA=="}]
    assert srv.publish("c", None).offset == 1  # no refused publish took an offset


def test_older_clients_see_the_tagged_form(make_face: Callable[..., Face],
                                            make_client: Callable[..., Client]) -> None:
    """A peer that did not ask for ``bytes=1``: on JSON it reads the tagged form as an
    object (the text is the same); on MessagePack a channel message's bytes arrive as that
    map too, not as bin (an older sente_lite.js refuses bin)."""
    srv = make_face()
    old_json = RawWS(srv.url)
    assert old_json.handshake is not None and "bytes" not in old_json.handshake[1][2]
    assert p.FEATURE_BYTES in old_json.handshake[1][2]["features"]
    with PackedPeer(srv, "msgpack") as old_mp, PackedPeer(srv, "msgpack", "bytes=1") as new_mp:
        assert "bytes" not in old_mp.handshake.data[2] and new_mp.handshake.data[2]["bytes"] is True
        for peer in (old_mp, new_mp):
            peer.send_payloads([peer.encode(p.EV_SUBSCRIBE, {"channel-id": "c"}, "s1")])
            assert peer.read().event == p.EV_REPLY
        old_json.send_frame(p.EV_SUBSCRIBE, {"channel-id": "c"}, "s1")
        assert old_json.recv()[0] == p.EV_REPLY
        srv.publish("c", {"b": b"\x00\xff"})
        assert old_json.recv()[1]["data"] == {"b": {"$bytes": "AP8="}}
        assert old_mp.read().data["data"] == {"b": {"$bytes": "AP8="}}
        assert new_mp.read().data["data"] == {"b": b"\x00\xff"}
    old_json.close()


# -- through Redis: the channel message's JSON text crosses servers --------------------------------
def test_bytes_cross_servers_through_redis_live_replayed_and_pushed(
        redis_srv: Any, make_face: Callable[..., Face], make_client: Callable[..., Client]) -> None:
    """Two servers on one Redis: bytes published on one reach both packers on the other,
    live, replayed from Redis with ``since``, and in a ``send_to_user`` across servers."""
    from support import wait_until
    a = make_face(broker=redis_srv.url)
    b = make_face(broker=redis_srv.url)
    wait_until(lambda: a.channels.healthy and b.channels.healthy, what="both links up")
    publisher = make_client(a.url, packer="json")
    got = {name: Recorder() for name in PACKERS}
    subs = {name: make_client(b.url, packer=name) for name in PACKERS}
    for name, c in subs.items():
        c.subscribe("r", got[name])
        c.on("app/push", got[name])
    first = publisher.publish("r", {"b": b"\x00redis\xff", "e": b""}, ack=True)
    make_client(a.url, packer="msgpack").publish("r", [b"mp"], ack=True)
    for name in PACKERS:
        assert [m.data for m in got[name].wait_count(2)] == [{"b": b"\x00redis\xff", "e": b""}, [b"mp"]]
    late = Recorder()
    make_client(b.url, packer="msgpack").subscribe("r", late, since={"offset": 0, "epoch": subs["json"].position("r")["epoch"]})
    assert [m.data for m in late.wait_count(2)] == [{"b": b"\x00redis\xff", "e": b""}, [b"mp"]]
    assert first["offset"] == 1
    for name, c in subs.items():
        a.send_to_user(c.client_id, "app/push", {"to": b"\x01"})
        assert got[name].wait_count(3)[2] == {"to": b"\x01"}, name

"""MessagePack negotiated at the upgrade (docs/protocol.md section 10), beside JSON."""

from __future__ import annotations

import socket
from typing import Any, Callable, List, Union

import pytest

msgpack = pytest.importorskip("msgpack", reason="the [msgpack] extra (msgpack) is not installed")

from sente_lite import Client, RemoteError, Server  # noqa: E402
from sente_lite.wire import packers  # noqa: E402
from sente_lite.wire import protocol as p  # noqa: E402
from sente_lite import session as ss  # noqa: E402
from sente_lite.testing.abuse import OP_BINARY, OP_TEXT, RawPeer  # noqa: E402
from sente_lite.testing.pair import SessionPair  # noqa: E402
from support import AsgiFace, Recorder, ThreadedFace, wait_until  # noqa: E402

#: The tests taking ``make_face`` run on both faces: the threaded Server and the ASGI App
#: under uvicorn.
Face = Union[ThreadedFace, AsgiFace]


def test_the_session_rules_hold_over_msgpack() -> None:
    pair = SessionPair(ss.ServerRules(rate_limit=None), packer="msgpack")
    pair.connect()
    assert pair.client.status == ss.CONNECTED
    assert pair.client.handshake_info.info["packer"] == "msgpack"  # type: ignore[union-attr]
    pair.handlers["app/echo"] = lambda data: {"echo": data, "bin": None}
    ok = pair.request("app/echo", [1, "x"])
    pair.pump()
    assert ok.result == {"echo": [1, "x"], "bin": None}
    pair.subscribe("ch")
    pair.pump()
    pair.server_publish("ch", {"n": 1})
    pair.cut()
    pair.server_publish("ch", {"n": 2})
    pair.connect()
    assert [m.data for m in pair.messages()] == [{"n": 1}, {"n": 2}]
    assert pair.recoveries()[0].recovered is True


def test_a_frame_of_the_wrong_kind_is_a_bad_frame() -> None:
    mp = packers.get("msgpack")
    server = ss.ServerSession("x", ss.ServerRules(rate_limit=None), 0.0, packer=mp)
    out = server.receive(p.encode("app/x", 1, "c1"))  # JSON text on a msgpack connection
    reply = msgpack.unpackb(out.frames[0])
    assert reply[0] == p.EV_ERROR and reply[1]["code"] == "bad-frame"
    assert "binary" in reply[1]["message"]
    json_server = ss.ServerSession("y", ss.ServerRules(rate_limit=None), 0.0)
    out = json_server.receive(mp.encode("app/x", 1, "c1"))
    assert p.decode(out.frames[0].decode())[1]["code"] == "bad-frame"
    for junk in (b"\xc1", b"\x93\xa3a/b", mp.encode_value({"not": "an array"}),
                 mp.encode_value(["app/x", b"raw bytes", 7]), b"\x91" * 300 + b"\xc0"):
        out = server.receive(junk)
        assert out.events == [] and msgpack.unpackb(out.frames[0])[1]["code"] == "bad-frame", junk
    out = server.receive(mp.encode_value([p.EV_PUBLISH, {"channel-id": "c", "data": {"$bytes": "AA=="}},
                                          "c2"], checked=True))  # a map JSON peers would read as bytes
    assert out.events == [] and msgpack.unpackb(out.frames[0])[1]["code"] == "bad-frame"
    assert "$bytes" in msgpack.unpackb(out.frames[0])[1]["message"]


def test_unknown_packer_names_are_refused() -> None:
    with pytest.raises(ValueError):
        packers.get("cbor")
    with pytest.raises(ValueError):
        Client("ws://127.0.0.1:1/chsk", packer="cbor", start=False)


def test_msgpack_client_talks_to_json_clients_through_one_server(
        make_face: Callable[..., Face], make_client: Callable[..., Client]) -> None:
    srv = make_face()
    srv.on("app/echo", lambda conn, data: {"echo": data, "packer": conn.packer.name})
    mp_client = make_client(srv.url, packer="msgpack")
    json_client = make_client(srv.url)
    assert mp_client.wait_connected(5) and json_client.wait_connected(5)
    assert mp_client.handshake["packer"] == "msgpack"  # type: ignore[index]
    assert "packer" not in json_client.handshake  # type: ignore[operator]
    assert mp_client.request("app/echo", {"k": [1, 2.5, None]}) == {
        "echo": {"k": [1, 2.5, None]}, "packer": "msgpack"}
    with pytest.raises(RemoteError) as err:
        mp_client.request("app/none")
    assert err.value.code == "no-handler"
    got_mp, got_json = Recorder(), Recorder()
    mp_client.subscribe("mixed", got_mp)
    json_client.subscribe("mixed", got_json)
    mp_client.publish("mixed", {"from": "mp"}, ack=True)
    json_client.publish("mixed", {"from": "json"}, ack=True)
    srv.publish("mixed", {"from": "server"})
    for got in (got_mp, got_json):
        msgs = got.wait_count(3)
        assert [(m.offset, m.data["from"]) for m in msgs] == [(1, "mp"), (2, "json"), (3, "server")]
    notes = Recorder()
    mp_client.on("app/note", notes)  # before either is sent: both are recorded, in order
    assert srv.send_to_user(mp_client.uid, "app/note", {"x": 1}) == 1  # type: ignore[arg-type]
    srv.broadcast("app/note", {"x": 2})
    assert notes.wait_count(2) == [{"x": 1}, {"x": 2}]


def test_one_encode_per_publish_per_packer(make_face: Callable[..., Face],
                                           make_client: Callable[..., Client],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    srv = make_face()
    calls: List[Any] = []
    real = packers.MsgpackPacker.encode_value

    def counting(self: Any, value: Any, checked: bool = False) -> bytes:
        if isinstance(value, list) and value and value[0] == p.EV_CHANNEL_MSG:
            calls.append(value[1]["offset"])
        return real(self, value, checked)

    monkeypatch.setattr(packers.MsgpackPacker, "encode_value", counting)
    recorders = [Recorder() for _ in range(3)]
    for rec in recorders:
        make_client(srv.url, packer="msgpack").subscribe("fan", rec)
    for n in range(4):
        srv.publish("fan", n)
    for rec in recorders:
        assert [m.data for m in rec.wait_count(4)] == [0, 1, 2, 3]
    assert calls == [1, 2, 3, 4]  # once per publish, whatever the subscriber count


def _upgrade_status(srv: Server, query: str) -> int:
    with RawPeer(srv.host, srv.port) as peer:
        return peer.upgrade(f"/chsk?{query}").status


def test_the_upgrade_refuses_an_unknown_packer(make_face: Callable[..., Face]) -> None:
    srv = make_face()
    assert _upgrade_status(srv, "packer=cbor") == 400
    assert _upgrade_status(srv, "packer=msgpack") == 101
    assert srv.stats()["handshakes_refused"]["bad-packer"] == 1


def test_raw_msgpack_peer_gets_binary_frames_and_a_bad_frame_for_text(
        make_face: Callable[..., Face]) -> None:
    srv = make_face()
    with RawPeer(srv.host, srv.port) as peer:
        assert peer.upgrade("/chsk?packer=msgpack").status == 101
        opcode, payload = peer.read_frame()  # type: ignore[misc]
        assert opcode == OP_BINARY
        hs = msgpack.unpackb(payload)
        assert hs[0] == p.EV_HANDSHAKE and hs[1][2]["packer"] == "msgpack"
        peer.send_frame(p.encode_bytes("app/x", 1, "c1"), OP_TEXT)
        while True:
            opcode, payload = peer.read_frame()  # type: ignore[misc]
            frame = msgpack.unpackb(payload)
            if frame[0] != p.EV_PING:
                break
        assert opcode == OP_BINARY and frame[1]["code"] == "bad-frame" and frame[2] == "c1"


def test_heartbeat_pings_are_binary_msgpack_on_a_msgpack_connection(
        make_face: Callable[..., Face]) -> None:
    srv = make_face(heartbeat_ms=100)
    with RawPeer(srv.host, srv.port) as peer:
        assert peer.upgrade("/chsk?packer=msgpack").status == 101
        kinds = []
        for _ in range(3):  # the handshake, then pings
            opcode, payload = peer.read_frame()  # type: ignore[misc]
            kinds.append((opcode, msgpack.unpackb(payload)[0]))
        assert kinds == [(OP_BINARY, p.EV_HANDSHAKE), (OP_BINARY, p.EV_PING), (OP_BINARY, p.EV_PING)]
        assert msgpack.unpackb(payload) == [p.EV_PING]


def _raw_map(pairs: List[Any]) -> bytes:
    """A MessagePack map of these (key bytes, value bytes) pairs, keys packed as given."""
    assert len(pairs) < 16
    return bytes((0x80 | len(pairs),)) + b"".join(k + v for k, v in pairs)


#: Map keys that are not strings, packed by hand (a Python dict cannot hold some of them).
NON_STRING_KEYS = [
    ("int", msgpack.packb(1)), ("negative int", msgpack.packb(-7)), ("bool", msgpack.packb(True)),
    ("None", msgpack.packb(None)), ("float", msgpack.packb(1.5)),
    ("bytes", msgpack.packb(b"1", use_bin_type=True)), ("nested map", msgpack.packb({"a": 1})),
    ("array", msgpack.packb([1])),
]


@pytest.mark.parametrize("kind, key", NON_STRING_KEYS, ids=[k for k, _ in NON_STRING_KEYS])
@pytest.mark.parametrize("depth", [0, 3])
def test_a_map_with_a_non_string_key_is_a_bad_frame_naming_it(kind: str, key: bytes, depth: int) -> None:
    mp = packers.get("msgpack")
    server = ss.ServerSession("x", ss.ServerRules(rate_limit=None), 0.0, packer=mp)
    inner = _raw_map([(msgpack.packb("1"), msgpack.packb("b")), (key, msgpack.packb("a"))])
    for _ in range(depth):  # the same map deeper in the data: in a list in a map
        inner = _raw_map([(msgpack.packb("k"), b"\x91" + inner)])
    data = _raw_map([(msgpack.packb("channel-id"), msgpack.packb("room")),
                     (msgpack.packb("data"), inner)])
    frame = b"\x93" + msgpack.packb(p.EV_PUBLISH) + data + msgpack.packb("c9")
    out = server.receive(frame)
    assert out.events == []
    reply = msgpack.unpackb(out.frames[0])
    assert reply[0] == p.EV_ERROR and reply[1]["code"] == "bad-frame" and reply[2] == "c9"
    assert "map key" in reply[1]["message"] and "must be strings" in reply[1]["message"], reply
    # an application event too (not only publishes), without a cb-id
    out = server.receive(b"\x92" + msgpack.packb("app/x") + inner)
    reply = msgpack.unpackb(out.frames[0])
    assert out.events == [] and reply[1]["code"] == "bad-frame" and len(reply) == 2


def test_json_subscribers_never_see_a_map_with_duplicate_names(
        make_face: Callable[..., Face], make_client: Callable[..., Client]) -> None:
    srv = make_face()
    got = Recorder()
    make_client(srv.url).subscribe("room", got)
    with RawPeer(srv.host, srv.port) as peer:
        assert peer.upgrade("/chsk?packer=msgpack").status == 101
        for key in (1, True, None, 2.5, b"1"):
            data = msgpack.packb({key: "a", "1": "b"}, use_bin_type=True)
            body = _raw_map([(msgpack.packb("channel-id"), msgpack.packb("room")),
                             (msgpack.packb("data"), data)])
            peer.send_frame(b"\x93" + msgpack.packb(p.EV_PUBLISH) + body + msgpack.packb("c1"),
                            OP_BINARY)
            while True:
                frame = msgpack.unpackb(peer.read_frame()[1])  # type: ignore[index]
                if frame[0] not in (p.EV_HANDSHAKE, p.EV_PING):
                    break
            assert frame[0] == p.EV_ERROR and frame[1]["code"] == "bad-frame", (key, frame)
        good = msgpack.packb([p.EV_PUBLISH, {"channel-id": "room", "data": {"1": "b"}}, "c2"])
        peer.send_frame(good, OP_BINARY)
    assert [m.data for m in got.wait_count(1)] == [{"1": "b"}]
    assert srv.stats()["bad_frames"] >= 5

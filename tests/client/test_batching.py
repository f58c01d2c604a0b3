"""Batches (negotiated with batch=1): frames waiting for a busy connection go as one frame."""

from __future__ import annotations

import json
from typing import Any, Callable, List

import pytest

from sente_lite import Client, Server
from sente_lite.wire import protocol as p
from sente_lite import session as ss
from sente_lite.testing.abuse import OP_TEXT, RawPeer
from support import Recorder, wait_until


def test_a_batch_is_read_frame_by_frame_in_order() -> None:
    client = ss.ClientSession("c")
    client.receive(p.encode(p.EV_HANDSHAKE, ["u", None, {"heartbeat-ms": 1000}, True]), 0.0)
    client.add_subscription("ch")
    batch = json.dumps([p.EV_BATCH, [
        [p.EV_CHANNEL_MSG, {"channel-id": "ch", "data": 1, "from": None, "offset": 1, "epoch": "e"}],
        ["app/note", {"n": 1}],
        "not a frame",
        [p.EV_BATCH, []],
        [p.EV_CHANNEL_MSG, {"channel-id": "ch", "data": 2, "from": None, "offset": 2, "epoch": "e"}],
        [p.EV_PING],
    ]])
    out = client.receive(batch, 1.0)
    assert [type(e).__name__ for e in out.events] == ["ChannelMessage", "EventRequest", "ChannelMessage"]
    assert [e.data for e in out.events] == [1, {"n": 1}, 2]
    assert out.frames == [p.encode_bytes(p.EV_PONG)]
    assert client.counts["bad_frames_from_server"] == 2 and client.counts["batches_in"] == 1


def _read_messages(peer: RawPeer, want: int) -> List[Any]:
    """Channel messages in arrival order, and how many frames were batches."""
    got: List[Any] = []
    batches = 0
    while len(got) < want:
        frame = peer.read_frame(10.0)
        assert frame is not None, f"{len(got)} of {want}"
        opcode, payload = frame
        if opcode != OP_TEXT:
            continue
        value = json.loads(payload)
        frames = value[1] if value[0] == p.EV_BATCH else [value]
        batches += value[0] == p.EV_BATCH
        got.extend(f[1]["offset"] for f in frames if f[0] == p.EV_CHANNEL_MSG)
    return [got, batches]


@pytest.mark.parametrize("negotiated", [True, False])
def test_a_backed_up_peer_gets_batches_only_when_it_asked(make_server: Callable[..., Server],
                                                          negotiated: bool) -> None:
    srv = make_server(max_queued_bytes_per_conn=64 << 20)
    n = 5000  # 10 MB: more than the socket buffers hold
    with RawPeer(srv.host, srv.port) as peer:
        status = peer.upgrade("/chsk?batch=1" if negotiated else "/chsk").status
        assert status == 101
        hs = json.loads(peer.read_frame()[1])  # type: ignore[index]
        assert hs[1][2].get("batch") is (True if negotiated else None)
        peer.send_frame(p.encode_bytes(p.EV_SUBSCRIBE, {"channel-id": "ch"}))
        wait_until(lambda: srv.channels.subscriber_count("ch") == 1, what="subscribed")
        for i in range(n):  # the peer reads nothing meanwhile: its socket backs up
            srv.publish("ch", {"i": i, "pad": "x" * 2000})
        offsets, batches = _read_messages(peer, n)
    assert offsets == list(range(1, n + 1))
    if negotiated:
        assert batches > 0 and srv.stats()["batches_out"] == batches
    else:
        assert batches == 0 and srv.stats()["batches_out"] == 0


def test_a_python_client_asking_for_batches_gets_everything_in_order(
        make_server: Callable[..., Server], make_client: Callable[..., Client]) -> None:
    srv = make_server()
    c = make_client(srv.url, batch=True)
    assert c.wait_connected(5) and c.handshake["batch"] is True  # type: ignore[index]
    got = Recorder()
    c.subscribe("ch", got)
    for i in range(2000):
        srv.publish("ch", i)
    msgs = got.wait_count(2000)
    assert [m.data for m in msgs] == list(range(2000))
    assert [m.offset for m in msgs] == list(range(1, 2001))


def test_the_server_reads_a_batch_frame_by_frame() -> None:
    server = ss.ServerSession("x", ss.ServerRules(rate_limit=None), 0.0)
    out = server.receive(json.dumps([p.EV_BATCH, [
        ["app/a", 1], [p.EV_PING, None, "c1"], ["bad"], [p.EV_BATCH, []], ["app/b", 2, "c2"]]]))
    assert [(e.event, e.data, e.cb_id) for e in out.events] == [("app/a", 1, None), ("app/b", 2, "c2")]
    answers = [json.loads(f) for f in out.frames]
    assert answers[0] == [p.EV_REPLY, None, "c1"]
    assert [a[1]["code"] for a in answers[1:]] == ["bad-frame", "bad-frame"]
    too_many = json.dumps([p.EV_BATCH, [["app/a"]] * (ss.MAX_BATCH_FRAMES + 1)])
    assert server.receive(too_many).events == []
    assert json.loads(server.receive(json.dumps([p.EV_BATCH, "x"])).frames[0])[1]["code"] == "bad-frame"


def test_every_frame_of_a_batch_counts_against_the_rate_limit() -> None:
    server = ss.ServerSession("x", ss.ServerRules(rate_limit=10, rate_burst=3, max_rate_limited=100), 0.0)
    text = json.dumps([p.EV_BATCH, [["app/a", i, f"c{i}"] for i in range(6)]])
    assert server.admit(text, 0.0) is None  # the batch itself: one token
    out = server.receive(text)
    assert [e.data for e in out.events] == [0, 1, 2]
    limited = [json.loads(f) for f in out.frames]
    assert [(f[1]["code"], f[2]) for f in limited] == [("rate-limited", f"c{i}") for i in (3, 4, 5)]


def test_a_client_with_send_buf_ms_sends_fewer_frames(make_server: Callable[..., Server],
                                                      make_client: Callable[..., Client]) -> None:
    srv = make_server()
    srv.on("app/echo", lambda conn, data: data)
    c = make_client(srv.url, send_buf_ms=20)
    got = Recorder()
    c.subscribe("ch", got)
    frames_before = srv.stats()["frames_in"]
    for i in range(50):
        c.publish("ch", i)
    assert c.request("app/echo", "after") == "after"  # a request waits at most send_buf_ms more
    assert [m.data for m in got.wait_count(50)] == list(range(50))
    wait_until(lambda: c.stats()["unacked_publishes"] == 0, what="every publish acknowledged")
    assert srv.stats()["frames_in"] - frames_before < 51 / 2
    assert c.stats()["batches_out"] >= 1
    with pytest.raises(ValueError):
        Client(srv.url, send_buf_ms=500, start=False)

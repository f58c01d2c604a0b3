"""Channels over the wire (PROTOCOL 6): subscribe answers, delivery, exclude-sender?,
publish acks, per-channel offsets in order under concurrent publishers, unsubscribe."""

from __future__ import annotations

import threading
from typing import Callable, Dict, List, Union

import pytest

from sente_lite import ChannelMessage, Client, Server
from support import AsgiFace, RawWS, Recorder, ThreadedFace, wait_until

#: The tests taking ``make_face`` run on both faces: the threaded Server and the ASGI App
#: under uvicorn.
Face = Union[ThreadedFace, AsgiFace]


def test_subscribe_reply_carries_top_offset_and_epoch(make_face: Callable[..., Face],
                                                      make_client: Callable[..., Client]) -> None:
    srv = make_face()
    first = srv.publish("news", "a")
    srv.publish("news", "b")
    srv.publish("news", "c")
    c = make_client(srv.url)
    reply = c.subscribe("news")
    assert reply == {"channel-id": "news", "offset": 3, "epoch": first.epoch}
    other = c.subscribe("other")
    assert other["offset"] == 0  # type: ignore[index]
    assert other["epoch"] != first.epoch  # type: ignore[index]
    assert c.subscriptions() == ["news", "other"]


def test_subscribe_as_plain_event_gets_notification(make_face: Callable[..., Face],
                                                    raw_ws: Callable[..., RawWS]) -> None:
    srv = make_face()
    r = raw_ws(srv.url)
    r.send_frame("sente-lite/subscribe", {"channel-id": "n"})
    event, body = r.recv()
    assert event == "sente-lite/subscribed"
    assert (body["channel-id"], body["offset"]) == ("n", 0)
    r.send_frame("sente-lite/subscribe", {"channel-id": "n"})  # idempotent
    assert r.recv()[0] == "sente-lite/subscribed"
    assert srv.channels.subscriber_count("n") == 1
    assert srv.publish("n", {"k": 1}).delivered == 1
    msg = r.recv()
    assert msg == ["sente-lite/channel-msg", {"channel-id": "n", "data": {"k": 1}, "from": None,
                                              "offset": 1, "epoch": body["epoch"]}]
    r.send_frame("sente-lite/unsubscribe", {"channel-id": "n"})
    assert r.recv() == ["sente-lite/unsubscribed", {"channel-id": "n"}]
    assert srv.channels.subscriber_count("n") == 0
    # a plain publish gets no notification; the next frame is the answer to this ping
    r.send_frame("sente-lite/publish", {"channel-id": "n", "data": 1})
    assert r.request("chsk/ws-ping", None, "p") == ["chsk/reply", None, "p"]


def test_delivery_to_subscribers_only(make_face: Callable[..., Face],
                                      make_client: Callable[..., Client]) -> None:
    srv = make_face()
    a, b, outsider = (make_client(srv.url) for _ in range(3))
    got_a, got_b = Recorder(), Recorder()
    a.subscribe("room", got_a)
    b.subscribe("room", got_b)
    ack = outsider.publish("room", {"hello": 1}, ack=True)
    assert ack == {"channel-id": "room", "offset": 1, "delivered": 2}
    for rec in (got_a, got_b):
        (msg,) = rec.wait_count(1)
        assert isinstance(msg, ChannelMessage)
        assert (msg.channel_id, msg.data, msg.from_uid, msg.offset) == ("room", {"hello": 1},
                                                                        outsider.uid, 1)
    assert got_a.items[0].epoch == got_b.items[0].epoch
    # the outsider got nothing: a marker sent after the publish arrives, no channel message before it
    marker = Recorder()
    outsider.on("app/marker", marker)
    srv.send(outsider.conn_id, "app/marker")  # type: ignore[arg-type]
    marker.wait_count(1)
    assert outsider.stats().get("channel_msgs", 0) == 0
    assert outsider.stats().get("unsubscribed_channel_msgs", 0) == 0


def test_server_publish_has_null_from(make_face: Callable[..., Face],
                                      make_client: Callable[..., Client]) -> None:
    srv = make_face()
    c = make_client(srv.url)
    got = Recorder()
    c.subscribe("sys", got)
    result = srv.publish("sys", [1, 2])
    assert (result.offset, result.delivered) == (1, 1)
    (msg,) = got.wait_count(1)
    assert (msg.data, msg.from_uid, msg.offset, msg.epoch) == ([1, 2], None, 1, result.epoch)


def test_exclude_sender(make_face: Callable[..., Face], make_client: Callable[..., Client]) -> None:
    srv = make_face()
    pub, sub = make_client(srv.url), make_client(srv.url)
    got_pub, got_sub = Recorder(), Recorder()
    pub.subscribe("chat", got_pub)
    sub.subscribe("chat", got_sub)
    assert pub.publish("chat", "mine", ack=True, exclude_sender=True)["delivered"] == 1  # type: ignore[index]
    assert pub.publish("chat", "echoed", ack=True)["delivered"] == 2  # type: ignore[index]
    assert [m.data for m in got_sub.wait_count(2)] == ["mine", "echoed"]
    # the publisher saw only the second: offset 2 is its first message
    (own,) = got_pub.wait_count(1)
    assert (own.data, own.offset) == ("echoed", 2)
    assert len(got_pub) == 1


def test_publish_without_subscribers(make_face: Callable[..., Face],
                                     make_client: Callable[..., Client]) -> None:
    srv = make_face()
    c = make_client(srv.url)
    assert c.publish("void", 1, ack=True) == {"channel-id": "void", "offset": 1, "delivered": 0}
    assert c.publish("void", 2, ack=True) == {"channel-id": "void", "offset": 2, "delivered": 0}
    assert srv.stats()["publishes"] == 2
    assert srv.stats()["deliveries"] == 0


def test_unsubscribe(make_face: Callable[..., Face], make_client: Callable[..., Client]) -> None:
    srv = make_face()
    a, b = make_client(srv.url), make_client(srv.url)
    got_a, got_b = Recorder(), Recorder()
    a.subscribe("t", got_a)
    b.subscribe("t", got_b)
    assert srv.publish("t", 1).delivered == 2
    got_a.wait_count(1)
    a.unsubscribe("t")
    assert a.subscriptions() == []
    assert srv.channels.subscriber_count("t") == 1
    assert srv.publish("t", 2).delivered == 1
    assert [m.data for m in got_b.wait_count(2)] == [1, 2]
    marker = Recorder()
    a.on("app/marker", marker)
    srv.send(a.conn_id, "app/marker")  # type: ignore[arg-type]
    marker.wait_count(1)
    assert len(got_a) == 1
    assert a.stats().get("unsubscribed_channel_msgs", 0) == 0
    a.unsubscribe("t")  # not subscribed: nothing to do


def test_subscribe_twice_from_client_keeps_one_subscription(
        make_face: Callable[..., Face], make_client: Callable[..., Client]) -> None:
    srv = make_face()
    c = make_client(srv.url)
    h1, h2 = Recorder(), Recorder()
    r1 = c.subscribe("dup", h1)
    r2 = c.subscribe("dup", h2)
    assert r1 == r2
    assert srv.channels.subscriber_count("dup") == 1
    assert srv.publish("dup", "x").delivered == 1
    assert [m.data for m in h1.wait_count(1)] == ["x"]
    assert [m.data for m in h2.wait_count(1)] == ["x"]


def test_disconnected_subscriber_leaves_its_channels(make_face: Callable[..., Face],
                                                     make_client: Callable[..., Client]) -> None:
    srv = make_face()
    c = make_client(srv.url, auto_reconnect=False)
    c.subscribe("a")
    c.subscribe("b")
    conn_id = c.conn_id
    assert srv.channels.channels_of(conn_id) == ["a", "b"]
    c.close()
    wait_until(lambda: srv.stats().get("connections_closed") == 1, what="connection dropped")
    assert srv.channels.channels_of(conn_id) == []
    assert srv.publish("a", 1).delivered == 0


def test_concurrent_publishers_offsets_in_order_without_gaps(
        make_face: Callable[..., Face], make_client: Callable[..., Client]) -> None:
    srv = make_face()
    channels = ("race-1", "race-2")
    subscribers = [make_client(srv.url) for _ in range(2)]
    got: Dict[int, Dict[str, Recorder]] = {}
    for i, s in enumerate(subscribers):
        got[i] = {ch: Recorder() for ch in channels}
        for ch in channels:
            s.subscribe(ch, got[i][ch])
    publishers = [make_client(srv.url) for _ in range(3)]
    per_publisher = 150
    start = threading.Barrier(len(publishers) + 1)
    errors: List[BaseException] = []

    def run(idx: int, pub: Client) -> None:
        try:
            start.wait()
            for n in range(per_publisher):
                pub.publish(channels[n % 2], {"p": idx, "n": n})
            pub.publish(channels[0], {"p": idx, "n": "done"}, ack=True)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, p)) for i, p in enumerate(publishers)]
    for t in threads:
        t.start()
    start.wait()
    for t in threads:
        t.join(30)
    assert errors == []
    totals = {channels[0]: per_publisher * 3 // 2 + 3, channels[1]: per_publisher * 3 // 2}
    for i in got:
        for ch in channels:
            msgs: List[ChannelMessage] = got[i][ch].wait_count(totals[ch])
            assert [m.offset for m in msgs] == list(range(1, totals[ch] + 1)), (i, ch)
            assert len({m.epoch for m in msgs}) == 1
            for p in range(3):  # each publisher's own messages keep its send order
                mine = [m.data["n"] for m in msgs if m.data["p"] == p and m.data["n"] != "done"]
                assert mine == sorted(mine)
        assert subscribers[i].stats().get("channel_gaps", 0) == 0
    assert got[0][channels[0]].items == got[1][channels[0]].items


def test_channel_handler_error_is_counted_and_delivery_goes_on(
        make_face: Callable[..., Face], make_client: Callable[..., Client],
        caplog: pytest.LogCaptureFixture) -> None:
    srv = make_face()
    c = make_client(srv.url)
    got = Recorder()

    def flaky(msg: ChannelMessage) -> None:
        if msg.offset == 1:
            raise RuntimeError("handler bug")
        got(msg.data)

    c.subscribe("f", flaky)
    srv.publish("f", "first")
    srv.publish("f", "second")
    assert got.wait_count(1) == ["second"]
    assert c.stats()["handler_errors"] == 1
    assert "handler bug" in caplog.text
    assert c.connected

"""Bad input from a raw peer (PROTOCOL 2, 7): answered with bad-frame, the connection
stays open; too many in a row close with 1008; oversize frames close with 1009."""

from __future__ import annotations

import json
from typing import Callable, Union

import pytest

from sente_lite import MessageTooLarge, Server
from support import AsgiFace, RawWS, ThreadedFace, wait_until

#: The tests taking ``make_face`` run on both faces: the threaded Server and the ASGI App
#: under uvicorn.
Face = Union[ThreadedFace, AsgiFace]

BAD_TEXT_FRAMES = [
    "not json",
    '["app/a", NaN]',
    '{"event": "app/a"}',
    "[]",
    '["app/a", 1, "c1", 2]',
    '["no-namespace"]',
    '["app/a", 1, 99]',
    "[" * 100_000,
    '["app/a", 1' + "0" * 10_000 + "]",
    '["sente-lite/publish", {"channel-id": "c", "data": "\\ud800"}]',
    '["sente-lite/publish", {"channel-id": "c", "data": 1e400}, "p1"]',
]


def assert_open(r: RawWS, cb_id: str = "alive") -> None:
    """The connection still answers requests."""
    assert r.request("chsk/ws-ping", None, cb_id) == ["chsk/reply", None, cb_id]


@pytest.mark.parametrize("text", BAD_TEXT_FRAMES, ids=range(len(BAD_TEXT_FRAMES)))
def test_bad_frame_is_answered_and_connection_stays_open(make_face: Callable[..., Face],
                                                         raw_ws: Callable[..., RawWS], text: str) -> None:
    srv = make_face()
    r = raw_ws(srv.url)
    r.send(text)
    event, body = r.recv()
    assert event == "chsk/error"
    assert body["code"] == "bad-frame"
    assert body["message"]
    assert_open(r)
    assert srv.stats()["bad_frames"] == 1


def test_bad_frame_with_usable_cb_id_is_a_reply(make_face: Callable[..., Face],
                                                raw_ws: Callable[..., RawWS]) -> None:
    srv = make_face()
    r = raw_ws(srv.url)
    r.send('["not an event", {"x": 1}, "cb-9"]')
    frame = r.recv()
    assert frame[0] == "chsk/error" and frame[2] == "cb-9"
    assert frame[1]["code"] == "bad-frame"
    assert_open(r)


def test_lone_surrogate_publish_does_not_reach_subscribers(make_face: Callable[..., Face],
                                                           raw_ws: Callable[..., RawWS]) -> None:
    srv = make_face()
    sub, pub = raw_ws(srv.url), raw_ws(srv.url)
    assert sub.request("sente-lite/subscribe", {"channel-id": "c"}, "s1")[0] == "chsk/reply"
    pub.send('["sente-lite/publish", {"channel-id": "c", "data": "\\udfff"}, "p1"]')
    assert pub.recv()[1]["code"] == "bad-frame"
    reply = pub.request("sente-lite/publish", {"channel-id": "c", "data": "\U0001F600"}, "p2")
    assert reply[1] == {"channel-id": "c", "offset": 1, "delivered": 1}
    msg = sub.recv()
    assert msg[0] == "sente-lite/channel-msg"
    assert (msg[1]["data"], msg[1]["offset"]) == ("\U0001F600", 1)


def test_binary_frame_is_a_bad_frame(make_face: Callable[..., Face],
                                     raw_ws: Callable[..., RawWS]) -> None:
    srv = make_face()
    r = raw_ws(srv.url)
    r.send_binary(json.dumps(["chsk/ws-ping", None, "b1"]).encode())
    event, body = r.recv()
    assert (event, body["code"]) == ("chsk/error", "bad-frame")
    assert "binary" in body["message"]
    assert_open(r)


def test_oversize_frame_closes_with_1009(make_face: Callable[..., Face],
                                         raw_ws: Callable[..., RawWS]) -> None:
    srv = make_face(max_message_bytes=1024)
    r = raw_ws(srv.url)
    ok = json.dumps(["chsk/ws-ping", "x" * 900, "fits"])
    assert len(ok) <= 1024
    r.send(ok)
    assert r.recv() == ["chsk/reply", None, "fits"]
    r.send(json.dumps(["app/big", "x" * 2000]))
    assert r.recv_close() == 1009
    # closes are counted once the connection is fully dropped
    wait_until(lambda: srv.stats()["closes_by_code"] == {1009: 1}, what="1009 close counted")
    assert srv.stats()["connections"] == 0


def test_oversize_frame_from_client_surfaces(make_face: Callable[..., Face],
                                             make_client: Callable[..., object]) -> None:
    srv = make_face(max_message_bytes=1024)
    c = make_client(srv.url, auto_reconnect=False)
    with pytest.raises(MessageTooLarge):  # refused before sending: the limit is known
        c.send("app/big", "x" * 2000)  # type: ignore[attr-defined]
    assert c.status == "connected"  # type: ignore[attr-defined]
    # Queued before any handshake, a frame meets no limit here: the server's 1009 surfaces.
    late = make_client(srv.url, connect=False, auto_reconnect=False, start=False)
    late.send("app/big", "x" * 2000)  # type: ignore[attr-defined]
    late.start()  # type: ignore[attr-defined]
    assert late.wait_status("closed", 5)  # type: ignore[attr-defined]
    assert late.stats()["closed_by_server_1009"] == 1  # type: ignore[attr-defined]

"""Nesting depth: one explicit limit (protocol.MAX_JSON_DEPTH), checked before decoding
and after encoding, the same on every thread, server and client, both decode paths.

A publish the server accepts is a channel message its clients can read: the
data of a publish may be MAX_CHANNEL_DATA_DEPTH deep, the frames carrying it
(publish in, channel message out) are then exactly MAX_JSON_DEPTH deep.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any, List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sente_lite import Client, EncodeError
from sente_lite.wire import protocol as p
from support import WAIT_S, wait_until
from support import decode_path  # noqa: F401  (every test on both decode paths)

LIMIT = p.MAX_JSON_DEPTH




def nested(depth: int, leaf: Any = "leaf") -> Any:
    """``depth`` levels of arrays and objects (alternating) around ``leaf``."""
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k[{": value}
    return value


def frame_text(event: str, data: Any, cb_id: Any = None) -> str:
    return json.dumps([event, data] if cb_id is None else [event, data, cb_id])


def test_depth_is_measured_outside_strings():
    assert p.json_depth("[]") == 1 and p.json_depth("1") == 0
    assert p.json_depth('["[[[[", {"a": "]]{{"}, [[1]]]') == 3
    assert p.json_depth(r'["\"[[[", "\\", [["\\\"{"]]]') == 3  # escaped quotes and backslashes
    assert p.json_depth(b'["\xc3\xa9[", [[]]]') == 3
    assert p.json_depth(json.dumps(nested(LIMIT))) == LIMIT


def test_decode_accepts_the_limit_and_refuses_one_more_naming_it():
    at_limit = frame_text("app/x", nested(LIMIT - 1))
    assert p.json_depth(at_limit) == LIMIT
    assert p.decode(at_limit).data == nested(LIMIT - 1)
    assert p.decode(at_limit.encode("utf-8")).data == nested(LIMIT - 1)
    for text in (frame_text("app/x", nested(LIMIT)), "[" * (LIMIT + 1) + "]" * (LIMIT + 1),
                 '["app/x", ' + "[" * 100_000, frame_text("app/x", nested(LIMIT), "cb1")):
        for raw in (text, text.encode("utf-8"), memoryview(text.encode("utf-8"))):
            with pytest.raises(p.FrameError) as info:
                p.decode(raw)
            assert "MAX_JSON_DEPTH" in info.value.message and str(LIMIT) in info.value.message


def test_encode_refuses_what_a_peer_would_refuse():
    assert p.decode(p.encode("app/x", nested(LIMIT - 1))).data == nested(LIMIT - 1)
    with pytest.raises(EncodeError, match="MAX_JSON_DEPTH"):
        p.encode("app/x", nested(LIMIT))
    assert json.loads(p.encode_channel_data(nested(p.MAX_CHANNEL_DATA_DEPTH)))
    with pytest.raises(EncodeError, match="MAX_JSON_DEPTH"):
        p.encode_channel_data(nested(p.MAX_CHANNEL_DATA_DEPTH + 1))


def _at_stack_depth(levels: int, fn: Any) -> Any:
    """Call ``fn()`` with ``levels`` Python frames on the stack."""
    if levels <= 0:
        return fn()
    return _at_stack_depth(levels - 1, fn)


def test_the_verdict_does_not_depend_on_the_thread_or_its_stack():
    """Frames near the limit get the same answer on a fresh thread, on a thread whose
    stack is nearly used up, and on many threads at once."""
    at_limit = frame_text("app/x", nested(LIMIT - 1))
    over = frame_text("app/x", nested(LIMIT))
    deep = frame_text("app/x", nested(900))  # on main this depended on the caller's stack

    def verdicts() -> List[str]:
        out = []
        for text in (at_limit, over, deep):
            try:
                p.decode(text)
                out.append("ok")
            except p.FrameError as exc:
                out.append("depth" if "MAX_JSON_DEPTH" in exc.message else exc.message)
        return out

    expected = ["ok", "depth", "depth"]
    assert verdicts() == expected
    headroom = LIMIT + 40  # enough for a decode of LIMIT levels, not for 900
    assert _at_stack_depth(sys.getrecursionlimit() - headroom - 50, verdicts) == expected
    results: List[List[str]] = []
    threads = [threading.Thread(target=lambda: results.append(verdicts()), name=f"depth-{i}")
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    assert results == [expected] * 8


def test_a_publish_at_the_limit_is_delivered_and_read_by_subscribers(make_face, make_client):
    srv = make_face()
    sub = make_client(srv.url)
    got: List[Any] = []
    sub.subscribe("deep", lambda msg: got.append(msg.data))
    pub = make_client(srv.url)
    data = nested(p.MAX_CHANNEL_DATA_DEPTH)
    ack = pub.publish("deep", data, ack=True)
    assert ack["delivered"] == 1
    wait_until(lambda: got, what="the subscriber read the deep message")
    assert got == [data] and sub.stats().get("bad_frames_from_server", 0) == 0
    srv.publish("deep", data)  # the server's own publish: same limit
    wait_until(lambda: len(got) == 2, what="the server's publish read")
    with pytest.raises(EncodeError):
        pub.publish("deep", nested(p.MAX_CHANNEL_DATA_DEPTH + 1), ack=True)
    with pytest.raises(EncodeError):
        srv.publish("deep", nested(p.MAX_CHANNEL_DATA_DEPTH + 1))
    assert got == [data, data]


def test_frames_over_the_limit_are_bad_frame_on_every_server_thread(make_face, raw_ws):
    """Built-in frames may be handled on websockets' network thread, application events
    on the connection's reader thread: both refuse the same frame the same way."""
    srv = make_face()
    handled: List[Any] = []
    srv.on("app/echo", lambda conn, data: handled.append(data) or "ok")
    peer = raw_ws(srv.url)
    peer.send_frame("sente-lite/subscribe", {"channel-id": "deep"}, "s1")
    assert peer.recv()[0] == "chsk/reply"
    too_deep = nested(p.MAX_CHANNEL_DATA_DEPTH + 1)
    for _ in range(3):
        peer.send(frame_text("sente-lite/publish", {"channel-id": "deep", "data": too_deep}, "c1"))
        error = peer.recv()
        assert error[0] == "chsk/error" and error[1]["code"] == "bad-frame"
        assert "MAX_JSON_DEPTH" in error[1]["message"]
        peer.send(frame_text("app/echo", nested(LIMIT), "c2"))
        error = peer.recv()
        assert error[0] == "chsk/error" and error[1]["code"] == "bad-frame"
    peer.send(frame_text("sente-lite/publish",
                         {"channel-id": "deep", "data": nested(p.MAX_CHANNEL_DATA_DEPTH)}, "c3"))
    msgs = [peer.recv(), peer.recv()]  # the channel message and the ack, in either order
    [ack] = [m for m in msgs if m[0] == "chsk/reply"]
    assert ack[1]["delivered"] == 1
    [msg] = [m for m in msgs if m[0] == "sente-lite/channel-msg"]
    assert p.json_depth(json.dumps(msg)) == LIMIT
    peer.send(frame_text("app/echo", nested(LIMIT - 1), "c4"))
    assert peer.recv() == ["chsk/reply", "ok", "c4"]
    assert handled == [nested(LIMIT - 1)]
    assert srv.stats()["bad_frames"] == 6


def test_the_client_refuses_over_deep_frames_from_a_server(make_face, make_client):
    srv = make_face()
    c: Client = make_client(srv.url)
    got: List[Any] = []
    c.on("app/deep", lambda data: got.append(data))
    [conn] = srv.connections()
    with pytest.raises(EncodeError):  # the server does not send what its clients refuse
        srv.send(conn["conn-id"], "app/deep", nested(LIMIT))
    srv.send(conn["conn-id"], "app/deep", nested(LIMIT - 1))
    wait_until(lambda: got, what="the client read the frame at the limit")
    assert got == [nested(LIMIT - 1)]


def _value_depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_value_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_value_depth(v) for v in value.values()), default=0)
    return 0


_TEXT = st.text(alphabet=st.sampled_from('ab"\\[]{}é \n'), max_size=8)
_JSON = st.recursive(st.none() | st.integers() | _TEXT,
                     lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(_TEXT, inner, max_size=4), max_leaves=40)


@given(_JSON, st.booleans())
@settings(max_examples=300, deadline=None)
def test_depth_matches_the_parsed_values_whatever_the_strings_hold(value: Any, ascii_only: bool) -> None:
    """Brackets, quotes and backslashes inside strings never count, on the fast measure
    (no string holds a bracket) and on the slow one alike."""
    text = json.dumps(value, ensure_ascii=ascii_only)
    assert p.json_depth(text) == _value_depth(value)
    assert p.json_depth(text.encode("utf-8")) == _value_depth(value)


def test_a_wide_shallow_frame_is_accepted_and_read_as_the_stdlib_reads_it():
    """Many brackets (a presence reply of 1,000 members) but little depth: accepted, equal."""
    members = [{"client-id": f"c{i}", "uid": f"u{i}", "info": {"tags": [i, [i]]}} for i in range(1000)]
    text = frame_text("chsk/reply", {"members": members}, "c1")
    assert p.json_depth(text) == 7
    assert p.decode(text.encode("utf-8")).data == {"members": members}
    deep_in_wide = frame_text("app/x", [nested(LIMIT - 1)] + members)
    with pytest.raises(p.FrameError, match="MAX_JSON_DEPTH"):
        p.decode(deep_in_wide.encode("utf-8"))

"""A client reads channel messages (most of its frames) by a shorter path: once parsed, a
frame that starts as a channel message skips the general frame checks. Whatever the frame
holds, that path must give exactly what the general path gives: same events, same frames
to send, same counters, the same subscription state after."""

from __future__ import annotations

import json
import math
from typing import Any, List, Tuple

from hypothesis import given, settings
from hypothesis import strategies as st

from sente_lite.session import NOT_CHANNEL_MSG, ClientSession, Received, _ClientSub
from sente_lite.wire import protocol as p

HEAD = f'["{p.EV_CHANNEL_MSG}",'

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(1 << 70), max_value=1 << 70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
    st.just({"$bytes": "aGk="}), st.just({"$bytes": "not base64!"}))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8)


def session(bytes_on: bool) -> ClientSession:
    s = ClientSession("c1")
    s.bytes_on = bytes_on
    s._subs["events"] = _ClientSub(epoch="e1", last_offset=5)
    s._subs["other"] = _ClientSub()
    return s


def outcome(s: ClientSession, got: Any) -> Tuple[Any, ...]:
    subs = {k: (v.epoch, v.last_offset) for k, v in s._subs.items()}
    return got, dict(s.counts), subs, s.last_recv


def by_channel_message(raw: bytes, bytes_on: bool) -> Tuple[Any, ...]:
    """What a client that reads sockets does: :meth:`ClientSession.channel_message` first,
    :meth:`ClientSession.receive` for the frames it leaves."""
    s = session(bytes_on)
    msg = s.channel_message(raw, 1.0, False)
    got = s.receive(raw, 1.0, False) if msg is NOT_CHANNEL_MSG else Received(
        [] if msg is None else [msg], [])
    return outcome(s, got)


def both(text: str, bytes_on: bool) -> Tuple[Any, Any]:
    """(fast path, general path) outcome of one frame on fresh sessions: the general
    path is taken by the same JSON with a leading space, which does not match the head.
    The shortest path (channel_message, then receive) must match the fast one."""
    out = []
    for raw in (text.encode(), (" " + text).encode()):
        s = session(bytes_on)
        out.append(outcome(s, s.receive(raw, 1.0, False)))
    assert by_channel_message(text.encode(), bytes_on) == out[0], text
    return out[0], out[1]


def frames_of(data: Any) -> List[str]:
    """Channel-message frames around ``data``: well formed and not."""
    body = {"channel-id": "events", "data": data, "from": "u1", "offset": 6, "epoch": "e1"}
    return [
        json.dumps([p.EV_CHANNEL_MSG, body], separators=(",", ":")),
        json.dumps([p.EV_CHANNEL_MSG, body, "cb-1"], separators=(",", ":")),
        json.dumps([p.EV_CHANNEL_MSG, body, 7], separators=(",", ":")),
        json.dumps([p.EV_CHANNEL_MSG, body, "cb-1", 4], separators=(",", ":")),
        json.dumps([p.EV_CHANNEL_MSG, data], separators=(",", ":")),
    ]


@settings(max_examples=300, deadline=None)
@given(data=json_value, bytes_on=st.booleans())
def test_any_channel_message_reads_the_same_on_both_paths(data: Any, bytes_on: bool) -> None:
    for text in frames_of(data):
        assert text.startswith(HEAD)
        fast, general = both(text, bytes_on)
        assert fast == general, text


@settings(max_examples=200, deadline=None)
@given(offset=st.one_of(st.integers(min_value=-3, max_value=1 << 66), st.floats(),
                        st.text(max_size=3), st.none()),
       channel=st.one_of(st.sampled_from(["events", "other", "nope"]), st.integers()),
       epoch=st.one_of(st.sampled_from(["e1", "e2"]), st.none(), st.integers()))
def test_fields_of_any_type_are_judged_the_same(offset: Any, channel: Any, epoch: Any) -> None:
    body = {"channel-id": channel, "data": 1, "offset": offset, "epoch": epoch}
    if isinstance(offset, float) and not math.isfinite(offset):
        text = HEAD + '{"channel-id":"events","data":1,"offset":' + (
            "NaN" if math.isnan(offset) else "1e999") + ',"epoch":"e1"}]'
    else:
        text = json.dumps([p.EV_CHANNEL_MSG, body], separators=(",", ":"))
    fast, general = both(text, False)
    assert fast == general, text


def test_broken_frames_that_start_as_channel_messages_are_refused_alike() -> None:
    for text in [HEAD, HEAD + "{", HEAD + '{"offset":1}', HEAD + "1]", HEAD + '{}],"x"]',
                 HEAD + '{"a":1}] ', HEAD + '{"a":"\\ud800"}]', HEAD + '{"a":' + "9" * 30 + "}]",
                 HEAD + "[" * (p.MAX_JSON_DEPTH + 5) + "]" * (p.MAX_JSON_DEPTH + 5) + "]"]:
        fast, general = both(text, True)
        assert fast == general, text


def test_a_channel_message_is_delivered_and_counted() -> None:
    """The fast path is not a no-op: a good message arrives, a stale one is a duplicate."""
    s = session(False)
    good = json.dumps([p.EV_CHANNEL_MSG, {"channel-id": "events", "data": {"n": 1},
                                          "from": "u2", "offset": 6, "epoch": "e1"}]).encode()
    got = s.receive(good, 1.0, False)
    assert [(m.channel_id, m.data, m.offset) for m in got.events] == [("events", {"n": 1}, 6)]
    assert s.receive(good, 1.0, False).events == []
    assert s.counts == {"channel_msgs": 1, "duplicate_channel_msgs": 1}
    assert s.receive(good.decode(), 1.0, None).events == []  # text frames take it too
    assert s.counts["duplicate_channel_msgs"] == 2


def test_channel_message_leaves_every_other_frame_to_receive() -> None:
    """Binary frames, text (str) frames, other events and batches are not taken, and
    leave the session untouched (receive() then reads them, once)."""
    good = json.dumps([p.EV_CHANNEL_MSG, {"channel-id": "events", "data": 1, "from": "u2",
                                          "offset": 6, "epoch": "e1"}])
    others = [(good.encode(), True), (good, False),
              (json.dumps([p.EV_PING]).encode(), False),
              (json.dumps([p.EV_BATCH, [json.loads(good)]]).encode(), False)]
    for raw, binary in others:
        s = session(False)
        assert s.channel_message(raw, 2.0, binary) is NOT_CHANNEL_MSG, raw
        assert s.counts == {} and s.last_recv == 0.0
        assert s._subs["events"].last_offset == 5


def test_channel_message_takes_a_message_once_and_counts_the_rest() -> None:
    s = session(False)
    raw = json.dumps([p.EV_CHANNEL_MSG, {"channel-id": "events", "data": [1], "from": "u2",
                                         "offset": 6, "epoch": "e1"}]).encode()
    msg = s.channel_message(raw, 3.0, False)
    assert (msg.channel_id, msg.data, msg.from_uid, msg.offset, msg.epoch,
            msg.traceparent) == ("events", [1], "u2", 6, "e1", None)
    assert type(msg).__name__ == "ChannelMessage" and msg._asdict()["offset"] == 6
    assert s.last_recv == 3.0
    assert s.channel_message(raw, 4.0, False) is None  # a duplicate: dropped, counted
    assert s.counts == {"channel_msgs": 1, "duplicate_channel_msgs": 1}
    stray = raw.replace(b'"events"', b'"nope"')
    assert s.channel_message(stray, 5.0, False) is None
    assert s.counts["unsubscribed_channel_msgs"] == 1

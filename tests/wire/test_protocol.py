"""Codec: frames <-> events, every class of bad frame, channel-id validation."""

from __future__ import annotations

import json
import math


import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sente_lite.wire import protocol as p
from sente_lite.errors import EncodeError, FrameError
from support import decode_path  # noqa: F401  (every test on both decode paths)



json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 63), 2 ** 63)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)
name_part = st.text(alphabet="abcXYZ019_.-", min_size=1, max_size=64)
event_ids = st.builds(lambda a, b: f"{a}/{b}", name_part, name_part)
cb_ids = st.text(min_size=1, max_size=64)


# -- encode / decode round trips ------------------------------------------------

@given(event=event_ids, data=json_values, cb_id=st.none() | cb_ids)
@settings(max_examples=200, deadline=None)
def test_round_trip(event: str, data: object, cb_id: object) -> None:
    frame = p.decode(p.encode(event, data, cb_id))
    assert frame == p.Frame(event, data, cb_id)
    assert p.decode(p.encode_bytes(event, data, cb_id)) == frame


def test_encode_shapes() -> None:
    assert json.loads(p.encode("app/a")) == ["app/a"]
    assert json.loads(p.encode("app/a", {"x": 1})) == ["app/a", {"x": 1}]
    assert json.loads(p.encode("app/a", None, "c1")) == ["app/a", None, "c1"]
    assert p.encode("app/a", {"k": [1, 2]}) == '["app/a",{"k":[1,2]}]'  # compact


def test_encode_keeps_unicode_readable() -> None:
    text = p.encode("app/a", "héllo ✓")
    assert "héllo ✓" in text
    assert p.decode(text.encode("utf-8")).data == "héllo ✓"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, {1, 2}, object(),
                                 {"$bytes": "Ynl0ZXM="}])
def test_encode_refuses_non_json(bad: object) -> None:
    with pytest.raises(EncodeError):
        p.encode("app/a", bad)


def test_encode_refuses_unencodable_text() -> None:
    # A lone surrogate cannot go out in a UTF-8 text frame.
    with pytest.raises(EncodeError):
        p.encode_bytes("app/a", "\ud800")


def test_decode_accepts_memoryview_and_bytearray() -> None:
    raw = b'["app/a",1,"c"]'
    assert p.decode(bytearray(raw)) == p.Frame("app/a", 1, "c")
    assert p.decode(memoryview(raw)) == p.Frame("app/a", 1, "c")


def test_decode_null_data_forms() -> None:
    assert p.decode('["app/a"]') == p.Frame("app/a", None, None)
    assert p.decode('["app/a",null]') == p.Frame("app/a", None, None)


# -- bad frames ----------------------------------------------------------------

BAD_FRAMES_WITHOUT_CB = {
    "not json": "hello",
    "empty": "",
    "truncated": '["app/a", {',
    "NaN": '["app/a", NaN]',
    "Infinity": '["app/a", Infinity]',
    "-Infinity": '["app/a", -Infinity]',
    "object": '{"event": "app/a"}',
    "string": '"app/a"',
    "number": "42",
    "null": "null",
    "arity 0": "[]",
    "arity 4": '["app/a", 1, "c1", 2]',
    "event not a string": "[1, 2]",
    "event no namespace": '["nonamespace"]',
    "event empty part": '["/name"]',
    "event three parts": '["a/b/c"]',
    "event bad char": '["app/na me"]',
    "event part too long": json.dumps(["a" * 65 + "/b"]),
    "cb-id empty": '["app/a", 1, ""]',
    "cb-id not a string": '["app/a", 1, 7]',
    "cb-id null": '["app/a", 1, null]',
    "cb-id too long": json.dumps(["app/a", 1, "c" * 65]),
    "deep nesting": "[" * 100_000,
    "deep nesting closed": "[" * 100_000 + "]" * 100_000,
    "deep object nesting": '{"a":' * 100_000 + "1" + "}" * 100_000,
    "huge int": '["app/a", 1' + "0" * 10_000 + "]",
    "float out of range": '["app/a", 1e400]',
    "negative float out of range": '["sente-lite/publish", {"channel-id": "c", "data": -1e400}]',
    "long float out of range": '["app/a", 1' + "0" * 400 + '.5]',
    "lone surrogate": '["app/a", "\\ud800"]',
    "lone low surrogate in key": '["app/a", {"\\udc00": 1}]',
}


@pytest.mark.parametrize("text", list(BAD_FRAMES_WITHOUT_CB.values()), ids=list(BAD_FRAMES_WITHOUT_CB))
def test_bad_frame_without_usable_cb_id(text: str) -> None:
    with pytest.raises(FrameError) as info:
        p.decode(text)
    assert info.value.code == "bad-frame" == p.ERR_BAD_FRAME
    assert info.value.message
    assert info.value.cb_id is None


@pytest.mark.parametrize("text", [
    '["bad event", 1, "cb-7"]',
    '[17, null, "cb-7"]',
    '["a/b/c", {}, "cb-7"]',
    '["", {}, "cb-7"]',
])
def test_bad_event_id_keeps_usable_cb_id(text: str) -> None:
    with pytest.raises(FrameError) as info:
        p.decode(text)
    assert info.value.cb_id == "cb-7"
    assert "event-id" in info.value.message


@pytest.mark.parametrize("raw", [b'["app/a", "\xff"]', b"\xc3\x28", b'["app/a", "\xed\xa0\x80"]'])
def test_invalid_utf8_bytes(raw: bytes) -> None:
    with pytest.raises(FrameError) as info:
        p.decode(raw)
    assert "UTF-8" in info.value.message


def test_non_text_input_is_a_frame_error() -> None:
    with pytest.raises(FrameError):
        p.decode(12345)  # type: ignore[arg-type]


def test_paired_surrogate_escape_is_fine() -> None:
    assert p.decode('["app/a", "\\ud83d\\ude00"]').data == "\U0001F600"


def test_big_but_allowed_numbers_decode() -> None:
    assert p.decode('["app/a", ' + "9" * 4000 + "]").data == int("9" * 4000)
    assert p.decode('["app/a", [1e308, -1e308, 1e-400, 12345678901234567890]]').data == [
        1e308, -1e308, 0.0, 12345678901234567890]


@given(st.one_of(st.binary(max_size=300), st.text(max_size=300),
                 st.lists(st.one_of(json_values, event_ids, cb_ids), max_size=5).map(json.dumps),
                 st.builds(lambda e, d, c: json.dumps([e, d, c]), st.text(max_size=70), json_values,
                           st.one_of(st.text(max_size=70), st.integers(), st.none()))))
@settings(max_examples=400, deadline=None)
def test_decode_never_raises_anything_but_frame_error(raw: object) -> None:
    try:
        frame = p.decode(raw)  # type: ignore[arg-type]
    except FrameError as exc:
        assert exc.code == "bad-frame"
        assert exc.cb_id is None or p.is_valid_cb_id(exc.cb_id)
        return
    assert isinstance(frame, p.Frame)
    assert p.is_valid_event_id(frame.event)
    assert frame.cb_id is None or p.is_valid_cb_id(frame.cb_id)
    # whatever decodes can be sent on again
    assert p.decode(p.encode_bytes(frame.event, frame.data, frame.cb_id)) == frame


# -- names and validation ------------------------------------------------------

def test_event_id_rules() -> None:
    assert p.is_valid_event_id("app/x")
    assert p.is_valid_event_id("A-b_c.9/" + "z" * 64)
    for bad in ("app", "app/", "/x", "a/b/c", "app/x y", "app/é", None, 3, "a" * 65 + "/x"):
        assert not p.is_valid_event_id(bad), bad


def test_reserved_namespaces() -> None:
    assert p.is_reserved("chsk/anything")
    assert p.is_reserved("sente-lite/anything")
    assert not p.is_reserved("app/handshake")
    assert not p.is_reserved("chsk2/x")


def test_channel_id_problem() -> None:
    assert p.channel_id_problem("room-1") is None
    assert p.channel_id_problem("ü/ñ spaces ok") is None
    assert p.channel_id_problem("x" * 256) is None
    assert "string" in p.channel_id_problem(5)  # type: ignore[operator]
    assert "string" in p.channel_id_problem(None)  # type: ignore[operator]
    assert "empty" in p.channel_id_problem("")  # type: ignore[operator]
    assert "256" in p.channel_id_problem("x" * 257)  # type: ignore[operator]
    assert "control" in p.channel_id_problem("a\nb")  # type: ignore[operator]
    assert "control" in p.channel_id_problem("a\x00b")  # type: ignore[operator]
    assert "control" in p.channel_id_problem("a\x7fb")  # type: ignore[operator]
    assert "10" in p.channel_id_problem("x" * 11, max_chars=10)  # type: ignore[operator]


def test_error_frames() -> None:
    assert json.loads(p.encode_error("no-handler", "m", "c1")) == [
        "chsk/error", {"code": "no-handler", "message": "m"}, "c1"]
    assert json.loads(p.encode_error("unknown-event", "m", event="chsk/x")) == [
        "chsk/error", {"code": "unknown-event", "message": "m", "event": "chsk/x"}]

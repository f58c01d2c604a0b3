"""The console's bencode codec: round trips against an independent implementation
(bencode.py from PyPI), and a decoder that fails clearly and within bounds on any input."""

from __future__ import annotations

import bencode as reference  # bencode.py, the [test] extra
import pytest
from hypothesis import given, settings, strategies as st

from sente_lite.console.bencode import (DEFAULT_MAX_DEPTH, BencodeError, Decoder, decode, encode)

texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)))
values = st.recursive(
    st.integers() | texts | st.binary().filter(lambda b: not _utf8(b)),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(texts, inner, max_size=5),
    max_leaves=30)


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


@settings(max_examples=300, deadline=None)
@given(values)
def test_every_value_round_trips_and_matches_the_reference(value):
    data = encode(value)
    assert decode(data) == value
    assert reference.bencode(value) == data  # the same bytes as an independent encoder
    assert _plain(reference.bdecode(data)) == value  # which reads ours back the same


@settings(max_examples=300, deadline=None)
@given(values)
def test_what_the_reference_writes_we_read_and_write_back_byte_for_byte(value):
    data = reference.bencode(value)
    assert encode(decode(data)) == data
    assert decode(data, text=False) == _raw(value)


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _raw(value):
    if isinstance(value, dict):
        return {k.encode(): _raw(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_raw(v) for v in value]
    return value.encode() if isinstance(value, str) else value


@settings(max_examples=200, deadline=None)
@given(values, st.lists(st.integers(1, 50), max_size=20))
def test_a_stream_split_anywhere_decodes_to_the_same_messages(value, cuts):
    data = encode([value]) + encode({"op": "eval"}) + encode(7)
    decoder, got, pos = Decoder(), [], 0
    for cut in cuts + [len(data)]:
        got += decoder.feed(data[pos:pos + cut])
        pos += cut
    got += decoder.feed(data[pos:])
    assert got == [[value], {"op": "eval"}, 7]
    assert decoder.buffered == 0


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_bencode_error(data):
    try:
        decode(data)
    except BencodeError as exc:
        assert str(exc)


@pytest.mark.parametrize("data, words", [
    (b"i01e", "not canonical"), (b"i-0e", "not canonical"), (b"ie", "bad integer"),
    (b"i12x4e", "bad integer"), (b"d1:ai1e1:ai2ee", "twice"), (b"di1ei2ee", "not a string"),
    (b"x", "unexpected byte"), (b"i1ei2e", "after the value"), (b"01:a", "not canonical"),
    (b"i" + b"9" * 5000 + b"e", "more than"), (b"9" * 40 + b":a", "more than"),
    (b"5000000:abc", "over max_message_bytes"), (b"l" * 10_000 + b"e" * 10_000, "max_depth"),
    (b"d" + b"1:a" + b"l" * 10_000, "max_depth"), (b"3:ab", "ends"), (b"l", "ends"), (b"i-", "ends"),
])
def test_bad_input_names_what_is_wrong(data, words):
    with pytest.raises(BencodeError, match=words):
        decode(data)


def test_limits_are_settings():
    assert decode(b"l" * 3 + b"e" * 3, max_depth=3) == [[[]]]
    with pytest.raises(BencodeError, match="max_depth"):
        decode(b"l" * 4 + b"e" * 4, max_depth=3)
    with pytest.raises(BencodeError, match="max_message_bytes"):
        decode(b"5:abcde", max_message_bytes=6)
    with pytest.raises(BencodeError, match="max_int_digits"):
        decode(b"i1234e", max_int_digits=3)
    with pytest.raises(ValueError, match="max_depth"):
        Decoder(max_depth=0)


def test_the_stream_decoder_refuses_a_length_beyond_its_limit_before_buffering_it():
    decoder = Decoder(max_message_bytes=1000)
    with pytest.raises(BencodeError, match="over max_message_bytes"):
        decoder.feed(b"999999:")  # announced, not sent: refused at once
    assert decoder.buffered == 0
    with pytest.raises(BencodeError):  # the stream stays failed
        decoder.feed(b"i1e")


def test_the_stream_decoder_holds_at_most_max_message_bytes():
    decoder = Decoder(max_message_bytes=1000)
    assert decoder.feed(b"l" + b"i1e" * 300) == []
    with pytest.raises(BencodeError, match="max_message_bytes"):
        decoder.feed(b"i1e" * 100)
    assert decoder.buffered == 0


@pytest.mark.parametrize("value, words", [
    (None, "no NoneType"), (True, "no bool"), (1.5, "float"), ({1: 2}, "keys must be strings"),
    ({"a": 1, b"a": 2}, "twice"), ([object()], "object"),
])
def test_values_bencode_cannot_carry_are_refused(value, words):
    with pytest.raises(BencodeError, match=words):
        encode(value)


def test_deep_nesting_is_refused_without_exhausting_the_stack():
    assert decode(b"l" * DEFAULT_MAX_DEPTH + b"e" * DEFAULT_MAX_DEPTH)
    for n in (DEFAULT_MAX_DEPTH + 1, 100_000):
        with pytest.raises(BencodeError, match="max_depth"):
            decode(b"l" * n + b"e" * n)

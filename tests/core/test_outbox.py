"""The outbox alone: order, partial writes, the limit, delayed writes, dropping.

Driven with a fake write function (the outbox takes one by design), no socket.
"""

from __future__ import annotations

from typing import List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sente_lite.core.outbox import MAX_WRITE_BYTES, Outbox, Overflow


class Kernel:
    """Takes at most ``room`` bytes per write (0: would block); keeps what it took."""

    def __init__(self, room: int = 1 << 30) -> None:
        self.room = room
        self.taken = bytearray()
        self.calls = 0

    def write(self, data: bytes) -> int:
        self.calls += 1
        n = min(self.room, len(data))
        self.taken += data[:n]
        return n


def test_writes_at_once_when_nothing_waits() -> None:
    k = Kernel()
    box = Outbox(k.write, limit=100)
    assert box.push(b"A") is True
    assert bytes(k.taken) == b"A" and not box and box.writes == 1


def test_a_partial_write_keeps_order_and_loses_nothing() -> None:
    k = Kernel(room=2)
    box = Outbox(k.write, limit=100)
    assert box.push(b"BBBB") is False           # 2 bytes out, 2 wait
    assert box.queued_bytes == 2
    k.room = 1 << 30
    assert box.push(b"C") is False              # the rest of B is waiting: C goes behind it
    assert k.taken == b"BB"
    assert box.flush() is True
    assert bytes(k.taken) == b"BBBBC"


def test_flush_joins_chunks_into_few_writes() -> None:
    k = Kernel(room=0)
    box = Outbox(k.write, limit=1 << 20)
    box.push(b"x")
    for i in range(100):
        box.push(b"%d," % i)
    k.room = 1 << 30
    calls = k.calls
    assert box.flush() is True
    assert k.calls - calls == 1                  # one write for 101 chunks
    assert bytes(k.taken) == b"x" + b"".join(b"%d," % i for i in range(100))


def test_flush_writes_at_most_max_write_bytes_per_joined_write() -> None:
    k = Kernel(room=0)
    box = Outbox(k.write, limit=1 << 24)
    box.push(b"h")
    chunk = b"z" * 4096
    for _ in range(3 * MAX_WRITE_BYTES // 4096):
        box.push(chunk)
    k.room = 1 << 30
    calls = k.calls
    box.flush()
    assert 3 <= k.calls - calls <= 5
    assert len(k.taken) == 1 + 3 * MAX_WRITE_BYTES


def test_the_limit_raises_overflow_and_keeps_what_was_accepted() -> None:
    k = Kernel(room=0)
    box = Outbox(k.write, limit=10)
    box.push(b"12345")
    box.push(b"67890")
    with pytest.raises(Overflow):
        box.push(b"!")
    k.room = 1 << 30
    box.flush()
    assert bytes(k.taken) == b"1234567890"


def test_drop_unsent_keeps_a_chunk_already_begun() -> None:
    k = Kernel(room=3)
    box = Outbox(k.write, limit=100)
    box.push(b"abcdef")                          # "abc" out, "def" must still go: the stream stays whole
    k.room = 0
    box.push(b"ghi")
    assert box.drop_unsent() == 3
    k.room = 1 << 30
    box.flush()
    assert bytes(k.taken) == b"abcdef"


def test_drop_unsent_drops_everything_when_nothing_was_begun() -> None:
    k = Kernel(room=0)
    box = Outbox(k.write, limit=100)
    box.push(b"abc")
    box.push(b"def")
    assert box.drop_unsent() == 6 and not box


def test_a_delayed_write_holds_frames_until_due_then_sends_them_together() -> None:
    k = Kernel()
    box = Outbox(k.write, limit=100, delay_ns=1_000)
    assert box.push(b"a", now_ns=10_000) is True     # idle long enough: at once
    assert box.push(b"b", now_ns=10_100) is False    # 100 ns after a write: held
    assert box.due_ns == 11_000
    assert box.push(b"c", now_ns=10_200) is False
    assert bytes(k.taken) == b"a"
    assert box.flush(now_ns=11_000) is True
    assert bytes(k.taken) == b"abc" and box.writes == 2
    assert box.push(b"d", now_ns=20_000) is True     # a quiet spell: at once again


@settings(max_examples=200, deadline=None)
@given(chunks=st.lists(st.binary(min_size=1, max_size=50), min_size=1, max_size=30),
       rooms=st.lists(st.integers(min_value=0, max_value=60), min_size=1, max_size=60))
def test_any_write_sizes_deliver_every_byte_in_order(chunks: List[bytes], rooms: List[int]) -> None:
    k = Kernel()
    box = Outbox(k.write, limit=1 << 20)
    it = iter(rooms * 10)
    for chunk in chunks:
        k.room = next(it, 1 << 30)
        box.push(chunk)
        k.room = next(it, 1 << 30)
        box.flush()
    k.room = 1 << 30
    assert box.flush() is True
    assert bytes(k.taken) == b"".join(chunks)

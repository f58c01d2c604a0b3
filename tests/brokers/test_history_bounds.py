"""History bounded in bytes (per channel and in total) and replays bounded, paged and
stopped (PROTOCOL 9): the registry itself, no sockets."""

from __future__ import annotations

import threading
from typing import Any, Dict, Hashable, List, Optional, Tuple

import pytest

from sente_lite.brokers.local import ChannelRegistry, RecoveryResult, Since
from sente_lite.counters import Counter, Counters
from sente_lite.discovery import wait_for
from support import WAIT_S


def frame(size: int, fill: bytes = b"x") -> Any:
    def make(offset: int, epoch: str) -> bytes:
        head = f"{offset}:".encode()
        return head + fill * max(0, size - len(head))
    return make


def offset_of(f: bytes) -> int:
    return int(f.split(b":", 1)[0])


class Sink:
    """Frames delivered, per member, in order; refuses once ``refuse_after`` were taken."""

    def __init__(self, refuse_after: Optional[int] = None) -> None:
        self.got: Dict[Hashable, List[int]] = {}
        self.calls = 0
        self.refuse_after = refuse_after

    def __call__(self, member: Hashable, f: bytes) -> bool:
        self.calls += 1
        if self.refuse_after is not None and self.calls > self.refuse_after:
            return False
        self.got.setdefault(member, []).append(offset_of(f))
        return True


def kept(reg: ChannelRegistry, name: str) -> List[int]:
    return [o for o, _ in reg.history_of(name)]


def registry(**kwargs: Any) -> Tuple[ChannelRegistry, Counters]:
    counters = Counters()
    return ChannelRegistry("srv", counters=counters, **kwargs), counters


# -- 9(a): bytes ------------------------------------------------------------------------
@pytest.mark.parametrize("sizes", [
    [4000] * 30,                       # large messages
    [7] * 5000,                        # many small ones
    [100, 9000, 50, 30_000, 20, 3000],  # mixed, one larger than the whole bound
])
def test_one_channels_history_is_bounded_in_bytes(sizes: List[int]) -> None:
    bound = 10_000
    reg, counters = registry(history_size=100_000, history_max_bytes_per_channel=bound)
    for size in sizes:
        reg.publish("c", frame(size), lambda m, f: True)
        held = reg.stats()["history_bytes"]
        assert held <= bound
        assert sum(len(f) for _, f in reg.history_of("c")) == held
    offsets = kept(reg, "c")
    top = len(sizes)
    # the newest messages are kept, contiguous up to the top
    assert offsets == list(range(top - len(offsets) + 1, top + 1))
    assert counters.get(Counter.HISTORY_BYTES_EVICTED) == top - len(offsets) > 0


def test_every_channel_together_is_bounded_in_bytes_oldest_first() -> None:
    total = 50_000
    reg, counters = registry(history_max_bytes_total=total)
    for n in range(500):
        reg.publish(f"ch-{n}", frame(1000), lambda m, f: True)
        assert reg.stats()["history_bytes"] <= total
    held = sum(len(f) for n in range(500) for _, f in reg.history_of(f"ch-{n}"))
    assert held == reg.stats()["history_bytes"] <= total
    assert kept(reg, "ch-0") == [] and kept(reg, "ch-499") == [1]  # the oldest went first
    assert counters.get(Counter.HISTORY_BYTES_EVICTED) >= 450


def test_the_total_bound_holds_under_concurrent_publishers() -> None:
    total = 40_000
    reg, _ = registry(history_max_bytes_total=total, history_max_bytes_per_channel=8_000)

    def publisher(w: int) -> None:
        for n in range(300):
            reg.publish(f"w{w}-{n % 7}", frame(300 + 97 * (n % 13)), lambda m, f: True)

    threads = [threading.Thread(target=publisher, args=(w,), name=f"test-pub-{w}", daemon=True)
               for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    # trimming takes other channels' locks: a publish finding one taken must still run
    assert not any(t.is_alive() for t in threads), "a publish never completed"
    held = reg.stats()["history_bytes"]
    assert held <= total
    assert held == sum(len(f) for w in range(4) for k in range(7)
                       for _, f in reg.history_of(f"w{w}-{k}"))
    for w in range(4):
        for k in range(7):
            offsets = kept(reg, f"w{w}-{k}")
            assert offsets == list(range(offsets[0], offsets[0] + len(offsets))) if offsets else True
            assert sum(len(f) for _, f in reg.history_of(f"w{w}-{k}")) <= 8_000


def test_forgotten_idle_channels_release_their_bytes() -> None:
    reg, _ = registry(max_idle_channels=2)
    for n in range(10):
        for _ in range(3):
            reg.publish(f"ch-{n}", frame(500), lambda m, f: True)
    assert reg.stats()["history_bytes"] == 2 * 3 * 500


@pytest.mark.parametrize("kwargs", [
    {"history_max_bytes_per_channel": 0}, {"history_max_bytes_per_channel": -5},
    {"history_max_bytes_per_channel": 1.5}, {"history_max_bytes_total": 0},
    {"history_max_bytes_total": "1000"}, {"history_max_bytes_total": True},
    {"max_replay_per_subscribe": -1}, {"max_replay_per_subscribe": None},
])
def test_byte_and_replay_settings_are_validated(kwargs: Dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ChannelRegistry("srv", **kwargs)


def test_a_since_older_than_what_bytes_kept_is_history_expired_and_newer_is_exact() -> None:
    reg, _ = registry(history_max_bytes_per_channel=5 * 1000)
    epoch = reg.publish("c", frame(1000), lambda m, f: True).epoch  # type: ignore[union-attr]
    for _ in range(19):
        reg.publish("c", frame(1000), lambda m, f: True)
    assert kept(reg, "c") == [16, 17, 18, 19, 20]
    for since in (0, 5, 14):
        _, _, _, rec = reg.subscribe(f"old-{since}", "c", since=Since(since, epoch),
                                     deliver=Sink())
        assert rec == RecoveryResult(False, "history-expired", 0)
    sink = Sink()
    _, _, _, rec = reg.subscribe("fresh", "c", since=Since(15, epoch), deliver=sink)
    assert rec == RecoveryResult(True, None, 5)
    assert sink.got["fresh"] == [16, 17, 18, 19, 20]


# -- 10: replays ------------------------------------------------------------------------
def test_a_replay_longer_than_the_limit_is_not_recovered_and_replays_nothing() -> None:
    reg, counters = registry(max_replay_per_subscribe=10)
    epoch = reg.publish("c", frame(10), lambda m, f: True).epoch  # type: ignore[union-attr]
    for _ in range(49):
        reg.publish("c", frame(10), lambda m, f: True)
    sink = Sink()
    for since in (0, 39):
        _, _, _, rec = reg.subscribe(f"m{since}", "c", since=Since(since, epoch), deliver=sink)
        assert rec == RecoveryResult(False, "replay-limit", 0)
    _, _, _, rec = reg.subscribe("ok", "c", since=Since(40, epoch), deliver=sink)
    assert rec == RecoveryResult(True, None, 10)
    assert sink.got == {"ok": list(range(41, 51))}
    # a smaller budget (the connection's rate) bounds it too
    _, _, _, rec = reg.subscribe("poor", "c", since=Since(45, epoch), deliver=sink,
                                 replay_budget=4)
    assert rec == RecoveryResult(False, "replay-limit", 0)
    assert counters.get(Counter.REPLAYED_MESSAGES) == 10


def test_a_held_channel_is_never_replayed_again() -> None:
    reg, counters = registry()
    epoch = reg.publish("c", frame(10), lambda m, f: True).epoch  # type: ignore[union-attr]
    for _ in range(99):
        reg.publish("c", frame(10), lambda m, f: True)
    sink = Sink()
    answers: List[Any] = []
    reg.subscribe("m", "c", lambda o, e, r: answers.append(r), since=Since(0, epoch), deliver=sink)
    for since in (0, 50, 99):
        _, _, added, rec = reg.subscribe("m", "c", lambda o, e, r: answers.append(r),
                                         since=Since(since, epoch), deliver=sink)
        assert not added and rec == RecoveryResult(False, "already-subscribed", 0)
    assert answers[0] == RecoveryResult(True, None, 100) and len(answers) == 4
    assert sink.got["m"] == list(range(1, 101))
    assert counters.get(Counter.REPLAYED_MESSAGES) == 100
    reg.publish("c", frame(10), sink)
    assert sink.got["m"][-2:] == [100, 101]  # still subscribed, once


def test_a_replay_stops_at_the_first_frame_refused() -> None:
    reg, counters = registry(history_size=5000, max_replay_per_subscribe=5000)
    epoch = reg.publish("c", frame(10), lambda m, f: True).epoch  # type: ignore[union-attr]
    for _ in range(2999):
        reg.publish("c", frame(10), lambda m, f: True)
    sink = Sink(refuse_after=70)
    _, _, _, rec = reg.subscribe("m", "c", since=Since(0, epoch), deliver=sink)
    assert rec is not None and rec.recovered
    assert sink.calls == 71  # not one more try after the refusal
    assert counters.get(Counter.REPLAYED_MESSAGES) == 70
    # the member is left a plain subscriber: removing it is clean
    assert reg.remove_member("m") == ["c"] and reg.subscriber_count("c") == 0


def _publish_from_another_thread(reg: ChannelRegistry, count: int) -> bool:
    """Publish ``count`` messages on "c" from another thread; True when they all went
    through within a few seconds (the channel's lock was free for them)."""
    done = threading.Event()

    def run() -> None:
        for _ in range(count):
            reg.publish("c", frame(10), lambda m, f: True)
        done.set()

    t = threading.Thread(target=run, name="test-publisher", daemon=True)
    t.start()
    return done.wait(5.0)


def test_a_replay_lets_publishes_through_between_pages_with_no_gap_and_no_duplicate() -> None:
    """Publishes racing a long replay get through between its pages, and the subscriber
    gets every message once, in order, across the switch to live ones."""
    reg, _ = registry(history_size=100_000, max_replay_per_subscribe=100_000)
    epoch = reg.publish("c", frame(10), lambda m, f: True).epoch  # type: ignore[union-attr]
    for _ in range(2999):
        reg.publish("c", frame(10), lambda m, f: True)
    got: List[int] = []
    passed: List[bool] = []
    stop = threading.Event()

    def deliver(member: Hashable, f: bytes) -> bool:
        if member == "late":
            got.append(offset_of(f))
            if len(got) % 500 == 1 and len(got) < 2500:
                passed.append(_publish_from_another_thread(reg, 20))
        return True

    def run() -> None:
        while not stop.is_set():
            reg.publish("c", frame(10), deliver)

    t = threading.Thread(target=run, name="test-publisher")
    t.start()
    try:
        reg.subscribe("late", "c", since=Since(0, epoch), deliver=deliver)
        top = reg.publish("c", frame(10), deliver).offset  # type: ignore[union-attr]
        while len(got) < top:
            top = reg.publish("c", frame(10), deliver).offset  # type: ignore[union-attr]
    finally:
        stop.set()
        t.join(WAIT_S)
    assert passed and all(passed), "publishes waited for the whole replay"
    assert got == list(range(1, len(got) + 1))


def test_a_replay_that_history_outruns_says_so_once_and_goes_live() -> None:
    reg, counters = registry(history_size=100)
    epoch = reg.publish("c", frame(10), lambda m, f: True).epoch  # type: ignore[union-attr]
    for _ in range(199):
        reg.publish("c", frame(10), lambda m, f: True)
    got: List[int] = []
    answers: List[Tuple[int, Optional[RecoveryResult]]] = []

    def deliver(member: Hashable, f: bytes) -> bool:
        got.append(offset_of(f))
        if len(got) == 1:  # the first page is out of the lock: the channel moves on by 150
            assert _publish_from_another_thread(reg, 150), "publishes waited for the replay"
        return True

    reg.subscribe("m", "c", lambda o, e, r: answers.append((o, r)), since=Since(110, epoch),
                  deliver=deliver)
    assert answers[0] == (200, RecoveryResult(True, None, 90))
    assert answers[1] == (350, RecoveryResult(False, "history-expired", 0))
    assert got == list(range(111, 111 + 64))  # the first page only
    reg.publish("c", frame(10), deliver)
    assert got[-1] == 351  # live from the notice's top on
    assert counters.get(Counter.UNRECOVERED_SUBSCRIBES) == 1


@pytest.mark.parametrize("reader", ["history_of", "kept", "trim"])
def test_a_publish_queued_behind_a_reader_of_the_channel_runs_when_it_lets_go(reader: str) -> None:
    """A publish that finds its channel's lock taken queues itself for the holder to run.
    Readers of a channel's history (and the total-bytes trim) hold that lock too: the
    publish must run when they let go, not wait forever."""
    reg, _ = registry(history_max_bytes_total=10_000)
    reg.publish("c", frame(100), lambda m, f: True)
    inside, go_on = threading.Event(), threading.Event()
    expire = reg.history.expire

    def slow_expire(ch: Any, now: float) -> None:  # runs under the channel's lock
        if threading.current_thread().name == "test-reader":
            inside.set()
            go_on.wait(WAIT_S)
        expire(ch, now)

    reg.history.expire = slow_expire  # type: ignore[method-assign]
    if reader == "trim":
        def read() -> None:
            ch = reg._channels["c"]
            with reg.holding(ch):
                slow_expire(ch, 0.0)
    else:
        def read() -> None:
            getattr(reg, reader)("c")
    t = threading.Thread(target=read, name="test-reader", daemon=True)
    t.start()
    assert inside.wait(WAIT_S)
    results: List[Any] = []
    pub = threading.Thread(target=lambda: results.append(reg.publish("c", frame(100), lambda m, f: True)),
                           name="test-pub-queued", daemon=True)
    pub.start()
    assert wait_for(lambda: len(reg._channels["c"].pending) == 1 or None, WAIT_S, "the publish to queue")
    go_on.set()
    pub.join(WAIT_S)
    t.join(WAIT_S)
    assert not pub.is_alive(), "the queued publish never ran"
    assert results[0].offset == 2

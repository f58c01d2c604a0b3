"""ChannelRegistry: offsets, epochs, idempotence, eviction, ordering under concurrency."""

from __future__ import annotations

import threading
from typing import Dict, Hashable, List, Tuple

import pytest

from sente_lite.brokers.local import ChannelRegistry, Published
from support import WAIT_S, wait_until


class Sink:
    """A ``deliver`` callback that records (member, offset) per member."""

    def __init__(self) -> None:
        self.got: Dict[Hashable, List[object]] = {}
        self.refuse: set = set()

    def __call__(self, member: Hashable, frame: bytes) -> bool:
        if member in self.refuse:
            return False
        self.got.setdefault(member, []).append(int(frame.split(b":")[1]))
        return True


def frame_of(offset: int, epoch: str) -> bytes:
    return f"{epoch}:{offset}".encode()


def publish(reg: ChannelRegistry, name: str, sink: Sink, exclude: Hashable = None) -> Published:
    return reg.publish(name, frame_of, sink, exclude)


def test_offsets_start_at_1_and_increase_per_channel() -> None:
    reg, sink = ChannelRegistry("srv"), Sink()
    reg.subscribe("m", "a")
    assert [publish(reg, "a", sink).offset for _ in range(3)] == [1, 2, 3]
    assert [publish(reg, "b", sink).offset for _ in range(2)] == [1, 2]
    assert publish(reg, "a", sink).offset == 4
    assert sink.got["m"] == [1, 2, 3, 4]


def test_publish_result_counts_and_exclude() -> None:
    reg, sink = ChannelRegistry("srv"), Sink()
    for m in ("m1", "m2", "m3"):
        reg.subscribe(m, "a")
    r = publish(reg, "a", sink, exclude="m2")
    assert r == Published("a", 1, r.epoch, 2)
    assert "m2" not in sink.got
    sink.refuse.add("m3")  # a member on its way out is not counted
    assert publish(reg, "a", sink).delivered == 2
    assert publish(reg, "empty", sink).delivered == 0


def test_epochs_differ_per_channel_and_per_registry() -> None:
    sink = Sink()
    r1, r2 = ChannelRegistry("s1"), ChannelRegistry("s2")
    e1a, e1b = publish(r1, "a", sink).epoch, publish(r1, "b", sink).epoch
    e2a = publish(r2, "a", sink).epoch
    assert len({e1a, e1b, e2a}) == 3
    assert publish(r1, "a", sink).epoch == e1a  # stable while the channel lives


def test_subscribe_returns_top_offset_and_is_idempotent() -> None:
    reg, sink = ChannelRegistry("srv"), Sink()
    publish(reg, "a", sink)
    publish(reg, "a", sink)
    announced: List[Tuple[int, str]] = []
    offset, epoch, added, _ = reg.subscribe("m", "a", lambda o, e, r: announced.append((o, e)))
    assert (offset, added) == (2, True)
    offset2, epoch2, added2, _ = reg.subscribe("m", "a", lambda o, e, r: announced.append((o, e)))
    assert (offset2, epoch2, added2) == (2, epoch, False)
    assert announced == [(2, epoch), (2, epoch)]
    assert reg.subscriber_count("a") == 1
    assert reg.channels_of("m") == ["a"]
    publish(reg, "a", sink)
    assert sink.got["m"] == [3]  # delivered once, not twice
    assert reg.stats()["subscriptions"] == 1


def test_unsubscribe() -> None:
    reg, sink = ChannelRegistry("srv"), Sink()
    reg.subscribe("m", "a")
    assert reg.unsubscribe("m", "a") is True
    assert reg.unsubscribe("m", "a") is False
    assert reg.unsubscribe("m", "never") is False
    assert publish(reg, "a", sink).delivered == 0
    assert reg.channels_of("m") == []


def test_remove_member_exactly_once() -> None:
    reg, sink = ChannelRegistry("srv"), Sink()
    for name in ("b", "a", "c"):
        reg.subscribe("m", name)
    reg.subscribe("other", "a")
    assert reg.remove_member("m") == ["a", "b", "c"]
    assert reg.remove_member("m") == []
    assert reg.channels_of("m") == []
    assert reg.subscriber_count("a") == 1
    assert reg.stats()["subscriptions"] == 1
    assert publish(reg, "a", sink).delivered == 1


def test_remove_member_concurrently_removes_once() -> None:
    reg = ChannelRegistry("srv")
    names = [f"ch{i}" for i in range(200)]
    for name in names:
        reg.subscribe("m", name)
    results: List[List[str]] = []
    lock = threading.Lock()
    start = threading.Barrier(4)

    def remover() -> None:
        start.wait()
        got = reg.remove_member("m")
        with lock:
            results.append(got)

    threads = [threading.Thread(target=remover) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    removed = sorted(n for r in results for n in r)
    assert removed == sorted(names)
    assert reg.stats()["subscriptions"] == 0


def test_concurrent_publishers_every_member_sees_gapless_increasing_offsets() -> None:
    reg, sink = ChannelRegistry("srv"), Sink()
    members = [f"m{i}" for i in range(5)]
    for m in members:
        reg.subscribe(m, "hot")
    publishers, per_publisher = 6, 500
    start = threading.Barrier(publishers)

    def run() -> None:
        start.wait()
        for _ in range(per_publisher):
            publish(reg, "hot", sink)

    threads = [threading.Thread(target=run) for _ in range(publishers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    total = publishers * per_publisher
    for m in members:
        assert sink.got[m] == list(range(1, total + 1)), m


def test_announce_precedes_every_later_message() -> None:
    """A subscribe racing a publisher: the announce is first, then offset+1, +2, ..."""
    reg = ChannelRegistry("srv")
    log: List[object] = []
    reg.subscribe("anchor", "hot")
    stop = threading.Event()

    def deliver(member: Hashable, frame: bytes) -> bool:
        if member == "late":
            log.append(int(frame.split(b":")[1]))
        return True

    def run() -> None:
        while not stop.is_set():
            reg.publish("hot", frame_of, deliver)

    t = threading.Thread(target=run)
    t.start()
    try:
        # subscribe while publishes are in flight
        while reg.publish("hot", frame_of, deliver).offset < 200:
            pass
        reg.subscribe("late", "hot", lambda o, e, r: log.append(("announce", o)))
        while len(log) < 500:
            reg.publish("hot", frame_of, deliver)
    finally:
        stop.set()
        t.join(10)
    assert log[0][0] == "announce"  # type: ignore[index]
    first = log[0][1]  # type: ignore[index]
    assert first >= 200
    assert log[1:] == list(range(first + 1, first + len(log)))


class WatchedLock:
    """A channel lock that tells when a caller is about to wait for it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiter = threading.Event()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if blocking:
            self.waiter.set()
        return self.lock.acquire(blocking, timeout)

    def release(self) -> None:
        self.lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def test_a_publish_on_a_busy_channel_never_waits_for_the_registry_holding_the_channel() -> None:
    """subscribe/unsubscribe take the registry lock, then the channel's. A publish that
    finds its channel busy is run by the lock's holder, which never takes the registry
    lock: a subscribe waiting meanwhile gets the channel as soon as both are done."""
    reg = ChannelRegistry("srv")
    reg.subscribe("m", "hot")
    watched = WatchedLock()
    reg._channels["hot"].lock = watched  # type: ignore[assignment]
    inside, release = threading.Event(), threading.Event()

    def blocking_deliver(member: Hashable, frame: bytes) -> bool:
        inside.set()
        return release.wait(WAIT_S)

    first = threading.Thread(target=reg.publish, args=("hot", frame_of, blocking_deliver),
                             name="test-pub-holder")
    first.start()
    assert inside.wait(WAIT_S)  # the first publish holds the channel
    result: List[Published] = []
    second = threading.Thread(target=lambda: result.append(reg.publish("hot", frame_of, lambda m, f: True)),
                              name="test-pub-waiter")
    second.start()
    try:
        wait_until(lambda: len(reg._channels["hot"].pending) == 1, what="the second publish queued")
        assert not watched.waiter.is_set()  # it never waits for the channel's lock
        with reg._lock:  # as a subscribe holds it, about to take the channel's lock
            release.set()
            first.join(WAIT_S)
            free = watched.lock.acquire(timeout=WAIT_S)
            if free:
                watched.lock.release()
        assert free, "a publish waits for the registry lock holding its channel's: deadlock"
    finally:
        release.set()
        first.join(WAIT_S)
        second.join(WAIT_S)
    assert not first.is_alive() and not second.is_alive()
    assert [r.offset for r in result] == [2]


def test_idle_channels_are_evicted_and_restart_at_a_new_epoch() -> None:
    reg, sink = ChannelRegistry("srv", max_idle_channels=2), Sink()
    reg.subscribe("m", "busy")
    first_a = publish(reg, "a", sink)
    publish(reg, "a", sink)
    publish(reg, "b", sink)
    publish(reg, "busy", sink)
    assert reg.evicted == 0
    publish(reg, "c", sink)  # third idle channel: the least recently used ("a") goes
    assert reg.evicted == 1
    assert reg.stats()["channels_evicted"] == 1
    again = publish(reg, "a", sink)  # "a" is back: offsets restart under a new epoch
    assert again.offset == 1
    assert again.epoch != first_a.epoch
    assert reg.evicted == 2  # bringing "a" back pushed out "b"
    assert publish(reg, "busy", sink).offset == 2  # channels with subscribers are never evicted
    assert reg.stats()["active_channels"] == 1


def test_channel_becomes_idle_after_last_unsubscribe() -> None:
    reg, sink = ChannelRegistry("srv", max_idle_channels=1), Sink()
    reg.subscribe("m", "a")
    e = publish(reg, "a", sink).epoch
    publish(reg, "b", sink)  # b idle; a has a subscriber
    assert reg.evicted == 0
    reg.unsubscribe("m", "a")  # a idle too: two idle > 1, LRU ("b") evicted
    assert reg.evicted == 1
    assert publish(reg, "a", sink) == Published("a", 2, e, 0)


def test_idle_limit_of_one_keeps_the_last_idle_channel() -> None:
    reg, sink = ChannelRegistry("srv", max_idle_channels=1), Sink()
    assert [publish(reg, "x", sink).offset for _ in range(3)] == [1, 2, 3]
    reg.subscribe("m", "y")  # y is created idle, then taken out of idle by the subscribe
    assert publish(reg, "y", sink).delivered == 1
    assert reg.evicted == 1  # creating y pushed x out
    assert sink.got["m"] == [1]


def test_idle_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_idle_channels"):
        ChannelRegistry("srv", max_idle_channels=0)


def test_publishes_on_a_busy_channel_are_run_by_its_holder_in_order() -> None:
    reg = ChannelRegistry("srv")
    reg.subscribe("m", "hot")
    inside, release = threading.Event(), threading.Event()
    frames: List[bytes] = []

    def deliver(member: Hashable, frame: bytes) -> bool:
        if not inside.is_set():
            inside.set()
            release.wait(WAIT_S)
        frames.append(frame)
        return True

    holder = threading.Thread(target=reg.publish, args=("hot", frame_of, deliver),
                              name="test-pub-holder")
    holder.start()
    assert inside.wait(WAIT_S)
    done: List[Tuple[str, object]] = []
    try:
        for _ in range(5):  # the channel is busy: each returns at once, nothing run yet
            assert reg.publish("hot", frame_of, deliver, done=lambda r: done.append(
                (threading.current_thread().name, r)), wait=False) is None
        assert done == [] and len(reg._channels["hot"].pending) == 5
    finally:
        release.set()
        holder.join(WAIT_S)
    assert [r.offset for _, r in done] == [2, 3, 4, 5, 6]  # type: ignore[attr-defined]
    assert {name for name, _ in done} == {"test-pub-holder"}
    assert all(r.delivered == 1 for _, r in done)  # type: ignore[attr-defined]
    assert frames == [frame_of(i, done[0][1].epoch) for i in range(1, 7)]  # type: ignore[attr-defined]


def test_a_failing_publish_fails_alone() -> None:
    reg, sink = ChannelRegistry("srv"), Sink()
    reg.subscribe("m", "c")
    results: List[object] = []

    def broken(offset: int, epoch: str) -> bytes:
        raise ValueError("broken frame")

    assert reg.publish("c", broken, sink, done=results.append, wait=False) is None
    assert isinstance(results[0], ValueError)
    with pytest.raises(ValueError, match="broken frame"):
        reg.publish("c", broken, sink)
    after = publish(reg, "c", sink)
    assert after.delivered == 1 and not reg._channels["c"].lock.locked()

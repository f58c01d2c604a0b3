"""Connection churn keeps nothing of a closed connection but bounded, documented state:
its objects go at once (no reference cycle of the library's own) or, for the
reference cycles websockets' protocol objects live in, at the network thread's next
collection; registries keyed by connection, user or client-id hold live ones only
(client-ids: at most ``max_remembered_clients``; idle channels: ``max_idle_channels``)."""

from __future__ import annotations

import gc
import time
import tracemalloc
import uuid
from typing import Callable, Dict, Iterator

import pytest
from websockets.server import ServerProtocol

from sente_lite import Server
from sente_lite.server.link import Link
from sente_lite.server.server import Connection
from sente_lite.testing.soak import churn_cycle
from sente_lite.server.writer import GC_QUIET_MIN_ENDED
from support import wait_until

WARM_UP = 300
CYCLES = 1500
REMEMBERED = 200
IDLE_CHANNELS = 20
#: Bytes a churn cycle may leave behind on average (measured: ~5,000 when the objects
#: of closed connections wait for a full collection that never comes).
MAX_BYTES_PER_CYCLE = 400
#: The network thread's last selector key may name the last link it served until its
#: next event: one link, whatever the number of cycles.
LINGERING = 1


def alive(kind: type) -> int:
    return sum(1 for o in gc.get_objects() if type(o) is kind)


@pytest.fixture
def no_automatic_gc() -> Iterator[None]:
    """Python's own collector off: what is freed must be freed by the server."""
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
        gc.collect()


def churn(srv: Server, first: int, count: int) -> None:
    for i in range(first, first + count):
        churn_cycle(srv.port, uuid.uuid4().hex, f"churn-{i % (IDLE_CHANNELS + 10)}")


def baseline() -> Dict[type, int]:
    """Objects of each kind still held by earlier tests of the same process (the test
    counts what its own server leaves, above these)."""
    return {kind: alive(kind) for kind in (ServerProtocol, Link, Connection)}


def drained(srv: Server, before: Dict[type, int]) -> bool:
    loop = srv._loop
    assert loop is not None
    state = {"connections": srv.stats()["connections"], "links": len(loop.links),
             "ServerProtocol": alive(ServerProtocol) - before[ServerProtocol],
             "Link": alive(Link) - before[Link], "Connection": alive(Connection) - before[Connection]}
    LAST_STATE.clear()
    LAST_STATE.update(state)  # named in the failure message when the wait times out
    return (state["connections"] == 0 and not state["links"]
            and state["ServerProtocol"] <= GC_QUIET_MIN_ENDED + 1
            and state["Link"] <= LINGERING and state["Connection"] == 0)


#: What :func:`drained` saw last (a failed wait says which part was not drained).
LAST_STATE: Dict[str, int] = {}


def wait_drained(srv: Server, before: Dict[type, int], what: str, timeout: float = 30.0) -> None:
    """Wait until :func:`drained`, counting objects only right after a collection of the
    server's and never during one.

    Counting holds every object of the process (``gc.get_objects()``) while it runs: a
    collection in the network thread meanwhile finds none of them unreachable. Polled
    back to back, as on a large heap late in a long run, the counts covered every
    collection the server made and its ended links stayed, only for the test's eyes."""
    deadline = time.monotonic() + timeout
    wait_until(lambda: srv.stats()["connections"] == 0 and not srv._loop.links, timeout=timeout,
               what=f"{what}: the connections to end")
    while not drained(srv, before):
        collections = srv.stats().get("garbage_collections", 0)
        while srv.stats().get("garbage_collections", 0) == collections:  # cheap: counts nothing
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not drained after {timeout:.0f} s: {LAST_STATE}")
            time.sleep(0.02)


def test_churn_leaves_no_per_connection_state(make_server: Callable[..., Server],
                                              no_automatic_gc: None) -> None:
    srv = make_server(max_remembered_clients=REMEMBERED, max_idle_channels=IDLE_CHANNELS,
                      close_timeout=0.3, rate_limit=None)
    held = baseline()
    churn(srv, 0, WARM_UP)
    wait_drained(srv, held, "the warm-up's connections")
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        churn(srv, WARM_UP, CYCLES)
        wait_drained(srv, held, "every churned connection's objects")
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown / CYCLES < MAX_BYTES_PER_CYCLE, f"{grown} bytes kept by {CYCLES} closed connections"
    hub = srv._hub
    assert hub.conns == {} and hub.user_count() == 0
    assert len(hub._seen_clients) == REMEMBERED
    stats = srv.stats()
    assert stats["connection_slots"] == 0 and stats["pending_auth"] == 0
    assert stats["subscriptions"] == 0 and stats["channels"] == IDLE_CHANNELS
    assert srv.channels.channels_of("anything") == []
    assert stats["garbage_collections"] >= 1  # the server collected; Python's collector was off


@pytest.mark.parametrize("with_hook", [False, True], ids=["no-hook", "authenticate-hook"])
def test_a_closed_link_is_freed_without_a_collection(make_server: Callable[..., Server],
                                                     no_automatic_gc: None, with_hook: bool) -> None:
    """The library's own objects of a connection are in no reference cycle, and no
    timer (the closing handshake's deadline, the hook's decision deadline) keeps an
    ended one: the last reference gone, they are freed at once (only websockets'
    protocol waits for a collection)."""
    srv = make_server(close_timeout=30.0, handshake_timeout=30.0, rate_limit=None,
                      authenticate=(lambda r: "u") if with_hook else None)
    loop = srv._loop
    assert loop is not None
    loop.closer.collect_garbage = lambda: None  # type: ignore[method-assign]
    churn(srv, 0, 50)
    wait_until(lambda: srv.stats()["connections"] == 0 and not loop.links,
               what="the connections to end")
    # far sooner than the 30 s deadlines: nothing waits for them
    wait_until(lambda: alive(Link) <= LINGERING and alive(Connection) == 0, timeout=10.0,
               what="links and connections freed by their last reference alone")


def test_idle_channels_drop_expired_history_and_publish_ids_untouched(
        make_server: Callable[..., Server]) -> None:
    """Channels left by every subscriber keep their history and publish ids no longer
    than ``history_ttl_s`` / ``publish_dedup_s`` (plus a sweep interval), even when no
    one touches them again: churn of per-user channels holds no stale messages."""
    srv = make_server(history_ttl_s=0.5, publish_dedup_s=0.5, heartbeat_ms=400,
                      max_idle_channels=1000)
    channels = [f"inbox-{i}" for i in range(200)]
    for i, name in enumerate(channels):
        for j in range(3):
            srv._hub.publish(name, str(i * 10 + j), None, None, publish_id=f"id-{i}-{j}")
    stats = srv.stats()
    assert stats["history_messages"] == 600 and stats["publish_ids"] == 600
    wait_until(lambda: srv.stats()["history_messages"] == 0 and srv.stats()["publish_ids"] == 0,
               timeout=10.0, what="expired history and ids of idle channels dropped")
    assert srv.stats()["channels"] == 200  # the channels (offsets, epochs) stay
    assert srv.publish("inbox-7", "again").offset == 4


def test_sweeping_idle_channels_never_strands_a_publish() -> None:
    """Publishes racing the sweep (which holds a channel's lock for a moment) all complete,
    also with one publisher per channel (no later publish runs a stranded one)."""
    import threading

    from sente_lite.brokers.local import ChannelRegistry
    from sente_lite.counters import Counter, Counters

    sweeper = threading.current_thread()

    class SlowSweep(Counters):
        """Counting what the sweep expired takes a moment: it holds the channel's lock
        long enough for publishes to queue behind it."""

        def add(self, counter: Counter, n: int = 1) -> None:
            if threading.current_thread() is sweeper:
                time.sleep(0.001)
            super().add(counter, n)

    reg = ChannelRegistry("e", history_ttl_s=0.002, publish_dedup_s=0.002, counters=SlowSweep())
    results: list = []
    lock = threading.Lock()

    def publisher(k: int) -> None:
        for i in range(1500):
            r = reg.publish(f"c{k}", lambda off, ep: off, lambda m, f: True,
                            publish_id=f"{k}-{i}")
            with lock:
                results.append(r)

    threads = [threading.Thread(target=publisher, args=(k,), name=f"test-pub-{k}", daemon=True)
               for k in range(4)]
    for t in threads:
        t.start()
    swept = 0
    deadline = time.monotonic() + 20.0
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        swept += reg.sweep_idle()
    for t in threads:
        t.join(5.0)
    assert not any(t.is_alive() for t in threads), "a publish never completed"
    assert len(results) == 6000 and all(r is not None for r in results)
    assert swept > 0
    assert [reg.publish(f"c{k}", lambda o, e: o, lambda m, f: True).offset
            for k in range(4)] == [1501] * 4


def test_a_remembered_client_id_costs_the_same_small_size_whatever_its_length(
        make_server: Callable[..., Server]) -> None:
    """``max_remembered_clients`` bounds how many client-ids churn leaves behind; each
    costs the same, well under 150 bytes (measured: 110; 243 kept whole), even at the
    longest id allowed (128 characters)."""
    srv = make_server(max_remembered_clients=5000)
    hub = srv._hub
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(5000):
            assert hub.first_visit(f"{i:08d}" + "x" * 120) is True
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept / 5000 < 150, f"{kept / 5000:.0f} bytes per remembered client-id"
    assert hub.remembered_clients() == 5000
    assert hub.first_visit("00000007" + "x" * 120) is False
    assert hub.first_visit("another") is True and hub.remembered_clients() == 5000

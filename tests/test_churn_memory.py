"""Connection churn keeps nothing of a closed connection but bounded, documented state:
its objects go at once (no reference cycle of the library's own) or, for the
reference cycles websockets' protocol objects live in, at the network thread's next
collection; registries keyed by connection, user or client-id hold live ones only
(client-ids: at most ``max_remembered_clients``; idle channels: ``max_idle_channels``)."""

from __future__ import annotations

import gc
import tracemalloc
import uuid
from typing import Callable, Iterator

import pytest
from websockets.server import ServerProtocol

from sente_lite import Server
from sente_lite.link import Link
from sente_lite.server import Connection
from sente_lite.testing.soak import churn_cycle
from sente_lite.writer import GC_QUIET_MIN_ENDED
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


def drained(srv: Server) -> bool:
    loop = srv._loop
    assert loop is not None
    return (srv.stats()["connections"] == 0 and not loop.links
            and alive(ServerProtocol) <= GC_QUIET_MIN_ENDED + 1 and alive(Link) <= LINGERING
            and alive(Connection) == 0)


def test_churn_leaves_no_per_connection_state(make_server: Callable[..., Server],
                                              no_automatic_gc: None) -> None:
    srv = make_server(max_remembered_clients=REMEMBERED, max_idle_channels=IDLE_CHANNELS,
                      close_timeout=0.3, rate_limit=None)
    churn(srv, 0, WARM_UP)
    wait_until(lambda: drained(srv), what="the warm-up's connections to be gone")
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        churn(srv, WARM_UP, CYCLES)
        wait_until(lambda: drained(srv), what="every churned connection's objects to be freed")
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

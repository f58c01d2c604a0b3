"""Fixtures: servers and clients that are always stopped, raw WebSocket peers, a guard
that fails any test leaving ``sente-lite-*`` threads alive, and one that fails any test
in which a link made a transition its state table does not allow."""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator, List

import pytest

from sente_lite import Client, Server
from sente_lite.testing.redis_server import RedisServer, require_redis_server
from sente_lite.discovery import wait_for
from sente_lite.errors import DiscoveryTimeout
from sente_lite.server import link_state
from support import FACES, WAIT_S, AsgiFace, FaceMaker, RawWS, ThreadedFace, sente_threads, serving

pytest_plugins = ["pytester"]

#: How long threads of a finished test may take to end before they count as leaked.
THREAD_LEAK_GRACE_S = 2.0

# A link asked for a state its table does not allow raises here (in production it is
# logged as an internal error): the suite walks every path a link takes.
link_state.strict = True


@pytest.fixture(autouse=True)
def no_illegal_link_transitions() -> Iterator[None]:
    """Fail the test if a link made a transition its state table does not allow (raised on
    the network thread, such an error is caught there and only logged)."""
    link_state.illegal_seen.clear()
    yield
    seen = list(link_state.illegal_seen)
    link_state.illegal_seen.clear()
    if seen:
        pytest.fail(f"illegal link transitions: {seen}", pytrace=False)


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail the test if it leaves sente-lite threads running."""
    before = set(sente_threads())
    yield

    def leaked() -> List[threading.Thread]:
        return [t for t in sente_threads() if t not in before]

    try:
        wait_for(lambda: not leaked(), THREAD_LEAK_GRACE_S, "sente-lite threads to end")
    except DiscoveryTimeout:
        names = sorted(t.name for t in leaked())
        pytest.fail(f"test left sente-lite threads alive: {names}", pytrace=False)


@pytest.fixture
def make_server(no_leaked_threads: None) -> Iterator[Callable[..., Server]]:
    """Make servers (``make_server(start=True, **kwargs)``); every one is stopped after the test."""
    servers: List[Server] = []

    def make(start: bool = True, **kwargs: Any) -> Server:
        srv = Server(**kwargs)
        servers.append(srv)
        if start:
            srv.start()
        return srv

    yield make
    for srv in reversed(servers):
        srv.stop()


@pytest.fixture(params=FACES)
def make_face(request: pytest.FixtureRequest, make_server: Callable[..., Server]) -> Iterator[FaceMaker]:
    """``make_face(**settings)``: a started server face with those settings, the threaded
    ``Server`` or ``App`` under uvicorn (a thread of the test), stopped after the test. A
    test that takes it runs once per face: one body for the wire behaviour both promise
    (``make_face.skip_on("asgi", why)`` where a face does not promise it)."""
    if request.param == "threaded":
        yield FaceMaker("threaded", lambda **settings: ThreadedFace(make_server(**settings)))
        return
    pytest.importorskip("uvicorn", reason="uvicorn (the [test] extra) is not installed: "
                        "the ASGI face runs under it")
    from sente_lite import App

    with contextlib.ExitStack() as stack:
        def make(**settings: Any) -> AsgiFace:
            app = App(**settings)
            return AsgiFace(app, stack.enter_context(serving(app)))

        yield FaceMaker("asgi", make)


@pytest.fixture
def make_client(no_leaked_threads: None) -> Iterator[Callable[..., Client]]:
    """Start clients (``make_client(url, connect=True, **kwargs)``); all closed after the test."""
    clients: List[Client] = []

    def make(url: str, connect: bool = True, **kwargs: Any) -> Client:
        c = Client(url, **kwargs)
        clients.append(c)
        if connect:
            assert c.wait_connected(WAIT_S), f"client did not connect to {url}"
        return c

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def raw_ws() -> Iterator[Callable[..., RawWS]]:
    """Open raw WebSocket peers (``raw_ws(url)``); all closed after the test."""
    opened: List[RawWS] = []

    def make(url: str, **kwargs: Any) -> RawWS:
        r = RawWS(url, **kwargs)
        opened.append(r)
        return r

    yield make
    for r in opened:
        r.close()


@pytest.fixture
def redis_srv() -> Iterator[RedisServer]:
    """A redis-server of the test's own on a free port (skipped, by name, when redis-py or
    redis-server is missing); stopped after the test."""
    pytest.importorskip("redis", reason="redis-py is not installed (pip install 'sente-lite[redis]')")
    require_redis_server()
    with RedisServer() as srv:
        yield srv

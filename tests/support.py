"""Test helpers: deadline waits, a raw WebSocket peer, a thread-safe recorder."""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
import websocket  # websocket-client
from websockets.sync.server import serve as _sync_serve

from sente_lite.wire import protocol as p
from sente_lite.discovery import wait_for
from sente_lite.errors import DiscoveryTimeout

#: Prefix of every thread the library starts.
THREAD_PREFIX = "sente-lite-"
#: Default deadline of waits in tests: generous, only reached when something is broken
#: (a 2-core machine running other work can stall a test process for a second or more).
WAIT_S = 15.0
#: Keyword arguments that keep a ``websockets.sync.server.serve`` test server from sending
#: keepalive pings of its own (websockets < 15 has no ``ping_interval`` there: it never pings).
NO_PINGS = ({"ping_interval": None} if "ping_interval" in inspect.signature(_sync_serve).parameters
            else {})


def wait_until(condition: Callable[[], Any], timeout: float = WAIT_S, what: str = "condition") -> Any:
    """Wait until ``condition()`` is truthy and return its value; fail the test after ``timeout``."""
    try:
        return wait_for(lambda: condition() or None, timeout, what)
    except DiscoveryTimeout as exc:
        pytest.fail(str(exc))


def sente_threads() -> List[threading.Thread]:
    """Live threads started by sente_lite."""
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX) and t.is_alive()]


class RawWS:
    """A bare WebSocket peer (websocket-client, no threads) for protocol-level tests."""

    def __init__(self, url: str, read_handshake: bool = True, **kwargs: Any) -> None:
        self.ws = websocket.create_connection(url, timeout=WAIT_S, **kwargs)
        self.handshake: Optional[list] = self.recv() if read_handshake else None

    def send(self, text: str) -> None:
        self.ws.send(text)

    def send_binary(self, data: bytes) -> None:
        self.ws.send_binary(data)

    def send_frame(self, *items: Any) -> None:
        self.ws.send(json.dumps(list(items)))

    def _next(self, deadline: float) -> Tuple[int, Any]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError("nothing received before the deadline")
        self.ws.settimeout(remaining)
        opcode, frame = self.ws.recv_data_frame(True)
        return opcode, frame

    def recv(self, timeout: float = WAIT_S, skip_pings: bool = True) -> list:
        """The next text frame, decoded. Fails on a close frame or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            opcode, frame = self._next(deadline)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                raise AssertionError(f"connection closed: {close_code_of(frame)}")
            if opcode != websocket.ABNF.OPCODE_TEXT:
                continue
            value = json.loads(frame.data.decode("utf-8"))
            if skip_pings and value == ["chsk/ws-ping"]:
                continue
            return value

    def recv_close(self, timeout: float = WAIT_S) -> int:
        """Read (and drop) frames until the close frame; answer it, end the TCP
        connection as a well-behaved peer does, and return the code."""
        deadline = time.monotonic() + timeout
        while True:
            opcode, frame = self._next(deadline)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                self.ws.shutdown()
                return close_code_of(frame)

    def request(self, event: str, data: Any, cb_id: str, timeout: float = WAIT_S) -> list:
        """Send a request and return the reply frame (other frames are dropped)."""
        self.send_frame(event, data, cb_id)
        deadline = time.monotonic() + timeout
        while True:
            frame = self.recv(max(0.0, deadline - time.monotonic()))
            if len(frame) == 3 and frame[2] == cb_id:
                return frame

    def close(self) -> None:
        if not self.ws.connected:
            return
        try:
            self.ws.close(timeout=1)
        except Exception:
            self.ws.shutdown()


def close_code_of(frame: Any) -> int:
    """The close code in a close frame (1005 when it has none)."""
    data = frame.data or b""
    return int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: Seconds a uvicorn process may take to answer, from its launch (a fresh interpreter
#: importing the application on a loaded 2-core machine).
UVICORN_START_S = 60.0


@contextlib.contextmanager
def uvicorn_process(target: str, app_dir: Path, *args: str, env: Optional[Dict[str, str]] = None,
                    ready_path: str = "/") -> Iterator[str]:
    """``python -m uvicorn target`` (``module:attribute``, the module in ``app_dir``) in a
    process of its own on a free port of 127.0.0.1, importing this repository's sente_lite;
    yields ``http://127.0.0.1:PORT`` once ``ready_path`` answers (any HTTP status). The
    process is terminated (killed if it lingers) and reaped at the end; its output is in
    ``app_dir/uvicorn.log``."""
    pytest.importorskip("uvicorn", reason="uvicorn (the [test] extra) is not installed")
    port = free_port()
    path = os.pathsep.join(p for p in (str(app_dir), str(REPO), os.environ.get("PYTHONPATH")) if p)
    log_path = app_dir / "uvicorn.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1",
                                 "--port", str(port), "--log-level", "warning", *args],
                                env=dict(os.environ, **(env or {}), PYTHONPATH=path),
                                stdout=log_file, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def answers() -> Optional[str]:
        if proc.poll() is not None:
            return "exited"
        try:
            urllib.request.urlopen(base + ready_path, timeout=2).close()
        except urllib.error.HTTPError:
            pass  # an answer all the same
        except OSError:
            return None
        return "up"

    try:
        if wait_until(answers, UVICORN_START_S, f"uvicorn {target} answering") == "exited":
            pytest.fail(f"uvicorn {target} exited with {proc.returncode}: "
                        f"{log_path.read_text(errors='replace')[-2000:]}")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def serving(app: Any, lifespan: str = "on") -> Iterator[str]:
    """Serve the ASGI ``app`` with uvicorn on 127.0.0.1 in a thread of the test; yields
    ``http://127.0.0.1:PORT``; uvicorn is stopped and its thread joined at the end."""
    uvicorn = pytest.importorskip("uvicorn", reason="uvicorn (the [test] extra) is not installed")
    from uvicorn.config import WS_PROTOCOLS

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan=lifespan, log_level="warning",
                            ws="websockets-sansio" if "websockets-sansio" in WS_PROTOCOLS else "websockets")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), 10.0, "uvicorn started")
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15.0)
        assert not thread.is_alive(), "uvicorn did not stop"


def run(coro: Any, timeout: float = 30.0) -> Any:
    """Run ``coro`` on a new event loop in this thread, within ``timeout`` seconds."""
    import asyncio

    return asyncio.run(asyncio.wait_for(coro, timeout))


class ThreadedFace:
    """The threaded :class:`~sente_lite.Server` as a face under test (see :class:`AsgiFace`)."""

    kind = "threaded"

    def __init__(self, srv: Any) -> None:
        self.server = srv
        self.url: str = srv.url
        self.host: str = srv.host
        self.port: int = srv.port
        self.path: str = srv.path
        self.server_id: str = srv.server_id
        self.channels = srv.channels
        # the calls both faces make the same way
        self.on, self.on_connect, self.on_disconnect = srv.on, srv.on_connect, srv.on_disconnect
        self.send, self.disconnect, self.stats = srv.send, srv.disconnect, srv.stats
        self.connections = srv.connections
        self.publish, self.send_to_user, self.broadcast = srv.publish, srv.send_to_user, srv.broadcast
        self.request, self.disconnect_user = srv.request, srv.disconnect_user
        self.csrf_token = srv.csrf_token
        self.subscribe, self.unsubscribe = srv.subscribe, srv.unsubscribe
        self.presence_of, self.presence_stats = srv.presence_of, srv.presence_stats

    @staticmethod
    def ask(conn: Any, event: str, data: Any = None, timeout: float = WAIT_S) -> Any:
        """From a plain ``def`` handler: ask ``conn``'s client and return its reply."""
        return conn.request(event, data, timeout=timeout)


class AsgiFace:
    """:class:`~sente_lite.asgi.App` under uvicorn (:func:`serving`) as a face under test,
    with the threaded server's blocking calls: the App's coroutines run on its event loop
    and are awaited from the test's thread. Handlers registered with ``on`` may be plain
    ``def`` (they run on the App's worker threads), as on the threaded server."""

    kind = "asgi"

    def __init__(self, app: Any, base: str) -> None:
        self.server = app
        self.url = base.replace("http://", "ws://", 1) + "/chsk"
        self.host = "127.0.0.1"
        self.port = int(base.rsplit(":", 1)[1])
        self.path: str = app.path
        self.server_id: str = app.server_id
        self.channels = app.channels
        self.on, self.on_connect, self.on_disconnect = app.on, app.on_connect, app.on_disconnect
        self.send, self.disconnect, self.stats = app.send, app.disconnect, app.stats
        self.connections, self.csrf_token = app.connections, app.csrf_token

    def _wait(self, coro: Any, timeout: float = WAIT_S) -> Any:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.server._loop).result(timeout)

    def publish(self, channel_id: str, data: Any = None, **kwargs: Any) -> Any:
        return self._wait(self.server.publish(channel_id, data, **kwargs))

    def send_to_user(self, uid: str, event: str, data: Any = None) -> int:
        return self._wait(self.server.send_to_user(uid, event, data))  # type: ignore[no-any-return]

    def broadcast(self, event: str, data: Any = None) -> int:
        return self._wait(self.server.broadcast(event, data))  # type: ignore[no-any-return]

    def disconnect_user(self, uid: str, code: int = 1000, reason: str = "") -> int:
        return self._wait(self.server.disconnect_user(uid, code, reason))  # type: ignore[no-any-return]

    def subscribe(self, target: str, channel_id: str) -> int:
        return self._wait(self.server.subscribe(target, channel_id))  # type: ignore[no-any-return]

    def unsubscribe(self, target: str, channel_id: str) -> int:
        return self._wait(self.server.unsubscribe(target, channel_id))  # type: ignore[no-any-return]

    def presence_of(self, channel_id: str) -> Any:
        return self._wait(self.server.presence_of(channel_id))

    def presence_stats(self, channel_id: str) -> Any:
        return self._wait(self.server.presence_stats(channel_id))

    def request(self, conn_id: str, event: str, data: Any = None, timeout: float = 5.0) -> Any:
        return self._wait(self.server.request(conn_id, event, data, timeout), timeout + WAIT_S)

    @staticmethod
    def ask(conn: Any, event: str, data: Any = None, timeout: float = WAIT_S) -> Any:
        """From a plain ``def`` handler: ask ``conn``'s client and return its reply."""
        return conn.request_sync(event, data, timeout=timeout)


#: The faces conformance tests run on (the ``make_face`` fixture's parameters).
FACES = ("threaded", "asgi")


class FaceMaker:
    """The ``make_face`` fixture's value: ``make_face(**settings)`` starts a face of ``kind``."""

    def __init__(self, kind: str, make: Callable[..., Any]) -> None:
        self.kind = kind
        self._make = make

    def __call__(self, **settings: Any) -> Any:
        return self._make(**settings)

    def skip_on(self, kind: str, why: str) -> None:
        """Skip the test on the face ``kind``, which does not promise what it checks."""
        if self.kind == kind:
            pytest.skip(f"{kind} face: {why}")


class Recorder:
    """Collects items from handler threads; tests wait on its length with a deadline."""

    def __init__(self) -> None:
        self.items: List[Any] = []
        self._cond = threading.Condition()

    def __call__(self, item: Any) -> None:
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()

    def wait_count(self, n: int, timeout: float = WAIT_S) -> List[Any]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.items) >= n, timeout):
                pytest.fail(f"expected {n} items within {timeout}s, got {len(self.items)}: "
                            f"{self.items[-5:]!r}")
            return list(self.items)

    def __len__(self) -> int:
        with self._cond:
            return len(self.items)


@pytest.fixture(scope="module", autouse=True, params=["stdlib", "orjson"])
def decode_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run every codec test on the plain path and, when installed, on the orjson fast path."""
    saved = p._orjson
    if request.param == "orjson" and saved is None:
        pytest.skip("orjson (the [fast] extra) is not installed")
    if request.param == "stdlib":
        p._orjson = None
    try:
        yield request.param
    finally:
        p._orjson = saved


#: This directory (tests/: conftest.py, support.py, data/, js/) and the repository above it.
TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

"""The ASGI face (sente_lite.asgi.App) under a real uvicorn, alone and mounted in Starlette
and FastAPI, with the threaded Client: handshake, requests both ways, channels with
offsets, since-recovery, admission (Origin), the HTTP routes."""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
import threading
import urllib.error
import urllib.request
from typing import Any, Callable, List

import pytest

from sente_lite import App, Client, ConnectRefused
from sente_lite.errors import RemoteError
from sente_lite.asgi import NOT_HERE
from sente_lite.core.settings import DEFAULTS
from sente_lite.server.server import Server

from sente_lite.testing.abuse import RawPeer
from support import serving, uvicorn_process, wait_until

pytest.importorskip("uvicorn", reason="uvicorn (the [test] extra) is not installed")


def on_loop(rt: App, coro: Any, timeout: float = 10.0) -> Any:
    """Run ``coro`` on the App's event loop (uvicorn's thread) and wait for its result."""
    assert rt._loop is not None
    return asyncio.run_coroutine_threadsafe(coro, rt._loop).result(timeout)


def echo_app(**settings: Any) -> App:
    rt = App(heartbeat_ms=1000, **settings)

    @rt.on("app/echo")
    async def echo(conn: Any, data: Any) -> Any:
        return {"echo": data, "uid": conn.uid}

    @rt.on("app/thread")
    def in_thread(conn: Any, data: Any) -> Any:
        return {"thread": threading.current_thread().name.startswith("sente-lite-asgi")}

    @rt.on("app/ask")
    async def ask(conn: Any, data: Any) -> Any:
        return await conn.request("app/question", data, timeout=5.0)

    @rt.on("app/ask-sync")
    def ask_sync(conn: Any, data: Any) -> Any:
        return conn.request_sync("app/question", data, timeout=5.0)

    return rt


@pytest.fixture
def clients(make_client: Callable[..., Client]) -> Callable[..., Client]:
    """``make_client`` without its wait: these tests wait (or expect a refusal) themselves."""
    return lambda url, **kw: make_client(url, connect=False, **kw)


def ws(base: str, path: str = "/chsk") -> str:
    return base.replace("http://", "ws://") + path


def test_the_app_takes_the_servers_settings_with_the_same_defaults() -> None:
    params = inspect.signature(Server.__init__).parameters
    assert {n: p.default for n, p in params.items() if n in DEFAULTS} == DEFAULTS
    with pytest.raises(TypeError, match="port is not a setting of App"):
        App(port=1)
    assert set(NOT_HERE) <= set(DEFAULTS)
    assert App(rate_limit=5).settings.rate_limit == 5


def test_threaded_client_handshake_requests_both_ways_and_channels(clients: Callable[..., Client]) -> None:
    rt = echo_app()
    with serving(rt) as base:
        c = clients(ws(base))
        c.on("app/question", lambda data: {"answer": data * 2})
        assert c.wait_connected(5)
        assert c.handshake["server-id"] == rt.server_id and c.first is True
        assert c.request("app/echo", {"x": 1}) == {"echo": {"x": 1}, "uid": c.client_id}
        assert c.request("app/thread") == {"thread": True}
        assert c.request("app/ask", 21) == {"answer": 42}  # the server's request to the client
        assert c.request("app/ask-sync", 2) == {"answer": 4}  # from a plain def handler
        got: List[Any] = []
        reply = c.subscribe("news", got.append)
        assert reply["offset"] == 0
        ack = c.publish("news", {"n": 1}, ack=True)
        assert ack["offset"] == 1 and ack["delivered"] == 1
        published = on_loop(rt, rt.publish("news", {"n": 2}))
        assert published.offset == 2
        wait_until(lambda: len(got) == 2, what="two channel messages")
        assert [(m.offset, m.data, m.from_uid) for m in got] == [(1, {"n": 1}, c.client_id),
                                                                 (2, {"n": 2}, None)]
        assert on_loop(rt, rt.send_to_user(c.client_id, "app/note", 1)) == 1
        assert rt.stats()["connections"] == 1
    assert rt.stats()["connections"] == 0  # the lifespan's shutdown closed it


def test_since_recovery_after_the_server_drops_the_connection(clients: Callable[..., Client]) -> None:
    rt = echo_app()
    with serving(rt) as base:
        c = clients(ws(base), backoff_base=0.05, backoff_max=0.2)
        recoveries: List[Any] = []
        c.on_recovery(recoveries.append)
        got: List[Any] = []
        assert c.wait_connected(5)
        c.subscribe("feed", got.append)
        for i in range(3):
            on_loop(rt, rt.publish("feed", i))
        wait_until(lambda: len(got) == 3, what="3 messages")
        first_conn = c.conn_id
        assert rt.disconnect(first_conn, 1001, "bye")
        wait_until(lambda: c.conn_id != first_conn and c.connected, what="a reconnect")
        for i in range(3, 5):
            on_loop(rt, rt.publish("feed", i))
        wait_until(lambda: len(got) == 5, what="5 messages")
        assert [m.data for m in got] == [0, 1, 2, 3, 4]
        assert [m.offset for m in got] == [1, 2, 3, 4, 5]
        wait_until(lambda: recoveries, what="a recovery answer")
        assert recoveries[0].recovered is True and recoveries[0].since["offset"] == 3


def test_health_probe_and_origin_refusal(clients: Callable[..., Client]) -> None:
    rt = echo_app(allowed_origins=["https://app.example"])
    with serving(rt) as base:
        with urllib.request.urlopen(base + "/health", timeout=5) as resp:
            health = json.loads(resp.read())
        assert resp.status == 200 and health["status"] == "ok" and health["server-id"] == rt.server_id
        with pytest.raises(urllib.error.HTTPError) as nothing:
            urllib.request.urlopen(base + "/nothing", timeout=5)
        assert nothing.value.code == 404
        with urllib.request.urlopen(base + "/sente_lite.js", timeout=5) as resp:
            assert b"SenteLite" in resp.read()
        bad = clients(ws(base), origin="https://evil.example", auto_reconnect=False)
        with pytest.raises(ConnectRefused) as refused:
            bad.wait_connected(5)
        assert refused.value.status == 403
        good = clients(ws(base), origin="https://app.example")
        assert good.wait_connected(5)
        assert rt.stats()["handshakes_refused"] == {"origin": 1, "not-found": 1}


def test_authenticate_runs_off_the_loop_and_refuses_401(clients: Callable[..., Client]) -> None:
    loops: List[bool] = []

    def authenticate(request: Any) -> Any:
        loops.append(threading.current_thread().name.startswith("sente-lite-asgi"))
        return "alice" if request.token == "s3cret" else None

    rt = echo_app(authenticate=authenticate)
    with serving(rt) as base:
        c = clients(ws(base), token="s3cret")
        assert c.wait_connected(5) and c.uid == "alice"
        bad = clients(ws(base), token="wrong", auto_reconnect=False)
        with pytest.raises(ConnectRefused) as refused:
            bad.wait_connected(5)
        assert refused.value.status == 401
        assert loops == [True, True]


@pytest.mark.parametrize("framework", ["starlette", "fastapi"])
def test_mounted_at_a_prefix(framework: str, clients: Callable[..., Client]) -> None:
    rt = echo_app()
    if framework == "fastapi":
        fastapi = pytest.importorskip("fastapi")
        host = fastapi.FastAPI(lifespan=rt.lifespan)

        @host.get("/hello")
        def hello() -> dict:
            return {"hello": "world"}
    else:
        pytest.importorskip("starlette")
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        host = Starlette(routes=[Route("/hello", lambda request: JSONResponse({"hello": "world"}))],
                         lifespan=lambda app: rt.lifespan(app))
    host.mount("/rt", rt)
    with serving(host) as base:
        with urllib.request.urlopen(base + "/hello", timeout=5) as resp:
            assert json.loads(resp.read()) == {"hello": "world"}
        with urllib.request.urlopen(base + "/rt/health", timeout=5) as resp:
            assert json.loads(resp.read())["server-id"] == rt.server_id
        c = clients(ws(base, "/rt/chsk"))
        assert c.wait_connected(5)
        assert c.request("app/echo", "hi")["echo"] == "hi"
        assert rt.running
    assert not rt.running  # the host's lifespan stopped it


def test_a_silent_peer_is_closed_4000_and_a_slow_consumer_4001() -> None:
    from websockets.sync.client import connect

    rt = App(heartbeat_ms=200, max_queued_bytes_per_conn=256 * 1024, close_timeout=0.5)
    with serving(rt) as base:
        with connect(ws(base) + "?client-id=silent", max_size=None) as silent:
            silent.recv(timeout=5)  # the handshake; then nothing is read or answered
            wait_until(lambda: rt.stats()["closes_by_code"].get(4000), what="a 4000 close")
    rt = App(heartbeat_ms=60_000, max_queued_bytes_per_conn=256 * 1024, close_timeout=0.5)
    with serving(rt) as base:
        port = int(base.rsplit(":", 1)[1])
        with RawPeer("127.0.0.1", port, timeout=5) as slow:  # reads nothing once subscribed
            slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            assert slow.upgrade(timeout=5).status == 101
            assert slow.read_text(5)[0] == "chsk/handshake"
            slow.send_text('["sente-lite/subscribe",{"channel-id":"big"},"c1"]')
            assert slow.read_text(5)[0] == "chsk/reply"
            blob = "x" * 65536

            def flood() -> bool:
                for _ in range(20):
                    on_loop(rt, rt.publish("big", blob))
                return bool(rt.stats().get("slow_consumer_closes"))
            wait_until(flood, timeout=20, what="a slow-consumer close")
            wait_until(lambda: rt.stats()["connections"] == 0, what="the slow peer gone")
        assert rt.stats()["closes_by_code"].get(4001) == 1


def test_two_uvicorn_workers_share_channels_through_redis(redis_srv: Any, tmp_path: Any,
                                                          clients: Callable[..., Client]) -> None:
    """``uvicorn --workers 2`` (two processes, one port) with ``broker="redis://..."``: a
    publish made through one worker reaches a subscriber of the other."""
    (tmp_path / "rtapp.py").write_text(
        "import os\nfrom sente_lite import App\n"
        "rt = App(broker=os.environ['RT_REDIS'])\n")
    with uvicorn_process("rtapp:rt", tmp_path, "--workers", "2", env={"RT_REDIS": redis_srv.url},
                         ready_path="/health") as base:
        url = ws(base)
        by_server: dict = {}

        def two_workers_seen() -> bool:
            c = clients(url, backoff_base=0.05, backoff_max=0.2)
            if c.wait_connected(5):
                by_server.setdefault(c.server_id, c)
            return len(by_server) >= 2
        wait_until(two_workers_seen, timeout=60, what="connections on both workers")
        sub, pub = list(by_server.values())[:2]
        got: List[Any] = []
        sub.subscribe("shared", got.append)
        acks: List[Any] = []

        def published() -> bool:  # a worker refuses ("unavailable", not published) until its Redis link is up
            try:
                acks.append(pub.publish("shared", {"via": pub.server_id}, ack=True))
            except RemoteError as e:
                assert e.code == "unavailable", e
            return bool(acks)
        wait_until(published, timeout=60, what="a publish accepted once the worker's Redis link is up")
        ack = acks[0]
        wait_until(lambda: got, what="the delivery from the other worker")
        assert got[0].data == {"via": pub.server_id} and got[0].offset == ack["offset"]
        assert sub.server_id != pub.server_id

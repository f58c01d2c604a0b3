"""Server lifecycle: port file only once listening, /health, 404s, stop() closing
clients with 1001 and freeing the port and every thread; the thread-leak guard."""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
from pathlib import Path
from typing import Callable, Union

import pytest
import websocket  # websocket-client

from sente_lite import Client, Server, discovery
from support import TESTS, THREAD_PREFIX, WAIT_S, AsgiFace, RawWS, ThreadedFace, sente_threads, wait_until

#: The tests taking ``make_face`` run on both faces: the threaded Server and the ASGI App
#: under uvicorn.
Face = Union[ThreadedFace, AsgiFace]

SERVER_THREAD_PREFIXES = ("sente-lite-net", "sente-lite-worker")


def server_threads() -> list:
    return [t.name for t in sente_threads() if t.name.startswith(SERVER_THREAD_PREFIXES)]


def http_get(port: int, path: str) -> "tuple[int, str, str]":
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_S)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read().decode("utf-8")
    finally:
        conn.close()


def test_port_file_written_once_listening_and_removed_on_stop(
        make_server: Callable[..., Server], tmp_path: Path) -> None:
    path = tmp_path / "server.port.json"
    srv = make_server(port_file=str(path), start=False)
    assert not path.exists()
    starter = threading.Thread(target=srv.start)
    starter.start()
    try:
        info = discovery.read_port_file(path, timeout=WAIT_S)
        # the moment the file exists, the port accepts connections
        socket.create_connection((info["host"], info["port"]), timeout=WAIT_S).close()
    finally:
        starter.join(WAIT_S)
    assert info == {"host": "127.0.0.1", "port": srv.port, "url": srv.url, "pid": os.getpid(),
                    "server-id": srv.server_id}
    assert info["url"] == f"ws://127.0.0.1:{srv.port}/chsk"
    srv.stop()
    assert list(tmp_path.iterdir()) == []  # port file and its lock are gone


def test_health_and_404(make_face: Callable[..., Face], make_client: Callable[..., Client]) -> None:
    srv = make_face()
    c = make_client(srv.url)
    c.subscribe("h")
    status, ctype, body = http_get(srv.port, "/health")
    assert status == 200
    assert ctype.startswith("application/json")
    health = json.loads(body)
    assert health["status"] == "ok"
    assert health["server-id"] == srv.server_id
    assert health["uptime-s"] >= 0
    assert health["connections"] == 1
    assert health["channels"] == 1
    for path in ("/nope", "/chsk/extra", "/healthz"):
        status, _, body = http_get(srv.port, path)
        assert status == 404, path
        assert path in body


def test_upgrade_on_another_path_is_404(make_face: Callable[..., Face]) -> None:
    srv = make_face(path="/custom")
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        websocket.create_connection(f"ws://127.0.0.1:{srv.port}/chsk", timeout=WAIT_S)
    assert info.value.status_code == 404
    RawWS(f"ws://127.0.0.1:{srv.port}/custom").close()


def test_stop_closes_clients_with_1001_frees_port_and_threads(
        make_server: Callable[..., Server], make_client: Callable[..., Client],
        raw_ws: Callable[..., RawWS]) -> None:
    srv = make_server(close_timeout=0.3)  # the raw peer answers the close only after stop()
    port = srv.port
    c = make_client(srv.url, auto_reconnect=False)
    r = raw_ws(srv.url)
    closes = []
    srv.on_disconnect(lambda conn, code, reason: closes.append(code))
    assert server_threads()
    srv.stop()
    assert server_threads() == []  # joined by stop(), no grace needed
    assert sorted(closes) == [1001, 1001]
    assert srv.stats()["closes_by_code"] == {1001: 2}
    assert r.recv_close() == 1001
    assert c.wait_status("closed", WAIT_S)
    assert c.stats()["closed_by_server_1001"] == 1
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
    with socket.socket() as s:  # nothing holds the port: a new listener can take it
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
    srv.stop()  # a second stop is a no-op


def test_context_manager_and_double_start(no_leaked_threads: None) -> None:
    with Server() as srv:
        with Client(srv.url) as c:
            assert c.wait_connected(WAIT_S)
        with pytest.raises(RuntimeError):
            srv.start()
    assert server_threads() == []


def test_new_upgrades_are_refused_while_stopping(make_server: Callable[..., Server],
                                                 make_client: Callable[..., Client]) -> None:
    srv = make_server(close_timeout=0.5)
    entered, release = threading.Event(), threading.Event()
    srv.on("app/block", lambda conn, data: (entered.set(), release.wait(WAIT_S)))
    c = make_client(srv.url, auto_reconnect=False)
    c.send("app/block")
    assert entered.wait(WAIT_S)
    stopping = threading.Thread(target=srv.stop)
    stopping.start()
    try:
        # operators see it first: /health answers 503 once stop() has begun
        wait_until(lambda: http_get(srv.port, "/health")[0] == 503, what="stop to begin")
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            websocket.create_connection(srv.url, timeout=WAIT_S)
        assert info.value.status_code == 503
    finally:
        release.set()
        stopping.join(WAIT_S)
    assert not stopping.is_alive()


LEAKY_TEST = '''
import threading

def test_leaks():
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, name="sente-lite-leaked", daemon=True)
    t.release = stop.set  # the outer test ends it
    t.start()

def test_clean():
    t = threading.Thread(target=lambda: None, name="sente-lite-finishes")
    t.start()
    t.join()
'''


def test_thread_guard_fails_a_leaking_test(pytester: pytest.Pytester) -> None:
    here = TESTS
    pytester.makeconftest((here / "conftest.py").read_text())
    pytester.makepyfile(support=(here / "support.py").read_text(), test_leaky=LEAKY_TEST)
    try:
        result = pytester.runpytest_inprocess("-p", "no:randomly", "-p", "no:cacheprovider")
    finally:
        for t in threading.enumerate():
            if t.name == "sente-lite-leaked":
                t.release()  # type: ignore[attr-defined]
                t.join(WAIT_S)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*test left sente-lite threads alive*sente-lite-leaked*"])
    assert "sente-lite-finishes" not in result.stdout.str()
    assert THREAD_PREFIX == "sente-lite-"

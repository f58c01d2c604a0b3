"""The network loop as a user meets it: a fixed number of threads whatever the number of
connections, TLS, running out of file descriptors, messages arriving in fragments."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable, List

import pytest

from sente_lite import Client, Server
from sente_lite.wire import protocol as p
from sente_lite.testing.abuse import RawPeer
from support import WAIT_S, sente_threads, wait_until
from support import REPO



def opened(srv: Server) -> RawPeer:
    peer = RawPeer(srv.host, srv.port, WAIT_S)
    assert peer.upgrade(timeout=WAIT_S).status == 101
    assert peer.read_text(WAIT_S)[0] == p.EV_HANDSHAKE
    return peer


def test_threads_do_not_grow_with_connections(make_server: Callable[..., Server]) -> None:
    srv = make_server(heartbeat_ms=600_000)
    peers: List[RawPeer] = []
    try:
        for _ in range(200):
            peers.append(opened(srv))
        wait_until(lambda: srv.stats()["connections"] == 200, what="200 connections")
        names = [t.name for t in sente_threads()]
        assert names.count("sente-lite-net") == 1
        assert len(names) <= 1 + srv._pool.max_threads, names
    finally:
        for peer in peers:
            peer.close()
    wait_until(lambda: srv.stats()["connections"] == 0, what="every connection dropped")


def _self_signed(tmp: Path) -> "tuple[Path, Path]":
    if shutil.which("openssl") is None:
        pytest.skip("openssl (the command) is needed to make a test certificate")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True,
                   timeout=60)
    return cert, key


def test_tls_serves_wss(make_server: Callable[..., Server], make_client: Callable[..., Client],
                        tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    srv = make_server(ssl_context=server_ctx)
    assert srv.url.startswith("wss://")
    srv.on("app/echo", lambda conn, data: data)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    c = make_client(srv.url, ssl_context=client_ctx)
    big = "x" * 300_000  # many TLS records each way
    assert c.request("app/echo", {"big": big}, timeout=WAIT_S) == {"big": big}
    got: List[Any] = []
    c.subscribe("tls", lambda msg: got.append(msg.data))
    for i in range(50):
        srv.publish("tls", i)
    wait_until(lambda: len(got) == 50, what="50 messages over TLS")
    assert got == list(range(50))
    # a plain-text peer on the TLS port is dropped, and counted; the server keeps serving
    with RawPeer(srv.host, srv.port, WAIT_S) as plain:
        plain.send(b"GET /chsk HTTP/1.1\r\nHost: x\r\n\r\n")
        assert plain.read_http(WAIT_S).status is None
    wait_until(lambda: srv.stats().get("tls_errors", 0) >= 1, what="TLS error counted")
    assert c.request("app/echo", 1, timeout=WAIT_S) == 1


def test_a_client_refuses_an_untrusted_certificate(make_server: Callable[..., Server],
                                                   tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    srv = make_server(ssl_context=server_ctx)
    c = Client(srv.url, auto_reconnect=False)  # the default context does not trust it
    try:
        assert not c.wait_connected(2.0)
        assert c.stats().get("connect_failures", 0) >= 1
    finally:
        c.close()


def test_a_fragmented_message_is_reassembled(make_server: Callable[..., Server]) -> None:
    srv = make_server(heartbeat_ms=600_000)
    srv.on("app/echo", lambda conn, data: data)
    with opened(srv) as peer:
        text = json.dumps(["app/echo", "abc" * 1000, "e1"]).encode()
        parts = [text[i:i + 500] for i in range(0, len(text), 500)]
        peer.send_frame(parts[0], fin=False)
        for part in parts[1:-1]:
            peer.send_frame(part, opcode=0x0, fin=False)
            peer.send_frame(b"ping", opcode=0x9)  # control frames may come between fragments
        peer.send_frame(parts[-1], opcode=0x0, fin=True)
        while True:
            frame = peer.read_text(WAIT_S)
            if frame[0] == p.EV_REPLY:
                assert frame[1] == "abc" * 1000
                break


def test_an_incomplete_message_is_bounded_by_max_message_bytes(
        make_server: Callable[..., Server]) -> None:
    """Fragments that add up past max_message_bytes close with 1009 before the rest comes:
    a connection can hold at most that much for a message still arriving."""
    srv = make_server(max_message_bytes=10_000, heartbeat_ms=600_000)
    with opened(srv) as peer:
        peer.send_frame(b"x" * 6000, fin=False)
        peer.send_frame(b"x" * 6000, opcode=0x0, fin=False)
        assert peer.read_until_close(WAIT_S)[0] == 1009
    wait_until(lambda: srv.stats().get("too_large_closes") == 1, what="1009 counted")


FD_LIMIT_SCRIPT = textwrap.dedent("""
    import json, resource, socket, sys, time
    sys.path.insert(0, sys.argv[1])
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    from sente_lite import Server
    with Server(raise_fd_limit=False, heartbeat_ms=600_000) as srv:
        print(json.dumps({"port": srv.port}), flush=True)
        sys.stdin.readline()  # the test has done its connecting
        print(json.dumps(srv.stats()), flush=True)
        sys.stdin.readline()
""")


def test_running_out_of_descriptors_refuses_with_503_and_keeps_serving(tmp_path: Path) -> None:
    script = tmp_path / "fd_server.py"
    script.write_text(FD_LIMIT_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(REPO)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peers: List[RawPeer] = []
    try:
        port = json.loads(proc.stdout.readline())["port"]  # type: ignore[union-attr]
        statuses: List[Any] = []
        for _ in range(80):  # more than 64 descriptors can hold
            try:
                peer = RawPeer("127.0.0.1", port, WAIT_S)
            except OSError:
                statuses.append("connect-error")
                continue
            answer = peer.upgrade(timeout=WAIT_S)
            statuses.append(answer.status)
            if answer.status == 101:
                peers.append(peer)
            else:
                peer.close()
        assert statuses.count(101) >= 40, statuses
        refused = [s for s in statuses if s != 101]
        assert refused and all(s == 503 for s in refused), statuses  # a clear answer each time
        # the connections already open are still served
        for peer in peers[:5]:
            assert peer.read_text(WAIT_S)[0] == p.EV_HANDSHAKE
            peer.send_text(json.dumps([p.EV_PING, None, "k"]))
            assert peer.read_text(WAIT_S)[0] == p.EV_REPLY
        proc.stdin.write("\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
        stats = json.loads(proc.stdout.readline())  # type: ignore[union-attr]
        assert stats.get("accept_errors_EMFILE", 0) >= 1
        assert stats.get("refused_out_of_resources", 0) == len(refused)
    finally:
        for peer in peers:
            peer.close()
        try:
            proc.stdin.write("\n")  # type: ignore[union-attr]
            proc.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        try:
            proc.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    err = proc.stderr.read()  # type: ignore[union-attr]
    assert "cannot accept connections: EMFILE" in err
    assert err.count("cannot accept connections") <= 3  # once a second at most
    assert "Traceback" not in err
    proc.stdout.close()  # type: ignore[union-attr]
    proc.stderr.close()  # type: ignore[union-attr]


def test_handlers_blocked_in_request_never_starve_other_connections(
        make_server: Callable[..., Server], make_client: Callable[..., Client]) -> None:
    """More handlers wait for their clients' replies than there are handler threads; a
    request from yet another connection is still answered at once."""
    srv = make_server(min_handler_threads=1, max_handler_threads=2)
    answer = threading.Event()
    srv.on("app/ask-back", lambda conn, data: conn.request("app/later", None, timeout=WAIT_S))
    srv.on("app/echo", lambda conn, data: data)
    askers = []
    for i in range(4):
        c = make_client(srv.url)
        c.on("app/later", lambda data: answer.wait(WAIT_S) and "late")
        askers.append(c)
    results: List[Any] = []
    threads = [threading.Thread(target=lambda c=c: results.append(
        c.request("app/ask-back", timeout=WAIT_S)), daemon=True) for c in askers]
    for t in threads:
        t.start()
    wait_until(lambda: srv.stats()["handler_threads"] >= 4,
               what="the 4 handlers waiting in request(), each on a thread of its own")
    other = make_client(srv.url)
    started = time.monotonic()
    assert other.request("app/echo", "hi", timeout=WAIT_S) == "hi"
    assert time.monotonic() - started < 2.0
    answer.set()
    for t in threads:
        t.join(WAIT_S)
    assert results == ["late"] * 4


def test_a_slow_handler_delays_only_its_own_connection(
        make_server: Callable[..., Server], make_client: Callable[..., Client]) -> None:
    srv = make_server()
    release = threading.Event()
    order: List[Any] = []

    @srv.on("app/slow")
    def slow(conn: Any, data: Any) -> Any:
        assert release.wait(WAIT_S)
        order.append(("slow", data))
        return data

    @srv.on("app/fast")
    def fast(conn: Any, data: Any) -> Any:
        order.append(("fast", data))
        return data

    a, b = make_client(srv.url), make_client(srv.url)
    a.send("app/slow", 1)
    a.send("app/fast", "a-after-slow")  # same connection: waits its turn
    assert b.request("app/fast", "b", timeout=WAIT_S) == "b"  # another connection: at once
    assert order == [("fast", "b")]
    release.set()
    wait_until(lambda: len(order) == 3, what="a's events handled")
    assert order[1:] == [("slow", 1), ("fast", "a-after-slow")]


def test_a_stalled_network_thread_does_not_close_live_peers(
        make_server: Callable[..., Server], make_client: Callable[..., Client]) -> None:
    """The heartbeat does not hold against peers a stretch in which the server's own
    network thread could not read them (here a call on it stalls it past the timeout)."""
    srv = make_server(heartbeat_ms=500)
    clients = [make_client(srv.url) for _ in range(3)]
    wait_until(lambda: all(c.stats().get("pings", 0) + c.stats().get("frames_in", 0) > 1
                           for c in clients), what="heartbeats flowing")
    stalled = threading.Event()

    def stall() -> None:
        time.sleep(1.8)  # longer than the 1.5 s heartbeat timeout, shorter than clients' 2 s
        stalled.set()

    srv._loop.call_soon(stall)  # type: ignore[union-attr]
    assert stalled.wait(WAIT_S)
    for c in clients:
        assert c.request("sente-lite/subscribe", {"channel-id": "after"}, timeout=WAIT_S)
    stats = srv.stats()
    assert stats.get("heartbeat_timeouts", 0) == 0
    assert stats["connections"] == 3 and stats.get("connections_closed", 0) == 0

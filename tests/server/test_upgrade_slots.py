"""Connection slots and failed upgrades: a slot is taken only by an upgrade about to be
answered 101, on the network thread, and every upgrade that fails (refused, aborted,
reset, decided on a worker after its peer left) gives its slot back at once. The
``authenticate`` hook holds no slot while it runs; ``max_pending_auth`` bounds how many
upgrades wait for it."""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import threading
from typing import Any, Callable, Dict, List, Optional

import pytest

from sente_lite import Server
from sente_lite.wire import protocol as p
from sente_lite.core.security import HandshakeRequest
from sente_lite.testing.abuse import RawPeer, upgrade_request
from support import WAIT_S, wait_until

MAX_CONNECTIONS = 3
#: Longest a "slow" token keeps the hook waiting when the test never releases it.
HOOK_BOUND_S = 30.0


class Hook:
    """An ``authenticate`` hook: ``good*`` admits, ``slow*`` waits for :meth:`release`
    then admits, ``raise`` raises, anything else is refused (401)."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.lock = threading.Lock()
        self.waiting = 0

    def __call__(self, req: HandshakeRequest) -> Optional[str]:
        token = req.token or ""
        if token.startswith("slow"):
            with self.lock:
                self.waiting += 1
            try:
                self.released.wait(HOOK_BOUND_S)
            finally:
                with self.lock:
                    self.waiting -= 1
            return "slowpoke"
        if token == "raise":
            raise RuntimeError("the hook's own bug")
        return "user" if token.startswith("good") else None

    def release(self) -> None:
        self.released.set()


def bearer(token: str) -> List[tuple]:
    return [("Authorization", f"Bearer {token}")]


def reset(peer: RawPeer) -> None:
    """Close with SO_LINGER 0: the kernel sends RST, not FIN."""
    try:
        peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    peer.close()


def holds(srv: Server, sock: socket.socket) -> bool:
    """Whether the server's network loop holds the other end of ``sock``."""
    return holds_name(srv, sock.getsockname())


def holds_name(srv: Server, name: tuple) -> bool:
    """Whether the server's network loop holds a link from ``name`` (host, port)."""
    loop = srv._loop
    assert loop is not None
    return any(link.remote == f"{name[0]}:{name[1]}" for link in list(loop.links.values()))


def slots(srv: Server) -> int:
    return srv.stats()["connection_slots"]


def refused(srv: Server, reason: str) -> int:
    return srv.stats()["handshakes_refused"].get(reason, 0)


# -- every kind of failed upgrade ------------------------------------------------------------
def reset_before_answer(srv: Server, hook: Hook) -> None:
    peer = RawPeer(srv.host, srv.port, WAIT_S)
    peer.send(upgrade_request(srv.host, srv.port, headers=bearer("good")))
    reset(peer)


def reset_after_answer(srv: Server, hook: Hook) -> None:
    peer = RawPeer(srv.host, srv.port, WAIT_S)
    assert peer.upgrade(headers=bearer("good"), timeout=WAIT_S).status == 101
    reset(peer)


def reset_after_handshake_frame(srv: Server, hook: Hook) -> None:
    peer = RawPeer(srv.host, srv.port, WAIT_S)
    assert peer.upgrade(headers=bearer("good"), timeout=WAIT_S).status == 101
    assert peer.read_text(WAIT_S)[0] == p.EV_HANDSHAKE
    reset(peer)


def half_close(srv: Server, hook: Hook) -> None:
    with RawPeer(srv.host, srv.port, WAIT_S) as peer:
        peer.send(upgrade_request(srv.host, srv.port, headers=bearer("good")))
        peer.sock.shutdown(socket.SHUT_WR)
        peer.read_http(WAIT_S)  # whatever the answer: the peer said it is done


def half_close_mid_request(srv: Server, hook: Hook) -> None:
    with RawPeer(srv.host, srv.port, WAIT_S) as peer:
        peer.send(upgrade_request(srv.host, srv.port, headers=bearer("good"))[:-2])
        peer.sock.shutdown(socket.SHUT_WR)
        peer.read_http(WAIT_S)


def reset_mid_request(srv: Server, hook: Hook) -> None:
    peer = RawPeer(srv.host, srv.port, WAIT_S)
    peer.send(upgrade_request(srv.host, srv.port, headers=bearer("good"))[:40])
    reset(peer)


def unauthenticated(srv: Server, hook: Hook) -> None:
    with RawPeer(srv.host, srv.port, WAIT_S) as peer:
        assert peer.upgrade(headers=bearer("wrong"), timeout=WAIT_S).status == 401


def unauthenticated_then_reset(srv: Server, hook: Hook) -> None:
    peer = RawPeer(srv.host, srv.port, WAIT_S)
    peer.send(upgrade_request(srv.host, srv.port, headers=bearer("wrong")))
    reset(peer)


def hook_raises(srv: Server, hook: Hook) -> None:
    with RawPeer(srv.host, srv.port, WAIT_S) as peer:
        assert peer.upgrade(headers=bearer("raise"), timeout=WAIT_S).status == 500


def slow_hook_then_peer_gone(srv: Server, hook: Hook) -> None:
    """The hook admits after its peer reset the connection."""
    hook.released.clear()
    peer = RawPeer(srv.host, srv.port, WAIT_S)
    sock = peer.sock
    peer.send(upgrade_request(srv.host, srv.port, headers=bearer("slow")))
    wait_until(lambda: hook.waiting == 1, what="the hook to start deciding")
    wait_until(lambda: holds(srv, sock), what="the server to hold the upgrade")
    name = sock.getsockname()
    reset(peer)
    wait_until(lambda: not holds_name(srv, name), what="the server to see the reset")
    hook.release()
    wait_until(lambda: hook.waiting == 0, what="the hook to return")


def bad_host(srv: Server, hook: Hook) -> None:
    with RawPeer(srv.host, srv.port, WAIT_S) as peer:
        peer.send(upgrade_request(srv.host, srv.port, headers=[("Host", "evil.example")]
                                  + bearer("good"), omit=("Host",)))
        assert peer.read_http(WAIT_S).status == 403


def bad_origin(srv: Server, hook: Hook) -> None:
    with RawPeer(srv.host, srv.port, WAIT_S) as peer:
        headers = [("Origin", "https://evil.example")] + bearer("good")
        assert peer.upgrade(headers=headers, timeout=WAIT_S).status == 403


def bad_version(srv: Server, hook: Hook) -> None:
    with RawPeer(srv.host, srv.port, WAIT_S) as peer:
        peer.send(upgrade_request(srv.host, srv.port, headers=[("Sec-WebSocket-Version", "8")]
                                  + bearer("good"), omit=("Sec-WebSocket-Version",)))
        assert peer.read_http(WAIT_S).status in (400, 426)


def bad_version_then_reset(srv: Server, hook: Hook) -> None:
    peer = RawPeer(srv.host, srv.port, WAIT_S)
    peer.send(upgrade_request(srv.host, srv.port, headers=[("Sec-WebSocket-Version", "8")]
                              + bearer("good"), omit=("Sec-WebSocket-Version",)))
    reset(peer)


def missing_key(srv: Server, hook: Hook) -> None:
    with RawPeer(srv.host, srv.port, WAIT_S) as peer:
        peer.send(upgrade_request(srv.host, srv.port, headers=bearer("good"),
                                  omit=("Sec-WebSocket-Key",)))
        assert peer.read_http(WAIT_S).status == 400


def oversized_headers(srv: Server, hook: Hook) -> None:
    with RawPeer(srv.host, srv.port, WAIT_S) as peer:
        peer.send(upgrade_request(srv.host, srv.port, headers=[("X-Long", "a" * 9000)]
                                  + bearer("good")))
        assert peer.read_http(WAIT_S).status == 431


def not_http(srv: Server, hook: Hook) -> None:
    with RawPeer(srv.host, srv.port, WAIT_S) as peer:
        peer.send(b"\x16\x03\x01garbage\r\n\r\n")
        assert peer.read_http(WAIT_S).status == 400


def wrong_path(srv: Server, hook: Hook) -> None:
    with RawPeer(srv.host, srv.port, WAIT_S) as peer:
        assert peer.upgrade(path="/elsewhere", headers=bearer("good"),
                            timeout=WAIT_S).status == 404


def bad_client_id(srv: Server, hook: Hook) -> None:
    with RawPeer(srv.host, srv.port, WAIT_S) as peer:
        assert peer.upgrade(path="/chsk?client-id=" + "x" * 300, headers=bearer("good"),
                            timeout=WAIT_S).status == 400


def probe_then_reset(srv: Server, hook: Hook) -> None:
    """A plain GET of the endpoint (the browser client's probe), reset before its answer."""
    peer = RawPeer(srv.host, srv.port, WAIT_S)
    peer.send(f"GET /chsk?token=good HTTP/1.1\r\nHost: {srv.host}:{srv.port}\r\n\r\n".encode())
    reset(peer)


def probe(srv: Server, hook: Hook) -> None:
    with RawPeer(srv.host, srv.port, WAIT_S) as peer:
        peer.send(f"GET /chsk?token=good HTTP/1.1\r\nHost: {srv.host}:{srv.port}\r\n\r\n".encode())
        assert peer.read_http(WAIT_S).status == 200


ANY_SERVER: List[Callable[[Server, Hook], None]] = [
    reset_before_answer, reset_after_answer, reset_after_handshake_frame, half_close,
    half_close_mid_request, reset_mid_request, bad_host, bad_origin, bad_version,
    bad_version_then_reset, missing_key, oversized_headers, not_http, wrong_path, bad_client_id,
    probe, probe_then_reset]
HOOK_ONLY: List[Callable[[Server, Hook], None]] = [
    unauthenticated, unauthenticated_then_reset, hook_raises, slow_hook_then_peer_gone]


def connect_all(srv: Server, n: int) -> List[RawPeer]:
    """``n`` upgrades that must all be admitted (101 and the handshake frame)."""
    peers = []
    for i in range(n):
        peer = RawPeer(srv.host, srv.port, WAIT_S)
        peers.append(peer)
        answer = peer.upgrade(headers=bearer(f"good-{i}"), timeout=WAIT_S)
        assert answer.status == 101, (i, answer.status, answer.body)
        assert peer.read_text(WAIT_S)[0] == p.EV_HANDSHAKE
    return peers


@pytest.mark.parametrize("with_hook", [True, False], ids=["authenticate-hook", "no-hook"])
def test_every_failed_upgrade_gives_its_slot_back_at_once(
        make_server: Callable[..., Server], with_hook: bool) -> None:
    hook = Hook()
    srv = make_server(max_connections=MAX_CONNECTIONS, close_timeout=30.0,
                      authenticate=hook if with_hook else None)
    kinds = ANY_SERVER + (HOOK_ONLY if with_hook else [])
    try:
        for kind in kinds:
            for _ in range(MAX_CONNECTIONS + 1):  # one leak per attempt would fill every slot
                kind(srv, hook)
            # close_timeout is 30 s: a slot given back only when its socket ends is too late
            wait_until(lambda: slots(srv) == 0, timeout=5.0,
                       what=f"every slot given back after {kind.__name__}")
        peers = connect_all(srv, MAX_CONNECTIONS)
        with RawPeer(srv.host, srv.port, WAIT_S) as extra:
            assert extra.upgrade(headers=bearer("good"), timeout=WAIT_S).status == 503
        assert refused(srv, "max-connections") == 1
        for peer in peers:
            peer.close()
        wait_until(lambda: slots(srv) == 0 and srv.stats()["connections"] == 0,
                   what="slots of closed connections given back")
    finally:
        hook.release()


def test_reset_upgrades_with_a_hook_never_lock_the_server(make_server: Callable[..., Server]) -> None:
    """The reported case: 30 upgrades reset before their (worker-decided) answer."""
    srv = make_server(max_connections=MAX_CONNECTIONS, authenticate=lambda r: "u")
    for _ in range(30):
        reset_before_answer(srv, Hook())
    wait_until(lambda: slots(srv) == 0, timeout=5.0, what="every slot given back")
    for peer in connect_all(srv, MAX_CONNECTIONS):
        peer.close()


def _tls_pair(tmp_path: Any) -> "tuple[ssl.SSLContext, ssl.SSLContext]":
    from test_netloop import _self_signed
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    return server_ctx, client_ctx


def test_reset_tls_upgrades_give_their_slot_back(make_server: Callable[..., Server],
                                                  tmp_path: Any) -> None:
    server_ctx, client_ctx = _tls_pair(tmp_path)
    hook = Hook()
    srv = make_server(max_connections=MAX_CONNECTIONS, ssl_context=server_ctx,
                      authenticate=hook, close_timeout=30.0)

    def tls_peer() -> ssl.SSLSocket:
        raw = socket.create_connection((srv.host, srv.port), timeout=WAIT_S)
        return client_ctx.wrap_socket(raw, server_hostname="127.0.0.1")

    def tls_reset(sock: ssl.SSLSocket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    try:
        for token in ("good", "slow", "wrong"):
            for _ in range(MAX_CONNECTIONS + 1):
                hook.released.clear()
                sock = tls_peer()
                sock.sendall(upgrade_request(srv.host, srv.port, headers=bearer(token)))
                if token == "slow":
                    wait_until(lambda: hook.waiting == 1, what="the hook to start deciding")
                name = sock.getsockname()
                tls_reset(sock)
                wait_until(lambda: not holds_name(srv, name), what="the server to see the reset")
                hook.release()
                wait_until(lambda: hook.waiting == 0, what="the hook to return")
            wait_until(lambda: slots(srv) == 0, timeout=5.0, what=f"slots back after {token}")
        sock = tls_peer()  # a TLS handshake, then a reset before any request
        tls_reset(sock)
        socks = []
        for i in range(MAX_CONNECTIONS):
            sock = tls_peer()
            socks.append(sock)
            sock.sendall(upgrade_request(srv.host, srv.port, headers=bearer(f"good-{i}")))
            assert sock.recv(64).startswith(b"HTTP/1.1 101")
        for sock in socks:
            sock.close()
    finally:
        hook.release()


# -- authentication holds no slot; max_pending_auth bounds it -------------------------------
def pending(srv: Server, hook: Hook, n: int, token: str = "slow") -> List[RawPeer]:
    """``n`` upgrades whose hook is still deciding."""
    peers = []
    for _ in range(n):
        peer = RawPeer(srv.host, srv.port, WAIT_S)
        peer.send(upgrade_request(srv.host, srv.port, headers=bearer(token)))
        peers.append(peer)
    wait_until(lambda: srv.stats()["pending_auth"] == n, what=f"{n} upgrades deciding")
    return peers


def test_slow_and_failing_authentication_never_blocks_real_clients(
        make_server: Callable[..., Server]) -> None:
    hook = Hook()
    # fewer handler threads than slow hooks: a hook waiting does not hold back the others
    srv = make_server(max_connections=MAX_CONNECTIONS, max_pending_auth=16, authenticate=hook,
                      max_handler_threads=2, min_handler_threads=1)
    try:
        slow = pending(srv, hook, 8)
        assert slots(srv) == 0
        for _ in range(10):
            unauthenticated(srv, hook)
            hook_raises(srv, hook)
        assert slots(srv) == 0
        peers = connect_all(srv, MAX_CONNECTIONS)  # while 8 hooks are still deciding
        assert srv.stats()["pending_auth"] == 8
        hook.release()
        for peer in slow:  # decided once the server is full: 503
            assert peer.read_http(WAIT_S).status == 503
            peer.close()
        wait_until(lambda: srv.stats()["pending_auth"] == 0, what="every decision made")
        assert slots(srv) == MAX_CONNECTIONS
        for peer in peers:
            peer.close()
    finally:
        hook.release()


def test_max_pending_auth_is_enforced_and_visible(make_server: Callable[..., Server],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    hook = Hook()
    srv = make_server(max_connections=MAX_CONNECTIONS, max_pending_auth=2, authenticate=hook)
    try:
        slow = pending(srv, hook, 2)
        with caplog.at_level(logging.WARNING, logger="sente_lite"):
            for token in ("good", "slow", "wrong"):
                with RawPeer(srv.host, srv.port, WAIT_S) as peer:
                    answer = peer.upgrade(headers=bearer(token), timeout=WAIT_S)
                    assert answer.status == 503 and b"max_pending_auth" in answer.body
        assert hook.waiting == 2  # the refused ones never reached the hook
        assert refused(srv, "max-pending-auth") == 3
        lines = [r for r in caplog.records
                 if getattr(r, "sente_lite", {}).get("reason") == "max-pending-auth"]
        assert lines and "max_pending_auth" in lines[0].getMessage()
        # bad requests are refused before any hook: they never take a decision's place
        bad_origin(srv, hook)
        bad_host(srv, hook)
        hook.release()
        for peer in slow:
            assert peer.read_http(WAIT_S).status == 101
        wait_until(lambda: srv.stats()["pending_auth"] == 0, what="the decisions to end")
        more = connect_all(srv, 1)
        for peer in slow + more:
            peer.close()
    finally:
        hook.release()


def test_a_decision_whose_peer_left_still_counts_until_the_hook_returns(
        make_server: Callable[..., Server]) -> None:
    """The hook's thread is busy until it returns, whatever its peer did."""
    hook = Hook()
    srv = make_server(max_pending_auth=1, authenticate=hook)
    try:
        peer = pending(srv, hook, 1)[0]
        reset(peer)
        with RawPeer(srv.host, srv.port, WAIT_S) as other:
            assert other.upgrade(headers=bearer("good"), timeout=WAIT_S).status == 503
        hook.release()
        wait_until(lambda: srv.stats()["pending_auth"] == 0, what="the hook to return")
        connect_all(srv, 1)[0].close()
        assert slots(srv) <= 1
    finally:
        hook.release()


@pytest.mark.parametrize("value", [0, -1, None, 1.5, "8"])
def test_max_pending_auth_is_validated(value: Any) -> None:
    with pytest.raises((ValueError, TypeError), match="max_pending_auth"):
        Server(max_pending_auth=value)


def test_the_limit_is_in_stats_and_metrics(make_server: Callable[..., Server]) -> None:
    srv = make_server(max_pending_auth=5)
    stats: Dict[str, Any] = srv.stats()
    assert stats["pending_auth"] == 0 and srv.max_pending_auth == 5

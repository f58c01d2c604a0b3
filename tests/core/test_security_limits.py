"""Every abuse limit: what hitting it does (status, close code, error code) and its counter."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any, List

import pytest

from sente_lite import RemoteError, Server
from sente_lite.errors import LimitExceeded
from sente_lite.limits import RateGuard, TokenBucket
from sente_lite.server.netloop import EVICT_MIN_AGE_S
from sente_lite.testing.abuse import RawPeer, upgrade_request
from support import WAIT_S, wait_until

HANDSHAKE_TIMEOUT_S = 0.5
#: Allowance for a loaded 2-core machine on top of a deadline the server enforces; still
#: far below what a missing limit costs (the 10 s default handshake timeout, or forever).
SLACK_S = 4.0


def refused(srv: Server, reason: str) -> int:
    return srv.stats()["handshakes_refused"].get(reason, 0)


def opened(srv: Server) -> RawPeer:
    peer = RawPeer(srv.host, srv.port)
    assert peer.upgrade().status == 101
    assert peer.read_text()[0] == "chsk/handshake"
    return peer


# -- connections and upgrades ------------------------------------------------------------
def test_max_connections_is_503_at_upgrade_and_frees_on_close(make_face, make_client):
    srv = make_face(max_connections=2)
    a, b = opened(srv), opened(srv)
    try:
        with RawPeer(srv.host, srv.port) as third:
            answer = third.upgrade()
            assert answer.status == 503 and b"max_connections" in answer.body
        assert refused(srv, "max-connections") == 1
        # a client refused with 503 keeps retrying (the server is full, not hostile)
        c = make_client(srv.url, connect=False, backoff_base=0.01, backoff_max=0.05)
        wait_until(lambda: c.stats().get("connect_failures", 0) >= 2, what="client retries on 503")
        assert c.refusal is None
        a.close()
        assert c.wait_connected(WAIT_S)
        assert srv.stats()["connection_slots"] == 2
    finally:
        a.close()
        b.close()
    wait_until(lambda: srv.stats()["connection_slots"] == 1, what="slots of closed peers released")


def test_slot_is_released_when_an_admitted_upgrade_fails(make_server):
    srv = make_server(max_connections=1)
    for i in range(3):  # passes the server's checks, then websockets refuses it: no slot leak
        with RawPeer(srv.host, srv.port) as peer:
            peer.send(upgrade_request(srv.host, srv.port, omit=("Sec-WebSocket-Key",)))
            assert peer.read_http().status == 400
        # the slot is freed as the server closes the socket, just after its answer
        wait_until(lambda: srv.stats()["connection_slots"] == 0, what=f"slot of upgrade {i} released")
    wait_until(lambda: refused(srv, "invalid-upgrade") == 3, what="3 invalid upgrades counted")
    opened(srv).close()


def test_slowloris_upgrades_are_bounded_in_number_and_time(make_server, make_client):
    srv = make_server(max_pending_handshakes=2, handshake_timeout=EVICT_MIN_AGE_S + 1.0,
                      request_line_timeout=EVICT_MIN_AGE_S + 1.0)
    slow = [RawPeer(srv.host, srv.port) for _ in range(2)]
    try:
        for peer in slow:
            peer.send(b"GET /chsk HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        wait_until(lambda: srv.stats()["pending_handshakes"] == 2, what="2 pending upgrades")
        time.sleep(EVICT_MIN_AGE_S)  # only upgrades older than this are evicted (an age, not a sync)
        # full: a third upgrade evicts the oldest pending one instead of being turned away
        c = make_client(srv.url)
        assert c.wait_connected(WAIT_S)
        assert slow[0].read_http(WAIT_S).status is None  # the oldest: dropped without an answer
        assert refused(srv, "handshake-evicted") == 1
        started = time.monotonic()
        assert slow[1].read_http(1.0 + SLACK_S).status is None  # cut at the deadline
        assert time.monotonic() - started < 1.0 + SLACK_S
        wait_until(lambda: refused(srv, "handshake-timeout") == 1, what="the timeout counted")
        assert srv.stats()["pending_handshakes"] == 0
    finally:
        for peer in slow:
            peer.close()
    assert c.request("sente-lite/subscribe", {"channel-id": "x"})["offset"] == 0


def test_a_socket_without_a_request_line_is_cut_at_request_line_timeout(make_server):
    srv = make_server(request_line_timeout=0.3, handshake_timeout=30.0)
    with RawPeer(srv.host, srv.port) as peer:
        started = time.monotonic()
        peer.send(b"G")  # one byte of garbage, no line end
        assert peer.read_http(0.3 + SLACK_S).status is None
        assert time.monotonic() - started < 0.3 + SLACK_S
    wait_until(lambda: refused(srv, "handshake-timeout") == 1, what="timeout counted")


def _trickle(peers: List[RawPeer], stop: threading.Event) -> None:
    """Send one byte a second per socket, the way a slowloris attacker holds slots."""
    request = b"GET /chsk HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"p" * 100
    i = 0
    while not stop.wait(1.0) and i < len(request):
        for peer in peers:
            try:
                peer.sock.send(request[i:i + 1])
            except OSError:
                pass  # dropped by the server: what it should do
        i += 1


@pytest.mark.parametrize("attacker_host", ["127.0.0.2", "127.0.0.1"])
def test_a_slowloris_flood_cannot_lock_out_a_client(make_server, make_client, attacker_host):
    """1,000 sockets trickling their upgrade one byte a second, from one address (another
    one, or the client's own): a legitimate client still connects within 2 s."""
    srv = make_server()
    peers: List[RawPeer] = []
    stop = threading.Event()
    try:
        for _ in range(1000):
            peers.append(RawPeer(srv.host, srv.port, WAIT_S, source_host=attacker_host))
        for peer in peers:
            peer.sock.send(b"G")
        trickler = threading.Thread(target=_trickle, args=(peers, stop), daemon=True)
        trickler.start()
        wait_until(lambda: srv.stats()["handshakes_refused"].get("handshake-evicted", 0) > 0,
                   what="the flood to fill the pending upgrades")
        for attempt in range(3):
            started = time.monotonic()
            c = make_client(srv.url, backoff_max=0.5)
            assert c.wait_connected(2.0), f"client {attempt} locked out by the flood"
            assert time.monotonic() - started < 2.0
            c.close()
        # the burst's young sockets get EVICT_MIN_AGE_S to send their request, then the cap holds
        wait_until(lambda: srv.stats()["pending_handshakes"] <= srv.max_pending_handshakes,
                   what="upgrades in progress back under max_pending_handshakes")
    finally:
        stop.set()
        for peer in peers:
            peer.close()
    trickler.join(WAIT_S)


def test_a_trickling_upgrade_is_cut_at_the_handshake_timeout(make_server, make_client):
    srv = make_server(handshake_timeout=HANDSHAKE_TIMEOUT_S)
    good = make_client(srv.url)
    request = upgrade_request(srv.host, srv.port, headers=[("X-Padding", "p" * 300)])
    assert len(request) * 0.02 > 2 * (HANDSHAKE_TIMEOUT_S + SLACK_S)  # uncut, it outlasts the bound
    started = time.monotonic()
    with RawPeer(srv.host, srv.port) as peer:
        peer.sock.settimeout(0.02)
        for i in range(len(request)):  # one byte per 20 ms: ~9 s for the whole request
            try:
                peer.sock.sendall(request[i:i + 1])
                if peer.sock.recv(1) == b"":
                    break  # the server hung up
            except TimeoutError:
                pass  # still open: that wait was the trickle's pause
            except OSError:
                break  # reset by the server
            assert good.request("sente-lite/subscribe", {"channel-id": "g"}, timeout=WAIT_S)
        cut_after = time.monotonic() - started
    assert cut_after < HANDSHAKE_TIMEOUT_S + SLACK_S
    wait_until(lambda: refused(srv, "handshake-timeout") == 1, what="timeout counted")


def test_stop_does_not_wait_for_unfinished_upgrades(make_server):
    srv = make_server(handshake_timeout=30.0)
    with RawPeer(srv.host, srv.port) as peer:
        peer.send(b"GET /chsk HTTP/1.1\r\n")
        wait_until(lambda: srv.stats()["pending_handshakes"] == 1, what="pending upgrade")
        started = time.monotonic()
        srv.stop()
        assert time.monotonic() - started < 3.0 + SLACK_S  # far below the 30 s handshake timeout


def test_header_size_limits_answer_414_and_431(make_server):
    srv = make_server()
    cases = [
        (upgrade_request(srv.host, srv.port, headers=[("X-Long", "a" * 9000)]), 431),
        (upgrade_request(srv.host, srv.port, headers=[(f"X-{i}", "v") for i in range(200)]), 431),
        (upgrade_request(srv.host, srv.port, path="/chsk?x=" + "a" * 9000), 414),
    ]
    for request, status in cases:
        with RawPeer(srv.host, srv.port) as peer:
            peer.send(request)
            assert peer.read_http().status == status
    wait_until(lambda: refused(srv, "headers-too-large") == 3, what="3 header refusals counted")


def test_malformed_upgrades_are_refused_and_counted(make_server):
    srv = make_server()
    with RawPeer(srv.host, srv.port) as peer:
        peer.send(upgrade_request(srv.host, srv.port, headers=[("Sec-WebSocket-Version", "8")],
                                  omit=("Sec-WebSocket-Version",)))
        assert peer.read_http().status in (400, 426)
    with RawPeer(srv.host, srv.port) as peer:
        peer.send(b"\x16\x03\x01garbage, maybe TLS\r\n\r\n")
        assert peer.read_http().status == 400  # not HTTP: 400, then closed
    with RawPeer(srv.host, srv.port) as peer:
        peer.send(b"GET /chsk HTTP/1.1\nHost: x\r\n\r\n")  # a line without CRLF
        assert peer.read_http().status == 400
    with RawPeer(srv.host, srv.port) as peer:
        peer.send(upgrade_request(srv.host, srv.port, path="/elsewhere"))
        assert peer.read_http().status == 404
    with RawPeer(srv.host, srv.port) as probe:  # a port probe: connect and leave, not a refusal
        probe.sock.shutdown(socket.SHUT_WR)
        assert probe.read_http().status is None  # the server took it and hung up
    srv.stop()  # returns once every connection's handler ended: every verdict is counted
    st = srv.stats()["handshakes_refused"]
    assert st == {"invalid-upgrade": 1, "bad-request": 2, "not-found": 1}


# -- frames -------------------------------------------------------------------------------
def test_max_message_bytes_closes_1009_and_counts(make_face):
    srv = make_face(max_message_bytes=1000)
    with opened(srv) as peer:
        peer.send_text(json.dumps(["app/big", "x" * 2000]))
        assert peer.read_until_close()[0] == 1009
    wait_until(lambda: srv.stats().get("too_large_closes") == 1, what="1009 counted")


def test_bad_utf8_and_protocol_violations_are_closed_and_counted(make_server):
    srv = make_server()
    with opened(srv) as peer:
        peer.send_frame(b"\xff\xfe")
        assert peer.read_until_close()[0] == 1007
    with opened(srv) as peer:
        peer.send_frame(b'["a/b"]', mask=False)
        assert peer.read_until_close()[0] == 1002
    wait_until(lambda: srv.stats().get("protocol_error_closes") == 2, what="protocol closes counted")


def test_max_channel_id_chars_is_invalid_channel(make_face, make_client):
    srv = make_face(max_channel_id_chars=10)
    c = make_client(srv.url)
    with pytest.raises(RemoteError) as info:
        c.subscribe("x" * 11)
    assert info.value.code == "invalid-channel" and "10" in info.value.message
    assert srv.stats()["invalid_channel"] == 1


def test_inbound_rate_limit_answers_rate_limited_then_closes_1008(make_face, make_client):
    # one token per 100 s: however slowly the server reads, only the burst of 5 passes
    # (no pings during the test: the good client spends its burst on its one request)
    srv = make_face(rate_limit=0.01, rate_burst=5, max_rate_limited=10, heartbeat_ms=600_000)
    good = make_client(srv.url)
    with opened(srv) as peer:
        for i in range(8):
            peer.send_text(json.dumps(["chsk/ws-ping", None, f"r{i}"]))
        answers = [peer.read_text() for _ in range(8)]
        replies = [a for a in answers if a[0] == "chsk/reply"]
        limited = [a for a in answers if a[0] == "chsk/error"]
        assert len(replies) == 5 and len(limited) == 3
        assert all(a[1]["code"] == "rate-limited" for a in limited)
        assert {a[2] for a in answers} == {f"r{i}" for i in range(8)}  # each request answered once
        for i in range(50):  # keeps going over the rate: cut
            peer.send_text(json.dumps(["app/flood", i]))
        code, _ = peer.read_until_close()
    assert code == 1008
    st = srv.stats()
    assert st["rate_limit_closes"] == 1 and st["rate_limited"] >= 11
    assert good.request("sente-lite/subscribe", {"channel-id": "ok"})["offset"] == 0  # others unaffected


def test_rate_limit_none_turns_the_limit_off(make_face):
    srv = make_face(rate_limit=None)
    with opened(srv) as peer:
        for i in range(300):
            peer.send_text(json.dumps(["chsk/ws-ping", None, f"r{i}"]))
        assert all(peer.read_text()[0] == "chsk/reply" for _ in range(300))
    assert srv.stats().get("rate_limited", 0) == 0


def test_max_outstanding_requests_bounds_server_to_client_requests(make_server, make_client):
    srv = make_server(max_outstanding_requests=2)
    release = threading.Event()
    c = make_client(srv.url)
    c.on("app/slow", lambda data: release.wait(WAIT_S) and data)
    [conn] = wait_until(lambda: srv.connections(), what="server lists the connection")
    results: List[Any] = []
    askers = [threading.Thread(target=lambda i=i: results.append(srv.request(conn["conn-id"], "app/slow", i)))
              for i in range(2)]
    for t in askers:
        t.start()
    wait_until(lambda: srv._conns[conn["conn-id"]].session.outstanding == 2,
               what="2 outstanding requests")
    with pytest.raises(LimitExceeded) as info:
        srv.request(conn["conn-id"], "app/slow", 3)
    assert "max_outstanding_requests=2" in str(info.value)
    release.set()
    for t in askers:
        t.join(WAIT_S)
    assert sorted(results) == [0, 1]
    assert srv.stats()["outstanding_request_limit"] == 1
    assert srv.request(conn["conn-id"], "app/slow", 4) == 4  # room again


def test_bad_frames_in_a_row_close_1008_counted_once(make_face):
    srv = make_face(max_bad_frames_in_row=5)
    with opened(srv) as peer:
        for _ in range(20):
            peer.send_text("not json")
        assert peer.read_until_close()[0] == 1008
    wait_until(lambda: srv.stats()["connections"] == 0, what="closed")
    assert srv.stats()["bad_frame_closes"] == 1


# -- settings and the pure parts ------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [
    {"rate_limit": 0}, {"max_subscriptions_per_conn": 0}, {"max_rate_limited": 0},
    {"max_outstanding_requests": 0}, {"max_connections": 0}, {"max_pending_handshakes": 0},
    {"handshake_timeout": 0},
])
def test_limit_settings_are_validated(kwargs):
    with pytest.raises(ValueError):
        Server(**kwargs)


def test_token_bucket_and_rate_guard_follow_the_clock():
    now = [0.0]
    bucket = TokenBucket(rate=10, capacity=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.1
    assert bucket.take() and not bucket.take()
    guard = RateGuard(rate=10, burst=2, max_rate_limited=3, clock=lambda: now[0])
    verdicts = [guard.check() for _ in range(6)]
    assert verdicts == ["ok", "ok", "limited", "limited", "limited", "close"]
    now[0] += 10.0  # patience and tokens come back with time
    assert guard.check() == "ok"

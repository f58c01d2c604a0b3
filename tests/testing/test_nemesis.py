"""The fault-injecting proxy (sente_lite.testing.nemesis) with real sockets: forwarding,
cut, blackhole with held bytes, delay, stop; and a sente_lite client through it."""

from __future__ import annotations

import os
import select
import selectors
import socket
import threading
import time
from typing import Callable, Dict, Iterator, List

import pytest

from sente_lite import Client, Server
from sente_lite.testing import Nemesis, port_is_free
from sente_lite.testing import nemesis as nemesis_module
from support import WAIT_S, Recorder, wait_until

#: Seconds a blackholed link must stay silent in these tests.
SILENCE_S = 0.3
#: Fast client reconnects for the sente_lite tests.
FAST_BACKOFF = {"backoff_base": 0.02, "backoff_max": 0.2}


class EchoServer:
    """A TCP echo server on one thread of its own (``selectors``); counts what it read."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.received = 0
        self.accepted = 0
        self._wake_r, self._wake_w = socket.socketpair()
        self._stop = False
        self._sel = selectors.DefaultSelector()  # made here: every descriptor exists on return
        self._thread = threading.Thread(target=self._loop, name="echo-server", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        sel = self._sel
        sel.register(self.listener, selectors.EVENT_READ, None)
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        conns: List[socket.socket] = []
        try:
            while not self._stop:
                for key, _ in sel.select():
                    sock = key.fileobj
                    if sock is self._wake_r:
                        continue
                    if sock is self.listener:
                        conn, _ = self.listener.accept()
                        self.accepted += 1
                        conns.append(conn)
                        sel.register(conn, selectors.EVENT_READ, None)
                        continue
                    assert isinstance(sock, socket.socket)
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        sel.unregister(sock)
                        conns.remove(sock)
                        sock.close()
                        continue
                    self.received += len(data)
                    sock.setblocking(True)  # small test payloads: a blocking echo is fine
                    try:
                        sock.sendall(data)
                    except OSError:
                        pass
                    sock.setblocking(False)
        finally:
            for c in conns:
                c.close()
            sel.close()

    def stop(self) -> None:
        self._stop = True
        self._wake_w.send(b"x")
        self._thread.join(WAIT_S)
        assert not self._thread.is_alive()
        for s in (self.listener, self._wake_r, self._wake_w):
            s.close()


def open_fds() -> Dict[str, str]:
    """fd -> what it is, for every descriptor of this process."""
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            out[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass  # the listing's own descriptor, closed by now
    return out


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    srv = EchoServer()
    yield srv
    srv.stop()


@pytest.fixture
def nemesis(echo: EchoServer) -> Iterator[Nemesis]:
    nem = Nemesis("127.0.0.1", echo.port).start()
    yield nem
    nem.stop()


@pytest.fixture
def connect(nemesis: Nemesis) -> Iterator[Callable[[], socket.socket]]:
    """Open client sockets to the proxy; all closed after the test."""
    socks: List[socket.socket] = []

    def make() -> socket.socket:
        s = socket.create_connection(("127.0.0.1", nemesis.port), timeout=WAIT_S)
        socks.append(s)
        return s

    yield make
    for s in socks:
        s.close()


def recv_exactly(sock: socket.socket, n: int, timeout: float = WAIT_S) -> bytes:
    """Read exactly ``n`` bytes before the deadline (fails the test otherwise)."""
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while len(buf) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"got {len(buf)} of {n} bytes within {timeout}s")
        sock.settimeout(remaining)
        chunk = sock.recv(n - len(buf))
        if not chunk:
            pytest.fail(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def assert_silent(sock: socket.socket, seconds: float = SILENCE_S) -> None:
    """Nothing arrives on ``sock`` for ``seconds``, and it is still open (no EOF, no reset)."""
    sock.settimeout(seconds)
    with pytest.raises(socket.timeout):
        data = sock.recv(1)
        pytest.fail(f"received {data!r} (b'' is EOF) on a blackholed link")


def connection_ended(sock: socket.socket, timeout: float = WAIT_S) -> str:
    """Wait until ``sock`` sees EOF or a reset; returns which."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"connection still open after {timeout}s")
        sock.settimeout(remaining)
        try:
            if not sock.recv(65536):
                return "eof"
        except ConnectionResetError:
            return "reset"
        except socket.timeout:
            continue


def test_forwards_both_ways(nemesis: Nemesis, echo: EchoServer,
                            connect: Callable[[], socket.socket]) -> None:
    a, b = connect(), connect()
    payload = os.urandom(300_000)  # several chunks each way
    a.sendall(payload)
    b.sendall(b"hello")
    assert recv_exactly(b, 5) == b"hello"
    assert recv_exactly(a, len(payload)) == payload
    stats = nemesis.stats()
    assert stats["accepted"] == 2 and stats["active"] == 2 and stats["state"] == "forwarding"
    assert stats["bytes_to_target"] == stats["bytes_to_client"] == len(payload) + 5
    assert stats["held_bytes"] == 0


def test_client_close_is_forwarded_and_the_link_closed(nemesis: Nemesis,
                                                      connect: Callable[[], socket.socket]) -> None:
    a = connect()
    a.sendall(b"bye")
    assert recv_exactly(a, 3) == b"bye"
    a.shutdown(socket.SHUT_WR)  # the echo server sees EOF and closes: EOF comes back
    assert connection_ended(a) == "eof"
    wait_until(lambda: nemesis.stats()["active"] == 0, what="the link to be closed")
    assert nemesis.stats()["closed"] == 1


def test_cut_resets_every_connection_and_new_ones_work(nemesis: Nemesis, echo: EchoServer,
                                                       connect: Callable[[], socket.socket]) -> None:
    socks = [connect() for _ in range(3)]
    for i, s in enumerate(socks):
        s.sendall(b"%d" % i)
        assert recv_exactly(s, 1) == b"%d" % i
    assert nemesis.cut() == 3
    for s in socks:
        assert connection_ended(s) in ("eof", "reset")
    stats = nemesis.stats()
    assert stats["cut"] == 3 and stats["active"] == 0
    wait_until(lambda: echo.accepted == 3, what="the echo server saw 3 connections")
    fresh = connect()
    fresh.sendall(b"after")
    assert recv_exactly(fresh, 5) == b"after"
    assert nemesis.stats()["accepted"] == 4


def test_blackhole_holds_data_and_heal_delivers_it_in_order(nemesis: Nemesis, echo: EchoServer,
                                                            connect: Callable[[], socket.socket]
                                                            ) -> None:
    a = connect()
    a.sendall(b"ping")
    assert recv_exactly(a, 4) == b"ping"
    nemesis.blackhole()
    assert nemesis.stats()["state"] == "blackhole"
    a.sendall(b"first ")
    a.sendall(b"second")
    assert_silent(a)
    assert echo.received == 4  # nothing reached the target either
    late = connect()  # accepted during the partition, not connected to the target
    late.sendall(b"late")
    assert_silent(late)
    assert echo.accepted == 1
    assert nemesis.stats()["active"] == 2
    nemesis.heal()
    assert recv_exactly(a, 12) == b"first second"
    assert recv_exactly(late, 4) == b"late"
    assert nemesis.stats()["state"] == "forwarding"


def test_bytes_read_before_a_blackhole_are_held_not_dropped(nemesis: Nemesis, echo: EchoServer,
                                                            connect: Callable[[], socket.socket]
                                                            ) -> None:
    a = connect()
    nemesis.delay(60_000)  # the proxy reads it and holds it as a link in flight would
    a.sendall(b"in flight")
    wait_until(lambda: nemesis.stats()["held_bytes"] == 9, what="9 bytes read by the proxy")
    nemesis.blackhole()
    a.sendall(b", then more")
    assert_silent(a)
    assert echo.received == 0
    nemesis.heal()  # also removes the delay
    assert recv_exactly(a, 20) == b"in flight, then more"


def test_held_bytes_are_bounded(monkeypatch: pytest.MonkeyPatch, nemesis: Nemesis,
                                echo: EchoServer, connect: Callable[[], socket.socket]) -> None:
    limit = 64 * 1024
    monkeypatch.setattr(nemesis_module, "MAX_HELD_BYTES", limit)
    monkeypatch.setattr(nemesis_module, "READ_CHUNK_BYTES", 10_000)
    a = connect()
    nemesis.delay(60_000)
    a.setblocking(False)
    payload = os.urandom(8 * 1024 * 1024)  # far more than the proxy and the kernel hold
    sent = 0
    deadline = time.monotonic() + WAIT_S
    while nemesis.stats()["held_bytes"] < limit:
        assert time.monotonic() < deadline, "the proxy never filled its hold"
        try:
            sent += a.send(payload[sent:sent + 65536])
        except BlockingIOError:  # the kernel's buffers are full: wait until the proxy reads
            select.select([], [a], [], 0.1)
    # the proxy holds exactly the limit and stopped reading: the rest waits in the kernel
    try:
        while True:
            sent += a.send(payload[sent:sent + 65536])
    except BlockingIOError:
        pass
    assert nemesis.stats()["held_bytes"] == limit < sent
    a.setblocking(True)
    nemesis.heal()
    assert recv_exactly(a, 1000) == payload[:1000]


def test_delay_adds_latency_and_keeps_order(nemesis: Nemesis,
                                            connect: Callable[[], socket.socket]) -> None:
    a = connect()
    a.sendall(b"warm")
    assert recv_exactly(a, 4) == b"warm"
    delay_ms = 200
    nemesis.delay(delay_ms)
    assert nemesis.stats()["delay_ms"] == delay_ms
    t0 = time.perf_counter()
    for i in range(5):
        a.sendall(b"%d" % i)
    got = recv_exactly(a, 5)
    elapsed_ms = (time.perf_counter() - t0) * 1000
    assert got == b"01234"
    # two hops (to the echo server and back), each delayed: at least 2 x the delay
    assert elapsed_ms >= 2 * delay_ms, elapsed_ms
    assert elapsed_ms < 2 * delay_ms + WAIT_S * 1000
    nemesis.delay(0)
    t0 = time.perf_counter()
    a.sendall(b"x")
    assert recv_exactly(a, 1) == b"x"
    assert (time.perf_counter() - t0) * 1000 < WAIT_S * 1000


def test_stop_ends_the_thread_frees_the_port_and_every_descriptor(echo: EchoServer) -> None:
    fds_before = open_fds()
    threads_before = set(threading.enumerate())
    nem = Nemesis("127.0.0.1", echo.port).start()
    port = nem.port
    assert port is not None and not port_is_free(port)
    socks = [socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) for _ in range(3)]
    for s in socks:
        s.sendall(b"x")
        assert recv_exactly(s, 1) == b"x"
    nem.blackhole()
    socket.create_connection(("127.0.0.1", port), timeout=WAIT_S).close()
    wait_until(lambda: nem.stats()["accepted"] == 4, what="4 accepted")
    nem.stop()
    nem.stop()  # idempotent
    assert set(threading.enumerate()) <= threads_before
    for s in socks:
        assert connection_ended(s) in ("eof", "reset")
        s.close()
    assert port_is_free(port)
    wait_until(lambda: echo.accepted == 3 and open_fds().keys() <= fds_before.keys(),
               what=f"every descriptor of the proxy and its links closed (before: {fds_before})")
    assert nem.stats()["state"] == "stopped"
    with pytest.raises(RuntimeError):
        nem.cut()


def test_commands_are_thread_safe(nemesis: Nemesis, connect: Callable[[], socket.socket]) -> None:
    errors: List[BaseException] = []

    def hammer() -> None:
        try:
            for _ in range(50):
                nemesis.delay(1)
                nemesis.stats()
                nemesis.blackhole()
                nemesis.heal()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    a = connect()
    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    assert not errors and not any(t.is_alive() for t in threads)
    nemesis.heal()
    a.sendall(b"still works")
    assert recv_exactly(a, 11) == b"still works"


def test_connect_failure_resets_the_client() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]  # nothing listens there
    with Nemesis("127.0.0.1", dead_port) as nem:
        try:
            c = socket.create_connection(("127.0.0.1", nem.port), timeout=WAIT_S)
        except ConnectionResetError:
            pass  # reset before connect() returned: the target refused at once
        else:
            with c:
                assert connection_ended(c) in ("eof", "reset")
        wait_until(lambda: nem.stats()["connect_failures"] == 1, what="one connect failure")


# -- a sente_lite client through the proxy --------------------------------------------


def test_sente_client_reconnects_after_a_cut(make_server: Callable[..., Server],
                                             make_client: Callable[..., Client]) -> None:
    srv = make_server()
    with Nemesis("127.0.0.1", srv.port) as nem:
        c = make_client(nem.url, **FAST_BACKOFF)
        statuses = Recorder()
        c.on_status(statuses)
        feed = Recorder()
        c.subscribe("feed", feed)
        srv.publish("feed", 1)
        feed.wait_count(1)
        first_conn = c.conn_id
        assert nem.cut() == 1
        assert statuses.wait_count(2)[:2] == ["reconnecting", "connected"]
        assert c.conn_id != first_conn and c.server_id == srv.server_id
        wait_until(lambda: srv.channels.subscriber_count("feed") == 1, what="resubscribed")
        srv.publish("feed", 2)
        assert [m.data for m in feed.wait_count(2)] == [1, 2]
        assert nem.stats()["accepted"] == 2 and nem.stats()["cut"] == 1


def test_sente_client_finds_a_partition_by_heartbeat(make_server: Callable[..., Server],
                                                     make_client: Callable[..., Client]) -> None:
    heartbeat_ms = 300
    srv = make_server(heartbeat_ms=heartbeat_ms)
    with Nemesis("127.0.0.1", srv.port) as nem:
        c = make_client(nem.url, **FAST_BACKOFF)
        statuses = Recorder()
        c.on_status(statuses)
        first_conn = c.conn_id
        t0 = time.perf_counter()
        nem.blackhole()
        assert statuses.wait_count(1) == ["reconnecting"]
        silent_s = time.perf_counter() - t0
        # nothing was closed: only the client's heartbeat check (2 x beat + 1 s) found it
        assert silent_s >= 2 * heartbeat_ms / 1000, silent_s
        assert not c.wait_connected(SILENCE_S)  # new connections are held too
        nem.heal()
        assert c.wait_connected(WAIT_S)
        assert c.conn_id != first_conn
        assert c.request("chsk/ws-ping", None, timeout=WAIT_S) is None

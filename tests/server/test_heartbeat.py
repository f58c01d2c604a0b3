"""Heartbeat (PROTOCOL 5): server pings, the client answers, silent peers are closed
with 4000 and leave every channel; a client drops a silent server and reconnects."""

from __future__ import annotations

import json
import threading
import time
from typing import Callable, Iterator, List, Union

import pytest
import websocket
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, serve

from sente_lite import Client, Server
from sente_lite.client.client import DEAD_SERVER_SLACK_S
from support import NO_PINGS, WAIT_S, AsgiFace, RawWS, ThreadedFace, close_code_of, wait_until

#: The tests taking ``make_face`` run on both faces: the threaded Server and the ASGI App
#: under uvicorn.
Face = Union[ThreadedFace, AsgiFace]

HEARTBEAT_MS = 200
#: Silence timeout of the tests that race it: far above any scheduling stall of a loaded
#: 2-core machine (a test process can stall ~1 s), so only a missing frame can trip it.
TIMEOUT_MS = 2000
TIMEOUT_S = TIMEOUT_MS / 1000
#: Silence timeout of the tests that only count pongs: never reached while they run.
LENIENT_TIMEOUT_MS = 30_000
#: Allowance for a loaded 2-core machine on top of the heartbeat tick. Still far below
#: what a wrong timeout would give (the 3 x heartbeat default, or a never-closed peer).
SCHEDULING_SLACK_S = 5.0


def test_heartbeat_timeout_defaults_to_three_heartbeats() -> None:
    assert Server(heartbeat_ms=HEARTBEAT_MS).heartbeat_timeout_ms == 3 * HEARTBEAT_MS
    assert Server(heartbeat_ms=HEARTBEAT_MS, heartbeat_timeout_ms=TIMEOUT_MS).heartbeat_timeout_ms \
        == TIMEOUT_MS


def test_client_answers_server_pings(make_face: Callable[..., Face],
                                     make_client: Callable[..., Client]) -> None:
    srv = make_face(heartbeat_ms=HEARTBEAT_MS, heartbeat_timeout_ms=LENIENT_TIMEOUT_MS)
    c = make_client(srv.url)
    # The client sends nothing by itself: every inbound frame on the server is a pong.
    wait_until(lambda: [x for x in srv.connections() if x["frames-in"] >= 4], what="4 pongs")
    assert srv.connections()[0]["conn-id"] == c.conn_id
    assert c.connected and c.stats()["handshakes"] == 1
    assert srv.stats().get("heartbeat_timeouts", 0) == 0


def test_server_answers_client_ping(make_face: Callable[..., Face],
                                    raw_ws: Callable[..., RawWS]) -> None:
    srv = make_face()
    r = raw_ws(srv.url)
    r.send_frame("chsk/ws-ping")
    assert r.recv() == ["chsk/ws-pong"]
    assert r.request("chsk/ws-ping", None, "p1") == ["chsk/reply", None, "p1"]


def test_silent_peer_is_closed_with_4000_and_leaves_every_channel(
        make_face: Callable[..., Face], make_client: Callable[..., Client],
        raw_ws: Callable[..., RawWS]) -> None:
    srv = make_face(heartbeat_ms=HEARTBEAT_MS, heartbeat_timeout_ms=TIMEOUT_MS)
    healthy = make_client(srv.url)
    healthy.subscribe("hb-a")
    r = raw_ws(srv.url)
    conn_id = r.handshake[1][2]["conn-id"]  # type: ignore[index]
    for i, ch in enumerate(("hb-a", "hb-b")):
        last_sent = time.monotonic()  # the server hears the last frame later: less silence
        assert r.request("sente-lite/subscribe", {"channel-id": ch}, f"s{i}")[0] == "chsk/reply"
    assert srv.channels.channels_of(conn_id) == ["hb-a", "hb-b"]
    pings = 0
    deadline = time.monotonic() + TIMEOUT_S + SCHEDULING_SLACK_S
    while True:  # never answer
        opcode, frame = r._next(deadline)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            code = close_code_of(frame)
            r.ws.shutdown()  # answered by recv_data_frame; end TCP as a real peer does
            break
        if opcode == websocket.ABNF.OPCODE_TEXT and json.loads(frame.data) == ["chsk/ws-ping"]:
            pings += 1
    silent_for = time.monotonic() - last_sent
    assert code == 4000
    assert pings >= 2
    assert TIMEOUT_S <= silent_for <= TIMEOUT_S + SCHEDULING_SLACK_S
    assert srv.channels.channels_of(conn_id) == []
    assert srv.channels.subscriber_count("hb-a") == 1  # the healthy client stays
    assert srv.channels.subscriber_count("hb-b") == 0
    wait_until(lambda: srv.stats()["closes_by_code"] == {4000: 1}, what="4000 close counted")
    stats = srv.stats()
    assert stats["heartbeat_timeouts"] == 1
    assert stats["connections"] == 1
    assert healthy.connected
    assert healthy.publish("hb-a", "x", ack=True)["delivered"] == 1  # type: ignore[index]


class SilentServer:
    """Answers the upgrade, sends a handshake announcing ``heartbeat_ms``, then never
    sends another frame (a hung server process)."""

    def __init__(self, heartbeat_ms: int) -> None:
        self.heartbeat_ms = heartbeat_ms
        self.handshakes: List[float] = []
        self.ended: List[float] = []
        self._cond = threading.Condition()
        self._server = serve(self._handle, "127.0.0.1", 0, close_timeout=0.5, **NO_PINGS)
        self.port = self._server.socket.getsockname()[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="silent-server")
        self._thread.start()

    def _handle(self, ws: ServerConnection) -> None:
        n = len(self.handshakes) + 1
        sent_at = time.monotonic()  # before the send: the client hears from it no earlier
        ws.send(json.dumps(["chsk/handshake", [f"u{n}", None, {
            "conn-id": f"silent-{n}", "client-id": "c", "server-id": "silent", "protocol": 1,
            "heartbeat-ms": self.heartbeat_ms, "max-message-bytes": 1 << 20}, n == 1]]))
        with self._cond:
            self.handshakes.append(sent_at)
            self._cond.notify_all()
        try:
            for _ in ws:  # read and ignore everything, answer nothing
                pass
        except ConnectionClosed:
            pass
        with self._cond:
            self.ended.append(time.monotonic())
            self._cond.notify_all()

    def wait(self, what: Callable[[], bool]) -> None:
        with self._cond:
            assert self._cond.wait_for(what, WAIT_S)

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(WAIT_S)


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    s = SilentServer(heartbeat_ms=100)
    yield s
    s.stop()


def test_client_drops_a_silent_server_and_reconnects(silent_server: SilentServer,
                                                     make_client: Callable[..., Client]) -> None:
    c = make_client(f"ws://127.0.0.1:{silent_server.port}/chsk", backoff_base=0.01, backoff_max=0.05)
    silent_server.wait(lambda: len(silent_server.handshakes) >= 1)
    statuses: List[str] = []
    c.on_status(statuses.append)
    silent_server.wait(lambda: len(silent_server.handshakes) >= 2 and len(silent_server.ended) >= 1)
    dead_after = silent_server.ended[0] - silent_server.handshakes[0]
    limit = 2 * 0.1 + DEAD_SERVER_SLACK_S
    assert limit - 0.05 <= dead_after <= limit + SCHEDULING_SLACK_S
    assert c.stats()["dead_server_detections"] >= 1
    wait_until(lambda: c.connected and c.conn_id == "silent-2", what="client reconnected")
    assert statuses[:2] == ["reconnecting", "connected"]
    assert c.first is False

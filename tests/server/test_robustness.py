"""What the design promises under stress: slow handlers delay only their own
connection and never cost the heartbeat, bounded handler queue, unencodable data
refused before it touches state, gaps made visible, big and fragmented frames."""

from __future__ import annotations

import json
import threading
from typing import Any, Callable, Iterator, List, Union

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, serve

from sente_lite import Client, Disconnected, EncodeError, RemoteError, Server
from support import NO_PINGS, WAIT_S, AsgiFace, Recorder, ThreadedFace, free_port, wait_until

#: The tests taking ``make_face`` run on both faces: the threaded Server and the ASGI App
#: under uvicorn.
Face = Union[ThreadedFace, AsgiFace]

FAST_BACKOFF = {"backoff_base": 0.02, "backoff_max": 0.1}


def test_slow_client_handler_never_costs_the_heartbeat(make_face: Callable[..., Face],
                                                       make_client: Callable[..., Client]) -> None:
    # pings every 0.2 s; a timeout no scheduling stall reaches: the pongs are what is counted
    srv = make_face(heartbeat_ms=200, heartbeat_timeout_ms=30_000)
    c = make_client(srv.url)
    entered, release = threading.Event(), threading.Event()
    c.on("app/block", lambda data: (entered.set(), release.wait(WAIT_S)))
    assert srv.send(c.conn_id, "app/block")  # type: ignore[arg-type]
    try:
        assert entered.wait(WAIT_S)
        frames_in = srv.connections()[0]["frames-in"]
        # pongs keep coming from the reader thread while the handler blocks
        wait_until(lambda: [x for x in srv.connections() if x["frames-in"] >= frames_in + 4],
                   what="4 pongs while the handler blocks")
    finally:
        release.set()
    assert c.connected and c.stats()["handshakes"] == 1
    assert srv.stats().get("heartbeat_timeouts", 0) == 0


def test_slow_server_handler_delays_only_its_connection(make_face: Callable[..., Face],
                                                        make_client: Callable[..., Client]) -> None:
    srv = make_face()
    entered, release = threading.Event(), threading.Event()
    srv.on("app/block", lambda conn, data: (entered.set(), release.wait(WAIT_S)))
    srv.on("app/echo", lambda conn, data: data)
    a, b = make_client(srv.url), make_client(srv.url)
    got = Recorder()
    b.subscribe("c", got)
    a.send("app/block")
    try:
        assert entered.wait(WAIT_S)
        assert b.request("app/echo", "b is served") == "b is served"
        assert srv.publish("c", 1).delivered == 1
        got.wait_count(1)
    finally:
        release.set()
    assert a.request("app/echo", "a again") == "a again"


def test_client_handler_may_make_requests(make_face: Callable[..., Face],
                                          make_client: Callable[..., Client]) -> None:
    srv = make_face()
    srv.on("app/echo", lambda conn, data: data)
    c = make_client(srv.url)
    c.on("app/ask", lambda data: c.request("app/echo", data + 1, timeout=WAIT_S))
    assert srv.request(c.conn_id, "app/ask", 41, timeout=WAIT_S) == 42  # type: ignore[arg-type]


def test_handler_queue_is_bounded_and_overflow_is_counted(make_face: Callable[..., Face],
                                                          make_client: Callable[..., Client],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    srv = make_face()
    c = make_client(srv.url, max_handler_queue=5)
    entered, release = threading.Event(), threading.Event()
    got = Recorder()

    def handler(data: Any) -> None:
        if data == 0:
            entered.set()
            release.wait(WAIT_S)
        got(data)

    c.on("app/n", handler)
    srv.send(c.conn_id, "app/n", 0)  # type: ignore[arg-type]
    try:
        assert entered.wait(WAIT_S)  # the worker is busy; 5 more fit in the queue
        for i in range(1, 20):
            srv.send(c.conn_id, "app/n", i)  # type: ignore[arg-type]
        wait_until(lambda: c.stats().get("handler_queue_overflows") == 14, what="14 overflows")
    finally:
        release.set()
    assert got.wait_count(6) == [0, 1, 2, 3, 4, 5]
    assert "max_handler_queue=5" in caplog.text
    assert c.connected


def test_unencodable_data_is_refused_before_it_touches_state(
        make_face: Callable[..., Face], make_client: Callable[..., Client]) -> None:
    srv = make_face()
    c = make_client(srv.url)
    for bad in ({1, 2}, float("nan"), "\ud800", object()):
        with pytest.raises(EncodeError):
            c.send("app/x", bad)
        with pytest.raises(EncodeError):
            c.request("app/x", bad)
        with pytest.raises(EncodeError):
            c.publish("ch", bad)
        with pytest.raises(EncodeError):
            srv.publish("ch", bad)
        with pytest.raises(EncodeError):
            srv.broadcast("app/x", bad)
    assert c.stats()["outstanding_requests"] == 0
    assert srv.publish("ch", "fine").offset == 1  # no offset was used up
    assert c.connected


def test_remembered_clients_are_bounded(make_face: Callable[..., Face],
                                        make_client: Callable[..., Client]) -> None:
    srv = make_face(max_remembered_clients=2)
    firsts = []
    for cid in ("a", "b", "a", "c", "a", "b"):
        c = make_client(srv.url, client_id=cid)
        firsts.append((cid, c.first))
        c.close()
    # "b" was forgotten once "c" and "a" were seen after it
    assert firsts == [("a", True), ("b", True), ("a", False), ("c", True), ("a", False), ("b", True)]


@pytest.mark.parametrize("history_size", [1000, 0])
def test_messages_missed_while_away_are_replayed_or_the_loss_is_announced(
        make_server: Callable[..., Server], make_client: Callable[..., Client],
        history_size: int) -> None:
    srv = make_server(history_size=history_size)
    refuse = threading.Event()
    real_admit = srv._admit
    # the server's admission seam turns upgrades away (503: the client keeps retrying)
    srv._admit = lambda ws, *rest: (  # type: ignore[method-assign]
        ws.respond(503, "paused\n") if refuse.is_set() else real_admit(ws, *rest))
    c = make_client(srv.url, **FAST_BACKOFF)
    recoveries: List[Any] = []
    c.on_recovery(recoveries.append)
    got = Recorder()
    c.subscribe("g", got)
    srv.publish("g", 1)
    got.wait_count(1)
    refuse.set()
    srv.disconnect(c.conn_id)  # type: ignore[arg-type]
    assert c.wait_status("reconnecting", WAIT_S)
    for i in (2, 3, 4):
        assert srv.publish("g", i).delivered == 0  # missed while away
    refuse.clear()
    assert c.wait_connected(WAIT_S)
    wait_until(lambda: srv.channels.subscriber_count("g") == 1, what="resubscribe")
    srv.publish("g", 5)
    if history_size:
        msgs = got.wait_count(5)
        assert [(m.data, m.offset) for m in msgs] == [(i, i) for i in range(1, 6)]
        wait_until(lambda: recoveries, what="the recovery answer")
        assert recoveries[0].recovered is True and recoveries[0].since["offset"] == 1
    else:
        msgs = got.wait_count(2)
        assert [(m.data, m.offset) for m in msgs] == [(1, 1), (5, 5)]
        wait_until(lambda: recoveries, what="the recovery answer")
        assert (recoveries[0].recovered, recoveries[0].reason) == (False, "history-off")
        assert c.stats()["recovery_failures"] == 1
    assert msgs[0].epoch == msgs[-1].epoch
    assert c.stats().get("channel_gaps", 0) == 0  # never a silent gap


def test_subscribe_before_connected_and_unsubscribe_while_away(
        make_server: Callable[..., Server], make_client: Callable[..., Client]) -> None:
    port = free_port()
    c = make_client(f"ws://127.0.0.1:{port}/chsk", connect=False, **FAST_BACKOFF)
    got = Recorder()
    assert c.subscribe("early", got, timeout=None) is None
    c.subscribe("dropped", timeout=None)
    c.unsubscribe("dropped")  # while not connected: just forgotten
    assert c.subscriptions() == ["early"]
    srv2 = make_server(port=port)
    assert c.wait_connected(WAIT_S)
    wait_until(lambda: srv2.channels.channels_of(c.conn_id) == ["early"], what="subscribe on connect")
    assert srv2.channels.subscriber_count("dropped") == 0
    srv2.publish("early", "hi")
    assert [m.data for m in got.wait_count(1)] == ["hi"]


def test_server_request_fails_when_client_goes_away(make_face: Callable[..., Face],
                                                    make_client: Callable[..., Client]) -> None:
    srv = make_face()
    c = make_client(srv.url, auto_reconnect=False)
    conn_id = c.conn_id
    result: List[BaseException] = []

    def ask() -> None:
        try:
            srv.request(conn_id, "app/slow", timeout=WAIT_S)  # type: ignore[arg-type]
        except BaseException as exc:
            result.append(exc)

    entered, block = threading.Event(), threading.Event()
    c.on("app/slow", lambda data: (entered.set(), block.wait(WAIT_S)))
    t = threading.Thread(target=ask)
    t.start()
    assert entered.wait(WAIT_S)
    c.close()  # the handler's reply can no longer go out
    block.set()
    t.join(WAIT_S)
    assert len(result) == 1 and isinstance(result[0], Disconnected)


def test_big_messages_both_ways(make_face: Callable[..., Face],
                                make_client: Callable[..., Client]) -> None:
    srv = make_face(max_message_bytes=8 << 20)
    srv.on("app/echo", lambda conn, data: data)
    c = make_client(srv.url)
    for size in (125, 126, 65_535, 65_536, 300_000, 3_000_000):
        blob = "é" * (size // 2) + "x" * (size % 2)
        assert c.request("app/echo", blob, timeout=WAIT_S) == blob
    got = Recorder()
    c.subscribe("big", got)
    many = [str(i) * 100 for i in range(300)]
    for m in many:
        srv.publish("big", m)
    assert [m.data for m in got.wait_count(300)] == many


class ScriptedServer:
    """A WebSocket server that plays ``script(ws)`` to each connection."""

    def __init__(self, script: Callable[[ServerConnection], None]) -> None:
        self._script = script
        self._server = serve(self._handle, "127.0.0.1", 0, close_timeout=0.5, **NO_PINGS)
        self.url = f"ws://127.0.0.1:{self._server.socket.getsockname()[1]}/chsk"
        self._thread = threading.Thread(target=self._server.serve_forever, name="scripted-server")
        self._thread.start()

    def _handle(self, ws: ServerConnection) -> None:
        try:
            self._script(ws)
            for _ in ws:
                pass
        except ConnectionClosed:
            pass

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(WAIT_S)


@pytest.fixture
def scripted() -> Iterator[Callable[[Callable[[ServerConnection], None]], ScriptedServer]]:
    servers: List[ScriptedServer] = []

    def make(script: Callable[[ServerConnection], None]) -> ScriptedServer:
        s = ScriptedServer(script)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()


def handshake(ws: ServerConnection) -> None:
    ws.send(json.dumps(["chsk/handshake", ["u", None, {
        "conn-id": "k1", "client-id": "c", "server-id": "scripted", "protocol": 1,
        "heartbeat-ms": 5000, "max-message-bytes": 1 << 20}, True]]))


def test_client_reads_fragmented_messages_and_survives_bad_frames(
        scripted: Callable[..., ScriptedServer], make_client: Callable[..., Client]) -> None:
    def script(ws: ServerConnection) -> None:
        handshake(ws)
        ws.send("not json")
        ws.send(json.dumps(["bad event"]))
        ws.send(json.dumps(["sente-lite/channel-msg", {"no": "fields"}]))
        ws.send(json.dumps(["chsk/handshake", "malformed"]))
        frame = json.dumps(["app/frag", "x" * 700_000])
        # one message in three fragments, two of them bigger than one socket read
        ws.send([frame[:10], frame[10:400_000], frame[400_000:]])
        ws.ping(b"ws-level")
        ws.send(json.dumps(["app/after", 1]))

    server = scripted(script)
    c = make_client(server.url, connect=False, start=False)  # handlers first: the script is quick
    got = Recorder()
    c.on("app/frag", lambda data: got(("frag", len(data))))
    c.on("app/after", lambda data: got(("after", data)))
    c.start()
    assert got.wait_count(2) == [("frag", 700_000), ("after", 1)]
    assert c.stats()["bad_frames_from_server"] == 4
    assert c.connected and c.stats()["handshakes"] == 1


def test_client_fails_on_remote_error_without_code(scripted: Callable[..., ScriptedServer],
                                                   make_client: Callable[..., Client]) -> None:
    def script(ws: ServerConnection) -> None:
        handshake(ws)
        event, data, cb = json.loads(ws.recv())
        ws.send(json.dumps(["chsk/error", "not an object", cb]))

    server = scripted(script)
    c = make_client(server.url)
    with pytest.raises(RemoteError) as info:
        c.request("app/x", timeout=WAIT_S)
    assert info.value.code == "unknown"

"""History memory and replay work one client can cause, over real sockets: bytes held per
byte published, replays charged to the rate limit, stopped when the peer stops reading,
never repeated for a held channel, never stalling other connections."""

from __future__ import annotations

import gc
import json
import socket
import statistics
import threading
import time
import tracemalloc
from typing import Any, Callable, Dict, List, Optional

import pytest

from sente_lite import Client, Server, cli
from sente_lite.wire import protocol as p
from support import WAIT_S, RawWS, Recorder, wait_until


def sub_frame(channel: str, epoch: str, offset: int = 0, cb: Optional[str] = None) -> list:
    frame: list = [p.EV_SUBSCRIBE, {p.K_CHANNEL: channel,
                                    p.K_SINCE: {p.K_OFFSET: offset, p.K_EPOCH: epoch}}]
    return frame + [cb] if cb is not None else frame


def fill(srv: Server, channels: List[str], count: int, data: Any = "x" * 80) -> Dict[str, str]:
    """Publish ``count`` messages on each channel; the epoch of each."""
    epochs = {}
    for channel in channels:
        for _ in range(count):
            epochs[channel] = srv.publish(channel, data).epoch
    return epochs


class Drain:
    """Reads (and counts) every frame a raw peer receives, on a thread the test owns."""

    def __init__(self, ws: RawWS) -> None:
        self.ws = ws
        self.frames: List[list] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="test-drain", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while True:
                frame = self.ws.recv(timeout=60)
                with self.lock:
                    self.frames.append(frame)
        except Exception:
            return

    def of(self, event: str) -> List[list]:
        with self.lock:
            return [f for f in self.frames if f[0] == event]

    def stop(self) -> None:
        self.ws.close()
        self.thread.join(WAIT_S)


# -- 9(a) ---------------------------------------------------------------------------------
def test_history_holds_one_copy_of_each_published_byte(make_server: Callable[..., Server]) -> None:
    srv = make_server(history_max_bytes_per_channel=64 << 20, history_max_bytes_total=256 << 20)
    size, count = 256 * 1024, 40
    srv.publish("warm", "x")
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(count):
            srv.publish(f"quiet-{n % 2}", chr(ord("a") + n % 26) * size)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    ratio = held / (size * count)
    assert 0.95 < ratio < 1.15, f"history holds {ratio:.2f} bytes per byte published"
    assert srv.stats()["history_bytes"] >= size * count


def test_a_subscriber_of_another_packer_adds_no_copy_to_history(
        make_server: Callable[..., Server], make_client: Callable[..., Client]) -> None:
    srv = make_server()
    packed = make_client(srv.url, packer="msgpack")
    got = Recorder()
    packed.subscribe("ch", got)
    srv.publish("ch", {"big": "y" * 10_000})
    got.wait_count(1)
    (_, kept), = srv.channels.history_of("ch")
    assert kept.held_bytes() == len(kept.wire) == srv.stats()["history_bytes"]
    late = make_client(srv.url, packer="msgpack")
    replayed = Recorder()
    late.subscribe("ch", replayed, since={"offset": 0, "epoch": srv.publish("ch", 1).epoch})
    assert [m.offset for m in replayed.wait_count(2)] == [1, 2]
    assert kept.held_bytes() == len(kept.wire)  # a replay makes no copy to keep either


def test_byte_bounds_hold_over_the_wire_and_recovery_answers_after_eviction(
        make_server: Callable[..., Server], raw_ws: Callable[..., RawWS]) -> None:
    srv = make_server(history_max_bytes_per_channel=40_000, history_max_bytes_total=100_000)
    publisher = raw_ws(srv.url)
    for n in range(60):
        body = {p.K_CHANNEL: f"ch-{n % 6}", p.K_DATA: "z" * 4000}
        assert publisher.request(p.EV_PUBLISH, body, f"c{n}")[0] == p.EV_REPLY
        stats = srv.stats()
        assert stats["history_bytes"] <= 100_000
    assert stats["history_bytes_evicted"] > 0
    epoch = srv.publish("ch-5", "last").epoch
    kept = [o for o, _ in srv.channels.history_of("ch-5")]
    r = raw_ws(srv.url)
    old = r.request(*sub_frame("ch-5", epoch, kept[0] - 2, "old"))
    assert (old[1]["recovered"], old[1]["reason"]) == (False, "history-expired")
    fresh = raw_ws(srv.url)
    answer = fresh.request(*sub_frame("ch-5", epoch, kept[0] - 1, "ok"))
    assert answer[1]["recovered"] is True
    assert [fresh.recv()[1][p.K_OFFSET] for _ in kept] == kept


def test_byte_and_replay_settings_are_validated_visible_and_serve_flags() -> None:
    for name, bad in (("history_max_bytes_per_channel", 0), ("history_max_bytes_total", -1),
                      ("max_replay_per_subscribe", -3), ("history_max_bytes_total", 2.5)):
        with pytest.raises(ValueError, match=name):
            Server(**{name: bad})
    args = cli.build_parser().parse_args(["serve", "--history-max-bytes-per-channel", "5000",
                                          "--max-replay-per-subscribe", "7"])
    values = cli.resolve_serve_settings(args, {"SENTE_LITE_HISTORY_MAX_BYTES_TOTAL": "20000"})
    srv = cli.server_from_settings(values)
    stats = srv.stats()
    assert (stats["history_max_bytes_per_channel"], stats["history_max_bytes_total"],
            stats["max_replay_per_subscribe"], stats["history_bytes"]) == (5000, 20000, 7, 0)
    assert "history_bytes_evicted" in stats


# -- 10 -----------------------------------------------------------------------------------
def test_a_subscribe_for_a_held_channel_is_not_replayed_again(
        make_server: Callable[..., Server], raw_ws: Callable[..., RawWS]) -> None:
    srv = make_server()
    epoch = fill(srv, ["ch"], 100)["ch"]
    r = raw_ws(srv.url)
    drain = Drain(r)
    try:
        r.send_frame(*sub_frame("ch", epoch, 0, "first"))
        r.send_frame(p.EV_BATCH, [sub_frame("ch", epoch, n, f"again-{n}") for n in (0, 0, 50, 99)])
        wait_until(lambda: len(drain.of(p.EV_REPLY)) == 5, what="five answers")
        srv.publish("ch", "live")
        wait_until(lambda: any(f[1][p.K_OFFSET] == 101 for f in drain.of(p.EV_CHANNEL_MSG)),
                   what="the live message")
        assert [f[1][p.K_OFFSET] for f in drain.of(p.EV_CHANNEL_MSG)] == list(range(1, 102))
        again = [f[1] for f in drain.of(p.EV_REPLY) if f[2].startswith("again")]
        assert all((a["recovered"], a["reason"]) == (False, "already-subscribed") for a in again)
    finally:
        drain.stop()
    assert srv.stats()["replayed_messages"] == 100


def test_replays_are_charged_to_the_rate_limit(make_server: Callable[..., Server],
                                               raw_ws: Callable[..., RawWS]) -> None:
    srv = make_server(rate_limit=2, rate_burst=200, max_rate_limited=1000)
    epochs = fill(srv, ["a", "b"], 150)
    r = raw_ws(srv.url)
    assert r.request(*sub_frame("a", epochs["a"], 0, "a"))[1]["recovered"] is True
    for n in range(150):
        assert r.recv()[1][p.K_OFFSET] == n + 1
    # 150 replayed cost 150 of the 200 tokens: the next replay of 150 does not fit
    answer = r.request(*sub_frame("b", epochs["b"], 0, "b"))
    assert (answer[1]["recovered"], answer[1]["reason"]) == (False, "replay-limit")
    assert r.request(*sub_frame("b", epochs["b"], 140, "b2"))[1]["reason"] == "already-subscribed"
    # and the frames it sends next find the bucket that much emptier
    for n in range(60):
        r.send_frame("app/nothing", None)
    wait_until(lambda: srv.stats()["rate_limited"] > 0, what="frames over the rate")
    assert srv.stats()["replayed_messages"] == 150


def replay_to_a_peer_that_never_reads(srv: Server) -> int:
    """5 channels of 200 x 64 KB each, asked with since=0 in one batch by a peer whose
    receive buffer is 4 KB and that never reads: the replayed messages counted by the
    time the server has closed it as a slow consumer."""
    epochs = fill(srv, [f"c{n}" for n in range(5)], 200, "w" * 64 * 1024)
    ws = RawWS(srv.url, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
    try:
        ws.send_frame(p.EV_BATCH, [sub_frame(f"c{n}", epochs[f"c{n}"]) for n in range(5)])
        wait_until(lambda: srv.stats()["slow_consumer_closes"] == 1, what="the slow-consumer close")
        wait_until(lambda: srv.connections() == [], what="the connection gone")
    finally:
        ws.ws.shutdown()
    return srv.stats()["replayed_messages"]


def test_a_replay_stops_as_soon_as_the_peer_stops_reading(make_server: Callable[..., Server]) -> None:
    srv = make_server(rate_limit=None, max_queued_bytes_per_conn=256 * 1024)
    replayed = replay_to_a_peer_that_never_reads(srv)
    assert replayed < 250, f"{replayed} of 1000 messages replayed to a peer that never read"


BATCHES, BATCH_SUBSCRIBES, BATCH_CHANNELS = 10, 200, 10


@pytest.mark.parametrize("attack", ["resubscribe", "unsubscribe-first"])
def test_other_clients_publish_round_trip_stays_low_under_replay_floods(
        make_server: Callable[..., Server], raw_ws: Callable[..., RawWS], attack: str) -> None:
    # a queue large enough that the attacker is not cut as a slow consumer
    srv = make_server(max_queued_bytes_per_conn=64 << 20)
    channels = [f"h{n}" for n in range(BATCH_CHANNELS)]
    epochs = fill(srv, channels, 1000, "x")
    attacker = raw_ws(srv.url)
    drain = Drain(attacker)
    victim = raw_ws(srv.url)
    sent = threading.Event()

    def attack_batches() -> None:
        try:
            for b in range(BATCHES):
                frames: List[list] = []
                for n in range(BATCH_SUBSCRIBES):
                    channel = channels[n % len(channels)]
                    if attack == "unsubscribe-first":
                        frames.append([p.EV_UNSUBSCRIBE, {p.K_CHANNEL: channel}])
                    frames.append(sub_frame(channel, epochs[channel]))
                attacker.send(json.dumps([p.EV_BATCH, frames]))
        except Exception:
            pass  # closed by the server: fine
        finally:
            sent.set()

    rtts: List[float] = []
    t = threading.Thread(target=attack_batches, name="test-attacker")
    t.start()
    try:
        n = 0
        while not sent.is_set() or n < 40:
            started = time.monotonic()
            victim.request(p.EV_PUBLISH, {p.K_CHANNEL: "victim", p.K_DATA: n}, f"v{n}")
            rtts.append(time.monotonic() - started)
            n += 1
    finally:
        t.join(WAIT_S)
        drain.stop()
    worst = max(rtts)
    assert worst < 0.5, (f"a publish waited {worst:.2f}s (median {statistics.median(rtts)*1000:.1f} "
                         f"ms, {srv.stats()['replayed_messages']} replayed)")
    assert srv.stats()["replayed_messages"] <= 25_000


# -- the same over Redis ------------------------------------------------------------------
@pytest.fixture
def redis_url() -> Any:
    pytest.importorskip("redis", reason="redis-py is not installed (pip install 'sente-lite[redis]')")
    from sente_lite.testing.redis_server import RedisServer, require_redis_server
    require_redis_server()
    with RedisServer() as redis_srv:
        yield redis_srv.url


def test_redis_replays_are_bounded_charged_and_never_repeated(
        make_server: Callable[..., Server], raw_ws: Callable[..., RawWS], redis_url: str) -> None:
    srv = make_server(broker=redis_url, max_replay_per_subscribe=140, rate_limit=2,
                      rate_burst=200, max_rate_limited=1000)
    wait_until(lambda: srv.channels.healthy, what="the link up")
    epochs = fill(srv, ["a", "b", "c"], 150)
    r = raw_ws(srv.url)
    drain = Drain(r)
    try:
        def answer(cb: str) -> dict:
            return wait_until(lambda: next((f[1] for f in drain.of(p.EV_REPLY) if f[2] == cb), None),
                              what=f"the answer {cb}")

        r.send_frame(*sub_frame("a", epochs["a"], 0, "over"))  # 150 > max_replay_per_subscribe
        assert (answer("over")["recovered"], answer("over")["reason"]) == (False, "replay-limit")
        r.send_frame(*sub_frame("b", epochs["b"], 50, "b"))  # 100: fits, costs 100 tokens
        assert answer("b")["recovered"] is True
        r.send_frame(*sub_frame("b", epochs["b"], 0, "b-again"))
        assert answer("b-again")["reason"] == "already-subscribed"
        r.send_frame(*sub_frame("c", epochs["c"], 10, "c"))  # 140 more: past what is left
        assert answer("c")["reason"] == "replay-limit"
        srv.publish("b", "live")
        wait_until(lambda: any(f[1][p.K_OFFSET] == 151 for f in drain.of(p.EV_CHANNEL_MSG)),
                   what="the live message")
        assert [f[1][p.K_OFFSET] for f in drain.of(p.EV_CHANNEL_MSG)] == list(range(51, 152))
    finally:
        drain.stop()
    assert srv.stats()["replayed_messages"] == 100
    assert srv.stats()["max_replay_per_subscribe"] == 140


def test_redis_replay_stops_as_soon_as_the_peer_stops_reading(
        make_server: Callable[..., Server], redis_url: str) -> None:
    srv = make_server(broker=redis_url, rate_limit=None, max_queued_bytes_per_conn=256 * 1024)
    wait_until(lambda: srv.channels.healthy, what="the link up")
    replayed = replay_to_a_peer_that_never_reads(srv)
    assert replayed < 250, f"{replayed} of 1000 messages replayed to a peer that never read"


def test_redis_replays_run_on_the_network_thread_a_page_at_a_time_with_no_gap(
        make_server: Callable[..., Server], make_client: Callable[..., Client],
        redis_url: str) -> None:
    """The Redis thread that runs every publish only reads the replay; the network thread
    hands it over a page per pass, while live messages for the subscriber wait their turn."""
    srv = make_server(broker=redis_url, history_size=5000, max_replay_per_subscribe=5000,
                      rate_limit=None)
    wait_until(lambda: srv.channels.healthy, what="the link up")
    epoch = fill(srv, ["ch"], 1000)["ch"]
    hub = srv._hub
    real = hub.deliver
    threads: List[str] = []

    def deliver(member: Any, built: Any) -> bool:
        threads.append(threading.current_thread().name)
        return real(member, built)

    hub.deliver = deliver  # type: ignore[method-assign]
    got = Recorder()
    c = make_client(srv.url)
    stop = threading.Event()

    def publish_meanwhile() -> None:
        while not stop.is_set():
            srv.publish("ch", "live")

    t = threading.Thread(target=publish_meanwhile, name="test-publisher")
    t.start()
    try:
        answer = c.subscribe("ch", got, since={"offset": 0, "epoch": epoch})
        assert answer["recovered"] is True
        wait_until(lambda: len(got) >= 1200, what="the replay and live messages")
    finally:
        stop.set()
        t.join(WAIT_S)
    offsets = [m.offset for m in got.wait_count(1200)]
    assert offsets == list(range(1, len(offsets) + 1))
    assert "sente-lite-redis-io" not in threads[:1000]
    assert srv.stats()["replayed_messages"] >= 1000

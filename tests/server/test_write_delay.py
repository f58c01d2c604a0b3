"""``Server(write_delay_ms=)``: frames for a connection written to less than that long
ago wait and go out together in one write; a connection idle that long gets its
frame at once; nothing is lost, reordered or left behind by a close."""

from __future__ import annotations

import threading

import time
from typing import Any, Callable, List

import pytest

from sente_lite import Client, Server
from support import WAIT_S, RawWS, Recorder


def _subscribed_peer(raw_ws: Callable[..., RawWS], srv: Server) -> RawWS:
    peer = raw_ws(srv.url)
    reply = peer.request("sente-lite/subscribe", {"channel-id": "ch"}, "s1")
    assert reply[0] == "chsk/reply", reply
    return peer


def _channel_data(peer: RawWS, n: int) -> List[Any]:
    out = []
    while len(out) < n:
        frame = peer.recv()
        if frame[0] == "sente-lite/channel-msg":
            out.append(frame[1]["data"])
    return out


def test_frames_close_together_go_out_in_one_write(make_server: Callable[..., Server],
                                                   raw_ws: Callable[..., RawWS]) -> None:
    srv = make_server(write_delay_ms=50, heartbeat_ms=600_000)
    peer = _subscribed_peer(raw_ws, srv)
    time.sleep(0.06)  # the workload: the connection has been idle longer than the delay
    before = srv.stats()
    for i in range(30):
        srv.publish("ch", i)
    assert _channel_data(peer, 30) == list(range(30))
    after = srv.stats()
    assert after["frames_out"] - before["frames_out"] == 30
    # the first frame goes at once, the other 29 wait for one delayed write
    # (a slow machine may need a second one, not 29)
    assert after["writes_out"] - before["writes_out"] <= 3, (before, after)


def test_without_a_delay_every_frame_is_its_own_write(make_server: Callable[..., Server],
                                                      raw_ws: Callable[..., RawWS]) -> None:
    srv = make_server(heartbeat_ms=600_000)
    peer = _subscribed_peer(raw_ws, srv)
    before = srv.stats()
    for i in range(30):
        srv.publish("ch", i)
        assert _channel_data(peer, 1) == [i]  # the peer got it before the next is published
    after = srv.stats()
    # 30, or 31 when the subscribe answer's write was counted just after `before`
    assert after["writes_out"] - before["writes_out"] in (30, 31), (before, after)


def test_a_frame_after_a_quiet_spell_goes_at_once(make_server: Callable[..., Server],
                                                  make_client: Callable[..., Client]) -> None:
    srv = make_server(write_delay_ms=50)
    c = make_client(srv.url, read_coalesce_ms=0)
    delays: List[float] = []
    got = Recorder()
    c.subscribe("ch", lambda msg: got((time.monotonic() - msg.data)))
    for i in range(5):
        time.sleep(0.08)  # the workload: longer apart than write_delay_ms
        srv.publish("ch", time.monotonic())
        delays = got.wait_count(i + 1)
    assert sorted(delays)[2] < 0.04, delays


def test_a_close_sends_the_frames_still_waiting(make_server: Callable[..., Server],
                                               raw_ws: Callable[..., RawWS]) -> None:
    srv = make_server(write_delay_ms=50, heartbeat_ms=600_000)
    peer = _subscribed_peer(raw_ws, srv)
    for i in range(10):
        srv.publish("ch", i)
    assert srv.disconnect(srv.connections()[0]["conn-id"])
    assert _channel_data(peer, 10) == list(range(10))
    assert peer.recv_close() == 1000


def test_delayed_writes_use_no_thread_of_their_own(make_server: Callable[..., Server],
                                                   raw_ws: Callable[..., RawWS]) -> None:
    """The network thread's timers make the delayed writes."""
    srv = make_server(write_delay_ms=5)
    peer = _subscribed_peer(raw_ws, srv)
    for i in range(20):
        srv.publish("ch", i)
    assert _channel_data(peer, 20) == list(range(20))
    names = {t.name for t in threading.enumerate()}
    assert not any("delayed" in n for n in names)
    srv.stop()
    assert not any(t.name == "sente-lite-net" and t.is_alive() for t in threading.enumerate())


@pytest.mark.parametrize("bad", [-1, 51, float("nan"), "1"])
def test_write_delay_ms_is_validated(bad: Any) -> None:
    with pytest.raises(ValueError, match="write_delay_ms"):
        Server(write_delay_ms=bad)


def test_delayed_and_direct_writes_keep_order_under_concurrent_publishers(
        make_server: Callable[..., Server], make_client: Callable[..., Client]) -> None:
    srv = make_server(write_delay_ms=2)
    sub = make_client(srv.url, read_coalesce_ms=0)
    got = Recorder()
    sub.subscribe("ch", got)
    pubs = [make_client(srv.url) for _ in range(4)]
    for round_ in range(50):
        for i, pub in enumerate(pubs):
            pub.publish("ch", [i, round_])
    got.wait_count(200, timeout=WAIT_S)
    offsets = [m.offset for m in got.items]
    assert offsets == sorted(offsets) and len(set(offsets)) == 200
    for i in range(4):
        assert [m.data[1] for m in got.items if m.data[0] == i] == list(range(50))
    assert srv.stats()["writes_out"] < srv.stats()["frames_out"]

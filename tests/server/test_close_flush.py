"""A close the server decides goes out after what was queued for the peer before it:
the rate-limited answers of a flood reach the peer, then the 1008."""

from __future__ import annotations

import socket
from typing import Callable, List, Union

import pytest

from sente_lite import Server
from sente_lite.wire import protocol as p
from rawpeers import PackedPeer, packers_available
from support import WAIT_S, AsgiFace, FaceMaker, ThreadedFace, wait_until

#: The tests taking ``make_face`` run on both faces: the threaded Server and the ASGI App
#: under uvicorn.
Face = Union[ThreadedFace, AsgiFace]

RATE = {"rate_limit": 5, "rate_burst": 5, "max_rate_limited": 30, "heartbeat_ms": 600_000}
FLOOD = 200


def flood(peer: PackedPeer, requests: bool, batch: int) -> List[str]:
    """FLOOD frames of app/x (requests c0, c1, ... or plain events), ``batch`` per
    chsk/batch frame (1: each alone), all written at once; returns the cb-ids."""
    cb_ids = [f"c{i}" for i in range(FLOOD)] if requests else []
    frames = [peer.encode("app/x", i, cb_ids[i] if requests else None) for i in range(FLOOD)]
    if batch > 1:
        frames = [peer.packer.batch(frames[i:i + batch]) for i in range(0, FLOOD, batch)]
    peer.send_payloads(frames)
    return cb_ids


@pytest.mark.parametrize("packer", packers_available())
@pytest.mark.parametrize("requests", [True, False], ids=["requests", "events"])
@pytest.mark.parametrize("batch", [1, 7], ids=["alone", "batched"])
def test_rate_limited_answers_reach_the_peer_before_the_close(
        make_face: Callable[..., Face], packer: str, requests: bool, batch: int) -> None:
    srv = make_face(**RATE)
    with PackedPeer(srv, packer) as peer:
        cb_ids = flood(peer, requests, batch)
        code, frames = peer.read_until_close(WAIT_S)
    assert code == p.CLOSE_POLICY
    limited = [f for f in frames if f.event == p.EV_ERROR
               and f.data.get(p.K_CODE) == p.ERR_RATE_LIMITED]
    # every refusal but the last (the one that closed) was answered, before the close
    assert len(limited) >= RATE["max_rate_limited"], (len(limited), frames[-3:])
    if requests:
        answered = [f.cb_id for f in frames if f.cb_id is not None]
        assert len(answered) == len(set(answered)) and set(answered) <= set(cb_ids)
        assert all(f.cb_id is not None for f in limited)
    else:
        assert all(f.cb_id is None and f.data.get("event") == "app/x" for f in limited)
    assert srv.stats()["rate_limit_closes"] == 1
    wait_until(lambda: srv.stats()["closes_by_code"].get(p.CLOSE_POLICY) == 1,
               what="the close counted")


@pytest.mark.parametrize("packer", packers_available())
def test_frames_queued_before_a_bad_frame_close_arrive_before_it(
        make_face: Callable[..., Face], packer: str) -> None:
    """The same for the close after too many bad frames in a row: every bad-frame
    answer comes before the 1008."""
    srv = make_face(max_bad_frames_in_row=20, heartbeat_ms=600_000)
    with PackedPeer(srv, packer) as peer:
        bad = b"\x01\x02" if packer == "msgpack" else b"not json"
        peer.send_payloads([bad] * 40)
        code, frames = peer.read_until_close(WAIT_S)
    assert code == p.CLOSE_POLICY
    assert len([f for f in frames if f.data.get(p.K_CODE) == p.ERR_BAD_FRAME]) == 21


@pytest.mark.parametrize("packer", packers_available())
def test_frames_gathered_for_a_backed_up_batching_peer_precede_the_close(
        make_face: FaceMaker, packer: str) -> None:
    make_face.skip_on("asgi", "it sends no chsk/batch to a backed-up peer (docs/asgi.md)")
    """A peer that asked for batch=1 and reads slowly gets what was sent before
    srv.disconnect(), batched or not, then the close."""
    srv = make_face(heartbeat_ms=600_000, max_queued_bytes_per_conn=64 << 20)
    count = 1000
    with PackedPeer(srv, packer, query="batch=1") as peer:
        peer.peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        conn_id = peer.handshake.data[2]["conn-id"]
        for i in range(count):
            assert srv.send(conn_id, "app/n", [i, "x" * 10_000])
        assert srv.disconnect(conn_id)
        code, frames = peer.read_until_close(WAIT_S)
    got = [inner for f in frames for inner in (
        [p.frame_of(v) for v in f.data] if f.event == p.EV_BATCH else [f])]
    assert [f.data[0] for f in got if f.event == "app/n"] == list(range(count))
    assert any(f.event == p.EV_BATCH for f in frames), "the socket never backed up"
    assert code == p.CLOSE_NORMAL

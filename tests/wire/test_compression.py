"""permessage-deflate (RFC 7692) as a server setting: compressed once per publish, shared."""

from __future__ import annotations

import contextlib
import json
from typing import Any, Callable, Dict, List

import pytest
from websockets.sync.client import connect

from sente_lite import Client, Server
from sente_lite.wire import compression
from sente_lite.wire import protocol as p
from support import Recorder, wait_until


def realistic_payload(n_bytes: int = 2048) -> List[Dict[str, Any]]:
    """Records as an application publishes them: repeated keys, ids, dates, words."""
    rows: List[Dict[str, Any]] = []
    i = 0
    while len(json.dumps(rows)) < n_bytes:
        rows.append({"id": 100_000 + i * 7, "user": f"user-{i % 13}", "status": ["ok", "late"][i % 2],
                     "updated_at": f"2026-11-28T08:{i % 60:02d}:00Z", "price": round(i * 1.37, 2),
                     "tags": ["news", "eu", f"t{i % 5}"]})
        i += 1
    return rows


def recv_event(ws: Any, event: str, timeout: float = 5.0) -> Any:
    while True:
        frame = json.loads(ws.recv(timeout=timeout))
        if frame[0] == event:
            return frame


def test_deflate_is_negotiated_only_when_on(make_server: Callable[..., Server]) -> None:
    for setting, expected in ((None, None), ("deflate", "permessage-deflate")):
        srv = make_server(compression=setting)
        with connect(srv.url, compression="deflate") as ws:
            offered = ws.response.headers.get("Sec-WebSocket-Extensions")
            assert (offered.split(";")[0] if offered else None) == expected
            assert recv_event(ws, p.EV_HANDSHAKE)
    with pytest.raises(ValueError):
        Server(compression="gzip")


def test_a_publish_is_compressed_once_and_read_by_deflate_and_plain_peers(
        make_server: Callable[..., Server], make_client: Callable[..., Client],
        monkeypatch: pytest.MonkeyPatch) -> None:
    srv = make_server(compression="deflate")
    calls: List[int] = []
    real = compression.deflate
    monkeypatch.setattr(compression, "deflate", lambda data, bits: calls.append(len(data)) or
                        real(data, bits))
    plain = make_client(srv.url)  # websocket-client: no deflate
    got = Recorder()
    plain.subscribe("big", got)
    with contextlib.ExitStack() as stack:
        peers = [stack.enter_context(connect(srv.url, compression="deflate")) for _ in range(3)]
        for ws in peers:
            recv_event(ws, p.EV_HANDSHAKE)
            ws.send(json.dumps([p.EV_SUBSCRIBE, {"channel-id": "big"}, "s1"]))
            assert recv_event(ws, p.EV_REPLY)[1]["channel-id"] == "big"
        wait_until(lambda: srv.channels.subscriber_count("big") == 4, what="4 subscribers")
        before = srv.stats()
        calls.clear()  # the handshakes were compressed too
        data = realistic_payload(2048)
        srv.publish("big", data)
        for ws in peers:
            assert recv_event(ws, p.EV_CHANNEL_MSG)[1]["data"] == data
        assert got.wait_count(1)[0].data == data
        assert len(calls) == 1  # once per publish, the same bytes for every deflate peer
        after = srv.stats()
        payload = after["bytes_out"] - before["bytes_out"]
        wire = after["wire_bytes_out"] - before["wire_bytes_out"]
        # 3 compressed + 1 plain delivery: the compressed three cost far less than three plain ones
        plain_bytes = payload / 4
        assert wire < plain_bytes + 3 * plain_bytes / 3, (payload, wire)


def test_deflate_shrinks_a_2kb_json_message_at_least_3x(make_server: Callable[..., Server]) -> None:
    srv = make_server(compression="deflate")
    with connect(srv.url, compression="deflate") as ws:
        recv_event(ws, p.EV_HANDSHAKE)
        ws.send(json.dumps([p.EV_SUBSCRIBE, {"channel-id": "c"}, "s1"]))
        recv_event(ws, p.EV_REPLY)
        before = srv.stats()
        for _ in range(5):
            srv.publish("c", realistic_payload(2048))
        for _ in range(5):
            recv_event(ws, p.EV_CHANNEL_MSG)
        after = srv.stats()
    ratio = (after["bytes_out"] - before["bytes_out"]) / (after["wire_bytes_out"] - before["wire_bytes_out"])
    assert ratio >= 3.0, ratio


def test_small_frames_go_uncompressed_and_compressed_requests_are_read(
        make_server: Callable[..., Server]) -> None:
    srv = make_server(compression="deflate", compression_min_bytes=10_000)
    srv.on("app/echo", lambda conn, data: data)
    with connect(srv.url, compression="deflate") as ws:
        recv_event(ws, p.EV_HANDSHAKE)
        big = realistic_payload(4096)  # websockets compresses what it sends
        ws.send(json.dumps(["app/echo", big, "c1"]))
        assert recv_event(ws, p.EV_REPLY)[1] == big
        stats = srv.stats()
        assert stats["wire_bytes_out"] >= stats["bytes_out"]  # under the threshold: all plain

"""A stalled subscriber (PROTOCOL 7, code 4001) costs publishers and healthy
subscribers nothing: its bounded outbound queue overflows and it alone is closed."""

from __future__ import annotations

import socket
import time
from typing import Callable, List, Union

from sente_lite import ChannelMessage, Client, Server
from support import AsgiFace, RawWS, Recorder, ThreadedFace, wait_until

#: The tests taking ``make_face`` run on both faces: the threaded Server and the ASGI App
#: under uvicorn.
Face = Union[ThreadedFace, AsgiFace]

PAYLOAD = "x" * (64 * 1024)
QUEUE_LIMIT = 512 * 1024
MAX_PUBLISHES = 600  # far more than kernel buffers plus the queue limit can hold
#: A publish must never wait for the stalled peer (that would take until its heartbeat
#: timeout, 15 s by default); this bound leaves room for a loaded machine, where one
#: acknowledged publish can stall for a second or more.
MAX_PUBLISH_CALL_S = 5.0


def test_stalled_subscriber_is_closed_and_nobody_else_suffers(
        make_face: Callable[..., Face], make_client: Callable[..., Client],
        raw_ws: Callable[..., RawWS]) -> None:
    srv = make_face(max_queued_bytes_per_conn=QUEUE_LIMIT, close_timeout=0.5)
    healthy_got = Recorder()
    healthy = make_client(srv.url)
    healthy.subscribe("firehose", healthy_got)
    stalled = raw_ws(srv.url, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
    stalled_conn = stalled.handshake[1][2]["conn-id"]  # type: ignore[index]
    assert stalled.request("sente-lite/subscribe", {"channel-id": "firehose"}, "s")[0] == "chsk/reply"
    # from here on the stalled peer reads nothing
    publisher = make_client(srv.url)

    durations: List[float] = []
    acks: List[dict] = []
    published = 0
    while published < MAX_PUBLISHES:
        started = time.monotonic()
        if published % 2 == 0:
            acks.append(publisher.publish("firehose", {"i": published, "pad": PAYLOAD}, ack=True))  # type: ignore[arg-type]
        else:
            srv.publish("firehose", {"i": published, "pad": PAYLOAD})
        durations.append(time.monotonic() - started)
        published += 1
        if srv.stats().get("slow_consumer_closes") and len(acks) >= 2 and acks[-1]["delivered"] == 1:
            break
        healthy_got.wait_count(published - 2)  # the healthy reader keeps up within a small window
    assert srv.stats().get("slow_consumer_closes") == 1, f"no overflow after {published} publishes"
    assert max(durations) < MAX_PUBLISH_CALL_S, f"slowest publish took {max(durations):.3f}s"

    msgs: List[ChannelMessage] = healthy_got.wait_count(published)
    assert [m.offset for m in msgs] == list(range(1, published + 1))
    assert [m.data["i"] for m in msgs] == list(range(published))
    assert healthy.stats().get("channel_gaps", 0) == 0
    assert acks[0]["delivered"] == 2 and acks[-1]["delivered"] == 1

    wait_until(lambda: srv.stats()["closes_by_code"].get(4001) == 1, what="stalled connection closed")
    assert srv.channels.channels_of(stalled_conn) == []
    assert stalled_conn not in [c["conn-id"] for c in srv.connections()]
    assert healthy.connected and publisher.connected
    assert srv.stats()["closes_by_code"] == {4001: 1}
    stalled.ws.shutdown()


def test_stop_is_bounded_with_a_stalled_peer(make_server: Callable[..., Server],
                                             raw_ws: Callable[..., RawWS]) -> None:
    close_timeout = 0.5
    srv = make_server(max_queued_bytes_per_conn=64 << 20, close_timeout=close_timeout)
    stalled = raw_ws(srv.url, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
    assert stalled.request("sente-lite/subscribe", {"channel-id": "s"}, "s")[0] == "chsk/reply"
    for _ in range(MAX_PUBLISHES):  # until the kernel buffers are full and frames wait in the queue
        srv.publish("s", PAYLOAD)
        if srv.stats()["queued_bytes"] > 0:
            break
    assert srv.stats()["queued_bytes"] > 0
    started = time.monotonic()
    srv.stop()  # flushing to the stalled peer cannot finish: stop gives up after its deadline
    took = time.monotonic() - started
    assert took < close_timeout + 1.0 + 2.0
    assert srv.stats()["closes_by_code"] == {1001: 1}
    stalled.ws.shutdown()

"""The history API (feature ``history-api``): ``Client.history`` and ``Server.history``,
paged, on both faces; the namespace's subscribe rule; the page bound; Redis."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, List

import pytest

from sente_lite import Client, Namespace, RemoteError, Server
from sente_lite.core import history_api
from sente_lite.wire import protocol as p
from support import WAIT_S, FaceMaker, wait_until




def offsets(page: dict) -> List[int]:
    return [pub["offset"] for pub in page["publications"]]


def test_client_pages_through_history_both_ways(make_face: FaceMaker,
                                                make_client: Callable[..., Client]) -> None:
    srv = make_face()
    for i in range(7):
        srv.publish("h", {"n": i})
    c = make_client(srv.url)
    assert p.FEATURE_HISTORY_API in c.handshake["features"]
    first = c.history("h", 3)
    assert offsets(first) == [1, 2, 3] and first["publications"][0]["data"] == {"n": 0}
    assert first["channel-id"] == "h" and first["offset"] == 7
    second = c.history("h", 3, page=first["next"])
    third = c.history("h", 3, page=second["next"])
    assert (offsets(second), offsets(third), third["next"]) == ([4, 5, 6], [7], None)
    back = c.history("h", 4, reverse=True)
    assert offsets(back) == [7, 6, 5, 4]
    assert offsets(c.history("h", 4, reverse=True, page=back["next"])) == [3, 2, 1]
    since = c.history("h", since={"offset": 5, "epoch": first["epoch"]})
    assert offsets(since) == [6, 7] and since["recovered"] is True
    gone = c.history("h", since={"offset": 5, "epoch": "another"})
    assert gone["publications"] == [] and gone["recovered"] is False
    with pytest.raises(ValueError):
        c.history("h", 0)


def test_a_page_is_bounded_and_the_bound_is_counted(make_server: Callable[..., Server],
                                                    make_client: Callable[..., Client]) -> None:
    small = make_server(max_history_page=3)
    for i in range(5):
        small.publish("s", i)
    assert [x["offset"] for x in make_client(small.url).history("s", 10)["publications"]] == [1, 2, 3]
    assert [x["offset"] for x in small.history("s", 10)["publications"]] == [1, 2, 3]
    with pytest.raises(ValueError, match="max_history_page"):
        make_server(max_history_page=0)
    srv = make_server(history_size=500)
    for i in range(history_api.MAX_HISTORY_PAGE + 5):
        srv.publish("big", i)
    c = make_client(srv.url)
    page = c.history("big", 10_000)
    assert len(page["publications"]) == history_api.MAX_HISTORY_PAGE
    assert page["next"]["offset"] == history_api.MAX_HISTORY_PAGE
    assert srv.stats()["history_pages_capped"] == 1
    rest = srv.history("big", page=page["next"])
    assert [x["offset"] for x in rest["publications"]] == list(range(101, 106))
    assert rest["next"] is None


def test_the_namespaces_subscribe_rule_applies_to_history(
        make_server: Callable[..., Server], make_client: Callable[..., Client]) -> None:
    srv = make_server(namespaces={"priv": Namespace(subscribe="server"), "": Namespace()})
    srv.publish("priv:x", 1)
    c = make_client(srv.url)
    with pytest.raises(RemoteError) as refused:
        c.history("priv:x")
    assert refused.value.code == p.ERR_FORBIDDEN
    with pytest.raises(RemoteError) as unknown:
        c.history("nope:x")
    assert unknown.value.code == p.ERR_UNKNOWN_NAMESPACE


def test_reads_in_flight_are_bounded_per_connection(make_server: Callable[..., Server],
                                                    make_client: Callable[..., Client]) -> None:
    srv = make_server(max_history_reads_per_conn=1)
    srv._dispatcher.history_reads.max_reads = 0  # every read is over the bound (1 is the least)
    c = make_client(srv.url)
    with pytest.raises(RemoteError) as refused:
        c.history("h")
    assert refused.value.code == p.ERR_LIMIT_EXCEEDED
    assert "max_history_reads_per_conn" in str(refused.value)
    assert srv.stats()["history_reads_refused"] == 1


def test_history_on_redis_pages_off_the_network_thread(redis_srv: Any,
                                                       make_server: Callable[..., Server],
                                                       make_client: Callable[..., Client]) -> None:
    srv = make_server(broker=redis_srv.url)
    wait_until(lambda: srv.channels.healthy, what="the link up")
    for i in range(5):
        srv.publish("r", i)
    c = make_client(srv.url)
    first = c.history("r", 2)
    assert offsets(first) == [1, 2]
    assert offsets(c.history("r", 2, page=first["next"])) == [3, 4]
    assert offsets(c.history("r", 2, reverse=True)) == [5, 4]
    assert srv.stats()["history_reads"] == 3


def test_a_history_read_waiting_on_redis_holds_up_no_connection(redis_srv: Any,
                                                                 make_server: Callable[..., Server],
                                                                 make_client: Callable[..., Client]) -> None:
    """Redis stopped (SIGSTOP) while a history read waits on it: the reading connection's
    next request and another connection's are answered meanwhile (the read runs on a
    worker, not on the network thread nor the connection's lane)."""
    srv = make_server(broker=redis_srv.url)
    wait_until(lambda: srv.channels.healthy, what="the link up")
    srv.publish("r", 1)
    reader, other = make_client(srv.url), make_client(srv.url)
    reads = srv._dispatcher.history_reads
    outcome: List[Any] = []

    def read() -> None:
        try:
            outcome.append(reader.history("r", 2, timeout=WAIT_S))
        except RemoteError as exc:
            outcome.append(exc.code)

    redis_srv.pause()
    thread = threading.Thread(target=read, name="history-reader")
    try:
        thread.start()
        wait_until(lambda: reads._reading, what="the read waiting on Redis")
        for c in (other, reader):
            started = time.monotonic()
            c.request("chsk/ws-ping", timeout=WAIT_S)
            took = time.monotonic() - started
            assert reads._reading, "the read ended before the check: Redis answered while stopped?"
            assert took < 1.0, f"a ping waited {took:.2f}s behind a history read"
    finally:
        redis_srv.resume()
        thread.join(WAIT_S)
    assert not thread.is_alive()
    assert outcome and (outcome[0] in (p.ERR_UNAVAILABLE,) or offsets(outcome[0]) == [1]), outcome


def test_async_client_reads_history(make_face: FaceMaker) -> None:
    pytest.importorskip("uvicorn")
    import asyncio

    from sente_lite import AsyncClient

    srv = make_face()
    for i in range(3):
        srv.publish("a", i)

    async def main() -> dict:
        async with AsyncClient(srv.url) as c:
            assert await c.wait_connected(5)
            return await c.history("a", 2, reverse=True)

    page = asyncio.run(main())
    assert offsets(page) == [3, 2] and page["next"]["offset"] == 2

"""The asyncio client (sente_lite.aio.AsyncClient) against both faces (``make_face``): the
ASGI App under uvicorn and the threaded Server. Handshake, requests both ways, events,
channels with offsets (a handler and ``async for``), acknowledged publishes with ids,
reconnect with since-recovery, refusal."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator, List

import pytest

from sente_lite import AsyncClient, ConnectRefused

from support import FaceMaker, run

pytest.importorskip("uvicorn", reason="uvicorn (the [test] extra) is not installed")


@pytest.fixture
def served(make_face: FaceMaker) -> Any:
    """A face (each in turn: ``make_face``) with an echo and a handler that asks the client."""
    srv = make_face(heartbeat_ms=1000, allowed_origins=["https://app.example"])
    srv.on("app/echo", lambda conn, data: {"echo": data})
    srv.on("app/ask", lambda conn, data: srv.ask(conn, "app/question", data, timeout=5.0))
    return srv


@contextlib.asynccontextmanager
async def client(url: str, **kw: Any) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(url, backoff_base=0.05, backoff_max=0.2, **kw) as c:
        yield c


async def wait_for(cond: Any, what: str, timeout: float = 5.0) -> None:
    """Await ``cond()`` true (polled by the loop), failing after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def test_requests_events_and_channels(served: Any) -> None:
    url, publish = served.url, served.publish

    async def main() -> None:
        async with client(url) as c:
            async def question(data: Any) -> Any:
                return {"answer": data * 2}
            c.on("app/question", question)
            assert await c.wait_connected(5)
            assert c.handshake is not None and c.uid == c.client_id
            assert await c.request("app/echo", [1, "x"]) == {"echo": [1, "x"]}
            assert await c.request("app/ask", 21) == {"answer": 42}
            seen: List[Any] = []

            async def on_msg(msg: Any) -> None:
                seen.append((msg.offset, msg.data))
            reply = await c.subscribe("news", on_msg)
            assert reply["offset"] == 0
            ack = await c.publish("news", "a", ack=True)
            assert ack["offset"] == 1 and ack["delivered"] == 1
            await asyncio.get_running_loop().run_in_executor(None, publish, "news", "b")
            await wait_for(lambda: len(seen) == 2, "two messages")
            assert seen == [(1, "a"), (2, "b")]
            assert c.position("news") == {"offset": 2, "epoch": reply["epoch"]}
            await c.send("app/unhandled", 1)  # a plain event nobody handles: no answer
            assert await c.request("app/echo", 2) == {"echo": 2}
    run(main())


def test_async_for_a_subscription_and_recovery_across_a_reconnect(served: Any) -> None:
    url, drop, publish = served.url, served.disconnect, served.publish

    async def main() -> None:
        async with client(url) as c:
            recoveries: List[Any] = []
            c.on_recovery(recoveries.append)
            assert await c.wait_connected(5)
            got: List[Any] = []

            async def consume() -> None:
                async for msg in c.subscription("feed"):
                    got.append((msg.offset, msg.data))
                    if len(got) == 5:
                        return
            reader = asyncio.create_task(consume())
            await wait_for(lambda: c.position("feed") is not None, "the subscribe's answer")
            loop = asyncio.get_running_loop()
            for i in range(3):
                await loop.run_in_executor(None, publish, "feed", i)
            await wait_for(lambda: len(got) == 3, "three messages")
            first = c.conn_id
            assert await loop.run_in_executor(None, drop, first, 1001, "bye")
            await wait_for(lambda: c.connected and c.conn_id != first, "a reconnect")
            for i in range(3, 5):
                await loop.run_in_executor(None, publish, "feed", i)
            await asyncio.wait_for(reader, 5)
            assert got == [(1, 0), (2, 1), (3, 2), (4, 3), (5, 4)]
            await wait_for(lambda: recoveries, "the recovery answer")
            assert recoveries[0].recovered is True and recoveries[0].since["offset"] == 3
            assert c.stats()["reconnect_attempts"] >= 1
    run(main())


def test_a_publish_made_across_a_dropped_connection_lands_once(served: Any) -> None:
    url, drop = served.url, served.disconnect

    async def main() -> None:
        async with client(url) as watcher, client(url) as c:
            assert await watcher.wait_connected(5) and await c.wait_connected(5)
            seen: List[Any] = []
            await watcher.subscribe("p", lambda m: seen.append(m.data))
            loop = asyncio.get_running_loop()
            first = c.conn_id
            assert await loop.run_in_executor(None, drop, first, 1001, "bye")
            await wait_for(lambda: not c.connected or c.conn_id != first, "the drop")
            ack = await c.publish("p", "once", ack=True, timeout=5)  # kept, sent when connected
            assert ack["offset"] == 1 and not ack.get("duplicate")
            await wait_for(lambda: seen, "the delivery")
            await asyncio.sleep(0.2)  # room for a second delivery, which must not come
            assert seen == ["once"]
            assert c.stats()["unacked_publishes"] == 0
    run(main())


def test_refused_origin_raises_connect_refused(served: Any) -> None:
    url = served.url

    async def main() -> None:
        async with client(url, origin="https://evil.example") as c:
            with pytest.raises(ConnectRefused) as refused:
                await c.wait_connected(5)
            assert refused.value.status == 403
            assert c.status == "closed"
        async with client(url, origin="https://app.example") as ok:
            assert await ok.wait_connected(5)
    run(main())

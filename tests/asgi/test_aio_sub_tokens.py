"""The asyncio client's subscription tokens (feature ``sub-token``, docs/protocol.md section
16) with real signed tokens (PyJWT): refused without one, refreshed over the open socket
with no reconnect and no loss, the expiry notice ending that channel only, and a fresh
token on the resubscribe after a reconnect."""

from __future__ import annotations

import asyncio
from typing import Any, Callable, List

import pytest

pytest.importorskip("jwt", reason="PyJWT is not installed (pip install 'sente-lite[jwt]')")

from sente_lite import JWT, AsyncClient, Namespace, RemoteError  # noqa: E402
from sente_lite.core.jwt_tokens import mint  # noqa: E402
from sente_lite.wire import protocol as p  # noqa: E402

from support import FaceMaker, run  # noqa: E402

KEY = "aio-sub-token-secret-of-32-bytes-or-more"
#: Subscription tokens live this long in the refresh tests: three refreshes fit in ~5 s.
SHORT_TTL_S = 2
#: Longest wait for anything in these tests (a refresh comes every ~1.5 s).
WAIT_S = 10.0


def sub_face(make_face: FaceMaker) -> Any:
    """A face whose namespace ``room`` needs subscription tokens (ticks every 0.25 s)."""
    return make_face(jwt=JWT(key=KEY), heartbeat_ms=1000,
                     namespaces={"room": Namespace(subscribe_token=True), "": {}})


def client(url: str) -> AsyncClient:
    return AsyncClient(url, token=mint("alice", 60, KEY), backoff_base=0.05, backoff_max=0.2)


async def wait_for(cond: Callable[[], Any], what: str, timeout: float = WAIT_S) -> None:
    """Await ``cond()`` true (polled by the loop), failing after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def in_thread(fn: Callable[..., Any], *args: Any) -> "asyncio.Future[Any]":
    """A blocking face call (publish, disconnect) off the client's event loop."""
    return asyncio.get_running_loop().run_in_executor(None, fn, *args)


def test_refused_without_a_token_or_with_a_wrong_one(make_face: FaceMaker) -> None:
    make_face.skip_on("asgi", "the threaded face checks the same dispatcher; one face suffices")
    srv = sub_face(make_face)

    async def main() -> None:
        async with client(srv.url) as c:
            assert await c.wait_connected(5)
            assert p.FEATURE_SUB_TOKEN in c.handshake["features"]
            with pytest.raises(RemoteError) as info:
                await c.subscribe("room:1")
            assert info.value.code == p.ERR_INVALID_TOKEN
            refused: List[Any] = []

            async def told(channel_id: str, error: BaseException) -> None:
                refused.append((channel_id, getattr(error, "code", None)))
            with pytest.raises(RemoteError) as info:
                await c.subscribe("room:1", token=mint("bob", 60, KEY, channel="room:1"),
                                  on_token_refused=told)
            assert info.value.code == p.ERR_FORBIDDEN
            await wait_for(lambda: refused, "on_token_refused")
            assert refused == [("room:1", p.ERR_FORBIDDEN)] and c.subscriptions() == []
            with pytest.raises(TypeError):
                await c.subscribe("room:2", token=42)  # type: ignore[arg-type]
            source_calls: List[int] = []

            def refusing_source() -> Any:
                source_calls.append(1)
                return None
            with pytest.raises(RemoteError):  # no token went: the server refuses the subscribe
                await c.subscribe("room:3", token=refusing_source, on_token_refused=told)
            await wait_for(lambda: len(refused) == 2, "the source's refusal told")
            assert refused[1] == ("room:3", None) and source_calls == [1]
            assert c.stats()["sub_token_refused"] == 2

    run(main())


def test_three_refreshes_without_reconnect_or_loss(make_face: FaceMaker) -> None:
    srv = sub_face(make_face)

    async def main() -> None:
        minted: List[str] = []

        async def source() -> str:  # an async source
            minted.append(mint("alice", SHORT_TTL_S, KEY, channel="room:1"))
            return minted[-1]

        async with client(srv.url) as c:
            assert await c.wait_connected(5)
            conn_id = c.conn_id
            got: List[Any] = []
            await c.subscribe("room:1", lambda m: got.append(m.data), token=source)
            sent = 0
            deadline = asyncio.get_running_loop().time() + WAIT_S
            while c.stats().get("sub_token_refreshes", 0) < 3:
                assert asyncio.get_running_loop().time() < deadline, c.stats()
                await in_thread(srv.publish, "room:1", sent)  # a steady stream meanwhile
                sent += 1
                await asyncio.sleep(0.02)
            await wait_for(lambda: len(got) == sent, "every message delivered")
            assert got == list(range(sent))
            assert c.conn_id == conn_id and c.stats().get("reconnect_attempts", 0) == 0
            assert c.stats().get("sub_token_refresh_failures", 0) == 0 and len(minted) >= 4
            assert srv.stats()["sub_token_refreshes"] >= 3 and srv.stats()["sub_token_expired"] == 0

    run(main())


def test_expiry_without_refresh_ends_that_channel_only(make_face: FaceMaker) -> None:
    make_face.skip_on("asgi", "the threaded face checks the same dispatcher; one face suffices")
    srv = sub_face(make_face)

    async def main() -> None:
        async with client(srv.url) as c:
            assert await c.wait_connected(5)
            conn_id = c.conn_id
            refused: List[Any] = []
            got: List[Any] = []
            await c.subscribe("room:1", token=mint("alice", SHORT_TTL_S, KEY, channel="room:1"),
                              on_token_refused=lambda ch, err: refused.append((ch, err.code)))
            await c.subscribe("room:2", lambda m: got.append(m.data),
                              token=mint("alice", 60, KEY, channel="room:2"))
            await wait_for(lambda: refused, "the expiry notice")
            assert refused == [("room:1", p.REASON_TOKEN_EXPIRED)]
            assert c.subscriptions() == ["room:2"] and c.conn_id == conn_id
            await in_thread(srv.publish, "room:2", "still here")
            await wait_for(lambda: got == ["still here"], "room:2's message")
            assert c.stats()["sub_token_expired"] == 1

    run(main())


def test_resubscribe_after_a_forced_reconnect_sends_a_fresh_token(make_face: FaceMaker) -> None:
    make_face.skip_on("asgi", "the threaded face checks the same dispatcher; one face suffices")
    srv = sub_face(make_face)

    async def main() -> None:
        minted: List[str] = []

        def source() -> str:  # a plain source
            minted.append(mint("alice", 60 + len(minted), KEY, channel="room:1"))
            return minted[-1]

        async with client(srv.url) as c:
            got: List[Any] = []
            assert await c.wait_connected(5)
            await c.subscribe("room:1", lambda m: got.append(m.data), token=source)
            first = c.conn_id
            await in_thread(srv.disconnect, first)
            await wait_for(lambda: c.conn_id not in (None, first) and c.connected, "a reconnect")
            await wait_for(lambda: len(minted) == 2, "a second token")
            assert minted[0] != minted[1]

            async def delivered() -> None:
                while not got:
                    await in_thread(srv.publish, "room:1", "x")
                    await asyncio.sleep(0.05)
            await asyncio.wait_for(delivered(), WAIT_S)  # the resubscribe with it passed
            assert c.subscriptions() == ["room:1"] and c.stats().get("sub_token_refused", 0) == 0

    run(main())


def test_a_source_refusing_at_a_refresh_ends_the_channel(make_face: FaceMaker) -> None:
    make_face.skip_on("asgi", "the threaded face checks the same dispatcher; one face suffices")
    srv = sub_face(make_face)

    async def main() -> None:
        calls: List[int] = []

        def source() -> Any:
            calls.append(1)
            return mint("alice", SHORT_TTL_S, KEY, channel="room:1") if len(calls) == 1 else None

        async with client(srv.url) as c:
            refused: List[Any] = []
            assert await c.wait_connected(5)
            await c.subscribe("room:1", token=source,
                              on_token_refused=lambda ch, err: refused.append((ch, err)))
            await wait_for(lambda: refused, "the source's refusal told")
            assert refused[0][0] == "room:1" and "gave no token" in str(refused[0][1])
            assert c.subscriptions() == [] and len(calls) == 2
            await wait_for(lambda: srv.channels.subscriber_count("room:1") == 0, "the server's unsubscribe")
            assert srv.stats()["sub_token_expired"] == 0 and c.connected

    run(main())

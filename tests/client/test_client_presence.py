"""Channel presence and join/leave end to end: the threaded Client against the threaded
Server, and the AsyncClient against both faces (``make_face``)."""

from __future__ import annotations

import asyncio
from typing import Any, Callable, List

import pytest

from sente_lite import AsyncClient, Client, Namespace, RemoteError, Server

from support import FaceMaker, run, wait_until

SPACES = {"room": Namespace(presence=True, join_leave=True), "open": Namespace()}


def test_threaded_client_presence_and_join_leave(make_server: Callable[..., Server],
                                                  make_client: Callable[..., Client]) -> None:
    srv = make_server(authenticate=lambda req: req.query.get("u"), namespaces=SPACES)
    alice = make_client(srv.url + "?u=alice", client_id="ca")
    assert "presence" in alice.handshake["features"]
    seen: List[Any] = []
    alice.subscribe("room:1", lambda m: seen.append(("msg", m.data)),
                    on_join=lambda ch: seen.append(("join", ch.member["uid"])),
                    on_leave=lambda ch: seen.append(("leave", ch.member["uid"])))
    bob = make_client(srv.url + "?u=bob", client_id="cb")
    bob.subscribe("room:1")
    bob.publish("room:1", "hi", ack=True)
    members = alice.presence("room:1")
    assert sorted((m["client-id"], m["uid"]) for m in members) == [("ca", "alice"), ("cb", "bob")]
    assert {m["conn-id"] for m in members} == {alice.conn_id, bob.conn_id}
    assert alice.presence_stats("room:1") == {"members": 2, "users": 2}
    assert srv.presence_of("room:1") == members
    assert srv.presence_stats("room:1") == {"members": 2, "users": 2}
    bob.close()
    wait_until(lambda: ("leave", "bob") in seen, what="bob's leave")
    assert seen == [("join", "alice"), ("join", "bob"), ("msg", "hi"), ("leave", "bob")]
    assert [m["uid"] for m in srv.presence_of("room:1")] == ["alice"]
    alice.subscribe("open:1")
    with pytest.raises(RemoteError) as off:
        alice.presence("open:1")
    assert off.value.code == "forbidden" and "presence" in off.value.message
    with pytest.raises(RemoteError) as outsider:
        alice.presence("room:2")
    assert outsider.value.code == "forbidden" and "subscribe" in outsider.value.message
    with pytest.raises(ValueError):
        srv.presence_of("")


def test_async_client_presence_and_join_leave(make_face: FaceMaker) -> None:
    srv = make_face(namespaces=SPACES)
    url = srv.url

    async def main() -> None:
        async with AsyncClient(url, client_id="a1") as a, AsyncClient(url, client_id="b1") as b:
            assert await a.wait_connected(5) and await b.wait_connected(5)
            moves: List[Any] = []

            async def joined(change: Any) -> None:
                moves.append(("join", change.member["client-id"]))
            await a.subscribe("room:x", on_join=joined,
                              on_leave=lambda change: moves.append(("leave", change.member["client-id"])))
            await b.subscribe("room:x")
            assert sorted(m["client-id"] for m in await a.presence("room:x")) == ["a1", "b1"]
            assert await b.presence_stats("room:x") == {"members": 2, "users": 2}
            await b.unsubscribe("room:x")
            deadline = asyncio.get_running_loop().time() + 5
            while ("leave", "b1") not in moves:
                assert asyncio.get_running_loop().time() < deadline, moves
                await asyncio.sleep(0.01)
            assert moves == [("join", "a1"), ("join", "b1"), ("leave", "b1")]
            with pytest.raises(RemoteError):
                await b.presence("room:x")

    run(main())


def test_server_side_subscriptions_join_and_leave(make_server: Callable[..., Server],
                                                  make_client: Callable[..., Client]) -> None:
    """srv.subscribe / srv.unsubscribe move a connection in and out like its own subscribe:
    the channel's subscribers see the join and the leave, presence lists it meanwhile."""
    srv = make_server(namespaces=SPACES)
    watcher = make_client(srv.url, client_id="w")
    moves: List[Any] = []
    watcher.subscribe("room:s", on_join=lambda ch: moves.append(("join", ch.member["client-id"])),
                      on_leave=lambda ch: moves.append(("leave", ch.member["client-id"])))
    moved = make_client(srv.url, client_id="m")
    assert srv.subscribe(moved.conn_id, "room:s") == 1
    wait_until(lambda: ("join", "m") in moves, what="the server-side join")
    assert sorted(m["client-id"] for m in srv.presence_of("room:s")) == ["m", "w"]
    assert srv.unsubscribe(moved.conn_id, "room:s") == 1
    wait_until(lambda: ("leave", "m") in moves, what="the server-side leave")
    assert moves == [("join", "w"), ("join", "m"), ("leave", "m")]
    assert [m["client-id"] for m in srv.presence_of("room:s")] == ["w"]

"""Server-side subscriptions (feature ``server-subs``): ``srv.subscribe``/``unsubscribe`` by
conn-id and by user, channels given at connect (``Authenticated``), their bound, and the
recovery with ``since`` of a server-given channel after a reconnect; both Python clients."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, List

import pytest

from sente_lite import Authenticated, Client, Namespace, Server
from sente_lite.core.connect_channels import MAX_CONNECT_CHANNELS
from sente_lite.wire import protocol as p
from support import FaceMaker, wait_until


class Seen:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.msgs: List[Any] = []

    def __call__(self, msg: Any) -> None:
        with self.lock:
            self.msgs.append((msg.channel_id, msg.offset, msg.data))

    def offsets(self, channel: str) -> List[int]:
        with self.lock:
            return [o for ch, o, _ in self.msgs if ch == channel]


def test_subscribe_by_conn_id_tells_the_client_and_delivers(make_face: FaceMaker,
                                                            make_client: Callable[..., Client]) -> None:
    srv = make_face()
    c = make_client(srv.url)
    assert p.FEATURE_SERVER_SUBS in c.handshake["features"]
    seen = Seen()
    c.on_server_channel(seen)
    srv.publish("news", "before")  # not received: the subscription starts after it
    assert srv.subscribe(c.conn_id, "news") == 1
    wait_until(lambda: c.server_subscriptions() == ["news"], what="the server-sub")
    assert "news" in c.subscriptions()
    srv.publish("news", "hello")
    wait_until(lambda: seen.offsets("news") == [2], what="the message")
    assert srv.unsubscribe(c.conn_id, "news") == 1
    wait_until(lambda: c.subscriptions() == [], what="the server-unsub")
    srv.publish("news", "after")
    srv.publish("probe", 1)  # a later frame: the client has read past the message above
    assert seen.offsets("news") == [2]


def test_subscribe_by_user_covers_its_connections_and_later_ones(
        make_server: Callable[..., Server], make_client: Callable[..., Client]) -> None:
    srv = make_server(authenticate=lambda req: req.query.get("user"))
    a = make_client(srv.url + "?user=ann")
    assert srv.subscribe("ann", "room") == 1
    b = make_client(srv.url + "?user=ann")  # connects later: given it at connect
    for c in (a, b):
        wait_until(lambda c=c: c.server_subscriptions() == ["room"], what="the server-sub")
    assert srv.stats()["server_subscribes"] == 2
    assert srv.unsubscribe("ann", "room") == 2


def test_channels_given_at_connect_are_bounded(make_server: Callable[..., Server],
                                               make_client: Callable[..., Client]) -> None:
    many = [f"c{i}" for i in range(MAX_CONNECT_CHANNELS + 6)]
    srv = make_server(authenticate=lambda req: Authenticated("u", tuple(many)))
    c = make_client(srv.url)
    wait_until(lambda: len(c.server_subscriptions()) == MAX_CONNECT_CHANNELS, what="the channels")
    assert srv.stats()["connect_channels_refused"] == 6
    assert sorted(c.server_subscriptions()) == sorted(many[:MAX_CONNECT_CHANNELS])


def test_a_server_given_channel_recovers_with_since_after_a_reconnect(
        make_server: Callable[..., Server], make_client: Callable[..., Client]) -> None:
    """The namespace lets only the server subscribe: the client's re-subscribe with since
    takes over the channel the server gave again at connect, and replays what it missed."""
    srv = make_server(namespaces={"feed": Namespace(subscribe="server"), "": Namespace()},
                      authenticate=lambda req: ("u1", ["feed:a"]))
    c = make_client(srv.url, backoff_base=0.3, backoff_max=0.3)
    seen, recoveries = Seen(), []
    c.on_server_channel(seen)
    c.on_recovery(recoveries.append)
    wait_until(lambda: c.server_subscriptions() == ["feed:a"], what="the server-sub")
    srv.publish("feed:a", 1)
    wait_until(lambda: seen.offsets("feed:a") == [1], what="the first message")
    first_conn = c.conn_id
    away: List[str] = []

    def publish_while_away(status: str) -> None:
        # on the reader thread as the connection is lost, before its backoff and reconnect
        # (a full-jitter backoff may reconnect within a poll: "not connected" can be missed)
        if status != "connected" and not away:
            away.append(status)
            srv.publish("feed:a", 2)  # missed while away
            srv.publish("feed:a", 3)

    c.on_status(publish_while_away)
    srv.disconnect(first_conn, p.CLOSE_NORMAL, "bye")
    wait_until(lambda: away, what="the drop")
    wait_until(lambda: c.connected and c.conn_id != first_conn, what="the reconnect")
    srv.publish("feed:a", 4)
    wait_until(lambda: seen.offsets("feed:a") == [1, 2, 3, 4], what="the replay, then live")
    assert recoveries and recoveries[-1].recovered is True
    assert c.server_subscriptions() == ["feed:a"]


def test_async_client_gets_server_channels(make_face: FaceMaker) -> None:
    pytest.importorskip("uvicorn")
    import asyncio

    from sente_lite import AsyncClient

    srv = make_face()

    async def main() -> List[Any]:
        got: List[Any] = []
        async with AsyncClient(srv.url) as c:
            assert await c.wait_connected(5)
            c.on_server_channel(lambda msg: got.append(msg.data))
            await asyncio.get_running_loop().run_in_executor(None, srv.subscribe, c.conn_id, "n")
            for _ in range(500):
                if c.server_subscriptions() == ["n"]:
                    break
                await asyncio.sleep(0.01)
            assert c.server_subscriptions() == ["n"]
            await asyncio.get_running_loop().run_in_executor(None, srv.publish, "n", "x")
            for _ in range(500):
                if got:
                    break
                await asyncio.sleep(0.01)
        return got

    assert asyncio.run(main()) == ["x"]


def test_a_tokens_channels_claim_subscribes_at_connect(make_server: Callable[..., Server],
                                                       make_client: Callable[..., Client]) -> None:
    jwt = pytest.importorskip("jwt", reason="PyJWT (the [jwt] extra) is not installed")
    from sente_lite import JWT

    key = "server-subs-secret-" + "0" * 16
    now = int(time.time())
    token = jwt.encode({"sub": "ann", "iat": now, "exp": now + 60, "channels": ["a", "b"]}, key,
                       algorithm="HS256")
    srv = make_server(jwt=JWT(key=key))
    c = make_client(srv.url, token=token)
    wait_until(lambda: c.server_subscriptions() == ["a", "b"], what="the token's channels")
    bad = jwt.encode({"sub": "ann", "iat": now, "exp": now + 60, "channels": "a"}, key,
                     algorithm="HS256")
    refused = make_client(srv.url, token=bad, connect=False, auto_reconnect=False)
    assert refused.wait_status("closed", 5) and refused.conn_id is None

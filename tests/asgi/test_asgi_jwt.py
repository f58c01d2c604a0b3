"""JWT connection tokens on the ASGI face (the same settings and rules as the threaded
server: 401 at the upgrade, refresh, 4002), and the asyncio client's refresh against both
faces."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Iterator, List

import pytest
import websocket  # websocket-client

pytest.importorskip("jwt", reason="PyJWT is not installed (pip install 'sente-lite[jwt]')")

from sente_lite import JWT, App, AsyncClient, ConnectRefused, Server  # noqa: E402
from sente_lite.core.jwt_tokens import mint  # noqa: E402
from sente_lite.wire import protocol as p  # noqa: E402

from support import run, serving  # noqa: E402
from support import RawWS  # noqa: E402

KEY = "asgi-test-secret-of-32-bytes-or-more"
#: Tokens live this long: a refresh comes after about 2.25 s.
SHORT_TTL_S = 3


@contextlib.contextmanager
def face(kind: str) -> Iterator[str]:
    """The ws URL of a running face of ``kind`` taking HS256 tokens signed with ``KEY``."""
    if kind == "asgi":
        with serving(App(jwt=JWT(key=KEY), heartbeat_ms=1000)) as base:
            yield base.replace("http://", "ws://") + "/chsk"
    else:
        with Server(jwt=JWT(key=KEY), heartbeat_ms=1000) as srv:
            yield srv.url


def test_the_asgi_face_checks_tokens_answers_refresh_and_closes_4002() -> None:
    with face("asgi") as url:
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            RawWS(url, header=[f"Authorization: Bearer {mint('a', -5, KEY)}"])
        assert info.value.status_code in (401, 403)  # uvicorn may not relay a denial's status
        peer = RawWS(url, subprotocols=["sente-lite", f"bearer.{mint('alice', 2, KEY)}"])
        try:
            uid, _, hs_info, _ = peer.handshake[1]
            assert uid == "alice" and p.FEATURE_REFRESH in hs_info["features"]
            assert peer.ws.getsubprotocol() == "sente-lite"
            other = peer.request(p.EV_REFRESH, {"token": mint("bob", 60, KEY)}, "c1")
            assert other[1]["code"] == p.ERR_FORBIDDEN
            assert peer.recv_close() == p.CLOSE_TOKEN_EXPIRED  # that refresh moved nothing
        finally:
            peer.close()
        peer = RawWS(url, header=[f"Authorization: Bearer {mint('alice', 2, KEY)}"])
        try:
            reply = peer.request(p.EV_REFRESH, {"token": mint("alice", 60, KEY)}, "c2")
            assert reply[0] == p.EV_REPLY and reply[1]["exp"] > hs_info[p.K_TOKEN_EXP]
        finally:
            peer.close()


@pytest.mark.parametrize("kind", ["asgi", "threaded"])
def test_the_async_client_refreshes_without_reconnecting(kind: str) -> None:
    with face(kind) as url:
        async def main() -> None:
            got: List[str] = []

            async def source() -> str:
                got.append(mint("alice", SHORT_TTL_S, KEY))
                return got[-1]

            async with AsyncClient(url, token=source) as c:
                assert await c.wait_connected(5)
                conn_id = c.conn_id
                deadline = asyncio.get_running_loop().time() + 15
                while c.stats().get("token_refreshes", 0) < 2:
                    assert asyncio.get_running_loop().time() < deadline, c.stats()
                    await asyncio.sleep(0.05)
                assert c.connected and c.conn_id == conn_id and c.uid == "alice"
                assert c.stats().get("reconnect_attempts", 0) == 0 and len(got) >= 3

        run(main())


def test_the_async_client_stops_when_its_token_source_refuses() -> None:
    with face("threaded") as url:
        async def main() -> None:
            calls: List[int] = []

            def source() -> Any:
                calls.append(1)
                return mint("alice", SHORT_TTL_S, KEY) if len(calls) == 1 else None

            async with AsyncClient(url, token=source) as c:
                assert await c.wait_status("closed", 15)
                assert isinstance(c.refusal, ConnectRefused) and "gave no token" in str(c.refusal)

        run(main())

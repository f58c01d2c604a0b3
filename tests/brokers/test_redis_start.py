"""A server on Redis starts to serve once its link to Redis is up (bounded by the broker's
``start_wait_s``): a client that connects the moment it listens (a restarted server's
reconnecting clients) is not refused its publishes only because the link was still coming up."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

import pytest

from sente_lite import Client, Server
from sente_lite.testing.redis_server import RedisServer
from support import free_port

redis = pytest.importorskip("redis", reason="redis-py is not installed (pip install 'sente-lite[redis]')")

from sente_lite.brokers.redis.broker import RedisBroker  # noqa: E402  (needs redis-py)


def test_a_started_server_takes_publishes_at_once(redis_srv: RedisServer,
                                                  make_server: Callable[..., Server]) -> None:
    for _ in range(5):
        srv = make_server(broker=redis_srv.url)
        assert srv.channels.healthy, "start returned before the link to Redis was up"
        with Client(srv.url) as c:
            assert c.publish("news", {"n": 1}, ack=True, timeout=5)["offset"] >= 1


def test_the_asgi_face_starts_once_its_link_is_up(redis_srv: RedisServer) -> None:
    from sente_lite.asgi import App

    async def main() -> None:
        app = App(broker=redis_srv.url)
        async with app:
            assert app.channels.healthy, "App.start returned before the link to Redis was up"

    asyncio.run(main())


def test_without_redis_start_waits_start_wait_s_then_serves_degraded_and_says_so(
        make_server: Callable[..., Server], caplog: pytest.LogCaptureFixture) -> None:
    broker = RedisBroker(f"redis://127.0.0.1:{free_port()}/0", start_wait_s=0.3)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="sente_lite.redis"):
        srv = make_server(broker=broker)
    took = time.monotonic() - t0
    assert 0.3 <= took < 3.0
    assert not srv.channels.healthy
    assert any("start_wait_s" in r.getMessage() for r in caplog.records)


def test_start_wait_s_must_be_a_number_of_seconds() -> None:
    for bad in (-1, float("nan")):
        with pytest.raises(ValueError, match="start_wait_s"):
            RedisBroker("redis://127.0.0.1:1/0", start_wait_s=bad)

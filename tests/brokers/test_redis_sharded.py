"""Sharded subscription on one Redis: a server hears only the channels it serves
(SSUBSCRIBE on a channel's first local subscriber, SUNSUBSCRIBE after its last), and
subscribing with ``since`` while a publisher runs loses and repeats nothing."""

from __future__ import annotations

import threading
from typing import Any, Callable, List, Tuple

import pytest

from sente_lite import Client, Server
from sente_lite.brokers.redis.space import ChannelSpace, hash_tag
from sente_lite.brokers.redis.url import parse_broker_url
from sente_lite.testing.redis_server import RedisServer
from support import wait_until

redis = pytest.importorskip("redis", reason="redis-py is not installed (pip install 'sente-lite[redis]')")


class Rec:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.got: List[Tuple[int, str]] = []

    def __call__(self, msg: Any) -> None:
        with self.lock:
            self.got.append((msg.offset, msg.epoch))

    def offsets(self) -> List[int]:
        with self.lock:
            return [o for o, _ in self.got]


def _shard_subscribers(redis_srv: RedisServer, channel: str) -> int:
    shard = ChannelSpace("sente-lite", "t", 10, 1.0, 1.0, 1.0).shard_channel(channel)
    client = redis.Redis.from_url(redis_srv.url)
    try:
        return int(client.execute_command("PUBSUB", "SHARDNUMSUB", shard)[1])
    finally:
        client.close()


@pytest.mark.parametrize("subscription, unserved", [("sharded", 0), ("pattern", 30)])
def test_a_server_hears_only_the_channels_it_serves(
        redis_srv: RedisServer, make_server: Callable[..., Server],
        make_client: Callable[..., Client], subscription: str, unserved: int) -> None:
    url = f"{redis_srv.url}?subscription={subscription}"
    a, b = make_server(broker=url), make_server(broker=url)
    wait_until(lambda: a.channels.healthy and b.channels.healthy, what="both links up")
    on_a, on_b = Rec(), Rec()
    make_client(a.url).subscribe("x", on_a)
    make_client(b.url).subscribe("y", on_b)
    for i in range(30):
        a.publish("x", i)
        a.publish("y", i)
    wait_until(lambda: len(on_a.offsets()) == 30 and len(on_b.offsets()) == 30)
    for srv in (a, b):
        stats = srv.stats()
        assert stats["broker_subscription"] == subscription
        assert (stats["broker_heard"], stats["broker_unserved"]) == (30, unserved)


def test_the_shard_subscription_follows_local_subscribers(
        redis_srv: RedisServer, make_server: Callable[..., Server],
        make_client: Callable[..., Client]) -> None:
    srv = make_server(broker=redis_srv.url)
    wait_until(lambda: srv.channels.healthy, what="link up")
    first, second = make_client(srv.url), make_client(srv.url)
    first.subscribe("z", Rec())
    second.subscribe("z", Rec())
    assert _shard_subscribers(redis_srv, "z") == 1  # one SSUBSCRIBE per server, not per client
    assert srv.stats()["broker_listening"] == 1
    first.unsubscribe("z")
    assert _shard_subscribers(redis_srv, "z") == 1
    second.unsubscribe("z")
    wait_until(lambda: _shard_subscribers(redis_srv, "z") == 0, what="SUNSUBSCRIBE")
    assert srv.stats()["broker_listening"] == 0


def test_resubscribing_with_since_while_publishing_loses_and_repeats_nothing(
        redis_srv: RedisServer, make_server: Callable[..., Server],
        make_client: Callable[..., Client]) -> None:
    a, b = make_server(broker=redis_srv.url), make_server(broker=redis_srv.url)
    wait_until(lambda: a.channels.healthy and b.channels.healthy, what="both links up")
    client = make_client(b.url)
    rec = Rec()
    client.subscribe("w", rec)
    stop = threading.Event()
    published: List[int] = []

    def publish() -> None:
        while not stop.is_set():
            published.append(a.publish("w", len(published)).offset)

    pub = threading.Thread(target=publish)
    pub.start()
    try:
        switches = 12
        for _ in range(switches):
            seen = len(rec.offsets())
            wait_until(lambda: len(rec.offsets()) > seen + 3, what="live messages")
            client.unsubscribe("w")  # the last subscriber here: SUNSUBSCRIBE
            with rec.lock:
                since = {"offset": rec.got[-1][0], "epoch": rec.got[-1][1]}
            wait_until(lambda: published and published[-1] > since["offset"] + 3,
                       what="publishes while unsubscribed")
            reply = client.subscribe("w", rec, since=since)  # SSUBSCRIBE, then the replay
            assert reply is not None and reply["recovered"] is True
    finally:
        stop.set()
        pub.join()
    top = published[-1]
    wait_until(lambda: rec.offsets()[-1:] == [top], what="every message")
    assert rec.offsets() == list(range(1, top + 1))  # no gap, no duplicate
    assert b.stats()["broker_shard_subscribes"] >= switches + 1


def test_the_hash_tag_keeps_a_channels_keys_and_shard_channel_in_one_slot() -> None:
    space = ChannelSpace("p", "s", 10, 1.0, 1.0, 1.0)
    tag = hash_tag("a{b}c")
    for key in (space.meta_key("a{b}c"), space.log_key("a{b}c"),
                space.id_key("a{b}c", "id"), space.shard_channel("a{b}c").decode()):
        assert key.startswith(f"p:ch:{tag}:")
    assert space.delivery("a{b}c") == ("SPUBLISH", space.shard_channel("a{b}c"))


@pytest.mark.parametrize("url, message", [
    ("redis://h:1/0?subscription=psub", "subscription must be one of"),
    ("http://h:1", "must start redis://"),
    ("redis+cluster://h:1,nohostport", "is not host:port"),
    ("redis+cluster://h:1?subscription=pattern", "needs subscription=sharded"),
])
def test_a_bad_broker_url_says_what_to_fix(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_broker_url(url)


def test_the_url_option_is_removed_for_redis_py() -> None:
    parsed = parse_broker_url("redis://h:1/0?subscription=pattern&socket_timeout=3")
    assert parsed == ("redis://h:1/0?socket_timeout=3", "pattern", None)
    assert parse_broker_url("redis+cluster://a:1,b:2").nodes == [("a", 1), ("b", 2)]

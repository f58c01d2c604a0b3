"""User routing on one Redis with sharded subscription: a ``send_to_user`` or
``disconnect_user`` reaches only the servers holding a connection of that user (its shard
channel), from a server or a ``Publisher``, with no window after the handshake; a user's
presence is one key, and a SIGKILLed server's connections vanish from it within
``presence_ttl_s``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any, Callable, List, Tuple

import pytest

from sente_lite import Client, Publisher, Server
from sente_lite.brokers.redis.broker import RedisBroker
from sente_lite.brokers.redis.users import user_key, user_shard
from sente_lite.testing.redis_server import RedisServer
from support import REPO, WAIT_S, Recorder, wait_until

redis = pytest.importorskip("redis", reason="redis-py is not installed (pip install 'sente-lite[redis]')")

#: Short, so the SIGKILL test is quick; the default is 6 s.
TTL_S = 1.5


def _subscribers(redis_srv: RedisServer, uid: str) -> int:
    client = redis.Redis.from_url(redis_srv.url)
    try:
        return int(client.execute_command("PUBSUB", "SHARDNUMSUB", user_shard("sente-lite", uid))[1])
    finally:
        client.close()


def _three(redis_srv: RedisServer, make_server: Callable[..., Server],
           url: str = "") -> Tuple[Server, Server, Server]:
    servers = tuple(make_server(broker=url or redis_srv.url) for _ in range(3))
    wait_until(lambda: all(s.channels.healthy for s in servers), what="three links up")
    return servers  # type: ignore[return-value]


def test_a_users_messages_reach_only_the_servers_holding_it(
        redis_srv: RedisServer, make_server: Callable[..., Server],
        make_client: Callable[..., Client]) -> None:
    a, b, c = _three(redis_srv, make_server)
    got = Recorder()
    ann = make_client(b.url, connect=False, client_id="ann")
    ann.on("app/hi", got)
    assert ann.wait_connected(WAIT_S)
    assert _subscribers(redis_srv, "ann") == 1  # b alone listens to ann
    assert a.send_to_user("ann", "app/hi", 1) == 0  # none on a: all through Redis
    with Publisher(redis_srv.url) as pub:
        pub.send_to_user("ann", "app/hi", 2)
    assert sorted(got.wait_count(2)) == [1, 2]
    wait_until(lambda: b.stats()["broker_user_heard"] == 2, what="b read both")
    for idle in (a, c):  # neither holds ann: nothing for ann came from Redis
        stats = idle.stats()
        assert stats["broker_user_heard"] == 0 and stats["broker_user_inbound_bytes"] == 0
        assert stats["broker_users_listening"] == 0
    assert b.stats()["broker_users_listening"] == 1
    ann.close()
    wait_until(lambda: _subscribers(redis_srv, "ann") == 0, what="b stopped listening to ann")
    wait_until(lambda: b.stats()["broker_users_listening"] == 0, what="no user listened to")


def test_broadcast_still_reaches_every_server(
        redis_srv: RedisServer, make_server: Callable[..., Server],
        make_client: Callable[..., Client]) -> None:
    a, b, c = _three(redis_srv, make_server)
    got_b, got_c = Recorder(), Recorder()
    for srv, got in ((b, got_b), (c, got_c)):
        cl = make_client(srv.url, connect=False)
        cl.on("app/all", got)
        assert cl.wait_connected(WAIT_S)
    a.broadcast("app/all", 7)
    assert got_b.wait_count(1) == [7] and got_c.wait_count(1) == [7]


def test_disconnect_user_closes_it_on_another_server(
        redis_srv: RedisServer, make_server: Callable[..., Server],
        make_client: Callable[..., Client]) -> None:
    a, b, c = _three(redis_srv, make_server)
    closed: List[int] = []
    b.on_disconnect(lambda conn, code, reason: closed.append(code))
    make_client(b.url, client_id="bob")
    assert a.disconnect_user("bob", 4001, "bye") == 0
    wait_until(lambda: closed == [4001], what="bob closed on b")
    assert c.stats()["broker_user_heard"] == 0


@pytest.mark.parametrize("face", ["threaded", "asgi"])
def test_a_send_right_after_the_handshake_arrives(
        redis_srv: RedisServer, make_server: Callable[..., Server],
        make_client: Callable[..., Client], face: str) -> None:
    """Each new user's upgrade is answered once its shard channel is subscribed: a send
    from another server made as soon as the client is connected is never lost."""
    a = make_server(broker=redis_srv.url)
    if face == "threaded":
        b_url, b_stats = _threaded(make_server, redis_srv)
    else:
        b_url, b_stats, stop = _asgi(redis_srv)
    try:
        wait_until(lambda: a.channels.healthy and b_stats()["broker_up"], what="links up")
        rounds = 25
        for i in range(rounds):
            got = Recorder()
            cl = make_client(b_url, connect=False, client_id=f"nw-{i}")
            cl.on("app/now", got)
            assert cl.wait_connected(WAIT_S)
            a.send_to_user(f"nw-{i}", "app/now", i)
            assert got.wait_count(1) == [i]
            cl.close()
        assert b_stats()["broker_user_routes_waited"] >= rounds
    finally:
        if face == "asgi":
            stop()


def _threaded(make_server: Callable[..., Server], redis_srv: RedisServer) -> Tuple[str, Any]:
    b = make_server(broker=redis_srv.url)
    return b.url, b.stats


def _asgi(redis_srv: RedisServer) -> Tuple[str, Any, Any]:
    pytest.importorskip("uvicorn", reason="the ASGI face runs under uvicorn")
    import contextlib

    from sente_lite import App
    from support import serving

    app = App(broker=redis_srv.url)
    stack = contextlib.ExitStack()
    base = stack.enter_context(serving(app))
    return base.replace("http://", "ws://", 1) + "/chsk", app.stats, stack.close


CHILD = textwrap.dedent("""
    import sys, time
    from sente_lite import Client, Server
    from sente_lite.brokers.redis.broker import RedisBroker
    srv = Server("127.0.0.1", 0, broker=RedisBroker(sys.argv[1], presence_ttl_s=float(sys.argv[2]))).start()
    while srv.channels.health()["broker-status"] != "up":
        time.sleep(0.01)
    c = Client(srv.url, client_id="gone")
    assert c.wait_connected(10)
    print("ready", flush=True)
    time.sleep(60)
""")


def test_a_sigkilled_servers_users_vanish_from_presence_within_the_ttl(
        redis_srv: RedisServer, make_server: Callable[..., Server],
        make_client: Callable[..., Client]) -> None:
    srv = make_server(broker=RedisBroker(redis_srv.url, presence_ttl_s=TTL_S))
    wait_until(lambda: srv.channels.healthy, what="the link up")
    make_client(srv.url, client_id="gone")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    child = subprocess.Popen([sys.executable, "-c", CHILD, redis_srv.url, str(TTL_S)], env=env,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        wait_until(lambda: srv.presence("gone") == 2, what="both servers' connections")
        fields = redis.Redis.from_url(redis_srv.url).hgetall(user_key("sente-lite", "gone"))
        assert len(fields) == 2  # one key per user: a field per server holding it
        child.send_signal(signal.SIGKILL)
        child.wait(WAIT_S)
        killed = time.monotonic()
        wait_until(lambda: srv.presence("gone") == 1, timeout=TTL_S + 2, what="the dead server's gone")
        assert time.monotonic() - killed <= TTL_S + 0.5
        time.sleep(TTL_S)  # longer than the ttl: the live server's field is rewritten, not expired
        assert srv.presence("gone") == 1
    finally:
        child.kill()
        child.wait(WAIT_S)
        if child.stdout is not None:
            child.stdout.close()


def test_pattern_subscription_keeps_the_one_user_channel(
        redis_srv: RedisServer, make_server: Callable[..., Server],
        make_client: Callable[..., Client]) -> None:
    a, b, c = _three(redis_srv, make_server, f"{redis_srv.url}?subscription=pattern")
    got = Recorder()
    ann = make_client(b.url, connect=False, client_id="ann")
    ann.on("app/hi", got)
    assert ann.wait_connected(WAIT_S)
    a.send_to_user("ann", "app/hi", 1)
    assert got.wait_count(1) == [1]
    wait_until(lambda: c.stats()["broker_user_heard"] == 1, what="every server reads it")
    assert c.stats()["broker_user_unserved"] == 1 and _subscribers(redis_srv, "ann") == 0


def test_an_upgrade_is_not_held_while_redis_is_down_and_its_user_is_routed_once_back(
        redis_srv: RedisServer, make_server: Callable[..., Server],
        make_client: Callable[..., Client]) -> None:
    a = make_server(broker=redis_srv.url)
    b = make_server(broker=redis_srv.url)
    wait_until(lambda: a.channels.healthy and b.channels.healthy, what="both links up")
    redis_srv.kill()
    wait_until(lambda: not a.channels.healthy and not b.channels.healthy, what="links down")
    got = Recorder()
    started = time.monotonic()
    cl = make_client(b.url, connect=False, client_id="early")
    cl.on("app/hi", got)
    assert cl.wait_connected(WAIT_S)
    assert time.monotonic() - started < 2.0  # answered at once, not after handshake_timeout
    redis_srv.start()
    wait_until(lambda: a.channels.healthy and b.channels.healthy, what="links back")
    wait_until(lambda: _subscribers(redis_srv, "early") == 1, what="its shard channel, once back")
    a.send_to_user("early", "app/hi", 1)
    assert got.wait_count(1) == [1]


class FakeLink:
    """What UserRoutes uses of a RedisLink: ops run at once, subscriptions confirmed at once."""

    def __init__(self) -> None:
        self.down = False
        self.listened: List[bytes] = []
        self.unlistened: List[bytes] = []

    def submit(self, op: Callable[[], None]) -> None:
        op()

    def listen_then(self, shard: bytes, confirmed: Callable[[], None]) -> None:
        self.listened.append(shard)
        confirmed()

    def unlisten(self, shard: bytes) -> None:
        self.unlistened.append(shard)


def test_a_routed_upgrade_that_never_opens_is_forgotten_after_the_hold(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from sente_lite.brokers.redis import users

    link = FakeLink()
    routes = users.UserRoutes("p", link)  # type: ignore[arg-type]
    answered: List[str] = []
    assert routes.route("ann", lambda: answered.append("ann")) is False  # answered once confirmed
    assert answered == ["ann"] and link.listened == [users.user_shard("p", "ann")]
    assert routes.route("ann", lambda: answered.append("again")) is True  # routed already
    routes.sync({})  # not connected yet, but held by its upgrade
    assert link.unlistened == [] and routes.listened() == 1
    now = time.monotonic()
    monkeypatch.setattr(users.time, "monotonic", lambda: now + users.ROUTE_HOLD_S + 1)
    routes.sync({})
    assert link.unlistened == [users.user_shard("p", "ann")] and routes.listened() == 0
    routes.sync({"bob": 1})  # a connection that was not routed (no upgrade) is listened to
    assert link.listened[-1] == users.user_shard("p", "bob") and routes.listened() == 1


class Recording:
    """A redis-py client and pipeline that record the commands they are given."""

    def __init__(self) -> None:
        self.calls: List[Tuple[str, str]] = []

    def pipeline(self, transaction: bool = True) -> "Recording":
        return self

    def hset(self, key: str, field: str, value: int) -> None:
        self.calls.append(("hset", key))

    def pexpire(self, key: str, ms: int) -> None:
        self.calls.append(("pexpire", key))

    def hdel(self, key: str, *fields: str) -> None:
        self.calls.append(("hdel", key))

    def execute(self) -> List[Any]:
        return []

    def take(self, command: str) -> List[str]:
        found = sorted(k for c, k in self.calls if c == command)
        self.calls = []
        return found


def test_a_change_rewrites_only_that_users_field_and_every_one_when_due() -> None:
    from sente_lite.brokers.redis.presence import RedisPresence

    link = FakeLink()
    link.redis = Recording()  # type: ignore[attr-defined]
    presence = RedisPresence("p", "s1", link, b"p:user", TTL_S)  # type: ignore[arg-type]
    key = lambda uid: user_key("p", uid)  # noqa: E731
    presence._write_users({"a": 1, "b": 1})
    assert link.redis.take("hset") == [key("a"), key("b")]  # type: ignore[attr-defined]
    presence._write_users({"a": 1, "b": 2, "c": 1})
    assert link.redis.take("hset") == [key("b"), key("c")]  # type: ignore[attr-defined]
    presence._write_users({"a": 1})
    assert link.redis.take("hdel") == [key("b"), key("c")]  # type: ignore[attr-defined]
    presence._rewrite_all = True  # what expiry_due sets, every third of presence_ttl_s
    presence._write_users({"a": 1})
    assert link.redis.take("pexpire") == [key("a")]  # type: ignore[attr-defined]

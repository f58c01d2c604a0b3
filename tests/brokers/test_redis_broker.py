"""The Redis broker against a real redis-server: channels across servers in one offset
order, history recovery on another server, publish ids, users and presence, and
the link's failure and recovery."""

from __future__ import annotations

import json
import sys
import threading
import urllib.error
import urllib.request
from typing import Any, Callable, Dict, List, Tuple

import pytest

from sente_lite import BrokerUnavailable, Client, RemoteError, Server
from sente_lite.wire import protocol as p
from sente_lite.session import ClientSession, Subscribed
from sente_lite.testing.redis_server import RedisServer
from support import WAIT_S, wait_until
from support import REPO

redis = pytest.importorskip("redis", reason="redis-py is not installed (pip install 'sente-lite[redis]')")




@pytest.fixture
def cluster(redis_srv: RedisServer, make_server: Callable[..., Server]) -> Tuple[Server, Server]:
    """Two servers on one Redis, both linked."""
    a = make_server(broker=redis_srv.url)
    b = make_server(broker=redis_srv.url)
    wait_until(lambda: a.channels.healthy and b.channels.healthy, what="both links up")
    return a, b


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.msgs: List[Tuple[int, str, Any]] = []

    def __call__(self, msg: Any) -> None:
        with self.lock:
            self.msgs.append((msg.offset, msg.epoch, msg.data))

    def offsets(self) -> List[int]:
        with self.lock:
            return [m[0] for m in self.msgs]


def health(srv: Server) -> Tuple[int, Dict[str, Any]]:
    return _get_health(f"http://127.0.0.1:{srv.port}")


def _get_health(base: str) -> Tuple[int, Dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=WAIT_S) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_publishes_on_both_servers_reach_every_subscriber_once_in_one_order(
        cluster: Tuple[Server, Server], make_client: Callable[..., Client]) -> None:
    a, b = cluster
    recs = [Recorder() for _ in range(4)]
    clients = [make_client(srv.url) for srv in (a, b, a, b)]
    for c, rec in zip(clients, recs):
        c.subscribe("news", rec)
    n = 50
    threads = [threading.Thread(target=lambda c=c: [c.publish("news", {"i": i}) for i in range(n)])
               for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_until(lambda: all(len(r.offsets()) == 4 * n for r in recs), what="every message everywhere")
    first = recs[0].msgs
    for rec in recs:
        assert rec.offsets() == list(range(1, 4 * n + 1))
        assert rec.msgs == first  # the same messages, in the same order, in one epoch
    # counted when acknowledged, which on a cluster may come after the delivery
    wait_until(lambda: a.stats()["publishes"] + b.stats()["publishes"] >= 4 * n,
               what="every publish acknowledged")
    assert a.stats()["publishes"] + b.stats()["publishes"] == 4 * n


def test_delivered_counts_the_publishing_servers_own_subscribers(
        cluster: Tuple[Server, Server], make_client: Callable[..., Client]) -> None:
    a, b = cluster
    rec = Recorder()
    make_client(b.url).subscribe("s", rec)
    result = a.publish("s", {"x": 1})  # the subscriber is on b: none of a's
    assert (result.offset, result.delivered, result.duplicate) == (1, 0, False)
    wait_until(lambda: rec.offsets() == [1])
    assert rec.msgs[0][1] == result.epoch
    assert b.publish("s", {"x": 2}).delivered == 1  # as on every broker


def test_since_recovers_on_the_other_server(cluster: Tuple[Server, Server],
                                            make_client: Callable[..., Client]) -> None:
    a, b = cluster
    first = make_client(a.url)
    rec = Recorder()
    first.subscribe("ch", rec)
    for i in range(5):
        a.publish("ch", i)
    wait_until(lambda: len(rec.offsets()) == 5)
    pos = first.position("ch")
    assert pos is not None
    for i in range(5, 8):
        b.publish("ch", i)
    moved = make_client(b.url)
    rec2 = Recorder()
    reply = moved.subscribe("ch", rec2, since={"offset": 2, "epoch": pos["epoch"]})
    assert reply is not None and reply["recovered"] is True and reply["offset"] == 8
    wait_until(lambda: rec2.offsets() == [3, 4, 5, 6, 7, 8], what="replay of 3..8")
    gone = make_client(b.url)
    reply = gone.subscribe("ch", Recorder(), since={"offset": 2, "epoch": "not-this-one"})
    assert reply is not None and reply["recovered"] is False and reply["reason"] == "epoch-changed"


def test_history_bounds_apply(redis_srv: RedisServer, make_server: Callable[..., Server],
                              make_client: Callable[..., Client]) -> None:
    srv = make_server(broker=redis_srv.url, history_size=3)
    wait_until(lambda: srv.channels.healthy)
    c = make_client(srv.url)
    c.subscribe("h", Recorder())
    epoch = srv.publish("h", 0).epoch
    for i in range(1, 6):
        srv.publish("h", i)
    assert [o for o, _ in srv.channels.history_of("h")] == [4, 5, 6]
    late = make_client(srv.url)
    reply = late.subscribe("h", Recorder(), since={"offset": 1, "epoch": epoch})
    assert reply is not None and reply["reason"] == "history-expired"
    rec = Recorder()
    reply = make_client(srv.url).subscribe("h", rec, since={"offset": 3, "epoch": epoch})
    assert reply is not None and reply["recovered"] is True
    wait_until(lambda: rec.offsets() == [4, 5, 6])


def test_publish_id_is_deduplicated_across_servers(cluster: Tuple[Server, Server],
                                                   make_client: Callable[..., Client]) -> None:
    a, b = cluster
    rec = Recorder()
    make_client(a.url).subscribe("d", rec)
    answers = []
    for srv in (a, b, a):  # one publisher (client-id) retrying on either server
        raw = Client(srv.url, client_id="retrier")
        try:
            assert raw.wait_connected(WAIT_S)
            answers.append(raw.request(p.EV_PUBLISH, {p.K_CHANNEL: "d", p.K_DATA: "once",
                                                      p.K_ID: "pub-1"}))
        finally:
            raw.close()
    assert [x["offset"] for x in answers] == [1, 1, 1]
    assert [x.get("duplicate", False) for x in answers] == [False, True, True]
    wait_until(lambda: rec.offsets() == [1])
    assert a.stats()["duplicate_publishes"] + b.stats()["duplicate_publishes"] == 2


def test_exclude_sender_holds_across_servers(cluster: Tuple[Server, Server],
                                             make_client: Callable[..., Client]) -> None:
    a, b = cluster
    me, other = Recorder(), Recorder()
    pub = make_client(a.url)
    pub.subscribe("x", me)
    make_client(b.url).subscribe("x", other)
    pub.publish("x", 1, exclude_sender=True, ack=True)
    pub.publish("x", 2, ack=True)
    wait_until(lambda: other.offsets() == [1, 2] and me.offsets() == [2])


def test_users_and_presence_span_servers(cluster: Tuple[Server, Server],
                                         make_client: Callable[..., Client]) -> None:
    a, b = cluster
    got: List[Tuple[str, Any]] = []
    lock = threading.Lock()
    on_a = make_client(a.url, client_id="alice")
    on_b = make_client(b.url, client_id="alice")
    make_client(b.url, client_id="bob")
    for name, c in (("a", on_a), ("b", on_b)):
        c.on("app/hello", lambda data, name=name: (lock.acquire(), got.append((name, data)),
                                                   lock.release()))
    wait_until(lambda: a.presence("alice") == 2 and b.presence("alice") == 2, what="presence 2")
    assert a.user_count() == 2 and b.presence("bob") == 1 and a.presence("nobody") == 0
    assert len(a.connections()) == 1  # connections() stays local
    assert a.send_to_user("alice", "app/hello", {"n": 1}) == 1  # one here, one through Redis
    wait_until(lambda: sorted(n for n, _ in got) == ["a", "b"], what="both of alice's connections")
    closed: List[int] = []
    b.on_disconnect(lambda conn, code, reason: closed.append(code))
    assert a.disconnect_user("alice", 1008, "banned") == 1
    wait_until(lambda: closed == [1008], what="alice closed on the other server too")
    wait_until(lambda: a.presence("alice") == 0, what="presence 0")


def test_redis_down_is_loud_and_recovers(redis_srv: RedisServer, make_server: Callable[..., Server],
                                         make_client: Callable[..., Client]) -> None:
    srv = make_server(broker=redis_srv.url)
    other = make_server(broker=redis_srv.url)
    wait_until(lambda: srv.channels.healthy and other.channels.healthy)
    status, body = health(srv)
    assert status == 200 and body["status"] == "ok" and body["broker-status"] == "up"
    sub = make_client(other.url)
    rec = Recorder()
    recoveries: List[Any] = []
    sub.on_recovery(recoveries.append)
    sub.subscribe("r", rec)
    pub = make_client(srv.url)
    pub.publish("r", "before", ack=True)
    wait_until(lambda: rec.offsets() == [1])
    old_epoch = rec.msgs[0][1]

    redis_srv.kill()
    wait_until(lambda: not srv.channels.healthy and not other.channels.healthy, what="link down")
    status, body = health(srv)
    assert status == 503 and body["status"] == "degraded" and body["broker-status"] == "down"
    with pytest.raises(RemoteError) as err:
        pub.publish("r", "lost?", ack=True)
    assert err.value.code == p.ERR_UNAVAILABLE
    with pytest.raises(BrokerUnavailable):
        srv.publish("r", "server side")
    assert pub.stats()["publish_errors"] == 1

    redis_srv.start()  # empty: Redis lost every channel
    wait_until(lambda: srv.channels.healthy and other.channels.healthy, what="link back")
    assert health(srv)[0] == 200
    wait_until(lambda: len(recoveries) == 1, what="the subscriber is told")
    told = recoveries[0]
    assert (told.channel_id, told.recovered, told.reason) == ("r", False, "epoch-changed")
    assert told.since == {"offset": 1, "epoch": old_epoch} and told.epoch != old_epoch
    pub.publish("r", "after", ack=True)
    wait_until(lambda: [m[2] for m in rec.msgs] == ["before", "after"])
    assert rec.msgs[1][1] == told.epoch
    assert srv.stats()["broker_outages"] >= 1


def test_a_broken_link_catches_up_from_the_stream(cluster: Tuple[Server, Server],
                                                  make_client: Callable[..., Client]) -> None:
    a, b = cluster
    rec = Recorder()
    recoveries: List[Any] = []
    sub = make_client(b.url)
    sub.on_recovery(recoveries.append)
    sub.subscribe("k", rec)
    a.publish("k", 1)
    wait_until(lambda: rec.offsets() == [1])
    admin = redis.Redis.from_url(a.channels.url)  # type: ignore[attr-defined]
    try:
        admin.client_kill_filter(_type="pubsub")  # both servers' subscriptions drop; Redis keeps data
    finally:
        admin.close()
    for i in range(2, 6):  # may land while the links are down: then from the stream
        try:
            a.publish("k", i)
        except BrokerUnavailable:
            wait_until(lambda: a.channels.healthy, what="a's link back")
            a.publish("k", i)
    wait_until(lambda: rec.offsets()[-1:] == [len(rec.offsets())] and len(rec.offsets()) >= 5,
               what="every message")
    assert rec.offsets() == list(range(1, len(rec.offsets()) + 1))
    assert recoveries == []  # nothing was lost, nothing to tell


def test_subscribe_while_down_is_answered_when_the_link_is_back(
        redis_srv: RedisServer, make_server: Callable[..., Server],
        make_client: Callable[..., Client]) -> None:
    srv = make_server(broker=redis_srv.url)
    wait_until(lambda: srv.channels.healthy)
    c = make_client(srv.url)
    redis_srv.kill()
    wait_until(lambda: not srv.channels.healthy)
    rec = Recorder()
    c.subscribe("w", rec, timeout=None)
    redis_srv.start()
    wait_until(lambda: srv.channels.subscriber_count("w") == 1, what="the deferred subscribe")
    srv.publish("w", "hi")
    wait_until(lambda: rec.offsets() == [1])


def test_client_fails_over_to_the_next_url(cluster: Tuple[Server, Server],
                                           make_client: Callable[..., Client]) -> None:
    a, b = cluster
    rec = Recorder()
    c = make_client([a.url, b.url], backoff_max=0.5)
    assert c.url == a.url
    c.subscribe("f", rec)
    b.publish("f", 1)
    wait_until(lambda: rec.offsets() == [1])
    a.stop()
    wait_until(lambda: c.connected and c.server_id == b.server_id, what="reconnected to b")
    b.publish("f", 2)
    wait_until(lambda: rec.offsets() == [1, 2])
    assert c.url == b.url


def test_client_with_one_dead_url_first_connects_to_the_live_one(
        cluster: Tuple[Server, Server], make_client: Callable[..., Client]) -> None:
    a, _ = cluster
    from sente_lite.testing.redis_server import free_port

    dead = f"ws://127.0.0.1:{free_port()}/chsk"
    c = make_client([dead, a.url], backoff_max=0.2)
    assert c.server_id == a.server_id


def test_server_sent_subscribed_notice_updates_the_client_session() -> None:
    session = ClientSession("c1")
    session.add_subscription("n")
    session.receive(p.encode(p.EV_CHANNEL_MSG, {p.K_CHANNEL: "n", p.K_DATA: 1, p.K_FROM: None,
                                                p.K_OFFSET: 7, p.K_EPOCH: "e1"}), 0.0)
    got = session.receive(p.encode(p.EV_SUBSCRIBED, {
        p.K_CHANNEL: "n", p.K_OFFSET: 0, p.K_EPOCH: "e2", p.K_RECOVERED: False,
        p.K_REASON: "epoch-changed"}), 0.0)
    (ev,) = got.events
    assert isinstance(ev, Subscribed) and ev.recovery is not None
    assert ev.recovery.since == {"offset": 7, "epoch": "e1"} and ev.recovery.epoch == "e2"
    assert session.position("n") == (0, "e2")
    assert session.counts["recovery_failures"] == 1
    assert not session.receive(p.encode(p.EV_SUBSCRIBED, {p.K_CHANNEL: "n"}), 0.0).events


def test_missing_redis_py_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ImportError, match=r"pip install 'sente-lite\[redis\]'"):
        Server(broker="redis://127.0.0.1:1/0")


def test_cli_serve_with_broker(redis_srv: RedisServer, tmp_path: Any) -> None:
    import os
    import signal
    import subprocess
    from pathlib import Path

    root = REPO
    env = dict(os.environ, PYTHONPATH=str(root), SENTE_LITE_BROKER=redis_srv.url)
    procs = [subprocess.Popen([sys.executable, "-m", "sente_lite", "serve", "--port", "0"] + extra,
                              env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for extra in ([], ["--broker", redis_srv.url])]
    clients: List[Client] = []
    try:
        urls = [proc.stdout.readline().strip() for proc in procs]  # type: ignore[union-attr]
        for url in urls:  # 503 "degraded" until linked
            base = url.replace("ws://", "http://").removesuffix("/chsk")
            wait_until(lambda: _get_health(base)[0] == 200, what="linked")
        clients = [Client(u) for u in urls]
        rec = Recorder()
        assert clients[1].wait_connected(WAIT_S) and clients[0].wait_connected(WAIT_S)
        clients[1].subscribe("cli", rec)
        assert clients[0].publish("cli", "through redis", ack=True)["offset"] == 1
        wait_until(lambda: rec.offsets() == [1])
    finally:
        for c in clients:
            c.close()
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=20)
    assert [proc.returncode for proc in procs] == [0, 0]

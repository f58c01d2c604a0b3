"""A Redis Cluster master that fails while clients publish (its own local cluster: these
tests change it): a publish is acknowledged only once a replica holds it (``WAIT``), a
master SIGKILLed mid-run loses no acknowledged publish, publishes meanwhile are refused,
``/health`` names the unreachable master, and delivery resumes on its promoted replica."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest

from sente_lite import Client, RemoteError, Server
from sente_lite.errors import PublishOutcomeUnknown, RequestTimeout
from sente_lite.testing.redis_cluster import LocalCluster, require_redis_cluster
from support import WAIT_S, wait_until
from test_redis_broker import Recorder, health

redis = pytest.importorskip("redis", reason="redis-py is not installed (pip install 'sente-lite[redis]')")

CHANNELS = [f"f{i}" for i in range(6)]
#: acks wanted before the kill, and on the killed master's channel after it
ACKS_BEFORE, ACKS_AFTER = 30, 20


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[LocalCluster]:
    require_redis_cluster()
    with LocalCluster() as local:
        yield local


def test_replica_ack_timeout_ms_is_checked() -> None:
    from sente_lite.brokers.redis.broker import RedisBroker
    for bad in (-1, 1.5, "100", True):
        with pytest.raises(ValueError, match="replica_ack_timeout_ms must be an int >= 0"):
            RedisBroker("redis+cluster://127.0.0.1:7000", replica_ack_timeout_ms=bad)


def test_a_publish_no_replica_acknowledged_is_answered_outcome_unknown(
        redis_cluster: LocalCluster, make_server: Callable[..., Server]) -> None:
    from sente_lite.brokers.redis.broker import RedisBroker
    srv = make_server(broker=RedisBroker(redis_cluster.url, replica_ack_timeout_ms=100))
    wait_until(lambda: srv.channels.healthy, what="link up")
    assert srv.publish("w", {"i": 1}).offset == 1  # a replica holds it: acknowledged
    master = redis_cluster.master_of(srv.channels._space.meta_key("w").encode())
    replica = redis_cluster.node(redis_cluster.replica_of(master))
    replica.pause()  # SIGSTOP: it receives the write but acknowledges nothing
    try:
        with pytest.raises(PublishOutcomeUnknown, match="no replica acknowledged it in 100 ms"):
            srv.publish("w", {"i": 2})
    finally:
        replica.resume()
    stats = srv.stats()
    assert stats["broker_unreplicated_publishes"] == 1
    assert stats["broker_up"]  # a slow replica is no lost link
    wait_until(lambda: _publishes(srv, "w"), what="a replica acknowledges again")


def test_a_slow_replica_delays_acknowledgements_never_later_deliveries(
        redis_cluster: LocalCluster, make_server: Callable[..., Server],
        make_client: Callable[..., Client]) -> None:
    """The replica of a channel's master stopped (SIGSTOP): each publish still reaches the
    subscriber on the other server at once, one after the other, while every publisher's
    acknowledgement waits for a replica and is then answered outcome-unknown. (A WAIT
    sent behind the scripts on the publishing thread held every later publish back.)"""
    from sente_lite.brokers.redis.broker import RedisBroker
    timeout_ms = 1500
    a = make_server(broker=RedisBroker(redis_cluster.url, replica_ack_timeout_ms=timeout_ms))
    b = make_server(broker=redis_cluster.url)
    wait_until(lambda: a.channels.healthy and b.channels.healthy, what="both links up")
    rec = Recorder()
    make_client(b.url).subscribe("slow", rec)
    assert a.publish("slow", 0).offset == 1  # a replica holds it: acknowledged
    wait_until(lambda: rec.offsets() == [1], what="the first publish delivered on b")
    master = redis_cluster.master_of(a.channels._space.meta_key("slow").encode())
    replica = redis_cluster.node(redis_cluster.replica_of(master))
    answers: Dict[int, Any] = {}
    threads = [threading.Thread(target=_answer_to, args=(answers, a, "slow", n))
               for n in (1, 2, 3)]
    replica.pause()  # it receives the writes but acknowledges none
    try:
        started = time.monotonic()
        for n, thread in enumerate(threads, start=2):
            thread.start()  # each publish only once the one before was delivered
            wait_until(lambda n=n: rec.offsets()[-1:] == [n], timeout=timeout_ms / 1000,
                       what=f"publish {n} delivered on b")
        delivered_s = time.monotonic() - started
        assert not answers, "a publish was acknowledged before a replica held it"
        for thread in threads:
            thread.join(WAIT_S)
    finally:
        replica.resume()
    assert delivered_s < timeout_ms / 1000 / 3, f"deliveries waited for the replica ({delivered_s:.3f} s)"
    assert all(isinstance(answers[n], PublishOutcomeUnknown) for n in (1, 2, 3)), answers
    assert a.stats()["broker_unreplicated_publishes"] == 3
    assert rec.offsets() == [1, 2, 3, 4]
    wait_until(lambda: _publishes(a, "slow"), what="a replica acknowledges again")


def _answer_to(answers: Dict[int, Any], srv: Server, channel: str, n: int) -> None:
    try:
        answers[n] = srv.publish(channel, {"n": n})
    except Exception as exc:  # the answer under test
        answers[n] = exc


def _publishes(srv: Server, channel: str) -> bool:
    try:
        srv.publish(channel, {"again": True})
        return True
    except PublishOutcomeUnknown:
        return False


class _Publishing:
    """One client publishing on every channel in turn, with acks, until stopped; and
    ``/health`` of its server sampled meanwhile."""

    def __init__(self, client: Client, srv: Server) -> None:
        self.client, self.srv = client, srv
        self.acked: Dict[Tuple[str, int], int] = {}  # (channel, n) -> offset
        self.refused: List[str] = []  # codes of publishes not acknowledged
        self.healths: List[Tuple[int, Dict[str, Any]]] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._publish), threading.Thread(target=self._watch)]

    def _publish(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            channel = CHANNELS[n % len(CHANNELS)]
            try:
                answer = self.client.publish(channel, {"n": n}, ack=True, timeout=2.0)
            except (RemoteError, RequestTimeout) as exc:
                with self.lock:
                    self.refused.append(getattr(exc, "code", "timeout"))
                continue
            with self.lock:
                self.acked[(channel, n)] = answer["offset"]

    def _watch(self) -> None:
        while not self.stop.wait(0.05):  # sampling a state, not synchronizing on it
            self.healths.append(health(self.srv))

    def count(self, channel: str) -> int:
        with self.lock:
            return sum(1 for ch, _ in self.acked if ch == channel)

    def __enter__(self) -> "_Publishing":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(WAIT_S)


def test_a_master_sigkilled_during_publishes_loses_no_acknowledged_publish(
        redis_cluster: LocalCluster, make_server: Callable[..., Server],
        make_client: Callable[..., Client]) -> None:
    a = make_server(broker=redis_cluster.url)
    b = make_server(broker=redis_cluster.url)
    wait_until(lambda: a.channels.healthy and b.channels.healthy, what="both links up")
    recs = {name: Recorder() for name in CHANNELS}
    subscriber = make_client(b.url)
    for name in CHANNELS:
        subscriber.subscribe(name, recs[name])
    wait_until(lambda: b.stats()["broker_listening"] == len(CHANNELS), what="b listens")
    victim_channel = CHANNELS[0]
    victim = redis_cluster.master_of(a.channels._space.meta_key(victim_channel).encode())
    with _Publishing(make_client(a.url, client_id="pub"), a) as run:
        wait_until(lambda: len(run.acked) >= ACKS_BEFORE, what="publishes acknowledged")
        before = run.count(victim_channel)
        redis_cluster.kill(victim)  # SIGKILL: its replica is promoted after the node timeout
        wait_until(lambda: run.count(victim_channel) >= before + ACKS_AFTER, timeout=WAIT_S,
                   what="publishes on the killed master's slots acknowledged again")
    assert run.refused, "no publish was refused during the failover"
    down = [h for status, h in run.healths if status == 503]
    assert down and all(h["broker-status"] == "down" for h in down)
    assert any(f"127.0.0.1:{victim}" in h.get("broker-unreachable-masters", ()) for h in down)
    assert health(a)[0] == 200 and a.stats()["broker_outages"] >= 1
    # 0 acknowledged-then-lost: every acknowledged publish is in the history, at its
    # offset, and was delivered to the subscriber on the other server
    for name in CHANNELS:
        kept = {m["offset"]: m["data"] for m in a.history(name)["publications"]}
        mine = {n: offset for (ch, n), offset in run.acked.items() if ch == name}
        assert {n: kept.get(offset) for n, offset in mine.items()} == {
            n: {"n": n} for n in mine}, f"acknowledged publishes of {name} lost"
        wait_until(lambda r=recs[name], mine=mine: {d["n"] for _, _, d in r.msgs} >= set(mine),
                   what=f"every acknowledged publish of {name} delivered on b")


def test_messages_a_failover_lost_after_they_were_handed_out_are_told(
        redis_srv: Any, make_server: Callable[..., Server],
        make_client: Callable[..., Client]) -> None:
    """A promoted replica that lacks the newest messages (handed out, never replicated):
    its stream ends below what subscribers got, in the same epoch. After the link is back
    they are told ``recovered: false`` from its top, and the next publish (the same offset
    again) reaches them rather than passing for a duplicate."""
    srv = make_server(broker=redis_srv.url)
    wait_until(lambda: srv.channels.healthy, what="link up")
    sub = make_client(srv.url)
    rec = Recorder()
    recoveries: List[Any] = []
    sub.on_recovery(recoveries.append)
    sub.subscribe("rb", rec)
    for i in range(1, 6):
        srv.publish("rb", i)
    wait_until(lambda: rec.offsets() == [1, 2, 3, 4, 5], what="five messages")
    space = srv.channels._space
    admin = redis.Redis.from_url(redis_srv.url)
    try:  # what a replica that had only the first three would hold once promoted
        kept = admin.xrange(space.log_key("rb"), "1-0", "3-0")
        admin.delete(space.log_key("rb"))  # a stream's last id stays past XDEL: rebuild it
        for entry_id, fields in kept:
            admin.xadd(space.log_key("rb"), fields, id=entry_id)
        admin.hset(space.meta_key("rb"), "offset", 3)
        admin.client_kill_filter(_type="pubsub")  # the link drops and catches up
    finally:
        admin.close()
    wait_until(lambda: len(recoveries) == 1, what="the subscriber is told")
    told = recoveries[0]
    assert (told.recovered, told.reason, told.offset) == (False, "history-expired", 3)
    assert told.since["offset"] == 5
    wait_until(lambda: _published(srv, "rb", "after") == 4, what="a publish after the link is back")
    wait_until(lambda: rec.msgs[-1][2] == "after", what="the new offset 4 delivered")
    assert rec.offsets() == [1, 2, 3, 4, 5, 4]


def _published(srv: Server, channel: str, data: Any) -> int:
    try:
        return srv.publish(channel, data).offset
    except Exception:  # the link may still be down: refused, try again
        return 0


def test_a_cluster_subscription_waits_on_every_node_at_once() -> None:
    """redis-py polls a cluster's nodes in turn, each for a share of the timeout; the link
    waits on every node's socket at once, so a message on any node ends the wait."""
    import socket
    import time
    from types import SimpleNamespace

    from sente_lite.brokers.redis.shards import wait_readable
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        pubsub = SimpleNamespace(node_pubsub_mapping={
            f"n{i}": SimpleNamespace(connection=SimpleNamespace(_sock=a))
            for i, (a, _) in enumerate(pairs)})
        pairs[2][1].send(b"x")  # the last node has a message
        started = time.monotonic()
        assert wait_readable(pubsub, 5.0) is True
        assert time.monotonic() - started < 1.0
        pubsub.node_pubsub_mapping["n3"] = SimpleNamespace(connection=None)
        assert wait_readable(pubsub, 5.0) is False  # not connected yet: redis-py's own wait
    finally:
        for a, b in pairs:
            a.close()
            b.close()

"""The Redis broker on a Redis Cluster (3 masters + 3 replicas, started for this module):
the cross-server tests of test_redis_broker run again with both servers on the cluster
(one offset order per channel, recovery on the other server, publish ids, exclusion,
users and presence), plus what is the cluster's own: every key and the shard channel of
a channel in one slot, channels spread over every master."""

from __future__ import annotations

from typing import Callable, Iterator, List, Tuple

import pytest

from sente_lite import Client, Server
from sente_lite.testing.redis_cluster import LocalCluster, require_redis_cluster
from support import WAIT_S, wait_until
from test_redis_broker import (Recorder,  # noqa: F401 (collected here, on the cluster)
                               test_delivered_counts_the_publishing_servers_own_subscribers,
                               test_exclude_sender_holds_across_servers,
                               test_publish_id_is_deduplicated_across_servers,
                               test_publishes_on_both_servers_reach_every_subscriber_once_in_one_order,
                               test_since_recovers_on_the_other_server,
                               test_users_and_presence_span_servers)

redis = pytest.importorskip("redis", reason="redis-py is not installed (pip install 'sente-lite[redis]')")


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[LocalCluster]:
    require_redis_cluster()
    with LocalCluster() as local:
        yield local


@pytest.fixture
def cluster(redis_cluster: LocalCluster,
            make_server: Callable[..., Server]) -> Tuple[Server, Server]:
    """Two servers on the Redis Cluster (emptied first), both linked."""
    for port in set(redis_cluster.masters().values()):
        client = redis.Redis(port=port)
        client.flushall()
        client.close()
    a = make_server(broker=redis_cluster.url)
    b = make_server(broker=redis_cluster.url)
    wait_until(lambda: a.channels.healthy and b.channels.healthy, what="both links up")
    return a, b


def test_channels_spread_over_every_master_and_keep_one_slot(
        cluster: Tuple[Server, Server], redis_cluster: LocalCluster,
        make_client: Callable[..., Client]) -> None:
    a, b = cluster
    names = [f"c{i}" for i in range(40)]
    recs = {name: Recorder() for name in names}
    client = make_client(b.url)
    for name in names:
        client.subscribe(name, recs[name])
    publisher = make_client(a.url, client_id="pub")
    for name in names:
        publisher.publish(name, {"n": name}, ack=True)  # with a publish id
    wait_until(lambda: all(r.offsets() == [1] for r in recs.values()), what="every channel")
    space = a.channels._space
    masters = {redis_cluster.master_of(space.meta_key(n).encode()) for n in names}
    assert masters == set(redis_cluster.masters().values())  # every master serves some
    for name in names:
        port = redis_cluster.master_of(space.meta_key(name).encode())
        node = redis.Redis(port=port)
        try:
            keys = node.keys(space.key_root(name) + "*")
            assert len(keys) == 5  # meta, log, the id and both id lists: on that node
            assert {redis_cluster.master_of(k) for k in keys} == {port}
        finally:
            node.close()
    assert b.stats()["broker_listening"] == len(names)
    assert a.history("c0")["publications"][0]["data"] == {"n": "c0"}


def test_an_old_redis_py_is_refused_for_a_cluster_naming_the_version(monkeypatch) -> None:
    """redis-py below MIN_CLUSTER_REDIS_PY fails on a cluster's sharded pub/sub: the URL is
    refused at once, naming the version to install, rather than a link that never confirms."""
    from sente_lite.brokers.redis.broker import RedisBroker
    from sente_lite.brokers.redis.url import MIN_CLUSTER_REDIS_PY, parse_broker_url
    monkeypatch.setattr(redis, "__version__", "5.0.0")
    with pytest.raises(RuntimeError, match=r"redis-py >= %d\.%d \(found 5\.0\.0\)" % MIN_CLUSTER_REDIS_PY):
        RedisBroker("redis+cluster://127.0.0.1:7000,127.0.0.1:7001")
    assert parse_broker_url("redis+cluster://a:1,b:2").nodes == [("a", 1), ("b", 2)]  # parsing is unaffected


def test_a_users_messages_reach_only_its_server_right_after_the_handshake(
        cluster: Tuple[Server, Server], make_client: Callable[..., Client]) -> None:
    """A user's shard channel lives on its slot's master: the server holding the user
    listens to it before the upgrade is answered; the other hears nothing of it."""
    a, b = cluster
    for i in range(10):
        got: List[int] = []
        c = make_client(b.url, connect=False, client_id=f"u{i}")
        c.on("app/now", got.append)
        assert c.wait_connected(WAIT_S)
        a.send_to_user(f"u{i}", "app/now", i)
        wait_until(lambda: got == [i], what=f"u{i} got its message")
    closed: List[int] = []
    b.on_disconnect(lambda conn, code, reason: closed.append(code))
    a.disconnect_user("u0", 4001, "bye")
    wait_until(lambda: closed == [4001], what="u0 closed on b")
    assert b.stats()["broker_user_heard"] == 11
    assert a.stats()["broker_user_heard"] == 0 and a.stats()["broker_users_listening"] == 0

"""Redis keys cannot be forged from client strings, and a key Redis refuses (wrong type)
fails that one channel, never the broker: the link stays up, /health stays 200, every
other channel keeps working. A channel's history expires with history_ttl_s."""

from __future__ import annotations

import itertools
import json
import urllib.error
import urllib.request
from typing import Any, Callable, Dict, Iterator, Tuple

import pytest

from sente_lite import BrokerCommandError, Client, RemoteError, Server
from sente_lite.wire import protocol as p
from sente_lite.brokers.redis.channels import ChannelSpace
from sente_lite.testing.redis_server import RedisServer
from support import WAIT_S, Recorder, wait_until

redis = pytest.importorskip("redis", reason="redis-py is not installed")

ADVERSARIAL = ["a", "a:id:x", "x:meta", "a:id", "id:x:meta", "a:ch:b", "{a}", "a}", "{", "}",
               "*", "a*", "é", "é:ü", "\u2028", "x" * 300, "a:log", "a:meta", "", ":", "::"]




@pytest.fixture
def direct(redis_srv: RedisServer) -> Iterator[Any]:
    """A plain connection to the test's redis-server (to look at, or spoil, keys)."""
    r = redis.Redis.from_url(redis_srv.url)
    yield r
    r.close()


def health(srv: Server) -> Tuple[int, Dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/health", timeout=WAIT_S) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def space() -> ChannelSpace:
    return ChannelSpace("sente-lite", "s", 10, 60.0, 60.0, 600.0)


def test_no_two_channels_or_publish_ids_share_a_key() -> None:
    sp = space()
    owner: Dict[str, Tuple[Any, ...]] = {}
    for name in ADVERSARIAL:
        for kind, key in (("meta", sp.meta_key(name)), ("log", sp.log_key(name))):
            assert owner.setdefault(key, (kind, name)) == (kind, name)
    for name, publisher, pid in itertools.product(ADVERSARIAL, [None, "", "u", "u:1", "s"],
                                                  ADVERSARIAL[:12]):
        if not pid:
            continue
        key = sp.id_key(name, pid, publisher)
        assert owner.setdefault(key, ("id", name, publisher, pid)) == ("id", name, publisher, pid)
    for publisher in [None, "", "u", "s", "u:1", "*", "{x}"]:
        key = sp.publisher_ids_key(publisher)
        assert owner.setdefault(key, ("ids", publisher)) == ("ids", publisher)
    assert sp.all_ids_key() not in owner
    for key in owner:  # a fixed shape: no client string inside, one hash tag per channel
        assert key.isascii() and len(key) < 140 and key.count("{") <= 1 and "*" not in key


def test_keys_of_one_channel_share_one_cluster_slot() -> None:
    sp = space()
    for name in ADVERSARIAL:
        tags = {key[key.index("{"):key.index("}") + 1]
                for key in (sp.meta_key(name), sp.log_key(name), sp.id_key(name, "1", "u"))}
        assert len(tags) == 1


@pytest.mark.parametrize("victim,pid,attacker", [
    ("a:id:x", "x:meta", "a"),      # the old id key of "a" was the meta key of "a:id:x"
    ("a:id:x", "x:log", "a"),       # ... and its stream
    ("a:id:id", "id:meta", "a"),
    ("{t}:id:x", "x:meta", "{t}"),
])
def test_publish_ids_cannot_overwrite_another_channels_keys(
        redis_srv: RedisServer, make_server: Callable[..., Server],
        make_client: Callable[..., Client], victim: str, pid: str, attacker: str) -> None:
    srv = make_server(broker=redis_srv.url)
    wait_until(lambda: srv.channels.healthy, what="link up")
    rec = Recorder()
    sub = make_client(srv.url)
    sub.subscribe(victim, rec)
    c = make_client(srv.url)
    for order in range(2):  # publish-id key written before, then after, the victim's keys exist
        c.request(p.EV_PUBLISH, {p.K_CHANNEL: attacker, p.K_DATA: order, p.K_ID: f"{pid}{order}"})
        c.request(p.EV_PUBLISH, {p.K_CHANNEL: attacker, p.K_DATA: order, p.K_ID: pid})
        srv.publish(victim, order)
        rec.wait_count(order + 1)
    later = Recorder()
    make_client(srv.url).subscribe(victim, later)
    srv.publish(victim, "more")
    later.wait_count(1)
    assert [m.data for m in rec.wait_count(3)] == [0, 1, "more"]
    assert srv.stats()["broker_outages"] == 0 and srv.stats()["broker_command_errors"] == 0


def test_adversarial_channels_and_ids_each_keep_their_own_offsets(
        redis_srv: RedisServer, direct: Any, make_server: Callable[..., Server],
        make_client: Callable[..., Client]) -> None:
    srv = make_server(broker=redis_srv.url)
    wait_until(lambda: srv.channels.healthy, what="link up")
    names = [n for n in ADVERSARIAL if not p.channel_id_problem(n)] + ["y" * 256]
    recs = {name: Recorder() for name in names}
    sub = make_client(srv.url)
    for name in names:
        sub.subscribe(name, recs[name])
    pub = make_client(srv.url)
    for round_ in range(2):
        for name in names:  # every channel gets every other channel's name as a publish id
            for pid in names[:8]:
                reply = pub.request(p.EV_PUBLISH, {p.K_CHANNEL: name, p.K_DATA: [name, pid],
                                                   p.K_ID: pid[:128]})
                assert reply.get("duplicate", False) is bool(round_), (name, pid, reply)
    for name in names:
        msgs = recs[name].wait_count(8)
        assert [m.offset for m in msgs] == list(range(1, 9))
        assert all(m.data[0] == name for m in msgs)
    assert srv.stats()["broker_command_errors"] == 0 and srv.stats()["broker_outages"] == 0
    for key in direct.scan_iter(count=1000):  # no key carries a client's string
        assert key.isascii() and b"x:meta" not in key and b"yyy" not in key


@pytest.mark.parametrize("spoil", ["meta", "log"])
def test_a_key_of_the_wrong_type_fails_only_its_channel(
        redis_srv: RedisServer, direct: Any, make_server: Callable[..., Server],
        make_client: Callable[..., Client], spoil: str) -> None:
    a = make_server(broker=redis_srv.url)
    b = make_server(broker=redis_srv.url)
    wait_until(lambda: a.channels.healthy and b.channels.healthy, what="links up")
    ok_rec = Recorder()
    make_client(b.url).subscribe("fine", ok_rec)
    a.publish("bad", "before")  # the channel exists, with offset 1
    sp = space()
    key = sp.meta_key("bad") if spoil == "meta" else sp.log_key("bad")
    direct.delete(key)
    direct.set(key, "not a hash or a stream")
    pub = make_client(a.url)
    for n in range(3):  # every publish on it fails alone, with its own code
        with pytest.raises(RemoteError) as err:
            pub.publish("bad", n, ack=True)
        assert err.value.code == p.ERR_BROKER_ERROR and "WRONGTYPE" in str(err.value)
    with pytest.raises(BrokerCommandError):
        a.publish("bad", "server side")
    if spoil == "meta":  # a subscribe reads the channel's meta: refused too, not left waiting
        with pytest.raises(RemoteError) as err:
            make_client(a.url).subscribe("bad", Recorder())
        assert err.value.code == p.ERR_BROKER_ERROR
    else:
        assert direct.hget(sp.meta_key("bad"), "offset") == b"1"  # a failed publish took no offset
    for n in range(3):
        assert pub.publish("fine", n, ack=True)["offset"] == n + 1
    assert [m.data for m in ok_rec.wait_count(3)] == [0, 1, 2]
    for srv in (a, b):
        assert health(srv)[0] == 200
        assert srv.channels.healthy and srv.stats()["broker_outages"] == 0
    assert a.stats()["broker_command_errors"] >= 4
    assert pub.stats()["publish_errors"] == 3


def test_a_poisoned_channel_does_not_stop_the_link_coming_back(
        redis_srv: RedisServer, direct: Any, make_server: Callable[..., Server],
        make_client: Callable[..., Client]) -> None:
    srv = make_server(broker=redis_srv.url)
    wait_until(lambda: srv.channels.healthy, what="link up")
    bad, fine = Recorder(), Recorder()
    sub = make_client(srv.url)
    sub.subscribe("bad", bad)
    sub.subscribe("fine", fine)
    srv.publish("bad", 1)
    srv.publish("fine", 1)
    bad.wait_count(1), fine.wait_count(1)
    key = space().meta_key("bad")
    direct.delete(key)
    direct.set(key, "x")
    links = srv.stats()["broker_links"]
    direct.client_kill_filter(_type="pubsub")  # the link drops: it catches every channel up
    wait_until(lambda: srv.stats()["broker_links"] > links and srv.channels.healthy,
               what="the link back up")
    assert health(srv)[0] == 200
    srv.publish("fine", 2)
    assert [m.data for m in fine.wait_count(2)] == [1, 2]
    assert srv.stats()["broker_command_errors"] >= 1
    assert srv.channels.healthy and srv.stats()["broker_outages"] == 1


def test_history_expires_with_history_ttl_not_the_channel_ttl(
        redis_srv: RedisServer, direct: Any, make_server: Callable[..., Server],
        make_client: Callable[..., Client]) -> None:
    srv = make_server(broker=redis_srv.url, history_ttl_s=1.0)
    wait_until(lambda: srv.channels.healthy, what="link up")
    epoch = srv.publish("h", 1).epoch
    sp = space()
    ttl_ms = direct.pttl(sp.log_key("h"))
    assert 0 < ttl_ms <= 1000
    assert direct.pttl(sp.meta_key("h")) > 3_600_000  # offsets and epoch live on
    wait_until(lambda: not direct.exists(sp.log_key("h")), what="the stream expired")
    assert direct.exists(sp.meta_key("h"))
    reply = make_client(srv.url).subscribe("h", Recorder(), since={"offset": 0, "epoch": epoch})
    assert reply is not None and (reply["recovered"], reply["reason"]) == (False, "history-expired")
    assert srv.publish("h", 2).offset == 2 and srv.publish("h", 3).epoch == epoch


def test_redis_out_of_memory_fails_publishes_alone_and_they_work_again(
        redis_srv: RedisServer, direct: Any, make_server: Callable[..., Server],
        make_client: Callable[..., Client]) -> None:
    srv = make_server(broker=redis_srv.url)
    wait_until(lambda: srv.channels.healthy, what="link up")
    rec = Recorder()
    sub = make_client(srv.url)
    sub.subscribe("m", rec)
    pub = make_client(srv.url)
    pub.publish("m", "before", ack=True)
    direct.config_set("maxmemory", "1")  # every write is refused: OOM
    try:
        for _ in range(2):
            with pytest.raises(RemoteError) as err:
                pub.publish("m", "refused", ack=True)
            assert err.value.code == p.ERR_BROKER_ERROR and "maxmemory" in str(err.value)
        assert health(srv)[0] == 200 and srv.stats()["broker_outages"] == 0
    finally:
        direct.config_set("maxmemory", "0")
    pub.publish("m", "after", ack=True)
    assert [m.data for m in rec.wait_count(2)] == ["before", "after"]
    assert srv.stats()["broker_command_errors"] >= 2


def test_a_read_only_redis_counts_as_a_lost_link(
        redis_srv: RedisServer, direct: Any, make_server: Callable[..., Server],
        make_client: Callable[..., Client]) -> None:
    # a primary that became a replica refuses writes: reconnect (a failover proxy may lead
    # to the new primary), and the publish was not made: unavailable
    srv = make_server(broker=redis_srv.url)
    wait_until(lambda: srv.channels.healthy, what="link up")
    pub = make_client(srv.url)
    pub.publish("r", 1, ack=True)
    direct.replicaof("127.0.0.1", "1")  # a primary that does not exist: read-only from now
    try:
        with pytest.raises(RemoteError) as err:
            pub.publish("r", 2, ack=True)
        assert err.value.code in (p.ERR_UNAVAILABLE,)
        assert srv.stats()["broker_outages"] >= 1
    finally:
        direct.replicaof("no", "one")
    wait_until(lambda: srv.channels.healthy, what="link back")
    wait_until(lambda: _published(pub), what="publishes again")


def _published(pub: Client) -> bool:
    try:
        return bool(pub.publish("r", 3, ack=True))
    except RemoteError:
        return False

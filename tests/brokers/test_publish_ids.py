"""Publish ids deduplicate per publisher, on both brokers (PROTOCOL 9): no client can
silence another's publishes by using its ids first; ids are bounded per publisher and
in total, and ids forgotten early are counted."""

from __future__ import annotations

import gc
import sys
import tracemalloc
from typing import Any, Callable, Dict, Iterator, List, Optional, Union

import pytest

from sente_lite import Client, Server
from sente_lite.wire import protocol as p
from sente_lite.brokers.publish_ids import PublishIds
from sente_lite.testing.redis_server import RedisServer, redis_server_path
from support import WAIT_S, AsgiFace, Recorder, ThreadedFace, wait_until

#: The tests taking ``make_face`` run on both faces: the threaded Server and the ASGI App
#: under uvicorn.
Face = Union[ThreadedFace, AsgiFace]


@pytest.fixture(params=["local", "redis"])
def make_broker_server(request: pytest.FixtureRequest, make_server: Callable[..., Server]
                       ) -> Iterator[Callable[..., Server]]:
    """Servers on the in-process broker, or on a real redis-server (skipped without one)."""
    if request.param == "local":
        yield make_server
        return
    if redis_server_path() is None:
        pytest.skip("redis-server is not installed")
    pytest.importorskip("redis")
    with RedisServer() as redis_srv:
        def make(**kwargs: Any) -> Server:
            srv = make_server(broker=redis_srv.url, **kwargs)
            wait_until(lambda: srv.channels.healthy, what="link up")
            return srv

        yield make


def publish_raw(client: Client, channel: str, data: Any, publish_id: str) -> Dict[str, Any]:
    """A publish with a chosen id (the reply), as any client may send it."""
    reply = client.request(p.EV_PUBLISH, {p.K_CHANNEL: channel, p.K_DATA: data, p.K_ID: publish_id})
    assert isinstance(reply, dict), reply
    return reply


def delivered(srv: Server, make_client: Callable[..., Client], channel: str,
              rec: Recorder, count: int) -> List[Any]:
    """Every message's data once ``count`` arrived, after a closing marker (nothing more)."""
    srv.publish(channel, "end")
    msgs = rec.wait_count(count + 1)
    wait_until(lambda: msgs[-1].data == "end" or len(rec) > count + 1)
    assert rec.items[-1].data == "end", rec.items
    return [m.data for m in rec.items[:-1]]


def authenticated_as(uid_of: Dict[str, str]) -> Callable[..., Optional[str]]:
    """An authenticate hook: the uid is the ``?user=`` parameter's entry in ``uid_of``."""
    def authenticate(request: Any) -> Optional[str]:
        return uid_of.get(request.query.get("user", ""))

    return authenticate


@pytest.mark.parametrize("victim_ids", [["victim:1", "victim:2"], ["1"], ["x" * 128, "é:{}*"]])
def test_ids_used_first_by_another_client_do_not_silence_the_victim(
        make_broker_server: Callable[..., Server], make_client: Callable[..., Client],
        victim_ids: List[str]) -> None:
    srv = make_broker_server()
    rec = Recorder()
    make_client(srv.url).subscribe("room", rec)
    attacker = make_client(srv.url, client_id="attacker")
    victim = make_client(srv.url, client_id="victim")
    for pid in victim_ids:  # the attacker publishes the victim's next ids first
        assert publish_raw(attacker, "room", "spoof", pid).get("duplicate") is None
    answers = [publish_raw(victim, "room", f"real {n}", pid) for n, pid in enumerate(victim_ids)]
    assert all("duplicate" not in a for a in answers)
    data = delivered(srv, make_client, "room", rec, 2 * len(victim_ids))
    assert data == ["spoof"] * len(victim_ids) + [f"real {n}" for n in range(len(victim_ids))]
    assert srv.stats()["duplicate_publishes"] == 0


def test_two_publishers_with_the_same_id_are_both_delivered_and_each_deduplicated(
        make_broker_server: Callable[..., Server], make_client: Callable[..., Client]) -> None:
    srv = make_broker_server()
    rec = Recorder()
    make_client(srv.url).subscribe("room", rec)
    a = make_client(srv.url, client_id="a")
    b = make_client(srv.url, client_id="b")
    first_a = publish_raw(a, "room", "from a", "same")
    first_b = publish_raw(b, "room", "from b", "same")
    assert "duplicate" not in first_a and "duplicate" not in first_b
    again_a = publish_raw(a, "room", "from a", "same")  # each publisher retrying
    again_b = publish_raw(b, "room", "from b", "same")
    assert again_a["duplicate"] is True and again_a["offset"] == first_a["offset"]
    assert again_b["duplicate"] is True and again_b["offset"] == first_b["offset"]
    assert delivered(srv, make_client, "room", rec, 2) == ["from a", "from b"]
    assert srv.stats()["duplicate_publishes"] == 2


def test_the_same_publisher_retrying_on_a_new_connection_is_deduplicated(
        make_broker_server: Callable[..., Server], make_client: Callable[..., Client]) -> None:
    srv = make_broker_server()
    rec = Recorder()
    make_client(srv.url).subscribe("room", rec)
    answers = []
    for _ in range(3):  # the same client-id, a new connection each time
        c = make_client(srv.url, client_id="retrier")
        answers.append(publish_raw(c, "room", "once", "r-1"))
        c.close()
    assert [a.get("duplicate", False) for a in answers] == [False, True, True]
    assert len({a["offset"] for a in answers}) == 1
    assert delivered(srv, make_client, "room", rec, 1) == ["once"]


def test_publisher_is_the_uid_when_authenticated(
        make_broker_server: Callable[..., Server], make_client: Callable[..., Client]) -> None:
    # two users on the same client-id are two publishers; one user on two client-ids is one
    srv = make_broker_server(authenticate=authenticated_as({"ann": "ann", "bob": "bob"}))
    rec = Recorder()
    make_client(srv.url + "?user=ann").subscribe("room", rec)
    ann = make_client(srv.url + "?user=ann", client_id="shared")
    bob = make_client(srv.url + "?user=bob", client_id="shared")
    ann2 = make_client(srv.url + "?user=ann", client_id="ann-laptop")
    assert "duplicate" not in publish_raw(ann, "room", "ann", "k")
    assert "duplicate" not in publish_raw(bob, "room", "bob", "k")
    assert publish_raw(ann2, "room", "ann again", "k")["duplicate"] is True
    assert delivered(srv, make_client, "room", rec, 2) == ["ann", "bob"]


def test_ids_are_bounded_per_publisher_and_a_flood_does_not_evict_others(
        make_broker_server: Callable[..., Server], make_client: Callable[..., Client]) -> None:
    srv = make_broker_server(publish_ids_per_publisher=3, publish_ids_max=100)
    victim = make_client(srv.url, client_id="victim")
    flooder = make_client(srv.url, client_id="flooder")
    publish_raw(victim, "room", "v", "v-1")
    for n in range(10):  # on several channels: the bound is per publisher, not per channel
        publish_raw(flooder, f"room-{n % 3}", n, f"f-{n}")
    assert srv.stats()["publish_ids_evicted"] == 7
    assert publish_raw(victim, "room", "v", "v-1")["duplicate"] is True  # still remembered
    assert publish_raw(flooder, "room-0", 9, "f-9")["duplicate"] is True  # its newest are kept
    assert "duplicate" not in publish_raw(flooder, "room-0", 0, "f-0")  # its oldest were forgotten


def test_ids_are_bounded_in_total(make_broker_server: Callable[..., Server],
                                  make_client: Callable[..., Client]) -> None:
    srv = make_broker_server(publish_ids_per_publisher=2, publish_ids_max=4)
    clients = [make_client(srv.url, client_id=f"c{n}") for n in range(3)]
    for n, c in enumerate(clients):
        for k in range(2):
            publish_raw(c, "room", k, f"id-{k}")
    assert srv.stats()["publish_ids_evicted"] == 2  # 6 ids, 4 kept: the two oldest forgotten
    assert "duplicate" not in publish_raw(clients[0], "room", 0, "id-0")
    assert publish_raw(clients[2], "room", 1, "id-1")["duplicate"] is True


@pytest.mark.parametrize("kwargs", [
    {"publish_ids_per_publisher": 0}, {"publish_ids_max": 0}, {"publish_ids_per_publisher": 1.5},
    {"publish_ids_per_publisher": 10, "publish_ids_max": 5}, {"publish_ids_max": True},
])
def test_bad_id_bounds_are_refused_with_their_name(kwargs: Dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="publish_ids_"):
        Server(**kwargs)
    with pytest.raises(ValueError, match="publish_ids_"):
        PublishIds(300.0, kwargs.get("publish_ids_per_publisher", 1),
                   kwargs.get("publish_ids_max", 10))


def test_python_client_ids_cannot_be_guessed_from_its_client_id(
        make_broker_server: Callable[..., Server], make_client: Callable[..., Client]) -> None:
    srv = make_broker_server()
    rec = Recorder()
    make_client(srv.url).subscribe("room", rec)
    victim = make_client(srv.url, client_id="victim")
    attacker = make_client(srv.url, client_id="victim-spy")
    for n in range(1, 4):  # the ids the victim used to send
        publish_raw(attacker, "room", "spoof", f"victim:{n}")
    for n in range(3):
        assert "duplicate" not in victim.publish("room", n, ack=True)
    assert delivered(srv, make_client, "room", rec, 6)[3:] == [0, 1, 2]


def test_the_window_forgets_ids(make_face: Callable[..., Face]) -> None:
    now = [0.0]
    ids = PublishIds(5.0, 10, 10, clock=lambda: now[0])
    ids.remember("u", "ch", "e1", "k", 1, 0)
    assert ids.first("u", "ch", "e1", "k") == (1, 0)
    assert ids.first("u", "ch", "e2", "k") is None  # another epoch: the channel restarted
    assert ids.first("v", "ch", "e1", "k") is None and ids.first(None, "ch", "e1", "k") is None
    assert ids.first("", "ch", "e1", "k") is None  # "" is a publisher, not the server (None)
    ids.remember(None, "ch", "e1", "k", 2, 0)
    assert ids.first(None, "ch", "e1", "k") == (2, 0) and ids.first("", "ch", "e1", "k") is None
    now[0] = 5.5
    assert ids.first("u", "ch", "e1", "k") is None and len(ids) == 0
    assert WAIT_S > 0


def test_held_bytes_is_what_the_ids_allocate_and_falls_as_they_go() -> None:
    """held_bytes() against tracemalloc: while ids are added, at the bound (evicting), and
    after the window forgot them all (what stays is the tables' room: dicts do not shrink)."""
    now = [0.0]
    publishers = [f"publisher-{n:02d}" for n in range(20)]  # shared, as a connection's uid
    # tuples and floats reused from the free lists earlier tests filled would be allocated
    # without tracemalloc seeing them (Python 3.13 keeps more there): empty them first
    gc.collect()
    tracemalloc.start()
    try:
        ids = PublishIds(60.0, per_publisher=500, max_ids=8000, clock=lambda: now[0] + 0.0)
        base, held_base = tracemalloc.get_traced_memory()[0], ids.held_bytes()

        def check(what: str, reused: int = 0) -> int:
            traced = tracemalloc.get_traced_memory()[0] - base
            held = ids.held_bytes() - held_base
            assert abs(held - traced) <= 0.05 * traced + reused, (what, held, traced)
            return traced

        for n in range(1, 12_001):
            ids.remember(publishers[n % 20], "events", "e1", f"{n % 20:x}c0ffee:{n}", 1000 + n, 20)
            if n == 4000:
                check("4,000 ids held")
        full = check("at max_ids, evicting")
        assert len(ids) == 8000 and full > 8000 * 300
        now[0] = 61.0
        ids.expire()
        # freed tuples and floats CPython keeps for reuse (its free lists) stay traced
        free_lists = 2000 * (sys.getsizeof((1, 2, 3)) + sys.getsizeof((1, 2, 3, 4))) + 100 * 24
        assert len(ids) == 0 and check("all forgotten", free_lists) < full / 2
    finally:
        tracemalloc.stop()


def test_stats_report_the_bytes_of_the_ids_held(make_face: Callable[..., Face],
                                                make_client: Callable[..., Client]) -> None:
    srv = make_face()
    empty = srv.stats()["publish_ids_bytes"]
    c = make_client(srv.url)
    for n in range(50):
        publish_raw(c, "room", n, f"id-{n}")
    assert srv.stats()["publish_ids"] == 50
    assert srv.stats()["publish_ids_bytes"] - empty > 50 * 200

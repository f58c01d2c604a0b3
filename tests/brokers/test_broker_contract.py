"""One contract for every broker (local, memory, Redis): what the server relies on, checked
through the declared seam only (``Broker`` calls in, ``BrokerEvents`` calls out).

Each broker serves one or two fake nodes (:class:`Node`, a ``BrokerEvents`` that records
what it is handed). Brokers that route users (memory, Redis) get two nodes; the local
broker has one. Redis answers subscribes and delivers on its own threads, so every check
of a delivery waits for it."""

from __future__ import annotations

import inspect
import json
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from sente_lite.brokers.base import Broker
from sente_lite.brokers.local import LocalBroker
from sente_lite.brokers.memory import MemoryLog
from sente_lite.wire.channels import Built, RecoveryResult, Since, message_head
from support import WAIT_S, wait_until

KINDS = ["local", "memory", "redis"]
ROUTING = ["memory", "redis"]
#: Keys every broker's stats() has (merged into Server.stats()).
STATS_KEYS = {"channels", "active_channels", "subscriptions", "channels_evicted",
              "history_messages", "publish_ids", "history_size", "history_ttl_s",
              "publish_dedup_s", "max_replay_per_subscribe", "broker"}
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class Node:
    """A node as a broker sees it: builds and records what it is handed."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.got: Dict[Any, List[Dict[str, Any]]] = {}  # member -> channel-msg bodies
        self.traced: List[Optional[str]] = []
        self.notices: List[Tuple[Any, str, str]] = []
        self.user_frames: List[Tuple[str, bytes]] = []
        self.broadcasts: List[bytes] = []
        self.closed: List[Tuple[str, int, str]] = []
        self.users: Dict[str, int] = {}

    def build(self, text: bytes, traceparent: Optional[str]) -> Built:
        return Built(b"frame:" + text, len(text), traceparent)

    def deliver(self, member: Any, built: Built) -> bool:
        with self.lock:
            self.got.setdefault(member, []).append(json.loads(built.text())[1])
            self.traced.append(built.traceparent)
        return True

    def lost(self, member: Any, channel: str, offset: int, epoch: str, reason: str) -> None:
        self.notices.append((member, channel, reason))

    def to_user_here(self, uid: str, json_payload: bytes) -> int:
        self.user_frames.append((uid, json_payload))
        return 1

    def to_all_here(self, json_payload: bytes) -> int:
        self.broadcasts.append(json_payload)
        return 1

    def disconnect_user_here(self, uid: str, code: int, reason: str) -> int:
        self.closed.append((uid, code, reason))
        return 1

    def user_counts(self) -> Dict[str, int]:
        return dict(self.users)

    def offsets(self, member: Any) -> List[int]:
        with self.lock:
            return [m["offset"] for m in self.got.get(member, [])]


Make = Callable[..., List[Tuple[Broker, Node]]]


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make(kind: str, request: pytest.FixtureRequest) -> Iterator[Make]:
    """``make(nodes=1, **settings)``: started brokers of ``kind``, each with its node."""
    started: List[Broker] = []

    def brokers(nodes: int = 1, history_size: int = 1000, max_replay: int = 1000,
                ) -> List[Tuple[Broker, Node]]:
        if kind == "local":
            assert nodes == 1, "the local broker has one node"
            made: List[Broker] = [LocalBroker("e", history_size=history_size,
                                              max_replay_per_subscribe=max_replay)]
        elif kind == "memory":
            log = MemoryLog(history_size=history_size, max_replay_per_subscribe=max_replay)
            made = [log.node() for _ in range(nodes)]
        else:
            from sente_lite.brokers.redis.broker import RedisBroker
            url = request.getfixturevalue("redis_srv").url
            made = [RedisBroker(url, history_size=history_size,
                                max_replay_per_subscribe=max_replay) for _ in range(nodes)]
        out = []
        for n, broker in enumerate(made):
            node = Node(f"n{n}")
            broker.start(node)
            started.append(broker)
            out.append((broker, node))
        if kind == "redis":
            wait_until(lambda: all(b.health()["broker-status"] == "up" for b in made),
                       what="the links up")
        return out

    yield brokers
    for broker in started:
        broker.stop()


def head(channel: str, data: Any, traceparent: Optional[str] = None) -> str:
    return message_head(json.dumps(channel), json.dumps(data), "null", traceparent)


def publish(broker: Broker, channel: str, data: Any, traceparent: Optional[str] = None,
            **kw: Any) -> Any:
    return broker.publish(channel, head(channel, data, traceparent), traceparent=traceparent,
                          **kw)


def subscribe(broker: Broker, member: Any, channel: str, since: Optional[Since] = None,
              budget: Optional[int] = None) -> Tuple[int, str, Optional[RecoveryResult]]:
    """Subscribe and wait for the answer: (top offset, epoch, recovery)."""
    answers: List[Tuple[int, str, Optional[RecoveryResult]]] = []
    broker.subscribe(member, channel, lambda o, e, r: answers.append((o, e, r)), since, budget)
    wait_until(lambda: answers, what="the subscribe answered")
    return answers[0]


def test_publishes_take_offsets_in_order_and_reach_subscribers_in_order(make: Make) -> None:
    (broker, node), = make()
    subscribe(broker, "m", "c")
    results = [publish(broker, "c", i) for i in range(5)]
    assert [r.offset for r in results] == [1, 2, 3, 4, 5]
    assert len({r.epoch for r in results}) == 1 and not any(r.duplicate for r in results)
    wait_until(lambda: node.offsets("m") == [1, 2, 3, 4, 5], what="every message in order")
    assert [m["data"] for m in node.got["m"]] == [0, 1, 2, 3, 4]
    assert {m["epoch"] for m in node.got["m"]} == {results[0].epoch}


def test_delivered_counts_this_nodes_subscribers_it_reached(make: Make, kind: str) -> None:
    nodes = make(2 if kind in ROUTING else 1)
    broker, node = nodes[0]
    subscribe(broker, "m1", "c")
    subscribe(broker, "m2", "c")
    for other, _ in nodes[1:]:
        subscribe(other, "far", "c")
    assert publish(broker, "c", "x").delivered == 2
    assert publish(broker, "c", "y", exclude="m1").delivered == 1
    wait_until(lambda: node.offsets("m2") == [1, 2] and node.offsets("m1") == [1], what="deliveries")
    for _, far in nodes[1:]:
        wait_until(lambda: far.offsets("far") == [1, 2], what="the other node's deliveries")


def test_a_traced_publish_is_built_with_its_traceparent(make: Make) -> None:
    (broker, node), = make()
    subscribe(broker, "m", "c")
    publish(broker, "c", 1, traceparent=TRACEPARENT)
    wait_until(lambda: node.offsets("m") == [1], what="the delivery")
    assert node.traced == [TRACEPARENT] and node.got["m"][0]["traceparent"] == TRACEPARENT


def test_history_pages_with_since_limit_and_reverse(make: Make) -> None:
    (broker, _), = make()
    epoch = [publish(broker, "h", i) for i in range(5)][0].epoch
    page = broker.history("h")
    assert (page.offset, page.epoch, page.recovery) == (5, epoch, None)
    assert [o for o, _ in page.publications] == [1, 2, 3, 4, 5]
    assert json.loads(page.publications[0][1])[1]["data"] == 0
    assert [o for o, _ in broker.history("h", limit=2).publications] == [1, 2]
    assert [o for o, _ in broker.history("h", limit=2, reverse=True).publications] == [5, 4]
    after = broker.history("h", since=Since(2, epoch))
    assert after.recovery is not None and after.recovery.recovered
    assert [o for o, _ in after.publications] == [3, 4, 5]
    other = broker.history("h", since=Since(2, "another"))
    assert other.recovery is not None and not other.recovery.recovered
    assert other.publications == []
    assert broker.history("never").publications == [] and broker.history("never").offset == 0


def test_a_channel_may_keep_a_smaller_history_than_the_broker(make: Make) -> None:
    """``limit_history`` (a namespace's own history): a smaller size, or none, per channel;
    history pages, recoveries and what is kept follow it; other channels keep the broker's."""
    (broker, node), = make()
    broker.limit_history(lambda ch: {"small": (2, 300.0), "none": (0, 300.0),
                                     "huge": (10**9, 10.0**9)}.get(ch.split(":")[0]))
    epochs = {ch: [publish(broker, ch, i) for i in range(5)][0].epoch
              for ch in ("small:a", "none:a", "big:a", "huge:a")}
    assert [o for o, _ in broker.history("small:a").publications] == [4, 5]
    assert broker.history("none:a").publications == []
    assert [o for o, _ in broker.history("big:a").publications] == [1, 2, 3, 4, 5]
    assert [o for o, _ in broker.history("huge:a").publications] == [1, 2, 3, 4, 5]  # the broker's bound
    assert subscribe(broker, "m", "small:a", Since(3, epochs["small:a"]))[2] == RecoveryResult(True, None, 2)
    assert subscribe(broker, "n", "small:a", Since(1, epochs["small:a"]))[2] == RecoveryResult(
        False, "history-expired", 0)
    assert subscribe(broker, "o", "none:a", Since(1, epochs["none:a"]))[2] == RecoveryResult(
        False, "history-off", 0)
    assert subscribe(broker, "p", "big:a", Since(1, epochs["big:a"]))[2] == RecoveryResult(True, None, 4)
    wait_until(lambda: node.offsets("m") == [4, 5] and node.offsets("p") == [2, 3, 4, 5],
               what="the replays")


def test_since_recovers_by_replay_then_live_messages(make: Make) -> None:
    (broker, node), = make()
    epoch = [publish(broker, "c", i) for i in range(5)][0].epoch
    top, got_epoch, recovery = subscribe(broker, "m", "c", Since(2, epoch))
    assert (top, got_epoch, recovery) == (5, epoch, RecoveryResult(True, None, 3))
    publish(broker, "c", 5)
    wait_until(lambda: node.offsets("m") == [3, 4, 5, 6], what="replay then live")
    assert subscribe(broker, "n", "c", Since(6, epoch))[2] == RecoveryResult(True, None, 0)


@pytest.mark.parametrize("case,settings,since_offset,reason", [
    ("epoch", {}, 1, "epoch-changed"),
    ("ahead", {}, 99, "epoch-changed"),
    ("expired", {"history_size": 3}, 1, "history-expired"),
    ("off", {"history_size": 0}, 1, "history-off"),
    ("limit", {"max_replay": 2}, 1, "replay-limit"),
])
def test_unrecovered_answers_say_why(make: Make, case: str, settings: Dict[str, int],
                                     since_offset: int, reason: str) -> None:
    (broker, node), = make(**settings)
    epoch = [publish(broker, "c", i) for i in range(6)][0].epoch
    since = Since(since_offset, "another" if case == "epoch" else epoch)
    top, _, recovery = subscribe(broker, "m", "c", since)
    assert (top, recovery) == (6, RecoveryResult(False, reason, 0))
    publish(broker, "c", "live")
    wait_until(lambda: node.offsets("m") == [7], what="live messages only")


def test_a_second_subscribe_with_since_is_already_subscribed(make: Make) -> None:
    (broker, _), = make()
    epoch = publish(broker, "c", 0).epoch
    subscribe(broker, "m", "c")
    assert subscribe(broker, "m", "c", Since(0, epoch))[2] == RecoveryResult(
        False, "already-subscribed", 0)
    assert broker.channels_of("m") == ["c"] and broker.subscriber_count("c") == 1


def test_a_repeated_publish_id_is_delivered_once_per_publisher(make: Make) -> None:
    (broker, node), = make()
    subscribe(broker, "m", "c")
    first = publish(broker, "c", "a", publish_id="k", publisher="ann")
    again = publish(broker, "c", "a", publish_id="k", publisher="ann")
    other = publish(broker, "c", "b", publish_id="k", publisher="bob")
    assert (again.offset, again.epoch, again.duplicate) == (first.offset, first.epoch, True)
    assert (other.offset, other.duplicate) == (2, False)
    publish(broker, "c", "after")
    wait_until(lambda: node.offsets("m") == [1, 2, 3], what="no duplicate delivered")


def test_unsubscribe_and_remove_member(make: Make) -> None:
    (broker, node), = make()
    subscribe(broker, "m", "a")
    subscribe(broker, "m", "b")
    subscribe(broker, "keep", "a")
    assert broker.channels_of("m") == ["a", "b"] and broker.subscriber_counts() == {"a": 2, "b": 1}
    assert broker.unsubscribe("m", "a") is True and broker.unsubscribe("m", "a") is False
    publish(broker, "a", 1)
    wait_until(lambda: node.offsets("keep") == [1], what="the delivery")
    assert node.offsets("m") == []
    assert broker.remove_member("m") == ["b"] and broker.remove_member("m") == []
    assert broker.channels_of("m") == [] and broker.subscriber_count("b") == 0


def test_stats_and_health(make: Make, kind: str) -> None:
    (broker, _), = make()
    subscribe(broker, "m", "c")
    stats = broker.stats()
    assert STATS_KEYS <= set(stats) and stats["broker"] == kind
    assert stats["subscriptions"] == 1 and stats["active_channels"] == 1
    assert broker.health() == {**broker.health(), "broker": kind, "broker-status": "up"}
    assert broker.sweep_idle() >= 0


def test_nodes_share_one_offset_order(make: Make, kind: str) -> None:
    if kind not in ROUTING:
        pytest.skip("one node only")
    (a, node_a), (b, node_b) = make(2)
    subscribe(a, "m", "c")
    subscribe(b, "m", "c")  # the same member name on two nodes: two members
    for i in range(3):
        publish(a if i % 2 else b, "c", i)
    wait_until(lambda: node_a.offsets("m") == node_b.offsets("m") == [1, 2, 3], what="one order")
    assert b.history("c").offset == 3


def _route(broker: Any, uid: str) -> None:
    """Have ``broker``'s node hear ``uid``'s messages, as a server does before it answers
    that user's upgrade."""
    routed = threading.Event()
    if not broker.presence.route_user(uid, routed.set):
        assert routed.wait(WAIT_S), f"{uid} routed"


def test_users_are_routed_to_the_other_nodes(make: Make, kind: str) -> None:
    if kind not in ROUTING:
        pytest.skip("one node only")
    (a, node_a), (b, node_b) = make(2)
    node_b.users = {"ann": 1, "bob": 1}  # a broker may route a user's messages only where it is
    for uid in node_b.users:
        _route(b, uid)
    a.to_user("ann", b'["app/x",1]')
    a.broadcast(b'["app/y",2]')
    a.disconnect_user("bob", 4000, "bye")
    wait_until(lambda: node_b.user_frames and node_b.broadcasts and node_b.closed,
               what="routed to the other node")
    assert node_b.user_frames == [("ann", b'["app/x",1]')]
    assert node_b.broadcasts == [b'["app/y",2]'] and node_b.closed == [("bob", 4000, "bye")]
    assert node_a.user_frames == node_a.broadcasts == node_a.closed == []  # not back to itself


def test_presence_counts_every_nodes_users(make: Make, kind: str) -> None:
    if kind not in ROUTING:
        pytest.skip("one node only")
    (a, node_a), (b, node_b) = make(2)
    node_a.users, node_b.users = {"ann": 1}, {"ann": 2, "bob": 1}
    assert a.presence is not None and b.presence is not None
    a.presence.users_changed()
    b.presence.users_changed()
    wait_until(lambda: a.presence.presence("ann") == 3, what="presence of every node")
    assert a.presence.user_count() == 2
    wait_until(lambda: len(a.presence.nodes()) == 2, what="both nodes listed")


def test_the_local_broker_has_no_other_node(make: Make, kind: str) -> None:
    if kind != "local":
        pytest.skip("local only")
    (broker, node), = make()
    assert broker.presence is None
    broker.to_user("ann", b"[]")
    broker.broadcast(b"[]")
    broker.disconnect_user("ann", 1000, "")
    assert node.user_frames == node.broadcasts == node.closed == []


def test_two_servers_share_channels_and_users_on_one_memory_log(make_server: Any,
                                                                 make_client: Any) -> None:
    """End to end, over real sockets: two servers on one MemoryLog are one cluster."""
    log = MemoryLog()
    a, b = make_server(broker=log.node("a")), make_server(broker=log.node("b"))
    got: List[Any] = []
    sub = make_client(b.url, client_id="ann")
    sub.subscribe("room", lambda m: got.append((m.offset, m.data)))
    notes: List[Any] = []
    sub.on("app/note", notes.append)
    pub = make_client(a.url)
    ack = pub.publish("room", "hello", ack=True)
    assert (ack["offset"], ack["delivered"]) == (1, 0)  # the subscriber is b's, not a's
    assert b.publish("room", "again").delivered == 1
    wait_until(lambda: got == [(1, "hello"), (2, "again")], what="both messages on b")
    assert a.presence("ann") == 1 and sorted(a.nodes()) == ["a", "b"]
    a.send_to_user("ann", "app/note", {"n": 1})
    wait_until(lambda: notes == [{"n": 1}], what="routed through the log to b")
    h = a.history("room")
    assert [x["data"] for x in h["publications"]] == ["hello", "again"]


def methods_of(protocol: type) -> Dict[str, List[str]]:
    """Method name -> parameter names, as ``protocol`` declares them."""
    return {name: list(inspect.signature(fn).parameters)
            for name, fn in vars(protocol).items()
            if callable(fn) and not name.startswith("_")}


def test_every_broker_and_the_hub_have_the_declared_calls() -> None:
    from sente_lite.brokers.base import BrokerEvents, PresenceBroker
    from sente_lite.brokers.memory import MemoryBroker
    from sente_lite.brokers.redis.broker import RedisBroker
    from sente_lite.core.hub import Hub
    for cls, protocol in [(LocalBroker, Broker), (MemoryBroker, Broker), (RedisBroker, Broker),
                          (MemoryLog, PresenceBroker), (Hub, BrokerEvents)]:
        for name, params in methods_of(protocol).items():
            assert list(inspect.signature(getattr(cls, name)).parameters) == params, (cls, name)
    from sente_lite.brokers.redis.presence import RedisPresence
    for name, params in methods_of(PresenceBroker).items():
        assert list(inspect.signature(getattr(RedisPresence, name)).parameters) == params, name


def test_history_reads_page_by_page_both_ways(make: Make) -> None:
    """``core.history_api.read_page`` over every broker: pages of ``limit``, each naming where
    the next starts, forwards and backwards, after ``since``; the last page says None."""
    from sente_lite.core.history_api import read_page

    (broker, _), = make()
    epoch = [publish(broker, "pg", i) for i in range(7)][0].epoch

    def walk(reverse: bool, since: Optional[Since] = None) -> List[List[int]]:
        pages, at = [], None
        while True:
            got, at = read_page(broker, "pg", 3, since, reverse, at)
            pages.append([o for o, _ in got.publications])
            if at is None:
                return pages
            assert at.epoch == epoch

    assert walk(False) == [[1, 2, 3], [4, 5, 6], [7]]
    assert walk(True) == [[7, 6, 5], [4, 3, 2], [1]]
    assert walk(False, Since(2, epoch)) == [[3, 4, 5], [6, 7]]
    assert walk(True, Since(2, epoch)) == [[7, 6, 5], [4, 3]]
    got, at = read_page(broker, "pg", 3, None, False, Since(3, "another"))
    assert got.publications == [] and at is None
# -- channel presence and join/leave events ------------------------------------------------
def member(conn_id: str, uid: str = "u") -> Dict[str, Any]:
    return {"client-id": "c-" + conn_id, "uid": uid, "conn-id": conn_id, "info": None}


def test_presence_members_are_shared_by_every_node(make: Make, kind: str) -> None:
    nodes = make(2 if kind in ROUTING else 1)
    a, b = nodes[0][0], nodes[-1][0]
    assert a.presence_add("room", member("m1", "alice")) is True
    assert a.presence_add("room", member("m1", "alice")) is False  # once per connection
    assert b.presence_add("room", member("m2", "bob")) is True
    b.presence_add("room", member("m3", "alice"))
    assert sorted(m["conn-id"] for m in a.presence_of("room")) == ["m1", "m2", "m3"]
    assert b.presence_stats("room") == {"members": 3, "users": 2}
    assert a.presence_remove("room", "m1") is True and a.presence_remove("room", "m1") is False
    assert [m["conn-id"] for m in b.presence_of("room") if m["uid"] == "alice"] == ["m3"]
    assert a.presence_of("elsewhere") == [] and a.presence_stats("elsewhere") == {"members": 0,
                                                                                  "users": 0}


def test_events_reach_every_nodes_subscribers_in_order_with_messages(make: Make, kind: str) -> None:
    nodes = make(2 if kind in ROUTING else 1)
    (a, node_a), (b, node_b) = nodes[0], nodes[-1]
    subscribe(a, "m", "c")
    if b is not a:
        subscribe(b, "far", "c")
    publish(a, "c", 1)
    a.publish_event("c", json.dumps(["sente-lite/join", {"channel-id": "c", "n": 1}]).encode())
    publish(a, "c", 2)
    far = "far" if b is not a else "m"
    for node, who in ((node_a, "m"), (node_b, far)):
        wait_until(lambda: len(node.got.get(who, [])) == 3, what="two messages and the event")
        assert [m.get("offset", m.get("n")) for m in node.got[who]] == [1, 1, 2]
        assert "offset" not in node.got[who][1]

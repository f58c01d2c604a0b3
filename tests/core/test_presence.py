"""Channel presence and join/leave (feature ``presence``), socket-free: the server's real
dispatcher, hub and local broker joined to client sessions in memory."""

from __future__ import annotations

from typing import Any, List

import pytest

from sente_lite import Namespace
from sente_lite import session as ss
from sente_lite.counters import Counter
from sente_lite.core.presence import ChannelPresence, change_text
from sente_lite.errors import RemoteError
from sente_lite.testing.pair import SessionPair
from sente_lite.wire import protocol as p

RULES = ss.ServerRules(rate_limit=None, features=ss.ServerRules.features + (p.FEATURE_PRESENCE,))
SPACES = {"room": Namespace(presence=True, join_leave=True), "quiet": Namespace(presence=True),
          "open": Namespace()}


def two(spaces: Any = None) -> List[SessionPair]:
    a = SessionPair(RULES, client_id="ca", namespaces=SPACES if spaces is None else spaces)
    a.connect("alice")
    b = a.another("cb")
    b.connect("bob")
    return [a, b]


def pump(*pairs: SessionPair) -> None:
    for _ in range(3):
        for pair in pairs:
            pair.pump()


def ask(pair: SessionPair, channel: str, stats: bool = False) -> Any:
    waiter = pair.request(p.EV_PRESENCE_STATS if stats else p.EV_PRESENCE, {p.K_CHANNEL: channel})
    pair.pump()
    if waiter.error is not None:
        assert isinstance(waiter.error, RemoteError)
        return waiter.error.code
    return waiter.result


def changes(pair: SessionPair) -> List[Any]:
    return [(e.channel_id, e.joined, e.member[p.K_CLIENT_ID]) for e in pair.client_events
            if type(e) is ss.PresenceChange]


def test_members_of_a_channel_with_presence() -> None:
    a, b = two()
    a.subscribe("room:1"), b.subscribe("room:1")
    pump(a, b)
    members = ask(a, "room:1")[p.K_MEMBERS]
    assert [(m[p.K_CLIENT_ID], m[p.K_UID]) for m in members] == [("ca", "alice"), ("cb", "bob")]
    assert {m[p.K_CONN_ID] for m in members} == {a.conn.conn_id, b.conn.conn_id}  # type: ignore[union-attr]
    assert all(m[p.K_INFO] is None for m in members)
    assert ask(a, "room:1", stats=True) == {"members": 2, "users": 2}


def test_one_user_with_two_connections_counts_once_among_users() -> None:
    a, b = two()
    c = a.another("cc")
    c.connect("alice")
    for pair in (a, b, c):
        pair.subscribe("quiet:x")
    pump(a, b, c)
    assert ask(b, "quiet:x", stats=True) == {"members": 3, "users": 2}


def test_presence_is_refused_when_the_namespace_has_none_or_the_client_is_not_subscribed() -> None:
    a, _ = two()
    a.subscribe("open:1")
    pump(a)
    assert ask(a, "open:1") == p.ERR_FORBIDDEN
    assert ask(a, "room:9") == p.ERR_FORBIDDEN  # not subscribed
    assert ask(a, "nowhere:1") == p.ERR_FORBIDDEN


def test_a_server_without_the_feature_answers_unknown_event() -> None:
    pair = SessionPair(ss.ServerRules(rate_limit=None), namespaces=SPACES)
    pair.connect()
    pair.subscribe("room:1")
    pair.pump()
    assert ask(pair, "room:1") == p.ERR_UNKNOWN_EVENT


def test_a_presence_frame_without_cb_id_is_a_bad_frame() -> None:
    a, _ = two()
    a.send(a.client.packer.encode(p.EV_PRESENCE, {p.K_CHANNEL: "room:1"}))
    a.pump()
    assert a.counters.get(Counter.BAD_FRAMES) == 1
    assert a.client.counts["errors_from_server"] == 1


def test_join_and_leave_reach_the_subscribers_in_order_with_messages() -> None:
    a, b = two()
    a.subscribe("room:1")
    pump(a)
    a.publish("room:1", "before")
    pump(a)
    b.subscribe("room:1")
    pump(a, b)
    b.publish("room:1", "hello")
    pump(a, b)
    b.send(b.client.packer.encode(p.EV_UNSUBSCRIBE, {p.K_CHANNEL: "room:1"}))
    pump(a, b)
    seen = [("msg", e.data) if type(e) is ss.ChannelMessage else ("join" if e.joined else "leave",
                                                                   e.member[p.K_CLIENT_ID])
            for e in a.client_events if type(e) in (ss.ChannelMessage, ss.PresenceChange)]
    assert seen == [("join", "ca"), ("msg", "before"), ("join", "cb"), ("msg", "hello"),
                    ("leave", "cb")]
    assert [m[p.K_CLIENT_ID] for m in ask(a, "room:1")[p.K_MEMBERS]] == ["ca"]


def test_a_closed_connection_leaves_every_channel() -> None:
    a, b = two()
    for pair in (a, b):
        pair.subscribe("room:1"), pair.subscribe("room:2")
    pump(a, b)
    b.cut()
    pump(a)
    assert changes(a)[-2:] == [("room:1", False, "cb"), ("room:2", False, "cb")]
    assert ask(a, "room:1", stats=True) == {"members": 1, "users": 1}


def test_resubscribing_is_no_second_join_and_presence_only_namespaces_send_none() -> None:
    a, b = two()
    a.subscribe("room:1"), a.subscribe("quiet:1")
    pump(a)
    b.subscribe("room:1"), b.subscribe("quiet:1")
    pump(a, b)
    b.send(b.client.packer.encode(p.EV_SUBSCRIBE, {p.K_CHANNEL: "room:1"}), None)
    pump(a, b)
    assert changes(a) == [("room:1", True, "ca"), ("room:1", True, "cb")]


def test_join_leave_without_presence_still_tells_subscribers() -> None:
    a, b = two({"talk": Namespace(join_leave=True)})
    a.subscribe("talk:1")
    pump(a)
    b.subscribe("talk:1")
    pump(a, b)
    b.cut()
    pump(a)
    assert changes(a) == [("talk:1", True, "ca"), ("talk:1", True, "cb"), ("talk:1", False, "cb")]
    assert ask(a, "talk:1") == p.ERR_FORBIDDEN


def test_a_client_drops_a_change_for_a_channel_it_does_not_hold_and_a_malformed_one() -> None:
    client = ss.ClientSession("c")
    member = {p.K_CONN_ID: "x", p.K_CLIENT_ID: "y", p.K_UID: None, p.K_INFO: None}
    assert client.receive(change_text(True, "room:1", member), 0.0, False).events == []
    client.add_subscription("room:1")
    got = client.receive(change_text(False, "room:1", member), 0.0, False).events
    assert got == [ss.PresenceChange("room:1", False, member)]
    assert client.receive(p.encode_bytes(p.EV_JOIN, {p.K_CHANNEL: "room:1"}), 0.0, False).events == []
    assert client.counts["bad_frames_from_server"] == 1


@pytest.mark.parametrize("bad", [1, "yes", None])
def test_namespace_flags_must_be_bools(bad: Any) -> None:
    with pytest.raises(TypeError, match="presence"):
        Namespace(presence=bad)
    with pytest.raises(TypeError, match="join_leave"):
        Namespace(join_leave=bad)


def test_without_namespaces_presence_is_inactive() -> None:
    pair = SessionPair(RULES)
    assert not ChannelPresence(pair.side.hub, None).active
    assert pair.side.hub.channel_presence is None

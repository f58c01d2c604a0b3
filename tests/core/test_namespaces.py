"""Channel namespaces: a channel's namespace is the part of its id before the first ``:``;
a server with ``namespaces`` refuses channels of any other (``unknown-namespace``) and
applies each namespace's subscribe/publish policy and ``authorize`` hook. Socket-free:
the server's real dispatcher and channel gate, joined to client sessions in memory."""

from __future__ import annotations

from typing import Any, List

import pytest

from sente_lite import Namespace, Server
from sente_lite import session as ss
from sente_lite.core.namespaces import Namespaces, namespace_of
from sente_lite.counters import Counter
from sente_lite.errors import RemoteError
from sente_lite.testing.pair import SessionPair
from sente_lite.wire import protocol as p
from sente_lite.wire.protocol import FrameKind


def connected(uid: str = "u1", authenticated: bool = False, **policy: Any) -> SessionPair:
    pair = SessionPair(ss.ServerRules(rate_limit=None), **policy)
    pair.connect(uid, authenticated=authenticated)
    return pair


def outcome(pair: SessionPair, waiter: Any) -> Any:
    """The waiter's error code, or "ok"."""
    pair.pump()
    if waiter.error is None:
        return "ok"
    assert isinstance(waiter.error, RemoteError), waiter.error
    return waiter.error.code


@pytest.mark.parametrize("channel,namespace", [
    ("chat:room-1", "chat"), ("chat:a:b", "chat"), ("news", ""), (":x", ""), ("chat:", "chat")])
def test_the_namespace_is_what_comes_before_the_first_colon(channel: str, namespace: str) -> None:
    assert namespace_of(channel) == namespace


def test_without_namespaces_every_channel_is_served_as_before() -> None:
    pair = connected()
    assert outcome(pair, pair.subscribe("anything:at-all")) == "ok"
    assert outcome(pair, pair.publish("anything:at-all", 1)) == "ok"
    assert p.FEATURE_NAMESPACES not in pair.rules.features


@pytest.mark.parametrize("channel", ["other:room", "chatroom:x", "CHAT:x", "news"])
def test_a_namespace_the_server_does_not_serve_is_refused_by_name(channel: str) -> None:
    """"news" has no namespace: the default one ("") is served only when listed."""
    pair = connected(namespaces={"chat": Namespace()})
    sub, pub = pair.subscribe(channel), pair.publish(channel, 1)
    pair.pump()
    for waiter in (sub, pub):
        assert waiter.error.code == p.ERR_UNKNOWN_NAMESPACE
        named = repr(namespace_of(channel)) if ":" in channel else "without a namespace"
        assert named in str(waiter.error) and "'chat'" in str(waiter.error)
    assert pair.counters.get(Counter.UNKNOWN_NAMESPACE) == 2
    assert pair.registry.history_of(channel) == []
    assert pair.registry.channels_of(pair.conn.conn_id) == []  # type: ignore[union-attr]


def test_the_default_namespace_serves_channels_without_a_colon_when_listed() -> None:
    pair = connected(namespaces={"": {}, "chat": {}})
    assert outcome(pair, pair.subscribe("news")) == "ok"
    assert outcome(pair, pair.publish("news", 1)) == "ok"
    assert outcome(pair, pair.subscribe("chat:x")) == "ok"
    assert outcome(pair, pair.subscribe("other:x")) == p.ERR_UNKNOWN_NAMESPACE


def test_publish_by_subscribers_only() -> None:
    pair = connected(namespaces={"room": Namespace(publish="subscribers")})
    assert outcome(pair, pair.publish("room:1", "before")) == p.ERR_FORBIDDEN
    assert outcome(pair, pair.subscribe("room:1")) == "ok"
    assert outcome(pair, pair.publish("room:1", "member")) == "ok"
    assert outcome(pair, pair.publish("room:2", "not a member there")) == p.ERR_FORBIDDEN
    pair.send(pair.client.packer.encode(p.EV_UNSUBSCRIBE, {p.K_CHANNEL: "room:1"}))
    pair.pump()
    assert outcome(pair, pair.publish("room:1", "after leaving")) == p.ERR_FORBIDDEN
    assert [m.data for m in pair.messages()] == ["member"]
    assert pair.counters.get(Counter.FORBIDDEN) == 3


def test_server_only_namespaces_refuse_every_client_but_the_server_publishes() -> None:
    pair = connected(authenticated=True, namespaces={
        "feed": Namespace(publish="server"), "internal": Namespace(subscribe="server", publish="server")})
    assert outcome(pair, pair.subscribe("feed:prices")) == "ok"
    err = pair.publish("feed:prices", 1)
    assert outcome(pair, err) == p.ERR_FORBIDDEN and "server only" in str(err.error)
    assert outcome(pair, pair.subscribe("internal:jobs")) == p.ERR_FORBIDDEN
    # the server's own publish passes no gate
    published = pair.side.hub.publish("feed:prices", '"from the server"', None, None)
    pair.pump()
    assert published.offset == 1
    assert [m.data for m in pair.messages()] == ["from the server"]


def test_authenticated_only_namespaces() -> None:
    policy = {"namespaces": {"private": Namespace(subscribe="authenticated", publish="authenticated")}}
    anonymous = connected(**policy)
    assert outcome(anonymous, anonymous.subscribe("private:x")) == p.ERR_FORBIDDEN
    assert outcome(anonymous, anonymous.publish("private:x", 1)) == p.ERR_FORBIDDEN
    known = anonymous.another("c2")
    known.connect("alice", authenticated=True)
    assert outcome(known, known.subscribe("private:x")) == "ok"
    assert outcome(known, known.publish("private:x", 1)) == "ok"


def test_a_namespace_authorize_hook_decides_its_channels_instead_of_the_servers() -> None:
    calls: List[tuple] = []

    def server_wide(conn: Any, action: str, channel: str) -> bool:
        calls.append(("server", action, channel))
        return False

    def rooms(conn: Any, action: str, channel: str) -> bool:
        calls.append(("rooms", action, channel))
        return channel == "room:open"

    pair = connected(authorize=server_wide, namespaces={"room": Namespace(authorize=rooms), "": {}})
    assert outcome(pair, pair.subscribe("room:open")) == "ok"
    assert outcome(pair, pair.subscribe("room:closed")) == p.ERR_FORBIDDEN
    assert outcome(pair, pair.subscribe("lobby")) == p.ERR_FORBIDDEN  # the server's hook
    assert calls == [("rooms", "subscribe", "room:open"), ("rooms", "subscribe", "room:closed"),
                     ("server", "subscribe", "lobby")]
    # a namespace hook is application code: channel operations run where handlers run
    assert pair.dispatcher.app_code_from is FrameKind.CHANNEL


def test_a_namespace_hook_that_raises_forbids_and_is_counted() -> None:
    def broken(conn: Any, action: str, channel: str) -> bool:
        raise RuntimeError("policy store down")

    pair = connected(namespaces={"x": Namespace(authorize=broken)})
    assert outcome(pair, pair.publish("x:1", 1)) == p.ERR_FORBIDDEN
    assert pair.counters.get(Counter.HOOK_ERRORS) == 1


def test_policies_run_before_the_hook_and_the_hook_cannot_widen_them() -> None:
    calls: List[str] = []
    pair = connected(namespaces={"feed": Namespace(publish="server",
                                                   authorize=lambda c, a, ch: calls.append(a) or True)})
    assert outcome(pair, pair.publish("feed:x", 1)) == p.ERR_FORBIDDEN
    assert outcome(pair, pair.subscribe("feed:x")) == "ok"
    assert calls == ["subscribe"]


def test_settings_are_checked_with_messages_that_say_what_to_fix() -> None:
    with pytest.raises(ValueError, match="publish must be one of"):
        Namespace(publish="everyone")
    with pytest.raises(ValueError, match="subscribe must be one of"):
        Namespace(subscribe="subscribers")  # a publish policy only
    with pytest.raises(TypeError, match="authorize must be a callable"):
        Namespace(authorize="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="without ':'"):
        Namespaces({"a:b": Namespace()})
    with pytest.raises(ValueError, match="unknown option"):
        Namespaces({"a": {"publsh": "server"}})
    with pytest.raises(TypeError, match="dict of name"):
        Server(namespaces=["chat"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="a Namespace or a dict"):
        Server(namespaces={"chat": "open"})  # type: ignore[dict-item]


def test_a_plain_dict_of_options_equals_the_namespace() -> None:
    srv = Server(namespaces={"chat": {"publish": "subscribers"}, "": {}})
    assert srv.settings.namespaces.by_name == {"chat": Namespace(publish="subscribers"), "": Namespace()}
    assert p.FEATURE_NAMESPACES in srv._rules.features


def test_a_namespace_keeps_its_own_smaller_history_and_ttl() -> None:
    """history_size/history_ttl_s per namespace: what a late subscriber recovers with
    ``since`` and what expires follow the namespace; other namespaces keep the server's."""
    pair = connected(namespaces={"chat": Namespace(history_size=2, history_ttl_s=10.0),
                                 "log": {"history_size": 0}, "": {}})
    for channel in ("chat:a", "log:a", "news"):
        pair.subscribe(channel)
        for i in range(5):
            pair.publish(channel, i)
    pair.pump()
    assert [o for o, _ in pair.registry.history_of("chat:a")] == [4, 5]
    assert pair.registry.history_of("log:a") == []
    assert [o for o, _ in pair.registry.history_of("news")] == [1, 2, 3, 4, 5]
    pair.now += 11.0  # past the chat namespace's ttl, within the server's
    assert pair.registry.history_of("chat:a") == []
    assert [o for o, _ in pair.registry.history_of("news")] == [1, 2, 3, 4, 5]


def test_a_namespace_history_larger_than_the_servers_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="namespace 'chat': history_size 5000 exceeds"):
        Server(history_size=1000, namespaces={"chat": Namespace(history_size=5000)})
    with pytest.raises(ValueError, match="history_ttl_s 900.0 exceeds"):
        Server(history_ttl_s=300, namespaces={"chat": {"history_ttl_s": 900.0}})
    for bad in ({"history_size": -1}, {"history_size": 1.5}, {"history_ttl_s": 0},
                {"history_ttl_s": float("inf")}, {"history_size": True}):
        with pytest.raises(ValueError, match="Namespace history"):
            Namespace(**bad)

"""The shared protocol vectors (tests/data/protocol_vectors.json) run against the Python
client's sans-I/O :class:`~sente_lite.session.ClientSession`, one test per vector.

The same file is run against sente_lite.js by tests/js/vectors.test.mjs; the format is
described in docs/protocol.md ("Appendix: protocol vectors"). This runner plays the part
of :class:`sente_lite.Client` (the adapter): it hands received frames to the session,
writes the frames it gives back, runs the vector's handlers, and after each handshake
re-subscribes and resends unacknowledged publishes as the client does.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import msgpack
import pytest

from sente_lite.wire import packers
from sente_lite.wire import protocol as p
from sente_lite import session as ss
from support import TESTS

VECTORS_PATH = TESTS / "data" / "protocol_vectors.json"
DATA: Dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
DEFS: Dict[str, Any] = DATA["defs"]
COUNTERS: Dict[str, str] = {name: names["python"] for name, names in DATA["counters"].items()}
#: Event types whose order relative to each other is checked (the application's stream);
#: answers to calls ("reply", "error") are checked in order among themselves.
DELIVERIES = ("status", "event", "channel-msg", "recovery", "presence")
ANY_TYPES = {"string": (str,), "number": (int, float), "integer": (int,), "boolean": (bool,),
             "array": (list,), "object": (dict,)}
TEMPLATE = re.compile(r"\{\{([A-Za-z0-9_-]+)\}\}")


class Mismatch(AssertionError):
    pass


# -- patterns -------------------------------------------------------------------------
def match(pat: Any, val: Any, caps: Dict[str, Any], where: str) -> None:
    """Check ``val`` against the vector pattern ``pat`` (placeholders: $any, $capture, $ref;
    ``{"$bin": hex}``: bytes)."""
    if isinstance(pat, dict) and "$bin" in pat:
        if type(val) is not bytes or val.hex() != pat["$bin"]:
            raise Mismatch(f"{where}: expected the bytes {pat['$bin']!r}, got {val!r}")
        return
    if isinstance(pat, dict) and "$any" in pat:
        kind = pat["$any"]
        if kind is not None and (not isinstance(val, ANY_TYPES[kind])
                                 or (kind in ("number", "integer") and isinstance(val, bool))):
            raise Mismatch(f"{where}: expected any {kind}, got {val!r}")
        if "not_contains" in pat and pat["not_contains"] in str(val):
            raise Mismatch(f"{where}: {val!r} must not contain {pat['not_contains']!r}")
        if "not" in pat:
            try:
                match(pat["not"], val, caps, where)
            except Mismatch:
                return
            raise Mismatch(f"{where}: {val!r} must not match {pat['not']!r}")
        return
    if isinstance(pat, dict) and "$capture" in pat:
        name = pat["$capture"]
        if name in caps and caps[name] != val:
            raise Mismatch(f"{where}: {name} was {caps[name]!r}, now {val!r}")
        caps[name] = val
        return
    if isinstance(pat, dict) and "$ref" in pat:
        pat = caps[pat["$ref"]]
    if isinstance(pat, dict):
        if not isinstance(val, dict) or set(val) != set(pat):
            raise Mismatch(f"{where}: expected {pat!r}, got {val!r}")
        for key in pat:
            match(pat[key], val[key], caps, f"{where}.{key}")
    elif isinstance(pat, list):
        if not isinstance(val, list) or len(val) != len(pat):
            raise Mismatch(f"{where}: expected {pat!r}, got {val!r}")
        for i, (a, b) in enumerate(zip(pat, val)):
            match(a, b, caps, f"{where}[{i}]")
    elif pat != val or isinstance(pat, bool) != isinstance(val, bool):
        raise Mismatch(f"{where}: expected {pat!r}, got {val!r}")


def match_list(pats: List[Any], vals: List[Any], caps: Dict[str, Any], where: str) -> None:
    if len(pats) != len(vals):
        raise Mismatch(f"{where}: expected {len(pats)} items {pats!r}, got {len(vals)}: {vals!r}")
    for i, (pat, val) in enumerate(zip(pats, vals)):
        match(pat, val, caps, f"{where}[{i}]")


def resolve(value: Any) -> Any:
    return DEFS[value["$def"]] if isinstance(value, dict) and "$def" in value else value


def binify(value: Any) -> Any:
    """``{"$bin": hex}`` in a vector's value replaced by those bytes."""
    if isinstance(value, list):
        return [binify(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"$bin"}:
            return bytes.fromhex(value["$bin"])
        return {k: binify(v) for k, v in value.items()}
    return value


def fill(value: Any, caps: Dict[str, Any]) -> Any:
    """``{{name}}`` in strings replaced by the captured value."""
    if isinstance(value, str):
        return TEMPLATE.sub(lambda m: str(caps[m.group(1)]), value)
    if isinstance(value, list):
        return [fill(v, caps) for v in value]
    if isinstance(value, dict):
        return {k: fill(v, caps) for k, v in value.items()}
    return value


def wire_text(value: Any, caps: Dict[str, Any]) -> str:
    """The exact text of a ``recv`` step."""
    value = resolve(value)
    if isinstance(value, str):
        return fill(value, caps)
    if isinstance(value, dict) and "$nest" in value:
        spec = value["$nest"]
        inner = spec["levels"] - 1
        return f'["{spec["event"]}",' + "[" * inner + "]" * inner + "]"
    return json.dumps(fill(value, caps), separators=(",", ":"), ensure_ascii=False)


# -- the driver -------------------------------------------------------------------------
class _Waiter:
    def __init__(self, call: str, kind: str) -> None:
        self.call, self.kind = call, kind

    def done(self) -> bool:
        return False


class Driver:
    """The Python client's session, with this runner as its adapter."""

    def __init__(self, packer: str) -> None:
        self.session = ss.ClientSession("vector-client", packer=packers.get(packer))
        self.binary = self.session.packer.binary
        self.now = 0.0
        self.handlers: Dict[str, Dict[str, Any]] = {}
        self.sent: List[Any] = []
        self.events: List[Dict[str, Any]] = []
        self.session.connection_opened(self.now)

    # -- what the application does
    def call(self, step: Dict[str, Any]) -> None:
        s, what = self.session, step["call"]
        if what == "on":
            self.handlers[step["event"]] = step
        elif what == "send":
            self.write(s.packer.encode(step["event"], binify(step.get("data"))))
        elif what == "request":
            self.write_request(s.request(step["event"], binify(step.get("data")), _Waiter(step["id"], "request"),
                                  self.now, 5.0))
        elif what == "subscribe":
            since = ss.parse_since(step["since"]) if "since" in step else None
            if s.add_subscription(step["channel"], since):
                self.write_request(s.subscribe_frame(step["channel"], _Waiter(step["id"], "subscribe"),
                                              self.now, 5.0))
        elif what == "history":
            body = ss.history_data(step["channel"], step.get("limit"), step.get("since"),
                                   bool(step.get("reverse")), step.get("page"))
            self.write_request(s.request(p.EV_HISTORY, body, _Waiter(step["id"], "history"), self.now, 5.0))
        elif what == "unsubscribe":
            s.drop_subscription(step["channel"])
            self.write_request(s.request(p.EV_UNSUBSCRIBE, {p.K_CHANNEL: step["channel"]},
                                  _Waiter(step["id"], "unsubscribe"), self.now, 5.0))
        elif what == "publish":
            waiter = _Waiter(step["id"], "publish") if step.get("ack") else None
            self.write_request(s.publish(step["channel"], binify(step.get("data")), bool(step.get("exclude_sender")),
                                         waiter, self.now))
        else:
            raise ValueError(f"unknown call {what!r}")

    def write_request(self, cb_and_frame: Tuple[str, bytes]) -> None:
        self.write(cb_and_frame[1], cb_and_frame[0])

    def write(self, frame: bytes, cb_id: Optional[str] = None) -> None:
        assert self.session.status == ss.CONNECTED, "vectors only send while connected"
        self.sent.append(msgpack.unpackb(frame) if self.binary else json.loads(frame))
        if cb_id is not None:
            self.session.mark_sent(cb_id)

    # -- the connection
    def receive(self, raw: Any, binary: bool) -> None:
        received = self.session.receive(raw, self.now, binary)
        for frame in received.frames:
            self.write(frame)
        for ev in received.events:
            self._event(ev)

    def _event(self, ev: Any) -> None:
        kind = type(ev)
        if isinstance(ev, str):
            self.events.append({"type": "status", "status": ev})
        elif kind is ss.Handshake:
            self._after_handshake()
        elif kind is ss.EventRequest:
            self._run_handler(ev)
        elif kind is ss.ChannelMessage:
            self.events.append({"type": "channel-msg", "channel": ev.channel_id, "data": ev.data,
                                "from": ev.from_uid, "offset": ev.offset, "epoch": ev.epoch})
        elif kind is ss.PresenceChange:
            self.events.append({"type": "presence", "channel": ev.channel_id, "joined": ev.joined,
                                "conn": ev.member[p.K_CONN_ID]})
        elif kind is ss.Subscribed and ev.recovery is not None:
            r = ev.recovery
            out = {"type": "recovery", "channel": r.channel_id, "recovered": r.recovered,
                   "offset": r.offset, "epoch": r.epoch}
            if r.reason is not None:
                out["reason"] = r.reason
            self.events.append(out)
        elif kind is ss.ReplyArrived or kind is ss.PublishAnswered:
            self._answer(ev.waiter, ev.error, ev.result if kind is ss.ReplyArrived else ev.reply)

    def _answer(self, waiter: Optional[_Waiter], error: Optional[BaseException], value: Any) -> None:
        if waiter is None:
            return
        if error is not None:
            self.events.append({"type": "error", "call": waiter.call,
                                "code": getattr(error, "code", type(error).__name__)})
        elif waiter.kind == "unsubscribe":
            self.events.append({"type": "reply", "call": waiter.call})
        else:
            self.events.append({"type": "reply", "call": waiter.call, "value": value})

    def _run_handler(self, ev: ss.EventRequest) -> None:
        s, spec = self.session, self.handlers.get(ev.event)
        if spec is None:
            frames = s.no_handler(ev.event, ev.cb_id)
        else:
            self.events.append({"type": "event", "event": ev.event, "data": ev.data})
            if "raise" in spec:
                frames = s.handler_failed(ev.event, ev.cb_id, ValueError(spec["raise"]))
            else:
                frames = [] if ev.cb_id is None else [s.reply(ev.event, ev.cb_id, binify(spec.get("reply")))]
        for frame in frames:
            self.write(frame)

    def _after_handshake(self) -> None:
        """As :meth:`sente_lite.Client._after_handshake`: re-subscribe, then resend publishes."""
        for channel_id in self.session.subscriptions():
            self.write_request(self.session.subscribe_frame(channel_id, None, self.now, 5.0))
        for cb_id, frame in self.session.resend_unacked():
            self.write(frame, cb_id)

    def drop(self) -> None:
        failed = self.session.connection_lost()
        status = self.session.transition(ss.ON_LOST)
        if status is not None:
            self.events.append({"type": "status", "status": status})
        for waiter, exc in failed:
            self._answer(waiter, exc, None)

    def open(self) -> None:
        self.session.connection_opened(self.now)

    # -- what is observed
    def state(self) -> Dict[str, Any]:
        s, hs = self.session, self.session.handshake_info
        info = hs.info if hs is not None else {}
        return {"status": s.status, "uid": hs and hs.uid, "csrf_token": hs and hs.csrf_token,
                "first": hs and hs.first, "conn_id": info.get("conn-id"),
                "server_id": info.get("server-id"), "features": info.get(p.K_FEATURES),
                "heartbeat_ms": round(s.heartbeat_s * 1000), "subscriptions": s.subscriptions(),
                "server_subscriptions": s.server_subscriptions()}

    def counter(self, name: str) -> int:
        return self.session.counts.get(COUNTERS[name], 0)


def normalize(frame: Any) -> Any:
    """``[event, null]`` and ``[event]`` are the same frame (section 2)."""
    return [frame[0]] if len(frame) == 2 and frame[1] is None else list(frame)


def split(events: List[Dict[str, Any]]) -> Tuple[list, list]:
    return ([e for e in events if e["type"] in DELIVERIES],
            [e for e in events if e["type"] not in DELIVERIES])


def check_outputs(d: Driver, step: Dict[str, Any], caps: Dict[str, Any], where: str) -> None:
    if "expect_sent" in step:
        sent, d.sent = [normalize(list(f)) for f in d.sent], []
        match_list(step["expect_sent"], sent, caps, f"{where} sent")
    if "expect_events" in step:
        (want_d, want_a), (got_d, got_a) = split(step["expect_events"]), split(d.events)
        d.events = []
        match_list(want_d, got_d, caps, f"{where} events")
        match_list(want_a, got_a, caps, f"{where} answers")
    if "expect_counters" in step:
        got = {name: d.counter(name) for name in step["expect_counters"]}
        match(step["expect_counters"], got, caps, f"{where} counters")
    if "expect_state" in step:
        state = d.state()
        match(step["expect_state"], {k: state[k] for k in step["expect_state"]}, caps, f"{where} state")


def run_vector(vector: Dict[str, Any]) -> None:
    d = Driver(vector.get("packer", "json"))
    caps: Dict[str, Any] = {}
    for i, step in enumerate(vector["steps"]):
        where = f"step {i}"
        if "recv" in step:
            text = wire_text(step["recv"], caps)
            d.receive(text.encode("utf-8") if d.binary else text, False)
        elif "recv_binary" in step:
            d.receive(bytes.fromhex(resolve(step["recv_binary"])), True)
        elif "recv_msgpack" in step:
            d.receive(msgpack.packb(binify(fill(resolve(step["recv_msgpack"]), caps))), True)
        elif "call" in step:
            d.call(step)
        elif "drop" in step:
            d.drop()
        elif "open" in step:
            d.open()
        check_outputs(d, step, caps, where)
    leftover = [normalize(list(f)) for f in d.sent]
    if leftover or d.events:
        raise Mismatch(f"end: not expected: sent {leftover!r}, events {d.events!r}")


def _params() -> List[Any]:
    out = []
    for vector in DATA["vectors"]:
        reason = vector.get("skip", {}).get("python")
        marks = [pytest.mark.skip(reason=f"python client: {reason}")] if reason else []
        out.append(pytest.param(vector, id=vector["name"], marks=marks))
    return out


@pytest.mark.parametrize("vector", _params())
def test_vector(vector: Dict[str, Any]) -> None:
    run_vector(vector)


def test_vector_file_is_well_formed() -> None:
    """Unique names, a doc per vector, known step kinds, every counter named for both runners."""
    names = [v["name"] for v in DATA["vectors"]]
    assert len(names) == len(set(names)), "vector names must be unique"
    kinds = {"recv", "recv_binary", "recv_msgpack", "call", "drop", "open", "expect_sent",
             "expect_events", "expect_counters", "expect_state"}
    for vector in DATA["vectors"]:
        assert vector.get("doc"), f"{vector['name']}: needs a doc"
        assert set(vector.get("skip", {})) <= {"python", "js"}, vector["name"]
        for step in vector["steps"]:
            assert set(step) & kinds, f"{vector['name']}: unknown step {step}"
            for name in step.get("expect_counters", {}):
                assert name in COUNTERS, f"{vector['name']}: counter {name} has no mapping"
    assert all(set(n) == {"python", "js"} for n in DATA["counters"].values())


def mutations(vector: Dict[str, Any]) -> List[Tuple[str, Dict[str, Any]]]:
    """Copies of ``vector`` with one expectation changed: the last counter check with
    every value + 1, the last non-empty events check and sent check each one item short."""
    out = []
    for key in ("expect_counters", "expect_events", "expect_sent"):
        steps = [i for i, st in enumerate(vector["steps"]) if st.get(key)]
        if not steps:
            continue
        changed = json.loads(json.dumps(vector))
        step = changed["steps"][steps[-1]]
        if key == "expect_counters":
            step[key] = {k: v + 1 for k, v in step[key].items()}
        else:
            step[key] = step[key][:-1]
        out.append((key, changed))
    return out


@pytest.mark.parametrize("vector", [v for v in DATA["vectors"] if "python" not in v.get("skip", {})],
                         ids=lambda v: v["name"])
def test_runner_fails_on_a_changed_expectation(vector: Dict[str, Any]) -> None:
    """Every vector fails when one of its expectations is changed: the runner checks
    what the vector says (the Node runner does the same)."""
    changed = mutations(vector)
    assert changed, f"{vector['name']} expects nothing"
    for key, mutant in changed:
        with pytest.raises(Mismatch):
            run_vector(mutant)

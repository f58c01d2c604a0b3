"""Message flow tracing: traceparent on deliveries, acks, replies and log lines; OTel spans."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from typing import Any, Callable, List, Union

import pytest

from sente_lite import Client, Server
from sente_lite import session as ss
from sente_lite.wire import tracing
from sente_lite.testing.pair import SessionPair
from support import AsgiFace, Recorder, ThreadedFace, wait_until

#: The tests taking ``make_face`` run on both faces: the threaded Server and the ASGI App
#: under uvicorn.
Face = Union[ThreadedFace, AsgiFace]

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def test_only_valid_version_00_traceparents_count() -> None:
    assert tracing.valid(TP) == TP
    for bad in (None, 7, "", TP.upper(), TP[:-1], "01" + TP[2:], TP.replace(TRACE_ID, "0" * 32),
                TP.replace("00f067aa0ba902b7", "0" * 16), TP + "-extra", " " + TP[1:]):
        assert tracing.valid(bad) is None, bad
    fresh = tracing.new_traceparent()
    assert tracing.valid(fresh) == fresh and fresh != tracing.new_traceparent()


def test_a_traced_publish_keeps_its_id_on_every_delivery_and_the_ack() -> None:
    pair = SessionPair(ss.ServerRules(rate_limit=None))
    pair.connect()
    pair.subscribe("ch")
    pair.pump()
    waiter = ss_publish(pair, "ch", {"x": 1}, TP)
    untraced = ss_publish(pair, "ch", {"x": 2}, None)
    pair.pump()
    assert [m.traceparent for m in pair.messages()] == [TP, None]
    assert waiter.result["traceparent"] == TP and "traceparent" not in untraced.result


def ss_publish(pair: SessionPair, channel: str, data: Any, tp: Any) -> Any:
    from sente_lite.testing.pair import _Waiter
    waiter = _Waiter()
    cb_id, frame = pair.client.publish(channel, data, False, waiter, pair.now, tp)
    pair.send(frame, cb_id)
    return waiter


def test_ids_flow_and_log_over_real_sockets(make_face: Callable[..., Face],
                                            make_client: Callable[..., Client],
                                            caplog: pytest.LogCaptureFixture) -> None:
    srv = make_face()
    seen: List[Any] = []

    @srv.on("app/work")
    def work(conn: Any, data: Any) -> Any:
        seen.append(tracing.current())
        if data.get("fail"):
            raise RuntimeError("boom")
        return {"done": True}

    c = make_client(srv.url)
    got = Recorder()
    c.subscribe("ch", got)
    ack = c.publish("ch", {"n": 1}, ack=True, traceparent=TP)
    assert ack["traceparent"] == TP  # type: ignore[index]
    assert got.wait_count(1)[0].traceparent == TP
    assert c.request("app/work", {}, traceparent=TP) == {"done": True, "traceparent": TP}
    assert seen == [TP]
    with caplog.at_level(logging.ERROR, logger="sente_lite"):
        with pytest.raises(Exception):
            c.request("app/work", {"fail": True}, traceparent=TP)
    assert f"trace={TRACE_ID}" in caplog.text
    assert c.request("app/work", {}) == {"done": True}  # untraced: nothing added
    with pytest.raises(ValueError):
        c.publish("ch", 1, traceparent="not-a-traceparent")
    with pytest.raises(ValueError):
        c.request("app/work", [1], traceparent=TP)  # a list cannot carry it


def test_structured_refusal_lines_name_the_trace(make_face: Callable[..., Face],
                                                 make_client: Callable[..., Client],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    srv = make_face(authorize=lambda conn, action, channel: channel != "secret")
    c = make_client(srv.url)
    with caplog.at_level(logging.INFO, logger="sente_lite"):
        with pytest.raises(Exception):
            c.publish("secret", 1, ack=True, traceparent=TP)
    line = next(r.getMessage() for r in caplog.records if "refused-publish" in r.getMessage())
    assert f"trace={TRACE_ID}" in line


def test_sub_and_pub_trace_on_the_command_line(make_face: Callable[..., Face]) -> None:
    srv = make_face()
    sub = subprocess.Popen([sys.executable, "-m", "sente_lite.cli", "sub", "ch", "--url", srv.url,
                            "--trace"], stdout=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: srv.channels.subscriber_count("ch") == 1, what="sub subscribed")
        out = subprocess.run([sys.executable, "-m", "sente_lite.cli", "pub", "ch", '{"a": 1}',
                              "--url", srv.url, "--trace"], capture_output=True, text=True,
                             timeout=30)
        reply = json.loads(out.stdout)
        assert tracing.valid(reply["traceparent"])
        line = json.loads(sub.stdout.readline())  # type: ignore[union-attr]
        assert line["traceparent"] == reply["traceparent"]
        assert line["trace-id"] == tracing.trace_id(reply["traceparent"])
    finally:
        sub.terminate()
        sub.wait(10)
        sub.stdout.close()  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def span_exporter() -> Any:
    """An in-memory span exporter behind the process's tracer provider, which can be set
    only once per process (so once for every face)."""
    sdk = pytest.importorskip("opentelemetry.sdk.trace", reason="opentelemetry-sdk not installed")
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # once per process; a test process has no other
    return exporter


def test_opentelemetry_spans_are_children_of_the_traceparent(
        make_face: Callable[..., Face], make_client: Callable[..., Client], span_exporter: Any) -> None:
    exporter = span_exporter
    exporter.clear()
    srv = make_face(tracing=True)
    srv.on("app/work", lambda conn, data: {"ok": 1})
    a, b = make_client(srv.url), make_client(srv.url)
    for cl in (a, b):
        cl.subscribe("ch")
    a.publish("ch", 1, ack=True, traceparent=TP)
    a.request("app/work", {}, traceparent=TP)
    a.publish("ch", 2, ack=True)  # untraced: no span
    wait_until(lambda: len(exporter.get_finished_spans()) >= 6, what="spans")
    spans = exporter.get_finished_spans()
    names = sorted(s.name for s in spans)
    assert names == ["deliver", "deliver", "fan-out", "publish", "reply", "request"]
    assert {format(s.context.trace_id, "032x") for s in spans} == {TRACE_ID}
    fan_out = next(s for s in spans if s.name == "fan-out")
    assert fan_out.attributes["sente_lite.delivered"] == 2

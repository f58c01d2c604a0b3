"""``GET /metrics``: Prometheus text from a per-server registry, or 501 without the extra."""

from __future__ import annotations

import sys
from typing import Dict

import pytest

from sente_lite.core.metrics import MISSING_EXTRA_MESSAGE, LatencyHistogram
from sente_lite.testing.abuse import RawPeer, http_get
from support import wait_until


def scrape(srv) -> Dict[str, float]:
    """name{labels} -> value of every sample line."""
    answer = http_get(srv.host, srv.port, "/metrics")
    assert answer.status == 200, answer.body
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for line in answer.body.decode("utf-8").splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_metrics_endpoint_exports_the_servers_counters(make_face, make_client):
    pytest.importorskip("prometheus_client")
    srv = make_face()
    c = make_client(srv.url)
    c.subscribe("news")
    for i in range(3):
        c.publish("news", i, ack=True)
    with RawPeer(srv.host, srv.port) as peer:
        assert peer.upgrade(headers=[("Origin", "https://evil.example")]).status == 403
    with RawPeer(srv.host, srv.port) as peer:
        assert peer.upgrade("/nowhere").status == 404
    m = scrape(srv)
    assert m["sente_lite_connections"] == 1
    assert m["sente_lite_connections_opened_total"] == 1
    assert m['sente_lite_handshakes_refused_total{reason="origin"}'] == 1
    assert m['sente_lite_handshakes_refused_total{reason="not-found"}'] == 1
    assert m["sente_lite_publishes_total"] == 3 and m["sente_lite_deliveries_total"] == 3
    assert m["sente_lite_active_channels"] == 1 and m["sente_lite_subscriptions"] == 1
    assert m["sente_lite_frames_in_total"] >= 4 and m["sente_lite_bytes_out_total"] > 0
    assert m['sente_lite_limit_hits_total{limit="rate_limited"}'] == 0
    # 1 subscribe + 3 publishes were requests: each observed once by the latency histogram
    assert m["sente_lite_request_latency_seconds_count"] == 4
    assert m['sente_lite_request_latency_seconds_bucket{le="+Inf"}'] == 4
    assert m["sente_lite_request_latency_seconds_sum"] > 0
    c.close()
    # the close is counted last, after the connection left the list
    wait_until(lambda: srv.stats()["closes_by_code"].get(1000) == 1, what="client's close counted")
    m = scrape(srv)
    assert m['sente_lite_connections_closed_total{code="1000"}'] == 1
    assert m["sente_lite_connections"] == 0


def test_two_servers_in_one_process_keep_their_own_metrics(make_face, make_client):
    pytest.importorskip("prometheus_client")
    a, b = make_face(), make_face()
    make_client(a.url)
    make_client(a.url)
    make_client(b.url)
    wait_until(lambda: a.stats()["connections"] == 2 and b.stats()["connections"] == 1,
               what="both servers list their connections")
    assert scrape(a)["sente_lite_connections"] == 2
    assert scrape(b)["sente_lite_connections"] == 1
    assert scrape(a)["sente_lite_connections"] == 2  # scraping twice registers nothing twice


def test_metrics_answer_501_naming_the_extra_when_prometheus_client_is_absent(make_face, monkeypatch):
    for name in [m for m in sys.modules if m == "prometheus_client" or m.startswith("prometheus_client.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import now raises ImportError
    srv = make_face()
    answer = http_get(srv.host, srv.port, "/metrics")
    assert answer.status == 501
    assert b"pip install sente-lite[metrics]" in answer.body
    assert answer.body.decode("utf-8") == MISSING_EXTRA_MESSAGE
    assert http_get(srv.host, srv.port, "/health").status == 200  # the rest serves on


def test_metrics_can_be_turned_off(make_face):
    srv = make_face(expose_metrics=False)
    assert http_get(srv.host, srv.port, "/metrics").status == 404


def test_latency_histogram_is_cumulative():
    h = LatencyHistogram(buckets=(0.01, 0.1))
    for s in (0.005, 0.05, 0.05, 3.0):
        h.observe(s)
    buckets, count, total = h.snapshot()
    assert buckets == [(0.01, 1), (0.1, 3), (float("inf"), 4)]
    assert count == 4 and abs(total - 3.105) < 1e-9
    assert h.summary()["count"] == 4

"""Operator metrics: a request-latency histogram and ``GET /metrics`` in Prometheus text format.

The counters themselves live in :meth:`sente_lite.Server.stats` (one source of
truth); a scrape reads them through a collector registered in a
:class:`prometheus_client.CollectorRegistry` of that server only, so several
servers in one process never collide. ``prometheus-client`` is optional
(``pip install sente-lite[metrics]``); without it ``/metrics`` answers 501 and
says so, and everything else works unchanged.
"""

from __future__ import annotations

import bisect
import threading
from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple

# LIMIT_COUNTERS / ERROR_COUNTERS: exported as sente_lite_limit_hits_total{limit=...}
# and sente_lite_errors_total{kind=...} (every sente_lite.counters.Counter of that kind).
from ..counters import ERROR_COUNTERS, LIMIT_COUNTERS

#: Upper bounds (seconds) of the request-latency histogram's buckets.
LATENCY_BUCKETS_S: Tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                        0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: The body of ``/metrics`` when prometheus-client is not installed.
MISSING_EXTRA_MESSAGE = ("/metrics needs prometheus-client, which is not installed: "
                         "pip install sente-lite[metrics]\n")
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"



class LatencyHistogram:
    """Thread-safe cumulative histogram of durations in seconds."""

    def __init__(self, buckets: Sequence[float] = LATENCY_BUCKETS_S) -> None:
        self.buckets = tuple(sorted(buckets))
        self._counts = [0] * (len(self.buckets) + 1)  # last slot: above every bound (+Inf)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        """Record one duration."""
        i = bisect.bisect_left(self.buckets, seconds)
        with self._lock:
            self._counts[i] += 1
            self._sum += seconds

    def snapshot(self) -> Tuple[List[Tuple[float, int]], int, float]:
        """(cumulative ``[(upper bound, count)]`` ending with +Inf, count, sum)."""
        with self._lock:
            counts = list(self._counts)
            total_sum = self._sum
        cumulative: List[Tuple[float, int]] = []
        running = 0
        for bound, n in zip(self.buckets + (float("inf"),), counts):
            running += n
            cumulative.append((bound, running))
        return cumulative, running, total_sum

    def summary(self) -> Dict[str, float]:
        """``{"count", "sum_s", "mean_s"}`` for stats()."""
        _, count, total = self.snapshot()
        return {"count": count, "sum_s": round(total, 6),
                "mean_s": round(total / count, 6) if count else 0.0}


def prometheus_available() -> bool:
    """True when prometheus-client can be imported."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


class MetricsExporter:
    """Renders one server's stats as Prometheus text. Built lazily at the first scrape."""

    def __init__(self, stats: Callable[[], Dict[str, Any]], latency: LatencyHistogram) -> None:
        self._stats = stats
        self._latency = latency
        self._registry: Any = None
        self._lock = threading.Lock()

    def render(self) -> Tuple[int, str, bytes]:
        """(HTTP status, content type, body): 200 with the metrics, or 501 without the extra."""
        try:
            from prometheus_client import CollectorRegistry, generate_latest
        except ImportError:
            return 501, "text/plain; charset=utf-8", MISSING_EXTRA_MESSAGE.encode("utf-8")
        with self._lock:
            if self._registry is None:
                registry = CollectorRegistry(auto_describe=False)
                registry.register(_StatsCollector(self._stats, self._latency))
                self._registry = registry
            registry = self._registry
        return 200, PROMETHEUS_CONTENT_TYPE, generate_latest(registry)


class _StatsCollector:
    """A prometheus_client collector reading Server.stats() at every scrape."""

    def __init__(self, stats: Callable[[], Dict[str, Any]], latency: LatencyHistogram) -> None:
        self._stats = stats
        self._latency = latency

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                            HistogramMetricFamily)

        s = self._stats()

        def counter(name: str, doc: str, key: str) -> Any:
            return CounterMetricFamily(f"sente_lite_{name}", doc, value=float(s.get(key, 0)))

        def gauge(name: str, doc: str, key: str) -> Any:
            return GaugeMetricFamily(f"sente_lite_{name}", doc, value=float(s.get(key, 0)))

        yield gauge("connections", "Live WebSocket connections.", "connections")
        yield counter("connections_opened", "Connections that completed the handshake.",
                      "connections_opened")
        closes = CounterMetricFamily("sente_lite_connections_closed",
                                     "Connections ended, by close code.", labels=["code"])
        for code, n in sorted(s.get("closes_by_code", {}).items()):
            closes.add_metric([str(code)], float(n))
        yield closes
        refused = CounterMetricFamily("sente_lite_handshakes_refused",
                                      "Upgrade requests refused, by reason.", labels=["reason"])
        for reason, n in sorted(s.get("handshakes_refused", {}).items()):
            refused.add_metric([reason], float(n))
        yield refused
        yield counter("frames_in", "Frames received.", "frames_in")
        yield counter("frames_out", "Frames sent.", "frames_out")
        yield counter("bytes_in", "Frame bytes received.", "bytes_in")
        yield counter("bytes_out", "Frame bytes sent.", "bytes_out")
        yield counter("publishes", "Channel publishes (clients' and the server's).", "publishes")
        yield counter("deliveries", "Channel messages queued to subscribers.", "deliveries")
        yield counter("queue_overflows", "Outbound queue overflows (closed with 4001).",
                      "slow_consumer_closes")
        yield gauge("queued_bytes", "Bytes waiting in outbound queues.", "queued_bytes")
        yield gauge("channels", "Channels known (with or without subscribers).", "channels")
        yield gauge("active_channels", "Channels with at least one subscriber.", "active_channels")
        yield gauge("subscriptions", "Subscriptions over all connections.", "subscriptions")
        yield gauge("uptime_seconds", "Seconds since the server started.", "uptime_s")
        limits = CounterMetricFamily("sente_lite_limit_hits",
                                     "Times a limit was hit, by limit.", labels=["limit"])
        for key in LIMIT_COUNTERS:
            limits.add_metric([key], float(s.get(key, 0)))
        yield limits
        errors = CounterMetricFamily("sente_lite_errors", "Errors, by kind.", labels=["kind"])
        for key in ERROR_COUNTERS:
            errors.add_metric([key], float(s.get(key, 0)))
        yield errors
        buckets, count, total = self._latency.snapshot()
        hist = HistogramMetricFamily("sente_lite_request_latency_seconds",
                                     "Time from a request's arrival to its reply being queued.")
        hist.add_metric([], [(_bound(b), float(n)) for b, n in buckets], sum_value=total)
        yield hist


def _bound(b: float) -> str:
    return "+Inf" if b == float("inf") else repr(b)


__all__ = ["LatencyHistogram", "MetricsExporter", "prometheus_available", "LATENCY_BUCKETS_S",
           "MISSING_EXTRA_MESSAGE", "LIMIT_COUNTERS", "ERROR_COUNTERS"]

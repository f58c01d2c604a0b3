"""Message flow tracing: W3C ``traceparent`` ids on publishes, requests and their answers.

A publish (in its body) or a request (in its data map) may carry ``"traceparent":
"00-<trace-id>-<parent-id>-<flags>"``. The server keeps it on every delivery of
that publish, on the acknowledgement and on a request's reply map, and names the
trace id on every log line written while handling the frame (``trace=<trace-id>``,
and ``record.trace_id``). An id that is not a valid version-00 traceparent is
ignored (W3C Trace Context 4.3) and counted nowhere: tracing is best effort.

With the ``[otel]`` extra (``opentelemetry-api``), ``Server(tracing=True)`` also
emits OpenTelemetry spans, children of the incoming traceparent: ``publish``,
``fan-out`` (one per publish, with the delivery count), ``deliver`` (one per
subscriber of a traced, sampled publish), ``request`` and ``reply``. Spans go
wherever the application's OpenTelemetry SDK sends them; without an SDK they
cost almost nothing. Without the extra the ids still flow and log.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import secrets
from typing import Any, Dict, Iterator, Optional

from .packers import MissingExtra

TRACEPARENT = "traceparent"
_TRACEPARENT_RE = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
MISSING_OTEL = ("Server(tracing=True) needs OpenTelemetry: pip install 'sente-lite[otel]'")

_current: "contextvars.ContextVar[Optional[str]]" = contextvars.ContextVar(
    "sente_lite_traceparent", default=None)


def valid(value: Any) -> Optional[str]:
    """``value`` when it is a valid version-00 traceparent, else None."""
    if not isinstance(value, str) or len(value) != 55:
        return None
    m = _TRACEPARENT_RE.fullmatch(value)
    if m is None or m.group(1) == _ZERO_TRACE or m.group(2) == _ZERO_SPAN:
        return None
    return value


def of(data: Any) -> Optional[str]:
    """The valid traceparent of a data map, or None."""
    return valid(data.get(TRACEPARENT)) if isinstance(data, dict) else None


def new_traceparent(sampled: bool = True) -> str:
    """A fresh traceparent (random trace id and parent id)."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-{'01' if sampled else '00'}"


def trace_id(traceparent: str) -> str:
    """The trace-id part of a valid traceparent."""
    return traceparent[3:35]


def current() -> Optional[str]:
    """The traceparent of the frame being handled on this thread, if any."""
    return _current.get()


@contextlib.contextmanager
def active(traceparent: Optional[str]) -> Iterator[None]:
    """Make ``traceparent`` current (for log lines) while the block runs."""
    if traceparent is None:
        yield
        return
    token = _current.set(traceparent)
    try:
        yield
    finally:
        _current.reset(token)


def log_suffix() -> str:
    """`` trace=<trace-id>`` while a traced frame is handled, else empty."""
    tp = _current.get()
    return f" trace={trace_id(tp)}" if tp is not None else ""


class TraceIdFilter(logging.Filter):
    """Adds ``record.trace_id`` (``-`` when none) to every record it sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        tp = _current.get()
        record.trace_id = trace_id(tp) if tp is not None else "-"
        return True


class Spans:
    """OpenTelemetry spans for traced messages, or nothing when off."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._tracer: Any = None
        self._propagator: Any = None
        if enabled:
            try:
                from opentelemetry import trace
                from opentelemetry.trace.propagation.tracecontext import (
                    TraceContextTextMapPropagator)
            except ImportError:
                raise MissingExtra(MISSING_OTEL) from None
            self._tracer = trace.get_tracer("sente_lite")
            self._propagator = TraceContextTextMapPropagator()
            self._kinds = trace.SpanKind

    @contextlib.contextmanager
    def span(self, name: str, traceparent: Optional[str],
             attributes: Optional[Dict[str, Any]] = None, kind: str = "SERVER") -> Iterator[Any]:
        """A span named ``name``, child of ``traceparent`` (nothing when off or untraced)."""
        if self._tracer is None or traceparent is None:
            yield None
            return
        ctx = self._propagator.extract({TRACEPARENT: traceparent})
        with self._tracer.start_as_current_span(
                name, context=ctx, kind=getattr(self._kinds, kind),
                attributes=attributes or {}) as span:
            yield span

    def event(self, name: str, traceparent: Optional[str],
              attributes: Optional[Dict[str, Any]] = None) -> None:
        """A span that ends at once (one delivery)."""
        with self.span(name, traceparent, attributes, kind="PRODUCER"):
            pass


__all__ = ["valid", "of", "new_traceparent", "trace_id", "current", "active", "log_suffix",
           "TraceIdFilter", "Spans", "TRACEPARENT", "MISSING_OTEL"]

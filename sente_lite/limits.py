"""Abuse limits: defaults of every security limit and the per-connection inbound rate guard.

No I/O and no threads. Each default here is a :class:`sente_lite.Server`
argument of the same name (in lower case); the README's limits table lists them.

The inbound rate of a connection is a token bucket: ``rate_limit`` frames per
second on average, bursts up to ``rate_burst``. A frame over the rate is not
processed: it is answered with a ``rate-limited`` error. A connection that keeps
going over the rate is closed with 1008: every refused frame costs one point of
*patience*, which holds ``max_rate_limited`` points and earns back a tenth of
them per second. So a peer may be refused about ``max_rate_limited`` frames in
any ten seconds before it is closed; a brief burst costs a few points, a flood
that ignores the errors is cut within a fraction of a second.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

#: Live WebSocket connections (upgraded, or admitted and upgrading); one more is refused 503.
DEFAULT_MAX_CONNECTIONS = 1000
#: TCP connections whose HTTP upgrade request has not fully arrived yet; one more is refused 503.
DEFAULT_MAX_PENDING_HANDSHAKES = 128
#: Channels one connection may be subscribed to at once; one more is ``limit-exceeded``.
DEFAULT_MAX_SUBSCRIPTIONS_PER_CONN = 1000
#: Inbound frames per second per connection (token bucket rate); None turns the limit off.
DEFAULT_RATE_LIMIT = 10_000.0
#: Rate-limited frames a connection may accumulate (draining at a tenth per second) before 1008.
DEFAULT_MAX_RATE_LIMITED = 1000
#: Server-to-client requests awaiting a reply, per connection; one more raises LimitExceeded.
DEFAULT_MAX_OUTSTANDING_REQUESTS = 100
#: How far back the rate guard's patience reaches, in seconds (refill = max / window).
RATE_PATIENCE_WINDOW_S = 10.0


class TokenBucket:
    """A token bucket: ``rate`` tokens per second, at most ``capacity`` stored. Not thread-safe.

    It starts full. ``take()`` removes one token and returns True, or returns
    False when the bucket is empty (it never goes negative).
    """

    __slots__ = ("rate", "capacity", "tokens", "_last", "_clock", "_lock")

    def __init__(self, rate: float, capacity: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or capacity < 1:
            raise ValueError(f"token bucket needs rate > 0 and capacity >= 1, got {rate}, {capacity}")
        self.rate = float(rate)
        self.capacity = float(capacity)
        self.tokens = float(capacity)
        self._clock = clock
        self._last = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        elapsed = now - self._last
        self._last = now
        if elapsed > 0:
            self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)

    def take(self) -> bool:
        """Take one token if there is one."""
        with self._lock:
            self._refill()
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return True
            return False

    def available(self) -> int:
        """Whole tokens in the bucket now (0 while in debt)."""
        with self._lock:
            self._refill()
            return max(0, int(self.tokens))

    def charge(self, n: float) -> None:
        """Remove ``n`` tokens for work already done; the bucket may go into debt, which
        later refills pay back before anything else is let through. Thread-safe."""
        with self._lock:
            self._refill()
            self.tokens -= n


class RateGuard:
    """Inbound rate of one connection (used by its reader thread only).

    :meth:`check` returns ``"ok"`` (process the frame), ``"limited"`` (answer
    ``rate-limited``, drop the frame) or ``"close"`` (the connection kept going
    over its rate: close it with 1008).
    """

    OK = "ok"
    LIMITED = "limited"
    CLOSE = "close"

    __slots__ = ("_bucket", "_patience", "limited")

    def __init__(self, rate: float, burst: Optional[int], max_rate_limited: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._bucket = TokenBucket(rate, burst if burst is not None else max(1.0, 2 * rate), clock)
        self._patience = TokenBucket(max(max_rate_limited, 1) / RATE_PATIENCE_WINDOW_S,
                                     max(max_rate_limited, 1), clock)
        self.limited = 0

    def check(self) -> str:
        """Account one inbound frame and say what to do with it."""
        if self._bucket.take():
            return self.OK
        self.limited += 1
        return self.LIMITED if self._patience.take() else self.CLOSE

    def budget(self) -> int:
        """Frames' worth of work the connection may still cause now (its tokens)."""
        return self._bucket.available()

    def charge(self, frames: int) -> None:
        """Count ``frames`` of work done for the connection (messages replayed to it)
        against its rate, as if it had sent that many frames."""
        self._bucket.charge(frames)


def validate_positive(name: str, value: Optional[float], allow_none: bool = False) -> None:
    """Raise ValueError naming ``name`` unless ``value`` is > 0 (or None when allowed)."""
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        raise ValueError(f"{name} must be > 0{' or None' if allow_none else ''}, got {value!r}")


def validate_milliseconds(name: str, value: object, maximum: float) -> float:
    """Return ``value`` as a float; ValueError naming ``name`` unless it is a number of
    milliseconds from 0 to ``maximum``."""
    if not (isinstance(value, (int, float)) and 0 <= value <= maximum):
        raise ValueError(f"{name} must be a number of milliseconds from 0 to {maximum:g}, "
                         f"got {value!r}")
    return float(value)


__all__ = ["TokenBucket", "RateGuard", "validate_positive", "validate_milliseconds",
           "DEFAULT_MAX_CONNECTIONS", "DEFAULT_MAX_PENDING_HANDSHAKES",
           "DEFAULT_MAX_SUBSCRIPTIONS_PER_CONN", "DEFAULT_RATE_LIMIT", "DEFAULT_MAX_RATE_LIMITED",
           "DEFAULT_MAX_OUTSTANDING_REQUESTS", "RATE_PATIENCE_WINDOW_S"]

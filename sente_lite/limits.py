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

import math
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Mapping, Optional, Tuple

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
#: Upgrades waiting for the ``authenticate`` hook (queued or running); one more is refused 503.
DEFAULT_MAX_PENDING_AUTH = 64
#: Most messages one history page holds (``max_history_page``; the history API).
DEFAULT_MAX_HISTORY_PAGE = 100
#: Most history reads of one connection in flight (``max_history_reads_per_conn``).
DEFAULT_MAX_HISTORY_READS_PER_CONN = 4
#: Frames one fragmented message may arrive in; one more closes the connection with 1008.
DEFAULT_MAX_FRAGMENTS = 1024
#: Frames of one connection received and not yet handled (waiting for its handler lane);
#: at this mark the server stops reading its socket until they drop under half of it.
DEFAULT_MAX_INBOUND_FRAMES = 1000
#: Bytes (decoded payloads) of those frames; same rule as DEFAULT_MAX_INBOUND_FRAMES.
DEFAULT_MAX_INBOUND_BYTES = 4 << 20
#: Largest body of an HTTP API request; a larger one is refused 413.
DEFAULT_API_MAX_BODY_BYTES = 1 << 20
#: HTTP API requests per second per API key (bursts of one second's worth); more get 429.
DEFAULT_API_RATE_LIMIT = 10_000.0


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
    """Raise :class:`InvalidSetting` naming ``name`` unless ``value`` is a finite number
    > 0 (or None when allowed)."""
    check_setting(name, value, Bound(0, math.inf, above=True, none_ok=allow_none))


def validate_milliseconds(name: str, value: object, maximum: float) -> float:
    """Return ``value`` as a float; :class:`InvalidSetting` naming ``name`` unless it is a
    number of milliseconds from 0 to ``maximum``."""
    check_setting(name, value, Bound(0, maximum, unit=" milliseconds"))
    return float(value)  # type: ignore[arg-type]


class InvalidSetting(ValueError, TypeError):
    """A setting with a value it cannot have; the message names the setting and what it may be.

    Both a ValueError (out of range, not finite) and a TypeError (not a number)."""


@dataclass(frozen=True)
class Bound:
    """The values a numeric setting may have: a finite number (an int when ``integer``)
    from ``minimum`` (excluded when ``above``) to ``maximum``; None when ``none_ok``."""

    minimum: float
    maximum: float
    integer: bool = False
    above: bool = False
    none_ok: bool = False
    unit: str = ""

    def describe(self) -> str:
        """What the setting may be, in words."""
        kind = "an integer" if self.integer else "a finite number" + (
            f" of{self.unit}" if self.unit else "")
        low = f"> {_num(self.minimum)}" if self.above else f">= {_num(self.minimum)}"
        high = f" and <= {_num(self.maximum)}" if self.maximum != math.inf else ""
        return f"{kind} {low}{high}{' (or None)' if self.none_ok else ''}"

    def problem(self, value: object) -> Optional[str]:
        """None when ``value`` is allowed, else what is wrong with it."""
        if value is None and self.none_ok:
            return None
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or (self.integer and not isinstance(value, int)):
            return f"must be {self.describe()}, got {type(value).__name__} {_shown(value)}"
        v: float = value  # type: ignore[assignment]
        finite = isinstance(v, int) or math.isfinite(v)
        if not (finite and (v > self.minimum if self.above else v >= self.minimum)
                and v <= self.maximum):
            return f"must be {self.describe()}, got {_shown(value)}"
        return None


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _num(x: float) -> str:
    """``x`` for a message: ``1,000,000`` or ``0.5``."""
    return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"


def check_setting(name: str, value: object, bound: Optional[Bound] = None) -> None:
    """Raise :class:`InvalidSetting` naming ``name`` unless ``value`` is within ``bound``
    (default: the bound of that Server keyword in :data:`SERVER_BOUNDS`)."""
    problem = (bound or SERVER_BOUNDS[name]).problem(value)
    if problem is not None:
        raise InvalidSetting(f"{name} {problem}")


def check_settings(values: Mapping[str, object], bounds: Optional[Mapping[str, Bound]] = None) -> None:
    """Check every setting of ``bounds`` (default :data:`SERVER_BOUNDS`) present in ``values``."""
    for name, bound in (SERVER_BOUNDS if bounds is None else bounds).items():
        if name in values:
            check_setting(name, values[name], bound)


_DAY_MS = 86_400_000.0
_HOUR_S = 3600.0
_YEAR_S = 365 * 86_400.0
_BIG = 1_000_000_000
#: What every numeric :class:`~sente_lite.Server` keyword may be (checked by the
#: constructor, and by ``sente-lite serve`` for its flags and ``SENTE_LITE_*`` variables).
SERVER_BOUNDS: Dict[str, Bound] = {
    "max_history_page": Bound(1, 100_000, integer=True),
    "max_history_reads_per_conn": Bound(1, 10_000, integer=True),
    "port": Bound(0, 65535, integer=True),
    "heartbeat_ms": Bound(0, _DAY_MS, above=True),
    "heartbeat_timeout_ms": Bound(0, 3 * _DAY_MS, above=True, none_ok=True),
    "max_message_bytes": Bound(1, 1 << 31, integer=True),
    "max_queued_bytes_per_conn": Bound(1, 1 << 40, integer=True),
    "max_bad_frames_in_row": Bound(0, _BIG, integer=True),
    "max_channel_id_chars": Bound(1, 65_536, integer=True),
    "max_idle_channels": Bound(1, _BIG, integer=True),
    "max_remembered_clients": Bound(1, _BIG, integer=True),
    "close_timeout": Bound(0, _HOUR_S, above=True),
    "handshake_timeout": Bound(0, _HOUR_S, above=True),
    "max_connections": Bound(1, 10_000_000, integer=True),
    "max_pending_auth": Bound(1, 10_000_000, integer=True),
    "history_max_bytes_per_channel": Bound(1, 1 << 40, integer=True),
    "history_max_bytes_total": Bound(1, 1 << 40, integer=True),
    "max_replay_per_subscribe": Bound(0, _BIG, integer=True),
    "max_fragments": Bound(1, _BIG, integer=True),
    "fragment_timeout": Bound(0, _HOUR_S, above=True, none_ok=True),
    "max_inbound_frames": Bound(1, _BIG, integer=True),
    "max_inbound_bytes": Bound(1, 1 << 40, integer=True),
    "max_pending_handshakes": Bound(1, 10_000_000, integer=True),
    "max_subscriptions_per_conn": Bound(1, _BIG, integer=True),
    "rate_limit": Bound(0, _BIG, above=True, none_ok=True),
    "rate_burst": Bound(1, _BIG, integer=True, none_ok=True),
    "max_rate_limited": Bound(1, _BIG, integer=True),
    "max_outstanding_requests": Bound(1, _BIG, integer=True),
    "accept_backlog": Bound(1, 1 << 20, integer=True),
    "request_line_timeout": Bound(0, _HOUR_S, above=True),
    "max_pending_handshakes_per_address": Bound(1, 10_000_000, integer=True),
    "min_handler_threads": Bound(1, 1024, integer=True),
    "max_handler_threads": Bound(1, 1024, integer=True),
    "history_size": Bound(0, 10_000_000, integer=True),
    "history_ttl_s": Bound(0, _YEAR_S, above=True),
    "publish_dedup_s": Bound(0, _YEAR_S, above=True, none_ok=True),
    "publish_ids_per_publisher": Bound(1, _BIG, integer=True),
    "publish_ids_max": Bound(1, _BIG, integer=True),
    "compression_min_bytes": Bound(1, 1 << 31, integer=True),
    "api_max_body_bytes": Bound(1, 1 << 30, integer=True),
    "api_rate_limit": Bound(0, _BIG, above=True, none_ok=True),
}
#: What every numeric :class:`~sente_lite.Client` keyword may be.
CLIENT_BOUNDS: Dict[str, Bound] = {
    "backoff_base": Bound(0, _HOUR_S, above=True),
    "backoff_max": Bound(0, 24 * _HOUR_S, above=True),
    "max_pending_sends": Bound(0, _BIG, integer=True),
    "max_handler_queue": Bound(1, _BIG, integer=True),
    "connect_timeout": Bound(0, _HOUR_S, above=True),
    "request_timeout": Bound(0, 24 * _HOUR_S, above=True),
    "max_unacked_publishes": Bound(1, _BIG, integer=True),
    "publish_block_s": Bound(0, _HOUR_S),
}


def validate_count(name: str, value: object) -> int:
    """Return ``value``; :class:`InvalidSetting` naming ``name`` unless it is an integer >= 1."""
    check_setting(name, value, Bound(1, _BIG, integer=True))
    return value  # type: ignore[return-value]


# -- the HTTP server API's keys (a setting of every face) --------------------------------
#: Shortest and longest API key accepted.
MIN_KEY_CHARS = 16
MAX_KEY_CHARS = 256


def check_keys(keys: Iterable[str]) -> Tuple[str, ...]:
    """The API keys as a tuple; ValueError naming what to fix unless each is a string of
    16-256 printable characters without spaces or commas, and there is at least one."""
    if isinstance(keys, str):
        raise ValueError("api_keys must be a list of keys, not one string")
    out = tuple(keys)
    if not out:
        raise ValueError("api_keys must hold at least one key (None turns the API off)")
    for key in out:
        if not isinstance(key, str) or not MIN_KEY_CHARS <= len(key) <= MAX_KEY_CHARS or any(
                not c.isprintable() or c.isspace() or c == "," for c in key):
            raise ValueError(f"each API key must be a string of {MIN_KEY_CHARS}-{MAX_KEY_CHARS} "
                             "printable characters without spaces or commas (e.g. "
                             "secrets.token_urlsafe(32))")
    return out


__all__ = ["TokenBucket", "RateGuard", "validate_positive", "validate_milliseconds",
           "DEFAULT_MAX_CONNECTIONS", "DEFAULT_MAX_PENDING_HANDSHAKES",
           "DEFAULT_MAX_SUBSCRIPTIONS_PER_CONN", "DEFAULT_RATE_LIMIT", "DEFAULT_MAX_RATE_LIMITED",
           "DEFAULT_MAX_OUTSTANDING_REQUESTS", "RATE_PATIENCE_WINDOW_S",
           "InvalidSetting", "Bound", "check_setting", "check_settings", "SERVER_BOUNDS",
           "CLIENT_BOUNDS", "DEFAULT_MAX_PENDING_AUTH", "validate_count", "DEFAULT_MAX_FRAGMENTS",
           "DEFAULT_MAX_INBOUND_FRAMES", "DEFAULT_MAX_INBOUND_BYTES",
           "DEFAULT_API_MAX_BODY_BYTES", "DEFAULT_API_RATE_LIMIT", "check_keys", "MIN_KEY_CHARS",
           "MAX_KEY_CHARS"]

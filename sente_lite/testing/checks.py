"""Helpers for checkers: judge recorded histories, summarise latencies, read memory.

Each returns plain data or a description of the problem (None when there is
none), so a scenario's checker reads as a list of statements about histories.
"""

from __future__ import annotations

import collections
import math
import os
import resource
import time
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

from .child import Delivery
from .evidence import proc_stat_fields

#: Figure: share (%) of all CPUs' time busy during a scenario's load (:func:`cpu_load`).
FIG_MACHINE_BUSY = "machine_cpu_busy_pct"
#: Figure: share (%) of a scenario's load during which some runnable task waited for a
#: CPU (Linux PSI, ``/proc/pressure/cpu`` "some"): how much scheduling held work back.
FIG_CPU_PRESSURE = "cpu_pressure_pct"


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values`` by nearest rank; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def latencies_ms(deliveries: Iterable[Delivery]) -> List[float]:
    """Publish-to-receive latency (ms) of every delivery that carries ``sent_ns``."""
    return [(d.recv_ns - d.sent_ns) / 1e6 for d in deliveries if d.sent_ns is not None]


def latency_summary(values_ms: Sequence[float]) -> Dict[str, float]:
    """``count``, ``p50_ms``, ``p99_ms``, ``max_ms`` of latencies in ms (rounded to 0.01)."""
    if not values_ms:
        return {"count": 0, "p50_ms": math.nan, "p99_ms": math.nan, "max_ms": math.nan}
    return {"count": len(values_ms), "p50_ms": round(percentile(values_ms, 50), 2),
            "p99_ms": round(percentile(values_ms, 99), 2), "max_ms": round(max(values_ms), 2)}


def duplicates(deliveries: Iterable[Delivery]) -> List[Tuple[str, str, int]]:
    """(channel, epoch, offset) of every message received more than once."""
    seen = collections.Counter((d.channel, d.epoch, d.offset) for d in deliveries)
    return sorted(k for k, n in seen.items() if n > 1)


def order_problem(deliveries: Iterable[Delivery]) -> Optional[str]:
    """Why the deliveries are not in offset order per channel and epoch, or None.

    Within one channel and epoch each offset must be exactly one more than the
    previous one received (a jump is a loss, a repeat or step back is out of order).
    """
    last: Dict[Tuple[str, str], int] = {}
    for i, d in enumerate(deliveries):
        key = (d.channel, d.epoch)
        prev = last.get(key)
        if prev is not None and d.offset != prev + 1:
            kind = "gap" if d.offset > prev + 1 else "out of order or repeated"
            return (f"{kind} on {d.channel!r} (epoch {d.epoch}): offset {d.offset} "
                    f"after {prev} at delivery #{i + 1}")
        last[key] = d.offset
    return None


def missing_offsets(deliveries: Iterable[Delivery], channel: str, epoch: str,
                    expected: Iterable[int]) -> List[int]:
    """Offsets in ``expected`` that were not received on ``channel`` in ``epoch``."""
    got = {d.offset for d in deliveries if d.channel == channel and d.epoch == epoch}
    return sorted(set(expected) - got)


def channels_seen(deliveries: Iterable[Delivery]) -> Dict[str, int]:
    """Channel -> how many deliveries on it."""
    return dict(collections.Counter(d.channel for d in deliveries))


def proc_memory_kb(pid: int) -> Dict[str, int]:
    """Linux: current (``rss_kb``, VmRSS) and peak (``hwm_kb``, VmHWM) RSS of ``pid``.

    Empty when ``/proc/<pid>/status`` cannot be read (process gone, not Linux).
    """
    keys = {"VmRSS:": "rss_kb", "VmHWM:": "hwm_kb"}
    out: Dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                parts = line.split()
                if parts and parts[0] in keys:
                    out[keys[parts[0]]] = int(parts[1])
    except OSError:
        return {}
    return out


def rss_growth_per_1000(samples: Sequence[Tuple[int, int]],
                        warmup: Optional[int] = None) -> Optional[float]:
    """Steady RSS growth in KiB per 1,000 messages from ``(messages, rss_kb)`` samples.

    The least-squares slope over the samples taken once ``warmup`` messages were sent
    (default: half of them): until then bounded memory fills (buffers, channel history,
    allocator arenas); a leak keeps growing after. A store still filling toward its bound
    after the warm-up (remembered publish ids, kept for minutes) is measured the same way
    from what the server says it holds, and the memory criterion subtracts it
    (:func:`sente_lite.testing.criteria.net_rss_growth`). None with fewer than two such
    samples or no spread of messages among them.
    """
    if not samples:
        return None
    start = max(m for m, _ in samples) / 2 if warmup is None else warmup
    late = [(m, r) for m, r in samples if m >= start]
    n = len(late)
    mean_m = sum(m for m, _ in late) / max(n, 1)
    mean_r = sum(r for _, r in late) / max(n, 1)
    spread = sum((m - mean_m) ** 2 for m, _ in late)
    if n < 2 or spread == 0:
        return None
    slope = sum((m - mean_m) * (r - mean_r) for m, r in late) / spread
    return round(slope * 1000, 1)


class CpuReading(NamedTuple):
    """The whole machine's CPU counters at one moment (Linux ``/proc``), for
    :func:`cpu_load`: busy and total clock ticks of every CPU (``/proc/stat``), the
    microseconds some task waited for a CPU (``/proc/pressure/cpu``, None without PSI),
    and ``time.monotonic()``."""

    busy_ticks: int
    total_ticks: int
    pressure_us: Optional[int]
    at: float


def cpu_reading() -> Optional[CpuReading]:
    """The machine's CPU counters now; None when ``/proc/stat`` cannot be read."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = sum(ticks[3:5])  # idle and iowait
    pressure: Optional[int] = None
    try:
        with open("/proc/pressure/cpu", encoding="ascii") as f:
            pressure = int(f.readline().rsplit("total=", 1)[1])
    except (OSError, ValueError, IndexError):
        pass
    return CpuReading(sum(ticks) - idle, sum(ticks), pressure, time.monotonic())


def cpu_load(before: Optional[CpuReading], after: Optional[CpuReading]) -> Dict[str, float]:
    """Between two readings: ``machine_cpu_busy_pct`` (share of all CPUs' time busy) and
    ``cpu_pressure_pct`` (share of the time at least one runnable task waited for a CPU:
    scheduling delay, as PSI measures it). Empty where the readings cannot tell."""
    out: Dict[str, float] = {}
    if before is None or after is None or after.total_ticks <= before.total_ticks:
        return out
    out[FIG_MACHINE_BUSY] = round(100 * (after.busy_ticks - before.busy_ticks)
                                  / (after.total_ticks - before.total_ticks), 1)
    wall_us = (after.at - before.at) * 1e6
    if before.pressure_us is not None and after.pressure_us is not None and wall_us > 0:
        out[FIG_CPU_PRESSURE] = round(min(100.0, 100 * (after.pressure_us - before.pressure_us)
                                          / wall_us), 1)
    return out


def proc_cpu_s(pid: int) -> Optional[float]:
    """CPU seconds (user + system) ``pid`` used so far; None when it cannot be read."""
    fields = proc_stat_fields(pid)
    try:
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") if fields else None
    except (ValueError, IndexError):
        return None


def self_peak_rss_kb() -> int:
    """Peak RSS of the calling process in KiB (``getrusage``; Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def covered_by_notice(notices: Sequence[Dict[str, Any]], epoch: str, offset: int) -> bool:
    """True when one of ``notices`` (recovery events with ``recovered: false``, as
    :meth:`History.record` keeps them: ``since``, ``epoch``, ``offset``) names the message
    at (``epoch``, ``offset``) as lost: after its ``since`` in that epoch, or up to the
    top of an epoch it left."""
    for n in notices:
        since = n.get("since") or {}
        if since.get("epoch") == epoch and offset > since.get("offset", 0):
            return True
        if n["epoch"] == epoch and offset <= n["offset"]:
            return True
    return False


__all__ = ["percentile", "latencies_ms", "latency_summary", "duplicates", "order_problem",
           "missing_offsets", "channels_seen", "proc_memory_kb", "self_peak_rss_kb",
           "rss_growth_per_1000", "covered_by_notice", "CpuReading", "cpu_reading", "cpu_load",
           "FIG_MACHINE_BUSY", "FIG_CPU_PRESSURE",
           "proc_cpu_s"]

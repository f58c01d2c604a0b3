"""Figures the benchmarks share: a percentile by nearest rank."""

from __future__ import annotations

from typing import Sequence


def pct(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0-1) of ``values`` by nearest rank (``values`` not empty)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


__all__ = ["pct"]

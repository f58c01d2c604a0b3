"""Accepted publish ids of the in-process broker (PROTOCOL 9): bounded, per publisher.

A publish id deduplicates only against earlier publishes of the same publisher
(its uid: the ``authenticate`` hook's answer, else its client-id) on the same
channel in the same epoch, for ``publish_dedup_s``. So no client can make
another's publishes look like duplicates by guessing their ids.

Ids are bounded per publisher (``publish_ids_per_publisher``) and in total
(``publish_ids_max``): past either bound the oldest id (of that publisher, or of
all) is forgotten before its window ends, counted as ``publish_ids_evicted``.
:meth:`PublishIds.held_bytes` says how much memory the ids hold (``publish_ids_bytes``
in the server's stats).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import OrderedDict
from typing import Callable, Dict, Optional, Tuple

from ..counters import Counter, Counters

#: Publish ids remembered per publisher (all channels); its oldest are forgotten early (counted).
DEFAULT_PUBLISH_IDS_PER_PUBLISHER = 10_000
#: Publish ids remembered in total; the oldest are forgotten early (counted).
DEFAULT_PUBLISH_IDS_MAX = 200_000

_Key = Tuple[Optional[str], str, str]  # (publisher (None: the server), channel, publish id)

#: Bytes one remembered id holds besides its id string and its slots in the tables: its
#: key and value tuples, its time and its offset. The publisher, channel and epoch strings
#: are the connection's and the channel's, shared by every id.
_ENTRY_BYTES = (sys.getsizeof((None, "", "")) + sys.getsizeof(("", 0, 0, 0.0))
                + sys.getsizeof(0.0) + sys.getsizeof(1 << 20))


def validate_id_bounds(per_publisher: int, max_ids: int) -> None:
    """Raise ValueError unless 1 <= ``per_publisher`` <= ``max_ids`` (both ints)."""
    for name, value in (("publish_ids_per_publisher", per_publisher),
                        ("publish_ids_max", max_ids)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if per_publisher > max_ids:
        raise ValueError(f"publish_ids_per_publisher ({per_publisher}) must not exceed "
                         f"publish_ids_max ({max_ids})")


class PublishIds:
    """Publish ids accepted within ``window_s``, keyed by (publisher, channel, id). Thread-safe."""

    def __init__(self, window_s: float, per_publisher: int = DEFAULT_PUBLISH_IDS_PER_PUBLISHER,
                 max_ids: int = DEFAULT_PUBLISH_IDS_MAX, counters: Optional[Counters] = None,
                 clock: Optional[Callable[[], float]] = None) -> None:
        validate_id_bounds(per_publisher, max_ids)
        self.window_s = float(window_s)
        self.per_publisher = per_publisher
        self.max_ids = max_ids
        self._counters = counters if counters is not None else Counters()
        self._clock = clock if clock is not None else time.monotonic
        self._lock = threading.Lock()
        # key -> (epoch, offset, delivered, time), oldest first
        self._all: "OrderedDict[_Key, Tuple[str, int, int, float]]" = OrderedDict()
        self._by_publisher: Dict[Optional[str], "OrderedDict[_Key, None]"] = {}
        self._entry_bytes = 0  # _ENTRY_BYTES and the id string of every id held

    def __len__(self) -> int:
        return len(self._all)

    def held_bytes(self) -> int:
        """Bytes the remembered ids hold: their tuples, times, offsets and id strings
        (counted as they come and go) and the tables (measured now). Close to what
        ``tracemalloc`` sees them allocate (tests/brokers/test_publish_ids.py); the shared publisher,
        channel and epoch strings are not counted."""
        with self._lock:
            held = self._entry_bytes
            tables = [self._all, self._by_publisher, *self._by_publisher.values()]
        return held + sum(map(sys.getsizeof, tables))

    def first(self, publisher: Optional[str], channel: str, epoch: str,
              publish_id: str) -> Optional[Tuple[int, int]]:
        """(offset, delivered) of the publish that first had ``publish_id`` from
        ``publisher`` on ``channel`` in ``epoch``, within the window; else None."""
        key = (publisher, channel, publish_id)
        with self._lock:
            self._expire(self._clock())
            entry = self._all.get(key)
        if entry is None or entry[0] != epoch:
            return None
        return entry[1], entry[2]

    def remember(self, publisher: Optional[str], channel: str, epoch: str, publish_id: str,
                 offset: int, delivered: int) -> None:
        """Remember an accepted publish; forget the oldest ids past the bounds (counted)."""
        key = (publisher, channel, publish_id)
        evicted = 0
        with self._lock:
            now = self._clock()
            self._expire(now)
            if key in self._all:
                self._forget(key)
            self._all[key] = (epoch, offset, delivered, now)
            self._entry_bytes += _ENTRY_BYTES + sys.getsizeof(publish_id)
            mine = self._by_publisher.setdefault(publisher, OrderedDict())
            mine[key] = None
            while len(mine) > self.per_publisher:
                self._forget(next(iter(mine)))
                evicted += 1
            while len(self._all) > self.max_ids:
                self._forget(next(iter(self._all)))
                evicted += 1
        if evicted:
            self._counters.add(Counter.PUBLISH_IDS_EVICTED, evicted)

    def expire(self) -> None:
        """Drop the ids older than the window now (publishes do it as they come)."""
        with self._lock:
            self._expire(self._clock())

    def _forget(self, key: _Key) -> None:
        """Caller holds the lock."""
        del self._all[key]
        self._entry_bytes -= _ENTRY_BYTES + sys.getsizeof(key[2])
        mine = self._by_publisher[key[0]]
        del mine[key]
        if not mine:
            del self._by_publisher[key[0]]

    def _expire(self, now: float) -> None:
        """Drop ids older than the window. Caller holds the lock."""
        oldest = now - self.window_s
        items = self._all
        while items:
            key, entry = next(iter(items.items()))
            if entry[3] >= oldest:
                return
            self._forget(key)


__all__ = ["PublishIds", "DEFAULT_PUBLISH_IDS_PER_PUBLISHER", "DEFAULT_PUBLISH_IDS_MAX",
           "validate_id_bounds"]

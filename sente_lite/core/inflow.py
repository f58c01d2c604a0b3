"""Bounds on what one connection's input may hold on the server: fragments of an
unfinished message, and frames read but not handled yet.

:class:`InboundLimits` are the settings (each a :class:`sente_lite.Server` keyword).
:class:`InboundGauge` counts, per connection, the frames (and their decoded bytes)
handed to its handler lane and not handled yet. The network thread adds, the lane's
worker takes away; at ``max_inbound_frames`` or ``max_inbound_bytes`` the network thread
stops reading that socket (TCP pushes back on the peer) and the worker that brings the
count under half of both marks asks it to read again. No I/O and no threads here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

from .. import limits as lim


#: (setting, integer?, highest value) of every :class:`InboundLimits` field.
_BOUNDS = (("max_fragments", True, 1_000_000_000), ("fragment_timeout", False, 3600.0),
           ("max_inbound_frames", True, 1_000_000_000), ("max_inbound_bytes", True, 1 << 40))


@dataclass(frozen=True)
class InboundLimits:
    """What one connection may hold of input not handled yet."""

    #: Frames one fragmented message may arrive in (one more: 1008).
    max_fragments: int = lim.DEFAULT_MAX_FRAGMENTS
    #: Seconds a fragmented message may stay unfinished (then: 1008).
    fragment_timeout: float = 15.0
    #: Frames waiting for the connection's handler lane before its socket is not read.
    max_inbound_frames: int = lim.DEFAULT_MAX_INBOUND_FRAMES
    #: Decoded bytes of those frames before its socket is not read.
    max_inbound_bytes: int = lim.DEFAULT_MAX_INBOUND_BYTES

    def __post_init__(self) -> None:
        for name, integer, highest in _BOUNDS:
            value = getattr(self, name)
            kinds = (int,) if integer else (int, float)
            if (isinstance(value, bool) or not isinstance(value, kinds)
                    or not (0 < value <= highest)):  # NaN fails this too
                raise ValueError(f"{name} must be {'an integer' if integer else 'a number'} "
                                 f"above 0 and at most {highest:g}, got {value!r}")


class InboundGauge:
    """Frames and bytes of one connection waiting for its handler lane.

    :meth:`add` is called by the network thread only and :meth:`done` by the lane's
    worker only (one at a time): each total has a single writer, so no lock is needed.
    ``paused`` is the network thread's: its socket is not being read.
    """

    __slots__ = ("limits", "paused", "pauses", "_frames_in", "_bytes_in", "_frames_done",
                 "_bytes_done", "_wake", "_wake_asked")

    def __init__(self, limits: InboundLimits, wake: Callable[[], None]) -> None:
        self.limits = limits
        self.paused = False
        self.pauses = 0
        self._frames_in = self._bytes_in = 0
        self._frames_done = self._bytes_done = 0
        self._wake = wake  # asks the network thread to read again (thread-safe)
        self._wake_asked = False

    @property
    def frames(self) -> int:
        """Frames waiting."""
        return self._frames_in - self._frames_done

    @property
    def bytes(self) -> int:
        """Their decoded bytes."""
        return self._bytes_in - self._bytes_done

    def add(self, frames: int, size: int) -> None:
        """``frames`` frames of ``size`` bytes in all went to the lane (network thread)."""
        self._frames_in += frames
        self._bytes_in += size

    def done(self, frames: int, size: int) -> None:
        """The lane handled them (its worker); may ask the network thread to read again."""
        self._frames_done += frames
        self._bytes_done += size
        if self.paused and not self._wake_asked and self.low():
            self._wake_asked = True
            self._wake()

    def room(self, scale: int = 1) -> Optional[Tuple[int, int]]:
        """(frames, bytes) that may still be read; None at either mark (times ``scale``:
        2 while the server awaits a reply on this connection, which may be behind them)."""
        frames = self.limits.max_inbound_frames * scale - self.frames
        size = self.limits.max_inbound_bytes * scale - self.bytes
        return (frames, size) if frames > 0 and size > 0 else None

    def low(self) -> bool:
        """Under half of both marks: reading may go on."""
        return (self.frames * 2 <= self.limits.max_inbound_frames
                and self.bytes * 2 <= self.limits.max_inbound_bytes)

    def pause(self) -> None:
        """The network thread stops reading (it rechecks :meth:`low` after this)."""
        self.paused = True
        self.pauses += 1
        self._wake_asked = False

    def resume(self) -> None:
        self.paused = False

    def close(self) -> None:
        """The connection ended: never wake its reader again (and hold no reference to
        it, so an ended link is freed without waiting for a collection)."""
        self._wake = _nothing


def _nothing() -> None:
    """The wake function of a closed gauge."""


__all__ = ["InboundLimits", "InboundGauge"]

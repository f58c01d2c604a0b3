"""Channels as the wire speaks of them, with no I/O: a subscriber's position
(:class:`Since`), what a publish did (:class:`Published`), the answer to a subscribe
with ``since`` (:class:`RecoveryResult`), and a channel message's text, built once per
publish (:func:`message_head`, then :class:`Built` for every packer in use)."""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from . import compression
from . import protocol as p
from . import tracing
from .packers import JSON_PACKER, Packer


class Published(NamedTuple):
    """What a publish did: the offset it got, the epoch, and how many it reached.

    ``duplicate``: its id was already accepted; the rest is the first one's result.
    """

    channel_id: str
    offset: int
    epoch: str
    delivered: int
    duplicate: bool = False


class Since(NamedTuple):
    """The last message a subscriber saw: recover every later one."""

    offset: int
    epoch: str


class RecoveryResult(NamedTuple):
    """The answer to a subscribe with ``since``: ``reason`` is set when not recovered."""

    recovered: bool
    reason: Optional[str]
    replayed: int



class Built:
    """One channel message, built once per publish: the whole WebSocket frame for
    JSON connections, and, made on first use, for each other packer in use. Once
    :meth:`shed` (kept in history) it holds the JSON frame only: one copy."""

    __slots__ = ("wire", "size", "_others", "traceparent", "_shed")

    def __init__(self, wire: bytes, size: int, traceparent: Optional[str] = None) -> None:
        self.wire = wire
        self.size = size
        self._others: Optional[Dict[str, Tuple[bytes, int]]] = None
        self.traceparent = traceparent
        self._shed = False

    def text(self) -> bytes:
        """The message's JSON text (its frame's payload)."""
        return self.wire[-self.size:]

    def _value(self, tags: bool) -> Any:
        """The message as a value, decoded from its own JSON payload (``tags``: tagged
        forms as bytes)."""
        return p.loads(self.wire[-self.size:].decode("utf-8"), tags)

    def shed(self) -> None:
        """Drop the copies made for other packers and make no more (kept in history)."""
        self._shed = True
        self._others = None

    def held_bytes(self) -> int:
        """Bytes this message keeps alive."""
        others = self._others
        return len(self.wire) + (sum(len(w) for w, _ in others.values()) if others else 0)

    def for_packer(self, packer: Packer, frame: Callable[..., bytes], deflate_bits: int = 0,
                   min_compress: int = 0) -> Tuple[bytes, int]:
        """(wire, payload size) of this message for connections of ``packer`` (and of
        a negotiated permessage-deflate window, when ``deflate_bits``)."""
        if packer is JSON_PACKER and not deflate_bits:
            return self.wire, self.size
        others = self._others
        if others is None:
            others = self._others = {}
        key = f"{packer.name}/{packer.native_bytes:d}/{deflate_bits}"
        built = others.get(key)
        if built is None:
            payload = (self.wire[-self.size:] if packer is JSON_PACKER
                       else packer.encode_value(self._value(packer.native_bytes), checked=True))
            wire = None
            if deflate_bits and len(payload) >= min_compress:
                packed = compression.deflate(payload, deflate_bits)
                if len(packed) < len(payload):
                    wire = frame(packed, packer.binary, True)
            built = (wire or frame(payload, packer.binary), len(payload))
            if not self._shed:
                others[key] = built
        return built



def message_head(channel_json: str, data_json: str, from_json: str,
                 traceparent: Optional[str]) -> str:
    """The text of a channel message up to its offset (the offset, epoch and the end
    are added by :func:`message_text` once the broker has them): every publisher builds it here."""
    traced = f'"{tracing.TRACEPARENT}":"{traceparent}",' if traceparent is not None else ""
    return (f'["{p.EV_CHANNEL_MSG}",{{"{p.K_CHANNEL}":{channel_json},'
            f'"{p.K_DATA}":{data_json},"{p.K_FROM}":{from_json},{traced}"{p.K_OFFSET}":')


@functools.lru_cache(maxsize=4096)
def _epoch_tail(epoch: str) -> bytes:
    """The text after a message's offset: its epoch and the end (remembered: a broker
    names the same few epochs again and again)."""
    return f',"{p.K_EPOCH}":{p.dumps(epoch)}}}]'.encode("utf-8")


def message_text(head: bytes, offset: int, epoch: str) -> bytes:
    """The whole channel message: ``head`` (:func:`message_head`, UTF-8) finished with the
    ``offset`` and ``epoch`` the broker gave it. Every broker finishes it here."""
    return b"%s%d%s" % (head, offset, _epoch_tail(epoch))


class HistoryPage(NamedTuple):
    """What a broker's history says of one channel: its newest ``offset`` and ``epoch``
    (0 and None for a channel it does not know), the messages asked for as (offset,
    message text), and, for a ``since``, whether every message after it is still kept."""

    offset: int
    epoch: Optional[str]
    publications: List[Tuple[int, bytes]]
    recovery: Optional[RecoveryResult] = None



__all__ = ["Since", "Published", "RecoveryResult", "Built", "HistoryPage", "message_head",
           "message_text"]

"""Whether a subscriber's ``since`` can be recovered (PROTOCOL 9), decided once for
every broker over what its history says of the channel. No I/O, no clock.

A broker reads its history (:class:`Kept`: the channel's epoch, its newest offset,
the oldest offset still kept from ``since`` on, whether history is on, how many
messages one subscribe may replay) and asks :func:`decide`; the answer is the
:class:`~sente_lite.wire.channels.RecoveryResult` the subscriber gets.
"""

from __future__ import annotations

import sys
from typing import List, NamedTuple, Optional, Tuple

from ..counters import Counter, Counters
from ..wire.channels import HistoryPage, RecoveryResult, Since

#: Why a subscribe with ``since`` was not recovered (PROTOCOL 9).
REASON_EPOCH_CHANGED = "epoch-changed"
REASON_HISTORY_EXPIRED = "history-expired"
REASON_HISTORY_OFF = "history-off"
REASON_REPLAY_LIMIT = "replay-limit"
REASON_ALREADY_SUBSCRIBED = "already-subscribed"


class Kept(NamedTuple):
    """What a broker's history says of one channel, for :func:`decide`.

    ``first``: the oldest offset kept (and not expired) at or after the one the
    subscriber misses first; None when none is. ``max_replay``: the most messages
    one subscribe may replay (the broker's limit and the connection's budget)."""

    epoch: Optional[str]
    top: int
    first: Optional[int]
    history_on: bool
    max_replay: int


def decide(since: Since, kept: Kept, held: bool = False) -> RecoveryResult:
    """The answer to a subscribe with ``since`` (``held``: the member already holds the
    channel, so nothing is replayed): recovered with ``replayed`` messages from
    ``since.offset + 1``, or not, with the reason."""
    if held:
        return RecoveryResult(False, REASON_ALREADY_SUBSCRIBED, 0)
    if since.epoch != kept.epoch or since.offset > kept.top or since.offset < 0:
        # an offset beyond the top cannot come from this epoch's history either
        return RecoveryResult(False, REASON_EPOCH_CHANGED, 0)
    if since.offset == kept.top:
        return RecoveryResult(True, None, 0)
    if not kept.history_on:
        return RecoveryResult(False, REASON_HISTORY_OFF, 0)
    if kept.first is None or kept.first > since.offset + 1:
        return RecoveryResult(False, REASON_HISTORY_EXPIRED, 0)
    missed = kept.top - since.offset
    if missed > kept.max_replay:
        return RecoveryResult(False, REASON_REPLAY_LIMIT, 0)
    return RecoveryResult(True, None, missed)


def replay_limit(max_replay: int, budget: Optional[int]) -> int:
    """The most messages one subscribe may replay: the broker's limit, and the
    connection's ``budget`` when it has one."""
    return max_replay if budget is None else min(max_replay, budget)


def history_page(kept: Optional[Kept], entries: List[Tuple[int, bytes]], since: Optional[Since],
                 limit: Optional[int], reverse: bool) -> HistoryPage:
    """A history read (``Broker.history``) from what a broker keeps of a channel: ``kept``
    (None: a channel it does not know) and every kept (offset, text), oldest first. The
    page's offset and epoch are the newest kept message's (0 and None when none). With
    ``since``, only what follows it, and nothing unless all of that is kept (no replay
    limit: ``limit`` pages it)."""
    offset, epoch = (entries[-1][0], kept.epoch) if entries and kept is not None else (0, None)
    recovery: Optional[RecoveryResult] = None
    if since is not None:
        if kept is None:  # nothing was ever published: nothing missed after offset 0
            recovery = (RecoveryResult(True, None, 0) if since.offset == 0
                        else RecoveryResult(False, REASON_EPOCH_CHANGED, 0))
        else:
            recovery = decide(since, kept._replace(max_replay=sys.maxsize))
        entries = [e for e in entries if e[0] > since.offset] if recovery.recovered else []
    if reverse:
        entries = entries[::-1]
    return HistoryPage(offset, epoch, entries if limit is None else entries[:limit], recovery)


def count_recovery(counters: Counters, result: RecoveryResult) -> None:
    """Count the answer to one subscribe with ``since`` (any broker); each broker counts
    the messages it actually replays (``replayed_messages``) as it hands them over."""
    counters.add(Counter.RECOVERED_SUBSCRIBES if result.recovered
                 else Counter.UNRECOVERED_SUBSCRIBES)


__all__ = ["Kept", "decide", "replay_limit", "history_page", "count_recovery", "REASON_EPOCH_CHANGED",
           "REASON_HISTORY_EXPIRED", "REASON_HISTORY_OFF", "REASON_REPLAY_LIMIT",
           "REASON_ALREADY_SUBSCRIBED"]

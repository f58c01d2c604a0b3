"""A client's subscription tokens (feature ``sub-token``, docs/protocol.md section 16):
for each channel subscribed with one, its token source and when to refresh it. No I/O,
no clock: times (seconds since the epoch) are arguments.

A channel whose token is a callable, on a server whose handshake lists ``sub-token``,
is refreshed with ``["sente-lite/sub-refresh", {"channel-id": C, "token": T}, cb-id]``
ahead of the token's ``exp``, on the schedule of connection tokens
(:class:`~sente_lite.wire.token_expiry.RefreshSchedule`). A fixed string is sent as is
and never refreshed. Each subscribe (the first, and each after a reconnect) asks a
callable for a fresh token.

What is decided here is shared by the threaded and the asyncio clients
(:mod:`sente_lite.client.sub_tokens`, :mod:`sente_lite.aio.sub_tokens`): which answers end
the refreshes, which tell the application, and the counters; the clients only move frames
and run the handlers :meth:`SubTokenPlans.take_refusals` gives, outside their locks.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Dict, List, Optional, Tuple, Union

from ..errors import RemoteError
from . import protocol as p
from .token_expiry import RefreshSchedule

#: A channel's token: a string, or a callable returning a fresh one (None or raising: refused).
TokenSource = Union[str, Callable[[], Optional[str]]]
#: ``on_token_refused(channel_id, error)``: the server refused the channel's token (its
#: ``RemoteError``), the source refused to give one, or the subscription ended at its
#: expiry (code ``token-expired``).
RefusedHandler = Callable[[str, BaseException], Any]
#: One call of an ``on_token_refused`` handler, waiting to run: (handler, channel-id, error).
RefusedCall = Tuple[RefusedHandler, str, BaseException]

#: A refresh answered with one of these is not tried again (the server will end the
#: subscription at its token's expiry).
FINAL_REFUSALS = (p.ERR_FORBIDDEN, p.ERR_NOT_SUBSCRIBED)
#: A refresh answered with one of these tells ``on_token_refused``.
TOLD_REFUSALS = FINAL_REFUSALS + (p.ERR_INVALID_TOKEN,)

log = logging.getLogger("sente_lite.client")


@dataclass
class SubToken:
    """One channel's token source, refusal handler and refresh schedule."""

    source: TokenSource
    on_refused: Optional[RefusedHandler] = None
    schedule: RefreshSchedule = field(default_factory=RefreshSchedule)


def check_source(token: Any) -> None:
    """TypeError unless ``token`` is a non-empty string or a callable."""
    if not (callable(token) or (isinstance(token, str) and token)):
        raise TypeError("token must be a subscription token (a non-empty str) or a callable "
                        f"returning one, got {type(token).__name__}")


class SubTokenPlans:
    """The subscription tokens of one client, by channel (the caller holds its lock)."""

    def __init__(self, counts: Optional[Dict[str, int]] = None) -> None:
        self.by_channel: Dict[str, SubToken] = {}
        #: the client's counters (``sub_token_refused``, ``sub_token_expired``,
        #: ``sub_token_refreshes``, ``sub_token_refresh_failures``)
        self.counts: Dict[str, int] = collections.defaultdict(int) if counts is None else counts
        self._waiting: List[RefusedCall] = []

    def add(self, channel_id: str, source: TokenSource,
            on_refused: Optional[RefusedHandler] = None) -> None:
        """Subscribe ``channel_id`` with tokens from ``source`` from now on."""
        check_source(source)
        self.by_channel[channel_id] = SubToken(source, on_refused)

    def source(self, channel_id: str) -> Optional[TokenSource]:
        """The token source of ``channel_id``, or None when it is subscribed without one."""
        entry = self.by_channel.get(channel_id)
        return None if entry is None else entry.source

    def issued(self, channel_id: str, got: Union[str, BaseException],
               handshake: Optional[Dict[str, Any]], now: float) -> Optional[str]:
        """The token a subscribe of ``channel_id`` carries: ``got``, what its source gave
        now, its refresh planned (feature ``sub-token`` in the ``handshake``); None when
        the source refused (``got`` is its error: :meth:`refused`)."""
        if isinstance(got, BaseException):
            self.refused(channel_id, got)
            return None
        features = (handshake or {}).get(p.K_FEATURES) or ()
        self.sent(channel_id, got, features, now)
        return got

    def drop(self, channel_id: str) -> Optional[SubToken]:
        """Forget ``channel_id`` (unsubscribed, refused or expired); its entry if it had one."""
        return self.by_channel.pop(channel_id, None)

    def sent(self, channel_id: str, token: str, features: Collection[str], now: float) -> None:
        """A subscribe of ``channel_id`` with ``token`` (got at ``now``) is sent on a
        connection whose handshake listed ``features``: plan its refresh."""
        entry = self.by_channel.get(channel_id)
        if entry is None:
            return
        refreshable = callable(entry.source) and p.FEATURE_SUB_TOKEN in features
        entry.schedule.connected(token if refreshable else None, {},
                                 (p.FEATURE_REFRESH,) if refreshable else (), now)

    def due(self, now: float) -> List[Tuple[str, SubToken]]:
        """The channels whose refresh is due now, each marked in flight."""
        out = [(ch, e) for ch, e in self.by_channel.items() if e.schedule.due(now)]
        for _, entry in out:
            entry.schedule.sent()
        return out

    def answered(self, channel_id: str, token: str, exp: Any, now: float,
                 retry: bool = True) -> bool:
        """The sub-refresh of ``channel_id`` with ``token`` was answered with ``exp``
        (None: it failed; ``retry`` False: do not try again). True when it moved on."""
        entry = self.by_channel.get(channel_id)
        return entry is not None and entry.schedule.answered(token, exp, now, retry)

    def stop(self) -> None:
        """The connection ended: nothing to refresh until the subscribes are sent again."""
        for entry in self.by_channel.values():
            entry.schedule.stop()

    def refused(self, channel_id: str, error: BaseException) -> None:
        """The channel's token was refused for good (by the server, or by its source):
        forget it, and tell its handler (:meth:`take_refusals`)."""
        entry = self.drop(channel_id)
        if entry is None:
            return
        self.counts["sub_token_refused"] += 1
        log.warning("subscription token for a channel refused: %s",
                    error.code if isinstance(error, RemoteError) else type(error).__name__)
        if entry.on_refused is not None:
            self._waiting.append((entry.on_refused, channel_id, error))

    def ended(self, channel_id: str, reason: str) -> None:
        """The server ended ``channel_id`` by itself (``sente-lite/unsubscribed`` with
        ``reason``, ``token-expired``): its handler is told with that code."""
        if reason == p.REASON_TOKEN_EXPIRED:
            self.counts["sub_token_expired"] += 1
        self.refused(channel_id, RemoteError(
            reason, "the subscription token expired without a refresh"
            if reason == p.REASON_TOKEN_EXPIRED else f"the server ended the subscription ({reason})"))

    def refresh_settled(self, channel_id: str, token: str, result: Any,
                        error: Optional[BaseException], now: float) -> bool:
        """The sub-refresh of ``channel_id`` with ``token`` ended with ``result`` (its
        reply) or ``error``. True when it moved the expiry on; a refusal of
        :data:`TOLD_REFUSALS` tells the handler, one of :data:`FINAL_REFUSALS` is not tried again."""
        exp = result.get(p.K_EXP) if isinstance(result, dict) else None
        code = error.code if isinstance(error, RemoteError) else None
        if self.answered(channel_id, token, exp, now, code not in FINAL_REFUSALS):
            self.counts["sub_token_refreshes"] += 1
            return True
        self.counts["sub_token_refresh_failures"] += 1
        entry = self.by_channel.get(channel_id)
        if code in TOLD_REFUSALS and entry is not None and entry.on_refused is not None:
            assert error is not None
            self._waiting.append((entry.on_refused, channel_id, error))
        log.warning("subscription token refresh failed: %s", code or (
            type(error).__name__ if error is not None else "no later exp"))
        return False

    def take_refusals(self) -> List[RefusedCall]:
        """The handler calls waiting to run (each once), oldest first."""
        waiting, self._waiting = self._waiting, []
        return waiting


__all__ = ["SubTokenPlans", "SubToken", "TokenSource", "RefusedHandler", "RefusedCall",
           "check_source", "FINAL_REFUSALS", "TOLD_REFUSALS"]

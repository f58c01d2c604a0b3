"""A client's subscription tokens (feature ``sub-token``, docs/protocol.md section 16):
for each channel subscribed with one, its token source and when to refresh it. No I/O,
no clock: times (seconds since the epoch) are arguments.

A channel whose token is a callable, on a server whose handshake lists ``sub-token``,
is refreshed with ``["sente-lite/sub-refresh", {"channel-id": C, "token": T}, cb-id]``
ahead of the token's ``exp``, on the schedule of connection tokens
(:class:`~sente_lite.wire.token_expiry.RefreshSchedule`). A fixed string is sent as is
and never refreshed. Each subscribe (the first, and each after a reconnect) asks a
callable for a fresh token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Dict, List, Optional, Tuple, Union

from . import protocol as p
from .token_expiry import RefreshSchedule

#: A channel's token: a string, or a callable returning a fresh one (None or raising: refused).
TokenSource = Union[str, Callable[[], Optional[str]]]
#: ``on_token_refused(channel_id, error)``: the server refused the channel's token (its
#: ``RemoteError``), the source refused to give one, or the subscription ended at its
#: expiry (code ``token-expired``).
RefusedHandler = Callable[[str, BaseException], None]


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

    def __init__(self) -> None:
        self.by_channel: Dict[str, SubToken] = {}

    def add(self, channel_id: str, source: TokenSource,
            on_refused: Optional[RefusedHandler] = None) -> None:
        """Subscribe ``channel_id`` with tokens from ``source`` from now on."""
        check_source(source)
        self.by_channel[channel_id] = SubToken(source, on_refused)

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


__all__ = ["SubTokenPlans", "SubToken", "TokenSource", "RefusedHandler", "check_source"]

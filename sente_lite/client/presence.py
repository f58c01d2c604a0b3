"""Channel presence of a :class:`sente_lite.Client` (feature ``presence``): who is
subscribed to a channel whose namespace has ``presence=True``. Join and leave events
come per subscription (``subscribe(ch, fn, on_join=, on_leave=)``)."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from ..session import PresenceChange, presence_body
from ..wire import protocol as p

#: ``fn(change)`` for a member joining or leaving a subscribed channel.
PresenceHandler = Callable[[PresenceChange], Any]


class PresenceMixin:
    """``presence`` and ``presence_stats`` of a :class:`~sente_lite.Client`."""

    request: Callable[..., Any]

    def presence(self, channel_id: str, timeout: Optional[float] = None) -> List[Dict[str, Any]]:
        """The members of ``channel_id`` (``client-id``, ``uid``, ``conn-id``, ``info``) on
        every server. The client must hold the channel and its namespace have presence:
        else :class:`~sente_lite.errors.RemoteError` ``forbidden``."""
        return self.request(p.EV_PRESENCE, presence_body(channel_id), timeout)[p.K_MEMBERS]

    def presence_stats(self, channel_id: str, timeout: Optional[float] = None) -> Dict[str, int]:
        """``{"members": N, "users": M}`` of ``channel_id`` (M: distinct uids); as :meth:`presence`."""
        return self.request(p.EV_PRESENCE_STATS, presence_body(channel_id), timeout)


__all__ = ["PresenceMixin", "PresenceHandler"]

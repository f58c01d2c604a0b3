"""Channel presence of an :class:`sente_lite.aio.AsyncClient` (feature ``presence``); see
:mod:`sente_lite.client.presence`."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from ..session import PresenceChange, presence_body
from ..wire import protocol as p


#: ``fn(change)`` (plain or ``async``) for a member joining or leaving a subscribed channel.
PresenceHandler = Callable[[PresenceChange], Any]


class PresenceMixin:
    """``presence`` and ``presence_stats`` of an :class:`~sente_lite.aio.AsyncClient`."""

    request: Callable[..., Any]

    async def presence(self, channel_id: str, timeout: Optional[float] = None) -> List[Dict[str, Any]]:
        """The members of ``channel_id`` (``client-id``, ``uid``, ``conn-id``, ``info``) on
        every server; ``forbidden`` unless the client holds it and its namespace has presence."""
        return (await self.request(p.EV_PRESENCE, presence_body(channel_id), timeout))[p.K_MEMBERS]

    async def presence_stats(self, channel_id: str, timeout: Optional[float] = None) -> Dict[str, int]:
        """``{"members": N, "users": M}`` of ``channel_id``; as :meth:`presence`."""
        return await self.request(p.EV_PRESENCE_STATS, presence_body(channel_id), timeout)


__all__ = ["PresenceMixin", "PresenceHandler"]

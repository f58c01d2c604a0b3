"""The history API of :class:`sente_lite.aio.AsyncClient` (feature ``history-api``)."""

from __future__ import annotations

from typing import Any, Dict, Optional

from .. import session as ss
from ..wire import protocol as p


class HistoryMixin:
    """``history()``: paged reads of a channel's kept messages."""

    async def history(self, channel_id: str, limit: Optional[int] = None, *, since: Any = None,
                      reverse: bool = False, page: Any = None,
                      timeout: Optional[float] = None) -> Dict[str, Any]:
        """One page of ``channel_id``'s history (see :meth:`sente_lite.Client.history`):
        ``{"channel-id", "offset", "epoch", "publications", "next", "recovered"?}``."""
        data = ss.history_data(channel_id, limit, since, reverse, page)
        return await self.request(p.EV_HISTORY, data, timeout)  # type: ignore[attr-defined]


__all__ = ["HistoryMixin"]

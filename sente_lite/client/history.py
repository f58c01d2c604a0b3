"""The history API of :class:`sente_lite.Client` (feature ``history-api``)."""

from __future__ import annotations

from typing import Any, Dict, Optional

from .. import session as ss
from ..wire import protocol as p


class HistoryMixin:
    """``history()``: paged reads of a channel's kept messages."""

    def history(self, channel_id: str, limit: Optional[int] = None, *, since: Any = None,
                reverse: bool = False, page: Any = None,
                timeout: Optional[float] = None) -> Dict[str, Any]:
        """One page of ``channel_id``'s history: at most ``limit`` (the server's page
        when None) messages after ``since``, oldest first (``reverse``: newest first).

        Returns ``{"channel-id", "offset", "epoch", "publications": [{offset, epoch,
        data, from}], "next", "recovered"?}``; pass ``next`` as ``page`` for the next
        page (None: this was the last). Raises :class:`RemoteError` (``forbidden``,
        ``limit-exceeded``, ...) like :meth:`request`."""
        data = ss.history_data(channel_id, limit, since, reverse, page)
        return self.request(p.EV_HISTORY, data, timeout)  # type: ignore[attr-defined]


__all__ = ["HistoryMixin"]

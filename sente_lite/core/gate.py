"""The channel policy: whether a connection may subscribe or publish to a channel."""

from __future__ import annotations

import logging
from typing import Any, Optional, Tuple

from ..counters import Counter, Counters
from ..wire import protocol as p
from .hub import Broker
from .security import Authorize, report

# Refusals are logged where operators already look for the server's refusals.
log = logging.getLogger("sente_lite.server")


class ChannelGate:
    """``max_subscriptions_per_conn``, then the application's ``authorize`` hook."""

    def __init__(self, broker: Broker, counters: Counters, max_subscriptions_per_conn: int,
                 authorize: Optional[Authorize] = None) -> None:
        self.broker = broker
        self.counters = counters
        self.max_subscriptions_per_conn = max_subscriptions_per_conn
        #: ``authorize(conn, action, channel_id) -> bool``: application code, so a face
        #: runs channel operations where handlers run when it is set.
        self.authorize = authorize

    def check(self, conn: Any, action: str, channel_id: str) -> Optional[Tuple[str, str]]:
        """Checks of one subscribe/publish: None allows, (error code, message) refuses.

        ``max_subscriptions_per_conn`` (``limit-exceeded``), then the ``authorize``
        hook (``forbidden``; a hook that raises forbids).
        """
        if action == "subscribe":
            refusal = self._limit(conn, channel_id)
            if refusal is not None:
                return refusal
        if self.authorize is None:
            return None
        try:
            allowed = bool(self.authorize(conn, action, channel_id))
        except Exception:
            self.counters.add(Counter.HOOK_ERRORS)
            log.exception("authorize hook raised for %s %r (conn %s): forbidden",
                          action, channel_id, conn.conn_id)
            allowed = False
        if allowed:
            return None
        self.counters.add(Counter.FORBIDDEN)
        report(log, f"refused-{action}", "forbidden", conn_id=conn.conn_id, uid=conn.uid,
               remote=conn.remote_address, channel_id=channel_id, level=logging.INFO)
        return p.ERR_FORBIDDEN, f"{action} to {channel_id!r} not allowed"

    def _limit(self, conn: Any, channel_id: str) -> Optional[Tuple[str, str]]:
        held = self.broker.channels_of(conn.conn_id)
        limit = self.max_subscriptions_per_conn
        if len(held) < limit or channel_id in held:
            return None
        self.counters.add(Counter.SUBSCRIPTION_LIMIT)
        report(log, "refused-subscribe", "max-subscriptions", conn_id=conn.conn_id,
               uid=conn.uid, remote=conn.remote_address, channel_id=channel_id)
        return p.ERR_LIMIT_EXCEEDED, (f"{len(held)} subscriptions already "
                                      f"(max_subscriptions_per_conn={limit})")


__all__ = ["ChannelGate"]

"""A connection's JWT token over its life: ``chsk/refresh`` answered, and the close of a
connection whose token expired (4002), for :class:`~sente_lite.core.dispatcher.ServerDispatcher`.

The rules of the frame (its shape, the feature, ``MIN_REFRESH_INTERVAL_S``) and the
deadline are the session's (:class:`~sente_lite.session.ServerSession`); the token is
checked here with the server's :class:`~sente_lite.core.jwt_tokens.JWT`, as at the upgrade.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from .. import session as ss
from ..counters import Counter, Counters
from ..wire import protocol as p
from .jwt_tokens import JWT, TokenRejected
from .ports import ConnectionPort
from .security import report

# The server's log: operators already filter its refusals and closes by this name.
log = logging.getLogger("sente_lite.server")


class Refresher:
    """Answers ``chsk/refresh``: the token passes, for the connection's own ``sub``, and
    its deadline moves (the reply is ``{"exp": ...}``); else ``invalid-token`` (the short
    reason) or ``forbidden`` (another ``sub``). The token is never logged."""

    def __init__(self, tokens: Optional[JWT], counters: Counters) -> None:
        self.tokens = tokens
        self.counters = counters

    def __call__(self, conn: ConnectionPort, ev: ss.RefreshRequest) -> None:
        session = conn.session
        if self.tokens is None:  # without the feature the session answers unknown-event
            return
        try:
            grant = self.tokens.check(ev.token)
        except TokenRejected as exc:
            self._refused(conn, "invalid-token", exc.reason)
            conn.send_frame(session.error(p.ERR_INVALID_TOKEN, exc.reason, ev.cb_id, p.EV_REFRESH))
            return
        if grant.uid != conn.uid:
            self._refused(conn, "other-sub", "token for another sub")
            conn.send_frame(session.error(p.ERR_FORBIDDEN, "the token is for another sub: a "
                                          "connection keeps its uid", ev.cb_id, p.EV_REFRESH))
            return
        session.grant(session.last_seen + grant.deadline_in_s, grant.exp, grant.info)
        self.counters.add(Counter.TOKEN_REFRESHES)
        conn.send_frame(session.reply(p.EV_REFRESH, ev.cb_id, {p.K_EXP: grant.exp}))

    def _refused(self, conn: ConnectionPort, reason: str, message: str) -> None:
        self.counters.add(Counter.TOKEN_REFRESH_REFUSED)
        report(log, "refused-refresh", reason, conn_id=conn.conn_id, uid=conn.uid,
               remote=conn.remote_address, message=message, level=logging.INFO)


def close_expired(conn: ConnectionPort, broker: Any) -> None:
    """Close ``conn``, whose token expired without a valid refresh, with 4002 (logged; it
    leaves its channels at once, as a silent one does)."""
    report(log, "closed", "token-expired", conn_id=conn.conn_id, uid=conn.uid,
           remote=conn.remote_address, code=p.CLOSE_TOKEN_EXPIRED,
           message="no valid chsk/refresh before exp + leeway", level=logging.INFO)
    broker.remove_member(conn.conn_id)  # nothing more queues for it
    conn.close(p.CLOSE_TOKEN_EXPIRED, "token expired")


__all__ = ["Refresher", "close_expired"]

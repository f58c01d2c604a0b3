"""Subscription tokens (feature ``sub-token``, docs/protocol.md section 16): a channel whose
namespace says ``Namespace(subscribe_token=True)``, or whose ``authorize`` hook answers
:data:`TOKEN_REQUIRED`, is subscribed only with a JWT for it (claims ``sub`` = the
connection's uid, ``channel`` = the channel, ``exp``) in the subscribe's ``token``.

The token is checked with the server's :class:`~sente_lite.core.jwt_tokens.JWT`; its
deadline (``exp`` + leeway) is kept in the connection's session (``sub_deadlines``),
moved by ``sente-lite/sub-refresh``, and judged on the dispatcher's tick: past it the
channel is unsubscribed through the hub, as a client's unsubscribe is, and the client
gets ``sente-lite/unsubscribed`` with ``reason: "token-expired"``. The connection stays.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional, Tuple

from .. import session as ss
from ..counters import Counter, Counters
from ..wire import protocol as p
from .jwt_tokens import JWT, Grant, TokenRejected
from .ports import ConnectionPort
from .security import report

# The server's log: operators already filter its refusals by this name.
log = logging.getLogger("sente_lite.server")


class _TokenRequired:
    """The type of :data:`TOKEN_REQUIRED` (one instance)."""

    def __repr__(self) -> str:
        return "sente_lite.TOKEN_REQUIRED"

    def __bool__(self) -> bool:  # a gate that does not know it forbids
        return False


#: What an ``authorize(conn, action, channel_id)`` hook returns to allow a subscribe only
#: with a valid subscription token for that channel (and a publish only while the
#: connection holds one).
TOKEN_REQUIRED = _TokenRequired()
#: The gate's answer for such a channel: the dispatcher checks the token (a face that
#: does not check one refuses with this).
NEEDS_TOKEN: Tuple[str, str] = (p.ERR_INVALID_TOKEN, "this channel needs a subscription token")

Refusal = Optional[Tuple[str, str]]


class SubTokens:
    """Checks subscription tokens for :class:`~sente_lite.core.dispatcher.ServerDispatcher`."""

    def __init__(self, tokens: Optional[JWT], counters: Counters,
                 unsubscribe: Callable[[ConnectionPort, str], bool]) -> None:
        self.tokens = tokens
        self.counters = counters
        #: the hub's unsubscribe (the path a client's unsubscribe takes; True when it was held)
        self.unsubscribe = unsubscribe

    def admit(self, conn: ConnectionPort, action: str, channel_id: str,
              token: Optional[str]) -> Refusal:
        """A subscribe to a channel that needs a token: None when ``token`` passes (its
        deadline is kept), else (code, message)."""
        session = conn.session
        checked = self._check(conn, channel_id, token, action)
        if not isinstance(checked, Grant):
            return checked
        session.sub_deadlines[channel_id] = session.last_seen + checked.deadline_in_s
        return None

    def _check(self, conn: ConnectionPort, channel_id: str, token: Optional[str],
               action: str) -> Any:
        """The :class:`Grant` of ``token`` for ``channel_id`` and ``conn``, else a refusal."""
        if self.tokens is None:
            return self._refused(conn, action, channel_id, "no-jwt", (
                p.ERR_INVALID_TOKEN, "this server checks no subscription tokens (no jwt)"))
        if token is None:
            return self._refused(conn, action, channel_id, "no-token", (
                p.ERR_INVALID_TOKEN, f"{action} to {channel_id!r} needs a subscription token"))
        try:
            grant = self.tokens.check(token, channel_token=True)
        except TokenRejected as exc:
            return self._refused(conn, action, channel_id, "invalid-token",
                                 (p.ERR_INVALID_TOKEN, exc.reason))
        if grant.uid != conn.uid:
            return self._refused(conn, action, channel_id, "other-sub", (
                p.ERR_FORBIDDEN, "the subscription token is for another sub"))
        if grant.channel != channel_id:
            return self._refused(conn, action, channel_id, "other-channel", (
                p.ERR_FORBIDDEN, "the subscription token is for another channel"))
        return grant

    def refresh(self, conn: ConnectionPort, ev: ss.SubRefreshRequest) -> None:
        """Answer ``sente-lite/sub-refresh``: ``{"channel-id", "exp"}`` when the token
        passes for a channel subscribed with one; else ``not-subscribed``,
        ``invalid-token`` or ``forbidden``."""
        session = conn.session
        if ev.channel_id not in session.sub_deadlines:
            code, message = self._refused(conn, "sub-refresh", ev.channel_id, "not-subscribed", (
                p.ERR_NOT_SUBSCRIBED, f"{ev.channel_id!r} is not subscribed with a token here"))
        else:
            checked = self._check(conn, ev.channel_id, ev.token, "sub-refresh")
            if isinstance(checked, Grant):
                if ev.channel_id in session.sub_deadlines:  # not expired meanwhile
                    session.sub_deadlines[ev.channel_id] = session.last_seen + checked.deadline_in_s
                self.counters.add(Counter.SUB_TOKEN_REFRESHES)
                conn.send_frame(session.reply(p.EV_SUB_REFRESH, ev.cb_id, {
                    p.K_CHANNEL: ev.channel_id, p.K_EXP: checked.exp}))
                return
            code, message = checked
        conn.send_frame(session.error(code, message, ev.cb_id, p.EV_SUB_REFRESH))

    def unsubscribed(self, conn: ConnectionPort, channel_id: str) -> None:
        """The client unsubscribes ``channel_id``: its token no longer matters; the hub
        ends the subscription."""
        conn.session.sub_deadlines.pop(channel_id, None)
        self.unsubscribe(conn, channel_id)

    def sweep(self, conn: ConnectionPort, now: float) -> None:
        """End each subscription of ``conn`` whose token expired (on the server's tick)."""
        deadlines = conn.session.sub_deadlines
        if not deadlines or conn.closing:
            return
        for channel_id, deadline in list(deadlines.items()):
            if now < deadline or deadlines.pop(channel_id, None) is None:
                continue
            if not self.unsubscribe(conn, channel_id):
                continue  # no longer held (the server took it back): nothing to tell
            self.counters.add(Counter.SUB_TOKEN_EXPIRED)
            report(log, "unsubscribed", "token-expired", conn_id=conn.conn_id, uid=conn.uid,
                   remote=conn.remote_address, channel_id=channel_id,
                   message="no valid sente-lite/sub-refresh before exp + leeway",
                   level=logging.INFO)
            conn.send_frame(conn.session.packer.encode(p.EV_UNSUBSCRIBED, {
                p.K_CHANNEL: channel_id, p.K_REASON: p.REASON_TOKEN_EXPIRED}))

    def _refused(self, conn: ConnectionPort, action: str, channel_id: str, reason: str,
                 answer: Tuple[str, str]) -> Tuple[str, str]:
        self.counters.add(Counter.SUB_TOKEN_REFUSED)
        report(log, f"refused-{action}", reason, conn_id=conn.conn_id, uid=conn.uid,
               remote=conn.remote_address, channel_id=channel_id, message=answer[1],
               level=logging.INFO)
        return answer


class ChannelChecks:
    """The channel policy of :class:`~sente_lite.core.dispatcher.ServerDispatcher`, with
    subscription tokens: its checks of a channel operation, and the client's unsubscribe."""

    gate: Any  # the ChannelGate
    sub_tokens: SubTokens

    def _refused(self, conn: ConnectionPort, action: str, channel_id: str,
                 event: str, cb_id: Optional[str], token: Optional[str] = None) -> bool:
        """Apply the channel policy (and a channel's token); refusals are answered here.
        True when refused."""
        refusal = self.gate.check(conn, action, channel_id)
        if refusal is NEEDS_TOKEN:
            refusal = self.sub_tokens.admit(conn, action, channel_id, token)
        if refusal is None:
            return False
        conn.send_frame(conn.session.error(refusal[0], refusal[1], cb_id, event))
        return True

    def _unsubscribe(self, conn: ConnectionPort, ev: ss.UnsubscribeRequest) -> None:
        self.sub_tokens.unsubscribed(conn, ev.channel_id)  # the hub's unsubscribe
        conn.send_frame(conn.session.unsubscribed(ev.channel_id, ev.cb_id))


__all__ = ["SubTokens", "ChannelChecks", "TOKEN_REQUIRED", "NEEDS_TOKEN"]

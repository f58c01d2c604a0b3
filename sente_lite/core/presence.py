"""Channel presence and join/leave, per namespace: who is subscribed to a channel, and
telling its subscribers who comes and goes. No I/O, no thread, no clock.

A channel's namespace decides (:class:`~sente_lite.core.namespaces.Namespace`):
``presence=True`` keeps the channel's members in the broker (every server sharing it
sees them) and lets subscribed clients ask for them; ``join_leave=True`` sends
``sente-lite/join`` / ``sente-lite/leave`` to the channel's subscribers through the
broker's :meth:`~sente_lite.brokers.base.Broker.publish_event`, the path its messages
take, so in order with them. A member is ``{client-id, uid, conn-id, info}`` (``info``:
the ``info`` claim of the connection's JWT token, else None).

The hub calls :meth:`ChannelPresence.joined` when a subscribe succeeded and
:meth:`ChannelPresence.left` wherever a connection leaves a channel (unsubscribe, a
closed connection, anything that removes its subscription), so every way out gives a
leave. The dispatcher answers the presence requests with :meth:`ChannelPresence.answer`.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Tuple

from .. import session as ss
from ..counters import Counter
from ..errors import BrokerCommandError, BrokerUnavailable
from ..wire import protocol as p
from ..wire.packers import JSON_PACKER
from ..brokers.base import Broker
from .hub import Hub
from .namespaces import Namespace, Namespaces, namespace_of

log = logging.getLogger("sente_lite.server")

Member = Dict[str, Any]
#: Broker failures a presence call meets (answered with their code, or logged and counted).
_BROKER_DOWN = (BrokerUnavailable, BrokerCommandError)


def member_of(conn: Any) -> Member:
    """The presence member of connection ``conn`` (wire names)."""
    return {p.K_CLIENT_ID: conn.client_id, p.K_UID: conn.uid, p.K_CONN_ID: conn.conn_id,
            p.K_INFO: conn.session.token_info}


def change_text(joined: bool, channel: str, member: Member) -> bytes:
    """The JSON frame of a join (``joined``) or a leave of ``member`` in ``channel``."""
    return p.encode_bytes(p.EV_JOIN if joined else p.EV_LEAVE,
                          {p.K_CHANNEL: channel, p.K_MEMBER: member})


class ChannelPresence:
    """Presence and join/leave of a server's channels over its broker (see the module)."""

    def __init__(self, hub: Hub, namespaces: Optional[Namespaces]) -> None:
        self.broker: Broker = hub.broker
        self.counters = hub.counters
        self.namespaces = namespaces
        if self.active:
            hub.channel_presence = self

    def _options(self, channel: str) -> Tuple[bool, bool]:
        """(presence, join_leave) of ``channel``'s namespace."""
        ns: Optional[Namespace] = (self.namespaces.get(channel)
                                   if self.namespaces is not None else None)
        return (False, False) if ns is None else (ns.presence, ns.join_leave)

    @property
    def active(self) -> bool:
        """Some namespace has presence or join/leave (else every call does nothing)."""
        return self.namespaces is not None and self.namespaces.has_presence

    def joined(self, conn: Any, channel: str) -> None:
        """``conn`` is now subscribed to ``channel``: record it, tell the subscribers."""
        presence, join_leave = self._options(channel)
        if not (presence or join_leave):
            return
        member = member_of(conn)
        try:
            new = self.broker.presence_add(channel, member) if presence else True
            if join_leave and new:
                self.broker.publish_event(channel, change_text(True, channel, member))
        except _BROKER_DOWN as exc:
            self.counters.add(Counter.BROKER_COMMAND_ERRORS)
            log.warning("the join of %s to %r is not recorded: %s", conn.conn_id, channel, exc)

    def left(self, conn: Any, channels: List[str]) -> None:
        """``conn`` is no longer subscribed to ``channels``: forget it, tell the others."""
        if not self.active:
            return
        member: Optional[Member] = None
        for channel in channels:
            presence, join_leave = self._options(channel)
            if not (presence or join_leave):
                continue
            try:
                was = self.broker.presence_remove(channel, conn.conn_id) if presence else True
                if join_leave and was:
                    member = member or member_of(conn)
                    self.broker.publish_event(channel, change_text(False, channel, member))
            except _BROKER_DOWN as exc:  # its entry expires within the broker's presence ttl
                self.counters.add(Counter.BROKER_COMMAND_ERRORS)
                log.warning("the leave of %s from %r is not recorded: %s", conn.conn_id, channel, exc)

    def refusal(self, conn: Any, channel: str) -> Optional[Tuple[str, str]]:
        """Why ``conn`` may not ask for ``channel``'s presence ((code, message)), or None."""
        if not self._options(channel)[0]:
            return p.ERR_FORBIDDEN, (f"presence of {channel!r} is off: namespace "
                                     f"{namespace_of(channel)!r} has no presence=True")
        if channel not in self.broker.channels_of(conn.conn_id):
            return p.ERR_FORBIDDEN, f"presence of {channel!r}: subscribe to it first"
        return None

    def act(self, conn: Any, ev: ss.PresenceRequest) -> None:
        """Answer ``conn``'s presence request (the dispatcher's action for it)."""
        session = conn.session
        event = p.EV_PRESENCE_STATS if ev.stats else p.EV_PRESENCE
        refusal = self.refusal(conn, ev.channel_id)
        if refusal is not None:
            self.counters.add(Counter.FORBIDDEN)
            conn.send_frame(session.error(refusal[0], refusal[1], ev.cb_id, event))
            return
        try:
            if not ev.stats and session.packer is JSON_PACKER:  # the members' texts, joined
                frame = (b'["' + p.EV_REPLY.encode() + b'",{"' + p.K_MEMBERS.encode() + b'":'
                         + self.broker.presence_json(ev.channel_id) + b"},"
                         + p.dumps(ev.cb_id).encode("utf-8") + b"]")
            else:
                frame = session.reply(event, ev.cb_id, self.answer(ev.channel_id, ev.stats))
        except _BROKER_DOWN as exc:
            conn.send_frame(session.error(exc.code, str(exc), ev.cb_id, event))
            return
        conn.send_frame(frame)

    def answer(self, channel: str, stats: bool) -> Dict[str, Any]:
        """The reply to a presence request: ``{members: [...]}``, or with ``stats``
        ``{members: N, users: M}``."""
        if stats:
            return dict(self.broker.presence_stats(channel))
        return {p.K_MEMBERS: self.broker.presence_of(channel)}


class PresenceCalls:
    """The server's presence calls (part of :class:`sente_lite.Server`)."""

    channels: Broker
    max_channel_id_chars: int

    def _present(self, channel_id: str) -> None:
        problem = p.channel_id_problem(channel_id, self.max_channel_id_chars)
        if problem:
            raise ValueError(problem)

    def presence_of(self, channel_id: str) -> List[Member]:
        """The members of ``channel_id`` on every server sharing the broker, each
        ``{"client-id", "uid", "conn-id", "info"}``; empty unless its namespace has
        ``presence=True``. With Redis this waits for it (BrokerUnavailable while down)."""
        self._present(channel_id)
        return self.channels.presence_of(channel_id)

    def presence_stats(self, channel_id: str) -> Dict[str, int]:
        """``{"members": N, "users": M}`` of ``channel_id`` on every server (M: distinct uids)."""
        self._present(channel_id)
        return dict(self.channels.presence_stats(channel_id))


__all__ = ["ChannelPresence", "PresenceCalls", "Member", "member_of", "change_text"]

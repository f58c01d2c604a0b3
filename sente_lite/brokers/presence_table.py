"""Channel presence kept in this process: who is subscribed to each channel with
presence on, as the in-process brokers (local, memory) keep it. No I/O.

A member is a dict ``{"client-id", "uid", "conn-id", "info"}`` (wire names), keyed by
its ``conn-id``: one connection is one member of a channel however often it
subscribes. The table is thread-safe; every call takes its one lock briefly.
"""

from __future__ import annotations

import threading
from typing import Any, Dict, List, Optional, Tuple

from ..wire import protocol as p

Member = Dict[str, Any]
#: The key of a member: its connection's id.
CONN_ID = "conn-id"
#: The key of a member's user id.
UID = "uid"


class PresenceTable:
    """channel -> conn-id -> (member, its JSON text), for the channels with presence on
    (the text is made once, at ``add``: a channel's members are answered by joining them)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._channels: Dict[str, Dict[str, Tuple[Member, bytes]]] = {}

    def add(self, channel: str, member: Member) -> bool:
        """Record ``member`` in ``channel``; True when its conn-id was not there."""
        text = p.dumps(member).encode("utf-8")
        with self._lock:
            members = self._channels.setdefault(channel, {})
            new = member[CONN_ID] not in members
            members[member[CONN_ID]] = (member, text)
            return new

    def remove(self, channel: str, conn_id: str) -> Optional[Member]:
        """Forget ``conn_id`` in ``channel``; the member it was, or None."""
        with self._lock:
            members = self._channels.get(channel)
            if members is None:
                return None
            entry = members.pop(conn_id, None)
            if not members:
                del self._channels[channel]
            return None if entry is None else entry[0]

    def members(self, channel: str) -> List[Member]:
        """The members of ``channel``, in the order they joined."""
        with self._lock:
            return [m for m, _ in self._channels.get(channel, {}).values()]

    def json(self, channel: str) -> bytes:
        """The members of ``channel`` as a JSON array (their texts joined)."""
        with self._lock:
            return b"[" + b",".join(t for _, t in self._channels.get(channel, {}).values()) + b"]"

    def stats(self, channel: str) -> Dict[str, int]:
        """``{"members": N, "users": M}`` of ``channel`` (M: distinct uids)."""
        with self._lock:
            members = self._channels.get(channel, {})
            return {"members": len(members),
                    "users": len({m[UID] for m, _ in members.values()})}

    def channels(self) -> int:
        """How many channels have members."""
        with self._lock:
            return len(self._channels)

    def total(self) -> int:
        """Members over every channel."""
        with self._lock:
            return sum(len(m) for m in self._channels.values())


class TablePresence:
    """The presence calls of a broker (:class:`~sente_lite.brokers.base.Broker`) whose
    nodes all live in this process and share ``presence_table``."""

    presence_table: PresenceTable

    def presence_add(self, channel: str, member: Member) -> bool:
        return self.presence_table.add(channel, member)

    def presence_remove(self, channel: str, conn_id: str) -> bool:
        return self.presence_table.remove(channel, conn_id) is not None

    def presence_of(self, channel: str) -> List[Member]:
        return self.presence_table.members(channel)

    def presence_stats(self, channel: str) -> Dict[str, int]:
        return self.presence_table.stats(channel)

    def presence_json(self, channel: str) -> bytes:
        return self.presence_table.json(channel)


__all__ = ["PresenceTable", "TablePresence", "Member"]

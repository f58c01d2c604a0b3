"""What the server's dispatcher (:mod:`sente_lite.core.dispatcher`) needs of one
connection, whatever the face that owns it.

A face (the threaded :class:`sente_lite.server.Connection`, the in-memory
:class:`sente_lite.testing.pair.SessionPair`, an asyncio face later) implements
:class:`ConnectionPort`; the dispatcher acts on a connection through it alone. Every
call returns at once: sending queues, closing asks for a close, settling hands a result
to whoever waits, on the waiter's own terms (a thread's future, an event loop's).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Protocol

from ..session import ServerSession, Waiter
from ..wire.packers import Packer

#: An application's event handler: ``handler(conn, data)`` returns the reply to a request.
Handler = Callable[[Any, Any], Any]


class ConnectionPort(Protocol):
    """One live connection, as the dispatcher acts on it (and the hub delivers to it).

    ``session`` is its protocol state; the dispatcher builds every answer with it.
    The object is also what application handlers and the ``authorize`` hook receive.
    """

    conn_id: str
    client_id: str
    uid: Optional[str]
    remote_address: str
    session: ServerSession
    packer: Packer
    #: Window bits of a negotiated permessage-deflate (0: none): the hub builds frames for it.
    deflate_bits: int

    @property
    def closing(self) -> bool:
        """A close was asked (by the server or the application): no heartbeat judges it."""
        ...

    @property
    def input_paused(self) -> bool:
        """The face stopped reading this peer (its handlers are behind): its silence
        meanwhile is the face's doing, not the peer's."""
        ...

    def send_frame(self, frame: bytes) -> bool:
        """Queue one encoded frame (in this connection's packer); False when it is
        closing or its outbound queue overflowed. Never blocks."""
        ...

    def deliver(self, wire: bytes, size: int) -> bool:
        """Queue one channel message built by the hub (``size``: its payload's length)."""
        ...

    def ping(self) -> None:
        """Queue a heartbeat ping."""
        ...

    def close(self, code: int, reason: str = "") -> None:
        """Close with ``code`` after what is already queued."""
        ...

    def settle(self, waiter: Waiter, result: Any, error: Optional[BaseException]) -> None:
        """Hand the outcome of one of the server's requests to its ``waiter`` (once)."""
        ...


__all__ = ["ConnectionPort", "Handler"]

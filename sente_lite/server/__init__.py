"""The threaded server face: :class:`Server` and :class:`Connection` (``server``), its
network thread (``netloop`` with ``accept``, ``handshake``, ``reader``, ``writer``,
``link``), its handler threads (``workers``), its HTTP front (``front``,
``static``, ``api_front``) and the glue from links to the core's dispatcher (``handler``:
upgrades, slots, closes; ``lanes``: which thread handles each frame)."""

from .server import Connection, Server

__all__ = ["Server", "Connection"]

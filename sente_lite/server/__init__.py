"""The threaded server face: :class:`Server` and :class:`Connection` (``server``) with
their ``settings`` and what a server sends (``messaging``), its network thread
(``netloop`` with ``accept``, ``handshake``, ``reader``, ``writer``, ``link`` and its
lifecycle table ``link_state``), its handler threads (``workers``, ``lanes``), its HTTP
front (``front``, ``static``, ``api_front``) and the glue from links to the core
(``handler``)."""

from .server import Connection, Server

__all__ = ["Server", "Connection"]

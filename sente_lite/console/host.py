"""A console attached to a running Server or Client: the nREPL ops and their transports."""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional

from .evaluator import install_router, uninstall_router
from .nrepl import Nrepl
from .settings import ConsoleSettings
from .tcp import TcpTransport
from .ws import ServerWs

log = logging.getLogger("sente_lite.console")


class Console(ConsoleSettings):
    """A remote Python console (nREPL) for ``Server(console=...)`` / ``Client(console=...)``:
    its settings (:class:`~sente_lite.console.settings.ConsoleSettings`) and :meth:`attach`,
    which the server or client calls once started."""

    def attach(self, bindings: Dict[str, Any], server: Any = None) -> "ConsoleHost":
        """Serve this console in the running process: ``bindings`` (``{"srv": server}``)
        are in every session's namespace; ``server`` (a started Server) adds the WebSocket
        transport. Returns the host (``stop()`` it)."""
        if server is None and self.console_users:
            raise ValueError("console_users applies to a server's WebSocket console; a "
                             "client's console is served over TCP only")
        return ConsoleHost(self, bindings, server=server).start()


class ConsoleHost:
    """Owns a console's sessions and transports; :meth:`stop` joins every thread it started.

    ``bindings`` (e.g. ``{"srv": server}``) are in every session's namespace;
    ``server`` (a started :class:`~sente_lite.Server`) adds the WebSocket transport
    when the settings ask for it.
    """

    def __init__(self, settings: ConsoleSettings, bindings: Dict[str, Any], server: Any = None) -> None:
        self.settings = settings
        self.nrepl = Nrepl(settings, bindings)
        self.tcp: Optional[TcpTransport] = None
        self.ws: Optional[ServerWs] = None
        self._server = server
        self._started = False

    @property
    def port(self) -> int:
        """The TCP transport's port (0 when it is off)."""
        return self.tcp.port if self.tcp is not None else 0

    def start(self) -> "ConsoleHost":
        """Start the transports the settings name."""
        install_router()
        self._started = True
        try:
            if self.settings.tcp:
                self.tcp = TcpTransport(self.nrepl, self.settings).start()
            if self.settings.websocket and self._server is not None:
                self.ws = ServerWs(self._server, self.nrepl)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the transports, close every session, restore stdout/stderr."""
        if not self._started:
            return
        self._started = False
        if self.ws is not None:
            self.ws.stop()
        if self.tcp is not None and self.tcp.port:
            self.tcp.stop()
        self.nrepl.close()
        uninstall_router()

    def stats(self) -> Dict[str, int]:
        """Counts: evals, sessions, refusals and bad-input closes."""
        return {"console_evals": self.nrepl.evals,
                "console_sessions": self.nrepl.session_count,
                "console_refused": self.nrepl.refused + (self.ws.refused if self.ws else 0)
                + (self.tcp.refused_connections if self.tcp else 0),
                "console_bad_input_closes": self.tcp.closed_bad_input if self.tcp else 0}

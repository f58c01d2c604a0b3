"""The nREPL messages over a sente_lite WebSocket, as the application event ``sente-lite-console/nrepl``.

Built on the public API only: the server side registers ``srv.on(WS_EVENT)`` and an
``on_disconnect`` hook; answers go back with ``conn.send(WS_EVENT, response)``. A
request from a connection whose uid was not set by the server's ``authenticate``
hook (uid equal to its client-id: anonymous), or is not in ``console_users``, is
answered ``status ["done", "error", "forbidden"]``, logged and counted; nothing runs.
"""

from __future__ import annotations

import logging
from typing import Any

from .nrepl import Nrepl
from .settings import WS_EVENT

log = logging.getLogger("sente_lite.console")


def allowed(conn: Any, users: "tuple[str, ...]") -> bool:
    """True when ``conn``'s uid came from authentication and is listed in ``users``."""
    uid = getattr(conn, "uid", None)
    return bool(uid) and uid != getattr(conn, "client_id", None) and uid in users


class ServerWs:
    """Serve a server's console to ``console_users`` over its WebSocket connections."""

    def __init__(self, srv: Any, nrepl: Nrepl) -> None:
        self.srv = srv
        self.nrepl = nrepl
        self.refused = 0
        self.active = True
        srv.on(WS_EVENT, self._on_message)
        srv.on_disconnect(self._on_disconnect)

    def stop(self) -> None:
        """Stop answering (the handler stays registered and refuses)."""
        self.active = False
        self.srv.off(WS_EVENT)

    def _on_message(self, conn: Any, data: Any) -> None:
        msg_id = data.get("id") if isinstance(data, dict) else None
        if not self.active or not allowed(conn, self.nrepl.settings.console_users):
            self.refused += 1
            log.warning("console: refused %s from conn %s uid=%r: %s", WS_EVENT, conn.conn_id, conn.uid,
                        "the console is stopped" if not self.active else
                        "uid not authenticated or not in console_users")
            conn.send(WS_EVENT, {"id": msg_id, "status": ["done", "error", "forbidden"],
                                 "err": "console refused: this connection's uid is not in console_users "
                                        "(anonymous connections never get the console)\n"})
            return
        self.nrepl.handle(data, lambda m: conn.send(WS_EVENT, m), f"ws-{conn.conn_id}", conn.uid, "ws")

    def _on_disconnect(self, conn: Any, code: int, reason: str) -> None:
        self.nrepl.close_owner(f"ws-{conn.conn_id}")

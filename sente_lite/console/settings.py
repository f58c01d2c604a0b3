"""The console's settings (:class:`ConsoleSettings`; :class:`sente_lite.Console` adds ``attach``)."""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass, field
from typing import Optional, Tuple

from .. import limits as lim
from ..wire import protocol as p
from . import bencode

#: The application event that carries nREPL messages over a sente_lite WebSocket.
WS_EVENT = "sente-lite-console/nrepl"
#: The file editors read to find an nREPL server of the working directory.
DEFAULT_PORT_FILE = ".nrepl-port"
#: nREPL sessions alive at once (each has an eval thread); one more clone is refused.
DEFAULT_MAX_SESSIONS = 16
#: TCP connections served at once; one more is closed at once (logged).
DEFAULT_MAX_CONNECTIONS = 8


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and addresses in 127.0.0.0/8 or ``::1``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


#: What every numeric console setting may be (``sente-lite serve --console-port`` too).
CONSOLE_BOUNDS = {
    "port": lim.Bound(0, 65535, integer=True),
    "max_sessions": lim.Bound(1, 1024, integer=True),  # a thread each
    "max_connections": lim.Bound(1, 1024, integer=True),  # a thread each
    "max_message_bytes": lim.Bound(1, 1 << 30, integer=True),
    "max_depth": lim.Bound(1, 200, integer=True),  # the decoder recurses: stay well below the stack
}


@dataclass(frozen=True)
class ConsoleSettings:
    """How a remote Python console (nREPL) is served; off unless given to a Server or Client.

    ``host``/``port``: the TCP transport's bind address (loopback by default; another
    address needs ``tls``), ``port=0`` picks a free port; ``tcp=False`` turns that
    transport off. ``tls``: an ``ssl.SSLContext`` (server side) for the TCP transport.
    ``port_file``: written with the TCP port once listening, removed on stop (None:
    none). ``websocket``: serve the console over the sente_lite WebSocket (server only)
    to the authenticated uids in ``console_users``. Limits: ``max_sessions``,
    ``max_connections``, ``max_message_bytes``, ``max_depth``.
    """

    host: str = "127.0.0.1"
    port: int = 0
    tcp: bool = True
    tls: Optional[ssl.SSLContext] = None
    port_file: Optional[str] = DEFAULT_PORT_FILE
    websocket: bool = True
    console_users: Tuple[str, ...] = field(default_factory=tuple)
    max_sessions: int = DEFAULT_MAX_SESSIONS
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_message_bytes: int = bencode.DEFAULT_MAX_MESSAGE_BYTES
    max_depth: int = bencode.DEFAULT_MAX_DEPTH

    def __post_init__(self) -> None:
        if isinstance(self.console_users, str):
            raise TypeError("console_users must be a list of uids, not one string")
        object.__setattr__(self, "console_users", tuple(self.console_users))
        if not all(isinstance(u, str) and u for u in self.console_users):
            raise ValueError(f"console_users must be non-empty strings, got {self.console_users!r}")
        for name, bound in CONSOLE_BOUNDS.items():
            lim.check_setting(f"console {name}", getattr(self, name), bound)
        if self.tls is not None and not isinstance(self.tls, ssl.SSLContext):
            raise TypeError("console tls must be an ssl.SSLContext (server side)")
        if self.tcp and not is_loopback(self.host) and self.tls is None:
            raise ValueError(
                f"console bind address {self.host!r} is not a loopback address: the console runs "
                "any Python code it is sent, so serving it beyond this machine needs tls= (an "
                "ssl.SSLContext that verifies client certificates); or keep host='127.0.0.1'")
        if (self.tcp and not is_loopback(self.host) and self.tls is not None
                and self.tls.verify_mode != ssl.CERT_REQUIRED):
            raise ValueError(
                f"console bind address {self.host!r} is not a loopback address and tls does not "
                "require client certificates: set tls.verify_mode = ssl.CERT_REQUIRED and load the "
                "operators' CA (tls.load_verify_locations)")

    def handshake_features(self) -> Tuple[str, ...]:
        """What a server with this console adds to its handshake's ``features``: ``console``
        when it answers :data:`WS_EVENT` (the WebSocket transport is on and names some users)."""
        return (p.FEATURE_CONSOLE,) if self.websocket and self.console_users else ()


"""A remote Python console that speaks nREPL, for a running Server or Client.

Off by default: ``Server(console=Console(...))`` / ``Client(..., console=...)`` /
``sente-lite serve --console``. Transports: bencode over TCP on loopback (with a
``.nrepl-port`` file for editors) and the ``sente-lite-console/nrepl`` event over
the sente_lite WebSocket (only for uids in ``console_users``). ``sente-lite console``
is the operator's command line. See docs/console.md.
"""

from .host import Console
from .settings import WS_EVENT

__all__ = ["Console", "WS_EVENT"]

"""permessage-deflate (RFC 7692) for the server's outbound frames.

``Server(compression="deflate")`` offers the extension (websockets'
:class:`~websockets.extensions.permessage_deflate.ServerPerMessageDeflateFactory`,
with ``server_no_context_takeover``): every message the server sends is
compressed on its own, so a channel message is compressed once per publish and
the same bytes go to every subscriber that negotiated it. Peers that did not
negotiate it (the Python client: websocket-client has no deflate) get the plain
frame. Inbound compressed frames are decompressed by websockets, within
``max_message_bytes``.
"""

from __future__ import annotations

import zlib
from typing import Any, List, Optional

DEFLATE = "deflate"
#: Values of ``Server(compression=)``.
COMPRESSIONS = (None, DEFLATE)
#: Payloads shorter than this go uncompressed (deflate seldom shrinks them).
DEFAULT_COMPRESSION_MIN_BYTES = 256
#: zlib level of outbound compression (1 fastest .. 9 smallest).
DEFLATE_LEVEL = 6
_TAIL = b"\x00\x00\xff\xff"


def validate(compression: Optional[str]) -> Optional[str]:
    """``compression`` when it is a known value, else ValueError naming the choices."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be None or {DEFLATE!r}, got {compression!r}")
    return compression


def server_extensions(compression: Optional[str]) -> Optional[List[Any]]:
    """The extension factories websockets' ServerProtocol offers for ``compression``."""
    if compression != DEFLATE:
        return None
    from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
    return [ServerPerMessageDeflateFactory(server_no_context_takeover=True)]


def negotiated_window_bits(extensions: List[Any]) -> int:
    """The server's window bits when permessage-deflate was negotiated, else 0."""
    for ext in extensions:
        if getattr(ext, "name", "") == "permessage-deflate":
            return int(ext.local_max_window_bits)
    return 0


def deflate(payload: bytes, window_bits: int) -> bytes:
    """``payload`` compressed as one permessage-deflate message (no context kept)."""
    c = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -window_bits)
    data = c.compress(payload) + c.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4] if data.endswith(_TAIL) else data


__all__ = ["DEFLATE", "COMPRESSIONS", "DEFAULT_COMPRESSION_MIN_BYTES", "DEFLATE_LEVEL", "validate",
           "server_extensions", "negotiated_window_bits", "deflate"]

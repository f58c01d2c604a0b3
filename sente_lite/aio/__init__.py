"""The asyncio client: :class:`AsyncClient` on ``websockets.asyncio.client``, the same
protocol and names as the threaded :class:`sente_lite.Client` (docs/asgi.md)."""

from .client import AsyncClient

__all__ = ["AsyncClient"]

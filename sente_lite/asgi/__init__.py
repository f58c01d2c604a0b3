"""The ASGI face: :class:`App`, the sente_lite protocol as a plain ASGI 3 application
(uvicorn, hypercorn, or mounted in Starlette/FastAPI). See docs/asgi.md."""

from .app import NOT_HERE, App
from .connection import AsgiConnection

__all__ = ["App", "AsgiConnection", "NOT_HERE"]

"""uvicorn serving an ASGI application on a free port in a thread of the test, stopped
(and joined) by the test's end."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any, Iterator

import pytest

uvicorn = pytest.importorskip("uvicorn")

from support import free_port, wait_until  # noqa: E402


@contextlib.contextmanager
def serving(app: Any, lifespan: str = "on") -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1; yields ``http://127.0.0.1:PORT``."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan=lifespan,
                            log_level="warning", ws="websockets-sansio"
                            if _has_ws("websockets-sansio") else "websockets")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), 10.0, "uvicorn started")
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15.0)
        assert not thread.is_alive(), "uvicorn did not stop"


def _has_ws(name: str) -> bool:
    from uvicorn.config import WS_PROTOCOLS
    return name in WS_PROTOCOLS


def run(coro: Any, timeout: float = 30.0) -> Any:
    """Run ``coro`` on a new event loop in this thread, within ``timeout`` seconds."""
    return asyncio.run(asyncio.wait_for(coro, timeout))

"""ASGI applications under uvicorn in a thread, with the start, stop, ``url`` and ``stats``
the fan-out benchmark's server process drives (:mod:`sente_lite.bench.fanout`): the ASGI
face (:class:`sente_lite.asgi.App`, system ``asgi``) and python-socketio's ``ASGIApp``
(system ``socketio_asgi``, :mod:`sente_lite.bench.sio`). Needs ``uvicorn``."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Optional

from ..asgi import App

#: Seconds uvicorn may take to start or stop.
UVICORN_START_S = 20.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Uvicorn:
    """An ASGI application served by uvicorn on 127.0.0.1 (a free port), in a thread, with
    the same uvicorn settings for every application the benchmark compares."""

    def __init__(self, app: Any, url_path: str) -> None:
        import uvicorn
        from uvicorn.config import WS_PROTOCOLS

        self.app = app
        self.port = _free_port()
        self.url_path = url_path
        ws = "websockets-sansio" if "websockets-sansio" in WS_PROTOCOLS else "websockets"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, lifespan="on",
                                log_level="warning", access_log=False, ws=ws,
                                ws_ping_interval=None, backlog=4096)
        self._server = uvicorn.Server(config)
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{self.url_path}"

    def start(self) -> "Uvicorn":
        self._thread = threading.Thread(target=self._server.run, name="uvicorn", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + UVICORN_START_S
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def stats(self) -> dict:
        return {}

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(UVICORN_START_S)


class UvicornApp(Uvicorn):
    """An :class:`App` served by uvicorn."""

    def __init__(self, heartbeat_ms: int, max_connections: int, history_size: int) -> None:
        app = App(heartbeat_ms=heartbeat_ms, max_connections=max_connections,
                  history_size=history_size)
        self.channels = app.channels
        super().__init__(app, "/chsk")

    def stats(self) -> dict:
        return self.app.stats()  # type: ignore[no-any-return]


__all__ = ["Uvicorn", "UvicornApp"]

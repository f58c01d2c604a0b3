"""The client's connection token: evaluated at each (re)connect, and refreshed over the
open socket before it expires when the server has feature ``refresh``
(:mod:`sente_lite.wire.token_expiry` says when).

A token source (``Client(token=callable)``) that raises or returns None stops the client
for good (``refusal``, status ``closed``): at a connect, and at a refresh. A close 4002
(the server saw the token expire) is followed by a reconnect with a fresh token.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from typing import Any, Callable, Dict, Optional

from ..errors import ConnectRefused, RemoteError
from ..wire import protocol as p
from ..wire.token_expiry import (REFRESH_TIMEOUT_S, RefreshSchedule, TokenSourceRefused,
                                 checked_token)

log = logging.getLogger("sente_lite.client")


def token_from(source: Any) -> Optional[str]:
    """The token of ``source`` now: a string as given, a callable's answer; raises
    :class:`TokenSourceRefused` when a callable raises or answers None or ``""``."""
    if not callable(source):
        return source
    try:
        token = source()
    except Exception as exc:
        raise TokenSourceRefused(f"the token source raised {type(exc).__name__}") from None
    return checked_token(token)


class RefreshMixin:
    """Refreshes a :class:`~sente_lite.Client`'s token over its open socket."""

    token: Any
    refusal: Optional[ConnectRefused]
    _ws: Any
    _send_lock: Any
    _counts: Dict[str, int]
    _start_request: Callable[..., tuple]
    _stop: threading.Event

    def _init_refresh(self) -> None:
        self._refresh = RefreshSchedule()
        self._token_used: Optional[str] = None  # the token of the connection being opened
        self._token_at = 0.0                    # when it was got (seconds since the epoch)

    def _connect_token(self) -> Optional[str]:
        """The token for the next upgrade (kept for its handshake's refresh plan)."""
        token = token_from(self.token)
        self._token_used, self._token_at = token, time.time()
        return token

    def _plan_refresh(self, info: Dict[str, Any]) -> None:
        """A handshake came (caller holds ``_send_lock``)."""
        features = info.get(p.K_FEATURES)
        self._refresh.connected(self._token_used if callable(self.token) else None, info,
                                features if isinstance(features, list) else (), self._token_at)

    def _refresh_if_due(self, connected: bool) -> None:
        """Send a refresh when one is due (any thread; the token source runs here)."""
        with self._send_lock:
            if not connected or not self._refresh.due(time.time()):
                return
            self._refresh.sent()
        try:
            token = token_from(self.token)
        except TokenSourceRefused as exc:
            self._give_up(str(exc))
            return
        assert token is not None
        try:
            _, fut = self._start_request(p.EV_REFRESH, {p.K_TOKEN: token}, REFRESH_TIMEOUT_S)
        except Exception as exc:  # closed, queue full: the next tick may try again
            log.info("token refresh not sent: %s", type(exc).__name__)
            with self._send_lock:
                self._refresh.answered(token, None, time.time())
            return
        fut.add_done_callback(lambda f: self._refreshed(f, token))

    def _refreshed(self, fut: "concurrent.futures.Future[Any]", token: str) -> None:
        if self._stop.is_set():
            return  # the client closed: nothing to refresh
        exc = fut.exception()
        result = fut.result() if exc is None else None
        exp = result.get(p.K_EXP) if isinstance(result, dict) else None
        retry = not (isinstance(exc, RemoteError) and exc.code == p.ERR_FORBIDDEN)
        with self._send_lock:
            moved = self._refresh.answered(token, exp, time.time(), retry)
        if moved:
            self._counts["token_refreshes"] += 1
        else:
            self._counts["token_refresh_failures"] += 1
            log.warning("token refresh failed: %s", exc.code if isinstance(exc, RemoteError)
                        else type(exc).__name__ if exc is not None else "no later exp")

    def _give_up(self, why: str) -> None:
        """The token source refused: stop for good (``refusal``; status ``closed``)."""
        self.refusal = ConnectRefused(why)
        log.warning("%s: the client stops", why)
        ws = self._ws
        if ws is not None:
            ws.abort()  # the reader sees the loss, then the refusal, and ends

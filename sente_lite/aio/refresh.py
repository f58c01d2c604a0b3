"""The asyncio client's connection token: evaluated at each (re)connect, and refreshed over
the open socket before it expires when the server has feature ``refresh``
(:mod:`sente_lite.wire.token_expiry` says when), as the threaded client does.

A token source (plain or ``async`` callable) that raises or gives no token stops the
client for good (``refusal``, status ``closed``), at a connect or at a refresh.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from typing import Any, Awaitable, Callable, Dict, Optional

from websockets.asyncio.client import ClientConnection

from .. import session as ss
from ..errors import ConnectRefused, RemoteError
from ..wire import protocol as p
from ..wire.token_expiry import (REFRESH_TIMEOUT_S, RefreshSchedule, TokenSourceRefused,
                                 checked_token)

log = logging.getLogger("sente_lite.client")


async def token_of(source: Any) -> Optional[str]:
    """The token of ``source`` now: a string (or None) as given, a callable's (plain or
    ``async``) answer; :class:`TokenSourceRefused` when the callable raises or gives none."""
    if not callable(source):
        return source
    try:
        value = source()
        if inspect.isawaitable(value):
            value = await value
    except Exception as exc:
        raise TokenSourceRefused(f"the token source raised {type(exc).__name__}") from None
    return checked_token(value)


class RefreshMixin:
    """Token evaluation and refresh for an :class:`~sente_lite.aio.AsyncClient`."""

    token: Any
    refusal: Optional[ConnectRefused]
    _session: ss.ClientSession
    _counts: Dict[str, int]
    _refresh: RefreshSchedule
    _closing: bool

    _send_frame: Callable[[bytes, Optional[str]], Awaitable[None]]
    _sub_refresh_if_due: Callable[[], Awaitable[None]]  # subscription tokens (sub_tokens.py)

    async def _token_now(self) -> Optional[str]:
        """The connection token now (:func:`token_of` its source)."""
        return await token_of(self.token)

    async def _refresh_if_due(self, ws: ClientConnection) -> None:
        """Send ``chsk/refresh`` with a fresh token when one is due (feature ``refresh``);
        its answer is taken by :meth:`_refreshed`. A refusing token source stops the client.
        First the subscription tokens' refreshes that are due (feature ``sub-token``)."""
        await self._sub_refresh_if_due()
        if not self._refresh.due(time.time()):
            return
        self._refresh.sent()
        try:
            token = await self._token_now()
        except TokenSourceRefused as exc:
            self.refusal = ConnectRefused(str(exc))
            log.warning("%s: the client stops", exc)
            ws.transport.abort()
            return
        assert token is not None
        await self._token_request(p.EV_REFRESH, {p.K_TOKEN: token},
                                  lambda f: self._refreshed(f, token))

    async def _token_request(self, event: str, data: Any,
                             done: Callable[["asyncio.Future[Any]"], None]) -> None:
        """Send the request ``event`` (answered within ``REFRESH_TIMEOUT_S``); ``done(fut)``
        gets its outcome (a send that fails is a failure; the tick is not held up)."""
        fut: "asyncio.Future[Any]" = asyncio.get_running_loop().create_future()
        cb_id, frame = self._session.request(event, data, fut, time.monotonic(), REFRESH_TIMEOUT_S)
        fut.add_done_callback(done)
        try:
            await self._send_frame(frame, cb_id)
        except Exception as exc:  # closed, queue full: answered as a failure
            self._session.forget(cb_id)
            if not fut.done():
                fut.set_exception(exc)

    def _refreshed(self, fut: "asyncio.Future[Any]", token: str) -> None:
        if self._closing:
            return  # the client closed: nothing to refresh
        exc = fut.exception() if not fut.cancelled() else None
        result = fut.result() if exc is None and not fut.cancelled() else None
        exp = result.get(p.K_EXP) if isinstance(result, dict) else None
        code = exc.code if isinstance(exc, RemoteError) else None
        retry = code != p.ERR_FORBIDDEN
        if self._refresh.answered(token, exp, time.time(), retry):
            self._counts["token_refreshes"] += 1
        else:
            self._counts["token_refresh_failures"] += 1
            log.warning("token refresh failed: %s", code
                        or (type(exc).__name__ if exc is not None else "no later exp"))


__all__ = ["RefreshMixin", "token_of"]

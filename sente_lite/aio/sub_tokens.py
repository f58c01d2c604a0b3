"""Subscription tokens of an :class:`sente_lite.aio.AsyncClient` (feature ``sub-token``,
docs/protocol.md section 16): ``await subscribe(ch, fn, token=..., on_token_refused=...)``.

As the threaded client does (:mod:`sente_lite.client.sub_tokens`; the rules are shared in
:mod:`sente_lite.wire.sub_token_plan`): each subscribe of the channel (the first, and each
after a reconnect) carries a token from its source (a callable, plain or ``async``, is
asked again each time); a callable's token is refreshed over the open socket ahead of its
``exp`` with ``sente-lite/sub-refresh``, from the client's tick.
``on_token_refused(channel_id, error)`` (plain or ``async``) runs on the handler task, in
order with the channels' messages, when the server refuses the token (the subscribe's or
a refresh's), the source refuses to give one (the channel is then unsubscribed), or the
server ends the subscription at its expiry (``error.code`` ``token-expired``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from typing import Any, Awaitable, Callable, Dict, Optional

from .. import session as ss
from ..wire import protocol as p
from ..wire.sub_token_plan import RefusedCall, SubTokenPlans
from ..wire.token_expiry import TokenSourceRefused
from .refresh import token_of

log = logging.getLogger("sente_lite.client")


class SubTokensMixin:
    """The subscription tokens of an :class:`~sente_lite.aio.AsyncClient`, by channel."""

    handshake: Optional[dict]
    _session: ss.ClientSession
    _counts: Dict[str, int]
    _subs: Dict[str, Any]
    _closing: bool
    _tasks: "asyncio.Queue[Optional[tuple]]"
    _send_frame: Callable[[bytes, Optional[str]], Awaitable[None]]
    _token_request: Callable[[str, Any, Callable[["asyncio.Future[Any]"], None]], Awaitable[None]]

    def _init_sub_tokens(self) -> None:
        self._sub_plans = SubTokenPlans(self._counts)

    async def _sub_token(self, channel_id: str) -> Optional[str]:
        """The token for a subscribe of ``channel_id`` now, or None (none is used, or its
        source refused: then the channel's token is dropped and the server refuses it)."""
        source = self._sub_plans.source(channel_id)
        if source is None:
            return None
        try:
            got: Any = await token_of(source)
        except TokenSourceRefused as exc:
            got = exc
        token = self._sub_plans.issued(channel_id, got, self.handshake, time.time())
        self._hand_sub_refusals()
        return token

    def _sub_token_refused(self, channel_id: str, error: BaseException) -> None:
        """The channel's token was refused for good: drop it, tell its handler."""
        self._sub_plans.refused(channel_id, error)
        self._hand_sub_refusals()

    def _sub_expired(self, channel_id: str, reason: str) -> None:
        """The server ended ``channel_id`` by itself (``sente-lite/unsubscribed``)."""
        self._subs.pop(channel_id, None)
        self._sub_plans.ended(channel_id, reason)
        self._hand_sub_refusals()

    def _hand_sub_refusals(self) -> None:
        for call in self._sub_plans.take_refusals():
            # on the handler task, as a channel handler taking the call (it logs and counts
            # its own failure)
            self._tasks.put_nowait(("channel", [self._run_token_refused], call))

    async def _sub_refresh_if_due(self) -> None:
        """Send the sub-refreshes that are due (the tick, while connected); a source that
        refuses ends its channel."""
        for channel_id, entry in self._sub_plans.due(time.time()):
            try:
                token = await token_of(entry.source)
            except TokenSourceRefused as exc:
                self._sub_token_refused(channel_id, exc)
                await self._drop_channel(channel_id)
                continue
            assert token is not None
            await self._send_sub_refresh(channel_id, token)

    async def _drop_channel(self, channel_id: str) -> None:
        """Stop holding ``channel_id`` and tell the server, without awaiting its answer."""
        if self._subs.pop(channel_id, None) is None:
            return
        self._session.drop_subscription(channel_id)
        frame = self._session.packer.encode(p.EV_UNSUBSCRIBE, {p.K_CHANNEL: channel_id})
        try:
            await self._send_frame(frame, None)
        except Exception as exc:  # closed, queue full: the server ends it at the token's exp
            log.info("unsubscribe not sent: %s", type(exc).__name__)

    async def _send_sub_refresh(self, channel_id: str, token: str) -> None:
        await self._token_request(p.EV_SUB_REFRESH, {p.K_CHANNEL: channel_id, p.K_TOKEN: token},
                                  lambda f: self._sub_refreshed(f, channel_id, token))

    def _sub_refreshed(self, fut: "asyncio.Future[Any]", channel_id: str, token: str) -> None:
        if self._closing or fut.cancelled():
            return  # the client closed: nothing to refresh
        exc = fut.exception()
        self._sub_plans.refresh_settled(channel_id, token, fut.result() if exc is None else None,
                                        exc, time.time())
        self._hand_sub_refusals()

    async def _run_token_refused(self, call: RefusedCall) -> None:
        """Run one ``on_token_refused`` handler (plain or ``async``); one that raises is
        logged and counted (``handler_errors``)."""
        handler, channel_id, error = call
        try:
            value = handler(channel_id, error)
            if inspect.isawaitable(value):
                await value
        except Exception:
            self._counts["handler_errors"] += 1
            log.exception("on_token_refused handler raised")


__all__ = ["SubTokensMixin"]

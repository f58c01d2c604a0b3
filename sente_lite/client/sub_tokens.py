"""Subscription tokens of a :class:`sente_lite.Client` (feature ``sub-token``):
``subscribe(ch, fn, token=..., on_token_refused=...)``.

Each subscribe of the channel (the first, and each after a reconnect) carries a token
from its source (a callable is asked again each time); a callable's token is refreshed
over the open socket ahead of its ``exp`` (:mod:`sente_lite.wire.sub_token_plan`).
``on_token_refused(channel_id, error)`` runs on the client's I/O thread, outside its
locks, when the server refuses the token (the subscribe's or a refresh's), the source
refuses to give one, or the server ends the subscription at its expiry (``error.code``
``token-expired``); in each case but a refresh the server refused the channel is
no longer held (a source that refuses at a refresh ends it with an unsubscribe).
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from typing import Any, Callable, Dict, Optional

from ..wire import protocol as p
from ..wire.sub_token_plan import FINAL_REFUSALS, SubTokenPlans
from ..wire.token_expiry import REFRESH_TIMEOUT_S, TokenSourceRefused
from .refresh import token_from

log = logging.getLogger("sente_lite.client")


class SubTokensMixin:
    """The subscription tokens of a :class:`~sente_lite.Client`, by channel."""

    handshake: Optional[dict]
    _send_lock: Any
    _counts: Dict[str, int]
    _start_request: Callable[..., tuple]
    _subs: Dict[str, Any]

    unsubscribe: Callable[..., None]

    def _init_sub_tokens(self) -> None:
        self._sub_plans = SubTokenPlans(self._counts)

    def _sub_token(self, channel_id: str) -> Optional[str]:
        """The token for a subscribe of ``channel_id`` now, or None (none is used, or its
        source refused: then the channel is dropped). Caller holds ``_send_lock``."""
        source = self._sub_plans.source(channel_id)
        if source is None:
            return None
        try:
            got: Any = token_from(source)
        except TokenSourceRefused as exc:
            got = exc
        return self._sub_plans.issued(channel_id, got, self.handshake, time.time())

    def _sub_token_refused(self, channel_id: str, error: BaseException) -> None:
        """The channel's token was refused for good: drop it; its handler runs on the next
        tick. Caller holds ``_send_lock``."""
        self._sub_plans.refused(channel_id, error)

    def _sub_expired(self, channel_id: str, reason: str = p.REASON_TOKEN_EXPIRED) -> None:
        """The server ended ``channel_id`` (at its token's expiry). Caller holds ``_send_lock``."""
        self._subs.pop(channel_id, None)
        self._sub_plans.ended(channel_id, reason)

    def _sub_refresh_if_due(self, connected: bool) -> None:
        """Send the sub-refreshes that are due, then run waiting refusal handlers (the
        client's tick; token sources run here). A source that refuses ends the channel."""
        with self._send_lock:
            due = self._sub_plans.due(time.time()) if connected else []
        for channel_id, entry in due:
            try:
                token = token_from(entry.source)
            except TokenSourceRefused as exc:
                with self._send_lock:
                    self._sub_token_refused(channel_id, exc)
                self.unsubscribe(channel_id, timeout=None)
                continue
            assert token is not None
            self._send_sub_refresh(channel_id, token)
        with self._send_lock:
            refusals = self._sub_plans.take_refusals()
        for handler, channel_id, error in refusals:
            try:
                handler(channel_id, error)
            except Exception:
                log.exception("on_token_refused handler raised")

    def _send_sub_refresh(self, channel_id: str, token: str) -> None:
        try:
            _, fut = self._start_request(p.EV_SUB_REFRESH, {p.K_CHANNEL: channel_id,
                                                            p.K_TOKEN: token}, REFRESH_TIMEOUT_S)
        except Exception as exc:  # closed, queue full: the next tick may try again
            log.info("subscription token refresh not sent: %s", type(exc).__name__)
            with self._send_lock:
                self._sub_plans.answered(channel_id, token, None, time.time())
            return
        fut.add_done_callback(lambda f: self._sub_refreshed(f, channel_id, token))

    def _sub_refreshed(self, fut: "concurrent.futures.Future[Any]", channel_id: str,
                       token: str) -> None:
        exc = fut.exception()
        with self._send_lock:
            self._sub_plans.refresh_settled(channel_id, token, fut.result() if exc is None
                                            else None, exc, time.time())


__all__ = ["SubTokensMixin", "FINAL_REFUSALS"]

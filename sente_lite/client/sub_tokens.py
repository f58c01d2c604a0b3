"""Subscription tokens of a :class:`sente_lite.Client` (feature ``sub-token``):
``subscribe(ch, fn, token=..., on_token_refused=...)``.

Each subscribe of the channel (the first, and each after a reconnect) carries a token
from its source (a callable is asked again each time); a callable's token is refreshed
over the open socket ahead of its ``exp`` (:mod:`sente_lite.wire.sub_token_plan`).
``on_token_refused(channel_id, error)`` runs on the client's I/O thread, outside its
locks, when the server refuses the token (the subscribe's or a refresh's), the source
refuses to give one, or the server ends the subscription at its expiry (``error.code``
``token-expired``); in each case but a failed refresh the channel is no longer held.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..errors import RemoteError
from ..wire import protocol as p
from ..wire.sub_token_plan import RefusedHandler, SubTokenPlans
from ..wire.token_expiry import REFRESH_TIMEOUT_S, TokenSourceRefused
from .refresh import token_from

log = logging.getLogger("sente_lite.client")

#: A refresh answered with one of these is not tried again (the server will end the
#: subscription at its token's expiry).
FINAL_REFUSALS = (p.ERR_FORBIDDEN, p.ERR_NOT_SUBSCRIBED)


class SubTokensMixin:
    """The subscription tokens of a :class:`~sente_lite.Client`, by channel."""

    handshake: Optional[dict]
    _send_lock: Any
    _counts: Dict[str, int]
    _start_request: Callable[..., tuple]
    _subs: Dict[str, Any]

    def _init_sub_tokens(self) -> None:
        self._sub_plans = SubTokenPlans()
        # (handler, channel-id, error) waiting to run on the next tick, outside the locks
        self._sub_refusals: List[Tuple[RefusedHandler, str, BaseException]] = []

    def _sub_token(self, channel_id: str) -> Optional[str]:
        """The token for a subscribe of ``channel_id`` now, or None (none is used, or its
        source refused: then the channel is dropped). Caller holds ``_send_lock``."""
        entry = self._sub_plans.by_channel.get(channel_id)
        if entry is None:
            return None
        try:
            token = token_from(entry.source)
        except TokenSourceRefused as exc:
            self._sub_token_refused(channel_id, exc)
            return None
        assert token is not None
        features = (self.handshake or {}).get(p.K_FEATURES) or ()
        self._sub_plans.sent(channel_id, token, features, time.time())
        return token

    def _sub_token_refused(self, channel_id: str, error: BaseException) -> None:
        """The channel's token was refused for good: drop it; its handler runs on the next
        tick. Caller holds ``_send_lock``."""
        entry = self._sub_plans.drop(channel_id)
        if entry is None:
            return
        self._counts["sub_token_refused"] += 1
        log.warning("subscription token for a channel refused: %s",
                    error.code if isinstance(error, RemoteError) else type(error).__name__)
        if entry.on_refused is not None:
            self._sub_refusals.append((entry.on_refused, channel_id, error))

    def _sub_expired(self, channel_id: str) -> None:
        """The server ended ``channel_id`` at its token's expiry. Caller holds ``_send_lock``."""
        self._subs.pop(channel_id, None)
        self._counts["sub_token_expired"] += 1
        self._sub_token_refused(channel_id, RemoteError(
            p.REASON_TOKEN_EXPIRED, "the subscription token expired without a refresh"))

    def _sub_refresh_if_due(self, connected: bool) -> None:
        """Send the sub-refreshes that are due, then run waiting refusal handlers (the
        client's tick; token sources run here)."""
        with self._send_lock:
            due = self._sub_plans.due(time.time()) if connected else []
            refusals, self._sub_refusals = self._sub_refusals, []
        for channel_id, entry in due:
            try:
                token = token_from(entry.source)
            except TokenSourceRefused as exc:
                with self._send_lock:
                    self._sub_token_refused(channel_id, exc)
                continue
            assert token is not None
            self._send_sub_refresh(channel_id, token)
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
        result = fut.result() if exc is None else None
        exp = result.get(p.K_EXP) if isinstance(result, dict) else None
        final = isinstance(exc, RemoteError) and exc.code in FINAL_REFUSALS
        with self._send_lock:
            moved = self._sub_plans.answered(channel_id, token, exp, time.time(), not final)
            if moved:
                self._counts["sub_token_refreshes"] += 1
                return
            self._counts["sub_token_refresh_failures"] += 1
            if isinstance(exc, RemoteError) and exc.code in (FINAL_REFUSALS + (p.ERR_INVALID_TOKEN,)):
                entry = self._sub_plans.by_channel.get(channel_id)
                if entry is not None and entry.on_refused is not None:
                    self._sub_refusals.append((entry.on_refused, channel_id, exc))
        log.warning("subscription token refresh failed: %s", exc.code if isinstance(
            exc, RemoteError) else type(exc).__name__ if exc is not None else "no later exp")


__all__ = ["SubTokensMixin", "FINAL_REFUSALS"]

"""When a client refreshes its connection token (feature ``refresh``, docs/protocol.md
section 12). No I/O, no clock: times (seconds since the epoch) are arguments.

A client whose token is a callable, connected to a server whose handshake lists
``refresh``, sends ``["chsk/refresh", {"token": T}, cb-id]`` with a fresh token before the
current one expires: when :data:`REFRESH_AHEAD_FRACTION` of the token's life is left (at
most :data:`MAX_REFRESH_AHEAD_S` before ``exp``). The expiry is the handshake's
``token-exp`` (the server's word), else the token's own ``exp``; its life starts at its
``iat``, else when the client got it. The token's claims are read without checking its
signature (the server checks it): this needs no JWT library.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Collection, Dict, Mapping, Optional

from . import protocol as p

#: Refresh when this share of the token's life is left (a 3 s token: 0.75 s before exp).
REFRESH_AHEAD_FRACTION = 0.25
#: ... but never earlier than this many seconds before ``exp`` (a 1-day token: 5 min).
MAX_REFRESH_AHEAD_S = 300.0
#: After a refresh that failed (timeout, ``invalid-token``, a token no later than the last),
#: try again this much later, while the token lasts.
REFRESH_RETRY_S = 1.0
#: How long a client waits for the answer to a refresh.
REFRESH_TIMEOUT_S = 5.0
#: Longest token whose claims are read (the server reads at most this much too).
MAX_TOKEN_CHARS = p.MAX_TOKEN_CHARS


class TokenSourceRefused(Exception):
    """A client's token callable raised or gave no token: the client stops for good."""


def checked_token(value: Any) -> str:
    """``value``, the answer of a token callable, when it is a token; else
    :class:`TokenSourceRefused`."""
    if not value or not isinstance(value, str):
        raise TokenSourceRefused("the token source gave no token")
    return value


def unverified_claims(token: Any) -> Optional[Dict[str, Any]]:
    """The claims of ``token`` if it is a JWT (``header.payload.signature``), read
    without checking the signature; None otherwise."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
        return None
    segment = token.split(".")[1]
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        claims = json.loads(raw.decode("utf-8"))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    return claims if isinstance(claims, dict) else None


def _number(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class RefreshSchedule:
    """One client's refresh plan for its current connection: :meth:`connected` at each
    handshake, :meth:`due` on every tick, :meth:`sent`, then :meth:`answered`."""

    def __init__(self) -> None:
        self.due_at: Optional[float] = None  # when to refresh next; None: no refresh
        self.exp: Optional[float] = None     # the current token's expiry
        self.in_flight = False

    def connected(self, token: Optional[str], info: Mapping[str, Any],
                  features: Collection[str], obtained_at: float) -> None:
        """A handshake came on a connection opened with ``token`` (None: not refreshable,
        e.g. a fixed string), got at ``obtained_at``."""
        self.due_at, self.exp, self.in_flight = None, None, False
        if token is None or p.FEATURE_REFRESH not in features:
            return
        claims = unverified_claims(token) or {}
        exp = _number(info.get(p.K_TOKEN_EXP)) or _number(claims.get("exp"))
        if exp is not None:
            self._plan(exp, _number(claims.get("iat")) or obtained_at)

    def _plan(self, exp: float, issued: float) -> None:
        life = max(0.0, exp - issued)
        self.exp = exp
        self.due_at = exp - min(MAX_REFRESH_AHEAD_S, life * REFRESH_AHEAD_FRACTION)

    def due(self, now: float) -> bool:
        """A refresh should be sent now."""
        return not self.in_flight and self.due_at is not None and now >= self.due_at

    def sent(self) -> None:
        self.in_flight = True

    def answered(self, token: str, exp: Any, now: float, retry: bool = True) -> bool:
        """The refresh with ``token`` was answered with ``exp`` (None: it failed; ``retry``
        False: do not try again on this connection). True when it moved the expiry on."""
        self.in_flight = False
        new_exp = _number(exp)
        if new_exp is not None and (self.exp is None or new_exp > self.exp):
            self._plan(new_exp, _number((unverified_claims(token) or {}).get("iat")) or now)
            return True
        if not retry or self.exp is None or now + REFRESH_RETRY_S >= self.exp:
            self.due_at = None  # the server closes with 4002 at exp; the reconnect gets a token
        else:
            self.due_at = now + REFRESH_RETRY_S
        return False

    def stop(self) -> None:
        """The connection ended: nothing to refresh until the next handshake."""
        self.due_at, self.in_flight = None, False


__all__ = ["RefreshSchedule", "TokenSourceRefused", "checked_token", "unverified_claims", "REFRESH_AHEAD_FRACTION", "MAX_REFRESH_AHEAD_S",
           "REFRESH_RETRY_S", "REFRESH_TIMEOUT_S", "MAX_TOKEN_CHARS"]

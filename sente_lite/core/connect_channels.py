"""What an ``authenticate`` hook may return beyond a uid: the channels given at connect
(feature ``server-subs``; :mod:`sente_lite.core.server_subs` subscribes them) and the
connection's ``info`` (its presence info), with their bounds."""

from __future__ import annotations

import json
from typing import Any, Dict, NamedTuple, Optional, Tuple

from .jwt_tokens import MAX_INFO_BYTES

#: Most channels given to one connection at connect (the hook's, the token's and its
#: user's together), and to one user by ``subscribe(uid, ...)``.
MAX_CONNECT_CHANNELS = 64


class Authenticated(NamedTuple):
    """What an ``authenticate`` hook may return instead of a uid: the uid, the channels
    the server subscribes the connection to as it opens (a ``(uid, channels)`` tuple
    works too) and ``info``, a JSON object of at most ``MAX_INFO_BYTES`` kept on the
    connection (``conn.info``) and shown in its channel presence, as a JWT's ``info``
    claim is."""

    uid: str
    channels: Tuple[str, ...] = ()
    info: Optional[Dict[str, Any]] = None


def info_problem(info: Any) -> Optional[str]:
    """Why ``info`` cannot be a connection's info (None: it can, or it is None)."""
    if info is None:
        return None
    if not isinstance(info, dict):
        return f"info must be a dict (a JSON object), got {type(info).__name__}"
    try:
        size = len(json.dumps(info, separators=(",", ":"), allow_nan=False).encode("utf-8"))
    except (TypeError, ValueError) as exc:
        return f"info is not JSON: {exc}"
    if size > MAX_INFO_BYTES:
        return f"info is {size} bytes as JSON, over MAX_INFO_BYTES ({MAX_INFO_BYTES})"
    return None


def connect_channels(value: Any) -> Optional[Tuple[str, ...]]:
    """The channels of an ``authenticate`` answer or a token's ``channels`` claim: a list
    of strings (None: not one)."""
    if isinstance(value, (list, tuple)) and all(isinstance(ch, str) for ch in value):
        return tuple(value)
    return None


__all__ = ["Authenticated", "connect_channels", "info_problem", "MAX_CONNECT_CHANNELS"]

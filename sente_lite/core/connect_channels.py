"""Channels given at connect (feature ``server-subs``): what an ``authenticate`` hook may
return, and the bound on them (:mod:`sente_lite.core.server_subs` subscribes them)."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Tuple

#: Most channels given to one connection at connect (the hook's, the token's and its
#: user's together), and to one user by ``subscribe(uid, ...)``.
MAX_CONNECT_CHANNELS = 64


class Authenticated(NamedTuple):
    """What an ``authenticate`` hook may return instead of a uid: the uid and the channels
    the server subscribes the connection to as it opens (a ``(uid, channels)`` tuple
    works too)."""

    uid: str
    channels: Tuple[str, ...] = ()


def connect_channels(value: Any) -> Optional[Tuple[str, ...]]:
    """The channels of an ``authenticate`` answer or a token's ``channels`` claim: a list
    of strings (None: not one)."""
    if isinstance(value, (list, tuple)) and all(isinstance(ch, str) for ch in value):
        return tuple(value)
    return None


__all__ = ["Authenticated", "connect_channels", "MAX_CONNECT_CHANNELS"]

"""The settings of a :class:`~sente_lite.Client`: every keyword of its constructor, checked
once (:class:`ClientSettings`). The constructor's keywords stay the public way to set
them, with their defaults; a client keeps them as ``c.settings``."""

from __future__ import annotations

import dataclasses
import ssl
import uuid
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

from ..limits import CLIENT_BOUNDS, check_settings, validate_milliseconds

#: The largest ``read_coalesce_ms`` accepted (it is added latency at high rates).
MAX_READ_COALESCE_MS = 50.0
#: The largest ``send_buf_ms`` accepted (it is added latency for every send).
MAX_SEND_BUF_MS = 50.0

#: A credential or CSRF token: a string, a callable evaluated at every (re)connect, or None.
Token = Union[str, Callable[[], Optional[str]], None]


@dataclasses.dataclass(frozen=True)
class ClientSettings:
    """Every setting of a client, checked (:meth:`from_keywords`); what each one does is
    told by :class:`~sente_lite.Client`. ``urls`` holds ``url`` as a tuple (a list of
    servers to fail over between, or one), ``client_id`` a UUID4 when none was given, and
    ``headers`` a copy of the mapping given."""

    urls: Tuple[str, ...]
    client_id: str
    auto_reconnect: bool
    token: Token
    csrf_token: Token
    backoff_base: float
    backoff_max: float
    max_pending_sends: int
    max_handler_queue: int
    read_coalesce_ms: float
    connect_timeout: float
    request_timeout: float
    headers: Dict[str, str]
    origin: Optional[str]
    ssl_context: Optional[ssl.SSLContext]
    max_unacked_publishes: int
    publish_block_s: float
    packer: str
    batch: bool
    send_buf_ms: float

    @classmethod
    def from_keywords(cls, keywords: Mapping[str, Any]) -> "ClientSettings":
        """The settings that ``keywords`` (a Client's, by name: ``url`` for ``urls``)
        describe, checked. Raises :class:`~sente_lite.limits.InvalidSetting` (or
        ValueError, TypeError) naming the first bad one."""
        check_settings(keywords, CLIENT_BOUNDS)  # every numeric setting, before any is used
        values = {f.name: keywords[f.name] for f in dataclasses.fields(cls) if f.name != "urls"}
        url: Union[str, Sequence[str]] = keywords["url"]
        urls = (url,) if isinstance(url, str) else tuple(url)
        if not urls:
            raise ValueError("url: give at least one URL")
        values.update(
            urls=urls, client_id=values["client_id"] or str(uuid.uuid4()),
            headers=dict(values["headers"] or {}), origin=_check_origin(values["origin"]),
            read_coalesce_ms=validate_milliseconds("read_coalesce_ms", values["read_coalesce_ms"],
                                                   MAX_READ_COALESCE_MS),
            send_buf_ms=validate_milliseconds("send_buf_ms", values["send_buf_ms"],
                                              MAX_SEND_BUF_MS))
        return cls(**values)

    def attributes(self) -> Dict[str, Any]:
        """What a client keeps as attributes of its own (``c.backoff_max``): every setting
        by its name but ``csrf_token`` (the client's is the last token a handshake carried)
        and ``packer`` (its session's), and ``url``: the one in use, which failover moves
        along ``urls``."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("csrf_token", "packer")}
        out["url"] = self.urls[0]
        return out


def _check_origin(origin: Optional[str]) -> Optional[str]:
    """``origin`` when it can be an ``Origin`` header value (None: send none)."""
    if origin is None:
        return None
    if not isinstance(origin, str):
        raise TypeError(f"origin must be a str such as 'https://app.example.com' or None, "
                        f"got {type(origin).__name__}")
    if not origin.strip() or not origin.isprintable():
        raise ValueError(f"origin must be a non-empty printable header value such as "
                         f"'https://app.example.com', got {origin!r}")
    return origin


__all__ = ["ClientSettings", "Token", "MAX_READ_COALESCE_MS", "MAX_SEND_BUF_MS"]

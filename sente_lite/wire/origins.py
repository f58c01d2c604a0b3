"""Origins and hosts as the server compares them: parsing, the ``allowed_origins``
setting and the verdict on one request's ``Origin`` (pure: no I/O).

An origin is ``scheme://host[:port]`` (RFC 6454), what browsers send in ``Origin``.
Two origins are the same when scheme, host and port are equal; scheme and host are
compared in lower case, a port equal to the scheme's default (80 for http, 443 for
https) is the same as no port, and nothing else is normalized: ``app.example.``
(trailing dot) is another host than ``app.example``, as it is for browsers. A value
with userinfo (``http://a@b``), a path, a query or a fragment is not an origin.

The verdict (:func:`origin_problem`), with ``allowed`` the normalized setting:

* no ``Origin`` header: allowed (not a browser);
* ``allowed`` None (the default policy): allowed when the Origin is ``http`` or
  ``https`` and its host is the ``Host`` header's host (any port);
* ``allowed`` a set: allowed when it holds ``"*"`` or the Origin, or when the Origin
  is the server's own: ``http``/``https`` with the host and port of the ``Host``
  header (a ``Host`` without a port stands for the Origin scheme's default port);
* anything else, ``Origin: null`` included, is refused.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Iterable, Optional, Tuple

#: Default ports of the schemes a page's origin can have and a server can be.
DEFAULT_PORTS = {"http": 80, "https": 443}

_HOST_NAME_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.\-]{0,252})")
_PORT_RE = re.compile(r"(?::([0-9]{0,5}))?")
_ORIGIN_RE = re.compile(r"([a-z][a-z0-9+.\-]*)://([^/?#@\\\s]+)/?")

Origin = Tuple[str, str, Optional[int]]


def split_host(value: str) -> Optional[Tuple[str, Optional[int]]]:
    """``(host, port)`` of a ``Host`` value such as ``"App.example:80"`` or ``"[::1]"``:
    the host in lower case (an IPv6 address without brackets, in its short form; a
    trailing dot kept), the port None when absent; None when ``value`` is not a host
    name, an IPv4 address or a bracketed IPv6 address with an optional port."""
    v = value.strip()
    if v.startswith("["):
        end = v.find("]")
        if end < 0:
            return None
        try:
            name = str(ipaddress.IPv6Address(v[1:end]))
        except ValueError:
            return None
        rest = v[end + 1:]
    else:
        name, sep, port = v.partition(":")
        rest = sep + port
        if not _HOST_NAME_RE.fullmatch(name):
            return None
        name = name.lower()
    match = _PORT_RE.fullmatch(rest)
    if match is None or not name:
        return None
    digits = match.group(1)
    if not digits:
        return name, None
    number = int(digits)
    return (name, number) if number <= 65535 else None


def parse_origin(origin: str) -> Optional[Origin]:
    """``(scheme, host, port)`` of an origin, in lower case, ``port`` None when it is
    absent or the scheme's default; None when ``origin`` is not ``scheme://host[:port]``
    (``"null"``, userinfo, a path, ...). One trailing ``/`` is tolerated."""
    match = _ORIGIN_RE.fullmatch(origin.strip().lower())
    if match is None:
        return None
    scheme = match.group(1)
    split = split_host(match.group(2))
    if split is None:
        return None
    host, port = split
    if port is not None and DEFAULT_PORTS.get(scheme) == port:
        port = None
    return scheme, host, port


def _serialize(origin: Origin) -> str:
    scheme, host, port = origin
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}" if port is None else f"{scheme}://{shown}:{port}"


def normalize_origins(allowed: Optional[Iterable[str]]) -> Optional[frozenset]:
    """Check and normalize an ``allowed_origins`` setting (None = the default policy).

    Raises TypeError for a single string or a non-string entry, ValueError for an
    entry that is not an origin (``"null"`` included: any page can make itself that
    origin with a sandboxed iframe; ``"*"`` says "any" explicitly)."""
    if allowed is None:
        return None
    if isinstance(allowed, (str, bytes)):
        raise TypeError("allowed_origins must be a list of origins such as "
                        "['https://app.example.com'] or ['*'], not a single string")
    out = set()
    for entry in allowed:
        if not isinstance(entry, str) or not entry.strip():
            raise TypeError(f"allowed_origins entries must be non-empty strings, got {entry!r}")
        if entry.strip() == "*":
            out.add("*")
            continue
        parsed = parse_origin(entry)
        if parsed is None:
            raise ValueError(f"allowed_origins entry {entry!r} is not an origin: write "
                             "scheme://host[:port], e.g. 'https://app.example.com' (no path, "
                             "no user; 'null' is refused, '*' allows every origin)")
        out.add(_serialize(parsed))
    return frozenset(out)


def is_own_origin(origin: Origin, host_header: Optional[str], any_port: bool = False) -> bool:
    """True when ``origin`` (from :func:`parse_origin`) is an ``http``/``https`` origin
    of the host named by ``host_header``, on the same port (a ``Host`` without a port
    means the scheme's default) unless ``any_port``."""
    scheme, host, port = origin
    if scheme not in DEFAULT_PORTS or not host_header:
        return False
    split = split_host(host_header)
    if split is None or split[0] != host:
        return False
    if any_port:
        return True
    default = DEFAULT_PORTS[scheme]
    return (split[1] or default) == (port or default)


def origin_problem(origin: Optional[str], host_header: Optional[str],
                   allowed: Optional[frozenset]) -> Optional[str]:
    """Why a request with this ``Origin`` is refused, or None when it is allowed
    (the rules are in this module's docstring). ``allowed`` is :func:`normalize_origins`
    of the setting; ``host_header`` the request's one ``Host`` value, if any."""
    if origin is None:
        return None
    parsed = parse_origin(origin)
    if allowed is None:
        if parsed is not None and is_own_origin(parsed, host_header, any_port=True):
            return None
        return (f"origin {origin!r} is not the host {host_header!r}; "
                "list it in Server(allowed_origins=[...]) to allow it")
    if "*" in allowed or (parsed is not None and (_serialize(parsed) in allowed
                                                  or is_own_origin(parsed, host_header))):
        return None
    return (f"origin {origin!r} is not in allowed_origins and is not this server's own "
            f"origin (Host {host_header!r})")


__all__ = ["split_host", "parse_origin", "normalize_origins", "is_own_origin", "origin_problem",
           "DEFAULT_PORTS"]

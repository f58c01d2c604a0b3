"""HTTP/1.1 for the server API, sans-I/O: requests parsed from bytes, answers as bytes.

:class:`RequestParser` is fed what a socket delivers and returns whole requests
(:class:`ApiRequest`) one at a time, or an :class:`HttpError` naming what is wrong
(status and message). It accepts only what the API needs: a request line, at most
:data:`MAX_HEADERS` headers in :data:`MAX_HEAD_BYTES`, a body of ``Content-Length``
bytes (at most ``max_body_bytes``; no chunked bodies). No I/O, no threads.
"""

from __future__ import annotations

import http
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

#: Bytes of a request line and headers, their blank line included; one more is 431.
MAX_HEAD_BYTES = 16 * 1024
#: Header lines of one request; one more is 431.
MAX_HEADERS = 64
#: What an API request starts with; the network loop routes such a socket here.
API_PREFIX = b"POST /api/"


class HttpError(Exception):
    """A request that cannot be served: answer ``status`` with ``message``, then close."""

    def __init__(self, status: int, message: str, headers: Tuple[Tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


@dataclass
class ApiRequest:
    """One parsed request: ``method``, ``target``, lower-cased ``headers`` and ``body``."""

    method: str
    target: str
    version: str
    headers: Dict[str, List[str]] = field(default_factory=dict)
    body: bytes = b""

    def header(self, name: str) -> Optional[str]:
        """The value of header ``name`` (any case) when it appears once, else None."""
        values = self.headers.get(name.lower())
        return values[0] if values and len(values) == 1 else None

    @property
    def keep_alive(self) -> bool:
        """True when the connection stays open after the answer (HTTP/1.1 unless
        ``Connection: close``; HTTP/1.0 only with ``Connection: keep-alive``)."""
        tokens = {t.strip().lower() for v in self.headers.get("connection", ()) for t in v.split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


class RequestParser:
    """Bytes in, requests out (see the module). One request at a time: :meth:`next`
    returns the next whole request, None while it is incomplete."""

    def __init__(self, max_body_bytes: int) -> None:
        self.max_body_bytes = max_body_bytes
        self._buf = bytearray()
        self._head: Optional[ApiRequest] = None
        self._length = 0
        #: True once a request's headers asked ``Expect: 100-continue`` and were accepted.
        self.continue_wanted = False

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as a request."""
        return len(self._buf)

    @property
    def started(self) -> bool:
        """Part of a request has arrived."""
        return bool(self._buf) or self._head is not None

    def feed(self, data: bytes) -> None:
        """Add what arrived."""
        self._buf += data

    def next(self) -> Optional[ApiRequest]:
        """The next whole request, or None; raises :class:`HttpError` for a bad one."""
        if self._head is None:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEAD_BYTES:
                    raise HttpError(431, f"request line and headers over {MAX_HEAD_BYTES} bytes")
                return None
            if end + 4 > MAX_HEAD_BYTES:
                raise HttpError(431, f"request line and headers over {MAX_HEAD_BYTES} bytes")
            head = bytes(self._buf[:end])
            del self._buf[:end + 4]
            self._head = _parse_head(head)
            self._length = self._body_length(self._head)
            expect = self._head.header("expect")
            self.continue_wanted = expect is not None and expect.lower() == "100-continue"
        if len(self._buf) < self._length:
            return None
        request, self._head = self._head, None
        request.body = bytes(self._buf[:self._length])
        del self._buf[:self._length]
        self.continue_wanted = False
        return request

    def _body_length(self, request: ApiRequest) -> int:
        if "transfer-encoding" in request.headers:
            raise HttpError(501, "Transfer-Encoding is not supported: send the body with "
                                 "Content-Length")
        values = request.headers.get("content-length")
        if not values:
            if request.method == "POST":
                raise HttpError(411, "Content-Length required")
            return 0
        if len(set(values)) != 1 or not values[0].isdigit() or len(values[0]) > 15:
            raise HttpError(400, "Content-Length must be one decimal number")
        length = int(values[0])
        if length > self.max_body_bytes:
            raise HttpError(413, f"body of {length} bytes is over {self.max_body_bytes} "
                                 "(api_max_body_bytes)")
        return length


def _parse_head(head: bytes) -> ApiRequest:
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise HttpError(400, "request line and headers must be ASCII") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0") or not parts[0].isalpha():
        raise HttpError(400, "malformed request line")
    if len(lines) - 1 > MAX_HEADERS:
        raise HttpError(431, f"more than {MAX_HEADERS} headers")
    request = ApiRequest(parts[0], parts[1], parts[2])
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or not name.isprintable():
            raise HttpError(400, "malformed header line")
        request.headers.setdefault(name.lower(), []).append(value.strip(" \t"))
    return request


def response_bytes(status: int, body: bytes, *, keep_alive: bool,
                   content_type: str = "application/json",
                   headers: Tuple[Tuple[str, str], ...] = ()) -> bytes:
    """A whole HTTP/1.1 answer with ``body``; ``Connection: close`` unless ``keep_alive``."""
    phrase = _PHRASES.get(status) or http.HTTPStatus(status).phrase
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers)
    head = (f"HTTP/1.1 {status} {phrase}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nServer: sente-lite\r\nCache-Control: no-store\r\n"
            f"{extra}{'' if keep_alive else 'Connection: close' + chr(13) + chr(10)}\r\n")
    return head.encode("ascii") + body


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_PHRASES = {s.value: s.phrase for s in http.HTTPStatus}

__all__ = ["RequestParser", "ApiRequest", "HttpError", "response_bytes", "MAX_HEAD_BYTES",
           "MAX_HEADERS", "API_PREFIX", "CONTINUE"]

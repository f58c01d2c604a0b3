"""ASGI scopes as the front sees requests, and its answers as ASGI messages.

The front (:mod:`sente_lite.core.front`) and the gate (:mod:`sente_lite.core.security`)
read websockets' ``Request`` and answer websockets' ``Response``, whatever the face: here
a scope becomes a ``Request`` (its path relative to where the application is mounted)
and a ``Response`` goes out as ``http.response.*`` messages, or, refusing a WebSocket
upgrade, as a ``websocket.http.response`` denial when the ASGI server offers that
extension (else a plain close before accepting, which servers answer ``403``).
"""

from __future__ import annotations

import email.utils
import http
from typing import Any, Awaitable, Callable, Dict, List, MutableMapping, Optional, Tuple

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Response headers the ASGI server writes itself (its own connection handling).
_SERVER_OWNED = {"connection", "date", "server"}


def local_path(scope: Scope) -> str:
    """The request's path relative to the application's mount point: ``/chsk`` for
    ``/rt/chsk`` when mounted at ``/rt`` (``root_path``). ASGI servers and frameworks
    differ on whether ``path`` still holds ``root_path``: both are read right."""
    path = scope.get("path") or "/"
    root = (scope.get("root_path") or "").rstrip("/")
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root):] or "/"
    return path


def request_of(scope: Scope) -> Request:
    """The websockets ``Request`` the front reads for ``scope`` (path relative to the mount,
    query, headers in order, the method: ``GET`` for a WebSocket upgrade)."""
    headers = Headers()
    for name, value in scope.get("headers") or ():
        headers[name.decode("latin-1")] = value.decode("latin-1")
    if scope.get("type") == "websocket" and "Upgrade" not in headers:
        headers["Upgrade"] = "websocket"  # an upgrade whatever the server passed on
    target = local_path(scope)
    query = scope.get("query_string") or b""
    if query:
        target += "?" + query.decode("latin-1")
    request = Request(target, headers)
    request.method = scope.get("method", "GET")  # a field from websockets 15; set either way
    return request


def _address(pair: Any) -> Tuple[str, Optional[int]]:
    if isinstance(pair, (list, tuple)) and len(pair) >= 1:
        return str(pair[0]), (pair[1] if len(pair) > 1 else None)
    return "unknown", None


class ScopeLink:
    """One request as the gate sees it (:class:`~sente_lite.core.security.GateLink`):
    the peer's address, the address the request came to (``local_host``: the Host check
    of a loopback address applies when it is one) and the connection slot it holds."""

    __slots__ = ("remote", "local_host", "slot")

    def __init__(self, scope: Scope) -> None:
        host, port = _address(scope.get("client"))
        self.remote = f"{host}:{port}" if port is not None else host
        self.local_host: Optional[str] = _address(scope.get("server"))[0] if scope.get("server") else None
        self.slot = False

    @staticmethod
    def respond(status: http.HTTPStatus, text: str) -> Response:
        """A ``text/plain`` answer, as websockets' ``ServerProtocol.reject`` makes it."""
        body = text.encode("utf-8")
        headers = Headers([("Date", email.utils.formatdate(usegmt=True)),
                           ("Content-Length", str(len(body))),
                           ("Content-Type", "text/plain; charset=utf-8")])
        return Response(int(status), http.HTTPStatus(status).phrase, headers, body)


def _asgi_headers(response: Response) -> List[Tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1"))
            for k, v in response.headers.raw_items() if k.lower() not in _SERVER_OWNED]


async def send_http(send: Send, response: Response) -> None:
    """Write ``response`` as the answer to an HTTP scope."""
    await send({"type": "http.response.start", "status": response.status_code,
                "headers": _asgi_headers(response)})
    await send({"type": "http.response.body", "body": response.body or b""})


async def deny_upgrade(scope: Scope, send: Send, response: Response) -> None:
    """Refuse a WebSocket upgrade with ``response`` (its status and body reach the peer
    when the server offers ``websocket.http.response``; else the server answers 403)."""
    extensions: Dict[str, Any] = scope.get("extensions") or {}
    if "websocket.http.response" in extensions:
        await send({"type": "websocket.http.response.start", "status": response.status_code,
                    "headers": _asgi_headers(response)})
        await send({"type": "websocket.http.response.body", "body": response.body or b""})
        return
    await send({"type": "websocket.close", "code": 1008,
                "reason": (response.body or b"").decode("utf-8", "replace")[:120].strip()})


__all__ = ["ScopeLink", "request_of", "local_path", "send_http", "deny_upgrade", "Scope",
           "Message", "Receive", "Send"]

"""A server's HTTP front, the same for every face: operator GETs and the upgrade's
admission checks.

Answers, for the network loop, every HTTP request that arrives: ``/health``,
``/metrics``, ``/csrf-token``, the browser client's files, a browser's probe of
the WebSocket path, and the upgrade itself, checked in order (host, path,
client-id, packer, origin, CSRF, then ``authenticate``). The connection slot is taken
later, on the network thread, by an upgrade about to be answered 101
(:meth:`sente_lite.server.handler.ServerCore.on_admit`; the ASGI face takes it as it
accepts). Requests and answers are websockets' ``Request`` and ``Response`` (the threaded
face parses with websockets; the ASGI face builds a ``Request`` from its scope and writes
the ``Response`` as ASGI messages); a socket is a :class:`~sente_lite.core.security.GateLink`.
"""

from __future__ import annotations

import dataclasses
import http
import time
import uuid
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Protocol, Tuple
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from ..brokers.base import Broker
from ..wire import packers
from ..wire import protocol as p
from . import security, static
from .hub import Hub
from .connect_channels import Authenticated
from .jwt_tokens import Grant
from .metrics import MetricsExporter
from .security import Gate, GateLink as Link

MAX_CLIENT_ID_CHARS = 128
#: HTTP methods every route answers (``HEAD``: the headers of ``GET``, no body).
ALLOWED_METHODS = ("GET", "HEAD")


class Admit:
    """A front's answer to an upgrade request: accept it, as ``identity``."""

    __slots__ = ("identity",)

    def __init__(self, identity: Any) -> None:
        self.identity = identity


class FrontPort(Protocol):
    """What the front uses of the server face that owns it."""

    server_id: str
    path: str
    demo: bool
    expose_metrics: bool
    channels: Broker
    _gate: Gate
    _hub: Hub
    _metrics: MetricsExporter
    _started_at: float
    _stopping: bool

    def _pending_handshakes(self) -> int: ...
    def _admit(self, link: Any, request: Request, client_id: str,
               client_id_given: bool) -> Optional[Response]: ...
    def _identify(self, link: Any, request: Request, client_id: str) -> Any: ...


@dataclass
class Identity:
    """Who an admitted upgrade is."""

    client_id: str
    uid: str
    remote: str
    csrf_token: Optional[str] = None
    packer: str = packers.JSON
    batch: bool = False
    #: the client asked for bytes as bytes (``bytes=1``; PROTOCOL 10)
    bytes: bool = False
    #: what its JWT connection token grants (``Server(jwt=...)``), else None
    grant: Optional[Grant] = None
    #: the server's ``authenticate`` hook (or a JWT) named ``uid`` (else it is the client-id)
    authenticated: bool = False
    #: channels the server subscribes it to as it opens (``Authenticated``, a JWT's claim)
    channels: Tuple[str, ...] = ()
    #: ``Authenticated.info`` from the ``authenticate`` hook (a JWT's is in ``grant``)
    info: Optional[Dict[str, Any]] = None


@dataclass
class Screened:
    """An upgrade (or probe) that passed every check but ``authenticate``."""

    client_id: str
    packer: str
    batch: bool
    bytes: bool = False


class HttpFront:
    """Answers HTTP requests for one :class:`~sente_lite.Server`."""

    def __init__(self, server: FrontPort) -> None:
        self.server = server

    def decide(self, link: Link, request: Request) -> Any:
        """A Response, or :class:`Admit` for an upgrade (a probe gets the verdict)."""
        return self.identify(link, request, self.screen(link, request))

    def identify(self, link: Link, request: Request, screened: Any) -> Any:
        """Finish what :meth:`screen` began: run ``authenticate`` (the slow part, on a
        worker when there is a hook) for a :class:`Screened` upgrade; a Response, or
        :class:`Admit` with the connection's identity (a probe or a HEAD gets the verdict,
        a HEAD without a body)."""
        decision = screened
        if isinstance(screened, Screened):
            srv = self.server
            uid = srv._identify(link, request, screened.client_id)
            grant = uid if isinstance(uid, Grant) else None
            channels = grant.channels if grant is not None else ()
            info = None
            if isinstance(uid, Authenticated):
                uid, channels, info = uid.uid, uid.channels, uid.info
            decision = uid if isinstance(uid, Response) else Admit(Identity(
                screened.client_id, grant.uid if grant is not None else uid, link.remote,
                srv._gate.csrf_token_for(screened.client_id), screened.packer, screened.batch,
                screened.bytes, grant,
                authenticated=grant is not None or srv._gate.authenticate is not None,
                channels=channels, info=info))
        method = getattr(request, "method", "GET")  # websockets < 15 parses GET only
        if _is_probe(request, self.server.path) or (method == "HEAD" and isinstance(decision, Admit)):
            decision = _probe_answer(link, decision, self.server._gate)  # never upgrades
        if method == "HEAD":
            return dataclasses.replace(decision, body=b"")  # Content-Length stays GET's
        return decision

    def screen(self, link: Link, request: Request) -> Any:
        """Fast checks, on the network thread: the method (every route answers ``GET``
        and ``HEAD``; another method gets ``405`` with ``Allow`` on a route, ``404``
        elsewhere), operator GETs, else the upgrade's checks in order: path, client-id,
        packer, then :meth:`_admit` (origin, CSRF). Returns a Response, or
        :class:`Screened` for :meth:`identify`."""
        method = getattr(request, "method", "GET")
        if method not in ALLOWED_METHODS:
            return self._wrong_method(link, request, method)
        return self._screen_upgrade(link, request)

    def _wrong_method(self, link: Link, request: Request, method: str) -> Response:
        """405 naming the allowed methods on a route (after the Host check), else 404."""
        srv = self.server
        refusal = srv._gate.check_host(link, request)
        if refusal is not None:
            return refusal
        path = urlsplit(request.path).path
        if path not in (srv.path, "/health", "/metrics", security.CSRF_TOKEN_PATH) and (
                static.static_response(path, srv.demo, None) is None):
            return srv._gate.refuse(link, 404, security.R_NOT_FOUND, f"no endpoint at {path}")
        return srv._gate.refuse(link, 405, security.R_METHOD_NOT_ALLOWED,
                                f"method {method[:16]!r} is not allowed on {path}: use "
                                f"{' or '.join(ALLOWED_METHODS)}",
                                headers=[("Allow", ", ".join(ALLOWED_METHODS))])

    def _screen_upgrade(self, link: Link, request: Request) -> Any:
        """Operator GETs, else the upgrade's checks (see :meth:`screen`)."""
        srv = self.server
        parts = urlsplit(request.path)
        if srv._stopping:
            return srv._gate.refuse(link, 503, security.R_SHUTTING_DOWN, "server shutting down")
        refusal = srv._gate.check_host(link, request)  # DNS rebinding: before anything is served
        if refusal is not None:
            return refusal
        if "Upgrade" not in request.headers:
            if parts.path == "/health":
                health = {"status": "ok", "server-id": srv.server_id,
                          "uptime-s": round(time.monotonic() - srv._started_at, 3),
                          "connections": len(srv._hub.conns),
                          "pending-handshakes": srv._pending_handshakes(),
                          "channels": srv.channels.stats()["active_channels"]}
                health.update(srv.channels.health())  # 503 "degraded" while the broker is down
                if health.get("broker-status", "up") != "up":
                    health["status"] = "degraded"
                status = (http.HTTPStatus.OK if health["status"] == "ok"
                          else http.HTTPStatus.SERVICE_UNAVAILABLE)
                return _respond(link, status, p.dumps(health) + "\n", "application/json")
            if parts.path == "/metrics":
                return self._metrics_response(link)
            if parts.path == security.CSRF_TOKEN_PATH:
                return self._csrf_token_response(link, request, parts.query)
            found = static.static_response(request.path, srv.demo, request.headers.get("If-None-Match"))
            if found is not None:  # the browser client, its types, the demo page
                return _response(*found)
        if parts.path != srv.path:
            return srv._gate.refuse(link, 404, security.R_NOT_FOUND, f"no endpoint at {parts.path}")
        query = parse_qs(parts.query, keep_blank_values=True)
        given = (query.get("client-id") or [""])[0]
        if given and _client_id_problem(given):
            return srv._gate.refuse(link, 400, security.R_BAD_CLIENT_ID, _client_id_problem(given))
        client_id = given or uuid.uuid4().hex
        packer = (query.get("packer") or [packers.JSON])[0]
        if packer not in packers.PACKER_NAMES:
            return srv._gate.refuse(link, 400, security.R_BAD_PACKER,
                                    f"unknown packer {packer!r}: use one of "
                                    f"{', '.join(packers.PACKER_NAMES)}")
        if not packers.available(packer):
            return srv._gate.refuse(link, 400, security.R_BAD_PACKER,
                                    f"this server cannot speak {packer} (its msgpack package is "
                                    "not installed): use packer=json")
        refusal = srv._admit(link, request, client_id, bool(given))
        if refusal is not None:
            return refusal
        return Screened(client_id, packer, (query.get(p.K_BATCH) or [""])[0] in ("1", "true"),
                        (query.get(p.K_BYTES) or [""])[0] in ("1", "true"))

    def _metrics_response(self, link: Link) -> Response:
        srv = self.server
        if not srv.expose_metrics:
            return _respond(link, http.HTTPStatus.NOT_FOUND, "metrics are off (expose_metrics=False)\n")
        status, content_type, body = srv._metrics.render()
        return _respond(link, http.HTTPStatus(status), body.decode("utf-8"), content_type)

    def _csrf_token_response(self, link: Link, request: Request, query_s: str) -> Response:
        """``GET /csrf-token?client-id=X`` -> ``{"client-id", "csrf-token"}`` (same-origin only)."""
        srv = self.server
        if srv._gate.csrf is None:
            return _respond(link, http.HTTPStatus.NOT_FOUND, "CSRF protection is off: no token needed\n")
        refusal = srv._gate.check_origin(link, request)
        if refusal is not None:
            return refusal
        client_id = (parse_qs(query_s, keep_blank_values=True).get("client-id") or [""])[0]
        problem = _client_id_problem(client_id) if client_id else "client-id query parameter required"
        if problem:
            return srv._gate.refuse(link, 400, security.R_BAD_CLIENT_ID, problem)
        body = p.dumps({"client-id": client_id, "csrf-token": srv._gate.csrf_token_for(client_id)})
        response = _respond(link, http.HTTPStatus.OK, body + "\n", "application/json")
        response.headers["Cache-Control"] = "no-store"
        return response


def _client_id_problem(client_id: str) -> Optional[str]:
    if len(client_id) > MAX_CLIENT_ID_CHARS or not client_id.isprintable():
        return f"client-id must be 1-{MAX_CLIENT_ID_CHARS} printable characters"
    return None


def _is_probe(request: Request, path: str) -> bool:
    """A plain GET of the WebSocket path (no upgrade headers at all)."""
    return ("Upgrade" not in request.headers and "Sec-WebSocket-Key" not in request.headers
            and urlsplit(request.path).path == path)


def _probe_answer(link: Link, decision: Any, gate: security.Gate) -> Response:
    """Answer a plain GET of the WebSocket path: the verdict the same upgrade would get
    (503 when every connection slot is taken; a probe never takes one).

    A browser cannot see the HTTP status of a refused upgrade; the browser client
    asks this way after a socket that never opened (docs/browser.md). Readable
    from any origin: an origin that is not allowed only ever learns its 403.
    """
    if isinstance(decision, Admit):
        decision = gate.full(link, decision.identity.client_id) or decision
    response = decision if isinstance(decision, Response) else _respond(
        link, http.HTTPStatus.OK, "an upgrade with these parameters would be admitted\n")
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.headers["Cache-Control"] = "no-store"
    return response


def _response(status: int, headers: List[Tuple[str, str]], body: bytes) -> Response:
    """A response of ``status`` with ``headers`` and a bytes ``body``, then the connection closes."""
    out = Headers(headers)
    if status != 304:
        out["Content-Length"] = str(len(body))
    out["Connection"] = "close"
    out["Server"] = "sente-lite"
    return Response(status, http.HTTPStatus(status).phrase, out, body)


def _respond(link: Link, status: http.HTTPStatus, body: str,
             content_type: str = "text/plain; charset=utf-8") -> Response:
    response = link.respond(status, body)
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = content_type
    return response



__all__ = ["HttpFront", "Identity", "Screened", "Admit", "FrontPort", "MAX_CLIENT_ID_CHARS",
           "ALLOWED_METHODS"]

"""Admission of upgrades: authentication, Origin, CSRF, connection and handshake limits.

The server asks a :class:`Gate` about every HTTP upgrade before it answers 101.
A refusal is a plain HTTP response (PROTOCOL.md section 1): ``401`` no or bad
credential, ``403`` origin or CSRF rejected, ``404`` path, ``503`` connection
limit or shutdown, ``400`` malformed request. Every refusal and every forced
close is counted and logged through one helper, :func:`report`.

* **Authentication**: ``authenticate(request) -> uid | None`` sees a
  :class:`HandshakeRequest` (path, query, headers, remote address, client-id and
  the credential from ``?token=`` or ``Authorization: Bearer``). None refuses
  with 401; a string becomes the connection's uid, sent in the handshake.
* **Host** (on by default; DNS rebinding): a server bound to a loopback address
  (``127.0.0.0/8``, ``::1``, ``localhost``) answers only requests whose ``Host``
  is a loopback name (``localhost``, ``127.x.y.z``, ``[::1]``, any port); others
  get 403 naming ``allowed_hosts``, a missing, repeated or malformed ``Host``
  400. ``allowed_hosts=[...]`` lists the accepted names instead (any case, port
  ignored), ``["*"]`` any. Bound elsewhere, the default accepts any ``Host``.
  This runs first, for upgrades and plain GETs (``/health``, ``/csrf-token``).
* **Origin** (on by default; :mod:`sente_lite.wire.origins`): a request without
  ``Origin`` (a non-browser client) passes; so does one whose Origin host equals
  the ``Host`` header's host. With ``allowed_origins``, the listed origins pass
  (``"*"``: every origin, only when asked for explicitly) and so does the server's
  own origin (host and port of the ``Host`` header). Anything else gets 403.
* **CSRF** (``csrf=True``): the token of a client-id is an HMAC of that id under
  a per-server secret. The server sends it in the handshake's csrf-token slot
  and requires it as ``?csrf-token=`` on every upgrade (403 otherwise). A client
  gets its first token from ``GET /csrf-token?client-id=...`` on the same port
  (no CORS headers: a page of another origin cannot read the answer) or from the
  application, which can embed :meth:`CsrfTokens.token_for` in the page it serves.
* **Slots**: at most ``max_connections`` admitted connections (503 beyond). A slot
  is taken on the network thread by an upgrade about to be answered 101, after every
  check and the ``authenticate`` hook, and given back as soon as that upgrade fails
  or its connection ends. At most ``max_pending_auth`` upgrades wait for the hook
  (queued or running; 503 beyond): they hold no slot meanwhile. The
  limits on upgrades still arriving (slowloris: deadlines, caps, eviction) are the
  network loop's (:mod:`sente_lite.server.netloop`). Header size is bounded by websockets
  itself (``websockets.http11.MAX_LINE_LENGTH`` bytes per line, ``MAX_NUM_HEADERS``
  headers: 414/431 beyond).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http
import ipaddress
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import (Any, Callable, Dict, Iterable, List, Mapping, Optional, Protocol, Sequence,
                    Tuple, Union)
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from websockets.http11 import Request, Response

from .. import limits as lim
from ..wire import tracing
from ..wire.origins import normalize_origins, origin_problem, split_host
from ..logsafe import safe
from .connect_channels import Authenticated, connect_channels, info_problem
from .jwt_tokens import JWT, Grant, TokenRejected

log = logging.getLogger("sente_lite.core.security")

# Reasons of refused upgrades: the keys of stats()["handshakes_refused"].
R_SHUTTING_DOWN = "shutting-down"
R_NOT_FOUND = "not-found"
R_BAD_CLIENT_ID = "bad-client-id"
R_BAD_PACKER = "bad-packer"
R_BAD_PACKER = "bad-packer"
R_MAX_CONNECTIONS = "max-connections"
R_MAX_PENDING_HANDSHAKES = "max-pending-handshakes"
R_MAX_PENDING_AUTH = "max-pending-auth"
R_ORIGIN = "origin"
R_CSRF = "csrf"
R_UNAUTHENTICATED = "unauthenticated"
R_AUTH_ERROR = "auth-error"
R_INVALID_UPGRADE = "invalid-upgrade"
R_HEADERS_TOO_LARGE = "headers-too-large"
R_BAD_REQUEST = "bad-request"
R_HANDSHAKE_TIMEOUT = "handshake-timeout"
R_HOST = "host"
R_METHOD_NOT_ALLOWED = "method-not-allowed"

#: Path of the CSRF token endpoint (plain HTTP GET on the server's port).
CSRF_TOKEN_PATH = "/csrf-token"
#: Longest uid an authenticate hook may return.
MAX_UID_CHARS = 256
#: Log lines per second one kind of event may produce before lines are folded into a count.
LOG_LINES_PER_S = 20

_CSRF_CONTEXT = b"sente-lite csrf v1\x00"
#: Refusals that are routine (a wrong URL, an expired credential) log at INFO; the rest WARNING.
_REFUSAL_LEVELS = {R_NOT_FOUND: logging.INFO, R_UNAUTHENTICATED: logging.INFO,
                   R_SHUTTING_DOWN: logging.INFO, R_METHOD_NOT_ALLOWED: logging.INFO}


# -- the request an authenticate hook sees ----------------------------------------
@dataclass(frozen=True)
class HandshakeRequest:
    """An HTTP upgrade request, as the ``authenticate`` hook sees it.

    ``headers`` maps lower-case header names to values (repeated headers joined
    with ``", "``); ``query`` maps each query parameter to its first value;
    ``token`` is ``?token=``, else the ``Authorization: Bearer`` credential, else the
    ``bearer.<token>`` offer of ``Sec-WebSocket-Protocol`` (next to ``sente-lite``);
    ``remote_address`` is ``"host:port"`` of the peer.
    """

    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    remote_address: str
    client_id: str
    token: Optional[str]
    origin: Optional[str]

    def header(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """The value of header ``name`` (any case), or ``default``."""
        return self.headers.get(name.lower(), default)


Authenticate = Callable[[HandshakeRequest], Optional[str]]
#: ``authorize(conn, action, channel_id) -> bool``; ``action`` is ``"subscribe"`` or ``"publish"``.
Authorize = Callable[[Any, str, str], bool]


def bearer_token(authorization: Optional[str]) -> Optional[str]:
    """The credential of an ``Authorization: Bearer <token>`` header value, else None."""
    if not authorization:
        return None
    scheme, _, credential = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credential.strip() or None


#: The WebSocket subprotocol a browser offers, with ``bearer.<token>``, to carry its token
#: in ``Sec-WebSocket-Protocol`` (the one header a browser may set on a WebSocket); the
#: server answers with this one, never the token.
SUBPROTOCOL = "sente-lite"
#: The prefix of the offer that carries the token.
SUBPROTOCOL_BEARER = "bearer."


def offered_subprotocols(value: Optional[str]) -> List[str]:
    """The subprotocols a ``Sec-WebSocket-Protocol`` request header offers, in order."""
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def subprotocol_token(value: Optional[str]) -> Optional[str]:
    """The token of a ``bearer.<token>`` offer in a ``Sec-WebSocket-Protocol`` value, made
    alongside :data:`SUBPROTOCOL`; else None."""
    offered = offered_subprotocols(value)
    if SUBPROTOCOL not in offered:
        return None
    for item in offered:
        if item.startswith(SUBPROTOCOL_BEARER) and len(item) > len(SUBPROTOCOL_BEARER):
            return item[len(SUBPROTOCOL_BEARER):]
    return None


def select_subprotocol(offered: Sequence[str]) -> Optional[str]:
    """The subprotocol a server answers: :data:`SUBPROTOCOL` when offered, else none (a
    client that offers others is served without one, as before)."""
    return SUBPROTOCOL if SUBPROTOCOL in offered else None


def make_handshake_request(request: Request, client_id: str, remote: str) -> HandshakeRequest:
    """Build the hook's view of a websockets ``Request``."""
    parts = urlsplit(request.path)
    query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    headers: Dict[str, str] = {}
    for name, value in request.headers.raw_items():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    token = (query.get("token") or bearer_token(headers.get("authorization"))
             or subprotocol_token(headers.get("sec-websocket-protocol")))
    return HandshakeRequest(path=parts.path, query=query, headers=headers, remote_address=remote,
                            client_id=client_id, token=token, origin=headers.get("origin"))


# -- Host (DNS rebinding) ------------------------------------------------------------
def parse_host(value: str) -> Optional[str]:
    """The host name of a ``Host`` header value or ``allowed_hosts`` entry: lower case,
    without port, trailing dot or IPv6 brackets (``"[::1]:80"`` -> ``"::1"``); None
    when it is not a host name, an IPv4 address or a bracketed IPv6 address."""
    split = split_host(value)
    name = split[0].rstrip(".") if split is not None else ""
    return name or None


def is_loopback_host(host: str) -> bool:
    """True when ``host`` (a bind address, or a name from :func:`parse_host`) is
    ``localhost``, an address in ``127.0.0.0/8`` or ``::1``."""
    h = host.strip().lower().rstrip(".")
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def normalize_hosts(allowed: Optional[Iterable[str]]) -> Optional[frozenset]:
    """Check and normalize an ``allowed_hosts`` setting (None = the default policy)."""
    if allowed is None:
        return None
    if isinstance(allowed, (str, bytes)):
        raise TypeError("allowed_hosts must be a list of host names such as "
                        "['app.example.com'] or ['*'], not a single string")
    out = set()
    for entry in allowed:
        if not isinstance(entry, str) or not entry.strip():
            raise TypeError(f"allowed_hosts entries must be non-empty strings, got {entry!r}")
        name = "*" if entry.strip() == "*" else parse_host(entry)
        if name is None:
            raise ValueError(f"allowed_hosts entry {entry!r} is not a host name, IPv4 address "
                             "or [IPv6] address (a port is allowed and ignored)")
        out.add(name)
    return frozenset(out)


def host_problem(host_values: Sequence[str], allowed: Optional[frozenset],
                 loopback_bind: bool) -> Optional[Tuple[int, str]]:
    """Why a request with these ``Host`` header values is refused, as (HTTP status,
    message), or None when it is allowed.

    ``allowed`` is :func:`normalize_hosts` of the setting. None: any Host unless
    ``loopback_bind`` (the server listens on a loopback address), then only
    loopback names. ``"*"`` in it: any Host. A missing, repeated or malformed Host
    is 400 whenever Host is checked.
    """
    if allowed is None and not loopback_bind:
        return None
    if allowed is not None and "*" in allowed:
        return None
    if len(host_values) != 1:
        return 400, (f"exactly one Host header required, got {len(host_values)} "
                     "(allowed_hosts)")
    value = host_values[0]
    name = parse_host(value)
    if name is None:
        return 400, f"malformed Host header {safe(value, 100)!r} (allowed_hosts)"
    if allowed is None:
        if is_loopback_host(name):
            return None
        return 403, (f"host {safe(value, 100)!r} is not a loopback name and this server "
                     "listens on a loopback address (DNS rebinding guard): list the names "
                     "clients use in Server(allowed_hosts=[...])")
    if name in allowed:
        return None
    return 403, f"host {safe(value, 100)!r} is not in allowed_hosts"


# -- CSRF --------------------------------------------------------------------------
class CsrfTokens:
    """CSRF tokens: ``HMAC-SHA256(secret, client-id)``, url-safe base64.

    ``secret`` (bytes or str) defaults to 32 random bytes per server start, so a
    restart invalidates every token; pass the same secret to servers that must
    accept each other's tokens (several processes, restarts).
    """

    def __init__(self, secret: Union[bytes, str, None] = None) -> None:
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        if secret is not None and len(secret) < 16:
            raise ValueError("csrf_secret must be at least 16 bytes")
        self._secret = secret if secret is not None else os.urandom(32)

    def token_for(self, client_id: str) -> str:
        """The token of ``client_id``."""
        mac = hmac.new(self._secret, _CSRF_CONTEXT + client_id.encode("utf-8"), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode("ascii")

    def check(self, client_id: str, token: Optional[str]) -> bool:
        """True when ``token`` is the token of ``client_id`` (constant-time comparison)."""
        if not token:
            return False
        return hmac.compare_digest(self.token_for(client_id).encode("ascii"),
                                   token.encode("utf-8", "replace"))


def fetch_csrf_token(url: str, client_id: str, timeout: float = 5.0) -> str:
    """Ask the server at ``url`` (its ``ws://`` URL) for the CSRF token of ``client_id``.

    For non-browser clients; use as ``Client(url, client_id=cid,
    csrf_token=lambda: fetch_csrf_token(url, cid))``. Raises
    :class:`ConnectionError` naming the status when the server refuses.
    """
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    target = urlunsplit((scheme, parts.netloc, CSRF_TOKEN_PATH,
                         urlencode({"client-id": client_id}), ""))
    try:
        with urllib.request.urlopen(target, timeout=timeout) as resp:  # noqa: S310 (http/https only)
            body = json.loads(resp.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace").strip()
        raise ConnectionError(f"{target} answered HTTP {exc.code}: {detail}") from None
    token = body.get("csrf-token") if isinstance(body, dict) else None
    if not isinstance(token, str):
        raise ConnectionError(f"{target} answered without a csrf-token: {body!r}")
    return token


# -- the one logging helper ----------------------------------------------------------
class _Throttle:
    """At most ``per_s`` lines per key and second; the rest are counted and reported later."""

    def __init__(self, per_s: int) -> None:
        self.per_s = per_s
        self._lock = threading.Lock()
        self._window: Dict[Tuple[str, str], Tuple[int, int, int]] = {}  # key -> (second, lines, folded)

    def admit(self, key: Tuple[str, str]) -> Tuple[bool, int]:
        """(log this line?, lines folded since the last logged one)."""
        second = int(time.monotonic())
        with self._lock:
            window, lines, folded = self._window.get(key, (second, 0, 0))
            if window != second:
                lines = 0
            if lines < self.per_s:
                self._window[key] = (second, lines + 1, 0)
                if len(self._window) > 1000:  # keys are (what, reason): bounded, but stay safe
                    self._window.clear()
                return True, folded
            self._window[key] = (second, lines, folded + 1)
            return False, 0


_throttle = _Throttle(LOG_LINES_PER_S)


def report(logger: logging.Logger, what: str, reason: str, *, conn_id: Optional[str] = None,
           uid: Optional[str] = None, remote: Optional[str] = None, level: int = logging.WARNING,
           **detail: Any) -> None:
    """Log one refusal or forced close as a structured line.

    ``what`` is the action (``refused-upgrade``, ``closed``, ``rate-limited``,
    ...), ``reason`` its cause; ``detail`` adds fields (``status``, ``code``,
    ``message``). The line reads ``what reason=... conn-id=... uid=...
    remote=... k=v``; the same fields are in ``record.sente_lite`` for
    structured handlers. Each (what, reason) logs at most ``LOG_LINES_PER_S``
    lines a second, so a flood cannot flood the log: later lines carry
    ``folded=N`` for those left out (every event is still counted in stats()).
    """
    if not logger.isEnabledFor(level):
        return
    ok, folded = _throttle.admit((what, reason))
    if not ok:
        return
    fields: Dict[str, Any] = {"reason": reason, "conn-id": conn_id, "uid": uid, "remote": remote}
    fields.update((k.replace("_", "-"), v) for k, v in detail.items())
    traced = tracing.current()
    if traced is not None:
        fields["trace"] = tracing.trace_id(traced)
    if folded:
        fields["folded"] = folded
    # Every value may come from the peer: one line, printable, no credential (logsafe.safe).
    clean = {k: v if v is None or isinstance(v, (int, float)) else safe(v)
             for k, v in fields.items()}
    text = " ".join(f"{k}={_fmt(v)}" for k, v in clean.items())
    logger.log(level, "%s %s", what, text, extra={"sente_lite": dict(clean, event=what)})


def _fmt(value: Any) -> str:
    """A field value of a report line: ``-`` for None, quoted when it holds a space,
    quote, ``=`` or backslash (``value`` is already :func:`logsafe.safe`)."""
    if value is None:
        return "-"
    s = str(value)
    if not s or any(c in s for c in ' "=\\'):
        return json.dumps(s, ensure_ascii=False)
    return s


# -- admission -----------------------------------------------------------------------
class Refused(Exception):
    """Raised inside the connection factory to drop a socket before its upgrade."""


@dataclass
class _GateCounters:
    refused: Dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, reason: str) -> None:
        with self.lock:
            self.refused[reason] = self.refused.get(reason, 0) + 1


class GateLink(Protocol):
    """What the gate uses of a socket asking to upgrade (the server's
    :class:`~sente_lite.server.link.Link`)."""

    remote: str  # the peer's "host:port", for the log
    slot: bool   # it holds one of the gate's connection slots
    # (optional) ``local_host``: the address the request came to, when the face serves
    # several; None or absent: the server's ``bind_host`` decides the Host check

    def respond(self, status: http.HTTPStatus, text: str) -> Response:
        """An HTTP answer (``text/plain``) to its request, not sent yet."""
        ...


class Gate:
    """Admission control of one server: origin, CSRF, authentication and the two slot limits.

    Thread-safe. ``link`` arguments are the sockets asking to upgrade (:class:`GateLink`).
    """

    def __init__(
        self,
        *,
        authenticate: Optional[Authenticate],
        allowed_origins: Optional[Iterable[str]],
        jwt: Optional[JWT] = None,
        csrf: bool,
        csrf_secret: Union[bytes, str, None],
        max_connections: int,
        max_pending_handshakes: int,
        handshake_timeout: float,
        allowed_hosts: Optional[Iterable[str]] = None,
        bind_host: str = "127.0.0.1",
        max_pending_auth: int = lim.DEFAULT_MAX_PENDING_AUTH,
    ) -> None:
        if max_connections < 1 or max_pending_handshakes < 1:
            raise ValueError("max_connections and max_pending_handshakes must be >= 1")
        if authenticate is not None and not callable(authenticate):
            raise TypeError("authenticate must be a callable taking a HandshakeRequest")
        self.authenticate = authenticate
        self.jwt = jwt
        self.allowed_origins = normalize_origins(allowed_origins)
        self.allowed_hosts = normalize_hosts(allowed_hosts)
        self.loopback_bind = is_loopback_host(bind_host)
        self.csrf: Optional[CsrfTokens] = CsrfTokens(csrf_secret) if csrf else None
        self.max_connections = max_connections
        self.max_pending_handshakes = max_pending_handshakes
        self.handshake_timeout = handshake_timeout
        self.max_pending_auth = lim.validate_count("max_pending_auth", max_pending_auth)
        self._lock = threading.Lock()
        self._slots = 0
        self._pending_auth = 0
        self._counters = _GateCounters()

    # -- counters -------------------------------------------------------------------
    def refusals(self) -> Dict[str, int]:
        """Refused upgrades by reason."""
        with self._counters.lock:
            return dict(self._counters.refused)

    def stats(self) -> Dict[str, Any]:
        """The gate's part of Server.stats()."""
        with self._lock:
            slots, pending_auth = self._slots, self._pending_auth
        return {"handshakes_refused": self.refusals(), "connection_slots": slots,
                "pending_auth": pending_auth}

    # -- refusals -------------------------------------------------------------------
    def refuse(self, link: GateLink, status: int, reason: str, message: str,
               client_id: Optional[str] = None, headers: Sequence[Tuple[str, str]] = ()) -> Response:
        """Count, log and build the HTTP refusal of an upgrade."""
        self._counters.add(reason)
        report(log, "refused-upgrade", reason, uid=None, remote=link.remote, status=status,
               client_id=client_id, message=message, level=_REFUSAL_LEVELS.get(reason, logging.WARNING))
        response = link.respond(http.HTTPStatus(status), message.rstrip("\n") + "\n")
        for name, value in headers:
            response.headers[name] = value
        return response

    # -- the checks, in order -----------------------------------------------------------
    def check_host(self, link: GateLink, request: Request) -> Optional[Response]:
        """403 when the Host is not allowed, 400 when it is malformed (see :func:`host_problem`).
        Run first, on every request: upgrades and plain GETs alike."""
        # a face that serves several addresses (ASGI) tells the one this request came to
        local = getattr(link, "local_host", None)
        loopback = self.loopback_bind if local is None else is_loopback_host(local)
        problem = host_problem(request.headers.get_all("Host"), self.allowed_hosts, loopback)
        if problem is not None:
            return self.refuse(link, problem[0], R_HOST, problem[1])
        return None

    def check_origin(self, link: GateLink, request: Request) -> Optional[Response]:
        """403 when the Origin is not allowed."""
        origins = request.headers.get_all("Origin")
        hosts = request.headers.get_all("Host")
        origin = origins[0] if len(origins) == 1 else ("" if origins else None)
        problem = origin_problem(origin, hosts[0] if len(hosts) == 1 else None,
                                 self.allowed_origins)
        if problem is not None:
            return self.refuse(link, 403, R_ORIGIN, problem)
        return None

    def admit(self, link: GateLink, request: Request, client_id: str,
              client_id_given: bool) -> Optional[Response]:
        """Origin, then CSRF. A Response refuses; None admits (the connection slot is
        taken later, by :meth:`take_slot`)."""
        refusal = self.check_origin(link, request)
        if refusal is not None:
            return refusal
        if self.csrf is not None:
            query = parse_qs(urlsplit(request.path).query, keep_blank_values=True)
            token = (query.get("csrf-token") or [""])[0]
            if not token:
                return self.refuse(link, 403, R_CSRF,
                                   f"csrf-token required: get one from GET {CSRF_TOKEN_PATH}"
                                   "?client-id=... and send ?csrf-token= with the same client-id",
                                   client_id)
            if not client_id_given:
                return self.refuse(link, 403, R_CSRF, "csrf-token given without client-id", client_id)
            if not self.csrf.check(client_id, token):
                return self.refuse(link, 403, R_CSRF, "csrf-token does not match this client-id "
                                   "(or was issued by a server with another csrf_secret)", client_id)
        return None

    @property
    def checks_credentials(self) -> bool:
        """An ``authenticate`` hook or ``jwt`` decides who an upgrade is (on a worker)."""
        return self.authenticate is not None or self.jwt is not None

    def identify(self, link: GateLink, request: Request,
                 client_id: str) -> Union[str, Authenticated, Grant, Response]:
        """The uid of this upgrade (the client-id without an authenticate hook), its
        token's :class:`Grant` with ``jwt``, or a refusal."""
        if self.jwt is not None:
            return self._check_jwt(link, make_handshake_request(request, client_id, link.remote))
        if self.authenticate is None:
            return client_id
        view = make_handshake_request(request, client_id, link.remote)
        try:
            uid = self.authenticate(view)
        except Exception as exc:
            log.exception("authenticate hook raised for %s", view.remote_address)
            return self.refuse(link, 500, R_AUTH_ERROR,
                               f"authentication failed on the server ({type(exc).__name__})", client_id)
        channels: Optional[Tuple[str, ...]] = ()
        info: Optional[Dict[str, Any]] = None
        if isinstance(uid, Authenticated):
            uid, channels, info = uid.uid, connect_channels(uid.channels), uid.info
            problem = info_problem(info)
            if problem is not None:
                log.error("authenticate hook returned an Authenticated whose %s", problem)
                return self.refuse(link, 500, R_AUTH_ERROR, "authentication failed on the server "
                                   "(authenticate returned an invalid info)", client_id)
        elif isinstance(uid, tuple) and len(uid) == 2:  # (uid, channels)
            uid, channels = uid[0], connect_channels(uid[1])
        if uid is None:
            return self.refuse(link, 401, R_UNAUTHENTICATED,
                               "no valid credential: send ?token= or Authorization: Bearer",
                               client_id, headers=[("WWW-Authenticate", 'Bearer realm="sente-lite"')])
        if not isinstance(uid, str) or not uid or len(uid) > MAX_UID_CHARS or channels is None:
            log.error("authenticate hook returned %r: it must return a str of 1-%d chars, "
                      "Authenticated(uid, [channel, ...]) or None", uid, MAX_UID_CHARS)
            return self.refuse(link, 500, R_AUTH_ERROR, "authentication failed on the server "
                               "(authenticate returned an invalid uid)", client_id)
        return Authenticated(uid, channels, info) if channels or info is not None else uid

    def _check_jwt(self, link: GateLink, view: HandshakeRequest) -> Union[Grant, Response]:
        """The grant of the upgrade's token, or 401 with the short reason (never the token)."""
        assert self.jwt is not None
        try:
            return self.jwt.check(view.token)
        except TokenRejected as exc:
            return self.refuse(link, 401, R_UNAUTHENTICATED, f"invalid token: {exc.reason}",
                               view.client_id,
                               headers=[("WWW-Authenticate", 'Bearer realm="sente-lite", '
                                         'error="invalid_token"')])

    def csrf_token_for(self, client_id: str) -> Optional[str]:
        """The CSRF token of ``client_id``; None when CSRF protection is off."""
        return self.csrf.token_for(client_id) if self.csrf is not None else None

    # -- slots -------------------------------------------------------------------------
    def take_slot(self, link: GateLink, client_id: Optional[str] = None) -> Optional[Response]:
        """Take a connection slot for ``link`` (an upgrade about to be answered 101);
        a 503 refusal when ``max_connections`` are taken."""
        with self._lock:
            if link.slot:
                return None
            if self._slots < self.max_connections:
                self._slots += 1
                link.slot = True
                return None
        return self._refuse_full(link, client_id)

    def full(self, link: GateLink, client_id: Optional[str] = None) -> Optional[Response]:
        """The 503 refusal of ``link`` when every connection slot is taken, else None
        (takes nothing: for a probe, which never opens)."""
        with self._lock:
            if self._slots < self.max_connections:
                return None
        return self._refuse_full(link, client_id)

    def _refuse_full(self, link: GateLink, client_id: Optional[str]) -> Response:
        return self.refuse(link, 503, R_MAX_CONNECTIONS,
                           f"server full: {self.max_connections} connections (max_connections)",
                           client_id)

    def begin_auth(self, link: GateLink, client_id: Optional[str] = None) -> Optional[Response]:
        """Count one more upgrade waiting for the ``authenticate`` hook; a 503 refusal
        when ``max_pending_auth`` already wait. Each None is paired with :meth:`end_auth`."""
        with self._lock:
            if self._pending_auth < self.max_pending_auth:
                self._pending_auth += 1
                return None
        return self.refuse(link, 503, R_MAX_PENDING_AUTH,
                           f"server busy: {self.max_pending_auth} upgrades already wait for "
                           "authentication (max_pending_auth)", client_id)

    def end_auth(self) -> None:
        """The hook of an upgrade counted by :meth:`begin_auth` returned (or raised)."""
        with self._lock:
            self._pending_auth -= 1

    def release_slot(self, link: GateLink) -> None:
        """Give back the connection slot ``link`` took, if it took one (at its close)."""
        with self._lock:
            if link.slot:
                link.slot = False
                self._slots -= 1

    def count_refusal(self, reason: str) -> None:
        """Count an upgrade refused outside the gate (by the network loop)."""
        self._counters.add(reason)


__all__ = ["HandshakeRequest", "Authenticate", "Authorize", "Gate", "GateLink",
           "CsrfTokens", "fetch_csrf_token", "origin_problem", "bearer_token", "report",
           "host_problem", "parse_host", "is_loopback_host", "normalize_hosts",
           "CSRF_TOKEN_PATH", "MAX_UID_CHARS", "SUBPROTOCOL", "SUBPROTOCOL_BEARER",
           "offered_subprotocols", "subprotocol_token", "select_subprotocol"]

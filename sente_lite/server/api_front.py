"""The server API on the network loop: sockets whose first bytes are ``POST /api/``.

The loop's reader hands every new socket's first bytes to :meth:`ApiFront.sniff`
before websockets' parser sees them. A socket that starts with ``POST /api/`` becomes
an :class:`ApiConn`: its requests are parsed here (:mod:`sente_lite.api.wire`),
checked (Host, API key, rate) and answered by :func:`sente_lite.api.http_api.handle`,
on the network thread when the broker is this process's (nothing blocks), else on the
worker pool (Redis may). One request at a time per connection: pipelined requests
wait, parsed, until the answer before them is written. Keep-alive: each next request
must arrive whole within ``handshake_timeout`` of the answer before it; the first is
bounded like an upgrade (``request_line_timeout``, ``handshake_timeout``, the caps on
upgrades in progress).
"""

from __future__ import annotations

import logging
import time
from typing import Dict, Optional, Tuple

from ..api import http_api
from ..api.wire import (API_PREFIX, CONTINUE, MAX_HEAD_BYTES, ApiRequest, HttpError,
                        RequestParser, response_bytes)
from ..core import security
from ..core.outbox import Overflow
from ..counters import Counter
from ..limits import TokenBucket
from .link import Link
from .link_state import CLOSED, FLUSHING, HTTP_API
from .ports import ServerPort
from .workers import Lane

log = logging.getLogger("sente_lite.api")

#: ``link.api`` of a socket that is not an API one (its bytes go to websockets).
NOT_API = "not-api"
_JSON_ERRORS = {400: "bad-request", 401: "unauthorized", 404: "not-found",
                405: "method-not-allowed", 408: "bad-request", 411: "bad-request",
                413: "too-large", 429: "rate-limited", 431: "bad-request", 501: "bad-request"}


class ApiFront:
    """The API side of one server's network loop (every method runs on its thread)."""

    def __init__(self, server: ServerPort) -> None:
        self.server = server
        self.keys = (http_api.ApiKeys(server.api_keys) if server.api_keys is not None else None)
        self.rate = server.api_rate_limit
        self._buckets: Dict[str, TokenBucket] = {}

    def sniff(self, link: Link, data: bytes) -> Optional[bytes]:
        """Take ``data`` (``b""``: EOF) when ``link`` is an API socket (None), else return
        the bytes websockets' parser must get (a prefix held back included)."""
        state = link.api
        if state is NOT_API:
            return data
        if isinstance(state, ApiConn):
            state.receive(data)
            return None
        held: bytes = state or b""
        buf = held + data
        n = min(len(buf), len(API_PREFIX))
        if data and buf[:n] == API_PREFIX[:n]:
            link.got_bytes = True
            if n < len(API_PREFIX):
                link.api = buf  # too few bytes to tell yet
                return None
            with link.lock:
                link.to(HTTP_API)
            conn = link.api = ApiConn(self, link)
            conn.receive(buf)
            return None
        link.api = NOT_API
        if held and not data:  # EOF after a few bytes: websockets gets them, then the EOF
            link.protocol.receive_data(held)
            return b""
        return buf

    def allow(self, identity: str) -> bool:
        """Take one request of ``identity`` from its rate (``api_rate_limit``)."""
        if self.rate is None:
            return True
        bucket = self._buckets.get(identity)
        if bucket is None:
            bucket = self._buckets[identity] = TokenBucket(self.rate, max(1.0, self.rate))
        return bucket.take()


class ApiConn:
    """One API socket: parse, check, run, answer; keep-alive and its deadline."""

    def __init__(self, front: ApiFront, link: Link) -> None:
        self.front = front
        self.server = front.server
        self.link = link
        self.loop = link.loop
        self.parser = RequestParser(self.server.api_max_body_bytes)
        self.lane = Lane(f"api-{link.fd}")
        self.busy = False          # a request is being answered
        self.closing = False       # the last answer is written: nothing more is read
        self.first = True          # the first request is an upgrade in progress for the loop
        self.continued = False     # a 100 Continue went out for the request being received
        self.peer_eof = False
        self.deadline = 0.0
        self.timer_at = 0.0
        # a broker that waits on another process is never waited on by the network thread
        self.inline = not self.server.channels.waits_on_io
        self.host_ok: Optional[Tuple[str, ...]] = None  # the last Host values that passed

    # -- bytes in ------------------------------------------------------------------------
    def receive(self, data: bytes) -> None:
        link = self.link
        if not data:
            self.peer_eof = True
            if not self.busy or self.closing:
                self.loop.closer.finish(link)
            return
        if self.closing:
            return  # answered for the last time: what follows is not read
        if not link.got_line and b"\n" in data:
            link.got_line = True
        self.parser.feed(data)
        if self.parser.buffered > self.server.api_max_body_bytes + 2 * MAX_HEAD_BYTES:
            self._refuse(HttpError(413, "too much sent ahead of the answers"))
            return
        self.pump()

    def pump(self) -> None:
        """Serve the next whole request, if there is one and none is being answered."""
        link = self.link
        while not self.busy and link.state is not CLOSED:
            try:
                request = self.parser.next()
            except HttpError as exc:
                self._refuse(exc)
                return
            if request is None:
                if self.parser.continue_wanted and not self.continued:
                    self.continued = True
                    self._write(CONTINUE, close=False)
                return
            self.continued = False
            if self.first:
                self.first = False
                self.loop.handshakes.leave(link)
            self._serve(request)

    # -- one request ---------------------------------------------------------------------
    def _serve(self, request: ApiRequest) -> None:
        srv = self.server
        hosts = tuple(request.headers.get("host", ()))
        if hosts != self.host_ok:  # keep-alive requests repeat their Host: checked once
            gate = srv._gate
            problem = security.host_problem(hosts, gate.allowed_hosts, gate.loopback_bind)
            if problem is not None:
                gate.count_refusal(security.R_HOST)
                self._refuse(HttpError(problem[0], problem[1]))
                return
            self.host_ok = hosts
        path = request.target.split("?", 1)[0]
        if not path.startswith("/api/"):
            self._refuse(HttpError(404, f"no API endpoint at {path[:64]}: use POST /api/<method>"))
            return
        if request.method != "POST":
            self._refuse(HttpError(405, "the API answers POST only", (("Allow", "POST"),)))
            return
        keys = self.front.keys
        if keys is None:
            self._refuse(HttpError(404, "the HTTP API is off: start the server with api_keys "
                                        "(--api-key, SENTE_LITE_API_KEY)"))
            return
        identity = keys.identify(request.header("authorization"))
        if identity is None:
            srv.counters.add(Counter.API_UNAUTHORIZED)
            log.warning("API request refused from %s: missing or wrong API key", self.link.remote)
            self._refuse(HttpError(401, "missing or wrong API key: send Authorization: apikey <key>",
                                   (("WWW-Authenticate", "apikey"),)))
            return
        keep = request.keep_alive
        if not self.front.allow(identity):
            srv.counters.add(Counter.API_RATE_LIMITED)
            self._answer(429, http_api.error_body(
                "rate-limited", f"over {self.front.rate:g} requests per second for this key "
                                "(api_rate_limit): retry later"), keep, (("Retry-After", "1"),))
            return
        method = path[len("/api/"):]
        if self.inline:
            self._answer(*self._run(method, request.body, identity), keep)
            return
        self.busy = True

        def task() -> None:
            answer = self._run(method, request.body, identity)
            self.loop.call_soon(lambda: self._answered(answer, keep))

        srv._pool.submit(self.lane, task)

    def _run(self, method: str, body: bytes, identity: str) -> Tuple[int, bytes]:
        try:
            return http_api.handle(self.server, method, body, identity)
        except Exception:
            self.server.counters.add(Counter.INTERNAL_ERRORS)
            log.exception("internal error in API method %r", method[:64])
            return 500, http_api.error_body("internal-error", "internal server error (see the "
                                                              "server's log)")

    def _answered(self, answer: Tuple[int, bytes], keep: bool) -> None:
        self.busy = False
        if self.link.state is CLOSED:
            return
        self._answer(answer[0], answer[1], keep and not self.peer_eof)
        if self.peer_eof:
            self.loop.closer.finish(self.link)
            return
        self.pump()

    # -- answers -------------------------------------------------------------------------
    def _refuse(self, exc: HttpError) -> None:
        """Answer an HTTP-level error and close."""
        if exc.status == 413:
            self.server.counters.add(Counter.API_TOO_LARGE)
        elif exc.status not in (401, 403, 404, 405):
            self.server.counters.add(Counter.API_BAD_REQUESTS)
        code = _JSON_ERRORS.get(exc.status, "bad-request")
        self._answer(exc.status, http_api.error_body(code, exc.message), False, exc.headers)

    def _answer(self, status: int, body: bytes, keep: bool,
                headers: Tuple[Tuple[str, str], ...] = ()) -> None:
        self.server.counters.add(Counter.API_REQUESTS)
        self._write(response_bytes(status, body, keep_alive=keep, headers=headers), close=not keep)
        if keep:
            self._arm(time.monotonic() + self.server.handshake_timeout)

    def _write(self, data: bytes, close: bool) -> None:
        link = self.link
        try:
            with link.lock:
                link._push_locked(data)
        except Overflow:
            self.loop.closer.finish(link)
            return
        if close:
            self.busy = self.closing = True
            self.loop.handshakes.leave(link)
            with link.lock:
                link.to(FLUSHING)
            self.loop.writer.flush(link)

    # -- keep-alive deadline ---------------------------------------------------------------
    def _arm(self, deadline: float) -> None:
        self.deadline = deadline
        if not self.timer_at:
            self.timer_at = deadline
            self.loop.call_at(deadline, self._expired)

    def _expired(self) -> None:
        self.timer_at = 0.0
        link = self.link
        if link.state is CLOSED or self.busy:
            return
        now = time.monotonic()
        if now < self.deadline:
            self._arm(self.deadline)
            return
        if self.parser.started:
            self._refuse(HttpError(408, f"request not complete within "
                                        f"{self.server.handshake_timeout:g}s (handshake_timeout)"))
        else:
            self.loop.closer.finish(link)  # idle keep-alive connection


__all__ = ["ApiFront", "ApiConn", "NOT_API"]

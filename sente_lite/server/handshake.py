"""The upgrade of an accepted socket, for the network loop (:mod:`sente_lite.server.netloop`).

:class:`HandshakeGuard` keeps the upgrades in progress and their limits against
slowloris: a deadline for the request line and one for the whole upgrade, a global and
a per-address cap, the oldest evicted when a cap is reached. :class:`Upgrader` takes a
parsed request to the handler and applies its decision (101, an HTTP answer, or later
from another thread, within the handshake deadline); it answers malformed requests.
Both run on the loop thread only.
"""

from __future__ import annotations

import collections
import http
import logging
import weakref
from typing import Dict, Optional

from websockets import exceptions as _ws_exceptions
from websockets import http11 as _http11
from websockets.exceptions import InvalidMessage, SecurityError
from websockets.http11 import Request, Response

from ..logsafe import redact_target, safe
from .link import DEFER, Admit, Decision, Link, LoopPort
from .link_state import ANSWERED, DEFERRED, OPEN, UPGRADED, UPGRADING


#: websockets >= 17 answers an oversized request line or header 414/431 itself; before,
#: it closes such a peer without an answer, and the loop answers.
_WEBSOCKETS_ANSWERS_LIMITS = hasattr(_ws_exceptions, "RequestLineTooLong")

log = logging.getLogger("sente_lite.net")

#: Age before which an upgrade in progress is never evicted to make room for another.
EVICT_MIN_AGE_S = 0.5
#: Seconds between two checks of the upgrades in progress against their deadlines.
PENDING_SWEEP_S = 0.1


class HandshakeGuard:
    """The upgrades not complete yet, oldest first (and the same per address)."""

    def __init__(self, loop: LoopPort) -> None:
        self.loop = loop
        self.counts = loop.counts
        self.max_pending = loop.max_pending
        self.max_pending_per_address = loop.max_pending_per_address
        self.handshake_timeout = loop.handshake_timeout
        self.request_line_timeout = loop.request_line_timeout
        self.pending: "collections.OrderedDict[Link, None]" = collections.OrderedDict()
        self._by_address: Dict[str, "collections.OrderedDict[Link, None]"] = {}

    def __len__(self) -> int:
        return len(self.pending)

    def add(self, link: Link) -> None:
        """A socket was just accepted: its upgrade is in progress until its request."""
        self.pending[link] = None
        self._by_address.setdefault(link.address, collections.OrderedDict())[link] = None
        self._enforce_caps(link.address, link.accepted_at)

    def leave(self, link: Link) -> None:
        if self.pending.pop(link, 0) is None:
            per = self._by_address.get(link.address)
            if per is not None:
                per.pop(link, None)
                if not per:
                    del self._by_address[link.address]

    def _enforce_caps(self, address: str, now: float) -> None:
        """Over a cap on upgrades in progress, drop the oldest, once it is older than
        EVICT_MIN_AGE_S: a burst of fresh sockets is not a slowloris, and gets the time
        to send its requests (the sweep evicts later if they don't)."""
        per = self._by_address.get(address)
        while per is not None and len(per) > self.max_pending_per_address:
            oldest = next(iter(per))
            if now - oldest.accepted_at < EVICT_MIN_AGE_S:
                break
            self._evict(oldest, "max_pending_handshakes_per_address",
                        f"more than {self.max_pending_per_address} upgrades in progress from "
                        f"{address}")
            per = self._by_address.get(address)
        while len(self.pending) > self.max_pending:
            oldest = next(iter(self.pending))
            if now - oldest.accepted_at < EVICT_MIN_AGE_S:
                break
            self._evict(oldest, "max_pending_handshakes",
                        f"more than {self.max_pending} upgrades in progress")

    def _evict(self, link: Link, setting: str, why: str) -> None:
        self.counts["handshakes_evicted"] += 1
        self.loop.handler.on_refused(link, "handshake-evicted", None,
                                     f"oldest upgrade in progress dropped: {why} ({setting})")
        self.loop.closer.finish(link)

    def sweep(self, now: float) -> None:
        """Drop upgrades past their deadlines (the oldest come first)."""
        if len(self.pending) > self.max_pending:
            self._enforce_caps("", now)
        for address in [a for a, per in self._by_address.items()
                        if len(per) > self.max_pending_per_address]:
            self._enforce_caps(address, now)
        full_limit = now - self.handshake_timeout
        line_limit = max(full_limit, now - self.request_line_timeout)
        for link in list(self.pending):
            if link.accepted_at > line_limit:
                break
            if link.accepted_at <= full_limit:
                self.timed_out(link, f"upgrade request not complete within "
                                     f"{self.handshake_timeout:g}s (handshake_timeout)")
            elif not link.got_line:
                self.timed_out(link, f"no request line within {self.request_line_timeout:g}s "
                                     "(request_line_timeout)")

    def timed_out(self, link: Link, message: str) -> None:
        self.loop.handler.on_refused(link, "handshake-timeout", None, message)
        self.loop.closer.finish(link)


class Upgrader:
    """From a parsed request (or one that would not parse) to the handler's answer."""

    def __init__(self, loop: LoopPort) -> None:
        self.loop = loop
        self.counts = loop.counts
        self.handshake_timeout = loop.handshake_timeout

    def request(self, link: Link, request: Request) -> None:
        link.request = request
        loop = self.loop
        loop.handshakes.leave(link)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("request GET %s from %s", safe(redact_target(request.path)), link.remote)
        try:
            decision = loop.handler.on_request(link, request)
        except Exception as exc:
            decision = self.internal_error(link, exc)
        if decision is DEFER:
            with link.lock:
                link.to(DEFERRED)
            link.deadline = link.accepted_at + self.handshake_timeout
            ref = weakref.ref(link)  # a timer keeps no ended link (and its protocol) alive
            loop.call_at(link.deadline, lambda: self._decision_overdue(ref()))
            return
        self.apply(link, decision)

    def _decision_overdue(self, link: Optional[Link]) -> None:
        if link is not None and link.state is DEFERRED:
            self.loop.handshakes.timed_out(
                link, f"upgrade not decided within {self.handshake_timeout:g}s "
                      "(handshake_timeout; a slow authenticate hook?)")

    def internal_error(self, link: Link, exc: BaseException) -> Response:
        self.counts["upgrade_errors"] += 1
        log.error("internal error handling an upgrade from %s", link.remote,
                  exc_info=(type(exc), exc, exc.__traceback__))
        return link.respond(http.HTTPStatus.INTERNAL_SERVER_ERROR,
                            "internal server error: the upgrade failed (see the server's log)\n")

    def apply(self, link: Link, decision: Decision) -> None:
        """Send the handler's answer to ``link``'s request (a 101 opens the link). A
        link already closed gets nothing (a decision made on another thread after its
        peer left), nor one decided already. An :class:`Admit` asks the handler first
        (``on_admit``: its slot); an answer that is not a 101 gives that back at once
        (``on_unopened``)."""
        if link.state is not UPGRADING and link.state is not DEFERRED:
            return
        link.deadline = 0.0
        handler = self.loop.handler
        try:
            if isinstance(decision, Admit):
                decision = handler.on_admit(link, decision.identity) or decision
            if isinstance(decision, Admit):
                self._accept(link, decision)
            else:
                self._answer(link, decision)
        except Exception as exc:
            if link.state in UPGRADED:
                raise
            self._answer(link, self.internal_error(link, exc))
        finally:
            if link.state not in UPGRADED:
                handler.on_unopened(link)
        self.loop.writer.flush_protocol(link)

    @staticmethod
    def _answer(link: Link, response: Response) -> None:
        """Send ``response`` (not a 101) to ``link``'s request."""
        if link.state is not ANSWERED:
            with link.lock:
                link.to(ANSWERED)
        link.protocol.send_response(response)

    def _accept(self, link: Link, decision: Admit) -> None:
        """Answer 101 (or websockets' own refusal of a bad upgrade) and open the link."""
        proto = link.protocol
        handler = self.loop.handler
        response = proto.accept(link.request)  # type: ignore[arg-type]
        if response.status_code != 101:
            handler.on_refused(link, "invalid-upgrade", response.status_code,
                               _first_line(response.body))
            self._answer(link, response)
            return
        if "Server" in response.headers:
            del response.headers["Server"]
        response.headers["Server"] = "sente-lite"
        proto.send_response(response)
        with link.lock:
            self.loop.writer.flush_protocol_locked(link)
            link.to(OPEN)
        handler.on_open(link, decision.identity)

    def malformed(self, link: Link, exc: BaseException) -> None:
        """websockets could not parse the upgrade request (it answered 414/431 itself,
        or gave up). Counted and logged without the request's text: it may carry a
        credential."""
        with link.lock:
            link.to(ANSWERED)
        handler = self.loop.handler
        if isinstance(exc, SecurityError) and _WEBSOCKETS_ANSWERS_LIMITS:
            status = 414 if type(exc).__name__ == "RequestLineTooLong" else 431
            handler.on_refused(link, "headers-too-large", status,
                               f"{type(exc).__name__}: request line or headers too large")
            return
        if not link.got_bytes:
            return  # closed before sending anything (a port probe): not a refusal
        cause = exc.__cause__ if isinstance(exc, InvalidMessage) else exc
        if link.peer_eof:
            self.counts["upgrades_abandoned"] += 1  # the peer left mid-request: no one to answer
            return
        if isinstance(cause, SecurityError) and not _WEBSOCKETS_ANSWERS_LIMITS:
            # websockets < 17 raises SecurityError ("line too long", "too many HTTP
            # headers"; wrapped in InvalidMessage from 14.0) and sends no answer
            status = 414 if link.line_bytes > _http11.MAX_LINE_LENGTH else 431
            handler.on_refused(link, "headers-too-large", status,
                               "SecurityError: request line or headers too large")
            with link.lock:
                link.outbox.push(raw_response(status, "request line or headers too large"))
            return
        handler.on_refused(link, "bad-request", 400,
                           f"malformed HTTP request ({type(cause).__name__})")
        with link.lock:
            link.outbox.push(raw_response(400, "malformed HTTP request"))


def _first_line(body: Optional[bytes]) -> str:
    text = (body or b"").decode("utf-8", "replace").strip()
    return text.splitlines()[0] if text else ""


def raw_response(status: int, message: str) -> bytes:
    """A whole HTTP/1.1 answer (``text/plain``, ``Connection: close``) as bytes."""
    body = (message + "\n").encode("utf-8")
    phrase = http.HTTPStatus(status).phrase
    head = (f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode("ascii") + body


__all__ = ["HandshakeGuard", "Upgrader", "raw_response", "EVICT_MIN_AGE_S", "PENDING_SWEEP_S"]

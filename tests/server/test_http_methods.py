"""Every plain HTTP route answers GET and HEAD only: another method gets 405 with
``Allow``, HEAD gets GET's status and headers with no body (RFC 9110 9.3.2, 15.5.6)."""

from __future__ import annotations

import inspect
from typing import Sequence, Tuple

import pytest
from websockets.http11 import Request

from sente_lite import Server
from sente_lite.server import static
from sente_lite.testing.abuse import HttpAnswer, RawPeer

ROUTES = ["/health", "/metrics", "/csrf-token?client-id=a", "/sente_lite.js", "/sente_lite.mjs",
          "/sente_lite.d.ts", static.script_url(), "/", "/chsk", "/chsk?client-id=a"]
#: websockets parses methods other than GET from 17.0 on (``Request.method``); before, its
#: parser refuses them, and the server answers 400 (never 200) to every method but GET.
PARSES_METHODS = "method" in inspect.signature(Request).parameters
OTHER_METHODS = ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "PROPFIND",
                 "get", "Head", "BREW"]


def ask(srv: Server, method: str, target: str, headers: Sequence[Tuple[str, str]] = (),
        body: bytes = b"") -> Tuple[HttpAnswer, bytes]:
    """One raw request; returns the answer and every byte that came after its head
    before the server closed (for HEAD: what the server sent as a body)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{srv.port}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    with RawPeer(srv.host, srv.port) as peer:
        peer.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        answer = peer.read_http()
        return answer, answer.body


@pytest.fixture
def srv(make_server) -> Server:
    return make_server(demo=True, csrf=True)


@pytest.mark.parametrize("method", OTHER_METHODS)
def test_other_methods_get_405_with_allow_on_every_route(srv: Server, method: str) -> None:
    if not PARSES_METHODS:
        for target in ROUTES + ["/nowhere"]:
            assert ask(srv, method, target)[0].status == 400, (method, target)
        assert srv.stats()["connections"] == 0
        return
    for target in ROUTES:
        answer, _ = ask(srv, method, target)
        assert answer.status == 405, (method, target, answer.status)
        assert answer.headers["allow"] == "GET, HEAD", target
        assert b"GET or HEAD" in answer.body, answer.body
    upgrade = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "13"),
               ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")]
    assert ask(srv, method, "/chsk", upgrade)[0].status == 405  # no upgrade but by GET
    assert ask(srv, method, "/nowhere")[0].status == 404
    assert srv.stats()["handshakes_refused"]["method-not-allowed"] == len(ROUTES) + 1
    assert srv.stats()["connections"] == 0


def test_head_has_the_status_and_headers_of_get_and_no_body(srv: Server) -> None:
    if not PARSES_METHODS:
        for target in ROUTES:
            head, _ = ask(srv, "HEAD", target)
            assert head.status == 400 and srv.stats()["connections"] == 0, target
        return
    for target in ROUTES + ["/nowhere", "/csrf-token", "/chsk?client-id=" + "x" * 200]:
        got, _ = ask(srv, "GET", target)
        head, rest = ask(srv, "HEAD", target)
        # the status routes' bodies change between two requests (uptime, counters)
        hidden = {"date"} | ({"content-length"} if target in ("/health", "/metrics") else set())
        assert head.status == got.status, target
        same = {k: v for k, v in got.headers.items() if k not in hidden}
        assert {k: v for k, v in head.headers.items() if k not in hidden} == same, target
        assert rest == b"", (target, rest[:80])
        if got.status == 200 and "content-length" not in hidden and target != "/chsk":
            assert int(head.headers["content-length"]) == len(got.body) > 0
    # a conditional HEAD revalidates like GET
    etag = ask(srv, "GET", "/sente_lite.js")[0].headers["etag"]
    assert ask(srv, "HEAD", "/sente_lite.js", [("If-None-Match", etag)])[0].status == 304
    # HEAD with upgrade headers never upgrades: it gets the probe's verdict
    upgrade = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "13"),
               ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")]
    head, rest = ask(srv, "HEAD", "/chsk?client-id=a&csrf-token=" + srv.csrf_token("a"), upgrade)
    assert head.status == 200 and rest == b"" and srv.stats()["connections"] == 0
    # a request with a body is never answered 200, whatever its method
    for method in ("HEAD", "POST", "GET", "DELETE"):
        for target in ("/health", "/sente_lite.js", "/chsk"):
            status = ask(srv, method, target, body=b"x=1")[0].status
            assert status in (400, 405), (method, target, status)

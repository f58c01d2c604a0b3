"""Logs: nothing a peer sends starts a log line or injects control characters, and no
credential reaches a log at any level (sente_lite's loggers and websockets').

Every test captures every logger at DEBUG and checks every record as a handler
would format it (message, exception text, structured fields).
"""

from __future__ import annotations

import json
import logging
import socket
from typing import Iterable, List, Optional

import pytest

from sente_lite.logsafe import (MAX_LOGGED_CHARS, RedactingLogger, escape, exception_summary, redact_target,
                                redact_text, safe)
from sente_lite.wire.protocol import channel_id_problem
from sente_lite.core.security import HandshakeRequest
from sente_lite.testing.abuse import RawPeer, upgrade_request
from support import WAIT_S, wait_until

#: Characters that end or rewrite a log line in some viewer: LF, CR, ESC, NUL, VT, FF,
#: NEL (U+0085), LINE SEPARATOR (U+2028), PARAGRAPH SEPARATOR (U+2029), RLO (U+202E).
FORGING = ["\n", "\r", "\x1b", "\x00", "\x0b", "\x0c", "\x85", "\u2028", "\u2029", "\u202e"]
FAKE_LINE = "refused-upgrade reason=origin conn-id=- uid=- remote=10.0.0.1:1 status=403"
SECRET = "S3CRET-t0ken-value"


def rendered(records: Iterable[logging.LogRecord]) -> List[str]:
    """Each record as a handler writes it: message, exception text and extra fields."""
    fmt = logging.Formatter()
    out = []
    for r in records:
        text = fmt.format(r)
        extra = getattr(r, "sente_lite", None)
        if extra is not None:
            text += " " + str(extra)
        out.append(text)
    return out


def assert_one_clean_line_each(records: Iterable[logging.LogRecord]) -> None:
    for r in records:
        if r.exc_info:  # a traceback is several lines by design; its message line is checked
            text = r.getMessage()
        else:
            [text] = rendered([r])
        bad = [c for c in FORGING if c in text]
        assert not bad, f"{r.name}: control characters {bad!r} logged raw in {text!r}"


def assert_no_secret(records: Iterable[logging.LogRecord], secret: str = SECRET) -> None:
    for r, text in zip(records, rendered(records)):
        assert secret not in text, f"{r.name} logged the credential: {text!r}"
        assert secret not in repr(r.args), f"{r.name} has the credential in its args"


# -- the helpers ------------------------------------------------------------------------
def test_escape_keeps_one_printable_line():
    for c in FORGING:
        out = escape(f"a{c}b")
        assert c not in out and out.startswith("a\\") and out.endswith("b") and out.isprintable()
    assert escape("plain text: ünïcödé 😀") == "plain text: ünïcödé 😀"
    assert safe("x" * 5000) == "x" * MAX_LOGGED_CHARS + "...(+1500 chars)"  # scans 2,000 at most
    assert safe("y" * 600) == "y" * MAX_LOGGED_CHARS + "...(+100 chars)"
    assert safe(None) == "-" and safe(b"a\nb\xff") == "a\\nb\\xff"


def test_redact_target_and_text():
    assert redact_target(f"/chsk?token={SECRET}&client-id=c") == "/chsk?token=***&client-id=c"
    assert redact_target(f"ws://h:1/chsk?a=1&csrf-token={SECRET}") == "ws://h:1/chsk?a=1&csrf-token=***"
    assert redact_target(f"/chsk?%74oken={SECRET}") == "/chsk?%74oken=***"  # parse_qs decodes names
    assert redact_target(f"/chsk?TOKEN={SECRET}") == "/chsk?TOKEN=***"
    assert redact_target("/chsk?tokens=1&x=token") == "/chsk?tokens=1&x=token"
    for text in [f"invalid HTTP request line: GET /chsk?token={SECRET} HTTP/1.1 extra",
                 f"Bearer {SECRET}", f"authorization: bearer {SECRET}\x01x",
                 f"< Authorization: Basic {SECRET}", f"< Cookie: sid={SECRET}; b=c",
                 f"invalid HTTP header value: sid={SECRET}\x01",
                 f"invalid HTTP header line: X-Key {SECRET}",
                 f"KeyError: 'token={SECRET}'"]:
        assert SECRET not in redact_text(text), text
        assert SECRET not in safe(text), text
    assert redact_text("send ?csrf-token= with the client-id") == "send ?csrf-token= with the client-id"


def test_redacting_logger_redacts_args_and_exceptions(caplog):
    logger = RedactingLogger(logging.getLogger("sente_lite.test-redacting"))
    with caplog.at_level(logging.DEBUG, logger="sente_lite.test-redacting"):
        logger.debug("< GET %s HTTP/1.1", f"/chsk?token={SECRET}")
        logger.debug("< %s: %s", "Authorization", f"Bearer {SECRET}")
        try:
            try:
                raise ValueError(f"invalid HTTP request line: GET /?token={SECRET}\nfake")
            except ValueError as exc:
                raise RuntimeError("did not receive a valid HTTP request") from exc
        except RuntimeError:
            logger.debug("! no valid HTTP request", exc_info=True)  # a peer's bad request
            logger.error("opening handshake failed", exc_info=True)  # a bug: traceback kept
    records = [r for r in caplog.records if r.name == "sente_lite.test-redacting"]
    assert len(records) == 4 and all(r.exc_info is None for r in records)
    summary = records[2].getMessage()
    assert "RuntimeError: did not receive" in summary and "ValueError: invalid HTTP" in summary
    assert_no_secret(records)
    assert_one_clean_line_each(records[:3])
    lines = records[3].getMessage().split("\n")
    assert lines[0] == "opening handshake failed" and "Traceback (most recent call last):" in lines
    assert any(line.startswith("  File ") for line in lines)
    assert "fake" not in lines and lines[-1].startswith("RuntimeError: did not receive")
    assert exception_summary(None) == ""


# -- item 2: log forging, server side ------------------------------------------------------
def test_a_peer_cannot_forge_server_log_lines(make_face, raw_ws, caplog):
    caplog.set_level(logging.DEBUG)
    srv = make_face(authorize=lambda conn, action, channel: False)
    for c in FORGING:
        peer = raw_ws(srv.url + "?client-id=forger")
        # chsk/error with a forged line in its code and message (logged at INFO)
        peer.send_frame("chsk/error", {"code": f"x{c}{FAKE_LINE}", "message": f"m{c}{FAKE_LINE}"})
        # a refused subscribe logs the channel id the peer chose
        peer.send_frame("sente-lite/subscribe", {"channel-id": f"ch{c}{FAKE_LINE}"}, "cb1")
        peer.recv()  # the refusal: both frames were handled
        peer.ws.close(reason=f"bye{c}{FAKE_LINE}".encode("utf-8")[:120])
    # a 404 for a path with control characters, and an Origin refusal quoting the Origin
    with RawPeer(srv.host, srv.port) as raw:
        raw.send(upgrade_request(srv.host, srv.port, "/x\x1b[2J\x7f"))
        assert raw.read_http().status in (400, 404)
    with RawPeer(srv.host, srv.port) as raw:
        raw.send(upgrade_request(srv.host, srv.port, headers=[("Origin", "http://e\x85\x9b.example")]))
        assert raw.read_http().status == 403
    wait_until(lambda: srv.stats().get("errors_from_clients", 0) == len(FORGING),
               what="every chsk/error handled")
    wait_until(lambda: srv.stats().get("connections_closed", 0) == len(FORGING),
               what="every connection closed")
    records = list(caplog.records)
    assert any("error from" in r.getMessage() for r in records)
    assert any("refused-subscribe" in r.getMessage() for r in records)
    assert_one_clean_line_each(records)
    # the forged text is still there, escaped, for whoever reads the log
    assert any("x\\n" + FAKE_LINE in r.getMessage() for r in records)


def test_client_logs_of_server_sent_text_stay_one_line(make_face, make_client, caplog):
    caplog.set_level(logging.DEBUG)
    srv = make_face(authorize=lambda conn, action, channel: action != "subscribe")
    c = make_client(srv.url)
    [conn] = srv.connections()
    subscribed = 0
    for ch in FORGING:
        # a standalone chsk/error, and a refusal whose message quotes the channel id
        srv.send(conn["conn-id"], "chsk/error", {"code": f"c{ch}{FAKE_LINE}", "message": f"m{ch}"})
        if channel_id_problem(f"ch{ch}x") is None:  # C0/C1 controls are no channel ids
            c.subscribe(f"ch{ch}x", timeout=None)
            subscribed += 1
        # a handshake and a channel message the client cannot read
        srv.send(conn["conn-id"], "chsk/handshake", f"h{ch}{FAKE_LINE}")
        srv.send(conn["conn-id"], "sente-lite/channel-msg", {"x": f"m{ch}{FAKE_LINE}"})
    wait_until(lambda: c.stats().get("errors_from_server", 0) == len(FORGING)
               and c.stats().get("bad_frames_from_server", 0) == 2 * len(FORGING),
               what="the client read every frame")
    assert subscribed >= 3  # U+2028, U+2029 and U+202E are allowed in channel ids
    wait_until(lambda: sum(r.name == "sente_lite.client" and "refused" in r.getMessage()
                           for r in caplog.records) >= subscribed,
               what="every refused subscribe logged")
    assert_one_clean_line_each(caplog.records)


# -- item 3: credentials never logged ----------------------------------------------------------
def test_client_sends_its_token_as_a_bearer_header_and_no_log_holds_it(make_face, make_client,
                                                                     caplog):
    caplog.set_level(logging.DEBUG)  # every logger, websockets' included
    seen: List[HandshakeRequest] = []
    tokens = iter([SECRET, SECRET])

    def authenticate(req: HandshakeRequest) -> Optional[str]:
        seen.append(req)
        return "alice" if req.token == SECRET else None

    srv = make_face(authenticate=authenticate)
    c = make_client(srv.url, token=lambda: next(tokens))  # a callable still works
    assert c.uid == "alice"
    req = seen[-1]
    assert req.header("authorization") == f"Bearer {SECRET}" and "token" not in req.query
    # a browser still sends ?token=: accepted, and its request line is logged redacted
    with RawPeer(srv.host, srv.port) as peer:
        assert peer.upgrade(f"/chsk?token={SECRET}").status == 101
    # a wrong token: 401 (refusal logged), and the client's own logs
    bad = make_client(srv.url, connect=False, token=SECRET + "-old", auto_reconnect=False)
    wait_until(lambda: bad.status == "closed", what="the refused client stopped")
    c.close()
    assert any(r.levelno == logging.DEBUG for r in caplog.records)  # debug logging was on
    if make_face.kind == "threaded":  # its request line is logged, redacted (on the ASGI
        # face the request line is the ASGI server's to log: App logs none)
        assert any("token=***" in r.getMessage() for r in caplog.records)
    assert_no_secret(caplog.records)


MALFORMED = [
    # (name, raw request)
    ("trailing word after HTTP/1.1", f"GET /chsk?token={SECRET} HTTP/1.1 extra\r\n"),
    ("request line without a version", f"GET /chsk?token={SECRET}\r\n"),
    ("control character in Authorization", "GET /chsk HTTP/1.1\r\n"
     f"Authorization: Bearer {SECRET}\x01\r\n"),
    ("control character in Cookie", "GET /chsk HTTP/1.1\r\n" f"Cookie: sid={SECRET}\x01\r\n"),
    ("percent-encoded parameter name", f"GET /chsk?%74oken={SECRET} HTTP/1.1 x\r\n"),
    ("csrf-token in a bad request line", f"GET /chsk?csrf-token={SECRET} HTTP/1.0x\r\n"),
    ("header line without a colon", "GET /chsk HTTP/1.1\r\n" f"Authorization Bearer {SECRET}\r\n"),
]


@pytest.mark.parametrize("name,head", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_upgrades_never_log_the_credential(make_server, caplog, name, head):
    caplog.set_level(logging.DEBUG)
    srv = make_server()
    rest = upgrade_request(srv.host, srv.port).split(b"\r\n", 1)[1]  # the standard headers
    with RawPeer(srv.host, srv.port) as peer:
        peer.send(head.encode("latin-1") + rest)
        assert peer.read_http(WAIT_S).status != 101
    wait_until(lambda: sum(srv.stats()["handshakes_refused"].values()) >= 1,
               what="the refusal counted")
    srv.stop()  # every connection's handler ended: everything it logs is logged
    assert any(r.name.startswith("sente_lite") and "refused-upgrade" in r.getMessage()
               for r in caplog.records)
    assert_no_secret(caplog.records)
    assert_one_clean_line_each(caplog.records)


def test_connect_failures_log_the_url_redacted(make_client, caplog):
    caplog.set_level(logging.DEBUG)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = make_client(f"ws://127.0.0.1:{port}/chsk?token={SECRET}", connect=False,
                    auto_reconnect=False)
    wait_until(lambda: c.status == "closed", what="client gave up")
    assert any("connect to" in r.getMessage() for r in caplog.records)
    assert_no_secret(caplog.records)


def test_report_fields_are_redacted_and_escaped(caplog):
    from sente_lite.core import security

    logger = logging.getLogger("sente_lite.test-report")
    with caplog.at_level(logging.INFO, logger="sente_lite.test-report"):
        security.report(logger, "refused-upgrade", "bad-request", remote="1.2.3.4:5",
                        message=f"invalid HTTP request line: GET /?token={SECRET} HTTP/1.1 x\nfake")
    [r] = [r for r in caplog.records if r.name == "sente_lite.test-report"]
    assert_no_secret([r])
    assert_one_clean_line_each([r])
    assert json.loads(r.getMessage().split("message=", 1)[1]).endswith("x\\nfake")

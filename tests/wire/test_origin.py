"""``allowed_origins`` and the library's own clients: the Python client sends no Origin
unless asked, and the server's own origin stays allowed beside the listed ones.

The rules (sente_lite/origins.py): an origin is ``scheme://host[:port]``, compared in
lower case with a default port equal to no port; a trailing dot, userinfo, a path or
``null`` never make it the server's own.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import pytest

from sente_lite import Client, ConnectRefused, Server
from sente_lite.wire.origins import normalize_origins, origin_problem, parse_origin
from sente_lite.testing.abuse import RawPeer, upgrade_request
from support import WAIT_S

APP = "https://app.example"


def status_with(srv: Server, origin: Optional[str], host: Optional[str] = None) -> Optional[int]:
    """The status of an upgrade with this Origin (none when None) and Host (the server's)."""
    headers: List[Tuple[str, str]] = [] if origin is None else [("Origin", origin)]
    omit: Sequence[str] = ()
    if host is not None:
        headers.append(("Host", host))
        omit = ("Host",)
    with RawPeer(srv.host, srv.port) as peer:
        peer.send(upgrade_request(srv.host, srv.port, "/chsk", headers, omit=omit))
        return peer.read_http().status


def recorder() -> Tuple[List[Optional[str]], Callable[..., str]]:
    """An authenticate hook recording each upgrade's Origin header (None: absent)."""
    seen: List[Optional[str]] = []
    return seen, lambda req: seen.append(req.origin) or req.client_id


def test_python_client_connects_to_a_server_listing_other_origins(make_face, make_client):
    seen, hook = recorder()
    srv = make_face(allowed_origins=[APP], authenticate=hook)
    c = make_client(srv.url)
    assert c.request("chsk/ws-ping", None, timeout=WAIT_S) is None
    assert seen == [None]  # no Origin at all: websocket-client's default one is suppressed
    assert srv.stats()["handshakes_refused"].get("origin", 0) == 0
    other = make_face(allowed_origins=["https://a.example", "http://b.example:8080"])
    make_client(other.url, auto_reconnect=False)


def test_python_client_sends_the_origin_it_is_given(make_server, make_client):
    seen, hook = recorder()
    srv = make_server(allowed_origins=[APP], authenticate=hook)
    make_client(srv.url, origin=APP)
    assert seen == [APP]
    refused = Client(srv.url, origin="https://evil.example", auto_reconnect=False)
    try:
        with pytest.raises(ConnectRefused) as info:
            refused.wait_connected(WAIT_S)
        assert info.value.status == 403 and "allowed_origins" in str(info.value)
    finally:
        refused.close()
    for bad, kind in ((b"https://x", TypeError), (7, TypeError), ("", ValueError),
                      ("https://x\r\nX-Evil: 1", ValueError), ("  ", ValueError)):
        with pytest.raises(kind, match="origin"):
            Client(srv.url, origin=bad, start=False)  # type: ignore[arg-type]


def test_own_origin_stays_allowed_beside_the_list_and_other_origins_are_refused(make_face):
    srv = make_face(allowed_origins=[APP, "http://localhost:3000"])
    own = f"http://127.0.0.1:{srv.port}"
    for origin in (own, own.upper().replace("HTTP://", "http://"), own.upper(), own + "/", APP,
                   "HTTPS://APP.EXAMPLE", "https://app.example:443", None):
        assert status_with(srv, origin) == 101, origin
    refused = [
        "https://evil.example", "http://app.example",          # not listed; scheme mismatch
        "https://app.example:8443", "http://localhost:3001",   # port mismatch
        f"http://127.0.0.1:{srv.port + 1}", "http://127.0.0.1",  # own host, other port
        f"http://localhost:{srv.port}",                         # own port, other host
        f"ftp://127.0.0.1:{srv.port}", f"ws://127.0.0.1:{srv.port}",  # not a page's scheme
        "null", "", "garbage", f"http://127.0.0.1.:{srv.port}",  # trailing dot: another host
        f"http://user@127.0.0.1:{srv.port}", f"http://127.0.0.1:{srv.port}@evil.example",
        f"http://evil.example#@127.0.0.1:{srv.port}", f"http://127.0.0.1:{srv.port}/path",
        f"http://127.0.0.1:{srv.port}.evil.example", "https://app.example.evil",
    ]
    for origin in refused:
        assert status_with(srv, origin) == 403, origin
    assert srv.stats()["handshakes_refused"]["origin"] == len(refused)


def test_own_origin_follows_the_host_header_with_or_without_port(make_face):
    srv = make_face(allowed_origins=[APP], allowed_hosts=["site.example", "site.example."])
    cases: List[Tuple[str, str, int]] = [
        ("site.example", "https://site.example", 101),         # no port: the scheme's default
        ("site.example", "http://site.example", 101),
        ("SITE.example", "https://site.EXAMPLE", 101),
        ("site.example:443", "https://site.example", 101),
        ("site.example:443", "http://site.example", 403),     # http is port 80
        ("site.example:80", "http://site.example:80", 101),
        ("site.example:8443", "https://site.example:8443", 101),
        ("site.example:8443", "https://site.example", 403),
        ("site.example", "https://site.example:8443", 403),
        ("site.example.", "https://site.example", 403),        # trailing dot: another host
        ("site.example", "https://site.example.", 403),
        ("site.example.", "https://site.example.", 101),
    ]
    for host, origin, status in cases:
        assert status_with(srv, origin, host) == status, (host, origin)


def test_default_policy_is_same_host_and_ipv6_and_bad_values_are_handled():
    # no list: the Host's host on any port, http or https only
    assert origin_problem("https://h:9", "h:1", None) is None
    assert origin_problem("http://[::1]:5", "[::1]:8", None) is None
    for origin in ("ftp://h:1", "http://u@h:1", "null", "http://h.:1", "http://x:1"):
        assert origin_problem(origin, "h:1", None) is not None, origin
    assert origin_problem("http://h", None, None) is not None  # no Host: nothing to be the same as
    listed = normalize_origins([APP])
    assert origin_problem("http://[::1]:8", "[::1]:8", listed) is None
    assert origin_problem("http://[0:0::1]:8", "[::1]:8", listed) is None
    assert origin_problem("http://[::1]:9", "[::1]:8", listed) is not None
    assert origin_problem("http://h:1", "h:1, h:1", listed) is not None  # not one Host
    assert parse_origin("HTTPS://A.example:443/") == ("https", "a.example", None)
    assert parse_origin("http://a.example:65536") is None


@pytest.mark.parametrize("entry", ["app.example", "null", "https://app.example/path",
                                   "https://user@app.example", "https://", "https://a b"])
def test_allowed_origins_entries_must_be_origins(entry: str) -> None:
    with pytest.raises(ValueError, match="allowed_origins entry"):
        Server(allowed_origins=[entry])


def test_listed_origins_are_normalized_like_requests() -> None:
    assert normalize_origins(["HTTPS://App.Example:443/", "http://x.example:80", "*"]) == frozenset(
        {"https://app.example", "http://x.example", "*"})
    with pytest.raises(TypeError):
        normalize_origins(APP)  # type: ignore[arg-type]


def test_csrf_token_endpoint_answers_the_servers_own_pages(make_face):
    srv = make_face(csrf=True, allowed_origins=[APP])
    own = f"http://127.0.0.1:{srv.port}"
    for origin, status in ((own, 200), (APP, 200), ("https://evil.example", 403)):
        with RawPeer(srv.host, srv.port) as peer:
            peer.send((f"GET /csrf-token?client-id=a HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n"
                       f"Origin: {origin}\r\n\r\n").encode("ascii"))
            assert peer.read_http().status == status, origin

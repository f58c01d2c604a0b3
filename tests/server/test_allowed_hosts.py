"""DNS rebinding: a server bound to a loopback address answers only loopback Host names.

Under DNS rebinding the attacker's page controls both ``Host`` and ``Origin``
(``rebind.evil.example:PORT``), so the same-host Origin check alone lets it in;
the Host check (``allowed_hosts``) refuses it before anything is served, on
upgrades and on plain GETs alike.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence, Tuple

import pytest

from sente_lite import Server
from sente_lite.core.security import host_problem, is_loopback_host, normalize_hosts, parse_host
from sente_lite.testing.abuse import RawPeer, upgrade_request
from support import wait_until


def refused(srv: Server, reason: str = "host") -> int:
    return srv.stats()["handshakes_refused"].get(reason, 0)


def request(srv: Server, host: Optional[str], path: str = "/chsk", upgrade: bool = True,
            extra: Sequence[Tuple[str, str]] = (), hosts: Sequence[str] = ()) -> Any:
    """Send one request with ``Host: host`` (None: no Host header; ``hosts``: several)."""
    headers = [("Host", h) for h in ([host] if host is not None else [])] + [("Host", h) for h in hosts]
    headers += list(extra)
    if upgrade:
        raw = upgrade_request(srv.host, srv.port, path, headers, omit=("Host",))
    else:
        lines = [f"GET {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers]
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    with RawPeer(srv.host, srv.port) as peer:
        peer.send(raw)
        return peer.read_http()


def test_rebinding_host_and_origin_are_refused_403_naming_the_setting(make_face, caplog):
    srv = make_face()  # bound to 127.0.0.1
    evil = f"rebind.evil.example:{srv.port}"
    with caplog.at_level(logging.INFO, logger="sente_lite"):
        answer = request(srv, evil, extra=[("Origin", f"http://{evil}")])
    assert answer.status == 403
    assert b"allowed_hosts" in answer.body and b"rebind.evil.example" in answer.body
    # plain GETs too: a rebound page must not read /health or a CSRF token
    assert request(srv, evil, "/health", upgrade=False).status == 403
    assert request(srv, evil, "/csrf-token?client-id=x", upgrade=False).status == 403
    assert request(srv, evil, "/metrics", upgrade=False).status == 403
    wait_until(lambda: refused(srv) == 4, what="4 host refusals counted")
    lines = [r.getMessage() for r in caplog.records if getattr(r, "sente_lite", {}).get("reason") == "host"]
    assert lines and lines[0].startswith("refused-upgrade reason=host ") and "status=403" in lines[0]


@pytest.mark.parametrize("name", ["localhost", "LOCALHOST", "127.0.0.1", "127.1.2.3", "[::1]",
                                  "localhost."])
def test_loopback_host_names_are_accepted_with_or_without_port(make_face, name):
    srv = make_face()
    assert request(srv, f"{name}:{srv.port}").status == 101
    assert request(srv, name).status == 101
    assert request(srv, f"{name}:{srv.port}", "/health", upgrade=False).status == 200
    assert refused(srv) == 0


def test_bad_host_headers_are_400(make_face):
    make_face.skip_on("asgi", "a missing or malformed Host header is refused by the ASGI server "
                      "(uvicorn's h11) before the App sees the request")
    srv = make_face()
    for host in ["", "   ", "evil example", "a/b", "[::1", "[nonsense]:80", "localhost:80:80",
                 "localhost:abc", "localhost:1234567", "user@localhost"]:
        assert request(srv, host).status == 400, host
    assert request(srv, None).status == 400  # no Host at all
    assert request(srv, None, hosts=["localhost", "rebind.evil.example"]).status == 400  # two
    wait_until(lambda: refused(srv) == 12, what="12 host refusals counted")


def test_explicit_allowed_hosts_list_and_star(make_face):
    make_face.skip_on("asgi", "a missing or malformed Host header is refused by the ASGI server "
                      "(uvicorn's h11) before the App sees the request")
    srv = make_face(allowed_hosts=["App.Example.com", "localhost:9999"])
    assert request(srv, "app.example.COM").status == 101
    assert request(srv, f"app.example.com:{srv.port}").status == 101
    assert request(srv, "localhost:1").status == 101  # the port of an entry is ignored
    assert request(srv, "127.0.0.1").status == 403  # an explicit list is exactly that list
    assert request(srv, "rebind.evil.example").status == 403
    wait_until(lambda: refused(srv) == 2, what="2 host refusals counted")
    anything = make_face(allowed_hosts=["*"])
    assert request(anything, "rebind.evil.example").status == 101
    assert request(anything, None).status == 101
    with pytest.raises(TypeError):
        Server(allowed_hosts="localhost")  # a string, not a list
    with pytest.raises(ValueError):
        Server(allowed_hosts=["http://app.example.com/"])  # a URL, not a host name


def test_a_server_bound_to_all_interfaces_accepts_any_host_by_default(make_server):
    srv = make_server(host="0.0.0.0")  # where an ASGI server listens is its own setting
    with RawPeer("127.0.0.1", srv.port) as peer:
        peer.send(upgrade_request("rebind.evil.example", srv.port))
        assert peer.read_http().status == 101
    assert refused(srv) == 0


def test_the_python_client_passes_the_default_check(make_face, make_client):
    srv = make_face()
    make_client(srv.url)  # Host: 127.0.0.1:PORT
    make_client(f"ws://localhost:{srv.port}/chsk")
    assert refused(srv) == 0


def test_host_policy_is_pure():
    assert parse_host("Example.COM:80") == "example.com"
    assert parse_host("[::1]:8080") == "::1" and parse_host("[0:0::1]") == "::1"
    assert parse_host("localhost.") == "localhost"
    assert parse_host("") is None and parse_host("a b") is None and parse_host("[::1]x") is None
    assert is_loopback_host("127.0.0.1") and is_loopback_host("127.255.0.1")
    assert is_loopback_host("::1") and is_loopback_host("[::1]") and is_loopback_host("LocalHost")
    assert not is_loopback_host("0.0.0.0") and not is_loopback_host("") \
        and not is_loopback_host("localhost.evil.example") and not is_loopback_host("10.0.0.1")
    assert host_problem(["evil.example"], None, loopback_bind=False) is None
    assert host_problem(["evil.example"], None, loopback_bind=True)[0] == 403
    assert host_problem(["localhost:1"], None, loopback_bind=True) is None
    assert host_problem([], None, loopback_bind=True)[0] == 400
    allowed = normalize_hosts(["a.example:1", "[::1]"])
    assert allowed == frozenset({"a.example", "::1"})
    assert host_problem(["A.example"], allowed, loopback_bind=False) is None
    assert host_problem(["b.example"], allowed, loopback_bind=True)[0] == 403
    assert host_problem([], normalize_hosts(["*"]), loopback_bind=True) is None

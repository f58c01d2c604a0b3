"""Serving of the browser client and the demo page (sente_lite/static.py), and its packaging."""

from __future__ import annotations

import configparser
import fnmatch
import http.client
from pathlib import Path

import pytest

from sente_lite.server import static
from support import REPO



def test_script_is_served_with_etag_and_revalidation() -> None:
    status, headers, body = static.static_response("/sente_lite.js", False, None)
    h = dict(headers)
    assert status == 200 and body.startswith(b"/*") and h["Content-Type"].startswith("text/javascript")
    assert h["Cache-Control"] == "no-cache" and h["Access-Control-Allow-Origin"] == "*"
    again = static.static_response("/sente_lite.js", False, f'W/{h["ETag"]}, "other"')
    assert again is not None and again[0] == 304 and again[2] == b""
    assert static.static_response("/sente_lite.js", False, '"stale"')[0] == 200


def test_versioned_url_is_immutable_and_an_old_version_is_not() -> None:
    url = static.script_url(module=True)
    assert url.startswith("/sente_lite.mjs?v=")
    assert "immutable" in dict(static.static_response(url, False, None)[1])["Cache-Control"]
    assert dict(static.static_response("/sente_lite.mjs?v=0000", False, None)[1])["Cache-Control"] == "no-cache"


def test_module_variant_replaces_only_the_export_line() -> None:
    script = static.static_response("/sente_lite.js", False, None)[2].decode()
    module = static.static_response("/sente_lite.mjs", False, None)[2].decode()
    assert "module.exports" in script and "export const" not in script
    assert "module.exports" not in module
    for name in static.MODULE_EXPORTS:
        assert f"export const {name} = SenteLite.{name};" in module
        assert f"    {name}: {name}," in script or f"    {name}: {name}\n" in script, name
    with pytest.raises(ValueError, match="sente-lite:export"):
        static.module_source("var SenteLite = {};\n")


def test_demo_page_only_when_asked_and_other_paths_are_not_static() -> None:
    assert static.static_response("/", False, None) is None
    status, headers, body = static.static_response("/", True, None)
    assert status == 200 and dict(headers)["Content-Type"].startswith("text/html")
    assert static.script_url(module=True).encode() in body
    assert "Access-Control-Allow-Origin" not in dict(headers)
    assert static.static_response("/health", True, None) is None
    assert static.static_response("/sente_lite.d.ts", False, None)[0] == 200


def test_every_static_file_is_package_data() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    patterns = [p.strip() for p in cfg["options.package_data"]["sente_lite"].split(",")]
    for f in (REPO / "sente_lite" / "static").iterdir():
        rel = f"static/{f.name}"
        assert any(fnmatch.fnmatch(rel, p) for p in patterns), f"{rel} would be missing from a wheel"


def test_server_serves_them_and_answers_probes(make_face) -> None:
    srv = make_face(demo=True, allowed_origins=["http://app.example"])
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.request("GET", static.script_url())
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200 and body == static.static_response("/sente_lite.js", True, None)[2]
        assert resp.getheader("Content-Length") == str(len(body))
    finally:
        conn.close()
    for headers, status in (({"Origin": "http://evil.example"}, 403), ({"Origin": "http://app.example"}, 200)):
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        try:
            conn.request("GET", "/chsk?client-id=probe-1", headers=headers)
            resp = conn.getresponse()
            resp.read()
            assert resp.status == status
            assert resp.getheader("Access-Control-Allow-Origin") == "*"
            assert resp.getheader("Cache-Control") == "no-store"
        finally:
            conn.close()
    assert srv.stats()["handshakes_refused"] == {"origin": 1}

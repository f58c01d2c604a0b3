"""Files the server serves over plain HTTP ``GET``: the browser client and the demo page.

Pure: :func:`static_response` maps a request target to ``(status, headers, body)``
(or None when the path is not one of these files); the server's I/O layer only
writes the answer. The files live in ``sente_lite/static/`` (package data).

* ``/sente_lite.js``: the browser client as a classic script (``<script src>``
  defines ``window.SenteLite``; under Node, ``require()`` returns the same object).
* ``/sente_lite.mjs``: the same source as an ES module (``import {Client} from``).
  The source's last line (marked ``sente-lite:export``) is its CommonJS export; the
  module variant replaces exactly that line with ``export`` statements.
* ``/sente_lite.d.ts``: TypeScript declarations for editors.
* ``/`` (only with ``Server(demo=True)``): the live demo page.

Caching: every answer carries a strong ``ETag`` (a hash of the body) and an
``If-None-Match`` that names it gets ``304``. A URL with ``?v=<VERSION_TAG>``
(what :func:`script_url` returns) is immutable and cached for a year; without it,
browsers revalidate each time (``no-cache``). The script files are public, so
they carry ``Access-Control-Allow-Origin: *`` (an ES module from another origin
needs it); the demo page does not.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import resources
from typing import Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

#: Names the ES module variant exports (each a property of the script's ``SenteLite``).
MODULE_EXPORTS = ("Client", "SenteLiteError", "RemoteError", "RequestTimeout", "Disconnected",
                  "ClientClosed", "ConnectRefused", "SendQueueFull", "fetchCsrfToken",
                  "backoffDelay", "VERSION")
#: Marker of the source line the ES module variant replaces.
EXPORT_MARKER = "// sente-lite:export"
#: Seconds a versioned URL (``?v=``) may be cached.
IMMUTABLE_MAX_AGE_S = 365 * 24 * 3600
#: Placeholder in demo.html replaced by the versioned URL of the ES module.
_DEMO_SCRIPT_PLACEHOLDER = "{{SENTE_LITE_MJS}}"

JS_TYPE = "text/javascript; charset=utf-8"
Answer = Tuple[int, List[Tuple[str, str]], bytes]


class _File:
    __slots__ = ("body", "content_type", "etag", "public")

    def __init__(self, body: bytes, content_type: str, public: bool) -> None:
        self.body = body
        self.content_type = content_type
        self.etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        self.public = public


def _read(name: str) -> bytes:
    return resources.files("sente_lite").joinpath("static", name).read_bytes()


def module_source(script: str) -> str:
    """The ES module variant of the classic script ``script`` (its export line replaced)."""
    lines = script.split("\n")
    marked = [i for i, line in enumerate(lines) if line.rstrip().endswith(EXPORT_MARKER)]
    if len(marked) != 1:
        raise ValueError(f"sente_lite.js must have exactly one line ending with {EXPORT_MARKER!r}")
    exports = [f"export const {name} = SenteLite.{name};" for name in MODULE_EXPORTS]
    lines[marked[0]:marked[0] + 1] = exports + ["export default SenteLite;"]
    return "\n".join(lines)


@functools.lru_cache(maxsize=1)
def _files() -> Dict[str, _File]:
    script = _read("sente_lite.js")
    files = {
        "/sente_lite.js": _File(script, JS_TYPE, True),
        "/sente_lite.mjs": _File(module_source(script.decode("utf-8")).encode("utf-8"), JS_TYPE, True),
        "/sente_lite.d.ts": _File(_read("sente_lite.d.ts"), "application/typescript; charset=utf-8", True),
    }
    demo = _read("demo.html").decode("utf-8").replace(_DEMO_SCRIPT_PLACEHOLDER,
                                                      script_url(module=True, _script=script))
    files["/"] = _File(demo.encode("utf-8"), "text/html; charset=utf-8", False)
    return files


def version_tag(_script: Optional[bytes] = None) -> str:
    """A short hash of the browser client's source: the ``?v=`` of cacheable URLs."""
    script = _script if _script is not None else _files()["/sente_lite.js"].body
    return hashlib.sha256(script).hexdigest()[:12]


def script_url(module: bool = False, _script: Optional[bytes] = None) -> str:
    """The versioned path of the client: ``/sente_lite.js?v=...`` (``.mjs`` when ``module``)."""
    return f"/sente_lite.{'mjs' if module else 'js'}?v={version_tag(_script)}"


def _etag_matches(if_none_match: Optional[str], etag: str) -> bool:
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == etag:
            return True
    return False


def static_response(target: str, demo: bool, if_none_match: Optional[str]) -> Optional[Answer]:
    """The answer to ``GET target`` (path and query) when it names a static file, else None.

    ``demo``: whether ``/`` serves the demo page. ``if_none_match``: the request's
    ``If-None-Match`` header. Returns ``(status, headers, body)``; the caller adds
    ``Content-Length`` and the connection headers.
    """
    parts = urlsplit(target)
    if parts.path == "/" and not demo:
        return None
    try:
        files = _files()
    except (OSError, ValueError) as exc:
        if parts.path not in ("/", "/sente_lite.js", "/sente_lite.mjs", "/sente_lite.d.ts"):
            return None
        message = f"the browser client files are missing or damaged in this install ({exc}): reinstall sente-lite\n"
        return 500, [("Content-Type", "text/plain; charset=utf-8")], message.encode("utf-8")
    found = files.get(parts.path)
    if found is None:
        return None
    versioned = (parse_qs(parts.query).get("v") or [""])[0] == version_tag()
    headers = [("ETag", found.etag),
               ("Cache-Control", f"public, max-age={IMMUTABLE_MAX_AGE_S}, immutable" if versioned
                else "no-cache"),
               ("X-Content-Type-Options", "nosniff")]
    if found.public:
        headers.append(("Access-Control-Allow-Origin", "*"))
    if _etag_matches(if_none_match, found.etag):
        return 304, headers, b""
    return 200, [("Content-Type", found.content_type)] + headers, found.body


__all__ = ["static_response", "script_url", "version_tag", "module_source", "MODULE_EXPORTS"]

"""Log-safe text: escaping and credential redaction for anything a peer sends. No I/O.

Every value that comes from the other side of a connection (error codes and
messages, event and channel ids, client-ids, close reasons, request lines,
headers, parse errors quoting them) goes through :func:`safe` before it reaches
a log record, so it can neither start a new log line nor carry control
characters (``\\n``, ``\\r``, ESC, NUL, U+0085, U+2028, U+2029 ... are written
as escapes), and no credential is logged:

* :func:`redact_target` - a request target (path and query) or URL with the
  values of ``token`` and ``csrf-token`` replaced by ``***``;
* :func:`redact_text` - the same for free-form text (an exception message that
  quotes a request line or a header), plus ``Bearer <credential>``, the values
  of ``Authorization`` and ``Cookie`` header lines, and the quoted value of an
  unparsable header (its name is unknown, so it may be a credential), and anything
  shaped as a JWT (``eyJ...``: a token offered in ``Sec-WebSocket-Protocol``);
* :func:`safe` - :func:`redact_text`, then escaping, then at most
  ``MAX_LOGGED_CHARS`` characters;
* :class:`RedactingLogger` - a logger for a dependency (websockets' protocol
  logs every request line and header at DEBUG) that applies :func:`safe` to
  each formatted message and turns ``exc_info`` into a one-line summary.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from typing import Any, Optional
from urllib.parse import unquote_plus

#: Longest peer-controlled value logged; the rest is replaced by ``...(+N chars)``.
MAX_LOGGED_CHARS = 500
#: Query parameters whose values are credentials (compared after percent-decoding, any case).
SECRET_PARAMS = frozenset({"token", "csrf-token"})
#: Header names whose values are credentials.
SECRET_HEADERS = ("authorization", "proxy-authorization", "cookie", "set-cookie")
#: What a redacted value is replaced with.
REDACTED = "***"

# name=value in a query string or free text; the name may be percent-encoded (?%74oken=).
_PARAM_RE = re.compile(r"(?P<lead>^|[?&;\s'\"(<\[,])(?P<name>[A-Za-z0-9%_.+\-]{1,64})="
                       r"(?P<value>[^&\s'\"#;<>)\]]+)")
# "Bearer <anything up to a line end or a quote>": a credential with a stray control
# character or space in it is still redacted whole.
_BEARER_RE = re.compile(r"(?i)\b(bearer)(\s+|%20|\+)[^\r\n'\"]+")
_HEADER_RE = re.compile(r"(?im)\b(" + "|".join(SECRET_HEADERS) + r")(\s*[:=]\s*)[^\r\n'\"]+")
# A JWT anywhere (a token offered as the subprotocol ``bearer.<token>``, one quoted in an
# error): three base64url segments, the first two JSON objects (``eyJ`` is ``{"``).
_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")
# websockets' parse errors quote a header line or value without saying whose it is.
_UNKNOWN_HEADER_RE = re.compile(r"(?i)(invalid HTTP header (?:line|value|name): ?)(.+)")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _redact_param(match: "re.Match[str]") -> str:
    name = match.group("name")
    if unquote_plus(name).strip().lower() not in SECRET_PARAMS:
        return match.group(0)
    return f"{match.group('lead')}{name}={REDACTED}"


def redact_target(target: str) -> str:
    """``target`` (a request target such as ``/chsk?token=abc`` or a URL) with the values
    of its ``token`` and ``csrf-token`` query parameters replaced by ``***``."""
    if "=" not in target:
        return target
    return _PARAM_RE.sub(_redact_param, target)


def redact_text(text: str) -> str:
    """Free-form ``text`` with every credential it may quote replaced by ``***``:
    ``token=``/``csrf-token=`` values, ``Bearer <credential>``, ``Authorization`` and
    ``Cookie`` header values, the quoted value of an unparsable header line, and every
    JWT-shaped string (``eyJ<...>.eyJ<...>.<...>``)."""
    if "=" in text:
        text = _PARAM_RE.sub(_redact_param, text)
    lower = text.lower()
    if "bearer" in lower:
        text = _BEARER_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    if "auth" in lower or "cookie" in lower:
        text = _HEADER_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    if "eyJ" in text:
        text = _JWT_RE.sub(REDACTED, text)
    if "invalid http header" in lower:
        text = _UNKNOWN_HEADER_RE.sub(
            lambda m: f"{m.group(1)}[{len(m.group(2))} chars not logged]", text)
    return text


def _escape_char(c: str) -> str:
    esc = _ESCAPES.get(c)
    if esc is not None:
        return esc
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escape(text: str) -> str:
    """``text`` on one line of printable characters: control characters (C0, DEL, C1),
    line and paragraph separators (U+2028, U+2029) and every other character Python
    does not call printable (format characters such as U+202E, spaces other than
    ``" "``) written as escapes (``\\n``, ``\\x1b``, ``\\x85``, ``\\u2028``).
    Backslashes are kept as they are."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else _escape_char(c) for c in text)


def safe(value: Any, limit: int = MAX_LOGGED_CHARS) -> str:
    """``str(value)`` made safe to log: credentials redacted, escaped to one line, at most
    ``limit`` characters (bytes are decoded as UTF-8 with backslash escapes)."""
    if value is None:
        return "-"
    if isinstance(value, (bytes, bytearray, memoryview)):
        text = bytes(value).decode("utf-8", "backslashreplace")
    else:
        text = value if isinstance(value, str) else str(value)
    if len(text) > 4 * limit:  # never scan a megabyte to log 500 characters of it
        text = text[:4 * limit]
        cut = len(text)
    else:
        cut = 0
    # Redacted before escaping (a raw line end or space still ends a value) and after (a
    # value with a control character in it is then one run of printable text).
    text = redact_text(escape(redact_text(text)))
    if len(text) > limit:
        extra = len(text) - limit
        text = f"{text[:limit]}...(+{extra} chars)"
    elif cut:
        text = f"{text}...(cut)"
    return text


def exception_summary(exc: Optional[BaseException]) -> str:
    """One safe line naming ``exc`` and its causes: ``Type: message <- Cause: message``."""
    parts = []
    seen = set()
    while exc is not None and id(exc) not in seen and len(parts) < 5:
        seen.add(id(exc))
        parts.append(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        exc = exc.__cause__ or exc.__context__
    return safe(" <- ".join(parts), 2 * MAX_LOGGED_CHARS)


def safe_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` and its causes, as ``traceback`` prints it, except that
    each exception's own line (``Type: message``, which may quote what a peer sent) is
    :func:`safe`: the stack lines come from the code, the message lines cannot add lines."""
    chain: list = []
    seen = set()
    e: Optional[BaseException] = exc
    while e is not None and id(e) not in seen and len(chain) < 5:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    out = []
    for i, e in enumerate(reversed(chain)):
        if i:
            out.append("The above exception led to the following exception:")
        out.append("Traceback (most recent call last):")
        out.extend(line.rstrip("\n") for line in traceback.format_tb(e.__traceback__))
        out.append(safe(f"{type(e).__qualname__}: {e}" if str(e) else type(e).__qualname__,
                        2 * MAX_LOGGED_CHARS))
    return "\n".join(out)


class RedactingLogger(logging.LoggerAdapter):
    """A logger whose every record is one safe line (see :func:`safe`).

    For a library that logs what peers send (websockets' protocol logs request
    lines and headers at DEBUG, and parse errors quoting them with
    ``exc_info``): pass ``RedactingLogger(logging.getLogger("websockets.server"))``
    as its ``logger``. Records keep the wrapped logger's name. Below ERROR,
    ``exc_info`` becomes a one-line summary of the exception chain (those are
    websockets' parse errors of a peer's request); at ERROR and above (a bug
    worth its traceback) the message is followed by :func:`safe_traceback`.
    """

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger, {})

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        try:
            text = str(msg) % args if args else str(msg)
        except (TypeError, ValueError):
            text = " ".join(str(x) for x in (msg, *args))
        exc_info = kwargs.pop("exc_info", None)
        if exc_info:
            if exc_info is True:
                exc_info = sys.exc_info()
            exc = exc_info[1] if isinstance(exc_info, tuple) else exc_info
            if isinstance(exc, BaseException):
                if level >= logging.ERROR:
                    self.logger.log(level, "%s\n%s", safe(text, 4 * MAX_LOGGED_CHARS),
                                    safe_traceback(exc), **kwargs)
                    return
                text = f"{text}: {exception_summary(exc)}"
        kwargs.pop("stack_info", None)
        self.logger.log(level, "%s", safe(text, 4 * MAX_LOGGED_CHARS), **kwargs)

    def process(self, msg: Any, kwargs: Any) -> Any:
        return msg, kwargs


__all__ = ["safe", "escape", "redact_target", "redact_text", "exception_summary", "safe_traceback",
           "RedactingLogger", "MAX_LOGGED_CHARS", "SECRET_PARAMS", "SECRET_HEADERS", "REDACTED"]

"""nREPL operations over any transport: sessions, eval, interrupt, describe, completions.

:class:`Nrepl` takes one decoded request (a dict) with the transport's ``reply``
callable and answers with nREPL response dicts, each echoing ``id`` (and ``session``),
the last one holding ``status`` ``done``. It does no I/O itself: the TCP transport
(:mod:`.tcp`) and the WebSocket one (:mod:`.ws`) hand it messages. Sessions belong
to the transport connection (``owner``) that made them; another owner cannot use,
list or close them. Every ``eval``/``load-file`` is logged on ``sente_lite.console.audit``.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import re
import threading
import uuid
from typing import Any, Dict, List, Optional

from ..logsafe import escape, redact_text
from ..version import __version__
from .evaluator import EvalSession, Reply, completions
from .settings import ConsoleSettings

log = logging.getLogger("sente_lite.console")
audit = logging.getLogger("sente_lite.console.audit")

#: What ``describe`` says about the console (also in its ``aux``).
RISK = ("this console runs any Python code it is sent with the full rights of the process "
        "(files, network, secrets in memory): give access only to operators you trust")
OPS = {
    "clone": "a new session (a copy of `session`'s namespace when given): new-session",
    "close": "close `session` and stop its thread",
    "completions": "names completing `prefix` in `session`'s namespace (nothing is evaluated)",
    "describe": "this console's ops, versions and risk",
    "eval": "run `code` in `session`: out/err as printed, value, ex on an exception",
    "interrupt": "stop the running eval of `session` (`interrupt-id`: only that one)",
    "load-file": "run the contents `file` in `session`, as eval",
    "ls-sessions": "this connection's sessions",
}
_SECRET_RE = re.compile(
    r"(?i)(\b[\w.]*(?:password|passwd|secret|token|api[_-]?key|private[_-]?key|credential)s?[\w]*"
    r"\s*[=:]\s*)('[^'\n]*'|\"[^\"\n]*\"|[^\s,)]+)")


def redact_code(code: str) -> str:
    """``code`` for a log line: obvious secrets (``password = "..."``, bearer tokens) as ``***``."""
    return escape(redact_text(_SECRET_RE.sub(lambda m: m.group(1) + "***", code)))


def code_hash(code: str) -> str:
    """The audit log's name for ``code``: its SHA-256, first 16 hex digits."""
    return hashlib.sha256(code.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _error(msg: Dict[str, Any], *status: str, **extra: Any) -> Dict[str, Any]:
    out: Dict[str, Any] = {"id": msg.get("id"), "status": ["done", "error", *status]}
    if "session" in msg:
        out["session"] = msg["session"]
    out.update(extra)
    return out


class Nrepl:
    """The nREPL operations of one console; ``bindings`` go in every new session's namespace."""

    def __init__(self, settings: ConsoleSettings, bindings: Dict[str, Any]) -> None:
        self.settings = settings
        self.bindings = dict(bindings)
        self._sessions: Dict[str, EvalSession] = {}
        self._lock = threading.Lock()
        self.evals = 0
        self.refused = 0

    # -- sessions ---------------------------------------------------------------
    def _new_session(self, owner: str, source: Optional[EvalSession]) -> Optional[EvalSession]:
        namespace = dict(source.namespace) if source is not None else {
            "__name__": "__console__", "__builtins__": __builtins__, **self.bindings}
        with self._lock:
            if len(self._sessions) >= self.settings.max_sessions:
                self.refused += 1
                return None
            session = EvalSession(str(uuid.uuid4()), owner, namespace)
            self._sessions[session.id] = session
        return session

    def _session(self, msg: Dict[str, Any], owner: str) -> Optional[EvalSession]:
        session = self._sessions.get(str(msg.get("session", "")))
        return session if session is not None and session.owner == owner else None

    @property
    def session_count(self) -> int:
        """Sessions open, of every owner."""
        return len(self._sessions)

    def sessions_of(self, owner: str) -> List[str]:
        """Ids of the sessions ``owner`` made, oldest first."""
        return [s.id for s in list(self._sessions.values()) if s.owner == owner]

    def close_owner(self, owner: str) -> None:
        """Close every session of ``owner`` (its connection ended)."""
        for sid in self.sessions_of(owner):
            session = self._sessions.pop(sid, None)
            if session is not None:
                session.close()

    def close(self) -> None:
        """Close every session and join its thread."""
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            session.close()

    # -- dispatch ---------------------------------------------------------------
    def handle(self, msg: Any, reply: Reply, owner: str, uid: Optional[str], transport: str) -> None:
        """Answer one request ``msg`` through ``reply``."""
        if not isinstance(msg, dict):
            reply({"status": ["done", "error", "bad-message"],
                   "err": f"an nREPL request is a dict, got {type(msg).__name__}\n"})
            return
        op = msg.get("op")
        handler = _HANDLERS.get(op) if isinstance(op, str) else None
        if handler is None:
            reply(_error(msg, "unknown-op", op=op if isinstance(op, (str, int)) else repr(op)))
            return
        handler(self, msg, reply, owner, uid, transport)

    def _clone(self, msg: Dict[str, Any], reply: Reply, owner: str, *_: Any) -> None:
        source = self._session(msg, owner) if "session" in msg else None
        if "session" in msg and source is None:
            reply(_error(msg, "unknown-session"))
            return
        session = self._new_session(owner, source)
        if session is None:
            log.warning("console: clone refused for %s: %d sessions open (max_sessions)",
                        owner, self.settings.max_sessions)
            reply(_error(msg, "session-limit",
                         err=f"{self.settings.max_sessions} sessions are open (max_sessions): "
                             "close one first\n"))
            return
        reply({"id": msg.get("id"), "new-session": session.id, "status": ["done"]})

    def _close(self, msg: Dict[str, Any], reply: Reply, owner: str, *_: Any) -> None:
        session = self._session(msg, owner)
        if session is None:
            reply(_error(msg, "unknown-session"))
            return
        self._sessions.pop(session.id, None)
        session.close()
        reply({"id": msg.get("id"), "session": session.id, "status": ["done", "session-closed"]})

    def _ls_sessions(self, msg: Dict[str, Any], reply: Reply, owner: str, *_: Any) -> None:
        reply({"id": msg.get("id"), "sessions": self.sessions_of(owner), "status": ["done"]})

    def _describe(self, msg: Dict[str, Any], reply: Reply, *_: Any) -> None:
        py = platform.python_version_tuple()
        reply({"id": msg.get("id"), "ops": {op: {"doc": doc} for op, doc in OPS.items()},
               "versions": {"nrepl": {"major": 1, "minor": 0, "incremental": 0, "version-string": "1.0.0"},
                            "python": {"major": int(py[0]), "minor": int(py[1]),
                                       "version-string": platform.python_version()},
                            "sente-lite": {"version-string": __version__}},
               "risk": RISK, "aux": {"risk": RISK, "language": "python"}, "status": ["done"]})

    def _eval(self, msg: Dict[str, Any], reply: Reply, owner: str, uid: Optional[str], transport: str) -> None:
        load = msg.get("op") == "load-file"
        code = msg.get("file" if load else "code")
        if not isinstance(code, str):
            reply(_error(msg, "bad-message", err=f"{'file' if load else 'code'} must be a string\n"))
            return
        session = self._session(msg, owner) if "session" in msg else self._default_session(owner)
        if session is None:
            reply(_error(msg, "unknown-session" if "session" in msg else "session-limit"))
            return
        digest = code_hash(code)
        self.evals += 1
        audit.info("%s uid=%s transport=%s session=%s id=%s sha256=%s bytes=%d", msg["op"], uid, transport,
                   session.id, escape(str(msg.get("id")))[:64], digest, len(code))
        if audit.isEnabledFor(logging.DEBUG):
            audit.debug("%s sha256=%s code: %s", msg["op"], digest, redact_code(code))
        filename = str(msg.get("file-path") or msg.get("file-name") or "<console>")
        session.submit(msg, reply, code, filename)

    def _default_session(self, owner: str) -> Optional[EvalSession]:
        existing = self.sessions_of(owner)
        return self._sessions.get(existing[0]) if existing else self._new_session(owner, None)

    def _interrupt(self, msg: Dict[str, Any], reply: Reply, owner: str, *_: Any) -> None:
        session = self._session(msg, owner)
        if session is None:
            reply(_error(msg, "unknown-session"))
            return
        outcome = session.interrupt(msg.get("interrupt-id"))
        status = ["done"] if outcome == "done" else ["done", outcome]
        reply({"id": msg.get("id"), "session": session.id, "status": status})

    def _completions(self, msg: Dict[str, Any], reply: Reply, owner: str, *_: Any) -> None:
        prefix = msg.get("prefix", msg.get("symbol", ""))
        session = self._session(msg, owner) if "session" in msg else None
        namespace = session.namespace if session is not None else dict(self.bindings)
        found = completions(prefix, namespace) if isinstance(prefix, str) else []
        reply({"id": msg.get("id"), "completions": found, "status": ["done"]})


_HANDLERS = {
    "clone": Nrepl._clone, "close": Nrepl._close, "ls-sessions": Nrepl._ls_sessions,
    "describe": Nrepl._describe, "eval": Nrepl._eval, "load-file": Nrepl._eval,
    "interrupt": Nrepl._interrupt, "completions": Nrepl._completions,
}

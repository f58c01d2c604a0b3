"""One nREPL session's evaluation: its namespace, its own eval thread, interrupts, output.

Code runs on the session's thread (``sente-lite-console-eval-N``), one request at a
time in arrival order. ``interrupt`` raises :class:`EvalInterrupted` in that thread
with CPython's ``PyThreadState_SetAsyncExc`` (checked between bytecodes, so a busy
Python loop stops at once; code blocked inside a C call stops when it returns).
What the code prints goes to the requester as ``out``/``err`` messages.
"""

from __future__ import annotations

import ast
import ctypes
import itertools
import keyword
import logging
import queue
import sys
import threading
import traceback
from typing import Any, Callable, Dict, List, Optional, Set, TextIO, Tuple

log = logging.getLogger("sente_lite.console")

Reply = Callable[[Dict[str, Any]], None]
#: Characters of printed output gathered before an ``out``/``err`` message goes (also at each newline).
OUT_CHUNK_CHARS = 4096
#: Completion candidates returned at most.
MAX_COMPLETIONS = 200
_NOTHING = object()
_thread_seq = itertools.count(1)


class EvalInterrupted(BaseException):
    """Raised inside evaluated code by an nREPL ``interrupt`` (a BaseException, so
    ``except Exception`` in that code does not swallow it)."""


def _set_async_exc(ident: int, exc: Optional[type]) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident),
                                               ctypes.py_object(exc) if exc is not None else None)


# -- output ---------------------------------------------------------------------
class _Stream:
    """A text sink that sends what is written as ``{key: text}`` messages."""

    def __init__(self, reply: Reply, key: str, base: Dict[str, Any]) -> None:
        self._reply, self._key, self._base = reply, key, base
        self._parts: List[str] = []
        self._size = 0

    def write(self, text: str) -> int:
        self._parts.append(text)
        self._size += len(text)
        if "\n" in text or self._size >= OUT_CHUNK_CHARS:
            self.flush()
        return len(text)

    def flush(self) -> None:
        if self._parts:
            text, self._parts, self._size = "".join(self._parts), [], 0
            self._reply(dict(self._base, **{self._key: text}))


class _Router:
    """Replaces ``sys.stdout``/``sys.stderr`` while a console runs: an eval thread's
    writes go to its requester, every other thread's to the original stream."""

    local = threading.local()

    def __init__(self, original: TextIO, index: int) -> None:
        self.original, self.index = original, index

    def write(self, text: str) -> int:
        streams = getattr(self.local, "streams", None)
        if streams is not None:
            return int(streams[self.index].write(text))
        return self.original.write(text)

    def flush(self) -> None:
        streams = getattr(self.local, "streams", None)
        (streams[self.index] if streams is not None else self.original).flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.original, name)


_router_lock = threading.Lock()
_router_users = 0


def install_router() -> None:
    """Route eval threads' output (counted: one call per console started)."""
    global _router_users
    with _router_lock:
        _router_users += 1
    ensure_routed()


def ensure_routed() -> None:
    """Put the routers back if something replaced ``sys.stdout``/``sys.stderr`` since
    (``contextlib.redirect_stdout``, a test runner's capture): called before each eval."""
    if isinstance(sys.stdout, _Router) and isinstance(sys.stderr, _Router):
        return
    with _router_lock:
        if _router_users > 0:
            if not isinstance(sys.stdout, _Router):
                sys.stdout = _Router(sys.stdout, 0)  # type: ignore[assignment]
            if not isinstance(sys.stderr, _Router):
                sys.stderr = _Router(sys.stderr, 1)  # type: ignore[assignment]


def uninstall_router() -> None:
    """Undo one :func:`install_router`."""
    global _router_users
    with _router_lock:
        _router_users -= 1
        if _router_users == 0:
            for name in ("stdout", "stderr"):
                current = getattr(sys, name)
                if isinstance(current, _Router):
                    setattr(sys, name, current.original)


# -- running code ---------------------------------------------------------------
def run_code(code: str, namespace: Dict[str, Any], filename: str) -> Any:
    """Run ``code`` in ``namespace``; the value of a final expression, else ``_NOTHING``."""
    tree = ast.parse(code, filename, "exec")
    last: Optional[ast.Expression] = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    exec(compile(tree, filename, "exec"), namespace)
    if last is not None:
        return eval(compile(last, filename, "eval"), namespace)
    return _NOTHING


def completions(prefix: str, namespace: Dict[str, Any]) -> List[Dict[str, str]]:
    """Names completing ``prefix`` (``a.b.c`` resolved with getattr only: nothing is run)."""
    head, dot, stem = prefix.rpartition(".")
    if dot:
        parts = head.split(".")
        if not all(part.isidentifier() for part in parts):
            return []
        try:
            obj = namespace[parts[0]] if parts[0] in namespace else getattr(
                namespace.get("__builtins__", __builtins__), parts[0])
            for part in parts[1:]:
                obj = getattr(obj, part)
        except Exception:
            return []
        names = [n for n in dir(obj) if n.startswith(stem) and (stem.startswith("_") or not n.startswith("_"))]
        items: List[Tuple[str, Any]] = [(f"{head}.{n}", getattr(obj, n, None)) for n in names]
    else:
        builtins = namespace.get("__builtins__", {})
        builtins = builtins if isinstance(builtins, dict) else vars(builtins)
        pool = {**builtins, **namespace}
        items = [(n, v) for n, v in pool.items() if n.startswith(prefix) and not n.startswith("__")]
        items += [(k, None) for k in keyword.kwlist if k.startswith(prefix)]
    items.sort(key=lambda kv: kv[0])
    return [{"candidate": name, "type": _kind(value)} for name, value in items[:MAX_COMPLETIONS]]


def _kind(value: Any) -> str:
    if isinstance(value, type):
        return "class"
    if callable(value):
        return "function"
    if type(value).__name__ == "module":
        return "namespace"
    return "var"


class EvalSession:
    """An nREPL session: a namespace and the thread that evaluates in it.

    An ``interrupt`` may arrive before its eval has started (the two requests come
    back to back and the eval waits its turn): a waiting eval it names (or, without
    ``interrupt-id``, the next one) is then cancelled, answered ``interrupted``
    without running. While the eval thread sends an answer (printed output) an
    interrupt waits until the answer is out, so it never lands inside a transport's
    write or the server's send path.
    """

    def __init__(self, session_id: str, owner: str, namespace: Dict[str, Any]) -> None:
        self.id = session_id
        self.owner = owner
        self.namespace = namespace
        self._jobs: "queue.SimpleQueue[Optional[Tuple[int, Dict[str, Any], Reply, str, str]]]" = \
            queue.SimpleQueue()
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self._waiting: Dict[int, str] = {}  # job number -> message id, queued and not started
        self._cancelled: Set[int] = set()
        self._current: Optional[str] = None  # id of the message whose code is running
        self._interrupted = False  # an interrupt was asked for the running code
        self._sending = False  # the eval thread is sending an answer: an interrupt waits
        self._deferred = False  # an interrupt waiting for that answer to be out
        self._closing = False
        self._thread = threading.Thread(target=self._serve, daemon=True,
                                        name=f"sente-lite-console-eval-{next(_thread_seq)}")
        self._thread.start()

    @property
    def busy(self) -> bool:
        """True while code of this session is running."""
        return self._current is not None

    def submit(self, msg: Dict[str, Any], reply: Reply, code: str, filename: str) -> None:
        """Queue ``code`` for evaluation; its answers go to ``reply``."""
        seq = next(self._seq)
        with self._lock:
            self._waiting[seq] = str(msg.get("id"))
            if self._closing:
                self._cancelled.add(seq)
            self._jobs.put((seq, msg, reply, code, filename))

    def interrupt(self, interrupt_id: Optional[str]) -> str:
        """Stop the running evaluation, or cancel a waiting one: ``done``, ``session-idle``
        or ``interrupt-id-mismatch``."""
        wanted = None if interrupt_id is None else str(interrupt_id)
        with self._lock:
            if self._current is not None and wanted in (None, self._current):
                if not self._interrupted and self._thread.ident is not None:
                    self._interrupted = True
                    if self._sending:
                        self._deferred = True
                    else:
                        _set_async_exc(self._thread.ident, EvalInterrupted)
                return "done"
            waiting = [seq for seq, mid in self._waiting.items()
                       if seq not in self._cancelled and wanted in (None, mid)]
            if waiting:
                self._cancelled.add(waiting[0])
                return "done"
            return "session-idle" if self._current is None else "interrupt-id-mismatch"

    def close(self, timeout: float = 2.0) -> bool:
        """Stop the thread (interrupting running code, cancelling waiting code); False if it
        is still running after ``timeout``."""
        with self._lock:
            self._closing = True
            self._cancelled.update(self._waiting)
            self._jobs.put(None)
        self.interrupt(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("console session %s: evaluation did not stop within %.1fs (blocked in a C call?)",
                        self.id, timeout)
            return False
        return True

    # -- the eval thread -------------------------------------------------------
    def _serve(self) -> None:
        while True:
            try:
                job = self._jobs.get()
                if job is None:
                    return
                self._run(*job)
            except EvalInterrupted:  # arrived after the evaluation's own handlers
                self._leave()

    def _start(self, seq: int, msg_id: str) -> bool:
        """Make the job ``seq`` the running one; False when it was cancelled meanwhile."""
        with self._lock:
            del self._waiting[seq]
            if seq in self._cancelled:
                self._cancelled.discard(seq)
                return False
            self._current, self._interrupted, self._deferred = msg_id, False, False
            return True

    def _leave(self) -> None:
        with self._lock:
            if self._interrupted and self._thread.ident is not None:
                _set_async_exc(self._thread.ident, None)  # drop one not delivered yet
            self._current, self._interrupted, self._deferred = None, False, False

    def _send(self, reply: Reply, msg: Dict[str, Any]) -> None:
        """Send ``msg`` from the eval thread; an interrupt asked meanwhile is raised after it."""
        with self._lock:
            running = self._current is not None
            if running:
                self._sending = True
                if self._interrupted and not self._deferred and self._thread.ident is not None:
                    _set_async_exc(self._thread.ident, None)  # take back one not delivered yet
                    self._deferred = True
        try:
            reply(msg)
        finally:
            if running:
                with self._lock:
                    self._sending = False
                    deferred, self._deferred = self._deferred, False
                if deferred:
                    raise EvalInterrupted()

    def _run(self, seq: int, msg: Dict[str, Any], reply: Reply, code: str, filename: str) -> None:
        base = {"id": msg.get("id"), "session": self.id}
        send: Reply = lambda m: self._send(reply, m)  # noqa: E731
        out, err = _Stream(send, "out", base), _Stream(send, "err", base)
        status = ["done"]
        ensure_routed()
        _Router.local.streams = (out, err)
        try:
            if not self._start(seq, str(msg.get("id"))):
                status = ["done", "session-closed" if self._closing else "interrupted"]
                return
            try:
                value = run_code(code, self.namespace, filename)
            finally:
                self._leave()
            out.flush()
            if value is not _NOTHING:
                self.namespace["_"] = value
                reply(dict(base, value=repr(value), ns="user"))
        except EvalInterrupted:
            self._leave()
            status = ["done", "interrupted"]
        except BaseException as exc:  # noqa: BLE001 - the operator's code: any error is the answer
            self._leave()
            out.flush()
            err.write("".join(traceback.format_exception(type(exc), exc, _user_frames(exc.__traceback__))))
            err.flush()
            reply(dict(base, ex=type(exc).__name__, **{"root-ex": _root(exc).__class__.__name__}))
            status = ["done", "eval-error"]
        finally:
            _Router.local.streams = None
            out.flush()
            err.flush()
            reply(dict(base, status=status))


def _user_frames(tb: Any) -> Any:
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return tb


def _root(exc: BaseException) -> BaseException:
    seen = 0
    while exc.__cause__ is not None and seen < 100:
        exc, seen = exc.__cause__, seen + 1
    return exc

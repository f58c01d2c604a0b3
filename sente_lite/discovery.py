"""Port, ready and result files: atomic JSON writes under a file lock, deadline waits.

Writers write to a temp file in the same directory and ``os.replace`` it into
place while holding ``<path>.lock`` (a :class:`filelock.FileLock`, which orders
concurrent writers), so a reader sees either no file or a complete one, never a
torn one.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any, Callable, Optional, TypeVar

from filelock import FileLock

from .errors import DiscoveryTimeout

#: How long a writer or reader waits for a file's lock before giving up.
LOCK_TIMEOUT_S = 5.0
#: How often :func:`wait_for` re-checks its condition.
POLL_INTERVAL_S = 0.01

T = TypeVar("T")


def lock_for(path: "os.PathLike[str] | str") -> FileLock:
    """The lock guarding ``path`` (``<path>.lock``)."""
    return FileLock(os.fspath(path) + ".lock", timeout=LOCK_TIMEOUT_S)


def write_json(path: "os.PathLike[str] | str", obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically, under the file's lock."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    with lock_for(path):
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(obj, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise


def read_json(path: "os.PathLike[str] | str") -> Optional[Any]:
    """Read the JSON in ``path``; None when the file does not exist.

    Needs no lock: writers replace the file atomically, so a reader sees the old
    complete file or the new one. (Not taking the lock also means a polling reader
    never creates a lock file of its own.)
    """
    try:
        with open(os.fspath(path), encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def remove(path: "os.PathLike[str] | str") -> None:
    """Remove ``path`` and its lock file, if present."""
    path = os.fspath(path)
    with lock_for(path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    try:
        os.unlink(path + ".lock")
    except FileNotFoundError:
        pass


def wait_for(condition: Callable[[], Optional[T]], timeout: float, what: str,
             interval: float = POLL_INTERVAL_S) -> T:
    """Poll ``condition`` until it returns something other than None/False.

    Raises :class:`DiscoveryTimeout` naming ``what`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value is not None and value is not False:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DiscoveryTimeout(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(min(interval, remaining))


def wait_for_json(path: "os.PathLike[str] | str", timeout: float,
                  accept: Optional[Callable[[Any], bool]] = None) -> Any:
    """Wait until ``path`` holds JSON that ``accept`` (if given) approves; return it."""
    path = os.fspath(path)

    def ready() -> Optional[Any]:
        value = read_json(path)
        if value is None or (accept is not None and not accept(value)):
            return None
        return value

    return wait_for(ready, timeout, f"file {path}")


def write_port_file(path: "os.PathLike[str] | str", host: str, port: int, url: str,
                    server_id: str) -> None:
    """Publish a listening server's address: ``{"host","port","url","pid","server-id"}``."""
    write_json(path, {"host": host, "port": port, "url": url, "pid": os.getpid(),
                      "server-id": server_id})


def read_port_file(path: "os.PathLike[str] | str", timeout: float = 5.0,
                   not_server_id: Optional[str] = None) -> dict:
    """Wait for a port file and return it. ``not_server_id`` skips a stale one."""
    return wait_for_json(
        path, timeout,
        accept=None if not_server_id is None else (lambda v: v.get("server-id") != not_server_id),
    )

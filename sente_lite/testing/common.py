"""What the parent and its child processes share: timeouts, file layout, errors.

A run directory (one per scenario run, made by :func:`tempfile.mkdtemp`) holds::

    port.json                  the server's port file (sente_lite.discovery format)
    logs/<name>.log            stdout, stderr and logging of process <name>
    procs/<name>/cmd-0001.json commands to <name>, numbered in the order sent
    procs/<name>/mark-<m>.json marks <name> has reached ("started", "ready", "status", ...)
    procs/<name>/result.json   what <name> returned or how it failed, and its history
    procs/<name>/events.jsonl  <name>'s events (status changes, marks, commands) as they happen,
                               one JSON line each: kept even when <name> is killed

Every file is written atomically under its ``filelock`` lock by
:func:`sente_lite.discovery.write_json` and read with ``read_json`` / ``wait_for_json``.
"""

from __future__ import annotations

import os
import re

from ..errors import DiscoveryTimeout

# Deadlines, not performance bounds (a scenario checks those itself): each is reached
# only when something is broken, so each leaves room for a 2-core machine that other
# work loads many times over, where a step of well under a second can take ten.
#: Seconds a spawned process may take from launch to the start of its main: a fresh
#: interpreter importing the scenario's modules, slow only on an overloaded machine.
PROCESS_START_TIMEOUT_S = 60.0
#: Seconds a server process may take from the start of its main to writing its port file.
SERVER_STARTUP_TIMEOUT_S = 15.0
#: Seconds a client may take from the server being known to being connected.
CLIENT_CONNECT_TIMEOUT_S = 10.0
#: Seconds a whole scenario may take (scenarios with a heavy workload name a larger one).
SCENARIO_TIMEOUT_S = 60.0
#: Seconds cleanup may take to end every child process.
CLEANUP_TIMEOUT_S = 5.0
#: Seconds cleanup gives a process after SIGTERM before it sends SIGKILL.
TERMINATE_GRACE_S = 1.0

#: Key of a channel message's data holding the publisher's ``time.monotonic_ns()``.
SENT_NS_KEY = "sent_ns"

PORT_FILE = "port.json"
LOG_DIR = "logs"
PROC_DIR = "procs"
RESULT_FILE = "result.json"
EVENTS_FILE = "events.jsonl"

_NAME_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


class HarnessError(Exception):
    """Base class of the harness's errors."""


class HarnessTimeout(HarnessError, DiscoveryTimeout):
    """Something awaited did not happen before its deadline; the message names it.

    ``.names`` lists the processes that were still awaited (may be empty).
    """

    def __init__(self, message: str, names: "list[str] | None" = None) -> None:
        super().__init__(message)
        self.names = list(names or ())

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ProcessFailed(HarnessError):
    """A process ended while something was still expected from it.

    ``.name`` is the process name, ``.exitcode`` its exit code (negative: killed by
    that signal) and ``.traceback`` the traceback it reported (None if it reported
    none, e.g. when it was killed).
    """

    def __init__(self, name: str, message: str, exitcode: "int | None" = None,
                 traceback: "str | None" = None) -> None:
        super().__init__(message)
        self.name = name
        self.exitcode = exitcode
        self.traceback = traceback


class CommandFailed(HarnessError):
    """A process answered a command with an error; ``.name`` is the process."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


class LeakError(HarnessError):
    """Cleanup found child processes still alive, a port still bound, or files left."""


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid process or mark name (used in file names)."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(f"invalid name {name!r}: use 1-64 chars of [A-Za-z0-9_.-]")
    return name


def port_file_path(run_dir: str) -> str:
    """The server's port file in ``run_dir``."""
    return os.path.join(run_dir, PORT_FILE)


def proc_dir(run_dir: str, name: str) -> str:
    """The directory of process ``name``'s command, mark and result files."""
    return os.path.join(run_dir, PROC_DIR, check_name(name))


def log_path(run_dir: str, name: str) -> str:
    """The log file of process ``name``."""
    return os.path.join(run_dir, LOG_DIR, f"{check_name(name)}.log")


def command_path(run_dir: str, name: str, seq: int) -> str:
    """The file of the ``seq``-th command (1-based) sent to process ``name``."""
    return os.path.join(proc_dir(run_dir, name), f"cmd-{seq:04d}.json")


def mark_path(run_dir: str, name: str, mark: str) -> str:
    """The file process ``name`` writes when it reaches ``mark``."""
    return os.path.join(proc_dir(run_dir, name), f"mark-{check_name(mark)}.json")


def result_path(run_dir: str, name: str) -> str:
    """The result file of process ``name``."""
    return os.path.join(proc_dir(run_dir, name), RESULT_FILE)


def events_path(run_dir: str, name: str) -> str:
    """The event journal of process ``name`` (JSON lines, appended as events happen)."""
    return os.path.join(proc_dir(run_dir, name), EVENTS_FILE)

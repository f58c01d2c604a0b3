"""Which tests open a socket or start a process: ``PYTHONPATH=tests python -m pytest -p census tests``.

A pytest plugin (not loaded by default) that records, for every test, whether it
created a socket (``socket.socket``, ``socket.socketpair``) or started a process
(``subprocess.Popen``, ``multiprocessing``), then prints a table per test folder:
how many tests check their rule in memory and how many need the network or a process.
"""

from __future__ import annotations

import collections
import multiprocessing.process
import socket
import subprocess
from pathlib import Path
from typing import Any, Dict, Set

_touched: Set[str] = set()
_current: Dict[str, str] = {}
_outcomes: Dict[str, str] = {}


def _mark(kind: str) -> None:
    test = _current.get("id")
    if test is not None:
        _touched.add(test)


def _wrap(owner: Any, name: str, kind: str) -> None:
    original = getattr(owner, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        _mark(kind)
        return original(*args, **kwargs)

    setattr(owner, name, wrapped)


def pytest_configure(config: Any) -> None:
    socket_init = socket.socket.__init__

    def init(self: socket.socket, *args: Any, **kwargs: Any) -> None:
        _mark("socket")
        socket_init(self, *args, **kwargs)

    socket.socket.__init__ = init  # type: ignore[method-assign]
    _wrap(socket, "socketpair", "socket")
    popen_init = subprocess.Popen.__init__

    def popen(self: Any, *args: Any, **kwargs: Any) -> None:
        _mark("process")
        popen_init(self, *args, **kwargs)

    subprocess.Popen.__init__ = popen  # type: ignore[method-assign]
    _wrap(multiprocessing.process.BaseProcess, "start", "process")


def pytest_runtest_setup(item: Any) -> None:
    _current["id"] = item.nodeid


def pytest_runtest_logreport(report: Any) -> None:
    if report.when == "call":
        _outcomes[report.nodeid] = report.outcome


def pytest_runtest_teardown(item: Any) -> None:
    _current.pop("id", None)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    rows: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for nodeid in _outcomes:
        folder = str(Path(nodeid.split("::")[0]).parent)
        rows[folder]["io" if nodeid in _touched else "memory"] += 1
    write = terminalreporter.write_line
    write("")
    write(f"{'folder':<24} {'in memory':>10} {'socket/process':>15}")
    total: collections.Counter = collections.Counter()
    for folder in sorted(rows):
        total.update(rows[folder])
        write(f"{folder:<24} {rows[folder]['memory']:>10} {rows[folder]['io']:>15}")
    write(f"{'all':<24} {total['memory']:>10} {total['io']:>15}")

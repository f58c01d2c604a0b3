"""What the harness can prove about its own processes, measured rather than assumed.

Child side, :func:`process_isolation` (called first thing in every harness process):
how the process was started and what it holds from its parent. A process from
``multiprocessing.get_context("spawn")`` is a fresh interpreter (its command line is
``... -c "from multiprocessing.spawn import spawn_main ..."``), holds no inherited
socket, maps no shared memory (``/dev/shm``: what a ``multiprocessing`` Queue, Lock or
``shared_memory`` block would map) and holds only the pipes ``multiprocessing`` uses to
start it (:data:`SPAWN_BOOTSTRAP_PIPES`). A Queue or Pipe passed to it would show here
as more pipes or sockets and shared memory.

Parent side: :func:`run_isolation` sums what every process of a run recorded;
:func:`left_processes` and :func:`left_files` are what ``run_all_tests.py`` measures
after each scenario (processes still alive, by PID, and temp files left).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from typing import Any, Dict, Iterable, List, Optional, Sequence

from ..discovery import wait_for
from ..errors import DiscoveryTimeout

log = logging.getLogger("sente_lite.testing")

#: Descriptors above stdio that ``multiprocessing``'s spawn start method itself leaves in
#: a child (Python 3.10 to 3.13 on Linux): the resource tracker's pipe, the duplicate of
#: the pipe the child read its start data from (its parent sentinel), and the write end of
#: the pipe whose closing tells the parent that the child ended.
SPAWN_BOOTSTRAP_PIPES = 3
#: Seconds a process of a finished scenario may take to end on its own before it counts as
#: left behind (``multiprocessing``'s resource tracker ends when its parent's pipe closes,
#: a moment after the scenario; a loaded 2-core machine can stretch that moment).
LEFT_PROCESS_GRACE_S = 5.0
#: What a spawned child's command line contains (``multiprocessing.spawn.get_command_line``).
SPAWN_MARKER = b"multiprocessing.spawn"


def _descriptors() -> Dict[int, str]:
    out: Dict[int, str] = {}
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return out
    for name in names:
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except (OSError, ValueError):
            continue  # the descriptor listdir itself used, closed since
    return out


def process_isolation() -> Dict[str, Any]:
    """This process's start method and what it inherited (Linux ``/proc``; ``{}`` elsewhere).

    Keys: ``start`` (``spawn`` or ``other``), ``sockets``, ``pipes`` (descriptors above
    stdio of each kind), ``shared_memory`` (``/dev/shm`` mappings).
    """
    try:
        with open("/proc/self/cmdline", "rb") as f:
            cmdline = f.read()
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            shm = sorted({ln.split()[-1] for ln in f if "/dev/shm/" in ln})
    except OSError:
        return {}
    fds = {fd: target for fd, target in _descriptors().items() if fd > 2}
    return {"start": "spawn" if SPAWN_MARKER in cmdline else "other",
            "sockets": sum(t.startswith("socket:") for t in fds.values()),
            "pipes": sum(t.startswith("pipe:") for t in fds.values()),
            "shared_memory": shm}


def isolation_problems(facts: Dict[str, Any]) -> List[str]:
    """What in one process's :func:`process_isolation` shows shared state (empty: none)."""
    if not facts:
        return ["not measured"]
    problems = []
    if facts.get("start") != "spawn":
        problems.append(f"started by {facts.get('start')!r}, not spawn")
    if facts.get("sockets"):
        problems.append(f"{facts['sockets']} inherited socket(s)")
    if int(facts.get("pipes") or 0) > SPAWN_BOOTSTRAP_PIPES:
        problems.append(f"{facts['pipes']} inherited pipes (spawn leaves {SPAWN_BOOTSTRAP_PIPES})")
    if facts.get("shared_memory"):
        problems.append(f"shared memory {', '.join(facts['shared_memory'])}")
    return problems


def run_isolation(per_process: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """A run's isolation evidence: ``processes``, ``spawned``, ``measured`` and ``problems``
    (``name: problem`` strings) from each process's :func:`process_isolation`."""
    problems = [f"{name}: {p}" for name, facts in per_process.items()
                for p in isolation_problems(facts)]
    return {"processes": len(per_process),
            "measured": sum(bool(f) for f in per_process.values()),
            "spawned": sum(f.get("start") == "spawn" for f in per_process.values()),
            "problems": problems}


def killed_processes(events: Iterable[Dict[str, Any]]) -> int:
    """How many processes the scenario killed: its SIGKILL/SIGTERM signals, and events it
    recorded whose kind names a kill (``redis-sigkill``)."""
    n = 0
    for e in events:
        if e.get("kind") == "signal":
            n += e.get("by") == "scenario" and e.get("signal") in ("SIGKILL", "SIGTERM")
        elif "kill" in str(e.get("kind", "")):
            n += 1
    return n


def injected_faults(events: Iterable[Dict[str, Any]]) -> int:
    """How many faults the scenario injected: signals it sent, restarts, and events it
    recorded (:meth:`Run.record_event`: a partition, a Redis kill); cleanup's signals not."""
    return sum(e.get("by") == "scenario" if e.get("kind") == "signal" else 1 for e in events)


# -- what run_all_tests.py measures after each scenario ------------------------------------

def proc_stat_fields(pid: int) -> Optional[List[str]]:
    """Fields of ``/proc/<pid>/stat`` after the command name (state first), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()


def left_processes(parent: int, session: int) -> List[Dict[str, Any]]:
    """Processes still there: children of ``parent`` (zombies included) and members of
    session ``session`` (a scenario started with ``start_new_session``). Each: ``pid``,
    ``state`` (``Z`` zombie), ``cmd``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == parent:
            continue
        fields = proc_stat_fields(int(name))
        if fields is None or len(fields) < 4:
            continue
        if int(fields[1]) == parent or int(fields[3]) == session:
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
            except OSError:
                cmd = ""
            found.append({"pid": int(name), "state": fields[0], "cmd": cmd[:120]})
    return found


def end_processes(found: Sequence[Dict[str, Any]]) -> None:
    """SIGKILL each process of :func:`left_processes` by PID and reap those that are ours."""
    for p in found:
        try:
            if p["state"] != "Z":
                os.kill(p["pid"], signal.SIGKILL)
            os.waitpid(p["pid"], 0)
        except (ProcessLookupError, ChildProcessError):
            continue


def become_subreaper() -> bool:
    """Linux: adopt this process's orphaned descendants (``PR_SET_CHILD_SUBREAPER``), so a
    process a scenario leaves behind is found as this process's child. True when set."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def _reap_children() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def settle_left_processes(session: int, grace_s: float = LEFT_PROCESS_GRACE_S) -> List[Dict[str, Any]]:
    """After the scenario that led session ``session`` ended: the processes it left behind.

    A process of its session, or orphaned to this one (see :func:`become_subreaper`),
    counts when it still runs after ``grace_s``; an orphan that ended is reaped (a child
    the scenario left unreaped is its own cleanup check's leak). Each one found is then
    SIGKILLed by PID. Call it when this process has no other child running.
    """
    parent = os.getpid()

    def running() -> List[Dict[str, Any]]:
        _reap_children()
        return [p for p in left_processes(parent, session) if p["state"] != "Z"]

    try:
        wait_for(lambda: not running() or None, grace_s, "the finished scenario's processes to end")
        alive: List[Dict[str, Any]] = []
    except DiscoveryTimeout:
        alive = running()
    end_processes(alive)
    _reap_children()
    for p in alive:
        log.warning("left behind by session %d: pid %d %s", session, p["pid"], p["cmd"])
    return alive


def left_files(directory: str) -> List[str]:
    """Everything under ``directory`` (paths relative to it, directories with a ``/``)."""
    out = []
    for root, dirs, files in os.walk(directory):
        rel = os.path.relpath(root, directory)
        out += [os.path.normpath(os.path.join(rel, d)) + "/" for d in dirs]
        out += [os.path.normpath(os.path.join(rel, f)) for f in files]
    return sorted(out)


__all__ = ["process_isolation", "isolation_problems", "run_isolation", "killed_processes",
           "injected_faults",
           "left_processes", "end_processes", "left_files", "become_subreaper",
           "settle_left_processes", "SPAWN_BOOTSTRAP_PIPES", "LEFT_PROCESS_GRACE_S"]

"""The parent side: :class:`Run` starts, signals, awaits and cleans up processes.

::

    with Run("my-scenario") as run:
        server = run.start_server(heartbeat_ms=500)
        clients = run.start_clients(my_behaviour, 3, "news")
        run.wait_mark(clients, "ready")
        run.command(clients, "go")
        results = run.results(clients)

Every process comes from ``multiprocessing.get_context("spawn")``; processes
share nothing but the files of the run directory (see :mod:`.common`).
Leaving the ``with`` block ends every child (SIGTERM, then SIGKILL), checks that
none survived and no server port is still bound, and removes the run directory
(unless ``keep``); a leak raises :class:`LeakError`.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Union

from .. import discovery
from ..errors import DiscoveryTimeout
from .child import STARTED_MARK, ChildSpec, Delivery, History, child_main
from .common import (CLEANUP_TIMEOUT_S, LOG_DIR, PROCESS_START_TIMEOUT_S, SCENARIO_TIMEOUT_S,
                     SERVER_STARTUP_TIMEOUT_S, TERMINATE_GRACE_S, CommandFailed, HarnessError,
                     HarnessTimeout, LeakError, ProcessFailed, check_name, command_path, log_path,
                     mark_path, port_file_path, proc_dir, result_path)
from .evidence import injected_faults, killed_processes, run_isolation
from .server_process import ServerSetup, serve

log = logging.getLogger("sente_lite.testing")

Behaviour = Callable[..., Any]

#: PIDs owned by runs that are open now (so one run's cleanup never judges another's).
_OPEN_RUN_PIDS: Dict[int, Set[int]] = {}
_OPEN_RUNS_LOCK = threading.Lock()


class ProcessResult:
    """What a process reported in its result file, or how it ended without one.

    ``ok`` is True when the behaviour returned; then ``value`` is what it returned.
    Otherwise ``error`` says why and ``traceback`` holds the child's traceback
    (None when it reported nothing, e.g. killed by a signal: see ``exitcode``).
    ``history`` is the process's :class:`History`; ``maxrss_kb`` and ``cpu_s`` its
    peak RSS and CPU time.
    """

    def __init__(self, name: str, data: Optional[Dict[str, Any]], exitcode: Optional[int]) -> None:
        data = data or {}
        self.name = name
        self.exitcode = exitcode
        self.reported = bool(data)
        self.pid: Optional[int] = data.get("pid")
        self.ok: bool = bool(data.get("ok", False))
        self.value: Any = data.get("value")
        self.traceback: Optional[str] = data.get("traceback")
        self.error: Optional[str] = data.get("error")
        if not data:
            self.error = describe_exit(exitcode)
        self.history = History.from_json(data.get("history"))
        self.launched_ns: Optional[int] = data.get("launched_ns")
        self.started_ns: Optional[int] = data.get("started_ns")
        self.ended_ns: Optional[int] = data.get("ended_ns")
        self.maxrss_kb: Optional[int] = data.get("maxrss_kb")
        self.cpu_s: Optional[float] = data.get("cpu_s")

    @property
    def deliveries(self) -> List[Delivery]:
        """The channel messages this process received, in the order it got them."""
        return self.history.deliveries

    @property
    def events(self) -> List[Dict[str, Any]]:
        """The other events it recorded (status changes, commands, ...)."""
        return self.history.events

    def statuses(self) -> List[str]:
        """The client status changes it recorded, in order."""
        return [e["status"] for e in self.history.events if e["kind"] == "status"]

    def __repr__(self) -> str:
        state = "ok" if self.ok else f"failed: {self.error}"
        return f"<ProcessResult {self.name} {state}>"


def describe_exit(exitcode: Optional[int]) -> str:
    """Say how a process ended from its exit code (negative: the signal that killed it)."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with code {exitcode} without writing a result"


class ProcessHandle:
    """One child process: its name, PID, log, and the signals the scenario may send it."""

    def __init__(self, run: "Run", name: str, role: str,
                 process: "multiprocessing.process.BaseProcess", launched_ns: int) -> None:
        self.run = run
        self.name = name
        self.role = role
        self.process = process
        self.launched_ns = launched_ns
        self.paused = False
        #: ``time.monotonic_ns()`` when the parent first saw it ended (None while it runs).
        self.exit_seen_ns: Optional[int] = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} pid={self.pid}>"

    @property
    def pid(self) -> int:
        """The process id."""
        assert self.process.pid is not None
        return self.process.pid

    @property
    def log_path(self) -> str:
        """Its log file (stdout, stderr and logging)."""
        return log_path(self.run.dir, self.name)

    @property
    def exitcode(self) -> Optional[int]:
        """None while it runs; negative N when killed by signal N."""
        return self.process.exitcode

    def is_alive(self) -> bool:
        """True while the process runs (a paused process is alive)."""
        return self.process.is_alive()

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process (nothing when it already ended); the run records it."""
        if self.process.exitcode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                return
            self.run.record_event("signal", self.name, signal=signal.Signals(sig).name,
                                  by="cleanup" if self.run.closed else "scenario")

    def kill(self, timeout: float = CLEANUP_TIMEOUT_S) -> None:
        """SIGKILL it and reap it. Raises :class:`LeakError` if it is still there after ``timeout``."""
        self.signal(signal.SIGKILL)
        self.paused = False
        self.join(timeout)
        if self.process.exitcode is None:
            raise LeakError(f"{self.name} (pid {self.pid}) survived SIGKILL for {timeout}s")

    def terminate(self, timeout: float = TERMINATE_GRACE_S) -> None:
        """SIGTERM it and wait up to ``timeout`` for it to end, then SIGKILL it."""
        if self.paused:
            self.resume()
        self.signal(signal.SIGTERM)
        self.join(timeout)
        if self.process.exitcode is None:
            self.kill(timeout)

    def pause(self) -> None:
        """SIGSTOP it: its sockets stay open, it runs nothing."""
        self.signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT it after :meth:`pause`."""
        self.signal(signal.SIGCONT)
        self.paused = False

    def join(self, timeout: Optional[float] = None) -> Optional[int]:
        """Wait up to ``timeout`` for it to end; returns the exit code (None if running)."""
        self.process.join(timeout)
        if self.process.exitcode is not None and self.exit_seen_ns is None:
            self.exit_seen_ns = time.monotonic_ns()
        return self.process.exitcode

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of its log ("" if there is none)."""
        return tail(self.log_path, lines)


class ServerHandle(ProcessHandle):
    """A server process: also its ``port``, ``url`` and ``server_id`` (set once ready)."""

    port: int = 0
    url: str = ""
    server_id: str = ""
    server_kwargs: Dict[str, Any]
    setup: Optional[ServerSetup] = None


def tail(path: str, lines: int = 30) -> str:
    """The last ``lines`` lines of the text file at ``path`` ("" when it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on ``host:port`` (a listener can bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _is_child_of_us(pid: int) -> bool:
    """True when ``pid`` is still our child (running or an unreaped zombie)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return True
    fields = stat[stat.rfind(")") + 2:].split()
    return len(fields) > 1 and int(fields[1]) == os.getpid()


Handles = Union[ProcessHandle, Iterable[ProcessHandle]]


def _as_list(handles: Handles) -> List[ProcessHandle]:
    return [handles] if isinstance(handles, ProcessHandle) else list(handles)


class Run:
    """One scenario run: a temp run directory and every process started in it.

    ``keep`` keeps the run directory (logs, results) after close; ``root`` is where
    the run directory is made (default: the system temp dir); ``timeout`` bounds
    every wait of the run (:meth:`remaining`); ``log_level`` is the children's
    logging level. Start processes from a thread that outlives them (on Linux a
    child is killed when the thread that started it ends).

    The run records what the parent did to its processes (:attr:`events`: signals,
    restarts, and whatever the scenario adds with :meth:`record_event`). With
    ``trace`` :meth:`close` also collects the run's timeline into :attr:`trace`
    (see :mod:`sente_lite.testing.trace`) before it removes the run directory.
    """

    def __init__(self, name: str = "run", *, keep: bool = False, root: Optional[str] = None,
                 timeout: float = SCENARIO_TIMEOUT_S, log_level: int = logging.INFO,
                 trace: bool = False) -> None:
        self.name = check_name(name)
        #: ``time.monotonic_ns()`` when the run began: 0 on the timeline.
        self.t0_ns = time.monotonic_ns()
        #: What the parent did, in order: dicts with ``kind``, ``t_ns``, ``process`` and more.
        self.events: List[Dict[str, Any]] = []
        self.trace_enabled = trace
        #: The run's timeline (a dict, see :mod:`.trace`), set by :meth:`close` when ``trace``.
        self.trace: Optional[Dict[str, Any]] = None
        #: What :meth:`close` measured: ``isolation`` (see :func:`.evidence.run_isolation`)
        #: ``killed`` (processes the scenario killed), ``faults`` (faults it injected) and
        #: ``leaks`` (what cleanup found left: processes, zombies, ports, the run directory).
        self.evidence: Dict[str, Any] = {}
        #: Result data of the processes :meth:`results` has read, by name.
        self.result_data: Dict[str, Dict[str, Any]] = {}
        self.keep = keep
        self.timeout = timeout
        self.log_level = log_level
        self.dir = tempfile.mkdtemp(prefix=f"sente-lite-{name}-", dir=root)
        os.makedirs(os.path.join(self.dir, LOG_DIR))
        self.port_file = port_file_path(self.dir)
        self.deadline = time.monotonic() + timeout
        self.handles: List[ProcessHandle] = []
        self.leaks: List[str] = []
        self.closed = False
        self._by_name: Dict[str, ProcessHandle] = {}
        self._next_command: Dict[str, int] = {}
        self._ports: Set[int] = set()
        self._mp = multiprocessing.get_context("spawn")
        with _OPEN_RUNS_LOCK:
            _OPEN_RUN_PIDS[id(self)] = set()

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(raise_on_leak=exc_type is None)

    def record_event(self, kind: str, process: Optional[str] = None, **fields: Any) -> Dict[str, Any]:
        """Record something the parent did or saw now (a fault it injected, a phase); returns it.

        ``process`` names the process it concerns (None: the whole run). The
        events appear on the run's timeline.
        """
        event = {"kind": kind, "t_ns": time.monotonic_ns(), "process": process, **fields}
        self.events.append(event)
        return event

    # -- time -------------------------------------------------------------------------
    def remaining(self) -> float:
        """Seconds left until the run's deadline (never negative)."""
        return max(0.0, self.deadline - time.monotonic())

    def _clip(self, timeout: Optional[float], default: float) -> float:
        t = default if timeout is None else timeout
        return min(t, self.remaining())

    # -- starting ---------------------------------------------------------------------
    def start_process(self, name: str, target: Behaviour, *args: Any, role: str = "client",
                      handle_class: type = ProcessHandle, **kwargs: Any) -> ProcessHandle:
        """Start ``target(ctx, *args, **kwargs)`` in a new spawned process named ``name``.

        ``target`` must be picklable by reference (a module-level function) and
        ``args``/``kwargs`` picklable.
        """
        if self.closed:
            raise HarnessError(f"run {self.name} is closed")
        check_name(name)
        if name in self._by_name:
            raise ValueError(f"a process named {name!r} already exists in this run")
        os.makedirs(proc_dir(self.dir, name))
        spec = ChildSpec(name, role, self.dir, os.getpid(), 0, target, tuple(args), dict(kwargs),
                         self.log_level)
        process = self._mp.Process(target=child_main, args=(spec,), name=name, daemon=True)
        spec.launched_ns = time.monotonic_ns()
        process.start()
        handle = handle_class(self, name, role, process, spec.launched_ns)
        self.handles.append(handle)
        self._by_name[name] = handle
        with _OPEN_RUNS_LOCK:
            _OPEN_RUN_PIDS[id(self)].add(handle.pid)
        log.debug("started %s %s pid %d", role, name, handle.pid)
        return handle

    def start_clients(self, target: Behaviour, count: int, *args: Any, prefix: str = "client",
                      **kwargs: Any) -> List[ProcessHandle]:
        """Start ``count`` processes ``<prefix>1..<prefix>N`` running the same behaviour."""
        return [self.start_process(f"{prefix}{i}", target, *args, **kwargs)
                for i in range(1, count + 1)]

    def start_server(self, name: str = "server", *, port: int = 0, setup: Optional[ServerSetup] = None,
                     timeout: Optional[float] = None, **server_kwargs: Any) -> ServerHandle:
        """Start a server process and wait until it listens and wrote the port file.

        ``port=0`` binds any free port; ``server_kwargs`` go to :class:`~sente_lite.Server`;
        ``setup(server)`` (module-level) may register handlers before it starts. The
        process gets ``PROCESS_START_TIMEOUT_S`` to start its main, then ``timeout``
        (default ``SERVER_STARTUP_TIMEOUT_S``) to be ready.
        """
        kwargs = dict(server_kwargs, port=port)
        handle = self.start_process(name, serve, kwargs, setup, role="server",
                                    handle_class=ServerHandle)
        assert isinstance(handle, ServerHandle)
        handle.server_kwargs = kwargs
        handle.setup = setup
        self.wait_started(handle)
        ready = self.wait_mark(handle, "ready", self._clip(timeout, SERVER_STARTUP_TIMEOUT_S))
        info = ready[name]
        handle.port, handle.url, handle.server_id = info["port"], info["url"], info["server_id"]
        self._ports.add(handle.port)
        return handle

    def restart_server(self, old: ServerHandle, name: Optional[str] = None,
                       timeout: Optional[float] = None) -> ServerHandle:
        """Start a new server process on ``old``'s port, with its settings (``old`` must have ended).

        The new process gets ``name`` (default ``<old name>-2``, ``-3``, ...).
        """
        if old.is_alive():
            raise HarnessError(f"{old.name} (pid {old.pid}) still runs; kill or stop it first")
        if name is None:
            base = old.name.rsplit("-", 1)[0] if old.name.rsplit("-", 1)[-1].isdigit() else old.name
            n = 2
            while f"{base}-{n}" in self._by_name:
                n += 1
            name = f"{base}-{n}"
        kwargs = dict(old.server_kwargs)
        kwargs.pop("port", None)
        self.record_event("restart", old.name, new=name)
        return self.start_server(name, port=old.port, setup=old.setup, timeout=timeout, **kwargs)

    # -- talking to processes ------------------------------------------------------------
    def command(self, handles: Handles, name: str, **data: Any) -> Dict[str, int]:
        """Send command ``name`` with ``data`` to each process; returns each one's sequence number."""
        seqs: Dict[str, int] = {}
        for h in _as_list(handles):
            seq = self._next_command.get(h.name, 0) + 1
            self._next_command[h.name] = seq
            discovery.write_json(command_path(self.dir, h.name, seq),
                                 {"name": name, "data": data, "t_ns": time.monotonic_ns()})
            seqs[h.name] = seq
        return seqs

    def wait_started(self, handles: Handles, timeout: Optional[float] = None) -> Dict[str, int]:
        """Wait until each process's main started (default ``PROCESS_START_TIMEOUT_S``).

        Returns name -> ``time.monotonic_ns()`` at the start of its main.
        """
        marks = self.wait_mark(handles, STARTED_MARK, self._clip(timeout, PROCESS_START_TIMEOUT_S))
        return {name: m["t_ns"] for name, m in marks.items()}

    def wait_mark(self, handles: Handles, mark: str, timeout: Optional[float] = None,
                  accept: Optional[Callable[[Dict[str, Any]], bool]] = None,
                  ) -> Dict[str, Dict[str, Any]]:
        """Wait until every process wrote ``mark`` (that ``accept`` approves); name -> its data.

        Raises :class:`ProcessFailed` as soon as one of them ends without it, and
        :class:`HarnessTimeout` naming the missing ones after ``timeout``
        (default: the rest of the run's time).
        """
        def probe(h: ProcessHandle) -> Optional[Dict[str, Any]]:
            value = discovery.read_json(mark_path(self.dir, h.name, mark))
            return value if value is not None and (accept is None or accept(value)) else None

        return self._await(_as_list(handles), f"mark {mark!r}", probe, timeout)

    def request(self, handles: Handles, name: str, timeout: Optional[float] = None,
                **data: Any) -> Dict[str, Any]:
        """Send command ``name`` and wait for each process's reply; name -> reply value.

        The processes answer with :meth:`ProcessContext.serve_commands` (or
        :meth:`ProcessContext.reply`). A failed command raises :class:`HarnessError`
        with the error the process reported.
        """
        hs = _as_list(handles)
        seqs = self.command(hs, name, **data)
        values: Dict[str, Any] = {}
        for h in hs:
            reply = self.wait_mark(h, f"reply-{seqs[h.name]:04d}", timeout)[h.name]
            if not reply.get("ok"):
                raise CommandFailed(h.name,
                                    f"command {name!r} failed in {h.name}: {reply.get('error')}")
            values[h.name] = reply.get("value")
        return values

    def server_command(self, server: ServerHandle, name: str, timeout: Optional[float] = None,
                       **data: Any) -> Any:
        """Run a command in a server process (see :mod:`.server_process`); return its value."""
        return self.request(server, name, timeout, **data)[server.name]

    def stop_server(self, server: ServerHandle, timeout: Optional[float] = None) -> "ProcessResult":
        """Stop a server process cleanly; its result's value is the server's final stats."""
        self.command(server, "stop")
        return self.results(server, timeout)[server.name]

    def results(self, handles: Handles, timeout: Optional[float] = None,
                require_ok: bool = True) -> Dict[str, ProcessResult]:
        """Wait for each process's result file and for it to end; name -> :class:`ProcessResult`.

        With ``require_ok`` a process that failed (exception, or ended without a
        result) raises :class:`ProcessFailed` carrying its traceback. Without it,
        such a process yields a result with ``ok`` False.
        """
        hs = _as_list(handles)

        def probe(h: ProcessHandle) -> Optional[Dict[str, Any]]:
            return discovery.read_json(result_path(self.dir, h.name))

        if require_ok:
            raw = self._await(hs, "its result", probe, timeout)
        else:
            raw = {}
            for h in hs:
                try:
                    raw.update(self._await([h], "its result", probe, timeout))
                except ProcessFailed:
                    raw[h.name] = probe(h) or {}
        out: Dict[str, ProcessResult] = {}
        for h in hs:
            h.join(self._clip(None, CLEANUP_TIMEOUT_S))
            r = ProcessResult(h.name, raw[h.name], h.exitcode)
            if raw[h.name]:
                self.result_data[h.name] = raw[h.name]
            if require_ok and not r.ok:
                raise ProcessFailed(h.name, f"{h.name} failed: {r.error}\n{r.traceback or ''}".rstrip(),
                                    h.exitcode, r.traceback)
            out[h.name] = r
        return out

    def _await(self, handles: List[ProcessHandle], what: str,
               probe: Callable[[ProcessHandle], Optional[Dict[str, Any]]],
               timeout: Optional[float]) -> Dict[str, Dict[str, Any]]:
        pending = {h.name: h for h in handles}
        got: Dict[str, Dict[str, Any]] = {}

        def condition() -> Optional[Dict[str, Dict[str, Any]]]:
            for name, h in list(pending.items()):
                alive = h.is_alive()
                value = probe(h)
                if value is not None:
                    got[name] = value
                    del pending[name]
                elif not alive:
                    raise self._failure(h, what)
            return got if not pending else None

        limit = self._clip(timeout, self.remaining())
        try:
            return discovery.wait_for(condition, limit, what)
        except DiscoveryTimeout:
            names = ", ".join(f"{n}{self._state(n)}" for n in sorted(pending))
            cause = "the run's deadline" if timeout is None or limit < timeout else "the timeout"
            raise HarnessTimeout(f"timed out after {limit:.1f}s ({cause}) waiting for {what} "
                                 f"from {names}", sorted(pending)) from None

    def _state(self, name: str) -> str:
        """`` (main not started yet)`` when process ``name`` has not reached its main."""
        started = os.path.exists(mark_path(self.dir, name, STARTED_MARK))
        return "" if started else " (its main has not started yet)"

    def _failure(self, h: ProcessHandle, what: str) -> ProcessFailed:
        h.join(CLEANUP_TIMEOUT_S)
        data = discovery.read_json(result_path(self.dir, h.name))
        if data and data.get("traceback"):
            return ProcessFailed(h.name, f"{h.name} crashed before {what}: {data.get('error')}\n"
                                         f"{data['traceback']}".rstrip(), h.exitcode, data["traceback"])
        how = describe_exit(h.exitcode) if not data else "ended"
        return ProcessFailed(h.name, f"{h.name} {how} before {what}", h.exitcode)

    def log_tail(self, name: str, lines: int = 30) -> str:
        """The last ``lines`` lines of process ``name``'s log."""
        return tail(log_path(self.dir, name), lines)

    def log_errors(self, name: str) -> List[str]:
        """Lines of process ``name``'s log logged at ERROR/CRITICAL, or starting a traceback."""
        try:
            with open(log_path(self.dir, name), encoding="utf-8", errors="replace") as f:
                return [ln.rstrip("\n") for ln in f
                        if " ERROR " in ln or " CRITICAL " in ln or ln.startswith("Traceback")]
        except FileNotFoundError:
            return []

    # -- cleanup -------------------------------------------------------------------------
    def close(self, raise_on_leak: bool = True) -> List[str]:
        """End every child, check nothing survived, remove the run dir (unless ``keep``).

        Returns the leaks found (also in ``self.leaks``); raises :class:`LeakError`
        when there are some and ``raise_on_leak``.
        """
        if self.closed:
            return self.leaks
        self.closed = True
        deadline = time.monotonic() + CLEANUP_TIMEOUT_S
        try:
            live = [h for h in self.handles if h.process.exitcode is None]
            for h in live:
                if h.paused:
                    h.signal(signal.SIGKILL)
                else:
                    h.signal(signal.SIGTERM)
            grace_end = time.monotonic() + TERMINATE_GRACE_S
            for h in live:
                h.join(max(0.0, grace_end - time.monotonic()))
                if h.process.exitcode is None:
                    log.warning("%s (pid %d) ignored SIGTERM: SIGKILL", h.name, h.pid)
                    h.signal(signal.SIGKILL)
            for h in live:
                h.join(max(0.1, deadline - time.monotonic()))
            self._check_no_survivors()
            self._check_ports_free(deadline)
        finally:
            self.evidence = {"isolation": run_isolation(
                {h.name: (discovery.read_json(mark_path(self.dir, h.name, STARTED_MARK)) or {})
                 .get("isolation") or {} for h in self.handles}),
                "killed": killed_processes(self.events), "faults": injected_faults(self.events),
                "leaks": self.leaks}
            if self.trace_enabled:
                self._collect_trace()
            with _OPEN_RUNS_LOCK:
                _OPEN_RUN_PIDS.pop(id(self), None)
            if not self.keep:
                shutil.rmtree(self.dir, ignore_errors=True)
                if os.path.exists(self.dir):
                    self.leaks.append(f"run directory {self.dir} could not be removed")
        if self.leaks and raise_on_leak:
            raise LeakError("; ".join(self.leaks))
        if self.leaks:
            log.error("run %s leaked: %s", self.name, "; ".join(self.leaks))
        return self.leaks

    def _collect_trace(self) -> None:
        from .trace import collect_trace  # imported here: .trace reads this module's types

        try:
            self.trace = collect_trace(self)
        except Exception:  # noqa: BLE001 - a missing timeline must not hide the run's verdict
            log.exception("could not collect the timeline of run %s", self.name)
            self.trace = None

    def _check_no_survivors(self) -> None:
        with _OPEN_RUNS_LOCK:
            others = set().union(*(pids for key, pids in _OPEN_RUN_PIDS.items() if key != id(self)))
        survivors = [f"{p.name} (pid {p.pid})" for p in multiprocessing.active_children()
                     if p.pid not in others]
        ours = [f"{h.name} (pid {h.pid})" for h in self.handles if _is_child_of_us(h.pid)]
        left = sorted(set(survivors) | set(ours))
        if left:
            self.leaks.append(f"child processes still alive after cleanup: {', '.join(left)}")

    def _check_ports_free(self, deadline: float) -> None:
        for port in sorted(self._ports):
            try:
                discovery.wait_for(lambda: port_is_free(port), max(0.5, deadline - time.monotonic()),
                                   f"port {port} to be free")
            except DiscoveryTimeout:
                self.leaks.append(f"port {port} is still bound after cleanup")


__all__ = ["Run", "ProcessHandle", "ServerHandle", "ProcessResult", "describe_exit",
           "port_is_free", "tail"]

"""The child side: what runs inside every spawned process.

:func:`child_main` is the entry point of each process. It redirects fd 1/2 and
``logging`` to the process's log file, calls the behaviour
``target(ctx, *args, **kwargs)`` with a :class:`ProcessContext`, and writes a
result file: the behaviour's return value, or the traceback of the exception
that ended it, plus the process's :class:`History`, peak RSS and CPU time.
"""

from __future__ import annotations

import ctypes
import gc
import json
import logging
import os
import resource
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple, TypeVar

from .. import discovery
from ..client.client import ChannelMessage, Client
from ..errors import DiscoveryTimeout
from .evidence import process_isolation
from .common import (CLIENT_CONNECT_TIMEOUT_S, SCENARIO_TIMEOUT_S, SENT_NS_KEY,
                     SERVER_STARTUP_TIMEOUT_S, HarnessError, HarnessTimeout, command_path,
                     events_path, log_path, mark_path, port_file_path, result_path)

log = logging.getLogger("sente_lite.testing")

T = TypeVar("T")

#: The mark every process writes as its main starts (before the behaviour runs).
STARTED_MARK = "started"
#: Format of every child's log lines.
LOG_FORMAT = "%(asctime)s.%(msecs)03d %(processName)s[%(process)d] %(levelname)s %(name)s: %(message)s"


class Delivery(NamedTuple):
    """One channel message as a process received it.

    ``sent_ns`` is the publisher's ``time.monotonic_ns()`` taken from the data's
    ``sent_ns`` key (None when absent); ``recv_ns`` is when the handler ran.
    """

    channel: str
    offset: int
    epoch: str
    from_uid: Optional[str]
    data: Any
    sent_ns: Optional[int]
    recv_ns: int


#: Every this many recorded deliveries, :meth:`History.record_message` moves every
#: object of the process out of reach of the cyclic GC (``gc.freeze()``). A process
#: that keeps hundreds of thousands of deliveries otherwise pauses for a full
#: collection over all of them each time they grow by a quarter; processes that
#: record the same stream reach that point together, and on a small machine their
#: pauses line up into a stall of every process (measured: 150-250 ms in each of 20
#: clients at once, twice per run of scenario 05).
GC_FREEZE_EVERY = 4096


class History:
    """What one process saw, in order: channel deliveries and other events.

    Thread-safe. :meth:`record_message` is a ready-made channel handler.
    Events are dicts with at least ``kind`` and ``t_ns`` (``time.monotonic_ns()``,
    which is system-wide on Linux, so times of different processes compare).
    Recorded deliveries are kept for the life of the process (see
    :data:`GC_FREEZE_EVERY`). With ``journal`` (a file path) every event is also
    appended to that file as one JSON line when it is recorded, so the events of a
    process that is killed are not lost (deliveries are not journaled).
    """

    def __init__(self, journal: Optional[str] = None) -> None:
        self._lock = threading.Lock()
        self.journal = journal
        self._deliveries: List[Delivery] = []
        #: (message, recv_ns) recorded but not yet turned into a Delivery. Only
        #: appended to by record_message, only cut from the front by _settle.
        self._raw: List[Tuple[ChannelMessage, int]] = []
        self.events: List[Dict[str, Any]] = []
        self._per_channel: Dict[str, int] = {}

    def record_message(self, msg: ChannelMessage) -> None:
        """Record one channel delivery (use as ``client.subscribe(ch, history.record_message)``).

        Only stores the message and the time (one atomic ``list.append``, so a
        delivery costs the receiving process almost nothing); the Delivery is
        built when the history is next read."""
        raw = self._raw
        raw.append((msg, time.monotonic_ns()))
        if len(raw) % GC_FREEZE_EVERY == 0:
            gc.freeze()

    def _settle(self) -> None:
        """Turn recorded messages into Deliveries, in order. Caller holds ``_lock``."""
        raw = self._raw
        n = len(raw)
        if not n:
            return
        batch = raw[:n]
        del raw[:n]  # appends made meanwhile sit after index n and stay
        per_channel = self._per_channel
        append = self._deliveries.append
        for msg, recv_ns in batch:
            data = msg.data
            sent = data.get(SENT_NS_KEY) if isinstance(data, dict) else None
            append(Delivery(msg.channel_id, msg.offset, msg.epoch, msg.from_uid, data,
                            sent if isinstance(sent, int) else None, recv_ns))
            per_channel[msg.channel_id] = per_channel.get(msg.channel_id, 0) + 1

    @property
    def deliveries(self) -> List[Delivery]:
        """Every delivery recorded so far, in order (the history's own list)."""
        with self._lock:
            self._settle()
            return self._deliveries

    @deliveries.setter
    def deliveries(self, rows: List[Delivery]) -> None:
        with self._lock:
            self._raw.clear()
            self._deliveries = rows

    def record(self, kind: str, **fields: Any) -> Dict[str, Any]:
        """Record an event of ``kind`` now; returns it."""
        event = {"kind": kind, "t_ns": time.monotonic_ns(), **fields}
        with self._lock:
            self.events.append(event)
            if self.journal is not None:
                append_journal(self.journal, event)
        return event

    def count(self, channel: Optional[str] = None) -> int:
        """How many deliveries (on ``channel``, or on all channels) were recorded.

        Without ``channel`` this only counts, so polling it while messages still
        arrive costs nothing; with one, what was recorded is turned into
        Deliveries first (a burst of work in a process that received many)."""
        with self._lock:
            if channel is None:
                return len(self._deliveries) + len(self._raw)
            self._settle()
            return self._per_channel.get(channel, 0)

    def messages(self, channel: Optional[str] = None) -> List[Delivery]:
        """A copy of the deliveries (on ``channel``, or all)."""
        with self._lock:
            self._settle()
            return [d for d in self._deliveries if channel is None or d.channel == channel]

    def events_of(self, kind: str) -> List[Dict[str, Any]]:
        """A copy of the events of ``kind``."""
        with self._lock:
            return [e for e in self.events if e["kind"] == kind]

    def to_json(self) -> Dict[str, Any]:
        """The history as JSON-encodable data (deliveries as compact lists)."""
        with self._lock:
            self._settle()
            return {"deliveries": [list(d) for d in self._deliveries], "events": list(self.events)}

    @classmethod
    def from_json(cls, data: Optional[Dict[str, Any]]) -> "History":
        """Rebuild a history written by :meth:`to_json`."""
        h = cls()
        if data:
            h.deliveries = [Delivery(*row) for row in data.get("deliveries", ())]
            for d in h.deliveries:
                h._per_channel[d.channel] = h._per_channel.get(d.channel, 0) + 1
            h.events = list(data.get("events", ()))
        return h


def append_journal(path: str, event: Dict[str, Any]) -> None:
    """Append ``event`` to the JSON-lines journal at ``path`` (one write; never raises)."""
    try:
        line = json.dumps(event, default=str, separators=(",", ":")) + "\n"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line.encode("utf-8", "replace"))
        finally:
            os.close(fd)
    except (OSError, TypeError, ValueError) as exc:  # a journal is evidence, never a failure
        log.warning("cannot append to %s: %s", path, exc)


def read_journal(path: str) -> List[Dict[str, Any]]:
    """The events of a journal written by :func:`append_journal` (a torn last line is skipped)."""
    events: List[Dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    events.append(event)
    except FileNotFoundError:
        pass
    return events


class ProcessContext:
    """Handed to a behaviour: its name, its run directory, files, and its history.

    ``started_ns`` is ``time.monotonic_ns()`` at the start of the child's main,
    ``launched_ns`` when the parent started the process.
    """

    def __init__(self, name: str, role: str, run_dir: str, launched_ns: int, started_ns: int) -> None:
        self.name = name
        self.role = role
        self.run_dir = run_dir
        self.launched_ns = launched_ns
        self.started_ns = started_ns
        self.history = History(journal=events_path(run_dir, name))
        self.port_file = port_file_path(run_dir)
        self._next_command = 1

    # -- marks and commands ------------------------------------------------------
    def mark(self, mark: str, **data: Any) -> None:
        """Tell the parent this process reached ``mark`` (``t_ns`` is added to ``data``).

        Marks other than ``status`` and command replies are also journaled
        (``kind="mark"``) for the run's timeline.
        """
        t_ns = time.monotonic_ns()
        discovery.write_json(mark_path(self.run_dir, self.name, mark), {"t_ns": t_ns, **data})
        if mark != "status" and not mark.startswith("reply-"):
            append_journal(events_path(self.run_dir, self.name),
                           {"kind": "mark", "t_ns": t_ns, "mark": mark})

    def next_command(self, timeout: float = SCENARIO_TIMEOUT_S) -> Tuple[int, str, Dict[str, Any]]:
        """Wait for the next command from the parent: ``(seq, name, data)``."""
        seq = self._next_command
        try:
            cmd = discovery.wait_for_json(command_path(self.run_dir, self.name, seq), timeout)
        except DiscoveryTimeout:
            raise HarnessTimeout(f"{self.name}: no command #{seq} from the parent "
                                 f"within {timeout:.1f}s") from None
        self._next_command += 1
        return seq, cmd["name"], cmd.get("data") or {}

    def wait_command(self, name: str, timeout: float = SCENARIO_TIMEOUT_S) -> Dict[str, Any]:
        """Wait for the next command, which must be ``name``; return its data."""
        try:
            _, got, data = self.next_command(timeout)
        except HarnessTimeout:
            raise HarnessTimeout(f"{self.name}: command {name!r} did not come "
                                 f"within {timeout:.1f}s") from None
        if got != name:
            raise HarnessError(f"{self.name}: expected command {name!r}, got {got!r}")
        self.history.record("command", name=name)
        return data

    def reply(self, seq: int, ok: bool = True, value: Any = None, error: Optional[str] = None) -> None:
        """Answer command ``seq`` (what :meth:`Run.request` waits for)."""
        self.mark(f"reply-{seq:04d}", ok=ok, value=value, error=error)

    def serve_commands(self, handlers: Dict[str, Callable[[Dict[str, Any]], Any]],
                       stop: str = "finish", timeout: float = SCENARIO_TIMEOUT_S) -> int:
        """Execute commands in order until ``stop``; returns how many it handled (failed too).

        Each command ``name`` runs ``handlers[name](data)`` and is answered with
        :meth:`reply`: its return value, or (when it raised an ``Exception``, or
        the name is unknown) ``ok=False`` and the error with its traceback, so the
        parent sees why. ``timeout`` bounds the wait for each next command.
        """
        done = 0
        while True:
            seq, name, data = self.next_command(timeout)
            self.history.record("command", name=name)
            if name == stop:
                self.reply(seq)
                return done
            handler = handlers.get(name)
            try:
                if handler is None:
                    raise HarnessError(f"{self.name}: unknown command {name!r}; known: "
                                       f"{', '.join(sorted(handlers))}, {stop}")
                value = handler(data)
            except Exception as exc:  # noqa: BLE001 - reported to the parent in the reply
                log.warning("command %s failed", name, exc_info=True)
                self.reply(seq, ok=False,
                           error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}".rstrip())
            else:
                self.reply(seq, value=value)
            done += 1

    def wait_until(self, condition: Callable[[], Optional[T]], what: str,
                   timeout: float = SCENARIO_TIMEOUT_S) -> T:
        """Poll ``condition`` until it holds; :class:`HarnessTimeout` naming ``what`` if not."""
        try:
            return discovery.wait_for(condition, timeout, what)
        except DiscoveryTimeout:
            raise HarnessTimeout(f"{self.name}: timed out after {timeout:.1f}s "
                                 f"waiting for {what}") from None

    # -- connecting ----------------------------------------------------------------
    def server_address(self, timeout: float = SERVER_STARTUP_TIMEOUT_S,
                       not_server_id: Optional[str] = None) -> Dict[str, Any]:
        """Wait for the server's port file and return it (``host``, ``port``, ``url``, ...)."""
        t0 = time.monotonic_ns()
        try:
            info = discovery.read_port_file(self.port_file, timeout, not_server_id)
        except DiscoveryTimeout:
            raise HarnessTimeout(f"{self.name}: no port file {self.port_file} "
                                 f"within {timeout:.1f}s") from None
        self.history.record("port-file", port=info["port"], server_id=info["server-id"],
                            waited_ns=time.monotonic_ns() - t0)
        return info

    def connect(self, url: Optional[str] = None, *, timeout: float = CLIENT_CONNECT_TIMEOUT_S,
                **client_kwargs: Any) -> Client:
        """Connect a :class:`~sente_lite.Client` and wait for its handshake.

        ``url`` defaults to the one in the port file (awaited for up to
        ``SERVER_STARTUP_TIMEOUT_S``). Every status change is recorded in the
        history (``kind="status"``) and written as this process's ``status``
        mark. Raises :class:`HarnessTimeout` when not connected within ``timeout``.
        """
        if url is None:
            url = self.server_address()["url"]
        client = Client(url, start=False, **client_kwargs)
        changes = 0

        def on_status(status: str) -> None:
            nonlocal changes
            changes += 1
            event = self.history.record("status", status=status, server_id=client.server_id)
            self.mark("status", status=status, server_id=client.server_id, changes=changes,
                      at_ns=event["t_ns"])

        client.on_status(on_status)
        self.history.record("status", status=client.status, server_id=None)
        client.start()
        try:
            if not client.wait_connected(timeout):
                raise HarnessTimeout(f"{self.name}: not connected to {url} within {timeout:.1f}s "
                                     f"(status {client.status}, stats {client.stats()})")
        except BaseException:
            client.close()
            raise
        return client

    def subscribe(self, client: Client, channel: str,
                  timeout: float = CLIENT_CONNECT_TIMEOUT_S) -> Dict[str, Any]:
        """Subscribe ``client`` to ``channel``, recording every delivery; return the answer."""
        reply = client.subscribe(channel, self.history.record_message, timeout=timeout)
        self.history.record("subscribed", channel=channel, reply=reply)
        return reply or {}


def stamp(**fields: Any) -> Dict[str, Any]:
    """Message data carrying ``fields`` and the send time (``sent_ns``) for latency."""
    return {**fields, SENT_NS_KEY: time.monotonic_ns()}


@dataclass
class ChildSpec:
    """Everything a child needs, pickled by the parent (the target by reference)."""

    name: str
    role: str
    run_dir: str
    parent_pid: int
    launched_ns: int
    target: Callable[..., Any]
    args: Tuple[Any, ...] = ()
    kwargs: Dict[str, Any] = field(default_factory=dict)
    log_level: int = logging.INFO


def _die_with_parent(parent_pid: int) -> None:
    """Linux: ask for SIGKILL when the parent dies, so no child outlives its run."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_pdeathsig = 1
            if libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0) != 0:
                log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
        except (OSError, AttributeError) as exc:
            log.warning("cannot set PR_SET_PDEATHSIG: %s", exc)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(3)


def _redirect_output(path: str, level: int) -> None:
    """Send fd 1 and 2 (so print, warnings, C-level output) and logging to ``path``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace",  # noqa: SIM115
                      buffering=1, closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace",  # noqa: SIM115
                      buffering=1, closefd=False)
    logging.basicConfig(stream=sys.stderr, level=level, format=LOG_FORMAT,
                        datefmt="%H:%M:%S", force=True)


def _usage() -> Dict[str, Any]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"maxrss_kb": ru.ru_maxrss, "cpu_s": round(ru.ru_utime + ru.ru_stime, 3)}


def child_main(spec: ChildSpec) -> None:
    """Entry point of every harness process (runs in the spawned child)."""
    started_ns = time.monotonic_ns()
    isolation = process_isolation()  # before this process opens anything of its own
    _die_with_parent(spec.parent_pid)
    _redirect_output(log_path(spec.run_dir, spec.name), spec.log_level)
    discovery.write_json(mark_path(spec.run_dir, spec.name, STARTED_MARK),
                         {"t_ns": started_ns, "pid": os.getpid(), "isolation": isolation})
    journal = events_path(spec.run_dir, spec.name)
    append_journal(journal, {"kind": "started", "t_ns": started_ns, "pid": os.getpid()})
    log.info("%s %s started (pid %d, %.0f ms after launch)", spec.role, spec.name, os.getpid(),
             (started_ns - spec.launched_ns) / 1e6)
    ctx = ProcessContext(spec.name, spec.role, spec.run_dir, spec.launched_ns, started_ns)
    result: Dict[str, Any] = {"name": spec.name, "role": spec.role, "pid": os.getpid(),
                              "launched_ns": spec.launched_ns, "started_ns": started_ns}
    failed = False
    try:
        value = spec.target(ctx, *spec.args, **spec.kwargs)
        result.update(ok=True, value=value, error=None, traceback=None)
    except BaseException as exc:  # noqa: BLE001 - reported in the result file, then exit 1
        failed = True
        tb = traceback.format_exc()
        log.error("%s failed:\n%s", spec.name, tb)
        result.update(ok=False, value=None, error=f"{type(exc).__name__}: {exc}", traceback=tb)
    result.update(ended_ns=time.monotonic_ns(), history=ctx.history.to_json(), **_usage())
    append_journal(journal, {"kind": "ended", "t_ns": result["ended_ns"], "ok": not failed,
                             "error": result.get("error")})
    path = result_path(spec.run_dir, spec.name)
    try:
        discovery.write_json(path, result)
    except (TypeError, ValueError) as exc:  # the behaviour returned something not JSON-encodable
        failed = True
        tb = traceback.format_exc()
        log.error("%s: result is not JSON-encodable: %s", spec.name, exc)
        result.update(ok=False, value=None, history=None, traceback=tb,
                      error=f"result of {spec.name} is not JSON-encodable: {exc}")
        discovery.write_json(path, result)
    log.info("%s %s ended (%s)", spec.role, spec.name, "failed" if failed else "ok")
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    if failed:
        sys.exit(1)

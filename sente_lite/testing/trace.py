"""A run's timeline: what every process did and when, for the HTML report.

:func:`collect_trace` reads what a :class:`~sente_lite.testing.Run` recorded once
its processes have ended (``Run(trace=True)`` calls it from ``close()``, before the
run directory is removed) and returns plain JSON-encodable data:

* one entry per process (server and clients, in start order): pid, role, exit
  code, and its events on one time axis: ``launched`` (the parent started it),
  ``started`` (its main began), its marks (``ready``, ...), client ``status``
  changes, ``command``\\ s, ``subscribed``, the signals the parent sent it
  (``signal``: SIGKILL, SIGSTOP, SIGCONT, SIGTERM; ``by`` scenario or cleanup),
  ``restart`` (the parent started its successor), ``ended`` (its behaviour
  returned or raised) and ``exit``;
* per process, how many channel messages it received in each time bin;
* over all processes, publish-to-receive latency per time bin (p50, p99, max)
  and in total;
* the last lines of every process's log;
* ``collect_s``: the seconds this collection took (what the timeline cost the run).

Times are seconds since the run began (``t``). Events come from each process's
journal (``procs/<name>/events.jsonl``, appended as they happen, so a process
killed by SIGKILL still has its history up to the kill), from the parent's own
record (:attr:`Run.events`) and from the result files (deliveries).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

from .. import discovery
from .checks import percentile
from .child import read_journal
from .common import events_path, result_path

if TYPE_CHECKING:
    from .run import ProcessHandle, Run

#: Format version of the trace dict.
TRACE_VERSION = 1
#: Time bins of the delivery and latency series (the run's duration split evenly).
TIMELINE_BINS = 120
#: Events kept per process; beyond it ``command`` events are dropped first, and counted.
MAX_EVENTS_PER_PROCESS = 400
#: Lines of each process's log kept in the trace.
TRACE_LOG_LINES = 30
#: Characters kept of one string field of an event.
MAX_FIELD_CHARS = 200

#: Event kinds that are dropped first when a process has too many events.
_MINOR_KINDS = ("command", "port-file")
#: Index of ``sent_ns`` and ``recv_ns`` in a delivery row (see :class:`~.child.Delivery`).
_SENT, _RECV = 5, 6


def _small(event: Dict[str, Any]) -> Dict[str, Any]:
    """``event`` without ``t_ns`` and with only short scalar fields."""
    out: Dict[str, Any] = {}
    for k, v in event.items():
        if k == "t_ns":
            continue
        if isinstance(v, str):
            out[k] = v[:MAX_FIELD_CHARS]
        elif v is None or isinstance(v, (bool, int, float)):
            out[k] = v
    return out


def _cap(events: List[Dict[str, Any]]) -> "tuple[List[Dict[str, Any]], int]":
    if len(events) <= MAX_EVENTS_PER_PROCESS:
        return events, 0
    major = [e for e in events if e["kind"] not in _MINOR_KINDS]
    minor = [e for e in events if e["kind"] in _MINOR_KINDS]
    kept = major[:MAX_EVENTS_PER_PROCESS] + minor[:max(0, MAX_EVENTS_PER_PROCESS - len(major))]
    kept.sort(key=lambda e: e["t"])
    return kept, len(events) - len(kept)


def latency_bins(latencies: Sequence[Sequence[float]]) -> List[Optional[List[float]]]:
    """Per bin ``[p50, p99, max]`` of its latencies in ms (None for an empty bin)."""
    out: List[Optional[List[float]]] = []
    for values in latencies:
        if not values:
            out.append(None)
            continue
        ordered = sorted(values)
        out.append([round(percentile(ordered, 50), 3), round(percentile(ordered, 99), 3),
                    round(ordered[-1], 3)])
    return out


def _process(run: "Run", h: "ProcessHandle", rel: Any, bin_of: Any, lat_bins: List[List[float]],
             all_lat: List[float], end_ns: int) -> Dict[str, Any]:
    data = run.result_data.get(h.name) or discovery.read_json(result_path(run.dir, h.name)) or {}
    events: List[Dict[str, Any]] = [{"t": rel(h.launched_ns), "kind": "launched"}]
    for e in read_journal(events_path(run.dir, h.name)):
        if isinstance(e.get("t_ns"), int) and isinstance(e.get("kind"), str):
            events.append({"t": rel(e["t_ns"]), **_small(e)})
    signals = []
    for e in run.events:
        if e.get("process") == h.name:
            ev = {"t": rel(e["t_ns"]), **_small(e)}
            ev.pop("process", None)
            events.append(ev)
            if e["kind"] == "signal":
                signals.append(ev)
    exitcode = h.exitcode
    if exitcode is not None:
        from .run import describe_exit  # the same words as the runner's messages

        t_exit = h.exit_seen_ns or end_ns
        ended = [e for e in events if e["kind"] == "ended"]
        fatal = [s for s in signals if s.get("signal") in ("SIGKILL", "SIGTERM")]
        if exitcode < 0 and fatal:
            t = fatal[-1]["t"]
        elif ended:
            t = ended[-1]["t"]
        else:
            t = rel(t_exit)
        how = f"exit {exitcode}" if exitcode >= 0 else describe_exit(exitcode)
        events.append({"t": t, "kind": "exit", "exitcode": exitcode, "how": how})
    events.sort(key=lambda e: e["t"])
    events, dropped = _cap(events)

    rows = (data.get("history") or {}).get("deliveries") or ()
    counts = [0] * len(lat_bins)
    for row in rows:
        try:
            recv = row[_RECV]
            i = bin_of(recv)
            counts[i] += 1
            sent = row[_SENT]
            if isinstance(sent, int):
                ms = (recv - sent) / 1e6
                lat_bins[i].append(ms)
                all_lat.append(ms)
        except (IndexError, TypeError):
            continue
    return {"name": h.name, "role": h.role, "pid": h.pid, "exitcode": exitcode,
            "ok": data.get("ok") if data else None, "error": data.get("error") if data else None,
            "reported": bool(data), "events": events, "dropped_events": dropped,
            "deliveries": len(rows), "bins": counts if rows else None,
            "log_tail": run.log_tail(h.name, TRACE_LOG_LINES)}


def collect_trace(run: "Run") -> Dict[str, Any]:
    """The timeline of ``run`` (call it after its processes ended, before its directory goes)."""
    end_ns = time.monotonic_ns()
    t0 = run.t0_ns
    span_ns = max(1, end_ns - t0)
    bin_ns = span_ns / TIMELINE_BINS

    def rel(t_ns: int) -> float:
        return round((t_ns - t0) / 1e9, 4)

    def bin_of(t_ns: int) -> int:
        return min(TIMELINE_BINS - 1, max(0, int((t_ns - t0) / bin_ns)))

    lat_bins: List[List[float]] = [[] for _ in range(TIMELINE_BINS)]
    all_lat: List[float] = []
    processes = [_process(run, h, rel, bin_of, lat_bins, all_lat, end_ns) for h in run.handles]
    latency: Optional[Dict[str, Any]] = None
    if all_lat:
        all_lat.sort()
        latency = {"count": len(all_lat), "p50_ms": round(percentile(all_lat, 50), 3),
                   "p90_ms": round(percentile(all_lat, 90), 3),
                   "p99_ms": round(percentile(all_lat, 99), 3), "max_ms": round(all_lat[-1], 3),
                   "bins": latency_bins(lat_bins)}
    run_events = [{"t": rel(e["t_ns"]), **_small(e)} for e in run.events
                  if e.get("process") is None]
    return {"version": TRACE_VERSION, "run": run.name, "duration_s": rel(end_ns),
            "bins": TIMELINE_BINS, "bin_s": round(span_ns / TIMELINE_BINS / 1e9, 6),
            "processes": processes, "events": run_events, "latency": latency,
            "collect_s": round((time.monotonic_ns() - end_ns) / 1e9, 4)}


__all__ = ["collect_trace", "latency_bins", "TRACE_VERSION", "TIMELINE_BINS",
           "MAX_EVENTS_PER_PROCESS", "TRACE_LOG_LINES"]

"""The HTML report of scenario runs: summary, per-run timeline, latency, failing evidence.

:func:`write_html` writes one self-contained file (inline CSS and SVG, no script,
no external reference; a Content-Security-Policy forbids fetching anything) that
opens offline in any browser::

    python run_all_tests.py --html report.html          # every scenario
    python test_scripts/03_server_restart.py --html r.html

It holds the summary table (the runner's table, with links), with ``--repeat``
the pass rates and each run's latency, and per run:

* its checks, failed ones first and marked, and any error;
* a **timeline**: one lane per process (server and clients) on one time axis,
  coloured by client status (connecting, connected, reconnecting, closed) or
  server life, with start, ready, the signals the parent sent (kill, pause,
  resume, terminate), restarts and the exit code, a strip of the messages the
  process received per time bin, and a line across every lane at each fault the
  scenario injected; processes named by a failed check are highlighted;
* where there were deliveries, deliveries per second and latency (p50, p99, max,
  log scale) per time bin on the same axis, so a stall shows as a dip;
* the log tails of the processes a failed check names.

The plots are small SVG written here rather than by a plotting library: a
timeline is rectangles and ticks on one axis, which a library does not make
simpler, and the report then needs no dependency, no image files and nothing to
load. The data comes from :func:`sente_lite.testing.trace.collect_trace`.
"""

from __future__ import annotations

import datetime
import html
import math
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .scenario import KEY_FIGURES, current_name

#: Width of the SVG plots in CSS pixels.
PLOT_WIDTH = 1100
#: Width of the lane labels left of the time axis.
LABEL_WIDTH = 170
#: Height of one process lane.
LANE_HEIGHT = 30
#: Runs whose sections start open when there are more than this many (failed ones always do).
OPEN_SECTIONS_MAX = 12

_RIGHT = 24
_PW = PLOT_WIDTH - LABEL_WIDTH - _RIGHT

STATUS_COLOURS = {"connecting": "#e9a23b", "connected": "#2e9d4f", "reconnecting": "#d64541",
                  "closed": "#9e9e9e", "stopped": "#6d4c41"}
SERVING_COLOUR = "#3b7dd8"
RUNNING_COLOUR = "#7e8fa6"
PAUSED_COLOUR = "#8e44ad"
FAULT_COLOUR = "#c0392b"
RESTART_COLOUR = "#e67e22"
DELIVERY_COLOUR = "#17607a"

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
 margin:0 auto;max-width:1160px;padding:16px 20px;color:#1d2630;background:#fff}
h1{font-size:22px;margin:4px 0}h2{font-size:18px;margin:0 0 4px}h3{font-size:15px;margin:14px 0 4px}
table{border-collapse:collapse;margin:6px 0 12px}th,td{border:1px solid #d5dbe1;padding:3px 8px;
 text-align:left;vertical-align:top}th{background:#eef2f5}td.num{text-align:right}
.badge{display:inline-block;border-radius:3px;padding:0 7px;font-weight:600;font-size:13px;color:#fff}
.badge.pass{background:#2e9d4f}.badge.fail,.badge.crash,.badge.timeout,.badge.error{background:#c0392b}
section.run{border:1px solid #d5dbe1;border-radius:6px;margin:14px 0;padding:0 12px 10px}
section.run[data-outcome=pass]{border-left:6px solid #2e9d4f}
section.run:not([data-outcome=pass]){border-left:6px solid #c0392b}
section.run>details>summary{cursor:pointer;padding:10px 0;list-style-position:inside}
section.run>details>summary h2{display:inline}
.title{color:#4a5866;margin:2px 0 6px}.figures{color:#33414e;font-size:13px}
ul.checks{list-style:none;padding-left:0;margin:4px 0}
li.check{padding:2px 6px;margin:1px 0;border-radius:3px;font-size:13px}
li.check.fail{background:#fde2e2;border-left:4px solid #c0392b}
li.check.pass{color:#33414e}.mark{font-weight:700;margin-right:6px}
li.check.fail .mark{color:#c0392b}li.check.pass .mark{color:#2e9d4f}
.detail{color:#5b6875}.proc{font-family:ui-monospace,monospace;font-size:12px;
 background:#eef2f5;border-radius:3px;padding:0 4px;margin-left:4px}
pre{background:#f6f8fa;border:1px solid #d5dbe1;border-radius:4px;padding:6px 8px;overflow:auto;
 font-size:12px;line-height:1.35;max-height:420px;white-space:pre-wrap;word-break:break-all}
pre.error{background:#fdf1f1;border-color:#e8b4b4}
.legend{font-size:12px;color:#33414e;margin:2px 0 8px}.legend span.k{display:inline-block;
 width:14px;height:10px;margin:0 4px 0 12px;vertical-align:middle;border-radius:2px}
svg{display:block;font-family:system-ui,"DejaVu Sans",sans-serif}
svg text{font-size:11px;fill:#33414e}svg .lane-label{font-size:12px;fill:#1d2630}
svg .lane.highlight .lane-label{fill:#c0392b;font-weight:700}
svg .fault-label{font-size:10px;fill:#c0392b}svg .restart-label{font-size:10px;fill:#b35f12}
.muted{color:#6b7785}
.badge.not-measured{background:#8a96a3}table.criteria td.evidence{max-width:640px}
table.criteria .badge{white-space:nowrap}
"""

_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
        "base-uri 'none'; form-action 'none'")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def format_figure(value: Any) -> str:
    """A figure as the runner's text table shows it."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _ms(value: Optional[float]) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3g}" if value < 1000 else f"{value:.0f}"


def _anchor(run: Mapping[str, Any]) -> str:
    return "run-" + re.sub(r"[^A-Za-z0-9_.-]", "_", f"{run['scenario']}-{run.get('repeat', 1)}")


def run_entry(outcome: Mapping[str, Any], trace: Optional[Mapping[str, Any]] = None,
              repeat: Optional[int] = None) -> Dict[str, Any]:
    """One run for :func:`write_html`, from the runner's outcome or a scenario's JSON report.

    ``outcome`` has ``scenario``, ``outcome``, ``duration_s``, ``figures`` and
    either ``checks`` (a scenario's report) or ``failed_checks`` (the runner's);
    ``trace`` is what a scenario wrote with ``--trace`` (None when it wrote none).
    """
    entry: Dict[str, Any] = {
        "scenario": current_name(outcome.get("scenario", "?")),
        "repeat": repeat if repeat is not None else outcome.get("repeat", 1),
        "outcome": outcome.get("outcome") or ("pass" if outcome.get("passed") else "fail"),
        "duration_s": outcome.get("duration_s"), "figures": dict(outcome.get("figures") or {}),
        "error": outcome.get("error"), "failing_process": outcome.get("failing_process"),
        "log_tail": outcome.get("log_tail") or "", "exit_code": outcome.get("exit_code"),
        "trace": dict(trace) if trace else None}
    verdict = (trace or {}).get("verdict") or {}
    checks = outcome.get("checks") or verdict.get("checks")
    if checks is not None:
        entry["checks"] = [dict(c) for c in checks]
    else:
        entry["checks"] = [{"what": c, "ok": False, "detail": "", "process": None}
                           for c in outcome.get("failed_checks") or ()]
    entry["title"] = outcome.get("title") or verdict.get("title") or ""
    entry["notes"] = list(outcome.get("notes") or verdict.get("notes") or ())
    return entry


# -- tables --------------------------------------------------------------------------------

def _summary_table(runs: Sequence[Mapping[str, Any]], with_repeat: bool) -> str:
    heads = ["scenario"] + (["run"] if with_repeat else []) + \
        ["result", "duration s", "clients", "messages", "p99 ms", "recovery s", "other figures"]
    rows = []
    for r in runs:
        figs = r["figures"]
        others = ", ".join(f"{k}={format_figure(v)}" for k, v in figs.items() if k not in KEY_FIGURES)
        cells = [f'<td><a href="#{_anchor(r)}">{_e(r["scenario"])}</a></td>']
        if with_repeat:
            cells.append(f'<td class="num">{_e(r["repeat"])}</td>')
        cells.append(f'<td><span class="badge {_e(r["outcome"])}">{_e(r["outcome"].upper())}</span></td>')
        dur = r.get("duration_s")
        cells.append(f'<td class="num">{"-" if dur is None else f"{dur:.1f}"}</td>')
        cells += [f'<td class="num">{_e(format_figure(figs.get(k)))}</td>' for k in KEY_FIGURES]
        cells.append(f"<td>{_e(others)}</td>")
        rows.append(f'<tr data-outcome="{_e(r["outcome"])}">{"".join(cells)}</tr>')
    head = "".join(f"<th>{h}</th>" for h in heads)
    return f'<table class="summary"><tr>{head}</tr>{"".join(rows)}</table>'


def _span(values: List[float]) -> str:
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return format_figure(lo) if lo == hi else f"{format_figure(lo)}..{format_figure(hi)}"


def _pass_rate_table(runs: Sequence[Mapping[str, Any]]) -> str:
    by_name: Dict[str, List[Mapping[str, Any]]] = {}
    for r in runs:
        by_name.setdefault(r["scenario"], []).append(r)
    rows = []
    for name, rs in by_name.items():
        passed = sum(r["outcome"] == "pass" for r in rs)
        durs = sorted(r["duration_s"] or 0.0 for r in rs)
        p99 = [r["figures"]["p99_ms"] for r in rs if isinstance(r["figures"].get("p99_ms"), (int, float))]
        rec = [r["figures"]["recovery_s"] for r in rs
               if isinstance(r["figures"].get("recovery_s"), (int, float))]
        fails = ", ".join(sorted({r["outcome"] for r in rs if r["outcome"] != "pass"})) or "-"
        median = durs[len(durs) // 2] if len(durs) % 2 else (durs[len(durs) // 2 - 1] + durs[len(durs) // 2]) / 2
        rows.append(f"<tr><td>{_e(name)}</td><td class=num>{passed}/{len(rs)}</td>"
                    f"<td class=num>{100.0 * passed / len(rs):.0f}%</td><td class=num>{median:.1f}</td>"
                    f"<td class=num>{max(durs):.1f}</td><td class=num>{_e(_span(p99))}</td>"
                    f"<td class=num>{_e(_span(rec))}</td><td>{_e(fails)}</td></tr>")
    return ('<table class="passrate"><tr><th>scenario</th><th>passed</th><th>rate</th>'
            '<th>median s</th><th>max s</th><th>p99 ms</th><th>recovery s</th><th>failures</th></tr>'
            + "".join(rows) + "</table>")


def _criteria_table(criteria: Sequence[Mapping[str, str]]) -> str:
    rows = []
    for c in criteria:
        verdict = str(c.get("verdict", ""))
        cls = verdict.lower().replace(" ", "-")
        rows.append(f'<tr data-verdict="{_e(verdict)}"><td>{_e(c.get("name", ""))}</td>'
                    f'<td class="evidence">{_e(c.get("evidence", ""))}</td>'
                    f'<td><span class="badge {_e(cls)}">{_e(verdict)}</span></td></tr>')
    return ('<table class="criteria"><tr><th>criterion</th><th>evidence</th><th>verdict</th></tr>'
            + "".join(rows) + "</table>")


def _latency_runs_table(runs: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for r in runs:
        lat = ((r.get("trace") or {}).get("latency")) or {}
        rows.append(f'<tr><td><a href="#{_anchor(r)}">{_e(r["scenario"])}</a></td>'
                    f'<td class=num>{_e(r["repeat"])}</td>'
                    f'<td><span class="badge {_e(r["outcome"])}">{_e(r["outcome"].upper())}</span></td>'
                    f'<td class=num>{_e(lat.get("count", "-"))}</td>'
                    + "".join(f'<td class=num>{_ms(lat.get(k))}</td>'
                              for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")) + "</tr>")
    return ('<table class="latency-runs"><tr><th>scenario</th><th>run</th><th>result</th>'
            '<th>deliveries</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>max ms</th></tr>'
            + "".join(rows) + "</table>")


# -- timeline ------------------------------------------------------------------------------

def _ticks(duration: float) -> List[float]:
    for step in (0.05, 0.1, 0.2, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600):
        if duration / step <= 12:
            break
    n = int(duration / step + 1e-9)
    return [round(i * step, 3) for i in range(n + 1)]


class _Axis:
    def __init__(self, duration: float) -> None:
        self.duration = max(duration, 1e-3)

    def x(self, t: float) -> float:
        return round(LABEL_WIDTH + max(0.0, min(t, self.duration)) / self.duration * _PW, 2)


def _faults(trace: Mapping[str, Any]) -> List[Tuple[float, str, str]]:
    """(t, label, kind) of what the scenario did to its processes: signals and restarts."""
    out = []
    for p in trace.get("processes", ()):
        for e in p.get("events", ()):
            if e["kind"] == "signal" and e.get("by") == "scenario":
                verb = {"SIGKILL": "kill", "SIGSTOP": "pause", "SIGCONT": "resume",
                        "SIGTERM": "terminate"}.get(e.get("signal"), e.get("signal"))
                out.append((e["t"], f"{verb} {p['name']}", "fault"))
            elif e["kind"] == "restart":
                out.append((e["t"], f"restart {p['name']} as {e.get('new')}", "restart"))
    for e in trace.get("events", ()):
        out.append((e["t"], str(e.get("label") or e["kind"]), "fault"))
    return sorted(out)


def _fault_lines(axis: _Axis, faults: Sequence[Tuple[float, str, str]], top: float,
                 bottom: float, labels: bool) -> List[str]:
    parts = []
    last_x = -1e9
    row = 0
    for t, label, kind in faults:
        x = axis.x(t)
        colour = RESTART_COLOUR if kind == "restart" else FAULT_COLOUR
        parts.append(f'<line class="fault" x1="{x}" x2="{x}" y1="{top}" y2="{bottom}" stroke="{colour}" '
                     f'stroke-width="1.2" stroke-dasharray="4 3"><title>{_e(f"{t:.3f}s {label}")}'
                     f'</title></line>')
        if labels:
            row = row + 1 if x - last_x < 120 else 0
            last_x = x
            cls = "restart-label" if kind == "restart" else "fault-label"
            width = 5.6 * len(label)  # about 5.6 px per character at 10 px
            place = (f'x="{x - 3}" text-anchor="end"' if x + 3 + width > PLOT_WIDTH
                     else f'x="{x + 3}"')
            parts.append(f'<text class="{cls}" {place} y="{top - 4 - 11 * (row % 3)}">'
                         f'{_e(label)}</text>')
    return parts


def _marker(kind: str, x: float, y: float, colour: str, tip: str) -> str:
    t = f"<title>{_e(tip)}</title>"
    if kind == "circle":
        return f'<circle cx="{x}" cy="{y}" r="3.5" fill="#fff" stroke="{colour}" stroke-width="1.6">{t}</circle>'
    if kind == "triangle":
        return (f'<path d="M{x - 4},{y + 4}L{x + 4},{y + 4}L{x},{y - 4}Z" fill="{colour}" '
                f'stroke="#fff" stroke-width="0.8">{t}</path>')
    if kind == "diamond":
        return f'<path d="M{x},{y - 4}L{x + 4},{y}L{x},{y + 4}L{x - 4},{y}Z" fill="{colour}">{t}</path>'
    if kind == "cross":
        return (f'<g stroke="{colour}" stroke-width="2.6" stroke-linecap="round">{t}'
                f'<line x1="{x - 5}" y1="{y - 5}" x2="{x + 5}" y2="{y + 5}"/>'
                f'<line x1="{x - 5}" y1="{y + 5}" x2="{x + 5}" y2="{y - 5}"/></g>')
    if kind == "pause":
        return (f'<g fill="{colour}">{t}<rect x="{x - 4}" y="{y - 5}" width="3" height="10"/>'
                f'<rect x="{x + 1}" y="{y - 5}" width="3" height="10"/></g>')
    if kind == "play":
        return f'<path d="M{x - 3},{y - 5}L{x + 5},{y}L{x - 3},{y + 5}Z" fill="{colour}">{t}</path>'
    if kind == "square":
        return (f'<rect x="{x - 4}" y="{y - 4}" width="8" height="8" fill="{colour}" stroke="#fff" '
                f'stroke-width="0.8">{t}</rect>')
    if kind == "tick":
        return f'<line x1="{x}" x2="{x}" y1="{y - 4}" y2="{y + 4}" stroke="{colour}" stroke-width="1">{t}</line>'
    return ""


def _segments(p: Mapping[str, Any], end: float) -> List[Tuple[float, float, str, str]]:
    """(from, to, colour, label) of the coloured spans of a lane."""
    events = p.get("events", ())
    exit_t = next((e["t"] for e in events if e["kind"] == "exit"), end)
    spans: List[Tuple[float, float, str, str]] = []
    statuses = [e for e in events if e["kind"] == "status"]
    if statuses:
        for e, nxt in zip(statuses, statuses[1:] + [None]):
            stop = exit_t if nxt is None else nxt["t"]
            status = str(e.get("status"))
            spans.append((e["t"], stop, STATUS_COLOURS.get(status, RUNNING_COLOUR), status))
    elif p.get("role") == "server":
        ready = next((e["t"] for e in events if e["kind"] == "mark" and e.get("mark") == "ready"), None)
        start = next((e["t"] for e in events if e["kind"] == "started"), None)
        if start is not None:
            spans.append((start, ready if ready is not None else exit_t, RUNNING_COLOUR, "starting"))
        if ready is not None:
            ended = next((e["t"] for e in events if e["kind"] == "ended"), exit_t)
            spans.append((ready, ended, SERVING_COLOUR, "serving"))
    else:
        start = next((e["t"] for e in events if e["kind"] == "started"), None)
        if start is not None:
            ended = next((e["t"] for e in events if e["kind"] == "ended"), exit_t)
            spans.append((start, ended, RUNNING_COLOUR, "running"))
    return spans


def _paused(p: Mapping[str, Any], end: float) -> List[Tuple[float, float]]:
    out, since = [], None
    for e in p.get("events", ()):
        if e["kind"] == "signal" and e.get("signal") == "SIGSTOP" and since is None:
            since = e["t"]
        elif since is not None and (e["kind"] == "exit" or
                                    (e["kind"] == "signal" and e.get("signal") in ("SIGCONT", "SIGKILL"))):
            out.append((since, e["t"]))
            since = None
    if since is not None:
        out.append((since, end))
    return out


def _event_marker(p: Mapping[str, Any], e: Mapping[str, Any], x: float, y: float) -> str:
    kind, name, t = e["kind"], p["name"], e["t"]
    tip = f"{t:.3f}s {name}: "
    if kind == "launched":
        return _marker("tick", x, y, "#5b6875", tip + "launched by the parent")
    if kind == "started":
        return _marker("circle", x, y, "#5b6875", tip + f"main started (pid {e.get('pid', p.get('pid'))})")
    if kind == "mark":
        m = e.get("mark")
        return _marker("triangle" if m == "ready" else "diamond", x, y,
                       "#1d6fa5" if m == "ready" else "#5b6875", tip + f"mark {m}")
    if kind == "signal":
        sig, by = e.get("signal"), e.get("by")
        shape, colour = {"SIGKILL": ("cross", FAULT_COLOUR), "SIGTERM": ("cross", "#7b241c"),
                         "SIGSTOP": ("pause", PAUSED_COLOUR),
                         "SIGCONT": ("play", PAUSED_COLOUR)}.get(sig, ("tick", FAULT_COLOUR))
        return _marker(shape, x, y, colour, tip + f"{sig} sent by the {by}")
    if kind == "restart":
        return _marker("diamond", x, y, RESTART_COLOUR, tip + f"restarted as {e.get('new')}")
    if kind == "exit":
        code = e.get("exitcode")
        return _marker("square", x, y, "#2e9d4f" if code == 0 else FAULT_COLOUR, tip + str(e.get("how")))
    if kind == "ended":
        ok = e.get("ok")
        return _marker("tick", x, y, "#2e9d4f" if ok else FAULT_COLOUR,
                       tip + ("behaviour returned" if ok else f"behaviour failed: {e.get('error')}"))
    if kind == "command":
        return _marker("tick", x, y + 8, "#8795a1", tip + f"command {e.get('name')}")
    if kind == "subscribed":
        return _marker("diamond", x, y, "#17607a", tip + f"subscribed to {e.get('channel')}")
    return ""


def timeline_svg(trace: Mapping[str, Any], highlight: Iterable[str] = ()) -> str:
    """The timeline of one run: one lane per process (a ``<g class="lane">`` each)."""
    marked = set(highlight)
    procs = list(trace.get("processes", ()))
    duration = float(trace.get("duration_s") or 0.0)
    axis = _Axis(duration)
    faults = _faults(trace)
    top = 52.0
    height = top + LANE_HEIGHT * len(procs) + 26
    bottom = top + LANE_HEIGHT * len(procs)
    parts = [f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{PLOT_WIDTH}" '
             f'height="{height:.0f}" viewBox="0 0 {PLOT_WIDTH} {height:.0f}" role="img" '
             f'aria-label="timeline of {_e(trace.get("run", "the run"))}">',
             '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
             f'patternTransform="rotate(45)"><rect width="3" height="6" fill="{PAUSED_COLOUR}" '
             'opacity="0.55"/></pattern></defs>']
    for t in _ticks(axis.duration):
        x = axis.x(t)
        parts.append(f'<line x1="{x}" x2="{x}" y1="{top}" y2="{bottom}" stroke="#e3e8ec"/>'
                     f'<text x="{x}" y="{bottom + 16}" text-anchor="middle">{t:g}s</text>')
    max_bin = max([max(p["bins"]) for p in procs if p.get("bins")] or [0])
    bin_w = _PW / max(1, int(trace.get("bins") or 1))
    for i, p in enumerate(procs):
        y0 = top + i * LANE_HEIGHT
        mid = y0 + LANE_HEIGHT / 2 - 2
        hl = p["name"] in marked
        cls = "lane highlight" if hl else "lane"
        parts.append(f'<g class="{cls}" data-process="{_e(p["name"])}" data-role="{_e(p.get("role"))}"'
                     f' data-highlight="{"true" if hl else "false"}">')
        bg = "#fde2e2" if hl else ("#f7f9fa" if i % 2 else "#ffffff")
        parts.append(f'<rect x="0" y="{y0}" width="{PLOT_WIDTH}" height="{LANE_HEIGHT}" fill="{bg}"/>')
        sub = f'{p.get("role")} pid {p.get("pid")}' + (" \u00b7 failed check" if hl else "")
        parts.append(f'<text class="lane-label" x="6" y="{mid + 1}">{_e(p["name"])}</text>'
                     f'<text x="6" y="{mid + 13}" style="font-size:10px;fill:'
                     f'{"#c0392b" if hl else "#6b7785"}">{_e(sub)}</text>')
        events = p.get("events", ())
        launched = next((e["t"] for e in events if e["kind"] == "launched"), 0.0)
        exit_t = next((e["t"] for e in events if e["kind"] == "exit"), duration)
        parts.append(f'<line x1="{axis.x(launched)}" x2="{axis.x(exit_t)}" y1="{mid}" y2="{mid}" '
                     'stroke="#b7c0c8" stroke-width="2"/>')
        for start, stop, colour, what in _segments(p, duration):
            x1, x2 = axis.x(start), axis.x(stop)
            parts.append(f'<rect class="span" x="{x1}" y="{mid - 5}" width="{max(1.0, x2 - x1):.2f}" '
                         f'height="10" fill="{colour}" rx="2"><title>{_e(p["name"])}: {_e(what)} '
                         f'{start:.3f}s to {stop:.3f}s</title></rect>')
        for start, stop in _paused(p, duration):
            x1, x2 = axis.x(start), axis.x(stop)
            parts.append(f'<rect class="paused" x="{x1}" y="{mid - 8}" width="{max(1.0, x2 - x1):.2f}" '
                         f'height="16" fill="url(#hatch)" stroke="{PAUSED_COLOUR}" stroke-width="0.8">'
                         f'<title>{_e(p["name"])} paused (SIGSTOP) {start:.3f}s to {stop:.3f}s</title></rect>')
        if p.get("bins") and max_bin:
            for b, n in enumerate(p["bins"]):
                if n:
                    op = 0.4 + 0.6 * n / max_bin
                    parts.append(f'<rect x="{LABEL_WIDTH + b * bin_w:.2f}" y="{mid + 7}" '
                                 f'width="{bin_w:.2f}" height="4" fill="{DELIVERY_COLOUR}" '
                                 f'opacity="{op:.2f}"><title>{n} messages received</title></rect>')
        for e in events:
            parts.append(_event_marker(p, e, axis.x(e["t"]), mid))
        if p.get("dropped_events"):
            parts.append(f'<text x="{PLOT_WIDTH - 4}" y="{mid + 13}" text-anchor="end" '
                         f'style="font-size:10px">{p["dropped_events"]} events not shown</text>')
        parts.append("</g>")
    parts += _fault_lines(axis, faults, top, bottom, labels=True)
    parts.append("</svg>")
    return "".join(parts)


_LEGEND = "".join(
    f'<span class="k" style="background:{c}"></span>{_e(w)}' for w, c in
    [("connecting", STATUS_COLOURS["connecting"]), ("connected", STATUS_COLOURS["connected"]),
     ("reconnecting", STATUS_COLOURS["reconnecting"]), ("closed", STATUS_COLOURS["closed"]),
     ("server serving", SERVING_COLOUR), ("starting / running", RUNNING_COLOUR),
     ("paused (SIGSTOP)", PAUSED_COLOUR), ("messages received", DELIVERY_COLOUR)])
_LEGEND += (" &nbsp; markers: \u25cb main started, \u25b2 ready, \u2716 killed (SIGKILL/SIGTERM), "
            "\u275a\u275a paused, \u25b6 resumed, \u25a0 exit (green 0, red otherwise), "
            "dashed lines: faults the scenario injected. Hover for times.")


# -- latency ---------------------------------------------------------------------------------

def latency_svg(trace: Mapping[str, Any]) -> str:
    """Deliveries per second and latency (p50, p99, max; log scale) per time bin."""
    lat = trace.get("latency")
    procs = trace.get("processes", ())
    nbins = int(trace.get("bins") or 0)
    if not nbins:
        return ""
    counts = [0] * nbins
    for p in procs:
        for i, n in enumerate(p.get("bins") or ()):
            counts[i] += n
    if not any(counts):
        return ""
    bin_s = float(trace.get("bin_s") or 1.0)
    axis = _Axis(float(trace.get("duration_s") or 0.0))
    faults = _faults(trace)
    bw = _PW / nbins
    rate_top, rate_h = 14.0, 80.0
    lat_top, lat_h = rate_top + rate_h + 30, 130.0
    height = lat_top + lat_h + 26
    parts = [f'<svg class="latency" xmlns="http://www.w3.org/2000/svg" width="{PLOT_WIDTH}" '
             f'height="{height:.0f}" viewBox="0 0 {PLOT_WIDTH} {height:.0f}" role="img" '
             'aria-label="deliveries per second and latency over time">']
    rates = [n / bin_s for n in counts]
    peak = max(rates)
    parts.append(f'<text x="6" y="{rate_top + 10}">deliveries/s</text>'
                 f'<text x="{LABEL_WIDTH - 6}" y="{rate_top + 10}" text-anchor="end">{peak:.0f}</text>'
                 f'<text x="{LABEL_WIDTH - 6}" y="{rate_top + rate_h}" text-anchor="end">0</text>'
                 f'<line x1="{LABEL_WIDTH}" x2="{LABEL_WIDTH + _PW}" y1="{rate_top + rate_h}" '
                 f'y2="{rate_top + rate_h}" stroke="#b7c0c8"/>')
    for i, r in enumerate(rates):
        if r:
            h = rate_h * r / peak
            parts.append(f'<rect class="rate" x="{LABEL_WIDTH + i * bw:.2f}" y="{rate_top + rate_h - h:.2f}" '
                         f'width="{max(0.5, bw - 0.6):.2f}" height="{h:.2f}" fill="{DELIVERY_COLOUR}">'
                         f'<title>{i * bin_s:.2f}-{(i + 1) * bin_s:.2f}s: {counts[i]} deliveries '
                         f'({r:.0f}/s)</title></rect>')
    bins = (lat or {}).get("bins") or []
    values = [v for b in bins if b for v in b if v and v > 0]
    if values:
        lo = 10 ** math.floor(math.log10(min(values)))
        hi = 10 ** math.ceil(math.log10(max(values)))
        if hi <= lo:
            hi = lo * 10

        def y(ms: float) -> float:
            ms = max(ms, lo)
            return round(lat_top + lat_h - (math.log10(ms) - math.log10(lo)) /
                         (math.log10(hi) - math.log10(lo)) * lat_h, 2)

        parts.append(f'<text x="6" y="{lat_top + 10}">latency ms (log)</text>')
        d = lo
        while d <= hi * 1.0001:
            parts.append(f'<line x1="{LABEL_WIDTH}" x2="{LABEL_WIDTH + _PW}" y1="{y(d)}" y2="{y(d)}" '
                         f'stroke="#e3e8ec"/><text x="{LABEL_WIDTH - 6}" y="{y(d) + 4}" '
                         f'text-anchor="end">{d:g}</text>')
            d *= 10
        for idx, colour, name in ((2, "#c0392b", "max"), (1, "#e67e22", "p99"), (0, "#1d6fa5", "p50")):
            runs: List[List[str]] = [[]]
            for i, b in enumerate(bins):
                if b:
                    runs[-1].append(f"{LABEL_WIDTH + (i + 0.5) * bw:.2f},{y(b[idx])}")
                elif runs[-1]:
                    runs.append([])
            for pts in runs:
                if len(pts) > 1:
                    parts.append(f'<polyline class="lat-{name}" points="{" ".join(pts)}" fill="none" '
                                 f'stroke="{colour}" stroke-width="1.6"/>')
                for pt in pts:
                    cx, cy = pt.split(",")
                    parts.append(f'<circle cx="{cx}" cy="{cy}" r="1.8" fill="{colour}"/>')
        for i, b in enumerate(bins):
            if b:
                parts.append(f'<rect x="{LABEL_WIDTH + i * bw:.2f}" y="{lat_top}" width="{bw:.2f}" '
                             f'height="{lat_h}" fill="transparent"><title>{i * bin_s:.2f}-'
                             f'{(i + 1) * bin_s:.2f}s: p50 {_ms(b[0])} ms, p99 {_ms(b[1])} ms, '
                             f'max {_ms(b[2])} ms</title></rect>')
        lx = LABEL_WIDTH + _PW - 190
        for k, (colour, name) in enumerate((("#1d6fa5", "p50"), ("#e67e22", "p99"), ("#c0392b", "max"))):
            parts.append(f'<line x1="{lx + k * 62}" x2="{lx + k * 62 + 18}" y1="{lat_top - 8}" '
                         f'y2="{lat_top - 8}" stroke="{colour}" stroke-width="2.5"/>'
                         f'<text x="{lx + k * 62 + 22}" y="{lat_top - 4}">{name}</text>')
    for t in _ticks(axis.duration):
        x = axis.x(t)
        parts.append(f'<text x="{x}" y="{height - 6}" text-anchor="middle">{t:g}s</text>')
    parts += _fault_lines(axis, faults, rate_top, lat_top + lat_h, labels=False)
    parts.append("</svg>")
    return "".join(parts)


# -- sections --------------------------------------------------------------------------------

def _highlighted(run: Mapping[str, Any]) -> List[str]:
    names = [c["process"] for c in run.get("checks", ()) if not c.get("ok") and c.get("process")]
    if run["outcome"] != "pass" and run.get("failing_process"):
        names.append(run["failing_process"])
    return list(dict.fromkeys(names))


def _checks_html(run: Mapping[str, Any]) -> str:
    def item(c: Mapping[str, Any]) -> str:
        ok = bool(c.get("ok"))
        proc = f'<span class="proc">{_e(c["process"])}</span>' if c.get("process") else ""
        detail = f' <span class="detail">({_e(c["detail"])})</span>' if c.get("detail") else ""
        attr = f' data-process="{_e(c["process"])}"' if c.get("process") else ""
        return (f'<li class="check {"pass" if ok else "fail"}"{attr}><span class="mark">'
                f'{"PASS" if ok else "FAIL"}</span>{_e(c.get("what", ""))}{proc}{detail}</li>')

    checks = run.get("checks", ())
    failed = [c for c in checks if not c.get("ok")]
    passed = [c for c in checks if c.get("ok")]
    out = []
    if failed:
        out.append(f'<h3>Failed checks ({len(failed)})</h3><ul class="checks failed">'
                   + "".join(item(c) for c in failed) + "</ul>")
    if passed:
        out.append(f'<details class="passed-checks"><summary>{len(passed)} checks passed</summary>'
                   f'<ul class="checks">' + "".join(item(c) for c in passed) + "</ul></details>")
    return "".join(out)


def _section(run: Mapping[str, Any], open_: bool) -> str:
    trace = run.get("trace")
    outcome = run["outcome"]
    dur = run.get("duration_s")
    figs = ", ".join(f"{k}={format_figure(v)}" for k, v in run["figures"].items())
    label = f"{run['scenario']}" + (f" run {run['repeat']}" if run.get("show_repeat") else "")
    body = [f'<p class="title">{_e(run.get("title") or "")}</p>' if run.get("title") else "",
            f'<p class="figures">{"" if dur is None else f"{dur:.1f} s"}'
            f'{" &middot; " + _e(figs) if figs else ""}</p>']
    if run.get("error"):
        body.append(f'<h3>Error</h3><pre class="error">{_e(run["error"])}</pre>')
    body.append(_checks_html(run))
    body += [f'<p class="muted">note: {_e(n)}</p>' for n in run.get("notes", ())]
    marked = _highlighted(run)
    tails: Dict[str, str] = {}
    if trace and trace.get("processes"):
        n = len(trace["processes"])
        body.append(f'<h3>Timeline ({n} processes, {float(trace.get("duration_s") or 0):.2f} s)</h3>')
        body.append(timeline_svg(trace, marked))
        body.append(f'<div class="legend">{_LEGEND}</div>')
        lsvg = latency_svg(trace)
        if lsvg:
            lat = trace.get("latency") or {}
            summary = (f'{lat.get("count", 0)} timed deliveries: p50 {_ms(lat.get("p50_ms"))} ms, '
                       f'p90 {_ms(lat.get("p90_ms"))} ms, p99 {_ms(lat.get("p99_ms"))} ms, '
                       f'max {_ms(lat.get("max_ms"))} ms' if lat else "no timed deliveries")
            body.append(f'<h3>Deliveries and latency</h3><p class="figures">{_e(summary)} '
                        f'(bins of {float(trace.get("bin_s") or 0):.3g} s)</p>{lsvg}')
        tails = {p["name"]: p.get("log_tail") or "" for p in trace["processes"]}
    else:
        body.append('<p class="muted">No timeline: the scenario wrote no trace '
                    '(it ended before its report, or does not use run_scenario).</p>')
    if outcome != "pass":
        shown = [n for n in marked if tails.get(n)]
        if shown:
            body.append("<h3>Logs of the processes named by the failure</h3>")
            for name in shown:
                body.append(f'<details class="log" data-process="{_e(name)}" open><summary>tail of '
                            f'{_e(name)}\'s log</summary><pre>{_e(tails[name])}</pre></details>')
        elif run.get("log_tail"):
            who = f"{run['failing_process']}'s log" if run.get("failing_process") else "output"
            body.append(f'<h3>Tail of {_e(who)}</h3><pre>{_e(run["log_tail"])}</pre>')
        others = [n for n in tails if n not in shown and tails[n]]
        if others:
            body.append('<details class="other-logs"><summary>other processes\' logs</summary>'
                        + "".join(f"<h3>{_e(n)}</h3><pre>{_e(tails[n])}</pre>" for n in others)
                        + "</details>")
    head = (f'<summary><h2>{_e(label)} <span class="badge {_e(outcome)}">{_e(outcome.upper())}'
            f'</span></h2></summary>')
    return (f'<section class="run" id="{_anchor(run)}" data-scenario="{_e(run["scenario"])}" '
            f'data-outcome="{_e(outcome)}"><details{" open" if open_ else ""}>{head}'
            + "".join(body) + "</details></section>")


def render_html(runs: Sequence[Mapping[str, Any]], title: str = "sente_lite scenario runs",
                criteria: Optional[Sequence[Mapping[str, str]]] = None) -> str:
    """The report of ``runs`` (entries made by :func:`run_entry`) as one HTML document,
    with the success ``criteria`` (rows of :func:`sente_lite.testing.criteria.as_json`)."""
    runs = [dict(r) for r in runs]
    repeats = max([int(r.get("repeat") or 1) for r in runs] or [1])
    for r in runs:
        r["show_repeat"] = repeats > 1
    passed = sum(r["outcome"] == "pass" for r in runs)
    ok = bool(runs) and passed == len(runs)
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{_e(title)}: {'PASS' if ok else 'FAIL'}</title><style>{_CSS}</style></head><body>",
           f'<header><h1>{_e(title)} <span class="badge {"pass" if ok else "fail"}">'
           f'{"PASS" if ok else "FAIL"}</span></h1><p class="muted">{passed}/{len(runs)} runs passed'
           f' &middot; written {_e(stamp)}</p></header>',
           '<section id="summary"><h2>Summary</h2>', _summary_table(runs, repeats > 1)]
    if criteria:
        out += ["<h2>Success criteria</h2>", _criteria_table(criteria)]
    if repeats > 1:
        out += ["<h2>Pass rate</h2>", _pass_rate_table(runs),
                "<h2>Latency per run</h2>", _latency_runs_table(runs)]
    out.append("</section>")
    many = len(runs) > OPEN_SECTIONS_MAX
    for r in runs:
        out.append(_section(r, open_=r["outcome"] != "pass" or not many))
    out.append("</body></html>\n")
    return "\n".join(out)


def write_html(path: str, runs: Sequence[Mapping[str, Any]], title: str = "sente_lite scenario runs",
               criteria: Optional[Sequence[Mapping[str, str]]] = None) -> None:
    """Write the report of ``runs`` (see :func:`run_entry`) and ``criteria`` to ``path``."""
    text = render_html(runs, title, criteria)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


__all__ = ["write_html", "render_html", "run_entry", "timeline_svg", "latency_svg",
           "PLOT_WIDTH", "LABEL_WIDTH", "LANE_HEIGHT", "OPEN_SECTIONS_MAX"]

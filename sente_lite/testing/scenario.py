"""A scenario script's frame: command line, report, JSON output, exit code.

A scenario is a function ``story(run, report)`` that starts processes through
``run`` (a :class:`~sente_lite.testing.Run`), drives them, collects their results
and judges them with ``report.check(...)``. :func:`run_scenario` parses the
command line, runs the story, always cleans up (a leak is a failed check), prints
a short report and returns the exit code (0 only when every check passed).

Command line of every scenario script::

    python test_scripts/NN_name.py [--json PATH] [--html PATH] [--trace PATH]
                                   [--keep | --keep-failed] [--run-root DIR] [--debug]

``--html`` writes a self-contained HTML report of the run (timeline of every
process, latency, failing evidence: see :mod:`sente_lite.testing.report`);
``--trace`` writes the same data as JSON, which ``run_all_tests.py --html`` reads
(it names the file in the environment variable ``SENTE_LITE_TRACE``, :data:`TRACE_ENV`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

from .common import SCENARIO_TIMEOUT_S, CommandFailed, HarnessTimeout, ProcessFailed
from .run import Run

#: Environment variable naming a file to write the run's trace to (as ``--trace`` does).
TRACE_ENV = "SENTE_LITE_TRACE"
#: Lines of a failing process's log kept in the report.
LOG_TAIL_LINES = 30

#: Names of the figures every runner shows in its own column (others go under "details").
FIG_CLIENTS = "clients"
FIG_MESSAGES = "messages"
FIG_P99_MS = "p99_ms"
FIG_RECOVERY_S = "recovery_s"
KEY_FIGURES = (FIG_CLIENTS, FIG_MESSAGES, FIG_P99_MS, FIG_RECOVERY_S)

#: Scenarios renamed, old name -> new name: reports of runs made before a rename (JSON a
#: runner or scenario wrote) are read under the new name.
RENAMED_SCENARIOS = {"10_redis_cluster": "10_two_servers_one_redis"}

Story = Callable[[Run, "Report"], None]


def current_name(scenario: str) -> str:
    """``scenario``'s name today (:data:`RENAMED_SCENARIOS` maps old names)."""
    return RENAMED_SCENARIOS.get(scenario, scenario)


@dataclass
class Check:
    """One verdict of a checker."""

    what: str
    ok: bool
    detail: str = ""
    process: Optional[str] = None


class Report:
    """What a scenario found: checks, figures, notes, and (on failure) an error and a log tail."""

    def __init__(self, scenario: str, title: str, echo: bool = True) -> None:
        self.scenario = scenario
        self.title = title
        self.echo = echo
        self.checks: List[Check] = []
        self.figures: Dict[str, Any] = {}
        self.notes: List[str] = []
        self.error: Optional[str] = None
        self.error_kind: Optional[str] = None
        self.skipped: Optional[str] = None
        self.failing_process: Optional[str] = None
        self.log_tail = ""
        #: What the harness measured about the run's processes (``Run.evidence``).
        self.harness: Dict[str, Any] = {}
        self._t0 = time.monotonic()

    @property
    def passed(self) -> bool:
        """True when there was no error, at least one check, and every check passed."""
        return (self.skipped is None and self.error is None and bool(self.checks)
                and all(c.ok for c in self.checks))

    def skip(self, reason: str) -> None:
        """Record that the scenario cannot run here (``reason`` names what is missing)."""
        self.skipped = reason

    def step(self, text: str) -> None:
        """Print a progress line (what the scenario is doing now)."""
        if self.echo:
            print(f"  [{time.monotonic() - self._t0:6.2f}s] {text}", flush=True)

    def check(self, ok: bool, what: str, detail: str = "", process: Optional[str] = None) -> bool:
        """Record a verdict: ``what`` should hold; ``detail`` says what was seen. Returns ``ok``."""
        self.checks.append(Check(what, bool(ok), detail, process))
        if not ok and self.failing_process is None:
            self.failing_process = process
        return bool(ok)

    def figure(self, key: str, value: Any) -> None:
        """Record a measured figure (shown in the report and the runner's table)."""
        if isinstance(value, float) and math.isnan(value):
            value = None
        self.figures[key] = value

    def note(self, text: str) -> None:
        """Record a remark for the reader."""
        self.notes.append(text)

    @property
    def outcome(self) -> str:
        """``pass``, ``skip``, ``fail`` (a check failed), or the error's kind: ``crash``,
        ``timeout``, ``error``."""
        if self.passed:
            return "pass"
        if self.skipped is not None and self.error is None and all(c.ok for c in self.checks):
            return "skip"
        return self.error_kind or "fail"

    def fail(self, error: str, process: Optional[str] = None, kind: str = "error") -> None:
        """Record that the scenario could not complete: ``kind`` is crash, timeout or error."""
        if self.error is None:
            self.error = error
            self.error_kind = kind
            if process is not None:
                self.failing_process = process

    def to_json(self, duration_s: float, run_dir: Optional[str]) -> Dict[str, Any]:
        """The report as the JSON the runner reads."""
        return {"scenario": self.scenario, "title": self.title, "passed": self.passed,
                "outcome": self.outcome,
                "duration_s": round(duration_s, 3), "figures": self.figures,
                "checks": [asdict(c) for c in self.checks], "notes": self.notes,
                "error": self.error, "skipped": self.skipped,
                "failing_process": self.failing_process,
                "log_tail": self.log_tail, "run_dir": run_dir, "harness": self.harness}

    def render(self, duration_s: float) -> str:
        """The human report."""
        lines: List[str] = []
        for c in self.checks:
            mark = "PASS" if c.ok else "FAIL"
            lines.append(f"  {mark}  {c.what}" + (f"  ({c.detail})" if c.detail else ""))
        if self.skipped:
            lines.append(f"  SKIPPED {self.skipped}")
        if self.error:
            lines.append(f"  ERROR {self.error}")
        if self.figures:
            lines.append("  figures: " + ", ".join(f"{k}={v}" for k, v in self.figures.items()))
        for n in self.notes:
            lines.append(f"  note: {n}")
        if self.log_tail:
            lines.append(f"  --- tail of {self.failing_process}'s log ---")
            lines.extend("  | " + ln for ln in self.log_tail.splitlines())
        lines.append(f"RESULT: {self.outcome.upper()} ({duration_s:.1f}s)")
        return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]], description: str) -> argparse.Namespace:
    """The command line every scenario script accepts."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--json", metavar="PATH", help="write the report as JSON to PATH")
    ap.add_argument("--keep", action="store_true", help="keep the run directory (logs, results)")
    ap.add_argument("--keep-failed", action="store_true",
                    help="keep the run directory only when the scenario fails")
    ap.add_argument("--run-root", metavar="DIR", help="make the run directory inside DIR")
    ap.add_argument("--html", metavar="PATH",
                    help="write an HTML report (timeline, latency, failing evidence) to PATH")
    ap.add_argument("--trace", metavar="PATH",
                    help="write the run's timeline and verdict as JSON to PATH (for a report)")
    ap.add_argument("--debug", action="store_true", help="log at DEBUG level in every process")
    return ap.parse_args(argv)


def run_scenario(story: Story, title: str, *, name: Optional[str] = None,
                 timeout: float = SCENARIO_TIMEOUT_S, argv: Optional[Sequence[str]] = None) -> int:
    """Run ``story`` as a scenario; return the exit code (0 passed, 1 failed).

    ``name`` defaults to the script's file name without ``.py``; ``timeout``
    bounds every wait of the run.
    """
    name = name or os.path.splitext(os.path.basename(sys.argv[0]))[0] or "scenario"
    args = parse_args(argv, f"{name}: {title}")
    if not args.trace and os.environ.get(TRACE_ENV):
        args.trace = os.environ[TRACE_ENV]
    report = Report(name, title)
    print(f"{name}: {title}", flush=True)
    t0 = time.monotonic()
    run = Run(name, keep=args.keep, root=args.run_root, timeout=timeout,
              log_level=logging.DEBUG if args.debug else logging.INFO,
              trace=bool(args.html or args.trace))
    try:
        story(run, report)
    except ProcessFailed as exc:
        report.fail(str(exc), exc.name, "crash")
    except CommandFailed as exc:
        report.fail(str(exc), exc.name, "error")
    except HarnessTimeout as exc:
        report.fail(str(exc), exc.names[0] if exc.names else None, "timeout")
    except KeyboardInterrupt:
        report.fail("interrupted")
        raise
    except Exception:  # noqa: BLE001 - a scenario bug is reported as the scenario's failure
        report.fail(f"scenario raised:\n{traceback.format_exc()}".rstrip())
    finally:
        if report.outcome not in ("pass", "skip"):
            culprit = report.failing_process or _first_server(run)
            if culprit:
                report.failing_process = culprit
                report.log_tail = run.log_tail(culprit, LOG_TAIL_LINES)
        run.keep = args.keep or (args.keep_failed and not report.passed)
        leaks = run.close(raise_on_leak=False)
        report.harness = run.evidence
        report.check(not leaks, "no child process, bound port or run directory left after cleanup",
                     "; ".join(leaks))
        duration = time.monotonic() - t0
        print(report.render(duration), flush=True)
        if run.keep:
            print(f"run directory kept: {run.dir}", flush=True)
        as_json = report.to_json(duration, run.dir if run.keep else None)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(as_json, f, indent=1)
        if args.trace or args.html:
            _write_trace(args, as_json, run.trace)
    return 0 if report.outcome in ("pass", "skip") else 1


def _write_trace(args: argparse.Namespace, as_json: Dict[str, Any],
                 trace: Optional[Dict[str, Any]]) -> None:
    from . import report as html_report  # only runs asked for a report pay for importing it

    verdict = {k: as_json[k] for k in ("scenario", "title", "outcome", "duration_s", "figures",
                                       "checks", "notes", "error", "failing_process")}
    full = {**(trace or {}), "verdict": verdict}
    if args.trace:
        with open(args.trace, "w", encoding="utf-8") as f:
            json.dump(full, f, separators=(",", ":"))
    if args.html:
        html_report.write_html(args.html, [html_report.run_entry(as_json, full)])
        print(f"HTML report: {os.path.abspath(args.html)}", flush=True)


def _first_server(run: Run) -> Optional[str]:
    for h in run.handles:
        if h.role == "server":
            return h.name
    return run.handles[0].name if run.handles else None


__all__ = ["Report", "Check", "run_scenario", "RENAMED_SCENARIOS", "current_name", "parse_args", "KEY_FIGURES", "FIG_CLIENTS",
           "FIG_MESSAGES", "FIG_P99_MS", "FIG_RECOVERY_S", "LOG_TAIL_LINES", "TRACE_ENV"]

#!/usr/bin/env python3
"""Run the multi-process scenarios in test_scripts/ and report.

Discovers ``test_scripts/[0-9][0-9]_*.py`` in order and runs each in a fresh
process (``sys.executable``) with a timeout, printing one line as each starts
and ends, then a table of results (and, with ``--repeat``, pass rates), then the
suite's success criteria, each with its measured evidence and a verdict (see
``sente_lite/testing/criteria.py`` and docs/report.md). Each scenario runs with a
temp root of its own (``TMPDIR``); after it ends, the runner measures what it left
behind (processes, by PID, then ended; files). Exits 0 only when every scenario
run passed. The scenarios judge themselves: this file
only runs them and reads the JSON report each one writes with ``--json``.

    python run_all_tests.py                       # every scenario once
    python run_all_tests.py -k 03 -k restart      # only scenarios whose name matches
    python run_all_tests.py --repeat 10 -x        # 10 rounds, stop at the first failure
    python run_all_tests.py --json out.json --junit junit.xml --keep
    python run_all_tests.py --html report.html      # timelines, latency, failing evidence
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from tabulate import tabulate

from sente_lite.testing import criteria as crit
from sente_lite.testing.evidence import become_subreaper, left_files, settle_left_processes
from sente_lite.testing.report import format_figure as _fmt
from sente_lite.testing.scenario import RENAMED_SCENARIOS

REPO = Path(__file__).resolve().parent
SCENARIO_DIR = REPO / "test_scripts"
SCENARIO_GLOB = "[0-9][0-9]_*.py"
#: Seconds one scenario process may run before it is killed (scenarios have tighter deadlines).
DEFAULT_TIMEOUT_S = 240.0
#: Lines of output shown for a scenario that failed without a report of its own.
OUTPUT_TAIL_LINES = 20
#: Figures shown in their own column (the names scenarios report them under).
KEY_FIGURES = ("clients", "messages", "p99_ms", "recovery_s")
#: Width of the table's "other figures" column.
DETAILS_WIDTH = 60
#: Width of the success-criteria table's "evidence" column.
CRITERIA_EVIDENCE_WIDTH = 80


@dataclass
class Outcome:
    """One run of one scenario."""

    scenario: str
    repeat: int
    outcome: str                   # pass, fail, crash, timeout, error
    duration_s: float
    figures: Dict[str, Any] = field(default_factory=dict)
    error: Optional[str] = None
    failed_checks: List[str] = field(default_factory=list)
    failing_process: Optional[str] = None
    log_tail: str = ""
    exit_code: Optional[int] = None
    #: What the scenario's harness measured (its report's ``harness``: isolation, kills).
    harness: Dict[str, Any] = field(default_factory=dict)
    #: Processes of the scenario still there after it ended (None: not measured).
    processes_left: Optional[List[Dict[str, Any]]] = None
    #: Files left in the run's private temp root (None: not measured, files were kept).
    temp_left: Optional[List[str]] = None

    @property
    def passed(self) -> bool:
        return self.outcome == "pass"

    @property
    def ok(self) -> bool:
        """Passed, or skipped because something it needs is not installed here."""
        return self.outcome in ("pass", "skip")


def discover(directory: Path = SCENARIO_DIR) -> List[Path]:
    """The scenario scripts, in name order."""
    return sorted(directory.glob(SCENARIO_GLOB))


def select(scripts: Sequence[Path], patterns: Sequence[str]) -> List[Path]:
    """The scripts whose name contains one of ``patterns`` (comma-separated allowed); all if none."""
    wanted = [p.strip() for pat in patterns for p in pat.split(",") if p.strip()]
    if not wanted:
        return list(scripts)
    # a pattern naming a scenario by its old name selects it under its new one
    wanted += [new for old, new in RENAMED_SCENARIOS.items() if any(w in old for w in wanted)]
    return [s for s in scripts if any(w in s.stem for w in wanted)]


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run_one(script: Path, repeat: int, work_dir: Path, timeout: float, keep: str,
            trace: Optional[Path] = None) -> Outcome:
    """Run one scenario script in its own process group; never raises for its failures.

    With ``trace`` the scenario also writes its timeline there (``SENTE_LITE_TRACE``, which
    scenarios that do not use ``run_scenario`` ignore)."""
    name = script.stem
    json_path = work_dir / f"{name}.{repeat}.json"
    out_path = work_dir / f"{name}.{repeat}.out"
    # the run's private temp root: its run directory and every temp file of its processes
    temp_root = work_dir / f"tmp-{name}.{repeat}"
    temp_root.mkdir()
    cmd = [sys.executable, str(script), "--json", str(json_path), "--run-root", str(temp_root)]
    if keep:
        cmd.append(keep)
    # the repository's sente_lite/ (vendored, or a clone not installed) for every script,
    # whether or not it starts with test_scripts/_repo.py's idiom
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, TMPDIR=str(temp_root))
    if trace is not None:
        env["SENTE_LITE_TRACE"] = str(trace)
    t0 = time.monotonic()
    with open(out_path, "w+", encoding="utf-8", errors="replace") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=str(REPO), start_new_session=True, env=env)
        timed_out = False
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        except KeyboardInterrupt:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        if timed_out:
            os.killpg(proc.pid, signal.SIGKILL)  # the scenario and every process it started
            proc.wait()
        left = settle_left_processes(proc.pid)
        out.seek(0)
        output = out.read()
    duration = time.monotonic() - t0
    report = _read_json(json_path)
    kept = bool(keep) and (report is None or bool(report.get("run_dir")))
    temp_left = None if kept or timed_out else left_files(str(temp_root))
    measured = dict(processes_left=None if timed_out else left, temp_left=temp_left)
    if not kept:
        shutil.rmtree(temp_root, ignore_errors=True)
    if timed_out:
        return Outcome(name, repeat, "timeout", duration, error=f"killed after {timeout:.0f}s",
                       log_tail=_tail(output, OUTPUT_TAIL_LINES), exit_code=proc.returncode,
                       **measured)
    if report is None:
        return Outcome(name, repeat, "crash", duration,
                       error=f"exited with code {proc.returncode} without a report",
                       log_tail=_tail(output, OUTPUT_TAIL_LINES), exit_code=proc.returncode,
                       **measured)
    outcome = report.get("outcome") or ("pass" if report.get("passed") else "fail")
    if outcome == "pass" and proc.returncode != 0:
        outcome = "error"
    log_tail = report.get("log_tail") or ""
    failing_process = report.get("failing_process") if log_tail else None
    if not log_tail and outcome != "pass":  # no process log to show: show the scenario's output
        log_tail = _tail(output, OUTPUT_TAIL_LINES)
    return Outcome(
        name, repeat, outcome, duration, figures=report.get("figures") or {},
        error=report.get("error") or report.get("skipped"),
        failed_checks=[f"{c['what']}: {c['detail']}" if c.get("detail") else c["what"]
                       for c in report.get("checks", ()) if not c.get("ok")],
        failing_process=failing_process, log_tail=log_tail, exit_code=proc.returncode,
        harness=report.get("harness") or {}, **measured)


def _read_json(path: Path) -> Optional[Dict[str, Any]]:
    """The JSON document at ``path``, or None when it is missing or broken."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def results_table(outcomes: Sequence[Outcome], with_repeat: bool) -> str:
    """One row per scenario run: result, duration, key figures, other figures."""
    headers = ["scenario"] + (["run"] if with_repeat else []) + \
        ["result", "duration s", "clients", "messages", "p99 ms", "recovery s", "other figures"]
    rows = []
    for o in outcomes:
        others = ", ".join(f"{k}={_fmt(v)}" for k, v in o.figures.items() if k not in KEY_FIGURES)
        rows.append([o.scenario] + ([o.repeat] if with_repeat else []) +
                    [o.outcome.upper(), f"{o.duration_s:.1f}"] +
                    [_fmt(o.figures.get(k)) for k in KEY_FIGURES] + [others])
    if not rows:  # interrupted before the first run ended (tabulate 0.9 cannot wrap no rows)
        return tabulate([], headers, tablefmt="simple")
    return tabulate(rows, headers, tablefmt="simple", maxcolwidths=[None] * (len(headers) - 1)
                    + [DETAILS_WIDTH])


def _span(values: List[float]) -> str:
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return _fmt(lo) if lo == hi else f"{_fmt(lo)}..{_fmt(hi)}"


def pass_rate_table(outcomes: Sequence[Outcome]) -> str:
    """Per scenario over repeats: passes, rate, durations, p99 and recovery ranges."""
    by_name: Dict[str, List[Outcome]] = {}
    for o in outcomes:
        by_name.setdefault(o.scenario, []).append(o)
    rows = []
    for name, runs in by_name.items():
        passed = sum(o.passed for o in runs)
        durations = [o.duration_s for o in runs]
        p99 = [o.figures["p99_ms"] for o in runs if isinstance(o.figures.get("p99_ms"), (int, float))]
        rec = [o.figures["recovery_s"] for o in runs
               if isinstance(o.figures.get("recovery_s"), (int, float))]
        failures = sorted({o.outcome for o in runs if not o.passed})
        rows.append([name, f"{passed}/{len(runs)}", f"{100.0 * passed / len(runs):.0f}%",
                     f"{statistics.median(durations):.1f}", f"{max(durations):.1f}",
                     _span(p99), _span(rec), ", ".join(failures) or "-"])
    return tabulate(rows, ["scenario", "passed", "rate", "median s", "max s", "p99 ms",
                           "recovery s", "failures"], tablefmt="simple")


def criteria_table(criteria: Sequence[crit.Criterion]) -> str:
    """The plan's success criteria: one row each, with the measured evidence and the verdict."""
    return ("success criteria (" + crit.overall(criteria) + ")\n"
            + tabulate(crit.rows(criteria), crit.HEADERS, tablefmt="simple",
                       maxcolwidths=[28, CRITERIA_EVIDENCE_WIDTH, None]))


def failure_details(outcomes: Sequence[Outcome]) -> str:
    """For each failed run: the error, the failed checks, and the tail of the failing log."""
    parts = []
    for o in outcomes:
        if o.ok:
            continue
        head = f"--- {o.scenario} (run {o.repeat}): {o.outcome.upper()}"
        lines = [head]
        if o.error:
            lines += ["  " + ln for ln in o.error.splitlines()[:40]]
        lines += [f"  failed check: {c}" for c in o.failed_checks]
        if o.log_tail:
            who = f"{o.failing_process}'s log" if o.failing_process else "output"
            lines.append(f"  tail of {who}:")
            lines += ["  | " + ln for ln in o.log_tail.splitlines()]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def write_junit(path: str, outcomes: Sequence[Outcome], with_repeat: bool) -> None:
    """Write a JUnit XML report: one testcase per scenario run (``name[run]`` when repeated)."""
    failures = sum(o.outcome == "fail" for o in outcomes)
    errors = sum(not o.ok and o.outcome != "fail" for o in outcomes)
    suite = ET.Element("testsuite", name="sente_lite scenarios", tests=str(len(outcomes)),
                       failures=str(failures), errors=str(errors),
                       time=f"{sum(o.duration_s for o in outcomes):.3f}")
    for o in outcomes:
        case = ET.SubElement(suite, "testcase", classname="test_scripts",
                             name=f"{o.scenario}[{o.repeat}]" if with_repeat else o.scenario,
                             time=f"{o.duration_s:.3f}")
        if o.figures:
            props = ET.SubElement(case, "properties")
            for k, v in o.figures.items():
                ET.SubElement(props, "property", name=k, value=_fmt(v))
        if o.outcome == "skip":
            ET.SubElement(case, "skipped", message=o.error or "skipped")
        elif not o.passed:
            tag = "failure" if o.outcome == "fail" else "error"
            first = o.failed_checks[0] if o.failed_checks else (o.error or o.outcome)
            message = first.splitlines()[0]
            el = ET.SubElement(case, tag, message=message, type=o.outcome)
            el.text = failure_details([o])
    root = ET.Element("testsuites")
    root.append(suite)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Run the multi-process scenarios in test_scripts/.")
    ap.add_argument("--scripts", type=Path, default=SCENARIO_DIR, metavar="DIR",
                    help=f"directory of the NN_name.py scenarios (default {SCENARIO_DIR.name}/)")
    ap.add_argument("-k", "--only", action="append", default=[], metavar="PATTERN",
                    help="run only scenarios whose file name contains PATTERN (repeatable, "
                         "comma-separated allowed), e.g. -k 03 -k restart")
    ap.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="run the selection N times and show a pass-rate table")
    ap.add_argument("--json", metavar="PATH", help="write every run's outcome as JSON to PATH")
    ap.add_argument("--junit", metavar="PATH", help="write a JUnit XML report to PATH")
    ap.add_argument("--html", metavar="PATH",
                    help="write an HTML report to PATH: the table, and per run a timeline of every "
                         "process, latency and the failing evidence (see docs/report.md)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the run directories, logs and reports (their location is printed)")
    ap.add_argument("--keep-failed", action="store_true",
                    help="keep run directories, logs and reports of failed runs only")
    ap.add_argument("-x", "--exitfirst", action="store_true", help="stop at the first failure")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                    help=f"kill a scenario after S seconds (default {DEFAULT_TIMEOUT_S:.0f})")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    return args


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, a CI job cancelled, ``kill``): handled as Ctrl-C is, so the
    running scenario's process group is killed before the runner ends."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    scripts = select(discover(args.scripts), args.only)
    if not scripts:
        print(f"no scenario in {args.scripts} matches {args.only or SCENARIO_GLOB}", file=sys.stderr)
        return 1
    become_subreaper()  # a process a scenario leaves behind becomes ours: found, ended, reaped
    previous_sigterm = signal.signal(signal.SIGTERM, _on_sigterm)
    terminated = False
    work_dir = Path(tempfile.mkdtemp(prefix="sente-lite-scenarios-"))
    outcomes: List[Outcome] = []
    traces: List[Optional[Dict[str, Any]]] = []  # with --html: each run's timeline
    total = len(scripts) * args.repeat
    t0 = time.monotonic()
    try:
        stop = False
        for rep in range(1, args.repeat + 1):
            for script in scripts:
                n = len(outcomes) + 1
                tag = f"[{n}/{total}]" + (f" run {rep}" if args.repeat > 1 else "")
                print(f"{tag} {script.stem} ...", flush=True)
                trace = work_dir / f"{script.stem}.{rep}.trace.json" if args.html else None
                o = run_one(script, rep, work_dir, args.timeout,
                            "--keep" if args.keep else "--keep-failed" if args.keep_failed else "",
                            trace)
                outcomes.append(o)
                if trace is not None:
                    traces.append(_read_json(trace))
                key = " ".join(f"{k}={_fmt(o.figures[k])}" for k in KEY_FIGURES if k in o.figures)
                print(f"{tag} {script.stem} {o.outcome.upper()} in {o.duration_s:.1f}s  {key}",
                      flush=True)
                if args.exitfirst and not o.ok:
                    stop = True
                    break
            if stop:
                break
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        print("terminated (SIGTERM)" if terminated else "interrupted", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)  # the scenario is ended: a second one ends us
        if args.keep or (args.keep_failed and not all(o.passed for o in outcomes)):
            print(f"run directories, logs and reports kept in {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)

    print()
    print(results_table(outcomes, args.repeat > 1))
    if args.repeat > 1:
        print()
        print(pass_rate_table(outcomes))
    criteria = crit.judge([asdict(o) for o in outcomes], [s.stem for s in scripts],
                          [s.stem for s in discover(args.scripts)])
    print()
    print(criteria_table(criteria))
    details = failure_details(outcomes)
    if details:
        print()
        print(details)
    passed = sum(o.passed for o in outcomes)
    skipped = [o for o in outcomes if o.outcome == "skip"]
    complete = len(outcomes) == total
    all_ok = complete and all(o.ok for o in outcomes)
    for o in skipped:
        print(f"skipped: {o.scenario}: {o.error}")
    print(f"\n{passed}/{len(outcomes)} scenario runs passed"
          + (f", {len(skipped)} skipped" if skipped else "")
          + ("" if complete else f" ({total - len(outcomes)} not run)")
          + f" in {time.monotonic() - t0:.1f}s: {'PASS' if all_ok else 'FAIL'}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"passed": all_ok, "runs": [asdict(o) for o in outcomes],
                       "selected": [s.stem for s in scripts], "repeat": args.repeat,
                       "criteria": crit.as_json(criteria)}, f, indent=1)
    if args.junit:
        write_junit(args.junit, outcomes, args.repeat > 1)
    if args.html:
        from sente_lite.testing import report

        t_html = time.monotonic()
        report.write_html(args.html, [report.run_entry(asdict(o), t) for o, t in zip(outcomes, traces)],
                          criteria=crit.as_json(criteria))
        print(f"HTML report: {Path(args.html).resolve()} (written in {time.monotonic() - t_html:.2f}s)")
    return 128 + signal.SIGTERM if terminated else 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())

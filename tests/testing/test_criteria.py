"""The runner's success-criteria table: each criterion's verdict, and the measurements
behind it (processes and temp files left behind, isolation of spawned processes, RSS
growth), in real runs of run_all_tests.py.

The behaviours below run in spawned child processes, which import this module.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List, Optional

import pytest

from sente_lite import discovery
from sente_lite.testing import ProcessContext, Run, rss_growth_per_1000
from sente_lite.testing import criteria as crit
from sente_lite.testing.report import render_html, run_entry
from support import REPO

#: Seconds a runner may take for a tiny scenario on a loaded 2-core machine.
RUN_S = 240.0
#: Deadline of waits for what should take well under a second.
DEADLINE_S = 60.0
ALL = [f"{n:02d}_s{n}" for n in range(1, 12)]


def run(scenario: str, outcome: str = "pass", repeat: int = 1, p99: Optional[float] = None,
        rss: Optional[float] = None, bounded: Optional[float] = None, killed: int = 0,
        faults: int = 0,
        processes_left: Optional[List[Dict[str, Any]]] = None, temp_left: Optional[List[str]] = None,
        problems: Optional[List[str]] = None, leaks: Optional[List[str]] = None) -> Dict[str, Any]:
    """One run as run_all_tests.py --json writes it (fabricated, realistic values)."""
    figures: Dict[str, Any] = {"clients": 2}
    if p99 is not None:
        figures["p99_ms"] = p99
    if rss is not None:
        figures[crit.FIG_RSS_GROWTH] = rss
    if bounded is not None:
        figures[crit.FIG_BOUNDED_GROWTH] = bounded
    return {"scenario": scenario, "repeat": repeat, "outcome": outcome, "duration_s": 1.0,
            "figures": figures,
            "harness": {"isolation": {"processes": 3, "measured": 3,
                                      "spawned": 3 - len(problems or ()),
                                      "problems": list(problems or ())},
                        "killed": killed, "faults": faults + killed, "leaks": list(leaks or ())},
            "processes_left": [] if processes_left is None else processes_left,
            "temp_left": [] if temp_left is None else temp_left}


def rounds(n: int, **per_scenario: Dict[str, Any]) -> List[Dict[str, Any]]:
    return [run(s, repeat=i, **per_scenario.get(s, {})) for i in range(1, n + 1) for s in ALL]


def verdicts(runs: List[Dict[str, Any]], selected: List[str] = ALL) -> Dict[str, str]:
    return {c.name.split(" (")[0]: c.verdict for c in crit.judge(runs, selected, ALL)}


# -- verdict logic -------------------------------------------------------------------------
def test_ten_clean_rounds_pass_every_criterion() -> None:
    runs = rounds(10, **{"05_s5": {"p99": 6.1, "rss": 3.0}, "09_s9": {"killed": 1, "p99": 80.0}})
    criteria = crit.judge(runs, ALL, ALL)
    assert [c.verdict for c in criteria] == [crit.PASS] * 7, crit.rows(criteria)
    assert crit.overall(criteria) == crit.PASS
    by = {c.name: c.evidence for c in criteria}
    assert "10 of 10 runs" in by["all scenarios pass consistently (10 runs)"]
    # a scenario that injects faults is judged on crashes, not on its latency
    assert "09_s9" not in by["performance acceptable (p99 < 10 ms)"]
    assert "09_s9" in by["proper error handling (process crashes)"]


def test_consistency_needs_ten_runs_and_fails_on_any_failure() -> None:
    assert verdicts(rounds(1))["all scenarios pass consistently"] == crit.NOT_MEASURED
    assert verdicts(rounds(9))["all scenarios pass consistently"] == crit.NOT_MEASURED
    one_bad = rounds(10)
    one_bad[27]["outcome"] = "timeout"
    [c] = [c for c in crit.judge(one_bad, ALL, ALL) if c.name.startswith("all scenarios")]
    assert c.verdict == crit.FAIL and f"{one_bad[27]['scenario']} 9/10" in c.evidence
    # a failure in a single run is already a failure: no need to wait for 10
    single = rounds(1)
    single[0]["outcome"] = "crash"
    assert verdicts(single)["all scenarios pass consistently"] == crit.FAIL
    # 10 clean runs of a selection cannot show "all scenarios"
    some = [r for r in rounds(10) if r["scenario"] == "01_s1"]
    assert verdicts(some, ["01_s1"])["all scenarios pass consistently"] == crit.NOT_MEASURED
    # a scenario skipped (redis-server missing) is not a pass
    skipped = rounds(10, **{"11_s11": {"outcome": "skip"}})
    assert verdicts(skipped)["all scenarios pass consistently"] == crit.NOT_MEASURED


def test_latency_verdict_is_nine_of_ten_runs_per_steady_scenario() -> None:
    def p99s(values: List[float]) -> Dict[str, str]:
        runs = [run("05_s5", repeat=i, p99=v) for i, v in enumerate(values, 1)]
        return verdicts(runs)

    key = "performance acceptable"
    assert p99s([6.0] * 9 + [25.0])[key] == crit.PASS           # 9 of 10
    assert p99s([6.0] * 8 + [25.0, 11.0])[key] == crit.FAIL     # 8 of 10
    assert p99s([6.0] * 10 + [10.0] * 2)[key] == crit.FAIL      # 10 of 12: two over
    assert p99s([10.0])[key] == crit.NOT_MEASURED               # the bound is strict; 1 run
    assert p99s([9.8, 9.1])[key] == crit.NOT_MEASURED           # under, but 2 runs only
    assert p99s([20.1, 17.2])[key] == crit.FAIL                 # 2 over: 9 of 10 is out of reach
    assert verdicts([run("03_s3", p99=400.0, faults=2)])[key] == crit.NOT_MEASURED
    assert verdicts([run("01_s1")])[key] == crit.NOT_MEASURED   # no p99 at all
    assert [crit.latency_allowance(n) for n in (1, 10, 20, 25)] == [1, 1, 2, 2]


def test_memory_verdict_against_the_named_bound() -> None:
    key = "memory stable"
    bound = crit.RSS_GROWTH_MAX_KB_PER_1000
    assert verdicts([run("05_s5", rss=27.4), run("05_s5", rss=-3.0, repeat=2)])[key] == crit.PASS
    assert verdicts([run("05_s5", rss=27.4), run("05_s5", rss=bound + 1, repeat=2)])[key] == crit.FAIL
    assert verdicts([run("01_s1")])[key] == crit.NOT_MEASURED


def test_memory_is_judged_net_of_bounded_stores_filling() -> None:
    key = "memory stable"
    bound = crit.RSS_GROWTH_MAX_KB_PER_1000
    # scenario 5 as measured: RSS follows the publish ids filling toward their bound
    filling = [run("05_s5", rss=471.0, bounded=460.2), run("05_s5", rss=469.0, bounded=462.0, repeat=2)]
    assert verdicts(filling)[key] == crit.PASS
    row = crit.memory(filling)
    assert "net of bounded stores +10.8, +7.0 KiB per 1,000 messages" in row.evidence, row
    assert "RSS +471.0, +469.0 less +460.2, +462.0 taken by stores" in row.evidence, row
    # a leak on top of the same filling store is still one
    leak = [run("05_s5", rss=471.0 + 600, bounded=460.2)]
    assert verdicts(leak)[key] == crit.FAIL
    assert verdicts([run("05_s5", rss=460.0 + bound + 1, bounded=460.0)])[key] == crit.FAIL
    # a run that did not report its stores is judged on RSS alone
    assert verdicts([run("05_s5", rss=471.0)])[key] == crit.FAIL
    assert "no bounded stores reported" in crit.memory([run("05_s5", rss=471.0)]).evidence
    assert crit.net_rss_growth({crit.FIG_BOUNDED_GROWTH: 3.0}) is None


def test_memory_from_sampled_series_fails_a_leak_and_passes_a_store_filling_to_its_bound() -> None:
    """Samples as scenario 5 takes them, (publishes, RSS KiB, KiB the bounded stores hold),
    through the figures it reports to the verdict."""
    def judged(series: List[tuple]) -> str:
        figures = {crit.FIG_RSS_GROWTH: rss_growth_per_1000([(m, r) for m, r, _ in series], 1000),
                   crit.FIG_BOUNDED_GROWTH: rss_growth_per_1000([(m, b) for m, _, b in series], 1000)}
        return crit.memory([{"scenario": "05_s5", "outcome": "pass", "figures": figures}]).verdict

    msgs = range(0, 20_001, 1000)
    # publish ids kept (0.46 KiB each), all through the run: RSS grows with them, no leak
    ids = [(m, 32_000 + m * 46 // 100 + (5 if m % 2000 else -5), m * 45 // 100) for m in msgs]
    assert judged(ids) == crit.PASS
    # the same, then the store is at its bound (the window or the count): RSS stops too
    full = [(m, r, b) if m <= 12_000 else (m, ids[12][1], ids[12][2]) for m, r, b in ids]
    assert judged(full) == crit.PASS
    # a leak: RSS grows 0.6 KiB per message with nothing held by a bounded store
    leak = [(m, 32_000 + m * 6 // 10, 0) for m in msgs]
    assert judged(leak) == crit.FAIL
    # a leak beside the filling store
    both = [(m, r + m * 6 // 10, b) for m, r, b in ids]
    assert judged(both) == crit.FAIL


def test_clean_exit_counts_processes_temp_files_and_cleanup_leaks() -> None:
    key = "clean startup and shutdown"
    assert verdicts([run("01_s1")])[key] == crit.PASS
    left = [{"pid": 4242, "state": "S", "cmd": "sleep 60"}]
    [c] = [c for c in crit.judge([run("01_s1", processes_left=left)], ALL, ALL)
           if c.name.startswith(key)]
    assert c.verdict == crit.FAIL and "pid 4242 sleep 60" in c.evidence
    assert verdicts([run("01_s1", temp_left=["sente-lite-x/"])])[key] == crit.FAIL
    zombie = ["child processes still alive after cleanup: client1 (pid 7)"]
    assert verdicts([run("01_s1", leaks=zombie)])[key] == crit.FAIL
    not_measured = run("01_s1")
    not_measured.update(processes_left=None, temp_left=None, harness={})
    assert verdicts([not_measured])[key] == crit.NOT_MEASURED


def test_isolation_crash_and_integration_verdicts() -> None:
    assert verdicts([run("01_s1")])["no shared state between processes"] == crit.PASS
    shared = run("01_s1", problems=["client1: shared memory /dev/shm/sem.mp-x"])
    assert verdicts([shared])["no shared state between processes"] == crit.FAIL
    assert verdicts([{**run("01_s1"), "harness": {}}])["no shared state between processes"] \
        == crit.NOT_MEASURED

    key = "proper error handling"
    assert verdicts([run("01_s1")])[key] == crit.NOT_MEASURED
    assert verdicts([run("09_s9", killed=1)])[key] == crit.PASS
    assert verdicts([run("09_s9", killed=1), run("09_s9", "fail", 2, killed=1)])[key] == crit.FAIL

    key = "integration with run_all_tests"
    assert verdicts(rounds(1))[key] == crit.PASS
    assert verdicts([run("01_s1")], ["01_s1"])[key] == crit.NOT_MEASURED
    assert verdicts(rounds(1, **{"04_s4": {"outcome": "crash"}}))[key] == crit.FAIL


def test_a_renamed_scenario_is_read_under_its_new_name() -> None:
    old = [run("10_redis_cluster", repeat=i, killed=1) for i in range(1, 6)]
    new = [run("10_two_servers_one_redis", repeat=i, killed=1) for i in range(6, 11)]
    [c] = [c for c in crit.judge(old + new, ["10_two_servers_one_redis"], ["10_two_servers_one_redis"])
           if c.name.startswith("all scenarios")]
    assert c.verdict == crit.PASS and "10 of 10 runs" in c.evidence
    assert run_entry(old[0])["scenario"] == "10_two_servers_one_redis"
    html = render_html([run_entry(r) for r in old], criteria=crit.as_json(crit.judge(old, [], [])))
    assert 'data-scenario="10_two_servers_one_redis"' in html and "10_redis_cluster" not in html


def _runner() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_all_tests", REPO / "run_all_tests.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_scenario_10_is_named_for_what_it_runs_and_old_patterns_select_it() -> None:
    runner = _runner()
    names = [s.stem for s in runner.discover()]
    assert "10_two_servers_one_redis" in names and "10_redis_cluster" not in names
    selected = [s.stem for s in runner.select(runner.discover(), ["redis_cluster"])]
    # the old name selects scenario 10; the others selected carry the pattern in their own name
    assert "10_two_servers_one_redis" in selected
    assert all("redis_cluster" in name for name in selected if not name.startswith("10_"))


def test_scenario_5_runs_on_library_defaults() -> None:
    tree = ast.parse((REPO / "test_scripts" / "05_high_frequency.py").read_text())
    calls = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ("start_server", "connect", "start_clients"):
            calls.setdefault(node.func.attr, []).append([k.arg for k in node.keywords])
    assert calls["start_server"] == [[]] and calls["connect"] == [[]], calls


def test_rss_growth_is_the_slope_after_warmup() -> None:
    warm = [(m, 30_000 + m // 2) for m in range(0, 10_001, 1000)]       # fills up to 10,000
    flat = [(m, 35_000 + (7 if m % 2000 else -7)) for m in range(11_000, 20_001, 1000)]
    assert abs(rss_growth_per_1000(warm + flat, 10_000) or 99) < 5
    leak = [(m, 35_000 + (m - 10_000) * 600 // 1000) for m in range(11_000, 20_001, 1000)]
    assert rss_growth_per_1000(warm + leak, 10_000) == pytest.approx(600, abs=1)
    assert rss_growth_per_1000(warm + leak) == pytest.approx(600, abs=60)  # default: 2nd half
    assert rss_growth_per_1000([]) is None
    assert rss_growth_per_1000([(5, 1), (5, 9)]) is None                    # no spread
    assert rss_growth_per_1000(warm, 20_000) is None                        # none after warm-up


# -- measured in real processes -----------------------------------------------------------
def holds(ctx: ProcessContext, *shared: Any) -> None:
    ctx.mark("ready")
    ctx.wait_command("finish", timeout=DEADLINE_S)


def test_a_spawned_process_shares_nothing_and_a_passed_queue_shows(tmp_path: Path) -> None:
    mp = multiprocessing.get_context("spawn")
    shared_queue, shared_lock = mp.Queue(), mp.Lock()  # alive until the children have them
    with Run("isolation", root=str(tmp_path)) as r:
        clean = r.start_process("clean", holds)
        queue = r.start_process("queue", holds, shared_queue)
        lock = r.start_process("lock", holds, shared_lock)
        r.wait_mark([clean, queue, lock], "ready")
        r.command([clean, queue, lock], "finish")
        r.results([clean, queue, lock])
    iso = r.evidence["isolation"]
    assert (iso["processes"], iso["measured"], iso["spawned"]) == (3, 3, 3)
    assert not [p for p in iso["problems"] if p.startswith("clean:")], iso
    assert [p for p in iso["problems"] if p.startswith("queue:") and "pipes" in p], iso
    assert [p for p in iso["problems"] if p.startswith("lock:") and "shared memory" in p], iso
    assert r.evidence["killed"] == 0 and r.evidence["leaks"] == []
    shared_queue.close()


LEAVES_BEHIND = """
    import subprocess, sys, tempfile
    from sente_lite.testing import run_scenario
    def story(run, report):
        report.check(True, "fine")
        for new_session in (False, True):   # in its session, and escaped to a new one
            p = subprocess.Popen(["sleep", "120"], start_new_session=new_session)
            open(sys.argv[0] + f".{int(new_session)}.pid", "w").write(str(p.pid))
        tempfile.mkstemp(prefix="sente-lite-left-")
    sys.exit(run_scenario(story, "passes, but leaves two processes and a temp file"))
    """


def run_runner(scripts: Path, *args: str) -> "subprocess.CompletedProcess[str]":
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, str(REPO / "run_all_tests.py"), "--scripts", str(scripts),
                           *args], capture_output=True, text=True, timeout=RUN_S, env=env)


def test_runner_finds_processes_and_temp_files_left_behind(tmp_path: Path) -> None:
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "01_leaves.py").write_text(textwrap.dedent(LEAVES_BEHIND))
    out = run_runner(scripts, "--json", str(tmp_path / "r.json"))
    result = json.loads((tmp_path / "r.json").read_text())
    [r] = result["runs"]
    assert r["outcome"] == "pass", out.stdout + out.stderr
    pids = {int((scripts / f"01_leaves.py.{i}.pid").read_text()) for i in (0, 1)}
    assert {p["pid"] for p in r["processes_left"]} == pids
    assert [f for f in r["temp_left"] if "sente-lite-left-" in f], r["temp_left"]
    clean = {c["name"]: c for c in result["criteria"]}["clean startup and shutdown (no zombie processes)"]
    assert clean["verdict"] == crit.FAIL and "processes left behind: 2" in clean["evidence"]
    assert "processes left behind: 2" in out.stdout.split("success criteria (FAIL)")[1]
    # the runner ended what it found, by PID
    for pid in pids:
        assert discovery.wait_for(lambda: not os.path.exists(f"/proc/{pid}"), DEADLINE_S,
                                  f"left-behind pid {pid} to be ended")


def test_real_run_prints_the_criteria_with_measured_values(tmp_path: Path) -> None:
    scenarios = REPO / "tests" / "data" / "report_scenarios"
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "01_passes.py").write_text((scenarios / "01_passes.py").read_text())
    html = tmp_path / "r.html"
    out = run_runner(scripts, "--json", str(tmp_path / "r.json"), "--html", str(html))
    assert out.returncode == 0, out.stdout + out.stderr
    table = out.stdout.split("success criteria (")[1]
    for name in ("all scenarios pass", "no shared state", "clean startup", "proper error handling",
                 "performance acceptable", "memory stable", "integration with"):
        assert name in table, table
    result = json.loads((tmp_path / "r.json").read_text())
    by = {c["name"]: c for c in result["criteria"]}
    assert by["all scenarios pass consistently (10 runs)"]["verdict"] == crit.NOT_MEASURED
    assert "1 of 10 runs" in by["all scenarios pass consistently (10 runs)"]["evidence"]
    iso = by["no shared state between processes"]
    assert iso["verdict"] == crit.PASS and "3 of 3 processes spawned" in iso["evidence"]
    clean = by["clean startup and shutdown (no zombie processes)"]
    assert clean["verdict"] == crit.PASS, (clean, result["runs"])
    assert "processes left behind: 0 after 1 runs" in clean["evidence"]
    assert "01_passes p99" in by["performance acceptable (p99 < 10 ms)"]["evidence"]
    [r] = result["runs"]
    assert r["processes_left"] == [] and r["temp_left"] == [] and r["harness"]["leaks"] == []
    text = html.read_text(encoding="utf-8")
    assert '<table class="criteria">' in text and text.count('<tr data-verdict="') == 7

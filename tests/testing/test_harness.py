"""Tests of the multi-process harness (sente_lite.testing): file locking, deadlines,
crashes reported as crashes, cleanup after a crash, no surviving children.

The behaviours below run in spawned child processes, which import this module.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Dict

import pytest

from sente_lite import discovery
from sente_lite.testing import (CommandFailed, Delivery, History, HarnessTimeout, ProcessContext,
                                ProcessFailed, Report, Run, duplicates, latency_summary,
                                order_problem, percentile, port_is_free, run_scenario)
from sente_lite.testing.common import command_path, mark_path
from sente_lite.testing.run import _is_child_of_us
from support import REPO, TESTS

#: Bound on the time of anything that should take well under a second (a process's
#: start-up is awaited apart, with the harness's own PROCESS_START_TIMEOUT_S).
FAST_S = 10.0
#: Deadline of waits for such things: reached only when something is broken, so generous
#: enough for a 2-core machine that other work loads many times over.
DEADLINE_S = 60.0
#: Time budget of the runs below (every wait of a run is clipped to it).
RUN_S = 180.0
#: Distinct rounds of a rewritten file the torn-read test must see while it reads.
TORN_READ_ROUNDS_SEEN = 5


# -- behaviours (run in child processes) ------------------------------------------------
def raises(ctx: ProcessContext, message: str) -> None:
    ctx.history.record("about-to-fail")
    raise ValueError(message)


def waits_for_go(ctx: ProcessContext) -> Dict[str, Any]:
    ctx.mark("ready", pid=os.getpid())
    data = ctx.wait_command("go", timeout=60.0)
    return {"got": data}


def waits_briefly_for_go(ctx: ProcessContext) -> None:
    ctx.mark("ready")
    ctx.wait_command("go", timeout=0.3)


def ignores_sigterm(ctx: ProcessContext) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ctx.mark("ready")
    ctx.wait_command("go", timeout=60.0)


def rewrites_mark(ctx: ProcessContext, size: int, max_rounds: int) -> int:
    """Rewrite mark "big" round after round until the parent's first command (or
    ``max_rounds``); returns how many rounds it wrote."""
    told = command_path(ctx.run_dir, ctx.name, 1)
    rounds = 0
    while rounds < max_rounds and not os.path.exists(told):
        ctx.mark("big", round=rounds, payload=[rounds] * size, total=rounds * size)
        rounds += 1
    return rounds


def writes_after_lock(ctx: ProcessContext, path: str) -> None:
    ctx.mark("trying")
    discovery.write_json(path, {"by": ctx.name})
    ctx.mark("written")  # its t_ns is after write_json returned


def echo_commands(ctx: ProcessContext) -> int:
    def double(data: Dict[str, Any]) -> int:
        return 2 * data["x"]

    def explode(data: Dict[str, Any]) -> None:
        raise RuntimeError("explode was asked to")

    ctx.mark("ready")
    return ctx.serve_commands({"double": double, "explode": explode}, timeout=30.0)


def connects_and_records(ctx: ProcessContext) -> Dict[str, Any]:
    with ctx.connect(backoff_max=1.0) as c:  # back soon after a restart, however long it took
        ctx.subscribe(c, "t")
        ctx.mark("ready")
        ctx.wait_until(lambda: ctx.history.count("t") >= 1 or None, "one message", DEADLINE_S)
        return {"uid": c.uid}


def leaves_grandparent(ctx: ProcessContext) -> None:
    ctx.mark("ready", pid=os.getpid())
    ctx.wait_command("never", timeout=60.0)


def crashing_story_client(ctx: ProcessContext) -> None:
    raise KeyError("no such thing")


def _crashing_story(run: Run, report: Report) -> None:
    h = run.start_process("client1", crashing_story_client)
    run.wait_mark(h, "ready", timeout=DEADLINE_S)
    report.check(True, "unreachable")


def _idle(event: Any) -> None:  # a plain multiprocessing child, outside any Run
    event.wait(30.0)


# -- tests ----------------------------------------------------------------------------
def test_crash_is_reported_as_crash_with_traceback_not_timeout(tmp_path: Path) -> None:
    with Run("crash", root=str(tmp_path), timeout=RUN_S) as run:
        h = run.start_process("client1", raises, "boom 42")
        run.wait_started(h)
        t0 = time.monotonic()
        with pytest.raises(ProcessFailed) as info:
            run.wait_mark(h, "ready", timeout=30.0)
        assert time.monotonic() - t0 < FAST_S  # seen as it died, not at the deadline
        exc = info.value
        assert exc.name == "client1" and exc.exitcode == 1
        assert exc.traceback is not None
        assert "ValueError: boom 42" in exc.traceback and "in raises" in exc.traceback
        assert "crashed" in str(exc) and "boom 42" in str(exc)
        result = run.results(h, require_ok=False)["client1"]
        assert not result.ok and result.error == "ValueError: boom 42"
        assert [e["kind"] for e in result.events] == ["about-to-fail"]
        assert "ValueError: boom 42" in run.log_tail("client1")  # the log has it too
    assert not os.path.exists(run.dir)


def test_scenario_reports_crash_with_traceback_and_log_tail(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "report.json"
    code = run_scenario(_crashing_story, "a client that crashes", name="crashy", timeout=RUN_S,
                        argv=["--json", str(out), "--run-root", str(tmp_path)])
    report = json.loads(out.read_text())
    assert code == 1 and report["outcome"] == "crash" and not report["passed"]
    assert "KeyError: 'no such thing'" in report["error"]
    assert "in crashing_story_client" in report["error"]
    assert report["failing_process"] == "client1"
    assert "KeyError" in report["log_tail"]
    assert "RESULT: CRASH" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == [out]  # the run directory is gone


def test_results_carry_return_value_history_and_usage(tmp_path: Path) -> None:
    with Run("ok", root=str(tmp_path), timeout=RUN_S) as run:
        h = run.start_process("client1", waits_for_go)
        started_ns = run.wait_started(h)["client1"]
        ready = run.wait_mark(h, "ready", DEADLINE_S)["client1"]
        assert h.launched_ns < started_ns <= ready["t_ns"]
        assert ready["pid"] == h.pid and isinstance(ready["t_ns"], int)
        run.command(h, "go", n=7)
        r = run.results(h, DEADLINE_S)["client1"]
        assert r.ok and r.value == {"got": {"n": 7}} and r.exitcode == 0
        assert [e["name"] for e in r.events if e["kind"] == "command"] == ["go"]
        assert r.maxrss_kb and r.maxrss_kb > 1000 and r.cpu_s is not None
        assert r.launched_ns <= r.started_ns <= r.ended_ns


def test_wait_has_a_deadline_and_names_what_it_awaited(tmp_path: Path) -> None:
    with Run("deadline", root=str(tmp_path), timeout=RUN_S) as run:
        h = run.start_process("client1", waits_for_go)
        run.wait_started(h)
        run.wait_mark(h, "ready", DEADLINE_S)
        t0 = time.monotonic()
        with pytest.raises(HarnessTimeout) as info:
            run.wait_mark(h, "never-reached", timeout=0.5)
        elapsed = time.monotonic() - t0
        assert 0.5 <= elapsed < 0.5 + FAST_S / 2
        assert "'never-reached'" in str(info.value) and "client1" in str(info.value)
        assert info.value.names == ["client1"]


def test_run_deadline_bounds_every_wait(tmp_path: Path) -> None:
    with Run("run-deadline", root=str(tmp_path), timeout=1.0) as run:
        t0 = time.monotonic()
        h = run.start_process("client1", waits_for_go)
        with pytest.raises(HarnessTimeout) as info:
            run.wait_mark(h, "never-reached", timeout=60.0)  # clipped to the run's 1 s
        assert time.monotonic() - t0 < 1.0 + FAST_S / 2
        assert "the run's deadline" in str(info.value)


def test_child_command_wait_has_a_deadline(tmp_path: Path) -> None:
    with Run("child-deadline", root=str(tmp_path), timeout=RUN_S) as run:
        h = run.start_process("client1", waits_briefly_for_go)
        run.wait_started(h)
        with pytest.raises(ProcessFailed) as info:
            run.results(h, DEADLINE_S)
        assert "HarnessTimeout" in str(info.value)
        assert "command 'go' did not come within 0.3s" in str(info.value)


def test_file_lock_excludes_writers_across_processes(tmp_path: Path) -> None:
    with Run("lock", root=str(tmp_path), timeout=RUN_S) as run:
        target = os.path.join(run.dir, "locked.json")
        with discovery.lock_for(target):
            h = run.start_process("client1", writes_after_lock, target)
            run.wait_started(h)
            run.wait_mark(h, "trying", DEADLINE_S)
            # the child is now blocked on the lock we hold: the file must not appear
            with pytest.raises(HarnessTimeout):
                run.wait_mark(h, "never-reached", timeout=0.3)
            assert not os.path.exists(target)
            released_ns = time.monotonic_ns()
        written = run.wait_mark(h, "written", DEADLINE_S)["client1"]
        assert written["t_ns"] >= released_ns
        assert discovery.read_json(target) == {"by": "client1"}
        run.results(h, DEADLINE_S)


def test_reads_never_see_a_torn_file(tmp_path: Path) -> None:
    size, max_rounds = 2000, 100_000
    with Run("atomic", root=str(tmp_path), timeout=RUN_S) as run:
        h = run.start_process("client1", rewrites_mark, size, max_rounds)
        run.wait_started(h)
        path = mark_path(run.dir, "client1", "big")
        seen = set()
        # read while the child rewrites, until reads saw several rounds replace each other
        deadline = time.monotonic() + DEADLINE_S
        while len(seen) < TORN_READ_ROUNDS_SEEN:
            assert h.is_alive() and time.monotonic() < deadline, f"rounds seen: {sorted(seen)}"
            value = discovery.read_json(path)  # raises on a torn JSON file
            if value is not None:
                assert len(value["payload"]) == size
                assert sum(value["payload"]) == value["total"] == value["round"] * size
                seen.add(value["round"])
        run.command(h, "stop")
        rounds = run.results(h, DEADLINE_S)["client1"].value
        assert max(seen) < rounds < max_rounds  # the reads overlapped the rewrites
        assert discovery.read_json(path)["round"] == rounds - 1


def test_cleanup_ends_every_child_even_stopped_or_sigterm_proof(tmp_path: Path) -> None:
    run = Run("cleanup", root=str(tmp_path), timeout=RUN_S)
    waiting = run.start_process("client1", waits_for_go)
    stubborn = run.start_process("client2", ignores_sigterm)
    frozen = run.start_process("client3", waits_for_go)
    run.wait_started([waiting, stubborn, frozen])
    run.wait_mark([waiting, stubborn, frozen], "ready", DEADLINE_S)
    frozen.pause()
    pids = [h.pid for h in run.handles]
    assert run.close() == []
    assert all(h.exitcode is not None for h in run.handles)
    assert stubborn.exitcode == -signal.SIGKILL and frozen.exitcode == -signal.SIGKILL
    assert not any(_is_child_of_us(pid) for pid in pids)
    assert not [p for p in multiprocessing.active_children() if p.pid in pids]
    assert not os.path.exists(run.dir)


def test_cleanup_after_a_crash_inside_the_with_block(tmp_path: Path) -> None:
    handles = []
    with pytest.raises(RuntimeError, match="scenario bug"):
        with Run("crash-cleanup", root=str(tmp_path), timeout=RUN_S) as run:
            handles = [run.start_process("client1", waits_for_go)]
            run.wait_started(handles)
            run.wait_mark(handles, "ready", DEADLINE_S)
            raise RuntimeError("scenario bug")
    assert handles[0].exitcode is not None and not _is_child_of_us(handles[0].pid)
    assert list(tmp_path.iterdir()) == []


def test_cleanup_detects_a_surviving_child(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    stray = ctx.Process(target=_idle, args=(stop,), name="stray", daemon=True)
    run = Run("leak", root=str(tmp_path), timeout=RUN_S)
    stray.start()
    try:
        leaks = run.close(raise_on_leak=False)
        assert len(leaks) == 1 and f"stray (pid {stray.pid})" in leaks[0]
    finally:
        stop.set()
        stray.join(DEADLINE_S)
    assert stray.exitcode == 0


def test_children_die_with_their_parent(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os, sys
        sys.path[:0] = {[str(REPO), str(Path(__file__).parent), str(TESTS)]!r}
        from sente_lite.testing import Run
        from test_harness import leaves_grandparent
        if __name__ == "__main__":
            run = Run("orphan", root={str(tmp_path)!r}, timeout={RUN_S})
            h = run.start_process("client1", leaves_grandparent)
            run.wait_started(h)
            print(run.wait_mark(h, "ready", {DEADLINE_S})["client1"]["pid"], flush=True)
            os._exit(0)   # dies without cleanup
        """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=RUN_S, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    child = int(out.stdout.strip())
    gone = discovery.wait_for(lambda: not os.path.exists(f"/proc/{child}"), DEADLINE_S,
                              f"orphaned child {child} to die")
    assert gone
    for leftover in tmp_path.glob("sente-lite-orphan-*"):  # its parent could not clean up
        shutil.rmtree(leftover)


def test_commands_replies_and_failed_commands(tmp_path: Path) -> None:
    with Run("commands", root=str(tmp_path), timeout=RUN_S) as run:
        h = run.start_process("client1", echo_commands)
        run.wait_started(h)
        run.wait_mark(h, "ready", DEADLINE_S)
        assert run.request(h, "double", x=21) == {"client1": 42}
        with pytest.raises(CommandFailed) as info:
            run.request(h, "explode")
        assert info.value.name == "client1" and "explode was asked to" in str(info.value)
        with pytest.raises(CommandFailed, match="unknown command 'nope'"):
            run.request(h, "nope")
        assert run.request(h, "double", x=1) == {"client1": 2}  # still serving
        run.command(h, "finish")
        assert run.results(h, DEADLINE_S)["client1"].value == 4  # failed ones count too


def test_server_kill_restart_same_port_and_port_freed(tmp_path: Path) -> None:
    with Run("server", root=str(tmp_path), timeout=RUN_S) as run:
        server = run.start_server(heartbeat_ms=1000)
        assert discovery.read_port_file(run.port_file)["port"] == server.port
        h = run.start_process("client1", connects_and_records)
        run.wait_started(h)
        run.wait_mark(h, "ready", DEADLINE_S)
        server.kill()
        assert server.exitcode == -signal.SIGKILL
        server2 = run.restart_server(server)
        assert (server2.name, server2.port) == ("server-2", server.port)
        assert server2.pid != server.pid and server2.server_id != server.server_id
        info = discovery.read_port_file(run.port_file, not_server_id=server.server_id)
        assert info["server-id"] == server2.server_id
        run.wait_mark(h, "status", DEADLINE_S, accept=lambda m: m["server_id"] == server2.server_id
                      and m["status"] == "connected")
        run.server_command(server2, "await-subscribers", channel="t", count=1, timeout=DEADLINE_S)
        assert run.server_command(server2, "publish", channel="t", data={"x": 1})["delivered"] == 1
        r = run.results(h, DEADLINE_S)["client1"]
        assert [d.data["x"] for d in r.deliveries] == [1] and r.deliveries[0].sent_ns is not None
        with pytest.raises(CommandFailed, match="unknown command 'no-such-command'"):
            run.server_command(server2, "no-such-command")
        assert run.stop_server(server2).value["publishes"] == 1
        port = server.port
    assert port_is_free(port)


def test_history_round_trip_and_checks() -> None:
    h = History()
    rows = [Delivery("a", 1, "e1", None, {}, 0, 2_000_000),
            Delivery("a", 2, "e1", None, {}, 0, 4_000_000),
            Delivery("a", 4, "e1", None, {}, None, 5_000_000)]
    h.deliveries.extend(rows)
    h.record("status", status="connected")
    back = History.from_json(json.loads(json.dumps(h.to_json())))
    assert back.deliveries == rows and back.count("a") == 3 and back.events_of("status")
    assert "gap" in order_problem(rows) and order_problem(rows[:2]) is None
    assert duplicates(rows + rows[:1]) == [("a", "e1", 1)]
    assert latency_summary([2.0, 4.0]) == {"count": 2, "p50_ms": 2.0, "p99_ms": 4.0, "max_ms": 4.0}
    assert percentile(list(range(1, 101)), 99) == 99


def test_names_are_checked(tmp_path: Path) -> None:
    with Run("names", root=str(tmp_path), timeout=RUN_S) as run:
        with pytest.raises(ValueError):
            run.start_process("../evil", waits_for_go)
        assert run.handles == []


RUNNER_SCENARIOS = {
    "01_ok.py": """
        import sys
        from sente_lite.testing import run_scenario
        def story(run, report):
            report.check(True, "fine")
            report.figure("clients", 0)
        sys.exit(run_scenario(story, "passes"))
        """,
    "02_fails.py": """
        import sys
        from sente_lite.testing import run_scenario
        def story(run, report):
            report.check(False, "two equals three", "2 != 3")
        sys.exit(run_scenario(story, "a failing check"))
        """,
    "03_broken.py": """
        raise SystemExit("broken before any report")
        """,
    "notes.py": """
        raise SystemExit("not a numbered scenario: never run")
        """,
}
#: A scenario that hangs, run alone with a short timeout (the others get a generous one).
HANGING_SCENARIO = """
    import subprocess, sys, time
    child = subprocess.Popen(["sleep", "60"])
    open(sys.argv[0] + ".pid", "w").write(str(child.pid))
    time.sleep(60)
    """
#: The runner's timeout for the hanging scenario: a fresh interpreter must start it and
#: write its child's pid first, which takes ~0.05 s on an idle machine.
HANG_TIMEOUT_S = 5.0


def run_runner(scripts: Path, *args: str) -> "subprocess.CompletedProcess[str]":
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, str(REPO / "run_all_tests.py"), "--scripts", str(scripts),
                           *args], capture_output=True, text=True, timeout=RUN_S, env=env)


def test_runner_reports_each_outcome_and_kills_what_hangs(tmp_path: Path) -> None:
    scripts, hanging = tmp_path / "scripts", tmp_path / "hanging"
    scripts.mkdir()
    hanging.mkdir()
    for name, text in RUNNER_SCENARIOS.items():
        (scripts / name).write_text(textwrap.dedent(text))
    (hanging / "04_hangs.py").write_text(textwrap.dedent(HANGING_SCENARIO))

    out = run_runner(scripts, "--timeout", str(DEADLINE_S), "--json", str(tmp_path / "r.json"),
                     "--junit", str(tmp_path / "r.xml"))
    assert out.returncode == 1, out.stdout + out.stderr
    runs = {r["scenario"]: r for r in json.loads((tmp_path / "r.json").read_text())["runs"]}
    assert {k: v["outcome"] for k, v in runs.items()} == {
        "01_ok": "pass", "02_fails": "fail", "03_broken": "crash"}
    assert runs["02_fails"]["failed_checks"] == ["two equals three: 2 != 3"]
    assert "broken before any report" in runs["03_broken"]["log_tail"]
    assert "02_fails (run 1): FAIL" in out.stdout and "1/3 scenario runs passed" in out.stdout
    junit = (tmp_path / "r.xml").read_text()
    assert junit.count("<testcase") == 3 and 'failures="1"' in junit and 'errors="1"' in junit

    out = run_runner(hanging, "--timeout", str(HANG_TIMEOUT_S), "--json",
                     str(tmp_path / "h.json"), "--junit", str(tmp_path / "h.xml"))
    assert out.returncode == 1, out.stdout + out.stderr
    [run] = json.loads((tmp_path / "h.json").read_text())["runs"]
    assert (run["scenario"], run["outcome"]) == ("04_hangs", "timeout")
    assert "0/1 scenario runs passed" in out.stdout
    grandchild = int((hanging / "04_hangs.py.pid").read_text())
    assert discovery.wait_for(lambda: not os.path.exists(f"/proc/{grandchild}"), DEADLINE_S,
                              "the hung scenario's child to be killed")
    junit = (tmp_path / "h.xml").read_text()
    assert junit.count("<testcase") == 1 and 'failures="0"' in junit and 'errors="1"' in junit

    only = run_runner(scripts, "-k", "01")
    assert only.returncode == 0 and "1/1 scenario runs passed" in only.stdout


def test_sigterm_to_the_runner_ends_the_running_scenario_and_its_children(tmp_path: Path) -> None:
    """``timeout`` (or a cancelled CI job) sends SIGTERM: the scenario runs in its own
    session, so unless the runner kills it, it and its children outlive the runner."""
    hanging = tmp_path / "hanging"
    hanging.mkdir()
    (hanging / "04_hangs.py").write_text(textwrap.dedent(HANGING_SCENARIO))
    pid_file = hanging / "04_hangs.py.pid"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    runner = subprocess.Popen([sys.executable, str(REPO / "run_all_tests.py"), "--scripts", str(hanging),
                               "--timeout", "120"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env)
    try:
        discovery.wait_for(lambda: pid_file.exists() and pid_file.read_text() or None, RUN_S,
                           "the scenario to start its child")
        grandchild = int(pid_file.read_text())
        runner.terminate()
        out, err = runner.communicate(timeout=RUN_S)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    assert runner.returncode == 128 + signal.SIGTERM, out + err
    assert "terminated (SIGTERM)" in err
    assert discovery.wait_for(lambda: not os.path.exists(f"/proc/{grandchild}"), DEADLINE_S,
                              "the scenario's child to be killed")


def test_a_recovered_false_notice_covers_what_it_names_lost_and_nothing_else() -> None:
    from sente_lite.testing import covered_by_notice

    left_e1 = {"since": {"offset": 3, "epoch": "e1"}, "epoch": "e2", "offset": 0}  # e1 after 3: lost
    topped = {"since": None, "epoch": "e3", "offset": 9}  # e3 up to 9
    assert covered_by_notice([left_e1], "e1", 4) and covered_by_notice([left_e1], "e1", 400)
    assert not covered_by_notice([left_e1], "e1", 3)  # delivered before the gap
    assert not covered_by_notice([left_e1], "e2", 1)  # the new epoch: delivered, not lost
    assert covered_by_notice([topped], "e3", 9) and not covered_by_notice([topped], "e3", 10)
    assert not covered_by_notice([], "e1", 1)

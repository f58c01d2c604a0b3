"""The HTML report: recorded timelines, structure of the report, and the report in Chromium.

The scenarios are tests/data/report_scenarios/: 01_passes and 02_fails (made to
fail: client2 is frozen for a round, then held to a latency bound).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from sente_lite.testing import ProcessContext, Run
from sente_lite.testing.report import render_html, run_entry
from support import REPO, TESTS

SCENARIOS = TESTS / "data" / "report_scenarios"
#: Seconds the runner may take for both small scenarios on a loaded 2-core machine.
RUN_S = 240.0
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: Elements that have no end tag in HTML.
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}
#: SVG elements the report may write without children (``<rect .../>``).
SELF_CLOSING_OK = {"rect", "line", "circle", "path", "polyline", "stop"}


class Element:
    def __init__(self, tag: str, attrs: Dict[str, str], parent: Optional["Element"]) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: List["Element"] = []
        self.text: List[str] = []

    def classes(self) -> List[str]:
        return self.attrs.get("class", "").split()

    def iter(self) -> Iterator["Element"]:
        yield self
        for c in self.children:
            yield from c.iter()

    def find_all(self, tag: str, cls: Optional[str] = None, **attrs: str) -> List["Element"]:
        return [e for e in self.iter() if e.tag == tag and (cls is None or cls in e.classes())
                and all(e.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())]

    def all_text(self) -> str:
        return "".join(self.text) + "".join(c.all_text() for c in self.children)


class StrictTree(HTMLParser):
    """Builds an element tree and fails on a misnested or unclosed element."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {}, None)
        self.cur = self.root
        self.doctype = ""
        self.errors: List[str] = []

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: List[Tuple[str, Optional[str]]]) -> None:
        el = Element(tag, {k: v or "" for k, v in attrs}, self.cur)
        self.cur.children.append(el)
        if tag not in VOID:
            self.cur = el

    def handle_startendtag(self, tag: str, attrs: List[Tuple[str, Optional[str]]]) -> None:
        if tag not in VOID and tag not in SELF_CLOSING_OK:
            self.errors.append(f"<{tag}/> self-closed")
        self.cur.children.append(Element(tag, {k: v or "" for k, v in attrs}, self.cur))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if self.cur.tag != tag:
            self.errors.append(f"</{tag}> closes <{self.cur.tag}> at {self.getpos()}")
            return
        self.cur = self.cur.parent or self.root

    def handle_data(self, data: str) -> None:
        self.cur.text.append(data)


def parse(text: str) -> Element:
    p = StrictTree()
    p.feed(text)
    p.close()
    assert not p.errors, p.errors[:5]
    assert p.cur is p.root, f"<{p.cur.tag}> never closed"
    assert p.doctype.lower() == "doctype html"
    [html] = p.root.find_all("html")
    assert [c.tag for c in html.children] == ["head", "body"]
    assert len(html.children[0].find_all("title")) == 1
    csp = [m for m in html.find_all("meta") if m.attrs.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0].attrs["content"]
    for el in html.iter():  # nothing that would load from elsewhere
        assert el.tag not in ("script", "link", "img", "iframe"), el.tag
        for k in ("src", "href"):
            assert not el.attrs.get(k, "#").startswith(("http:", "https:", "//")), el.attrs
    return html


def sections(doc: Element) -> Dict[str, Element]:
    return {s.attrs["data-scenario"]: s for s in doc.find_all("section", "run")}


def lanes(section: Element) -> Dict[str, Element]:
    [svg] = section.find_all("svg", "timeline")
    found = [g for g in svg.find_all("g") if "lane" in g.classes()]
    names = [g.attrs["data-process"] for g in found]
    assert len(names) == len(set(names)), names
    return dict(zip(names, found))


def run_cmd(*args: str) -> "subprocess.CompletedProcess[str]":
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=RUN_S,
                          env=env, cwd=str(REPO))


@pytest.fixture(scope="module")
def runner_report(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Dict[str, Any]]:
    """The runner's --html report of both scenarios, and its --json."""
    out = tmp_path_factory.mktemp("report")
    html_path, json_path = out / "report.html", out / "runs.json"
    done = run_cmd(str(REPO / "run_all_tests.py"), "--scripts", str(SCENARIOS), "--html",
                   str(html_path), "--json", str(json_path))
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"HTML report: {html_path} (written in " in done.stdout
    return html_path, json.loads(json_path.read_text())


def test_runner_report_of_a_passing_and_a_failing_run(runner_report: Tuple[Path, Dict[str, Any]]) -> None:
    html_path, runs = runner_report
    assert {r["scenario"]: r["outcome"] for r in runs["runs"]} == {"01_passes": "pass",
                                                                   "02_fails": "fail"}
    doc = parse(html_path.read_text(encoding="utf-8"))
    [summary] = doc.find_all("table", "summary")
    rows = [r for r in summary.find_all("tr") if r.attrs.get("data-outcome")]
    assert [r.attrs["data-outcome"] for r in rows] == ["pass", "fail"]
    found = sections(doc)
    assert set(found) == {"01_passes", "02_fails"}
    links = {a.attrs["href"] for a in summary.find_all("a")}
    assert links == {f"#{s.attrs['id']}" for s in found.values()}

    ok, bad = found["01_passes"], found["02_fails"]
    assert ok.attrs["data-outcome"] == "pass" and bad.attrs["data-outcome"] == "fail"
    # one lane per process, in start order
    assert list(lanes(ok)) == ["server", "client1", "client2"]
    assert list(lanes(bad)) == ["server", "client1", "client2"]
    # the passing run marks nothing
    assert not ok.find_all("li", "fail")
    assert all(g.attrs["data-highlight"] == "false" for g in lanes(ok).values())
    # the failing run: the failed check, its process highlighted, its log tail
    [failed] = bad.find_all("li", "fail")
    assert failed.attrs["data-process"] == "client2"
    assert "client2 got all 80 messages within 250 ms" in failed.all_text()
    assert {n: g.attrs["data-highlight"] for n, g in lanes(bad).items()} == {
        "server": "false", "client1": "false", "client2": "true"}
    [log] = bad.find_all("details", "log")
    assert log.attrs["data-process"] == "client2" and "client2 started" in log.all_text()
    # both runs had deliveries: a latency plot each, with points
    for sec in (ok, bad):
        [lat] = sec.find_all("svg", "latency")
        assert lat.find_all("rect", "rate") and lat.find_all("circle")


def test_scenario_html_and_trace_record_the_faults(tmp_path: Path) -> None:
    html_path, trace_path = tmp_path / "one.html", tmp_path / "trace.json"
    done = run_cmd(str(SCENARIOS / "02_fails.py"), "--html", str(html_path),
                   "--trace", str(trace_path))
    assert done.returncode == 1, done.stdout + done.stderr
    trace = json.loads(trace_path.read_text())
    assert trace["verdict"]["outcome"] == "fail"
    procs = {p["name"]: p for p in trace["processes"]}
    assert list(procs) == ["server", "client1", "client2"]
    c2 = procs["client2"]["events"]
    kinds = [e["kind"] for e in c2]
    assert kinds[0] == "launched" and kinds[-1] == "exit" and "started" in kinds
    assert [e["status"] for e in c2 if e["kind"] == "status"] == [
        "connecting", "connected", "closed"]
    signals = [(e["signal"], e["by"]) for e in c2 if e["kind"] == "signal"]
    assert signals == [("SIGSTOP", "scenario"), ("SIGCONT", "scenario")]
    stop, cont = [e["t"] for e in c2 if e["kind"] == "signal"]
    assert 0 < stop < cont <= trace["duration_s"]
    assert all(p["exitcode"] == 0 for p in procs.values())
    assert procs["client2"]["deliveries"] == 80 and sum(procs["client2"]["bins"]) == 80
    assert trace["latency"]["max_ms"] > 250
    assert any(e["kind"] == "mark" and e["mark"] == "ready" for e in procs["server"]["events"])

    doc = parse(html_path.read_text(encoding="utf-8"))
    [section] = sections(doc).values()
    assert lanes(section)["client2"].attrs["data-highlight"] == "true"
    assert lanes(section)["client2"].find_all("rect", "paused")


def sleeper(ctx: ProcessContext) -> None:
    ctx.mark("ready")
    ctx.wait_command("never")


def test_journal_keeps_the_events_of_a_killed_process(tmp_path: Path) -> None:
    with Run("killed", root=str(tmp_path), trace=True) as run:
        h = run.start_process("victim", sleeper)
        run.wait_mark(h, "ready")
        h.kill()
    assert run.trace is not None
    [p] = run.trace["processes"]
    assert p["exitcode"] == -9 and not p["reported"]
    events = [(e["kind"], e.get("mark") or e.get("signal") or e.get("how")) for e in p["events"]]
    assert events == [("launched", None), ("started", None), ("mark", "ready"),
                      ("signal", "SIGKILL"), ("exit", "killed by SIGKILL")]
    kill_t = p["events"][3]["t"]
    assert p["events"][-1]["t"] == kill_t


def test_repeated_runs_show_pass_rate_and_latency_per_run() -> None:
    trace = {"duration_s": 1.0, "bins": 2, "bin_s": 0.5, "events": [],
             "processes": [{"name": "client1", "role": "client", "pid": 1, "bins": [3, 0],
                            "events": [{"t": 0.1, "kind": "status", "status": "connected"}]}],
             "latency": {"count": 3, "p50_ms": 1.5, "p90_ms": 2.0, "p99_ms": 2.5, "max_ms": 2.5,
                         "bins": [[1.5, 2.5, 2.5], None]}}
    runs = [run_entry({"scenario": "05_x", "outcome": o, "duration_s": 1.0, "figures": {}}, trace, i)
            for i, o in ((1, "pass"), (2, "fail"), (3, "pass"))]
    doc = parse(render_html(runs))
    [rate] = doc.find_all("table", "passrate")
    assert "2/3" in rate.all_text() and "67%" in rate.all_text()
    [per_run] = doc.find_all("table", "latency-runs")
    assert len(per_run.find_all("tr")) == 4 and "2.5" in per_run.all_text()
    assert len(doc.find_all("section", "run")) == 3


def _playwright() -> Any:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"chromium is not installed ({CHROMIUM}; Debian package 'chromium')")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright; it drives chromium)")
    return sync_playwright


def test_report_opens_offline_in_chromium(runner_report: Tuple[Path, Dict[str, Any]],
                                          tmp_path: Path) -> None:
    sync_playwright = _playwright()
    html_path, _ = runner_report
    url = pathlib.Path(html_path).resolve().as_uri()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            requests: List[str] = []
            problems: List[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(url, wait_until="load")
            assert requests == [url] and not problems, (requests, problems)
            failing = page.locator('section.run[data-scenario="02_fails"]')
            assert failing.locator("svg.timeline g.lane").count() == 3
            box = failing.locator("svg.timeline").bounding_box()
            assert box and box["width"] > 1000 and box["height"] > 100
            lane = failing.locator('svg.timeline g.lane[data-highlight="true"]')
            assert lane.count() == 1 and lane.get_attribute("data-process") == "client2"
            lane_box = lane.bounding_box()
            assert lane_box and lane_box["width"] > 1000
            check = failing.locator("li.check.fail")
            assert check.is_visible() and "within 250 ms" in check.inner_text()
            # the failed check is drawn red: the browser applied the inline style sheet
            colour = check.evaluate("e => getComputedStyle(e).backgroundColor")
            assert colour == "rgb(253, 226, 226)", colour
            shot = tmp_path / "report.png"
            failing.screenshot(path=str(shot))
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
        finally:
            browser.close()


def test_a_scenario_without_a_trace_still_has_its_section(tmp_path: Path) -> None:
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "01_broken.py").write_text("import sys\nprint('broken before any report')\n"
                                          "sys.exit(3)\n")
    html_path = tmp_path / "r.html"
    done = run_cmd(str(REPO / "run_all_tests.py"), "--scripts", str(scripts), "--html",
                   str(html_path))
    assert done.returncode == 1, done.stdout + done.stderr
    doc = parse(html_path.read_text(encoding="utf-8"))
    [section] = sections(doc).values()
    assert section.attrs["data-outcome"] == "crash"
    assert not section.find_all("svg")
    text = section.all_text()
    assert "No timeline" in text and "broken before any report" in text
    assert "exited with code 3" in text

"""The README's self-contained examples run as written: the server and the client talk to
each other in two real processes, and the numbered scenario passes on its own and through
``run_all_tests.py``. Only the fixed port is swapped for a free one (port 0)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from support import wait_until
from support import REPO

README = REPO / "README.md"
#: Generous: a loaded 2-core machine may take seconds to start an interpreter.
RUN_TIMEOUT_S = 120


def section_code(title: str) -> str:
    """The first fenced Python block under the README heading ``## <title>``."""
    text = README.read_text(encoding="utf-8")
    parts = re.split(r"^## ", text, flags=re.M)
    section = next((p for p in parts if p.startswith(title + "\n")), None)
    assert section is not None, f"README.md has no '## {title}' section"
    match = re.search(r"^```python\n(.*?)^```", section, re.S | re.M)
    assert match, f"README.md's '{title}' section has no python example"
    return match.group(1)


def child_env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTE_LITE")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@pytest.fixture
def processes() -> Iterator[List[subprocess.Popen]]:
    """Processes a test starts; each one still running afterwards is killed by its PID."""
    started: List[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=RUN_TIMEOUT_S)


def test_the_server_and_client_examples_talk_to_each_other(
        tmp_path: Path, processes: List[subprocess.Popen]) -> None:
    server_code = section_code("Server")
    client_code = section_code("Client")
    assert "port=8765" in server_code and "ws://127.0.0.1:8765/chsk" in client_code
    out = tmp_path / "server.out"
    with open(out, "w") as sink:
        server = subprocess.Popen([sys.executable, "-c", server_code.replace("port=8765", "port=0")],
                                  stdin=subprocess.PIPE, stdout=sink, stderr=subprocess.STDOUT,
                                  env=child_env(), cwd=str(tmp_path), text=True)
    processes.append(server)
    url = wait_until(lambda: re.search(r"ws://127\.0\.0\.1:\d+/chsk", out.read_text()), RUN_TIMEOUT_S,
                     "the server example's URL").group(0)
    client = subprocess.run([sys.executable, "-c", client_code.replace("ws://127.0.0.1:8765/chsk", url)],
                            env=child_env(), cwd=str(tmp_path), capture_output=True, text=True,
                            timeout=RUN_TIMEOUT_S)
    assert client.returncode == 0, client.stderr[-3000:]
    assert client.stdout.strip() == "{'x': 1}"  # the echo handler's reply
    assert "hello " in out.read_text()          # on_connect ran
    server.communicate("\n", timeout=RUN_TIMEOUT_S)  # "Enter stops"
    assert server.returncode == 0, out.read_text()[-3000:]


@pytest.fixture
def scenario_dir(tmp_path: Path) -> Path:
    """A repository holding the README's scenario as ``test_scripts/12_hello.py``."""
    (tmp_path / "test_scripts").mkdir()
    shutil.copy2(REPO / "test_scripts" / "_repo.py", tmp_path / "test_scripts" / "_repo.py")
    shutil.copy2(REPO / "run_all_tests.py", tmp_path / "run_all_tests.py")
    (tmp_path / "test_scripts" / "12_hello.py").write_text(section_code("A numbered scenario"))
    return tmp_path


def test_the_scenario_example_passes(scenario_dir: Path) -> None:
    proc = subprocess.run([sys.executable, "test_scripts/12_hello.py"], cwd=str(scenario_dir),
                          env=child_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("PASS  client") == 2 and "RESULT: PASS" in proc.stdout


def test_the_scenario_example_passes_through_run_all_tests(scenario_dir: Path) -> None:
    proc = subprocess.run([sys.executable, "run_all_tests.py", "-k", "12"], cwd=str(scenario_dir),
                          env=child_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"12_hello\s+PASS", proc.stdout)

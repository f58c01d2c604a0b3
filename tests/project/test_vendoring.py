"""Vendoring works as docs/harness.md says: a downstream repository holding a copy of
``sente_lite/``, ``run_all_tests.py`` and ``test_scripts/_repo.py``, with only the four core
dependencies importable (not this package), runs the page's own scenario example both
directly and through ``run_all_tests.py``.

The example is read out of docs/harness.md, so the two cannot drift apart.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from support import REPO

#: What a downstream repository copies (docs/harness.md, "Vendoring").
VENDORED = ("sente_lite", "run_all_tests.py", "test_scripts/_repo.py", "LICENSE")
#: The core dependencies, by import name.
CORE_MODULES = ("websockets", "websocket", "filelock", "tabulate")
EXAMPLE_NAME = "10_greetings.py"
RUN_TIMEOUT_S = 180


def readme_example() -> str:
    """The fenced Python block of docs/harness.md's "Writing your own scenario" section."""
    text = (REPO / "docs" / "harness.md").read_text(encoding="utf-8")
    assert "## Writing your own scenario" in text, "docs/harness.md lost its scenario section"
    section = text.split("## Writing your own scenario", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "docs/harness.md lost its scenario example"
    return match.group(1)


def core_only_python(root: Path) -> Path:
    """A virtual environment whose only packages are links to the core dependencies."""
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    for name in CORE_MODULES:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin, f"core dependency {name} is not installed"
        origin = Path(spec.origin)
        source = origin.parent if origin.name == "__init__.py" else origin
        (Path(site) / source.name).symlink_to(source)
    return python


@pytest.fixture(scope="module")
def downstream(tmp_path_factory: pytest.TempPathFactory) -> "tuple[Path, Path]":
    root = tmp_path_factory.mktemp("downstream")
    repo = root / "repo"
    for rel in VENDORED:
        src, dst = REPO / rel, repo / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    (repo / "test_scripts" / EXAMPLE_NAME).write_text(readme_example(), encoding="utf-8")
    return repo, core_only_python(root)


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SENTE_LITE"))}
    return env


def test_the_environment_has_only_the_core_dependencies(downstream: "tuple[Path, Path]") -> None:
    repo, python = downstream
    probe = ("import importlib.util as u; "
             "print([m for m in ('sente_lite', 'orjson', 'prometheus_client', 'pytest') "
             "if u.find_spec(m)])")
    out = subprocess.run([str(python), "-c", probe], cwd=str(repo.parent), env=clean_env(),
                         check=True, capture_output=True, text=True, timeout=60).stdout
    assert out.strip() == "[]"  # not even the package under test: only the vendored copy


def test_the_readme_example_runs_directly(downstream: "tuple[Path, Path]") -> None:
    repo, python = downstream
    proc = subprocess.run([str(python), f"test_scripts/{EXAMPLE_NAME}"], cwd=str(repo),
                          env=clean_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "PASS" in proc.stdout


def test_the_readme_example_runs_from_another_folder(downstream: "tuple[Path, Path]") -> None:
    repo, python = downstream
    proc = subprocess.run([str(python), str(repo / "test_scripts" / EXAMPLE_NAME)],
                          cwd=str(repo.parent), env=clean_env(), capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_the_readme_example_passes_through_run_all_tests(downstream: "tuple[Path, Path]") -> None:
    repo, python = downstream
    proc = subprocess.run([str(python), "run_all_tests.py"], cwd=str(repo), env=clean_env(),
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "1/1 scenario runs passed" in proc.stdout
    assert re.search(r"10_greetings\s+PASS", proc.stdout)


def test_the_vendored_copy_is_the_one_imported(downstream: "tuple[Path, Path]") -> None:
    repo, python = downstream
    probe = repo / "test_scripts" / "where.py"
    probe.write_text("import _repo  # noqa: F401\nimport sente_lite\nprint(sente_lite.__file__)\n")
    out = subprocess.run([str(python), str(probe)], cwd=str(repo.parent), env=clean_env(),
                         check=True, capture_output=True, text=True, timeout=60).stdout
    probe.unlink()
    assert Path(out.strip()).resolve().is_relative_to(repo.resolve())

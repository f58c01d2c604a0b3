"""The Node tests of sente_lite.js (tests/js, ``node --test``), run as part of the suite.

They need Node 18+ and npm's ``ws`` package (Node has no global WebSocket before 22):
``npm ci`` is run here when tests/js/node_modules is missing. Without node or npm the
test is skipped with a reason that names them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import TESTS

JS_DIR = TESTS / "js"
NPM_TIMEOUT_S = 180
NODE_TESTS_TIMEOUT_S = 300


def test_sente_lite_js_under_node() -> None:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the Node tests of sente_lite.js (tests/js): "
                    "apt-get install nodejs npm")
    if not (JS_DIR / "node_modules" / "ws").is_dir():
        setup = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                               cwd=str(JS_DIR), capture_output=True, text=True,
                               timeout=NPM_TIMEOUT_S)
        if setup.returncode != 0:
            pytest.skip(f"npm ci in tests/js failed (no registry?): {setup.stderr[-500:]}")
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run([node, "--test"], cwd=str(JS_DIR), env=env, capture_output=True,
                          text=True, timeout=NODE_TESTS_TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "# fail 0" in proc.stdout and "# pass 0" not in proc.stdout

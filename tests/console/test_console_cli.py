"""``sente-lite console`` for real: subprocesses, a pty for the interactive prompt, and an
existing nREPL client (nrepl-python-client) driving the TCP transport."""

from __future__ import annotations

import os
import pty
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, List

import pytest

from sente_lite import Console
from support import WAIT_S, wait_until
from support import REPO



def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def console_cmd(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sente_lite", "console", *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def served(make_server, tmp_path, monkeypatch) -> Any:
    monkeypatch.chdir(tmp_path)
    return make_server(authenticate=lambda req: {"tok-ops": "ops", "tok-guest": "guest"}.get(req.token or ""),
                       console=Console(console_users=["ops"]))


def test_dash_e_over_tcp_reads_nrepl_port_and_sets_the_exit_code(served, tmp_path):
    ok = console_cmd("-e", "print('out line'); srv.server_id", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines() == ["out line", repr(served.server_id)]
    bad = console_cmd("-e", "{}['missing']", cwd=tmp_path)
    assert bad.returncode == 1 and "KeyError: 'missing'" in bad.stderr
    explicit = console_cmd("--nrepl", f"127.0.0.1:{served.console.port}", "-e", "6 * 7", cwd=REPO)
    assert explicit.returncode == 0 and explicit.stdout.strip() == "42"


def test_dash_e_over_the_websocket_needs_a_console_user(served, tmp_path):
    ok = console_cmd(served.url, "--token", "tok-ops", "-e", "len(srv.connections())", cwd=tmp_path)
    assert ok.returncode == 0 and ok.stdout.strip() == "1", ok.stderr
    guest = console_cmd(served.url, "--token", "tok-guest", "-e", "srv.stop()", cwd=tmp_path)
    assert guest.returncode == 1 and "forbidden" in guest.stderr
    anonymous = console_cmd(served.url, "-e", "srv.stop()", cwd=tmp_path)
    assert anonymous.returncode == 2 and "401" in anonymous.stderr
    assert served.console.stats()["console_evals"] == 1


def test_a_server_without_the_websocket_console_is_named_at_once(make_server, tmp_path):
    srv = make_server(console=Console(port_file=None))
    done = console_cmd(srv.url, "-e", "1", cwd=tmp_path)
    assert done.returncode == 1 and "serves no console over the WebSocket" in done.stderr


def test_no_target_and_unreachable_targets_say_what_to_do(tmp_path):
    none = console_cmd("-e", "1", cwd=tmp_path)
    assert none.returncode == 1 and ".nrepl-port" in none.stderr
    (tmp_path / ".nrepl-port").write_text("1")  # nothing listens on port 1
    gone = console_cmd("-e", "1", cwd=tmp_path)
    assert gone.returncode == 2 and "cannot reach" in gone.stderr
    assert console_cmd("--nrepl", "nope", "-e", "1", cwd=tmp_path).returncode == 1
    assert "ws://" in console_cmd("http://x", "-e", "1", cwd=tmp_path).stderr


class Pty:
    """The interactive console on a pseudo-terminal."""

    def __init__(self, args: List[str], cwd: Path, env: dict) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen([sys.executable, "-m", "sente_lite", "console", *args], cwd=cwd,
                                     env=env, stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        self.seen = ""

    def expect(self, text: str) -> str:
        deadline = time.monotonic() + WAIT_S
        while text not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"never saw {text!r}; got {self.seen!r}"
            if select.select([self.master], [], [], left)[0]:
                self.seen += os.read(self.master, 65536).decode("utf-8", "replace")
        before, _, self.seen = self.seen.partition(text)
        return before

    def line(self, text: str) -> None:
        os.write(self.master, text.encode() + b"\n")

    def close(self) -> int:
        try:
            return self.proc.wait(WAIT_S)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            os.close(self.master)


def test_interactive_prompt_evaluates_interrupts_and_keeps_history(served, tmp_path):
    env = _env()
    env["SENTE_LITE_CONSOLE_HISTORY"] = str(tmp_path / "history")
    term = Pty([], tmp_path, env)
    try:
        term.expect(">>> ")
        term.line("x = 5")
        term.expect(">>> ")
        term.line("x * 2")
        assert "10" in term.expect(">>> ")
        term.line("def f():")
        term.expect("... ")
        term.line("    return x + 1")
        term.expect("... ")
        term.line("")
        term.expect(">>> ")
        term.line("f()")
        assert "6" in term.expect(">>> ")
        term.line("while True: pass")
        wait_until(lambda: any(s.busy for s in list(served.console.nrepl._sessions.values())),
                   what="the loop running")
        started = time.monotonic()
        term.proc.send_signal(signal.SIGINT)  # what Ctrl-C does to the foreground process
        assert "interrupted" in term.expect(">>> ")
        assert time.monotonic() - started < 5
        term.line("'alive'")
        assert "'alive'" in term.expect(">>> ")
        os.write(term.master, b"\x04")  # Ctrl-D
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.close()
    history = (tmp_path / "history").read_text()
    assert "x * 2" in history and "'alive'" in history


def test_an_existing_nrepl_client_drives_the_tcp_transport(served):
    nrepl = pytest.importorskip("nrepl.bencode")  # nrepl-python-client, in the [test] extra
    # what nrepl.connect("nrepl://...") does, keeping the socket: closing that client's file
    # while its reader blocks in it waits for the reader, so the socket is shut down first
    sock = socket.create_connection(("127.0.0.1", served.console.port), timeout=WAIT_S)
    sock.settimeout(None)
    conn = nrepl.BencodeIO(sock.makefile("rw"))

    def read() -> Any:  # that client's read blocks for ever: a missing answer fails, not hangs
        got: "queue.Queue[Any]" = queue.Queue()
        threading.Thread(target=lambda: got.put(conn.read()), daemon=True).start()
        try:
            return got.get(timeout=WAIT_S)
        except queue.Empty:
            raise AssertionError(f"no answer within {WAIT_S}s") from None

    try:
        conn.write({"op": "clone", "id": "1"})
        session = read()["new-session"]
        conn.write({"op": "eval", "id": "2", "session": session,
                    "code": "print('from nrepl'); srv.stats()['connections']"})
        answers = [read() for _ in range(3)]
        assert answers[0]["out"] == "from nrepl\n" and answers[1]["value"] == "0"
        assert answers[2]["status"] == ["done"] and all(a["id"] == "2" for a in answers)
        # (this client stops reading a list or map at a 0 or an empty value, so describe,
        # whose versions hold 0s, and non-ASCII text are left to the other tests)
        conn.write({"op": "ls-sessions", "id": "3"})
        assert read()["sessions"] == [session]
        # the interrupt written right behind its eval: it may arrive before the eval has
        # started, and must still stop it (it once found the session idle and the loop ran on)
        for n in range(5):
            conn.write({"op": "eval", "id": f"5-{n}", "session": session, "code": "while 1: pass"})
            conn.write({"op": "interrupt", "id": f"6-{n}", "session": session, "interrupt-id": f"5-{n}"})
            statuses = {}
            while len(statuses) < 2:
                answer = read()
                statuses[answer["id"]] = answer["status"]
            assert statuses == {f"5-{n}": ["done", "interrupted"], f"6-{n}": ["done"]}
        conn.write({"op": "eval", "id": "7", "session": session, "code": "while 1: pass"})
        wait_until(lambda: any(s.busy for s in list(served.console.nrepl._sessions.values())),
                   what="the loop running")
        conn.write({"op": "interrupt", "id": "8", "session": session, "interrupt-id": "7"})
        assert {read()["id"]: None for _ in range(2)}.keys() == {"7", "8"}
        conn.write({"op": "close", "id": "4", "session": session})
        assert "session-closed" in read()["status"]
    finally:
        sock.shutdown(socket.SHUT_RDWR)
        conn.close()
        sock.close()

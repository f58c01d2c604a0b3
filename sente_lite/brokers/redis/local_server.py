"""A local ``redis-server`` process for tests, scenarios and benchmarks: started on a free
port, stopped by PID.

::

    with RedisServer() as redis_srv:       # no persistence, in a temp dir
        Server(broker=redis_srv.url)        # redis://127.0.0.1:<port>/0
        redis_srv.kill()                    # SIGKILL: every key is gone
        redis_srv.start()                   # again, on the same port

The test harness offers it as :mod:`sente_lite.testing.redis_server`, with
``require_redis_server`` (pytest skips, naming ``redis-server``, when it is missing).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import List, Optional

log = logging.getLogger("sente_lite.redis.local_server")

#: The executable looked up on PATH (Debian: ``apt-get install redis-server``).
REDIS_SERVER = "redis-server"
#: Seconds a started redis-server may take to answer PING.
REDIS_START_TIMEOUT_S = 10.0
#: Seconds redis-server gets after SIGTERM before SIGKILL.
REDIS_STOP_GRACE_S = 3.0
#: What a missing ``redis-server`` is reported as.
MISSING = "redis-server is not installed (apt-get install redis-server)"


def redis_server_path() -> Optional[str]:
    """The path of ``redis-server``, or None when it is not installed."""
    return shutil.which(REDIS_SERVER)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def ping(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a Redis at ``host:port`` answers PING with PONG."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process: no persistence, its files in a temp dir.

    ``port`` 0 picks a free one, kept across :meth:`kill` and :meth:`start`.
    """

    def __init__(self, port: int = 0, host: str = "127.0.0.1",
                 executable: Optional[str] = None) -> None:
        self.executable = executable or redis_server_path()
        if self.executable is None:
            raise FileNotFoundError(MISSING)
        self.host = host
        self.port = port or free_port(host)
        self.dir = tempfile.mkdtemp(prefix="sente-lite-redis-")
        self.proc: Optional[subprocess.Popen] = None
        self.starts = 0

    @property
    def url(self) -> str:
        """``redis://host:port/0``."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> Optional[int]:
        """The PID of the running process (None when stopped)."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def command(self) -> List[str]:
        """The command line: no RDB snapshots, no AOF, logs in the temp dir."""
        assert self.executable is not None
        return [self.executable, "--port", str(self.port), "--bind", self.host,
                "--save", "", "--appendonly", "no", "--dir", self.dir,
                "--logfile", os.path.join(self.dir, "redis.log"), "--protected-mode", "no"]

    def start(self, timeout: float = REDIS_START_TIMEOUT_S) -> "RedisServer":
        """Start it and wait until it answers PING (RuntimeError after ``timeout``)."""
        if self.pid is not None:
            raise RuntimeError(f"redis-server already runs (pid {self.pid})")
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while not ping(self.host, self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: "
                                   f"{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not answer PING within {timeout}s")
            time.sleep(0.02)  # polling a readiness condition, with its deadline above
        log.info("redis-server pid %d on port %d", self.proc.pid, self.port)
        return self

    def kill(self) -> None:
        """SIGKILL it (every key is lost: nothing is persisted) and reap it."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

    def pause(self) -> None:
        """SIGSTOP it: its sockets stay open, it answers nothing."""
        if self.pid is not None:
            os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT it after :meth:`pause`."""
        if self.pid is not None:
            os.kill(self.pid, signal.SIGCONT)

    def stop(self, grace: float = REDIS_STOP_GRACE_S) -> None:
        """SIGTERM it, then SIGKILL after ``grace`` seconds."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGCONT)
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

    def restart(self) -> "RedisServer":
        """SIGKILL it and start a fresh, empty one on the same port."""
        self.kill()
        return self.start()

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of its log."""
        try:
            with open(os.path.join(self.dir, "redis.log"), encoding="utf-8", errors="replace") as f:
                return "\n".join(f.read().splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        """Stop it and remove its temp dir."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["RedisServer", "redis_server_path", "free_port", "ping", "MISSING",
           "REDIS_SERVER", "REDIS_START_TIMEOUT_S", "REDIS_STOP_GRACE_S"]

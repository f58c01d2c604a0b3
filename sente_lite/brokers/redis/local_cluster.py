"""A local Redis Cluster for tests, scenarios and benchmarks: 3 masters and 3 replicas
(``redis-server --cluster-enabled yes`` on free ports, joined by ``redis-cli --cluster
create ... --cluster-replicas 1 --cluster-yes``), stopped by PID, temp dirs removed.

::

    with LocalCluster() as cluster:
        Server(broker=cluster.url)          # redis+cluster://127.0.0.1:p1,...
        port = cluster.master_of(b"key")    # the master serving that key's slot
        cluster.kill(port)                  # SIGKILL: its replica takes over
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from typing import Dict, List, Optional, Set

from .local_server import REDIS_START_TIMEOUT_S, RedisServer, free_port

log = logging.getLogger("sente_lite.redis.local_server")

#: The executable that joins the nodes into a cluster.
REDIS_CLI = "redis-cli"
#: What a missing ``redis-cli`` is reported as.
MISSING_CLI = "redis-cli is not installed (apt-get install redis-tools)"
#: Seconds the cluster may take to report ``cluster_state:ok`` on every node.
CLUSTER_READY_TIMEOUT_S = 20.0
#: ``cluster-node-timeout`` of every node (ms): how fast a dead master is replaced.
CLUSTER_NODE_TIMEOUT_MS = 1000


def redis_cli_path() -> Optional[str]:
    """The path of ``redis-cli``, or None when it is not installed."""
    return shutil.which(REDIS_CLI)


def _command(port: int, *args: str, timeout: float = 1.0) -> str:
    """One inline command to the Redis on ``port``; its reply's text ('' on failure)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(" ".join(args).encode() + b"\r\n")
            data = b""
            s.settimeout(timeout)
            while True:
                chunk = s.recv(65536)
                data += chunk
                if not chunk or (data.startswith(b"$") and data.count(b"\r\n") >= 2
                                 and len(data) >= int(data[1:data.index(b"\r\n")]) + 4):
                    break
                if data[:1] in (b"+", b"-", b":") and data.endswith(b"\r\n"):
                    break
            return data.decode("utf-8", "replace")
    except (OSError, ValueError):
        return ""


def _port_not_in(taken: Set[int]) -> int:
    """A free port not in ``taken`` (added to it): the OS may offer a port twice while the
    nodes given it have not started yet."""
    while True:
        port = free_port()
        if port not in taken:
            taken.add(port)
            return port


class _Node(RedisServer):
    def __init__(self, taken: Set[int]) -> None:
        super().__init__(_port_not_in(taken))
        self.bus_port = _port_not_in(taken)  # the cluster bus (not port + 10000: it may be taken)

    def command(self) -> List[str]:
        return super().command() + ["--cluster-enabled", "yes", "--cluster-config-file",
                                    "nodes.conf", "--cluster-node-timeout",
                                    str(CLUSTER_NODE_TIMEOUT_MS),
                                    "--cluster-port", str(self.bus_port),
                                    # a replica syncs at once (not after the default 5 s wait
                                    # for more replicas), so it can take over from the start
                                    "--repl-diskless-sync-delay", "0"]


class LocalCluster:
    """``masters`` masters with ``replicas`` replicas each, on free ports of 127.0.0.1."""

    def __init__(self, masters: int = 3, replicas: int = 1) -> None:
        self.cli = redis_cli_path()
        if self.cli is None:
            raise FileNotFoundError(MISSING_CLI)
        taken: Set[int] = set()
        self.nodes = [_Node(taken) for _ in range(masters * (1 + replicas))]
        self.replicas = replicas

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:p1,...`` (every node)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self, timeout: float = CLUSTER_READY_TIMEOUT_S) -> "LocalCluster":
        """Start every node, join them, wait until each says ``cluster_state:ok``."""
        try:
            for node in self.nodes:
                node.start(REDIS_START_TIMEOUT_S)
            assert self.cli is not None
            subprocess.run([self.cli, "--cluster", "create",
                            *[f"127.0.0.1:{n.port}" for n in self.nodes],
                            "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                           check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, timeout=timeout)
            self.wait_ok(timeout)
        except BaseException:
            self.close()
            raise
        return self

    def wait_ok(self, timeout: float = CLUSTER_READY_TIMEOUT_S) -> None:
        """Wait until every running node reports ``cluster_state:ok``, every slot is
        served by a live master and every live replica is in sync with its master
        (RuntimeError after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            alive = [n for n in self.nodes if n.pid is not None]
            masters = self.masters()
            if masters and all("cluster_state:ok" in _command(n.port, "CLUSTER", "INFO")
                               for n in alive) and all(self._port_alive(p)
                                                       for p in masters.values()) and all(
                    self._synced(n.port) for n in alive if n.port not in masters.values()):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not reach cluster_state:ok in {timeout}s")
            time.sleep(0.05)  # polling a readiness condition, with its deadline above

    @staticmethod
    def _synced(port: int) -> bool:
        """True when the replica on ``port`` is in sync with its master (it can take over)."""
        return "master_link_status:up" in _command(port, "INFO", "replication")

    def _port_alive(self, port: int) -> bool:
        return any(n.port == port and n.pid is not None for n in self.nodes)

    def masters(self) -> Dict[str, int]:
        """Slot range ("0-5460") -> port of the master serving it, as a live node sees it."""
        for node in self.nodes:
            if node.pid is None:
                continue
            text = _command(node.port, "CLUSTER", "NODES")
            if not text:
                continue
            out: Dict[str, int] = {}
            for line in text.splitlines():
                fields = line.split()
                if len(fields) < 9 or "master" not in fields[2] or "fail" in fields[2]:
                    continue
                port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
                for slots in fields[8:]:
                    out[slots] = port
            return out
        return {}

    def master_of(self, key: bytes) -> int:
        """The port of the master serving ``key``'s slot now."""
        from redis.crc import key_slot  # only callers with redis-py use it

        slot = key_slot(key)
        for slots, port in self.masters().items():
            low, _, high = slots.partition("-")
            if int(low) <= slot <= int(high or low):
                return port
        raise RuntimeError(f"no master serves slot {slot}")

    def replica_of(self, port: int) -> int:
        """The port of a live replica of the master on ``port``."""
        for node in self.nodes:
            if node.pid is None:
                continue
            lines = [line.split() for line in
                     _command(node.port, "CLUSTER", "NODES").splitlines()]
            ids = {int(f[1].split("@")[0].rsplit(":", 1)[1]): f[0] for f in lines if len(f) > 3}
            for f in lines:
                if len(f) > 3 and "slave" in f[2] and "fail" not in f[2] and f[3] == ids.get(port):
                    return int(f[1].split("@")[0].rsplit(":", 1)[1])
            break
        raise RuntimeError(f"no live replica of the master on port {port}")

    def node(self, port: int) -> RedisServer:
        """The node on ``port`` (``pause()``/``resume()`` it: SIGSTOP/SIGCONT)."""
        for node in self.nodes:
            if node.port == port:
                return node
        raise KeyError(f"no node of this cluster on port {port}")

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port`` (its replica is promoted after the node timeout)."""
        for node in self.nodes:
            if node.port == port:
                node.kill()

    def close(self) -> None:
        """Stop every node this cluster started; remove their temp dirs."""
        for node in self.nodes:
            node.close()

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["LocalCluster", "redis_cli_path", "REDIS_CLI", "MISSING_CLI",
           "CLUSTER_READY_TIMEOUT_S", "CLUSTER_NODE_TIMEOUT_MS"]

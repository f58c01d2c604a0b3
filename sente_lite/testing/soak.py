"""Soak probes of a server process: what stalled peers leave behind, connection churn,
and accept bursts.

    python -m sente_lite.testing.soak --waves 20 --conns 100 --fragment-kb 900
    python -m sente_lite.testing.soak churn --cycles 20000
    python -m sente_lite.testing.soak --burst 2000

``--waves``: each wave opens ``--conns`` connections that start a fragmented message
of ``--fragment-kb`` KiB and then stall; the server cuts them at its heartbeat
timeout; the server's RSS is printed after each wave (a curve that must level off).
``churn``: ``--cycles`` times, one connection upgrades with a client-id of its own,
subscribes to one of ``--channels`` channels, hears its answer and closes; the
server's RSS and registries are printed every ``--every`` cycles (a curve that must
level off: nothing of a closed connection is kept but bounded, documented state).
``--burst``: opens and closes that many connections as fast as one thread can and
prints the time and the kernel's SYN retransmits meanwhile.
The server runs in its own process (``sys.executable``), stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from typing import List, Optional

from ..discovery import wait_for
from .abuse import OP_CONT, OP_TEXT, RawPeer

SERVER_SCRIPT = """
import json, sys
from sente_lite import Server
with Server(heartbeat_ms=int(sys.argv[1]), max_connections=100_000, rate_limit=None) as srv:
    print(json.dumps({"port": srv.port, "pid": __import__("os").getpid()}), flush=True)
    for line in sys.stdin:
        stats = srv.stats()
        stats["tracked_objects"] = len(__import__("gc").get_objects())
        print(json.dumps(stats), flush=True)
"""


class ServerProcess:
    """A server in a child process, asked for its stats over stdin/stdout."""

    def __init__(self, heartbeat_ms: int) -> None:
        env = dict(os.environ)
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT, str(heartbeat_ms)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env)
        first = json.loads(self.proc.stdout.readline())  # type: ignore[union-attr]
        self.port: int = first["port"]
        self.pid: int = first["pid"]

    def stats(self) -> dict:
        self.proc.stdin.write("\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return json.loads(self.proc.stdout.readline())  # type: ignore[union-attr]

    def rss_kb(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self) -> None:
        self.proc.stdin.close()  # type: ignore[union-attr]
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()  # type: ignore[union-attr]


def stalled_waves(waves: int, conns: int, fragment_kb: int, heartbeat_ms: int) -> List[int]:
    server = ServerProcess(heartbeat_ms)
    curve: List[int] = [server.rss_kb()]
    print(f"server pid {server.pid}, RSS before: {curve[0]} KB")
    try:
        for wave in range(1, waves + 1):
            peers = []
            for _ in range(conns):
                peer = RawPeer("127.0.0.1", server.port)
                assert peer.upgrade().status == 101
                peer.send_frame(b"[" + b" " * (fragment_kb * 1024 - 1), opcode=OP_TEXT, fin=False)
                peer.send_frame(b" " * 1024, opcode=OP_CONT, fin=False)
                peers.append(peer)
            closed_before = server.stats().get("connections_closed", 0)
            wait_for(lambda: server.stats().get("connections_closed", 0) - closed_before >= conns
                     or None, 60.0, "the server to cut the stalled connections")
            for peer in peers:
                peer.close()
            rss = server.rss_kb()
            curve.append(rss)
            print(f"wave {wave:2d}: {conns} stalled connections cut; server RSS {rss} KB")
    finally:
        server.stop()
    return curve


def churn_cycle(port: int, client_id: str, channel: str) -> None:
    """One connection: upgrade as ``client_id``, subscribe to ``channel``, close."""
    with RawPeer("127.0.0.1", port, timeout=30.0) as peer:
        answer = peer.upgrade(f"/chsk?client-id={client_id}", timeout=30.0)
        if answer.status != 101:
            raise RuntimeError(f"upgrade answered {answer.status}: {answer.body!r}")
        peer.read_text(30.0)  # the handshake
        peer.send_text(json.dumps(["sente-lite/subscribe", {"channel-id": channel}, "c1"]))
        peer.read_text(30.0)  # subscribed


def churn(cycles: int, every: int, channels: int) -> List[int]:
    """Connect, subscribe, close ``cycles`` times; the server's RSS (KB) every ``every``."""
    server = ServerProcess(5000)
    curve: List[int] = [server.rss_kb()]
    print(f"server pid {server.pid}, RSS before: {curve[0]} KB")
    started = time.monotonic()
    try:
        for cycle in range(1, cycles + 1):
            churn_cycle(server.port, uuid.uuid4().hex, f"churn-{cycle % channels}")
            if cycle % every == 0 or cycle == cycles:
                wait_for(lambda: server.stats()["connections"] == 0 or None, 60.0,
                         "the server to close every churned connection")
                stats = server.stats()
                rss = server.rss_kb()
                curve.append(rss)
                print(f"cycle {cycle:6d}: server RSS {rss} KB; connections "
                      f"{stats['connections']}, slots {stats['connection_slots']}, "
                      f"remembered client-ids {stats.get('remembered_clients', '?')}, "
                      f"channels {stats.get('channels', '?')}, "
                      f"objects {stats['tracked_objects']}, "
                      f"collections {stats.get('garbage_collections', 0)} "
                      f"({time.monotonic() - started:.0f} s)", flush=True)
    finally:
        server.stop()
    return curve


def _syn_retransmits() -> Optional[int]:
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for head, values in zip(lines[::2], lines[1::2]):
        if head.startswith("TcpExt:"):
            row = dict(zip(head.split()[1:], values.split()[1:]))
            if "TCPSynRetrans" in row:
                return int(row["TCPSynRetrans"])
    return None


def burst(count: int) -> float:
    server = ServerProcess(5000)
    try:
        before = _syn_retransmits()
        started = time.monotonic()
        for _ in range(count):
            peer = RawPeer("127.0.0.1", server.port)
            peer.close()
        took = time.monotonic() - started
        after = _syn_retransmits()
        retrans = (after - before) if before is not None and after is not None else "?"
        print(f"{count} connect-and-close: {took:.2f} s, SYN retransmits {retrans}")
    finally:
        server.stop()
    return took


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("probe", nargs="?", choices=["churn"], help="churn: connect/subscribe/close cycles")
    ap.add_argument("--cycles", type=int, default=20_000, help="churn: connections made")
    ap.add_argument("--every", type=int, default=2_000, help="churn: cycles between two RSS lines")
    ap.add_argument("--channels", type=int, default=10, help="churn: channels subscribed to in turn")
    ap.add_argument("--waves", type=int, default=0, help="waves of stalled fragmented messages")
    ap.add_argument("--conns", type=int, default=100, help="connections per wave")
    ap.add_argument("--fragment-kb", type=int, default=900, help="KiB each stalled message sends")
    ap.add_argument("--heartbeat-ms", type=int, default=500, help="the server's heartbeat")
    ap.add_argument("--burst", type=int, default=0, help="connect-and-close this many times")
    args = ap.parse_args(argv)
    if args.probe == "churn":
        curve = churn(args.cycles, args.every, args.channels)
        print("RSS curve KB:", ", ".join(str(v) for v in curve))
    if args.waves:
        curve = stalled_waves(args.waves, args.conns, args.fragment_kb, args.heartbeat_ms)
        print("RSS curve KB:", ", ".join(str(v) for v in curve))
    if args.burst:
        burst(args.burst)
    return 0


if __name__ == "__main__":
    sys.exit(main())

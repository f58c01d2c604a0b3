"""What receiving costs one :class:`sente_lite.Client` in CPU at a steady rate:
``python -m sente_lite.bench.client_cpu``.

A server process publishes ``--rate`` messages per second on one channel, paced, for
``--seconds``; one subscriber in a process of its own receives them with each
``--coalesce`` value of ``read_coalesce_ms`` in turn (alternated, ``--runs`` times). The
subscriber measures its own CPU (user and system, ``getrusage``) from the first publish to
the last delivery, its socket reads, and publish-to-receive latency. The table shows
medians, and each row's CPU per message as a ratio of the first row's (same machine, same
minutes). Beside it: what one bare wake-up costs this machine (a thread sleeping 2 ms in a
loop), since a reader that wakes more often pays that many times more; and what the
client's receive path alone costs per message (:func:`receive_path_us`: frames to handler
in a loop, no socket), so that the rest of a subscriber's cost shows as what it is.

This is the load of one scenario-5 client (20 x 100 msg/s = 2,000 deliveries/s) without
the other 20 processes, so what it prints is the client's own cost, not the machine's
contention.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import threading
import time
from typing import Any, Dict, List, Optional, Sequence

from ..client.client import DEFAULT_READ_COALESCE_MS, ChannelMessage, Client
from ..server.server import Server
from ..wire import protocol as p
from ..wire.channels import message_head, message_text
from ..wire.framing import FrameParser, text_frame

CHANNEL = "bench/cpu"
#: Seconds a subscriber waits for the last message after the last publish.
DRAIN_S = 10.0
#: Seconds a process may take to start and subscribe.
SETUP_S = 20.0
#: Figures of one run, in print order.
FIGURES = ("cpu_us_per_msg", "user_us_per_msg", "sys_us_per_msg", "msgs_per_read",
           "p50_ms", "p99_ms")


def server_main(pipe: Any) -> None:
    """The publishing server: sends its URL, then per ``("publish", rate, seconds)``
    publishes ``{"i": n, "t": monotonic_ns}`` paced at ``rate`` and answers ``"done"``."""
    with Server() as srv:
        pipe.send(srv.url)
        while True:
            cmd = pipe.recv()
            if cmd[0] == "stop":
                return
            _, rate, seconds = cmd
            interval_ns = int(1e9 / rate)
            start_ns = time.monotonic_ns()
            for i in range(int(rate * seconds)):
                due = start_ns + i * interval_ns
                now = time.monotonic_ns()
                if due > now:
                    time.sleep((due - now) / 1e9)
                srv.publish(CHANNEL, {"i": i, "t": time.monotonic_ns()})
            pipe.send("done")


def subscriber_main(url: str, coalesce_ms: float, count: int, wait_s: float, pipe: Any) -> None:
    """One subscriber: ``("ready", None)`` once subscribed; on ``"go"`` measures until
    ``count`` messages came (within ``wait_s``), then sends ``("done", figures)`` (or
    ``("error", why)``)."""
    got: List[Any] = []
    last = threading.Event()

    def on_msg(msg: ChannelMessage) -> None:
        got.append((msg.data, time.monotonic_ns()))
        if len(got) == count:
            last.set()

    with Client(url, read_coalesce_ms=coalesce_ms) as client:
        if not client.wait_connected(SETUP_S):
            pipe.send(("error", "the client did not connect"))
            return
        client.subscribe(CHANNEL, on_msg, timeout=SETUP_S)
        reads_before = client.stats()["reads"]
        pipe.send(("ready", None))
        pipe.recv()  # "go": the server publishes from now on
        t0 = resource.getrusage(resource.RUSAGE_SELF)
        if not last.wait(wait_s):
            pipe.send(("error", f"received {len(got)} of {count} messages"))
            return
        t1 = resource.getrusage(resource.RUSAGE_SELF)
        reads = client.stats()["reads"] - reads_before
    in_order = all(d["i"] == i for i, (d, _) in enumerate(got))
    lat = sorted((recv_ns - d["t"]) / 1e6 for d, recv_ns in got)
    user, system = t1.ru_utime - t0.ru_utime, t1.ru_stime - t0.ru_stime
    pipe.send(("done", {"cpu_us_per_msg": 1e6 * (user + system) / count,
                        "user_us_per_msg": 1e6 * user / count,
                        "sys_us_per_msg": 1e6 * system / count,
                        "msgs_per_read": count / max(reads, 1),
                        "p50_ms": lat[len(lat) // 2], "p99_ms": lat[int(len(lat) * 0.99)],
                        "in_order": in_order}))


def wake_cost_us(interval_s: float = 0.002, loops: int = 500) -> float:
    """CPU (user + system, microseconds) of one ``time.sleep(interval_s)`` wake-up here."""
    t0 = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(loops):
        time.sleep(interval_s)
    t1 = resource.getrusage(resource.RUSAGE_SELF)
    return 1e6 * ((t1.ru_utime - t0.ru_utime) + (t1.ru_stime - t0.ru_stime)) / loops


def receive_path_us(messages: int = 40_000, per_read: int = 4) -> float:
    """CPU (microseconds) per message of the client's receive path alone: ``messages``
    channel messages, ``per_read`` to a socket read, parsed from their WebSocket frames
    to the channel handler in this process, with no socket, no wait and no other thread.
    What a subscriber costs beyond it is waking up, the kernel's part of each read and
    caches gone cold in between."""
    client = Client("ws://127.0.0.1:9/", start=False)
    got: List[ChannelMessage] = []
    client.subscribe(CHANNEL, got.append, timeout=None)
    reads: List[bytes] = []
    frames: List[bytes] = []
    for i in range(1, messages + 1):  # each frame as a server writes it
        head = message_head(p.dumps(CHANNEL), p.dumps({"i": i, "t": time.monotonic_ns()}),
                            p.dumps("u-bench"), None).encode()
        frames.append(text_frame(message_text(head, i, "e-bench")))
        if len(frames) == per_read or i == messages:
            reads.append(b"".join(frames))
            frames = []
    parser = FrameParser()
    connector, roles = client._connector, client._roles
    t0 = resource.getrusage(resource.RUSAGE_SELF)
    for data in reads:
        tasks: List[tuple] = []
        connector._take(None, parser.feed(data), tasks, time.monotonic())  # type: ignore[arg-type]
        for task in tasks:
            roles._run_task(task)
    t1 = resource.getrusage(resource.RUSAGE_SELF)
    client.close()
    if len(got) != messages or got[-1].offset != messages:
        raise RuntimeError(f"the receive path delivered {len(got)} of {messages} messages")
    return 1e6 * ((t1.ru_utime - t0.ru_utime) + (t1.ru_stime - t0.ru_stime)) / messages


def one_run(ctx: Any, spipe: Any, url: str, coalesce_ms: float, rate: float,
            seconds: float) -> Dict[str, Any]:
    """One subscriber with ``coalesce_ms`` in its own process, through one publishing."""
    rpipe, child_end = ctx.Pipe()
    proc = ctx.Process(target=subscriber_main, daemon=True,
                       args=(url, coalesce_ms, int(rate * seconds), seconds + DRAIN_S, child_end))
    proc.start()
    try:
        if not rpipe.poll(SETUP_S):
            raise RuntimeError("the subscriber process did not start")
        kind, value = rpipe.recv()
        if kind != "ready":
            raise RuntimeError(f"subscriber: {value}")
        rpipe.send("go")
        spipe.send(("publish", rate, seconds))
        if not spipe.poll(seconds + SETUP_S):
            raise RuntimeError("the server did not finish publishing")
        spipe.recv()
        if not rpipe.poll(DRAIN_S + SETUP_S):
            raise RuntimeError("the subscriber did not report")
        kind, value = rpipe.recv()
        if kind != "done":
            raise RuntimeError(f"subscriber: {value}")
        return value
    finally:
        proc.join(SETUP_S)
        if proc.is_alive():
            proc.kill()
            proc.join()


def compare(coalesce: Sequence[float], rate: float, seconds: float,
            runs: int) -> Dict[float, List[Dict[str, Any]]]:
    """Every run's figures per ``read_coalesce_ms`` value, the values alternated."""
    ctx = multiprocessing.get_context("spawn")
    spipe, child_end = ctx.Pipe()
    server = ctx.Process(target=server_main, args=(child_end,), daemon=True)
    server.start()
    try:
        if not spipe.poll(SETUP_S):
            raise RuntimeError("the server process did not start")
        url = spipe.recv()
        rows: Dict[float, List[Dict[str, Any]]] = {ms: [] for ms in coalesce}
        for _ in range(runs):
            for ms in coalesce:
                rows[ms].append(one_run(ctx, spipe, url, ms, rate, seconds))
        return rows
    finally:
        spipe.send(("stop",))
        server.join(SETUP_S)
        if server.is_alive():
            server.kill()
            server.join()


def report(rows: Dict[float, List[Dict[str, Any]]], rate: float, seconds: float,
           wake_us: Optional[float], path_us: Optional[float] = None) -> List[str]:
    """The table: medians per value, CPU per message against the first value's."""
    runs = len(next(iter(rows.values())))
    lines = [f"one subscriber, {rate:g} msg/s for {seconds:g} s; median of {runs} run(s), "
             "values alternated",
             f"{'read_coalesce_ms':>16} | " + " | ".join(f"{k:>15}" for k in FIGURES)
             + " | cpu ratio | in order"]
    base: Optional[float] = None
    for ms, runs_of in rows.items():
        med = {k: statistics.median(r[k] for r in runs_of) for k in FIGURES}
        base = med["cpu_us_per_msg"] if base is None else base
        ratio = med["cpu_us_per_msg"] / base if base else float("nan")
        ordered = "yes" if all(r["in_order"] for r in runs_of) else "NO"
        lines.append(f"{ms:>16g} | " + " | ".join(f"{med[k]:>15.2f}" for k in FIGURES)
                     + f" | {ratio:>9.2f} | {ordered}")
    if wake_us is not None:
        lines.append(f"one bare wake-up (time.sleep(0.002) in a loop) costs {wake_us:.1f} us of "
                     "CPU on this machine")
    if path_us is not None:
        lines.append(f"the receive path alone (frames to handler in one process, no socket, "
                     f"4 messages a read) costs {path_us:.1f} us per message")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sente_lite.bench.client_cpu",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=2000.0, help="messages per second (2000)")
    ap.add_argument("--seconds", type=float, default=5.0, help="publishing time per run (5)")
    ap.add_argument("--runs", type=int, default=3, help="runs per value (3)")
    ap.add_argument("--coalesce", default=f"{DEFAULT_READ_COALESCE_MS:g},0,5",
                    help="read_coalesce_ms values, comma-separated; the first is the baseline "
                         f"(default: {DEFAULT_READ_COALESCE_MS:g},0,5)")
    args = ap.parse_args(argv)
    try:
        coalesce = [float(v) for v in args.coalesce.split(",") if v.strip()]
    except ValueError:
        ap.error(f"--coalesce takes numbers separated by commas, got {args.coalesce!r}")
    if not coalesce or args.rate <= 0 or args.seconds <= 0 or args.runs < 1:
        ap.error("need at least one --coalesce value, --rate > 0, --seconds > 0, --runs >= 1")
    rows = compare(coalesce, args.rate, args.seconds, args.runs)
    for line in report(rows, args.rate, args.seconds, wake_cost_us(),
                       statistics.median(receive_path_us() for _ in range(3))):
        print(line)
    return 0 if all(r["in_order"] for runs_of in rows.values() for r in runs_of) else 1


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["server_main", "subscriber_main", "wake_cost_us", "receive_path_us", "one_run", "compare", "report",
           "main", "FIGURES"]

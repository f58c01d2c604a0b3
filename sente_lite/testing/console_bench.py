"""Benchmark of the remote console under load: ``python -m sente_lite.testing.console_bench``.

Each run starts, as separate spawned processes (:mod:`sente_lite.testing`):

* a server with a console (TCP on loopback, and the WebSocket for :data:`OPERATOR_UID`);
* ``--clients`` load clients on scenario 5's workload: each subscribes to one channel and
  publishes ``--rate`` messages/s for ``--duration`` s, paced on a common clock, then waits
  until it has every message (``--clients 0``: no load);
* an operator: :class:`~sente_lite.console.client.ConsoleClient` sessions over TCP and over
  the WebSocket. Once the load runs it evaluates ``srv.stats()`` ``--evals`` times on each
  evaluates ``srv.stats()`` up to ``--evals`` times on each transport (alternating, one
  pair every ``--every-ms``), timing each round trip, as long as the busy loops still fit
  in the load after them (:data:`EVALS_END_MARGIN_S`); then runs a busy loop
  ``--interrupts`` times and times each ``interrupt`` from its send to the loop's
  ``interrupted`` answer.

It prints each run's figures, then the median over ``--runs`` runs of each: eval round
trip p50/p99 over TCP and over the WebSocket, interrupt latency median and max, and
whether the load lost, duplicated or reordered anything (it must not). The targets
(``eval`` p99 <= 5 ms, ``interrupt`` <= 100 ms) are judged on those medians.

Scenario 12 (``test_scripts/12_console_under_load.py``) runs the same processes once and
checks them; the behaviours and the measurement live here so both measure the same thing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..discovery import wait_for
from . import (ProcessContext, ProcessResult, Run, latencies_ms, latency_summary,
              order_problem, percentile, stamp)
from .common import SERVER_STARTUP_TIMEOUT_S
from .checks import cpu_load, cpu_reading
from ..console.client import ConsoleClient, ConsoleError, TcpTransport, WsClientTransport, status_of
from ..console import Console

#: The uid the operator's WebSocket connection authenticates as (the one console user).
OPERATOR_UID = "operator"
#: The operator's token; every other connection authenticates as ``load-<client-id>``.
OPERATOR_TOKEN = "console-bench-operator"
#: What the operator evaluates: the server's whole stats(), answering one number of it.
STATS_CODE = "srv.stats()['publishes']"
#: The busy loop an interrupt stops; it says when it runs.
BUSY_CODE = "print('busy', flush=True)\nwhile True:\n    pass"
#: The load channel.
CHANNEL = "events"
#: The targets of issue 29, in ms.
EVAL_P99_TARGET_MS = 5.0
INTERRUPT_TARGET_MS = 100.0
#: Seconds after the load's common start before the operator measures (every client is
#: publishing by then).
SETTLE_S = 1.0
#: Seconds before the load's scheduled end by which the busy loops must be over: the
#: operator starts no more evals once only this and the busy loops' time
#: (``interrupts`` x (``busy_s`` + :data:`INTERRUPT_SLACK_S`)) are left. On a machine too
#: loaded for ``--evals`` pairs to fit, fewer are made, and the figures say how many.
EVALS_END_MARGIN_S = 1.0
#: Seconds one interrupt may take beyond its busy loop's ``busy_s``, in that budget.
INTERRUPT_SLACK_S = 0.3
#: Seconds the parent gives the load clients between its "publish" command and the start.
START_DELAY_S = 1.0
#: Seconds each load client may take, after its last publish, to receive the rest.
DRAIN_TIMEOUT_S = 90.0
#: Seconds one console answer may take before the operator gives up on it.
ANSWER_TIMEOUT_S = 30.0


def authenticate(request: Any) -> str:
    """The server's authenticate hook: the operator by its token, everyone else as a load uid."""
    return OPERATOR_UID if request.token == OPERATOR_TOKEN else f"load-{request.client_id}"


@dataclass(frozen=True)
class Load:
    """What one run does: the load (scenario 5's shape) and what the operator measures."""

    clients: int = 20
    rate: int = 100  # messages per second, per client
    duration_s: float = 10.0
    evals: int = 200  # per transport
    every_s: float = 0.02  # between two pairs of evals
    interrupts: int = 5
    busy_s: float = 0.2  # how long each busy loop runs before its interrupt

    @property
    def messages(self) -> int:
        """Messages published in all (each client receives every one)."""
        return self.clients * self.rate * int(self.duration_s)


# -- the operator's measurements (any ConsoleClient) ------------------------------------------
def _await(console: ConsoleClient, match: Callable[[Dict[str, Any]], bool], what: str) -> Dict[str, Any]:
    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ConsoleError(f"no {what} within {ANSWER_TIMEOUT_S:.0f}s")
        msg = console.transport.messages.get(timeout=left)
        if "disconnected" in msg.get("status", ()):
            raise ConsoleError(f"the console went away waiting for {what}")
        if match(msg):
            return msg


def time_evals(consoles: Sequence[ConsoleClient], code: str, count: int,
               every_s: float, until: Optional[float] = None) -> List[List[float]]:
    """Evaluate ``code`` ``count`` times on each console (one after the other, a round every
    ``every_s``), stopping early at ``until`` (``time.monotonic()``) if given, after one
    round at least; each one's round trips in ms. Raises :class:`ConsoleError` on an
    answer that is not a value."""
    out: List[List[float]] = [[] for _ in consoles]
    due = time.monotonic()
    for n in range(count):
        if n and until is not None and time.monotonic() >= until:
            break
        for console, times in zip(consoles, out):
            t0 = time.perf_counter()
            answers = console.eval(code, timeout=ANSWER_TIMEOUT_S)
            times.append((time.perf_counter() - t0) * 1000.0)
            if status_of(answers) != ["done"] or not any("value" in a for a in answers):
                raise ConsoleError(f"eval of {code!r} answered {answers}")
        due += every_s
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    return out


def time_interrupts(console: ConsoleClient, count: int, busy_s: float) -> List[float]:
    """Run :data:`BUSY_CODE` ``count`` times; once it has run ``busy_s``, send ``interrupt``
    and time it until the eval is answered ``interrupted`` (ms each)."""
    out: List[float] = []
    for n in range(count):
        eval_id = f"busy-{n}"
        console.transport.send({"op": "eval", "id": eval_id, "session": console.session, "code": BUSY_CODE})
        _await(console, lambda m: m.get("id") == eval_id and m.get("out") == "busy\n", "busy loop")
        time.sleep(busy_s)
        t0 = time.perf_counter()
        console.transport.send({"op": "interrupt", "id": f"stop-{n}", "session": console.session,
                                "interrupt-id": eval_id})
        ends: Dict[str, Dict[str, Any]] = {}
        while eval_id not in ends or f"stop-{n}" not in ends:  # either answer may come first
            msg = _await(console, lambda m: m.get("id") in (eval_id, f"stop-{n}")
                         and "done" in m.get("status", ()), "the busy loop's end")
            ends[msg["id"]] = msg
            if msg["id"] == eval_id:
                out.append((time.perf_counter() - t0) * 1000.0)
        if "interrupted" not in ends[eval_id]["status"]:
            raise ConsoleError(f"the busy loop ended {ends[eval_id]['status']}, not interrupted")
    return out


# -- process behaviours -------------------------------------------------------------------------
def load_client(ctx: ProcessContext, load: Load) -> Dict[str, Any]:
    """Scenario 5's client: subscribe, publish ``load.rate``/s for ``load.duration_s`` on
    command (shifted by its index on the common clock), then await every message."""
    with ctx.connect() as c:
        ctx.subscribe(c, CHANNEL)
        ctx.mark("ready")
        go = ctx.wait_command("publish")
        interval_ns = 1_000_000_000 // load.rate
        start_ns = go["start_ns"] + interval_ns * go["index"] // load.clients
        for seq in range(int(load.rate * load.duration_s)):
            due = start_ns + seq * interval_ns
            now = time.monotonic_ns()
            if due > now:
                time.sleep((due - now) / 1e9)
            c.publish(CHANNEL, stamp(by=ctx.name, seq=seq))
        ctx.mark("published")
        ctx.wait_until(lambda: ctx.history.count() >= load.messages or None,
                       f"all {load.messages} messages", DRAIN_TIMEOUT_S)
        ctx.mark("received")
        ctx.wait_command("finish")
        return {"uid": c.uid, "stats": c.stats()}


def _read_port(path: str) -> Optional[int]:
    try:
        with open(path, encoding="ascii") as fh:
            text = fh.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def operator(ctx: ProcessContext, console_port_file: str, load: Load) -> Dict[str, Any]:
    """Attach to the console over TCP and the WebSocket; on "measure" (at ``at_ns``) time
    evals of :data:`STATS_CODE` and interrupts of :data:`BUSY_CODE`."""
    port = wait_for(lambda: _read_port(console_port_file), SERVER_STARTUP_TIMEOUT_S,
                    f"the console's port file {console_port_file}")
    url = ctx.server_address()["url"]
    transports: List[Any] = []
    try:
        transports.append(TcpTransport("127.0.0.1", port))
        transports.append(WsClientTransport(url, token=OPERATOR_TOKEN))
        tcp, ws = (ConsoleClient(t, timeout=ANSWER_TIMEOUT_S) for t in transports)
        time_evals([tcp, ws], STATS_CODE, 3, 0.0)  # warm up: sessions, the first compile
        ctx.mark("ready")
        go = ctx.wait_command("measure")
        pause = (go["at_ns"] - time.monotonic_ns()) / 1e9
        if pause > 0:
            time.sleep(pause)
        started_ns = time.monotonic_ns()
        cpu_start = cpu_reading()
        # the evals stop early on a machine too loaded for them all to fit before the busy
        # loops, which must run while the load does (after them the server catches up on
        # what they held back: evals then would time that, not the console)
        until = (go["evals_until_ns"] - time.monotonic_ns()) / 1e9 + time.monotonic()
        tcp_ms, ws_ms = time_evals([tcp, ws], STATS_CODE, load.evals, load.every_s, until)
        evaluated_ns = time.monotonic_ns()
        load_seen = cpu_load(cpu_start, cpu_reading())  # the machine's CPU while evaluating
        interrupt_ms = time_interrupts(tcp, load.interrupts, load.busy_s)
        ended_ns = time.monotonic_ns()
        last = tcp.eval(STATS_CODE, timeout=ANSWER_TIMEOUT_S)
        ctx.mark("measured")
        return {"tcp_ms": tcp_ms, "ws_ms": ws_ms, "interrupt_ms": interrupt_ms,
                "started_ns": started_ns, "evaluated_ns": evaluated_ns, "ended_ns": ended_ns,
                "publishes_seen": int(next(a["value"] for a in last if "value" in a)),
                "cpu_load": load_seen}
    finally:
        for t in reversed(transports):
            t.close()


# -- one run ------------------------------------------------------------------------------------
@dataclass
class Measured:
    """What one run produced: every process's result and the load's common start."""

    load: Load
    start_ns: int
    clients: Dict[str, ProcessResult] = field(default_factory=dict)
    operator: Optional[ProcessResult] = None
    server: Optional[ProcessResult] = None
    published_ns: List[int] = field(default_factory=list)  # each client's last publish


def run_once(run: Run, load: Load, step: Callable[[str], None] = lambda text: None) -> Measured:
    """Start the server, the load and the operator in ``run``; measure; stop everything."""
    port_file = os.path.join(run.dir, "console.port")
    server = run.start_server(authenticate=authenticate,
                              console=Console(port_file=port_file, console_users=(OPERATOR_UID,)))
    clients = run.start_clients(load_client, load.clients, load) if load.clients else []
    op = run.start_process("operator", operator, port_file, load)
    run.wait_mark(clients + [op], "ready")
    if clients:
        run.server_command(server, "await-subscribers", channel=CHANNEL, count=load.clients)
    step(f"{load.clients} load clients subscribed; the operator attached over TCP and WebSocket")
    start_ns = time.monotonic_ns() + int(START_DELAY_S * 1e9)
    for i, h in enumerate(clients):
        run.command(h, "publish", start_ns=start_ns, index=i)
    busy_loops_s = load.interrupts * (load.busy_s + INTERRUPT_SLACK_S)
    run.command(op, "measure", at_ns=start_ns + int(SETTLE_S * 1e9),
                evals_until_ns=start_ns + int((load.duration_s - EVALS_END_MARGIN_S - busy_loops_s) * 1e9))
    run.record_event("console-evals-then-busy-loops", "server", evals=load.evals, interrupts=load.interrupts)
    run.wait_mark(op, "measured")
    step(f"operator measured {load.evals} evals per transport and {load.interrupts} interrupts")
    measured = Measured(load, start_ns)
    if clients:
        published = run.wait_mark(clients, "published")
        measured.published_ns = [m["t_ns"] for m in published.values()]
        run.wait_mark(clients, "received")
        step(f"every load client received every message ({load.messages})")
        run.command(clients, "finish")
        measured.clients = run.results(clients)
    measured.operator = run.results(op)["operator"]
    measured.server = run.stop_server(server)
    return measured


# -- judging ------------------------------------------------------------------------------------
def load_problems(measured: Measured) -> Dict[str, str]:
    """Per load client, what is wrong with what it received ("" when every message came
    once, in offset order, each publisher's in the order sent)."""
    load = measured.load
    per_publisher = int(load.rate * load.duration_s)
    out: Dict[str, str] = {}
    for name, r in measured.clients.items():
        offsets = [d.offset for d in r.deliveries]
        seqs: Dict[str, List[int]] = {}
        for d in r.deliveries:
            seqs.setdefault(d.data["by"], []).append(d.data["seq"])
        if offsets != list(range(1, load.messages + 1)) or len({d.epoch for d in r.deliveries}) != 1:
            out[name] = order_problem(r.deliveries) or f"{len(offsets)} of {load.messages} messages"
        elif len(seqs) != load.clients or any(s != list(range(per_publisher)) for s in seqs.values()):
            out[name] = "a publisher's messages out of the order sent"
        else:
            out[name] = ""
    return out


def figures(measured: Measured) -> Dict[str, Any]:
    """The run's figures: eval round trips (ms) over each transport, interrupt latency (ms),
    the machine's CPU busy share and CPU pressure while evaluating
    (:func:`~sente_lite.testing.checks.cpu_load`), the load's publish-to-receive latency."""
    op = measured.operator.value if measured.operator is not None else {}
    out: Dict[str, Any] = {}
    for key, name in (("tcp_ms", "eval_tcp"), ("ws_ms", "eval_ws")):
        times = sorted(op.get(key) or ())
        if times:
            out[f"{name}_p50_ms"] = round(percentile(times, 50), 3)
            out[f"{name}_p99_ms"] = round(percentile(times, 99), 3)
            out[f"{name}_max_ms"] = round(times[-1], 3)
            out[f"{name}_count"] = len(times)
    stops = op.get("interrupt_ms") or []
    if stops:
        out["interrupt_median_ms"] = round(statistics.median(stops), 3)
        out["interrupt_max_ms"] = round(max(stops), 3)
    out.update(op.get("cpu_load") or {})  # what bounds them: the machine's CPU meanwhile
    if measured.clients:
        lat = latency_summary(latencies_ms(d for r in measured.clients.values() for d in r.deliveries))
        out["load_p50_ms"], out["load_p99_ms"] = lat["p50_ms"], lat["p99_ms"]
        out["load_deliveries"] = lat["count"]
    return out


# -- the command line ---------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m sente_lite.testing.console_bench``: medians over ``--runs`` runs."""
    defaults = Load()
    ap = argparse.ArgumentParser(prog="python -m sente_lite.testing.console_bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="runs (default 5); medians over them")
    ap.add_argument("--clients", type=int, default=defaults.clients,
                    help=f"load client processes (default {defaults.clients}; 0: no load)")
    ap.add_argument("--rate", type=int, default=defaults.rate, help="messages/s per client")
    ap.add_argument("--duration", type=float, default=defaults.duration_s, help="seconds of load")
    ap.add_argument("--evals", type=int, default=defaults.evals, help="evals per transport per run")
    ap.add_argument("--every-ms", type=float, default=defaults.every_s * 1000,
                    help="ms between two pairs of evals")
    ap.add_argument("--interrupts", type=int, default=defaults.interrupts, help="interrupts per run")
    args = ap.parse_args(argv)
    load = Load(clients=args.clients, rate=args.rate, duration_s=args.duration, evals=args.evals,
                every_s=args.every_ms / 1000, interrupts=args.interrupts)
    print(f"console under load: {load.clients} clients x {load.rate} msg/s x {load.duration_s:g} s; "
          f"{load.evals} evals of {STATS_CODE!r} per transport, {load.interrupts} interrupts; "
          f"{args.runs} runs", flush=True)
    rows: List[Dict[str, Any]] = []
    lossless = True
    for n in range(1, args.runs + 1):
        with Run("console-bench", timeout=120 + 3 * load.duration_s) as run:
            measured = run_once(run, load)
        row = figures(measured)
        bad = {k: v for k, v in load_problems(measured).items() if v}
        lossless = lossless and not bad
        rows.append(row)
        print(f"run {n}: " + ", ".join(f"{k}={v}" for k, v in row.items())
              + (f"; LOAD PROBLEMS {bad}" if bad else ("; load: every message once, in order"
                                                      if load.clients else "")), flush=True)
    medians = {k: round(statistics.median(r[k] for r in rows if k in r), 3)
               for k in rows[0] if all(k in r for r in rows)}
    print(f"medians over {args.runs} runs: " + ", ".join(f"{k}={v}" for k, v in medians.items()))
    for key, target in (("eval_tcp_p99_ms", EVAL_P99_TARGET_MS), ("eval_ws_p99_ms", EVAL_P99_TARGET_MS),
                        ("interrupt_max_ms", INTERRUPT_TARGET_MS)):
        if key in medians:
            verdict = "met" if medians[key] <= target else "NOT met"
            print(f"target {key} <= {target:g} ms: median {medians[key]} ms, {verdict}")
    return 0 if lossless else 1


if __name__ == "__main__":
    sys.exit(main())

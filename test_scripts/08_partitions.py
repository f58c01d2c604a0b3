#!/usr/bin/env python3
"""08 partitions: clients behind a faulty network lose nothing and see nothing twice.

Setup: a server with a short heartbeat (HEARTBEAT_MS) and a channel history large
enough for any gap of this run; a :class:`~sente_lite.testing.Nemesis` proxy in this
(the parent) process in front of it; CLIENTS client processes that connect through
the proxy and subscribe to one shared channel.
Workload: every client publishes numbered messages (fire-and-forget, ``ack=False``)
at RATE_PER_CLIENT messages/s for PUBLISH_S seconds and records what it published,
every channel message and every :class:`~sente_lite.session.Recovery`.
Faults, while they publish (FAULTS, seconds after the start): the proxy resets every
connection about every 2 s (``cut``), and once blackholes the network for
BLACKHOLE_S, longer than the heartbeat timeouts of both sides (3 x HEARTBEAT_MS on
the server, 2 x HEARTBEAT_MS + 1 s on the client), so only the heartbeat can find
the dead link; then it heals.
Recovery: the clients reconnect, resubscribe with ``since`` (the last offset they
saw), the server replays the gap from its history, the clients drop duplicates,
and unacknowledged publishes are resent with their id and delivered once.
Check: every client has every message of the channel exactly once, in offset
order (offsets 1..N, one epoch); every publish of every client is in the channel
exactly once; every Recovery said recovered=True; every client detected the
partition by itself and the server closed every partitioned connection with 4000.
Measured: recovery time after each cut and after the heal (from the fault, or the
heal, to the client's next recovered subscribe answer), p50/p99.
"""

from __future__ import annotations

import sys

import _repo  # noqa: F401  (the repository's sente_lite/ first: test_scripts/_repo.py)

import time
from typing import Any, Dict, List, Tuple

from sente_lite.testing import (FIG_CLIENTS, FIG_MESSAGES, FIG_P99_MS, FIG_RECOVERY_S, Nemesis,
                                ProcessContext, ProcessResult, Report, Run, latencies_ms,
                                latency_summary, order_problem, percentile, run_scenario, stamp)

CLIENTS = 5
CHANNEL = "shared"
RATE_PER_CLIENT = 20           # messages per second, per client
PUBLISH_S = 20.0
#: Server heartbeat. The server closes a connection silent for 3 x this (4000); the
#: client drops a server silent for 2 x this + 1 s. Short, so that a partition longer
#: than both fits in the run.
HEARTBEAT_MS = 1000
SERVER_SILENCE_S = 3 * HEARTBEAT_MS / 1000
CLIENT_SILENCE_S = 2 * HEARTBEAT_MS / 1000 + 1.0
#: How long the network is blackholed: longer than either side's heartbeat timeout,
#: with room for a ping that arrived up to one beat before the partition began.
BLACKHOLE_S = 5.0
assert BLACKHOLE_S > max(SERVER_SILENCE_S, CLIENT_SILENCE_S) + 1.0
#: The faults, in seconds after publishing starts: (time, what).
FAULTS: List[Tuple[float, str]] = [
    (2.0, "cut"), (4.0, "cut"), (6.0, "cut"), (8.0, "cut"),
    (9.0, "blackhole"), (9.0 + BLACKHOLE_S, "heal"),
    (16.0, "cut"), (18.0, "cut"),
]
#: Messages the server keeps per channel: more than the whole run publishes, so every
#: gap can be replayed (the checker requires every recovery to succeed).
HISTORY_SIZE = 10_000
#: Clients' reconnect backoff (s): a cut is followed by a reconnect within this.
BACKOFF_BASE_S = 0.1
BACKOFF_MAX_S = 0.5
#: Seconds between the "publish" command and the common start (every client waits by then).
START_DELAY_S = 1.0
#: Seconds a client may take, after its last publish, until the server acknowledged all.
ACK_TIMEOUT_S = 20.0
#: Seconds a client may take to receive every message once all are acknowledged.
DRAIN_TIMEOUT_S = 20.0
#: This scenario's whole time budget.
TIMEOUT_S = 90.0
#: Close code of a heartbeat timeout.
CLOSE_HEARTBEAT_TIMEOUT = 4000


def client(ctx: ProcessContext, url: str) -> Dict[str, Any]:
    """Subscribe through the proxy; publish numbered messages; record recoveries."""
    with ctx.connect(url, backoff_base=BACKOFF_BASE_S, backoff_max=BACKOFF_MAX_S) as c:
        c.on_recovery(lambda r: ctx.history.record("recovery", **r._asdict()))
        ctx.subscribe(c, CHANNEL)
        ctx.mark("ready")
        go = ctx.wait_command("publish")
        interval_ns = int(1e9 / RATE_PER_CLIENT)
        start_ns = go["start_ns"] + interval_ns * go["index"] // CLIENTS
        published: List[int] = []
        for seq in range(int(RATE_PER_CLIENT * PUBLISH_S)):
            due = start_ns + seq * interval_ns
            now = time.monotonic_ns()
            if due > now:
                time.sleep((due - now) / 1e9)  # pacing, not waiting for anything
            c.publish(CHANNEL, stamp(by=ctx.name, seq=seq))
            published.append(seq)
        ctx.wait_until(lambda: c.stats()["unacked_publishes"] == 0 or None,
                       "every publish acknowledged", ACK_TIMEOUT_S)
        ctx.mark("published", count=len(published))
        total = ctx.wait_command("await")["total"]
        ctx.wait_until(lambda: ctx.history.count() >= total or None,
                       f"all {total} messages", DRAIN_TIMEOUT_S)
        ctx.mark("received")
        ctx.wait_command("finish")
        return {"uid": c.uid, "published": published, "stats": c.stats()}


def story(run: Run, report: Report) -> None:
    # setup: server, proxy in this process, clients through the proxy
    server = run.start_server(heartbeat_ms=HEARTBEAT_MS, history_size=HISTORY_SIZE)
    nemesis = Nemesis("127.0.0.1", server.port).start()
    try:
        clients = run.start_clients(client, CLIENTS, nemesis.url)
        run.wait_mark(clients, "ready")
        run.server_command(server, "await-subscribers", channel=CHANNEL, count=CLIENTS)
        report.step(f"{CLIENTS} clients subscribed through the proxy on port {nemesis.port}")

        # workload, and the faults on the parent's clock meanwhile
        start_ns = time.monotonic_ns() + int(START_DELAY_S * 1e9)
        for i, h in enumerate(clients):
            run.command(h, "publish", start_ns=start_ns, index=i)
        faults = inject(run, report, nemesis, start_ns)
        marks = run.wait_mark(clients, "published", PUBLISH_S + ACK_TIMEOUT_S)
        total = sum(m["count"] for m in marks.values())
        report.step(f"{total} messages published and acknowledged")
        run.command(clients, "await", total=total)
        run.wait_mark(clients, "received", DRAIN_TIMEOUT_S)
        report.step("every client received every message")
        run.command(clients, "finish")
        results = run.results(clients)
        server_result = run.stop_server(server)
        proxy = nemesis.stats()
    finally:
        nemesis.stop()

    check(report, results, server_result.value, faults, proxy, total)


def inject(run: Run, report: Report, nemesis: Nemesis, start_ns: int) -> List[Dict[str, Any]]:
    """Run FAULTS on schedule; returns what was done and when (``t_ns``)."""
    done: List[Dict[str, Any]] = []
    for at_s, what in FAULTS:
        wait = start_ns / 1e9 + at_s - time.monotonic()
        if wait > 0:
            time.sleep(wait)  # the fault schedule's clock
        if what == "cut":
            links = nemesis.cut()
        elif what == "blackhole":
            nemesis.blackhole()
            links = nemesis.stats()["active"]
        else:
            nemesis.heal()
            links = nemesis.stats()["active"]
        event = run.record_event(what, None, links=links)
        done.append(event)
        report.step(f"{what} ({links} connection(s))")
    return done


def check(report: Report, results: Dict[str, ProcessResult], server_stats: Dict[str, Any],
          faults: List[Dict[str, Any]], proxy: Dict[str, Any], total: int) -> None:
    published = {(name, seq) for name, r in results.items() for seq in r.value["published"]}
    report.check(len(published) == total, "the clients published distinct messages",
                 f"{len(published)} distinct of {total}")
    blackhole = next(f["t_ns"] for f in faults if f["kind"] == "blackhole")
    heal = next(f["t_ns"] for f in faults if f["kind"] == "heal")
    recovery_ms: Dict[str, List[float]] = {"cut": [], "heal": []}
    for name, r in results.items():
        got = [d for d in r.deliveries if d.channel == CHANNEL]
        offsets = [d.offset for d in got]
        epochs = {d.epoch for d in got}
        report.check(offsets == list(range(1, total + 1)) and len(epochs) == 1,
                     f"{name} has offsets 1..{total} exactly once, in order, one epoch",
                     order_problem(got) or f"{len(offsets)} messages, {len(epochs)} epoch(s)", name)
        pairs = [(d.data["by"], d.data["seq"]) for d in got]
        report.check(len(pairs) == len(set(pairs)) and set(pairs) == published,
                     f"{name}: every publish of every client is in the channel exactly once",
                     f"{len(pairs) - len(set(pairs))} repeated, {len(published - set(pairs))} "
                     f"missing, {len(set(pairs) - published)} unknown", name)
        recoveries = r.history.events_of("recovery")
        failed = [e for e in recoveries if not e["recovered"]]
        report.check(bool(recoveries) and not failed,
                     f"{name}: every resubscribe recovered the gap ({len(recoveries)} recoveries)",
                     f"not recovered: {[(e['reason'], e['since']) for e in failed][:3]}", name)
        lost_link = [e for e in r.history.events_of("status")
                     if e["status"] == "reconnecting" and blackhole < e["t_ns"] < heal]
        report.check(bool(lost_link), f"{name} found the partition by its heartbeat",
                     f"statuses {r.statuses()}", name)
        stats = r.value["stats"]
        report.check(stats.get("unacked_publishes") == 0 and not stats.get("channel_gaps")
                     and not stats.get("publish_errors"),
                     f"{name}: no publish left unacknowledged or refused, no gap",
                     f"unacked={stats.get('unacked_publishes')} gaps={stats.get('channel_gaps')} "
                     f"publish_errors={stats.get('publish_errors')}", name)
        # recovery time: from each cut, or the heal, to this client's next recovered answer
        for f in faults:
            if f["kind"] not in recovery_ms:
                continue
            after = [e["t_ns"] for e in recoveries if e["t_ns"] > f["t_ns"] and e["recovered"]]
            if f["links"] and after:
                recovery_ms[f["kind"]].append((min(after) - f["t_ns"]) / 1e6)
        missed = [round((f["t_ns"] - faults[0]["t_ns"]) / 1e9, 1) for f in faults
                  if f["kind"] in recovery_ms and f["links"]
                  and not any(e["t_ns"] > f["t_ns"] for e in recoveries)]
        report.check(not missed, f"{name} recovered after every cut and after the heal",
                     f"no recovery after the faults at +{missed} s", name)
    closes = {int(k): v for k, v in server_stats.get("closes_by_code", {}).items()}
    report.check(closes.get(CLOSE_HEARTBEAT_TIMEOUT, 0) >= CLIENTS,
                 f"the server closed every partitioned connection with {CLOSE_HEARTBEAT_TIMEOUT}",
                 f"closes_by_code={closes}", "server")
    cuts = [f["links"] for f in faults if f["kind"] == "cut"]
    report.check(all(n >= 1 for n in cuts), "every cut reset live connections",
                 f"connections reset per cut: {cuts}")

    every = recovery_ms["cut"] + recovery_ms["heal"]
    lat = latency_summary(latencies_ms(d for r in results.values() for d in r.deliveries))
    report.figure(FIG_CLIENTS, CLIENTS)
    report.figure(FIG_MESSAGES, total)
    report.figure(FIG_P99_MS, lat["p99_ms"])
    report.note(f"{FIG_P99_MS} is publish-to-receive latency: it includes the messages held "
                f"by the {BLACKHOLE_S:.0f} s partition; {FIG_RECOVERY_S} is the p99 recovery time")
    report.figure(FIG_RECOVERY_S, round(percentile(every, 99) / 1000, 3) if every else None)
    report.figure("recovery_p50_ms", round(percentile(every, 50), 1) if every else None)
    report.figure("recovery_p99_ms", round(percentile(every, 99), 1) if every else None)
    report.figure("recovery_after_cut_p50_ms", round(percentile(recovery_ms["cut"], 50), 1))
    report.figure("recovery_after_cut_p99_ms", round(percentile(recovery_ms["cut"], 99), 1))
    report.figure("recovery_after_heal_p50_ms", round(percentile(recovery_ms["heal"], 50), 1))
    report.figure("recovery_after_heal_p99_ms", round(percentile(recovery_ms["heal"], 99), 1))
    report.figure("cuts", len(cuts))
    report.figure("connections_cut", proxy.get("cut"))
    report.figure("connections_accepted", proxy.get("accepted"))
    report.figure("recoveries", sum(len(r.history.events_of("recovery")) for r in results.values()))
    report.figure("duplicates_dropped", sum(r.value["stats"].get("duplicate_channel_msgs", 0)
                                            for r in results.values()))
    report.figure("publishes_resent", sum(r.value["stats"].get("publishes_resent", 0)
                                          for r in results.values()))
    report.figure("duplicate_publishes", server_stats.get("duplicate_publishes"))


if __name__ == "__main__":
    sys.exit(run_scenario(story, f"{CLIENTS} clients through a proxy that cuts every 2 s and "
                                 f"blackholes {BLACKHOLE_S:.0f} s: every message once, in order",
                          timeout=TIMEOUT_S))

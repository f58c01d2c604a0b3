#!/usr/bin/env python3
"""09 server crash: history dies with the server, and every client is told where it lost.

Setup: a server keeping channel history in memory; CLIENTS clients subscribed to
one channel, each recording, in the order its handlers ran, the subscribe answer,
every channel message and every :class:`~sente_lite.session.Recovery`.
Workload: every client publishes numbered messages (fire-and-forget) at
RATE_PER_CLIENT messages/s, and goes on until AFTER_RECOVERY_S after it heard of
its recovery.
Fault: KILL_AFTER_S into the workload the server is SIGKILLed, with messages in
flight, and a new server process starts on the same port: a new epoch, and an
empty history.
Recovery: the clients reconnect and resubscribe with ``since`` (their last offset
in the old epoch); the new server cannot replay it, so every client is told
``recovered=False, reason="epoch-changed"`` through ``on_recovery``, and goes on
from the new epoch's top. Publishes not acknowledged by the dead server are
resent to the new one.
Check, per client: walking its record in order, every message follows the last
one seen (same epoch, offset + 1), except right after a recovery-failed
notification, which moves the position to the answer's epoch and offset: so no
gap, within an epoch or across the epoch change, is silent, and each epoch's
messages are contiguous from the first one after each (re)subscribe. Every
Recovery's ``since`` is the last position the client saw; every client got exactly
one failed recovery, ``epoch-changed``, from the old epoch to the new one; every
client has the new epoch up to a final message the server published last; clients
agree on the content of every (epoch, offset); no publish is twice in one epoch,
and every publish made after its client's recovery is in the new epoch exactly once.
Measured: time from the SIGKILL to each client's notification; how many messages
of the old epoch each client was told it lost.
"""

from __future__ import annotations

import sys

import _repo  # noqa: F401  (the repository's sente_lite/ first: test_scripts/_repo.py)

import collections
import time
from typing import Any, Dict, List, Tuple

from sente_lite import ChannelMessage, Recovery
from sente_lite.testing import (FIG_CLIENTS, FIG_MESSAGES, FIG_P99_MS, FIG_RECOVERY_S,
                                HarnessError, ProcessContext, ProcessResult, Report, Run,
                                latencies_ms, latency_summary, percentile, run_scenario, stamp)

CLIENTS = 4
CHANNEL = "ledger"
RATE_PER_CLIENT = 50           # messages per second, per client
#: Seconds into the workload when the server is killed.
KILL_AFTER_S = 2.0
#: Seconds each client goes on publishing after it heard of its recovery.
AFTER_RECOVERY_S = 2.0
#: Seconds a client publishes at most (it fails when no recovery came by then).
MAX_PUBLISH_S = 30.0
#: Messages the server keeps per channel (in memory: lost with the process).
HISTORY_SIZE = 10_000
#: Clients' reconnect backoff (s).
BACKOFF_BASE_S = 0.1
BACKOFF_MAX_S = 0.5
#: Seconds between the "publish" command and the common start.
START_DELAY_S = 0.5
#: Seconds a client may take, after its last publish, until the server acknowledged all.
ACK_TIMEOUT_S = 20.0
#: Seconds a client may take to receive the server's final message.
DRAIN_TIMEOUT_S = 20.0
#: The recovery answer the new server must give.
EPOCH_CHANGED = "epoch-changed"

# Rows of a client's record, in the order its handlers ran:
#   ["subscribed", offset, epoch]
#   ["msg", epoch, offset, by, seq]                 (by/seq None for the server's message)
#   ["recovery", recovered, reason, offset, epoch, since]
SUBSCRIBED, MSG, RECOVERY = "subscribed", "msg", "recovery"


def client(ctx: ProcessContext) -> Dict[str, Any]:
    """Subscribe; publish until AFTER_RECOVERY_S after the recovery; await the final message."""
    record: List[List[Any]] = []
    recovered_at: List[float] = []

    def on_message(m: ChannelMessage) -> None:
        ctx.history.record_message(m)
        data = m.data if isinstance(m.data, dict) else {}
        record.append([MSG, m.epoch, m.offset, data.get("by"), data.get("seq")])

    def on_recovery(r: Recovery) -> None:
        ctx.history.record("recovery", **r._asdict())
        record.append([RECOVERY, r.recovered, r.reason, r.offset, r.epoch, r.since])
        recovered_at.append(time.monotonic())

    with ctx.connect(backoff_base=BACKOFF_BASE_S, backoff_max=BACKOFF_MAX_S) as c:
        c.on_recovery(on_recovery)
        answer = c.subscribe(CHANNEL, on_message) or {}
        ctx.history.record("subscribed", channel=CHANNEL, reply=answer)
        record.insert(0, [SUBSCRIBED, answer.get("offset"), answer.get("epoch")])
        ctx.mark("ready")

        go = ctx.wait_command("publish")
        interval_ns = int(1e9 / RATE_PER_CLIENT)
        start_ns = go["start_ns"] + interval_ns * go["index"] // CLIENTS
        published: List[Tuple[int, int]] = []  # (seq, recoveries heard before it)
        seq = 0
        while not recovered_at or time.monotonic() < recovered_at[0] + AFTER_RECOVERY_S:
            due = start_ns + seq * interval_ns
            now = time.monotonic_ns()
            if due > now:
                time.sleep((due - now) / 1e9)  # pacing, not waiting for anything
            if (time.monotonic_ns() - start_ns) / 1e9 > MAX_PUBLISH_S:
                raise HarnessError(f"{ctx.name}: no recovery within {MAX_PUBLISH_S}s of publishing")
            heard = len(recovered_at)
            c.publish(CHANNEL, stamp(by=ctx.name, seq=seq))
            published.append((seq, heard))
            seq += 1
        ctx.wait_until(lambda: c.stats()["unacked_publishes"] == 0 or None,
                       "every publish acknowledged", ACK_TIMEOUT_S)
        ctx.mark("published", count=len(published))

        final = ctx.wait_command("await")
        ctx.wait_until(lambda: any(r[0] == MSG and r[1] == final["epoch"]
                                   and r[2] == final["offset"] for r in list(record)) or None,
                       f"the final message (offset {final['offset']})", DRAIN_TIMEOUT_S)
        ctx.mark("received")
        ctx.wait_command("finish")
        return {"uid": c.uid, "record": record, "published": published,
                "server_id": c.server_id, "stats": c.stats()}


def story(run: Run, report: Report) -> None:
    # setup
    server = run.start_server(history_size=HISTORY_SIZE)
    clients = run.start_clients(client, CLIENTS)
    run.wait_mark(clients, "ready")
    run.server_command(server, "await-subscribers", channel=CHANNEL, count=CLIENTS)
    report.step(f"{CLIENTS} clients subscribed")

    # workload; the fault on the parent's clock
    start_ns = time.monotonic_ns() + int(START_DELAY_S * 1e9)
    for i, h in enumerate(clients):
        run.command(h, "publish", start_ns=start_ns, index=i)
    wait = start_ns / 1e9 + KILL_AFTER_S - time.monotonic()
    if wait > 0:
        time.sleep(wait)  # the fault schedule's clock
    killed_ns = time.monotonic_ns()
    server.kill()
    report.step(f"SIGKILL {server.name} (pid {server.pid}) while the clients publish")
    server2 = run.restart_server(server)
    report.step(f"restarted as {server2.name} (pid {server2.pid}) on port {server2.port}")

    marks = run.wait_mark(clients, "published", MAX_PUBLISH_S + ACK_TIMEOUT_S)
    report.step(f"{sum(m['count'] for m in marks.values())} messages published, "
                "every one acknowledged")
    final = run.server_command(server2, "publish", channel=CHANNEL, data={"final": True})
    run.command(clients, "await", offset=final["offset"], epoch=final["epoch"])
    run.wait_mark(clients, "received", DRAIN_TIMEOUT_S)
    report.step(f"every client has the new epoch up to the final message (offset {final['offset']})")
    run.command(clients, "finish")
    results = run.results(clients)
    run.stop_server(server2)

    report.check(server.pid != server2.pid and server.port == server2.port,
                 "the restarted server is a new process on the same port",
                 f"pid {server.pid} -> {server2.pid}, port {server.port} -> {server2.port}")
    check(report, results, final, server2.server_id, killed_ns)


def walk(record: List[List[Any]]) -> Tuple[List[str], List[str], List[List[Any]]]:
    """Follow a client's record: (silent gaps, wrong ``since``s, failed recoveries).

    The position is the last (epoch, offset) seen: the subscribe answer's first,
    then each message's. A message must be the one after the position; a failed
    recovery moves the position to its answer (live messages go on from there); a
    recovered one leaves it (the replay follows from it). Each recovery's ``since``
    must be the position."""
    silent: List[str] = []
    wrong_since: List[str] = []
    failed: List[List[Any]] = []
    kind, offset, epoch = record[0]
    assert kind == SUBSCRIBED
    for row in record[1:]:
        if row[0] == RECOVERY:
            _, recovered, reason, r_offset, r_epoch, since = row
            if since != {"offset": offset, "epoch": epoch}:
                wrong_since.append(f"since {since} at ({epoch}, {offset})")
            if not recovered:
                failed.append(row)
                epoch, offset = r_epoch, r_offset
        else:
            _, m_epoch, m_offset = row[:3]
            if (m_epoch, m_offset) != (epoch, offset + 1):
                silent.append(f"({m_epoch}, {m_offset}) after ({epoch}, {offset})")
            epoch, offset = m_epoch, m_offset
    return silent, wrong_since, failed


def check(report: Report, results: Dict[str, ProcessResult], final: Dict[str, Any],
          server2_id: str, killed_ns: int) -> None:
    new_epoch = final["epoch"]
    old_epochs = {r.value["record"][0][2] for r in results.values()}
    report.check(len(old_epochs) == 1 and new_epoch not in old_epochs,
                 "every client subscribed in one epoch, and the restart began another",
                 f"first epochs {old_epochs}, new epoch {new_epoch}")
    old_epoch = next(iter(old_epochs))
    content: Dict[Tuple[str, int], set] = collections.defaultdict(set)
    for r in results.values():
        for row in r.value["record"]:
            if row[0] == MSG:
                content[(row[1], row[2])].add((row[3], row[4]))
    disagree = sorted(k for k, v in content.items() if len(v) > 1)
    report.check(not disagree, "every client that has an (epoch, offset) has the same message there",
                 f"{len(disagree)} differ, first {disagree[:3]}")
    per_epoch: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for (epoch, _), msgs in content.items():
        for msg in msgs:
            if msg[0] is not None:
                per_epoch[epoch][msg] += 1
    twice = {e: [m for m, n in c.items() if n > 1] for e, c in per_epoch.items()}
    report.check(not any(twice.values()), "no publish is twice in one epoch",
                 f"{ {e: v[:3] for e, v in twice.items() if v} }")

    notify_ms: List[float] = []
    told_lost: List[int] = []
    top_old = max((k[1] for k in content if k[0] == old_epoch), default=0)
    lost_with_server = 0
    for name, r in results.items():
        record = r.value["record"]
        silent, wrong_since, failed = walk(record)
        report.check(not silent, f"{name}: no silent gap; each epoch contiguous from its "
                                 "(re)subscribe point", f"{len(silent)} gaps: {silent[:3]}", name)
        report.check(not wrong_since, f"{name}: every recovery's since was the last position seen",
                     "; ".join(wrong_since[:3]), name)
        ok = (len(failed) == 1 and failed[0][2] == EPOCH_CHANGED and failed[0][4] == new_epoch
              and (failed[0][5] or {}).get("epoch") == old_epoch)
        report.check(ok, f"{name} was told once: recovered=False, {EPOCH_CHANGED}, old -> new epoch",
                     f"failed recoveries {failed}", name)
        last = [row for row in record if row[0] == MSG][-1]
        report.check((last[1], last[2]) == (new_epoch, final["offset"])
                     and r.value["server_id"] == server2_id,
                     f"{name} is connected to the new server and ends at its final message",
                     f"last message ({last[1]}, {last[2]}), server {r.value['server_id']}", name)
        events = r.history.events_of("recovery")
        failed_events = [e for e in events if not e["recovered"]]
        if failed_events:
            notify_ms.append((failed_events[0]["t_ns"] - killed_ns) / 1e6)
        if failed and failed[0][5]:
            told_lost.append(top_old - failed[0][5]["offset"])
        new_msgs = set().union(*(v for k, v in content.items() if k[0] == new_epoch))
        all_msgs = set().union(*content.values())
        after = [seq for seq, heard in r.value["published"] if heard >= 1]
        missing = [seq for seq in after if (name, seq) not in new_msgs]
        report.check(bool(after) and not missing,
                     f"{name}: every publish after its recovery ({len(after)}) is in the new epoch",
                     f"missing seqs {missing[:5]}", name)
        lost_with_server += sum(1 for seq, _ in r.value["published"] if (name, seq) not in all_msgs)
        stats = r.value["stats"]
        report.check(stats.get("unacked_publishes") == 0 and not stats.get("publish_errors"),
                     f"{name}: every publish acknowledged, none refused",
                     f"unacked={stats.get('unacked_publishes')} "
                     f"publish_errors={stats.get('publish_errors')}", name)

    in_both = len(set(per_epoch[old_epoch]) & set(per_epoch[new_epoch]))
    lat = latency_summary(latencies_ms(d for r in results.values() for d in r.deliveries))
    report.figure(FIG_CLIENTS, CLIENTS)
    report.figure(FIG_MESSAGES, len(content))
    report.figure(FIG_P99_MS, lat["p99_ms"])
    report.figure(FIG_RECOVERY_S, round(max(notify_ms) / 1000, 3) if notify_ms else None)
    report.figure("notified_after_kill_p50_ms", round(percentile(notify_ms, 50), 1))
    report.figure("notified_after_kill_p99_ms", round(percentile(notify_ms, 99), 1))
    report.figure("old_epoch_top", top_old)
    report.figure("told_lost_max", max(told_lost) if told_lost else None)
    report.figure("publishes_lost_with_server", lost_with_server)
    report.figure("publishes_in_both_epochs", in_both)
    report.figure("publishes_resent", sum(r.value["stats"].get("publishes_resent", 0)
                                          for r in results.values()))


if __name__ == "__main__":
    sys.exit(run_scenario(story, f"SIGKILL the server while {CLIENTS} clients publish: every client "
                                 "is told it lost messages; no silent gap"))

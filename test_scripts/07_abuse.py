#!/usr/bin/env python3
"""07 abuse: a flooder and a slowloris are cut with the right codes; the good clients never notice.

Setup: a server with small abuse limits (RATE_LIMIT, MAX_BAD_FRAMES_IN_ROW,
MAX_MESSAGE_BYTES, HANDSHAKE_TIMEOUT_S, MAX_PENDING_HANDSHAKES); good1 and good2
subscribed to "shared".
Workload: for GOOD_WINDOW_S each good client publishes GOOD_RATE_PER_S messages
a second (with ack) on "shared".
Faults, at the same time, from two other processes:
* flooder: a sente_lite Client publishing as fast as it can (rate-limited, then
  closed with 1008, after which it stops for good); a raw peer sending bad frames
  in a row (1008); a raw peer sending an oversized frame (1009);
* slowloris: SLOW_SOCKETS raw sockets that trickle an upgrade request byte by
  byte (cut at the handshake timeout; each one beyond MAX_PENDING_HANDSHAKES
  evicts the oldest upgrade in progress, so new clients always get in).
Check: each good client got every message of both, in order, once, with no
error and no reconnect, and p99 latency under GOOD_P99_BOUND_MS; each abuser was
cut with the expected code; the server counted each refusal and logged no error.
"""

from __future__ import annotations

import sys

import _repo  # noqa: F401  (the repository's sente_lite/ first: test_scripts/_repo.py)

import json
import threading
import time
from typing import Any, Dict, List, Optional

from sente_lite import Client, ConnectRefused, SenteLiteError
from sente_lite.discovery import wait_for
from sente_lite.testing import (FIG_CLIENTS, FIG_MESSAGES, FIG_P99_MS, ProcessContext,
                                ProcessResult, Report, Run, duplicates, latencies_ms,
                                latency_summary, order_problem, run_scenario, stamp)
from sente_lite.testing.abuse import RawPeer, upgrade_request

CHANNEL = "shared"
GOOD_CLIENTS = ("good1", "good2")
GOOD_RATE_PER_S = 25
GOOD_WINDOW_S = 4.0
#: Worst p99 publish-to-receive latency the good clients may see while the abusers run.
GOOD_P99_BOUND_MS = 500.0
RATE_LIMIT = 200
RATE_BURST = 100
MAX_RATE_LIMITED = 50
MAX_BAD_FRAMES_IN_ROW = 20
MAX_MESSAGE_BYTES = 64 * 1024
HANDSHAKE_TIMEOUT_S = 1.0
MAX_PENDING_HANDSHAKES = 4
SLOW_SOCKETS = 6
#: Most frames the flooding client sends before giving up on being cut.
FLOOD_MAX_FRAMES = 200_000
#: Seconds an abuser may take to be cut.
CUT_TIMEOUT_S = 5.0
CLOSE_POLICY, CLOSE_TOO_BIG = 1008, 1009
SERVER_LIMITS = dict(rate_limit=RATE_LIMIT, rate_burst=RATE_BURST, max_rate_limited=MAX_RATE_LIMITED,
                     max_bad_frames_in_row=MAX_BAD_FRAMES_IN_ROW, max_message_bytes=MAX_MESSAGE_BYTES,
                     handshake_timeout=HANDSHAKE_TIMEOUT_S,
                     max_pending_handshakes=MAX_PENDING_HANDSHAKES)


def good_client(ctx: ProcessContext) -> Dict[str, Any]:
    """Subscribe, then on "publish" publish GOOD_RATE_PER_S messages/s with ack for GOOD_WINDOW_S."""
    with ctx.connect() as c:
        ctx.subscribe(c, CHANNEL)
        ctx.mark("ready")
        ctx.wait_command("publish")
        errors: List[str] = []
        sent = 0
        start = time.monotonic()
        while time.monotonic() - start < GOOD_WINDOW_S:
            try:
                c.publish(CHANNEL, stamp(by=ctx.name, seq=sent), ack=True, timeout=CUT_TIMEOUT_S)
            except SenteLiteError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            sent += 1
            pause = start + sent / GOOD_RATE_PER_S - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # pacing the workload, not synchronization
        ctx.mark("published", count=sent)
        total = ctx.wait_command("expect")["total"]
        ctx.wait_until(lambda: ctx.history.count(CHANNEL) >= total or None,
                       f"{total} messages on {CHANNEL}")
        return {"uid": c.uid, "sent": sent, "errors": errors, "stats": c.stats()}


def open_raw(info: Dict[str, Any]) -> RawPeer:
    """An upgraded raw peer; retried while the slowloris holds every upgrade place (503)."""

    def attempt() -> Optional[RawPeer]:
        peer = RawPeer(info["host"], info["port"])
        if peer.upgrade().status == 101:
            return peer
        peer.close()
        return None

    return wait_for(attempt, CUT_TIMEOUT_S, "an upgrade past the slowloris", interval=0.1)


def flooder(ctx: ProcessContext) -> Dict[str, Any]:
    """Flood with a sente_lite Client, then send bad frames in a row, then an oversized frame."""
    info = ctx.server_address()
    url = info["url"]
    ctx.mark("ready")
    ctx.wait_command("attack")
    out: Dict[str, Any] = {}

    # 1. a client publishing as fast as it can
    c = Client(url, backoff_base=0.05)
    try:
        c.wait_connected(CUT_TIMEOUT_S)
        started = time.monotonic()
        sent = 0
        try:
            while sent < FLOOD_MAX_FRAMES and c.status == "connected":
                c.publish("flood", sent)
                sent += 1
        except SenteLiteError:
            pass
        c.wait_status("closed", CUT_TIMEOUT_S)
        refusal: Optional[ConnectRefused] = c.refusal
        out["flood"] = {"sent": sent, "cut_after_s": round(time.monotonic() - started, 3),
                        "close_code": refusal.close_code if refusal else None,
                        "rate_limited_errors": c.stats().get("errors_from_server", 0),
                        "status": c.status}
    finally:
        c.close()

    # 2. bad frames in a row
    with open_raw(info) as peer:
        for i in range(MAX_BAD_FRAMES_IN_ROW + 10):
            peer.send_text("this is not a frame")
        out["bad_frames"] = {"close_code": peer.read_until_close(CUT_TIMEOUT_S)[0],
                             "sent": peer.frames_sent}

    # 3. one frame over max-message-bytes
    with open_raw(info) as peer:
        peer.send_text(json.dumps(["app/big", "x" * (MAX_MESSAGE_BYTES + 1)]))
        out["oversized"] = {"close_code": peer.read_until_close(CUT_TIMEOUT_S)[0]}
    return out


def slowloris(ctx: ProcessContext) -> Dict[str, Any]:
    """Trickle SLOW_SOCKETS upgrade requests one byte at a time until the server cuts each."""
    info = ctx.server_address()
    ctx.mark("ready")
    ctx.wait_command("attack")
    request = upgrade_request(info["host"], info["port"])
    peers = [RawPeer(info["host"], info["port"]) for _ in range(SLOW_SOCKETS)]
    started = time.monotonic()
    cut: Dict[int, float] = {}

    def trickle(i: int, peer: RawPeer) -> None:
        peer.sock.settimeout(0.05)
        for b in range(len(request)):
            try:
                peer.sock.sendall(request[b:b + 1])
                data = peer.sock.recv(4096)
                if data == b"":
                    break  # cut
            except TimeoutError:
                continue  # still held open: that wait was the trickle's pause
            except OSError:
                break  # reset by the server
        cut[i] = time.monotonic() - started

    threads = [threading.Thread(target=trickle, args=(i, p), daemon=True) for i, p in enumerate(peers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANDSHAKE_TIMEOUT_S + CUT_TIMEOUT_S)
    for p in peers:
        p.close()
    return {"sockets": SLOW_SOCKETS,
            "cut_after_s": sorted(round(v, 3) for v in cut.values()),
            "still_open": SLOW_SOCKETS - len(cut)}


def story(run: Run, report: Report) -> None:
    # setup
    server = run.start_server(**SERVER_LIMITS)
    goods = [run.start_process(name, good_client) for name in GOOD_CLIENTS]
    abusers = [run.start_process("flooder", flooder, role="abuser"),
               run.start_process("slowloris", slowloris, role="abuser")]
    run.wait_mark(goods + abusers, "ready")
    run.server_command(server, "await-subscribers", channel=CHANNEL, count=len(goods))
    report.step(f"{len(goods)} good clients subscribed; flooder and slowloris ready")

    # workload and faults at once
    run.command(goods, "publish")
    run.command(abusers, "attack")
    counts = {n: m["count"] for n, m in run.wait_mark(goods, "published").items()}
    total = sum(counts.values())
    abuse = {n: r.value for n, r in run.results(abusers).items()}
    report.step(f"good clients published {counts}; abusers done")
    run.command(goods, "expect", total=total)
    results = run.results(goods)
    stats = run.stop_server(server).value

    check(report, results, total, abuse, stats, run.log_errors(server.name))


def check(report: Report, results: Dict[str, ProcessResult], total: int, abuse: Dict[str, Any],
          stats: Dict[str, Any], server_log_errors: List[str]) -> None:
    for name in GOOD_CLIENTS:
        r = results[name]
        report.check(len(r.deliveries) == total and not duplicates(r.deliveries)
                     and order_problem(r.deliveries) is None,
                     f"{name} got all {total} messages, once each, in order",
                     f"got {len(r.deliveries)}; {order_problem(r.deliveries) or ''}", name)
        report.check(r.value["errors"] == [] and r.value["stats"].get("handshakes") == 1,
                     f"{name} saw no error and no reconnect",
                     f"errors={r.value['errors'][:3]} handshakes={r.value['stats'].get('handshakes')}", name)
    lat = latency_summary(latencies_ms(d for r in results.values() for d in r.deliveries))
    report.check(lat["p99_ms"] < GOOD_P99_BOUND_MS,
                 f"good clients' p99 latency under {GOOD_P99_BOUND_MS:.0f} ms during the abuse",
                 f"p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, max {lat['max_ms']} ms")

    flood, slow = abuse["flooder"], abuse["slowloris"]
    report.check(flood["flood"]["close_code"] == CLOSE_POLICY and flood["flood"]["status"] == "closed",
                 "the flooding client was rate-limited, closed with 1008 and stopped for good",
                 f"{flood['flood']}")
    report.check(flood["bad_frames"]["close_code"] == CLOSE_POLICY,
                 "bad frames in a row closed with 1008", f"{flood['bad_frames']}")
    report.check(flood["oversized"]["close_code"] == CLOSE_TOO_BIG,
                 "an oversized frame closed with 1009", f"{flood['oversized']}")
    report.check(slow["still_open"] == 0 and max(slow["cut_after_s"]) < HANDSHAKE_TIMEOUT_S + 1.0,
                 f"slow upgrades: every one cut within {HANDSHAKE_TIMEOUT_S + 1.0:.1f}s", f"{slow}")
    refused = stats.get("handshakes_refused", {})
    report.check(stats.get("rate_limit_closes") == 1 and stats.get("rate_limited", 0) > 0
                 and stats.get("bad_frame_closes") == 1 and stats.get("too_large_closes") == 1
                 and refused.get("handshake-timeout", 0) >= 1
                 and refused.get("handshake-evicted", 0) >= SLOW_SOCKETS - MAX_PENDING_HANDSHAKES,
                 "the server counted every refusal",
                 f"rate_limited={stats.get('rate_limited')} rate_limit_closes={stats.get('rate_limit_closes')} "
                 f"bad_frame_closes={stats.get('bad_frame_closes')} too_large_closes={stats.get('too_large_closes')} "
                 f"refused={refused}")
    report.check(not server_log_errors, "the server logged no error", "; ".join(server_log_errors[:3]))
    report.figure(FIG_CLIENTS, len(GOOD_CLIENTS) + 2)
    report.figure(FIG_MESSAGES, total)
    report.figure(FIG_P99_MS, lat["p99_ms"])
    report.figure("flood_frames", flood["flood"]["sent"])
    report.figure("flood_cut_s", flood["flood"]["cut_after_s"])
    report.figure("slow_cut_max_s", max(slow["cut_after_s"]))


if __name__ == "__main__":
    sys.exit(run_scenario(story, "a flooder and a slowloris are cut; the good clients never notice"))

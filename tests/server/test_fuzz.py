"""Fuzz a live server while a well-behaved client keeps publishing and receiving.

The server runs in its own process (so its threads and RSS can be read from
/proc); the fuzzer (random and malformed frames, truncated and oversized
headers, bad UTF-8, invalid upgrades, slow upgrades, floods, connection bursts)
and the good client run here. The good client must see zero loss and no error;
afterwards the server's thread count must come back to its baseline and its
RSS stay near it.

``SENTE_LITE_FUZZ_S`` sets the fuzzing time (default 12 s); for example
``SENTE_LITE_FUZZ_S=300 python -m pytest -s tests/server/test_fuzz.py`` runs five minutes.
``SENTE_LITE_FUZZ_SEED`` replays one seed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

from sente_lite import discovery
from sente_lite.testing.abuse import Fuzzer, SteadyClient, proc_status
from support import WAIT_S, wait_until

FUZZ_S = float(os.environ.get("SENTE_LITE_FUZZ_S", "12"))
SEED = int(os.environ["SENTE_LITE_FUZZ_SEED"]) if "SENTE_LITE_FUZZ_SEED" in os.environ else None
FUZZ_WORKERS = 2
GOOD_RATE_PER_S = 50.0
GOOD_CHANNEL = "steady"
#: The good client's worst publish-to-receive latency allowed while the server is under attack.
GOOD_MAX_LATENCY_MS = 3000.0
#: Deadline of the server process's start, its settling and its exit: reached only when
#: something is broken (a fresh interpreter on a loaded 2-core machine can take many seconds).
PROCESS_DEADLINE_S = 60.0
#: Server RSS may end at most this far above its pre-fuzz baseline.
RSS_SLACK_KB = 40 * 1024
SERVER_CONFIG = {
    "max_message_bytes": 64 * 1024, "rate_limit": 1000, "rate_burst": 500, "max_rate_limited": 200,
    "handshake_timeout": 1.0, "max_pending_handshakes": 16, "max_connections": 64,
    "max_bad_frames_in_row": 20, "heartbeat_ms": 1000, "max_queued_bytes_per_conn": 256 * 1024,
    "close_timeout": 1.0, "max_subscriptions_per_conn": 100,
}


def test_fuzz_a_live_server_while_a_good_client_is_served(tmp_path):
    port_file, result_file = tmp_path / "port.json", tmp_path / "stats.json"
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sente_lite.testing.abuse", "serve", "--config", json.dumps(SERVER_CONFIG),
         "--port-file", str(port_file), "--result-file", str(result_file)],
        stdout=log, stderr=subprocess.STDOUT)
    good = None
    try:
        info = discovery.read_port_file(port_file, timeout=PROCESS_DEADLINE_S)
        idle = proc_status(proc.pid)  # no connection yet: the threads a server always has
        good = SteadyClient(info["url"], GOOD_CHANNEL, GOOD_RATE_PER_S).start(WAIT_S)
        wait_until(lambda: len(good.received) >= 10, what="good client warmed up")
        base = proc_status(proc.pid)

        fuzzer = Fuzzer(info["host"], info["port"], seed=SEED,
                        max_message_bytes=SERVER_CONFIG["max_message_bytes"],
                        handshake_timeout=SERVER_CONFIG["handshake_timeout"],
                        avoid_channels=[GOOD_CHANNEL])
        started = time.monotonic()
        fuzzer.run(FUZZ_S, workers=FUZZ_WORKERS)
        fuzz_s = time.monotonic() - started
        peak = proc_status(proc.pid)
        figures = good.stop()
        good = None

        wait_until(lambda: proc_status(proc.pid)["Threads"] <= idle["Threads"], timeout=PROCESS_DEADLINE_S,
                   what=f"server threads back to {idle['Threads']}")
        health_url = f"http://{info['host']}:{info['port']}/health"

        def settled() -> bool:  # every connection and upgrade of the fuzz has ended
            with urllib.request.urlopen(health_url, timeout=WAIT_S) as resp:
                health = json.loads(resp.read())
            return health["connections"] == 0 and health["pending-handshakes"] == 0

        wait_until(settled, timeout=PROCESS_DEADLINE_S, what="no connection or upgrade left")
        after = proc_status(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(PROCESS_DEADLINE_S) == 0
        stats = discovery.read_json(result_file)
    finally:
        if good is not None:
            good.client.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(5.0)
        log.close()

    summary = fuzzer.summary()
    print(f"\nfuzz: {fuzz_s:.1f}s seed={summary['seed']} attacks={summary['attacks']} "
          f"frames_sent={summary['frames_sent']} bytes_sent={summary['bytes_sent']}")
    print(f"fuzz by attack: {summary['by_attack']}")
    print(f"fuzz outcomes: {summary['outcomes']}")
    print(f"good client: {figures}")
    print(f"server threads idle {idle['Threads']}, with good client {base['Threads']}, "
          f"end of fuzz {peak['Threads']}, after {after['Threads']}; "
          f"RSS kB {base['VmRSS']} -> {peak['VmRSS']} -> {after['VmRSS']}")
    print(f"server frames_in={stats['frames_in']} bad_frames={stats['bad_frames']} "
          f"rate_limited={stats['rate_limited']} refusals={stats['handshakes_refused']} "
          f"closes={stats['closes_by_code']}")

    # the good client: everything it published came back once, in order, without an error
    assert figures["errors"] == [] and figures["reconnects"] == 0, figures
    assert figures["connection_ends"] == {}, figures  # never closed by the server nor found silent
    assert figures["published"] >= GOOD_RATE_PER_S * fuzz_s * 0.5
    assert figures["acked"] == figures["published"] == figures["received"]
    assert figures["lost"] == figures["duplicates"] == figures["out_of_order"] == 0
    assert figures["latency_ms"]["max"] < GOOD_MAX_LATENCY_MS
    # the attacks happened and were refused the right way
    assert summary["frames_sent"] > 1000
    closes = {int(k): v for k, v in stats["closes_by_code"].items()}
    for code in (1002, 1007, 1008, 1009):
        assert closes.get(code, 0) > 0, f"no close with {code}: {closes}"
    for reason in ("headers-too-large", "invalid-upgrade", "bad-request", "not-found"):
        assert stats["handshakes_refused"].get(reason, 0) > 0, stats["handshakes_refused"]
    assert stats["bad_frames"] > 0 and stats["rate_limited"] > 0
    # nothing leaked
    assert after["VmRSS"] - base["VmRSS"] < RSS_SLACK_KB
    assert stats["connections"] == 0 and stats["connection_slots"] == 0
    assert stats["pending_handshakes"] == 0

"""Benchmark of JWT connection tokens: ``python -m sente_lite.bench.jwt`` (extra ``[jwt]``).

Starts ``sente-lite serve --jwt-key`` in its own process and, per run:

* **a stream across refreshes**: a publisher and a subscriber (``Client(token=callable)``,
  tokens of ``--ttl`` seconds, so each refreshes every ~0.75 x ttl) carry ``--messages``
  channel messages at ``--rate`` per second; it checks that the subscriber got every offset
  once, in order (lost, duplicates), that neither client reconnected or saw a 4002 close,
  kept its conn-id, and refreshed at least ``--min-refreshes`` (3) times during the stream;
* **the refresh round trip**: ``chsk/refresh`` to reply on a raw socket, one connection per
  sample in turn (the server checks one refresh per connection per 0.5 s), ``--samples``
  samples on the idle server and as many during the stream; p50 and p99.

Prints each run, then the medians over ``--runs`` runs; exits 1 when a target is missed.

``--sub-refresh``: subscription tokens instead (:mod:`sente_lite.bench.sub_refresh`): the
``sente-lite/sub-refresh`` round trip, idle and during a stream on a token channel, beside
``chsk/refresh`` and a ping request measured in the same run, and the stream's losses.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from typing import Any, Dict, Optional, Sequence

from .. import discovery
from ..client.client import Client
from ..core.jwt_tokens import mint
from ..wire import protocol as p
from .token_rtt import KEY, Offsets, Sampler, paced, percentiles, serve, stop_server

#: Refreshes each client must make during the stream for the run to count (``--min-refreshes``).
MIN_REFRESHES = 3
CHANNEL = "bench.jwt"


def _stream(url: str, messages: int, rate: float, ttl: float, sampler: Sampler,
            samples: int) -> Dict[str, Any]:
    """One stream of ``messages`` across refreshes, with round trips sampled meanwhile."""
    on_msg = Offsets(messages)

    def source(sub: str) -> Any:
        return lambda: mint(sub, ttl, KEY)

    sub_client = Client(url, token=source("bench-sub"))
    pub_client = Client(url, token=source("bench-pub"))
    try:
        for c in (sub_client, pub_client):
            if not c.wait_connected(10):
                raise RuntimeError("a client did not connect")
        ids = (sub_client.conn_id, pub_client.conn_id)
        base = sub_client.subscribe(CHANNEL, on_msg)["offset"]
        refreshes_before = [c.stats().get("token_refreshes", 0) for c in (sub_client, pub_client)]
        finished, elapsed, under_load = paced(pub_client, CHANNEL, messages, rate, on_msg.done,
                                              lambda stop: sampler.sample(samples, stop))
        refreshes = [c.stats().get("token_refreshes", 0) - b
                     for c, b in zip((sub_client, pub_client), refreshes_before)]
        stats = [c.stats() for c in (sub_client, pub_client)]
        return {
            "finished": finished, "seconds": round(elapsed, 2), **on_msg.tally(base),
            "reconnects": sum(s.get("reconnect_attempts", 0) for s in stats),
            "closes_4002": sum(s.get(f"closed_by_server_{p.CLOSE_TOKEN_EXPIRED}", 0) for s in stats),
            "same_conn": (sub_client.conn_id, pub_client.conn_id) == ids,
            "refreshes": refreshes,
            "refresh_failures": sum(s.get("token_refresh_failures", 0) for s in stats),
            "rtt_under_load": percentiles(under_load) if under_load else None,
        }
    finally:
        sub_client.close()
        pub_client.close()


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sente_lite.bench.jwt", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=10_000, help="channel messages per run")
    ap.add_argument("--rate", type=float, default=1500.0, help="messages per second")
    ap.add_argument("--ttl", type=float, default=2.0, help="token life in seconds")
    ap.add_argument("--samples", type=int, default=200, help="refresh round trips per figure")
    ap.add_argument("--runs", type=int, default=3, help="runs; medians reported")
    ap.add_argument("--min-refreshes", type=int, default=MIN_REFRESHES,
                    help="refreshes each client must make during the stream")
    ap.add_argument("--sub-refresh", action="store_true",
                    help="measure subscription-token refreshes instead (bench.sub_refresh)")
    args = ap.parse_args(argv)
    if args.sub_refresh:
        from . import sub_refresh
        return sub_refresh.main(args)
    with tempfile.TemporaryDirectory() as tmp:
        port_file = os.path.join(tmp, "port.json")
        proc = serve(port_file)
        try:
            url = str(discovery.read_port_file(port_file, timeout=20)["url"])
            results = []
            for run in range(1, args.runs + 1):
                sampler = Sampler(url)
                try:
                    idle = percentiles(sampler.sample(args.samples))
                    result = _stream(url, args.messages, args.rate, args.ttl, sampler, args.samples)
                finally:
                    sampler.close()
                result["rtt_idle"] = idle
                results.append(result)
                print(f"run {run}: {json.dumps(result)}", flush=True)
        finally:
            stop_server(proc)
    ok = all(r["finished"] and r["lost"] == 0 and r["duplicates"] == 0 and r["in_order"]
             and r["reconnects"] == 0 and r["closes_4002"] == 0 and r["same_conn"]
             and min(r["refreshes"]) >= args.min_refreshes for r in results)

    def med(get: Any) -> float:
        return round(statistics.median(get(r) for r in results), 3)

    print(f"\n{args.messages} messages at {args.rate:g}/s, tokens of {args.ttl:g} s, "
          f"median of {args.runs} runs:")
    print(f"  stream: {med(lambda r: r['seconds'])} s, lost {sum(r['lost'] for r in results)}, "
          f"duplicates {sum(r['duplicates'] for r in results)}, reconnects "
          f"{sum(r['reconnects'] for r in results)}, 4002 closes "
          f"{sum(r['closes_4002'] for r in results)}, refreshes per client "
          f"{med(lambda r: min(r['refreshes']))} (at least {args.min_refreshes})")
    print(f"  refresh round trip, idle server: p50 {med(lambda r: r['rtt_idle']['p50'])} ms, "
          f"p99 {med(lambda r: r['rtt_idle']['p99'])} ms ({args.samples} samples a run)")
    if all(r["rtt_under_load"] for r in results):
        print(f"  refresh round trip during the stream: p50 "
              f"{med(lambda r: r['rtt_under_load']['p50'])} ms, p99 "
              f"{med(lambda r: r['rtt_under_load']['p99'])} ms")
    print("  targets: " + ("met" if ok else "NOT met"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark of subscription-token refreshes: ``python -m sente_lite.bench.jwt --sub-refresh``.

Starts ``sente-lite serve --jwt-key`` in its own process with ``[namespaces.room]
subscribe_token = true`` and, per run:

* **the round trips on the idle server**: on raw sockets, each subscribed to its own
  ``room:`` channel with a token, ``sente-lite/sub-refresh`` to reply (``--samples``
  samples, one channel per sample in turn: the server checks one per channel per 0.5 s),
  and beside it, on the same sockets, the baseline ``chsk/refresh`` (the connection
  token's refresh, the same signature check on the same path) and a ``chsk/ws-ping``
  request (one round trip that checks nothing); p50 and p99 of each;
* **a stream across sub-refreshes**: a subscriber whose channel token (``--ttl`` s) comes
  from a callable, so it is refreshed every ~0.75 x ttl, gets ``--messages`` messages
  published at ``--rate`` per second by another client, while sub-refresh round trips are
  sampled; it checks that every offset came once, in order (lost must be 0), that no
  client reconnected, the subscription never expired, and the subscriber refreshed its
  channel's token at least ``--min-refreshes`` times during the stream.

Prints a table of each run and the medians over ``--runs``; exits 1 when a target is
missed. Loopback on a shared machine: the figures move between runs (medians, not means).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import threading
from typing import Any, Callable, Dict, List, Optional

from .. import discovery
from ..client.client import Client
from ..core.jwt_tokens import mint
from ..wire import protocol as p
from .token_rtt import KEY, Offsets, Sampler, paced, percentiles, serve, stop_server

#: The namespace whose channels need subscription tokens.
NAMESPACE = "room"
CHANNEL = NAMESPACE + ":bench"
#: The server's settings file: the namespace above, and the default one for the rest.
CONFIG = f"[namespaces.{NAMESPACE}]\nsubscribe_token = true\n[namespaces.\"\"]\n"


class SubSampler(Sampler):
    """Times ``sente-lite/sub-refresh`` (and, as baselines, ``chsk/refresh`` and a
    ``chsk/ws-ping`` request) on raw sockets, each subscribed to its own channel with a token."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        for i, (ws, sub) in enumerate(self.socks):
            token = mint(sub, 3600, KEY, channel=self._channel(i))
            ws.send(json.dumps([p.EV_SUBSCRIBE, {p.K_CHANNEL: self._channel(i), p.K_TOKEN: token},
                                "s"]))
            answer = self._until(ws, lambda f: len(f) == 3 and f[2] == "s")
            if answer[0] != p.EV_REPLY:
                raise RuntimeError(f"subscribe refused: {answer[1]}")

    @staticmethod
    def _channel(i: int) -> str:
        return f"{NAMESPACE}:sampler-{i}"

    def sub_refresh(self, i: int, sub: str, seq: int) -> list:
        """The ``sente-lite/sub-refresh`` of connection ``i``'s channel, number ``seq``."""
        return [p.EV_SUB_REFRESH, {p.K_CHANNEL: self._channel(i),
                                   p.K_TOKEN: mint(sub, 3600 + seq, KEY, channel=self._channel(i))}]

    def sample_kind(self, kind: str, count: int,
                    stop: Optional[threading.Event] = None) -> List[float]:
        """Round trips in ms of ``count`` requests of ``kind`` (``sub-refresh``, ``refresh``,
        ``ping``), as :meth:`Sampler.sample` times them."""
        make = {"sub-refresh": self.sub_refresh, "refresh": self.refresh,
                "ping": lambda i, sub, seq: [p.EV_PING, None]}[kind]
        return self.sample(count, stop, make)


def _stream(url: str, messages: int, rate: float, ttl: float, sampler: SubSampler,
            samples: int) -> Dict[str, Any]:
    """One stream of ``messages`` on a token channel across its sub-refreshes."""
    on_msg = Offsets(messages)
    sub_client = Client(url, token=mint("bench-sub", 3600, KEY))
    pub_client = Client(url, token=mint("bench-pub", 3600, KEY))
    try:
        for c in (sub_client, pub_client):
            if not c.wait_connected(10):
                raise RuntimeError("a client did not connect")
        ids = (sub_client.conn_id, pub_client.conn_id)
        reply = sub_client.subscribe(CHANNEL, on_msg, token=lambda: mint(
            "bench-sub", ttl, KEY, channel=CHANNEL))
        base = reply["offset"] if reply else 0
        before = sub_client.stats().get("sub_token_refreshes", 0)
        finished, elapsed, under_load = paced(
            pub_client, CHANNEL, messages, rate, on_msg.done,
            lambda stop: sampler.sample_kind("sub-refresh", samples, stop))
        stats = [c.stats() for c in (sub_client, pub_client)]
        return {
            "finished": finished, "seconds": round(elapsed, 2), **on_msg.tally(base),
            "reconnects": sum(s.get("reconnect_attempts", 0) for s in stats),
            "same_conn": (sub_client.conn_id, pub_client.conn_id) == ids,
            "refreshes": stats[0].get("sub_token_refreshes", 0) - before,
            "refresh_failures": stats[0].get("sub_token_refresh_failures", 0),
            "expired": stats[0].get("sub_token_expired", 0),
            "sub_refresh_stream": percentiles(under_load) if under_load else None,
        }
    finally:
        sub_client.close()
        pub_client.close()


def _one_run(url: str, args: Any) -> Dict[str, Any]:
    sampler = SubSampler(url)
    try:
        idle = {kind: percentiles(sampler.sample_kind(kind, args.samples))
                for kind in ("ping", "refresh", "sub-refresh")}
        result = _stream(url, args.messages, args.rate, args.ttl, sampler, args.samples)
    finally:
        sampler.close()
    result["idle"] = idle
    return result


def _table(results: List[Dict[str, Any]], args: Any) -> bool:
    """Print one row per run and the medians; True when every target was met."""
    rows = [("run", "ping p50", "ping p99", "refresh p50", "refresh p99", "sub-refresh p50",
             "sub-refresh p99",
             "stream p50", "stream p99", "lost", "reconnects", "refreshes")]

    def row(name: str, get: Callable[[Callable[[Dict[str, Any]], Any]], Any]) -> tuple:
        return (name, get(lambda r: r["idle"]["ping"]["p50"]), get(lambda r: r["idle"]["ping"]["p99"]),
                get(lambda r: r["idle"]["refresh"]["p50"]), get(lambda r: r["idle"]["refresh"]["p99"]),
                get(lambda r: r["idle"]["sub-refresh"]["p50"]),
                get(lambda r: r["idle"]["sub-refresh"]["p99"]),
                get(lambda r: (r["sub_refresh_stream"] or {}).get("p50", float("nan"))),
                get(lambda r: (r["sub_refresh_stream"] or {}).get("p99", float("nan"))),
                get(lambda r: r["lost"]), get(lambda r: r["reconnects"]),
                get(lambda r: r["refreshes"]))
    for n, r in enumerate(results, 1):
        rows.append(row(str(n), lambda f, r=r: f(r)))
    rows.append(row("median", lambda f: round(statistics.median(f(r) for r in results), 3)))
    widths = [max(len(str(x[i])) for x in rows) for i in range(len(rows[0]))]
    print(f"\nsub-refresh: {args.messages} messages at {args.rate:g}/s on {CHANNEL}, channel "
          f"tokens of {args.ttl:g} s, {args.samples} samples per figure, round trips in ms "
          "(loopback, a shared machine: the figures move between runs)")
    for x in rows:
        print("  " + "  ".join(str(v).rjust(w) for v, w in zip(x, widths)))
    ok = all(r["finished"] and r["lost"] == 0 and r["duplicates"] == 0 and r["in_order"]
             and r["reconnects"] == 0 and r["same_conn"] and r["expired"] == 0
             and r["refreshes"] >= args.min_refreshes for r in results)
    for q in ("p50", "p99"):
        sub, ref, ping = (statistics.median(r["idle"][k][q] for r in results)
                          for k in ("sub-refresh", "refresh", "ping"))
        print(f"  sub-refresh {q} / refresh {q} (idle): {sub / ref:.2f}; / ping {q}: {sub / ping:.2f}")
    print(f"  lost {sum(r['lost'] for r in results)}, duplicates "
          f"{sum(r['duplicates'] for r in results)}, reconnects {sum(r['reconnects'] for r in results)}, "
          f"expired {sum(r['expired'] for r in results)}, refreshes per stream at least "
          f"{args.min_refreshes}: {[r['refreshes'] for r in results]}")
    print("  targets: " + ("met" if ok else "NOT met"))
    return ok


def main(args: Any) -> int:
    """Run the sub-refresh benchmark with the parsed arguments of ``bench.jwt``."""
    with tempfile.TemporaryDirectory() as tmp:
        port_file = os.path.join(tmp, "port.json")
        config = os.path.join(tmp, "serve.toml")
        with open(config, "w") as f:
            f.write(CONFIG)
        proc = serve(port_file, ("--config", config))
        try:
            url = str(discovery.read_port_file(port_file, timeout=20)["url"])
            results = []
            for run in range(1, args.runs + 1):
                results.append(_one_run(url, args))
                print(f"run {run}: {json.dumps(results[-1])}", flush=True)
        finally:
            stop_server(proc)
    return 0 if _table(results, args) else 1


__all__ = ["main", "SubSampler"]

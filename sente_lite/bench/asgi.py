"""The ASGI face against the threaded face and python-socketio's ASGIApp, on the fan-out
benchmark's workload.

``python -m sente_lite.bench.asgi -S 20 --same -R 100 -T 10 --driver raw --conns-per-proc 10
--runs 3`` runs the workload of :mod:`sente_lite.bench.fanout` (scenario 5's load with those
flags: every connection subscribes to one channel and publishes paced messages to it) against
the threaded :class:`sente_lite.Server`, against :class:`sente_lite.asgi.App` under uvicorn
(one process, one event loop: ``sente_lite.bench.asgi_server``) and against python-socketio's
``socketio.ASGIApp`` over an ``AsyncServer(async_mode="asgi")`` under the same uvicorn
settings (every connection joins one room and emits paced messages to it; the load is, with
``--driver raw``, the raw driver's engine.io 4 client, as cheap per message as the raw driver
is for sente_lite, and otherwise python-socketio's ``socketio.AsyncClient``,
:mod:`sente_lite.bench.sio`), the three alternating run by run. It prints each one's medians over the runs side by side, and the ratios ASGI /
threaded and ASGI / socket.io of p50, p99 and server CPU per delivery, against the targets
(ASGI server CPU per delivery <= 2x the threaded face's and <= 0.5x socket.io's). Every flag
of ``sente-lite bench`` that shapes the load applies (``--payload-bytes``,
``--heartbeat-ms``, ...); the ASGI face speaks JSON without batches. Needs ``uvicorn``;
socket.io needs ``pip install python-socketio aiohttp`` (left out, with a message, without).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List, Optional

from . import fanout, sio

THREADED = "sente_lite"
#: The issue's targets: ASGI server CPU per delivery over the threaded face's, over socket.io's.
CPU_VS_THREADED_MAX = 2.0
CPU_VS_SOCKETIO_MAX = 0.5


def compare(wl: fanout.Workload, runs: int, socketio: bool = True) -> dict:
    """Medians over ``runs`` of each system (alternating, the order reversed every other run),
    and the ratios ASGI / threaded and ASGI / socket.io."""
    systems = [THREADED, fanout.ASGI] + ([fanout.SOCKETIO_ASGI] if socketio else [])
    per: Dict[str, List[dict]] = {s: [] for s in systems}
    for i in range(runs):
        for system in (systems if i % 2 == 0 else systems[::-1]):
            r = fanout.run_once(system, wl)
            r["run"] = i + 1
            per[system].append(r)
            print(f"  run {i + 1}/{runs} {system}: delivered {r['delivered']:,} lost {r['lost']:,} "
                  f"p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms "
                  f"CPU {r['cpu_us_per_delivery']:.2f} us/deliv", flush=True)
    medians = {system: fanout.median_of(rows) for system, rows in per.items()}
    out = {"workload": fanout.describe(wl), "runs": per, "medians": medians,
           "ratios": fanout.ratios(medians[fanout.ASGI], medians[THREADED])}
    if socketio:
        out["socketio_ratios"] = fanout.ratios(medians[fanout.ASGI], medians[fanout.SOCKETIO_ASGI])
    return out


def _ratio_line(name: str, r: dict, target: float) -> str:
    cpu = r["cpu_per_delivery"]
    verdict = "meets" if cpu <= target else "misses"
    return (f"{name}: p50 x{r['p50']:.2f}, p99 x{r['p99']:.2f}, server CPU per delivery "
            f"x{cpu:.2f} ({verdict} the target <= x{target:g})")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sente_lite.bench.asgi", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    fanout.add_arguments(parser)
    args = parser.parse_args(argv)
    fanout.raise_nofile()
    wl = fanout._workload(args)
    runs = max(1, args.runs)
    lacking = sio.missing()
    if lacking:
        print(f"python-socketio's ASGIApp is left out: {' and '.join(lacking)} not installed "
              f"(pip install {' '.join(lacking)})")
    print(fanout.describe(wl), flush=True)
    result = compare(wl, runs, socketio=not lacking)
    print(f"\nmedians of {runs} run(s) each:")
    print(fanout._table(list(result["medians"].values())))
    print("\n" + _ratio_line("asgi / threaded", result["ratios"], CPU_VS_THREADED_MAX))
    if "socketio_ratios" in result:
        print(_ratio_line("asgi / socketio_asgi", result["socketio_ratios"], CPU_VS_SOCKETIO_MAX))
        print("(socket.io messages carry no offset: its ooo counts each publisher's order only)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=str)
    lost = sum(m["lost"] + m["duplicates"] + m["out_of_order"]
               for s, m in result["medians"].items() if s != fanout.SOCKETIO_ASGI)
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())

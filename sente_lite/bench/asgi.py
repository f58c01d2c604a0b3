"""The ASGI face against the threaded face on the fan-out benchmark's workload.

``python -m sente_lite.bench.asgi -S 20 --same -R 100 -T 10 --driver raw --conns-per-proc 10
--runs 3`` runs the workload of :mod:`sente_lite.bench.fanout` (scenario 5's load with those
flags) against the threaded :class:`sente_lite.Server` and against :class:`sente_lite.asgi.App`
under uvicorn (one process, one event loop: ``sente_lite.bench.asgi_server``), the two
alternating run by run, and prints each one's medians over the runs side by side with the
ratios ASGI / threaded of p50, p99 and server CPU per delivery. Every flag of
``sente-lite bench`` that shapes the load applies (``--payload-bytes``, ``--heartbeat-ms``,
...); the ASGI face speaks JSON without batches. Needs ``uvicorn``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List, Optional

from . import fanout

THREADED = "sente_lite"


def compare(wl: fanout.Workload, runs: int) -> dict:
    """Medians over ``runs`` of each face (alternating), and the ratios ASGI / threaded."""
    per: Dict[str, List[dict]] = {THREADED: [], fanout.ASGI: []}
    for _ in range(runs):
        for system in (THREADED, fanout.ASGI):
            per[system].append(fanout.run_once(system, wl))
    medians = {system: fanout.median_of(rows) for system, rows in per.items()}
    return {"workload": fanout.describe(wl), "runs": per, "medians": medians,
            "ratios": fanout.ratios(medians[fanout.ASGI], medians[THREADED])}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sente_lite.bench.asgi", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    fanout.add_arguments(parser)
    args = parser.parse_args(argv)
    fanout.raise_nofile()
    wl = fanout._workload(args)
    result = compare(wl, max(1, args.runs))
    print(result["workload"])
    print(fanout._table([result["medians"][THREADED], result["medians"][fanout.ASGI]],
                        ))
    r = result["ratios"]
    print(f"\nasgi / threaded: p50 x{r['p50']:.2f}, p99 x{r['p99']:.2f}, "
          f"server CPU per delivery x{r['cpu_per_delivery']:.2f} "
          f"(medians of {max(1, args.runs)} runs each)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=str)
    lost = sum(m["lost"] + m["duplicates"] + m["out_of_order"]
               for m in result["medians"].values())
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())

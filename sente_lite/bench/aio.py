"""Receive rate of one :class:`sente_lite.aio.AsyncClient` on one channel, beside the threaded
:class:`sente_lite.Client`.

    python -m sente_lite.bench.aio [--messages 100000] [--payload-bytes 64] [--runs 5]

A server process publishes ``--messages`` messages on one channel as fast as it can
(``Server.publish`` in a loop, :mod:`sente_lite.bench.receive`); exactly one subscriber
receives them, in a process of its own: an ``AsyncClient`` whose handler keeps each message
(``subscribe(ch, fn)``), an ``AsyncClient`` reading ``async for msg in c.subscription(ch)``,
and the threaded ``Client`` with a handler that keeps each message. The rate is messages /
(time of the last delivery - time of the first publish). Receivers alternate run by run; the
table shows medians of ``--runs`` and how long the publishing loop took (when it is about as
long as the delivery, the publisher was the limit, not the receiver).

The ``backlog`` rows take the publisher out of the way: the AsyncClient reads nothing (its
event loop is held) until every message was published and waits in the server's queue for
it, then the rate counts from then to the last delivery: what the client itself takes in.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import time
from typing import Any, Dict, List, Optional

from ..aio.client import AsyncClient, ChannelMessage
from .receive import CHANNEL, RUN_TIMEOUT_S, client_receiver, in_order, process_run, start_server, \
    stop_server

#: The issue's target for one AsyncClient on one channel.
TARGET_MSGS_PER_S = 80_000


def _aio(url: str, count: int, pipe: Any, iterate: bool, burst: bool = False) -> None:
    async def main() -> None:
        got: List[Any] = []
        done: "asyncio.Future[float]" = asyncio.get_running_loop().create_future()

        def on_msg(msg: ChannelMessage) -> None:
            got.append(msg.data)
            if len(got) == count:
                done.set_result(time.time())

        async def iterate_all(sub: Any) -> None:
            async for msg in sub:
                on_msg(msg)
                if len(got) == count:
                    return

        async with AsyncClient(url) as c:
            if not await c.wait_connected(10):
                pipe.send(("error", "AsyncClient did not connect"))
                return
            reader = None
            if iterate:
                # the iterator joins the channel in its task's first step, before the
                # server's answer to this subscribe can arrive
                reader = asyncio.ensure_future(iterate_all(c.subscription(CHANNEL)))
                await c.subscribe(CHANNEL, timeout=10)
            else:
                await c.subscribe(CHANNEL, on_msg, timeout=10)
            pipe.send(("ready", None))
            go_at = None
            if burst:  # this blocks the event loop on purpose: nothing is read until "go",
                pipe.recv()  # so every message waits, sent, in the server's queue
                go_at = time.time()
            try:
                t = await asyncio.wait_for(asyncio.shield(done), RUN_TIMEOUT_S)
            except asyncio.TimeoutError:
                t = None
            if reader is not None:
                reader.cancel()
            result = (t, len(got), in_order(got))
            pipe.send(("done", result + (go_at,) if burst else result))

    asyncio.run(main())


def aio_handler_receiver(url: str, count: int, pipe: Any) -> None:
    """AsyncClient with ``subscribe(ch, fn)``, ``fn`` keeping each message."""
    _aio(url, count, pipe, iterate=False)


def aio_iterator_receiver(url: str, count: int, pipe: Any) -> None:
    """AsyncClient reading ``async for msg in c.subscription(ch)``."""
    _aio(url, count, pipe, iterate=True)


def aio_burst_receiver(url: str, count: int, pipe: Any) -> None:
    """AsyncClient with ``subscribe(ch, fn)`` that reads nothing until every message was
    published: its rate is what it takes in, the publisher's pace out of the way."""
    _aio(url, count, pipe, iterate=False, burst=True)


def aio_burst_iterator_receiver(url: str, count: int, pipe: Any) -> None:
    """The same with ``async for msg in c.subscription(ch)``."""
    _aio(url, count, pipe, iterate=True, burst=True)


def burst_run(ctx: Any, receiver: Any, url: str, spipe: Any, messages: int,
              pad: str) -> Dict[str, float]:
    """One run of a burst receiver: every message is published while it reads nothing; the
    rate counts from its "go" to its last delivery."""
    rpipe, child_end = ctx.Pipe()
    proc = ctx.Process(target=receiver, args=(url, messages, child_end), daemon=True)
    proc.start()
    try:
        kind, value = rpipe.recv()
        if kind != "ready":
            raise SystemExit(value)
        spipe.send(("publish", messages, pad))
        t0, t1 = spipe.recv()
        rpipe.send("go")
        kind, (done_at, n, ordered, go_at) = rpipe.recv()
        if done_at is None:
            raise SystemExit(f"{receiver.__name__} got {n} of {messages} messages")
    finally:
        proc.join(10)
    return {"rate": messages / max(done_at - go_at, 1e-9), "publish_s": t1 - t0,
            "delivery_s": done_at - go_at, "ok": ordered}


#: Burst receivers: name -> (target, run).
BURST = {"AsyncClient, subscribe(ch, fn), backlog": aio_burst_receiver,
         "AsyncClient, async for, backlog": aio_burst_iterator_receiver}

RECEIVERS = {"AsyncClient, subscribe(ch, fn)": aio_handler_receiver,
             "AsyncClient, async for msg in subscription(ch)": aio_iterator_receiver,
             "Client (threaded), subscribe(ch, fn)": client_receiver}


def run(messages: int, payload_bytes: int, runs: int) -> List[Dict[str, Any]]:
    """Alternate the receivers ``runs`` times; one row per receiver with medians."""
    ctx = multiprocessing.get_context("spawn")
    server, spipe, url = start_server(ctx)
    pad = "x" * payload_bytes
    every = {**RECEIVERS, **BURST}
    results: Dict[str, List[Dict[str, float]]] = {name: [] for name in every}
    try:
        for i in range(runs):
            names = list(every) if i % 2 == 0 else list(every)[::-1]
            for name in names:
                run_one = burst_run if name in BURST else process_run
                r = run_one(ctx, every[name], url, spipe, messages, pad)
                results[name].append(r)
                print(f"  run {i + 1}/{runs} {name}: {r['rate']:,.0f} msgs/s "
                      f"(publish loop {r['publish_s']:.2f} s, delivery {r['delivery_s']:.2f} s)",
                      flush=True)
    finally:
        stop_server(server, spipe)
    return [{"receiver": name, "messages": messages,
             "msgs/s": statistics.median(r["rate"] for r in rs),
             "publish loop s": statistics.median(r["publish_s"] for r in rs),
             "delivery s": statistics.median(r["delivery_s"] for r in rs),
             "in order, none lost": all(r["ok"] for r in rs)} for name, rs in results.items()]


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sente_lite.bench.aio", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=100_000, help="messages per run")
    ap.add_argument("--payload-bytes", type=int, default=64, help="size of each message's padding")
    ap.add_argument("--runs", type=int, default=5, help="runs per receiver (median reported)")
    args = ap.parse_args(argv)
    rows = run(args.messages, args.payload_bytes, max(1, args.runs))
    from tabulate import tabulate
    print(tabulate([[r["receiver"], r["messages"], f"{r['msgs/s']:,.0f}", f"{r['publish loop s']:.2f}",
                     f"{r['delivery s']:.2f}", r["in order, none lost"]] for r in rows],
                   headers=["receiver", "messages", "msgs/s (median)", "publish loop s",
                            "delivery s", "in order, none lost"]))
    by_name = {r["receiver"]: r for r in rows}
    for name in (*BURST, "AsyncClient, subscribe(ch, fn)"):
        rate = by_name[name]["msgs/s"]
        print(f"{name}: {rate:,.0f} msgs/s, median of {max(1, args.runs)} runs "
              f"({'meets' if rate >= TARGET_MSGS_PER_S else 'misses'} the target "
              f">= {TARGET_MSGS_PER_S:,})")
    return 0 if all(r["in order, none lost"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

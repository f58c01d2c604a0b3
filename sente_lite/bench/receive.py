"""One subscriber's receive rate on one channel: the publishing server process and the run
of a receiver process, shared by :mod:`sente_lite.bench.browser` and
:mod:`sente_lite.bench.aio`.

A server process publishes N messages on one channel as fast as it can (``Server.publish``
in a loop, as an application's publisher would); one subscriber receives them; the rate is
N / (time of the last delivery - time of the first publish), on the machine's wall clock
(one machine, so the clocks are the same). The server's slow-consumer limit is raised
(every message may wait in its queue); rate limiting does not apply to server publishes.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Tuple

from ..client.client import ChannelMessage, Client
from ..server.server import Server

CHANNEL = "bench/feed"
#: Outbound queue of the one subscriber: large enough to hold every message of a run.
QUEUE_BYTES = 512 << 20
#: Deadline of one run's delivery.
RUN_TIMEOUT_S = 120.0

#: A receiver process's target: ``fn(url, count, pipe)``; it sends ``("ready", None)`` once
#: subscribed, then ``("done", (wall time of the last delivery or None, received, in order))``
#: (or ``("error", why)``).
Receiver = Callable[[str, int, Any], None]


def server_main(pipe: Any) -> None:
    """The publishing server: sends its URL, then per ``("publish", count, pad)`` publishes
    ``{"i": 0..count-1, "pad": pad}`` in a loop and answers (start, end) wall times."""
    with Server(max_queued_bytes_per_conn=QUEUE_BYTES, rate_limit=None) as srv:
        pipe.send(srv.url)
        while True:
            cmd = pipe.recv()
            if cmd[0] == "stop":
                return
            _, count, pad = cmd
            t0 = time.time()
            for i in range(count):
                srv.publish(CHANNEL, {"i": i, "pad": pad})
            pipe.send((t0, time.time()))


def in_order(got: List[Any]) -> bool:
    """True when ``got`` is the data of messages 0..n-1 in that order."""
    return all(d["i"] == i for i, d in enumerate(got))


def client_receiver(url: str, count: int, pipe: Any) -> None:
    """A :data:`Receiver`: :class:`sente_lite.Client` with a handler that keeps each message."""
    got: List[Any] = []
    done: Dict[str, float] = {}

    def on_msg(msg: ChannelMessage) -> None:
        got.append(msg.data)
        if len(got) == count:
            done["t"] = time.time()

    with Client(url) as client:
        if not client.wait_connected(10):
            pipe.send(("error", "python client did not connect"))
            return
        client.subscribe(CHANNEL, on_msg, timeout=10)
        pipe.send(("ready", None))
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while "t" not in done and time.monotonic() < deadline:
            time.sleep(0.01)  # a benchmark's poll of its own result, not synchronization in the library
        pipe.send(("done", (done.get("t"), len(got), in_order(got))))


def process_run(ctx: Any, receiver: Receiver, url: str, spipe: Any, messages: int,
                pad: str) -> Dict[str, float]:
    """One run with ``receiver`` in a process of its own (spawned from ``ctx``)."""
    rpipe, child_end = ctx.Pipe()
    proc = ctx.Process(target=receiver, args=(url, messages, child_end), daemon=True)
    proc.start()
    try:
        kind, value = rpipe.recv()
        if kind != "ready":
            raise SystemExit(value)
        spipe.send(("publish", messages, pad))
        t0, t1 = spipe.recv()
        kind, (done_at, n, ordered) = rpipe.recv()
        if done_at is None:
            raise SystemExit(f"{receiver.__name__} got {n} of {messages} messages")
    finally:
        proc.join(10)
    return row(t0, t1, done_at, messages, ordered)


def row(t0: float, t1: float, done_at: float, messages: int, ok: bool) -> Dict[str, float]:
    """The figures of one run: rate, publishing loop time, delivery time, in order."""
    return {"rate": messages / max(done_at - t0, 1e-9), "publish_s": t1 - t0,
            "delivery_s": done_at - t0, "ok": ok}


def start_server(ctx: Any) -> Tuple[Any, Any, str]:
    """The publishing server process: (process, pipe, url)."""
    spipe, child_end = ctx.Pipe()
    server = ctx.Process(target=server_main, args=(child_end,), daemon=True)
    server.start()
    return server, spipe, spipe.recv()


def stop_server(server: Any, spipe: Any) -> None:
    """Stop the publishing server process and reap it."""
    spipe.send(("stop",))
    server.join(10)


__all__ = ["CHANNEL", "QUEUE_BYTES", "RUN_TIMEOUT_S", "Receiver", "server_main", "in_order",
           "client_receiver",
           "process_run", "row", "start_server", "stop_server"]

#!/usr/bin/env python3
"""13 mixed faces: a threaded server and an ASGI app under uvicorn on one Redis; the uvicorn process dies and comes back.

Setup: a real redis-server (started here, on a free port, no persistence); the threaded
``server`` and ``asgi`` (``sente_lite.App`` served by uvicorn in a process of its own, on a
port chosen here), both with ``broker=redis://...``. Four clients, one of each kind on each
face: client1 (``Client``) and client3 (``AsyncClient``) on the threaded server, client2
(``Client``) and client4 (``AsyncClient``) on the ASGI app, all subscribed to "news".
Workload: every client publishes PER_CLIENT messages, one every PUBLISH_INTERVAL_S (each
publish carries an id and stays in the client's outbox until acknowledged).
Fault: once every client has published KILL_AFTER messages, SIGKILL the uvicorn process
(its clients lose their connection, in-flight publishes lose their acknowledgement); at
once start a new uvicorn process, with a new App, on the same port.
Recovery: the ASGI face's clients reconnect by themselves, renew "news" with ``since``
(the history is in Redis: ``recovered: true``) and resend their unacknowledged publishes
(the publish ids in Redis make each land once); the threaded face's clients never notice.
Check: every client has every message of every client exactly once, in offset order, in
one epoch, or a ``recovered: false`` notice covering it; the ASGI face's clients
reconnected to the new process; the threaded face's clients stayed connected.
Skipped (named) without ``redis-server`` or ``uvicorn``.
"""

from __future__ import annotations

import sys

import _repo  # noqa: F401  (the repository's sente_lite/ first: test_scripts/_repo.py)

import asyncio
import importlib.util
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from sente_lite import AsyncClient
from sente_lite.discovery import wait_for
from sente_lite.errors import DiscoveryTimeout
from sente_lite.testing import (FIG_CLIENTS, FIG_MESSAGES, FIG_P99_MS, FIG_RECOVERY_S,
                                CLEANUP_TIMEOUT_S, CLIENT_CONNECT_TIMEOUT_S, ProcessContext, ProcessResult, Report,
                                Run, covered_by_notice, latencies_ms, latency_summary, port_is_free, run_scenario,
                                stamp)
from sente_lite.testing.redis_server import RedisServer, free_port, with_redis_server

CHANNEL = "news"
#: (client kind, face) of client1..client4: each kind of client on each face.
CLIENTS = (("Client", "threaded"), ("Client", "asgi"), ("AsyncClient", "threaded"),
           ("AsyncClient", "asgi"))
#: Messages each client publishes, and the pace (s between two publishes): about 3 s of
#: publishing, so the uvicorn restart (a fresh interpreter) happens mid-stream.
PER_CLIENT = 150
PUBLISH_INTERVAL_S = 0.02
#: Publishes per client before the SIGKILL.
KILL_AFTER = 30
#: Clients' reconnect backoff cap (s): back within a fraction of a second of the restart.
BACKOFF_MAX_S = 0.3
#: Seconds the new uvicorn process may take to serve, and its clients to be recovered.
RESTART_TIMEOUT_S = 30.0
#: Seconds every client may take to have every message once the publishing ends.
DRAIN_TIMEOUT_S = 30.0
#: Why the scenario is skipped without uvicorn.
NO_UVICORN = "uvicorn is not installed (pip install uvicorn, in the [test] extra): the ASGI face runs under it"


def asgi_app(ctx: ProcessContext, port: int, redis_url: str) -> Dict[str, Any]:
    """The ASGI face: an App on Redis under uvicorn on ``port``, until ``finish``."""
    import uvicorn

    from sente_lite import App

    rt = App(broker=redis_url)
    server = uvicorn.Server(uvicorn.Config(rt, host="127.0.0.1", port=port, lifespan="on",
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        ctx.wait_until(lambda: server.started or not thread.is_alive() or None, "uvicorn started")
        if not server.started:
            raise RuntimeError(f"uvicorn did not start on port {port}")
        ctx.wait_until(lambda: rt.channels.healthy or None, "the App's Redis link")
        ctx.mark("ready", server_id=rt.server_id, url=f"ws://127.0.0.1:{port}/chsk")

        def await_subscribers(data: Dict[str, Any]) -> int:
            return ctx.wait_until(lambda: rt.channels.subscriber_count(CHANNEL) == data["count"]
                                  or None, f"{data['count']} subscribers on {CHANNEL!r}")

        ctx.serve_commands({"await-subscribers": await_subscribers})
        return {"server_id": rt.server_id, "stats": rt.stats()}
    finally:
        server.should_exit = True
        thread.join(RESTART_TIMEOUT_S)


def _record_recovery(ctx: ProcessContext, server_id: Callable[[], Optional[str]]) -> Callable[[Any], None]:
    def on_recovery(r: Any) -> None:
        ctx.history.record("recovery", channel=r.channel_id, recovered=r.recovered,
                           reason=r.reason, offset=r.offset, epoch=r.epoch, since=r.since,
                           server_id=server_id())
        ctx.mark("recovery", recovered=r.recovered, server_id=server_id())
    return on_recovery


def _publish_all(ctx: ProcessContext, publish: Callable[[Dict[str, Any]], None]) -> None:
    """Publish PER_CLIENT stamped messages, paced; mark the count every 10."""
    t0 = time.monotonic()
    for n in range(PER_CLIENT):
        delay = t0 + n * PUBLISH_INTERVAL_S - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # the workload's pace, not a wait for anything
        publish(stamp(by=ctx.name, n=n))
        if (n + 1) % 10 == 0:
            ctx.mark("published", count=n + 1)


def _serve(ctx: ProcessContext, publish: Callable[[Dict[str, Any]], None]) -> None:
    """The client's commands: ``publish`` (in a thread, so ``await`` can run meanwhile)."""
    publisher = threading.Thread(target=_publish_all, args=(ctx, publish), name="publisher",
                                 daemon=True)

    def await_all(data: Dict[str, Any]) -> int:
        want = data["count"]
        publisher.join(DRAIN_TIMEOUT_S)
        return ctx.wait_until(lambda: len({(d.data["by"], d.data["n"])
                                           for d in ctx.history.messages(CHANNEL)}) >= want or None,
                              f"{want} distinct messages", DRAIN_TIMEOUT_S)

    ctx.serve_commands({"publish": lambda data: publisher.start(), "await": await_all})


def threaded_client(ctx: ProcessContext, url: str) -> Dict[str, Any]:
    """A ``Client`` on ``url``: subscribe, publish when told, record everything."""
    with ctx.connect(url, backoff_max=BACKOFF_MAX_S) as c:
        c.on_recovery(_record_recovery(ctx, lambda: c.server_id))
        ctx.subscribe(c, CHANNEL)
        ctx.mark("ready", server_id=c.server_id)
        _serve(ctx, lambda data: c.publish(CHANNEL, data))
        return {"server_id": c.server_id, "stats": c.stats()}


def async_client(ctx: ProcessContext, url: str) -> Dict[str, Any]:
    """An ``AsyncClient`` on ``url``, on an event loop in a thread of this process (the
    harness's commands are blocking calls): subscribe, publish when told, record everything."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="aio-loop", daemon=True)
    thread.start()

    def call(coro: Any, timeout: float = CLIENT_CONNECT_TIMEOUT_S) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    async def make() -> AsyncClient:
        return AsyncClient(url, client_id=ctx.name, backoff_max=BACKOFF_MAX_S)

    c: AsyncClient = call(make())
    changes = 0

    def on_status(status: str) -> None:
        nonlocal changes
        changes += 1
        event = ctx.history.record("status", status=status, server_id=c.server_id)
        ctx.mark("status", status=status, server_id=c.server_id, changes=changes,
                 at_ns=event["t_ns"])

    try:
        c.on_status(on_status)
        c.on_recovery(_record_recovery(ctx, lambda: c.server_id))
        ctx.history.record("status", status=c.status, server_id=None)
        call(c.start())
        if not call(c.wait_connected(CLIENT_CONNECT_TIMEOUT_S), CLIENT_CONNECT_TIMEOUT_S + 1):
            raise RuntimeError(f"AsyncClient not connected to {url}")
        reply = call(c.subscribe(CHANNEL, ctx.history.record_message,
                                 timeout=CLIENT_CONNECT_TIMEOUT_S), CLIENT_CONNECT_TIMEOUT_S + 1)
        ctx.history.record("subscribed", channel=CHANNEL, reply=reply)
        ctx.mark("ready", server_id=c.server_id)
        _serve(ctx, lambda data: call(c.publish(CHANNEL, data)))
        return {"server_id": c.server_id, "stats": c.stats()}
    finally:
        call(c.close())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(CLIENT_CONNECT_TIMEOUT_S)
        loop.close()


def story(run: Run, report: Report) -> None:
    if importlib.util.find_spec("uvicorn") is None:
        report.skip(NO_UVICORN)
        return
    with_redis_server(run, report, scenario)


def _start_asgi(run: Run, name: str, port: int, redis_url: str) -> Tuple[Any, Dict[str, Any]]:
    handle = run.start_process(name, asgi_app, port, redis_url, role="server")
    return handle, run.wait_mark(handle, "ready", RESTART_TIMEOUT_S)[name]


def scenario(run: Run, report: Report, redis_srv: RedisServer) -> None:
    server = run.start_server("server", broker=redis_srv.url)
    port = free_port()
    asgi, info = _start_asgi(run, "asgi", port, redis_srv.url)
    report.step(f"threaded server on {server.port}, ASGI app under uvicorn on {port}, both on Redis")
    urls = {"threaded": server.url, "asgi": info["url"]}
    clients = [run.start_process(f"client{i}", threaded_client if kind == "Client" else async_client,
                                 urls[face])
               for i, (kind, face) in enumerate(CLIENTS, 1)]
    on_asgi = [h for h, (_, face) in zip(clients, CLIENTS) if face == "asgi"]
    run.wait_mark(clients, "ready")
    run.server_command(server, "await-subscribers", channel=CHANNEL, count=len(clients) - len(on_asgi))
    run.request(asgi, "await-subscribers", count=len(on_asgi))
    report.step(f"{len(clients)} clients subscribed: a Client and an AsyncClient on each face")

    run.command(clients, "publish")
    run.wait_mark(clients, "published", accept=lambda m: m["count"] >= KILL_AFTER)
    killed_ns = time.monotonic_ns()
    asgi.kill()
    report.step(f"every client published {KILL_AFTER}: SIGKILL uvicorn (pid {asgi.pid})")
    asgi2, info2 = _start_asgi(run, "asgi-2", port, redis_srv.url)
    served_ns = time.monotonic_ns()
    moved = run.wait_mark(on_asgi, "status", RESTART_TIMEOUT_S,
                          accept=lambda m: m["status"] == "connected"
                          and m["server_id"] == info2["server_id"])
    connected_ns = max(m["at_ns"] for m in moved.values())
    recovered = run.wait_mark(on_asgi, "recovery", RESTART_TIMEOUT_S)
    recovered_ns = max(m["t_ns"] for m in recovered.values())
    report.step(f"new uvicorn serving after {(served_ns - killed_ns) / 1e9:.2f}s; its clients "
                f"back after {(connected_ns - killed_ns) / 1e9:.2f}s, recovered after "
                f"{(recovered_ns - killed_ns) / 1e9:.2f}s")
    total = PER_CLIENT * len(clients)
    run.request(clients, "await", count=total, timeout=DRAIN_TIMEOUT_S + 5)
    run.command(clients, "finish")
    results = run.results(clients)
    run.command(asgi2, "finish")
    run.results(asgi2)
    run.stop_server(server)
    report.check(_port_freed(port), f"uvicorn's port {port} is free after its process ended", "")

    check(report, results, {h.name for h in on_asgi}, info2["server_id"], total)
    report.figure("restart_s", round((served_ns - killed_ns) / 1e9, 3))
    report.figure("reconnect_s", round((connected_ns - killed_ns) / 1e9, 3))
    report.figure(FIG_RECOVERY_S, round((recovered_ns - killed_ns) / 1e9, 3))


def _port_freed(port: int) -> bool:
    """True once ``port`` is free (within CLEANUP_TIMEOUT_S)."""
    try:
        return bool(wait_for(lambda: port_is_free(port) or None, CLEANUP_TIMEOUT_S,
                             f"port {port} free"))
    except DiscoveryTimeout:
        return False



def check(report: Report, results: Dict[str, ProcessResult], on_asgi: set, new_id: str,
          total: int) -> None:
    everywhere: Dict[Tuple[str, int], Tuple[str, int]] = {}
    for r in results.values():
        for d in r.deliveries:
            everywhere[(d.data["by"], d.data["n"])] = (d.epoch, d.offset)
    expected = {(name, n) for name in results for n in range(PER_CLIENT)}
    report.check(set(everywhere) == expected, f"all {total} publishes landed in the channel",
                 f"{len(expected - set(everywhere))} never delivered anywhere")
    covered_n = 0
    for name, r in results.items():
        kind, face = CLIENTS[int(name[len("client"):]) - 1]
        got = [((d.data["by"], d.data["n"]), d.epoch, d.offset) for d in r.deliveries]
        keys = [k for k, _, _ in got]
        report.check(len(keys) == len(set(keys)), f"{name}: no message delivered twice",
                     f"{len(keys) - len(set(keys))} duplicates", name)
        order_ok = all(b[2] > a[2] for a, b in zip(got, got[1:]) if a[1] == b[1])
        report.check(order_ok, f"{name}: offsets increase within each epoch", "", name)
        notices = [e for e in r.events if e["kind"] == "recovery" and not e["recovered"]]
        missing = []
        for key in sorted(expected - set(keys)):
            epoch, offset = everywhere.get(key, (None, None))
            if epoch is not None and covered_by_notice(notices, epoch, offset):
                covered_n += 1
            else:
                missing.append(key)
        report.check(not missing, f"{name} ({kind} on the {face} face): every message exactly "
                                  "once, or covered by a recovered: false notice",
                     f"{len(missing)} missing: {missing[:5]}", name)
        recoveries = [e for e in r.events if e["kind"] == "recovery"]
        if name in on_asgi:
            report.check(r.value["server_id"] == new_id and recoveries
                         and recoveries[-1]["server_id"] == new_id,
                         f"{name}: back on the new uvicorn process, its channel renewed with since",
                         f"{recoveries}", name)
        else:
            report.check(not recoveries and [s for s in r.statuses() if s != "closed"]
                         == ["connecting", "connected"],
                         f"{name}: stayed connected to the threaded server, nothing to recover",
                         f"{r.statuses()}", name)
    lat = latency_summary(latencies_ms(d for r in results.values() for d in r.deliveries))
    report.figure(FIG_CLIENTS, len(results))
    report.figure(FIG_MESSAGES, total)
    report.figure(FIG_P99_MS, lat["p99_ms"])
    report.figure("covered_by_notice", covered_n)
    report.figure("recovered_true", sum(1 for r in results.values() for e in r.events
                                        if e["kind"] == "recovery" and e["recovered"]))


if __name__ == "__main__":
    sys.exit(run_scenario(story, "a threaded server and an ASGI app on one Redis, clients of "
                                 "both kinds; SIGKILL and restart uvicorn mid-stream"))

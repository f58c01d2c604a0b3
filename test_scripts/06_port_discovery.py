#!/usr/bin/env python3
"""06 ephemeral port discovery: clients find a port-0 server through its port file.

Setup: CLIENTS client processes start first, knowing only the run's port-file
path, and mark that they are waiting for it. Only then does the server start
on port 0 (the OS picks the port) and write the port file.
Workload: each client reads the file, connects to the URL in it and subscribes
to "roll-call"; the server publishes one message there.
Check: the port file did not exist while the clients waited; every client
connected to the port and server id the server reported, and got the roll call.
"""

from __future__ import annotations

import sys

import _repo  # noqa: F401  (the repository's sente_lite/ first: test_scripts/_repo.py)

import os
from typing import Any, Dict

from sente_lite.testing import (FIG_CLIENTS, FIG_MESSAGES, PROCESS_START_TIMEOUT_S,
                                SERVER_STARTUP_TIMEOUT_S, ProcessContext, ProcessResult, Report,
                                Run, ServerHandle, run_scenario)

CLIENTS = 5
CHANNEL = "roll-call"
#: Seconds a client waits for the port file: the server is launched only after
#: every client is waiting, then may take as long as the harness allows it.
PORT_FILE_WAIT_S = PROCESS_START_TIMEOUT_S + SERVER_STARTUP_TIMEOUT_S


def client(ctx: ProcessContext) -> Dict[str, Any]:
    """Wait for the port file, connect to what it names, answer the roll call."""
    ctx.mark("waiting", port_file_exists=os.path.exists(ctx.port_file))
    address = ctx.server_address(PORT_FILE_WAIT_S)
    with ctx.connect(address["url"]) as c:
        ctx.subscribe(c, CHANNEL)
        ctx.mark("ready")
        ctx.wait_until(lambda: ctx.history.count(CHANNEL) >= 1, "the roll call")
        ctx.wait_command("finish")
        return {"port_file": address, "server_id": c.server_id}


def story(run: Run, report: Report) -> None:
    # setup: clients first, then a server on port 0
    clients = run.start_clients(client, CLIENTS)
    waiting = run.wait_mark(clients, "waiting")
    file_before_server = os.path.exists(run.port_file)
    report.step(f"{CLIENTS} clients wait for {os.path.basename(run.port_file)}")
    server = run.start_server(port=0)
    report.step(f"server on port 0 got port {server.port}")

    # workload: roll call
    run.wait_mark(clients, "ready")
    published = run.server_command(server, "publish", channel=CHANNEL, data={"roll": "call"})
    run.command(clients, "finish")
    results = run.results(clients)
    run.stop_server(server)

    check(report, results, server, waiting, file_before_server, published)


def check(report: Report, results: Dict[str, ProcessResult], server: ServerHandle,
          waiting: Dict[str, Dict[str, Any]], file_before_server: bool,
          published: Dict[str, Any]) -> None:
    report.check(not file_before_server and not any(w["port_file_exists"] for w in waiting.values()),
                 "no port file existed while the clients started waiting")
    report.check(server.port != 0, "the server bound a real port", f"port {server.port}")
    waited = []
    for name, r in results.items():
        pf = r.value["port_file"]
        report.check(pf["port"] == server.port and pf["server-id"] == server.server_id
                     and r.value["server_id"] == server.server_id,
                     f"{name} read the port file and connected to that server",
                     f"port {pf['port']}, server-id {r.value['server_id']}", name)
        report.check([d.data.get("roll") for d in r.deliveries] == ["call"],
                     f"{name} got the roll call", "", name)
        waited += [e["waited_ns"] / 1e9 for e in r.events if e["kind"] == "port-file"]
    report.check(published.get("delivered") == CLIENTS, f"the roll call reached {CLIENTS} clients",
                 f"delivered={published.get('delivered')}")
    report.figure(FIG_CLIENTS, CLIENTS)
    report.figure(FIG_MESSAGES, 1)
    report.figure("port", server.port)
    report.figure("port_file_wait_s_max", round(max(waited), 3) if waited else None)


if __name__ == "__main__":
    sys.exit(run_scenario(story, f"server on port 0; {CLIENTS} clients find it via the port file"))

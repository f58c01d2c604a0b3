"""Multi-process scenario harness for sente_lite (public; downstream projects vendor it).

A scenario proves behaviour across real OS processes: one server process and
many client processes, all from ``multiprocessing.get_context("spawn")``,
sharing nothing but files in a per-run temp directory. In the Jepsen spirit
each process records a :class:`History` of what it saw (channel deliveries with
offset, epoch, send and receive times; status changes), and one checker per
scenario judges the histories afterwards.

Parent side::

    from sente_lite.testing import Run, run_scenario, stamp

    def client(ctx, channel):                    # runs in a child process
        with ctx.connect() as c:                 # port file -> url; records status
            ctx.subscribe(c, channel)            # records every delivery
            ctx.mark("ready")
            ctx.wait_command("publish")          # a command file from the parent
            c.publish(channel, stamp(by=ctx.name))
            ctx.wait_until(lambda: ctx.history.count(channel) >= 2 or None, "2 messages")
        return {"stats": c.stats()}

    def story(run, report):
        run.start_server()
        clients = run.start_clients(client, 2, "news")
        run.wait_mark(clients, "ready")
        run.command(clients, "publish")
        for name, r in run.results(clients).items():
            report.check(len(r.deliveries) == 2, f"{name} got both messages")

    if __name__ == "__main__":
        raise SystemExit(run_scenario(story, "two clients hear each other"))

Faults on the network between clients and the server: :class:`Nemesis`, a TCP proxy
the parent runs and commands (``cut``, ``blackhole``, ``delay``, ``heal``).

Timeouts are named constants: :data:`PROCESS_START_TIMEOUT_S`,
:data:`SERVER_STARTUP_TIMEOUT_S`, :data:`CLIENT_CONNECT_TIMEOUT_S`, :data:`SCENARIO_TIMEOUT_S`,
:data:`CLEANUP_TIMEOUT_S`, :data:`TERMINATE_GRACE_S`.
"""

from .checks import (channels_seen, covered_by_notice, duplicates, latencies_ms, latency_summary,
                     missing_offsets, order_problem, percentile, proc_memory_kb,
                     rss_growth_per_1000, self_peak_rss_kb)
from .child import Delivery, History, ProcessContext, stamp
from .common import (CLEANUP_TIMEOUT_S, CLIENT_CONNECT_TIMEOUT_S, PROCESS_START_TIMEOUT_S,
                     SCENARIO_TIMEOUT_S, SENT_NS_KEY, SERVER_STARTUP_TIMEOUT_S, TERMINATE_GRACE_S,
                     CommandFailed, HarnessError, HarnessTimeout, LeakError, ProcessFailed)
from .nemesis import Nemesis
from .run import ProcessHandle, ProcessResult, Run, ServerHandle, describe_exit, port_is_free, tail
from .scenario import (FIG_CLIENTS, FIG_MESSAGES, FIG_P99_MS, FIG_RECOVERY_S, KEY_FIGURES, Check,
                       Report, run_scenario)
from .server_process import SERVER_IDLE_TIMEOUT_S

__all__ = [
    "Run", "ProcessHandle", "ServerHandle", "ProcessResult", "ProcessContext", "History",
    "Delivery", "stamp", "Report", "Check", "run_scenario",
    "HarnessError", "HarnessTimeout", "CommandFailed", "ProcessFailed", "LeakError",
    "PROCESS_START_TIMEOUT_S", "SERVER_STARTUP_TIMEOUT_S", "CLIENT_CONNECT_TIMEOUT_S", "SCENARIO_TIMEOUT_S",
    "CLEANUP_TIMEOUT_S", "TERMINATE_GRACE_S", "SERVER_IDLE_TIMEOUT_S", "SENT_NS_KEY",
    "KEY_FIGURES", "FIG_CLIENTS", "FIG_MESSAGES", "FIG_P99_MS", "FIG_RECOVERY_S",
    "percentile", "latencies_ms", "latency_summary", "duplicates", "order_problem",
    "missing_offsets", "channels_seen", "proc_memory_kb", "self_peak_rss_kb",
    "rss_growth_per_1000", "covered_by_notice", "describe_exit", "port_is_free", "tail", "Nemesis",
]

"""``sente-lite bench``: its checker counts what a subscriber saw correctly, and a
tiny end-to-end run against sente_lite and the baseline delivers everything,
reports both systems and their ratios, and leaves no process behind."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from sente_lite.bench import fanout as bench


def test_tally_counts_loss_duplicates_and_order() -> None:
    t = bench.Tally(n_publishers=2, msgs_per_publisher=3)
    t.record({"p": 0, "s": 0, "t": 100}, 1, 150)
    t.record({"p": 1, "s": 0, "t": 100}, 2, 300)
    t.record({"p": 0, "s": 2, "t": 100}, 3, 400)
    t.record({"p": 0, "s": 1, "t": 100}, 4, 500)   # seq went back for publisher 0
    t.record({"p": 0, "s": 1, "t": 100}, 5, 600)   # the same message again
    t.record({"p": 1, "s": 1, "t": 100}, 4, 700)   # channel offset went back
    t.record({"nonsense": True}, 6, 800)
    assert (t.received, t.distinct, t.duplicates, t.out_of_order, t.malformed) == (6, 5, 1, 2, 1)
    assert list(t.latencies) == [50, 200, 300, 400, 600]
    assert not t.complete  # publisher 1's message 2 never came
    t.record({"p": 1, "s": 2, "t": 100}, 7, 900)
    assert t.complete


def test_schedule_is_paced_and_spread_over_publishers() -> None:
    wl = bench.Workload(subscribers=4, same=True, rate=10.0, seconds=1.0)
    sched = bench._schedule(wl, [0, 2], t0_ns=0)
    assert len(sched) == 20
    assert [d for d, _, _ in sched] == sorted(d for d, _, _ in sched)
    dues_0 = [d for d, pi, _ in sched if pi == 0]
    assert dues_0 == [j * 100_000_000 for j in range(10)]
    assert [d for d, pi, _ in sched if pi == 2][0] == 50_000_000  # phase 2/4 of a period


def test_profile_top_reads_py_spy_raw_output(tmp_path: Path) -> None:
    raw = tmp_path / "p.txt"
    raw.write_text("run (a.py:1);send (b.py:7) 30\nrun (a.py:1);parse (c.py:3) 10\n"
                   "run (a.py:2);send (b.py:9) 60\n")
    own, incl = bench.profile_top(str(raw))
    assert own[0] == ("send (b.py)", 90.0)
    assert ("parse (c.py)", 10.0) in own
    assert incl[0] == ("run (a.py)", 100.0)


def test_tiny_run_side_by_side_with_the_baseline(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    status = bench.main(["-S", "2", "--same", "-R", "20", "-T", "1", "--driver", "raw",
                         "--conns-per-proc", "2", "--baseline", "--drain", "5",
                         "--json", str(out)])
    assert status == 0
    result = json.loads(out.read_text())
    for system in ("sente_lite", "baseline"):
        m = result["medians"][system]
        assert m["delivered"] == 2 * 2 * 20, system
        assert (m["lost"], m["duplicates"], m["out_of_order"]) == (0, 0, 0), system
        assert 0 < m["p50_ms"] <= m["p99_ms"] <= m["max_ms"]
        assert m["server_cpu_s"] >= 0 and m["server_peak_rss_mb"] > 0
    assert set(result["ratios"]) == {"p50", "p99", "cpu_per_delivery"}
    printed = capsys.readouterr().out
    assert "sente_lite / baseline: p99 x" in printed
    assert not multiprocessing.active_children()


@pytest.mark.parametrize("options", [
    ["--packer", "msgpack", "--batch", "--driver", "raw"],
    ["--compression", "deflate", "--driver", "asyncio", "--payload-bytes", "2048"],
])
def test_tiny_runs_with_each_wire_option(tmp_path: Path, options: list) -> None:
    pytest.importorskip("msgpack", reason="the [msgpack] extra (msgpack) is not installed")
    out = tmp_path / "bench.json"
    status = bench.main(["-S", "2", "--same", "-R", "20", "-T", "1", "--conns-per-proc", "2",
                         "--drain", "5", "--history-off-too", "--json", str(out)] + options)
    assert status == 0
    result = json.loads(out.read_text())
    for system in ("sente_lite", "sente_lite_nohistory"):
        m = result["medians"][system]
        assert (m["delivered"], m["lost"], m["duplicates"], m["out_of_order"]) == (80, 0, 0, 0)
        assert m["wire_bytes_per_delivery"] > 0
    assert set(result["history_ratios"]) == {"p50", "p99", "cpu_per_delivery"}
    assert not multiprocessing.active_children()


def test_idle_connections_are_held_with_heartbeats(capsys: pytest.CaptureFixture[str]) -> None:
    status = bench.main(["--idle", "3", "--conns-per-proc", "3", "-T", "1.2", "--driver", "asyncio",
                         "--heartbeat-ms", "200", "--check"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "sente_lite: all 3 connections served" in printed
    assert not multiprocessing.active_children()


def test_binary_payload_bench_runs_every_pair_of_packers(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("msgpack", reason="the [msgpack] extra (msgpack) is not installed")
    from sente_lite.bench import binary
    assert binary.main(["--bytes", "3000", "--messages", "2", "--runs", "1"]) == 0
    out = capsys.readouterr().out
    for pub, sub in (("json", "json"), ("json", "msgpack"), ("msgpack", "json"), ("msgpack", "msgpack")):
        assert any(line.split()[:2] == [pub, sub] for line in out.splitlines()), out
    json_frame, mp_frame = binary._frame_size("json", bytes(3000)), binary._frame_size("msgpack", bytes(3000))
    assert 4000 < json_frame < 4200 and 3000 < mp_frame < 3100  # base64 in JSON, bin in MessagePack
    assert f" {json_frame}\n" in out and f" {mp_frame}\n" in out


def test_jwt_bench_streams_across_refreshes_and_times_them(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("jwt", reason="the [jwt] extra (PyJWT) is not installed")
    from sente_lite.bench import jwt as jwt_bench
    assert jwt_bench.main(["--messages", "2000", "--rate", "1000", "--ttl", "2", "--samples", "20",
                           "--runs", "1", "--min-refreshes", "1"]) == 0
    out = capsys.readouterr().out
    assert "lost 0, duplicates 0, reconnects 0, 4002 closes 0" in out, out
    assert "refresh round trip, idle server: p50" in out and "targets: met" in out


def test_jwt_bench_sub_refresh_streams_across_channel_token_refreshes(
        capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("jwt", reason="the [jwt] extra (PyJWT) is not installed")
    from sente_lite.bench import jwt as jwt_bench
    assert jwt_bench.main(["--sub-refresh", "--messages", "2000", "--rate", "1000", "--ttl", "2",
                           "--samples", "10", "--runs", "1", "--min-refreshes", "1"]) == 0
    out = capsys.readouterr().out
    assert "sub-refresh p50" in out and "sub-refresh p99 / refresh p99 (idle)" in out and "sub-refresh p50 / refresh p50" in out, out
    assert "lost 0, duplicates 0, reconnects 0, expired 0" in out and "targets: met" in out


@pytest.mark.parametrize("driver", ["raw", "asyncio"])  # socket.io: engine.io raw, python-socketio
def test_tiny_run_of_both_faces_beside_socketio_asgi(tmp_path: Path, driver: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("uvicorn", reason="uvicorn (the test extra) is not installed")
    from sente_lite.bench import asgi, sio
    if sio.missing():
        pytest.skip(f"{', '.join(sio.missing())} not installed: the socket.io side is left out")
    out = tmp_path / "bench.json"
    status = asgi.main(["-S", "2", "--same", "-R", "20", "-T", "1", "--driver", driver,
                        "--conns-per-proc", "2", "--drain", "5", "--json", str(out)])
    assert status == 0
    result = json.loads(out.read_text())
    for system in ("sente_lite", "asgi", "socketio_asgi"):
        m = result["medians"][system]
        assert (m["delivered"], m["lost"], m["duplicates"], m["out_of_order"]) == (80, 0, 0, 0), system
        assert m["server_cpu_s"] >= 0 and m["server_peak_rss_mb"] > 0
    assert set(result["socketio_ratios"]) == {"p50", "p99", "cpu_per_delivery"}
    printed = capsys.readouterr().out
    assert "asgi / threaded: p50 x" in printed and "asgi / socketio_asgi: p50 x" in printed
    assert not multiprocessing.active_children()


@pytest.mark.parametrize("subscription, ratio", [("sharded", 1), ("pattern", 3)])
def test_the_sharded_bench_counts_each_servers_user_messages(subscription: str, ratio: int) -> None:
    """A tiny run of bench.sharded's user part: sharded, each server reads only its own
    users' messages; pattern, every server reads every one."""
    pytest.importorskip("redis", reason="redis-py is not installed")
    from sente_lite.bench import sharded
    from sente_lite.testing.redis_server import RedisServer, require_redis_server

    require_redis_server()
    with RedisServer() as redis_srv:
        rows = sharded.one_run(redis_srv.url, subscription, 3, 1, 1, users=2, per_user=2)
    assert [r["user_served"] for r in rows] == [4, 4, 4]
    assert [r["user_inbound"] for r in rows] == [4 * ratio] * 3
    assert all(r["connect_ms"] > 0 and r["user_bytes"] > 0 for r in rows)


def test_the_cluster_bench_reports_each_runs_p99_and_how_many_are_within_the_target() -> None:
    """bench.cluster_p99's table: medians, every run's p99 per broker with the count within
    the target, and the verdict on the cluster's median."""
    from sente_lite.bench import cluster_p99

    def run(p99: float, lost: float = 0.0) -> dict:
        return {"p50_ms": 1.0, "p99_ms": p99, "max_ms": p99 + 1, "lost": lost,
                "duplicates": 0.0, "out_of_order": 0.0, "delivered": 10.0}

    figures = {"cluster": [run(4.5), run(6.25), run(4.0)], "one redis": [run(3.0), run(2.0), run(7.0, 2)]}
    lines = cluster_p99.report(bench.Workload(), figures)
    assert "cluster p99 per run (ms): 4.50, 6.25, 4.00 (2 of 3 within 5 ms)" in lines
    assert "one redis p99 per run (ms): 3.00, 2.00, 7.00 (2 of 3 within 5 ms)" in lines
    assert lines[-1] == "cluster p99 4.50 ms: target <= 5 ms met; loss in any run: 2"
    lines = cluster_p99.report(bench.Workload(), {"cluster": [run(5.5)], "one redis": [run(1.0)]})
    assert "cluster p99 per run (ms): 5.50 (0 of 1 within 5 ms)" in lines
    assert lines[-1].startswith("cluster p99 5.50 ms: target <= 5 ms NOT met")


def test_the_client_cpu_bench_measures_a_real_subscriber_per_coalescing_value() -> None:
    """A tiny run of bench.client_cpu: every message arrives in order for each value, the
    coalescing one reads several messages per socket read where 0 reads about one, and the
    table has a row per value with its CPU ratio against the first."""
    from sente_lite.bench import client_cpu

    rows = client_cpu.compare([0.0, 5.0], rate=2000.0, seconds=0.5, runs=1)
    assert set(rows) == {0.0, 5.0}
    for runs_of in rows.values():
        (run,) = runs_of
        assert run["in_order"]
        assert run["cpu_us_per_msg"] > 0
        assert run["cpu_us_per_msg"] == pytest.approx(run["user_us_per_msg"] + run["sys_us_per_msg"])
    assert rows[5.0][0]["msgs_per_read"] > rows[0.0][0]["msgs_per_read"]
    lines = client_cpu.report(rows, 2000.0, 0.5, 12.5, 3.25)
    assert lines[2].split("|")[0].strip() == "0" and lines[2].split("|")[-2].strip() == "1.00"
    assert lines[3].split("|")[0].strip() == "5" and lines[3].split("|")[-1].strip() == "yes"
    assert lines[-2].startswith("one bare wake-up") and "12.5 us" in lines[-2]
    assert lines[-1].startswith("the receive path alone") and "3.2 us per message" in lines[-1]
    assert not multiprocessing.active_children()


def test_the_receive_path_figure_runs_every_message_to_its_handler() -> None:
    """bench.client_cpu's in-process figure: it raises unless every message reached the
    handler, so a positive figure means the whole path ran."""
    from sente_lite.bench import client_cpu

    assert client_cpu.receive_path_us(messages=1001, per_read=4) > 0

"""The console's benchmark runs end to end (a smoke test: its figures are judged by a
person reading its medians, not here) and what it measures is what it says."""

from __future__ import annotations

from sente_lite.testing import console_bench as bench


def test_the_bench_runs_and_prints_its_figures_and_targets(capsys) -> None:
    assert bench.main(["--runs", "1", "--clients", "2", "--rate", "20", "--duration", "2",
                       "--evals", "5", "--interrupts", "2"]) == 0
    out = capsys.readouterr().out
    for figure in ("eval_tcp_p99_ms", "eval_ws_p99_ms", "interrupt_max_ms", "load_p99_ms"):
        assert f"{figure}=" in out
    assert "every message once, in order" in out and "medians over 1 runs" in out
    assert "target eval_tcp_p99_ms <= 5 ms" in out and "target interrupt_max_ms <= 100 ms" in out


def test_the_operator_is_the_only_console_user() -> None:
    class Request:
        def __init__(self, token, client_id="cid"):
            self.token, self.client_id = token, client_id

    assert bench.authenticate(Request(bench.OPERATOR_TOKEN)) == bench.OPERATOR_UID
    assert bench.authenticate(Request(None)) == "load-cid"
    assert bench.authenticate(Request("operator")) == "load-cid"

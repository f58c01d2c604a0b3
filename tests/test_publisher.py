"""sente_lite.Publisher (over the server API and over Redis), the API with the Redis broker,
and the CLI's ``pub --api`` / ``pub --broker`` / ``serve --api-key``: real servers, a real
redis-server, real subprocesses."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, List, Tuple

import pytest

from sente_lite import ApiCallError, Publisher, Server, cli
from sente_lite.testing.redis_server import RedisServer
from support import WAIT_S, wait_until

REPO = Path(__file__).resolve().parent.parent
KEY = "publisher-key-0123456789"


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("SENTE_LITE_API_KEY", None)
    return env


def run_python(code: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def run_cli(*args: str, env_extra: Any = None) -> subprocess.CompletedProcess:
    env = _env()
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "sente_lite", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60)


# ---------------------------------------------------------------- over HTTP

def test_http_publisher_publishes_dedups_and_sends(make_server, make_client) -> None:
    srv = make_server(api_keys=[KEY], authenticate=lambda req: req.query.get("u"))
    got: List[Any] = []
    notes: List[Any] = []
    client = make_client(srv.url + "?u=alice")
    client.subscribe("news", got.append, timeout=WAIT_S)
    client.on("app/note", notes.append)
    with Publisher(f"http://127.0.0.1:{srv.port}", api_key=KEY) as pub:
        first = pub.publish("news", {"n": 1}, idempotency_key="n-1")
        again = pub.publish("news", {"n": 1}, idempotency_key="n-1")
        assert (again.offset, again.epoch, again.duplicate) == (first.offset, first.epoch, True)
        many = pub.publish_many([("news", i) for i in range(5)])
        assert [m.offset for m in many] == list(range(first.offset + 1, first.offset + 6))
        assert pub.send_to_user("alice", "app/note", "u") == 1
        assert pub.broadcast("app/note", "b") == 1
        with pytest.raises(ValueError, match="event-id"):
            pub.broadcast("chsk/handshake")
        with pytest.raises(ValueError):
            pub.publish("", 1)
    wait_until(lambda: len(got) == 6 and notes == ["u", "b"], what="every delivery")
    assert [m.data for m in got] == [{"n": 1}, 0, 1, 2, 3, 4]


def test_http_publisher_errors_name_the_cause(make_server) -> None:
    srv = make_server(api_keys=[KEY])
    with Publisher(f"http://127.0.0.1:{srv.port}", api_key="wrong-key-0123456789abc") as pub:
        with pytest.raises(ApiCallError) as info:
            pub.publish("c", 1)
    assert (info.value.status, info.value.code) == (401, "unauthorized")
    with pytest.raises(ValueError, match="api_key"):
        Publisher(f"http://127.0.0.1:{srv.port}")
    with pytest.raises(ValueError, match="redis://"):
        Publisher("ftp://x")


def test_http_publisher_survives_the_server_closing_an_idle_connection(make_server) -> None:
    srv = make_server(api_keys=[KEY], handshake_timeout=0.5)
    with Publisher(f"http://127.0.0.1:{srv.port}", api_key=KEY) as pub:
        assert pub.publish("c", 1, idempotency_key="a").offset == 1
        wait_until(lambda: srv.stats()["connections"] == 0 and _api_sockets(srv) == 0,
                   what="the idle connection closed")
        kept = pub._backend._conn  # the kept-alive connection (the test only looks at it)
        sock = kept.sock if kept is not None else None
        if sock is not None:  # its end of the connection has seen the server's close
            assert select.select([sock], [], [], WAIT_S)[0], "the close never reached the publisher"
        assert pub.publish("c", 2, idempotency_key="b").offset == 2


def _api_sockets(srv: Server) -> int:
    loop = srv._loop
    return len(loop.links) if loop is not None else 0


# ---------------------------------------------------------------- over Redis



@pytest.fixture
def two_servers(redis_srv: RedisServer, make_server: Callable[..., Server]) -> Tuple[Server, Server]:
    a = make_server(broker=redis_srv.url, api_keys=[KEY],
                    authenticate=lambda req: req.query.get("u"))
    b = make_server(broker=redis_srv.url, api_keys=[KEY],
                    authenticate=lambda req: req.query.get("u"))
    wait_until(lambda: a.channels.healthy and b.channels.healthy, what="both links up")
    return a, b


def test_a_publisher_in_another_process_feeds_two_servers(two_servers, redis_srv, make_client) -> None:
    a, b = two_servers
    got = {"a": [], "b": []}  # type: ignore[var-annotated]
    notes = {"a": [], "b": []}  # type: ignore[var-annotated]
    for name, srv in (("a", a), ("b", b)):
        c = make_client(srv.url + "?u=alice")
        c.subscribe("feed", got[name].append, timeout=WAIT_S)
        c.on("app/note", notes[name].append)
    wait_until(lambda: a.presence("alice") == 2, what="alice on both servers")
    done = run_python(f"""
        from sente_lite import Publisher
        with Publisher({redis_srv.url!r}) as pub:
            for i in range(200):
                pub.publish("feed", {{"i": i}}, idempotency_key=f"k{{i}}")
            for i in range(200):  # the same ids again: a retry of everything
                r = pub.publish("feed", {{"i": i}}, idempotency_key=f"k{{i}}")
                assert r.duplicate, r
            pub.send_to_user("alice", "app/note", "to-alice")
            pub.broadcast("app/note", "to-all")
        print("ok")
    """)
    assert done.returncode == 0, done.stderr
    for name in ("a", "b"):
        wait_until(lambda name=name: len(got[name]) == 200, what=f"200 on {name}")
        assert [m.data["i"] for m in got[name]] == list(range(200))
        assert [m.offset for m in got[name]] == list(range(1, 201))
        wait_until(lambda name=name: notes[name] == ["to-alice", "to-all"], what=f"notes on {name}")
    # the servers see the same history, ids and offsets: publish continues the sequence
    assert a.publish("feed", "next").offset == 201
    for name in ("a", "b"):  # in channel order: a retry delivered would stand before "next"
        wait_until(lambda name=name: len(got[name]) > 200, what=f"'next' on {name}")
        assert len(got[name]) == 201 and got[name][-1].data == "next"  # the retries delivered nothing
    hist = b.history("feed", limit=3, reverse=True)
    assert [x["data"] for x in hist["publications"]] == ["next", {"i": 199}, {"i": 198}]


def test_the_api_works_across_servers_with_redis(two_servers, make_client) -> None:
    import functools

    import test_api
    call = functools.partial(test_api.call, key=KEY)
    a, b = two_servers
    got: List[Any] = []
    notes: List[Any] = []
    client = make_client(b.url + "?u=bob")
    client.subscribe("x", got.append, timeout=WAIT_S)
    client.on("app/n", notes.append)
    wait_until(lambda: a.presence("bob") == 1, what="bob seen from a")
    first = call(a, "publish", {"channel": "x", "data": 1, "idempotency_key": "i"})[1]["result"]
    assert call(a, "publish", {"channel": "x", "data": 1, "idempotency_key": "i"}
                )[1]["result"]["duplicate"] is True
    assert call(b, "publish", {"channel": "x", "data": 1, "idempotency_key": "i"}
                )[1]["result"]["offset"] == first["offset"]  # same key, other server: a retry
    call(a, "send_to_user", {"user": "bob", "event": "app/n", "data": "u"})
    call(a, "broadcast", {"event": "app/n", "data": "b"})
    wait_until(lambda: [m.data for m in got] == [1] and notes == ["u", "b"], what="on b")
    assert call(a, "presence", {"user": "bob"})[1]["result"]["connections"] == 1
    assert sorted(call(a, "info")[1]["result"]["nodes"]) == sorted([a.server_id, b.server_id])
    assert [p["data"] for p in call(a, "history", {"channel": "x"})[1]["result"]["publications"]] == [1]
    batch = call(a, "batch", {"commands": [{"method": "publish", "params": {"channel": "x", "data": 2}},
                                           {"method": "publish", "params": {}},
                                           {"method": "publish", "params": {"channel": "x", "data": 3}}]})
    assert [("result" in r) for r in batch[1]["result"]["replies"]] == [True, False, True]
    wait_until(lambda: [m.data for m in got] == [1, 2, 3], what="batch on b")
    assert call(a, "disconnect_user", {"user": "bob", "code": 1008}
                )[1]["result"]["closed"] == 0  # none on a: b closes its own
    wait_until(lambda: not client.connected, what="bob closed by b")


def test_redis_publisher_reports_redis_refusals(redis_srv) -> None:
    import redis
    with Publisher(redis_srv.url) as pub:
        redis.Redis.from_url(redis_srv.url).script_flush()  # as after a Redis restart
        assert pub.publish("c", 1).offset == 1  # the script is loaded again
        with pytest.raises(ValueError, match="idempotency_key"):
            pub.publish("c", 1, idempotency_key="")


# ---------------------------------------------------------------- the CLI

def test_cli_pub_through_the_api_and_the_broker(make_server, redis_srv) -> None:
    srv = make_server(api_keys=[KEY], broker=redis_srv.url)
    wait_until(lambda: srv.channels.healthy, what="link up")
    out = run_cli("pub", "c", '{"x": 1}', "--api", f"http://127.0.0.1:{srv.port}", "--api-key", KEY,
                  "--idempotency-key", "one")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["offset"] == 1
    out = run_cli("pub", "c", '{"x": 1}', "--api", f"http://127.0.0.1:{srv.port}",
                  "--idempotency-key", "one", env_extra={"SENTE_LITE_API_KEY": KEY})
    assert out.returncode == 0 and json.loads(out.stdout)["duplicate"] is True
    out = run_cli("pub", "c", "2", "--broker", redis_srv.url)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["offset"] == 2
    out = run_cli("pub", "c", "2", "--api", f"http://127.0.0.1:{srv.port}")
    assert out.returncode == 2 and "--api-key" in out.stderr
    out = run_cli("pub", "c", "2", "--api", f"http://127.0.0.1:{srv.port}", "--api-key", "bad-" * 5)
    assert out.returncode == 1 and "unauthorized" in out.stderr


def test_serve_reads_api_keys_from_flags_and_the_environment() -> None:
    args = cli.build_parser().parse_args(["serve", "--api-key", KEY, "--api-key", KEY + "2",
                                          "--api-rate-limit", "0"])
    values = cli.resolve_serve_settings(args, {})
    assert values["api_key"] == [KEY, KEY + "2"] and values["api_rate_limit"] is None
    srv = cli.server_from_settings(values)
    assert srv.api_keys == (KEY, KEY + "2") and srv.api_rate_limit is None
    args = cli.build_parser().parse_args(["serve"])
    values = cli.resolve_serve_settings(args, {"SENTE_LITE_API_KEY": f"{KEY}, {KEY}x",
                                               "SENTE_LITE_API_MAX_BODY_BYTES": "2048"})
    srv = cli.server_from_settings(values)
    assert srv.api_keys == (KEY, KEY + "x") and srv.api_max_body_bytes == 2048
    with pytest.raises(cli.SettingError, match="SENTE_LITE_API_MAX_BODY_BYTES"):
        cli.resolve_serve_settings(args, {"SENTE_LITE_API_MAX_BODY_BYTES": "0"})


def test_serve_beyond_loopback_refuses_the_api_without_tls() -> None:
    out = run_cli("serve", "--host", "0.0.0.0", "--port", "0", "--api-key", KEY)
    assert out.returncode == 1 and "--api-allow-plaintext" in out.stderr


def test_the_api_over_tls_beyond_loopback(make_server, tmp_path) -> None:
    import ssl

    from test_netloop import _self_signed
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    srv = make_server(host="0.0.0.0", api_keys=[KEY], ssl_context=server_ctx)  # TLS: allowed
    client_ctx = ssl.create_default_context(cafile=str(cert))
    with Publisher(f"https://127.0.0.1:{srv.port}", api_key=KEY, ssl_context=client_ctx) as pub:
        assert [pub.publish("t", i).offset for i in range(20)] == list(range(1, 21))
        assert pub.broadcast("app/x", 1) == 0
    with Publisher(f"https://127.0.0.1:{srv.port}", api_key=KEY) as pub:  # untrusted certificate
        with pytest.raises(ssl.SSLError):
            pub.publish("t", 1)


def test_the_api_bench_runs_and_prints_medians(capsys: pytest.CaptureFixture) -> None:
    from sente_lite.bench import api as bench
    assert bench.main(["--runs", "1", "--seconds", "0.2", "--rate", "100", "--batch", "10",
                       "--no-redis"]) == 0
    out = capsys.readouterr().out
    for key in ("p99_ms", "keepalive_per_s", "batch_msgs_per_s"):
        assert key in out

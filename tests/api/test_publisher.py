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
from sente_lite.errors import BrokerCommandError, BrokerUnavailable, PublishOutcomeUnknown
from sente_lite.testing.redis_server import RedisServer
from support import WAIT_S, wait_until
from support import REPO

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
    with Publisher(f"http://127.0.0.1:{srv.port}", api_key=KEY) as pub:
        with pytest.raises(ValueError, match="wait=False"):
            pub.publish("c", 1, wait=False)


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
    r = redis.Redis.from_url(redis_srv.url)
    with Publisher(redis_srv.url) as pub:
        r.script_flush()  # as after a Redis restart
        assert pub.publish("c", 1).offset == 1  # the script is loaded again
        r.script_flush()
        assert pub.publish("c", 2, wait=False).result(WAIT_S).offset == 2  # queued: the same
        with pytest.raises(ValueError, match="idempotency_key"):
            pub.publish("c", 1, idempotency_key="")
        with pytest.raises(ValueError, match="idempotency_key"):
            pub.publish("c", 1, idempotency_key="", wait=False)  # raised by the call itself
        r.set(_space().meta_key("wrong"), "a string")  # WRONGTYPE for the script's HGET
        with pytest.raises(BrokerCommandError, match="WRONGTYPE"):
            pub.publish("wrong", 1)
        refused = pub.publish("wrong", 1, wait=False)
        after = pub.publish("c", 3, wait=False)  # a refusal fails that publish alone
        assert isinstance(refused.exception(WAIT_S), BrokerCommandError)
        assert after.result(WAIT_S).offset == 3


# ---------------------------------------------------------------- over Redis, pipelined

def _space(history_size: int = 100):
    from sente_lite.brokers.redis.broker import DEFAULT_CHANNEL_TTL_S, DEFAULT_PREFIX
    from sente_lite.brokers.redis.channels import ChannelSpace
    return ChannelSpace(DEFAULT_PREFIX, "test", history_size, 300.0, 300.0, DEFAULT_CHANNEL_TTL_S)


def _stream(redis_srv: RedisServer, channel: str) -> List[Tuple[int, Any]]:
    """(offset, data) of every entry of ``channel``'s history in Redis, oldest first."""
    import redis
    entries = redis.Redis.from_url(redis_srv.url).xrange(_space().log_key(channel))
    out = []
    for entry_id, fields in entries:  # each keeps its message's text up to the offset
        message = json.loads(fields[b"h"] + b"0}]")[1]
        out.append((int(entry_id.split(b"-")[0]), message["data"]))
    return out


def test_the_command_is_what_redis_py_would_send_of_publish_command(redis_srv) -> None:
    """The RESP text written by the publisher is redis-py's packing of publish_command (the
    layout the script reads), for a publish with and without an id."""
    import redis

    from sente_lite.api.publisher_redis import RedisSender
    from sente_lite.brokers.redis.publish import publish_command
    from sente_lite.wire import protocol as p
    from sente_lite.wire.channels import message_head
    trace = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    data = {"x": [1, "é"]}
    head = message_head('"ch"', p.dumps(data), "null", trace).encode()
    sender = RedisSender(redis_srv.url, 1.0, _space(), "me", b"u", "test", 10, 0.0)
    try:
        for n, key in enumerate((None, "k-1"), 1):
            body = sender.command("ch", data, key, trace)
            args = publish_command(_space(), sender._sha, "ch", head, None, key, "me", trace,
                                   epoch=f"test.{n}")  # the sender's space makes test.1, test.2
            assert body == b"".join(redis.Connection().pack_command(*args))
    finally:
        sender.close()


def test_pipelined_publishes_arrive_all_in_order_among_blocking_ones(redis_srv) -> None:
    n = 3000
    with Publisher(redis_srv.url, history_size=10_000) as pub:
        futures = [pub.publish("p", i, wait=False) for i in range(n)]
        assert pub.publish("p", "blocking").offset == n + 1  # after every queued one
        futures += [pub.publish("p", n + 1 + i, wait=False) for i in range(n)]
        many = pub.publish_many([("p", "m1"), ("p", "m2")])
        assert [m.offset for m in many] == [2 * n + 2, 2 * n + 3]
        tail = pub.publish("p", "tail", wait=False)
        pub.flush()
        assert tail.done() and all(f.done() for f in futures)
    offsets = [f.result().offset for f in futures]
    assert offsets == list(range(1, n + 1)) + list(range(n + 2, 2 * n + 2))
    assert tail.result().offset == 2 * n + 4
    assert len({f.result().epoch for f in futures}) == 1
    stream = _stream(redis_srv, "p")
    assert [o for o, _ in stream] == list(range(1, 2 * n + 5))  # contiguous: nothing lost
    assert [d for _, d in stream] == list(range(n)) + ["blocking"] + list(
        range(n + 1, 2 * n + 1)) + ["m1", "m2", "tail"]


def test_pipelined_publishes_reach_a_subscriber_in_order(redis_srv, make_server, make_client) -> None:
    srv = make_server(broker=redis_srv.url)
    wait_until(lambda: srv.channels.healthy, what="link up")
    got: List[Any] = []
    make_client(srv.url).subscribe("live", got.append, timeout=WAIT_S)
    with Publisher(redis_srv.url) as pub:
        futures = [pub.publish("live", i, wait=False) for i in range(2000)]
    assert all(f.result().offset == i + 1 for i, f in enumerate(futures))  # close() sent them
    wait_until(lambda: len(got) == 2000, what="2000 on the subscriber")
    assert [m.data for m in got] == list(range(2000))
    assert [m.offset for m in got] == list(range(1, 2001))


def test_idempotency_keys_deduplicate_pipelined_publishes(redis_srv) -> None:
    with Publisher(redis_srv.url) as pub:
        first = [pub.publish("d", i, idempotency_key=f"k{i}", wait=False) for i in range(300)]
        again = [pub.publish("d", i, idempotency_key=f"k{i}", wait=False) for i in range(300)]
        same = pub.publish("d", "x", idempotency_key="k0")  # blocking, same key
        pub.flush()
    assert [f.result().offset for f in first] == list(range(1, 301))
    assert all(not f.result().duplicate for f in first)
    assert [(f.result().offset, f.result().duplicate) for f in again] == \
        [(i, True) for i in range(1, 301)]
    assert (same.offset, same.duplicate) == (1, True)
    assert [o for o, _ in _stream(redis_srv, "d")][-1] == 300


def test_redis_down_fails_every_publish_clearly_and_it_recovers(redis_srv) -> None:
    with Publisher(redis_srv.url, timeout=2.0) as pub:
        assert pub.publish("r", 0).offset == 1
        redis_srv.kill()  # SIGKILL: the connection is gone, and nothing listens
        with pytest.raises(BrokerUnavailable, match="unreachable"):
            pub.publish("r", 1)
        futures = [pub.publish("r", i, wait=False) for i in range(50)]
        pub.flush()
        assert all(isinstance(f.exception(), BrokerUnavailable) for f in futures)  # none dropped
        with pytest.raises(BrokerUnavailable):
            pub.publish_many([("r", 1), ("r", 2)])
        with pytest.raises(BrokerUnavailable):
            pub.send_to_user("alice", "app/x", 1)
        redis_srv.start()  # a new, empty Redis on the same port: connects, loads the script
        assert pub.publish("r", "back").offset == 1
        assert pub.publish("r", "queued", wait=False).result(WAIT_S).offset == 2


def test_a_stalled_redis_fails_in_flight_publishes_as_outcome_unknown(redis_srv) -> None:
    with Publisher(redis_srv.url, timeout=0.5, history_size=1000) as pub:
        assert pub.publish("s", 0, idempotency_key="s0").offset == 1
        redis_srv.pause()  # SIGSTOP: reads the commands only when resumed
        try:
            futures = [pub.publish("s", i, idempotency_key=f"s{i}", wait=False)
                       for i in range(1, 200)]
            pub.flush()
        finally:
            redis_srv.resume()
        errors = [f.exception() for f in futures]
        assert isinstance(errors[0], PublishOutcomeUnknown)  # it may have been published
        assert all(isinstance(e, (PublishOutcomeUnknown, BrokerUnavailable)) for e in errors)
        # everything after the first failed batch was never sent: "not sent"
        first_unsent = next((i for i, e in enumerate(errors) if isinstance(e, BrokerUnavailable)),
                            len(errors))
        assert all(isinstance(e, BrokerUnavailable) for e in errors[first_unsent:])
        # the resend with the same ids lands each once, in order
        resent = [pub.publish("s", i, idempotency_key=f"s{i}", wait=False) for i in range(1, 200)]
        assert [f.result(WAIT_S).offset for f in resent] == list(range(2, 201))
    assert _stream(redis_srv, "s") == [(i + 1, i) for i in range(200)]


def test_the_queue_bound_blocks_then_raises_and_cancel_works(redis_srv) -> None:
    import time

    from sente_lite.errors import SendQueueFull
    with Publisher(redis_srv.url, timeout=WAIT_S, max_unacked_publishes=5,
                   publish_block_s=0.2) as pub:
        assert pub.publish("q", 0).offset == 1
        redis_srv.pause()
        try:
            futures = [pub.publish("q", i, wait=False) for i in range(1, 6)]
            start = time.monotonic()
            with pytest.raises(SendQueueFull, match="max_unacked_publishes"):
                pub.publish("q", 6, wait=False)
            assert time.monotonic() - start >= 0.2  # it waited publish_block_s for room
            pub._backend._sender.publish_block_s = 0.0
            with pytest.raises(SendQueueFull):
                pub.publish("q", 6, wait=False)  # at once
            cancelled = futures[-1].cancel()  # not sent yet unless the flusher took it
        finally:
            redis_srv.resume()
        pub.flush()
    sent = [f for f in futures if not f.cancelled()]
    assert [f.result().offset for f in sent] == list(range(2, 2 + len(sent)))
    assert [d for _, d in _stream(redis_srv, "q")] == [0] + list(range(1, 1 + len(sent)))
    assert cancelled == (len(sent) == 4)


def test_close_sends_what_is_queued_and_then_refuses_queueing(redis_srv) -> None:
    from sente_lite.errors import ClientClosed
    pub = Publisher(redis_srv.url, history_size=5000)
    futures = [pub.publish("z", i, wait=False) for i in range(5000)]
    pub.close()
    assert [f.result(0).offset for f in futures] == list(range(1, 5001))  # all done at close
    with pytest.raises(ClientClosed):
        pub.publish("z", "late", wait=False)
    pub.close()  # idempotent
    assert len(_stream(redis_srv, "z")) == 5000


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


def test_a_publisher_never_closed_sends_its_queue_when_dropped_or_at_exit(redis_srv) -> None:
    done = run_python(f"""
        from sente_lite import Publisher
        kept = Publisher({redis_srv.url!r}, history_size=5000)
        futures = [kept.publish("kept", i, wait=False) for i in range(3000)]
        dropped = Publisher({redis_srv.url!r})
        dropped_futures = [dropped.publish("dropped", i, wait=False) for i in range(100)]
        del dropped  # garbage: its queue is sent, its flusher stopped
        assert all(f.done() for f in dropped_futures)
        print("ok")  # and at exit, kept's queue is sent
    """)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    assert [d for _, d in _stream(redis_srv, "kept")] == list(range(3000))
    assert [o for o, _ in _stream(redis_srv, "dropped")] == list(range(1, 101))

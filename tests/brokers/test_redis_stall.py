"""A Redis stall (SIGSTOP/SIGCONT of the redis-server this test started) while clients
publish: ``unavailable`` means not published, a publish in flight when the link failed
is answered ``outcome-unknown``, and the Python client resends those with their id so
every acknowledged publish is delivered exactly once."""

from __future__ import annotations

import collections
import threading
from typing import Any, Callable, Dict, List

import pytest

from sente_lite import Client, RemoteError, RequestTimeout, Server
from sente_lite.wire import protocol as p
from sente_lite.testing.redis_server import RedisServer
from support import WAIT_S, Recorder, wait_until

pytest.importorskip("redis", reason="redis-py is not installed")



def stall(redis_srv: RedisServer, srv: Server, answered: Callable[[], int]) -> None:
    """Stop redis-server mid-traffic until the link is down, a publish in flight was
    answered and more were refused; then resume it and wait for the link and for more
    publishes."""
    wait_until(lambda: answered() > 40, what="publishes before the stall")
    redis_srv.pause()
    try:
        wait_until(lambda: not srv.channels.healthy, what="the link down")
        # publishes sent before the link was seen down wait out the command timeout
        wait_until(lambda: srv.stats()["outcome_unknown_publishes"] > 0,
                   what="an in-flight publish answered")
        before = answered()
        wait_until(lambda: answered() > before + 5, what="publishes answered during the stall")
    finally:
        redis_srv.resume()
    wait_until(lambda: srv.channels.healthy, what="the link back")
    after = answered()
    wait_until(lambda: answered() > after + 40, what="publishes after the stall")


def delivered_data(srv: Server, rec: Recorder) -> List[Any]:
    srv.publish("s", "end")
    wait_until(lambda: any(m.data == "end" for m in list(rec.items)), what="the closing marker")
    return [m.data for m in rec.items if m.data != "end"]


def test_unavailable_means_not_published_and_in_flight_means_outcome_unknown(
        redis_srv: RedisServer, make_server: Callable[..., Server],
        make_client: Callable[..., Client]) -> None:
    srv = make_server(broker=redis_srv.url)
    wait_until(lambda: srv.channels.healthy, what="link up")
    rec = Recorder()
    make_client(srv.url).subscribe("s", rec)
    answers: Dict[str, str] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def publish_loop(n: int) -> None:
        c = Client(srv.url, client_id=f"raw-{n}")
        try:
            assert c.wait_connected(WAIT_S)
            for k in range(5000):
                if stop.is_set():
                    return
                pid = f"{n}-{k}"
                try:
                    c.request(p.EV_PUBLISH, {p.K_CHANNEL: "s", p.K_DATA: pid, p.K_ID: pid},
                              timeout=WAIT_S)
                    outcome = "ok"
                except RemoteError as exc:
                    outcome = exc.code
                with lock:
                    answers[pid] = outcome
        finally:
            c.close()

    threads = [threading.Thread(target=publish_loop, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    try:
        stall(redis_srv, srv, lambda: len(answers))
    finally:
        stop.set()
        for t in threads:
            t.join(WAIT_S)
    got = collections.Counter(delivered_data(srv, rec))
    assert max(got.values()) == 1  # nothing twice
    by_outcome: Dict[str, List[str]] = collections.defaultdict(list)
    for pid, outcome in answers.items():
        by_outcome[outcome].append(pid)
    assert set(by_outcome) <= {"ok", p.ERR_UNAVAILABLE, p.ERR_OUTCOME_UNKNOWN}, set(by_outcome)
    assert all(got[pid] == 1 for pid in by_outcome["ok"])
    assert [pid for pid in by_outcome[p.ERR_UNAVAILABLE] if got[pid]] == []
    assert by_outcome[p.ERR_UNAVAILABLE], "the stall refused no publish"
    assert by_outcome[p.ERR_OUTCOME_UNKNOWN], "no publish was in flight when the link failed"
    assert srv.stats()["outcome_unknown_publishes"] == len(by_outcome[p.ERR_OUTCOME_UNKNOWN])


def test_python_client_resends_outcome_unknown_publishes_exactly_once(
        redis_srv: RedisServer, make_server: Callable[..., Server],
        make_client: Callable[..., Client]) -> None:
    srv = make_server(broker=redis_srv.url)
    wait_until(lambda: srv.channels.healthy, what="link up")
    rec = Recorder()
    make_client(srv.url).subscribe("s", rec)
    acked: List[str] = []
    refused: List[str] = []
    codes: List[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    clients = [make_client(srv.url, client_id=f"py-{n}") for n in range(4)]

    def publish_loop(n: int) -> None:
        for k in range(5000):
            if stop.is_set():
                return
            data = f"{n}-{k}"
            try:  # a caller that stops waiting does not cancel the publish
                clients[n].publish("s", data, ack=True, timeout=1.0)
                with lock:
                    acked.append(data)
            except RequestTimeout:
                pass
            except RemoteError as exc:
                with lock:
                    refused.append(data)
                    codes.append(exc.code)

    threads = [threading.Thread(target=publish_loop, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    try:
        stall(redis_srv, srv, lambda: len(acked) + len(refused))
    finally:
        stop.set()
        for t in threads:
            t.join(WAIT_S)
    wait_until(lambda: all(c.stats()["unacked_publishes"] == 0 for c in clients),
               what="every outbox settled")
    got = collections.Counter(delivered_data(srv, rec))
    assert max(got.values()) == 1  # nothing twice, resends included
    assert set(codes) == {p.ERR_UNAVAILABLE}  # never outcome-unknown: the client resends those
    assert [d for d in acked if got[d] != 1] == []
    assert [d for d in refused if got[d]] == []
    unknown = sum(c.stats().get("publish_outcome_unknown", 0) for c in clients)
    assert unknown >= 1, "no publish was in flight when the link failed"
    assert srv.stats()["outcome_unknown_publishes"] == unknown
    assert sum(c.stats().get("publishes_resent", 0) for c in clients) >= unknown

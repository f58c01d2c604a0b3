"""History recovery and idempotent publish over real sockets (PROTOCOL 9)."""

from __future__ import annotations

import threading
from typing import Any, Callable, List, Union

import pytest

from sente_lite import Client, Server
from sente_lite.wire import protocol as p
from support import AsgiFace, RawWS, Recorder, ThreadedFace, wait_until

#: The tests taking ``make_face`` run on both faces: the threaded Server and the ASGI App
#: under uvicorn.
Face = Union[ThreadedFace, AsgiFace]


def test_handshake_announces_the_features(make_face: Callable[..., Face],
                                          make_client: Callable[..., Client]) -> None:
    c = make_client(make_face().url)
    assert c.wait_connected(5)
    assert c.handshake is not None and c.handshake["features"] == ["history", "publish-id", "batch", "bytes",
                                                                "history-api", "server-subs"]


def test_a_stored_position_resumes_exactly_after_it(make_face: Callable[..., Face],
                                                    make_client: Callable[..., Client]) -> None:
    srv = make_face()
    first = make_client(srv.url)
    got = Recorder()
    first.subscribe("news", got)
    for n in range(3):
        srv.publish("news", n)
    got.wait_count(3)
    saved = first.position("news")
    assert saved is not None and saved["offset"] == 3
    first.close()
    for n in range(3, 6):
        srv.publish("news", n)
    later = make_client(srv.url)
    recoveries: List[Any] = []
    later.on_recovery(recoveries.append)
    resumed = Recorder()
    answer = later.subscribe("news", resumed, since=saved)
    assert answer == {"channel-id": "news", "offset": 6, "epoch": saved["epoch"], "recovered": True}
    srv.publish("news", 6)
    msgs = resumed.wait_count(4)
    assert [(m.offset, m.data) for m in msgs] == [(4, 3), (5, 4), (6, 5), (7, 6)]
    wait_until(lambda: recoveries, what="the recovery handler")
    assert recoveries[0].recovered and recoveries[0].since == saved


@pytest.mark.parametrize("since,reason", [
    ({"offset": 1, "epoch": "not-this-one"}, "epoch-changed"),
    ({"offset": 99, "epoch": None}, "epoch-changed"),  # beyond the top: not from this epoch
    ({"offset": 0, "epoch": None}, "history-expired"),
])
def test_unrecoverable_positions_replay_nothing_and_say_why(
        make_face: Callable[..., Face], make_client: Callable[..., Client],
        since: dict, reason: str) -> None:
    srv = make_face(history_size=2)
    epoch = srv.publish("ch", 0).epoch
    for n in range(1, 5):
        srv.publish("ch", n)
    since = dict(since, epoch=since["epoch"] or epoch)
    c = make_client(srv.url)
    recoveries: List[Any] = []
    c.on_recovery(recoveries.append)
    got = Recorder()
    answer = c.subscribe("ch", got, since=since)
    assert answer["recovered"] is False and answer["reason"] == reason  # type: ignore[index]
    srv.publish("ch", "live")
    assert [m.data for m in got.wait_count(1)] == ["live"]
    wait_until(lambda: recoveries, what="the recovery handler")
    assert (recoveries[0].recovered, recoveries[0].reason) == (False, reason)
    assert c.stats()["recovery_failures"] == 1


def test_a_bad_since_is_refused_before_anything_is_sent(make_face: Callable[..., Face],
                                                        make_client: Callable[..., Client]) -> None:
    c = make_client(make_face().url)
    for since in ({"offset": -1, "epoch": "e"}, {"epoch": "e"}, "3", {"offset": 1.5, "epoch": "e"}):
        with pytest.raises(ValueError):
            c.subscribe("ch", since=since)  # type: ignore[arg-type]
    assert c.subscriptions() == []


def test_a_repeated_publish_id_is_delivered_once(make_face: Callable[..., Face],
                                                 raw_ws: Callable[..., RawWS],
                                                 make_client: Callable[..., Client]) -> None:
    srv = make_face()
    watcher = make_client(srv.url)
    got = Recorder()
    watcher.subscribe("ch", got)
    r = raw_ws(srv.url)
    body = {p.K_CHANNEL: "ch", p.K_DATA: "once", p.K_ID: "raw:1"}
    assert r.request(p.EV_PUBLISH, body, "c1") == [
        p.EV_REPLY, {"channel-id": "ch", "offset": 1, "delivered": 1}, "c1"]
    # as after a reconnect: the same id again
    assert r.request(p.EV_PUBLISH, body, "c2") == [
        p.EV_REPLY, {"channel-id": "ch", "offset": 1, "delivered": 1, "duplicate": True}, "c2"]
    assert r.request(p.EV_PUBLISH, dict(body, id="raw:2"), "c3")[1]["offset"] == 2
    assert [(m.offset, m.data) for m in got.wait_count(2)] == [(1, "once"), (2, "once")]
    assert srv.stats()["duplicate_publishes"] == 1
    assert srv.stats()["history_messages"] == 2


def test_history_settings_and_size_are_visible(make_face: Callable[..., Face]) -> None:
    srv = make_face(history_size=3, history_ttl_s=60, publish_dedup_s=120)
    for n in range(5):
        srv.publish("ch", n)
    stats = srv.stats()
    assert (stats["history_size"], stats["history_ttl_s"], stats["publish_dedup_s"]) == (3, 60, 120)
    assert stats["history_messages"] == 3 and stats["history_evicted"] == 2
    with pytest.raises(ValueError):
        Server(history_size=-1)
    with pytest.raises(ValueError):
        Server(history_ttl_s=600, publish_dedup_s=60)


def test_publishes_from_many_threads_of_one_client_each_land_once(
        make_face: Callable[..., Face], make_client: Callable[..., Client]) -> None:
    srv = make_face()
    c = make_client(srv.url)
    got = Recorder()
    c.subscribe("ch", got)
    errors: List[BaseException] = []

    def worker(w: int) -> None:
        try:
            for n in range(50):
                if n % 5 == 0:
                    assert c.publish("ch", [w, n], ack=True)["delivered"] == 1  # type: ignore[index]
                else:
                    c.publish("ch", [w, n])
                assert c.request("app/echo", [w, n]) == [w, n]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    srv.on("app/echo", lambda conn, data: data)
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    msgs = got.wait_count(400)
    assert sorted(tuple(m.data) for m in msgs) == sorted((w, n) for w in range(8) for n in range(50))
    assert [m.offset for m in msgs] == list(range(1, 401))
    wait_until(lambda: c.stats()["unacked_publishes"] == 0, what="every publish acknowledged")

"""Publisher backpressure: ``Client(publish_block_s=)`` / ``publish(block_s=)`` wait for room
in a full publish outbox (as Kafka's ``max.block.ms``) before raising ``SendQueueFull``."""

from __future__ import annotations

import threading
import time
from typing import Any, List

import pytest

from sente_lite import SendQueueFull
from sente_lite.limits import InvalidSetting
from support import WAIT_S, wait_until

#: Publishes of the fast publisher: several times the outbox.
FAST_PUBLISHES = 5000


def test_fast_publisher_never_sees_send_queue_full_with_blocking(make_server, make_client) -> None:
    srv = make_server()
    sub = make_client(srv.url)
    got: List[Any] = []
    sub.subscribe("fast", lambda m: got.append(m.data), timeout=WAIT_S)
    pub = make_client(srv.url, max_unacked_publishes=100, publish_block_s=WAIT_S)
    for i in range(FAST_PUBLISHES):
        pub.publish("fast", i)  # never raises: it waits for acks when 100 are in flight
    pub.publish("fast", "last", ack=True, timeout=WAIT_S)
    wait_until(lambda: len(got) == FAST_PUBLISHES + 1, what="every publish at the subscriber")
    assert got == list(range(FAST_PUBLISHES)) + ["last"]
    assert pub.stats()["unacked_publishes"] == 0


def test_block_zero_raises_at_once_and_blocking_raises_after_its_timeout(make_server, make_client) -> None:
    srv = make_server()
    c = make_client(srv.url, max_unacked_publishes=3, publish_block_s=0)
    srv.stop()  # a dead server: nothing is acknowledged
    wait_until(lambda: not c.connected, what="the client to see the server gone")
    for i in range(3):
        c.publish("dead", i)
    t0 = time.monotonic()
    with pytest.raises(SendQueueFull) as info:
        c.publish("dead", "x")
    assert time.monotonic() - t0 < 1.0 and "max_unacked_publishes=3" in str(info.value)
    t0 = time.monotonic()
    with pytest.raises(SendQueueFull) as info:
        c.publish("dead", "y", ack=True, block_s=0.5)
    assert time.monotonic() - t0 >= 0.5
    assert "waited 0.5s for an ack" in str(info.value)
    assert c.stats()["unacked_publishes"] == 3


def test_blocked_publish_wakes_as_acks_arrive(make_server, make_client) -> None:
    first = make_server()
    port = first.port
    c = make_client(first.url, max_unacked_publishes=2, publish_block_s=WAIT_S,
                    backoff_base=0.05, backoff_max=0.2)
    first.stop()
    wait_until(lambda: not c.connected, what="the client to see the server gone")
    c.publish("wake", 0)
    c.publish("wake", 1)
    done = threading.Event()
    errors: List[BaseException] = []

    def blocked() -> None:
        try:
            c.publish("wake", 2)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            done.set()

    t = threading.Thread(target=blocked, name="test-blocked-publish")
    t.start()
    assert not done.wait(0.3), "the publish did not wait for room"
    second = make_server(port=port)
    assert second.port == port
    assert done.wait(WAIT_S) and not errors, errors
    t.join(WAIT_S)
    wait_until(lambda: c.stats()["unacked_publishes"] == 0, what="every publish acknowledged")


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "5", 10 ** 9])
def test_publish_block_s_is_validated(bad: Any) -> None:
    with pytest.raises((InvalidSetting, ValueError)):
        from sente_lite import Client
        Client("ws://127.0.0.1:9/chsk", publish_block_s=bad, start=False)

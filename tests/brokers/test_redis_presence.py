"""Channel presence across two servers on one Redis, with a real SIGKILL: the dead server's
members vanish within ``presence_ttl_s``, while a live server's own stay (it rewrites them)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import Callable

from sente_lite import Namespace, Server
from sente_lite.brokers.redis.broker import RedisBroker
from sente_lite.testing.redis_server import RedisServer
from support import REPO, WAIT_S, wait_until

#: Short, so the test is quick; the default is 6 s.
TTL_S = 1.5
CHILD = textwrap.dedent("""
    import sys, time
    from sente_lite import Namespace, Server
    from sente_lite.brokers.redis.broker import RedisBroker
    srv = Server("127.0.0.1", 0, broker=RedisBroker(sys.argv[1], presence_ttl_s=float(sys.argv[2])),
                 namespaces={"room": Namespace(presence=True)}).start()
    while srv.channels.health()["broker-status"] != "up":
        time.sleep(0.01)
    srv.channels.presence_add("room:1", {"client-id": "c-dead", "uid": "dead", "conn-id": "dead-1",
                                         "info": None})
    print("ready", flush=True)
    time.sleep(60)
""")


def test_a_sigkilled_servers_members_vanish_within_the_ttl(redis_srv: RedisServer,
                                                           make_server: Callable[..., Server]) -> None:
    srv = make_server(broker=RedisBroker(redis_srv.url, presence_ttl_s=TTL_S),
                      namespaces={"room": Namespace(presence=True)})
    wait_until(lambda: srv.channels.health()["broker-status"] == "up", what="the link up")
    srv.channels.presence_add("room:1", {"client-id": "c-live", "uid": "live", "conn-id": "live-1",
                                         "info": None})
    env = dict(os.environ, PYTHONPATH=str(REPO))
    child = subprocess.Popen([sys.executable, "-c", CHILD, redis_srv.url, str(TTL_S)], env=env,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        ids = lambda: sorted(m["conn-id"] for m in srv.presence_of("room:1"))  # noqa: E731
        assert ids() == ["dead-1", "live-1"]
        child.send_signal(signal.SIGKILL)
        child.wait(WAIT_S)
        killed = time.monotonic()
        wait_until(lambda: ids() == ["live-1"], timeout=TTL_S + 2, what="the dead server's member gone")
        assert time.monotonic() - killed <= TTL_S + 0.5
        time.sleep(TTL_S)  # a span longer than the ttl: the live member is rewritten, not expired
        assert ids() == ["live-1"] and srv.presence_stats("room:1") == {"members": 1, "users": 1}
    finally:
        child.kill()
        child.wait(WAIT_S)
        if child.stdout is not None:
            child.stdout.close()

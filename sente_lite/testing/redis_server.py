"""A real ``redis-server`` for tests and scenarios: :class:`RedisServer` (it lives in
:mod:`sente_lite.brokers.redis.local_server`, so that the benchmarks start one without the
harness), and :func:`require_redis_server` for tests.

::

    with RedisServer() as redis_srv:       # no persistence, in a temp dir
        Server(broker=redis_srv.url)        # redis://127.0.0.1:<port>/0
        redis_srv.kill()                    # SIGKILL: every key is gone
        redis_srv.start()                   # again, on the same port
"""

from __future__ import annotations

from ..brokers.redis.local_server import (MISSING, REDIS_SERVER, REDIS_START_TIMEOUT_S,
                                          REDIS_STOP_GRACE_S, RedisServer, free_port, ping,
                                          redis_server_path)

#: Why tests needing Redis are skipped when it is missing.
SKIP_REASON = f"{MISSING}: the tests of the Redis broker start a real one"


def require_redis_server() -> str:
    """The path of ``redis-server``; skip the calling pytest test when it is missing."""
    path = redis_server_path()
    if path is None:
        import pytest  # only tests call this

        pytest.skip(SKIP_REASON)
    return path


__all__ = ["RedisServer", "free_port", "ping", "redis_server_path", "require_redis_server",
           "REDIS_SERVER", "REDIS_START_TIMEOUT_S", "REDIS_STOP_GRACE_S", "SKIP_REASON"]

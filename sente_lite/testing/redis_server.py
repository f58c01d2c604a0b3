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

from typing import Any, Callable

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


def with_redis_server(run: Any, report: Any, body: Callable[[Any, Any, RedisServer], None]) -> None:
    """A scenario's story on a real Redis: ``body(run, report, redis_srv)`` with a
    ``redis-server`` started for it (recorded on the run's timeline, closed after), or the
    scenario skipped, saying why, when there is none."""
    if redis_server_path() is None:
        report.skip(SKIP_REASON)
        return
    redis_srv = RedisServer().start()
    try:
        run.record_event("redis-start", None, port=redis_srv.port, pid=redis_srv.pid)
        report.step(f"redis-server pid {redis_srv.pid} on port {redis_srv.port}")
        body(run, report, redis_srv)
    finally:
        redis_srv.close()


__all__ = ["RedisServer", "free_port", "ping", "redis_server_path", "require_redis_server",
           "with_redis_server",
           "REDIS_SERVER", "REDIS_START_TIMEOUT_S", "REDIS_STOP_GRACE_S", "SKIP_REASON"]

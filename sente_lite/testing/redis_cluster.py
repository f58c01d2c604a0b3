"""A local Redis Cluster (3 masters + 3 replicas) for tests and scenarios:
:class:`LocalCluster` (it lives in :mod:`sente_lite.brokers.redis.local_cluster`, so that
the benchmarks start one without the harness), :func:`require_redis_cluster` for tests and
:func:`with_redis_cluster` for scenarios.

::

    with LocalCluster() as cluster:
        Server(broker=cluster.url)          # redis+cluster://127.0.0.1:p1,...
        cluster.kill(cluster.master_of(key))  # SIGKILL a master: its replica takes over
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from ..brokers.redis.local_cluster import (CLUSTER_NODE_TIMEOUT_MS, CLUSTER_READY_TIMEOUT_S,
                                           MISSING_CLI, LocalCluster, redis_cli_path)
from ..brokers.redis.local_server import MISSING, redis_server_path
from ..brokers.redis.url import cluster_client_problem


def missing() -> Optional[str]:
    """Why no local cluster can start here (None: it can)."""
    if redis_server_path() is None:
        return MISSING
    if redis_cli_path() is None:
        return MISSING_CLI
    return cluster_client_problem()


def require_redis_cluster() -> None:
    """Skip the calling pytest test, naming what is missing, when no cluster can start."""
    why = missing()
    if why is not None:
        import pytest  # only tests call this

        pytest.skip(f"{why}: the tests of Redis Cluster start a local one")


def with_redis_cluster(run: Any, report: Any,
                       body: Callable[[Any, Any, LocalCluster], None]) -> None:
    """A scenario's story on a local cluster: ``body(run, report, cluster)`` with a cluster
    started for it (closed after), or the scenario skipped, saying what is missing."""
    why = missing()
    if why is not None:
        report.skip(why)
        return
    cluster = LocalCluster().start()
    try:
        run.record_event("redis-cluster-start", None, ports=[n.port for n in cluster.nodes])
        report.step(f"redis cluster: {len(cluster.nodes)} nodes, masters {cluster.masters()}")
        body(run, report, cluster)
    finally:
        cluster.close()


__all__ = ["LocalCluster", "missing", "require_redis_cluster", "with_redis_cluster",
           "CLUSTER_NODE_TIMEOUT_MS", "CLUSTER_READY_TIMEOUT_S"]

"""The broker URL of a :class:`~sente_lite.brokers.redis.broker.RedisBroker` and of a
Redis :class:`~sente_lite.api.publisher.Publisher`: which Redis, and how servers hear
channels (:func:`parse_broker_url`)."""

from __future__ import annotations

import re
from typing import List, NamedTuple, Optional, Tuple
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

#: Each server listens to the channels it serves only (``SSUBSCRIBE`` of each channel's
#: shard channel, ``SPUBLISH``); needs Redis >= 7.0. The default.
SHARDED = "sharded"
#: Each server pattern-subscribes to every channel (``PSUBSCRIBE``, ``PUBLISH``): for
#: Redis < 7.0, and to compare.
PATTERN = "pattern"
SUBSCRIPTIONS = (SHARDED, PATTERN)
#: The scheme of a Redis Cluster: ``redis+cluster://host:port,host:port,...``.
CLUSTER_SCHEME = "redis+cluster"
#: The oldest redis-py whose cluster client serves a Redis Cluster here (the lowest CI tests):
#: redis-py 5.0's sharded pub/sub on a cluster fails ("dictionary changed size during
#: iteration", SSUBSCRIBE unconfirmed) when a channel is subscribed while the link listens.
MIN_CLUSTER_REDIS_PY = (8, 2)


def cluster_client_problem() -> Optional[str]:
    """Why this interpreter's redis-py cannot serve ``redis+cluster://`` (None: it can)."""
    try:
        import redis
    except ImportError:
        return "redis+cluster:// needs redis-py: pip install 'sente-lite[redis]'"
    found = tuple(int(n) for n in re.findall(r"\d+", getattr(redis, "__version__", "0"))[:2])
    if found < MIN_CLUSTER_REDIS_PY:
        want = ".".join(map(str, MIN_CLUSTER_REDIS_PY))
        return (f"redis+cluster:// needs redis-py >= {want} (found {redis.__version__}): "
                f"pip install -U 'redis>={want}'")
    return None


class BrokerUrl(NamedTuple):
    """A parsed broker URL: ``url`` for redis-py (the ``subscription`` option removed),
    ``subscription`` (:data:`SHARDED` or :data:`PATTERN`) and, for a cluster, its
    start-up ``nodes`` (host, port)."""

    url: str
    subscription: str
    nodes: Optional[List[Tuple[str, int]]]


def parse_broker_url(url: str, subscription: Optional[str] = None) -> BrokerUrl:
    """Parse ``redis://host:port/db[?subscription=pattern]`` or
    ``redis+cluster://h1:p1,h2:p2[?subscription=...]``. ``subscription`` (when not None)
    wins over the URL's. Raises ValueError naming what is wrong."""
    if not isinstance(url, str):
        raise ValueError(f"the broker URL must be a str, got {type(url).__name__}")
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    given = [v for k, v in query if k == "subscription"]
    rest = [(k, v) for k, v in query if k != "subscription"]
    chosen = subscription if subscription is not None else (given[-1] if given else SHARDED)
    if chosen not in SUBSCRIPTIONS:
        raise ValueError(f"subscription must be one of {SUBSCRIPTIONS}, got {chosen!r}")
    nodes: Optional[List[Tuple[str, int]]] = None
    if parts.scheme == CLUSTER_SCHEME:
        if chosen != SHARDED:
            raise ValueError("a Redis Cluster needs subscription=sharded (the default)")
        nodes = []
        for hostport in parts.netloc.rsplit("@", 1)[-1].split(","):
            host, sep, port = hostport.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"cluster node {hostport!r} of {url!r} is not host:port")
            nodes.append((host, int(port)))
    elif parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"the broker URL must start redis://, rediss://, unix:// or "
                         f"{CLUSTER_SCHEME}://, got {url!r}")
    clean = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(rest), parts.fragment))
    return BrokerUrl(clean, chosen, nodes)


__all__ = ["BrokerUrl", "parse_broker_url", "SHARDED", "PATTERN", "SUBSCRIPTIONS",
           "CLUSTER_SCHEME", "MIN_CLUSTER_REDIS_PY", "cluster_client_problem"]

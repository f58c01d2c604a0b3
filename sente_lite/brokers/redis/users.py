"""Per-user routing of a :class:`~sente_lite.brokers.redis.broker.RedisBroker`: where a
user's messages and presence live in Redis, and which users' shard channels this server
listens to (:class:`UserRoutes`).

With sharded subscription a ``send_to_user`` or ``disconnect_user`` goes to the user's
own shard channel ``<prefix>:u:{<D>}:m`` (``<D>``: a digest of the uid), which only the
servers holding a connection of that user subscribe to: the first connection of a uid
makes the server ``SSUBSCRIBE`` it and its upgrade is answered once Redis confirmed the
subscription (:meth:`UserRoutes.route`), so a message sent to the user after its
handshake reaches it; the server ``SUNSUBSCRIBE``s after the uid's last connection left.
The user's presence is the hash ``<prefix>:u:{<D>}:p`` (server-id -> its connections).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Dict, List, Mapping, Optional

from .link import RedisLink
from .space import digest

log = logging.getLogger("sente_lite.redis")

#: Seconds a user's shard subscription made for an upgrade is kept while no connection of
#: that user registered (the upgrade was refused or dropped after it was routed).
ROUTE_HOLD_S = 30.0

Ready = Callable[[], None]


def user_root(prefix: str, uid: str) -> str:
    """``<prefix>:u:{<D>}``: what every key and the shard channel of user ``uid`` start
    with (one Redis Cluster slot; no uid can name another's key)."""
    return f"{prefix}:u:{{{digest(uid)}}}"


def user_shard(prefix: str, uid: str) -> bytes:
    """The shard channel of user ``uid``'s sends and closes."""
    return (user_root(prefix, uid) + ":m").encode()


def user_key(prefix: str, uid: str) -> str:
    """The presence hash of user ``uid``: server-id -> its connections there."""
    return user_root(prefix, uid) + ":p"


def user_shard_prefix(prefix: str) -> bytes:
    """What every user's shard channel starts with (the link tells them apart by it)."""
    return f"{prefix}:u:".encode()


class UserRoutes:
    """The users whose shard channels this server listens to: those with a connection
    here, and those whose upgrade is being answered (for ``ROUTE_HOLD_S`` at most)."""

    def __init__(self, prefix: str, link: RedisLink) -> None:
        self._prefix = prefix
        self._link = link
        self._lock = threading.Lock()
        #: uid -> None once listened to (or the link was down), else what waits for it
        self._state: Dict[str, Optional[List[Ready]]] = {}
        self._holds: Dict[str, float] = {}  # uid -> until when an upgrade holds it
        self.routed_at_once = 0  # upgrades whose user was listened to already
        self.routed_later = 0  # upgrades answered once Redis confirmed the subscription

    def route(self, uid: str, ready: Ready) -> bool:
        """Make this server listen to ``uid``'s shard channel. True: it does (or the link is
        down: the subscription is made when it is back), go on; False: ``ready()`` runs once
        Redis confirmed it (on the link's thread), or once the link is lost."""
        with self._lock:
            self._holds[uid] = time.monotonic() + ROUTE_HOLD_S
            state = self._state.get(uid, False)
            if state is None:
                self.routed_at_once += 1
                return True
            if state is not False:
                state.append(ready)
                return False
            if self._link.down:
                self._state[uid] = None
                self._link.submit(lambda: self._listen(uid))
                return True
            self._state[uid] = [ready]
            self.routed_later += 1
        self._listen(uid)  # here: one thread hop less before the upgrade is answered
        return False

    def _listen(self, uid: str) -> None:
        """``SSUBSCRIBE`` the shard channel of ``uid`` (any thread; never under the lock)."""
        with self._lock:
            if uid not in self._state:
                return  # left before its turn
        self._link.listen_then(user_shard(self._prefix, uid), lambda: self._confirmed(uid))

    def _confirmed(self, uid: str) -> None:
        with self._lock:
            waiting = self._state.get(uid)
            if waiting is None:
                return  # confirmed before, or gone
            self._state[uid] = None
        for ready in waiting:
            try:
                ready()
            except Exception:
                log.exception("answering an upgrade routed to this server failed")

    def sync(self, counts: Mapping[str, int]) -> None:
        """The users with connections here now (I/O thread): listen to those not listened
        to yet, stop listening to those gone (unless an upgrade holds them)."""
        now = time.monotonic()
        with self._lock:
            holds = self._holds
            for uid in [u for u, until in holds.items() if u in counts or until < now]:
                del holds[uid]
            new = [u for u in counts if u not in self._state]
            for uid in new:
                self._state[uid] = []
            gone = [u for u, s in self._state.items()
                    if s is None and u not in counts and u not in holds]
            for uid in gone:  # under the lock: a route() of that uid subscribes after it
                del self._state[uid]
                self._link.unlisten(user_shard(self._prefix, uid))
        for uid in new:
            self._listen(uid)

    def listened(self) -> int:
        """How many users' shard channels this server listens to (or waits for)."""
        with self._lock:
            return len(self._state)


__all__ = ["UserRoutes", "ROUTE_HOLD_S", "user_root", "user_shard", "user_key",
           "user_shard_prefix"]

"""A Redis Cluster master's publishes waiting for a replica, off the delivery path.

The I/O thread runs a batch's publish scripts on one of the master's *lanes* (a connection
of its own: a ``redis.Redis`` whose pool holds one connection) and goes on with the next
batch at once: the scripts' ``SPUBLISH`` has reached the subscribers' servers already.
The master's ack thread (``sente-lite-redis-ack``) then sends ``WAIT 1 <ms>`` on that same
lane (``WAIT`` counts the writes of the connection it is sent on) and only then answers
the batch's publishers, in the order the batches ran. While a batch waits for its replica
the next one runs on another lane; with every lane of a master waiting
(:data:`REPLICA_ACK_LANES`), the next batch for that master waits for one (counted as
``broker_publish_lane_waits``): a master's ack queue holds at most that many batches, each
with its lane. So a slow replica delays its master's acknowledgements,
never the delivery of later publishes, and no publish is acknowledged before a replica
holds it.

A pool of one connection reconnects silently when its socket was closed meanwhile, and a
``WAIT`` on a new connection would count none of the batch's writes: the batch's pipeline
ends with ``CLIENT ID`` and the ``WAIT`` is sent after another, so a renewed connection is
seen (the batch is then answered ``outcome-unknown``).
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Any, Callable, Deque, List, Optional, Tuple

log = logging.getLogger("sente_lite.redis")

#: Connections per master on which publish batches wait for a replica at once; when every
#: one waits, the next batch for that master waits for one (``broker_publish_lane_waits``).
REPLICA_ACK_LANES = 4


class Waiting:
    """A batch whose scripts ran on ``lane`` (whose ``CLIENT ID`` was ``client_id``):
    ``ran`` holds (publish, script result) pairs to answer once a replica holds them."""

    __slots__ = ("lane", "client_id", "ran")

    def __init__(self, lane: Any, client_id: Any, ran: List[Tuple[Any, Any]]) -> None:
        self.lane, self.client_id, self.ran = lane, client_id, ran


class MasterAcks:
    """One master's lanes and the thread that waits for its replica.

    ``make()`` opens a lane (a ``redis.Redis`` of one connection to the master);
    ``settle(waiting, stopping)`` answers a batch on the ack thread (``stopping``: the
    broker stops, answer without waiting) and returns its lane to :meth:`give_back` or
    :meth:`drop`. :meth:`close` stops the thread after the batches queued are answered.
    """

    def __init__(self, name: str, make: Callable[[], Any],
                 settle: Callable[["MasterAcks", Waiting, bool], None],
                 lanes: int = REPLICA_ACK_LANES) -> None:
        self.name = name
        self._make, self._settle, self._lanes = make, settle, lanes
        self._cond = threading.Condition()  # guards every field below
        self._idle: List[Any] = []
        self._made = 0  # lanes open (idle, running a batch or waiting)
        self._queue: Deque[Waiting] = collections.deque()
        self._closed = False
        #: batches that waited for a lane (every lane of the master waiting for a replica)
        self.waits = 0
        self._thread = threading.Thread(target=self._run, name="sente-lite-redis-ack",
                                        daemon=True)
        self._thread.start()

    def take(self) -> Optional[Any]:
        """An idle lane, opened if fewer than the limit are; waits for one when every lane
        waits for the replica. None once closed. I/O thread."""
        with self._cond:
            if not self._idle and self._made >= self._lanes and not self._closed:
                self.waits += 1
                while not self._idle and self._made >= self._lanes and not self._closed:
                    self._cond.wait()  # the ack thread gives one back (or close wakes us)
            if self._closed:
                return None
            if self._idle:
                return self._idle.pop()
            self._made += 1
        try:
            return self._make()
        except BaseException:
            self.drop(None)
            raise

    def give_back(self, lane: Any) -> None:
        """``lane`` is idle again (its batch answered)."""
        with self._cond:
            if self._closed:
                self._made -= 1
                _close(lane)
            else:
                self._idle.append(lane)
            self._cond.notify_all()

    def drop(self, lane: Any) -> None:
        """``lane`` failed: close it (a new one is opened when needed)."""
        if lane is not None:
            _close(lane)
        with self._cond:
            self._made -= 1
            self._cond.notify_all()

    def wait_for_replica(self, waiting: Waiting) -> bool:
        """Queue ``waiting`` for the ack thread; False once closed (then the caller
        answers it and gives its lane back)."""
        with self._cond:
            if self._closed:
                return False
            self._queue.append(waiting)
            self._cond.notify_all()
            return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return  # closed, every batch answered
                waiting = self._queue.popleft()
                stopping = self._closed
            try:
                self._settle(self, waiting, stopping)
            except Exception:  # a bug: log it, keep answering the other batches
                log.exception("answering publishes of Redis master %s failed", self.name)

    def close(self, timeout: float) -> None:
        """Stop taking batches, answer those queued (without waiting), stop the thread
        (joined within ``timeout``), close the idle lanes."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._made -= len(idle)
            self._cond.notify_all()
        for lane in idle:
            _close(lane)
        self._thread.join(timeout)


def _close(lane: Any) -> None:
    try:
        lane.close()
    except Exception:  # closing a broken connection: nothing left to release
        pass


__all__ = ["MasterAcks", "Waiting", "REPLICA_ACK_LANES"]

"""The server's handler threads: a bounded pool, one connection's tasks in order.

Each connection has a :class:`Lane`: its tasks (handlers, hooks) run one at a time,
in the order they were given, on whichever worker takes the lane. A slow handler
delays only its own lane; the others are taken by the other workers, and a worker
is added (up to ``max_threads``) when a lane is ready and no worker is idle. A
handler blocked in ``request()`` tells the pool (:meth:`WorkerPool.blocking`), so
a lane waiting behind it gets a worker even at ``max_threads``: a blocked handler
never starves other connections. Workers above ``min_threads`` leave after
``idle_s`` without work.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from typing import Callable, Deque, Iterator, Set

log = logging.getLogger("sente_lite.server.workers")

#: Tasks one lane runs before its worker moves on to other ready lanes (fairness).
TASKS_PER_TURN = 64
DEFAULT_MIN_THREADS = 2
DEFAULT_MAX_THREADS = 16
DEFAULT_IDLE_S = 10.0

Task = Callable[[], None]


class Lane:
    """The ordered tasks of one connection."""

    __slots__ = ("name", "tasks", "scheduled", "running")

    def __init__(self, name: str) -> None:
        self.name = name
        self.tasks: Deque[Task] = collections.deque()
        self.scheduled = False  # in the ready queue, or being run by a worker
        self.running = False    # a worker is inside one of its tasks

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing running (read without the pool's lock: a hint
        that is exact for the single thread that adds this lane's tasks)."""
        return not self.scheduled


class WorkerPool:
    """A bounded set of threads (``sente-lite-worker-N``) running lanes."""

    def __init__(self, min_threads: int = DEFAULT_MIN_THREADS,
                 max_threads: int = DEFAULT_MAX_THREADS, idle_s: float = DEFAULT_IDLE_S) -> None:
        if not 1 <= min_threads <= max_threads:
            raise ValueError("need 1 <= min_threads <= max_threads")
        self.min_threads = min_threads
        self.max_threads = max_threads
        self.idle_s = idle_s
        self._cond = threading.Condition(threading.Lock())
        self._ready: Deque[Lane] = collections.deque()
        self._threads: Set[threading.Thread] = set()
        self._idle = 0      # workers waiting for a lane
        self._starting = 0  # workers started that have not looked for a lane yet
        self._blocked = 0   # workers inside blocking()
        self._seq = 0
        self._stopping = False
        self.start_failures = 0
        self.task_errors = 0

    @property
    def threads(self) -> int:
        """Live worker threads."""
        return len(self._threads)

    def start(self) -> None:
        with self._cond:
            for _ in range(self.min_threads):
                self._spawn_locked()

    def submit(self, lane: Lane, task: Task) -> None:
        """Run ``task`` after every task given to ``lane`` before it."""
        with self._cond:
            lane.tasks.append(task)
            if lane.scheduled:
                return
            lane.scheduled = True
            self._ready.append(lane)
            if self._idle:
                self._cond.notify()
            elif (len(self._ready) > self._starting and not self._stopping
                  and len(self._threads) - self._blocked < self.max_threads):
                self._spawn_locked()

    @contextlib.contextmanager
    def blocking(self) -> Iterator[None]:
        """Mark the calling worker as waiting (for a reply): it does not count against
        ``max_threads`` meanwhile, so ready lanes get another worker."""
        if not getattr(_current, "worker", False):
            yield
            return
        with self._cond:
            self._blocked += 1
            if len(self._ready) > self._idle + self._starting and not self._stopping:
                self._spawn_locked()
        try:
            yield
        finally:
            with self._cond:
                self._blocked -= 1

    def stop(self, timeout: float = 5.0) -> None:
        """Run what is queued, then end every worker (joined within ``timeout``)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            threads = list(self._threads)
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in threads):
            log.warning("handler threads still running after %.1fs at stop", timeout)

    def _spawn_locked(self) -> None:
        self._seq += 1
        t = threading.Thread(target=self._work, name=f"sente-lite-worker-{self._seq}", daemon=True)
        try:
            t.start()
        except RuntimeError as exc:  # can't start new thread (limits): keep serving with those we have
            self.start_failures += 1
            log.error("could not start a handler thread (%d running): %s", len(self._threads), exc)
            return
        self._threads.add(t)
        self._starting += 1

    def _work(self) -> None:
        _current.worker = True
        me = threading.current_thread()
        cond = self._cond
        with cond:
            self._starting -= 1
        try:
            while True:
                with cond:
                    while not self._ready:
                        if self._stopping:
                            return
                        self._idle += 1
                        woke = cond.wait(self.idle_s)
                        self._idle -= 1
                        if (not woke and not self._ready
                                and len(self._threads) > self.min_threads):
                            return
                    lane = self._ready.popleft()
                    lane.running = True
                self._run_lane(lane)
        finally:
            with cond:
                self._threads.discard(me)

    def _run_lane(self, lane: Lane) -> None:
        for _ in range(TASKS_PER_TURN):
            with self._cond:
                if not lane.tasks:
                    lane.running = False
                    lane.scheduled = False
                    return
                task = lane.tasks.popleft()
            try:
                task()
            except Exception:  # tasks report their own errors; this is a bug
                self.task_errors += 1
                log.exception("task of %s raised", lane.name)
        with self._cond:
            lane.running = False
            if lane.tasks:
                self._ready.append(lane)  # more to do: after the other ready lanes
            else:
                lane.scheduled = False


_current = threading.local()


def on_worker() -> bool:
    """True on a worker thread."""
    return bool(getattr(_current, "worker", False))


__all__ = ["WorkerPool", "Lane", "on_worker", "TASKS_PER_TURN", "DEFAULT_MIN_THREADS",
           "DEFAULT_MAX_THREADS"]

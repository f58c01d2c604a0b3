"""A scenario client publishing continuously while a fault happens (:class:`PublishLoop`),
recording every answer: what was acknowledged, refused, or not answered in time."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, List

from ..errors import RemoteError, RequestTimeout
from .child import ProcessContext, stamp


class PublishLoop:
    """Publishes ``stamp(by=<process name>, n=<n>)`` on ``channel`` with acks, one every
    ``interval_s`` after the previous answer, on a thread of its own between :meth:`start`
    and :meth:`stop`. Each answer is recorded and marked: ``acked`` (``count``) with its
    offset, ``refused`` (``count``, ``code``) with its protocol code, or unanswered within
    ``timeout_s`` (the client may still resend it: ``outcome-unknown``)."""

    def __init__(self, ctx: ProcessContext, client: Any, channel: str, interval_s: float,
                 timeout_s: float) -> None:
        self.ctx, self.client, self.channel = ctx, client, channel
        self.interval_s, self.timeout_s = interval_s, timeout_s
        self.acked: List[Dict[str, Any]] = []
        self.refused: List[Dict[str, Any]] = []
        self.unanswered: List[int] = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop publishing and wait for the last answer (at most ``timeout_s`` + 1 s)."""
        self._stop.set()
        self._thread.join(self.timeout_s + 1)

    def results(self) -> Dict[str, Any]:
        """``acked``, ``refused`` and ``unanswered`` so far (copies)."""
        with self.lock:
            return {"acked": list(self.acked), "refused": list(self.refused),
                    "unanswered": list(self.unanswered)}

    def commands(self, drain_s: float) -> Dict[str, Callable[[Dict[str, Any]], Any]]:
        """The scenario commands of this loop: ``start``; ``stop`` (then wait up to
        ``drain_s`` for the client's outbox to empty: publishes answered outcome-unknown are
        resent; answers how many were acked, refused, unanswered); ``fence`` (publish
        ``{"fence": <name>}``) and ``await-fences`` (until the fences of ``names`` arrived:
        every message before them has too)."""
        ctx, client, channel = self.ctx, self.client, self.channel

        def halt(data: Dict[str, Any]) -> Dict[str, int]:
            self.stop()
            ctx.wait_until(lambda: client.stats()["unacked_publishes"] == 0 or None,
                           "the outbox to empty (outcome-unknown publishes resent)", drain_s)
            return {k: len(v) for k, v in self.results().items()}

        def await_fences(data: Dict[str, Any]) -> int:
            want = set(data["names"])
            return ctx.wait_until(
                lambda: len(want & {d.data.get("fence") for d in ctx.history.messages(channel)})
                == len(want) or None, f"fences of {sorted(want)}")

        return {"start": lambda data: self.start(), "stop": halt,
                "fence": lambda data: client.publish(channel, {"fence": ctx.name}, ack=True) or {},
                "await-fences": await_fences}

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                reply = self.client.publish(self.channel, stamp(by=self.ctx.name, n=n), ack=True,
                                            timeout=self.timeout_s) or {}
            except RemoteError as exc:
                self._record(self.refused, "refused", {"n": n, "code": exc.code}, code=exc.code)
            except RequestTimeout:
                with self.lock:
                    self.unanswered.append(n)
            else:
                self._record(self.acked, "acked", {"n": n, "offset": reply["offset"]})
            self._stop.wait(self.interval_s)

    def _record(self, into: List[Dict[str, Any]], mark: str, entry: Dict[str, Any],
                **fields: Any) -> None:
        entry["t_ns"] = time.monotonic_ns()
        with self.lock:
            into.append(entry)
            count = len(into)
        self.ctx.mark(mark, count=count, **fields)


__all__ = ["PublishLoop"]

"""One connection's outbound bytes: a bounded queue, the slow-consumer rule and write
coalescing. No sockets, threads or clock reads of its own: it is given a ``write``
function (a non-blocking send that returns how many bytes the kernel took) and the
current time, so it is tested alone.

The caller serializes every call (the server holds the connection's lock).
"""

from __future__ import annotations

import collections
from typing import Callable, Deque

#: Most bytes joined into one write when the queue is flushed.
MAX_WRITE_BYTES = 256 * 1024

Write = Callable[[bytes], int]


class Overflow(Exception):
    """The queue would pass its limit: the peer is not reading (a slow consumer)."""


class Outbox:
    """Bytes waiting for one socket, in order.

    ``push`` writes at once when nothing is queued (and no delayed write is due);
    what the kernel does not take is queued, and ``flush`` (called when the socket
    is writable again, or when a delayed write is due) sends the queue, several
    chunks joined into one write. ``limit`` bounds the queued bytes: one more push
    raises :class:`Overflow`. With ``delay_ns`` (``write_delay_ms``), a push less
    than that long after the last write is held until then, so frames for a busy
    connection go out together.
    """

    __slots__ = ("_write", "limit", "delay_ns", "_chunks", "_bytes", "_head_sent",
                 "last_write_ns", "writes", "due_ns")

    def __init__(self, write: Write, limit: int, delay_ns: int = 0) -> None:
        self._write = write
        self.limit = limit
        self.delay_ns = delay_ns
        self._chunks: Deque[bytes] = collections.deque()
        self._bytes = 0
        self._head_sent = False  # the first chunk went out in part (it must finish first)
        self.last_write_ns = 0
        self.writes = 0  # socket writes made
        self.due_ns = 0  # when a held (delayed) write is due; 0 when none is

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting."""
        return self._bytes

    def __bool__(self) -> bool:
        return self._bytes > 0

    def push(self, data: bytes, now_ns: int = 0) -> bool:
        """Send ``data`` after everything before it. True when all of it is out (nothing
        queued); False when bytes wait for :meth:`flush` (socket full, or a delayed
        write: then ``due_ns`` says when). Raises :class:`Overflow` past ``limit``."""
        if self._chunks:
            if self._bytes + len(data) > self.limit:
                raise Overflow(f"{self._bytes + len(data)} bytes queued (limit {self.limit})")
            self._chunks.append(data)
            self._bytes += len(data)
            return False
        if self.delay_ns and now_ns - self.last_write_ns < self.delay_ns:
            self._chunks.append(data)
            self._bytes += len(data)
            self.due_ns = self.last_write_ns + self.delay_ns
            return False
        n = self._send(data, now_ns)
        if n == len(data):
            return True
        self._chunks.append(data[n:] if n else data)
        self._bytes += len(data) - n
        self._head_sent = n > 0
        return False

    def hold(self, data: bytes) -> None:
        """Queue ``data`` without writing: the caller flushes soon (the network thread
        gathers what it sends in one pass over ready sockets into one write per peer).
        Raises :class:`Overflow` past ``limit``."""
        if self._chunks and self._bytes + len(data) > self.limit:
            raise Overflow(f"{self._bytes + len(data)} bytes queued (limit {self.limit})")
        self._chunks.append(data)
        self._bytes += len(data)

    def flush(self, now_ns: int = 0) -> bool:
        """Send what is queued, several chunks per write. True when the queue is empty."""
        self.due_ns = 0
        chunks = self._chunks
        while chunks:
            if len(chunks) == 1 or len(chunks[0]) >= MAX_WRITE_BYTES:
                data = chunks.popleft()
            else:
                parts = []
                size = 0
                while chunks and size < MAX_WRITE_BYTES:
                    part = chunks.popleft()
                    parts.append(part)
                    size += len(part)
                data = b"".join(parts)
            n = self._send(data, now_ns)
            self._bytes -= n
            if n < len(data):
                chunks.appendleft(data[n:])
                self._head_sent = self._head_sent or n > 0
                return False
            self._head_sent = False
        return True

    def drop_unsent(self) -> int:
        """Forget queued bytes, keeping the unsent rest of a chunk already begun (the
        stream must stay whole). Returns how many bytes were dropped."""
        if not self._chunks:
            return 0
        keep = self._chunks[0] if self._head_sent else None
        dropped = self._bytes - (len(keep) if keep is not None else 0)
        self._chunks.clear()
        self._bytes = 0
        if keep is not None:
            self._chunks.append(keep)
            self._bytes = len(keep)
        return dropped

    def close(self) -> None:
        """The socket is closed: forget what is queued and the write function (which
        may refer back to the queue's owner: no reference cycle outlives the socket)."""
        self._chunks.clear()
        self._bytes = 0
        self._write = _discard

    def _send(self, data: bytes, now_ns: int) -> int:
        n = self._write(data)
        self.writes += 1
        self.last_write_ns = now_ns
        return n


def _discard(data: bytes) -> int:
    """The write function of a closed outbox: takes everything, sends nothing."""
    return len(data)


__all__ = ["Outbox", "Overflow", "MAX_WRITE_BYTES"]

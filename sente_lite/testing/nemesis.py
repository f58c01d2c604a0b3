"""A fault-injecting TCP proxy for scenarios: cut, partition and slow down links on command.

A :class:`Nemesis` listens on a local port and forwards every connection it accepts
to one target (a sente_lite server). Clients connect to the proxy instead of the
server; the scenario's parent process commands the faults while the proxy's one
thread forwards::

    with Nemesis("127.0.0.1", server_port) as nem:
        url = f"ws://127.0.0.1:{nem.port}/chsk"      # what the clients connect to
        nem.cut()            # every proxied connection dropped at once (RST both ways)
        nem.blackhole()      # a partition: nothing forwarded, nothing closed
        nem.heal()           # what was held is delivered, in order
        nem.delay(200)       # 200 ms more latency on every chunk from now on
        nem.stats()

Faults, as the two ends see them:

* :meth:`Nemesis.cut` closes both sockets of every link with ``SO_LINGER`` 0, so each
  end gets a TCP RST (``ConnectionResetError``, or EOF when it was not reading):
  the connection is gone at once, as when a NAT or a load balancer drops it.
* :meth:`Nemesis.blackhole` is a network partition. The proxy stops reading and
  writing on every link, so the ends see silence and nothing else: their sends
  fill the kernel's buffers and then block, nobody gets an EOF or an error, and
  only a heartbeat can find out. Bytes the proxy had already read when the
  partition began are held, not dropped, as TCP keeps retransmitting through a
  partition; a link holds at most :data:`MAX_HELD_BYTES` per direction. New
  connections are still accepted (the kernel would complete the handshake
  anyway) but the proxy does not connect them to the target until :meth:`heal`:
  the target does not see them during the partition.
* :meth:`Nemesis.delay` adds latency to each chunk read from then on; chunks keep
  their order (a chunk is never due before the one read before it).
* :meth:`Nemesis.heal` ends a partition and removes the delay: held bytes (those
  waiting for a delay too) are forwarded at once, in order, on every link still open; links accepted during the
  partition are connected to the target.

Every command is executed on the proxy's thread and returns once it took effect
(so after ``blackhole()`` returns, nothing more is forwarded). The commands are
thread-safe. :meth:`Nemesis.stop` ends the thread and closes every socket.
"""

from __future__ import annotations

import collections
import errno
import logging
import queue
import selectors
import socket
import struct
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple, TypeVar

log = logging.getLogger("sente_lite.testing.nemesis")

T = TypeVar("T")

#: Bytes one link holds per direction, at most: what was read from one end and not yet
#: written to the other (during a partition, a delay, or a slow reader). While a
#: direction holds this much the proxy stops reading from its source, so the kernel's
#: buffers fill and the sender blocks, as on a real congested link. A link holds at
#: most twice this (both directions).
MAX_HELD_BYTES = 1024 * 1024
#: Bytes one ``recv`` reads at most.
READ_CHUNK_BYTES = 64 * 1024
#: Links (accepted connections) open at once, at most; a connection accepted beyond
#: this is closed at once (RST). Bounds the proxy's descriptors: 2 per link.
MAX_LINKS = 1024
#: Largest delay :meth:`Nemesis.delay` accepts, in milliseconds.
MAX_DELAY_MS = 60_000
#: Seconds a command (cut, blackhole, heal, delay, stats) waits for the proxy's thread.
COMMAND_TIMEOUT_S = 10.0
#: Seconds between two looks at the proxy's thread while a command waits for it (a
#: command sent as the thread ends fails after this, not after COMMAND_TIMEOUT_S).
COMMAND_POLL_S = 0.25
#: Seconds :meth:`Nemesis.stop` waits for the proxy's thread to end.
STOP_TIMEOUT_S = 10.0
#: Listen backlog of the proxy's socket.
LISTEN_BACKLOG = 128
#: Seconds the proxy's thread sleeps in ``select`` at most when nothing happens (it is
#: woken by every command, so this only bounds the wait when a wake-up is lost).
IDLE_WAIT_S = 1.0

#: States in :meth:`Nemesis.stats`.
STATE_NEW = "new"
STATE_FORWARDING = "forwarding"
STATE_BLACKHOLE = "blackhole"
STATE_STOPPED = "stopped"

# Linger on, 0 s: close() sends a RST and drops unsent data.
_LINGER_RST = struct.pack("ii", 1, 0)
_EOF = None  # end-of-stream marker in a direction's queue


def _abort(sock: Optional[socket.socket]) -> None:
    """Close ``sock`` with a RST (``SO_LINGER`` 0); never raises."""
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Direction:
    """One direction of a link: bytes read from ``src``, in order, waiting for ``dst``.

    ``queue`` holds ``[due, chunk]`` (monotonic seconds; chunk is a memoryview, or
    None for the end of the stream).
    """

    __slots__ = ("name", "queue", "held", "eof_read", "eof_sent")

    def __init__(self, name: str) -> None:
        self.name = name
        self.queue: Deque[List[Any]] = collections.deque()
        self.held = 0
        self.eof_read = False
        self.eof_sent = False

    def last_due(self) -> float:
        return self.queue[-1][0] if self.queue else 0.0


class _Link:
    """One proxied connection: the accepted socket and the one to the target."""

    __slots__ = ("n", "client", "target", "state", "up", "down")

    def __init__(self, n: int, client: socket.socket) -> None:
        self.n = n
        self.client = client
        self.target: Optional[socket.socket] = None
        #: "held" (accepted during a partition, not connected yet), "connecting", "open"
        self.state = "held"
        self.up = _Direction("client->target")
        self.down = _Direction("target->client")

    def sockets(self) -> List[socket.socket]:
        return [s for s in (self.client, self.target) if s is not None]


class Nemesis:
    """A TCP proxy to ``target_host:target_port`` that injects faults on command.

    ``listen_port`` 0 binds any free port; :attr:`port` is the bound one after
    :meth:`start`. See the module docstring for what each fault does.
    """

    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1",
                 listen_port: int = 0) -> None:
        self.target = (target_host, int(target_port))
        self.listen_host = listen_host
        self.listen_port = int(listen_port)
        self.port: Optional[int] = None
        self._listener: Optional[socket.socket] = None
        self._wake_r: Optional[socket.socket] = None
        self._wake_w: Optional[socket.socket] = None
        self._sel: Optional[selectors.BaseSelector] = None
        self._thread: Optional[threading.Thread] = None
        self._commands: "queue.Queue[Tuple[Callable[[], Any], Future]]" = queue.Queue()
        self._running = False
        self._lock = threading.Lock()  # start/stop
        # proxy-thread state
        self._links: Dict[int, _Link] = {}
        self._by_fd: Dict[int, _Link] = {}
        self._masks: Dict[int, int] = {}
        self._next_link = 0
        self._blackholed = False
        self._delay_s = 0.0
        self._state = STATE_NEW
        self._counts = {"accepted": 0, "refused": 0, "cut": 0, "closed": 0,
                        "connect_failures": 0, "bytes_to_target": 0, "bytes_to_client": 0}

    # -- lifecycle ---------------------------------------------------------------
    def __enter__(self) -> "Nemesis":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> "Nemesis":
        """Bind, listen and start the proxy's thread; :attr:`port` is set on return."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("a Nemesis starts once")
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind((self.listen_host, self.listen_port))
                listener.listen(LISTEN_BACKLOG)
                listener.setblocking(False)
                wake_r, wake_w = socket.socketpair()
            except BaseException:
                listener.close()
                raise
            wake_r.setblocking(False)
            wake_w.setblocking(False)
            self._listener, self._wake_r, self._wake_w = listener, wake_r, wake_w
            self.port = listener.getsockname()[1]
            self._sel = selectors.DefaultSelector()
            self._sel.register(listener, selectors.EVENT_READ, "accept")
            self._sel.register(wake_r, selectors.EVENT_READ, "wake")
            self._state = STATE_FORWARDING
            self._running = True
            self._thread = threading.Thread(target=self._loop, daemon=True,
                                            name=f"sente-lite-nemesis-{self.port}")
            self._thread.start()
        log.info("nemesis on %s:%d -> %s:%d", self.listen_host, self.port, *self.target)
        return self

    def stop(self) -> None:
        """End the thread and close every socket (links are reset). Idempotent."""
        with self._lock:
            thread = self._thread
            if thread is None or not self._running and not thread.is_alive():
                self._state = STATE_STOPPED
                return
            self._running = False
        self._wake()
        thread.join(STOP_TIMEOUT_S)
        if thread.is_alive():
            raise RuntimeError(f"nemesis thread did not end within {STOP_TIMEOUT_S}s")

    @property
    def url(self) -> str:
        """``ws://<listen_host>:<port>/chsk``: a sente_lite client's URL through the proxy."""
        return f"ws://{self.listen_host}:{self.port}/chsk"

    # -- commands ----------------------------------------------------------------
    def cut(self) -> int:
        """Reset every current link on both sides at once; returns how many were cut.

        New connections keep being accepted (and forwarded, unless blackholed)."""
        return self._call(self._do_cut)

    def blackhole(self) -> None:
        """Stop forwarding in both directions without closing anything (a partition)."""
        self._call(self._do_blackhole)

    def heal(self) -> None:
        """End a partition and remove the delay: every held byte goes on at once, in
        order (chunks waiting for a delay too)."""
        self._call(self._do_heal)

    def delay(self, ms: float) -> None:
        """Add ``ms`` of latency to every chunk read from now on (0 removes it).

        Chunks read before keep their due time (or an earlier one: see :meth:`heal`)."""
        ms = float(ms)
        if not 0 <= ms <= MAX_DELAY_MS:
            raise ValueError(f"delay must be 0..{MAX_DELAY_MS} ms, not {ms}")
        self._call(lambda: self._set_delay(ms / 1000.0))

    def stats(self) -> Dict[str, Any]:
        """``accepted``, ``active``, ``cut``, ``bytes_to_target``, ``bytes_to_client``,
        ``held_bytes``, ``state``, ``delay_ms`` and more counters."""
        if self._thread is not None and self._thread.is_alive():
            try:
                return self._call(self._snapshot)
            except RuntimeError:  # ended meanwhile
                pass
        return self._snapshot()

    def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the proxy's thread and return its result."""
        thread = self._thread
        if thread is None or not self._running or not thread.is_alive():
            raise RuntimeError("the nemesis is not running")
        if threading.current_thread() is thread:
            return fn()
        fut: "Future[T]" = Future()
        self._commands.put((fn, fut))
        self._wake()
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        while True:
            try:
                return fut.result(min(COMMAND_POLL_S, max(0.0, deadline - time.monotonic())))
            except FutureTimeout:
                if not thread.is_alive():  # it ended after taking the command queue's rest
                    raise RuntimeError("the nemesis stopped") from None
                if time.monotonic() >= deadline:
                    raise RuntimeError(f"the nemesis thread did not answer within "
                                       f"{COMMAND_TIMEOUT_S}s") from None

    def _wake(self) -> None:
        try:
            assert self._wake_w is not None
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass  # full: a wake-up is pending anyway; closed: the thread is gone

    # -- command bodies (proxy thread) -------------------------------------------
    def _do_cut(self) -> int:
        links = list(self._links.values())
        for link in links:
            self._close_link(link, abort=True)
        self._counts["cut"] += len(links)
        log.info("nemesis: cut %d connection(s)", len(links))
        return len(links)

    def _do_blackhole(self) -> None:
        self._blackholed = True
        self._state = STATE_BLACKHOLE
        log.info("nemesis: blackhole (%d connection(s) held)", len(self._links))

    def _do_heal(self) -> None:
        self._blackholed = False
        self._delay_s = 0.0
        self._state = STATE_FORWARDING
        for link in list(self._links.values()):
            for d in (link.up, link.down):  # what was delayed is due now, in order
                for item in d.queue:
                    item[0] = 0.0
            if link.state == "held":
                self._connect_target(link)
        log.info("nemesis: healed (%d connection(s))", len(self._links))

    def _set_delay(self, seconds: float) -> None:
        self._delay_s = seconds
        log.info("nemesis: delay %.0f ms", seconds * 1000)

    def _snapshot(self) -> Dict[str, Any]:
        held = sum(link.up.held + link.down.held for link in list(self._links.values()))
        return {**self._counts, "active": len(self._links), "held_bytes": held,
                "state": self._state, "delay_ms": round(self._delay_s * 1000, 3),
                "port": self.port}

    # -- the proxy's thread ----------------------------------------------------------
    def _loop(self) -> None:
        assert self._sel is not None
        try:
            while self._running:
                for key, mask in self._sel.select(self._timeout()):
                    tag = key.data
                    if tag == "wake":
                        self._drain_wake()
                    elif tag == "accept":
                        self._accept()
                    else:
                        link = self._by_fd.get(key.fd)
                        if link is not None and link.n in self._links:
                            self._on_ready(link, key.fileobj, mask)  # type: ignore[arg-type]
                self._run_commands()
                now = time.monotonic()
                for link in list(self._links.values()):
                    self._pump(link, now)
        except Exception:  # noqa: BLE001 - logged; stop() and every command then fail cleanly
            log.exception("nemesis thread failed")
        finally:
            self._running = False
            self._shutdown()

    def _timeout(self) -> float:
        """Seconds until the next delayed chunk is due (IDLE_WAIT_S at most).

        A chunk already due is not counted: the last pump left it because its
        socket would block, and the socket's write readiness wakes the loop."""
        if self._blackholed:
            return IDLE_WAIT_S
        now = time.monotonic()
        wait = IDLE_WAIT_S
        for link in self._links.values():
            for d in (link.up, link.down):
                if d.queue and d.queue[0][0] > now:
                    wait = min(wait, d.queue[0][0] - now)
        return wait

    def _drain_wake(self) -> None:
        assert self._wake_r is not None
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _run_commands(self) -> None:
        while True:
            try:
                fn, fut = self._commands.get_nowait()
            except queue.Empty:
                return
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                fut.set_exception(exc)

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. EMFILE: leave it in the backlog, try again later
                log.warning("nemesis: accept failed: %s", exc)
                return
            if len(self._links) >= MAX_LINKS:
                self._counts["refused"] += 1
                log.warning("nemesis: %d links open, connection refused", MAX_LINKS)
                _abort(sock)
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._next_link += 1
            link = _Link(self._next_link, sock)
            self._links[link.n] = link
            self._by_fd[sock.fileno()] = link
            self._counts["accepted"] += 1
            if not self._blackholed:
                self._connect_target(link)

    def _connect_target(self, link: _Link) -> None:
        try:
            target = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError as exc:  # out of descriptors
            self._connect_failed(link, exc.errno or 0)
            return
        target.setblocking(False)
        target.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link.target = target
        self._by_fd[target.fileno()] = link
        link.state = "connecting"
        err = target.connect_ex(self.target)
        if err == 0:
            link.state = "open"
        elif err not in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
            self._connect_failed(link, err)

    def _connect_failed(self, link: _Link, err: int) -> None:
        self._counts["connect_failures"] += 1
        log.info("nemesis: connect to %s:%d failed: %s", *self.target, errno.errorcode.get(err, err))
        self._close_link(link, abort=True)

    def _on_ready(self, link: _Link, sock: socket.socket, mask: int) -> None:
        if sock is link.target and link.state == "connecting":
            if mask & selectors.EVENT_WRITE:
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    self._connect_failed(link, err)
                else:
                    link.state = "open"
            return
        if link.state == "open" and mask & selectors.EVENT_READ and not self._blackholed:
            d = link.up if sock is link.client else link.down
            self._read(link, sock, d)

    def _read(self, link: _Link, sock: socket.socket, d: _Direction) -> None:
        room = MAX_HELD_BYTES - d.held
        if room <= 0 or d.eof_read:
            return
        try:
            data = sock.recv(min(READ_CHUNK_BYTES, room))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # reset by that end: reset the other end too
            log.debug("nemesis: link %d %s read failed: %s", link.n, d.name, exc)
            self._close_link(link, abort=True)
            return
        due = max(time.monotonic() + self._delay_s, d.last_due())
        if data:
            d.queue.append([due, memoryview(data)])
            d.held += len(data)
        else:
            d.eof_read = True
            d.queue.append([due, _EOF])

    def _pump(self, link: _Link, now: float) -> None:
        """Write what is due on both directions; close a finished link; set interests."""
        if link.state == "open" and not self._blackholed:
            for d, dst, counter in ((link.up, link.target, "bytes_to_target"),
                                    (link.down, link.client, "bytes_to_client")):
                assert dst is not None
                if not self._flush(link, d, dst, counter, now):
                    return  # the link was closed
            if link.up.eof_sent and link.down.eof_sent:
                self._close_link(link, abort=False)
                return
        self._set_interest(link)

    def _flush(self, link: _Link, d: _Direction, dst: socket.socket, counter: str,
               now: float) -> bool:
        """Write the due head of ``d`` to ``dst``; False when the link was closed."""
        q = d.queue
        while q and q[0][0] <= now:
            chunk = q[0][1]
            if chunk is _EOF:
                q.popleft()
                d.eof_sent = True
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                continue
            try:
                sent = dst.send(chunk)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as exc:
                log.debug("nemesis: link %d %s write failed: %s", link.n, d.name, exc)
                self._close_link(link, abort=True)
                return False
            self._counts[counter] += sent
            d.held -= sent
            if sent < len(chunk):
                q[0][1] = chunk[sent:]
                return True
            q.popleft()
        return True

    def _set_interest(self, link: _Link) -> None:
        assert self._sel is not None
        now = time.monotonic()
        for sock in link.sockets():
            mask = 0
            if sock is link.target and link.state == "connecting":
                mask = selectors.EVENT_WRITE
            elif link.state == "open" and not self._blackholed:
                src, out = (link.up, link.down) if sock is link.client else (link.down, link.up)
                if not src.eof_read and src.held < MAX_HELD_BYTES:
                    mask |= selectors.EVENT_READ
                if out.queue and out.queue[0][0] <= now:  # due but not written: blocked
                    mask |= selectors.EVENT_WRITE
            fd = sock.fileno()
            old = self._masks.get(fd, 0)
            if mask == old:
                continue
            if not old:
                self._sel.register(sock, mask, "link")
            elif not mask:
                self._sel.unregister(sock)
            else:
                self._sel.modify(sock, mask, "link")
            if mask:
                self._masks[fd] = mask
            else:
                self._masks.pop(fd, None)

    def _close_link(self, link: _Link, abort: bool) -> None:
        if self._links.pop(link.n, None) is None:
            return
        for sock in link.sockets():
            fd = sock.fileno()
            self._by_fd.pop(fd, None)
            if self._masks.pop(fd, None) and self._sel is not None:
                try:
                    self._sel.unregister(sock)
                except (KeyError, ValueError):
                    pass
            if abort:
                _abort(sock)
            else:
                sock.close()
        if not abort:
            self._counts["closed"] += 1

    def _shutdown(self) -> None:
        """Close everything (on the proxy's thread as it ends); fail queued commands."""
        for link in list(self._links.values()):
            self._close_link(link, abort=True)
        for sock in (self._listener, self._wake_r, self._wake_w):
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass
        if self._sel is not None:
            self._sel.close()
        self._state = STATE_STOPPED
        while True:
            try:
                _, fut = self._commands.get_nowait()
            except queue.Empty:
                break
            if fut.set_running_or_notify_cancel():
                fut.set_exception(RuntimeError("the nemesis stopped"))
        log.info("nemesis on port %s stopped (%s)", self.port, self._counts)


__all__ = ["Nemesis", "MAX_HELD_BYTES", "READ_CHUNK_BYTES", "MAX_LINKS", "MAX_DELAY_MS",
           "COMMAND_TIMEOUT_S", "COMMAND_POLL_S", "STOP_TIMEOUT_S", "LISTEN_BACKLOG", "IDLE_WAIT_S",
           "STATE_NEW", "STATE_FORWARDING", "STATE_BLACKHOLE", "STATE_STOPPED"]

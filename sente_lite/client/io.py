"""The client's I/O: connecting and reading (:class:`Connector`), and the two
threads' roles (:class:`Roles`). Protocol rules are in the client's session
(:class:`sente_lite.session.ClientSession`); the public API in :mod:`sente_lite.client`.
"""

from __future__ import annotations

import collections
import logging
import socket
import struct
import threading
import time
import ssl
from typing import Any, Callable, Deque, Dict, Generator, List, Optional, Protocol, Tuple

import websocket  # websocket-client

from ..wire import protocol as p
from ..wire.framing import OP_BINARY as _OP_BINARY, OP_CLOSE as _OP_CLOSE, OP_PING as _OP_PING
from ..wire.framing import OP_TEXT as _OP_TEXT, SocketFrameReader
from .. import session as ss
from ..session import CONNECTED, backoff_delay  # noqa: F401 (backoff_delay: public here)
from ..errors import ClientClosed, ConnectRefused, SendQueueFull
from ..logsafe import redact_target, safe
from ..wire.token_expiry import TokenSourceRefused



class ClientPort(Protocol):
    """What the I/O parts use of the :class:`~sente_lite.Client` that owns them (declared
    here so that this module imports nothing above it)."""

    urls: Tuple[str, ...]
    url: str
    client_id: str
    auto_reconnect: bool
    token: Any
    backoff_base: float
    backoff_max: float
    connect_timeout: float
    headers: Dict[str, str]
    origin: Optional[str]
    ssl_context: Optional[ssl.SSLContext]
    read_coalesce_ms: float
    csrf_token: Optional[str]
    refusal: Optional[ConnectRefused]
    batch: bool
    max_handler_queue: int
    _session: ss.ClientSession
    _csrf_source: Optional[Callable[[], str]]
    _out_due: float
    _handlers: Dict[str, List[Any]]
    _subs: Dict[str, Any]
    _send_lock: Any
    _ws: Optional[websocket.WebSocket]
    _stop: threading.Event
    _counts: Dict[str, int]

    @property
    def _status(self) -> str: ...
    def _apply(self, on: str) -> None: ...
    def _fail_requests(self, exc: BaseException) -> None: ...
    def _on_frames(self, messages: List[Tuple[int, bytes]], tasks: List[tuple], now: float) -> bool: ...
    def _send_frame(self, frame: bytes, cb_id: Optional[str]) -> None: ...
    def _write(self, frame: bytes, cb_id: Optional[str], now: bool = False) -> bool: ...
    def _flush_if_due(self) -> None: ...
    def _connect_token(self) -> Optional[str]: ...
    def _refresh_if_due(self, connected: bool) -> None: ...
    def _sub_refresh_if_due(self, connected: bool) -> None: ...

log = logging.getLogger("sente_lite.client")

#: A handler that runs this long on the thread that was reading makes the other
#: thread take over reading (so pings are answered and replies arrive meanwhile).
HANDLER_HANDOFF_S = 0.05
#: How often the waiting thread checks the server's liveness.
_IDLE_TICK_S = 0.1
#: Least time between two checks of liveness, request deadlines and due resends: a
#: check walks every request and unacknowledged publish, so a busy connection does not
#: make one per read (measured: about 11 us each, near a tenth of the CPU of a client
#: reading 2,000 messages a second). Half the idle tick, so every quiet tick checks.
LIVENESS_EVERY_S = _IDLE_TICK_S / 2
_READ, _RUN = "read", "run"
#: A frame at least this big cut by a read has its rest read at once, without the
#: ``read_coalesce_ms`` wait (which batches a stream of small frames: one of those cut
#: at the end of a read waits with the next ones, as coalescing means).
COALESCE_BYPASS_BYTES = 16 * 1024


class _Latch:
    """A flag one thread waits on with a timeout and another sets: what
    ``threading.Event`` does, at one lock acquire per wait (``Event.wait`` runs a
    condition's Python code, and the reader waits once per read)."""

    __slots__ = ("_unset",)

    def __init__(self) -> None:
        self._unset = threading.Lock()  # held while the flag is not set
        self._unset.acquire()

    def set(self) -> None:
        try:
            self._unset.release()
        except RuntimeError:  # already set
            pass

    def wait_and_clear(self, timeout: float) -> None:
        """Return when set, or after ``timeout`` seconds (at once when it is not positive);
        the flag is clear after."""
        self._unset.acquire(True, timeout if timeout > 0 else 0)


def _FrameReader(sock: socket.socket) -> SocketFrameReader:
    """A reader of the server's frames that raises websocket-client's exceptions."""
    return SocketFrameReader(sock, websocket.WebSocketProtocolException,
                             websocket.WebSocketConnectionClosedException)


class Connector:
    """Connects, reads and reconnects for one client (the reading role's work)."""

    def __init__(self, client: ClientPort) -> None:
        self._c = client
        # of the connection being read (one at a time)
        self._close_code: Optional[int] = None  # the code of the server's close frame
        self._handshaken = False  # a handshake came on it
        self._read_now = _Latch()  # set: skip the next coalescing wait

    def read_now(self) -> None:
        """A caller blocks on a reply: do not hold the next read for ``read_coalesce_ms``
        (coalescing batches a stream of messages; a request's round trip pays no wait)."""
        self._read_now.set()

    def _connect_url(self) -> str:
        """The URL of one upgrade (:func:`sente_lite.session.upgrade_url`): the client-id and
        CSRF token in the query; the credential goes in a header (:meth:`_connect_headers`)."""
        c = self._c
        csrf = c._csrf_source() if c._csrf_source is not None else c.csrf_token
        return ss.upgrade_url(c.url, c.client_id, c._session.packer.name, c.batch, csrf,
                              c.token is not None)

    def _connect_headers(self) -> Dict[str, str]:
        """The headers of one upgrade: ``headers``, plus ``Authorization: Bearer <token>``
        when there is a token (evaluated now when ``token`` is a callable; one that raises
        or gives none raises :class:`TokenSourceRefused`)."""
        return ss.upgrade_headers(self._c.headers, self._c._connect_token())

    def connections(self) -> Generator[List[tuple], None, None]:
        """The reading role: connect, read, reconnect with backoff until stopped or
        refused. Yields each read's handler tasks. Advanced by one thread at a time."""
        c = self._c
        attempt = 0
        try:
            while not c._stop.is_set():
                ws = self._open()
                if ws is not None:
                    attempt = yield from self._read(ws, attempt)
                if c._stop.is_set() or c.refusal is not None:
                    break
                if not c.auto_reconnect:
                    break
                if len(c.urls) > 1:  # failover: the next server, round-robin
                    c.url = c.urls[(c.urls.index(c.url) + 1) % len(c.urls)]
                c._apply(ss.ON_LOST)
                delay = backoff_delay(attempt, c.backoff_base, c.backoff_max)
                attempt += 1
                c._counts["reconnect_attempts"] += 1
                if c._stop.wait(delay):
                    break
        except Exception:  # pragma: no cover - a bug; do not leave callers hanging
            log.exception("client reader failed")
        finally:
            c._fail_requests(c.refusal or ClientClosed("client closed"))
            c._stop.set()  # ended by itself (refused, or no auto_reconnect) or by close()
            c._apply(ss.ON_GIVE_UP)

    def _open(self) -> Optional[websocket.WebSocket]:
        c = self._c
        try:
            url = self._connect_url()
            try:
                headers = self._connect_headers()
            except TokenSourceRefused as exc:
                c.refusal = ConnectRefused(str(exc))
                log.warning("%s: the client stops", exc)
                return None
            if any(c in v for v in headers.values() for c in "\r\n"):
                c.refusal = ConnectRefused("a header value (or the token) holds a line break: "
                                              "not sent")
                log.warning("%s", c.refusal)
                return None
            ws = websocket.create_connection(
                url, timeout=c.connect_timeout, header=headers,
                origin=c.origin, suppress_origin=c.origin is None,
                skip_utf8_validation=True, enable_multithread=True,
                sockopt=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
                sslopt={"context": c.ssl_context} if c.ssl_context is not None else None,
            )
        except websocket.WebSocketBadStatusException as exc:
            status = exc.status_code
            body = (exc.resp_body or b"").decode("utf-8", "replace").strip()
            if status in (400, 401, 403, 404):
                c.refusal = ConnectRefused(f"server refused the connection: HTTP {status} {body}",
                                              status=status)
                log.warning("%s", safe(c.refusal))
            else:
                log.info("connect refused with HTTP %s (%s), will retry", status, safe(body))
            c._counts["connect_failures"] += 1
            return None
        except Exception as exc:
            log.debug("connect to %s failed: %s", redact_target(c.url), safe(exc))
            c._counts["connect_failures"] += 1
            return None
        ws.settimeout(None)
        return ws

    def _read(self, ws: websocket.WebSocket, attempt: int) -> Generator[List[tuple], None, int]:
        """Read frames until the socket ends, yielding each read's handler tasks.
        Returns the next backoff attempt number (0 once a handshake came)."""
        c = self._c
        self._opened(ws)
        self._close_code = None
        self._handshaken = False
        reader = _FrameReader(ws.sock)
        counts = c._counts
        coalesce = c.read_coalesce_ms / 1000.0
        read_now = self._read_now
        next_read = 0.0
        try:
            while self._close_code is None:
                # the rest of a big frame cut by the last read: read it now, not after a wait
                wait = 0.0
                if coalesce and reader.cut_frame_bytes < COALESCE_BYPASS_BYTES:
                    wait = next_read - time.monotonic()  # > 0: the last read was closer
                read_now.wait_and_clear(wait)  # ended early by a caller awaiting a reply
                messages = reader.read()  # every whole message of one recv(), in order
                now = time.monotonic()
                next_read = now + coalesce
                counts["reads"] += 1
                tasks: List[tuple] = []  # this read's handler tasks, handed over at once
                failed: Optional[BaseException] = None
                try:
                    self._take(ws, messages, tasks, now)
                except (OSError, websocket.WebSocketException) as exc:
                    failed = exc
                if tasks:
                    yield tasks  # messages already read are handled even if the socket failed
                if failed is not None:
                    raise failed
        except (OSError, websocket.WebSocketException, ValueError) as exc:
            log.debug("connection lost: %s", safe(exc))
        finally:
            self._lost(ws)
        if self._close_code == p.CLOSE_POLICY:
            c.refusal = ConnectRefused("server closed the connection with 1008 (policy)",
                                       close_code=self._close_code)
            log.warning("%s", c.refusal)
        return 0 if self._handshaken else attempt

    def _take(self, ws: websocket.WebSocket, messages: List[Tuple[int, bytes]],
              tasks: List[tuple], now: float) -> None:
        """Act on the messages of one read, in order: data frames to the client (their
        handler work to ``tasks``), pings answered, a close answered and kept in
        ``_close_code`` (then the rest is not read)."""
        c = self._c
        first = 0  # messages[first:i] are data frames not handled yet
        for i, (opcode, payload) in enumerate(messages):
            if opcode == _OP_TEXT or opcode == _OP_BINARY:
                continue
            if i > first:  # the data frames before a control frame are handled before it
                self._data(messages[first:i], tasks, now)
            first = i + 1
            if opcode == _OP_PING:
                ws.pong(payload)
            elif opcode == _OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                self._close_code = code
                c._counts[f"closed_by_server_{code}"] += 1
                try:
                    ws.send_close()  # answer the closing handshake, as websocket-client does
                except (OSError, websocket.WebSocketException):
                    pass
                return
        if first == 0:
            self._data(messages, tasks, now)
        elif first < len(messages):
            self._data(messages[first:], tasks, now)

    def _data(self, data: List[Tuple[int, bytes]], tasks: List[tuple], now: float) -> None:
        """Data frames, ``(opcode, payload)``, to the client in one go (one lock)."""
        if data:
            c = self._c
            c._counts["frames_in"] += len(data)
            if c._on_frames(data, tasks, now):
                self._handshaken = True

    def _opened(self, ws: websocket.WebSocket) -> None:
        """``ws`` is the client's socket now (aborted at once when the client is closing)."""
        c = self._c
        with c._send_lock:
            c._ws = ws
            c._session.connection_opened(time.monotonic())
        if c._stop.is_set():
            ws.abort()

    def _lost(self, ws: websocket.WebSocket) -> None:
        """``ws`` ended: the session forgets it, its waiters fail, the status follows."""
        c = self._c
        with c._send_lock:
            c._ws = None
            was_connected = c._status == CONNECTED
            failed = c._session.connection_lost()
        if was_connected and not c._stop.is_set():  # close() sets CLOSED itself
            c._apply(ss.ON_LOST if c.auto_reconnect else ss.ON_GIVE_UP)
        try:
            ws.shutdown()
        except Exception:
            pass
        settle(failed)
        for sub in list(c._subs.values()):
            sub.acked.clear()


class Roles:
    """Who of the client's two threads reads and who runs handlers (see
    :mod:`sente_lite.client`). Handler tasks come in one list per socket read."""

    def __init__(self, client: ClientPort, connection: Generator[List[tuple], None, None],
                 read_now: Callable[[], None]) -> None:
        self._c = client
        self._read_now = read_now  # ends the reader's coalescing wait
        # Under ``_roles``: ``_reading`` while a thread advances ``_connection`` (the
        # reading role's generator); ``_running_since`` while one runs handlers, which
        # take their tasks from ``_tasks`` in order.
        self._roles_lock = threading.Lock()  # held for the state; _roles to wait on it
        self._roles = threading.Condition(self._roles_lock)
        self._tasks: Deque[List[tuple]] = collections.deque()
        self._tasks_in = 0
        self._tasks_out = 0
        self._reading = False
        self._running_since: Optional[float] = None
        self._runner: Optional[int] = None  # ident of the thread running handlers
        self._handoff = False  # the running handler waits for a reply: read now
        self._connection = connection
        self._connection_done = False
        self._next_check = 0.0  # time.monotonic() from which serve() checks liveness again

    @property
    def backlog(self) -> int:
        """Handler tasks waiting."""
        return self._tasks_in - self._tasks_out

    def wake_all(self) -> None:
        with self._roles_lock:
            self._roles.notify_all()

    def serve(self) -> None:
        """Body of both threads: take the reading or the running role, or wait."""
        c = self._c
        roles = self._roles
        stop = c._stop
        me = threading.get_ident()
        while True:
            batch: Optional[List[tuple]] = None
            role = ""
            with self._roles_lock:  # roles.wait() below needs it held
                while True:
                    now = time.monotonic()
                    stopping = stop.is_set()
                    running = self._running_since
                    if self._tasks and running is None and not stopping:
                        batch = self._tasks.popleft()
                        self._running_since, self._runner = now, me
                        role = _RUN
                        break
                    if not self._reading and not self._connection_done and (
                            running is None or stopping or self._handoff
                            or now - running >= HANDLER_HANDOFF_S):
                        self._reading, self._handoff = True, False
                        role = _READ
                        break
                    if stopping and (self._connection_done or self._reading):
                        return
                    wait = _IDLE_TICK_S
                    if running is not None and not self._reading:
                        wait = min(wait, max(0.001, running + HANDLER_HANDOFF_S - now))
                    if c._out_due:
                        wait = min(wait, max(0.0, c._out_due - now))
                    if wait <= 0.0 or not roles.wait(wait):
                        break  # a quiet tick: check the server's liveness, send a due batch
            if role == _READ:
                batch = self._read_once(me)
            if batch is not None:
                self._run_batches(batch)
            c._flush_if_due()
            now = time.monotonic()
            if now >= self._next_check:
                self._next_check = now + LIVENESS_EVERY_S
                self._check_liveness()

    def _read_once(self, me: int) -> Optional[List[tuple]]:
        """Advance the reading role by one read. Returns the tasks this thread runs
        now, when no handler is running; otherwise they wait in order."""
        c = self._c
        tasks: Optional[List[tuple]] = None
        done = False
        try:
            tasks = next(self._connection)
        except StopIteration:
            done = True
        except Exception:  # pragma: no cover - a bug; end the client rather than spin
            log.exception("client reading failed")
            done = True
            c._stop.set()
        with self._roles_lock:
            self._reading = False
            if done:
                self._connection_done = True
                self._roles.notify_all()
                return None
            if tasks:
                self._add_tasks(tasks)
            if self._tasks and self._running_since is None and not c._stop.is_set():
                self._running_since, self._runner = time.monotonic(), me
                return self._tasks.popleft()
            return None

    def _run_batches(self, batch: List[tuple]) -> None:
        """Run ``batch``, then every batch queued meanwhile, in order (the running role)."""
        c = self._c
        stop = c._stop
        while True:
            for task in batch:
                if stop.is_set():
                    break
                self._tasks_out += 1
                self._run_task(task)
            with self._roles_lock:
                if self._tasks and not stop.is_set():
                    batch = self._tasks.popleft()
                    continue
                self._running_since = self._runner = None
                if stop.is_set():
                    self._roles.notify_all()  # the other thread may wait for this to end
                return

    def _add_tasks(self, tasks: List[tuple]) -> None:
        """Queue one read's tasks (caller holds ``_roles``). Tasks beyond
        ``max_handler_queue`` waiting ones are dropped, counted and logged."""
        c = self._c
        room = c.max_handler_queue - (self._tasks_in - self._tasks_out)
        if len(tasks) > room:
            dropped = tasks[max(room, 0):]
            tasks = tasks[:max(room, 0)]
            c._counts["handler_queue_overflows"] += len(dropped)
            log.error("handler queue full (max_handler_queue=%d): dropped %d (%s)",
                      c.max_handler_queue, len(dropped),
                      ", ".join(sorted({t[0] for t in dropped})))
            if not tasks:
                return
        self._tasks.append(tasks)
        self._tasks_in += len(tasks)

    def hand_off_reading(self) -> None:
        """Called before blocking on the reader (a reply, a subscribe answer): when
        the caller is a handler, wake the other thread to read meanwhile. Either way the
        next read is not held back to coalesce."""
        self._read_now()
        if self._runner == threading.get_ident():
            with self._roles_lock:
                self._handoff = True
                self._roles.notify()

    def _check_liveness(self) -> None:
        c = self._c
        now = time.monotonic()
        with c._send_lock:
            late = c._session.expire(now)
            if c._status == CONNECTED and c._ws is not None:
                for cb_id, frame in c._session.due_resends(now):  # outcome-unknown: same id
                    if not c._write(frame, cb_id):
                        break
                    c._counts["publishes_resent"] += 1
            if c._status != CONNECTED or not c._session.dead(now):
                ws = None
            else:
                ws = c._ws
                silent = now - c._session.last_recv
                c._session.last_recv = now
        settle(late)
        c._refresh_if_due(c._status == CONNECTED)
        c._sub_refresh_if_due(c._status == CONNECTED)
        if ws is not None:
            c._counts["dead_server_detections"] += 1
            log.warning("server silent for %.1fs: dropping the connection", silent)
            ws.abort()

    def _run_task(self, task: tuple) -> None:
        c = self._c
        kind = task[0]
        if kind == "channel" or kind == "recovery":
            _, handlers, msg = task
            for fn in list(handlers):
                try:
                    fn(msg)
                except Exception:
                    c._counts["handler_errors"] += 1
                    log.exception("%s handler for %r raised", kind, msg.channel_id)
            return
        _, event, data, cb_id = task
        session = c._session
        handlers = list(c._handlers.get(event, ()))
        if not handlers:
            self._send_all(session.no_handler(event, cb_id))
            return
        result: Any = None
        for i, fn in enumerate(handlers):
            try:
                value = fn(data)
            except Exception as exc:
                log.exception("handler for %s raised", event)
                self._send_all(session.handler_failed(event, cb_id if i == 0 else None, exc))
                if i == 0:
                    cb_id = None
                continue
            if i == 0:
                result = value
        if cb_id is not None:
            self._try_send(session.reply(event, cb_id, result))

    def _send_all(self, frames: List[bytes]) -> None:
        for frame in frames:
            self._try_send(frame)

    def _try_send(self, frame: bytes) -> None:
        c = self._c
        try:
            c._send_frame(frame, None)
        except (SendQueueFull, ClientClosed) as exc:
            log.warning("reply dropped: %s", safe(exc))


def settle(failed: List[Any]) -> None:
    """Fail each ``(waiter, exception)``."""
    for waiter, exc in failed:
        ss.resolve(waiter, None, exc)

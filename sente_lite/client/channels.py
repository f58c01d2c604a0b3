"""The client's channel API (subscribe, publish, recovery) and its handling of
frames from the server, as parts of :class:`sente_lite.Client`.

The rules (offsets, ``since``, the publish outbox) are the session's
(:class:`sente_lite.session.ClientSession`); these methods hold the client's
send lock, move frames and wake whoever waits.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from ..wire import protocol as p
from .. import session as ss
from ..wire import tracing
from ..wire.framing import OP_BINARY
from ..wire.channels import Since
from ..errors import ClientClosed, LimitExceeded, RequestTimeout, SendQueueFull
from ..logsafe import safe
from ..session import CONNECTED, NOT_CHANNEL_MSG, ChannelMessage, Recovery
from ..wire.sub_token_plan import RefusedHandler, TokenSource, check_source


log = logging.getLogger("sente_lite.client")

ChannelHandler = Callable[[ChannelMessage], None]
RecoveryHandler = Callable[[Recovery], None]
DEFAULT_REQUEST_TIMEOUT_S = 5.0
#: Default of ``Client(publish_block_s=)``: how long a publish waits for room in a full outbox.
DEFAULT_PUBLISH_BLOCK_S = 5.0
#: A publish waiting for room looks again at least this often (close(), the deadline).
OUTBOX_POLL_S = 0.1


@dataclass
class _Sub:
    handlers: List[ChannelHandler] = field(default_factory=list)
    on_join: List[Callable[[Any], Any]] = field(default_factory=list)
    on_leave: List[Callable[[Any], Any]] = field(default_factory=list)
    acked: threading.Event = field(default_factory=threading.Event)
    reply: Optional[dict] = None
    error: Optional[BaseException] = None


class ChannelsMixin:
    """Channels of a :class:`~sente_lite.Client` (kept across reconnects)."""

    def on_recovery(self, fn: RecoveryHandler) -> RecoveryHandler:
        """Call ``fn(recovery)`` for the server's answer to every subscribe sent
        with ``since`` (each one after a reconnect), on the handler thread, before
        that channel's next message. ``recovery.recovered`` False means messages
        were lost for good (``recovery.reason``): reload the channel's state."""
        self._recovery_hooks.append(fn)
        return fn

    def subscribe(self, channel_id: str, handler: Optional[ChannelHandler] = None,
                  timeout: Optional[float] = DEFAULT_REQUEST_TIMEOUT_S, *,
                  since: Union[Since, Dict[str, Any], None] = None,
                  on_join: Optional[Callable[[ss.PresenceChange], Any]] = None,
                  on_leave: Optional[Callable[[ss.PresenceChange], Any]] = None,
                  token: Optional[TokenSource] = None,
                  on_token_refused: Optional[RefusedHandler] = None) -> Optional[dict]:
        """Subscribe to ``channel_id``; kept across reconnects until unsubscribe.

        ``handler(msg: ChannelMessage)`` runs for each delivery. With a ``timeout``
        this waits for the server's answer and returns it (``channel-id``,
        ``offset``, ``epoch``, and ``recovered`` when ``since`` was sent); with None
        it returns at once. ``since`` (``{"offset": N, "epoch": E}``, e.g. a stored
        :meth:`position`) asks the server to replay every message after it first;
        the answer goes to :meth:`on_recovery` handlers too. ``on_join(change)`` /
        ``on_leave(change)`` run, in order with its messages, when a member joins or
        leaves the channel (its namespace has ``join_leave``; :class:`~sente_lite.session.PresenceChange`).
        ``token``: the channel's subscription token (a str, or a callable giving a fresh
        one at each subscribe and ahead of its expiry); ``on_token_refused(channel_id,
        error)``: see :mod:`sente_lite.client.sub_tokens`.
        """
        problem = p.channel_id_problem(channel_id)
        if problem:
            raise ValueError(problem)
        start: Optional[Since] = None
        if since is not None:
            start = ss.parse_since(since)
            if start is None:
                raise ValueError(f"since must be {{'offset': int >= 0, 'epoch': str}}, got {since!r}")
        if token is not None:
            check_source(token)
        with self._send_lock:
            if token is not None:
                self._sub_plans.add(channel_id, token, on_token_refused)
            sub = self._subs.get(channel_id)
            new = sub is None
            if sub is None:
                sub = self._subs[channel_id] = _Sub()
                self._session.add_subscription(channel_id, start)
            if handler is not None:
                sub.handlers.append(handler)
            if on_join is not None:
                sub.on_join.append(on_join)
            if on_leave is not None:
                sub.on_leave.append(on_leave)
            if new and self._status == CONNECTED:
                self._send_subscribe(channel_id, sub)
        if timeout is None:
            return None
        self._roles.hand_off_reading()
        if not sub.acked.wait(timeout):
            raise RequestTimeout(f"subscribe to {channel_id!r} not answered within {timeout}s")
        if sub.error is not None:
            raise sub.error
        return sub.reply

    def _send_subscribe(self, channel_id: str, sub: _Sub) -> None:
        """Send the subscribe of ``channel_id`` (with ``since`` when a position is
        known). Caller holds ``_send_lock``; the answer is handled by the reader."""
        sub.acked.clear()
        sub.error = None
        cb_id, frame = self._session.subscribe_frame(channel_id, None, time.monotonic(),
                                                     self.request_timeout,
                                                     self._sub_token(channel_id))
        self._send_frame(frame, cb_id)

    def position(self, channel_id: str) -> Optional[Dict[str, Any]]:
        """``{"offset", "epoch"}`` of the last message seen on ``channel_id`` (store it;
        pass it as ``since`` to resume there), or None before any."""
        with self._send_lock:
            at = self._session.position(channel_id)
        return None if at is None else {p.K_OFFSET: at.offset, p.K_EPOCH: at.epoch}

    def unsubscribe(self, channel_id: str, timeout: Optional[float] = DEFAULT_REQUEST_TIMEOUT_S) -> None:
        """Stop receiving ``channel_id``; with a ``timeout``, wait for the server's answer."""
        with self._send_lock:
            sub = self._subs.pop(channel_id, None)
            self._session.drop_subscription(channel_id)
            self._sub_plans.drop(channel_id)
            if sub is None or self._status != CONNECTED:
                return
            cb_id, fut = self._start_request(p.EV_UNSUBSCRIBE, {p.K_CHANNEL: channel_id})
        if timeout is not None:
            self._roles.hand_off_reading()
            try:
                fut.result(timeout)
            except concurrent.futures.TimeoutError:
                raise RequestTimeout(f"unsubscribe from {channel_id!r} not answered") from None
            finally:
                with self._send_lock:
                    self._session.forget(cb_id)

    def subscriptions(self) -> List[str]:
        """The channels this client holds (resubscribed after every reconnect)."""
        return sorted(self._subs)

    def publish(self, channel_id: str, data: Any = None, *, ack: bool = False,
                exclude_sender: bool = False, timeout: Optional[float] = None,
                traceparent: Optional[str] = None, block_s: Optional[float] = None) -> Optional[dict]:
        """Publish on ``channel_id``. With ``ack`` wait for the acknowledgement
        (``channel-id``, ``offset``, ``delivered``; ``duplicate`` when an earlier
        send of it had landed) and return it.

        Each publish carries an id (``<random>:<n>``, unguessable) and is kept until
        the server acknowledges it, which means it is in the channel (and its history);
        if the connection drops first it is sent again, same id, after the
        reconnect, and the server delivers it once. A publish answered
        ``outcome-unknown`` (the server's broker link failed with it in flight) is
        kept too and resent, same id, with backoff until it is answered for sure
        (``unavailable`` answers to those resends keep it waiting). At most
        ``max_unacked_publishes`` wait for their ack: one more waits up to
        ``block_s`` (default ``Client(publish_block_s=)``) for an ack to make room,
        then raises :class:`SendQueueFull`; 0 raises at once. ``traceparent`` (W3C) travels with the message to
        every subscriber and comes back in the acknowledgement. A publish the server refuses (``forbidden``, ...)
        raises :class:`RemoteError` with ``ack``; without, it is counted
        (``publish_errors``) and logged.
        """
        problem = p.channel_id_problem(channel_id)
        if problem:
            raise ValueError(problem)
        if traceparent is not None and tracing.valid(traceparent) is None:
            raise ValueError(f"traceparent must be a W3C version-00 traceparent, got {traceparent!r}")
        if self._stop.is_set():
            raise ClientClosed("client closed")
        fut: Optional["concurrent.futures.Future[Any]"] = concurrent.futures.Future() if ack else None
        wait_s = self.publish_block_s if block_s is None else block_s
        if not (isinstance(wait_s, (int, float)) and 0 <= wait_s < float("inf")):
            raise ValueError(f"block_s must be a number of seconds >= 0, got {block_s!r}")
        cb_id = self._publish_when_room(channel_id, data, exclude_sender, fut, traceparent, wait_s)
        if fut is None:
            return None
        timeout = self.request_timeout if timeout is None else timeout
        self._roles.hand_off_reading()
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            raise RequestTimeout(f"publish on {channel_id!r} not acknowledged within {timeout}s "
                                 "(it stays queued and is resent after a reconnect)") from None
        finally:
            with self._send_lock:
                self._session.forget(cb_id)

    def _publish_when_room(self, channel_id: str, data: Any, exclude_sender: bool,
                           fut: Optional["concurrent.futures.Future[Any]"],
                           traceparent: Optional[str], wait_s: float) -> str:
        """Put the publish in the session's outbox, waiting up to ``wait_s`` for room, and
        write it when connected (else it goes after the reconnect); its cb-id."""
        deadline = time.monotonic() + wait_s
        handed_off = False
        with self._send_lock:
            while True:
                try:
                    cb_id, frame = self._session.publish(channel_id, data, exclude_sender, fut,
                                                         time.monotonic(), traceparent)
                    break
                except LimitExceeded as exc:
                    left = deadline - time.monotonic()
                    if left <= 0 or self._stop.is_set():
                        waited = f" (waited {wait_s}s for an ack: is the server reachable?)" if wait_s else ""
                        raise SendQueueFull(f"{exc}{waited}") from None
                    if not handed_off:  # a handler blocking here: the other thread reads the acks
                        handed_off = True
                        self._send_lock.release()
                        try:
                            self._roles.hand_off_reading()
                        finally:
                            self._send_lock.acquire()
                        continue
                    self._outbox_room.wait(min(left, OUTBOX_POLL_S))
            if self._status == CONNECTED and self._ws is not None:
                self._write(frame, cb_id)  # on failure it is resent after the reconnect
        return cb_id

    def _on_subscribed(self, ev: ss.Subscribed, tasks: List[tuple]) -> None:
        sub = self._subs.get(ev.channel_id)
        if sub is None:
            return
        if ev.error is not None:
            sub.error = ev.error
            if self._subs.get(ev.channel_id) is sub:
                del self._subs[ev.channel_id]
            self._sub_token_refused(ev.channel_id, ev.error)
            log.warning("subscribe to %s refused: %s", safe(repr(ev.channel_id)), safe(ev.error))
        else:
            sub.reply = ev.reply
        if ev.recovery is not None and self._recovery_hooks:
            tasks.append(("recovery", self._recovery_hooks, ev.recovery))
        sub.acked.set()


class InboundMixin:
    """What a :class:`~sente_lite.Client` does with each frame it reads."""

    def _on_frames(self, messages: Sequence[Tuple[int, bytes]], tasks: List[tuple],
                   now: float) -> bool:
        """Handle the data frames of one read, ``(opcode, payload)`` each, in order, as
        they are read; handler work goes to ``tasks``. True when one was a handshake."""
        handshake = False
        session = self._session
        subs = self._subs
        with self._send_lock:
            for opcode, raw in messages:
                binary = opcode == OP_BINARY
                msg = session.channel_message(raw, now, binary)
                if msg is NOT_CHANNEL_MSG:
                    if self._on_received(session.receive(raw, now, binary), tasks):
                        handshake = True
                elif msg is not None:
                    sub = subs.get(msg.channel_id)
                    if sub is not None and sub.handlers:
                        tasks.append(("channel", sub.handlers, msg))
        return handshake

    def _on_received(self, received: ss.Received, tasks: List[tuple]) -> bool:
        """Act on what one frame produced (caller holds ``_send_lock``). True when it
        was a handshake."""
        for frame in received.frames:  # pongs: at once
            if self._ws is not None:
                self._write(frame, None, now=True)
        handshake = False
        for ev in received.events:
            kind = type(ev)
            if kind is ChannelMessage:
                sub = self._subs.get(ev.channel_id)
                if sub is not None and sub.handlers:
                    tasks.append(("channel", sub.handlers, ev))
            elif kind is ss.PresenceChange:
                sub = self._subs.get(ev.channel_id)
                moved = None if sub is None else sub.on_join if ev.joined else sub.on_leave
                if moved:
                    tasks.append(("channel", moved, ev))
            elif kind is ss.ReplyArrived or kind is ss.PublishAnswered:
                ss.resolve(ev.waiter, ev.reply if kind is ss.PublishAnswered else ev.result,
                         ev.error)
                if kind is ss.PublishAnswered:
                    self._outbox_room.notify_all()
            elif kind is ss.EventRequest:
                tasks.append(("event", ev.event, ev.data, ev.cb_id))
            elif kind is ss.Subscribed:
                self._on_subscribed(ev, tasks)
            elif kind is ss.ServerChannel:
                self._server_channel(ev, _Sub)
            elif kind is ss.Unsubscribed:
                self._sub_expired(ev.channel_id)
            elif kind is ss.Handshake:
                handshake = True
                self._on_handshake(ev)
            elif isinstance(ev, str):  # a status change
                with self._status_cond:
                    self._status_cond.notify_all()
                self._status_changed(ev)
        if handshake:
            self._after_handshake()
        return handshake

    def _on_handshake(self, hs: ss.Handshake) -> None:
        self.uid, self.csrf_token, self.handshake, self.first = (
            hs.uid, hs.csrf_token, hs.info, hs.first)
        self.conn_id = hs.info.get("conn-id")
        self.server_id = hs.info.get("server-id")
        self._plan_refresh(hs.info)

    def _after_handshake(self) -> None:
        """Renew every subscription (with ``since``), resend unacknowledged
        publishes, then the sends queued while disconnected. Caller holds ``_send_lock``."""
        for channel_id, sub in list(self._subs.items()):
            self._send_subscribe(channel_id, sub)
        for cb_id, frame in self._session.resend_unacked():
            if self._ws is None or not self._write(frame, cb_id):
                return
            self._counts["publishes_resent"] += 1
        while self._queued and self._ws is not None:
            frame, cb_id = self._queued[0]
            if cb_id is not None and not self._session.pending(cb_id):
                self._queued.popleft()  # its caller gave up (timeout)
                continue
            if not self._write(frame, cb_id):
                break
            self._queued.popleft()

    def _send_control(self, event: str) -> None:
        with self._send_lock:
            if self._ws is not None:
                self._write(self._session.packer.encode(event), None, now=True)

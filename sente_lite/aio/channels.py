"""The asyncio client's channel API: subscribe (a handler, or ``async for`` over a
subscription), unsubscribe, publish with ids and acknowledgements, positions and
recovery, as parts of :class:`sente_lite.aio.AsyncClient`.

The rules (offsets, ``since``, the publish outbox) are the session's
(:class:`~sente_lite.session.ClientSession`); these coroutines move frames and wake
whoever waits, on the client's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, List, Optional, Union

from .. import session as ss
from ..errors import ClientClosed, LimitExceeded, RequestTimeout, SendQueueFull
from ..logsafe import safe
from ..session import CONNECTED, ChannelMessage, Recovery
from ..wire import protocol as p
from ..wire import tracing
from ..wire.channels import Since
from ..wire.sub_token_plan import RefusedHandler, SubTokenPlans, TokenSource, check_source

log = logging.getLogger("sente_lite.client")

#: A channel handler: ``fn(msg)``, plain or ``async``.
ChannelHandler = Callable[[ChannelMessage], Any]
RecoveryHandler = Callable[[Recovery], Any]
#: Messages one ``subscription()`` iterator holds before it drops (and counts) more.
DEFAULT_SUBSCRIPTION_QUEUE = 10_000


@dataclass
class _Sub:
    handlers: List[ChannelHandler] = field(default_factory=list)
    on_join: List[Callable[[Any], Any]] = field(default_factory=list)
    on_leave: List[Callable[[Any], Any]] = field(default_factory=list)
    queues: List["asyncio.Queue[ChannelMessage]"] = field(default_factory=list)
    acked: asyncio.Event = field(default_factory=asyncio.Event)
    reply: Optional[dict] = None
    error: Optional[BaseException] = None


def _start(since: Union[Since, Dict[str, Any], None]) -> Optional[Since]:
    if since is None:
        return None
    start = ss.parse_since(since)
    if start is None:
        raise ValueError(f"since must be {{'offset': int >= 0, 'epoch': str}}, got {since!r}")
    return start


class ChannelsMixin:
    """Channels of an :class:`~sente_lite.aio.AsyncClient` (kept across reconnects)."""

    request_timeout: float
    publish_block_s: float
    _session: ss.ClientSession
    _subs: Dict[str, _Sub]
    _recovery_hooks: List[RecoveryHandler]
    _counts: Dict[str, int]
    _send_lock: asyncio.Lock
    _tasks: "asyncio.Queue[Optional[tuple]]"
    _outbox_room: asyncio.Event
    _closing: bool
    # subscription tokens (sub_tokens.py; a later base of AsyncClient, so not stubs here)
    _sub_plans: SubTokenPlans
    _sub_token: Callable[[str], Awaitable[Optional[str]]]
    _sub_token_refused: Callable[[str, BaseException], None]
    _sub_expired: Callable[[str, str], None]

    def on_recovery(self, fn: RecoveryHandler) -> RecoveryHandler:
        """Call ``fn(recovery)`` (plain or ``async``) for the server's answer to every
        subscribe sent with ``since``, before that channel's next message;
        ``recovered`` False: messages after ``since`` are lost for good."""
        self._recovery_hooks.append(fn)
        return fn

    async def subscribe(self, channel_id: str, handler: Optional[ChannelHandler] = None,
                        timeout: Optional[float] = ss.DEFAULT_HEARTBEAT_S, *,
                        since: Union[Since, Dict[str, Any], None] = None,
                        on_join: Optional[Callable[[ss.PresenceChange], Any]] = None,
                        on_leave: Optional[Callable[[ss.PresenceChange], Any]] = None,
                        token: Optional[TokenSource] = None,
                        on_token_refused: Optional[RefusedHandler] = None) -> Optional[dict]:
        """Subscribe to ``channel_id`` (kept across reconnects until :meth:`unsubscribe`);
        ``handler(msg)`` (plain or ``async``) runs for each message. With a ``timeout``
        await the server's answer and return it (``channel-id``, ``offset``, ``epoch``,
        ``recovered`` when ``since`` was sent); None returns at once. ``on_join(change)`` /
        ``on_leave(change)`` (plain or ``async``) run, in order with its messages, when a
        member joins or leaves (the namespace has ``join_leave``). ``token``: the channel's
        subscription token (a str, or a callable, plain or ``async``, giving a fresh one at
        each subscribe and ahead of its expiry); ``on_token_refused(channel_id, error)``:
        see :mod:`sente_lite.aio.sub_tokens`."""
        if token is not None:
            check_source(token)
            if p.channel_id_problem(channel_id) is None:
                self._sub_plans.add(channel_id, token, on_token_refused)
        sub = await self._hold(channel_id, _start(since))
        if handler is not None:
            sub.handlers.append(handler)
        if on_join is not None:
            sub.on_join.append(on_join)
        if on_leave is not None:
            sub.on_leave.append(on_leave)
        return await self._answer(channel_id, sub, timeout)

    async def subscription(self, channel_id: str, *, since: Union[Since, Dict[str, Any], None] = None,
                           timeout: Optional[float] = ss.DEFAULT_HEARTBEAT_S,
                           max_queue: int = DEFAULT_SUBSCRIPTION_QUEUE) -> AsyncIterator[ChannelMessage]:
        """``async for msg in c.subscription(ch):`` every message of ``channel_id`` from
        now on (subscribing first, or joining the subscription held). Leaving the loop
        stops this iterator only; the channel stays held (:meth:`unsubscribe` ends it).
        Past ``max_queue`` messages not taken yet, more are dropped
        (``subscription_overflows`` in :meth:`stats`)."""
        queue: "asyncio.Queue[ChannelMessage]" = asyncio.Queue(max_queue)
        sub = await self._hold(channel_id, _start(since))
        sub.queues.append(queue)
        try:
            await self._answer(channel_id, sub, timeout)
            while True:
                yield await queue.get()
        finally:
            if queue in sub.queues:
                sub.queues.remove(queue)

    async def _hold(self, channel_id: str, since: Optional[Since]) -> _Sub:
        problem = p.channel_id_problem(channel_id)
        if problem:
            raise ValueError(problem)
        sub = self._subs.get(channel_id)
        if sub is None:
            sub = self._subs[channel_id] = _Sub()
            self._session.add_subscription(channel_id, since)
            if self._session.status == CONNECTED:
                async with self._send_lock:
                    await self._send_subscribe(channel_id)
        return sub

    async def _answer(self, channel_id: str, sub: _Sub, timeout: Optional[float]) -> Optional[dict]:
        if timeout is None:
            return None
        try:
            await asyncio.wait_for(sub.acked.wait(), timeout)
        except asyncio.TimeoutError:
            raise RequestTimeout(f"subscribe to {channel_id!r} not answered within {timeout}s") from None
        if sub.error is not None:
            raise sub.error
        return sub.reply

    async def _send_subscribe(self, channel_id: str) -> None:
        """Send the subscribe of ``channel_id`` (with ``since`` when a position is known).
        Caller holds ``_send_lock``; the answer is handled by the reader."""
        sub = self._subs[channel_id]
        sub.acked.clear()
        sub.error = None
        cb_id, frame = self._session.subscribe_frame(channel_id, None, time.monotonic(),
                                                     self.request_timeout,
                                                     await self._sub_token(channel_id))
        await self._write(frame, cb_id)  # type: ignore[attr-defined]

    def position(self, channel_id: str) -> Optional[Dict[str, Any]]:
        """``{"offset", "epoch"}`` of the last message seen on ``channel_id`` (pass it as
        ``since`` to resume there), or None before any."""
        at = self._session.position(channel_id)
        return None if at is None else {p.K_OFFSET: at.offset, p.K_EPOCH: at.epoch}

    async def unsubscribe(self, channel_id: str, timeout: Optional[float] = 5.0) -> None:
        """Stop receiving ``channel_id``; with a ``timeout``, await the server's answer."""
        sub = self._subs.pop(channel_id, None)
        self._session.drop_subscription(channel_id)
        self._sub_plans.drop(channel_id)
        if sub is None or self._session.status != CONNECTED:
            return
        try:
            await self.request(p.EV_UNSUBSCRIBE, {p.K_CHANNEL: channel_id},  # type: ignore[attr-defined]
                               timeout=timeout if timeout is not None else self.request_timeout)
        except RequestTimeout:
            if timeout is not None:
                raise RequestTimeout(f"unsubscribe from {channel_id!r} not answered") from None

    def subscriptions(self) -> List[str]:
        """The channels this client holds (renewed after every reconnect)."""
        return sorted(self._subs)

    async def publish(self, channel_id: str, data: Any = None, *, ack: bool = False,
                      exclude_sender: bool = False, timeout: Optional[float] = None,
                      traceparent: Optional[str] = None,
                      block_s: Optional[float] = None) -> Optional[dict]:
        """Publish on ``channel_id``, as :meth:`sente_lite.Client.publish`: every publish
        carries an id and stays in the outbox until acknowledged (resent, same id, after
        a reconnect: it lands once). With ``ack`` await the acknowledgement
        (``channel-id``, ``offset``, ``delivered``; ``duplicate``) and return it.
        ``block_s``: how long to wait for room when ``max_unacked_publishes`` wait."""
        problem = p.channel_id_problem(channel_id)
        if problem:
            raise ValueError(problem)
        if traceparent is not None and tracing.valid(traceparent) is None:
            raise ValueError(f"traceparent must be a W3C version-00 traceparent, got {traceparent!r}")
        if self._closing:
            raise ClientClosed("client closed")
        loop = asyncio.get_running_loop()
        fut: "Optional[asyncio.Future[Any]]" = loop.create_future() if ack else None
        wait_s = self.publish_block_s if block_s is None else block_s
        cb_id = await self._into_outbox(channel_id, data, exclude_sender, fut, traceparent, wait_s)
        if fut is None:
            return None
        timeout = self.request_timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise RequestTimeout(f"publish on {channel_id!r} not acknowledged within {timeout}s "
                                 "(it stays queued and is resent after a reconnect)") from None
        finally:
            self._session.forget(cb_id)

    async def _into_outbox(self, channel_id: str, data: Any, exclude_sender: bool, fut: Any,
                           traceparent: Optional[str], wait_s: float) -> str:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                cb_id, frame = self._session.publish(channel_id, data, exclude_sender, fut,
                                                     time.monotonic(), traceparent)
                break
            except LimitExceeded as exc:
                left = deadline - time.monotonic()
                if left <= 0 or self._closing:
                    raise SendQueueFull(str(exc)) from None
                self._outbox_room.clear()
                try:
                    await asyncio.wait_for(self._outbox_room.wait(), left)
                except asyncio.TimeoutError:
                    pass
        if self._session.status == CONNECTED:
            async with self._send_lock:
                await self._write(frame, cb_id)  # type: ignore[attr-defined]
        return cb_id

    # -- what the reader hands over ------------------------------------------------------------
    def _publish_answered(self) -> None:
        self._outbox_room.set()

    def _on_channel_msg(self, msg: ChannelMessage) -> None:
        sub = self._subs.get(msg.channel_id)
        if sub is None:
            return
        if sub.handlers:
            self._tasks.put_nowait(("channel", sub.handlers, msg))
        for queue in sub.queues:
            try:
                queue.put_nowait(msg)
            except asyncio.QueueFull:
                self._counts["subscription_overflows"] += 1

    def _on_presence_change(self, ev: ss.PresenceChange) -> None:
        sub = self._subs.get(ev.channel_id)
        moved = None if sub is None else sub.on_join if ev.joined else sub.on_leave
        if moved:
            self._tasks.put_nowait(("channel", moved, ev))

    def _on_subscribed(self, ev: Union[ss.Subscribed, ss.ServerChannel, ss.Unsubscribed]) -> None:
        if type(ev) is ss.Unsubscribed:  # the server ended it (a subscription token's expiry)
            self._sub_expired(ev.channel_id, ev.reason)
            return
        if type(ev) is ss.ServerChannel:  # the server subscribed this client (server-subs)
            self._server_channel(ev, _Sub)  # type: ignore[attr-defined]
            return
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
            self._tasks.put_nowait(("recovery", self._recovery_hooks, ev.recovery))
        sub.acked.set()


__all__ = ["ChannelsMixin", "ChannelHandler", "RecoveryHandler"]

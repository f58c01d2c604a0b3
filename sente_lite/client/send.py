"""How a :class:`sente_lite.Client` writes frames: at once, queued while disconnected,
or gathered into one ``chsk/batch`` frame (``send_buf_ms``)."""

from __future__ import annotations

import logging
import time
from typing import Optional

import websocket  # websocket-client

from ..wire import protocol as p
from ..errors import ClientClosed, SendQueueFull
from ..session import CONNECTED


log = logging.getLogger("sente_lite.client")

#: Frames gathered into one outgoing batch before it is sent without waiting.
MAX_SEND_BATCH_FRAMES = 100


class SendingMixin:
    """The writing half of a :class:`~sente_lite.Client`; every method but
    :meth:`_flush_if_due` is called with ``_send_lock`` held or takes it."""

    def _send_frame(self, frame: bytes, cb_id: Optional[str]) -> None:
        if self._stop.is_set():
            raise ClientClosed("client closed")
        with self._send_lock:
            if self._status == CONNECTED and self._ws is not None:
                if self._write(frame, cb_id):
                    return
            if len(self._queued) >= self.max_pending_sends:
                self._counts["pending_overflows"] += 1
                raise SendQueueFull(f"{len(self._queued)} sends already wait for a connection "
                                    f"(max_pending_sends={self.max_pending_sends})")
            self._queued.append((frame, cb_id))

    def _write(self, frame: bytes, cb_id: Optional[str], now: bool = False) -> bool:
        """Write one encoded frame, or (``send_buf_ms``) add it to the batch being
        gathered; ``now`` writes at once. Caller holds ``_send_lock``. False if the
        socket failed."""
        ws = self._ws
        if ws is None:
            return False
        if self._send_buf_s and not now and self._server_batches:
            out = self._out_buf
            out.append((frame, cb_id))
            if len(out) == 1:
                self._out_due = time.monotonic() + self._send_buf_s
                self._roles.wake_all()  # the waiting thread flushes it when due
            elif len(out) >= MAX_SEND_BATCH_FRAMES:
                return self._flush_out()
            return True
        if self._out_buf and not self._flush_out():  # keep the order of what was gathered
            return False
        try:
            ws.send(frame, self._opcode)
        except (OSError, websocket.WebSocketException) as exc:
            log.debug("send failed, will resend after reconnect: %s", exc)
            ws.abort()
            return False
        self._counts["frames_out"] += 1
        if cb_id is not None:
            self._session.mark_sent(cb_id)
        return True

    def _flush_out(self) -> bool:
        """Send the gathered frames as one ``chsk/batch`` frame. Caller holds
        ``_send_lock``. On failure they wait for the next connection (publishes in
        the outbox are resent from there)."""
        out, self._out_buf = self._out_buf, []
        self._out_due = 0.0
        if not out:
            return True
        ws = self._ws
        try:
            if ws is None:
                raise OSError("not connected")
            frames = [f for f, _ in out]
            ws.send(frames[0] if len(frames) == 1 else self._session.packer.batch(frames),
                    self._opcode)
        except (OSError, websocket.WebSocketException) as exc:
            log.debug("send failed, will resend after reconnect: %s", exc)
            if ws is not None:
                ws.abort()
            again = [(f, cb) for f, cb in out if cb is None or not self._session.is_publish(cb)]
            self._queued.extendleft(reversed(again))
            return False
        self._counts["frames_out"] += len(out)
        if len(out) > 1:
            self._counts["batches_out"] += 1
        for _, cb_id in out:
            if cb_id is not None:
                self._session.mark_sent(cb_id)
        return True

    def _flush_if_due(self) -> None:
        """Send the gathered batch when its ``send_buf_ms`` is up (from the waiting thread)."""
        if self._out_due and time.monotonic() >= self._out_due:
            with self._send_lock:
                if self._out_due and time.monotonic() >= self._out_due:
                    self._flush_out()

    @property
    def _server_batches(self) -> bool:
        hs = self.handshake
        return bool(hs) and p.FEATURE_BATCH in (hs.get(p.K_FEATURES) or ())

"""The history API (feature ``history-api``): paged reads of a channel's kept messages,
for ``sente-lite/history`` requests and for :meth:`sente_lite.Server.history`.

A page is at most ``limit`` messages, never more than :data:`MAX_HISTORY_PAGE`; its
answer names where the next page starts (``next``, None on the last page), which the
reader passes back as ``page``. Every read goes through :meth:`Broker.history` with a
bound, so a page costs what it returns (on Redis an ``XRANGE``/``XREVRANGE`` with
``COUNT``), within the channel's namespace's history (size and TTL).

:class:`HistoryReads` is the dispatcher's action for a client's request: the
namespace's subscribe rule (and ``authorize``, with action ``"history"``), at most
:data:`MAX_HISTORY_READS_PER_CONN` reads in flight per connection (more are refused
``limit-exceeded``, counted as ``history_reads_refused``), and on a broker that waits on
another process (Redis) the read runs through the face's ``offload``, never on the
network thread.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

from .. import session as ss
from ..brokers.base import Broker
from ..counters import Counter, Counters
from ..limits import DEFAULT_MAX_HISTORY_PAGE, DEFAULT_MAX_HISTORY_READS_PER_CONN
from ..errors import BrokerCommandError, BrokerUnavailable
from ..wire import protocol as p
from ..brokers.recovery import REASON_EPOCH_CHANGED
from ..wire.channels import HistoryPage, RecoveryResult, Since
from .gate import ChannelGate
from .ports import ConnectionPort

log = logging.getLogger("sente_lite.server")

#: Default of the ``max_history_page`` setting: most messages one history page holds
#: (``limit`` above it is lowered to it, counted as ``history_pages_capped``; the answer's
#: ``next`` says where the rest starts).
MAX_HISTORY_PAGE = DEFAULT_MAX_HISTORY_PAGE
#: Default of the ``max_history_reads_per_conn`` setting: most ``sente-lite/history`` reads
#: of one connection in flight at once; one more is refused ``limit-exceeded`` (counted as
#: ``history_reads_refused``).
MAX_HISTORY_READS_PER_CONN = DEFAULT_MAX_HISTORY_READS_PER_CONN

#: Runs a task off the calling thread (the face's choice: a worker, an executor).
Offload = Callable[[ConnectionPort, Callable[[], None]], None]


def read_page(broker: Broker, channel: str, limit: int, since: Optional[Since] = None,
              reverse: bool = False, page: Optional[Since] = None) -> Tuple[HistoryPage, Optional[Since]]:
    """One page of ``channel``'s history: at most ``limit`` messages after ``since``,
    oldest first (``reverse``: newest first), continuing at ``page`` (a previous
    page's ``next``). Returns the page and where the next one starts (None: last)."""
    if not reverse:
        start = since if page is None or (since is not None and page.offset < since.offset) else page
        got = broker.history(channel, start, limit + 1, False)
        items = got.publications
    elif page is None:
        got = broker.history(channel, since, limit + 1, True)
        items = got.publications
    else:
        got, items = _before(broker, channel, limit, since, page)
    more = len(items) > limit
    items = items[:limit]
    epoch = got.epoch if got.epoch is not None else (page or since or Since(0, "")).epoch
    nxt = Since(items[-1][0], epoch) if more and items else None
    return got._replace(publications=items), nxt


def _before(broker: Broker, channel: str, limit: int, since: Optional[Since],
            page: Since) -> Tuple[HistoryPage, List[Tuple[int, bytes]]]:
    """Newest first, at most ``limit + 1`` messages older than ``page`` (and after
    ``since``): read forward from just below them, so the read stays bounded."""
    floor = since.offset if since is not None else -1
    low = max(floor, page.offset - 2 - limit)
    if low < 0:
        got = broker.history(channel, None, limit + 1, False)
    else:
        got = broker.history(channel, Since(low, page.epoch), page.offset - 1 - low, False)
        if got.recovery is not None and not got.recovery.recovered and low > floor:
            # history starts after ``low``: what is older than ``page`` is within one page
            got = broker.history(channel, None, limit + 1, False)
            got = got._replace(recovery=None if since is None else got.recovery)
    if got.epoch is not None and got.epoch != page.epoch:
        return got._replace(recovery=RecoveryResult(False, REASON_EPOCH_CHANGED, 0)), []
    items = [e for e in got.publications if floor < e[0] < page.offset][::-1]
    return got, items


def answer(channel: str, got: HistoryPage, nxt: Optional[Since],
           publication: Callable[[int, bytes], Dict[str, Any]],
           channel_key: str = p.K_CHANNEL) -> Dict[str, Any]:
    """The answer to a history read: ``{channel_key, offset, epoch, recovered?,
    publications, next}`` (``next``: ``{offset, epoch}`` to pass as ``page``, or None)."""
    out: Dict[str, Any] = {channel_key: channel, p.K_OFFSET: got.offset, p.K_EPOCH: got.epoch}
    if got.recovery is not None:
        out[p.K_RECOVERED] = got.recovery.recovered
    out[p.K_PUBLICATIONS] = [publication(offset, text) for offset, text in got.publications]
    out[p.K_NEXT] = None if nxt is None else {p.K_OFFSET: nxt.offset, p.K_EPOCH: nxt.epoch}
    return out


def publication(offset: int, text: bytes) -> Dict[str, Any]:
    """One history entry (a channel message's text) as ``{offset, epoch, data, from,
    traceparent?}``."""
    body = p.loads(text.decode("utf-8"))[1]
    out = {p.K_OFFSET: offset, p.K_EPOCH: body.get(p.K_EPOCH), p.K_DATA: body.get(p.K_DATA),
           p.K_FROM: body.get(p.K_FROM)}
    if "traceparent" in body:
        out["traceparent"] = body["traceparent"]
    return out


def page_size(limit: Optional[int], max_page: int, counters: Counters) -> int:
    """``limit`` within ``max_page`` (None: ``max_page``); a lowered one is counted."""
    if limit is None:
        return max_page
    if limit > max_page:
        counters.add(Counter.HISTORY_PAGES_CAPPED)
        return max_page
    return limit


class HistoryReads:
    """The dispatcher's action for :class:`~sente_lite.session.HistoryRequest` (see the
    module)."""

    def __init__(self, broker: Broker, gate: ChannelGate, counters: Counters,
                 rules: Optional[ss.ServerRules] = None) -> None:
        self.broker = broker
        self.gate = gate
        self.counters = counters
        self.max_page = rules.max_history_page if rules is not None else MAX_HISTORY_PAGE
        self.max_reads = (rules.max_history_reads_per_conn if rules is not None
                          else MAX_HISTORY_READS_PER_CONN)
        #: how a face runs a read that waits on another process (None: on the caller)
        self.offload: Optional[Offload] = None
        self._lock = threading.Lock()
        self._reading: Dict[str, int] = {}

    def __call__(self, conn: ConnectionPort, ev: ss.HistoryRequest) -> None:
        refusal = self.gate.check(conn, "history", ev.channel_id)
        if refusal is not None:
            conn.send_frame(conn.session.error(refusal[0], refusal[1], ev.cb_id, p.EV_HISTORY))
            return
        with self._lock:
            held = self._reading.get(conn.conn_id, 0)
            if held >= self.max_reads:
                refused = True
            else:
                refused = False
                self._reading[conn.conn_id] = held + 1
        if refused:
            self.counters.add(Counter.HISTORY_READS_REFUSED)
            log.info("history read refused (conn %s): %d in flight (max_history_reads_per_conn=%d)",
                     conn.conn_id, held, self.max_reads)
            conn.send_frame(conn.session.error(
                p.ERR_LIMIT_EXCEEDED, f"{held} history reads in flight "
                f"(max_history_reads_per_conn={self.max_reads})", ev.cb_id, p.EV_HISTORY))
            return
        if self.offload is not None and self.broker.waits_on_io:
            self.offload(conn, lambda: self._read(conn, ev))
        else:
            self._read(conn, ev)

    def _read(self, conn: ConnectionPort, ev: ss.HistoryRequest) -> None:
        try:
            limit = page_size(ev.limit, self.max_page, self.counters)
            got, nxt = read_page(self.broker, ev.channel_id, limit, ev.since, ev.reverse, ev.page)
            self.counters.add(Counter.HISTORY_READS)
            conn.send_frame(conn.session.reply(
                p.EV_HISTORY, ev.cb_id, answer(ev.channel_id, got, nxt, publication)))
        except (BrokerUnavailable, BrokerCommandError) as exc:
            conn.send_frame(conn.session.error(exc.code, str(exc), ev.cb_id, p.EV_HISTORY))
        finally:
            with self._lock:
                left = self._reading.get(conn.conn_id, 1) - 1
                if left:
                    self._reading[conn.conn_id] = left
                else:
                    self._reading.pop(conn.conn_id, None)


__all__ = ["HistoryReads", "read_page", "answer", "publication", "page_size", "MAX_HISTORY_PAGE",
           "MAX_HISTORY_READS_PER_CONN", "Offload"]

"""What the server's parts (core, dispatch, front, server_stats, the server API) use of the
:class:`~sente_lite.Server` and :class:`~sente_lite.server.Connection` that own them.

Declared as protocols here, below those parts, so that none of them imports the module
that assembles them (:mod:`sente_lite.server` implements both). Data flows down and
imports point down; a part that needs more of its owner says so here first.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Protocol, Sequence, Union

from websockets.http11 import Request, Response


from ..counters import Counters
from ..core.dispatcher import ServerDispatcher
from ..core.face import ServerFace
from ..core.inflow import InboundGauge
from ..core.ports import ConnectionPort as CorePort, Handler
from ..core.hub import Broker, Hub
from .link import Link
from ..core.metrics import LatencyHistogram, MetricsExporter
from .netloop import NetLoop
from ..core.security import Authorize, Gate
from ..wire.tracing import Spans
from .workers import Lane, WorkerPool


class ConnectionPort(CorePort, Protocol):
    """One live connection, as the server's parts see it: the dispatcher's port
    (:class:`sente_lite.core.ports.ConnectionPort`) and what the threaded face keeps."""

    client_id: str
    connected_at: float
    batching: bool
    frames_in: int
    frames_out: int
    frames_inline: int
    bytes_in: int
    lane: Lane
    inflow: InboundGauge
    _closed: threading.Event

    @property
    def queued_bytes(self) -> int: ...
    @property
    def close_code(self) -> Optional[int]: ...
    @property
    def close_reason(self) -> str: ...
    def close(self, code: int = ..., reason: str = "", flush: bool = True) -> None: ...


#: What an application registers: event handlers (:data:`sente_lite.core.ports.Handler`)
#: and connect/disconnect hooks.
ConnectHook = Callable[[Any], None]
DisconnectHook = Callable[[Any, int, str], None]


class ServerPort(ServerFace, Protocol):
    """The server, as its parts see it: settings, registries, hooks and the public calls
    the server API makes."""

    server_id: str
    path: str
    demo: bool
    expose_metrics: bool
    heartbeat_ms: int
    handshake_timeout: float
    max_message_bytes: int
    max_subscriptions_per_conn: int
    max_channel_id_chars: int
    api_keys: Sequence[str]
    api_max_body_bytes: int
    api_rate_limit: Optional[float]
    authorize: Optional[Authorize]
    channels: Broker
    counters: Counters
    _gate: Gate
    _hub: Hub
    _pool: WorkerPool
    _loop: Optional[NetLoop]
    _front: Any
    _spans: Spans
    _latency: LatencyHistogram
    _metrics: MetricsExporter
    _handlers: Dict[str, Handler]
    _dispatcher: ServerDispatcher
    _on_connect: List[ConnectHook]
    _on_disconnect: List[DisconnectHook]
    _conn_seq: Iterator[int]
    _count_lock: threading.Lock
    _started_at: float
    _stopping: bool

    def _new_connection(self, link: Link, conn_id: str, identity: Any, first: bool) -> Any: ...
    def _closed_conn(self, conn: Any, code: int) -> None: ...
    def _pending_handshakes(self) -> int: ...
    def _admit(self, link: Link, request: Request, client_id: str,
               client_id_given: bool) -> Optional[Response]: ...
    def _identify(self, link: Link, request: Request, client_id: str) -> Union[str, Response]: ...


__all__ = ["ServerPort", "ConnectionPort", "Handler", "ConnectHook", "DisconnectHook"]

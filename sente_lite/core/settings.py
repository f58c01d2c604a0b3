"""The settings of a :class:`~sente_lite.Server`: every keyword of its constructor, checked
once, with the defaults that depend on other settings filled in (:class:`ServerSettings`).

The constructor's keywords stay the public way to set them (their defaults are there);
this module checks them and derives from them what the server's parts are built with.
"""

from __future__ import annotations

import dataclasses
import ssl
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

from .. import limits as lim
from ..brokers import local as ch
from ..brokers import publish_ids
from ..wire import protocol as p
from . import security
from .gate import ChannelGate
from .hub import Broker, LocalBroker
from .namespaces import Namespaces, NamespaceSpec, make_namespaces
from .inflow import InboundLimits
from .jwt_tokens import JWT
from .security import Authenticate, Authorize
from ..session import ServerRules
from ..wire import compression as compression_mod

#: Defaults of every limit; each is a constructor argument of :class:`~sente_lite.Server`.
DEFAULT_HEARTBEAT_MS = 5000
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20
DEFAULT_MAX_QUEUED_BYTES_PER_CONN = 4 << 20
DEFAULT_MAX_BAD_FRAMES_IN_ROW = 100
DEFAULT_CLOSE_TIMEOUT_S = 2.0
#: The largest ``write_delay_ms`` accepted (it is added latency for busy connections).
MAX_WRITE_DELAY_MS = 50.0
DEFAULT_HANDSHAKE_TIMEOUT_S = 10.0
#: Seconds a new socket has to send its request line (a line end) before it is dropped.
DEFAULT_REQUEST_LINE_TIMEOUT_S = 2.0
#: Upgrades in progress from one address; one more drops that address's oldest.
DEFAULT_MAX_PENDING_HANDSHAKES_PER_ADDRESS = 32
#: The listening socket's accept queue (the kernel caps it at net.core.somaxconn).
DEFAULT_ACCEPT_BACKLOG = 4096
DEFAULT_MAX_REMEMBERED_CLIENTS = 100_000
#: The longest default ``fragment_timeout`` (it follows the heartbeat timeout up to this).
MAX_DEFAULT_FRAGMENT_TIMEOUT_S = 3600.0
#: The settings a server also keeps as attributes of its own (``srv.rate_limit``), where its
#: parts (:class:`~sente_lite.server.ports.ServerPort`) and its users read them. The others
#: (hooks' secrets, the broker's and the gate's settings) are only in ``srv.settings``.
SERVER_ATTRIBUTES = (
    "host", "path", "port_file", "heartbeat_ms", "heartbeat_timeout_ms", "max_message_bytes",
    "max_queued_bytes_per_conn", "max_bad_frames_in_row", "max_channel_id_chars",
    "max_remembered_clients", "close_timeout", "handshake_timeout", "ssl_context",
    "accept_backlog", "request_line_timeout", "max_pending_handshakes",
    "max_pending_handshakes_per_address", "raise_fd_limit", "authorize",
    "max_subscriptions_per_conn", "rate_limit", "rate_burst", "max_rate_limited",
    "max_outstanding_requests", "expose_metrics", "demo", "max_pending_auth", "compression",
    "compression_min_bytes", "api_keys", "api_max_body_bytes", "api_rate_limit",
    "write_delay_ms", "max_history_page")


#: The default of every setting, as :class:`~sente_lite.Server` takes them: a face that takes
#: some of them (:class:`sente_lite.asgi.App`) fills the rest from here
#: (``tests/asgi/test_asgi.py`` checks that both agree).
DEFAULTS: Dict[str, Any] = {
    "host": '127.0.0.1',
    "port": 0,
    "path": '/chsk',
    "port_file": None,
    "heartbeat_ms": DEFAULT_HEARTBEAT_MS,
    "heartbeat_timeout_ms": None,
    "max_message_bytes": DEFAULT_MAX_MESSAGE_BYTES,
    "max_queued_bytes_per_conn": DEFAULT_MAX_QUEUED_BYTES_PER_CONN,
    "max_bad_frames_in_row": DEFAULT_MAX_BAD_FRAMES_IN_ROW,
    "max_channel_id_chars": p.MAX_CHANNEL_ID_CHARS,
    "max_idle_channels": 10000,
    "max_remembered_clients": DEFAULT_MAX_REMEMBERED_CLIENTS,
    "close_timeout": DEFAULT_CLOSE_TIMEOUT_S,
    "handshake_timeout": DEFAULT_HANDSHAKE_TIMEOUT_S,
    "authenticate": None,
    "authorize": None,
    "namespaces": None,
    "jwt": None,
    "allowed_origins": None,
    "allowed_hosts": None,
    "csrf": False,
    "csrf_secret": None,
    "max_connections": lim.DEFAULT_MAX_CONNECTIONS,
    "max_pending_handshakes": lim.DEFAULT_MAX_PENDING_HANDSHAKES,
    "max_subscriptions_per_conn": lim.DEFAULT_MAX_SUBSCRIPTIONS_PER_CONN,
    "rate_limit": lim.DEFAULT_RATE_LIMIT,
    "rate_burst": None,
    "max_rate_limited": lim.DEFAULT_MAX_RATE_LIMITED,
    "max_outstanding_requests": lim.DEFAULT_MAX_OUTSTANDING_REQUESTS,
    "expose_metrics": True,
    "write_delay_ms": 0.0,
    "ssl_context": None,
    "accept_backlog": DEFAULT_ACCEPT_BACKLOG,
    "request_line_timeout": DEFAULT_REQUEST_LINE_TIMEOUT_S,
    "max_pending_handshakes_per_address": DEFAULT_MAX_PENDING_HANDSHAKES_PER_ADDRESS,
    "min_handler_threads": 2,
    "max_handler_threads": 16,
    "raise_fd_limit": True,
    "history_size": ch.DEFAULT_HISTORY_SIZE,
    "history_ttl_s": ch.DEFAULT_HISTORY_TTL_S,
    "publish_dedup_s": None,
    "publish_ids_per_publisher": publish_ids.DEFAULT_PUBLISH_IDS_PER_PUBLISHER,
    "publish_ids_max": publish_ids.DEFAULT_PUBLISH_IDS_MAX,
    "history_max_bytes_per_channel": ch.DEFAULT_HISTORY_MAX_BYTES_PER_CHANNEL,
    "history_max_bytes_total": ch.DEFAULT_HISTORY_MAX_BYTES_TOTAL,
    "max_replay_per_subscribe": ch.DEFAULT_MAX_REPLAY_PER_SUBSCRIBE,
    "broker": None,
    "tracing": False,
    "compression": None,
    "compression_min_bytes": compression_mod.DEFAULT_COMPRESSION_MIN_BYTES,
    "demo": False,
    "max_pending_auth": lim.DEFAULT_MAX_PENDING_AUTH,
    "max_fragments": lim.DEFAULT_MAX_FRAGMENTS,
    "fragment_timeout": None,
    "max_inbound_frames": lim.DEFAULT_MAX_INBOUND_FRAMES,
    "max_inbound_bytes": lim.DEFAULT_MAX_INBOUND_BYTES,
    "api_keys": None,
    "api_insecure_ok": False,
    "api_max_body_bytes": lim.DEFAULT_API_MAX_BODY_BYTES,
    "api_rate_limit": lim.DEFAULT_API_RATE_LIMIT,
    "max_history_page": lim.DEFAULT_MAX_HISTORY_PAGE,
    "max_history_reads_per_conn": lim.DEFAULT_MAX_HISTORY_READS_PER_CONN,
}


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """Every setting of a server, checked (:meth:`from_keywords`). A server keeps them as
    ``srv.settings`` and, each under its own name, as attributes (``srv.rate_limit``).

    Every limit is a setting: ``max_message_bytes`` (larger frames close the
    connection with 1009), ``max_queued_bytes_per_conn`` (outbound queue; overflow
    closes that connection with 4001), ``max_bad_frames_in_row`` (then 1008),
    ``heartbeat_ms`` / ``heartbeat_timeout_ms`` (silence closes with 4000; default
    3 x ``heartbeat_ms``), ``close_timeout`` (seconds a closing handshake may take before
    the socket is shut), ``handshake_timeout`` (seconds for the HTTP upgrade),
    ``max_idle_channels`` and ``max_remembered_clients`` (bounded memory).

    Admission and abuse (see :mod:`sente_lite.core.security` and :mod:`sente_lite.limits`):
    ``authenticate(request) -> uid | None`` (None: 401), or ``jwt`` (a
    :class:`~sente_lite.core.jwt_tokens.JWT`: signed connection tokens whose ``sub`` is the
    uid, 401 without a valid one, closed with 4002 at ``exp`` + leeway unless refreshed;
    not with ``authenticate``), ``authorize(conn, action,
    channel_id) -> bool`` (False: ``forbidden``; it runs on the connection's
    worker lane, in order with its handlers), ``allowed_hosts`` (None: bound to a loopback
    address, only loopback ``Host`` names, else any; that list, ``["*"]`` for any;
    others 403), ``allowed_origins`` (None: no
    Origin or the same host; else that list and the server's own origin, ``["*"]`` for
    any; others 403; :mod:`sente_lite.wire.origins`),
    ``csrf`` / ``csrf_secret`` (per-client-id tokens, 403 without),
    ``max_connections`` and ``max_pending_handshakes`` (503), ``max_pending_auth``
    (upgrades waiting for ``authenticate``, which hold no connection slot; 503),
    ``rate_limit`` /
    ``rate_burst`` / ``max_rate_limited`` (``rate-limited``, then 1008),
    ``max_subscriptions_per_conn`` (``limit-exceeded``), ``max_outstanding_requests``
    (server-to-client requests; :class:`LimitExceeded`), ``expose_metrics`` (``/metrics``).

    ``write_delay_ms`` (default 0: every frame is written at once) trades latency for
    CPU: a frame for a connection written to less than this long ago waits until
    this long after that write, then goes out with every other frame queued for that
    connection in one write. A frame for a connection idle that long goes at once.

    History (PROTOCOL 9): each channel keeps its last ``history_size`` messages
    (0: off), none older than ``history_ttl_s``, and replays them to a subscriber
    that names the last offset it saw; publish ids are remembered per publisher
    (uid) ``publish_dedup_s`` (default: 300 s, or ``history_ttl_s`` when longer; at
    most ``publish_ids_per_publisher`` per publisher and ``publish_ids_max`` in all)
    so a resent publish is delivered once. History is also bounded in bytes:
    ``history_max_bytes_per_channel`` per channel and ``history_max_bytes_total``
    for every channel together (the oldest messages go first; counted as
    ``history_bytes_evicted``). One subscribe replays at most
    ``max_replay_per_subscribe`` messages, each counted against ``rate_limit`` as
    one frame (beyond either: ``recovered: false``, ``replay-limit``). ``broker``: where channels live (default:
    this process, :class:`~sente_lite.core.hub.LocalBroker`); ``"redis://host:port/db"``
    shares channels, history, users and presence with every server on that Redis
    (:class:`~sente_lite.brokers.redis.broker.RedisBroker`, ``pip install 'sente-lite[redis]'``).

    A ``traceparent`` in a publish body or a request's data map stays on every
    delivery, acknowledgement, reply map and log line (:mod:`sente_lite.wire.tracing`);
    ``tracing=True`` also emits OpenTelemetry spans (extra ``[otel]``).

    Every numeric setting must be a finite number in its range
    (:data:`sente_lite.limits.SERVER_BOUNDS`); any other value raises
    :class:`~sente_lite.limits.InvalidSetting` (a ValueError and a TypeError) naming it.

    Input (:mod:`sente_lite.core.inflow`): a message may come in at most ``max_fragments``
    frames and must be whole within ``fragment_timeout`` seconds (default: the heartbeat
    timeout), else 1008. At ``max_inbound_frames`` frames or ``max_inbound_bytes`` decoded
    bytes of one connection waiting for its handlers, its socket is not read (the peer's
    TCP window fills) until they are under half of both; counted as ``inbound_pauses``.

    The HTTP server API (docs/api.md, :mod:`sente_lite.api`): ``POST /api/<method>`` on
    the same port, off unless ``api_keys`` (one or more keys, for rotation) is set;
    refused at construction on a non-loopback ``host`` without ``ssl_context`` unless
    ``api_insecure_ok``. ``api_max_body_bytes`` (413 beyond) and ``api_rate_limit``
    (requests per second per key, 429 beyond; None: off) bound it.

    ``compression="deflate"`` offers permessage-deflate: frames of at least
    ``compression_min_bytes`` go compressed to peers that accept it, a channel
    message compressed once per publish (:mod:`sente_lite.wire.compression`).
    """

    host: str
    port: int
    path: str
    port_file: Optional[str]
    heartbeat_ms: int
    heartbeat_timeout_ms: int
    max_message_bytes: int
    max_queued_bytes_per_conn: int
    max_bad_frames_in_row: int
    max_channel_id_chars: int
    max_idle_channels: int
    max_remembered_clients: int
    close_timeout: float
    handshake_timeout: float
    authenticate: Optional[Authenticate]
    authorize: Optional[Authorize]
    namespaces: Optional[Namespaces]
    jwt: Optional[JWT]
    allowed_origins: Optional[Sequence[str]]
    allowed_hosts: Optional[Sequence[str]]
    csrf: bool
    csrf_secret: Union[bytes, str, None]
    max_connections: int
    max_pending_handshakes: int
    max_subscriptions_per_conn: int
    rate_limit: Optional[float]
    rate_burst: Optional[int]
    max_rate_limited: int
    max_outstanding_requests: int
    expose_metrics: bool
    write_delay_ms: float
    ssl_context: Optional[ssl.SSLContext]
    accept_backlog: int
    request_line_timeout: float
    max_pending_handshakes_per_address: int
    min_handler_threads: int
    max_handler_threads: int
    raise_fd_limit: bool
    history_size: int
    history_ttl_s: float
    publish_dedup_s: float
    publish_ids_per_publisher: int
    publish_ids_max: int
    history_max_bytes_per_channel: int
    history_max_bytes_total: int
    max_replay_per_subscribe: int
    broker: Union[Broker, str, None]
    tracing: bool
    compression: Optional[str]
    compression_min_bytes: int
    demo: bool
    max_pending_auth: int
    max_fragments: int
    fragment_timeout: float
    max_inbound_frames: int
    max_inbound_bytes: int
    api_keys: Optional[Tuple[str, ...]]
    api_insecure_ok: bool
    api_max_body_bytes: int
    api_rate_limit: Optional[float]
    max_history_page: int
    max_history_reads_per_conn: int

    @classmethod
    def from_keywords(cls, keywords: Mapping[str, Any]) -> "ServerSettings":
        """The settings that ``keywords`` (a Server's, by name) describe, checked; the
        defaults that follow other settings filled in. Raises
        :class:`~sente_lite.limits.InvalidSetting` (or ValueError, TypeError) naming the
        first bad one."""
        values = {f.name: keywords[f.name] for f in dataclasses.fields(cls)}
        lim.check_settings(values)  # every numeric setting, before any is used
        values["write_delay_ms"] = lim.validate_milliseconds(
            "write_delay_ms", values["write_delay_ms"], MAX_WRITE_DELAY_MS)
        if values["authorize"] is not None and not callable(values["authorize"]):
            raise TypeError("authorize must be a callable (conn, action, channel_id) -> bool")
        if not isinstance(values["namespaces"], (Namespaces, type(None))):
            values["namespaces"] = make_namespaces(values["namespaces"])
        if values["namespaces"] is not None:
            values["namespaces"].check_history(values["history_size"], values["history_ttl_s"])
            if values["namespaces"].need_tokens and values["jwt"] is None:
                raise ValueError("a namespace with subscribe_token=True needs the server's jwt "
                                 "(the key subscription tokens are checked with)")
        if values["jwt"] is not None:
            if not isinstance(values["jwt"], JWT):
                raise TypeError("jwt must be a sente_lite.JWT(key=..., algorithms=[...]) or None")
            if values["authenticate"] is not None:
                raise ValueError("give jwt or authenticate, not both: with jwt the token's sub "
                                 "is the uid")
        heartbeat_timeout_ms = values["heartbeat_timeout_ms"] or 3 * values["heartbeat_ms"]
        values["heartbeat_timeout_ms"] = heartbeat_timeout_ms
        if values["fragment_timeout"] is None:
            values["fragment_timeout"] = min(heartbeat_timeout_ms / 1000.0,
                                             MAX_DEFAULT_FRAGMENT_TIMEOUT_S)
        if values["publish_dedup_s"] is None:  # at least as long as history lasts
            values["publish_dedup_s"] = max(ch.DEFAULT_PUBLISH_DEDUP_S, values["history_ttl_s"])
        values["compression"] = compression_mod.validate(values["compression"])
        values["api_keys"] = _api_keys(values["api_keys"], values["host"],
                                       values["ssl_context"], values["api_insecure_ok"])
        return cls(**values)

    @classmethod
    def with_defaults(cls, given: Mapping[str, Any]) -> "ServerSettings":
        """The settings of ``given`` (some of a Server's keywords), the rest at their
        :data:`DEFAULTS`, checked as :meth:`from_keywords` checks them."""
        unknown = sorted(set(given) - set(DEFAULTS))
        if unknown:
            raise TypeError(f"unknown setting(s): {', '.join(unknown)}")
        return cls.from_keywords({**DEFAULTS, **given})

    def attributes(self) -> Dict[str, Any]:
        """What a server keeps as attributes of its own: :data:`SERVER_ATTRIBUTES` by name,
        ``port`` as ``requested_port`` (``srv.port`` is the port it listens on) and the
        bounds on input as ``inbound``."""
        out = {name: getattr(self, name) for name in SERVER_ATTRIBUTES}
        out.update(requested_port=self.port, inbound=self.inbound_limits())
        return out

    @property
    def write_delay_ns(self) -> int:
        return int(self.write_delay_ms * 1_000_000)

    def inbound_limits(self) -> InboundLimits:
        """The bounds on each connection's unhandled input (fragments, frames waiting
        for handlers)."""
        return InboundLimits(max_fragments=self.max_fragments,
                             fragment_timeout=self.fragment_timeout,
                             max_inbound_frames=self.max_inbound_frames,
                             max_inbound_bytes=self.max_inbound_bytes)

    def session_rules(self, features: Tuple[str, ...] = ()) -> ServerRules:
        """The protocol rules every connection's session follows (``features``: what the
        handshake names beyond this implementation's own)."""
        return ServerRules(
            heartbeat_ms=self.heartbeat_ms, heartbeat_timeout_ms=self.heartbeat_timeout_ms,
            max_bad_frames_in_row=self.max_bad_frames_in_row,
            max_outstanding_requests=self.max_outstanding_requests,
            max_channel_id_chars=self.max_channel_id_chars, rate_limit=self.rate_limit,
            rate_burst=self.rate_burst, max_rate_limited=self.max_rate_limited,
            max_history_page=self.max_history_page,
            max_history_reads_per_conn=self.max_history_reads_per_conn,
            features=ServerRules.features + features
            + ((p.FEATURE_NAMESPACES, p.FEATURE_PRESENCE) if self.namespaces is not None else ())
            + ((p.FEATURE_REFRESH, p.FEATURE_SUB_TOKEN) if self.jwt is not None else ()))

    def channel_gate(self, broker: Broker, counters: Any) -> ChannelGate:
        """The channel policy of these settings over ``broker``."""
        return ChannelGate(broker, counters, self.max_subscriptions_per_conn, self.authorize,
                           self.namespaces)

    def gate(self) -> security.Gate:
        """A new admission gate for these settings."""
        return security.Gate(
            authenticate=self.authenticate, jwt=self.jwt, allowed_origins=self.allowed_origins,
            csrf=self.csrf, csrf_secret=self.csrf_secret, max_connections=self.max_connections,
            max_pending_handshakes=self.max_pending_handshakes,
            handshake_timeout=self.handshake_timeout, allowed_hosts=self.allowed_hosts,
            bind_host=self.host, max_pending_auth=self.max_pending_auth)

    def make_broker(self, server_id: str, counters: Any) -> Broker:
        """The broker of the ``broker`` setting: a Broker as given; a Redis URL
        (``"redis://host:port/db"``: channels shared by several servers); None: this
        process's (:meth:`local_broker`)."""
        broker = self._broker(server_id, counters)
        if self.namespaces is not None and self.namespaces.own_history:
            broker.limit_history(self.namespaces.history_limits)
        return broker

    def _broker(self, server_id: str, counters: Any) -> Broker:
        broker = self.broker
        if isinstance(broker, str):
            from ..brokers.redis.broker import RedisBroker
            return RedisBroker(broker, server_id, history_size=self.history_size,
                               history_ttl_s=self.history_ttl_s,
                               publish_dedup_s=self.publish_dedup_s,
                               publish_ids_per_publisher=self.publish_ids_per_publisher,
                               publish_ids_max=self.publish_ids_max, counters=counters,
                               max_replay_per_subscribe=self.max_replay_per_subscribe)
        if broker is None:
            return self.local_broker(server_id, counters)
        return broker

    def local_broker(self, server_id: str, counters: Any) -> Broker:
        """The in-process broker these settings describe (``broker=None``)."""
        return LocalBroker(
            server_id, self.max_idle_channels, history_size=self.history_size,
            history_ttl_s=self.history_ttl_s, publish_dedup_s=self.publish_dedup_s,
            publish_ids_per_publisher=self.publish_ids_per_publisher,
            publish_ids_max=self.publish_ids_max, counters=counters,
            history_max_bytes_per_channel=self.history_max_bytes_per_channel,
            history_max_bytes_total=self.history_max_bytes_total,
            max_replay_per_subscribe=self.max_replay_per_subscribe)


def _api_keys(keys: Optional[Sequence[str]], host: str, ssl_context: Optional[ssl.SSLContext],
              insecure_ok: bool) -> Optional[Tuple[str, ...]]:
    """The checked API keys; ValueError when the API would send them in clear text
    beyond this machine without ``api_insecure_ok``."""
    if keys is None:
        return None
    checked = lim.check_keys(keys)
    if ssl_context is None and not security.is_loopback_host(host) and not insecure_ok:
        raise ValueError(f"the HTTP API on {host} without TLS would carry API keys in clear "
                         "text: pass ssl_context, bind to a loopback address, or set "
                         "api_insecure_ok=True (--api-allow-plaintext) behind a TLS proxy")
    return checked


__all__ = ["ServerSettings", "DEFAULT_HEARTBEAT_MS", "DEFAULT_MAX_MESSAGE_BYTES",
           "DEFAULT_MAX_QUEUED_BYTES_PER_CONN", "DEFAULT_MAX_BAD_FRAMES_IN_ROW",
           "DEFAULT_CLOSE_TIMEOUT_S", "MAX_WRITE_DELAY_MS", "DEFAULT_HANDSHAKE_TIMEOUT_S",
           "DEFAULT_REQUEST_LINE_TIMEOUT_S", "DEFAULT_MAX_PENDING_HANDSHAKES_PER_ADDRESS",
           "DEFAULT_ACCEPT_BACKLOG", "DEFAULT_MAX_REMEMBERED_CLIENTS", "DEFAULTS"]

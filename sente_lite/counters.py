"""Every server counter, named once: what ``Server.stats()`` reports and ``/metrics`` exports.

A :class:`Counter` names one count and says what kind it is: a ``limit`` hit
(exported as ``sente_lite_limit_hits_total{limit=...}``), an ``error``
(``sente_lite_errors_total{kind=...}``) or ``traffic``. :class:`Counters` holds
the values; it is thread-safe and cheap enough to bump on every frame.
"""

from __future__ import annotations

import enum
import threading
from typing import Dict, Tuple

LIMIT = "limit"
ERROR = "error"
TRAFFIC = "traffic"


class Counter(str, enum.Enum):
    """One named server counter. The value is its key in ``stats()``."""

    kind: str
    help: str

    def __new__(cls, key: str, kind: str, help_text: str) -> "Counter":
        member = str.__new__(cls, key)
        member._value_ = key
        member.kind = kind
        member.help = help_text
        return member

    # traffic
    CONNECTIONS_OPENED = ("connections_opened", TRAFFIC, "Connections that completed the handshake.")
    CONNECTIONS_CLOSED = ("connections_closed", TRAFFIC, "Connections ended.")
    PUBLISHES = ("publishes", TRAFFIC, "Channel publishes (clients' and the server's).")
    DELIVERIES = ("deliveries", TRAFFIC, "Channel messages queued to subscribers.")
    DUPLICATE_PUBLISHES = ("duplicate_publishes", TRAFFIC,
                           "Publishes whose id was already accepted: answered, not delivered again.")
    RECOVERED_SUBSCRIBES = ("recovered_subscribes", TRAFFIC,
                            "Subscribes with since that were answered recovered: true.")
    UNRECOVERED_SUBSCRIBES = ("unrecovered_subscribes", TRAFFIC,
                              "Subscribes with since that were answered recovered: false.")
    REPLAYED_MESSAGES = ("replayed_messages", TRAFFIC, "Channel messages replayed from history.")
    FORCED_CLOSES = ("forced_closes", TRAFFIC, "Connections closed by disconnect_user.")
    API_REQUESTS = ("api_requests", TRAFFIC, "HTTP API requests answered (any status).")
    TOKEN_REFRESHES = ("token_refreshes", TRAFFIC,
                       "chsk/refresh frames whose token passed: the connection's deadline moved.")
    TOKEN_EXPIRED_CLOSES = ("token_expired_closes", TRAFFIC,
                            "Connections closed (4002): their token expired without a refresh.")
    HISTORY_READS = ("history_reads", TRAFFIC, "sente-lite/history pages answered.")
    SERVER_SUBSCRIBES = ("server_subscribes", TRAFFIC,
                         "Subscriptions the server made itself (srv.subscribe, at connect).")
    SUB_TOKEN_REFRESHES = ("sub_token_refreshes", TRAFFIC,
                           "sente-lite/sub-refresh frames whose token passed: that channel's "
                           "deadline moved.")
    SUB_TOKEN_EXPIRED = ("sub_token_expired", TRAFFIC,
                         "Subscriptions ended (sente-lite/unsubscribed, token-expired): their "
                         "subscription token expired without a refresh.")
    # limits
    HISTORY_PAGES_CAPPED = ("history_pages_capped", LIMIT,
                            "History reads whose limit was lowered to MAX_HISTORY_PAGE.")
    HISTORY_READS_REFUSED = ("history_reads_refused", LIMIT,
                             "History reads refused over MAX_HISTORY_READS_PER_CONN in flight.")
    CONNECT_CHANNELS_REFUSED = ("connect_channels_refused", LIMIT,
                                "Channels given at connect beyond MAX_CONNECT_CHANNELS, not subscribed.")
    RATE_LIMITED = ("rate_limited", LIMIT, "Frames refused over rate_limit.")
    RATE_LIMIT_CLOSES = ("rate_limit_closes", LIMIT, "Connections closed (1008) for their rate.")
    SUBSCRIPTION_LIMIT = ("subscription_limit", LIMIT, "Subscribes over max_subscriptions_per_conn.")
    OUTSTANDING_REQUEST_LIMIT = ("outstanding_request_limit", LIMIT,
                                 "Server requests refused over max_outstanding_requests.")
    TOO_LARGE_CLOSES = ("too_large_closes", LIMIT, "Connections closed (1009) for a message too large.")
    PROTOCOL_ERROR_CLOSES = ("protocol_error_closes", LIMIT,
                             "Connections closed (1002/1003/1007) for a WebSocket protocol error.")
    BAD_FRAME_CLOSES = ("bad_frame_closes", LIMIT, "Connections closed (1008) for bad frames in a row.")
    SLOW_CONSUMER_CLOSES = ("slow_consumer_closes", LIMIT,
                            "Connections closed (4001) for an outbound queue over its limit.")
    HEARTBEAT_TIMEOUTS = ("heartbeat_timeouts", LIMIT, "Connections closed (4000) for silence.")
    PUBLISH_IDS_EVICTED = ("publish_ids_evicted", LIMIT,
                           "Publish ids forgotten before their dedup window ended "
                           "(publish_ids_per_publisher, publish_ids_max).")
    HISTORY_EVICTED = ("history_evicted", LIMIT,
                       "Messages dropped from a channel's history (history_size, history_ttl_s).")
    FRAGMENT_LIMIT_CLOSES = ("fragment_limit_closes", LIMIT,
                             "Connections closed (1008) for a message in more than max_fragments "
                             "fragments.")
    FRAGMENT_TIMEOUT_CLOSES = ("fragment_timeout_closes", LIMIT,
                               "Connections closed (1008) for a fragmented message unfinished "
                               "after fragment_timeout.")
    INBOUND_PAUSES = ("inbound_pauses", LIMIT,
                      "Times a connection's socket stopped being read: its frames waiting for "
                      "a handler reached max_inbound_frames or max_inbound_bytes.")
    HISTORY_BYTES_EVICTED = ("history_bytes_evicted", LIMIT,
                             "Messages dropped from history over history_max_bytes_per_channel "
                             "or history_max_bytes_total.")
    API_RATE_LIMITED = ("api_rate_limited", LIMIT, "HTTP API requests refused 429 over api_rate_limit.")
    API_TOO_LARGE = ("api_too_large", LIMIT,
                     "HTTP API requests refused 413 over api_max_body_bytes.")
    # errors
    BAD_FRAMES = ("bad_frames", ERROR, "Frames that were not valid protocol frames.")
    FORBIDDEN = ("forbidden", ERROR, "Subscribes and publishes refused by authorize or a namespace's policy.")
    UNKNOWN_NAMESPACE = ("unknown_namespace", ERROR,
                         "Subscribes and publishes refused: a namespace the server does not serve.")
    INVALID_CHANNEL = ("invalid_channel", ERROR, "Channel operations with an invalid channel-id.")
    UNKNOWN_EVENTS = ("unknown_events", ERROR, "Frames of an unknown reserved event.")
    UNHANDLED_EVENTS = ("unhandled_events", ERROR, "Events with no handler (no reply was asked).")
    HANDLER_ERRORS = ("handler_errors", ERROR, "Handlers that raised or returned a non-JSON reply.")
    HOOK_ERRORS = ("hook_errors", ERROR, "Hooks (connect, disconnect, authorize) that raised.")
    STRAY_REPLIES = ("stray_replies", ERROR, "Replies to no outstanding request.")
    ERRORS_FROM_CLIENTS = ("errors_from_clients", ERROR, "chsk/error frames to no outstanding request.")
    TOKEN_REFRESH_REFUSED = ("token_refresh_refused", ERROR,
                             "chsk/refresh frames refused: invalid-token, or forbidden (another sub).")
    SUB_TOKEN_REFUSED = ("sub_token_refused", ERROR,
                         "Subscribes and sub-refreshes refused for their subscription token: "
                         "missing or invalid (invalid-token), another sub or channel (forbidden), "
                         "a channel not subscribed (not-subscribed).")
    INTERNAL_ERRORS = ("internal_errors", ERROR, "Bugs caught while handling one frame.")
    BROKER_COMMAND_ERRORS = ("broker_command_errors", ERROR,
                             "Redis commands refused (WRONGTYPE, OOM, script error): that "
                             "operation failed (broker-error), the link stayed up.")
    OUTCOME_UNKNOWN_PUBLISHES = ("outcome_unknown_publishes", ERROR,
                                 "Publishes in flight when the Redis link failed, answered "
                                 "outcome-unknown (they may have been published).")
    API_UNAUTHORIZED = ("api_unauthorized", ERROR,
                        "HTTP API requests refused 401: a missing or wrong API key.")
    API_BAD_REQUESTS = ("api_bad_requests", ERROR,
                        "HTTP API requests refused for malformed HTTP (400, 411, 431, 501) or a "
                        "timeout.")


#: Counters exported as ``sente_lite_limit_hits_total{limit=...}``.
LIMIT_COUNTERS: Tuple[str, ...] = tuple(c.value for c in Counter if c.kind == LIMIT)
#: Counters exported as ``sente_lite_errors_total{kind=...}``.
ERROR_COUNTERS: Tuple[str, ...] = tuple(c.value for c in Counter if c.kind == ERROR)


class Counters:
    """The values of every :class:`Counter`, starting at 0. Thread-safe."""

    __slots__ = ("_values", "_lock")

    def __init__(self) -> None:
        self._values: Dict[Counter, int] = dict.fromkeys(Counter, 0)
        self._lock = threading.Lock()

    def add(self, counter: Counter, n: int = 1) -> None:
        """Add ``n`` to ``counter``."""
        with self._lock:
            self._values[counter] += n

    def get(self, counter: Counter) -> int:
        """The value of ``counter``."""
        return self._values[counter]

    def snapshot(self) -> Dict[str, int]:
        """Every counter by its ``stats()`` key."""
        with self._lock:
            return {c.value: n for c, n in self._values.items()}


__all__ = ["Counter", "Counters", "LIMIT_COUNTERS", "ERROR_COUNTERS", "LIMIT", "ERROR", "TRAFFIC"]

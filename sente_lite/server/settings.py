"""The settings of a server: moved to :mod:`sente_lite.core.settings` (the threaded and the
ASGI face share them); these names stay importable from here."""

from ..core.settings import (DEFAULT_ACCEPT_BACKLOG, DEFAULT_CLOSE_TIMEOUT_S,  # noqa: F401
                             DEFAULT_HANDSHAKE_TIMEOUT_S, DEFAULT_HEARTBEAT_MS,
                             DEFAULT_MAX_BAD_FRAMES_IN_ROW, DEFAULT_MAX_MESSAGE_BYTES,
                             DEFAULT_MAX_PENDING_HANDSHAKES_PER_ADDRESS,
                             DEFAULT_MAX_QUEUED_BYTES_PER_CONN, DEFAULT_MAX_REMEMBERED_CLIENTS,
                             DEFAULT_REQUEST_LINE_TIMEOUT_S, MAX_WRITE_DELAY_MS, SERVER_ATTRIBUTES,
                             ServerSettings)

__all__ = ["ServerSettings", "DEFAULT_HEARTBEAT_MS", "DEFAULT_MAX_MESSAGE_BYTES",
           "DEFAULT_MAX_QUEUED_BYTES_PER_CONN", "DEFAULT_MAX_BAD_FRAMES_IN_ROW",
           "DEFAULT_CLOSE_TIMEOUT_S", "MAX_WRITE_DELAY_MS", "DEFAULT_HANDSHAKE_TIMEOUT_S",
           "DEFAULT_REQUEST_LINE_TIMEOUT_S", "DEFAULT_MAX_PENDING_HANDSHAKES_PER_ADDRESS",
           "DEFAULT_ACCEPT_BACKLOG", "DEFAULT_MAX_REMEMBERED_CLIENTS", "SERVER_ATTRIBUTES"]

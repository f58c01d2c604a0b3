"""Exceptions raised by sente_lite.

Every error that crosses the wire carries one of the protocol's error codes
(``docs/protocol.md`` section 4); the exception for it keeps that code in
``.code`` so callers can branch on it without parsing messages.
"""

from __future__ import annotations

from typing import Optional


class SenteLiteError(Exception):
    """Base class of every sente_lite exception."""


class FrameError(SenteLiteError, ValueError):
    """A frame that is not a valid protocol frame (code ``bad-frame``)."""

    code = "bad-frame"

    def __init__(self, message: str, cb_id: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.cb_id = cb_id


class EncodeError(SenteLiteError, TypeError):
    """Data given to send/publish/reply cannot be encoded as JSON."""


class RemoteError(SenteLiteError):
    """The peer answered a request with ``chsk/error``; ``.code`` is the protocol code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class RequestTimeout(SenteLiteError, TimeoutError):
    """No reply arrived before the request's timeout (code ``timeout``)."""

    code = "timeout"


class Disconnected(SenteLiteError, ConnectionError):
    """The connection closed while the request was outstanding (code ``disconnected``)."""

    code = "disconnected"


class SendQueueFull(SenteLiteError):
    """The client's queue of sends made while disconnected is full (``max_pending_sends``)."""

    code = "limit-exceeded"


class MessageTooLarge(SenteLiteError, ValueError):
    """A frame is over the server's ``max-message-bytes`` (code ``too-large``), counted as
    encoded (JSON carries bytes in base64, 4/3 their size): it was not sent, since the
    server would close the connection (1009)."""

    code = "too-large"


class ClientClosed(SenteLiteError):
    """The client was closed; it sends and receives nothing more."""


class ConnectRefused(SenteLiteError, ConnectionError):
    """The server refused the connection for good (HTTP 401/403 or close 1008): no retry.

    ``.status`` is the HTTP status of a refused upgrade, ``.close_code`` the close code.
    """

    def __init__(self, message: str, status: Optional[int] = None,
                 close_code: Optional[int] = None) -> None:
        super().__init__(message)
        self.status = status
        self.close_code = close_code


class DiscoveryTimeout(SenteLiteError, TimeoutError):
    """A file awaited through :mod:`sente_lite.discovery` did not appear in time."""


class LimitExceeded(SenteLiteError):
    """A configured limit refused the operation (code ``limit-exceeded``); the message names it."""

    code = "limit-exceeded"


class BrokerUnavailable(SenteLiteError, ConnectionError):
    """The channel broker (Redis) is unreachable: the publish was not made (code ``unavailable``)."""

    code = "unavailable"


class PublishOutcomeUnknown(SenteLiteError, ConnectionError):
    """The link to the channel broker (Redis) failed while the publish was in flight: it
    may or may not have been published (code ``outcome-unknown``). Resend it with the
    same publish id once the broker is back: the id makes it count once."""

    code = "outcome-unknown"


class BrokerCommandError(SenteLiteError):
    """The channel broker (Redis) refused the command of this one operation (a key of the
    wrong type, out of memory, a script error): it was not made (code ``broker-error``).
    Other channels are not affected; the message says what Redis answered."""

    code = "broker-error"

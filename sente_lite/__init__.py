"""sente_lite: lightweight real-time messaging (Sente-style events, request/reply,
channels with offsets) over WebSocket, for threaded Python programs, and for asyncio
ones (an ASGI application and an asyncio client).

    from sente_lite import Server, Client
    from sente_lite import App, AsyncClient   # ASGI (uvicorn, FastAPI, Starlette), asyncio
"""

from .wire.channels import Published, Since
from .client.client import ChannelMessage, Client, Recovery
from .errors import (BrokerCommandError, BrokerUnavailable, ClientClosed, ConnectRefused,
                     Disconnected, DiscoveryTimeout, EncodeError, FrameError, LimitExceeded,
                     MessageTooLarge, PublishOutcomeUnknown, RemoteError, RequestTimeout, SendQueueFull,
                     SenteLiteError)
from .console import Console
from .core.namespaces import Namespace
from .server.server import Connection, Server
from .core.jwt_tokens import JWT
from .core.connect_channels import Authenticated
from .core.sub_tokens import TOKEN_REQUIRED
from .api.publisher import ApiCallError, Publisher
from .asgi import App
from .aio import AsyncClient

from .version import __version__

__all__ = [
    "Authenticated", "Server", "Connection", "JWT", "Client", "App", "AsyncClient", "Publisher", "ApiCallError", "ChannelMessage", "Published", "Recovery", "Since",
    "SenteLiteError", "FrameError", "EncodeError", "RemoteError", "RequestTimeout",
    "Disconnected", "SendQueueFull", "ClientClosed", "ConnectRefused", "DiscoveryTimeout",
    "LimitExceeded", "MessageTooLarge", "BrokerUnavailable", "PublishOutcomeUnknown", "BrokerCommandError",
    "Console", "Namespace", "TOKEN_REQUIRED",
    "__version__",
]

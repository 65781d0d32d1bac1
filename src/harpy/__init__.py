"""harpy: a fast, strict WebSocket server framework.

```python
import harpy

app = harpy.App()

@app.ws("/echo")
class Echo:
    def message(self, ws: harpy.WebSocket[dict], message: str | bytes) -> None:
        ws.send(message)

app.run(port=3000)
```
"""

from __future__ import annotations

from . import auth
from .app import App, Connections, Route
from .auth import Deny, FirstMessageAuth, UpgradeRequest
from .exceptions import (
    ConfigurationError,
    ConnectionClosed,
    HandshakeError,
    HarpyError,
    InvalidState,
    PayloadTooBig,
    ProtocolError,
    Reject,
    RouteError,
)
from .handlers import Handlers
from .pubsub.backplane import Backplane, MemoryBackplane, NatsBackplane, RedisBackplane
from .router import Router
from .server import ReadyState
from .session import MemoryStore, Session, SessionStore
from .websocket import Headers, WebSocket

__version__ = "0.1.0"

__all__ = [
    "App",
    "Backplane",
    "ConfigurationError",
    "ConnectionClosed",
    "Connections",
    "Deny",
    "FirstMessageAuth",
    "HandshakeError",
    "Handlers",
    "HarpyError",
    "Headers",
    "InvalidState",
    "MemoryBackplane",
    "MemoryStore",
    "NatsBackplane",
    "PayloadTooBig",
    "ProtocolError",
    "ReadyState",
    "RedisBackplane",
    "Reject",
    "Route",
    "RouteError",
    "Router",
    "Session",
    "SessionStore",
    "UpgradeRequest",
    "WebSocket",
    "__version__",
    "auth",
]

"""harpy: a fast, strict WebSocket server framework.

```python
import harpy

app = harpy.App()

@app.ws("/echo")
class Echo:
    def message(self, ws: harpy.WebSocket[dict], message: str | bytes) -> None:
        ws.send(message)

if __name__ == "__main__":  # or: python -m harpy module:app
    app.run(port=3000)
```
"""

from __future__ import annotations

from . import (
    auth,
    workers,
)
from . import channels as channels  # installs App.channels; its API: docs/channels.md
from .app import Admission, App, Connections, Dispatch, Handlers, Route, Router, WebSocket
from .auth import Deny, FirstMessageAuth, MemoryStore, Session, SessionStore, UpgradeRequest
from .exceptions import (
    ConfigurationError,
    HandshakeError,
    HarpyError,
    InvalidMessage,
    InvalidState,
    PayloadTooBig,
    ProtocolError,
    Reject,
    RouteError,
)
from .protocol import Headers
from .pubsub.backplane import Backplane, MemoryBackplane, NatsBackplane, RedisBackplane
from .pubsub.presence import PresenceEvent
from .server import ReadyState

__version__ = "0.1.0"

__all__ = [
    "Admission",
    "App",
    "Backplane",
    "ConfigurationError",
    "Connections",
    "Deny",
    "Dispatch",
    "FirstMessageAuth",
    "HandshakeError",
    "Handlers",
    "HarpyError",
    "Headers",
    "InvalidMessage",
    "InvalidState",
    "MemoryBackplane",
    "MemoryStore",
    "NatsBackplane",
    "PayloadTooBig",
    "PresenceEvent",
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
    "workers",
]

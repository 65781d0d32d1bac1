"""asyncio glue: listening, TLS, the connection registry, deadlines, flow control, shutdown."""

from __future__ import annotations

from .connection import Connection, Limits, ReadyState
from .listener import Server, make_ssl_context
from .timers import TimerWheel

__all__ = ["Connection", "Limits", "ReadyState", "Server", "TimerWheel", "make_ssl_context"]

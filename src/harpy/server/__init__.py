"""asyncio glue: listening, TLS, the connection registry, deadlines, flow control, shutdown."""

from __future__ import annotations

from .connection import BUDGET_POLICIES, Connection, Limits, ReadyState
from .listener import DROP_REASONS, Server, default_output_budget, make_ssl_context
from .timers import TimerWheel

__all__ = [
    "BUDGET_POLICIES",
    "DROP_REASONS",
    "Connection",
    "Limits",
    "ReadyState",
    "Server",
    "TimerWheel",
    "default_output_budget",
    "make_ssl_context",
]

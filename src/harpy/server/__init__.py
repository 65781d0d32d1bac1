"""asyncio glue: listening, TLS, the connection registry, deadlines, flow control, shutdown."""

from __future__ import annotations

import sys

from .._compiled import use_compiled

# The compiled modules stand under their sources' names (harpy/_compiled.py), imported first.
use_compiled(sys.modules[__name__], ("listener", "connection", "framed"))

from .connection import (  # noqa: E402  (after use_compiled)
    BUDGET_POLICIES,
    EV_CLOSED,
    EV_DRAIN,
    EV_OPEN,
    EV_PING,
    EV_PONG,
    EV_PROTOCOL_ERROR,
    EV_REFUSED,
    EV_REQUEST,
    EV_RESPONDED,
    EV_TRANSPORT_ERROR,
    Connection,
    Limits,
    ReadyState,
)
from .framed import FramedConnection, MeteredConnection  # noqa: E402
from .listener import DROP_REASONS, Host, Server, default_output_budget, make_ssl_context  # noqa: E402
from .timers import TimerWheel  # noqa: E402

__all__ = [
    "BUDGET_POLICIES",
    "DROP_REASONS",
    "EV_CLOSED",
    "EV_DRAIN",
    "EV_OPEN",
    "EV_PING",
    "EV_PONG",
    "EV_PROTOCOL_ERROR",
    "EV_REFUSED",
    "EV_REQUEST",
    "EV_RESPONDED",
    "EV_TRANSPORT_ERROR",
    "Connection",
    "FramedConnection",
    "Host",
    "Limits",
    "MeteredConnection",
    "ReadyState",
    "Server",
    "TimerWheel",
    "default_output_budget",
    "make_ssl_context",
]

"""asyncio glue: listening, TLS, the connection registry, deadlines, flow control, shutdown."""

from __future__ import annotations

from .connection import (
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
from .framed import FramedConnection, MeteredConnection
from .listener import DROP_REASONS, Host, Server, default_output_budget, make_ssl_context
from .timers import TimerWheel

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

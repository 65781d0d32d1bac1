"""Every per-route limit and switch: its default, and the check of a value given for it.

An ``App`` takes any of these as keyword arguments (its defaults for all routes); ``ws()``
takes them too, for one route.
"""

from __future__ import annotations

from typing import Any

from .exceptions import ConfigurationError

__all__ = ["ROUTE_DEFAULTS", "check_options"]

MiB = 1024 * 1024

#: name -> (default, kind) where kind is "size" (int >= 0), "seconds" (float >= 0),
#: "count" (int >= 1) or "bool".
ROUTE_DEFAULTS: dict[str, tuple[Any, str]] = {
    # A whole message, compressed or not, over this many bytes closes with 1009 (0: no limit).
    "max_message_size": (16 * MiB, "size"),
    # Close (1001) a connection that sent nothing for this long; 0 disables.
    "idle_timeout": (120.0, "seconds"),
    # How long to wait for the peer's close frame after sending ours, before dropping TCP.
    "close_timeout": (5.0, "seconds"),
    # Bytes queued for one connection past which a send is dropped (and counted).
    "backpressure_limit": (16 * MiB, "size"),
    # Close with 1008 instead of dropping when the backpressure limit is passed.
    "close_on_backpressure_limit": (False, "bool"),
    # Write buffer watermarks: send() returns -1 above the high one, drain fires below the low.
    "write_high_water": (64 * 1024, "size"),
    "write_low_water": (16 * 1024, "size"),
    # Messages waiting for a slow (async) handler before the connection stops reading.
    "max_pending_messages": (64, "count"),
    # Harpia's automatic broadcast: resend every received message to every other connection.
    "auto_broadcast": (False, "bool"),
}


def check_options(options: dict[str, Any], where: str) -> None:
    """Raise TypeError for an unknown name, ConfigurationError for a value out of range."""
    unknown = sorted(set(options) - set(ROUTE_DEFAULTS))
    if unknown:
        raise TypeError(f"{where} got unknown option(s): {', '.join(unknown)}")
    for name, value in options.items():
        kind = ROUTE_DEFAULTS[name][1]
        if kind == "bool":
            if not isinstance(value, bool):
                raise ConfigurationError(f"{name} must be True or False, not {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigurationError(f"{name} must be a number, not {value!r}")
        elif kind in ("size", "count") and not isinstance(value, int):
            raise ConfigurationError(f"{name} must be a whole number of bytes, not {value!r}")
        elif value < (1 if kind == "count" else 0):
            raise ConfigurationError(f"{name} must not be below {1 if kind == 'count' else 0}")

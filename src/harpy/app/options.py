"""Every per-route limit and switch: its default, and the check of a value given for it.

An ``App`` takes any of these as keyword arguments (its defaults for all routes); ``ws()``
takes them too, for one route.
"""

from __future__ import annotations

from typing import Any

from ..auth import resolve_authenticate
from ..exceptions import ConfigurationError
from ..protocol.deflate import DeflateOptions

__all__ = ["ROUTE_DEFAULTS", "check_options"]

MiB = 1024 * 1024

#: name -> (default, kind) where kind is "size" (int >= 0), "seconds" (float >= 0),
#: "count" (int >= 1), "bool", "name" (a non-empty string or None), "names" (a list of them or
#: None), "compression" and "authenticate" (checked by their own modules).
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
    # ws.publish() reaches the publishing connection too when it is subscribed.
    "publish_to_self": (False, "bool"),
    # A room every new connection of the route joins.
    "default_room": (None, "name"),
    # permessage-deflate: None/False off, True on, or a mapping (threshold, level,
    # server_no_context_takeover, server_max_window_bits, client_max_window_bits, ...).
    "compression": (None, "compression"),
    # Heartbeat (the plugin's ``heartbeat``): ping every this many seconds; 0 disables.
    "ping_interval": (0.0, "seconds"),
    # Close (1000 "No pong received") when a ping is unanswered this long; 0: no such bound.
    "pong_timeout": (0.0, "seconds"),
    # Close (1000 "No pong received") after this many heartbeat pings in a row went unanswered.
    "max_missed_pongs": (3, "count"),
    # Close (1000 "Inactivity timeout") when no message or ping came for this long; 0 disables.
    "inactivity_timeout": (0.0, "seconds"),
    # Ping a silent connection at three quarters of idle_timeout, as Bun's sendPings does.
    "send_pings": (True, "bool"),
    # Before the 101: a hook, True (Authorization header), a header name, or FirstMessageAuth.
    "authenticate": (None, "authenticate"),
    # Origins allowed to open a connection (cross-site WebSocket hijacking); None: any.
    "allowed_origins": (None, "names"),
    # Subprotocols the route speaks; the first one the client offers that is listed wins.
    "subprotocols": (None, "names"),
    # Refuse (400) a client that offers none of ``subprotocols``.
    "require_subprotocol": (False, "bool"),
    # Messages per second one connection may send (token bucket); 0 disables. Over: 1008.
    "rate_limit": (0.0, "seconds"),
    # The bucket's size: messages allowed in a burst (0: one second's worth of rate_limit).
    "rate_burst": (0, "size"),
}


def check_options(options: dict[str, Any], where: str) -> None:
    """Raise TypeError for an unknown name, ConfigurationError for a value out of range."""
    unknown = sorted(set(options) - set(ROUTE_DEFAULTS))
    if unknown:
        raise TypeError(f"{where} got unknown option(s): {', '.join(unknown)}")
    for name, value in options.items():
        kind = ROUTE_DEFAULTS[name][1]
        if kind == "compression":
            DeflateOptions.from_value(value)
        elif kind == "authenticate":
            resolve_authenticate(value)
        elif kind == "names":
            if value is not None and (
                isinstance(value, str)
                or not isinstance(value, (list, tuple, set, frozenset))
                or not all(isinstance(v, str) and v for v in value)
            ):
                raise ConfigurationError(f"{name} must be a list of non-empty strings or None")
        elif kind == "name":
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigurationError(f"{name} must be a non-empty string or None")
        elif kind == "bool":
            if not isinstance(value, bool):
                raise ConfigurationError(f"{name} must be True or False, not {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigurationError(f"{name} must be a number, not {value!r}")
        elif kind in ("size", "count") and not isinstance(value, int):
            raise ConfigurationError(f"{name} must be a whole number of bytes, not {value!r}")
        elif value < (1 if kind == "count" else 0):
            raise ConfigurationError(f"{name} must not be below {1 if kind == 'count' else 0}")

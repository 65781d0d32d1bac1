"""Every per-route option: one frozen dataclass, each default written once, validated once.

``App(**options)`` sets the defaults of every route; ``ws(path, handlers, **options)`` overrides
them for one route.  The keyword arguments are typed (:class:`RouteOptionsKw`), so a misspelt
option is a type error under mypy, and a :class:`TypeError` naming the known options at run time.
The connection limits (sizes, timeouts, heartbeat) are the server layer's
:class:`~harpy.server.Limits`, which :class:`RouteOptions` extends.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

from ..auth import FirstMessageAuth, resolve_authenticate
from ..exceptions import ConfigurationError
from ..protocol.deflate import DeflateOptions
from ..server import BUDGET_POLICIES, Limits

__all__ = ["RouteOptions", "RouteOptionsKw", "check_options", "make_options"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteOptions(Limits):
    """A route's options: the connection limits, and what the app layer does per route."""

    #: Messages waiting for a slow (async) handler before the connection stops reading.
    max_pending_messages: int = 64
    #: Automatic broadcast: resend every received message to every other connection.
    auto_broadcast: bool = False
    #: ``ws.publish()`` reaches the publishing connection too when it is subscribed.
    publish_to_self: bool = False
    #: A room every new connection of the route joins.
    default_room: str | None = None
    #: permessage-deflate: None/False off, True on, or a mapping (``threshold``, ``level``,
    #: ``server_no_context_takeover``, ``server_max_window_bits``, ``client_max_window_bits``...).
    compression: bool | Mapping[str, Any] | None = None
    #: Before the 101: a hook, True (Authorization header), a header name, or FirstMessageAuth.
    authenticate: Callable[..., Any] | bool | str | FirstMessageAuth | None = None
    #: Origins a browser may open a connection from (cross-site WebSocket hijacking): None,
    #: the page's own origin only (the Origin header's host and port are the Host header's);
    #: a list, those origins; "*", any.  A request without Origin is not a browser's: allowed.
    allowed_origins: Sequence[str] | Literal["*"] | None = None
    #: Subprotocols the route speaks; the first one the client offers that is listed wins.
    subprotocols: Sequence[str] | None = None
    #: Refuse (400) a client that offers none of ``subprotocols``.
    require_subprotocol: bool = False
    #: Messages per second one connection may send (token bucket); 0 disables. Over: 1008.
    rate_limit: float = 0.0
    #: The bucket's size: messages allowed in a burst (0: one second's worth of rate_limit).
    rate_burst: int = 0
    #: ``message`` receives each message parsed as JSON (text or binary); one that does not
    #: parse goes to ``error(ws, exc)`` (an :class:`~harpy.InvalidMessage`), else closes 1007.
    json: bool = False

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            _check(field.name, getattr(self, field.name), str(field.type))
        if self.write_low_water > self.write_high_water:
            raise ConfigurationError("write_low_water must not exceed write_high_water")
        if self.require_subprotocol and not self.subprotocols:
            raise ConfigurationError("require_subprotocol needs a list of subprotocols")


class RouteOptionsKw(TypedDict, total=False):
    """The keyword arguments ``App()`` and ``ws()`` take: the fields of :class:`RouteOptions`."""

    max_message_size: int
    idle_timeout: float
    close_timeout: float
    backpressure_limit: int
    close_on_backpressure_limit: bool
    output_budget_policy: str
    write_high_water: int
    write_low_water: int
    ping_interval: float
    pong_timeout: float
    max_missed_pongs: int
    inactivity_timeout: float
    send_pings: bool
    max_pending_messages: int
    auto_broadcast: bool
    publish_to_self: bool
    default_room: str | None
    compression: bool | Mapping[str, Any] | None
    authenticate: Callable[..., Any] | bool | str | FirstMessageAuth | None
    allowed_origins: Sequence[str] | Literal["*"] | None
    subprotocols: Sequence[str] | None
    require_subprotocol: bool
    rate_limit: float
    rate_burst: int
    json: bool


#: Options that count things and must be at least 1 (every other number may be 0).
_AT_LEAST_ONE = frozenset({"max_missed_pongs", "max_pending_messages"})
_NAMES = tuple(field.name for field in dataclasses.fields(RouteOptions))


def check_options(options: Mapping[str, Any], where: str) -> None:
    """Raise TypeError for an unknown name, ConfigurationError for a value out of range."""
    unknown = sorted(set(options) - set(_NAMES))
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, _NAMES, n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise TypeError(
            f"{where} got unknown option(s) {', '.join(hints)}; "
            f"the options are: {', '.join(_NAMES)}"
        )
    types = {field.name: str(field.type) for field in dataclasses.fields(RouteOptions)}
    for name, value in options.items():
        _check(name, value, types[name])


def make_options(base: RouteOptions | None, options: Mapping[str, Any], where: str) -> RouteOptions:
    """``base`` (or the defaults) with ``options`` applied, checked as a whole."""
    check_options(options, where)
    if base is None:
        return RouteOptions(**options)
    return dataclasses.replace(base, **options)


def _check(name: str, value: Any, annotation: str) -> None:
    """Check one option's value by its declared type (checked by its owner for the two that
    have one)."""
    if name == "output_budget_policy":
        if value not in BUDGET_POLICIES:
            raise ConfigurationError(
                f"output_budget_policy must be one of {', '.join(BUDGET_POLICIES)}, not {value!r}"
            )
    elif name == "compression":
        DeflateOptions.from_value(value)
    elif name == "authenticate":
        resolve_authenticate(value)
    elif name == "allowed_origins" and value == "*":
        pass  # any origin
    elif annotation == "Sequence[str] | None" or name == "allowed_origins":
        if value is not None and (
            isinstance(value, str)
            or not isinstance(value, (list, tuple, set, frozenset))
            or not all(isinstance(v, str) and v for v in value)
        ):
            if name == "allowed_origins":
                raise ConfigurationError(
                    'allowed_origins must be a list of origins, "*" (any) or None (same origin)'
                )
            raise ConfigurationError(f"{name} must be a list of non-empty strings or None")
    elif annotation == "str | None":
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigurationError(f"{name} must be a non-empty string or None")
    elif annotation == "bool":
        if not isinstance(value, bool):
            raise ConfigurationError(f"{name} must be True or False, not {value!r}")
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{name} must be a number, not {value!r}")
    elif annotation == "int" and not isinstance(value, int):
        raise ConfigurationError(f"{name} must be a whole number, not {value!r}")
    else:
        low = 1 if name in _AT_LEAST_ONE else 0
        if value < low:
            raise ConfigurationError(f"{name} must not be below {low}")

"""What a channels endpoint is told: :class:`ChannelOptions`, and :class:`Namespace` per channel
prefix (``"chat:room1"`` is in namespace ``"chat"``; a name without ``:`` in the default one)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from ..exceptions import ConfigurationError
from ..pubsub.history import History

__all__ = ["ChannelOptions", "Namespace"]


@dataclasses.dataclass(frozen=True)
class Namespace:
    """The options of the channels of one namespace.

    With ``history_size`` > 0 (and a ``history`` store on the endpoint) each publication gets
    an offset and the last ``history_size`` of them are kept, ``history_ttl`` seconds after the
    last one (0: no expiry): subscriptions are positioned and recoverable.  ``presence`` lets
    clients ask who is subscribed (the app needs ``App(presence=True)``), ``join_leave`` sends
    a join and a leave push to the subscribers.  The ``allow_*`` options let any connected
    client subscribe, publish, read history or presence without a token or a hook saying so.
    """

    history_size: int = 0
    history_ttl: float = 0.0
    presence: bool = False
    join_leave: bool = False
    allow_subscribe: bool = False
    allow_publish: bool = False
    allow_history: bool = False
    allow_presence: bool = False

    def __post_init__(self) -> None:
        size, ttl = self.history_size, self.history_ttl
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ConfigurationError("history_size must be a whole number >= 0")
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl < 0:
            raise ConfigurationError("history_ttl must be a number of seconds >= 0")
        for field in dataclasses.fields(self):
            if field.type in ("bool", bool) and not isinstance(getattr(self, field.name), bool):
                raise ConfigurationError(f"{field.name} must be True or False")


@dataclasses.dataclass(frozen=True)
class ChannelOptions:
    """The options of a channels endpoint (``app.channels(path, handlers, options)``).

    Connection and subscription tokens are JWTs verified with ``secret`` (HS*) or
    ``public_key`` (RS*, ES*, ...) and ``algorithms`` by :func:`harpy.auth.jwt`; without either,
    only the hooks decide.  ``anonymous`` lets a client without a token connect as user ``""``.
    ``ping`` is the seconds between the server's pings, ``pong`` how long a client has to answer
    one; ``stale`` how long a client has to send ``connect``.  A frame of more than
    ``max_commands`` commands, a channel name longer than ``max_channel_length`` and more than
    ``max_subscriptions`` subscriptions per connection get the protocol's errors.
    """

    secret: str | bytes | None = None
    public_key: Any = None
    algorithms: Sequence[str] = ("HS256",)
    audience: str | None = None
    issuer: str | None = None
    anonymous: bool = False
    history: History | None = None
    namespaces: Mapping[str, Namespace] = dataclasses.field(default_factory=dict)
    default: Namespace = Namespace()
    ping: float = 25.0
    pong: float = 10.0
    stale: float = 15.0
    expired_close_delay: float = 25.0
    max_commands: int = 100
    max_subscriptions: int = 128
    max_channel_length: int = 255
    recovery_limit: int = 10_000

    def __post_init__(self) -> None:
        for name in ("ping", "pong", "stale", "expired_close_delay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigurationError(f"{name} must be a number of seconds > 0")
        for name in ("max_commands", "max_subscriptions", "max_channel_length", "recovery_limit"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be a whole number >= 1")
        if self.history is not None and not isinstance(self.history, History):
            raise ConfigurationError(f"history must be a History, not {self.history!r}")
        if not isinstance(self.default, Namespace):
            raise ConfigurationError("default must be a Namespace")
        for key, value in self.namespaces.items():
            if not isinstance(key, str) or not key or ":" in key:
                raise ConfigurationError(f"namespace name {key!r} must be a non-empty str w/o ':'")
            if not isinstance(value, Namespace):
                raise ConfigurationError(f"namespace {key!r} must be a Namespace, not {value!r}")

    def namespace(self, channel: str) -> Namespace | None:
        """The namespace of ``channel`` (None: an unknown namespace)."""
        name, sep, _ = channel.partition(":")
        if not sep:
            return self.default
        return self.namespaces.get(name)

    def all_namespaces(self) -> list[Namespace]:
        return [self.default, *self.namespaces.values()]

    def keeps_history(self, namespace: Namespace) -> bool:
        return self.history is not None and namespace.history_size > 0

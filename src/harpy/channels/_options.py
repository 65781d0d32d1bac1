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

    With ``history_size`` > 0 each publication gets an offset and the last ``history_size`` of
    them are kept (in the endpoint's ``history`` store), ``history_ttl`` seconds after the last
    one (0: no expiry): subscriptions are positioned and recoverable.  ``presence`` lets
    clients ask who is subscribed (the app needs ``App(presence=True)``), ``join_leave`` sends
    a join and a leave push to the subscribers.  The ``allow_*`` options let any connected
    client subscribe, publish, read history or presence without a token or a hook saying so.
    """

    history_size: int = 0
    """Keep the last N publications (0: no history): positioned, recoverable."""
    history_ttl: float = 0.0
    """Seconds the publications stay after the last one (0: until evicted by size)."""
    presence: bool = False
    """Clients may ask who is subscribed (needs ``App(presence=True)``)."""
    join_leave: bool = False
    """Subscribers get a join and a leave push when someone subscribes or leaves."""
    allow_subscribe: bool = False
    """Any connected client may subscribe without a token or a hook saying so."""
    allow_publish: bool = False
    """Any client may publish without a ``publish`` hook saying so."""
    allow_history: bool = False
    """Any client may read history, subscribed or not (else: subscribers only)."""
    allow_presence: bool = False
    """Any client may read presence, subscribed or not (else: subscribers only)."""

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
    """The HMAC key of the tokens (HS256/384/512)."""
    public_key: Any = None
    """The public key of the tokens (RS*, PS*, ES*, EdDSA; PEM or a key object)."""
    algorithms: Sequence[str] = ("HS256",)
    """The tokens' algorithms (never ``none``)."""
    audience: str | None = None
    """The ``aud`` the tokens must have (None: not checked)."""
    issuer: str | None = None
    """The ``iss`` the tokens must have (None: not checked)."""
    anonymous: bool = False
    """A client without a token connects as user ``""`` (with a key configured)."""
    history: History | None = None
    """Where the publications of channels with history are kept (None: in memory on one
    process; under ``--workers``, JetStream on the embedded nats-server)."""
    namespaces: Mapping[str, Namespace] = dataclasses.field(default_factory=dict)
    """The namespaces by name (``"chat"`` for ``"chat:lobby"``)."""
    default: Namespace = Namespace()
    """The namespace of the channels without ``:``."""
    ping: float = 25.0
    """Seconds between the server's pings."""
    pong: float = 10.0
    """Seconds a client has to answer a ping (else closed with 3012)."""
    stale: float = 15.0
    """Seconds a client has to send ``connect`` (else closed with 3502)."""
    expired_close_delay: float = 25.0
    """Seconds past its expiry an unrefreshed connection (3005) or subscription (2501) lasts."""
    max_commands: int = 100
    """Commands per frame (more: error 106 each)."""
    max_subscriptions: int = 128
    """Subscriptions per connection (more: error 106)."""
    max_channel_length: int = 255
    """Characters of a channel name (more: error 106)."""
    recovery_limit: int = 10_000
    """The most publications one recovery or one history call returns."""

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
        """The default namespace and the named ones."""
        return [self.default, *self.namespaces.values()]

    def keeps_history(self, namespace: Namespace) -> bool:
        """Whether the channels of ``namespace`` have history (a ``history_size``: the store is
        :attr:`history`, or the endpoint's default when it is None)."""
        return namespace.history_size > 0

"""The exceptions harpy raises, in one tree.

Everything derives from :class:`HarpyError`.  None of these messages is ever sent to a peer:
a peer only sees a close code and a short, fixed reason.
"""

from __future__ import annotations

import importlib.util

__all__ = [
    "ConfigurationError",
    "HandshakeError",
    "HarpyError",
    "InvalidMessage",
    "InvalidState",
    "PayloadTooBig",
    "ProtocolError",
    "Reject",
    "RouteError",
    "require_extra",
]


class HarpyError(Exception):
    """Base class of every harpy exception."""


class ConfigurationError(HarpyError, ValueError):
    """An option or argument given by the application is invalid."""


class RouteError(ConfigurationError):
    """A route pattern is malformed, or the same pattern is registered twice."""


class InvalidState(HarpyError):
    """An action is not allowed in the connection's current state; the message names it."""


class InvalidMessage(HarpyError, ValueError):
    """A message its route cannot take: not valid JSON on a ``json=True`` route.  Handed to
    the route's ``error`` handler, which decides; without one the connection closes with 1007
    (RFC 6455 7.4.1: data inconsistent with the type of the message)."""


class ProtocolError(HarpyError):
    """The peer broke RFC 6455; ``code`` is the close code the connection fails with."""

    def __init__(self, message: str, code: int = 1002) -> None:
        super().__init__(message)
        self.code = code
        """The close code the connection fails with (1002, 1007, 1009...)."""


class PayloadTooBig(ProtocolError):
    """A message exceeds ``max_message_size`` (close code 1009)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 1009)


class HandshakeError(HarpyError):
    """The opening handshake is refused with an HTTP status."""

    def __init__(
        self, status: int, reason: str = "", headers: list[tuple[str, str]] | None = None
    ) -> None:
        super().__init__(f"{status} {reason}".strip())
        self.status = status
        """The HTTP status of the refusal."""
        self.reason = reason
        """The reason phrase (and body)."""
        self.headers = headers or []
        """Extra headers of the refusal (name, value)."""


class Reject(HandshakeError):
    """Raised by an ``authenticate`` hook to refuse an upgrade with an HTTP status (401, 403...)."""

    def __init__(
        self, status: int = 403, reason: str = "", headers: list[tuple[str, str]] | None = None
    ) -> None:
        if not 400 <= status <= 599:
            raise ConfigurationError(f"Reject status must be 4xx or 5xx, not {status}")
        super().__init__(status, reason, headers)


def require_extra(module: str, package: str, extra: str, needed_by: str) -> None:
    """Raise a one-line :class:`ConfigurationError` naming the extra to install when the
    optional ``module`` (of the PyPI ``package``) cannot be imported; cheap: nothing is imported
    here."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ConfigurationError(
            f"{needed_by} needs {package}, which is not installed: pip install 'harpy-ws[{extra}]'"
        )

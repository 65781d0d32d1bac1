"""The Centrifuge protocol's codes: error replies, disconnects (close codes), unsubscribes.

Numbers and meanings from centrifugal/centrifuge ``errors.go``, ``disconnect.go`` and
``unsubscribe.go``: the SDKs reconnect after a disconnect code in 3000-3499 and 4000-4499 and
stop for 3500-3999 and 4500-4999; they resubscribe after an unsubscribe code of 2500 or more.
"""

from __future__ import annotations

from ..exceptions import HarpyError

__all__ = ["ChannelError", "Disconnect", "Unsubscribe"]


class ChannelError(HarpyError):
    """An error reply to one command (the connection stays): raise it in a hook.

    Apps use codes 400-1999 for their own errors; the protocol's are below."""

    def __init__(self, code: int, message: str, temporary: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        """The protocol's code (apps use 400-1999)."""
        self.message = message
        """What the client is told (never internal details)."""
        self.temporary = temporary
        """The client may try again (the SDKs retry with backoff)."""

    def reply(self) -> dict[str, object]:
        """The ``error`` object of the reply."""
        error: dict[str, object] = {"code": self.code, "message": self.message}
        if self.temporary:
            error["temporary"] = True
        return error


class Disconnect(HarpyError):
    """Close the connection with a protocol disconnect code: raise it in a hook."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        """The close code: 3000-3499, 4000-4499 the SDK reconnects; 3500-3999, 4500-4999 not."""
        self.reason = reason
        """The close reason (at most 123 bytes of UTF-8 are sent)."""


class Unsubscribe:
    """Unsubscribe push codes: below 2500 the subscription ends, from 2500 the SDK resubscribes."""

    SERVER = (2000, "server unsubscribe")
    INSUFFICIENT_STATE = (2500, "insufficient state")
    EXPIRED = (2501, "subscription expired")


INTERNAL = ChannelError(100, "internal server error", True)
UNAUTHORIZED = ChannelError(101, "unauthorized")
UNKNOWN_CHANNEL = ChannelError(102, "unknown channel")
PERMISSION_DENIED = ChannelError(103, "permission denied")
METHOD_NOT_FOUND = ChannelError(104, "method not found")
ALREADY_SUBSCRIBED = ChannelError(105, "already subscribed")
LIMIT_EXCEEDED = ChannelError(106, "limit exceeded")
BAD_REQUEST = ChannelError(107, "bad request")
NOT_AVAILABLE = ChannelError(108, "not available")
TOKEN_EXPIRED = ChannelError(109, "token expired")
EXPIRED = ChannelError(110, "expired")
UNRECOVERABLE = ChannelError(112, "unrecoverable position")

SHUTDOWN = Disconnect(3001, "shutdown")
CONNECTION_EXPIRED = Disconnect(3005, "connection expired")
NO_PONG = Disconnect(3012, "no pong")
INVALID_TOKEN = Disconnect(3500, "invalid token")
BAD_REQUEST_CLOSE = Disconnect(3501, "bad request")
STALE = Disconnect(3502, "stale")
FORCE_DISCONNECT = Disconnect(3503, "force disconnect")
INSUFFICIENT_STATE_CLOSE = Disconnect(3010, "insufficient state")

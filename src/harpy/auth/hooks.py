"""Authentication at the upgrade: the ``authenticate`` hook, its short forms, first-message auth.

A route's ``authenticate=`` takes:

* a callable ``hook(request) -> result`` (plain or ``async``), called before the 101 with an
  :class:`UpgradeRequest`.  The result decides:

  - ``True``: accept (``ws.auth`` stays None);
  - ``False`` or ``None``: refuse with 401 (safe by default: a hook that forgets to return
    refuses);
  - a mapping with a ``"success"`` key: ``{"success": True, "data": x}``
    accepts with ``ws.auth = x``; ``{"success": False, "code": 4001, "reason": "..."}`` accepts
    and closes at once with that code and reason;
  - anything else: accept, and keep it on ``ws.auth``.

  The hook may also raise :class:`harpy.Reject` (``Reject(403, "Forbidden")``) for an HTTP
  refusal without upgrade, or :class:`Deny` to accept and close at once with a code.  A hook
  that crashes gives 500; the traceback is logged on the server, nothing reaches the client.
* ``True``: a non-empty ``Authorization`` header is required (401 otherwise); ``ws.auth`` is
  its value.
* a header name (``"x-api-key"``): that header is required; ``ws.auth`` is its value.
* a :class:`FirstMessageAuth` (such as ``harpy.auth.jwt(..., source="first_message")``): the
  upgrade is accepted, and the first message must authenticate within a timeout.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ..exceptions import ConfigurationError, HarpyError, Reject
from ..protocol import Headers

__all__ = [
    "Deny",
    "FirstMessageAuth",
    "UpgradeRequest",
    "Upgrading",
    "interpret",
    "resolve_authenticate",
]

Hook = Callable[["UpgradeRequest"], Any]


class Upgrading(Protocol):
    """What the app layer's connection offers an ``authenticate`` hook before the 101: the
    interface :class:`UpgradeRequest` reads, which the app layer's connection provides."""

    @property
    def path(self) -> str:
        """The request path, percent-decoded, without the query string."""

    @property
    def route(self) -> str:
        """The pattern of the route that matched."""

    @property
    def query(self) -> dict[str, str]:
        """The query string's parameters (the first value of each name)."""

    @property
    def query_string(self) -> str:
        """The raw query string, without the ``?``."""

    @property
    def headers(self) -> Headers:
        """The request headers."""

    @property
    def cookies(self) -> dict[str, str]:
        """The request's cookies."""

    @property
    def remote_address(self) -> str:
        """The client's IP address."""

    @property
    def url(self) -> str:
        """The URL the client asked for."""

    params: dict[str, str]
    """The route's path parameters, percent-decoded."""
    subprotocol: str | None
    """The subprotocol the 101 will name, or None."""


class Deny(HarpyError):
    """Accept the upgrade, then close at once with ``code`` and ``reason``.

    ``code`` is 1008 (policy violation) or an application code of 3000-4999.
    """

    def __init__(self, code: int = 1008, reason: str = "") -> None:
        if code != 1008 and not 3000 <= code <= 4999:
            raise ConfigurationError(f"Deny code must be 1008 or 3000-4999, not {code}")
        if len(reason.encode("utf-8")) > 123:
            raise ConfigurationError("Deny reason is longer than 123 bytes of UTF-8")
        super().__init__(f"{code} {reason}".strip())
        self.code = code
        """The close code (4000-4999, 1008 by default)."""
        self.reason = reason
        """The close reason."""


class UpgradeRequest:
    """What an ``authenticate`` hook sees of the upgrade request, before any 101."""

    __slots__ = ("_ws",)

    def __init__(self, ws: Upgrading) -> None:
        self._ws = ws

    @property
    def path(self) -> str:
        """The request path, percent-decoded, without the query string."""
        return self._ws.path

    @property
    def route(self) -> str:
        """The pattern of the route that matched (``/room/:id``)."""
        return self._ws.route

    @property
    def params(self) -> dict[str, str]:
        """The route's path parameters, percent-decoded."""
        return self._ws.params

    @property
    def query(self) -> dict[str, str]:
        """The query string's parameters (the first value of each name)."""
        return self._ws.query

    @property
    def query_string(self) -> str:
        """The raw query string, without the ``?``."""
        return self._ws.query_string

    @property
    def headers(self) -> Headers:
        """The request headers (case-insensitive)."""
        return self._ws.headers

    @property
    def cookies(self) -> dict[str, str]:
        """The request's cookies (RFC 6265; a value with ``=`` stays whole)."""
        return self._ws.cookies

    @property
    def remote_address(self) -> str:
        """The client's IP address."""
        return self._ws.remote_address

    @property
    def url(self) -> str:
        """The URL the client asked for (``ws://host/path?query``)."""
        return self._ws.url

    @property
    def subprotocols(self) -> list[str]:
        """The subprotocols the client offered, in its order."""
        return self._ws.headers.tokens_cased("sec-websocket-protocol")

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol the 101 will name (the first offered one the route lists), or None."""
        return self._ws.subprotocol

    def __repr__(self) -> str:
        return f"<UpgradeRequest {self.path}>"


class FirstMessageAuth(ABC):
    """Authentication carried by the first message after the upgrade.

    The route's ``open`` handler runs only once :meth:`verify` accepted; the first message is
    consumed by it.  No message within ``timeout`` seconds closes with 1008 "Auth Timeout".
    """

    timeout: float = 5.0
    """Seconds the first message may take; then 1008 "Auth Timeout"."""

    @abstractmethod
    def verify(self, message: str | bytes) -> Any:
        """Return what goes on ``ws.auth`` (plain or awaitable); raise :class:`Deny` to refuse."""


def resolve_authenticate(value: object) -> tuple[Hook | None, FirstMessageAuth | None]:
    """Turn a route's ``authenticate=`` into (a pre-upgrade hook, a first-message verifier)."""
    if value is None or value is False:
        return None, None
    if isinstance(value, FirstMessageAuth):
        return None, value
    if value is True:
        return _header_hook("authorization"), None
    if isinstance(value, str):
        if not value:
            raise ConfigurationError("authenticate header name must not be empty")
        return _header_hook(value.lower()), None
    if callable(value):
        return value, None
    raise ConfigurationError(
        "authenticate must be a callable, True, a header name, or a FirstMessageAuth, "
        f"not {type(value).__name__}"
    )


def _header_hook(name: str) -> Hook:
    def require_header(request: UpgradeRequest) -> Any:
        value = request.headers.get(name, "").strip()
        if not value:
            raise Reject(401, "Unauthorized", [("WWW-Authenticate", "Bearer")])
        return {"success": True, "data": value}

    require_header.__name__ = f"require_{name.replace('-', '_')}"
    return require_header


def interpret(result: Any) -> tuple[bool, Any, Deny | None]:
    """(accepted, auth data, deny-after-accept) for what a hook returned."""
    if result is True:
        return True, None, None
    if result is False or result is None:
        return False, None, None
    if isinstance(result, Mapping) and "success" in result:
        if result["success"]:
            return True, result.get("data"), None
        code = result.get("code", 1008)
        reason = result.get("reason", "")
        if not isinstance(code, int) or not isinstance(reason, str):
            raise ConfigurationError("authenticate result: code must be int, reason str")
        return True, None, Deny(code, reason)
    return True, result, None

"""Signed session cookies shared with an HTTP app: ``Session``, ``SessionStore``, ``MemoryStore``.

The HTTP side logs a user in with ``value = await session.create({"username": "alice"})`` and
sets ``session.cookie_header(value)`` (an HttpOnly, Secure, SameSite cookie).  The browser sends
that cookie with the WebSocket upgrade, and a handler reads it back::

    user = await session.from_websocket(ws)
    if user is None:
        ws.close(1008, "Unauthorized")

The cookie value is ``<id>.<signature>``: a random id (``secrets.token_urlsafe(32)``) and
``base64url(HMAC-SHA256(secret, id))`` without padding.  A value whose signature does not check
out is refused without a look-up in the store, so forged ids cost nothing and reveal nothing.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import math
import re
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, Protocol

from ..exceptions import ConfigurationError, Reject

__all__ = ["MemoryStore", "Session", "SessionStore"]

#: Shortest secret accepted, in bytes (the size of an HMAC-SHA256 output).
MIN_SECRET_BYTES = 32

_ID = re.compile(r"[A-Za-z0-9_-]{32,128}")
_SIGNATURE = re.compile(r"[A-Za-z0-9_-]{43}")  # 32 bytes, base64url without padding
_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an RFC 6265 token
_SAME_SITE = ("Strict", "Lax", "None")


class HasCookies(Protocol):
    """Anything with the request's cookies: a ``WebSocket`` or an ``UpgradeRequest``."""

    @property
    def cookies(self) -> Mapping[str, str]: ...


class SessionStore(ABC):
    """Where session data lives, keyed by session id; share one between the HTTP app and harpy."""

    @abstractmethod
    async def get(self, session_id: str) -> dict[str, Any] | None:
        """The data stored for ``session_id``, or None when unknown or expired."""

    @abstractmethod
    async def set(self, session_id: str, data: dict[str, Any], ttl: float) -> None:
        """Store ``data`` for ``session_id``, to expire after ``ttl`` seconds."""

    @abstractmethod
    async def delete(self, session_id: str) -> None:
        """Forget ``session_id`` (no error when it is unknown)."""


class MemoryStore(SessionStore):
    """Sessions in this process's memory, with expiry; at most ``max_sessions`` (the oldest go).

    Only for one process: an HTTP app in another process needs a shared store (Redis...).
    """

    def __init__(self, max_sessions: int = 100_000) -> None:
        if isinstance(max_sessions, bool) or not isinstance(max_sessions, int) or max_sessions < 1:
            raise ConfigurationError("max_sessions must be a whole number >= 1")
        self.max_sessions = max_sessions
        """Sessions held at most: past it, the oldest are evicted."""
        # id -> (expiry on the monotonic clock, data); insertion order is age order.
        self._data: dict[str, tuple[float, dict[str, Any]]] = {}

    def __len__(self) -> int:
        return len(self._data)

    async def get(self, session_id: str) -> dict[str, Any] | None:
        """The data of the session (a copy), or None when it is unknown or expired."""
        entry = self._data.get(session_id)
        if entry is None:
            return None
        expires, data = entry
        if time.monotonic() >= expires:
            del self._data[session_id]
            return None
        return copy.deepcopy(data)

    async def set(self, session_id: str, data: dict[str, Any], ttl: float) -> None:
        """Keep a copy of ``data`` under ``session_id`` for ``ttl`` seconds."""
        now = time.monotonic()
        self._data.pop(session_id, None)
        self._data[session_id] = (now + ttl, copy.deepcopy(data))
        if len(self._data) > self.max_sessions:
            self._evict(now)

    async def delete(self, session_id: str) -> None:
        """Forget the session (nothing happens when it is unknown)."""
        self._data.pop(session_id, None)

    def _evict(self, now: float) -> None:
        """Drop the expired sessions, then the oldest ones until the bound holds."""
        for key in [k for k, (expires, _) in self._data.items() if now >= expires]:
            del self._data[key]
        while len(self._data) > self.max_sessions:
            del self._data[next(iter(self._data))]


class Session:
    """Signed session ids in a cookie, their data in a :class:`SessionStore`.

    ``secret`` (at least 32 bytes) signs the ids; keep it out of the code and share it with the
    HTTP app.  ``ttl`` is the session lifetime in seconds (and the cookie's Max-Age).
    """

    def __init__(
        self,
        store: SessionStore | None = None,
        *,
        secret: str | bytes,
        cookie_name: str = "session_id",
        ttl: float = 86400,
        secure: bool = True,
        same_site: str = "Lax",
        path: str = "/",
        domain: str | None = None,
    ) -> None:
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES:
            raise ConfigurationError(
                f"Session secret must be at least {MIN_SECRET_BYTES} bytes "
                "(for instance secrets.token_urlsafe(32))"
            )
        if not isinstance(cookie_name, str) or not _COOKIE_NAME.fullmatch(cookie_name):
            raise ConfigurationError("cookie_name must be a non-empty RFC 6265 token")
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl <= 0:
            raise ConfigurationError("ttl must be a number of seconds > 0")
        if same_site not in _SAME_SITE:
            raise ConfigurationError(f"same_site must be one of {', '.join(_SAME_SITE)}")
        if same_site == "None" and not secure:
            raise ConfigurationError("same_site='None' needs secure=True (browsers require it)")
        for name, value in (("path", path), ("domain", domain)):
            if value is not None and (
                not isinstance(value, str) or any(c in value for c in ";\r\n")
            ):
                raise ConfigurationError(f"{name} must be a string without ';' or line breaks")
        self.store: SessionStore = store if store is not None else MemoryStore()
        """Where the sessions' data lives (a :class:`MemoryStore` unless given)."""
        self._key = secret
        self.cookie_name = cookie_name
        """The name of the session cookie."""
        self.ttl = float(ttl)
        """Seconds a session lives."""
        self.secure = secure
        """Whether the cookie is ``Secure`` (HTTPS only)."""
        self.same_site = same_site
        """The cookie's ``SameSite``."""
        self.path = path
        """The cookie's ``Path``."""
        self.domain = domain
        """The cookie's ``Domain``, or None."""

    def __repr__(self) -> str:
        return f"<Session cookie={self.cookie_name!r} store={type(self.store).__name__}>"

    # ----------------------------------------------------------------- signing

    def _sign(self, session_id: str) -> str:
        digest = hmac.new(self._key, session_id.encode("ascii"), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def session_id(self, cookie_value: str | None) -> str | None:
        """The session id of a cookie value whose signature checks out, else None."""
        if not isinstance(cookie_value, str):
            return None
        session_id, dot, signature = cookie_value.strip().partition(".")
        if not dot or not _ID.fullmatch(session_id) or not _SIGNATURE.fullmatch(signature):
            return None
        if not hmac.compare_digest(self._sign(session_id), signature):
            return None
        return session_id

    # ----------------------------------------------------------------- life cycle

    async def create(self, data: Mapping[str, Any]) -> str:
        """Store ``data`` under a new random id; return the signed cookie value to set."""
        if not isinstance(data, Mapping):
            raise TypeError(f"session data must be a mapping, not {type(data).__name__}")
        session_id = secrets.token_urlsafe(32)
        await self.store.set(session_id, dict(data), self.ttl)
        return f"{session_id}.{self._sign(session_id)}"

    async def load(self, cookie_value: str | None) -> dict[str, Any] | None:
        """The data of a signed cookie value; None when unsigned, forged, unknown or expired."""
        session_id = self.session_id(cookie_value)
        if session_id is None:
            return None
        return await self.store.get(session_id)

    async def from_websocket(self, ws: HasCookies) -> dict[str, Any] | None:
        """The session data of the connection's cookie (``ws.cookies[cookie_name]``), or None."""
        return await self.load(ws.cookies.get(self.cookie_name))

    async def authenticate(self, request: HasCookies) -> dict[str, Any]:
        """An ``authenticate=`` hook: the session data goes on ``ws.auth``; no session is 401."""
        data = await self.from_websocket(request)
        if data is None:
            raise Reject(401, "Unauthorized")
        return data

    async def destroy(self, cookie_value: str | None) -> None:
        """Log out: forget the session of a signed cookie value (a bad value is ignored)."""
        session_id = self.session_id(cookie_value)
        if session_id is not None:
            await self.store.delete(session_id)

    # ----------------------------------------------------------------- cookies

    def cookie_header(self, cookie_value: str, *, max_age: float | None = None) -> str:
        """A ``Set-Cookie`` header value carrying ``cookie_value`` (HttpOnly, Secure, SameSite)."""
        if self.session_id(cookie_value) is None:
            raise ConfigurationError("cookie_value must be a value Session.create() returned")
        age = self.ttl if max_age is None else max_age
        return self._cookie(cookie_value, math.ceil(age))

    def clear_cookie_header(self) -> str:
        """A ``Set-Cookie`` header value that removes the cookie (use after :meth:`destroy`)."""
        return self._cookie("", 0)

    def _cookie(self, value: str, max_age: int) -> str:
        parts = [f"{self.cookie_name}={value}", f"Max-Age={max_age}"]
        if self.path:
            parts.append(f"Path={self.path}")
        if self.domain:
            parts.append(f"Domain={self.domain}")
        parts.append("HttpOnly")
        if self.secure:
            parts.append("Secure")
        parts.append(f"SameSite={self.same_site}")
        return "; ".join(parts)

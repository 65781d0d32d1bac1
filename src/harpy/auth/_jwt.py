"""``harpy.auth.jwt(...)``: verify a JSON Web Token at the upgrade or in the first message.

Built on PyJWT (``pip install 'harpy-ws[jwt]'``).  The algorithms are fixed by the application
and ``none`` is never accepted; the claims of a valid token go on ``ws.auth``.  Neither the token
nor the key ever appears in an exception message or a log line.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal, overload

from ..exceptions import ConfigurationError, Reject
from .hooks import Deny, FirstMessageAuth, UpgradeRequest

__all__ = ["JWTFirstMessageAuth", "jwt"]

logger = logging.getLogger("harpy")

Source = Literal["first_message", "cookie", "header", "query", "protocol"]
SOURCES: tuple[str, ...] = ("first_message", "cookie", "header", "query", "protocol")

#: A token (or a first message) longer than this many bytes is refused without decoding.
MAX_TOKEN_SIZE = 8192

#: The shortest HMAC secret per algorithm (RFC 7518 3.2: at least the hash output size).
_HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}

_MISSING = [("WWW-Authenticate", "Bearer")]
_INVALID = [("WWW-Authenticate", 'Bearer error="invalid_token"')]


class _Verifier:
    """The checked configuration, and the one place a token is decoded."""

    __slots__ = ("_audience", "_issuer", "_key", "_leeway", "_options", "_pyjwt", "algorithms")

    def __init__(
        self,
        pyjwt: Any,
        key: Any,
        algorithms: list[str],
        audience: str | Sequence[str] | None,
        issuer: str | Sequence[str] | None,
        leeway: float,
        require: Sequence[str],
    ) -> None:
        self._pyjwt = pyjwt
        self._key = key
        self.algorithms = algorithms
        self._audience = (
            audience if audience is None or isinstance(audience, str) else list(audience)
        )
        self._issuer = issuer if issuer is None or isinstance(issuer, str) else list(issuer)
        self._leeway = leeway
        self._options = {"require": list(require), "enforce_minimum_key_length": True}

    def decode(self, token: object) -> dict[str, Any] | None:
        """The claims of a valid token, else None (no reason given: it could carry the token)."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_SIZE:
            return None
        try:
            claims = self._pyjwt.decode(
                token,
                self._key,
                algorithms=self.algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options=self._options,
            )
        except self._pyjwt.PyJWTError:
            return None
        return claims if isinstance(claims, dict) else None

    def __repr__(self) -> str:
        return f"<JWT {','.join(self.algorithms)}>"


class JWTFirstMessageAuth(FirstMessageAuth):
    """First-message JWT: ``{"type": "auth", "token": "..."}`` or the bare token, as text.

    A bad token closes with 1008 "Invalid Token"; no message within ``timeout`` seconds closes
    with 1008 "Auth Timeout".  The claims go on ``ws.auth``.
    """

    def __init__(self, verifier: _Verifier, timeout: float) -> None:
        self._verifier = verifier
        self.timeout = timeout

    def verify(self, message: str | bytes) -> dict[str, Any]:
        claims = self._verifier.decode(_first_message_token(message))
        if claims is None:
            raise Deny(1008, "Invalid Token")
        return claims

    def __repr__(self) -> str:
        return f"<JWTFirstMessageAuth {self._verifier!r} timeout={self.timeout}>"


def _first_message_token(message: str | bytes) -> str | None:
    if len(message) > MAX_TOKEN_SIZE:
        return None
    if isinstance(message, bytes):
        try:
            message = message.decode("utf-8")
        except UnicodeDecodeError:
            return None
    text = message.strip()
    if not text.startswith("{"):
        return text
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict) or obj.get("type") != "auth":
        return None
    token = obj.get("token")
    return token.strip() if isinstance(token, str) else None


UpgradeHook = Callable[[UpgradeRequest], dict[str, Any]]


@overload
def jwt(
    *,
    secret: str | bytes | None = ...,
    public_key: Any = ...,
    algorithms: Sequence[str],
    audience: str | Sequence[str] | None = ...,
    issuer: str | Sequence[str] | None = ...,
    leeway: float = ...,
    require: Sequence[str] = ...,
    source: Literal["first_message"] = ...,
    cookie_name: str = ...,
    header: str = ...,
    query_param: str = ...,
    protocol_marker: str = ...,
    timeout: float = ...,
) -> JWTFirstMessageAuth: ...


@overload
def jwt(
    *,
    secret: str | bytes | None = ...,
    public_key: Any = ...,
    algorithms: Sequence[str],
    audience: str | Sequence[str] | None = ...,
    issuer: str | Sequence[str] | None = ...,
    leeway: float = ...,
    require: Sequence[str] = ...,
    source: Literal["cookie", "header", "query", "protocol"],
    cookie_name: str = ...,
    header: str = ...,
    query_param: str = ...,
    protocol_marker: str = ...,
    timeout: float = ...,
) -> UpgradeHook: ...


@overload
def jwt(
    *,
    secret: str | bytes | None = ...,
    public_key: Any = ...,
    algorithms: Sequence[str],
    audience: str | Sequence[str] | None = ...,
    issuer: str | Sequence[str] | None = ...,
    leeway: float = ...,
    require: Sequence[str] = ...,
    source: str,
    cookie_name: str = ...,
    header: str = ...,
    query_param: str = ...,
    protocol_marker: str = ...,
    timeout: float = ...,
) -> JWTFirstMessageAuth | UpgradeHook: ...


def jwt(
    *,
    secret: str | bytes | None = None,
    public_key: Any = None,
    algorithms: Sequence[str],
    audience: str | Sequence[str] | None = None,
    issuer: str | Sequence[str] | None = None,
    leeway: float = 0,
    require: Sequence[str] = ("exp",),
    source: str = "first_message",
    cookie_name: str = "token",
    header: str = "authorization",
    query_param: str = "token",
    protocol_marker: str = "bearer",
    timeout: float = 5.0,
) -> JWTFirstMessageAuth | UpgradeHook:
    """A value for a route's ``authenticate=`` that verifies a JWT and puts its claims on
    ``ws.auth``.

    ``secret`` (HS256/384/512) or ``public_key`` (RS*, PS*, ES*, EdDSA; PEM or a key object):
    exactly one.  ``algorithms`` is required and may not contain ``none``.  ``source`` says
    where the token is:

    * ``"first_message"`` (the default, and the safest for browsers): the first message after
      the upgrade, ``{"type": "auth", "token": "..."}`` or the bare token, within ``timeout``
      seconds; a bad token closes with 1008 "Invalid Token".
    * ``"cookie"`` (``cookie_name``), ``"header"`` (``header``, a ``Bearer`` prefix is
      stripped), ``"query"`` (``query_param``; URLs leak into logs: avoid), ``"protocol"`` (the
      ``Sec-WebSocket-Protocol`` value after ``protocol_marker``; the route must list
      ``subprotocols=[protocol_marker]``): checked before the 101; no token is
      ``Reject(401, "Missing Token")``, a bad one ``Reject(401, "Invalid Token")``.
    """
    pyjwt = _import_pyjwt()
    algs = _check_algorithms(algorithms)
    key = _prepare_key(pyjwt, algs, secret, public_key)
    if isinstance(leeway, bool) or not isinstance(leeway, (int, float)) or leeway < 0:
        raise ConfigurationError("leeway must be a number of seconds >= 0")
    if isinstance(require, str) or not all(isinstance(c, str) and c for c in require):
        raise ConfigurationError("require must be a list of claim names")
    for name, value in (("audience", audience), ("issuer", issuer)):
        if (
            value is not None
            and not isinstance(value, str)
            and (not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value))
        ):
            raise ConfigurationError(f"{name} must be a string, a list of strings, or None")
    verifier = _Verifier(pyjwt, key, algs, audience, issuer, float(leeway), require)
    if source == "first_message":
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ConfigurationError("timeout must be a number of seconds > 0")
        return JWTFirstMessageAuth(verifier, float(timeout))
    if source == "cookie":
        _check_name("cookie_name", cookie_name)
        return _hook(verifier, source, lambda request: request.cookies.get(cookie_name))
    if source == "header":
        _check_name("header", header)
        name = header.lower()
        return _hook(verifier, source, lambda request: _bearer(request.headers.get(name)))
    if source == "query":
        _check_name("query_param", query_param)
        return _query_hook(verifier, query_param)
    if source == "protocol":
        _check_name("protocol_marker", protocol_marker)
        return _protocol_hook(verifier, protocol_marker)
    raise ConfigurationError(f"jwt source must be one of {', '.join(SOURCES)}")


# --------------------------------------------------------------------- configuration checks


def _import_pyjwt() -> Any:
    try:
        import jwt as pyjwt
    except ImportError:
        raise ConfigurationError(
            "harpy.auth.jwt needs PyJWT: pip install 'harpy-ws[jwt]' (or pip install PyJWT)"
        ) from None
    return pyjwt


def _check_algorithms(algorithms: Sequence[str]) -> list[str]:
    if isinstance(algorithms, str) or not isinstance(algorithms, Sequence):
        raise ConfigurationError('algorithms must be a list, such as ["HS256"]')
    algs = list(algorithms)
    if not algs:
        raise ConfigurationError('algorithms must not be empty: name them, such as ["HS256"]')
    for alg in algs:
        if not isinstance(alg, str) or not alg:
            raise ConfigurationError("algorithms must be non-empty strings")
        if alg.strip().lower() == "none":
            raise ConfigurationError('the "none" algorithm (unsigned tokens) is never accepted')
    hmac_algs = [a for a in algs if a.startswith("HS")]
    if hmac_algs and len(hmac_algs) != len(algs):
        raise ConfigurationError(
            "algorithms must not mix HMAC (HS*) and public-key algorithms: a public key used "
            "as an HMAC secret lets anyone sign tokens"
        )
    return algs


def _prepare_key(pyjwt: Any, algs: list[str], secret: Any, public_key: Any) -> Any:
    """The key, checked against every algorithm now rather than at the first token."""
    if (secret is None) == (public_key is None):
        raise ConfigurationError("jwt() takes exactly one of secret= or public_key=")
    symmetric = algs[0].startswith("HS")
    if secret is not None:
        if not symmetric:
            raise ConfigurationError(f"{algs[0]} verifies with public_key=, not secret=")
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        if not isinstance(secret, bytes):
            raise ConfigurationError("secret must be str or bytes")
        for alg in algs:
            need = _HMAC_MIN_BYTES.get(alg, 32)
            if len(secret) < need:
                raise ConfigurationError(
                    f"the secret for {alg} must be at least {need} bytes (RFC 7518 3.2)"
                )
    elif symmetric:
        raise ConfigurationError(f"{algs[0]} verifies with secret=, not public_key=")
    key = secret if secret is not None else public_key
    prepared = key
    for alg in algs:
        try:
            algorithm = pyjwt.get_algorithm_by_name(alg)
        except NotImplementedError:
            raise ConfigurationError(
                f"JWT algorithm {alg} is unknown or unavailable (RS*, PS*, ES* and EdDSA need "
                "the cryptography package: pip install 'PyJWT[crypto]')"
            ) from None
        try:
            prepared_for_alg = algorithm.prepare_key(key)
        except (pyjwt.PyJWTError, ValueError, TypeError):
            raise ConfigurationError(f"the key given does not suit {alg}") from None
        check = getattr(algorithm, "check_key_length", None)
        if check is not None and check(prepared_for_alg):
            raise ConfigurationError(f"the key given is too short for {alg}")
        if alg == algs[0]:
            prepared = prepared_for_alg
    # An HMAC secret stays bytes; a public key is parsed once (PEM) instead of per token.
    return secret if secret is not None else prepared


def _check_name(what: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{what} must be a non-empty string")


# --------------------------------------------------------------------- upgrade hooks


def _bearer(value: str | None) -> str | None:
    """The token of ``Bearer <token>`` (or of a bare token); another scheme stays as it is,
    which no token check accepts."""
    if value is None:
        return None
    parts = value.strip().split(None, 1)
    if len(parts) == 2 and parts[0].lower() == "bearer":
        return parts[1].strip()
    return value.strip()


def _claims(verifier: _Verifier, token: str | None) -> dict[str, Any]:
    if not token:
        raise Reject(401, "Missing Token", _MISSING)
    claims = verifier.decode(token)
    if claims is None:
        raise Reject(401, "Invalid Token", _INVALID)
    return claims


def _hook(
    verifier: _Verifier, source: str, find: Callable[[UpgradeRequest], str | None]
) -> UpgradeHook:
    def hook(request: UpgradeRequest) -> dict[str, Any]:
        return _claims(verifier, find(request))

    hook.__name__ = f"jwt_from_{source}"
    hook.__qualname__ = hook.__name__
    return hook


def _query_hook(verifier: _Verifier, param: str) -> UpgradeHook:
    warned = False

    def jwt_from_query(request: UpgradeRequest) -> dict[str, Any]:
        nonlocal warned
        token = request.query.get(param)
        if token is not None and not warned:
            warned = True
            logger.warning(
                "harpy: route %s takes a JWT from the query string (?%s=): URLs end up in "
                "server, proxy and browser logs and history; prefer the first message or an "
                "HttpOnly cookie",
                request.route,
                param,
            )
        return _claims(verifier, token)

    return jwt_from_query


def _protocol_hook(verifier: _Verifier, marker: str) -> UpgradeHook:
    def jwt_from_protocol(request: UpgradeRequest) -> dict[str, Any]:
        offered = request.subprotocols
        token = None
        if marker in offered:
            at = offered.index(marker)
            token = offered[at + 1] if at + 1 < len(offered) else None
        if token is not None and request.subprotocol is None:
            # The 101 must name a subprotocol the client offered, or the browser fails it.
            logger.error(
                "harpy: route %s takes a JWT from Sec-WebSocket-Protocol but does not list "
                "subprotocols=[%r]",
                request.route,
                marker,
            )
            raise Reject(500, "Internal Server Error")
        return _claims(verifier, token)

    return jwt_from_protocol

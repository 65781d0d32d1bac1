"""The opening handshake (RFC 6455 section 4): parse the upgrade request, check it, answer it.

Pure functions over bytes.  The server decides *when* to answer (it may first await an
``authenticate`` hook); this module only decides *what* the request says and the answer's bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterator, Mapping
from http import HTTPStatus
from urllib.parse import urlsplit

from ..exceptions import HandshakeError

__all__ = [
    "GUID",
    "ORIGIN_REFUSED",
    "Headers",
    "Request",
    "accept_key",
    "build_accept",
    "build_refusal",
    "build_response",
    "check_upgrade",
    "origin_allowed",
    "parse_cookies",
    "parse_request",
    "refusal",
    "shared_text",
]

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# RFC 9110 5.6.2: what a method or header name may contain (deleted by translate() to check).
_TOKEN_CHARS = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# RFC 9110 5.5: the control characters no field value may hold (HTAB may; CR and LF end lines).
_CTL = bytes(c for c in range(0x20) if c not in b"\t\r\n") + b"\x7f"
# RFC 9112 3.2, RFC 3986: a request target is visible ASCII (deleted by translate() to check).
_VCHAR = bytes(range(0x21, 0x7F))


class Request:
    """An HTTP/1.1 upgrade request: method, target split into path and query, headers.

    Header names are lower-cased; values are decoded as Latin-1 (RFC 9110 5.5) and stripped.
    Once the upgrade is decided, :meth:`compact` keeps the headers as the bytes they came in
    (a long-lived connection holds one ``bytes`` instead of a list of tuples of strings):
    they are parsed again on each use after that.
    """

    __slots__ = ("_fields", "_head", "method", "path", "query_string", "target")

    def __init__(
        self, method: str, target: str, headers: list[tuple[str, str]], head: bytes = b""
    ) -> None:
        self.method = method
        self.target = target
        path, _, query = target.partition("?")
        self.path = path
        self.query_string = query
        self._fields: list[tuple[str, str]] | None = headers
        # The request as it came (the request line and the header lines), when parsed from
        # bytes: what compact() keeps instead of the list.
        self._head = head

    @property
    def headers(self) -> list[tuple[str, str]]:
        """The (lower-case name, value) pairs, in order (after :meth:`compact`: a new list,
        parsed from the raw request, on each use)."""
        fields = self._fields
        return fields if fields is not None else _fields(self._head.split(b"\r\n")[1:])

    def compact(self) -> None:
        """Keep the headers as the raw bytes they were parsed from only (when there are
        such bytes): what a connection holds for its lifetime."""
        if self._head:
            self._fields = None

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of header ``name`` (lower case), or ``default``."""
        for key, value in self._fields if self._fields is not None else self.headers:
            if key == name:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of header ``name`` (lower case), in order."""
        fields = self._fields if self._fields is not None else self.headers
        return [value for key, value in fields if key == name]

    def tokens(self, name: str) -> list[str]:
        """The comma-separated, lower-cased tokens of every ``name`` header (Connection...)."""
        return [token.lower() for token in self.tokens_cased(name)]

    def tokens_cased(self, name: str) -> list[str]:
        """The comma-separated tokens of every ``name`` header, case kept (subprotocols)."""
        return _tokens_cased(self._fields if self._fields is not None else self.headers, name)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target}>"


def _tokens_cased(items: list[tuple[str, str]], name: str) -> list[str]:
    out: list[str] = []
    for key, value in items:
        if key == name:
            out.extend(t.strip() for t in value.split(",") if t.strip())
    return out


#: The methods' names, shared by every request instead of decoded for each.
_METHOD_NAMES = {m.encode("ascii"): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE")}
#: At most this many distinct targets and Host values, of at most ``_SHARED_LONGEST``
#: characters, are shared between requests.
_SHARED_MAX = 256
_SHARED_LONGEST = 256
_shared: dict[str, str] = {}


def shared_text(text: str) -> str:
    """One string object for equal values that many connections keep (a route's path, the
    ``Host`` a server is reached by): the first one seen of at most :data:`_SHARED_MAX`
    values (the table starts afresh when full, so unique values from many clients cannot
    grow it; a long value, likely unique, is not kept)."""
    if len(text) > _SHARED_LONGEST:
        return text
    found = _shared.get(text)
    if found is None:
        if len(_shared) >= _SHARED_MAX:
            _shared.clear()
        _shared[text] = found = text
    return found


def _fields(lines: list[bytes], check: bool = False) -> list[tuple[str, str]]:
    """The (name, value) pairs of header lines; ``check``: raise HandshakeError(400) for a
    malformed one (once, when the request is parsed: after that they are known good)."""
    fields: list[tuple[str, str]] = []
    for line in lines:
        name, sep, value = line.partition(b":")
        if check and (not sep or not name or name.translate(None, _TOKEN_CHARS)):
            raise HandshakeError(400, "Malformed header")
        key = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("latin-1")
        # Host is kept by the connection for its lifetime: one object for every connection.
        fields.append((key, shared_text(text) if key == "host" else text))
    return fields


def parse_request(head: bytes) -> Request:
    """Parse the request line and headers (``head`` ends before the blank line).

    Raises HandshakeError(400) for anything RFC 9112 does not allow.
    """
    # RFC 9110 5.5: a CR or LF inside a line, a NUL or another control character (HTAB aside)
    # is an error, not part of a value; RFC 9112 2.2 lets a server reject a bare LF.
    crlf = head.count(b"\r\n")
    if (
        head.count(b"\n") != crlf
        or head.count(b"\r") != crlf
        or len(head.translate(None, _CTL)) != len(head)
    ):
        raise HandshakeError(400, "Malformed header")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise HandshakeError(400, "Malformed request line")
    method, target, version = parts
    # RFC 6455 4.2.1: an HTTP/1.1 or later GET request.
    if version != b"HTTP/1.1" and not (
        len(version) == 8 and version[:7] == b"HTTP/1." and version[7:8] in b"23456789"
    ):
        raise HandshakeError(400, "Unsupported HTTP version: WebSocket needs HTTP/1.1")
    if not method or method.translate(None, _TOKEN_CHARS):
        raise HandshakeError(400, "Malformed method")
    # RFC 6455 3 and 4.2.1: the origin form (a path, then an optional query) only.
    if not target.startswith(b"/") or target.translate(None, _VCHAR):
        raise HandshakeError(400, "Malformed request target")
    return Request(
        _METHOD_NAMES.get(method) or method.decode("ascii"),
        shared_text(target.decode("latin-1")),
        _fields(lines[1:], True),
        head,
    )


def check_upgrade(request: Request) -> str:
    """Check the WebSocket-specific headers (RFC 6455 4.2.1); return Sec-WebSocket-Key.

    A request without exactly one ``Host`` gets 400 (4.2.1 item 2, RFC 9112 3.2), before
    anything else is judged.  A request that is not an upgrade at all gets 426 with
    ``Upgrade: websocket``; a wrong version 426 with ``Sec-WebSocket-Version: 13`` (4.4); any
    other defect 400.
    """
    if len(request.get_all("host")) != 1:
        raise HandshakeError(400, "Missing or repeated Host")
    if "websocket" not in request.tokens("upgrade"):
        raise HandshakeError(
            426,
            "This resource only speaks WebSocket",
            [("Upgrade", "websocket")],
        )
    if request.method != "GET":
        raise HandshakeError(405, "WebSocket upgrades use GET", [("Allow", "GET")])
    if "upgrade" not in request.tokens("connection"):
        raise HandshakeError(400, "Missing Connection: Upgrade")
    versions = request.get_all("sec-websocket-version")
    if versions != ["13"]:
        raise HandshakeError(
            426, "Unsupported WebSocket version", [("Sec-WebSocket-Version", "13")]
        )
    keys = request.get_all("sec-websocket-key")
    if len(keys) != 1:
        raise HandshakeError(400, "Missing or repeated Sec-WebSocket-Key")
    key = keys[0]
    try:
        raw = base64.b64decode(key.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise HandshakeError(400, "Malformed Sec-WebSocket-Key") from None
    if len(raw) != 16:
        raise HandshakeError(400, "Malformed Sec-WebSocket-Key")
    return key


#: The 403's body for an origin :func:`origin_allowed` refuses: how to allow one.
ORIGIN_REFUSED = (
    "Origin not allowed: a page from another origin (a dev server on another port too) needs "
    'the route\'s allowed_origins, e.g. allowed_origins=["http://localhost:5173"]'
)

#: The ports an Origin without one means, by scheme (RFC 6454 4).
_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


def _authority(url: str) -> tuple[str, int | None] | None:
    """(host, port) of a URL: the port its scheme implies when it has none (None without a
    scheme: a Host header is given as ``//host:port``); None when it does not parse."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:  # a port out of range, or not a number
        return None
    return None if not parts.hostname else (parts.hostname, port)


def origin_allowed(origin: str, host: str | None, allowed: frozenset[str] | None) -> bool:
    """Whether a browser's ``Origin`` may open the connection (cross-site WebSocket hijacking).

    ``allowed`` holds origins lower-cased without a trailing ``/``; ``"*"`` in it allows any.
    None allows the origin the request was sent to alone: the Origin's host and port must be
    the ``Host`` header's, whatever the scheme (behind a TLS proxy the two differ), a port left
    out being 80 or 443.
    """
    if allowed is not None:
        return "*" in allowed or origin.strip().rstrip("/").lower() in allowed
    theirs = _authority(origin)
    ours = None if host is None else _authority("//" + host.strip())
    if theirs is None or ours is None or theirs[1] is None or theirs[0] != ours[0]:
        return False
    if ours[1] is None:
        return theirs[1] in (80, 443)
    return theirs[1] == ours[1]


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 4.2.2 step 5.4)."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + GUID).digest()).decode("ascii")


def build_accept(key: str, headers: list[tuple[str, str]] | None = None) -> bytes:
    """The 101 response, with optional extra headers (subprotocol, extensions)."""
    out = (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(key)}\r\n"
    )
    if headers:
        out += "".join(f"{name}: {value}\r\n" for name, value in headers)
    return (out + "\r\n").encode("latin-1")


def refusal(
    status: int, reason: str = "", headers: list[tuple[str, str]] | None = None
) -> tuple[str, list[tuple[str, str]], bytes]:
    """The status phrase, headers and body of an HTTP refusal; the body is ``reason`` (or the
    phrase) as text, and the connection closes after it."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    body = ((reason or phrase) + "\n").encode("utf-8")
    out = list(headers or ())
    if not any(name.lower() == "connection" for name, _ in out):
        out.append(("Connection", "close"))
    out.append(("Content-Type", "text/plain; charset=utf-8"))
    out.append(("Content-Length", str(len(body))))
    return phrase, out, body


def build_refusal(
    status: int, reason: str = "", headers: list[tuple[str, str]] | None = None
) -> bytes:
    """A complete HTTP refusal (see :func:`refusal`), as bytes."""
    _, fields, body = refusal(status, reason, headers)
    return build_response(status, fields, body)


def build_response(
    status: int,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    *,
    content_length: int | None = None,
) -> bytes:
    """A complete HTTP/1.1 response head and ``body``; ``Connection: close`` (the connection
    closes after it: no keep-alive) and ``Content-Length`` (``content_length``, else the
    body's size; a HEAD answer gives the size with no body) unless ``headers`` set them."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error" if status >= 400 else "OK"
    fields = list(headers or ())
    names = {name.lower() for name, _ in fields}
    if "connection" not in names:
        fields.append(("Connection", "close"))
    if "content-length" not in names:
        size = len(body) if content_length is None else content_length
        fields.append(("Content-Length", str(size)))
    head = f"HTTP/1.1 {status} {phrase}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields)
    return (head + "\r\n").encode("latin-1") + body


def parse_cookies(header: str) -> dict[str, str]:
    """Parse a Cookie header (RFC 6265 5.4): ``a=1; b=x=y`` gives ``{"a": "1", "b": "x=y"}``."""
    cookies: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        name = name.strip()
        if not sep or not name:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        cookies.setdefault(name, value)
    return cookies


class Headers(Mapping[str, str]):
    """The upgrade request's headers, read-only and case-insensitive; repeated ones via get_all."""

    __slots__ = ("_items",)

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._items = items

    def __getitem__(self, name: str) -> str:
        name = name.lower()
        for key, value in self._items:
            if key == name:
                return value
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        seen = set()
        for key, _ in self._items:
            if key not in seen:
                seen.add(key)
                yield key

    def __len__(self) -> int:
        return len({key for key, _ in self._items})

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in order (empty when none)."""
        name = name.lower()
        return [value for key, value in self._items if key == name]

    def tokens_cased(self, name: str) -> list[str]:
        """The comma-separated tokens of every ``name`` header, case kept (subprotocols)."""
        return _tokens_cased(self._items, name.lower())

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"

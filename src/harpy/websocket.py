"""The connection object handed to every handler: ``harpy.WebSocket[T]``."""

from __future__ import annotations

import inspect
import itertools
import json
import logging
import os
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import parse_qsl

from .exceptions import ConfigurationError, HandshakeError, ProtocolError
from .protocol import (
    OP_BINARY,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Request,
    build_frame,
    check_upgrade,
    is_valid_close_code,
)
from .server import Connection, ReadyState, Server

if TYPE_CHECKING:
    from .app import App, Route

__all__ = ["Headers", "WebSocket", "parse_cookies"]

logger = logging.getLogger("harpy")

T = TypeVar("T")

_ids = itertools.count(1)
_ID_PREFIX = os.urandom(4).hex()
_OPEN = ReadyState.OPEN


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
        name = name.lower()
        return [value for key, value in self._items if key == name]

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


class WebSocket(Connection, Generic[T]):
    """One client connection on a route.

    ``data`` is the per-connection object (typed by the route's ``data=`` class), ``params`` the
    path parameters, and ``send`` returns Bun's status: bytes written, -1 when queued under
    backpressure, 0 when dropped because the connection is closing or closed.
    """

    __slots__ = (
        "_app",
        "_busy",
        "_cookies",
        "_handlers",
        "_id",
        "_queue",
        "_reading_paused",
        "_route",
        "auth",
        "data",
        "params",
        "request",
        "subprotocol",
    )

    def __init__(self, server: Server, app: App) -> None:
        super().__init__(server)
        self._app = app
        self._route: Route | None = None
        self._handlers: Any = None
        self._id = ""
        self._busy = False
        self._queue: deque[tuple[Callable[..., Any], tuple[Any, ...]]] | None = None
        self._reading_paused = False
        self._cookies: dict[str, str] | None = None
        self.request: Request | None = None
        self.params: dict[str, str] = {}
        self.data: T = None  # type: ignore[assignment]
        self.auth: Any = None
        self.subprotocol: str | None = None

    # ----------------------------------------------------------------- request facts

    @property
    def id(self) -> str:
        """A process-unique id, made on first use."""
        if not self._id:
            self._id = f"{_ID_PREFIX}-{next(_ids)}"
        return self._id

    @property
    def route(self) -> str:
        """The pattern of the route this connection matched."""
        return self._route.pattern if self._route is not None else ""

    @property
    def path(self) -> str:
        return self.request.path if self.request is not None else ""

    @property
    def query_string(self) -> str:
        return self.request.query_string if self.request is not None else ""

    @property
    def query(self) -> dict[str, str]:
        """Query parameters; the first value wins when a name repeats."""
        out: dict[str, str] = {}
        for key, value in parse_qsl(self.query_string, keep_blank_values=True):
            out.setdefault(key, value)
        return out

    @property
    def headers(self) -> Headers:
        return Headers(self.request.headers if self.request is not None else [])

    @property
    def cookies(self) -> dict[str, str]:
        if self._cookies is None:
            header = "; ".join(self.request.get_all("cookie")) if self.request else ""
            self._cookies = parse_cookies(header)
        return self._cookies

    @property
    def url(self) -> str:
        """``ws://host/path?query`` (``wss`` over TLS), as the client asked for it."""
        host = (self.request.get("host") if self.request else None) or "localhost"
        scheme = "wss" if self._tls else "ws"
        target = self.request.target if self.request else "/"
        return f"{scheme}://{host}{target}"

    @property
    def _tls(self) -> bool:
        transport = self.transport
        return transport is not None and transport.get_extra_info("sslcontext") is not None

    @property
    def remote_address(self) -> str:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        if isinstance(peer, tuple):
            return str(peer[0])
        return str(peer) if peer else ""

    # ----------------------------------------------------------------- sending

    def send(self, data: str | bytes | bytearray | memoryview, compress: bool | None = None) -> int:
        """Send text (``str``) or binary data; returns bytes written, -1 queued, 0 dropped."""
        if type(data) is str:
            return self._write(build_frame(OP_TEXT, data.encode("utf-8")))
        if isinstance(data, (bytes, bytearray, memoryview)):
            return self._write(build_frame(OP_BINARY, bytes(data)))
        raise TypeError(f"send() takes str or bytes-like data, not {type(data).__name__}")

    def send_text(self, data: str) -> int:
        if not isinstance(data, str):
            raise TypeError(f"send_text() takes str, not {type(data).__name__}")
        return self._write(build_frame(OP_TEXT, data.encode("utf-8")))

    def send_binary(self, data: bytes | bytearray | memoryview) -> int:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"send_binary() takes bytes-like data, not {type(data).__name__}")
        return self._write(build_frame(OP_BINARY, bytes(data)))

    def send_json(self, obj: Any) -> int:
        """Serialise ``obj`` as compact JSON and send it as text."""
        return self.send_text(json.dumps(obj, separators=(",", ":"), ensure_ascii=False))

    def ping(self, data: bytes | str = b"") -> int:
        return self._write(build_frame(OP_PING, _control_payload(data)))

    def pong(self, data: bytes | str = b"") -> int:
        return self._write(build_frame(OP_PONG, _control_payload(data)))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake; ``close`` runs once the peer answered (or timed out)."""
        if code != 1000 and not is_valid_close_code(code):
            raise ConfigurationError(f"close code {code} may not be sent (use 1000-1003, "
                                     "1007-1014 or 3000-4999)")
        if len(reason.encode("utf-8")) > 123:
            raise ConfigurationError("close reason is longer than 123 bytes of UTF-8")
        self._close(code, reason)

    def terminate(self) -> None:
        """Drop the TCP connection at once, without a closing handshake."""
        self._abort()

    def cork(self, fn: Callable[[WebSocket[T]], Any]) -> Any:
        """Run ``fn(ws)``; every send it makes leaves in one write."""
        if self._corked:
            return fn(self)
        self._corked = True
        try:
            return fn(self)
        finally:
            self._corked = False
            self._flush()

    # ----------------------------------------------------------------- handshake hook

    def _handle_request(self, request: Request) -> None:
        app = self._app
        match = app._table.match(request.path)
        if match is None:
            self._refuse(404, "Not Found")
            return
        route, params = match
        try:
            key = check_upgrade(request)
        except HandshakeError as exc:
            self._refuse(exc.status, exc.reason, exc.headers)
            return
        self.request = request
        self.params = params
        self._route = route
        self._handlers = route.handlers
        try:
            self.data = route.make_data(self)
        except Exception:
            logger.exception("harpy: data factory of route %s failed", route.pattern)
            self._refuse(500, "Internal Server Error")
            return
        self._accept(key, None, route.limits, None)

    # ----------------------------------------------------------------- event hooks

    def _handle_open(self) -> None:
        route = self._route
        assert route is not None
        self._app.connections._add(self, route.pattern)
        fn = self._handlers.open
        if fn is not None:
            self._call(fn, ())

    def _handle_message(self, message: str | bytes) -> None:
        fn = self._handlers.message
        if fn is not None:
            if self._busy:
                self._enqueue(fn, (message,))
            else:
                try:
                    result = fn(self, message)
                except Exception as exc:  # noqa: BLE001
                    self._handler_failed(exc)
                    return
                if result is not None and inspect.isawaitable(result):
                    self._start_async(result)

    def _handle_ping(self, data: bytes) -> None:
        fn = self._handlers.ping
        if fn is not None:
            self._call(fn, (data,))

    def _handle_pong(self, data: bytes) -> None:
        fn = self._handlers.pong
        if fn is not None:
            self._call(fn, (data,))

    def _handle_drain(self) -> None:
        fn = self._handlers.drain
        if fn is not None:
            self._call(fn, ())

    def _handle_closed(self, code: int, reason: str) -> None:
        self._app.connections._discard(self)
        fn = self._handlers.close if self._handlers is not None else None
        if fn is not None:
            self._call(fn, (code, reason))

    def _handle_protocol_error(self, exc: ProtocolError) -> None:
        fn = self._handlers.error if self._handlers is not None else None
        if fn is not None:
            self._call(fn, (exc,))

    # ----------------------------------------------------------------- dispatch

    def _call(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        """Run a handler now, or after the ones before it when an async one is running."""
        if self._busy:
            self._enqueue(fn, args)
            return
        try:
            result = fn(self, *args)
        except Exception as exc:  # noqa: BLE001
            self._handler_failed(exc)
            return
        if result is not None and inspect.isawaitable(result):
            self._start_async(result)

    def _enqueue(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        queue.append((fn, args))
        route = self._route
        if (
            route is not None
            and len(queue) >= route.max_pending_messages
            and not self._reading_paused
            and self.transport is not None
            and self.ready_state is _OPEN
        ):
            # Read-side backpressure: stop reading until the handlers catch up.
            self._reading_paused = True
            self.transport.pause_reading()

    def _start_async(self, awaitable: Any) -> None:
        self._busy = True
        self._server.loop.create_task(self._run_queue(awaitable))

    async def _run_queue(self, first: Any) -> None:
        try:
            await first
        except Exception as exc:  # noqa: BLE001
            self._handler_failed(exc)
        queue = self._queue
        while queue:
            fn, args = queue.popleft()
            if self._reading_paused and len(queue) <= self._resume_at():
                self._reading_paused = False
                if self.transport is not None and self.ready_state is _OPEN:
                    self.transport.resume_reading()
            try:
                result = fn(self, *args)
                if result is not None and inspect.isawaitable(result):
                    await result
            except Exception as exc:  # noqa: BLE001
                self._handler_failed(exc)
        self._busy = False
        if self._reading_paused:
            self._reading_paused = False
            if self.transport is not None and self.ready_state is _OPEN:
                self.transport.resume_reading()

    def _resume_at(self) -> int:
        route = self._route
        return route.max_pending_messages // 4 if route is not None else 0

    def _handler_failed(self, exc: BaseException) -> None:
        """A handler raised: ``error(ws, exc)`` decides, else log and close with 1011."""
        fn = self._handlers.error if self._handlers is not None else None
        if fn is not None and not isinstance(exc, _ErrorHandlerFailed):
            try:
                result = fn(self, exc)
                if result is not None and inspect.isawaitable(result):
                    self._server.loop.create_task(self._await_error_handler(result))
                return
            except Exception as inner:  # noqa: BLE001
                exc = inner
        logger.error(
            "harpy: handler of route %s raised",
            self.route,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        if self.ready_state is _OPEN:
            self._close(1011, "Internal error")

    async def _await_error_handler(self, awaitable: Any) -> None:
        try:
            await awaitable
        except Exception as exc:  # noqa: BLE001
            self._handler_failed(_ErrorHandlerFailed(exc))

    def __repr__(self) -> str:
        state = ReadyState(self.ready_state).name
        return f"<WebSocket {self.id} {self.path or '-'} {state}>"


class _ErrorHandlerFailed(Exception):
    """The ``error`` handler itself raised: logged, and the connection closed with 1011."""


def _control_payload(data: bytes | str) -> bytes:
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if len(payload) > 125:
        raise ConfigurationError("ping/pong payload is longer than 125 bytes")  # RFC 6455 5.5
    return payload


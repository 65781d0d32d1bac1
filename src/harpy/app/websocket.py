"""The connection object handed to every handler: ``harpy.WebSocket[T]``."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import parse_qsl

from ..auth import Deny, UpgradeRequest, interpret
from ..exceptions import ConfigurationError, HandshakeError, InvalidState, ProtocolError
from ..protocol import (
    OP_BINARY,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Headers,
    Request,
    build_frame,
    check_upgrade,
    is_valid_close_code,
    parse_cookies,
)
from ..protocol.deflate import negotiate
from ..pubsub import Message, fan_out
from ..server import Connection, ReadyState, Server
from .handlers import Handlers

if TYPE_CHECKING:
    from .app import App, Route

__all__ = ["WebSocket"]

logger = logging.getLogger("harpy")

T = TypeVar("T")

_ids = itertools.count(1)
_ID_PREFIX = os.urandom(4).hex()
_OPEN = ReadyState.OPEN


class WebSocket(Connection, Generic[T]):
    """One client connection on a route.

    ``data`` is the per-connection object (typed by the route's ``data=`` class), ``params`` the
    path parameters, and ``send`` returns Bun's status: bytes written, -1 when queued under
    backpressure, 0 when dropped because the connection is closing or closed.
    """

    __slots__ = (
        "_app",
        "_auth_timer",
        "_busy",
        "_cookies",
        "_counted",
        "_gated",
        "_handlers",
        "_id",
        "_on_message",
        "_queue",
        "_reading_paused",
        "_rooms",
        "_route",
        "_tokens",
        "_tokens_at",
        "_topics",
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
        self._on_message: Callable[..., Any] | None = None  # message handler, as dispatched
        self._id = ""
        self._busy = False
        self._counted = False  # holds a place under max_connections / max_connections_per_ip
        self._gated = False  # True: messages go through first-message auth or the rate limit
        self._auth_timer: asyncio.TimerHandle | None = None
        self._tokens = 0.0
        self._tokens_at = 0.0
        self._queue: deque[tuple[Callable[..., Any], tuple[Any, ...]]] | None = None
        self._reading_paused = False
        self._cookies: dict[str, str] | None = None
        self._topics: set[str] | None = None
        self._rooms: set[str] | None = None
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
        """Send text (``str``) or binary data; returns bytes written, -1 queued, 0 dropped.

        With permessage-deflate negotiated, ``compress=None`` compresses messages of at least
        the route's ``threshold`` bytes, True always, False never (as Bun's ``compress``).
        """
        if type(data) is str:
            payload = data.encode("utf-8")
            opcode = OP_TEXT
        elif type(data) is bytes:
            payload = data
            opcode = OP_BINARY
        elif isinstance(data, (bytes, bytearray, memoryview)):
            payload = bytes(data)
            opcode = OP_BINARY
        else:
            raise TypeError(f"send() takes str or bytes-like data, not {type(data).__name__}")
        if self._deflate is None:
            return self._write(build_frame(opcode, payload))
        return self._send(opcode, payload, compress)

    def send_text(self, data: str, compress: bool | None = None) -> int:
        if not isinstance(data, str):
            raise TypeError(f"send_text() takes str, not {type(data).__name__}")
        return self._send(OP_TEXT, data.encode("utf-8"), compress)

    def send_binary(
        self, data: bytes | bytearray | memoryview, compress: bool | None = None
    ) -> int:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"send_binary() takes bytes-like data, not {type(data).__name__}")
        return self._send(OP_BINARY, bytes(data), compress)

    def send_json(self, obj: Any, compress: bool | None = None) -> int:
        """Serialise ``obj`` as compact JSON and send it as text."""
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
        return self._send(OP_TEXT, text.encode("utf-8"), compress)

    def _send(self, opcode: int, payload: bytes, compress: bool | None) -> int:
        codec = self._deflate
        if codec is None or not codec.wants(len(payload), compress):
            return self._write(build_frame(opcode, payload))
        if self.ready_state is not _OPEN:
            return 0
        if codec.shareable:
            return self._write(build_frame(opcode, codec.compress(payload), True))
        frame = self._own_compressed(opcode, payload)
        return 0 if frame is None else self._write(frame)

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

    # ----------------------------------------------------------------- topics (Bun)

    def subscribe(self, topic: str) -> bool:
        """Receive what is published to ``topic``; False when already subscribed."""
        if self.ready_state is not _OPEN:
            raise InvalidState(f"cannot subscribe: the connection is {self._state_name}")
        return self._app._topics.add(self, _check_name(topic, "topic"))

    def unsubscribe(self, topic: str) -> bool:
        """Stop receiving ``topic``; False when not subscribed."""
        return self._app._topics.remove(self, topic)

    def is_subscribed(self, topic: str) -> bool:
        return self._topics is not None and topic in self._topics

    @property
    def subscriptions(self) -> list[str]:
        return sorted(self._topics) if self._topics else []

    def publish(self, topic: str, data: Any, compress: bool | None = None) -> int:
        """Send ``data`` to every subscriber of ``topic`` but this connection (unless the route
        sets ``publish_to_self``); returns how many connections it reached."""
        route = self._route
        skip = None if route is not None and route.publish_to_self else self
        return self._app._publish(topic, Message.from_data(data, compress), skip)

    def publish_text(self, topic: str, data: str, compress: bool | None = None) -> int:
        if not isinstance(data, str):
            raise TypeError(f"publish_text() takes str, not {type(data).__name__}")
        return self.publish(topic, data, compress)

    def publish_binary(
        self, topic: str, data: bytes | bytearray | memoryview, compress: bool | None = None
    ) -> int:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"publish_binary() takes bytes-like data, not {type(data).__name__}")
        return self.publish(topic, data, compress)

    # ----------------------------------------------------------------- rooms (Vite plugin)

    def join(self, room: str) -> bool:
        """Join ``room``; False when already in it."""
        if self.ready_state is not _OPEN:
            raise InvalidState(f"cannot join a room: the connection is {self._state_name}")
        return self._app._rooms.add(self, _check_name(room, "room"))

    def leave(self, room: str) -> bool:
        """Leave ``room``; False when not in it."""
        return self._app._rooms.remove(self, room)

    def in_room(self, room: str) -> bool:
        return self._rooms is not None and room in self._rooms

    @property
    def rooms(self) -> frozenset[str]:
        return frozenset(self._rooms) if self._rooms else frozenset()

    def broadcast(
        self,
        data: Any,
        rooms: list[str] | tuple[str, ...] | None = None,
        include_self: bool = False,
    ) -> int:
        """Send ``data`` to the members of ``rooms`` (each once), or without rooms to every
        connection of this route; the sender only with ``include_self``. Returns the count."""
        app = self._app
        message = Message.from_data(data)
        skip = None if include_self else self
        receivers: Iterable[WebSocket[Any]]
        if rooms is None:
            receivers = app.connections.route(self.route)
        else:
            receivers = app._rooms.union(_room_list(rooms))
        return fan_out(receivers, message, skip)

    @property
    def _state_name(self) -> str:
        return ReadyState(self.ready_state).name

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
        if app.max_connections or app.max_connections_per_ip:
            # A place is taken now, before any authenticate hook awaits, so upgrades waiting
            # at the same time cannot all pass the limit; it is given back when the socket
            # closes.
            if app.max_connections and app._counted >= app.max_connections:
                self._refuse(503, "Too many connections", [("Retry-After", "5")])
                return
            ip = self.remote_address
            per_ip = app.max_connections_per_ip
            if per_ip and app._per_ip.get(ip, 0) >= per_ip:
                self._refuse(429, "Too many connections from this address")
                return
            self._counted = True
            app._counted += 1
            if per_ip:
                app._per_ip[ip] = app._per_ip.get(ip, 0) + 1
        if route.allowed_origins is not None:
            origin = request.get("origin")
            if origin is not None and origin.rstrip("/").lower() not in route.allowed_origins:
                self._refuse(403, "Origin not allowed")
                return
        if route.subprotocols:
            offered = request.tokens_cased("sec-websocket-protocol")
            self.subprotocol = next((p for p in offered if p in route.subprotocols), None)
            if self.subprotocol is None and route.require_subprotocol:
                self._refuse(400, "No supported subprotocol")
                return
        hook = route.authenticate
        if hook is None:
            self._upgrade(key, None)
            return
        try:
            result = hook(UpgradeRequest(self))
        except Exception as exc:  # noqa: BLE001
            self._auth_failed(exc, key)
            return
        if inspect.isawaitable(result):
            # The upgrade waits for the hook: stop reading meanwhile (the handshake timeout
            # still bounds it).
            if self.transport is not None:
                self.transport.pause_reading()
            self._server.loop.create_task(self._await_auth(result, key))
            return
        self._auth_done(result, key)

    async def _await_auth(self, awaitable: Any, key: str) -> None:
        try:
            result = await awaitable
        except Exception as exc:  # noqa: BLE001
            self._auth_failed(exc, key)
            return
        if self.transport is not None and self.ready_state is ReadyState.CONNECTING:
            self.transport.resume_reading()
        self._auth_done(result, key)

    def _auth_done(self, result: Any, key: str) -> None:
        if isinstance(result, (HandshakeError, Deny)):  # returned instead of raised
            self._auth_failed(result, key)
            return
        try:
            accepted, data, deny = interpret(result)
        except ConfigurationError as exc:
            self._auth_failed(exc, key)
            return
        if not accepted:
            self._refuse(401, "Unauthorized")
            return
        self.auth = data
        self._upgrade(key, deny)

    def _auth_failed(self, exc: BaseException, key: str) -> None:
        if isinstance(exc, HandshakeError):  # Reject(status, reason)
            self._refuse(exc.status, exc.reason, exc.headers)
        elif isinstance(exc, Deny):
            self._upgrade(key, exc)
        else:
            logger.error(
                "harpy: authenticate hook of route %s raised",
                self.route,
                exc_info=(type(exc), exc, exc.__traceback__),
            )
            self._refuse(500, "Internal Server Error")

    def _upgrade(self, key: str, deny: Deny | None) -> None:
        """Answer 101; a denied connection is closed at once, without its handlers."""
        route = self._route
        assert route is not None
        request = self.request
        assert request is not None
        transport = self.transport
        if self.ready_state is not ReadyState.CONNECTING or transport is None:
            return  # answered meanwhile (408 after a slow hook, or shutting down)
        if transport.is_closing():
            return
        if deny is None:
            try:
                self.data = route.make_data(self)
            except Exception:
                logger.exception("harpy: data factory of route %s failed", route.pattern)
                self._refuse(500, "Internal Server Error")
                return
        else:
            self._handlers = _NO_HANDLERS
        headers: list[tuple[str, str]] = []
        if self.subprotocol is not None:
            headers.append(("Sec-WebSocket-Protocol", self.subprotocol))
        codec = None
        if route.deflate is not None and deny is None:
            offers = request.get_all("sec-websocket-extensions")
            if offers:
                agreed = negotiate(offers, route.deflate)
                if agreed is not None:
                    headers.append(("Sec-WebSocket-Extensions", agreed[0]))
                    codec = agreed[1]
        self._accept(key, headers, route.limits, codec)
        if deny is not None:
            self._close(deny.code, deny.reason)

    # ----------------------------------------------------------------- event hooks

    def _handle_open(self) -> None:
        route = self._route
        assert route is not None
        if self._handlers is _NO_HANDLERS:
            return  # denied by authenticate: closing at once
        if route.rate_limit > 0:
            self._gated = True
            self._tokens = route.rate_burst
            self._tokens_at = self._last_seen
        verifier = route.first_message_auth
        if verifier is not None:
            # Not a member of anything (connections, rooms, broadcasts) until authenticated;
            # open() runs then.
            self._gated = True
            self._auth_timer = self._server.loop.call_later(verifier.timeout, self._auth_timeout)
            return
        self._register()
        fn = self._handlers.open
        if fn is not None:
            self._call(fn, ())

    def _register(self) -> None:
        """Join the app's connections (and the default room): broadcasts reach it from now."""
        route = self._route
        assert route is not None
        self._app.connections._add(self, route.pattern)
        if route.default_room is not None:
            self._app._rooms.add(self, route.default_room)
        message = self._handlers.message
        self._on_message = _message_and_broadcast if route.auto_broadcast else message

    def _handle_message(self, message: str | bytes) -> None:
        if self._gated and not self._pass_gate(message):
            return
        if self._busy:  # behind a running async handler (or first-message auth)
            self._enqueue(_deliver, (message,))
            return
        fn = self._on_message
        if fn is not None:
            try:
                result = fn(self, message)
            except Exception as exc:  # noqa: BLE001
                self._handler_failed(exc)
                return
            if result is not None and inspect.isawaitable(result):
                self._start_async(result)

    def _pass_gate(self, message: str | bytes) -> bool:
        """Rate limit, then first-message authentication; False: the message stops here."""
        route = self._route
        assert route is not None
        if route.rate_limit > 0:
            # Token bucket: rate_limit tokens a second, at most rate_burst saved up.
            now = self._last_seen
            refill = (now - self._tokens_at) * route.rate_limit
            tokens = min(route.rate_burst, self._tokens + refill)
            self._tokens_at = now
            if tokens < 1.0:
                self._close(1008, "Rate limit exceeded")
                return False
            self._tokens = tokens - 1.0
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None
            self._gated = route.rate_limit > 0
            self._call(_verify_first_message, (message,))
            return False
        return True

    def _auth_timeout(self) -> None:
        self._auth_timer = None
        self._handlers = _NO_HANDLERS
        self._on_message = None
        self._close(1008, "Auth Timeout")

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
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None
        app = self._app
        if self not in app.connections:
            return  # never opened (denied)
        app.connections._discard(self)
        if self._topics:
            app._topics.remove_all(self)
        if self._rooms:
            app._rooms.remove_all(self)
        fn = self._handlers.close if self._handlers is not None else None
        if fn is not None:
            self._call(fn, (code, reason))

    def _handle_protocol_error(self, exc: ProtocolError) -> None:
        fn = self._handlers.error if self._handlers is not None else None
        if fn is not None:
            self._call(fn, (exc,))

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._counted:
            self._counted = False
            app = self._app
            app._counted -= 1
            if app.max_connections_per_ip:
                ip = self.remote_address
                left = app._per_ip.get(ip, 1) - 1
                if left > 0:
                    app._per_ip[ip] = left
                else:
                    app._per_ip.pop(ip, None)

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


def _deliver(ws: WebSocket[Any], message: str | bytes) -> Any:
    """A queued message: the handler is looked up when its turn comes (auth may have failed)."""
    fn = ws._on_message
    return fn(ws, message) if fn is not None else None


def _message_and_broadcast(ws: WebSocket[Any], message: str | bytes) -> Any:
    """The message handler (if any), then, unless it raised, Harpia's automatic broadcast."""
    fn = ws._handlers.message
    result = fn(ws, message) if fn is not None else None
    if result is not None and inspect.isawaitable(result):
        return _await_then_broadcast(ws, result, message)
    _auto_broadcast(ws, message)
    return None


async def _await_then_broadcast(ws: WebSocket[Any], awaitable: Any, message: str | bytes) -> None:
    await awaitable
    _auto_broadcast(ws, message)


async def _verify_first_message(ws: WebSocket[Any], message: str | bytes) -> None:
    """First-message auth: keep the verifier's result on ``ws.auth``, then run ``open``."""
    route = ws._route
    assert route is not None and route.first_message_auth is not None
    try:
        result = route.first_message_auth.verify(message)
        if inspect.isawaitable(result):
            result = await result
    except Deny as exc:
        ws._handlers = _NO_HANDLERS
        ws._on_message = None
        ws._close(exc.code, exc.reason)
        return
    except Exception:
        logger.exception("harpy: first-message verifier of route %s raised", ws.route)
        ws._handlers = _NO_HANDLERS
        ws._on_message = None
        ws._close(1011, "Internal error")
        return
    ws.auth = result
    if ws.ready_state is _OPEN:
        # open() runs here, in this queue slot, so messages queued behind the token wait for it.
        ws._register()
        fn = ws._handlers.open
        if fn is not None:
            try:
                opened = fn(ws)
                if inspect.isawaitable(opened):
                    await opened
            except Exception as exc:  # noqa: BLE001
                ws._handler_failed(exc)


def _auto_broadcast(ws: WebSocket[Any], message: str | bytes) -> None:
    """Harpia's automatic broadcast: after the handler, to every other open connection."""
    fan_out(ws._app.connections._members(), Message.from_data(message), ws)


def _check_name(name: str, kind: str) -> str:
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"a {kind} name must be a non-empty string, not {name!r}")
    return name


def _room_list(rooms: Any) -> list[str]:
    if isinstance(rooms, str):
        raise TypeError("rooms must be a list of room names, not a string")
    return list(rooms)


_NO_HANDLERS = Handlers(None, {})


class _ErrorHandlerFailed(Exception):
    """The ``error`` handler itself raised: logged, and the connection closed with 1011."""


def _control_payload(data: bytes | str) -> bytes:
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if len(payload) > 125:
        raise ConfigurationError("ping/pong payload is longer than 125 bytes")  # RFC 6455 5.5
    return payload


"""Serve a harpy App's WebSocket routes under any ASGI 3 server (uvicorn, hypercorn...).

``ASGIApp(app)`` is an ASGI application.  A ``websocket`` scope goes through the same code as
the native server: routing, connection limits, origins, subprotocols, ``authenticate`` hooks,
then ``open`` / ``message`` / ``close`` in order.  Each connection is a real
:class:`harpy.WebSocket` whose transport is a small adapter: the frames harpy builds are turned
back into ``websocket.send`` / ``websocket.close`` events, in order, by one sender task per
connection.  Topics, rooms and broadcasts are the App's, so they reach native and ASGI
connections alike.

Framing, compression and heartbeat pings are the ASGI server's: harpy's ``idle_timeout`` and
ping options do not apply here (``inactivity_timeout``, ``max_message_size``, backpressure and
rate limits do).  ``lifespan`` runs the App's startup and shutdown hooks; HTTP requests get 404
or go to ``fallback``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import quote, unquote

from .app import WebSocket
from .app.app import App, _maybe_await
from .exceptions import HandshakeError, PayloadTooBig
from .protocol import Request, check_upgrade
from .server import Limits, ReadyState, Server

__all__ = ["ASGIApp"]

logger = logging.getLogger("harpy")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGI3App = Callable[[Scope, Receive, Send], Awaitable[None]]

_OPEN = ReadyState.OPEN
#: Stands in for the handshake headers an ASGI server need not pass on (HTTP/2, RFC 8441).
_UPGRADE_HEADERS = (
    ("upgrade", "websocket"),
    ("connection", "Upgrade"),
    ("sec-websocket-version", "13"),
    ("sec-websocket-key", "AAAAAAAAAAAAAAAAAAAAAA=="),
)
_HANDSHAKE_NAMES = frozenset(name for name, _ in _UPGRADE_HEADERS)
_SAFE_PATH = "/:@!$&'()*+,;=-._~"


class ASGIApp:
    """An ASGI 3 application serving ``app``'s WebSocket routes.

    ``fallback`` is an ASGI app for HTTP requests, for WebSocket paths that match no route, and
    for lifespan events (after the App's own hooks); without it HTTP requests get 404.
    ``lifespan=False`` leaves the App's startup and shutdown hooks alone (for an App that also
    listens natively, whose ``listen`` already ran them).
    """

    def __init__(
        self, app: App, fallback: ASGI3App | None = None, *, lifespan: bool = True
    ) -> None:
        self.app = app
        self.fallback = fallback
        self.lifespan = lifespan
        self._server: Server | None = None
        self._limits: dict[int, tuple[Limits, Limits]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
        elif self.fallback is not None:
            await self.fallback(scope, receive, send)
        elif kind == "http":
            body = b"Not Found\n"
            await send(
                {
                    "type": "http.response.start",
                    "status": 404,
                    "headers": [
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"content-length", str(len(body)).encode("ascii")),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
        else:
            raise ValueError(f"harpy.asgi: unsupported scope type {kind!r}")

    # ----------------------------------------------------------------- the connections' server

    @property
    def connections(self) -> int:
        """How many WebSocket connections this adapter holds (handshaking or open)."""
        return len(self._server.connections) if self._server is not None else 0

    def _get_server(self) -> Server:
        loop = asyncio.get_running_loop()
        server = self._server
        if server is None or server.loop is not loop:
            # One per event loop, never listening: the loop, the timer wheel, the registry of
            # connections and the end-of-tick flush that harpy's connections rely on.
            server = Server(
                lambda srv: WebSocket(srv, self.app),  # never called: it does not listen
                loop=loop,
                handshake_timeout=self.app.handshake_timeout,
                max_header_size=self.app.max_header_size,
            )
            self._server = server
        return server

    def _asgi_limits(self, limits: Limits) -> Limits:
        """The route's limits without harpy's pings and idle timeout: the ASGI server's job."""
        cached = self._limits.get(id(limits))
        if cached is not None and cached[0] is limits:
            return cached[1]
        copy = Limits(
            max_message_size=limits.max_message_size,
            idle_timeout=0.0,
            close_timeout=limits.close_timeout,
            backpressure_limit=limits.backpressure_limit,
            close_on_backpressure_limit=limits.close_on_backpressure_limit,
            write_high_water=limits.write_high_water,
            write_low_water=limits.write_low_water,
            ping_interval=0.0,
            pong_timeout=0.0,
            max_missed_pongs=limits.max_missed_pongs,
            inactivity_timeout=limits.inactivity_timeout,
            send_pings=False,
        )
        self._limits[id(limits)] = (limits, copy)
        return copy

    # ----------------------------------------------------------------- websocket

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = _request(scope)
        if self.fallback is not None and self.app._table.match(request.path) is None:
            await self.fallback(scope, receive, send)
            return
        first = await receive()
        if first["type"] != "websocket.connect":
            return  # disconnected before anything happened
        server = self._get_server()
        ws = _ASGIWebSocket(server, self.app)
        ws._adapter = self
        channel = _Channel(ws, scope, send, server.loop)
        pump = server.loop.create_task(channel.pump())
        reader: asyncio.Task[None] | None = None
        try:
            ws.connection_made(channel)
            ws._handle_request(request)
            if await channel.decided:
                reader = server.loop.create_task(self._read(ws, channel, receive))
                reader.add_done_callback(lambda _: channel.finish(1006, ""))
                await channel.ended
            else:
                # The refusal (or nothing, after an abort) goes out before returning.
                await asyncio.wait([pump, channel.ended], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, pump):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            ws._close_code, ws._close_reason = channel.close_status
            ws.connection_lost(None)

    async def _read(self, ws: _ASGIWebSocket, channel: _Channel, receive: Receive) -> None:
        loop = ws._server.loop
        limit = ws._limits.max_message_size
        reading = channel.reading
        while True:
            if not reading.is_set():
                await reading.wait()
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                if ws.ready_state is not _OPEN:
                    continue  # closing: as the native server, nothing more is delivered
                data: str | bytes | None = message.get("text")
                if data is None:
                    data = message.get("bytes") or b""
                ws._last_seen = ws._last_active = loop.time()
                if limit and _too_big(data, limit):
                    ws._handle_protocol_error(PayloadTooBig("message too big"))
                    ws._close(1009, "Message too big")
                    continue
                ws._handle_message(data)
            elif kind == "websocket.disconnect":
                reason = message.get("reason") or ""
                channel.finish(int(message.get("code", 1005)), reason)
                return

    # ----------------------------------------------------------------- lifespan

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        inner = _InnerLifespan(self.fallback, scope) if self.fallback is not None else None
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "lifespan.startup":
                try:
                    if self.lifespan:
                        for hook in self.app._startup:
                            await _maybe_await(hook())
                    if inner is not None:
                        await inner.forward("startup")
                except Exception as exc:
                    logger.exception("harpy: startup failed")
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif kind == "lifespan.shutdown":
                failed = ""
                if inner is not None:
                    try:
                        await inner.forward("shutdown")
                    except Exception as exc:  # noqa: BLE001
                        failed = repr(exc)
                server = self._server
                if server is not None:
                    self._server = None
                    await server.close(self.app.shutdown_timeout)
                if self.lifespan:
                    for hook in self.app._shutdown:
                        try:
                            await _maybe_await(hook())
                        except Exception as exc:
                            logger.exception("harpy: shutdown hook %r failed", hook)
                            failed = failed or repr(exc)
                if failed:
                    await send({"type": "lifespan.shutdown.failed", "message": failed})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                return


class _ASGIWebSocket(WebSocket[Any]):
    """A harpy connection whose transport is a :class:`_Channel`."""

    __slots__ = ("_adapter",)

    _adapter: ASGIApp

    def _accept(
        self,
        key: str,
        headers: list[tuple[str, str]] | None,
        limits: Limits,
        inflater: Any = None,
    ) -> None:
        # No permessage-deflate of harpy's: the ASGI server owns the wire format.
        kept = [(n, v) for n, v in headers or () if n.lower() != "sec-websocket-extensions"]
        super()._accept(key, kept, self._adapter._asgi_limits(limits), None)

    @property
    def _tls(self) -> bool:
        transport = self.transport
        return isinstance(transport, _Channel) and transport.tls


class _Channel(asyncio.Transport):
    """The transport of an ASGI connection: harpy's writes become ASGI events, in order."""

    def __init__(
        self, ws: _ASGIWebSocket, scope: Scope, send: Send, loop: asyncio.AbstractEventLoop
    ) -> None:
        super().__init__()
        self._ws = ws
        self._scope = scope
        self._send = send
        self._queue: deque[tuple[Message, int]] = deque()
        self._size = 0
        self._high = 64 * 1024
        self._low = 16 * 1024
        self._paused = False
        self._wakeup = asyncio.Event()
        self._answered = False  # the handshake's answer (101 or a refusal) was written
        self._last_queued = False  # a final event (close, refusal) is queued: nothing more
        self._closing = False
        self.decided: asyncio.Future[bool] = loop.create_future()
        self.ended: asyncio.Future[None] = loop.create_future()
        self.close_status = (1006, "")
        self.reading = asyncio.Event()
        self.reading.set()
        client = scope.get("client")
        self._peer = tuple(client) if client else None
        server = scope.get("server")
        self._sock = tuple(server) if server else None
        self.tls = scope.get("scheme") in ("wss", "https")

    # ----------------------------------------------------------------- what harpy writes

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._last_queued or self.ended.done():
            return
        raw = data if type(data) is bytes else bytes(data)
        if not self._answered:
            self._answered = True
            self._answer(raw)
            return
        self._frames(raw)

    def _answer(self, head: bytes) -> None:
        """The HTTP answer harpy built: 101 becomes websocket.accept, the rest a refusal."""
        end = head.find(b"\r\n\r\n")
        lines = head[:end].decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
        if status == 101:
            subprotocol = next((v for n, v in headers if n == "sec-websocket-protocol"), None)
            self._push({"type": "websocket.accept", "subprotocol": subprotocol, "headers": []}, 0)
            _resolve(self.decided, True)
            return
        extensions = self._scope.get("extensions") or {}
        if "websocket.http.response" in extensions:
            self._push(
                {
                    "type": "websocket.http.response.start",
                    "status": status,
                    "headers": [
                        (n.encode("latin-1"), v.encode("latin-1"))
                        for n, v in headers
                        if n != "connection"
                    ],
                },
                0,
            )
            self._push({"type": "websocket.http.response.body", "body": head[end + 4 :]}, 0)
        else:
            self._push({"type": "websocket.close", "code": 1000}, 0)  # 403 from the server
        self._last_queued = True
        _resolve(self.decided, False)

    def _frames(self, data: bytes) -> None:
        """Whole unmasked server frames, one or more: data and close become ASGI events."""
        i = 0
        n = len(data)
        while i < n:
            b0 = data[i]
            length = data[i + 1] & 0x7F
            start = i + 2
            if length == 126:
                length = int.from_bytes(data[start : start + 2], "big")
                start += 2
            elif length == 127:
                length = int.from_bytes(data[start : start + 8], "big")
                start += 8
            stop = start + length
            opcode = b0 & 0x0F
            size = stop - i
            i = stop
            if opcode == 1:
                self._push({"type": "websocket.send", "text": data[start:stop].decode()}, size)
            elif opcode == 2:
                self._push({"type": "websocket.send", "bytes": data[start:stop]}, size)
            elif opcode == 8:
                code = int.from_bytes(data[start : start + 2], "big") if length >= 2 else 1000
                reason = data[start + 2 : stop].decode() if length > 2 else ""
                self._push({"type": "websocket.close", "code": code, "reason": reason}, size)
                self._last_queued = True
                return
            # Pings and pongs: the ASGI server keeps the connection alive, not harpy.

    def _push(self, message: Message, size: int) -> None:
        self._queue.append((message, size))
        self._size += size
        self._wakeup.set()
        if not self._paused and self._size > self._high:
            self._paused = True
            self._ws.pause_writing()

    async def pump(self) -> None:
        """Hand the queued events to the ASGI server, in order, until the final one."""
        queue = self._queue
        while True:
            while queue:
                message, size = queue.popleft()
                try:
                    await self._send(message)
                except Exception:  # each server has its own "gone" error
                    logger.debug("harpy: ASGI send failed", exc_info=True)
                    self.finish(1006, "")
                    return
                self._size -= size
                if self._paused and self._size <= self._low:
                    self._paused = False
                    self._ws.resume_writing()
                kind = message["type"]
                if kind == "websocket.http.response.body" or (
                    kind == "websocket.close" and not self.decided.result()
                ):
                    self.finish(1006, "")
                    return
            self._wakeup.clear()
            await self._wakeup.wait()

    def finish(self, code: int, reason: str) -> None:
        """The connection is over: the peer's close code, or 1006 without one."""
        if not self.ended.done():
            self.close_status = (code, reason)
            self.ended.set_result(None)
        _resolve(self.decided, False)

    # ----------------------------------------------------------------- asyncio.Transport

    def is_closing(self) -> bool:
        return self._closing or self.ended.done()

    def close(self) -> None:
        if self._closing:
            return
        if self.decided.done() and self.decided.result() and not self._last_queued:
            self._push({"type": "websocket.close", "code": 1000, "reason": ""}, 0)
            self._last_queued = True
        self._closing = True

    def abort(self) -> None:
        self._closing = True
        self._queue.clear()
        self.finish(1006, "")

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peer if self._peer is not None else default
        if name == "sockname":
            return self._sock if self._sock is not None else default
        return default

    def pause_reading(self) -> None:
        self.reading.clear()

    def resume_reading(self) -> None:
        self.reading.set()

    def is_reading(self) -> bool:
        return self.reading.is_set()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = 64 * 1024 if high is None else high
        self._low = self._high // 4 if low is None else low

    def get_write_buffer_size(self) -> int:
        return self._size

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def can_write_eof(self) -> bool:
        return False


class _InnerLifespan:
    """The fallback app's lifespan, driven from ours: startup after the App's hooks."""

    def __init__(self, app: ASGI3App, scope: Scope) -> None:
        self._app = app
        self._scope = scope
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        with contextlib.suppress(Exception):  # an app without lifespan support raises
            await self._app(self._scope, self._to_app.get, self._send)

    async def _send(self, message: Message) -> None:
        await self._from_app.put(message)

    async def forward(self, phase: str) -> None:
        """Send ``lifespan.<phase>``; raise if the app answered ``.failed``."""
        if self._task is None:
            if phase != "startup":
                return
            self._task = asyncio.get_running_loop().create_task(self._run())
        elif self._task.done():
            return  # no lifespan support
        await self._to_app.put({"type": f"lifespan.{phase}"})
        answer = asyncio.ensure_future(self._from_app.get())
        await asyncio.wait([answer, self._task], return_when=asyncio.FIRST_COMPLETED)
        if not answer.done():
            answer.cancel()
            return  # the app returned (or raised): it does not do lifespan
        message = answer.result()
        if message["type"].endswith(".failed"):
            raise RuntimeError(message.get("message") or f"fallback {phase} failed")
        if phase == "shutdown":
            await asyncio.wait([self._task], timeout=5)


def _resolve(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)


def _too_big(data: str | bytes, limit: int) -> bool:
    if isinstance(data, bytes):
        return len(data) > limit
    if len(data) > limit:
        return True
    return len(data) * 4 > limit and len(data.encode("utf-8")) > limit


def _request(scope: Scope) -> Request:
    """The upgrade request as harpy's handshake code sees it, the path below ``root_path``."""
    headers = [
        (bytes(name).decode("latin-1").lower(), bytes(value).decode("latin-1").strip())
        for name, value in scope.get("headers") or ()
    ]
    target = _route_path(scope)
    query = scope.get("query_string") or b""
    if query:
        target += "?" + bytes(query).decode("latin-1")
    request = Request("GET", target, headers)
    try:
        check_upgrade(request)
    except HandshakeError:
        # The ASGI server checked the handshake; it may not pass its headers on (HTTP/2).
        headers = [(n, v) for n, v in headers if n not in _HANDSHAKE_NAMES]
        headers.extend(_UPGRADE_HEADERS)
        request = Request("GET", target, headers)
    return request


def _route_path(scope: Scope) -> str:
    """The still percent-encoded path below the mount point (``root_path``)."""
    path: str = scope.get("path") or "/"
    root: str = scope.get("root_path") or ""
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
        if not path.startswith("/"):
            path = "/" + path
    raw_path = scope.get("raw_path")
    if raw_path:
        raw = bytes(raw_path).split(b"?", 1)[0].decode("latin-1")
        if unquote(raw) == path:
            return raw
        if root:
            # Find where the mount point ends in the raw form: at a "/" or the end.
            cuts = [i for i, c in enumerate(raw) if c == "/"] + [len(raw)]
            for cut in cuts:
                if unquote(raw[:cut]) == root:
                    rest = raw[cut:] or "/"
                    if unquote(rest) == path:
                        return rest
    return quote(path, safe=_SAFE_PATH)

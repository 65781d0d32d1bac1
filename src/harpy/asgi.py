"""Serve a harpy App's WebSocket routes under any ASGI 3 server (uvicorn, hypercorn...).

``ASGIApp(app)`` is an ASGI application.  A ``websocket`` scope goes through the same code as
the native server: routing, connection limits, origins, subprotocols, ``authenticate`` hooks,
then ``open`` / ``message`` / ``close`` in order.  Each connection is a real
:class:`harpy.WebSocket` on an :class:`ASGIConnection`: the second transport on the
transport-neutral :class:`~harpy.server.Connection` (the native one frames; this one turns the
message-level output, accept, refuse, send a message, close, into ASGI events, in order, through
one sender task per connection).  Nothing is framed or parsed here.  Topics, rooms and
broadcasts are the App's, so they reach native and ASGI connections alike.

Framing, compression and heartbeat pings are the ASGI server's: harpy's ``idle_timeout`` and
ping options do not apply here (``inactivity_timeout``, ``max_message_size``, backpressure and
rate limits do).  ``lifespan`` runs the App's startup and shutdown hooks; HTTP requests get 404
or go to ``fallback``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from .app import App, WebSocket
from .exceptions import PayloadTooBig
from .protocol import OP_TEXT, Message, Request
from .protocol.handshake import refusal
from .server import (
    EV_PROTOCOL_ERROR,
    EV_REFUSED,
    EV_REQUEST,
    Connection,
    Host,
    Limits,
    ReadyState,
)

if TYPE_CHECKING:
    from .protocol.deflate import PerMessageDeflate

__all__ = ["ASGIApp", "ASGIConnection"]

logger = logging.getLogger("harpy")

Scope = MutableMapping[str, Any]
Event = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Event]]
Send = Callable[[Event], Awaitable[None]]
ASGI3App = Callable[[Scope, Receive, Send], Awaitable[None]]

_OPEN = ReadyState.OPEN
_CONNECTING = ReadyState.CONNECTING
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
        """The harpy App whose routes this serves."""
        self.fallback = fallback
        """The ASGI app for every other request (HTTP, unknown paths), or None."""
        self.lifespan = lifespan
        """Whether ASGI lifespan events run the App's startup and shutdown hooks."""
        self._server: Host | None = None
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
            _, headers, body = refusal(404, "Not Found")
            await send(
                {
                    "type": "http.response.start",
                    "status": 404,
                    "headers": _encode_headers(headers),
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

    def _get_server(self) -> Host:
        loop = asyncio.get_running_loop()
        server = self._server
        if server is None or server.loop is not loop:
            # One per event loop: the timer wheel, the registry of connections, the output
            # budget and the end-of-tick flush that harpy's connections share.
            server = Host(
                loop=loop,
                handshake_timeout=self.app.handshake_timeout,
                max_header_size=self.app.max_header_size,
            )
            self._server = server
        return server

    def limits_for(self, limits: Limits) -> Limits:
        """The route's limits without harpy's pings and idle timeout: the ASGI server's job."""
        cached = self._limits.get(id(limits))
        if cached is not None and cached[0] is limits:
            return cached[1]
        copy: Limits = dataclasses.replace(
            limits, idle_timeout=0.0, ping_interval=0.0, pong_timeout=0.0, send_pings=False
        )
        self._limits[id(limits)] = (limits, copy)
        return copy

    # ----------------------------------------------------------------- websocket

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = _request(scope)
        if self.fallback is not None and self.app.match(request.path) is None:
            await self.fallback(scope, receive, send)
            return
        first = await receive()
        if first["type"] != "websocket.connect":
            return  # disconnected before anything happened
        conn = ASGIConnection(self._get_server(), self, scope, send)
        WebSocket(self.app, conn)  # binds itself to the connection's events
        await conn.serve(request, receive)

    # ----------------------------------------------------------------- lifespan

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        inner = _InnerLifespan(self.fallback, scope) if self.fallback is not None else None
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "lifespan.startup":
                try:
                    if self.lifespan:
                        await self.app.run_startup_hooks()
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
                    error = await self.app.run_shutdown_hooks()
                    if error is not None:
                        failed = failed or repr(error)
                if failed:
                    await send({"type": "lifespan.shutdown.failed", "message": failed})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                return


class ASGIConnection(Connection):
    """A harpy connection whose output becomes ASGI events, in order, through one sender.

    Its output items are :class:`~harpy.protocol.Message` objects and ASGI events; what it
    holds for the ASGI server counts as its transport's buffer, so the backpressure limit,
    the watermarks and the server's output budget apply as on the native server."""

    __slots__ = (
        "_adapter",
        "_asgi_send",
        "_decided",
        "_events",
        "_final",
        "_gone",
        "_peer",
        "_peer_status",
        "_queued",
        "_reading",
        "_scope",
        "_wakeup",
    )

    def __init__(self, server: Host, adapter: ASGIApp, scope: Scope, send: Send) -> None:
        super().__init__(server)
        loop = server.loop
        self._adapter = adapter
        self._scope = scope
        self._asgi_send = send
        self._events: deque[tuple[Message | Event, int]] = deque()
        self._queued = 0  # bytes of messages queued for the ASGI server
        self._wakeup = asyncio.Event()
        self._final = False  # a final event (close, refusal) is queued: nothing more
        self._decided: asyncio.Future[bool] = loop.create_future()  # True: accepted
        self._gone: asyncio.Future[None] = loop.create_future()
        self._peer_status = (1006, "")
        self._reading = asyncio.Event()
        self._reading.set()
        client = scope.get("client")
        self._peer = str(client[0]) if client else ""

    # ----------------------------------------------------------------- the connection's life

    async def serve(self, request: Request, receive: Receive) -> None:
        """Run the connection from the upgrade request to the disconnect."""
        loop = self._server.loop
        self._started()
        self.request = request
        pump = loop.create_task(self._pump())
        reader: asyncio.Task[None] | None = None
        try:
            self._on_event(EV_REQUEST, request)
            if await self._decided:
                reader = loop.create_task(self._read(receive))
                reader.add_done_callback(lambda _: self._finish(1006, ""))
                await self._gone
            else:
                # The refusal (or nothing, after an abort) goes out before returning.
                await asyncio.wait([pump, self._gone], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, pump):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            self._events.clear()
            self._ended(*self._peer_status)

    async def _read(self, receive: Receive) -> None:
        loop = self._server.loop
        limit = self._limits.max_message_size
        reading = self._reading
        while True:
            if not reading.is_set():
                await reading.wait()
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                if self.ready_state is not _OPEN:
                    continue  # closing: as the native server, nothing more is delivered
                data: str | bytes | None = message.get("text")
                if data is None:
                    data = message.get("bytes") or b""
                self._last_seen = self._last_active = loop.time()
                if limit and _too_big(data, limit):
                    self._on_event(EV_PROTOCOL_ERROR, PayloadTooBig("message too big"))
                    self.close(1009, "Message too big")
                    continue
                self._on_message(data)
            elif kind == "websocket.disconnect":
                self._finish(int(message.get("code", 1005)), message.get("reason") or "")
                return

    def _finish(self, code: int, reason: str) -> None:
        """The connection is over: the peer's close code, or 1006 without one."""
        if not self._gone.done():
            self._peer_status = (code, reason)
            self._gone.set_result(None)
        _resolve(self._decided, False)

    # ----------------------------------------------------------------- output, as ASGI events

    def accept(
        self,
        headers: list[tuple[str, str]] | None,
        limits: Limits,
        codec: PerMessageDeflate | None = None,
    ) -> None:
        """Queue ``websocket.accept`` (with the route's subprotocol) and enforce ``limits``:
        the app layer's upgrade.  No permessage-deflate of harpy's: ``codec`` is unused."""
        # No permessage-deflate of harpy's: the ASGI server owns the wire format.
        if self.ready_state is not _CONNECTING or self._gone.done():
            return
        subprotocol = next((v for n, v in headers or () if n == "Sec-WebSocket-Protocol"), None)
        self._push({"type": "websocket.accept", "subprotocol": subprotocol, "headers": []}, 0)
        _resolve(self._decided, True)
        self._open(self._adapter.limits_for(limits))

    def refuse(
        self, status: int, reason: str = "", headers: list[tuple[str, str]] | None = None
    ) -> None:
        """Refuse the upgrade: an HTTP response when the ASGI server offers
        ``websocket.http.response``, else ``websocket.close`` (the server's 403): the app
        layer's refusal."""
        if self.ready_state is not _CONNECTING or self._gone.done():
            return
        self._enter(ReadyState.CLOSED)
        extensions = self._scope.get("extensions") or {}
        if "websocket.http.response" in extensions:
            _, fields, body = refusal(status, reason, headers)
            self._push(
                {
                    "type": "websocket.http.response.start",
                    "status": status,
                    "headers": _encode_headers(
                        [(n, v) for n, v in fields if n.lower() != "connection"]
                    ),
                },
                0,
            )
            self._push({"type": "websocket.http.response.body", "body": body}, 0)
        else:
            self._push({"type": "websocket.close", "code": 1000}, 0)  # 403 from the server
        self._final = True
        _resolve(self._decided, False)
        self._on_event(EV_REFUSED, status)

    def respond(
        self,
        status: int,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        *,
        content_length: int | None = None,
    ) -> None:
        """Plain HTTP requests never reach a connection here: the ASGI server answers them."""
        self.refuse(status)

    def send_message(self, opcode: int, payload: bytes, compress: bool | None = None) -> int:
        """Queue one whole message as an ASGI event; status as on the native server (bytes,
        -1 under backpressure, 0 dropped): the app layer's send."""
        # The ASGI server frames (and compresses): the size is what it will write.
        status = self._write(Message(opcode, payload), _frame_size(len(payload)))
        if status:
            self.messages_out += 1
        return status

    def send_control(self, opcode: int, payload: bytes) -> int:
        """Nothing to send (0): pings and pongs are the ASGI server's."""
        return 0  # pings and pongs are the ASGI server's

    def queue_message(self, message: Message) -> bool:
        """Queue a message shared with other connections; False when it was dropped: the
        hub's fan-out."""
        return self._enqueue(message, len(message.frame))

    def _transmit(self, item: Any) -> None:
        self._push(item, len(item.frame) if isinstance(item, Message) else 0)

    def _transmit_all(self, items: list[Any]) -> None:
        for item in items:
            self._transmit(item)

    def _transport_buffer(self) -> int:
        return self._queued

    def _start_close(self, code: int, reason: str) -> None:
        if self.ready_state is not _OPEN or self._final:
            return
        self._push({"type": "websocket.close", "code": code, "reason": reason}, 0)
        self._final = True
        self._enter_closing()

    def abort(self) -> None:
        """Drop the connection at once: nothing queued goes out, the ASGI server sees 1006."""
        self._events.clear()
        self._final = True
        self._finish(1006, "")

    def pause_reading(self) -> None:
        """Stop taking events from the ASGI server (read-side backpressure)."""
        self._reading.clear()

    def resume_reading(self) -> None:
        """Take events from the ASGI server again."""
        self._reading.set()

    def check_upgrade(self) -> None:
        """The ASGI server checked the handshake (and may not pass its headers on: HTTP/2)."""

    @property
    def remote_address(self) -> str:
        """The client's address, from the scope's ``client`` ("" when it has none)."""
        return self._peer

    @property
    def tls(self) -> bool:
        """Whether the scope's scheme is ``wss`` (or ``https``)."""
        return self._scope.get("scheme") in ("wss", "https")

    def _push(self, event: Message | Event, size: int) -> None:
        if self._final or self._gone.done():
            return
        self._events.append((event, size))
        self._queued += size
        self._wakeup.set()
        if not self._write_paused and self._queued > self._limits.write_high_water:
            self.pause_writing()

    async def _pump(self) -> None:
        """Hand the queued events to the ASGI server, in order, until the final one."""
        events = self._events
        send = self._asgi_send
        while True:
            while events:
                item, size = events.popleft()
                if isinstance(item, Message):
                    if item.opcode == OP_TEXT:
                        event: Event = {"type": "websocket.send", "text": item.payload.decode()}
                    else:
                        event = {"type": "websocket.send", "bytes": item.payload}
                else:
                    event = item
                try:
                    await send(event)
                except Exception:  # each server has its own "gone" error
                    logger.debug("harpy: ASGI send failed", exc_info=True)
                    self._finish(1006, "")
                    return
                self._queued -= size
                if self._write_paused and self._queued <= self._limits.write_low_water:
                    self.resume_writing()
                kind = event["type"]
                if kind == "websocket.http.response.body" or (
                    kind == "websocket.close" and not self._decided.result()
                ):
                    self._finish(1006, "")
                    return
            self._wakeup.clear()
            await self._wakeup.wait()


class _InnerLifespan:
    """The fallback app's lifespan, driven from ours: startup after the App's hooks."""

    def __init__(self, app: ASGI3App, scope: Scope) -> None:
        self._app = app
        self._scope = scope
        self._to_app: asyncio.Queue[Event] = asyncio.Queue()
        self._from_app: asyncio.Queue[Event] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        with contextlib.suppress(Exception):  # an app without lifespan support raises
            await self._app(self._scope, self._to_app.get, self._send)

    async def _send(self, message: Event) -> None:
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


def _frame_size(length: int) -> int:
    """The bytes the ASGI server will write for a message of ``length`` bytes (RFC 6455 5.2)."""
    return length + (2 if length < 126 else 4 if length < 65536 else 10)


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
    return Request("GET", target, headers)


def _encode_headers(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in headers]


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

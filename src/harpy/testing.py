"""A WebSocket test client for the test suites of harpy applications.

It speaks RFC 6455 from the client side over plain asyncio streams, with nothing beyond the
standard library and harpy, so a test exercises the real server (handshake, framing, closing)
without a third-party client in between::

    async with TestServer(app) as server:
        async with server.connect("/chat?name=a") as ws:
            await ws.send("hello")
            assert await ws.receive() == "hello"

Every wait is bounded (5 s unless told otherwise) and raises :class:`asyncio.TimeoutError`
with a message saying what was awaited, so a broken server fails a test instead of hanging it.
Server frames are read by harpy's own Sans-I/O core in client mode (``FrameReader(client=True)``,
which also holds the closing handshake), and permessage-deflate is harpy's codec the other way
round (:func:`harpy.protocol.deflate.client_codec`): the client checks the server's frames with
the code the server checks the client's with.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar, overload

from .app import App
from .exceptions import ProtocolError
from .protocol import (
    EV_ERROR,
    OP_BINARY,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    ST_CLOSED,
    FrameReader,
    is_valid_close_code,
)
from .protocol import OP_CLOSE as OP_CLOSE  # with OP_CONT, still importable from here for
from .protocol import OP_CONT as OP_CONT  # send_frame(), as before
from .protocol.deflate import PerMessageDeflate, client_codec
from .protocol.handshake import GUID

__all__ = [
    "DEFAULT_TIMEOUT",
    "ClientWebSocket",
    "ClosedError",
    "HandshakeRefused",
    "ProtocolViolation",
    "TestServer",
    "build_client_frame",
]

DEFAULT_TIMEOUT = 5.0
"""Seconds any wait of this module lasts at most unless a ``timeout`` is given."""
#: A received message (after decompression) larger than this fails the connection with 1009.
MAX_MESSAGE_SIZE = 64 * 1024 * 1024

_Headers = Mapping[str, str] | Iterable[tuple[str, str]]
T = TypeVar("T")


# ----------------------------------------------------------------- errors


class ClosedError(Exception):
    """The connection is closed: ``code`` and ``reason`` are those of the server's close frame.

    1006 (and an empty reason) when the TCP connection ended without a close frame.
    """

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"connection closed: {code} {reason!r}")
        self.code = code
        """The close code (1006: no close frame came)."""
        self.reason = reason
        """The close reason."""


class ProtocolViolation(ClosedError):
    """The server broke RFC 6455; the client failed the connection with ``code``.

    A subclass of :class:`ClosedError` because the connection is over either way, but a
    distinct type so a test never mistakes a server bug for an orderly close.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.args = (f"server broke the protocol ({code}): {reason}",)


class HandshakeRefused(Exception):
    """The server answered the upgrade with something other than 101.

    ``status``, ``headers`` (lower-cased names) and ``body`` (bytes) of its answer, so a test
    can check why it was refused.
    """

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        super().__init__(f"upgrade refused with {status}: {body[:200]!r}")
        self.status = status
        """The HTTP status of the refusal."""
        self.headers = headers
        """The answer's headers, names lower-cased."""
        self.body = body
        """The answer's body."""

    @property
    def text(self) -> str:
        """The body decoded as UTF-8 (harpy's refusals are plain text)."""
        return self.body.decode("utf-8", "replace")


# ----------------------------------------------------------------- Sans-I/O framing


def _mask(payload: bytes, key: bytes) -> bytes:
    """``payload`` XOR-ed with the repeated 4-byte ``key`` (RFC 6455 5.3), as one big-int XOR."""
    n = len(payload)
    if not n:
        return b""
    repeated = (key * ((n >> 2) + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(
        n, "little"
    )


def build_client_frame(
    opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False, key: bytes | None = None
) -> bytes:
    """One masked client frame; a fresh random key unless ``key`` is given (RFC 6455 5.3)."""
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        head = bytes((b0, 0x80 | n))
    elif n < 65536:
        head = bytes((b0, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((b0, 0x80 | 127)) + n.to_bytes(8, "big")
    if key is None:
        key = os.urandom(4)
    return head + key + _mask(payload, key)


class _CountingInflater:
    """The client's codec as the frame reader sees it: counts the compressed messages it reads."""

    __slots__ = ("codec", "messages")

    def __init__(self, codec: PerMessageDeflate) -> None:
        self.codec = codec
        self.messages = 0

    def decompress(self, payload: bytes, max_size: int) -> bytes:
        self.messages += 1
        return self.codec.decompress(payload, max_size)


# ----------------------------------------------------------------- the connection


class _ServerClosed:
    """What ends the message queue: the close code and reason (or a protocol failure)."""

    def __init__(self, error: ClosedError) -> None:
        self.error = error


class ClientWebSocket:
    """One client connection, open once the server answered 101.

    ``status`` (101), ``response_headers`` (lower-cased names; repeated ones joined with
    ``", "``), ``subprotocol`` (the one the server chose, or None) and ``extensions`` (the
    agreed ``Sec-WebSocket-Extensions``, or None) describe the handshake; ``pings_received``
    lists the payloads of the pings the server sent (each answered with a pong at once).
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        status: int,
        response_headers: dict[str, str],
        subprotocol: str | None,
        deflate: PerMessageDeflate | None,
        timeout: float,
        target: str,
    ) -> None:
        self.status = status
        """The HTTP status of the upgrade (101)."""
        self.response_headers = response_headers
        """The 101's headers, names lower-cased."""
        self.subprotocol = subprotocol
        """The subprotocol the server chose, or None."""
        self.extensions = response_headers.get("sec-websocket-extensions") if deflate else None
        """The ``Sec-WebSocket-Extensions`` the server answered, or None."""
        self.pings_received: list[bytes] = []
        """The payloads of the pings the server sent, in order (each answered)."""
        self.timeout = timeout
        """Seconds each step waits by default."""
        self.target = target
        """The request target (path and query) connected to."""
        self._reader = reader
        self._writer = writer
        self._deflate = deflate
        self._inflater = _CountingInflater(deflate) if deflate else None
        # Server frames in, events out; it also holds the closing handshake and makes the
        # client's close frames (masked), so that its state is the connection's.
        self._frames = FrameReader(MAX_MESSAGE_SIZE, self._inflater, client=True)
        self._messages: deque[str | bytes | _ServerClosed] = deque()
        self._arrived = asyncio.Event()
        self._pong_waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        self._error: ProtocolViolation | None = None
        self._closed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    # ----------------------------------------------------------------- state

    @property
    def closed(self) -> bool:
        """True once the TCP connection is over."""
        return self._closed.is_set()

    @property
    def close_code(self) -> int | None:
        """The code of the server's close frame, 1006 without one, None while open."""
        return self._end().code if self.closed else None

    @property
    def close_reason(self) -> str | None:
        """The reason of the server's close frame, or None while open."""
        return self._end().reason if self.closed else None

    @property
    def compressed_messages_received(self) -> int:
        """How many received messages were compressed (permessage-deflate, RSV1)."""
        return self._inflater.messages if self._inflater is not None else 0

    def _end(self) -> ClosedError:
        if self._error is not None:
            return self._error
        # 1006 and "" until the server's close frame arrived.
        return ClosedError(self._frames.close_code, self._frames.close_reason)

    # ----------------------------------------------------------------- sending

    async def send(
        self, data: str | bytes | bytearray | memoryview, *, compress: bool = True
    ) -> None:
        """Send ``str`` as a text message and bytes-like as a binary one, masked.

        With permessage-deflate agreed, messages are compressed unless ``compress=False``.
        Raises :class:`ClosedError` once a close frame was sent or the connection ended.
        """
        if isinstance(data, str):
            opcode, payload = OP_TEXT, data.encode("utf-8")
        elif isinstance(data, bytes | bytearray | memoryview):
            opcode, payload = OP_BINARY, bytes(data)
        else:
            raise TypeError(f"send() takes str or bytes, not {type(data).__name__}")
        rsv1 = False
        if self._deflate is not None and compress:
            payload = self._deflate.compress(payload)
            rsv1 = True
        await self._write(build_client_frame(opcode, payload, rsv1=rsv1))

    async def send_json(self, obj: Any) -> None:
        """Send ``obj`` as a JSON text message."""
        await self.send(json.dumps(obj, separators=(",", ":")))

    async def send_frame(
        self, opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False
    ) -> None:
        """Send one raw (masked) frame: fragments, or what a well-behaved client never sends."""
        await self._write(build_client_frame(opcode, payload, fin=fin, rsv1=rsv1))

    async def ping(self, data: bytes = b"", timeout: float | None = None) -> float:
        """Ping, wait for the matching pong; return the round trip in seconds."""
        if len(data) > 125:
            raise ValueError("a ping carries at most 125 bytes")
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._pong_waiters.setdefault(data, []).append(waiter)
        started = loop.time()
        await self._write(build_client_frame(OP_PING, data))
        await self._wait(waiter, timeout, f"no pong for ping {data!r}")
        return loop.time() - started

    async def _write(self, frame: bytes) -> None:
        if self._frames.close_sent or self.closed:
            raise self._end() if self.closed else ClosedError(1006, "close frame already sent")
        self._writer.write(frame)
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()

    # ----------------------------------------------------------------- receiving

    async def receive(self, timeout: float | None = None) -> str | bytes:
        """The next message: ``str`` for text, ``bytes`` for binary.

        Raises :class:`ClosedError` (code and reason of the server's close frame) once every
        message that arrived before the close has been received.
        """
        while not self._messages:
            self._arrived.clear()
            await self._wait(self._arrived.wait(), timeout, "no message")
        item = self._messages[0]
        if isinstance(item, _ServerClosed):
            raise item.error  # left in place: every later receive() raises it too
        self._messages.popleft()
        return item

    async def receive_text(self, timeout: float | None = None) -> str:
        """The next message, which must be text."""
        message = await self.receive(timeout)
        if not isinstance(message, str):
            raise TypeError(f"expected a text message, got binary {message[:60]!r}")
        return message

    async def receive_bytes(self, timeout: float | None = None) -> bytes:
        """The next message, which must be binary."""
        message = await self.receive(timeout)
        if not isinstance(message, bytes):
            raise TypeError(f"expected a binary message, got text {message[:60]!r}")
        return message

    async def receive_json(self, timeout: float | None = None) -> Any:
        """The next message (text or binary) parsed as JSON."""
        return json.loads(await self.receive(timeout))

    # ----------------------------------------------------------------- closing

    async def close(self, code: int = 1000, reason: str = "", timeout: float | None = None) -> None:
        """The closing handshake: send a close frame, wait for the server's and for TCP to end.

        Raises :class:`asyncio.TimeoutError` when the server does not complete it in time
        (the connection is then dropped).  Does nothing once the connection is closed.
        """
        if code != 1005 and not is_valid_close_code(code):
            raise ValueError(f"invalid close code {code}")
        if len(reason.encode("utf-8")) > 123:
            raise ValueError("a close reason is at most 123 bytes")
        frame = b"" if self.closed else self._frames.send_close(code, reason)
        if frame:  # b"" once a close frame was sent (ours, or the echo of the server's)
            self._writer.write(frame)
            with contextlib.suppress(ConnectionError):
                await self._writer.drain()
        try:
            await self._wait(self._closed.wait(), timeout, "the server did not complete the close")
        except TimeoutError:
            self.abort()
            raise

    async def wait_closed(self, timeout: float | None = None) -> tuple[int, str]:
        """Wait until the connection is over; return the server's close (code, reason).

        (1006, "") when the TCP connection ended without a close frame.
        """
        await self._wait(self._closed.wait(), timeout, "the connection is still open")
        end = self._end()
        return end.code, end.reason

    def abort(self) -> None:
        """Drop the TCP connection at once, without a closing handshake."""
        self._writer.transport.abort()
        self._task.cancel()
        self._set_closed()

    async def __aenter__(self) -> ClientWebSocket:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.close()
            await asyncio.wait({self._task})  # the reader's end, even when aborted (cancelled)
            return
        try:  # a test already failed: its error matters more than a failed close
            await self.close()
        except (TimeoutError, ClosedError, OSError):
            self.abort()

    # ----------------------------------------------------------------- internals

    async def _wait(self, awaitable: Awaitable[Any], timeout: float | None, what: str) -> None:
        seconds = self.timeout if timeout is None else timeout
        try:
            await asyncio.wait_for(awaitable, seconds)
        except TimeoutError:
            raise TimeoutError(f"{what} within {seconds} s on {self.target}") from None

    async def _read_loop(self) -> None:
        frames = self._frames
        try:
            # Until the closing handshake is over, or the server broke the protocol: the client
            # then fails the connection at once, without waiting for the server's close.
            while frames.state != ST_CLOSED and self._error is None:
                data = await self._reader.read(65536)
                if not data:
                    break
                for kind, value in frames.feed(data):
                    self._handle(kind, value)
                answer = frames.data_to_send()  # the echo of the server's close, or ours failing
                if answer:
                    self._writer.write(answer)
            if self._error is None and frames.state == ST_CLOSED:
                # RFC 6455 7.1.1: the server closes TCP first; wait for it (bounded).
                with contextlib.suppress(TimeoutError, ConnectionError):
                    await asyncio.wait_for(self._reader.read(), self.timeout)
        except ConnectionError:
            pass
        finally:
            self._writer.close()  # after what was written: the failing close frame included
            self._set_closed()

    def _handle(self, kind: int, value: Any) -> None:
        # The reader reports no message or ping once the client's close is sent, and answers
        # the server's close itself (data_to_send).
        if kind == OP_TEXT or kind == OP_BINARY:
            self._messages.append(value)
            self._arrived.set()
        elif kind == OP_PING:
            self.pings_received.append(value)
            self._writer.write(build_client_frame(OP_PONG, value))
        elif kind == OP_PONG:
            for waiter in self._pong_waiters.pop(value, ()):
                if not waiter.done():
                    waiter.set_result(None)
        elif kind == EV_ERROR:
            error: ProtocolError = value
            self._error = ProtocolViolation(error.code, str(error))

    def _set_closed(self) -> None:
        if self._closed.is_set():
            return
        end = self._end()
        self._messages.append(_ServerClosed(end))
        self._arrived.set()
        for waiters in self._pong_waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(end)
                    waiter.exception()  # retrieved: no "never retrieved" warning if unused
        self._pong_waiters.clear()
        self._closed.set()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<ClientWebSocket {self.target} {state}>"


# ----------------------------------------------------------------- connecting


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProtocolViolation(1002, f"malformed status line {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ProtocolViolation(1002, f"malformed header line {line!r}")
        name = name.strip().lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return int(parts[1]), headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    length = headers.get("content-length", "")
    if length.isdigit():
        return await reader.readexactly(int(length))
    return await reader.read(1 << 20)  # no length: the body ends with the connection


def _header_items(headers: _Headers | None) -> list[tuple[str, str]]:
    if headers is None:
        return []
    if isinstance(headers, Mapping):
        return list(headers.items())
    return list(headers)


async def _open(
    host: str,
    port: int,
    target: str,
    *,
    headers: _Headers | None,
    subprotocols: Iterable[str] | None,
    compression: bool,
    timeout: float,
    expect_refusal: bool,
) -> ClientWebSocket | HandshakeRefused:
    if not target.startswith("/"):
        raise ValueError(f"the path must start with '/': {target!r}")
    offered = list(subprotocols or ())
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    extra = _header_items(headers)
    names = {name.lower() for name, _ in extra}
    lines = [f"GET {target} HTTP/1.1"]
    if "host" not in names:
        lines.append(f"Host: {host}:{port}")
    lines += [
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if offered:
        lines.append(f"Sec-WebSocket-Protocol: {', '.join(offered)}")
    if compression:
        lines.append("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits")
    lines += [f"{name}: {value}" for name, value in extra]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def handshake() -> ClientWebSocket | HandshakeRefused:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(request)
            await writer.drain()
            status, response = await _read_head(reader)
            if status != 101:
                refusal = HandshakeRefused(status, response, await _read_body(reader, response))
                writer.close()
                return refusal
            problem = _check_accept(response, key, offered, compression)
            if problem:
                raise ProtocolViolation(1002, problem)
            extensions = response.get("sec-websocket-extensions")
            try:
                deflate = client_codec(extensions) if extensions else None
            except ProtocolError as exc:
                raise ProtocolViolation(exc.code, str(exc)) from None
        except BaseException:
            writer.transport.abort()
            raise
        return ClientWebSocket(
            reader,
            writer,
            status=status,
            response_headers=response,
            subprotocol=response.get("sec-websocket-protocol"),
            deflate=deflate,
            timeout=timeout,
            target=target,
        )

    try:
        result = await asyncio.wait_for(handshake(), timeout)
    except TimeoutError:
        raise TimeoutError(f"no handshake answer within {timeout} s for {target}") from None
    if isinstance(result, HandshakeRefused):
        if expect_refusal:
            return result
        raise result
    if expect_refusal:
        result.abort()
        raise AssertionError(f"expected the upgrade of {target} to be refused, got 101")
    return result


def _check_accept(
    headers: dict[str, str], key: str, offered: list[str], compression: bool
) -> str | None:
    """Why a 101 response is not a valid WebSocket acceptance (RFC 6455 4.2.2), or None."""
    if headers.get("upgrade", "").lower() != "websocket":
        return "101 without Upgrade: websocket"
    if "upgrade" not in [t.strip().lower() for t in headers.get("connection", "").split(",")]:
        return "101 without Connection: Upgrade"
    expected = base64.b64encode(hashlib.sha1(key.encode("ascii") + GUID).digest()).decode()
    if headers.get("sec-websocket-accept") != expected:
        return "wrong Sec-WebSocket-Accept"
    protocol = headers.get("sec-websocket-protocol")
    if protocol is not None and protocol not in offered:
        return f"the server chose subprotocol {protocol!r}, which was not offered"
    if "sec-websocket-extensions" in headers and not compression:
        return "the server agreed to an extension that was not offered"
    return None


class _Connecting(Generic[T]):
    """Both ``await server.connect(...)`` and ``async with server.connect(...) as ws``."""

    def __init__(self, opening: Callable[[], Awaitable[T]]) -> None:
        self._opening = opening
        self._result: T | None = None

    def __await__(self) -> Generator[Any, None, T]:
        return self._opening().__await__()

    async def __aenter__(self) -> T:
        self._result = await self._opening()
        return self._result

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(self._result, ClientWebSocket):
            await self._result.__aexit__(exc_type, exc, tb)


class TestServer:
    """Serve ``app`` on 127.0.0.1, on a free port, for the duration of an ``async with``.

    On exit the app is shut down (open connections get 1001) and any client still open is
    dropped, so one test cannot leak connections into the next.
    """

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(
        self,
        app: App,
        *,
        host: str = "127.0.0.1",
        timeout: float = DEFAULT_TIMEOUT,
        shutdown_timeout: float = 2.0,
    ) -> None:
        self.app = app
        """The App being served."""
        self.host = host
        """The address it listens on (127.0.0.1)."""
        self.timeout = timeout
        """Seconds each client step waits by default."""
        self.shutdown_timeout = shutdown_timeout
        """Seconds the shutdown at the end of the ``async with`` may take."""
        self._clients: list[ClientWebSocket] = []

    @property
    def port(self) -> int:
        """The port the server got."""
        if self.app.port is None:
            raise RuntimeError("the TestServer is not running: use it with `async with`")
        return self.app.port

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:port``."""
        if self.app.url is None:
            raise RuntimeError("the TestServer is not running: use it with `async with`")
        return self.app.url

    async def __aenter__(self) -> TestServer:
        await self.app.listen(self.host, 0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.app.shutdown(timeout=self.shutdown_timeout)
        finally:
            for client in self._clients:
                if not client.closed:
                    client.abort()
            self._clients.clear()

    @overload
    def connect(
        self,
        path: str = "/",
        *,
        headers: _Headers | None = None,
        subprotocols: Iterable[str] | None = None,
        compression: bool = False,
        timeout: float | None = None,
        expect_refusal: Literal[False] = False,
    ) -> _Connecting[ClientWebSocket]: ...

    @overload
    def connect(
        self,
        path: str = "/",
        *,
        headers: _Headers | None = None,
        subprotocols: Iterable[str] | None = None,
        compression: bool = False,
        timeout: float | None = None,
        expect_refusal: Literal[True],
    ) -> _Connecting[HandshakeRefused]: ...

    def connect(
        self,
        path: str = "/",
        *,
        headers: _Headers | None = None,
        subprotocols: Iterable[str] | None = None,
        compression: bool = False,
        timeout: float | None = None,
        expect_refusal: bool = False,
    ) -> _Connecting[ClientWebSocket] | _Connecting[HandshakeRefused]:
        """Open a WebSocket to ``path`` (with its query string).

        ``headers`` are added to the upgrade request (Cookie, Origin, Authorization...),
        ``subprotocols`` are offered in order, ``compression=True`` offers permessage-deflate.
        A refusal raises :class:`HandshakeRefused`; with ``expect_refusal=True`` it is returned
        instead and a 101 raises AssertionError.
        """
        seconds = self.timeout if timeout is None else timeout
        port = self.port

        async def opening() -> Any:
            result = await _open(
                self.host,
                port,
                path,
                headers=headers,
                subprotocols=subprotocols,
                compression=compression,
                timeout=seconds,
                expect_refusal=expect_refusal,
            )
            if isinstance(result, ClientWebSocket):
                self._clients.append(result)
            return result

        return _Connecting(opening)

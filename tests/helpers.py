"""Helpers for tests: a real harpy server on 127.0.0.1 port 0 (native or under uvicorn through
the ASGI adapter), and a byte-level client.

The byte-level client builds its frames with :func:`harpy.testing.build_client_frame` and reads
the server's one at a time, raw (RSV bits, fragments and close payloads as sent), since tests
check exactly those bytes; messages are read by ``harpy.testing`` or ``websockets`` clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import uvicorn
from websockets.asyncio.client import ClientConnection, connect

import harpy
from harpy.asgi import ASGIApp
from harpy.pubsub.backplane import Backplane
from harpy.testing import build_client_frame
from tests.timing import TIMEOUT, eventually, scaled

#: What the backplane fixtures give: a fresh, unstarted backplane per call.
MakeBackplane = Callable[[], Backplane]


def client(url: str, **kwargs: Any) -> connect:
    """A websockets client with bounded waits and no proxy from the environment."""
    return connect(url, proxy=None, open_timeout=TIMEOUT, close_timeout=scaled(2.0), **kwargs)


async def recv(ws: ClientConnection) -> Any:
    """The next message, within the tests' time bound."""
    return await asyncio.wait_for(ws.recv(), TIMEOUT)


@contextlib.asynccontextmanager
async def serve(app: harpy.App, **kwargs: Any) -> AsyncIterator[str]:
    """Listen on 127.0.0.1 port 0; yield the ``ws://host:port`` base URL; shut down after."""
    await app.listen("127.0.0.1", 0, **kwargs)
    try:
        assert app.url is not None
        yield app.url
    finally:
        await app.shutdown(timeout=scaled(2.0))


@contextlib.asynccontextmanager
async def uvicorn_serve(app: Any, lifespan: str = "on") -> AsyncIterator[str]:
    """Serve the ASGI app ``app`` with uvicorn on 127.0.0.1 port 0; yield ``ws://127.0.0.1:port``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        loop="none",
        lifespan=lifespan,
        ws="websockets-sansio",
        log_level="warning",
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    try:
        await eventually(lambda: server.started or task.done(), what="uvicorn started")
        if task.done():
            task.result()
        assert server.started
        yield f"ws://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, scaled(10.0))
        sock.close()


def serve_asgi(app: harpy.App) -> AbstractAsyncContextManager[str]:
    """As :func:`serve`, but under uvicorn through :class:`harpy.asgi.ASGIApp` (with lifespan)."""
    return uvicorn_serve(ASGIApp(app))


#: What the ``serve_app`` fixture gives: ``async with serve_app(app) as url`` (``ws://host:port``).
ServeApp = Callable[[harpy.App], AbstractAsyncContextManager[str]]


class RawClient:
    """A byte-level client for what a well-behaved library will not send."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, url: str, *, receive_buffer: int | None = None) -> RawClient:
        """Connect to ``url``'s host and port; with ``receive_buffer`` (bytes), a slow reader:
        a small kernel receive buffer (and stream buffer), so the server's writes back up
        after a few KiB that the client does not read."""
        host, port = url.removeprefix("ws://").split(":")
        if receive_buffer is None:
            reader, writer = await asyncio.open_connection(host, int(port))
            return cls(reader, writer)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        except BaseException:
            sock.close()
            raise
        reader, writer = await asyncio.open_connection(sock=sock, limit=max(receive_buffer, 4096))
        return cls(reader, writer)

    @classmethod
    async def slow_reader(cls, url: str, path: str, receive_buffer: int = 4096) -> RawClient:
        """A client upgraded on ``path`` that reads nothing until asked (see :meth:`connect`)."""
        client = await cls.connect(url, receive_buffer=receive_buffer)
        try:
            assert await client.upgrade(path) == 101
        except BaseException:
            await client.close()
            raise
        return client

    async def request(self, head: bytes) -> tuple[int, dict[str, str], bytes]:
        """Send a raw request head; return (status, headers, rest of the response head)."""
        self.writer.write(head)
        await self.writer.drain()
        return await self.read_response()

    async def read_response(self) -> tuple[int, dict[str, str], bytes]:
        data = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        lines = data.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        return status, headers, data

    async def upgrade(self, path: str = "/", extra: str = "") -> int:
        head = (
            f"GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"{extra}\r\n"
        )
        status, _, _ = await self.request(head.encode())
        return status

    def send_frame(
        self, opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bool = True
    ) -> None:
        self.writer.write(client_frame(opcode, payload, fin=fin, rsv=rsv, mask=mask))

    async def read_raw_frame(self, timeout: float = TIMEOUT) -> tuple[int, bytes]:
        """(first header byte: FIN, RSV1-3 and opcode; payload) of the next server frame.

        Reads that frame's bytes and no more, so a test may go on reading the stream itself.
        On purpose not the core's reader (``FrameReader(client=True)``, which ``harpy.testing``
        uses): these tests check the server's wire bytes themselves (RSV bits, compressed
        payloads before inflating, close payloads byte for byte).
        """
        head = await asyncio.wait_for(self.reader.readexactly(2), timeout)
        assert not head[1] & 0x80, "a server frame must not be masked"
        length = head[1] & 0x7F
        if length == 126:
            length = int.from_bytes(await self.reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await self.reader.readexactly(8), "big")
        payload = await asyncio.wait_for(self.reader.readexactly(length), timeout)
        return head[0], payload

    async def read_frame(self, timeout: float = TIMEOUT) -> tuple[int, bytes]:
        """(opcode, payload) of the next server frame."""
        b0, payload = await self.read_raw_frame(timeout)
        return b0 & 0x0F, payload

    async def read_close(self, timeout: float = TIMEOUT) -> int:
        """Read frames up to the close frame; return its code (1005 when empty)."""
        for _ in range(1000):
            opcode, payload = await self.read_frame(timeout)
            if opcode == 0x8:
                return int.from_bytes(payload[:2], "big") if payload else 1005
        raise AssertionError("no close frame")

    async def at_eof(self, timeout: float = TIMEOUT) -> bool:
        data = await asyncio.wait_for(self.reader.read(65536), timeout)
        return data == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def client_frame(
    opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bool = True
) -> bytes:
    """A client frame, masked with a random key unless ``mask`` is False; ``rsv`` is any of the
    reserved bits (0x40, 0x20, 0x10): what a well-behaved client does not send."""
    frame = build_client_frame(opcode, payload, fin=fin)
    if mask:
        return bytes((frame[0] | rsv,)) + frame[1:]
    head = len(frame) - 4 - len(payload)  # the header, without the masking key
    return bytes((frame[0] | rsv, frame[1] & 0x7F)) + frame[2:head] + payload

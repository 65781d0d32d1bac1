"""Listening sockets, TLS, the registry of live connections, and graceful shutdown."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

from .timers import TimerWheel

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["Server", "make_ssl_context"]


def make_ssl_context(certfile: str, keyfile: str | None = None) -> ssl.SSLContext:
    """A server TLS context from PEM paths (TLS 1.2 or later)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile)
    return context


class Server:
    """Accepts connections for one protocol factory and keeps track of them until closed."""

    def __init__(
        self,
        protocol_factory: Callable[[Server], Connection],
        *,
        loop: asyncio.AbstractEventLoop,
        handshake_timeout: float = 10.0,
        max_header_size: int = 8192,
    ) -> None:
        self._factory = protocol_factory
        self.loop = loop
        self.handshake_timeout = handshake_timeout
        self.max_header_size = max_header_size
        self.connections: set[Connection] = set()
        self.wheel = TimerWheel(loop)
        self._servers: list[asyncio.base_events.Server] = []
        self._dirty: list[Connection] = []
        self.closing = False
        #: Frames dropped at a connection's backpressure limit, over all connections.
        self.dropped = 0

    async def listen(
        self,
        host: str | None,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        backlog: int = 2048,
        reuse_port: bool = False,
    ) -> None:
        server = await self.loop.create_server(
            lambda: self._factory(self),
            host,
            port,
            ssl=ssl_context,
            backlog=backlog,
            reuse_port=reuse_port or None,
        )
        self._servers.append(server)

    def flush_later(self, conn: Connection) -> None:
        """Write ``conn``'s queued frames at the end of this loop tick, with everyone else's."""
        if not self._dirty:
            self.loop.call_soon(self._flush_dirty)
        self._dirty.append(conn)

    def _flush_dirty(self) -> None:
        dirty = self._dirty
        self._dirty = []
        for conn in dirty:
            conn.flush()

    @property
    def sockets(self) -> list[tuple[str, int]]:
        """The bound (host, port) pairs, e.g. to learn the port chosen for port 0."""
        out = []
        for server in self._servers:
            for sock in server.sockets:
                name = sock.getsockname()
                out.append((name[0], name[1]))
        return out

    async def close(
        self, timeout: float = 5.0, code: int = 1001, reason: str = "Going Away"
    ) -> None:
        """Stop accepting, close every connection with ``code``, abort the rest after timeout."""
        self.closing = True
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            conn.close(code, reason)
        deadline = self.loop.time() + timeout
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            conn.abort()
        # Let connection_lost callbacks run before the loop goes away.
        for _ in range(3):
            if not self.connections:
                break
            await asyncio.sleep(0)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        self.wheel.close()

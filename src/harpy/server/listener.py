"""Listening sockets, TLS, the registry of live connections, and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import ssl
import stat
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..exceptions import ConfigurationError
from .timers import TimerWheel

if TYPE_CHECKING:
    from .connection import Connection
    from .forwarded import ProxyTrust

__all__ = [
    "DROP_REASONS",
    "Host",
    "Server",
    "default_output_budget",
    "make_ssl_context",
    "release_memory",
]

logger = logging.getLogger("harpy")

MiB = 1024 * 1024

#: Why a message can be lost: past a connection's ``backpressure_limit``, past the server's
#: ``output_budget``, or sent to a connection that is closing or closed.
DROP_REASONS = ("backpressure", "budget", "closing")
#: At most one warning per cause of drops in this many seconds.
DROP_WARNING_INTERVAL = 5.0
#: Ask the allocator to give memory back once this much output was freed (and whenever the
#: last connection closes after at least ``TRIM_WHEN_IDLE`` was).
TRIM_AFTER = 64 * MiB
TRIM_WHEN_IDLE = 1 * MiB
#: At most one such call in this many seconds while connections remain open.
TRIM_INTERVAL = 1.0
#: What a closed connection is taken to have held besides its output (objects, read buffers).
_CONNECTION_COST = 64 * 1024


def default_output_budget() -> int:
    """The smaller of 1 GiB and a quarter of physical memory (1 GiB when that is unknown)."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return 1024 * MiB
    return min(1024 * MiB, physical // 4) if physical > 0 else 1024 * MiB


def _load_malloc_trim() -> Any:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc; absent from musl, macOS, Windows
    except (AttributeError, OSError, TypeError):
        return None


_malloc_trim = _load_malloc_trim()


def release_memory() -> bool:
    """Tell the C allocator to return its free memory to the system (glibc ``malloc_trim``);
    False where there is no such call."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True


def make_ssl_context(certfile: str, keyfile: str | None = None) -> ssl.SSLContext:
    """A server TLS context from PEM paths (TLS 1.2 or later)."""
    for kind, path in (("certificate", certfile), ("key", keyfile)):
        if path is not None:
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise ConfigurationError(
                    f"TLS {kind} file {path!r}: {exc.strerror or exc}"
                ) from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile, keyfile)
    except ssl.SSLError as exc:
        files = f"{certfile!r}" + (f" and key file {keyfile!r}" if keyfile else "")
        raise ConfigurationError(
            f"TLS certificate file {files}: not a PEM certificate and its private key "
            f"that match ({exc.reason or exc})"
        ) from None
    return context


class Host:
    """What every connection of one event loop shares, listening or not (the native server,
    the ASGI adapter): the loop, the timer wheel, the registry of live connections, the drop
    counters, the server-wide output budget and the end-of-tick flush."""

    # Slots: the per-delivery path reads and writes ``queued`` and ``output_bound``.
    __slots__ = (
        "_dirty",
        "_freed",
        "_trim_pending",
        "_trimmed_at",
        "_warned_at",
        "closing",
        "connections",
        "drops",
        "handshake_timeout",
        "loop",
        "max_header_size",
        "output_bound",
        "output_budget",
        "proxy",
        "queued",
        "sample_above",
        "wheel",
    )

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop,
        handshake_timeout: float = 10.0,
        max_header_size: int = 8192,
        output_budget: int = 0,
        proxy: ProxyTrust | None = None,
    ) -> None:
        self.loop = loop
        self.handshake_timeout = handshake_timeout
        #: Whose proxy information is believed, and which (None: no peer is a proxy).
        self.proxy = proxy
        self.max_header_size = max_header_size
        self.connections: set[Connection] = set()
        self.wheel = TimerWheel(loop)
        self._dirty: list[Connection] = []
        self.closing = False
        #: Messages lost, by cause (:data:`DROP_REASONS`), over all connections.
        self.drops: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self._warned_at: dict[str, float] = dict.fromkeys(DROP_REASONS, -DROP_WARNING_INTERVAL)
        #: Bytes of output all connections may hold, queued or in their transports (0: no
        #: bound); past it, the connections holding the most get no more.
        self.output_budget = output_budget
        #: The bound the connections test against: the budget, or no bound for 0.
        self.output_bound = output_budget or sys.maxsize
        #: Past this total, each flush samples its transport's buffer; below, what was
        #: written is taken as still buffered (the total errs high, never low, and costs
        #: nothing while far from the budget).
        self.sample_above = self.output_bound // 2
        #: Bytes of output held now, as last sampled (each connection's own count summed).
        self.queued = 0
        self._freed = 0
        self._trim_pending = False
        self._trimmed_at = -TRIM_INTERVAL

    def count_drop(self, reason: str) -> None:
        """Count one lost message; warn on the ``harpy`` logger, at most once per
        :data:`DROP_WARNING_INTERVAL` seconds per cause, with the running count."""
        drops = self.drops
        drops[reason] += 1
        now = self.loop.time()
        if now - self._warned_at[reason] >= DROP_WARNING_INTERVAL:
            self._warned_at[reason] = now
            logger.warning("harpy: %d message(s) dropped so far (%s)", drops[reason], reason)

    def fair_share(self) -> int:
        """The budget divided among the connections: past it, a connection is among the
        slowest (the budget can only be passed when one is)."""
        return self.output_bound // max(1, len(self.connections))

    def released(self, held: int) -> None:
        """A connection that held ``held`` bytes of output closed: forget them, and ask the
        allocator to give memory back once enough was freed."""
        self.queued -= held
        self._freed += held + _CONNECTION_COST
        if self._trim_pending:
            return
        if self.connections:
            if self._freed < TRIM_AFTER or self.loop.time() - self._trimmed_at < TRIM_INTERVAL:
                return
        elif self._freed < TRIM_WHEN_IDLE:
            return
        self._trim_pending = True
        self.loop.call_soon(self._trim)

    def _trim(self) -> None:
        self._trim_pending = False
        self._freed = 0
        self._trimmed_at = self.loop.time()
        release_memory()

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

    async def close(
        self, timeout: float = 5.0, code: int = 1001, reason: str = "Going Away"
    ) -> None:
        """Close every connection with ``code``, abort the rest after ``timeout``."""
        self.closing = True
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
        self.wheel.close()


class Server(Host):
    """A :class:`Host` that listens: accepts connections for one protocol factory."""

    __slots__ = ("_factory", "_servers", "_unix_paths")

    def __init__(
        self,
        protocol_factory: Callable[[Server], asyncio.Protocol],
        *,
        loop: asyncio.AbstractEventLoop,
        handshake_timeout: float = 10.0,
        max_header_size: int = 8192,
        output_budget: int = 0,
        proxy: ProxyTrust | None = None,
    ) -> None:
        super().__init__(
            loop=loop,
            handshake_timeout=handshake_timeout,
            max_header_size=max_header_size,
            output_budget=output_budget,
            proxy=proxy,
        )
        self._factory = protocol_factory
        self._servers: list[asyncio.base_events.Server] = []
        self._unix_paths: list[str] = []

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

    async def listen_unix(
        self, path: str, *, ssl_context: ssl.SSLContext | None = None, backlog: int = 2048
    ) -> None:
        """Listen on the Unix socket ``path`` (a stale socket file there is replaced; the new
        one is removed on :meth:`close`).  Its mode follows the process's umask."""
        server = await self.loop.create_unix_server(
            lambda: self._factory(self), path, ssl=ssl_context, backlog=backlog
        )
        self._servers.append(server)
        self._unix_paths.append(path)

    @property
    def sockets(self) -> list[tuple[str, int]]:
        """The bound (host, port) pairs, e.g. to learn the port chosen for port 0."""
        out = []
        for server in self._servers:
            for sock in server.sockets:
                name = sock.getsockname()
                if isinstance(name, tuple):  # not a Unix socket's path
                    out.append((name[0], name[1]))
        return out

    async def close(
        self, timeout: float = 5.0, code: int = 1001, reason: str = "Going Away"
    ) -> None:
        """Stop accepting, close every connection with ``code``, abort the rest after timeout."""
        self.closing = True
        for server in self._servers:
            server.close()
        await super().close(timeout, code, reason)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        for path in self._unix_paths:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.stat(path).st_mode):
                    os.unlink(path)
        self._unix_paths.clear()

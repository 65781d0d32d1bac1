"""A TCP proxy on 127.0.0.1 whose connections a test cuts, and keeps refusing for a while:
what a client sees when its network goes away (no closing handshake, then no route)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable


class Proxy:
    """Forwards ``127.0.0.1:port`` to ``target_port``; :meth:`cut` drops every connection and
    refuses new ones until :meth:`restore`."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.cuts = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._pipes.update((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.get_running_loop().create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        dst.close()
        self._pipes.discard(dst)

    async def cut(self) -> None:
        """Drop every connection at once (RST) and stop listening."""
        self.cuts += 1
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._pipes):
            writer.transport.abort()
        self._pipes.clear()
        if server is not None:
            await server.wait_closed()

    async def restore(self) -> None:
        """Listen again, on the same port."""
        await self.start()

    async def stop(self) -> None:
        await self.cut()
        for task in list(self._tasks):
            task.cancel()


async def publish_while_cut(
    proxy: Proxy,
    publish: Callable[[int], Awaitable[object]],
    first: int,
    count: int = 1000,
    seconds: float = 2.0,
) -> None:
    """Cut ``proxy``, ``publish(n)`` for ``count`` numbers from ``first``, spread over the
    ``seconds`` the clients are away, then let them back."""
    await proxy.cut()
    started = time.monotonic()
    batches = 20
    for batch in range(batches):
        for i in range(count // batches):
            await publish(first + batch * (count // batches) + i)
        await asyncio.sleep(seconds / batches / 2)
    await asyncio.sleep(max(0.0, seconds - (time.monotonic() - started)))
    await proxy.restore()

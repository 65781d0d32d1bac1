"""The two promises of fan-out: a message is framed (and compressed) once, and what reaches a
connection within one loop tick leaves in one write."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from websockets.asyncio.client import connect

import harpy
from harpy.protocol import message as pubsub
from tests.helpers import serve
from tests.timing import TIMEOUT

SUBSCRIBERS = 20


def subscriber_app(**options: Any) -> harpy.App:
    app = harpy.App()

    def open_(ws: harpy.WebSocket[Any]) -> None:
        ws.subscribe("news")
        ws.send("ready")

    app.ws("/sub", {"open": open_}, **options)
    return app


async def test_a_published_message_is_framed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[int] = []
    real = pubsub.build_frame

    def counting(opcode: int, payload: bytes, rsv1: bool = False) -> bytes:
        built.append(len(payload))
        return real(opcode, payload, rsv1)

    monkeypatch.setattr(pubsub, "build_frame", counting)
    app = subscriber_app()
    async with serve(app) as url:
        clients = [await connect(f"{url}/sub") for _ in range(SUBSCRIBERS)]
        try:
            for c in clients:
                assert await asyncio.wait_for(c.recv(), TIMEOUT) == "ready"
            assert app.publish("news", "x" * 100) == SUBSCRIBERS
            for c in clients:
                assert await asyncio.wait_for(c.recv(), TIMEOUT) == "x" * 100
        finally:
            for c in clients:
                await c.close()
    assert built == [100]


async def test_a_published_message_is_compressed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    compressed: list[int] = []
    real = pubsub.compress_shared

    def counting(payload: bytes, *args: Any) -> bytes:
        compressed.append(len(payload))
        return real(payload, *args)

    monkeypatch.setattr(pubsub, "compress_shared", counting)
    app = subscriber_app(compression=True)
    text = "the same words again and again " * 40
    async with serve(app) as url:
        clients = [await connect(f"{url}/sub") for _ in range(SUBSCRIBERS)]
        try:
            for c in clients:
                assert await asyncio.wait_for(c.recv(), TIMEOUT) == "ready"
                assert c.protocol.extensions, "permessage-deflate was negotiated"
            app.publish("news", text)
            for c in clients:
                assert await asyncio.wait_for(c.recv(), TIMEOUT) == text
        finally:
            for c in clients:
                await c.close()
    assert compressed == [len(text)]


async def test_deliveries_of_one_tick_leave_in_one_write_per_connection() -> None:
    app = subscriber_app()
    async with serve(app) as url:
        clients = [await connect(f"{url}/sub") for _ in range(SUBSCRIBERS)]
        try:
            for c in clients:
                assert await asyncio.wait_for(c.recv(), TIMEOUT) == "ready"
            server = app._server
            assert server is not None
            conns = list(server.connections)
            counters = [CountingTransport(conn.transport) for conn in conns]
            for conn, counter in zip(conns, counters, strict=True):
                conn.transport = counter
            try:
                for i in range(10):  # ten publishes in one tick: no await in between
                    app.publish("news", f"m{i}")
                for c in clients:
                    got = [await asyncio.wait_for(c.recv(), TIMEOUT) for _ in range(10)]
                    assert got == [f"m{i}" for i in range(10)]
            finally:
                for conn, counter in zip(conns, counters, strict=True):
                    conn.transport = counter.inner
        finally:
            for c in clients:
                await c.close()
    assert len(conns) == SUBSCRIBERS
    # One write per connection, holding the ten frames (2 bytes of header + "mN" each).
    assert [counter.writes for counter in counters] == [[40]] * SUBSCRIBERS


class CountingTransport:
    """A connection's transport that records the size of each write, then passes it on."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.writes: list[int] = []

    def write(self, data: bytes) -> None:
        self.writes.append(len(data))
        self.inner.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

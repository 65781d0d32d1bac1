"""Backpressure through a real server: write watermarks and drain, the backpressure limit,
cork, and the read side pausing while a slow handler catches up."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from websockets.asyncio.client import connect

import harpy
from tests.helpers import RawClient, serve
from tests.timing import TIMEOUT, eventually, scaled

OP_TEXT, OP_BINARY, OP_CLOSE = 0x1, 0x2, 0x8
KiB = 1024
CHUNK = 64 * KiB


@contextlib.asynccontextmanager
async def slow_reader(url: str, path: str) -> AsyncIterator[RawClient]:
    """An upgraded RawClient with a small receive buffer, so the server's writes back up soon."""
    client = await RawClient.slow_reader(url, path, receive_buffer=16 * KiB)
    try:
        yield client
    finally:
        await client.close()


def chunk(index: int) -> bytes:
    """64 KiB whose first four bytes number it."""
    return index.to_bytes(4, "big") + bytes(CHUNK - 4)


async def read_chunks(client: RawClient, count: int) -> list[int]:
    """Read ``count`` binary frames; return their numbers."""
    numbers = []
    for _ in range(count):
        opcode, payload = await client.read_frame(TIMEOUT)
        assert opcode == OP_BINARY
        assert len(payload) == CHUNK
        numbers.append(int.from_bytes(payload[:4], "big"))
    return numbers


class Flood:
    """Sends numbered 64 KiB chunks from ``open`` until a send returns ``stop_at`` (or 200)."""

    def __init__(self, stop_at: int, extra: int = 0) -> None:
        self.stop_at = stop_at
        self.extra = extra  # sends made after the first ``stop_at``
        self.results: list[int] = []
        self.buffered_when_blocked = 0
        self.drains: list[int] = []
        self.ws: harpy.WebSocket[Any] | None = None
        self.closed: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
        self.messages: list[str | bytes] = []

    def open(self, ws: harpy.WebSocket[Any]) -> None:
        self.ws = ws
        extra = -1
        for i in range(200):
            result = ws.send(chunk(i))
            self.results.append(result)
            if result == -1 and not self.buffered_when_blocked:
                self.buffered_when_blocked = ws.buffered_amount
            if extra < 0 and result == self.stop_at:
                extra = self.extra
            if extra == 0:
                break
            if extra > 0:
                extra -= 1

    def drain(self, ws: harpy.WebSocket[Any]) -> None:
        self.drains.append(ws.buffered_amount)

    def message(self, ws: harpy.WebSocket[Any], message: str | bytes) -> None:
        self.messages.append(message)
        ws.send(message)

    def close(self, ws: harpy.WebSocket[Any], code: int, reason: str) -> None:
        self.closed.put_nowait((code, reason))


# ----------------------------------------------------------------- write side


async def test_send_reports_backpressure_and_drain_fires_once_below_low_water() -> None:
    flood = Flood(stop_at=-1)
    app = harpy.App()
    app.ws("/flood", flood, write_high_water=64 * KiB, write_low_water=16 * KiB)
    async with serve(app) as url, slow_reader(url, "/flood") as client:
        await eventually(lambda: flood.results and flood.results[-1] in (-1, 0))
        results = flood.results
        assert results[-1] == -1, results
        assert all(r == CHUNK + 10 for r in results[:-1]), results  # bytes of each frame
        assert flood.buffered_when_blocked > 0
        assert flood.ws is not None
        assert flood.ws.buffered_amount > 0
        assert flood.drains == []  # nothing was read yet
        numbers = await read_chunks(client, len(results))  # a -1 send is queued, not lost
        assert numbers == list(range(len(results)))
        await eventually(lambda: flood.drains)
        # Time for a second drain, which must not come: not a synchronisation.
        await asyncio.sleep(0.2)
        assert len(flood.drains) == 1, flood.drains
        assert flood.drains[0] <= 16 * KiB
        assert flood.ws.buffered_amount == 0
        # Unblocked: a send is written at once again.
        assert flood.ws.send(b"after") == 7
        assert await client.read_frame(TIMEOUT) == (OP_BINARY, b"after")
    assert flood.ws.dropped == 0


async def test_the_send_that_passes_high_water_returns_minus_one() -> None:
    # -1 means "queued under backpressure" (Bun's status): a send whose frame could not all be
    # written, leaving the buffer above write_high_water, must not report its bytes as written.
    after: list[tuple[int, int]] = []

    def open_(ws: harpy.WebSocket[Any]) -> None:
        for i in range(200):
            result = ws.send(chunk(i))
            after.append((result, ws.buffered_amount))
            if result == -1:
                break

    app = harpy.App()
    app.ws("/flood", {"open": open_}, write_high_water=64 * KiB, write_low_water=16 * KiB)
    async with serve(app) as url, slow_reader(url, "/flood"):
        await eventually(lambda: after and after[-1][0] == -1)
        crossing = [(i, r, b) for i, (r, b) in enumerate(after) if r > 0 and b > 64 * KiB]
        assert crossing == [], (
            "send returned the byte count although the frame left the buffer above "
            f"write_high_water (index, result, buffered_amount): {crossing}"
        )


async def test_backpressure_limit_drops_and_counts() -> None:
    flood = Flood(stop_at=0, extra=4)
    app = harpy.App()
    app.ws(
        "/flood",
        flood,
        write_high_water=64 * KiB,
        write_low_water=16 * KiB,
        backpressure_limit=256 * KiB,
    )
    async with serve(app) as url, slow_reader(url, "/flood") as client:
        await eventually(lambda: flood.results and flood.results.count(0) == 5)
        results = flood.results
        first_blocked = results.index(-1)
        first_dropped = results.index(0)
        assert first_blocked < first_dropped
        assert all(r > 0 for r in results[:first_blocked]), results
        assert all(r == -1 for r in results[first_blocked:first_dropped]), results
        assert results[first_dropped:] == [0] * 5
        ws = flood.ws
        assert ws is not None
        assert ws.dropped == 5
        assert app.dropped == 5
        # Queued (-1) sends stay within the limit.
        assert ws.buffered_amount <= 256 * KiB
        # The connection stays open; the client gets exactly the frames not dropped.
        assert ws.ready_state is harpy.ReadyState.OPEN
        numbers = await read_chunks(client, first_dropped)
        assert numbers == list(range(first_dropped))
        client.send_frame(OP_TEXT, b"still open")
        assert await client.read_frame(TIMEOUT) == (OP_TEXT, b"still open")
        assert flood.messages == ["still open"]


async def test_close_on_backpressure_limit_closes_1008() -> None:
    flood = Flood(stop_at=0, extra=2)
    app = harpy.App()
    app.ws(
        "/flood",
        flood,
        write_high_water=64 * KiB,
        write_low_water=16 * KiB,
        backpressure_limit=256 * KiB,
        close_on_backpressure_limit=True,
    )
    async with serve(app) as url, slow_reader(url, "/flood") as client:
        await eventually(lambda: flood.results and flood.results[-3:] == [0, 0, 0])
        results = flood.results
        first_dropped = results.index(0)
        assert all(r != 0 for r in results[:first_dropped])
        ws = flood.ws
        assert ws is not None
        assert ws.ready_state is harpy.ReadyState.CLOSING
        assert ws.dropped == 1  # the one that passed the limit; later sends find it closing
        # Everything accepted before the limit arrives, then the close.
        numbers = await read_chunks(client, first_dropped)
        assert numbers == list(range(first_dropped))
        opcode, payload = await client.read_frame(TIMEOUT)
        assert opcode == OP_CLOSE
        assert int.from_bytes(payload[:2], "big") == 1008
        assert payload[2:] == b"Backpressure limit exceeded"
        client.send_frame(OP_CLOSE, payload[:2])
        assert await client.at_eof()
        assert await asyncio.wait_for(flood.closed.get(), TIMEOUT) == (1008, "")


# ----------------------------------------------------------------- cork


async def test_cork_sends_in_order_in_one_write() -> None:
    seen: dict[str, Any] = {}

    def open_(ws: harpy.WebSocket[Any]) -> None:
        def burst(w: harpy.WebSocket[Any]) -> str:
            seen["results"] = [w.send(f"m{i}") for i in range(100)]
            seen["inside"] = w.buffered_amount  # held back until the cork ends
            return "done"

        seen["returned"] = ws.cork(burst)
        seen["after"] = ws.buffered_amount

    def message(ws: harpy.WebSocket[Any], message: str | bytes) -> None:
        # Handlers already run corked: a nested cork simply runs.
        ws.cork(lambda w: [w.send(f"{message}-{i}") for i in range(100)])

    app = harpy.App()
    app.ws("/cork", {"open": open_, "message": message})
    async with serve(app) as url, connect(f"{url}/cork") as client:
        got = [await asyncio.wait_for(client.recv(), TIMEOUT) for _ in range(100)]
        assert got == [f"m{i}" for i in range(100)]
        assert seen["returned"] == "done"
        assert seen["results"] == [len(f"m{i}") + 2 for i in range(100)]
        assert seen["inside"] == sum(seen["results"])
        assert seen["after"] == 0
        await client.send("x")
        got = [await asyncio.wait_for(client.recv(), TIMEOUT) for _ in range(100)]
        assert got == [f"x-{i}" for i in range(100)]


# ----------------------------------------------------------------- read side


async def test_slow_async_handler_pauses_reading_and_loses_nothing() -> None:
    count = 2000
    limit = 8
    handled: list[str] = []
    stats = {"max_queue": 0, "paused_seen": 0}
    done = asyncio.Event()

    async def message(ws: harpy.WebSocket[Any], message: str | bytes) -> None:
        assert isinstance(message, str)
        stats["max_queue"] = max(stats["max_queue"], ws.pending)
        if ws.dispatch is harpy.Dispatch.PAUSED:
            stats["paused_seen"] += 1
        await asyncio.sleep(0.001)  # a slow handler: the case under test
        handled.append(message)
        if len(handled) == count:
            done.set()

    app = harpy.App()
    app.ws("/slow", {"message": message}, max_pending_messages=limit)
    # 1 KiB messages: one TCP read of the server (at most 256 KiB) holds at most ~250 of them.
    sent = [f"{i:06d}:" + "x" * (KiB - 7) for i in range(count)]
    async with serve(app) as url, connect(f"{url}/slow") as client:
        for text in sent:
            await client.send(text)  # waits only when the client's own buffer is full
        await asyncio.wait_for(done.wait(), scaled(30.0))
        assert handled == sent
        assert stats["paused_seen"] > 0, "reading was never paused"
        assert stats["max_queue"] < limit + 600, stats
        (ws,) = app.connections
        assert ws.dispatch is not harpy.Dispatch.PAUSED
        assert ws.pending == 0
        # Still served after the backlog.
        handled.clear()
        done.clear()
        await client.send("last")
        await eventually(lambda: handled == ["last"])

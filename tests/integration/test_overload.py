"""Overload: a server-wide budget for queued output, memory given back after the load, every
lost message counted, and answers that reach a client still sending (lingering close).

The memory tests run the server in its own process (``tests/overload_server.py``) and read its
``VmRSS``/``VmHWM`` from ``/proc``, so the test's own clients do not count.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

import harpy
from harpy.server import default_output_budget
from tests.helpers import RawClient, client_frame, serve
from tests.timing import TIMEOUT, eventually, scaled

MiB = 1024 * 1024

ROOT = Path(__file__).resolve().parents[2]

#: The subprocess server's output budget, set small so the test stays small.
BUDGET = 64 * MiB
#: Subscribers that stop reading (a 4 KiB receive buffer), and subscribers that read.
SLOW = 1000
FAST = 3
#: 1 KiB messages from an unpaced publisher: 1 GiB queued for the slow subscribers without
#: the budget (their 16 MiB backpressure_limit alone would let 16 GB through).
MESSAGES = 1000
SIZE = 1024
#: Peak RSS allowed over the idle server's: the budget plus this margin (the 1,000
#: connections' own objects and read buffers, frames being joined for a write, allocator slack).
PEAK_MARGIN = 64 * MiB
#: RSS allowed over the idle server's once every connection has closed.
AFTER_MARGIN = 16 * MiB

UPGRADE = (
    "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def _status(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` size field (``VmRSS``, ``VmHWM``) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@contextlib.asynccontextmanager
async def _server_process(budget: int) -> AsyncIterator[tuple[int, int]]:
    """Start ``tests/overload_server.py``; yield (pid, port); stop it after."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.overload_server",
        str(budget),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), scaled(20.0))
        assert line.strip().isdigit(), f"the server did not start: {line!r}"
        yield proc.pid, int(line)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), scaled(10.0))
            except TimeoutError:
                proc.kill()
                await proc.wait()


def _open_slow(port: int, count: int) -> list[socket.socket]:
    """``count`` subscribers that upgrade, then never read again (blocking sockets, run in a
    thread)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(TIMEOUT)
            sock.connect(("127.0.0.1", port))
            sock.sendall(UPGRADE.format(path="/slow").encode())
            head = b""
            for _ in range(100):
                if b"\r\n\r\n" in head:
                    break
                head += sock.recv(4096)
            assert head.startswith(b"HTTP/1.1 101"), head
    except BaseException:
        _close_all(socks)
        raise
    return socks


def _close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


def _payload(seq: int) -> str:
    return f"{seq:08d}".ljust(SIZE, "x")


async def _read_all(ws: ClientConnection, count: int) -> list[int]:
    return [int(str(await ws.recv())[:8]) for _ in range(count)]


async def _stats(url: str) -> dict[str, Any]:
    async with connect(url + "/ctl", compression=None) as ctl:
        await ctl.send("stats")
        stats: dict[str, Any] = json.loads(await asyncio.wait_for(ctl.recv(), TIMEOUT))
        return stats


async def test_output_budget_bounds_memory_and_memory_goes_back_after_close() -> None:
    async with _server_process(BUDGET) as (pid, port):
        url = f"ws://127.0.0.1:{port}"
        fds = _open_fds(pid)
        # Warm up (imports, first allocations), so that "before" is the idle server's size.
        async with connect(url + "/sub", compression=None) as sub, connect(url + "/pub") as pub:
            await pub.send(_payload(0))
            assert await _read_all(sub, 1) == [0]
        await eventually(lambda: _open_fds(pid) == fds, what="the warm-up connections closed")
        before = _status(pid, "VmRSS")

        slow = await asyncio.to_thread(_open_slow, port, SLOW)
        try:
            fast = [
                await connect(url + "/sub", compression=None, max_size=None) for _ in range(FAST)
            ]
            readers = [asyncio.ensure_future(_read_all(ws, MESSAGES)) for ws in fast]
            async with connect(url + "/pub", compression=None) as pub:
                for seq in range(MESSAGES):
                    await pub.send(_payload(seq))  # unpaced: as fast as the server reads
                got = await asyncio.wait_for(asyncio.gather(*readers), scaled(60.0))
                under_load = _status(pid, "VmRSS")
                peak = _status(pid, "VmHWM")
                stats = await _stats(url)
            for ws in fast:
                await ws.close()
        finally:
            await asyncio.to_thread(_close_all, slow)

        # The fast readers got everything, in order; the slow ones had messages dropped.
        assert all(seq == list(range(MESSAGES)) for seq in got)
        assert stats["drops"]["budget"] > 0
        assert peak <= before + BUDGET + PEAK_MARGIN, (before // MiB, peak // MiB)

        await eventually(lambda: _open_fds(pid) == fds, scaled(15.0), "every connection closed")
        await eventually(
            lambda: _status(pid, "VmRSS") <= before + AFTER_MARGIN,
            TIMEOUT,
            f"RSS back within {AFTER_MARGIN // MiB} MiB of {before / MiB:.0f} MiB "
            f"(under load {under_load / MiB:.0f} MiB, peak {peak / MiB:.0f} MiB)",
        )
        after = _status(pid, "VmRSS")
        print(
            f"RSS MiB: before {before / MiB:.1f}, under load {under_load / MiB:.1f}, "
            f"peak {peak / MiB:.1f}, after close {after / MiB:.1f}; drops {stats['drops']}"
        )


# ----------------------------------------------------------------- the budget, in process


async def _close_code_after_data(client: RawClient) -> int:
    """Read the frames a slow client left unread, up to the close frame; its code."""
    for _ in range(100_000):
        opcode, payload = await client.read_frame()
        if opcode == 0x8:
            return int.from_bytes(payload[:2], "big")
    raise AssertionError("no close frame")


def _small_send_buffer(ws: harpy.WebSocket[Any]) -> None:
    sock = ws._conn.transport.get_extra_info("socket") if ws._conn.transport else None
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)


@pytest.mark.parametrize(("policy", "code"), [("close_1008", 1008), ("close_1013", 1013)])
async def test_budget_policy_closes_the_slowest_and_spares_the_fast(policy: str, code: int) -> None:
    app = harpy.App(output_budget=1 * MiB)
    sockets: dict[str, harpy.WebSocket[Any]] = {}

    @app.ws("/slow", output_budget_policy=policy)
    class Slow:
        def open(self, ws: harpy.WebSocket[Any]) -> None:
            _small_send_buffer(ws)
            ws.subscribe("t")
            sockets[ws.id] = ws

    @app.ws("/fast")
    class Fast:
        def open(self, ws: harpy.WebSocket[Any]) -> None:
            ws.subscribe("t")

    count = 2000  # 2 MiB to each subscriber: twice the whole budget
    async with serve(app) as url:
        slow = [await RawClient.slow_reader(url, "/slow") for _ in range(4)]
        async with connect(url + "/fast", compression=None, max_size=None) as fast:
            await eventually(lambda: app.subscriber_count("t") == 5)
            reader = asyncio.ensure_future(_read_all(fast, count))
            for seq in range(count):
                app.publish("t", _payload(seq))
                if seq % 50 == 49:
                    await asyncio.sleep(0)  # let the tick's writes go out
            assert await asyncio.wait_for(reader, scaled(20.0)) == list(range(count))
            await eventually(lambda: all(ws.ready_state >= 2 for ws in sockets.values()))
            assert app.drops["budget"] >= len(slow)
            assert app.dropped == sum(ws.dropped for ws in sockets.values())
            for client in slow:
                assert await _close_code_after_data(client) == code
                client.writer.close()


async def test_budget_drop_policy_keeps_the_slow_open_and_counts() -> None:
    app = harpy.App(output_budget=1 * MiB)
    sockets: list[harpy.WebSocket[Any]] = []

    @app.ws("/slow")
    class Slow:
        def open(self, ws: harpy.WebSocket[Any]) -> None:
            _small_send_buffer(ws)
            ws.subscribe("t")
            sockets.append(ws)

    async with serve(app) as url:
        slow = [await RawClient.slow_reader(url, "/slow") for _ in range(4)]
        await eventually(lambda: app.subscriber_count("t") == 4)
        for seq in range(2000):
            app.publish("t", _payload(seq))
            if seq % 50 == 49:
                await asyncio.sleep(0)
        assert app.drops["budget"] > 0
        assert all(ws.ready_state == harpy.ReadyState.OPEN for ws in sockets)
        assert sum(ws.dropped for ws in sockets) == app.drops["budget"] == app.dropped
        for client in slow:
            client.writer.close()


def test_output_budget_options_are_checked() -> None:
    assert harpy.App().output_budget == default_output_budget()
    pages = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert default_output_budget() == min(1024 * MiB, pages // 4)
    assert harpy.App(output_budget=0).output_budget == 0
    for bad in (-1, 1.5, True, "1"):
        with pytest.raises(harpy.ConfigurationError, match="output_budget"):
            harpy.App(output_budget=bad)  # type: ignore[arg-type]
    with pytest.raises(harpy.ConfigurationError, match="output_budget_policy must be one of"):
        harpy.App(output_budget_policy="kill")
    app = harpy.App()
    with pytest.raises(harpy.ConfigurationError, match="output_budget_policy"):
        app.ws("/x", Echo, output_budget_policy=1008)  # type: ignore[arg-type]


# ----------------------------------------------------------------- every loss counted


async def test_drops_are_counted_by_cause_and_warned_about_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = harpy.App(backpressure_limit=64 * 1024, metrics=True)
    sockets: list[harpy.WebSocket[Any]] = []

    @app.ws("/slow")
    class Slow:
        def open(self, ws: harpy.WebSocket[Any]) -> None:
            _small_send_buffer(ws)
            ws.subscribe("t")
            sockets.append(ws)

    caplog.set_level(logging.WARNING, logger="harpy")
    async with serve(app) as url:
        client = await RawClient.slow_reader(url, "/slow")
        await eventually(lambda: app.subscriber_count("t") == 1)
        for seq in range(1000):
            app.publish("t", _payload(seq))
            if seq % 50 == 49:
                await asyncio.sleep(0)
        (ws,) = sockets
        assert ws.dropped > 1
        assert app.drops["backpressure"] == ws.dropped == app.dropped
        ws.close()
        assert ws.send("after close") == 0
        assert app.publish("t", "after close") == 0  # still subscribed until closed
        assert app.drops["closing"] == 2
        # The same counts on the metrics endpoint.
        scraped = await _scrape(url)
        assert f'harpy_messages_dropped_total{{reason="backpressure"}} {ws.dropped}.0' in scraped
        assert 'harpy_messages_dropped_total{reason="closing"} 2.0' in scraped
        client.writer.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # One warning per cause within the interval, with the count at that time.
    assert warnings.count("harpy: 1 message(s) dropped so far (backpressure)") == 1
    assert warnings.count("harpy: 1 message(s) dropped so far (closing)") == 1
    assert len(warnings) == 2, warnings


# ----------------------------------------------------------------- answers that arrive


class Echo:
    def message(self, ws: harpy.WebSocket[Any], message: str | bytes) -> None:
        ws.send(message)


async def _write_for_a_while(client: RawClient, data: bytes, chunk: int = 8192) -> None:
    """Write ``data`` in chunks, waiting for each to drain (a client still sending)."""
    for start in range(0, len(data), chunk):
        client.writer.write(data[start : start + chunk])
        await client.writer.drain()


async def test_header_too_large_is_answered_while_the_client_keeps_sending() -> None:
    app = harpy.App(max_header_size=4096)
    app.ws("/", Echo)
    async with serve(app) as url:
        client = await RawClient.connect(url)
        head = b"GET / HTTP/1.1\r\nHost: test\r\nX-Pad: " + b"a" * (512 * 1024)
        await _write_for_a_while(client, head)  # no reset: the server reads and discards
        status, headers, _ = await client.read_response()
        assert status == 431
        body = await asyncio.wait_for(client.reader.read(), TIMEOUT)  # up to the EOF
        assert len(body) == int(headers["content-length"])
        client.writer.close()


async def test_message_too_big_close_arrives_while_the_client_keeps_sending() -> None:
    app = harpy.App(max_message_size=1024)
    app.ws("/", Echo)
    async with serve(app) as url:
        client = await RawClient.connect(url)
        assert await client.upgrade("/") == 101
        frame = client_frame(0x2, b"b" * (512 * 1024), fin=True, rsv=0, mask=True)
        await _write_for_a_while(client, frame)
        assert await client.read_close() == 1009
        assert await client.at_eof()
        client.writer.close()


async def _scrape(url: str) -> str:
    """GET /metrics from the server at ``url`` with a raw socket (the answer closes it)."""
    host, port = url.removeprefix("ws://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET /metrics HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), TIMEOUT)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body.decode()

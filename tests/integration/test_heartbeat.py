"""Heartbeat, pong timeout, inactivity and idle timeouts through a real server and real clients.

Every deadline lives on the server's one timer wheel (``harpy.server.timers``, in slots of
``TimerWheel.resolution`` seconds), so times are checked loosely: a deadline fires no earlier
than asked, and at most a slot or two later.  The lower bounds of those checks are the
configuration under test; the upper bounds go through ``scaled`` (tests/timing.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.protocol import State

import harpy
from tests.helpers import RawClient, serve
from tests.timing import TIMEOUT, eventually, scaled

OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA


class Recorder:
    """An echo route that records the pings and pongs it sees and the close it ends with."""

    def __init__(self) -> None:
        self.pings: list[bytes] = []
        self.pongs: list[tuple[str, bytes]] = []
        self.closed: asyncio.Queue[tuple[int, str]] = asyncio.Queue()

    def message(self, ws: harpy.WebSocket[Any], message: str | bytes) -> None:
        ws.send(message)

    def ping(self, ws: harpy.WebSocket[Any], data: bytes) -> None:
        self.pings.append(data)

    def pong(self, ws: harpy.WebSocket[Any], data: bytes) -> None:
        self.pongs.append((ws.id, data))

    def close(self, ws: harpy.WebSocket[Any], code: int, reason: str) -> None:
        self.closed.put_nowait((code, reason))


def app_with(**options: Any) -> tuple[harpy.App, Recorder]:
    recorder = Recorder()
    app = harpy.App()
    app.ws("/hb", recorder, **options)
    return app, recorder


@contextlib.asynccontextmanager
async def raw_client(url: str, path: str = "/hb") -> AsyncIterator[RawClient]:
    """An upgraded byte-level client: it answers nothing unless told to."""
    client = await RawClient.connect(url)
    try:
        assert await client.upgrade(path) == 101
        yield client
    finally:
        await client.close()


async def frames_until_close(
    client: RawClient, start: float, limit: int = 200, timeout: float = scaled(8.0)
) -> list[tuple[int, float, bytes]]:
    """(opcode, seconds since ``start``, payload) of every server frame up to the close."""
    frames = []
    for _ in range(limit):
        opcode, payload = await client.read_frame(timeout)
        frames.append((opcode, time.monotonic() - start, payload))
        if opcode == OP_CLOSE:
            return frames
    raise AssertionError(f"no close frame among {len(frames)} frames")


#: Fractions of a timer wheel slot at which to open a connection: deadlines then fall at every
#: phase of the slots.
PHASES = (0.0, 0.2, 0.4, 0.6, 0.8)


async def at_phase(app: harpy.App, phase: float) -> None:
    """Wait until the loop clock (the server's too) is ``phase`` of the way into a wheel slot."""
    assert app._server is not None
    resolution = app._server.wheel.resolution
    loop = asyncio.get_running_loop()
    # Placing the connection in time is the point here, not waiting for something to happen.
    await asyncio.sleep((phase * resolution - loop.time()) % resolution)


def close_of(payload: bytes) -> tuple[int, str]:
    return int.from_bytes(payload[:2], "big"), payload[2:].decode("utf-8")


def pongs_per_connection(recorder: Recorder) -> dict[str, int]:
    counts: dict[str, int] = {}
    for ws_id, _ in recorder.pongs:
        counts[ws_id] = counts.get(ws_id, 0) + 1
    return counts


def received_close(client: ClientConnection) -> tuple[int, str]:
    rcvd = client.protocol.close_rcvd
    assert rcvd is not None, "the server sent no close frame"
    return rcvd.code, rcvd.reason


async def assert_echo(client: ClientConnection, text: str = "still here") -> None:
    await client.send(text)
    assert await asyncio.wait_for(client.recv(), TIMEOUT) == text


# ----------------------------------------------------------------- ping_interval


async def test_client_answering_pings_stays_connected_and_pong_handler_sees_pongs() -> None:
    app, recorder = app_with(ping_interval=0.2)
    async with serve(app) as url, connect(f"{url}/hb", ping_interval=None) as client:
        # Six pings answered: at least 1.2 s, past the three missed pongs (0.8 s) that would
        # have closed a client not answering.
        await eventually(lambda: len(recorder.pongs) >= 6 or client.state is not State.OPEN)
        assert client.state is State.OPEN
        assert len(app.connections) == 1
        assert all(data == b"" for _, data in recorder.pongs)
        await assert_echo(client)
    assert recorder.closed.qsize() <= 1


async def test_unanswered_pings_close_after_max_missed_pongs() -> None:
    app, recorder = app_with(ping_interval=0.2, max_missed_pongs=2)
    async with serve(app) as url, raw_client(url) as client:
        start = time.monotonic()
        frames = await frames_until_close(client, start)
        opcodes = [op for op, _, _ in frames]
        # A ping per interval; the one due after the second unanswered ping is the close.
        assert opcodes == [OP_PING, OP_PING, OP_CLOSE], frames
        assert all(payload == b"" for op, _, payload in frames if op == OP_PING)
        assert close_of(frames[-1][2]) == (1000, "No pong received")
        elapsed = frames[-1][1]
        assert 0.55 <= elapsed < scaled(2.0), elapsed
        client.send_frame(OP_CLOSE, (1000).to_bytes(2, "big"))
        assert await client.at_eof(TIMEOUT)
    assert recorder.pongs == []


async def test_pong_timeout_closes_soon_after_an_unanswered_ping() -> None:
    # Without pong_timeout, three missed pongs at a 1 s interval would take over 3 s.
    app, _ = app_with(ping_interval=1.0, pong_timeout=0.3)
    async with serve(app) as url, raw_client(url) as client:
        start = time.monotonic()
        frames = await frames_until_close(client, start)
        assert [op for op, _, _ in frames] == [OP_PING, OP_CLOSE], frames
        ping_at, close_at = frames[0][1], frames[1][1]
        assert 0.9 <= ping_at < scaled(1.6), ping_at
        assert 0.25 <= close_at - ping_at < scaled(0.8), (ping_at, close_at)
        assert close_of(frames[1][2]) == (1000, "No pong received")


async def test_pong_timeout_does_not_close_a_client_that_answers() -> None:
    app, recorder = app_with(ping_interval=0.2, pong_timeout=0.3)
    async with serve(app) as url, connect(f"{url}/hb", ping_interval=None) as client:
        # Six pings answered, each within pong_timeout: the client is still open.
        await eventually(lambda: len(recorder.pongs) >= 6 or client.state is not State.OPEN)
        assert client.state is State.OPEN
        await assert_echo(client)


# ----------------------------------------------------------------- inactivity_timeout


async def test_inactivity_timeout_closes_a_silent_client() -> None:
    app, recorder = app_with(inactivity_timeout=0.3)
    async with serve(app) as url, connect(f"{url}/hb", ping_interval=None) as client:
        start = time.monotonic()
        await asyncio.wait_for(client.wait_closed(), TIMEOUT)
        elapsed = time.monotonic() - start
        assert received_close(client) == (1000, "Inactivity timeout")
        assert 0.25 <= elapsed < scaled(1.5), elapsed
        assert await asyncio.wait_for(recorder.closed.get(), TIMEOUT) == (
            1000,
            "Inactivity timeout",
        )


async def test_pongs_are_not_activity_for_inactivity_timeout() -> None:
    # The client answers every heartbeat ping, yet sends no message: it is still inactive.
    app, recorder = app_with(inactivity_timeout=0.5, ping_interval=0.1)
    async with serve(app) as url, connect(f"{url}/hb", ping_interval=None) as client:
        await asyncio.wait_for(client.wait_closed(), TIMEOUT)
        assert received_close(client) == (1000, "Inactivity timeout")
    assert len(recorder.pongs) >= 1


async def test_inactivity_timeout_spares_a_client_that_keeps_sending() -> None:
    app, _ = app_with(inactivity_timeout=0.3)
    async with serve(app) as url, connect(f"{url}/hb", ping_interval=None) as client:
        for i in range(15):  # 1.5 s, five times the timeout
            await assert_echo(client, f"tick {i}")
            await asyncio.sleep(0.1)  # the pace of a client active within the timeout: under test
        assert client.state is State.OPEN
        assert len(app.connections) == 1


async def test_client_pings_count_as_activity() -> None:
    app, recorder = app_with(inactivity_timeout=0.3)
    async with serve(app) as url, connect(f"{url}/hb", ping_interval=None) as client:
        for i in range(15):
            waiter = await client.ping(f"p{i}".encode())
            await asyncio.wait_for(waiter, TIMEOUT)
            await asyncio.sleep(0.1)  # the pace of a client active within the timeout: under test
        assert client.state is State.OPEN
        assert recorder.pings == [f"p{i}".encode() for i in range(15)]


# ----------------------------------------------------------------- idle_timeout and send_pings


async def test_idle_timeout_with_send_pings_keeps_a_client_that_answers() -> None:
    # The pong to the server's ping at three quarters of idle_timeout counts as activity.
    # The clients open at five phases of the timer wheel's slots.
    app, recorder = app_with(idle_timeout=0.4)
    async with serve(app) as url, contextlib.AsyncExitStack() as stack:
        clients = []
        for phase in PHASES:
            await at_phase(app, phase)
            clients.append(
                await stack.enter_async_context(connect(f"{url}/hb", ping_interval=None))
            )
        # Each answered three pings (one per 0.3 s or so): past its idle deadline three times.
        await eventually(
            lambda: (
                len(pongs_per_connection(recorder)) == len(PHASES)
                and min(pongs_per_connection(recorder).values()) >= 3
            )
            or any(c.state is not State.OPEN for c in clients)
        )
        closed = [received_close(c) for c in clients if c.state is not State.OPEN]
        assert closed == [], f"{len(closed)} of 5 answering clients were closed: {closed}"
        for client in clients:
            await assert_echo(client)


async def test_idle_timeout_pings_an_unanswering_client_then_closes_1001() -> None:
    app, _ = app_with(idle_timeout=0.4)
    async with serve(app) as url:
        for phase in PHASES:  # one at a time, opened at five phases of the wheel's slots
            await at_phase(app, phase)
            async with raw_client(url) as client:
                frames = await frames_until_close(client, time.monotonic())
            assert [op for op, _, _ in frames] == [OP_PING, OP_CLOSE], (phase, frames)
            ping_at, close_at = frames[0][1], frames[1][1]
            # About 0.75 * idle_timeout, and in any case before the deadline.
            assert 0.1 <= ping_at < 0.4, (phase, frames)  # before the deadline: not scaled
            assert 0.35 <= close_at < scaled(1.2), (phase, frames)
            assert close_of(frames[1][2]) == (1001, "Idle timeout")


async def test_idle_timeout_without_send_pings_closes_without_a_ping() -> None:
    app, _ = app_with(idle_timeout=0.4, send_pings=False)
    async with serve(app) as url, raw_client(url) as client:
        frames = await frames_until_close(client, time.monotonic())
        assert [op for op, _, _ in frames] == [OP_CLOSE], frames
        assert close_of(frames[0][2]) == (1001, "Idle timeout")
        assert 0.35 <= frames[0][1] < scaled(1.2), frames


async def test_idle_timeout_without_send_pings_closes_a_websockets_client() -> None:
    app, recorder = app_with(idle_timeout=0.4, send_pings=False)
    async with serve(app) as url, connect(f"{url}/hb", ping_interval=None) as client:
        await asyncio.wait_for(client.wait_closed(), TIMEOUT)
        assert received_close(client) == (1001, "Idle timeout")
    assert recorder.pongs == []


async def test_a_deadline_firing_does_not_delay_other_connections_deadlines() -> None:
    # /a times out first and its peer never answers the close; /b's own deadline comes next,
    # and must fire on time, not when /a's close_timeout (5 s) is up.
    app = harpy.App(send_pings=False)
    app.ws("/a", {}, idle_timeout=0.3)
    app.ws("/b", {}, idle_timeout=0.8)
    async with serve(app) as url, raw_client(url, "/a") as a, raw_client(url, "/b") as b:
        start = time.monotonic()
        a_frames, b_frames = await asyncio.gather(
            frames_until_close(a, start), frames_until_close(b, start)
        )
        assert close_of(a_frames[-1][2]) == (1001, "Idle timeout")
        assert close_of(b_frames[-1][2]) == (1001, "Idle timeout")
        assert a_frames[-1][1] < scaled(1.0), a_frames
        assert b_frames[-1][1] < scaled(1.5), b_frames


# ----------------------------------------------------------------- client pings


async def test_client_ping_is_answered_with_the_same_payload() -> None:
    app, recorder = app_with()
    payloads = [b"", b"hb-123", bytes(range(125))]
    async with serve(app) as url, raw_client(url) as client:
        for payload in payloads:
            client.send_frame(OP_PING, payload)
            assert await client.read_frame(TIMEOUT) == (OP_PONG, payload)
        # A ping between the frames of a fragmented message is answered at once, too.
        client.send_frame(OP_TEXT, b"frag", fin=False)
        client.send_frame(OP_PING, b"mid")
        assert await client.read_frame(TIMEOUT) == (OP_PONG, b"mid")
        client.send_frame(0x0, b"ment")
        assert await client.read_frame(TIMEOUT) == (OP_TEXT, b"fragment")
    assert recorder.pings == [*payloads, b"mid"]


async def test_websockets_client_ping_gets_its_pong() -> None:
    app, recorder = app_with(ping_interval=0.2)
    async with serve(app) as url, connect(f"{url}/hb", ping_interval=None) as client:
        waiter = await client.ping(b"abc")
        latency = await asyncio.wait_for(waiter, TIMEOUT)
        assert latency >= 0
    assert recorder.pings == [b"abc"]


# ----------------------------------------------------------------- many connections


async def test_many_idle_connections_share_one_timer_structure() -> None:
    count = 200
    app, recorder = app_with(ping_interval=0.2)
    async with serve(app) as url:
        server = app._server
        assert server is not None
        async with contextlib.AsyncExitStack() as stack:
            clients = await asyncio.gather(
                *(
                    stack.enter_async_context(connect(f"{url}/hb", ping_interval=None))
                    for _ in range(count)
                )
            )
            assert len(app.connections) == count
            # One entry per connection in the shared wheel, many to a slot: the deadlines of a
            # 0.2 s interval span a few slots, however many connections there are.
            assert len(server.wheel) == count
            horizon = int(0.5 / server.wheel.resolution) + 2
            assert len(server.wheel._slots) <= horizon, len(server.wheel._slots)
            recorder.pongs.clear()
            # Every connection pinged, and answering, at least twice more.
            await eventually(
                lambda: (
                    len(pongs_per_connection(recorder)) == count
                    and min(pongs_per_connection(recorder).values()) >= 2
                )
                or any(c.state is not State.OPEN for c in clients)
            )
            assert all(c.state is State.OPEN for c in clients)
            assert len(app.connections) == count
            assert len(server.wheel) == count
            assert len(server.wheel._slots) <= horizon
            await assert_echo(clients[0])
            await assert_echo(clients[-1])
        await eventually(lambda: len(server.wheel) == 0)  # the clients have left
    assert len(server.wheel) == 0

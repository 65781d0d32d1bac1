"""RFC 6455 framing rules through a real server: bad frames, limits, closing, idle connections."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import connect

import harpy
from tests.helpers import RawClient, client_frame, serve
from tests.timing import TIMEOUT, scaled

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return code.to_bytes(2, "big") + reason


def header_of(frame: bytes) -> bytes:
    """A masked client frame cut after its masking key: the header alone, no payload."""
    length = frame[1] & 0x7F
    return frame[: (2 if length < 126 else 4 if length == 126 else 10) + 4]


class Recorder:
    """An echo route's handlers, recording what the ``close`` and ``error`` handlers receive."""

    def __init__(self) -> None:
        self.closed: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
        self.errors: list[harpy.ProtocolError] = []

    def message(self, ws: harpy.WebSocket[Any], message: str | bytes) -> None:
        ws.send(message)

    def close(self, ws: harpy.WebSocket[Any], code: int, reason: str) -> None:
        self.closed.put_nowait((code, reason))

    def error(self, ws: harpy.WebSocket[Any], exc: Exception) -> None:
        if isinstance(exc, harpy.ProtocolError):
            self.errors.append(exc)


def echo_app(**options: Any) -> tuple[harpy.App, Recorder]:
    recorder = Recorder()
    app = harpy.App()
    app.ws("/echo", recorder, **options)
    return app, recorder


@contextlib.asynccontextmanager
async def upgraded(url: str, path: str = "/echo") -> AsyncIterator[RawClient]:
    client = await RawClient.connect(url)
    try:
        assert await client.upgrade(path) == 101
        yield client
    finally:
        await client.close()


async def assert_echo(url: str) -> None:
    """A well-behaved client is still served."""
    async with connect(url + "/echo", open_timeout=TIMEOUT, close_timeout=scaled(1.0)) as ws:
        await ws.send("still there?")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "still there?"


async def assert_eof(client: RawClient, timeout: float = TIMEOUT) -> None:
    """The server closes TCP: nothing more arrives, then EOF."""
    assert await asyncio.wait_for(client.reader.read(), timeout) == b""


async def read_data_frame(client: RawClient) -> tuple[int, bytes]:
    """The next frame that is not a server ping (a heartbeat may come at any time)."""
    for _ in range(100):
        frame = await client.read_frame(scaled(2.0))
        if frame[0] != OP_PING:
            return frame
    raise AssertionError("only pings")


async def expect_failure(client: RawClient, code: int) -> None:
    """The server sends a close with ``code``; once answered, it closes the TCP connection."""
    assert await client.read_close() == code
    client.send_frame(OP_CLOSE, close_payload(code))
    await assert_eof(client)


# --- frames that fail the connection ----------------------------------------------------------


BAD_FRAMES = {
    "unmasked": client_frame(OP_TEXT, b"hello", mask=False),
    "rsv1": client_frame(OP_TEXT, b"hello", rsv=0x40),
    "rsv2": client_frame(OP_BINARY, b"hello", rsv=0x20),
    "rsv3": client_frame(OP_TEXT, b"hello", rsv=0x10),
    "opcode-3": client_frame(0x3, b"hello"),
    "opcode-11": client_frame(0xB, b"hello"),
    "fragmented-ping": client_frame(OP_PING, b"hello", fin=False),
    "ping-126": client_frame(OP_PING, b"x" * 126),
    "pong-126": client_frame(OP_PONG, b"x" * 126),
    "orphan-continuation": client_frame(OP_CONT, b"hello"),
    "text-inside-fragmented": client_frame(OP_TEXT, b"he", fin=False) + client_frame(OP_TEXT, b"y"),
}


@pytest.mark.parametrize("frame", list(BAD_FRAMES.values()), ids=list(BAD_FRAMES))
async def test_protocol_violation_closes_with_1002(frame: bytes) -> None:
    app, recorder = echo_app()
    async with serve(app) as url:
        async with upgraded(url) as client:
            client.writer.write(frame)
            await expect_failure(client, 1002)
        assert await asyncio.wait_for(recorder.closed.get(), TIMEOUT) == (1002, "")
        assert [exc.code for exc in recorder.errors] == [1002]
        await assert_echo(url)


#: Headers that are errors in themselves, each after the frames it follows; data frames announce
#: 65,536 bytes, control frames the 125 they may (more is an error of its own).
BIG = b"\x00" * 65536
EARLY_ERRORS = {
    "rsv1-without-extension": (b"", client_frame(OP_TEXT, BIG, rsv=0x40)),
    "rsv1-on-continuation": (
        client_frame(OP_BINARY, b"a", fin=False),
        client_frame(OP_CONT, BIG, rsv=0x40),
    ),
    "rsv2-on-control": (b"", client_frame(OP_PING, b"x" * 125, rsv=0x20)),
    "continuation-without-message": (b"", client_frame(OP_CONT, BIG)),
    "data-frame-inside-fragmented-message": (
        client_frame(OP_TEXT, b"a", fin=False),
        client_frame(OP_BINARY, BIG),
    ),
    "fragmented-control": (b"", client_frame(OP_PING, b"x" * 125, fin=False)),
}


@pytest.mark.parametrize(("lead", "frame"), list(EARLY_ERRORS.values()), ids=list(EARLY_ERRORS))
async def test_an_error_in_the_header_closes_before_the_payload(lead: bytes, frame: bytes) -> None:
    # Only the header is sent: the server fails the connection at once, not when (if ever) the
    # announced payload has arrived.
    app, recorder = echo_app()
    async with serve(app) as url:
        async with upgraded(url) as client:
            client.writer.write(lead + header_of(frame))
            await expect_failure(client, 1002)
        assert await asyncio.wait_for(recorder.closed.get(), TIMEOUT) == (1002, "")
        assert [exc.code for exc in recorder.errors] == [1002]


async def test_unmasked_frame_then_close_exchange() -> None:
    app, _ = echo_app()
    async with serve(app) as url:
        async with upgraded(url) as client:
            client.send_frame(OP_TEXT, b"hi", mask=False)
            opcode, payload = await client.read_frame()
            assert opcode == OP_CLOSE
            assert int.from_bytes(payload[:2], "big") == 1002
            payload[2:].decode("utf-8")  # the reason is UTF-8
            # The connection stays up until the client answers the close... (a window in which
            # nothing may arrive: a slow machine cannot fail it, so it is not scaled)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.reader.read(1), 0.1)
            client.send_frame(OP_CLOSE, close_payload(1002))
            # ...and then the server closes TCP.
            await assert_eof(client)
        await assert_echo(url)


@pytest.mark.parametrize("code", [999, 1004, 1005, 1006, 1015, 2999, 5000])
async def test_invalid_close_code_on_the_wire_is_1002(code: int) -> None:
    app, _ = echo_app()
    async with serve(app) as url:
        async with upgraded(url) as client:
            client.send_frame(OP_CLOSE, close_payload(code, b"bad"))
            assert await client.read_close() == 1002
            await assert_eof(client)  # the peer already closed: nothing to wait for
        await assert_echo(url)


async def test_one_byte_close_payload_is_1002() -> None:
    app, _ = echo_app()
    async with serve(app) as url:
        async with upgraded(url) as client:
            client.send_frame(OP_CLOSE, b"\x03")
            assert await client.read_close() == 1002
            await assert_eof(client)
        await assert_echo(url)


@pytest.mark.parametrize(
    "frames",
    [
        [client_frame(OP_TEXT, b"ok \xff\xfe")],
        [client_frame(OP_TEXT, b"\xed\xa0\x80")],  # a UTF-16 surrogate
        [client_frame(OP_TEXT, b"ok", fin=False), client_frame(OP_CONT, b"\xc3", fin=True)],
        [client_frame(OP_TEXT, b"\xc3\x28", fin=False)],  # detected before the message ends
    ],
    ids=["single", "surrogate", "truncated-at-end", "early-in-fragment"],
)
async def test_invalid_utf8_text_is_1007(frames: list[bytes]) -> None:
    app, recorder = echo_app()
    async with serve(app) as url:
        async with upgraded(url) as client:
            client.writer.write(b"".join(frames))
            await expect_failure(client, 1007)
        assert [exc.code for exc in recorder.errors] == [1007]
        await assert_echo(url)


async def test_invalid_utf8_in_close_reason_is_1007() -> None:
    app, _ = echo_app()
    async with serve(app) as url:
        async with upgraded(url) as client:
            client.send_frame(OP_CLOSE, close_payload(1000, b"\xff"))
            assert await client.read_close() == 1007
            await assert_eof(client)
        await assert_echo(url)


@pytest.mark.parametrize(
    "frames",
    [
        [client_frame(OP_TEXT, b"x" * 2000)],
        [client_frame(OP_BINARY, b"x" * 1025)],
        [client_frame(OP_TEXT, b"x" * 600, fin=False), client_frame(OP_CONT, b"x" * 600)],
    ],
    ids=["text", "binary-1025", "fragmented"],
)
async def test_message_over_max_message_size_is_1009(frames: list[bytes]) -> None:
    app, recorder = echo_app(max_message_size=1024)
    async with serve(app) as url:
        async with upgraded(url) as client:
            client.send_frame(OP_TEXT, b"x" * 1024)  # exactly the limit is fine
            assert await client.read_frame() == (OP_TEXT, b"x" * 1024)
            client.writer.write(b"".join(frames))
            await expect_failure(client, 1009)
        assert [exc.code for exc in recorder.errors] == [1009]
        await assert_echo(url)


async def test_peer_that_never_answers_close_is_dropped_after_close_timeout() -> None:
    loop = asyncio.get_running_loop()
    app, recorder = echo_app(close_timeout=0.5)
    async with serve(app) as url:
        async with upgraded(url) as client:
            client.send_frame(OP_TEXT, b"hi", mask=False)
            assert await client.read_close() == 1002
            sent_close_at = loop.time()
            await assert_eof(client, scaled(2.0))  # no answer from us: the server drops TCP
            waited = loop.time() - sent_close_at
            assert 0.4 <= waited < scaled(1.5)
        assert await asyncio.wait_for(recorder.closed.get(), TIMEOUT) == (1006, "")
        await assert_echo(url)


# --- well-formed control frames ---------------------------------------------------------------


@pytest.mark.parametrize("payload", [b"", b"hello", bytes(range(125))], ids=["0", "5", "125"])
async def test_ping_gets_pong_with_same_payload(payload: bytes) -> None:
    app, _ = echo_app()
    async with serve(app) as url:
        async with upgraded(url) as client:
            client.send_frame(OP_PING, payload)
            assert await client.read_frame() == (OP_PONG, payload)
            client.send_frame(OP_TEXT, b"after")
            assert await client.read_frame() == (OP_TEXT, b"after")
            client.send_frame(OP_CLOSE, close_payload(1000))
            assert await client.read_close() == 1000
            await assert_eof(client)
        await assert_echo(url)


async def test_ping_between_fragments_is_answered() -> None:
    app, _ = echo_app()
    async with serve(app) as url, upgraded(url) as client:
        client.send_frame(OP_TEXT, b"hel", fin=False)
        client.send_frame(OP_PING, b"mid")
        client.send_frame(OP_CONT, b"lo")
        assert await client.read_frame() == (OP_PONG, b"mid")
        assert await client.read_frame() == (OP_TEXT, b"hello")
        client.send_frame(OP_CLOSE, close_payload(1000))
        assert await client.read_close() == 1000
        await assert_eof(client)


async def test_client_close_1000_is_echoed_then_eof_and_handler_gets_code_and_reason() -> None:
    app, recorder = echo_app()
    async with serve(app) as url:
        async with upgraded(url) as client:
            client.send_frame(OP_TEXT, b"one")
            assert await client.read_frame() == (OP_TEXT, b"one")
            client.send_frame(OP_CLOSE, close_payload(1000, "all done ✓".encode()))
            assert await client.read_close() == 1000
            await assert_eof(client)
        assert await asyncio.wait_for(recorder.closed.get(), TIMEOUT) == (1000, "all done ✓")
        assert recorder.errors == []
        await assert_echo(url)


async def test_client_close_with_application_code_reaches_handler() -> None:
    app, recorder = echo_app()
    async with serve(app) as url:
        async with upgraded(url) as client:
            client.send_frame(OP_CLOSE, close_payload(4321, b"custom"))
            assert await client.read_close() == 4321
            await assert_eof(client)
        assert await asyncio.wait_for(recorder.closed.get(), TIMEOUT) == (4321, "custom")


async def test_empty_close_is_answered_and_handler_gets_1005() -> None:
    app, recorder = echo_app()
    async with serve(app) as url:
        async with upgraded(url) as client:
            client.send_frame(OP_CLOSE, b"")
            assert await client.read_close() in (1000, 1005)
            await assert_eof(client)
        assert await asyncio.wait_for(recorder.closed.get(), TIMEOUT) == (1005, "")


# --- idle connections -------------------------------------------------------------------------


async def test_idle_client_is_closed_while_active_client_stays_open() -> None:
    loop = asyncio.get_running_loop()
    app, _ = echo_app(idle_timeout=0.5)
    async with serve(app) as url:
        async with upgraded(url) as busy, upgraded(url) as silent:
            started = loop.time()

            async def keep_talking() -> None:
                for i in range(8):
                    body = f"message {i}".encode()
                    busy.send_frame(OP_TEXT, body)
                    assert await read_data_frame(busy) == (OP_TEXT, body)
                    # Activity well within idle_timeout: the case under test.
                    await asyncio.sleep(0.2)

            talking = asyncio.ensure_future(keep_talking())
            try:
                assert await silent.read_close(scaled(2.5)) == 1001
                assert loop.time() - started < scaled(2.0)
                silent.send_frame(OP_CLOSE, close_payload(1001))
                await assert_eof(silent)
                await asyncio.wait_for(talking, scaled(3.0))
            finally:
                talking.cancel()
            busy.send_frame(OP_CLOSE, close_payload(1000))
            assert await busy.read_close() == 1000
            await assert_eof(busy)
        await assert_echo(url)


async def test_idle_timeout_of_another_connection_is_not_postponed() -> None:
    """Each silent client is closed about its route's ``idle_timeout`` after opening, not later.

    The quick client's idle close moves its own deadline ``close_timeout`` (5 s by default)
    ahead; the other client's idle deadline, in between, must still be honoured on time.
    """
    loop = asyncio.get_running_loop()
    recorder = Recorder()
    app = harpy.App()
    app.ws("/quick", recorder, idle_timeout=0.2)
    app.ws("/echo", recorder, idle_timeout=1.2)
    async with serve(app) as url, upgraded(url, "/quick") as quick, upgraded(url) as slow:
        opened = loop.time()
        assert await quick.read_close(scaled(2.5)) == 1001
        assert loop.time() - opened < scaled(0.9)
        quick.send_frame(OP_CLOSE, close_payload(1001))
        await assert_eof(quick)
        assert await slow.read_close(scaled(2.5)) == 1001
        assert 1.1 <= loop.time() - opened < scaled(1.8)
        slow.send_frame(OP_CLOSE, close_payload(1001))
        await assert_eof(slow)


async def test_garbage_after_a_failure_ends_the_wait_for_the_close_at_once() -> None:
    """After failing on a bad frame header, the rest of that frame arrives in a later read:
    it is not a close frame, so the server closes TCP then, not after close_timeout."""
    app, recorder = echo_app(close_timeout=30.0)
    async with serve(app) as url, upgraded(url) as client:
        client.writer.write(b"\x87\x8d")  # reserved opcode 7, 13 masked bytes announced
        await client.writer.drain()
        code = await client.read_close()
        assert code == 1002
        # Fixed bytes, not a random mask: an unmasked text frame, then a ping. (The rest of a
        # bad frame with a random key may announce a long frame the peer never completes.)
        client.writer.write(b"\x81\x05hello" + client_frame(OP_PING, b""))
        await assert_eof(client, scaled(2.0))
        assert len(recorder.errors) == 1

"""``harpy.testing``: the test client against real harpy apps, and the frame reader it uses
(harpy's own, in client mode) against harpy's frame builder."""

from __future__ import annotations

import asyncio
import os
import random
import re
from typing import Any

import pytest

import harpy
from harpy.exceptions import ProtocolError
from harpy.protocol import (
    EV_ERROR,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    FrameReader,
    accept_key,
    build_frame,
)
from harpy.protocol.deflate import PerMessageDeflate, client_codec
from harpy.testing import (
    MAX_MESSAGE_SIZE,
    ClientWebSocket,
    ClosedError,
    HandshakeRefused,
    ProtocolViolation,
    TestServer,
    _open,
    build_client_frame,
)
from tests.timing import TIMEOUT, eventually, scaled

# ----------------------------------------------------------------- apps


def server_for(app: harpy.App) -> TestServer:
    """A TestServer whose waits are bounds for this machine (by default 5 s and 2 s)."""
    return TestServer(app, timeout=TIMEOUT, shutdown_timeout=scaled(2.0))


def echo(ws: harpy.WebSocket[Any], message: str | bytes) -> None:
    ws.send(message)


def echo_app(**options: Any) -> harpy.App:
    app = harpy.App()
    app.ws("/echo", {"message": echo}, **options)
    return app


# ----------------------------------------------------------------- messages


async def test_echo_text_binary_and_json() -> None:
    async with server_for(echo_app()) as server, server.connect("/echo") as ws:
        assert ws.status == 101
        assert ws.subprotocol is None and ws.extensions is None
        await ws.send("héllo")
        assert await ws.receive() == "héllo"
        await ws.send(b"\x00\xffbin")
        assert await ws.receive() == b"\x00\xffbin"
        await ws.send(bytearray(b"ba"))
        assert await ws.receive_bytes() == b"ba"
        await ws.send("")
        assert await ws.receive_text() == ""
        await ws.send_json({"type": "join", "n": [1, 2]})
        assert await ws.receive_json() == {"type": "join", "n": [1, 2]}
        await ws.send(b"x")
        with pytest.raises(TypeError):
            await ws.receive_text()


async def test_large_messages_each_length_encoding() -> None:
    async with server_for(echo_app()) as server, server.connect("/echo") as ws:
        for size in (125, 126, 65535, 65536, 1024 * 1024):
            data = os.urandom(size)
            await ws.send(data)
            assert await ws.receive() == data
        text = "é" * (512 * 1024)  # 1 MiB of UTF-8
        await ws.send(text)
        assert await ws.receive() == text


async def test_fragmented_client_message_is_reassembled_by_the_server() -> None:
    async with server_for(echo_app()) as server, server.connect("/echo") as ws:
        await ws.send_frame(OP_TEXT, b"ab", fin=False)
        await ws.send_frame(OP_PING, b"between")  # a control frame inside the message
        await ws.send_frame(0x0, "c€".encode(), fin=True)
        assert await ws.receive() == "abc€"


async def test_receive_timeout_has_a_helpful_message() -> None:
    async with server_for(echo_app()) as server, server.connect("/echo") as ws:
        with pytest.raises(
            asyncio.TimeoutError, match=re.escape("no message within 0.05 s on /echo")
        ):
            await ws.receive(timeout=0.05)  # the timeout under test: not scaled


# ----------------------------------------------------------------- closing


async def test_server_initiated_close_is_visible() -> None:
    app = harpy.App()

    def message(ws: harpy.WebSocket[Any], message: str | bytes) -> None:
        ws.send("last words")
        ws.close(4001, "go away")

    app.ws("/bye", {"message": message})
    async with server_for(app) as server, server.connect("/bye") as ws:
        await ws.send("hi")
        assert await ws.receive() == "last words"  # what came before the close still arrives
        with pytest.raises(ClosedError) as info:
            await ws.receive()
        assert (info.value.code, info.value.reason) == (4001, "go away")
        assert await ws.wait_closed() == (4001, "go away")
        assert ws.closed and ws.close_code == 4001 and ws.close_reason == "go away"
        with pytest.raises(ClosedError):  # every later receive raises too
            await ws.receive()
        with pytest.raises(ClosedError):
            await ws.send("too late")


async def test_client_close_handshake_reaches_the_close_handler() -> None:
    app = harpy.App()
    closed: asyncio.Queue[tuple[int, str]] = asyncio.Queue()

    def close(ws: harpy.WebSocket[Any], code: int, reason: str) -> None:
        closed.put_nowait((code, reason))

    app.ws("/c", {"message": echo, "close": close})
    async with server_for(app) as server:
        async with server.connect("/c") as ws:
            await ws.close(4000, "bye")
            # harpy echoes the code
            assert await ws.wait_closed(timeout=scaled(2.0)) == (4000, "")
            await ws.close()  # closing again does nothing
        assert await asyncio.wait_for(closed.get(), scaled(2.0)) == (4000, "bye")
        async with server.connect("/c"):
            pass  # leaving the block closes with 1000
        assert await asyncio.wait_for(closed.get(), scaled(2.0)) == (1000, "")
    with pytest.raises(ValueError):
        await ws.close(1006)


async def test_abort_drops_the_connection() -> None:
    async with server_for(echo_app()) as server:
        async with server.connect("/echo") as ws:
            ws.abort()
            assert ws.closed and ws.close_code == 1006
            with pytest.raises(ClosedError):
                await ws.receive()
        await eventually(lambda: len(server.app.connections) == 0)


async def test_server_shutdown_closes_clients_with_1001() -> None:
    server = server_for(echo_app())
    async with server:
        ws = await server.connect("/echo")
        await ws.send("x")
        assert await ws.receive() == "x"
    assert (await ws.wait_closed())[0] == 1001
    with pytest.raises(ClosedError) as info:
        await ws.receive()
    assert info.value.code == 1001


async def test_pings_are_answered_both_ways() -> None:
    app = harpy.App()
    pings: list[bytes] = []

    app.ws(
        "/p",
        {"message": echo, "ping": lambda ws, data: pings.append(data)},
        ping_interval=0.05,
    )
    async with server_for(app) as server, server.connect("/p") as ws:
        rtt = await ws.ping(b"x")
        assert 0 <= rtt < scaled(2.0)
        await ws.ping()
        assert pings == [b"x", b""]
        await eventually(lambda: ws.pings_received)  # the heartbeat's; the client answers each
        await ws.send("still open")
        assert await ws.receive() == "still open"
        with pytest.raises(ValueError):
            await ws.ping(b"x" * 126)


# ----------------------------------------------------------------- the handshake


async def test_refusals() -> None:
    app = harpy.App()
    app.ws("/echo", {"message": echo})
    app.ws("/private", {"message": echo}, authenticate=lambda request: False)
    app.ws("/site", {"message": echo}, allowed_origins=["https://app.example"])
    async with server_for(app) as server:
        refused = await server.connect("/nope", expect_refusal=True)
        assert isinstance(refused, HandshakeRefused)
        assert refused.status == 404 and refused.body
        with pytest.raises(HandshakeRefused) as info:
            await server.connect("/private")
        assert info.value.status == 401
        async with server.connect("/private", expect_refusal=True) as refused:
            assert refused.status == 401
        refused = await server.connect(
            "/site", headers={"Origin": "https://evil.example"}, expect_refusal=True
        )
        assert refused.status == 403 and "origin" in refused.text.lower()
        async with server.connect("/site", headers={"Origin": "https://app.example"}) as ws:
            await ws.send("ok")
            assert await ws.receive() == "ok"
        with pytest.raises(AssertionError, match="expected the upgrade of /echo to be refused"):
            await server.connect("/echo", expect_refusal=True)


async def test_subprotocol_negotiation() -> None:
    app = harpy.App()
    app.ws("/p", {"message": echo}, subprotocols=["chat", "v2"], require_subprotocol=True)
    async with server_for(app) as server:
        async with server.connect("/p", subprotocols=["other", "v2", "chat"]) as ws:
            assert ws.subprotocol == "v2"
            assert ws.response_headers["sec-websocket-protocol"] == "v2"
        refused = await server.connect("/p", subprotocols=["other"], expect_refusal=True)
        assert refused.status == 400


async def test_headers_cookies_query_reach_the_server() -> None:
    app = harpy.App()

    def open_(ws: harpy.WebSocket[Any]) -> None:
        ws.send_json(
            {
                "cookies": ws.cookies,
                "agent": ws.headers.get("x-agent"),
                "query": ws.query,
                "params": ws.params,
                "path": ws.path,
            }
        )

    app.ws("/room/:name", {"open": open_})
    async with server_for(app) as server:
        async with server.connect(
            "/room/lobby?name=a&x=1",
            headers={"Cookie": "sid=abc=; theme=dark", "X-Agent": "tests"},
        ) as ws:
            info = await ws.receive_json()
        assert info == {
            "cookies": {"sid": "abc=", "theme": "dark"},
            "agent": "tests",
            "query": {"name": "a", "x": "1"},
            "params": {"name": "lobby"},
            "path": "/room/lobby",
        }
        async with server.connect("/room/b", headers=[("Cookie", "a=1"), ("Cookie", "b=2")]) as ws:
            assert (await ws.receive_json())["cookies"] == {"a": "1", "b": "2"}


async def test_many_clients_concurrently() -> None:
    async with server_for(echo_app()) as server:

        async def one(i: int) -> None:
            async with server.connect(f"/echo?i={i}") as ws:
                for j in range(5):
                    await ws.send(f"{i}-{j}")
                for j in range(5):
                    assert await ws.receive() == f"{i}-{j}"

        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(50))), TIMEOUT)
        await eventually(lambda: len(server.app.connections) == 0)


async def test_compression() -> None:
    app = harpy.App()
    app.ws("/z", {"message": echo}, compression=True)
    app.ws("/plain", {"message": echo})
    text = "compress me " * 5000
    async with server_for(app) as server:
        async with server.connect("/z", compression=True) as ws:
            assert ws.extensions is not None
            assert ws.extensions.startswith("permessage-deflate")
            for message in (text, text.encode(), "", b"", "short", text):
                await ws.send(message)
                assert await ws.receive() == message
            await ws.send("uncompressed", compress=False)
            assert await ws.receive() == "uncompressed"
            assert ws.compressed_messages_received >= 6
        async with server.connect("/plain", compression=True) as ws:
            assert ws.extensions is None  # not offered back: plain frames
            await ws.send(text)
            assert await ws.receive() == text
        async with server.connect("/z") as ws:  # not offered: never compressed
            await ws.send(text)
            assert await ws.receive() == text
            assert ws.compressed_messages_received == 0


async def test_not_running() -> None:
    server = server_for(echo_app())
    with pytest.raises(RuntimeError):
        server.connect("/echo")
    assert TestServer.__test__ is False  # imported into a test module, it is not collected


# ----------------------------------------------------------------- a misbehaving server


async def fake_server(
    answer: Any, received: list[bytes] | None = None
) -> tuple[asyncio.Server, int]:
    """A TCP server that reads the upgrade request and lets ``answer(key, writer)`` reply;
    what the client sends after its request is appended to ``received``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        key = head.split("Sec-WebSocket-Key: ")[1].split("\r\n")[0]
        await answer(key, writer)
        rest = await reader.read()  # until the client is done
        if received is not None:
            received.append(rest)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def accept(key: str, extra: str = "") -> bytes:
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(key)}\r\n{extra}\r\n"
    ).encode()


async def connect_to(
    port: int, timeout: float = scaled(2.0), compression: bool = False
) -> ClientWebSocket | HandshakeRefused:
    return await _open(
        "127.0.0.1",
        port,
        "/",
        headers=None,
        subprotocols=None,
        compression=compression,
        timeout=timeout,
        expect_refusal=False,
    )


async def test_misbehaving_servers_are_reported() -> None:
    async def wrong_accept(key: str, writer: asyncio.StreamWriter) -> None:
        writer.write(accept("dGhlIHNhbXBsZSBub25jZQ=="))

    async def masked_frame(key: str, writer: asyncio.StreamWriter) -> None:
        writer.write(accept(key) + build_frame(OP_TEXT, b"ok") + build_client_frame(OP_TEXT, b"x"))

    async def silent(key: str, writer: asyncio.StreamWriter) -> None:
        pass

    server, port = await fake_server(wrong_accept)
    async with server:
        with pytest.raises(ProtocolViolation, match="Sec-WebSocket-Accept"):
            await connect_to(port)
    server, port = await fake_server(masked_frame)
    async with server:
        ws = await connect_to(port)
        assert isinstance(ws, ClientWebSocket)
        assert await ws.receive() == "ok"
        with pytest.raises(ProtocolViolation) as info:
            await ws.receive()
        assert info.value.code == 1002 and "masked" in str(info.value)
        await ws.wait_closed()
    server, port = await fake_server(silent)
    async with server:
        with pytest.raises(asyncio.TimeoutError, match="no handshake answer"):
            await connect_to(port, timeout=0.1)  # the timeout under test: not scaled


async def test_a_violation_is_answered_with_a_close_frame() -> None:
    async def bad_utf8(key: str, writer: asyncio.StreamWriter) -> None:
        writer.write(accept(key) + build_frame(OP_PING, b"p") + build_frame(OP_TEXT, b"\xff"))

    received: list[bytes] = []
    server, port = await fake_server(bad_utf8, received)
    async with server:
        ws = await connect_to(port)
        assert isinstance(ws, ClientWebSocket)
        with pytest.raises(ProtocolViolation) as info:
            await ws.receive()
        assert info.value.code == 1007 and "UTF-8" in str(info.value)
        assert await ws.wait_closed() == (1007, "invalid UTF-8 in a text message")
        await eventually(lambda: received)
    # The pong, then the close that fails the connection (masked, a fixed reason), then EOF.
    events = FrameReader().feed(received[0])
    assert events == [(0xA, b"p"), (OP_CLOSE, (1007, "Invalid payload data"))]


@pytest.mark.parametrize(
    "extension",
    [
        "permessage-deflate; x=1",
        "permessage-deflate; client_max_window_bits",
        "permessage-deflate, permessage-deflate",
        "x-webkit-deflate-frame",
    ],
)
async def test_a_bad_extension_response_is_refused(extension: str) -> None:
    async def answer(key: str, writer: asyncio.StreamWriter) -> None:
        writer.write(accept(key, f"Sec-WebSocket-Extensions: {extension}\r\n"))

    server, port = await fake_server(answer)
    async with server:
        with pytest.raises(ProtocolViolation) as info:
            await connect_to(port, compression=True)
        assert info.value.code == 1010


# ----------------------------------------------------------------- the reader, Sans-I/O


def client_reader(inflater: Any = None, max_message_size: int = MAX_MESSAGE_SIZE) -> FrameReader:
    """A frame reader as harpy.testing's client reads server frames with."""
    return FrameReader(max_message_size, inflater, client=True)


def feed_in_pieces(reader: FrameReader, data: bytes, rng: random.Random) -> list[Any]:
    events: list[Any] = []
    pos = 0
    while pos < len(data):
        step = rng.randint(1, 70000)
        events += reader.feed(data[pos : pos + step])
        pos += step
    return events


def test_reader_reads_harpy_frames_split_anywhere() -> None:
    rng = random.Random(6455)
    messages: list[tuple[int, Any]] = []
    stream = b""
    for size in (0, 1, 125, 126, 127, 65535, 65536, 200_000):
        text = "".join(rng.choice("aé€😀") for _ in range(size // 4))
        data = rng.randbytes(size)
        stream += build_frame(OP_TEXT, text.encode()) + build_frame(OP_BINARY, data)
        stream += build_frame(OP_PING, b"p")
        messages += [(OP_TEXT, text), (OP_BINARY, data), (OP_PING, b"p")]
    stream += build_frame(OP_CLOSE, (1000).to_bytes(2, "big") + b"done")
    stream += build_frame(OP_TEXT, b"after the close")
    for _ in range(3):
        events = feed_in_pieces(client_reader(), stream, rng)
        assert events == [*messages, (OP_CLOSE, (1000, "done"))]


def test_reader_fragments_and_interleaved_control_frames() -> None:
    reader = client_reader()
    parts = [
        bytes((0x01, 3)) + "ab\xe2".encode("latin-1"),  # text, not final, a split character
        build_frame(OP_PING, b"1"),
        bytes((0x00, 2)) + b"\x82\xac",  # continuation, not final: "€" completed
        bytes((0x80, 1)) + b"!",  # final continuation
    ]
    assert reader.feed(b"".join(parts)) == [(OP_PING, b"1"), (OP_TEXT, "ab€!")]
    assert reader.feed(build_frame(OP_CLOSE, b"")) == [(OP_CLOSE, (1005, ""))]


@pytest.mark.parametrize(
    ("data", "code", "what"),
    [
        (bytes((0x81, 0x81)) + b"\x00" * 5, 1002, "masked"),
        (bytes((0x83, 0)), 1002, "unknown opcode"),
        (bytes((0x09, 0)), 1002, "fragmented control"),
        (bytes((0x89, 126, 0, 126)) + b"x" * 126, 1002, "over 125"),
        (bytes((0xC1, 1)) + b"x", 1002, "reserved bits"),
        (bytes((0x80, 1)) + b"x", 1002, "without a message"),
        (bytes((0x01, 1)) + b"x" + bytes((0x81, 1)) + b"y", 1002, "inside a fragmented"),
        (bytes((0x81, 1, 0xFF)), 1007, "invalid UTF-8"),
        (bytes((0x01, 1, 0xFF)), 1007, "invalid UTF-8"),  # fails fast, before the message ends
        (bytes((0x88, 1, 3)), 1002, "1-byte"),
        (bytes((0x88, 2, 0x03, 0xED)), 1002, "invalid close code 1005"),
        (bytes((0x88, 3, 0x03, 0xE8, 0xFF)), 1007, "close reason"),
        (bytes((0x82, 127, 0x80)) + b"\x00" * 7, 1002, "most significant"),
        (bytes((0x82, 127)) + (1 << 40).to_bytes(8, "big"), 1009, "max_message_size"),
        # The size of a message is judged over its fragments.
        (bytes((0x02, 126, 0x80, 0)) + b"x" * 0x8000 + bytes((0x80, 1, 0)), 1009, "max_message"),
    ],
)
def test_reader_rejects_protocol_violations(data: bytes, code: int, what: str) -> None:
    reader = client_reader(max_message_size=1 << 15)
    events = reader.feed(data)
    assert events[-1][0] == EV_ERROR
    error = events[-1][1]
    assert isinstance(error, ProtocolError)
    assert error.code == code and what in str(error)
    assert reader.close_sent and reader.feed(build_frame(OP_TEXT, b"x")) == []


def test_reader_inflates_harpy_compressed_messages() -> None:
    for response in ("permessage-deflate", "permessage-deflate; server_no_context_takeover"):
        codec = PerMessageDeflate(server_no_context_takeover="no_context" in response)
        reader = client_reader(client_codec(response))
        for message in (b"hello " * 1000, b"", b"hello " * 1000, b"x"):
            frame = build_frame(OP_BINARY, codec.compress(message), rsv1=True)
            assert reader.feed(frame) == [(OP_BINARY, message)]
    bomb = PerMessageDeflate().compress(b"\x00" * 100_000)
    reader = client_reader(client_codec("permessage-deflate"), max_message_size=1000)
    assert reader.feed(build_frame(OP_BINARY, bomb, rsv1=True))[0][1].code == 1009
    reader = client_reader()  # RSV1 without the extension
    assert reader.feed(build_frame(OP_BINARY, bomb, rsv1=True))[0][1].code == 1002


def test_client_frames_are_read_by_harpys_reader() -> None:
    rng = random.Random(17)
    reader = FrameReader(max_message_size=0)
    for size in (0, 1, 3, 4, 5, 125, 126, 65535, 65536, 300_000):
        data = rng.randbytes(size)
        frame = build_client_frame(OP_BINARY, data)
        assert frame[1] & 0x80  # masked
        assert reader.feed(frame) == [(OP_BINARY, data)]
    fixed = build_client_frame(OP_TEXT, b"Hello", key=b"\x37\xfa\x21\x3d")
    assert fixed == bytes.fromhex("818537fa213d7f9f4d5158")  # RFC 6455 5.7's example
    assert reader.feed(fixed) == [(OP_TEXT, "Hello")]


def test_protocol_violation_is_a_closed_error() -> None:
    error = ProtocolViolation(1002, "server frame is masked")
    assert isinstance(error, ClosedError) and error.code == 1002
    assert "server broke the protocol" in str(error)

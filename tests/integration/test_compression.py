"""permessage-deflate through a real server: negotiation, threshold, per-send override, publish,
decompression bombs and corrupt data, and the checks of the ``compression=`` option."""

from __future__ import annotations

import asyncio
import contextlib
import os
import zlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

import harpy
from tests.helpers import RawClient, serve
from tests.timing import TIMEOUT, eventually

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE = 0x0, 0x1, 0x2, 0x8
RSV1 = 0x40
TAIL = b"\x00\x00\xff\xff"
OFFER = "Sec-WebSocket-Extensions: permessage-deflate\r\n"


# ----------------------------------------------------------------- raw helpers


async def upgrade(client: RawClient, path: str, extra: str = "") -> dict[str, str]:
    """Send the upgrade request (with ``extra`` header lines); return the 101's headers."""
    head = (
        f"GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"{extra}\r\n"
    )
    status, headers, _ = await client.request(head.encode())
    assert status == 101, status
    return headers


@contextlib.asynccontextmanager
async def raw(url: str, path: str, extra: str = "") -> AsyncIterator[tuple[RawClient, str]]:
    """An upgraded RawClient and the ``Sec-WebSocket-Extensions`` the server answered ('')."""
    client = await RawClient.connect(url)
    try:
        headers = await upgrade(client, path, extra)
        yield client, headers.get("sec-websocket-extensions", "")
    finally:
        await client.close()


def inflate(payload: bytes) -> bytes:
    """One server message (no context takeover), as RFC 7692 7.2.2 reads it."""
    return zlib.decompressobj(-15).decompress(payload + TAIL)


def deflate(data: bytes) -> bytes:
    """One client message compressed as RFC 7692 7.2.1 says: sync flush, tail stripped."""
    compressor = zlib.compressobj(wbits=-15)
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(TAIL)
    return out[:-4]


def memory_kib(field: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, which runs the
    server too."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> bool:
    """Make VmHWM start again from the current RSS (Linux 4.0+); False when not allowed.

    An inflated message freed right away leaves VmRSS where it was: only the peak shows it.
    """
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


class MemoryWatch:
    """Growth of the resident size, and of its peak when the peak can be reset."""

    def __init__(self) -> None:
        self.peak_known = reset_peak_rss()
        self.rss = memory_kib("VmRSS")
        self.hwm = memory_kib("VmHWM")

    def assert_grown_less_than(self, kib: int) -> None:
        grown = memory_kib("VmRSS") - self.rss
        assert grown < kib, f"RSS grew by {grown} KiB"
        if self.peak_known:
            peak = memory_kib("VmHWM") - self.hwm
            assert peak < kib, f"peak RSS grew by {peak} KiB"


# ----------------------------------------------------------------- the routes


class Echo:
    """Echo, plus commands: ``plain:N``, ``auto:N``, ``force:N`` send N bytes of text with
    ``compress=False``, None and True."""

    def __init__(self) -> None:
        self.closed: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
        self.errors: list[Exception] = []

    def message(self, ws: harpy.WebSocket[Any], message: str | bytes) -> None:
        mode, colon, size = message.partition(":") if isinstance(message, str) else ("", "", "")
        if colon and mode in ("plain", "auto", "force"):
            compress = {"plain": False, "auto": None, "force": True}[mode]
            ws.send(sample(int(size)), compress=compress)
            return
        ws.send(message)

    def close(self, ws: harpy.WebSocket[Any], code: int, reason: str) -> None:
        self.closed.put_nowait((code, reason))

    def error(self, ws: harpy.WebSocket[Any], exc: Exception) -> None:
        self.errors.append(exc)


def sample(size: int) -> str:
    """Compressible text of ``size`` bytes."""
    text = "the quick brown fox jumps over the lazy dog " * (size // 44 + 1)
    return text[:size]


def echo_app(**options: Any) -> tuple[harpy.App, Echo]:
    echo = Echo()
    app = harpy.App()
    app.ws("/echo", echo, **options)
    return app, echo


async def assert_echo(url: str, path: str = "/echo") -> None:
    async with connect(f"{url}{path}") as client:
        await client.send("still serving")
        assert await asyncio.wait_for(client.recv(), TIMEOUT) == "still serving"


# ----------------------------------------------------------------- compression=True


async def test_websockets_client_negotiates_and_round_trips() -> None:
    app, echo = echo_app(compression=True)
    async with serve(app) as url, connect(f"{url}/echo", max_size=None) as client:
        assert client.protocol.extensions, "permessage-deflate was not negotiated"
        assert client.response is not None
        agreed = client.response.headers["Sec-WebSocket-Extensions"]
        assert agreed.startswith("permessage-deflate")
        assert "server_no_context_takeover" in agreed  # the default
        for message in ("hello", "", "é" * 3000, b"\x00\x01\x02" * 1000, b"", os.urandom(5000)):
            await client.send(message)
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == message
        big = sample(1024 * 1024)
        await client.send(big)
        assert await asyncio.wait_for(client.recv(), TIMEOUT) == big
    assert echo.errors == []


async def test_many_messages_in_a_row_with_client_context_takeover() -> None:
    # The client keeps its compressor's context: each message may refer to the ones before it,
    # so the server must keep its inflater between messages.
    app, echo = echo_app(compression=True)
    async with serve(app) as url, connect(f"{url}/echo") as client:
        sent = [f"{i}: {sample(200 + i)}" for i in range(300)]
        for message in sent:
            await client.send(message)
        got = [await asyncio.wait_for(client.recv(), TIMEOUT) for _ in sent]
        assert got == sent
    assert echo.errors == []


async def test_server_context_takeover_when_configured() -> None:
    app, echo = echo_app(compression={"server_no_context_takeover": False})
    async with serve(app) as url, connect(f"{url}/echo") as client:
        assert client.response is not None
        agreed = client.response.headers["Sec-WebSocket-Extensions"]
        assert "server_no_context_takeover" not in agreed
        sent = [sample(500) + str(i) for i in range(100)]
        for message in sent:
            await client.send(message)
        assert [await asyncio.wait_for(client.recv(), TIMEOUT) for _ in sent] == sent
    assert echo.errors == []


async def test_raw_client_sees_compressed_frames_and_its_compressed_frames_are_read() -> None:
    app, _ = echo_app(compression=True)
    async with serve(app) as url, raw(url, "/echo", OFFER) as (client, agreed):
        assert agreed.startswith("permessage-deflate")
        text = sample(3000).encode()
        client.send_frame(OP_TEXT, deflate(text), rsv=RSV1)
        b0, payload = await client.read_raw_frame()
        assert b0 == 0x80 | RSV1 | OP_TEXT
        assert len(payload) < len(text)
        assert inflate(payload) == text
        # A compressed message in three fragments: RSV1 on the first frame only.
        data = deflate(b"\x07" * 10000)
        client.send_frame(OP_BINARY, data[:5], fin=False, rsv=RSV1)
        client.send_frame(OP_CONT, data[5:10], fin=False)
        client.send_frame(OP_CONT, data[10:])
        b0, payload = await client.read_raw_frame()
        assert b0 == 0x80 | RSV1 | OP_BINARY
        assert inflate(payload) == b"\x07" * 10000


@pytest.mark.parametrize("via", ["send", "publish"])
async def test_a_dropped_message_does_not_advance_the_compressor(via: str) -> None:
    # With server context takeover each connection's compressor remembers what it compressed,
    # and the client's inflater remembers what it received: a message compressed and then
    # dropped at the backpressure limit must not be remembered by one side only.
    limit = 64 * 1024
    size = 30_000
    dropped = os.urandom(size)  # incompressible: its frame is larger than its payload
    after = dropped[:2000] * 3  # compresses into references to the dropped message
    filler = b"a" * (limit - size - 4)  # a frame of limit - size bytes
    results: list[int | bool] = []
    opened: list[harpy.WebSocket[Any]] = []
    app = harpy.App()

    def burst(ws: harpy.WebSocket[Any]) -> None:
        results.extend([ws.send(filler, compress=False), ws.send(dropped), ws.send(after)])

    def open_(ws: harpy.WebSocket[Any]) -> None:
        opened.append(ws)
        ws.subscribe("t")
        if via == "send":
            ws.cork(burst)  # corked: nothing reaches the kernel, so the queued size is exact
        else:
            # Published in one loop tick: the frames wait in the connection's queue together.
            results.append(app.publish("t", filler, compress=False))
            results.append(app.publish("t", dropped))
            results.append(app.publish("t", after))

    app.ws(
        "/ctx",
        {"open": open_},
        compression={"server_no_context_takeover": False, "threshold": 0},
        backpressure_limit=limit,
    )
    async with serve(app) as url, connect(f"{url}/ctx", max_size=None) as client:
        assert await asyncio.wait_for(client.recv(), TIMEOUT) == filler
        (ws,) = opened
        assert results[0] and results[2], results
        if results[1]:  # it fitted after all: then it arrives
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == dropped
        else:
            assert ws.dropped == 1
        # websockets fails the connection (1002) when the next message does not inflate.
        assert await asyncio.wait_for(client.recv(), TIMEOUT) == after


# ----------------------------------------------------------------- the plugin's form, threshold


async def test_plugin_form_threshold_compresses_only_large_messages() -> None:
    app, _ = echo_app(compression={"enabled": True, "threshold": 1024})
    async with serve(app) as url, raw(url, "/echo", OFFER) as (client, agreed):
        assert agreed.startswith("permessage-deflate")
        for size, compressed in ((10, False), (1023, False), (1024, True), (50_000, True)):
            client.send_frame(OP_TEXT, f"auto:{size}".encode())
            b0, payload = await client.read_raw_frame()
            assert b0 & 0x0F == OP_TEXT
            assert bool(b0 & RSV1) is compressed, size
            assert (inflate(payload) if compressed else payload) == sample(size).encode()
            if compressed:
                assert len(payload) < size
        # The echo of a small binary message stays plain; a large one is compressed.
        client.send_frame(OP_BINARY, b"\x01" * 100)
        assert await client.read_raw_frame() == (0x80 | OP_BINARY, b"\x01" * 100)
        client.send_frame(OP_BINARY, b"\x01" * 2000)
        b0, payload = await client.read_raw_frame()
        assert b0 == 0x80 | RSV1 | OP_BINARY
        assert inflate(payload) == b"\x01" * 2000


async def test_plugin_form_disabled_is_no_compression() -> None:
    app, _ = echo_app(compression={"enabled": False, "threshold": 1024})
    async with serve(app) as url, raw(url, "/echo", OFFER) as (client, agreed):
        assert agreed == ""
        client.send_frame(OP_TEXT, b"auto:5000")
        assert await client.read_raw_frame() == (0x80 | OP_TEXT, sample(5000).encode())


async def test_per_send_override() -> None:
    app, _ = echo_app(compression={"enabled": True, "threshold": 1024})
    async with serve(app) as url, raw(url, "/echo", OFFER) as (client, _agreed):
        # compress=False: plain, however large.
        client.send_frame(OP_TEXT, b"plain:50000")
        assert await client.read_raw_frame() == (0x80 | OP_TEXT, sample(50000).encode())
        # compress=True: compressed, however small.
        client.send_frame(OP_TEXT, b"force:10")
        b0, payload = await client.read_raw_frame()
        assert b0 == 0x80 | RSV1 | OP_TEXT
        assert inflate(payload) == sample(10).encode()
        client.send_frame(OP_TEXT, b"force:0")
        b0, payload = await client.read_raw_frame()
        assert b0 == 0x80 | RSV1 | OP_TEXT
        assert inflate(payload) == b""


async def test_compress_true_without_negotiation_sends_plain_frames() -> None:
    app, _ = echo_app(compression=True)
    async with serve(app) as url, raw(url, "/echo") as (client, agreed):
        assert agreed == ""
        client.send_frame(OP_TEXT, b"force:3000")
        assert await client.read_raw_frame() == (0x80 | OP_TEXT, sample(3000).encode())


async def test_client_without_offer_gets_plain_frames() -> None:
    app, _ = echo_app(compression={"enabled": True, "threshold": 0})
    async with serve(app) as url, raw(url, "/echo") as (client, agreed):
        assert agreed == ""
        for size in (0, 10, 100_000):
            client.send_frame(OP_TEXT, f"auto:{size}".encode())
            assert await client.read_raw_frame() == (0x80 | OP_TEXT, sample(size).encode())
        # An RSV1 frame on a connection that did not negotiate compression: 1002.
        client.send_frame(OP_TEXT, deflate(b"hello"), rsv=RSV1)
        assert await client.read_close() == 1002
    async with serve(app) as url, connect(f"{url}/echo", compression=None) as ws_client:
        assert not ws_client.protocol.extensions
        await ws_client.send(sample(5000))
        assert await asyncio.wait_for(ws_client.recv(), TIMEOUT) == sample(5000)


async def test_compression_off_by_default_declines_the_offer() -> None:
    app, _ = echo_app()
    async with serve(app) as url:
        async with raw(url, "/echo", OFFER) as (client, agreed):
            assert agreed == ""
            client.send_frame(OP_TEXT, b"auto:100000")
            assert await client.read_raw_frame() == (0x80 | OP_TEXT, sample(100_000).encode())
        async with connect(f"{url}/echo") as ws_client:  # offers permessage-deflate
            assert not ws_client.protocol.extensions
            assert ws_client.response is not None
            assert "Sec-WebSocket-Extensions" not in ws_client.response.headers
            await ws_client.send("no extension")
            assert await asyncio.wait_for(ws_client.recv(), TIMEOUT) == "no extension"


# ----------------------------------------------------------------- publish


def pubsub_app(**options: Any) -> harpy.App:
    app = harpy.App()

    def open_(ws: harpy.WebSocket[Any]) -> None:
        ws.subscribe("news")

    app.ws("/pub", {"open": open_}, **options)
    return app


async def wait_subscribers(app: harpy.App, count: int) -> None:
    await eventually(lambda: app.subscriber_count("news") == count, what=f"{count} subscribers")


async def test_publish_to_50_compressing_subscribers() -> None:
    app = pubsub_app(compression=True)
    payload = sample(1024)
    async with serve(app) as url, contextlib.AsyncExitStack() as stack:
        clients: list[ClientConnection] = list(
            await asyncio.gather(
                *(stack.enter_async_context(connect(f"{url}/pub")) for _ in range(50))
            )
        )
        assert all(c.protocol.extensions for c in clients)
        await wait_subscribers(app, 50)
        assert app.publish("news", payload) == 50
        assert app.publish("news", payload.encode()) == 50
        for client in clients:
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == payload
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == payload.encode()


async def test_publish_to_a_mix_of_compressing_and_plain_subscribers() -> None:
    app = pubsub_app(compression={"enabled": True, "threshold": 512})
    payload = sample(1024)
    async with serve(app) as url, contextlib.AsyncExitStack() as stack:
        deflating = await asyncio.gather(
            *(stack.enter_async_context(connect(f"{url}/pub")) for _ in range(10))
        )
        plain = await asyncio.gather(
            *(stack.enter_async_context(connect(f"{url}/pub", compression=None)) for _ in range(10))
        )
        raw_deflate, agreed = await stack.enter_async_context(raw(url, "/pub", OFFER))
        raw_plain, not_agreed = await stack.enter_async_context(raw(url, "/pub"))
        assert agreed.startswith("permessage-deflate")
        assert not_agreed == ""
        await wait_subscribers(app, 22)
        assert app.publish("news", payload) == 22
        assert app.publish("news", "small") == 22
        assert app.publish("news", payload, compress=False) == 22
        for client in [*deflating, *plain]:
            got = [await asyncio.wait_for(client.recv(), TIMEOUT) for _ in range(3)]
            assert got == [payload, "small", payload]
        b0, data = await raw_deflate.read_raw_frame()
        assert b0 == 0x80 | RSV1 | OP_TEXT and inflate(data) == payload.encode()
        # Under the threshold: not compressed.
        assert await raw_deflate.read_raw_frame() == (0x80 | OP_TEXT, b"small")
        assert await raw_deflate.read_raw_frame() == (0x80 | OP_TEXT, payload.encode())
        assert await raw_plain.read_raw_frame() == (0x80 | OP_TEXT, payload.encode())
        assert await raw_plain.read_raw_frame() == (0x80 | OP_TEXT, b"small")
        assert await raw_plain.read_raw_frame() == (0x80 | OP_TEXT, payload.encode())


# ----------------------------------------------------------------- hostile input


def zero_bomb(size: int) -> bytes:
    """``size`` zero bytes deflated (about a thousandth of it), made 64 KiB at a time."""
    compressor = zlib.compressobj(wbits=-15)
    block = bytes(65536)
    parts = [compressor.compress(block) for _ in range(size // len(block))]
    parts.append(compressor.flush(zlib.Z_SYNC_FLUSH))
    data = b"".join(parts)
    assert data.endswith(TAIL)
    return data[:-4]


async def test_decompression_bomb_closes_1009_without_inflating_it() -> None:
    app, echo = echo_app(compression=True, max_message_size=64 * 1024)
    bomb = zero_bomb(10 * 1024 * 1024)
    assert len(bomb) < 64 * 1024  # the compressed frame itself is within the limit
    async with serve(app) as url:
        memory = MemoryWatch()
        async with raw(url, "/echo", OFFER) as (client, agreed):
            assert agreed.startswith("permessage-deflate")
            client.send_frame(OP_BINARY, bomb, rsv=RSV1)
            assert await client.read_close() == 1009
        memory.assert_grown_less_than(8 * 1024)
        # The same bomb in fragments.
        memory = MemoryWatch()
        async with raw(url, "/echo", OFFER) as (client, _agreed):
            third = len(bomb) // 3
            client.send_frame(OP_BINARY, bomb[:third], fin=False, rsv=RSV1)
            client.send_frame(OP_CONT, bomb[third : 2 * third], fin=False)
            client.send_frame(OP_CONT, bomb[2 * third :])
            assert await client.read_close() == 1009
        memory.assert_grown_less_than(8 * 1024)
        await assert_echo(url)
        # Just under the limit is fine.
        async with raw(url, "/echo", OFFER) as (client, _agreed):
            client.send_frame(OP_BINARY, deflate(bytes(64 * 1024)), rsv=RSV1)
            b0, payload = await client.read_raw_frame()
            assert b0 == 0x80 | RSV1 | OP_BINARY
            assert inflate(payload) == bytes(64 * 1024)
    assert any(isinstance(e, harpy.PayloadTooBig) for e in echo.errors)


@pytest.mark.parametrize(
    "payload",
    [b"\xff\xfe\xfd\xfc garbage", deflate(b"hello")[:-1] + b"\xff\xff\xff"],
    ids=["bad-block-type", "bad-tail"],
)
async def test_corrupt_deflate_data_closes_1007(payload: bytes) -> None:
    app, echo = echo_app(compression=True)
    async with serve(app) as url:
        async with raw(url, "/echo", OFFER) as (client, _agreed):
            client.send_frame(OP_TEXT, payload, rsv=RSV1)
            assert await client.read_close() == 1007
            client.send_frame(OP_CLOSE, (1007).to_bytes(2, "big"))  # the peer's answer
            assert await client.at_eof()
        assert await asyncio.wait_for(echo.closed.get(), TIMEOUT) == (1007, "")
        assert [getattr(e, "code", None) for e in echo.errors] == [1007]
        await assert_echo(url)


async def test_compressed_text_must_still_be_utf8() -> None:
    app, _ = echo_app(compression=True)
    async with serve(app) as url, raw(url, "/echo", OFFER) as (client, _agreed):
        client.send_frame(OP_TEXT, deflate(b"\xff\xfe not utf-8"), rsv=RSV1)
        assert await client.read_close() == 1007


# ----------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "value",
    [
        {"bogus": 1},
        {"enabled": True, "thresold": 1024},
        {"level": 12},
        {"level": -2},
        {"server_max_window_bits": 8},
        {"client_max_window_bits": 16},
        {"threshold": -1},
        {"threshold": 1.5},
        {"enabled": "yes"},
        {"server_no_context_takeover": 1},
        "deflate",
        1,
    ],
    ids=repr,
)
def test_bad_compression_options_fail_at_declaration(value: Any) -> None:
    with pytest.raises(harpy.ConfigurationError):
        harpy.App(compression=value)
    app = harpy.App()
    with pytest.raises(harpy.ConfigurationError):
        app.ws("/x", {"message": lambda ws, m: None}, compression=value)
    with pytest.raises(harpy.ConfigurationError):
        harpy.Router().ws("/x", {"message": lambda ws, m: None}, compression=value)
    assert app.routes == []


@pytest.mark.parametrize(
    "value",
    [
        None,
        False,
        True,
        {"enabled": False},
        {"enabled": True, "threshold": 1024},
        {"level": 9, "server_max_window_bits": 9, "client_max_window_bits": 10},
    ],
    ids=repr,
)
def test_good_compression_options(value: Any) -> None:
    app = harpy.App(compression=value)
    app.ws("/x", {"message": lambda ws, m: None})
    app.ws("/y", {"message": lambda ws, m: None}, compression=value)
    assert len(app.routes) == 2

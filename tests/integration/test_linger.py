"""After a refusal the server lingers, as docs/heartbeat-compression-backpressure.md says: it
ends its write side, discards what the client still sends for at most 2 s and 1 MiB, then
closes; over TLS (no half-close) it closes at once.

A client learns that the server closed for good when a write of its own is answered with a
reset (or, over TLS, fails): these tests keep writing a little at a time and time that.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import time
from pathlib import Path

import harpy
from harpy.server.connection import LINGER_BYTES, LINGER_TIME
from tests.e2e.test_cli import make_cert
from tests.helpers import serve
from tests.timing import TIMEOUT, scaled

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
REFUSED = (
    b"GET /nowhere HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def test_the_bounds_are_the_documented_ones() -> None:
    doc = (ROOT / "docs" / "heartbeat-compression-backpressure.md").read_text()
    match = re.search(r"for at most (\d+) seconds and (\d+) MiB", " ".join(doc.split()))
    assert match is not None
    assert float(match.group(1)) == LINGER_TIME
    assert int(match.group(2)) * MiB == LINGER_BYTES


def read_answer(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, "closed before the answer"
        data += chunk
    return data


def seconds_until_refused(sock: socket.socket, chunk: bytes, limit: float) -> float:
    """Write ``chunk`` every 10 ms until a write fails; the seconds that took."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        try:
            sock.sendall(chunk)
        except (OSError, ssl.SSLError):
            return time.monotonic() - start
        time.sleep(0.01)
    raise AssertionError(f"the server still took data after {limit} s")


def open_refused(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.sendall(REFUSED)
    assert read_answer(sock).startswith(b"HTTP/1.1 404")
    return sock


async def test_a_refused_client_may_send_for_2_s_then_the_server_closes() -> None:
    async with serve(harpy.App()) as url:
        port = int(url.rsplit(":", 1)[1])

        def client() -> tuple[bytes, float]:
            with open_refused(port) as sock:
                after = sock.recv(4096)  # the server's write side is over: end of file
                return after, seconds_until_refused(sock, b"x" * 512, scaled(10.0))

        eof, took = await asyncio.to_thread(client)
        assert eof == b""
        # Well under 1 MiB was sent: the time bound ends it, not before.
        assert LINGER_TIME - 0.1 <= took <= LINGER_TIME + scaled(2.0)


async def test_past_1_mib_the_server_closes_before_the_2_s() -> None:
    async with serve(harpy.App()) as url:
        port = int(url.rsplit(":", 1)[1])

        def client() -> float:
            with open_refused(port) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
                return seconds_until_refused(sock, b"x" * 64 * 1024, scaled(10.0))

        took = await asyncio.to_thread(client)
        # 64 KiB every 10 ms is 1 MiB in about 0.16 s: the byte bound ends it.
        assert took < LINGER_TIME - 0.5


async def test_over_tls_the_server_closes_at_once(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    async with serve(harpy.App(), tls_cert=str(cert), tls_key=str(key)) as url:
        port = int(url.rsplit(":", 1)[1])
        context = ssl.create_default_context(cafile=str(cert))

        def client() -> tuple[bytes, float]:
            raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
            with context.wrap_socket(raw, server_hostname="localhost") as sock:
                sock.sendall(REFUSED)
                assert read_answer(sock).startswith(b"HTTP/1.1 404")
                start = time.monotonic()
                after = sock.recv(4096)  # the server's close_notify, sent with the answer
                # The client answers it; the server, closing, then drops the TCP connection
                # (where a plain one would still take data for LINGER_TIME).
                with sock.unwrap() as plain:
                    return after, time.monotonic() - start + seconds_until_refused(
                        plain, b"x" * 512, scaled(10.0)
                    )

        eof, took = await asyncio.to_thread(client)
        assert eof == b""
        assert took < LINGER_TIME / 2

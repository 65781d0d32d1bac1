"""Plain HTTP beside the WebSockets: health, static files, metrics, the access log.

Every test talks to a real server on 127.0.0.1 with ``http.client`` or a raw socket (for
request targets ``http.client`` will not send), in a thread.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

import harpy
from harpy.exceptions import ConfigurationError
from tests.helpers import serve
from tests.timing import TIMEOUT, eventually

Reply = tuple[int, dict[str, str], bytes]


def _request(
    port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


def _raw(port: int, target: bytes) -> bytes:
    """Send ``GET target`` as bytes, as they are; read the answer to the end."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


async def get(app: harpy.App, path: str, method: str = "GET", **headers: str) -> Reply:
    assert app.port is not None
    return await asyncio.to_thread(_request, app.port, path, method, headers)


# ----------------------------------------------------------------- health


async def test_health_answers_200_and_closes() -> None:
    app = harpy.App()
    async with serve(app):
        status, headers, body = await get(app, "/healthz")
        assert (status, body) == (200, b"ok\n")
        assert headers["connection"] == "close"
        assert headers["content-type"] == "text/plain; charset=utf-8"
        status, headers, body = await get(app, "/healthz", "HEAD")
        assert (status, headers["content-length"], body) == (200, "3", b"")
        status, headers, _ = await get(app, "/healthz", "POST")
        assert (status, headers["allow"]) == (405, "GET, HEAD")


async def test_health_path_is_configurable_or_off() -> None:
    moved = harpy.App(health="/up")
    off = harpy.App(health=None)
    async with serve(moved), serve(off):
        assert (await get(moved, "/up"))[0] == 200
        assert (await get(moved, "/healthz"))[0] == 404
        assert (await get(off, "/healthz"))[0] == 404
    with pytest.raises(ConfigurationError, match="health must be"):
        harpy.App(health="healthz")
    with pytest.raises(ConfigurationError, match="health or metrics path"):
        harpy.App().ws("/healthz", {})


async def test_health_check_in_flight_at_shutdown_gets_503() -> None:
    app = harpy.App()
    await app.listen("127.0.0.1", 0)
    assert app.port is not None
    sock = socket.create_connection(("127.0.0.1", app.port), timeout=TIMEOUT)
    try:
        server = app._server
        assert server is not None
        await eventually(lambda: len(server.connections) == 1, what="accepted")
        await app.shutdown(timeout=TIMEOUT)
        assert server.closing
        reply = await asyncio.to_thread(sock.recv, 4096)
    finally:
        sock.close()
    assert reply.startswith(b"HTTP/1.1 503 ")


async def test_a_websocket_route_keeps_426_and_unknown_paths_404() -> None:
    app = harpy.App()
    app.ws("/ws", {"message": lambda ws, data: ws.send(data)})
    async with serve(app) as url:
        status, headers, _ = await get(app, "/ws")
        assert (status, headers["upgrade"]) == (426, "websocket")
        assert (await get(app, "/nothing"))[0] == 404
        async with connect(f"{url}/ws") as client:
            await client.send("still a websocket")
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == "still a websocket"


# ----------------------------------------------------------------- static files


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "public"
    (root / "sub").mkdir(parents=True)
    (root / "index.html").write_text("<h1>home</h1>")
    (root / "style.css").write_text("body{}")
    (root / "sub" / "index.html").write_text("<h1>sub</h1>")
    (root / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    (root / "noext").write_bytes(b"\x00\x01")
    (tmp_path / "secret.txt").write_text("secret")
    (root / "link-out").symlink_to(tmp_path / "secret.txt")
    (root / "link-in").symlink_to(root / "style.css")
    yield root


async def test_static_files_types_index_etag_head(site: Path) -> None:
    app = harpy.App(static={"/": site})
    async with serve(app):
        status, headers, body = await get(app, "/")
        assert (status, body) == (200, b"<h1>home</h1>")
        assert headers["content-type"] == "text/html; charset=utf-8"
        assert headers["connection"] == "close"
        status, headers, body = await get(app, "/style.css")
        assert (status, headers["content-type"], body) == (
            200,
            "text/css; charset=utf-8",
            b"body{}",
        )
        etag = headers["etag"]
        status, headers, body = await get(app, "/style.css", **{"If-None-Match": etag})
        assert (status, headers["etag"], body) == (304, etag, b"")
        assert (await get(app, "/style.css", **{"If-None-Match": '"other"'}))[0] == 200
        status, headers, body = await get(app, "/style.css", "HEAD")
        assert (status, headers["content-length"], body) == (200, "6", b"")
        status, headers, _ = await get(app, "/sub")
        assert (status, headers["location"]) == (301, "sub/")
        assert (await get(app, "/sub/"))[2] == b"<h1>sub</h1>"
        status, headers, body = await get(app, "/noext")
        assert (headers["content-type"], body) == ("application/octet-stream", b"\x00\x01")
        assert (await get(app, "/link-in"))[2] == b"body{}"
        status, _, body = await get(app, "/big.bin")
        assert status == 200
        assert body == (site / "big.bin").read_bytes()
        assert (await get(app, "/missing.txt"))[0] == 404
        status, headers, _ = await get(app, "/style.css", "POST")
        assert (status, headers["allow"]) == (405, "GET, HEAD")


@pytest.mark.parametrize(
    "target",
    [
        b"/../secret.txt",
        b"/%2e%2e/secret.txt",
        b"/%2E%2E%2Fsecret.txt",
        b"/sub/..%2f..%2fsecret.txt",
        b"/sub/%2e%2e/%2e%2e/secret.txt",
        b"/..\\secret.txt",
        b"/%5c..%5csecret.txt",
        b"/style.css%00.png",
        b"/%ff%fe",
        b"/link-out",
        b"/./style.css",
    ],
)
async def test_no_path_leaves_the_folder(site: Path, target: bytes) -> None:
    app = harpy.App(static={"/files": site})
    async with serve(app):
        assert app.port is not None
        inside = await asyncio.to_thread(_raw, app.port, b"/files/style.css")
        assert inside.startswith(b"HTTP/1.1 200 ")
        reply = await asyncio.to_thread(_raw, app.port, b"/files" + target)
    assert reply.startswith(b"HTTP/1.1 404 "), reply[:60]
    assert b"secret" not in reply


async def test_static_beside_websocket_routes(site: Path) -> None:
    app = harpy.App(static={"/": site, "/assets": site / "sub"})
    app.ws("/ws", {"open": lambda ws: ws.send("hello")})
    async with serve(app) as url:
        assert (await get(app, "/assets/index.html"))[2] == b"<h1>sub</h1>"  # longest prefix
        assert (await get(app, "/index.html"))[2] == b"<h1>home</h1>"
        assert (await get(app, "/ws"))[0] == 426  # the route wins over the folder
        async with connect(f"{url}/ws") as client:
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == "hello"
        with pytest.raises(InvalidStatus) as info:
            async with connect(f"{url}/style.css"):
                pass
        assert info.value.response.status_code == 404  # an upgrade is no file request


def test_bad_static_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="is not a directory"):
        harpy.App(static={"/": tmp_path / "missing"})
    with pytest.raises(ConfigurationError, match="must start with /"):
        harpy.App(static={"files": tmp_path})
    with pytest.raises(ConfigurationError, match="static must map"):
        harpy.App(static=str(tmp_path))  # type: ignore[arg-type]


# ----------------------------------------------------------------- metrics


def _metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_metrics_count_connections_messages_errors_closes() -> None:
    app = harpy.App(metrics=True)
    other = harpy.App(metrics="/prom")  # a second app in the process: its own registry

    def message(ws: harpy.WebSocket[Any], data: str | bytes) -> None:
        if data == "boom":
            raise RuntimeError("boom")
        ws.send(data)

    app.ws("/echo", {"message": message})
    app.ws("/idle", {})
    async with serve(app) as url, serve(other):
        async with connect(f"{url}/echo") as client:
            for text in ("a", "bb"):
                await client.send(text)
                assert await asyncio.wait_for(client.recv(), TIMEOUT) == text
            status, headers, body = await get(app, "/metrics")
            assert status == 200
            assert headers["content-type"].startswith("text/plain; version=")
            live = _metrics(body.decode())
            assert live[("harpy_connections_open", (("route", "/echo"),))] == 1
            assert live[("harpy_connections_open", (("route", "/idle"),))] == 0
            assert live[("harpy_messages_received_total", ())] == 2
            assert live[("harpy_messages_sent_total", ())] == 2
            await client.send("boom")
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(client.recv(), TIMEOUT)
        assert (await get(app, "/nowhere"))[0] == 404
        await eventually(lambda: app.stats.closes, what="the close counted")
        after = _metrics((await get(app, "/metrics"))[2].decode())
        theirs = _metrics((await get(other, "/prom"))[2].decode())
    assert after[("harpy_connections_open", (("route", "/echo"),))] == 0
    assert after[("harpy_messages_received_total", ())] == 3
    assert after[("harpy_received_bytes_total", ())] > 3
    assert after[("harpy_sent_payload_bytes_total", ())] == 1 + 2  # "a", "bb"
    assert after[("harpy_handler_errors_total", (("route", "/echo"),))] == 1
    assert after[("harpy_closes_total", (("code", "1011"),))] == 1
    assert [k for k in after if k[0] == "harpy_closes_total"] == [
        ("harpy_closes_total", (("code", "1011"),))
    ]
    assert after[("harpy_handshakes_refused_total", (("status", "404"),))] == 1
    assert after[("harpy_backpressure_dropped_total", ())] == 0
    for reason in ("backpressure", "budget", "closing"):
        assert after[("harpy_messages_dropped_total", (("reason", reason),))] == 0
    assert theirs[("harpy_messages_received_total", ())] == 0
    assert theirs[("harpy_received_bytes_total", ())] == 0
    assert app.metrics_registry is not other.metrics_registry


async def test_metrics_are_off_by_default_and_show_the_backplane() -> None:
    plain = harpy.App()
    assert plain.metrics_registry is None
    app = harpy.App(metrics=True, backplane=harpy.MemoryBackplane())
    async with serve(plain), serve(app):
        assert (await get(plain, "/metrics"))[0] == 404
        got = _metrics((await get(app, "/metrics"))[2].decode())
    assert got[("harpy_backplane_queue_length", ())] == 0
    assert got[("harpy_backplane_dropped_total", ())] == 0
    with pytest.raises(ConfigurationError, match="different paths"):
        harpy.App(metrics="/healthz")


# ----------------------------------------------------------------- access log


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_access_log_records_upgrade_close_and_http() -> None:
    handler = _Records()
    access = logging.getLogger("harpy.access")
    access.addHandler(handler)
    level = access.level
    access.setLevel(logging.INFO)
    closed = asyncio.Event()
    app = harpy.App()
    app.ws(
        "/chat",
        {"message": lambda ws, data: ws.send(data), "close": lambda ws, c, r: closed.set()},
    )
    try:
        async with serve(app) as url:
            async with connect(f"{url}/chat?x=1") as client:
                await client.send("hi")
                assert await asyncio.wait_for(client.recv(), TIMEOUT) == "hi"
            await asyncio.wait_for(closed.wait(), TIMEOUT)
            assert (await get(app, "/healthz"))[0] == 200
    finally:
        access.removeHandler(handler)
        access.setLevel(level)
    events = [(r.event, r.path) for r in handler.records]  # type: ignore[attr-defined]
    assert events == [("upgrade", "/chat"), ("close", "/chat"), ("http", "/healthz")]
    upgrade, close, health = handler.records
    assert upgrade.status == 101 and upgrade.remote_address == "127.0.0.1"  # type: ignore[attr-defined]
    assert (close.code, close.messages_in, close.messages_out) == (1000, 1, 1)  # type: ignore[attr-defined]
    assert close.duration >= 0  # type: ignore[attr-defined]
    assert health.status == 200  # type: ignore[attr-defined]

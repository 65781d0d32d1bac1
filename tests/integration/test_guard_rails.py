"""Handler mistakes caught at registration, and one handlers instance per route."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from typing import Any

import pytest
from websockets.asyncio.client import connect

import harpy
from harpy.exceptions import ConfigurationError
from tests.helpers import ServeApp, serve
from tests.timing import TIMEOUT


def test_a_class_with_no_handler_name_lists_them_and_suggests() -> None:
    class Chat:
        def on_message(self, ws: Any, data: Any) -> None: ...

        def onClose(self, ws: Any, code: int, reason: str) -> None: ...

    app = harpy.App()
    with pytest.raises(ConfigurationError) as info:
        app.ws("/chat", Chat)
    text = str(info.value)
    assert "open, message, close, drain, error, ping, pong" in text
    assert "'on_message' (did you mean 'message'?)" in text
    assert "'onClose' (did you mean 'close'?)" in text


@pytest.mark.parametrize(
    ("name", "meant"),
    [("mesage", "message"), ("on_open", "open"), ("onMessage", "message"),
     ("Message", "message"), ("handle_close", "close"), ("closse", "close")],
)  # fmt: skip
def test_a_method_named_almost_like_a_handler_is_refused_beside_real_ones(
    name: str, meant: str
) -> None:
    def near(self: Any, *args: Any) -> None: ...

    def open(self: Any, ws: Any) -> None: ...

    # Beside a real handler too: else its messages would vanish in silence.
    cls = type("Chat", (), {"open": open, name: near})
    with pytest.raises(ConfigurationError) as info:
        harpy.App().ws("/chat", cls)
    assert f"{name!r} (did you mean {meant!r}?)" in str(info.value)
    assert "starts with _" in str(info.value)


def test_private_helpers_and_plain_attributes_are_not_handlers() -> None:
    class Chat:
        closed = 0  # not callable: state, not a misspelt handler

        def _closed(self) -> None: ...

        def send_all(self) -> None: ...

        def message(self, ws: Any, data: Any) -> None: ...

    app = harpy.App()
    app.ws("/chat", Chat)
    assert [route.handlers.message is not None for route in app.routes] == [True]


def test_an_object_with_no_handler_name_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="has none of the handler names"):
        harpy.App().ws("/x", object())


def test_a_mapping_with_a_wrong_name_suggests_the_right_one() -> None:
    with pytest.raises(ConfigurationError, match=r"'handle_open' \(did you mean 'open'\?\)"):
        harpy.App().ws("/x", {"handle_open": lambda ws: None})


def test_an_empty_mapping_means_no_handlers_on_purpose() -> None:
    app = harpy.App()
    app.ws("/relay", {}, auto_broadcast=True)
    assert [r.pattern for r in app.routes] == ["/relay"]


@pytest.mark.parametrize(
    ("name", "handler"),
    [
        ("message", lambda ws: None),
        ("message", lambda ws, data, extra: None),
        ("close", lambda ws: None),
        ("open", lambda: None),
        ("error", lambda ws, exc, more: None),
        ("ping", lambda ws: None),
        ("pong", lambda ws, a, b: None),
        ("drain", lambda ws, data: None),
    ],
)
def test_a_handler_with_the_wrong_parameters_is_refused(name: str, handler: Any) -> None:
    with pytest.raises(ConfigurationError, match=f"handler '{name}' must take"):
        harpy.App().ws("/x", {name: handler})


def test_methods_star_args_and_defaults_are_accepted() -> None:
    class Ok:
        def open(self, ws: Any, *rest: Any) -> None: ...

        def message(self, *args: Any) -> None: ...

        def close(self, ws: Any, code: int = 1000, reason: str = "", extra: int = 0) -> None: ...

        async def error(self, ws: Any, exc: BaseException) -> None: ...

    app = harpy.App()
    app.ws("/ok", Ok)
    app.ws("/builtin", {"message": print})
    assert len(app.routes) == 2


def test_a_wrong_method_on_a_class_is_refused() -> None:
    class Wrong:
        def close(self, ws: Any) -> None: ...

    with pytest.raises(ConfigurationError, match=r"close\(ws, code, reason\)"):
        harpy.App().ws("/x", Wrong)


async def test_one_handlers_instance_serves_every_connection(serve_app: ServeApp) -> None:
    made: list[object] = []
    seen: list[object] = []
    app = harpy.App()

    @app.ws("/shared", data=lambda: {"count": 0})
    class Counter:
        def __init__(self) -> None:
            made.append(self)

        def message(self, ws: harpy.WebSocket[dict[str, int]], data: str | bytes) -> None:
            seen.append(self)
            ws.data["count"] += 1  # per-connection state lives in ws.data
            ws.send(str(ws.data["count"]))

    async with (
        serve_app(app) as url,
        connect(f"{url}/shared") as a,
        connect(f"{url}/shared") as b,
    ):
        for client in (a, b, a):
            await client.send("x")
        assert await asyncio.wait_for(a.recv(), TIMEOUT) == "1"
        assert await asyncio.wait_for(b.recv(), TIMEOUT) == "1"
        assert await asyncio.wait_for(a.recv(), TIMEOUT) == "2"
    assert len(made) == 1
    assert seen == [made[0]] * 3


def _connect_then_reset(port: int) -> None:
    """A raw client: upgrade, then drop the TCP connection with a reset (SO_LINGER 0)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(
            b"GET /r HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            assert chunk, "closed during the handshake"
            head += chunk
        assert head.startswith(b"HTTP/1.1 101")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def test_a_failed_transport_reaches_error_before_close() -> None:
    events: list[tuple[str, Any]] = []
    opened = asyncio.Event()
    closed = asyncio.Event()
    app = harpy.App()

    def close(ws: harpy.WebSocket[Any], code: int, reason: str) -> None:
        events.append(("close", code))
        closed.set()

    app.ws(
        "/r",
        {
            "open": lambda ws: opened.set(),
            "error": lambda ws, exc: events.append(("error", type(exc))),
            "close": close,
        },
    )
    async with serve(app):
        assert app.port is not None
        await asyncio.to_thread(_connect_then_reset, app.port)
        await asyncio.wait_for(closed.wait(), TIMEOUT)
    assert opened.is_set()
    assert events == [("error", ConnectionResetError), ("close", 1006)]


async def test_a_send_after_close_returns_0_and_is_no_error() -> None:
    errors: list[BaseException] = []
    statuses: list[int] = []
    closed = asyncio.Event()
    app = harpy.App()

    def close(ws: harpy.WebSocket[Any], code: int, reason: str) -> None:
        statuses.append(ws.send("too late"))
        closed.set()

    app.ws("/c", {"close": close, "error": lambda ws, exc: errors.append(exc)})
    async with serve(app) as url:
        async with connect(f"{url}/c"):
            pass
        await asyncio.wait_for(closed.wait(), TIMEOUT)
    assert statuses == [0]
    assert errors == []


async def test_an_awaited_send_is_logged_with_the_hint(
    serve_app: ServeApp, caplog: pytest.LogCaptureFixture
) -> None:
    app = harpy.App()

    @app.ws("/echo")
    class Echo:
        async def message(self, ws: harpy.WebSocket[Any], data: str | bytes) -> None:
            await ws.send(data)  # type: ignore[misc]  # the websockets habit

    async with serve_app(app) as url, connect(f"{url}/echo") as client:
        await client.send("hi")
        assert await asyncio.wait_for(client.recv(), TIMEOUT) == "hi"  # sent before the await
        await asyncio.wait_for(client.wait_closed(), TIMEOUT)
        assert client.close_code == 1011
    [record] = [r for r in caplog.records if r.getMessage().startswith("harpy: handler of route")]
    assert record.exc_info is not None
    logged = logging.Formatter().formatException(record.exc_info)
    assert "ws.send() (and send_text" in logged and "is not a coroutine" in logged
    assert "drain(ws) handler" in logged


async def test_an_error_handler_gets_the_awaited_send_hint_too() -> None:
    notes: list[list[str]] = []
    app = harpy.App()

    async def message(ws: harpy.WebSocket[Any], data: str | bytes) -> None:
        await ws.send_json({"echo": data})  # type: ignore[misc]

    def error(ws: harpy.WebSocket[Any], exc: BaseException) -> None:
        notes.append(getattr(exc, "__notes__", []))
        ws.close(4000, "bad handler")

    app.ws("/echo", {"message": message, "error": error})
    async with serve(app) as url, connect(f"{url}/echo") as client:
        await client.send("hi")
        await asyncio.wait_for(client.wait_closed(), TIMEOUT)
        assert client.close_code == 4000
    assert len(notes) == 1 and "is not a coroutine" in notes[0][0]

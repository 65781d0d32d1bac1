"""harpy.asgi.ASGIApp under a real uvicorn server, with real websockets clients.

What the adapter shares with the native server (handler order, async handlers, errors, the
connection object) is tested on both through the ``serve_app`` fixture
(tests/integration/test_handlers.py); here is what is the adapter's own: the handshake's answers
as ASGI events, lifespan, fallback, root_path, HTTP, limits and backpressure through the channel.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest
import uvicorn
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

import harpy
from harpy.asgi import ASGIApp
from tests.helpers import RawClient, serve, uvicorn_serve
from tests.timing import TIMEOUT, eventually, scaled


async def http_get(url: str, path: str) -> tuple[int, bytes]:
    client = await RawClient.connect(url)
    try:
        status, headers, _ = await client.request(
            f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode()
        )
        body = await client.reader.readexactly(int(headers.get("content-length", "0")))
        return status, body
    finally:
        await client.close()


async def test_subprotocols() -> None:
    app = harpy.App()

    def open_(ws: harpy.WebSocket[Any]) -> None:
        ws.send(ws.subprotocol or "-")

    app.ws("/p", {"open": open_}, subprotocols=["chat.v2", "chat.v1"])
    app.ws("/strict", {"open": open_}, subprotocols=["x"], require_subprotocol=True)
    async with uvicorn_serve(ASGIApp(app)) as url:
        async with connect(f"{url}/p", subprotocols=["chat.v1", "chat.v2"]) as client:  # type: ignore[list-item]
            assert client.subprotocol == "chat.v1"
            assert await client.recv() == "chat.v1"
        async with connect(f"{url}/p") as client:
            assert client.subprotocol is None
            assert await client.recv() == "-"
        with pytest.raises(InvalidStatus) as info:
            await connect(f"{url}/strict", subprotocols=["y"])  # type: ignore[list-item]
        assert info.value.response.status_code == 400


async def test_authenticate_and_origins() -> None:
    app = harpy.App()

    async def hook(request: harpy.UpgradeRequest) -> Any:
        await asyncio.sleep(0.01)  # a hook that really suspends: the case under test
        token = request.headers.get("authorization")
        if token == "Bearer good":
            return {"success": True, "data": {"user": "ann"}}
        if token == "Bearer banned":
            raise harpy.Reject(403, "Banned")
        if token == "Bearer deny":
            return {"success": False, "code": 4001, "reason": "nope"}
        return False

    opened: list[Any] = []

    def open_(ws: harpy.WebSocket[Any]) -> None:
        opened.append(ws.auth)
        ws.send(json.dumps(ws.auth))

    app.ws("/auth", {"open": open_}, authenticate=hook)
    app.ws("/origin", {"open": open_}, allowed_origins=["https://good.example"])
    app.ws("/header", {"open": open_}, authenticate="x-api-key")
    async with uvicorn_serve(ASGIApp(app)) as url:
        headers = {"Authorization": "Bearer good"}
        async with connect(f"{url}/auth", additional_headers=headers) as client:
            assert json.loads(await client.recv()) == {"user": "ann"}
        for token, status, body in (
            ("Bearer bad", 401, b"Unauthorized\n"),
            ("Bearer banned", 403, b"Banned\n"),
        ):
            with pytest.raises(InvalidStatus) as info:
                await connect(f"{url}/auth", additional_headers={"Authorization": token})
            assert info.value.response.status_code == status
            assert info.value.response.body == body
        async with connect(f"{url}/auth", additional_headers={"Authorization": "Bearer deny"}) as c:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(c.recv(), TIMEOUT)
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "nope")
        with pytest.raises(InvalidStatus) as info:
            await connect(f"{url}/origin", origin="https://evil.example")  # type: ignore[arg-type]
        assert info.value.response.status_code == 403
        async with connect(f"{url}/origin", origin="https://good.example") as client:  # type: ignore[arg-type]
            assert await client.recv() == "null"
        with pytest.raises(InvalidStatus) as info:
            await connect(f"{url}/header")
        assert info.value.response.status_code == 401
        async with connect(f"{url}/header", additional_headers={"X-Api-Key": "k1"}) as client:
            assert json.loads(await client.recv()) == "k1"
    assert opened == [{"user": "ann"}, None, "k1"]


async def test_unknown_path_is_404() -> None:
    app = harpy.App()
    app.ws("/known", {})
    async with uvicorn_serve(ASGIApp(app)) as url:
        with pytest.raises(InvalidStatus) as info:
            await connect(f"{url}/unknown")
        assert info.value.response.status_code == 404


async def test_publish_and_broadcast_across_native_and_asgi() -> None:
    app = harpy.App()

    def open_(ws: harpy.WebSocket[Any]) -> None:
        ws.subscribe("news")
        ws.join("lobby")
        ws.send("ready")

    def message(ws: harpy.WebSocket[Any], message: str | bytes) -> None:
        ws.publish("news", f"{ws.query.get('who')}: {message}")

    app.ws("/chat", {"open": open_, "message": message})
    async with (
        serve(app) as native_url,
        uvicorn_serve(ASGIApp(app, lifespan=False)) as asgi_url,
        connect(f"{native_url}/chat?who=native") as native,
        connect(f"{asgi_url}/chat?who=asgi") as asgi,
    ):
        assert await native.recv() == "ready"
        assert await asgi.recv() == "ready"
        assert app.subscriber_count("news") == 2
        assert len(app.connections) == 2
        await asgi.send("hi")
        assert await asyncio.wait_for(native.recv(), TIMEOUT) == "asgi: hi"
        await native.send("hello")
        assert await asyncio.wait_for(asgi.recv(), TIMEOUT) == "native: hello"
        assert app.publish("news", {"n": 1}) == 2
        assert app.broadcast(b"\x01", rooms=["lobby"]) == 2
        for client in (native, asgi):
            assert json.loads(await asyncio.wait_for(client.recv(), TIMEOUT)) == {"n": 1}
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == b"\x01"
        await asgi.close()
        await eventually(lambda: app.subscriber_count("news") == 1)
        assert app.room_members("lobby")[0].query == {"who": "native"}


async def test_lifespan_hooks_and_shutdown_closes_connections() -> None:
    events: list[str] = []
    app = harpy.App()
    app.on_startup(lambda: events.append("startup"))

    async def shutdown() -> None:
        events.append("shutdown")

    app.on_shutdown(shutdown)
    closed = asyncio.Event()

    def close(ws: harpy.WebSocket[Any], code: int, reason: str) -> None:
        events.append(f"close {code}")
        closed.set()

    app.ws("/x", {"close": close, "open": lambda ws: ws.send("hi")})
    asgi = ASGIApp(app)
    async with uvicorn_serve(asgi) as url:
        assert events == ["startup"]
        client = await connect(f"{url}/x")
        assert await client.recv() == "hi"
        assert asgi.connections == 1
    await asyncio.wait_for(closed.wait(), TIMEOUT)
    assert events[0] == "startup"
    assert events[-1] == "shutdown"
    assert events[1] == "close 1012"  # the ASGI server closed it first, as docs/asgi.md says
    assert asgi.connections == 0
    await asyncio.wait_for(client.wait_closed(), TIMEOUT)
    assert client.close_code == 1012


async def test_startup_failure_is_reported() -> None:
    app = harpy.App()

    def broken() -> None:
        raise RuntimeError("no database")

    app.on_startup(broken)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        ASGIApp(app), loop="none", lifespan="on", ws="websockets-sansio", log_level="critical"
    )
    server = uvicorn.Server(config)
    with pytest.raises(SystemExit):
        await server.serve(sockets=[sock])
    sock.close()


async def test_http_404_and_fallback() -> None:
    app = harpy.App()
    app.ws("/ws", {"open": lambda ws: ws.send("harpy")})
    async with uvicorn_serve(ASGIApp(app)) as url:
        assert await http_get(url, "/") == (404, b"Not Found\n")

    lifespan_events: list[str] = []

    async def fallback(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            for _ in range(2):  # lifespan.startup, then lifespan.shutdown
                message = await receive()
                lifespan_events.append(message["type"])
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        elif scope["type"] == "http":
            body = f"page {scope['path']}".encode()
            length = str(len(body)).encode()
            await send(
                {"type": "http.response.start", "status": 200,
                 "headers": [(b"content-length", length)]}
            )
            await send({"type": "http.response.body", "body": body})
        else:
            assert (await receive())["type"] == "websocket.connect"
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.send", "text": "fallback"})
            await send({"type": "websocket.close", "code": 1000})

    async with uvicorn_serve(ASGIApp(app, fallback=fallback)) as url:
        assert await http_get(url, "/about") == (200, b"page /about")
        async with connect(f"{url}/ws") as client:
            assert await client.recv() == "harpy"
        async with connect(f"{url}/other") as client:
            assert await client.recv() == "fallback"
        assert lifespan_events == ["lifespan.startup"]
    assert lifespan_events == ["lifespan.startup", "lifespan.shutdown"]


async def test_mounted_under_root_path() -> None:
    app = harpy.App()

    def open_(ws: harpy.WebSocket[Any]) -> None:
        ws.send(f"{ws.path} {ws.params}")

    app.ws("/rooms/:room", {"open": open_})
    inner = ASGIApp(app)

    async def mount(scope: Any, receive: Any, send: Any) -> None:
        # As Starlette's Mount("/live", app=...): root_path grows, path stays whole.
        if scope["type"] == "websocket" and scope["path"].startswith("/live/"):
            scope = dict(scope, root_path=scope.get("root_path", "") + "/live")
        await inner(scope, receive, send)

    async with uvicorn_serve(mount) as url, connect(f"{url}/live/rooms/r%2F1") as client:
        assert await client.recv() == "/rooms/r%2F1 {'room': 'r/1'}"


async def test_handler_error_message_size_and_rate_limit() -> None:
    app = harpy.App()
    errors: list[str] = []

    def message(ws: harpy.WebSocket[Any], message: str | bytes) -> None:
        if message == "boom":
            raise ValueError("boom")
        ws.send(message)

    def error(ws: harpy.WebSocket[Any], exc: BaseException) -> None:
        errors.append(type(exc).__name__)
        if isinstance(exc, ValueError):
            ws.close(1011, "Internal error")

    app.ws("/e", {"message": message, "error": error}, max_message_size=100)
    app.ws("/r", {"message": message}, rate_limit=1, rate_burst=2)
    async with uvicorn_serve(ASGIApp(app)) as url:
        async with connect(f"{url}/e") as client:
            await client.send("ok")
            assert await client.recv() == "ok"
            await client.send("boom")
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(client.recv(), TIMEOUT)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1011
        async with connect(f"{url}/e") as client:
            await client.send("é" * 60)  # 120 bytes of UTF-8
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(client.recv(), TIMEOUT)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1009
        async with connect(f"{url}/r") as client:
            for i in range(3):
                await client.send(str(i))
            assert await client.recv() == "0"
            assert await client.recv() == "1"
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(client.recv(), TIMEOUT)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1008
    assert errors == ["ValueError", "PayloadTooBig"]


async def test_backpressure_and_drain() -> None:
    app = harpy.App()
    statuses: list[int] = []
    drained = asyncio.Event()

    def message(ws: harpy.WebSocket[Any], message: str | bytes) -> None:
        for _ in range(20):
            statuses.append(ws.send(b"x" * 4096))

    app.ws(
        "/b",
        {"message": message, "drain": lambda ws: drained.set()},
        write_high_water=16 * 1024,
        write_low_water=4 * 1024,
    )
    async with uvicorn_serve(ASGIApp(app)) as url, connect(f"{url}/b") as client:
        await client.send("go")
        for _ in range(20):
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == b"x" * 4096
        await asyncio.wait_for(drained.wait(), TIMEOUT)
    assert statuses[0] == 4 + 4096
    assert -1 in statuses
    assert 0 not in statuses


async def test_first_message_auth_and_terminate() -> None:
    class Token(harpy.FirstMessageAuth):
        timeout = scaled(5.0)  # how long the client may take to send it: a bound

        def verify(self, message: str | bytes) -> Any:
            if message != "secret":
                raise harpy.Deny(4003, "bad token")
            return "user-1"

    closes: list[int] = []
    app = harpy.App()

    def message(ws: harpy.WebSocket[Any], message: str | bytes) -> None:
        if message == "kill":
            ws.terminate()
        else:
            ws.send(f"{ws.auth}: {message}")

    app.ws(
        "/f",
        {"open": lambda ws: ws.send("welcome"), "message": message,
         "close": lambda ws, code, reason: closes.append(code)},
        authenticate=Token(),
    )
    async with uvicorn_serve(ASGIApp(app)) as url:
        async with connect(f"{url}/f") as client:
            await client.send("secret")
            await client.send("hi")
            assert await client.recv() == "welcome"
            assert await client.recv() == "user-1: hi"
            await client.send("kill")
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(client.recv(), TIMEOUT)
        async with connect(f"{url}/f") as client:
            await client.send("wrong")
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(client.recv(), TIMEOUT)
            assert info.value.rcvd is not None and info.value.rcvd.code == 4003
        await eventually(lambda: closes)
    assert closes == [1006]


async def test_limits_handshake_timeout_and_abrupt_disconnect() -> None:
    closes: list[int] = []

    async def slow(request: harpy.UpgradeRequest) -> bool:
        await asyncio.sleep(3)  # outlasts handshake_timeout (the case under test)
        return True

    app = harpy.App(max_connections=1, handshake_timeout=0.3)
    app.ws("/one", {"open": lambda ws: ws.send("in"),
                    "close": lambda ws, code, reason: closes.append(code)})
    app.ws("/slow", {}, authenticate=slow)
    async with uvicorn_serve(ASGIApp(app)) as url:
        first = await connect(f"{url}/one")
        assert await first.recv() == "in"
        with pytest.raises(InvalidStatus) as info:
            await connect(f"{url}/one")
        assert info.value.response.status_code == 503
        assert first.transport is not None
        first.transport.abort()  # no closing handshake
        await eventually(lambda: closes)
        assert closes == [1005]  # uvicorn reports a lost connection so (docs/asgi.md)
        async with connect(f"{url}/one") as again:  # the place was given back
            assert await again.recv() == "in"
        with pytest.raises(InvalidStatus) as info:
            await connect(f"{url}/slow")
        assert info.value.response.status_code == 408


async def test_without_server_extensions_or_upgrade_headers() -> None:
    """An ASGI server without websocket.http.response, passing no handshake headers (HTTP/2)."""
    app = harpy.App()
    app.ws("/echo", {"message": lambda ws, m: ws.send(m)}, subprotocols=["v1"])
    app.ws("/private", {}, authenticate=True)
    asgi = ASGIApp(app)

    async def drive(path: str, incoming: list[dict[str, Any]]) -> list[dict[str, Any]]:
        scope = {
            "type": "websocket",
            "path": path,
            "query_string": b"",
            "headers": [(b"host", b"h"), (b"sec-websocket-protocol", b"v1")],
            "client": ("10.0.0.1", 5000),
            "scheme": "wss",
            "subprotocols": ["v1"],
        }
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for message in incoming:
            inbox.put_nowait(message)
        sent: list[dict[str, Any]] = []

        async def send(message: Any) -> None:
            sent.append(dict(message))
            if message["type"] == "websocket.send":
                inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})

        await asyncio.wait_for(asgi(scope, inbox.get, send), TIMEOUT)
        return sent

    connect_event = {"type": "websocket.connect"}
    sent = await drive("/private", [connect_event])
    assert sent == [{"type": "websocket.close", "code": 1000}]  # the server answers 403
    sent = await drive("/nowhere", [connect_event])
    assert sent == [{"type": "websocket.close", "code": 1000}]
    sent = await drive("/echo", [connect_event, {"type": "websocket.receive", "text": "hi"}])
    assert sent == [
        {"type": "websocket.accept", "subprotocol": "v1", "headers": []},
        {"type": "websocket.send", "text": "hi"},
    ]
    assert asgi.connections == 0

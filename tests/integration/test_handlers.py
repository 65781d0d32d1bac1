"""The five handlers through a real server: order, async, errors, the connection object.

The tests taking ``serve_app`` run twice: on the native server and under uvicorn through the
ASGI adapter, which promises the same handler semantics.  The others are native-only, each saying
why.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import harpy
from tests.helpers import RawClient, ServeApp, serve
from tests.timing import TIMEOUT, eventually, scaled


async def test_sync_and_async_handlers_run_in_order(serve_app: ServeApp) -> None:
    messages: list[str | bytes] = ["0", "1", "2", "3", "4", b"\x00\xff"]
    events: list[str] = []
    closed = asyncio.Event()
    app = harpy.App()

    @app.ws("/order")
    class Order:
        async def open(self, ws: harpy.WebSocket[Any]) -> None:
            events.append("open-start")
            # A slow open (the behaviour under test): the messages arrive before it finishes,
            # and must wait for it.
            await asyncio.sleep(0.05)
            events.append("open-end")

        async def message(self, ws: harpy.WebSocket[Any], message: str | bytes) -> None:
            events.append(f"msg-start {message!r}")
            if message == "1":
                await asyncio.sleep(0.02)  # a slow one must not be overtaken by the next
            events.append(f"msg-end {message!r}")
            ws.send(message)

        def close(self, ws: harpy.WebSocket[Any], code: int, reason: str) -> None:
            events.append(f"close {code} {reason}")
            closed.set()

    async with serve_app(app) as url, connect(f"{url}/order") as client:
        for message in messages:
            await client.send(message)  # sent before open() finished
        got = [await asyncio.wait_for(client.recv(), TIMEOUT) for _ in messages]
        assert got == messages
        await client.close(4000, "bye")
        await asyncio.wait_for(closed.wait(), TIMEOUT)
    assert events[:2] == ["open-start", "open-end"]
    body = events[2:-1]
    assert body == [e for m in messages for e in (f"msg-start {m!r}", f"msg-end {m!r}")]
    assert events[-1] == "close 4000 bye"
    assert events.count("close 4000 bye") == 1


async def test_mapping_and_object_handlers_and_typed_data(serve_app: ServeApp) -> None:
    @dataclass
    class Counter:
        n: int = 0
        seen: list[str] = field(default_factory=list)

    def message(ws: harpy.WebSocket[Counter], message: str | bytes) -> None:
        ws.data.n += 1
        ws.send(f"{ws.data.n}")

    app = harpy.App()
    app.ws("/map", {"message": message}, data=Counter)

    class Obj:
        def message(self, ws: harpy.WebSocket[dict[str, Any]], message: str | bytes) -> None:
            ws.send_json({"url": ws.data["url"], "cookies": ws.data["cookies"]})

    app.ws("/obj", Obj())
    async with serve_app(app) as url:
        async with connect(f"{url}/map") as a, connect(f"{url}/map") as b:
            await a.send("x")
            await a.send("x")
            await b.send("x")
            replies = [await asyncio.wait_for(c.recv(), TIMEOUT) for c in (a, a, b)]
            assert replies == ["1", "2", "1"]
        async with connect(
            f"{url}/obj?q=1", additional_headers={"Cookie": "sid=a=b"}
        ) as c:
            await c.send("?")
            reply = json.loads(await asyncio.wait_for(c.recv(), TIMEOUT))
            assert reply["url"].endswith("/obj?q=1")
            assert reply["cookies"] == {"sid": "a=b"}


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_exceptions_in_every_handler_never_kill_the_server(
    mode: str, serve_app: ServeApp, caplog: pytest.LogCaptureFixture
) -> None:
    calls: dict[str, int] = {"open": 0, "message": 0, "close": 0}

    def boom(name: str) -> Any:
        def sync(ws: harpy.WebSocket[Any], *args: Any) -> None:
            calls[name] += 1
            raise RuntimeError(f"secret detail from {name}")

        async def coro(ws: harpy.WebSocket[Any], *args: Any) -> None:
            calls[name] += 1
            await asyncio.sleep(0)  # a coroutine that suspends once, then fails: under test
            raise RuntimeError(f"secret detail from {name}")

        return sync if mode == "sync" else coro

    app = harpy.App()
    app.ws("/open", {"open": boom("open")})
    app.ws("/message", {"message": boom("message")})
    app.ws("/close", {"close": boom("close")})
    app.ws("/echo", {"message": lambda ws, m: ws.send(m)})
    caplog.set_level(logging.ERROR, "harpy")
    async with serve_app(app) as url:
        for _ in range(10):
            async with connect(f"{url}/open") as c:
                with pytest.raises(ConnectionClosed) as info:
                    await asyncio.wait_for(c.recv(), TIMEOUT)
                assert info.value.rcvd is not None
                assert info.value.rcvd.code == 1011
                assert "secret" not in info.value.rcvd.reason
            async with connect(f"{url}/message") as c:
                await c.send("hi")
                with pytest.raises(ConnectionClosed) as info:
                    await asyncio.wait_for(c.recv(), TIMEOUT)
                assert info.value.rcvd is not None and info.value.rcvd.code == 1011
            async with connect(f"{url}/close") as c:
                await c.send("hi")
        async with connect(f"{url}/echo") as c:
            await c.send("still here")
            assert await asyncio.wait_for(c.recv(), TIMEOUT) == "still here"
        # The last close handlers run after the client left.
        await eventually(lambda: calls["close"] >= 10)
    assert calls == {"open": 10, "message": 10, "close": 10}
    assert "secret detail from open" in caplog.text  # tracebacks stay on the server side


async def test_error_handler_receives_the_exception_and_decides(serve_app: ServeApp) -> None:
    seen: list[BaseException] = []

    def message(ws: harpy.WebSocket[Any], message: str | bytes) -> None:
        if message == "bad":
            raise ValueError("bad input")
        ws.send(message)

    def error(ws: harpy.WebSocket[Any], exc: BaseException) -> None:
        seen.append(exc)
        ws.send(f"error: {exc}")

    app = harpy.App()
    app.ws("/e", {"message": message, "error": error})
    async with serve_app(app) as url, connect(f"{url}/e") as c:
        await c.send("bad")
        assert await asyncio.wait_for(c.recv(), TIMEOUT) == "error: bad input"
        await c.send("good")  # the connection stays open: the error handler decided
        assert await asyncio.wait_for(c.recv(), TIMEOUT) == "good"
    assert isinstance(seen[0], ValueError)


async def test_protocol_error_reaches_the_error_handler() -> None:
    # Native only: under ASGI the server parses the frames, so no malformed frame reaches harpy.
    seen: list[BaseException] = []
    app = harpy.App()
    app.ws("/p", {"error": lambda ws, exc: seen.append(exc)})
    async with serve(app) as url:
        raw = await RawClient.connect(url)
        assert await raw.upgrade("/p") == 101
        raw.send_frame(0x1, b"\xff\xfe")
        assert await raw.read_close() == 1007
        await raw.close()
    await eventually(lambda: seen)
    assert isinstance(seen[0], harpy.ProtocolError) and seen[0].code == 1007


async def test_connection_object_api(serve_app: ServeApp) -> None:
    results: dict[str, Any] = {}
    closes: list[tuple[int, str]] = []
    closed = asyncio.Event()
    app = harpy.App()

    def open_(ws: harpy.WebSocket[Any]) -> None:
        results["state"] = int(ws.ready_state)
        results["id"] = ws.id
        results["send_text"] = ws.send("abc")
        results["send_bytes"] = ws.send(b"\x00\x01")
        results["send_long"] = ws.send(b"x" * 200)  # a 16-bit length in the frame head
        results["send_json"] = ws.send_json({"a": [1, 2]})
        results["ping"] = ws.ping(b"p")
        for bad in (1005, 1006, 999, 5000, 2000):
            with pytest.raises(harpy.ConfigurationError):
                ws.close(bad)
        with pytest.raises(harpy.ConfigurationError):
            ws.close(1000, "x" * 124)
        with pytest.raises(harpy.ConfigurationError):
            ws.ping(b"x" * 126)
        with pytest.raises(TypeError):
            ws.send(object())  # not str, bytes or JSON
        results["buffered"] = ws.buffered_amount
        ws.close(4001, "done")
        results["after_close"] = ws.send("late")
        results["state_after"] = int(ws.ready_state)

    def close(ws: harpy.WebSocket[Any], code: int, reason: str) -> None:
        closes.append((code, reason))
        closed.set()

    app.ws("/api", {"open": open_, "close": close})
    async with serve_app(app) as url, connect(f"{url}/api") as c:
        assert await asyncio.wait_for(c.recv(), TIMEOUT) == "abc"
        assert await asyncio.wait_for(c.recv(), TIMEOUT) == b"\x00\x01"
        assert await asyncio.wait_for(c.recv(), TIMEOUT) == b"x" * 200
        assert json.loads(await asyncio.wait_for(c.recv(), TIMEOUT)) == {"a": [1, 2]}
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(c.recv(), TIMEOUT)
        assert info.value.rcvd is not None
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (4001, "done")
        await asyncio.wait_for(closed.wait(), TIMEOUT)
    assert results["state"] == 1
    assert results["send_text"] == 5 and results["send_bytes"] == 4
    assert results["send_long"] == 4 + 200 and results["send_json"] == 2 + len('{"a":[1,2]}')
    assert results["after_close"] == 0 and results["state_after"] == 2
    assert results["buffered"] >= 0 and results["id"]
    assert closes == [(4001, "done")]


async def test_request_facts(serve_app: ServeApp) -> None:
    seen: dict[str, Any] = {}
    app = harpy.App()

    def open_(ws: harpy.WebSocket[Any]) -> None:
        seen.update(
            params=ws.params,
            query=ws.query,
            cookies=ws.cookies,
            header=ws.headers.get("x-test"),
            remote=ws.remote_address,
            path=ws.path,
            url=ws.data["url"],
            route=ws.route,
            state=ws.ready_state,
        )
        ws.send("ok")

    app.ws("/rooms/:room/users/{user}", {"open": open_})
    async with serve_app(app) as url, connect(
        f"{url}/rooms/a%20b/users/7?x=1&y=2&x=3",
        additional_headers={"Cookie": "sid=abc; theme=dark", "X-Test": "yes"},
    ) as client:
        assert await asyncio.wait_for(client.recv(), TIMEOUT) == "ok"
    assert seen["params"] == {"room": "a b", "user": "7"}
    assert seen["query"] == {"x": "1", "y": "2"}
    assert seen["cookies"] == {"sid": "abc", "theme": "dark"}
    assert seen["header"] == "yes"
    assert seen["remote"] == "127.0.0.1"
    assert seen["path"] == "/rooms/a%20b/users/7"
    assert seen["url"].startswith("ws://127.0.0.1:")
    assert seen["url"].endswith("/rooms/a%20b/users/7?x=1&y=2&x=3")
    assert seen["route"] == "/rooms/:room/users/{user}"
    assert seen["state"] == harpy.ReadyState.OPEN


async def test_terminate_drops_the_connection(serve_app: ServeApp) -> None:
    closed: list[int] = []
    app = harpy.App()
    app.ws(
        "/t",
        {"message": lambda ws, m: ws.terminate(), "close": lambda ws, c, r: closed.append(c)},
    )
    async with serve_app(app) as url, connect(f"{url}/t") as c:
        await c.send("x")
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(c.recv(), TIMEOUT)
        await eventually(lambda: closed)
    assert closed == [1006]


async def test_app_connections_registry(serve_app: ServeApp) -> None:
    app = harpy.App()
    app.ws("/a", {"message": lambda ws, m: ws.send(str(len(app.connections)))})
    app.ws("/b", {"message": lambda ws, m: ws.send(str(app.connections.count("/b")))})
    async with serve_app(app) as url:
        async with connect(f"{url}/a") as a1, connect(f"{url}/a"), connect(f"{url}/b") as b1:
            await a1.send("?")
            assert await asyncio.wait_for(a1.recv(), TIMEOUT) == "3"
            await b1.send("?")
            assert await asyncio.wait_for(b1.recv(), TIMEOUT) == "1"
            assert len(app.connections.route("/a")) == 2
            assert all(ws.route == "/a" for ws in app.connections.route("/a"))
        await eventually(lambda: len(app.connections) == 0)


async def test_graceful_shutdown_closes_with_1001() -> None:
    # Native only: App.listen / App.shutdown are the native server's; under ASGI the server
    # closes the connections at lifespan shutdown (tests/integration/test_asgi.py).
    app = harpy.App()
    app.ws("/s", {"message": lambda ws, m: None})
    hooks: list[str] = []
    app.on_startup(lambda: hooks.append("start"))

    @app.on_shutdown
    async def stop() -> None:
        hooks.append("stop")

    await app.listen("127.0.0.1", 0)
    c = await connect(f"{app.url}/s")
    await app.shutdown(timeout=scaled(2.0))
    with pytest.raises(ConnectionClosed) as info:
        await asyncio.wait_for(c.recv(), TIMEOUT)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1001
    assert hooks == ["start", "stop"]

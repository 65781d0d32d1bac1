"""The opening handshake through a real server: refusals, limits, timeouts, routes, facts."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Callable
from typing import Any

import pytest
from websockets.asyncio.client import connect

import harpy
from tests.helpers import RawClient, serve
from tests.timing import TIMEOUT, scaled

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
CLOSE_TIMEOUT = scaled(1.0)


def upgrade_head(
    path: str = "/echo",
    *,
    method: str = "GET",
    set_headers: dict[str, str] | None = None,
    drop: tuple[str, ...] = (),
    extra: str = "",
) -> bytes:
    """A complete upgrade request head, with some headers replaced, dropped or added."""
    fields = {
        "Host": "test",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": KEY,
        "Sec-WebSocket-Version": "13",
    }
    fields.update(set_headers or {})
    lines = [f"{method} {path} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in fields.items() if name not in drop]
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode("latin-1")


async def http(url: str, head: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send a raw request; return (status, headers, everything the server sent up to EOF)."""
    client = await RawClient.connect(url)
    try:
        status, headers, first = await client.request(head)
        rest = await asyncio.wait_for(client.reader.read(), TIMEOUT)  # to EOF: the server closes
    finally:
        await client.close()
    return status, headers, first + rest


def echo_app(**options: Any) -> harpy.App:
    app = harpy.App(**options)
    app.ws("/echo", {"message": lambda ws, message: ws.send(message)})
    return app


async def assert_echo(url: str, path: str = "/echo") -> None:
    async with connect(url + path, open_timeout=TIMEOUT, close_timeout=CLOSE_TIMEOUT) as ws:
        await ws.send("ping?")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "ping?"


async def first_json(url: str, **kwargs: Any) -> Any:
    """Connect, return the JSON document the server's ``open`` handler sends, close."""
    async with connect(url, open_timeout=TIMEOUT, close_timeout=CLOSE_TIMEOUT, **kwargs) as ws:
        return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))


def describe(ws: harpy.WebSocket[Any]) -> None:
    """An ``open`` handler that reports what the connection knows about its request."""
    data = ws.data
    ws.send_json(
        {
            "route": ws.route,
            "params": ws.params,
            "path": ws.path,
            "query": ws.query,
            "url": ws.url,
            "remote_address": ws.remote_address,
            "cookies": ws.cookies,
            "data_url": data.get("url") if isinstance(data, dict) else None,
            "data_cookies": data.get("cookies") if isinstance(data, dict) else None,
        }
    )


# --- refusals ---------------------------------------------------------------------------------


async def test_plain_get_to_websocket_route_is_426() -> None:
    async with serve(echo_app()) as url:
        status, headers, _ = await http(url, b"GET /echo HTTP/1.1\r\nHost: test\r\n\r\n")
        assert status == 426
        assert headers["upgrade"].lower() == "websocket"
        await assert_echo(url)


async def test_unknown_path_is_404_and_never_upgraded() -> None:
    async with serve(echo_app()) as url:
        status, _, everything = await http(url, upgrade_head("/nope"))
        assert status == 404
        assert everything.startswith(b"HTTP/1.1 404 ")
        assert b"101" not in everything
        assert b"Sec-WebSocket-Accept" not in everything
        await assert_echo(url)


async def test_post_with_upgrade_headers_is_405() -> None:
    async with serve(echo_app()) as url:
        status, _, _ = await http(url, upgrade_head(method="POST"))
        assert status == 405


@pytest.mark.parametrize(
    "request_line",
    [
        b"GET /echo",
        b"GET /echo HTTP/1.1 extra",
        b"GET  /echo HTTP/1.1",
        b"GET echo HTTP/1.1",
        b"G(T /echo HTTP/1.1",
        b"GET /echo HTTP/2.0",
        b"GET /echo FTP/1.1",
    ],
)
async def test_malformed_request_line_is_400(request_line: bytes) -> None:
    head = upgrade_head()
    head = request_line + head[head.index(b"\r\n") :]
    async with serve(echo_app()) as url:
        status, _, _ = await http(url, head)
        assert status == 400
        await assert_echo(url)


@pytest.mark.parametrize(
    "line", ["NoColonHere", "Bad Name: value", ": no name", " folded: value", "X(y): z"]
)
async def test_bad_header_line_is_400(line: str) -> None:
    async with serve(echo_app()) as url:
        status, _, _ = await http(url, upgrade_head(extra=line + "\r\n"))
        assert status == 400


@pytest.mark.parametrize(
    "change",
    [{"drop": ("Connection",)}, {"set_headers": {"Connection": "keep-alive"}}],
    ids=["missing", "keep-alive"],
)
async def test_missing_connection_upgrade_is_400(change: dict[str, Any]) -> None:
    async with serve(echo_app()) as url:
        status, _, _ = await http(url, upgrade_head(**change))
        assert status == 400


@pytest.mark.parametrize(
    "change",
    [
        {"drop": ("Sec-WebSocket-Key",)},
        {"set_headers": {"Sec-WebSocket-Key": "not base64!"}},
        {"set_headers": {"Sec-WebSocket-Key": "abc"}},
        {"set_headers": {"Sec-WebSocket-Key": "dG9vc2hvcnQ="}},  # 8 bytes, not 16
        {"set_headers": {"Sec-WebSocket-Key": ""}},
        {"extra": "Sec-WebSocket-Key: " + KEY + "\r\n"},  # repeated
    ],
    ids=["missing", "not-base64", "bad-padding", "short", "empty", "repeated"],
)
async def test_bad_or_missing_key_is_400(change: dict[str, Any]) -> None:
    async with serve(echo_app()) as url:
        status, _, _ = await http(url, upgrade_head(**change))
        assert status == 400


@pytest.mark.parametrize(
    "change",
    [{"set_headers": {"Sec-WebSocket-Version": "8"}}, {"drop": ("Sec-WebSocket-Version",)}],
    ids=["8", "missing"],
)
async def test_unsupported_version_is_426_naming_13(change: dict[str, Any]) -> None:
    async with serve(echo_app()) as url:
        status, headers, _ = await http(url, upgrade_head(**change))
        assert status == 426
        assert headers["sec-websocket-version"] == "13"


# --- limits and timeouts ----------------------------------------------------------------------


async def test_oversized_headers_are_431() -> None:
    async with serve(echo_app(max_header_size=1024)) as url:
        padding = "".join(f"X-Pad-{i}: {'a' * 100}\r\n" for i in range(40))  # about 4 KiB
        status, _, _ = await http(url, upgrade_head(extra=padding))
        assert status == 431
        await assert_echo(url)


async def test_oversized_headers_in_small_writes_are_431() -> None:
    async with serve(echo_app(max_header_size=1024)) as url:
        client = await RawClient.connect(url)
        try:
            response = asyncio.ensure_future(client.read_response())
            head = upgrade_head()
            head = head[:-2]  # no blank line: the head never ends
            head += "".join(f"X-Pad-{i}: {'a' * 100}\r\n" for i in range(40)).encode()
            for start in range(0, len(head), 256):
                if response.done():
                    break
                with contextlib.suppress(ConnectionError):
                    client.writer.write(head[start : start + 256])
                    await client.writer.drain()
                await asyncio.sleep(0.01)  # one write at a time: the small writes under test
            status, _, _ = await asyncio.wait_for(response, TIMEOUT)
            assert status == 431
            await asyncio.wait_for(client.reader.read(), TIMEOUT)  # then the server closes
        finally:
            await client.close()
        await assert_echo(url)


async def test_slowloris_gets_408_while_others_are_served() -> None:
    loop = asyncio.get_running_loop()
    async with serve(echo_app(handshake_timeout=0.5)) as url:
        slow = await RawClient.connect(url)
        try:
            started = loop.time()
            slow.writer.write(b"GET /ec")
            await slow.writer.drain()
            await assert_echo(url)  # served while the slow client hangs
            status, _, _ = await slow.read_response()
            assert status == 408
            await asyncio.wait_for(slow.reader.read(), scaled(2.0))  # then the server closes
            assert loop.time() - started < scaled(2.0)
        finally:
            await slow.close()
        await assert_echo(url)


# --- successful upgrades and routes -----------------------------------------------------------


async def test_good_upgrade_with_websockets() -> None:
    async with (
        serve(echo_app()) as url,
        connect(url + "/echo", open_timeout=TIMEOUT, close_timeout=CLOSE_TIMEOUT) as ws,
    ):
        for message in ("hello", b"\x00\x01binary", "é" * 1000):
            await ws.send(message)
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == message


ROUTE_PATTERNS = ("/a/*", "/a/:x", "/a/b")


@pytest.mark.parametrize("order", list(itertools.permutations(ROUTE_PATTERNS)), ids="|".join)
async def test_most_specific_route_wins_whatever_the_order(order: tuple[str, ...]) -> None:
    app = harpy.App()
    for pattern in order:
        app.ws(pattern, {"open": describe})
    async with serve(app) as url:
        got = await first_json(url + "/a/b")
        assert (got["route"], got["params"]) == ("/a/b", {})
        got = await first_json(url + "/a/c")
        assert (got["route"], got["params"]) == ("/a/:x", {"x": "c"})
        got = await first_json(url + "/a/c/d")
        assert (got["route"], got["params"]) == ("/a/*", {"*": "c/d"})
        got = await first_json(url + "/a/b/d")
        assert (got["route"], got["params"]) == ("/a/*", {"*": "b/d"})


async def test_brace_parameters_and_percent_decoding() -> None:
    app = harpy.App()
    app.ws("/rooms/{room}/users/{user}", {"open": describe})
    async with serve(app) as url:
        got = await first_json(url + "/rooms/lobby/users/J%C3%B6rg%20M")
        assert got["route"] == "/rooms/{room}/users/{user}"
        assert got["params"] == {"room": "lobby", "user": "Jörg M"}
        got = await first_json(url + "/rooms/a%2Fb/users/x")  # %2F stays inside the parameter
        assert got["params"] == {"room": "a/b", "user": "x"}
        assert got["path"] == "/rooms/a%2Fb/users/x"


async def test_query_string_in_query_and_data_url() -> None:
    app = harpy.App()
    app.ws("/q", {"open": describe})
    async with serve(app) as url:
        got = await first_json(url + "/q?x=1&y=two%20words&x=3&empty=")
        assert got["query"] == {"x": "1", "y": "two words", "empty": ""}
        assert got["path"] == "/q"
        assert got["url"].startswith("ws://")
        assert got["url"].endswith("/q?x=1&y=two%20words&x=3&empty=")
        assert got["data_url"] == got["url"]


async def test_cookie_values_with_equals_signs_stay_whole() -> None:
    app = harpy.App()
    app.ws("/c", {"open": describe})
    async with serve(app) as url:
        got = await first_json(
            url + "/c", additional_headers={"Cookie": "a=1; token=abc=def=="}
        )
        assert got["cookies"] == {"a": "1", "token": "abc=def=="}
        assert got["data_cookies"] == {"a": "1", "token": "abc=def=="}


async def test_request_facts_headers_address_path_url() -> None:
    seen: list[dict[str, Any]] = []

    def open_(ws: harpy.WebSocket[Any]) -> None:
        headers = ws.headers
        seen.append(
            {
                "lower": headers["x-custom-thing"],
                "upper": headers["X-CUSTOM-THING"],
                "mixed": headers.get("X-Custom-Thing"),
                "contains": "X-Custom-THING" in headers,
                "missing": headers.get("x-absent"),
                "remote": ws.remote_address,
                "path": ws.path,
                "url": ws.url,
            }
        )
        ws.send("ok")

    app = harpy.App()
    app.ws("/facts/:id", {"open": open_})
    async with (
        serve(app) as url,
        connect(
            url + "/facts/7?k=v",
            open_timeout=TIMEOUT,
            close_timeout=CLOSE_TIMEOUT,
            additional_headers={"X-Custom-Thing": "Value 1"},
        ) as ws,
    ):
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "ok"
    (facts,) = seen
    assert facts["lower"] == facts["upper"] == facts["mixed"] == "Value 1"
    assert facts["contains"] is True
    assert facts["missing"] is None
    assert facts["remote"] == "127.0.0.1"
    assert facts["path"] == "/facts/7"
    assert facts["url"].startswith("ws://")
    assert facts["url"] == url + "/facts/7?k=v"


async def test_router_mounted_under_prefix() -> None:
    router = harpy.Router()
    router.ws("/chat", {"open": describe})
    app = harpy.App()
    app.include(router, prefix="/api")
    async with serve(app) as url:
        got = await first_json(url + "/api/chat")
        assert got["route"] == "/api/chat"
        status, _, everything = await http(url, upgrade_head("/chat"))
        assert status == 404
        assert b"101" not in everything


# --- registration errors ----------------------------------------------------------------------


def handlers() -> dict[str, Callable[..., Any]]:
    return {"message": lambda ws, message: None}


def test_duplicate_pattern_is_route_error() -> None:
    app = harpy.App()
    app.ws("/chat", handlers())
    with pytest.raises(harpy.RouteError):
        app.ws("/chat", handlers())
    app.ws("/room/:id", handlers())
    with pytest.raises(harpy.RouteError):
        app.ws("/room/:other", handlers())  # same shape, only the name differs


def test_duplicate_pattern_through_router_is_route_error() -> None:
    router = harpy.Router()
    router.ws("/chat", handlers())
    app = harpy.App()
    app.ws("/api/chat", handlers())
    with pytest.raises(harpy.RouteError):
        app.include(router, prefix="/api")


@pytest.mark.parametrize("pattern", ["chat", "/a/*/b", "/a//b", "/a/x:y"])
def test_malformed_pattern_is_route_error(pattern: str) -> None:
    app = harpy.App()
    with pytest.raises(harpy.RouteError):
        app.ws(pattern, handlers())


def test_unknown_option_is_type_error() -> None:
    app = harpy.App()
    with pytest.raises(TypeError):
        app.ws("/chat", handlers(), max_mesage_size=10)


@pytest.mark.parametrize(
    "options",
    [{"max_message_size": -1}, {"idle_timeout": -0.5}, {"auto_broadcast": 1}],
)
def test_bad_option_value_is_configuration_error(options: dict[str, Any]) -> None:
    app = harpy.App()
    with pytest.raises(harpy.ConfigurationError):
        app.ws("/chat", handlers(), **options)


def test_unknown_handler_name_is_configuration_error() -> None:
    app = harpy.App()
    with pytest.raises(harpy.ConfigurationError):
        app.ws("/chat", {"onMessage": lambda ws, message: None})


# --- per-connection data ----------------------------------------------------------------------


class Session:
    def __init__(self) -> None:
        self.names: list[str] = []


async def test_data_class_gives_each_connection_a_fresh_instance() -> None:
    seen: list[Session] = []

    def open_(ws: harpy.WebSocket[Session]) -> None:
        ws.data.names.append(ws.params["name"])
        seen.append(ws.data)
        ws.send_json(ws.data.names)

    app = harpy.App()
    app.ws("/s/:name", {"open": open_}, data=Session)
    async with (
        serve(app) as url,
        connect(url + "/s/one", open_timeout=TIMEOUT, close_timeout=CLOSE_TIMEOUT) as one,
        connect(url + "/s/two", open_timeout=TIMEOUT, close_timeout=CLOSE_TIMEOUT) as two,
    ):
        assert json.loads(await asyncio.wait_for(one.recv(), TIMEOUT)) == ["one"]
        assert json.loads(await asyncio.wait_for(two.recv(), TIMEOUT)) == ["two"]
    first, second = seen
    assert isinstance(first, Session)
    assert isinstance(second, Session)
    assert first is not second
    assert first.names == ["one"]
    assert second.names == ["two"]

"""JSON mode (``json=True``) and the app's pluggable ``json_dumps`` / ``json_loads``."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from decimal import Decimal
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import harpy
from harpy.app import jsoncodec
from harpy.exceptions import ConfigurationError
from tests.helpers import ServeApp, serve
from tests.timing import TIMEOUT, eventually


async def _recv(client: Any) -> Any:
    return await asyncio.wait_for(client.recv(), TIMEOUT)


async def test_message_receives_the_parsed_value(serve_app: ServeApp) -> None:
    got: list[Any] = []
    app = harpy.App()

    def message(ws: harpy.WebSocket[Any], data: Any) -> None:
        got.append(data)
        ws.send({"echo": data})  # a value: serialised
        ws.send("plain text")  # a str: sent as it is, not as a JSON string
        ws.send_json("a string")  # a JSON string, when that is what is meant

    app.ws("/j", {"message": message}, json=True)
    async with serve_app(app) as url, connect(f"{url}/j") as client:
        await client.send('{"n": 1, "s": "é"}')
        assert json.loads(await _recv(client)) == {"echo": {"n": 1, "s": "é"}}
        assert await _recv(client) == "plain text"
        assert await _recv(client) == '"a string"'
        await client.send(b"[1, 2]")  # binary messages are parsed too
        assert json.loads(await _recv(client)) == {"echo": [1, 2]}
    assert got == [{"n": 1, "s": "é"}, [1, 2]]


async def test_invalid_json_closes_1007_without_an_error_handler(serve_app: ServeApp) -> None:
    called: list[Any] = []
    app = harpy.App()
    app.ws("/j", {"message": lambda ws, data: called.append(data)}, json=True)
    async with serve_app(app) as url, connect(f"{url}/j") as client:
        await client.send("{not json")
        with pytest.raises(ConnectionClosed) as info:
            await _recv(client)
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (1007, "Invalid JSON")
    assert called == []


async def test_invalid_json_goes_to_the_error_handler(serve_app: ServeApp) -> None:
    errors: list[BaseException] = []
    app = harpy.App()

    def error(ws: harpy.WebSocket[Any], exc: BaseException) -> None:
        errors.append(exc)
        ws.send({"error": "bad json"})

    app.ws("/j", {"message": lambda ws, data: ws.send(data), "error": error}, json=True)
    async with serve_app(app) as url, connect(f"{url}/j") as client:
        await client.send("nope")
        assert json.loads(await _recv(client)) == {"error": "bad json"}
        await client.send('{"still": "open"}')
        assert json.loads(await _recv(client)) == {"still": "open"}
    assert len(errors) == 1
    assert isinstance(errors[0], harpy.InvalidMessage)
    assert "not valid JSON" in str(errors[0])


async def test_auto_broadcast_relays_only_valid_json() -> None:
    app = harpy.App()
    app.ws("/room", {}, json=True, auto_broadcast=True)
    async with serve(app) as url, connect(f"{url}/room") as a, connect(f"{url}/room") as b:
        await eventually(lambda: len(app.connections) == 2, what="both open")
        await a.send('{"x": 1}')
        assert json.loads(await _recv(b)) == {"x": 1}
        await a.send("{broken")
        with pytest.raises(ConnectionClosed):
            await _recv(a)
        assert a.close_code == 1007


async def test_json_dumps_and_loads_are_per_app() -> None:
    def dumps(value: Any) -> str:
        return json.dumps(value, default=str, separators=(",", ":"))

    def loads(text: str | bytes) -> Any:
        return json.loads(text, parse_float=Decimal)

    custom = harpy.App(json_dumps=dumps, json_loads=loads)
    plain = harpy.App()
    for app in (custom, plain):
        app.ws("/j", {"message": lambda ws, data: ws.send([data, type(data).__name__])}, json=True)
        app.ws("/sub", {"open": lambda ws: ws.subscribe("t")})
    async with serve(custom) as url, connect(f"{url}/j") as client:
        await client.send("1.5")
        assert json.loads(await _recv(client)) == ["1.5", "Decimal"]
        async with connect(f"{url}/sub") as sub:
            await eventually(lambda: len(custom.connections) == 2, what="both open")
            assert custom.publish("t", {"d": Decimal("2.5")}) == 1
            assert await _recv(sub) == '{"d":"2.5"}'
            assert custom.broadcast({"b": Decimal(1)}, route="/sub") == 1
            assert await _recv(sub) == '{"b":"1"}'
    async with serve(plain) as url, connect(f"{url}/j") as client:
        await client.send("1.5")
        assert json.loads(await _recv(client)) == [1.5, "float"]
    with pytest.raises(TypeError, match="cannot send Decimal"):
        plain.publish("t", Decimal(1))


async def test_bytes_from_json_dumps_are_sent_as_text() -> None:
    app = harpy.App(json_dumps=lambda value: json.dumps(value).encode())
    app.ws("/j", {"open": lambda ws: ws.send({"k": "v"})})
    async with serve(app) as url, connect(f"{url}/j") as client:
        assert await _recv(client) == '{"k": "v"}'


def test_the_default_is_orjson_when_installed() -> None:
    has_orjson = importlib.util.find_spec("orjson") is not None
    assert (jsoncodec.default_dumps.__module__ == "orjson") is has_orjson
    encode = jsoncodec.make_encoder(None)
    assert json.loads(encode({"a": [1, "é"]})) == {"a": [1, "é"]}
    with pytest.raises(TypeError, match="cannot send object"):
        encode(object())


def test_bad_json_settings_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="json_dumps must be a function"):
        harpy.App(json_dumps="orjson")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="json_loads must be a function"):
        harpy.App(json_loads=42)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="json must be True or False"):
        harpy.App().ws("/j", {}, json="yes")  # type: ignore[arg-type]
    encode = jsoncodec.make_encoder(lambda value: 42)  # type: ignore[arg-type, return-value]
    with pytest.raises(TypeError, match="json_dumps returned int"):
        encode({})

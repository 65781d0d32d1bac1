"""wss:// with an ssl.SSLContext or certificate paths."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

import harpy
from harpy.server import make_ssl_context
from tests.e2e.test_cli import make_cert
from tests.helpers import serve
from tests.timing import TIMEOUT


@pytest.mark.parametrize("form", ["context", "paths"])
async def test_wss_echo_and_url(tmp_path: Path, form: str) -> None:
    cert, key = make_cert(tmp_path)
    app = harpy.App()
    seen: list[str] = []

    def message(ws: harpy.WebSocket[Any], message: str | bytes) -> None:
        seen.append(ws.url)
        ws.send(message)

    app.ws("/secure", {"message": message})
    kwargs: dict[str, Any] = (
        {"tls": make_ssl_context(str(cert), str(key))}
        if form == "context"
        else {"tls_cert": str(cert), "tls_key": str(key)}
    )
    async with serve(app, **kwargs) as url:
        assert url.startswith("wss://")
        client_ctx = ssl.create_default_context(cafile=str(cert))
        async with connect(f"{url}/secure", ssl=client_ctx) as client:
            await client.send("hello")
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == "hello"
    assert seen[0].startswith("wss://")


async def test_tls_key_without_cert_is_an_error() -> None:
    app = harpy.App()
    with pytest.raises(harpy.ConfigurationError):
        await app.listen("127.0.0.1", 0, tls_key="key.pem")

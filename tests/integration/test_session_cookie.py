"""The session cookie's format, as docs/auth.md gives it to an HTTP app that mints cookies
itself: ``<id>.<base64url(HMAC-SHA256(secret, id)) without padding>``, the signature computed
here by another implementation (the ``openssl`` command), not by harpy."""

from __future__ import annotations

import asyncio
import base64
import re
import subprocess
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

import harpy
from tests.helpers import serve
from tests.timing import TIMEOUT, scaled

SECRET = "a-secret-of-at-least-32-bytes-for-tests"


def openssl_signature(session_id: str) -> str:
    """base64url(HMAC-SHA256(SECRET, id)) without padding, by OpenSSL."""
    digest = subprocess.run(
        ["openssl", "dgst", "-sha256", "-hmac", SECRET, "-binary"],
        input=session_id.encode("ascii"),
        capture_output=True,
        check=True,
        timeout=scaled(30.0),
    ).stdout
    assert len(digest) == 32
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


async def test_a_cookie_harpy_makes_is_the_documented_format() -> None:
    session = harpy.Session(secret=SECRET)
    value = await session.create({"username": "ann"})
    session_id, signature = value.split(".")
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", session_id)  # secrets.token_urlsafe(32)
    assert signature == openssl_signature(session_id)
    assert session.cookie_header(value) == (
        f"session_id={value}; Max-Age=86400; Path=/; HttpOnly; Secure; SameSite=Lax"
    )


async def test_a_cookie_minted_elsewhere_opens_the_session_over_a_real_connection() -> None:
    store = harpy.MemoryStore()
    session = harpy.Session(store, secret=SECRET)
    # What an HTTP app in any language does at login: a random id, the data, the signature.
    session_id = "minted-by-another-app_0123456789abcdefghijklmno"
    await store.set(session_id, {"username": "bob"}, ttl=60)
    app = harpy.App()

    def open(ws: harpy.WebSocket[Any]) -> None:
        ws.send(ws.auth["username"])

    app.ws("/me", {"open": open}, authenticate=session.authenticate)
    good = f"{session_id}.{openssl_signature(session_id)}"
    forged = f"{session_id}.{openssl_signature(session_id + 'x')}"
    async with serve(app) as url:
        async with connect(f"{url}/me", additional_headers={"Cookie": f"session_id={good}"}) as c:
            assert await asyncio.wait_for(c.recv(), TIMEOUT) == "bob"
        with pytest.raises(InvalidStatus) as info:
            await connect(f"{url}/me", additional_headers={"Cookie": f"session_id={forged}"})
        assert info.value.response.status_code == 401

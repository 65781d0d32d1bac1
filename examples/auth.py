"""Two ways to authenticate WebSocket clients: a JWT in the first message, a session cookie.

* ``/chat``: the client connects, then sends ``{"type": "auth", "token": "<jwt>"}`` as its first
  message within 5 seconds; nothing else is handled before that.  A bad token closes with 1008
  "Invalid Token", silence with 1008 "Auth Timeout".
* ``/profile-updates``: the browser sends the ``session_id`` cookie an HTTP app set at login
  (HttpOnly, Secure, SameSite); no valid session closes with 1008 "Unauthorized".

Run ``python examples/auth.py``: it prints a demo token and cookie, then serves on port 3000.
Set ``HARPY_JWT_SECRET`` and ``HARPY_SESSION_SECRET`` (32 bytes or more) to keep them stable.
Needs PyJWT (``pip install 'harpy-ws[jwt]'``).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from dataclasses import dataclass

import harpy
from harpy.auth import jwt

JWT_SECRET = os.environ.get("HARPY_JWT_SECRET") or secrets.token_urlsafe(32)
SESSION_SECRET = os.environ.get("HARPY_SESSION_SECRET") or secrets.token_urlsafe(32)
JWT_AUDIENCE = "harpy-example"
#: Browsers send cookies with cross-site WebSocket upgrades too: only these pages may connect.
ORIGINS = os.environ.get("HARPY_ORIGINS", "http://localhost:3000").split(",")

session = harpy.Session(harpy.MemoryStore(), secret=SESSION_SECRET)
app = harpy.App(max_connections_per_ip=50)


@dataclass
class ChatData:
    name: str = ""


@app.ws(
    "/chat",
    data=ChatData,
    authenticate=jwt(secret=JWT_SECRET, algorithms=["HS256"], audience=JWT_AUDIENCE, timeout=5),
    rate_limit=20,
    rate_burst=10,
)
class Chat:
    """Runs only after the first message carried a valid token; its claims are ``ws.auth``."""

    def open(self, ws: harpy.WebSocket[ChatData]) -> None:
        ws.data.name = str(ws.auth["sub"])
        ws.subscribe("chat")
        ws.send("Authentication successful!")

    def message(self, ws: harpy.WebSocket[ChatData], message: str | bytes) -> None:
        text = message if isinstance(message, str) else message.decode("utf-8", "replace")
        app.publish("chat", f"{ws.data.name}: {text}")


@dataclass
class ProfileData:
    username: str = ""


@app.ws("/profile-updates", data=ProfileData, allowed_origins=ORIGINS)
class ProfileUpdates:
    """Read the session from the cookie in ``open``."""

    async def open(self, ws: harpy.WebSocket[ProfileData]) -> None:
        user = await session.from_websocket(ws)
        if user is None:
            ws.close(1008, "Unauthorized")
            return
        ws.data.username = str(user["username"])
        ws.subscribe(f"profile:{ws.data.username}")
        ws.send(f"Welcome back, {ws.data.username}!")


def make_token(subject: str, ttl: int = 3600) -> str:
    """A token as a login endpoint would issue it (here for the demo and the tests)."""
    import jwt as pyjwt

    now = int(time.time())
    claims = {"sub": subject, "aud": JWT_AUDIENCE, "iat": now, "exp": now + ttl}
    return pyjwt.encode(claims, JWT_SECRET, algorithm="HS256")


if __name__ == "__main__":
    token = make_token("alice")
    cookie = asyncio.run(session.create({"username": "alice"}))
    print("Demo credentials for alice (do not print real ones):")
    print(f'  /chat first message: {{"type": "auth", "token": "{token}"}}')
    print(f"  /profile-updates header: Cookie: {session.cookie_name}={cookie}")
    app.run(port=3000)

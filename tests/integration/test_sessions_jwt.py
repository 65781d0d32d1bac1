"""Session cookies, JWTs from every source, and examples/auth.py, through a real server."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import jwt as pyjwt
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

import harpy
from harpy.auth import jwt
from tests.helpers import RawClient, client, recv, serve
from tests.timing import TIMEOUT, scaled

SECRET = "jwt-test-secret-" + "q" * 40
OTHER_SECRET = "jwt-other-secret-" + "z" * 40
SESSION_SECRET = "session-test-secret-" + "w" * 40
AUDIENCE = "harpy-tests"
ISSUER = "https://issuer.test"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "auth.py"

#: Every credential a test made: none may ever reach a log line.
CREDENTIALS: list[str] = []


@pytest.fixture(autouse=True)
def no_credentials_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Capture harpy's log at every level; after the test, no token, cookie or secret in it."""
    CREDENTIALS.clear()
    caplog.set_level(logging.DEBUG, logger="harpy")
    yield
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    text = "\n".join(
        formatter.format(record)
        for when in ("setup", "call")
        for record in caplog.get_records(when)
    )
    for secret in (SECRET, OTHER_SECRET, SESSION_SECRET, *CREDENTIALS):
        assert secret not in text
    CREDENTIALS.clear()


def make_token(
    claims: dict[str, Any] | None = None,
    *,
    secret: str = SECRET,
    exp_in: float | None = 60,
    drop: tuple[str, ...] = (),
) -> str:
    payload: dict[str, Any] = {"sub": "alice", "aud": AUDIENCE, "iss": ISSUER}
    if exp_in is not None:
        payload["exp"] = int(time.time() + exp_in)
    payload.update(claims or {})
    for name in drop:
        payload.pop(name, None)
    token = pyjwt.encode(payload, secret, algorithm="HS256")
    CREDENTIALS.append(token)
    return token


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unsigned_token(alg: str = "none") -> str:
    """An ``alg: none`` token, built by hand: header, payload, empty signature."""
    header = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    payload = {"sub": "mallory", "aud": AUDIENCE, "iss": ISSUER, "exp": int(time.time()) + 60}
    token = f"{header}.{b64url(json.dumps(payload).encode())}."
    CREDENTIALS.append(token)
    return token


def forged_signature(token: str) -> str:
    head, payload, signature = token.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    CREDENTIALS.append(f"{head}.{payload}.{flipped}")
    return f"{head}.{payload}.{flipped}"


async def closed(ws: ClientConnection) -> tuple[int | None, str | None]:
    await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
    return ws.close_code, ws.close_reason


async def refused(url: str, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    with pytest.raises(InvalidStatus) as info:
        async with client(url, **kwargs):
            pass
    response = info.value.response
    headers = {k.lower(): v for k, v in response.headers.raw_items()}
    return response.status_code, headers, bytes(response.body or b"")


def cookie(name: str, value: str) -> dict[str, str]:
    return {"Cookie": f"theme=dark; {name}={value}; lang=en"}


# --------------------------------------------------------------------- sessions


class CountingStore(harpy.MemoryStore):
    """A MemoryStore that counts look-ups: a forged cookie must not cause one."""

    def __init__(self, max_sessions: int = 100_000) -> None:
        super().__init__(max_sessions)
        self.gets = 0

    async def get(self, session_id: str) -> dict[str, Any] | None:
        self.gets += 1
        return await super().get(session_id)


def profile_app(session: harpy.Session) -> tuple[harpy.App, list[str]]:
    """Seed 002's ``/profile-updates``: the session is read in ``open``."""
    opened: list[str] = []
    app = harpy.App()

    @app.ws("/profile-updates")
    class Profile:
        async def open(self, ws: harpy.WebSocket[Any]) -> None:
            user = await session.from_websocket(ws)
            if not user:
                ws.close(1008, "Unauthorized")
                return
            opened.append(user["username"])
            ws.send(f"Welcome back, {user['username']}!")

    return app, opened


async def test_session_round_trip() -> None:
    store = CountingStore()
    session = harpy.Session(store, secret=SESSION_SECRET)
    value = await session.create({"username": "alice", "roles": ["admin"]})
    CREDENTIALS.append(value)
    session_id, _, signature = value.partition(".")
    assert len(session_id) == 43 and len(signature) == 43
    assert await session.load(value) == {"username": "alice", "roles": ["admin"]}
    app, opened = profile_app(session)
    async with (
        serve(app) as url,
        client(f"{url}/profile-updates", additional_headers=cookie("session_id", value)) as ws,
    ):
        assert await recv(ws) == "Welcome back, alice!"
    assert opened == ["alice"]
    # A second session gets another random id.
    other = await session.create({"username": "bob"})
    CREDENTIALS.append(other)
    assert other.partition(".")[0] != session_id


@pytest.mark.parametrize(
    "case", ["tampered", "unsigned", "other-secret", "unknown", "expired", "none", "garbage"]
)
async def test_session_refused_cookies_close_1008(case: str) -> None:
    store = CountingStore()
    session = harpy.Session(store, secret=SESSION_SECRET, ttl=0.1 if case == "expired" else 60)
    value = await session.create({"username": "alice"})
    CREDENTIALS.append(value)
    session_id, _, signature = value.partition(".")
    headers: dict[str, str] = {}
    touches_store = case in ("unknown", "expired")
    if case == "tampered":
        flipped = "A" if signature[-1] != "A" else "B"
        headers = cookie("session_id", f"{session_id}.{signature[:-1]}{flipped}")
    elif case == "unsigned":
        headers = cookie("session_id", session_id)
    elif case == "other-secret":
        forger = harpy.Session(harpy.MemoryStore(), secret=OTHER_SECRET)
        forged = await forger.create({"username": "mallory"})
        CREDENTIALS.append(forged)
        headers = cookie("session_id", f"{session_id}.{forged.partition('.')[2]}")
    elif case == "unknown":
        # Signed with the right secret but never stored here (another store).
        stranger = harpy.Session(harpy.MemoryStore(), secret=SESSION_SECRET)
        unknown = await stranger.create({"username": "bob"})
        CREDENTIALS.append(unknown)
        headers = cookie("session_id", unknown)
    elif case == "expired":
        await asyncio.sleep(0.2)  # past the ttl (0.1 s) under test: not a synchronisation
        headers = cookie("session_id", value)
    elif case == "garbage":
        headers = cookie("session_id", "x" * 4000 + ".." + "y" * 43)
    app, opened = profile_app(session)
    async with (
        serve(app) as url,
        client(f"{url}/profile-updates", additional_headers=headers) as ws,
    ):
        with pytest.raises(ConnectionClosed):
            await recv(ws)
        assert await closed(ws) == (1008, "Unauthorized")
    assert opened == []
    assert store.gets == (1 if touches_store else 0)


async def test_session_destroy_and_cookie_headers() -> None:
    session = harpy.Session(secret=SESSION_SECRET.encode(), ttl=3600)
    assert isinstance(session.store, harpy.MemoryStore)
    value = await session.create({"username": "alice"})
    CREDENTIALS.append(value)
    header = session.cookie_header(value)
    assert header == f"session_id={value}; Max-Age=3600; Path=/; HttpOnly; Secure; SameSite=Lax"
    assert session.clear_cookie_header() == (
        "session_id=; Max-Age=0; Path=/; HttpOnly; Secure; SameSite=Lax"
    )
    strict = harpy.Session(
        secret=SESSION_SECRET, cookie_name="sid", same_site="Strict", domain="example.com", ttl=60
    )
    assert strict.cookie_header(await strict.create({})).endswith(
        "; Max-Age=60; Path=/; Domain=example.com; HttpOnly; Secure; SameSite=Strict"
    )
    with pytest.raises(harpy.ConfigurationError):
        session.cookie_header("x; Path=/evil")  # only values create() made
    assert SESSION_SECRET not in repr(session)
    await session.destroy("not-a-signed-value")  # ignored
    assert await session.load(value) is not None
    await session.destroy(value)
    assert await session.load(value) is None
    app, opened = profile_app(session)
    async with (
        serve(app) as url,
        client(f"{url}/profile-updates", additional_headers=cookie("session_id", value)) as ws,
    ):
        assert await closed(ws) == (1008, "Unauthorized")
    assert opened == []


async def test_session_as_authenticate_hook() -> None:
    session = harpy.Session(secret=SESSION_SECRET)
    value = await session.create({"username": "carol"})
    CREDENTIALS.append(value)
    app = harpy.App()
    app.ws("/me", {"open": lambda ws: ws.send_json(ws.auth)}, authenticate=session.authenticate)
    async with serve(app) as url:
        async with client(f"{url}/me", additional_headers=cookie("session_id", value)) as ws:
            assert json.loads(await recv(ws)) == {"username": "carol"}
        status, _, body = await refused(f"{url}/me")
        assert (status, body) == (401, b"Unauthorized\n")
        status, _, _ = await refused(f"{url}/me", additional_headers=cookie("session_id", "x.y"))
        assert status == 401


def test_session_configuration_errors() -> None:
    with pytest.raises(harpy.ConfigurationError, match="32 bytes"):
        harpy.Session(secret="short")
    with pytest.raises(harpy.ConfigurationError):
        harpy.Session(secret=b"\x00" * 31)
    with pytest.raises(harpy.ConfigurationError):
        harpy.Session(secret=SESSION_SECRET, ttl=0)
    with pytest.raises(harpy.ConfigurationError):
        harpy.Session(secret=SESSION_SECRET, cookie_name="bad name;")
    with pytest.raises(harpy.ConfigurationError):
        harpy.Session(secret=SESSION_SECRET, same_site="None", secure=False)
    with pytest.raises(harpy.ConfigurationError):
        harpy.MemoryStore(max_sessions=0)


async def test_memory_store_expiry_and_oldest_eviction() -> None:
    store = harpy.MemoryStore(max_sessions=2)
    await store.set("a", {"n": 1}, 60)
    await store.set("b", {"n": 2}, 60)
    await store.set("c", {"n": 3}, 60)  # over the bound: "a", the oldest, goes
    assert len(store) == 2
    assert await store.get("a") is None
    assert await store.get("b") == {"n": 2}
    await store.set("b", {"n": 22}, 60)  # rewriting makes it the newest
    await store.set("d", {"n": 4}, 60)
    assert await store.get("c") is None
    assert await store.get("b") == {"n": 22}
    data = await store.get("d")
    assert data is not None
    data["n"] = 99  # a copy: the stored data does not change
    assert await store.get("d") == {"n": 4}
    await store.set("e", {}, 0.05)
    await asyncio.sleep(0.1)  # past the ttl (0.05 s) under test: not a synchronisation
    assert await store.get("e") is None
    await store.delete("d")
    await store.delete("missing")
    assert await store.get("d") is None


# --------------------------------------------------------------------- JWT, first message


def chat_app(**jwt_options: Any) -> tuple[harpy.App, list[Any]]:
    """Seed 002's ``/chat``: the token in the first message; ``open`` runs once it passed.

    The first message's ``timeout`` bounds how long a test's client may take to send it
    (scaled); the test of that timeout sets its own.
    """
    opened: list[Any] = []
    options: dict[str, Any] = {"audience": AUDIENCE, "issuer": ISSUER, "timeout": scaled(0.3)}
    options.update(jwt_options)
    app = harpy.App()

    class Chat:
        def open(self, ws: harpy.WebSocket[Any]) -> None:
            opened.append(ws.auth)
            ws.send("Authentication successful!")

        def message(self, ws: harpy.WebSocket[Any], message: str | bytes) -> None:
            ws.send(f"{ws.auth['sub']}: {message!s}")

    app.ws("/chat", Chat, authenticate=jwt(secret=SECRET, algorithms=["HS256"], **options))
    return app, opened


@pytest.mark.parametrize("form", ["json", "bare", "bytes"])
async def test_jwt_first_message_accepts_a_good_token(form: str) -> None:
    token = make_token({"name": "Alice"})
    app, opened = chat_app()
    forms: dict[str, str | bytes] = {
        "json": json.dumps({"type": "auth", "token": token}),
        "bare": token,
        "bytes": token.encode(),
    }
    first = forms[form]
    async with serve(app) as url, client(f"{url}/chat") as ws:
        await ws.send(first)
        assert await recv(ws) == "Authentication successful!"
        await ws.send("hello")
        assert await recv(ws) == "alice: hello"
    assert len(opened) == 1
    assert opened[0]["sub"] == "alice" and opened[0]["name"] == "Alice"


async def test_jwt_first_message_open_runs_before_a_message_sent_right_behind_the_token() -> None:
    # The client does not wait for the reply: the token and a message leave together.  The
    # open handler must still run before the message handler.
    token = make_token()
    app, _ = chat_app()
    async with serve(app) as url:
        raw = await RawClient.connect(url)
        try:
            assert await raw.upgrade("/chat") == 101
            raw.send_frame(0x1, json.dumps({"type": "auth", "token": token}).encode())
            raw.send_frame(0x1, b"right behind")
            await raw.writer.drain()
            replies = [(await raw.read_frame())[1] for _ in range(2)]
        finally:
            await raw.close()
    assert replies == [b"Authentication successful!", b"alice: right behind"]


async def test_jwt_first_message_timeout_closes_auth_timeout() -> None:
    app, opened = chat_app(timeout=0.3)  # the configuration under test: not scaled
    async with serve(app) as url, client(f"{url}/chat") as ws:
        started = time.monotonic()
        assert await closed(ws) == (1008, "Auth Timeout")
        assert 0.25 < time.monotonic() - started < scaled(1.5)
    assert opened == []
    assert len(app.connections) == 0


@pytest.mark.parametrize(
    "case",
    [
        "forged-signature",
        "other-secret",
        "expired",
        "wrong-audience",
        "wrong-issuer",
        "no-exp",
        "alg-none",
        "alg-None",
        "garbage",
        "wrong-type",
        "not-utf8",
        "too-long",
    ],
)
async def test_jwt_first_message_invalid_token_closes_1008(case: str) -> None:
    first: str | bytes
    if case == "forged-signature":
        first = forged_signature(make_token())
    elif case == "other-secret":
        first = make_token(secret=OTHER_SECRET)
    elif case == "expired":
        first = make_token(exp_in=-30)
    elif case == "wrong-audience":
        first = make_token({"aud": "someone-else"})
    elif case == "wrong-issuer":
        first = make_token({"iss": "https://evil.test"})
    elif case == "no-exp":
        first = make_token(exp_in=None)
    elif case == "alg-none":
        first = unsigned_token()
    elif case == "alg-None":
        first = json.dumps({"type": "auth", "token": unsigned_token("None")})
    elif case == "garbage":
        first = "not.a.jwt"
    elif case == "wrong-type":
        first = json.dumps({"type": "hello", "token": make_token()})
    elif case == "not-utf8":
        first = b"\xff\xfe" + make_token().encode()
    else:
        first = make_token({"pad": "x" * 10_000})
    app, opened = chat_app()
    async with serve(app) as url, client(f"{url}/chat") as ws:
        await ws.send(first)
        with pytest.raises(ConnectionClosed):
            await recv(ws)
        assert await closed(ws) == (1008, "Invalid Token")
    assert opened == []


async def test_jwt_leeway_accepts_a_just_expired_token() -> None:
    app, opened = chat_app(leeway=30)
    async with serve(app) as url, client(f"{url}/chat") as ws:
        await ws.send(make_token(exp_in=-5))
        assert await recv(ws) == "Authentication successful!"
    assert len(opened) == 1


# --------------------------------------------------------------------- JWT before the upgrade


def source_app(source: str, **options: Any) -> harpy.App:
    app = harpy.App()
    route_options: dict[str, Any] = {}
    if source == "protocol":
        route_options["subprotocols"] = ["bearer"]
    hook = jwt(secret=SECRET, algorithms=["HS256"], audience=AUDIENCE, source=source, **options)
    app.ws(
        "/s",
        {"open": lambda ws: ws.send_json({"sub": ws.auth["sub"], "proto": ws.subprotocol})},
        authenticate=hook,
        **route_options,
    )
    return app


def carry(source: str, token: str) -> dict[str, Any]:
    """Client arguments (and a query string) carrying ``token`` the way ``source`` reads it."""
    if source == "cookie":
        return {"additional_headers": cookie("token", token)}
    if source == "header":
        return {"additional_headers": {"Authorization": f"Bearer {token}"}}
    if source == "query":
        return {"query": f"?token={token}"}
    return {"subprotocols": ["bearer", token]}


async def open_with(url: str, **kwargs: Any) -> Any:
    query = kwargs.pop("query", "")
    async with client(f"{url}/s{query}", **kwargs) as ws:
        return json.loads(await recv(ws)), ws.subprotocol


@pytest.mark.parametrize("source", ["cookie", "header", "query", "protocol"])
async def test_jwt_upgrade_sources(source: str, caplog: pytest.LogCaptureFixture) -> None:
    app = source_app(source)
    good = make_token({"sub": "dave"})
    async with serve(app) as url:
        got, proto = await open_with(url, **carry(source, good))
        assert got == {"sub": "dave", "proto": "bearer" if source == "protocol" else None}
        assert proto == ("bearer" if source == "protocol" else None)
        for bad in (
            make_token(secret=OTHER_SECRET),
            make_token(exp_in=-30),
            make_token({"aud": "nope"}),
            unsigned_token(),
            forged_signature(good),
        ):
            kwargs = carry(source, bad)
            query = kwargs.pop("query", "")
            status, headers, body = await refused(f"{url}/s{query}", **kwargs)
            assert (status, body) == (401, b"Invalid Token\n")
            assert headers["www-authenticate"] == 'Bearer error="invalid_token"'
            assert bad not in str(headers)
        status, headers, body = await refused(f"{url}/s")
        assert (status, body) == (401, b"Missing Token\n")
        assert headers["www-authenticate"] == "Bearer"
    assert good not in caplog.text
    assert SECRET not in caplog.text


async def test_jwt_query_warns_once_and_never_logs_the_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = source_app("query")
    tokens = [make_token({"sub": f"user{i}"}) for i in range(3)]
    async with serve(app) as url:
        for i, token in enumerate(tokens):
            got, _ = await open_with(url, query=f"?token={token}")
            assert got["sub"] == f"user{i}"
        assert (await refused(f"{url}/s?token=garbage"))[0] == 401
    warnings = [r for r in caplog.records if "query string" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert warnings[0].name == "harpy"
    assert "logs" in warnings[0].getMessage()
    for token in tokens:
        assert token not in caplog.text
    # Another configuration warns again, once.
    app2 = source_app("query")
    async with serve(app2) as url:
        await open_with(url, query=f"?token={tokens[0]}")
        await open_with(url, query=f"?token={tokens[1]}")
    assert len([r for r in caplog.records if "query string" in r.getMessage()]) == 2


async def test_jwt_header_forms() -> None:
    app = source_app("header")
    token = make_token({"sub": "erin"})
    async with serve(app) as url:
        for value in (f"Bearer {token}", f"bearer   {token}", token):
            got, _ = await open_with(url, additional_headers={"Authorization": value})
            assert got["sub"] == "erin"
        status, _, body = await refused(f"{url}/s", additional_headers={"Authorization": "Basic x"})
        assert (status, body) == (401, b"Invalid Token\n")
        status, _, body = await refused(f"{url}/s", additional_headers={"Authorization": "Bearer"})
        assert status == 401
    custom = source_app("header", header="X-Token")
    async with serve(custom) as url:
        got, _ = await open_with(url, additional_headers={"x-token": token})
        assert got["sub"] == "erin"
        status, _, body = await refused(f"{url}/s", additional_headers={"Authorization": token})
        assert (status, body) == (401, b"Missing Token\n")


async def test_jwt_protocol_without_route_subprotocols_is_a_logged_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = harpy.App()
    hook = jwt(secret=SECRET, algorithms=["HS256"], audience=AUDIENCE, source="protocol")
    app.ws("/s", {"open": lambda ws: ws.send("in")}, authenticate=hook)  # no subprotocols=
    token = make_token()
    async with serve(app) as url:
        status, _, _ = await refused(f"{url}/s", subprotocols=["bearer", token])
    assert status == 500
    assert "subprotocols=['bearer']" in caplog.text
    assert token not in caplog.text


# --------------------------------------------------------------------- JWT configuration


def test_jwt_configuration_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    bad: list[dict[str, Any]] = [
        {"secret": SECRET, "algorithms": ["none"]},
        {"secret": SECRET, "algorithms": ["HS256", "NoNe"]},
        {"secret": SECRET, "algorithms": []},
        {"secret": SECRET, "algorithms": "HS256"},
        {"secret": SECRET, "public_key": SECRET, "algorithms": ["HS256"]},
        {"algorithms": ["HS256"]},
        {"secret": "too-short", "algorithms": ["HS256"]},
        {"secret": SECRET, "algorithms": ["HS512"]},  # 56 bytes: HS512 needs 64
        {"secret": SECRET, "algorithms": ["RS256"]},
        {"secret": SECRET, "algorithms": ["HS256", "RS256"]},
        {"public_key": SECRET, "algorithms": ["HS256"]},
        {"secret": SECRET, "algorithms": ["HS256"], "source": "url"},
        {"secret": SECRET, "algorithms": ["HS256"], "timeout": 0},
        {"secret": SECRET, "algorithms": ["HS256"], "leeway": -1},
        {"secret": SECRET, "algorithms": ["HS256"], "require": "exp"},
        {"secret": SECRET, "algorithms": ["HS256"], "source": "cookie", "cookie_name": ""},
    ]
    for options in bad:
        with pytest.raises(harpy.ConfigurationError) as info:
            jwt(**options)
        assert SECRET not in str(info.value)
    auth = jwt(secret=SECRET, algorithms=["HS256"])
    assert isinstance(auth, harpy.FirstMessageAuth)
    assert auth.timeout == 5.0
    assert SECRET not in repr(auth)
    monkeypatch.setitem(sys.modules, "jwt", None)  # PyJWT not installed
    with pytest.raises(harpy.ConfigurationError, match="pip install"):
        jwt(secret=SECRET, algorithms=["HS256"])


# --------------------------------------------------------------------- examples/auth.py


@pytest.fixture
def example() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("harpy_example_auth", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        CREDENTIALS.extend([module.JWT_SECRET, module.SESSION_SECRET])
        yield module
    finally:
        del sys.modules[spec.name]


async def test_example_chat_with_first_message_jwt(example: ModuleType) -> None:
    token = example.make_token("alice")
    CREDENTIALS.append(token)
    async with serve(example.app) as url:
        async with client(f"{url}/chat") as alice, client(f"{url}/chat") as bob:
            await alice.send(json.dumps({"type": "auth", "token": token}))
            assert await recv(alice) == "Authentication successful!"
            bob_token = example.make_token("bob")
            CREDENTIALS.append(bob_token)
            await bob.send(json.dumps({"type": "auth", "token": bob_token}))
            assert await recv(bob) == "Authentication successful!"
            await alice.send("hi bob")
            assert await recv(alice) == "alice: hi bob"
            assert await recv(bob) == "alice: hi bob"
        async with client(f"{url}/chat") as mallory:
            await mallory.send(json.dumps({"type": "auth", "token": unsigned_token()}))
            assert await closed(mallory) == (1008, "Invalid Token")


async def test_example_profile_updates_with_session_cookie(example: ModuleType) -> None:
    value = await example.session.create({"username": "alice"})
    CREDENTIALS.append(value)
    header = example.session.cookie_header(value)
    assert "HttpOnly" in header and "Secure" in header and "SameSite" in header
    async with serve(example.app) as url:
        async with client(
            f"{url}/profile-updates",
            additional_headers=cookie("session_id", value),
            origin="http://localhost:3000",
        ) as ws:
            assert await recv(ws) == "Welcome back, alice!"
        async with client(f"{url}/profile-updates") as ws:
            assert await closed(ws) == (1008, "Unauthorized")
        status, _, _ = await refused(
            f"{url}/profile-updates",
            additional_headers=cookie("session_id", value),
            origin="https://evil.example",
        )
        assert status == 403  # cross-site WebSocket hijacking refused

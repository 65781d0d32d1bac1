"""Upgrade authentication and the limits against abuse, through a real server and real clients."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

import harpy
from harpy.protocol.handshake import ORIGIN_REFUSED
from tests.helpers import RawClient, ServeApp, client, recv, serve
from tests.timing import TIMEOUT, eventually, scaled


async def refused(url: str, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    """Try to connect; return the HTTP status, headers and body of the refusal."""
    with pytest.raises(InvalidStatus) as info:
        async with client(url, **kwargs):
            pass
    response = info.value.response
    headers = {k.lower(): v for k, v in response.headers.raw_items()}
    return response.status_code, headers, bytes(response.body or b"")


async def closed(ws: ClientConnection) -> tuple[int | None, str | None]:
    """Wait (bounded) for the server to close; return its close code and reason."""
    await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
    return ws.close_code, ws.close_reason


class Report:
    """Handlers that report ``ws.auth`` and ``ws.subprotocol`` as JSON, and record opens."""

    def __init__(self) -> None:
        self.opened = 0
        self.messages = 0
        self.closes = 0

    def open(self, ws: harpy.WebSocket[Any]) -> None:
        self.opened += 1
        ws.send_json({"auth": ws.auth, "subprotocol": ws.subprotocol})

    def message(self, ws: harpy.WebSocket[Any], message: str | bytes) -> None:
        self.messages += 1
        ws.send(message)

    def close(self, ws: harpy.WebSocket[Any], code: int, reason: str) -> None:
        self.closes += 1


def echo(ws: harpy.WebSocket[Any], message: str | bytes) -> None:
    ws.send(message)


# --------------------------------------------------------------------- the hook's results


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_hook_data_goes_on_ws_auth(kind: str) -> None:
    seen: list[harpy.UpgradeRequest] = []

    def sync_hook(request: harpy.UpgradeRequest) -> Any:
        seen.append(request)
        return {"user": request.headers.get("x-user"), "room": request.params["room"]}

    async def async_hook(request: harpy.UpgradeRequest) -> Any:
        await asyncio.sleep(0.01)  # a hook that really suspends: the case under test
        return sync_hook(request)

    report = Report()
    app = harpy.App()
    app.ws("/rooms/:room", report, authenticate=sync_hook if kind == "sync" else async_hook)
    async with (
        serve(app) as url,
        client(f"{url}/rooms/blue?x=1", additional_headers={"X-User": "alice"}) as ws,
    ):
        assert await recv(ws) == '{"auth":{"user":"alice","room":"blue"},"subprotocol":null}'
        await ws.send("hi")
        assert await recv(ws) == "hi"
    request = seen[0]
    assert request.path == "/rooms/blue"
    assert request.query == {"x": "1"}
    assert request.remote_address == "127.0.0.1"
    assert request.route == "/rooms/:room"


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_hook_true_accepts_without_auth_data(kind: str) -> None:
    async def async_true(request: harpy.UpgradeRequest) -> bool:
        return True

    report = Report()
    app = harpy.App()
    app.ws("/t", report, authenticate=(lambda request: True) if kind == "sync" else async_true)
    async with serve(app) as url, client(f"{url}/t") as ws:
        assert await recv(ws) == '{"auth":null,"subprotocol":null}'
    assert report.opened == 1


@pytest.mark.parametrize("result", [False, None])
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_hook_false_or_none_refuses_with_401(kind: str, result: Any) -> None:
    async def async_hook(request: harpy.UpgradeRequest) -> Any:
        return result

    report = Report()
    app = harpy.App()
    app.ws("/f", report, authenticate=(lambda request: result) if kind == "sync" else async_hook)
    async with serve(app) as url:
        status, _, body = await refused(f"{url}/f")
        assert status == 401
        assert body == b"Unauthorized\n"
    assert report.opened == 0
    assert len(app.connections) == 0


async def test_success_mapping_puts_data_on_ws_auth() -> None:
    report = Report()
    app = harpy.App()
    app.ws("/ok", report, authenticate=lambda r: {"success": True, "data": {"user": {"id": 7}}})
    async with serve(app) as url, client(f"{url}/ok") as ws:
        assert await recv(ws) == '{"auth":{"user":{"id":7}},"subprotocol":null}'


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_failure_mapping_upgrades_then_closes_with_its_code(kind: str) -> None:
    # Seed 004: {success: false, code: 4001, reason: "No token provided"}.
    def hook(request: harpy.UpgradeRequest) -> Any:
        if "token" not in request.query:
            return {"success": False, "code": 4001, "reason": "No token provided"}
        return {"success": True, "data": {"token_seen": True}}

    async def async_hook(request: harpy.UpgradeRequest) -> Any:
        return hook(request)

    report = Report()
    app = harpy.App()
    app.ws("/private", report, authenticate=hook if kind == "sync" else async_hook)
    async with serve(app) as url:
        async with client(f"{url}/private") as ws:  # the upgrade itself succeeds
            with pytest.raises(ConnectionClosed):
                await recv(ws)
            assert await closed(ws) == (4001, "No token provided")
        assert report.opened == report.messages == report.closes == 0
        assert len(app.connections) == 0
        async with client(f"{url}/private?token=1") as ws:
            assert await recv(ws) == '{"auth":{"token_seen":true},"subprotocol":null}'
    assert report.opened == 1


async def test_hook_raising_deny_upgrades_then_closes() -> None:
    def hook(request: harpy.UpgradeRequest) -> Any:
        raise harpy.Deny(4003, "Banned")

    report = Report()
    app = harpy.App()
    app.ws("/d", report, authenticate=hook)
    async with serve(app) as url, client(f"{url}/d") as ws:
        assert await closed(ws) == (4003, "Banned")
    assert report.opened == 0


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_hook_raising_reject_refuses_with_its_status(kind: str) -> None:
    def hook(request: harpy.UpgradeRequest) -> Any:
        raise harpy.Reject(403, "Forbidden")

    async def async_hook(request: harpy.UpgradeRequest) -> Any:
        await asyncio.sleep(0)  # suspends once, then fails: the case under test
        raise harpy.Reject(403, "Forbidden")

    report = Report()
    app = harpy.App()
    app.ws("/r", report, authenticate=hook if kind == "sync" else async_hook)
    async with serve(app) as url:
        status, headers, body = await refused(f"{url}/r")
    assert (status, body) == (403, b"Forbidden\n")
    assert headers["connection"] == "close"
    assert report.opened == 0


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_hook_crash_is_500_and_logged_not_sent(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="harpy")

    def hook(request: harpy.UpgradeRequest) -> Any:
        raise RuntimeError("secret-xyz")

    async def async_hook(request: harpy.UpgradeRequest) -> Any:
        await asyncio.sleep(0)  # suspends once, then fails: the case under test
        raise RuntimeError("secret-xyz")

    report = Report()
    app = harpy.App()
    app.ws("/boom", report, authenticate=hook if kind == "sync" else async_hook)
    app.ws("/echo", {"message": echo})
    async with serve(app) as url:
        status, headers, body = await refused(f"{url}/boom")
        assert status == 500
        assert b"secret-xyz" not in body
        assert "secret-xyz" not in str(headers)
        assert "secret-xyz" in caplog.text  # the traceback stays on the server
        assert "/boom" in caplog.text
        # The server carries on.
        async with client(f"{url}/echo") as ws:
            await ws.send("still here")
            assert await recv(ws) == "still here"
    assert report.opened == 0


async def test_slow_async_hook_does_not_hold_up_other_clients() -> None:
    order: list[str] = []
    hook_running = asyncio.Event()
    release = asyncio.Event()

    async def slow(request: harpy.UpgradeRequest) -> Any:
        hook_running.set()
        await release.wait()  # pending until the fast client is done
        return {"slow": True}

    app = harpy.App()
    app.ws("/slow", Report(), authenticate=slow)
    app.ws("/fast", {"message": echo})
    async with serve(app) as url:

        async def slow_client() -> None:
            async with client(f"{url}/slow") as ws:
                order.append("slow open")
                assert await recv(ws) == '{"auth":{"slow":true},"subprotocol":null}'

        task = asyncio.create_task(slow_client())
        await asyncio.wait_for(hook_running.wait(), TIMEOUT)
        async with client(f"{url}/fast") as ws:
            for i in range(3):
                await ws.send(str(i))
                assert await recv(ws) == str(i)
        order.append("fast done")
        release.set()
        await asyncio.wait_for(task, TIMEOUT)
    assert order == ["fast done", "slow open"]


async def test_async_hook_outlasting_the_handshake_timeout() -> None:
    # The handshake timeout bounds a slow hook: 408.  When the hook returns later, nothing is
    # made for the dead connection (its data factory does not run) and the server carries on.
    made: list[int] = []
    release = asyncio.Event()
    returned = asyncio.Event()

    async def slow(request: harpy.UpgradeRequest) -> bool:
        try:
            await release.wait()  # until the 408 went out: the hook outlasts the timeout
            return True
        finally:
            returned.set()

    app = harpy.App(handshake_timeout=0.3)
    app.ws("/slow", Report(), authenticate=slow, data=lambda: made.append(1))
    app.ws("/echo", {"message": echo})
    async with serve(app) as url:
        status, _, _ = await refused(f"{url}/slow")
        assert status == 408
        release.set()
        await asyncio.wait_for(returned.wait(), TIMEOUT)
        async with client(f"{url}/echo") as ws:
            await ws.send("x")
            assert await recv(ws) == "x"
            assert len(app.connections) == 1
    assert made == []


# --------------------------------------------------------------------- short forms


async def test_authenticate_true_requires_authorization_header() -> None:
    report = Report()
    app = harpy.App()
    app.ws("/a", report, authenticate=True)
    async with serve(app) as url:
        status, headers, _ = await refused(f"{url}/a")
        assert status == 401
        assert headers["www-authenticate"] == "Bearer"
        status, _, _ = await refused(f"{url}/a", additional_headers={"Authorization": "  "})
        assert status == 401
        async with client(f"{url}/a", additional_headers={"Authorization": "Bearer abc"}) as ws:
            assert await recv(ws) == '{"auth":"Bearer abc","subprotocol":null}'
    assert report.opened == 1


async def test_authenticate_header_name_requires_that_header() -> None:
    report = Report()
    app = harpy.App()
    app.ws("/k", report, authenticate="x-api-key")
    async with serve(app) as url:
        assert (await refused(f"{url}/k"))[0] == 401
        assert (await refused(f"{url}/k", additional_headers={"Authorization": "k1"}))[0] == 401
        async with client(f"{url}/k", additional_headers={"X-API-Key": "k1"}) as ws:
            assert await recv(ws) == '{"auth":"k1","subprotocol":null}'


# --------------------------------------------------------------------- origins, subprotocols


async def test_allowed_origins() -> None:
    app = harpy.App()
    app.ws(
        "/o", {"message": echo}, allowed_origins=["https://app.example", "http://localhost:5173"]
    )
    async with serve(app) as url:
        for origin in ("https://app.example", "HTTPS://APP.EXAMPLE", "http://localhost:5173"):
            async with client(f"{url}/o", origin=origin) as ws:
                await ws.send("x")
                assert await recv(ws) == "x"
        for origin in ("https://evil.example", "https://app.example.evil", "null"):
            status, _, body = await refused(f"{url}/o", origin=origin)
            assert (status, body) == (403, ORIGIN_REFUSED.encode() + b"\n")
        async with client(f"{url}/o") as ws:  # no Origin: not a browser, allowed
            await ws.send("y")
            assert await recv(ws) == "y"


async def test_same_origin_only_by_default_and_star_for_any(serve_app: ServeApp) -> None:
    app = harpy.App()
    app.ws("/same", {"message": echo})
    app.ws("/any", {"message": echo}, allowed_origins="*")
    async with serve_app(app) as url:
        authority = url.removeprefix("ws://")  # what the client sends as Host
        port = int(authority.rpartition(":")[2])
        # The page's own host and port, whatever the scheme (a TLS proxy may sit in front).
        for origin in (f"http://{authority}", f"https://{authority}", f"HTTP://{authority}/"):
            async with client(f"{url}/same", origin=origin) as ws:
                await ws.send("x")
                assert await recv(ws) == "x"
        others = [
            f"http://localhost:{port}",  # another host name for the same socket: another site
            f"http://127.0.0.1:{port + 1 if port < 65535 else port - 1}",  # a dev server
            "http://127.0.0.1",  # port 80
            "https://evil.example",
            "null",
        ]
        for origin in others:
            status, _, body = await refused(f"{url}/same", origin=origin)
            assert status == 403, origin
            assert b'allowed_origins=["http://localhost:5173"]' in body
            async with client(f"{url}/any", origin=origin) as ws:
                await ws.send("y")
                assert await recv(ws) == "y"
        async with client(f"{url}/same") as ws:  # no Origin: not a browser, allowed
            await ws.send("z")
            assert await recv(ws) == "z"


async def test_subprotocol_first_offered_that_the_route_lists_wins() -> None:
    app = harpy.App()
    app.ws("/p", Report(), subprotocols=["a", "b"])
    app.ws("/req", Report(), subprotocols=["a", "b"], require_subprotocol=True)
    async with serve(app) as url:
        async with client(f"{url}/p", subprotocols=["b", "a"]) as ws:
            assert ws.subprotocol == "b"
            assert await recv(ws) == '{"auth":null,"subprotocol":"b"}'
        async with client(f"{url}/p", subprotocols=["c", "a"]) as ws:
            assert ws.subprotocol == "a"
        async with client(f"{url}/p") as ws:  # none offered, none required
            assert ws.subprotocol is None
            assert await recv(ws) == '{"auth":null,"subprotocol":null}'
        async with client(f"{url}/req", subprotocols=["a"]) as ws:
            assert ws.subprotocol == "a"
        status, _, body = await refused(f"{url}/req", subprotocols=["c"])
        assert (status, body) == (400, b"No supported subprotocol\n")
        assert (await refused(f"{url}/req"))[0] == 400


# --------------------------------------------------------------------- connection limits


async def test_max_connections() -> None:
    app = harpy.App(max_connections=2)
    app.ws("/echo", {"message": echo})
    async with serve(app) as url, contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(client(f"{url}/echo"))
        await stack.enter_async_context(client(f"{url}/echo"))
        status, headers, _ = await refused(f"{url}/echo")
        assert status == 503
        assert headers["retry-after"] == "5"
        await first.close()
        await eventually(lambda: len(app.connections) == 1)
        async with client(f"{url}/echo") as third:
            await third.send("in")
            assert await recv(third) == "in"


@pytest.mark.parametrize(
    ("limit", "status"), [("max_connections", 503), ("max_connections_per_ip", 429)]
)
async def test_connection_limits_hold_during_slow_async_authentication(
    limit: str, status: int
) -> None:
    # The limits are checked before the hook runs but counted only once the 101 went out: with
    # an async hook, handshakes in flight together must still not pass them.
    async def slow(request: harpy.UpgradeRequest) -> bool:
        # A slow hook, so that the four handshakes are in flight together: the case under test.
        await asyncio.sleep(0.2)
        return True

    statuses: list[int] = []
    all_answered = asyncio.Event()

    def answered(status: int) -> None:
        statuses.append(status)
        if len(statuses) == 4:
            all_answered.set()

    app = harpy.App(**{limit: 2})
    app.ws("/slow", {"message": echo}, authenticate=slow)
    async with serve(app) as url:

        async def attempt() -> None:
            try:
                async with client(f"{url}/slow") as ws:
                    await ws.send("x")
                    await recv(ws)
                    answered(101)
                    # Hold the place until every attempt has its answer.
                    await asyncio.wait_for(all_answered.wait(), TIMEOUT)
            except InvalidStatus as exc:
                answered(exc.response.status_code)

        await asyncio.wait_for(asyncio.gather(*(attempt() for _ in range(4))), TIMEOUT)
    assert sorted(statuses) == [101, 101, status, status], statuses


async def test_max_connections_per_ip() -> None:
    app = harpy.App(max_connections_per_ip=1)
    app.ws("/echo", {"message": echo})
    async with serve(app) as url:
        async with client(f"{url}/echo") as first:
            status, _, body = await refused(f"{url}/echo")
            assert (status, body) == (429, b"Too many connections from this address\n")
            await first.send("ok")
            assert await recv(first) == "ok"
        await eventually(lambda: len(app.connections) == 0)
        async with client(f"{url}/echo") as again:
            await again.send("ok")
            assert await recv(again) == "ok"


# --------------------------------------------------------------------- rate limit


async def test_rate_limit_closes_a_flooder_not_a_well_behaved_client() -> None:
    app = harpy.App()
    app.ws("/r", {"message": echo}, rate_limit=20, rate_burst=5)
    async with serve(app) as url, client(f"{url}/r") as polite, client(f"{url}/r") as flood:

        async def behave() -> None:
            for i in range(5):
                await polite.send(f"p{i}")
                assert await recv(polite) == f"p{i}"
                # The pace of a well-behaved client, under rate_limit: the case under test.
                await asyncio.sleep(0.1)

        task = asyncio.create_task(behave())
        with contextlib.suppress(ConnectionClosed):
            for i in range(50):
                await flood.send(f"f{i}")
        echoed = []
        with contextlib.suppress(ConnectionClosed):
            for _ in range(51):  # at most the 50 sent, then the close
                echoed.append(await recv(flood))
        assert await closed(flood) == (1008, "Rate limit exceeded")
        assert 5 <= len(echoed) < 10  # the burst, then the close
        await asyncio.wait_for(task, TIMEOUT)
        await polite.send("still fine")
        assert await recv(polite) == "still fine"
        assert polite.close_code is None


# --------------------------------------------------------------------- malformed, slow input


async def test_slowloris_gets_408_and_others_are_served() -> None:
    app = harpy.App(handshake_timeout=0.5)
    app.ws("/echo", {"message": echo})
    async with serve(app) as url:
        slow = await RawClient.connect(url)
        try:
            started = time.monotonic()
            slow.writer.write(b"GET /echo HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\n")
            await slow.writer.drain()
            async with client(f"{url}/echo") as ws:  # served while the slow one dawdles
                await ws.send("x")
                assert await recv(ws) == "x"
            slow.writer.write(b"X-Slow: 1\r\n")  # a trickle does not extend the deadline
            await slow.writer.drain()
            status, _, _ = await slow.read_response()
            assert status == 408
            assert 0.4 < time.monotonic() - started < scaled(1.5)
            # The body, then the server closes the connection.
            assert await asyncio.wait_for(slow.reader.read(), TIMEOUT) == b"Request Timeout\n"
        finally:
            await slow.close()
        async with client(f"{url}/echo") as ws:
            await ws.send("after")
            assert await recv(ws) == "after"


async def test_header_flood_gets_431_and_others_are_served() -> None:
    app = harpy.App(max_header_size=1024)
    app.ws("/echo", {"message": echo})
    async with serve(app) as url:
        flood = await RawClient.connect(url)
        try:
            headers = "".join(f"X-Flood-{i}: {'a' * 100}\r\n" for i in range(80))  # ~8.6 KiB
            assert len(headers) > 8 * 1024
            status, _, _ = await flood.request(
                b"GET /echo HTTP/1.1\r\nHost: test\r\n" + headers.encode()
            )
            assert status == 431
        finally:
            await flood.close()
        async with client(f"{url}/echo") as ws:
            await ws.send("after")
            assert await recv(ws) == "after"

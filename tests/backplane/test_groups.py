"""Rooms, route broadcasts, broadcasts to everyone and presence across two real apps on port 0,
through each backplane (memory, and real Redis and NATS servers), with real clients."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

import harpy
from harpy.pubsub import GroupKind, PresenceEvent
from harpy.pubsub.backplane import Backplane
from tests.helpers import MakeBackplane, recv

from ..helpers import serve
from ..timing import eventually, scaled

#: The heartbeat of presence in these tests (seconds): a dead node leaves within 4 of them.
INTERVAL = 0.2


class Groups:
    """``?rooms=a,b&name=ada`` joins rooms with that presence; a JSON message says what to send:
    ``{"rooms": [...], "self": bool, "data": ...}`` or ``{"route": true, "data": ...}``."""

    def open(self, ws: harpy.WebSocket[Any]) -> None:
        if "name" in ws.query:
            ws.presence = {"name": ws.query["name"]}
        for room in filter(None, ws.query.get("rooms", "").split(",")):
            ws.join(room)

    def message(self, ws: harpy.WebSocket[Any], message: str | bytes) -> None:
        order = json.loads(message)
        if "rooms" in order:
            ws.broadcast(order["data"], rooms=order["rooms"], include_self=order.get("self", False))
        elif "leave" in order:
            ws.leave(order["leave"])
            ws.send("left")
        else:
            ws.broadcast(order["data"], include_self=order.get("self", False))


class Echo:
    """Only the route's automatic broadcast."""

    def open(self, ws: harpy.WebSocket[Any]) -> None:
        ws.send("ready")


def make_app(backplane: Backplane) -> harpy.App:
    app = harpy.App(backplane=backplane, presence=True, presence_interval=INTERVAL)
    app.ws("/g", Groups)
    app.ws("/other", Groups)
    app.ws("/echo", Echo, auto_broadcast=True)
    return app


async def nothing_more(*clients: ClientConnection, wait: float = 0.1) -> None:
    # A window in which nothing may arrive: a slow machine cannot fail it, so it is not scaled.
    for client in clients:
        with pytest.raises(TimeoutError):
            got = await asyncio.wait_for(client.recv(), wait)
            raise AssertionError(f"unexpected message {got!r}")


@contextlib.asynccontextmanager
async def two_apps(make_backplane: MakeBackplane) -> AsyncIterator[tuple[harpy.App, harpy.App]]:
    a, b = make_app(make_backplane()), make_app(make_backplane())
    async with serve(a), serve(b):
        yield a, b


def subscribed(app: harpy.App, channel: str) -> Callable[[], bool]:
    backplane = app.backplane
    assert backplane is not None
    return lambda: backplane.is_subscribed(channel)


async def test_rooms_cross_nodes_once_and_exclude_the_sender_once(
    make_backplane: MakeBackplane,
) -> None:
    async with (
        two_apps(make_backplane) as (a, b), connect(f"{a.url}/g?rooms=x,y") as sender,
        connect(f"{a.url}/g?rooms=y") as near,
        connect(f"{b.url}/g?rooms=x,y") as both,
        connect(f"{b.url}/g?rooms=y") as only_y,
        connect(f"{b.url}/g?rooms=z") as elsewhere,
        connect(f"{b.url}/other?rooms=x") as other_route,
    ):
        for room in ("x", "y", "z"):
            await eventually(subscribed(b, "r:" + room))
        assert not subscribed(b, "r:w")()
        await sender.send(json.dumps({"rooms": ["x", "y", "x"], "data": "hi"}))
        for client in (near, both, only_y, other_route):
            assert await recv(client) == "hi"
        await sender.send(json.dumps({"rooms": ["y"], "data": "again", "self": True}))
        for client in (sender, near, both, only_y):
            assert await recv(client) == "again"
        # app.broadcast(rooms=..., route=...) keeps the route filter on every node.
        with pytest.raises(TypeError, match="room names are strings, not int"):
            a.broadcast("no", rooms=["x", 1])  # type: ignore[list-item]
        with pytest.raises(TypeError, match="not a string"):
            a.broadcast("no", rooms="x")
        assert a.broadcast(b"\x00bin", rooms=["x"], route="/other") == 0
        assert await recv(other_route) == b"\x00bin"
        await nothing_more(sender, near, both, only_y, elsewhere, other_route)
        # The last local member leaving a room unsubscribes its channel.
        await elsewhere.send(json.dumps({"leave": "z"}))
        assert await recv(elsewhere) == "left"
        await eventually(lambda: not subscribed(b, "r:z")())


async def test_route_and_all_broadcasts_cross_nodes(make_backplane: MakeBackplane) -> None:
    async with two_apps(make_backplane) as (a, b):
        assert not subscribed(b, "p:/g")()
        async with (
            connect(f"{a.url}/g") as sender,
            connect(f"{a.url}/g") as near,
            connect(f"{b.url}/g") as far,
            connect(f"{b.url}/other") as other,
        ):
            await eventually(subscribed(b, "p:/g"))
            await eventually(subscribed(b, "*"))
            await eventually(subscribed(a, "*"))
            await sender.send(json.dumps({"data": "route"}))
            assert await recv(near) == "route"
            assert await recv(far) == "route"
            assert a.broadcast({"to": "other"}, route="/other") == 0
            assert await recv(other) == '{"to":"other"}'
            assert b.broadcast("everyone") == 2
            for client in (sender, near, far, other):
                assert await recv(client) == "everyone"
            await nothing_more(sender, near, far, other)
        await eventually(lambda: not subscribed(b, "p:/g")())


async def test_auto_broadcast_crosses_nodes(make_backplane: MakeBackplane) -> None:
    async with (
        two_apps(make_backplane) as (a, b),
        connect(f"{a.url}/echo") as sender,
        connect(f"{b.url}/g") as far,
    ):
        assert await recv(sender) == "ready"
        await eventually(subscribed(b, "*"))
        await sender.send("auto")
        assert await recv(far) == "auto"
        await nothing_more(sender)


async def test_presence_across_nodes(make_backplane: MakeBackplane) -> None:
    async with two_apps(make_backplane) as (a, b):
        events: list[PresenceEvent] = []
        b.on_presence(events.append)
        await eventually(subscribed(b, "presence"))
        await eventually(subscribed(a, "presence"))
        async with connect(f"{a.url}/g?rooms=lobby&name=ada"), connect(f"{b.url}/g?rooms=lobby"):
            await eventually(lambda: b.present_count(room="lobby") == 2)
            await eventually(lambda: a.present_count(room="lobby") == 2)
            names = sorted(info.get("name", "") for info in b.present(room="lobby").values())
            assert names == ["", "ada"]
            assert b.present(topic="lobby") == {}
            joins = [(e.action, e.kind, e.group, e.info, e.local) for e in events]
            assert ("join", "room", "lobby", {"name": "ada"}, False) in joins
            assert ("join", "room", "lobby", {}, True) in joins
            # From this node or another (decoded from JSON), the kind is the one enum member.
            assert all(e.kind is GroupKind.ROOM for e in events)
        await eventually(lambda: b.present_count(room="lobby") == 0)
        await eventually(lambda: a.present_count(room="lobby") == 0)
        leaves = [(e.local, e.info) for e in events if e.action == "leave"]
        assert sorted(leaves, key=lambda leave: leave[0]) == [(False, {"name": "ada"}), (True, {})]


async def test_a_node_that_starts_late_learns_presence_and_one_that_stops_leaves_it(
    make_backplane: MakeBackplane,
) -> None:
    a = make_app(make_backplane())
    async with serve(a), connect(f"{a.url}/g?rooms=r1&name=ada") as ada:
        b = make_app(make_backplane())
        async with serve(b):
            await eventually(lambda: b.present(room="r1") != {})
            assert list(b.present(room="r1").values()) == [{"name": "ada"}]
            # A new info reaches the other node too.
            await ada.send(json.dumps({"leave": "r1"}))
            assert await recv(ada) == "left"
            await eventually(lambda: b.present_count(room="r1") == 0)
            async with connect(f"{b.url}/g?rooms=r2&name=bob"):
                await eventually(lambda: a.present_count(room="r2") == 1)
        # b said goodbye: a drops its members at once, without waiting for the expiry.
        await eventually(lambda: a.present_count(room="r2") == 0, timeout=scaled(INTERVAL * 2))


async def test_presence_without_a_backplane_and_its_errors() -> None:
    app = harpy.App(presence=True)
    app.ws("/g", Groups)
    seen: list[tuple[str, str]] = []

    async def on_presence(event: PresenceEvent) -> None:
        seen.append((event.action, event.id))

    app.on_presence(on_presence)
    async with serve(app) as url, connect(f"{url}/g?rooms=r&name=solo"):
        await eventually(lambda: app.present_count(room="r") == 1)
        (conn_id,) = app.present(room="r")
        await eventually(lambda: seen == [("join", conn_id)])
    assert app.present_count(room="r") == 0
    await eventually(lambda: seen == [("join", conn_id), ("leave", conn_id)])
    with pytest.raises(TypeError, match="exactly one of topic= and room="):
        app.present(topic="a", room="b")
    with pytest.raises(TypeError, match="exactly one"):
        app.present_count()
    with pytest.raises(TypeError, match="must be callable"):
        app.on_presence("nope")  # type: ignore[arg-type]
    off = harpy.App()
    with pytest.raises(harpy.ConfigurationError, match=r"presence is off.*App\(presence=True\)"):
        off.present(room="r")
    with pytest.raises(harpy.ConfigurationError, match="presence_interval"):
        harpy.App(presence=True, presence_interval=0)


async def test_presence_info_must_be_a_json_dict() -> None:
    app = harpy.App(presence=True)
    errors: list[str] = []

    class Bad:
        def open(self, ws: harpy.WebSocket[Any]) -> None:
            for value in (["list"], {"x": object()}):
                try:
                    ws.presence = value  # type: ignore[assignment]
                except TypeError as exc:
                    errors.append(str(exc))
            ws.send("ok")

    app.ws("/bad", Bad)
    async with serve(app) as url, connect(f"{url}/bad") as client:
        assert await recv(client) == "ok"
    assert errors[0] == "ws.presence takes a dict, not list"
    assert errors[1].startswith("ws.presence must be JSON-serialisable")


@pytest.mark.parametrize("backend", ["redis", "nats"])
async def test_a_killed_node_leaves_presence_within_four_intervals(
    backend: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue(f"{backend}_url")
    prefix = f"kill-{uuid.uuid4().hex[:8]}" + (":" if backend == "redis" else ".")
    make: MakeBackplane = (
        (lambda: harpy.RedisBackplane(url, channel_prefix=prefix))
        if backend == "redis"
        else (lambda: harpy.NatsBackplane(url, subject_prefix=prefix))
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.backplane.presence_node",
        backend,
        url,
        prefix,
        str(INTERVAL),
        stdout=asyncio.subprocess.PIPE,
        cwd=str(Path(__file__).parents[2]),
    )
    try:
        assert proc.stdout is not None
        port = int(await asyncio.wait_for(proc.stdout.readline(), scaled(10.0)))
        app = make_app(make())
        async with (
            serve(app),
            connect(f"ws://127.0.0.1:{port}/g?rooms=doomed&name=ghost"),
            connect(f"{app.url}/g?rooms=doomed&name=alive"),
        ):
            await eventually(lambda: app.present_count(room="doomed") == 2)
            loop = asyncio.get_running_loop()
            proc.kill()  # SIGKILL: no goodbye, only the expiry can tell
            killed_at = loop.time()
            await proc.wait()
            bound = 4 * INTERVAL
            await eventually(
                lambda: app.present_count(room="doomed") == 1, timeout=bound + scaled(0.5)
            )
            took = loop.time() - killed_at
            assert list(app.present(room="doomed").values()) == [{"name": "alive"}]
            assert took <= bound + scaled(0.2), f"dropped after {took:.2f} s, bound {bound} s"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_presence_example_lists_who_is_online_on_both_nodes(
    make_backplane: MakeBackplane,
) -> None:
    spec = importlib.util.spec_from_file_location(
        "presence_example", Path(__file__).parents[2] / "examples" / "presence.py"
    )
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    a, b = example.make_app(make_backplane()), example.make_app(make_backplane())
    async with serve(a), serve(b), connect(f"{a.url}/online?name=ada") as ada:
        assert json.loads(await recv(ada)) == {"online": ["ada"]}
        await eventually(subscribed(b, "presence"))
        async with connect(f"{b.url}/online?name=bob") as bob:
            for _ in range(3):  # bob's own list may come before ada's presence reached b
                if json.loads(await recv(bob)) == {"online": ["ada", "bob"]}:
                    break
            else:
                raise AssertionError("bob never saw ada")
            assert json.loads(await recv(ada)) == {"online": ["ada", "bob"]}
            await eventually(subscribed(a, "r:online"))
            await bob.send("hello")
            assert json.loads(await recv(ada)) == {"from": "bob", "text": "hello"}
        assert json.loads(await recv(ada)) == {"online": ["ada"]}

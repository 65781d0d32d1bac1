"""Two real harpy apps on port 0 sharing topics through each backplane, a real client on each."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

import harpy
from harpy.pubsub.backplane import Backplane, MemoryBackplane
from tests.helpers import MakeBackplane

from ..helpers import serve
from ..timing import eventually


class Chat:
    """Everyone subscribes to ``room``; a message is published to it, ``leave`` unsubscribes."""

    def open(self, ws: harpy.WebSocket[Any]) -> None:
        ws.subscribe("room")

    def message(self, ws: harpy.WebSocket[Any], message: str | bytes) -> None:
        if message == "leave":
            ws.unsubscribe("room")
            ws.send("left")
        else:
            ws.publish("room", message)


def make_app(backplane: Backplane, **options: Any) -> harpy.App:
    app = harpy.App(backplane=backplane, **options)
    app.ws("/chat", Chat)
    return app


async def nothing_more(client: ClientConnection, wait: float = 0.1) -> None:
    # A window in which nothing may arrive: a slow machine cannot fail it, so it is not scaled.
    with pytest.raises(TimeoutError):
        got = await asyncio.wait_for(client.recv(), wait)
        raise AssertionError(f"unexpected message {got!r}")


class Nodes:
    def __init__(self, a: harpy.App, b: harpy.App) -> None:
        self.a, self.b = a, b
        assert a.url is not None and b.url is not None
        self.url_a, self.url_b = f"{a.url}/chat", f"{b.url}/chat"


@contextlib.asynccontextmanager
async def two_nodes(make_backplane: MakeBackplane, **options: Any) -> AsyncIterator[Nodes]:
    app_a, app_b = make_app(make_backplane(), **options), make_app(make_backplane(), **options)
    async with serve(app_a), serve(app_b):
        yield Nodes(app_a, app_b)


def subscribed(app: harpy.App, topic: str) -> Callable[[], bool]:
    backplane = app.backplane
    assert backplane is not None
    return lambda: backplane.is_subscribed("t:" + topic)


async def test_publish_on_one_node_reaches_the_other_once_in_order(
    make_backplane: MakeBackplane,
) -> None:
    async with (
        two_nodes(make_backplane) as n,
        connect(n.url_a) as sender,
        connect(n.url_a) as neighbour,
        connect(n.url_b) as remote,
    ):
        await eventually(subscribed(n.b, "room"))
        await eventually(subscribed(n.a, "room"))
        sent: list[str | bytes] = []
        for i in range(50):
            data: str | bytes = f"text {i}" if i % 2 else bytes([i, 0, 255])
            sent.append(data)
            await sender.send(data)
        await sender.send("end")
        sent.append("end")
        # Text stays text and binary stays binary; each once, in order.
        assert [await remote.recv() for _ in sent] == sent
        assert [await neighbour.recv() for _ in sent] == sent
        await nothing_more(remote)
        await nothing_more(neighbour)
        await nothing_more(sender)  # ws.publish skips the publisher (publish_to_self off)


async def test_publish_to_self_also_applies_across_nodes(make_backplane: MakeBackplane) -> None:
    async with (
        two_nodes(make_backplane, publish_to_self=True) as n,
        connect(n.url_a) as sender,
        connect(n.url_b) as remote,
    ):
        await eventually(subscribed(n.b, "room"))
        await sender.send("hi")
        assert await sender.recv() == "hi"  # locally, once (its own echo is ignored)
        assert await remote.recv() == "hi"
        await nothing_more(sender)
        await nothing_more(remote)


async def test_app_publish_counts_local_deliveries_only(make_backplane: MakeBackplane) -> None:
    async with (
        two_nodes(make_backplane) as n,
        connect(n.url_a) as a1,
        connect(n.url_a) as a2,
        connect(n.url_b) as b1,
    ):
        await eventually(subscribed(n.a, "room"))
        assert n.b.publish("room", "from b") == 1
        assert n.b.publish("room", b"\x00bin") == 1
        for client in (a1, a2, b1):
            assert await client.recv() == "from b"
            assert await client.recv() == b"\x00bin"
        assert n.b.publish("nobody", {"json": True}) == 0
        await nothing_more(a1)
        await nothing_more(b1)


async def test_last_local_subscriber_leaving_unsubscribes_the_backplane(
    make_backplane: MakeBackplane,
) -> None:
    async with two_nodes(make_backplane) as n, connect(n.url_a) as sender:
        async with connect(n.url_b) as b1, connect(n.url_b) as b2:
            await eventually(subscribed(n.b, "room"))
            await b1.send("leave")
            assert await b1.recv() == "left"
            # Time for an unsubscription that must not come: not a synchronisation.
            await asyncio.sleep(0.05)
            assert subscribed(n.b, "room")()  # b2 still listens
            await b2.send("leave")
            assert await b2.recv() == "left"
            await eventually(lambda: not subscribed(n.b, "room")())
            await sender.send("after leaving")
            await nothing_more(b1)
            await nothing_more(b2)
        # A closed connection leaves its topics too.
        async with connect(n.url_b):
            await eventually(subscribed(n.b, "room"))
        await eventually(lambda: not subscribed(n.b, "room")())
        assert n.a.backplane is not None and n.a.backplane.running


async def test_shutdown_stops_the_backplane_and_listen_starts_it_again() -> None:
    backplane = MemoryBackplane("restart")
    app = make_app(backplane)
    started: list[bool] = []
    app.on_startup(lambda: started.append(backplane.running))
    async with serve(app) as url:
        assert started == [False] and backplane.running  # started after the startup hooks
        async with connect(f"{url}/chat"):
            await eventually(subscribed(app, "room"))
    assert not backplane.running
    assert app.publish("room", "not listening") == 0  # local only, no error
    async with serve(app):
        assert backplane.running and not backplane.is_subscribed("t:room")


def test_backplane_must_be_a_backplane() -> None:
    with pytest.raises(harpy.ConfigurationError, match="must be a Backplane"):
        harpy.App(backplane="redis://localhost")  # type: ignore[arg-type]

"""The official centrifuge-python SDK's events, recorded for the tests: every wait bounded."""

from __future__ import annotations

import asyncio
from typing import Any

from centrifuge import Client, ClientEventHandler, SubscriptionEventHandler

from tests.timing import TIMEOUT


class Events:
    """A queue per event name; :meth:`next` waits (bounded) for the next one of a name."""

    def __init__(self) -> None:
        self._queues: dict[str, asyncio.Queue[Any]] = {}

    def queue(self, name: str) -> asyncio.Queue[Any]:
        found = self._queues.get(name)
        if found is None:
            found = self._queues[name] = asyncio.Queue()
        return found

    def put(self, name: str, ctx: Any) -> None:
        self.queue(name).put_nowait(ctx)

    async def next(self, name: str, timeout: float = TIMEOUT) -> Any:
        return await asyncio.wait_for(self.queue(name).get(), timeout)

    def pending(self, name: str) -> int:
        return self.queue(name).qsize()


class ClientEvents(ClientEventHandler, Events):
    def __init__(self) -> None:
        Events.__init__(self)

    async def on_connected(self, ctx: Any) -> None:
        self.put("connected", ctx)

    async def on_disconnected(self, ctx: Any) -> None:
        self.put("disconnected", ctx)

    async def on_connecting(self, ctx: Any) -> None:
        self.put("connecting", ctx)

    async def on_error(self, ctx: Any) -> None:
        self.put("error", ctx)

    async def on_subscribed(self, ctx: Any) -> None:
        self.put("subscribed", ctx)

    async def on_unsubscribed(self, ctx: Any) -> None:
        self.put("unsubscribed", ctx)

    async def on_publication(self, ctx: Any) -> None:
        self.put("publication", ctx)


class SubEvents(SubscriptionEventHandler, Events):
    def __init__(self) -> None:
        Events.__init__(self)

    async def on_subscribed(self, ctx: Any) -> None:
        self.put("subscribed", ctx)

    async def on_subscribing(self, ctx: Any) -> None:
        self.put("subscribing", ctx)

    async def on_unsubscribed(self, ctx: Any) -> None:
        self.put("unsubscribed", ctx)

    async def on_publication(self, ctx: Any) -> None:
        self.put("publication", ctx)

    async def on_join(self, ctx: Any) -> None:
        self.put("join", ctx)

    async def on_leave(self, ctx: Any) -> None:
        self.put("leave", ctx)

    async def on_error(self, ctx: Any) -> None:
        self.put("error", ctx)


def make_client(url: str, **kwargs: Any) -> tuple[Client, ClientEvents]:
    events = ClientEvents()
    kwargs.setdefault("timeout", TIMEOUT)
    kwargs.setdefault("max_reconnect_delay", 0.5)
    return Client(url, events, **kwargs), events

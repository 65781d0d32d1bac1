"""Recovery with the official centrifuge-python SDK: a client cut off for 2 s while 1,000
publications go out gets every one exactly once and in order; across a restart of its server
process with Redis history (recovered, the publisher being another node) and with memory
history (told ``recovered: false``)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import jwt
import pytest

from harpy.channels import Channels
from tests.channels.conftest import SECRET
from tests.channels.proxy import Proxy, publish_while_cut
from tests.channels.sdk import SubEvents, make_client
from tests.channels.server_app import make_app
from tests.helpers import serve
from tests.timing import scaled

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MISSED = 1000


async def _collect(events: SubEvents, count: int) -> list[Any]:
    """The next ``count`` publications' data (bounded: each within TIMEOUT)."""
    return [(await events.next("publication")).pub.data["n"] for _ in range(count)]


async def test_a_client_cut_off_for_two_seconds_gets_all_1000_once_in_order() -> None:
    app, endpoint = make_app("memory")
    assert isinstance(endpoint, Channels)
    async with serve(app) as url:
        port = int(url.rsplit(":", 1)[1])
        proxy = Proxy(port)
        await proxy.start()
        client, client_events = make_client(
            f"ws://127.0.0.1:{proxy.port}/connection/websocket", max_reconnect_delay=0.3
        )
        try:
            await client.connect()
            events = SubEvents()
            await client.new_subscription("chat:cut", events).subscribe()
            first = await events.next("subscribed")
            assert first.recoverable
            for n in range(10):
                await endpoint.publish("chat:cut", {"n": n})
            assert await _collect(events, 10) == list(range(10))
            # 1,000 publications spread over the 2 s the client is away.
            await publish_while_cut(proxy, lambda n: endpoint.publish("chat:cut", {"n": n}), 10)
            again = await events.next("subscribed", scaled(10.0))
            assert again.was_recovering and again.recovered
            got = await _collect(events, MISSED)
            assert got == list(range(10, 10 + MISSED))
            await endpoint.publish("chat:cut", {"n": -1})
            assert await _collect(events, 1) == [-1]  # nothing else came in between
            assert events.pending("publication") == 0
            assert client_events.pending("disconnected") == 0
        finally:
            await client.disconnect()
            await proxy.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``tests/channels/server_app.py`` in a process of its own, killed and started again on
    one port."""

    def __init__(self, *args: str) -> None:
        self.port = _free_port()
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [sys.executable, "-m", "tests.channels.server_app", str(self.port), *self.args]
        self.proc = subprocess.Popen(argv, cwd=ROOT)
        deadline = time.monotonic() + scaled(15.0)
        for _ in range(math.ceil(scaled(15.0) / 0.05)):
            if self.proc.poll() is not None:
                pytest.fail(f"the server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        pytest.fail("the server did not listen in time")

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(scaled(10.0))


@contextlib.contextmanager
def server_process(*args: str) -> Iterator[ServerProcess]:
    server = ServerProcess(*args)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@contextlib.asynccontextmanager
async def subscribed_client(port: int) -> AsyncIterator[tuple[Any, SubEvents]]:
    client, _ = make_client(f"ws://127.0.0.1:{port}/connection/websocket", max_reconnect_delay=0.3)
    await client.connect()
    events = SubEvents()
    await client.new_subscription("chat:restart", events).subscribe()
    try:
        yield client, events
    finally:
        await client.disconnect()


@pytest.mark.parametrize("kind", ["redis", "jetstream"])
async def test_a_restarted_server_with_shared_history_recovers_what_another_node_published(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """The subscriber's server process is killed; 1,000 publications go out through another
    node meanwhile; the restarted process recovers all of them from Redis or JetStream."""
    url = request.getfixturevalue("redis_url" if kind == "redis" else "jetstream_url")
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    publisher_app, publisher = make_app(kind, url, prefix)
    assert isinstance(publisher, Channels)
    with server_process(kind, url, prefix) as node:
        async with serve(publisher_app), subscribed_client(node.port) as (_, events):
            first = await events.next("subscribed")
            assert first.recoverable and first.stream_position.offset == 0
            # Live, from the other node: the Redis script announced each to this node.
            for n in range(10):
                await publisher.publish("chat:restart", {"n": n})
            assert await _collect(events, 10) == list(range(10))
            node.kill()
            for n in range(10, 10 + MISSED):
                await publisher.publish("chat:restart", {"n": n})
            await asyncio.to_thread(node.start)
            again = await events.next("subscribed", scaled(15.0))
            assert again.was_recovering and again.recovered
            assert again.stream_position.epoch == first.stream_position.epoch
            assert await _collect(events, MISSED) == list(range(10, 10 + MISSED))
            await publisher.publish("chat:restart", {"n": -1})
            assert await _collect(events, 1) == [-1]
            assert events.pending("publication") == 0


async def test_a_restarted_server_with_memory_history_says_not_recovered() -> None:
    with server_process("memory") as node:
        async with subscribed_client(node.port) as (client, events):
            first = await events.next("subscribed")
            for n in range(5):
                await client.publish("chat:restart", {"n": n})
            assert await _collect(events, 5) == list(range(5))
            node.kill()
            await asyncio.to_thread(node.start)
            again = await events.next("subscribed", scaled(15.0))
            assert again.was_recovering and not again.recovered
            assert again.stream_position.epoch != first.stream_position.epoch
            await client.publish("chat:restart", {"n": 99})
            assert await _collect(events, 1) == [99]
            assert events.pending("publication") == 0


async def first_live(events: SubEvents, publish: Callable[[int], Awaitable[object]]) -> int:
    """Publish 1, 2 ... from another node until one arrives (the backplane subscribes in the
    background), let the resubscription of an early gap finish, forget what came; the last
    number published."""
    n = 0
    for n in range(1, 200):
        await publish(n)
        with contextlib.suppress(TimeoutError):
            await events.next("publication", 0.05)
            break
    # Settle: an early publication may have come before the backplane subscribed (a gap,
    # recovered with a resubscription): let that finish, then forget it.
    for _ in range(50):
        await asyncio.sleep(0.1)
        if not events.pending("publication") and not events.pending("subscribed"):
            break
        while events.pending("publication") or events.pending("subscribed"):
            name = "publication" if events.pending("publication") else "subscribed"
            await events.next(name)
    return n


@contextlib.asynccontextmanager
async def subscribed_through_proxy(url: str) -> AsyncIterator[tuple[Proxy, Any, SubEvents]]:
    """A :func:`subscribed_client` of the server at ``url`` through a :class:`Proxy` to cut."""
    proxy = Proxy(int(url.rsplit(":", 1)[1]))
    await proxy.start()
    try:
        async with subscribed_client(proxy.port) as (client, events):
            yield proxy, client, events
    finally:
        await proxy.stop()


async def recovers_while_cut(
    proxy: Proxy,
    events: SubEvents,
    first: Any,
    publish: Callable[[int], Awaitable[object]],
    live: Callable[[int], Awaitable[object]] | None = None,
) -> None:
    """A subscription (``first``, its subscribed event) gets publications of ``live`` (else
    ``publish``) live, then is cut off for 2 s while ``publish`` sends 1,000: it recovers
    them all once, in order, in its epoch, then gets a live one again."""
    live = publish if live is None else live
    n = await first_live(events, live)
    await publish_while_cut(proxy, publish, n + 1)
    again = await events.next("subscribed", scaled(15.0))
    assert again.was_recovering and again.recovered
    assert again.stream_position.epoch == first.stream_position.epoch
    assert await _collect(events, MISSED) == list(range(n + 1, n + 1 + MISSED))
    await live(-1)
    assert await _collect(events, 1) == [-1]  # nothing else came in between
    assert events.pending("publication") == 0


@pytest.mark.parametrize("backplane", ["redis", "nats"])
async def test_publisher_on_another_node_and_a_client_cut_off_for_two_seconds(
    backplane: str, redis_url: str, request: pytest.FixtureRequest
) -> None:
    """Redis history shared by two nodes; the publications travel over the Redis backplane
    (announced by the history's script) or over NATS (published after the append)."""
    nats = request.getfixturevalue("nats_url") if backplane == "nats" else ""
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    here_app, _ = make_app("redis", redis_url, prefix, nats)
    there_app, there = make_app("redis", redis_url, prefix, nats)
    assert isinstance(there, Channels)
    async with (
        serve(here_app) as url,
        serve(there_app),
        subscribed_through_proxy(url) as (proxy, _, events),
    ):
        first = await events.next("subscribed")
        await recovers_while_cut(
            proxy, events, first, lambda m: there.publish("chat:restart", {"n": m})
        )
        # Announced by the Redis script or relayed over NATS, each envelope carries
        # the publisher's sequence: none is counted lost on the receiving node.
        assert here_app.backplane is not None and here_app.backplane.lost == 0


async def test_a_server_side_subscription_recovers_through_connect() -> None:
    """Channels of the connection token: on reconnect the SDK sends their positions in
    ``connect``'s ``subs`` and gets what it missed in the connect reply's subscriptions."""
    app, endpoint = make_app("memory")
    assert isinstance(endpoint, Channels)
    async with serve(app) as url:
        proxy = Proxy(int(url.rsplit(":", 1)[1]))
        await proxy.start()
        mine = jwt.encode({"sub": "zed", "channels": ["chat:zed"]}, SECRET)
        client, events = make_client(
            f"ws://127.0.0.1:{proxy.port}/connection/websocket", token=mine
        )
        try:
            await client.connect()
            first = await events.next("subscribed")
            assert (first.channel, first.recoverable) == ("chat:zed", True)
            await endpoint.publish("chat:zed", {"n": 0})
            assert (await events.next("publication")).pub.data == {"n": 0}
            await publish_while_cut(
                proxy, lambda n: endpoint.publish("chat:zed", {"n": n}), 1, count=100
            )
            again = await events.next("subscribed", scaled(10.0))
            assert again.was_recovering and again.recovered
            got = [(await events.next("publication")).pub.data["n"] for _ in range(100)]
            assert got == list(range(1, 101))
        finally:
            await client.disconnect()
            await proxy.stop()


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_publications_during_the_resubscription_are_merged_without_gap_or_twice(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """Publishing never stops: those that go out while history is read (Redis: a real wait)
    are held and merged."""
    if kind == "redis":
        url = request.getfixturevalue("redis_url")
        app, endpoint = make_app(kind, url, f"test-{uuid.uuid4().hex[:12]}:")
    else:
        app, endpoint = make_app(kind)
    assert isinstance(endpoint, Channels)
    async with serve(app) as url:
        proxy = Proxy(int(url.rsplit(":", 1)[1]))
        await proxy.start()
        client, _ = make_client(f"ws://127.0.0.1:{proxy.port}/connection/websocket")
        sent = 0
        stop = asyncio.Event()

        async def publisher() -> None:
            nonlocal sent
            while not stop.is_set() and sent < 4000:  # within the history of 5,000
                await endpoint.publish("chat:busy", {"n": sent})
                sent += 1
                await asyncio.sleep(0 if kind == "redis" else 0.001)

        try:
            await client.connect()
            events = SubEvents()
            await client.new_subscription("chat:busy", events).subscribe()
            await events.next("subscribed")
            task = asyncio.get_running_loop().create_task(publisher())
            for _ in range(3):  # three cuts while publishing goes on
                await asyncio.sleep(0.2)
                await proxy.cut()
                await asyncio.sleep(0.2)
                await proxy.restore()
                again = await events.next("subscribed", scaled(10.0))
                assert again.recovered
            await asyncio.sleep(0.2)
            stop.set()
            await asyncio.wait_for(task, scaled(10.0))
            got = [(await events.next("publication")).pub.data["n"] for _ in range(sent)]
            assert got == list(range(sent))
            assert events.pending("publication") == 0
        finally:
            stop.set()
            await client.disconnect()
            await proxy.stop()

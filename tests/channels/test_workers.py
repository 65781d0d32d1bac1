"""Channels under ``--workers`` with no set-up: the embedded nats-server runs JetStream, and an
endpoint whose options name no history keeps it there, so a client recovers what it missed
whichever worker published it and whichever it reconnects to.  Real ``python -m harpy ...
--workers 2`` processes, the official centrifuge-python SDK; and how the history is chosen when
the options name none (memory on one process, the app's beside a backplane, else an error)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from centrifuge import Client

import harpy
from harpy.channels import ChannelOptions, Channels, MemoryHistory, Namespace
from harpy.exceptions import ConfigurationError
from harpy.pubsub.nats_history import JetStreamHistory
from tests.channels.sdk import SubEvents, make_client
from tests.channels.test_recovery import MISSED, recovers_while_cut, subscribed_through_proxy
from tests.e2e.test_workers import Supervised, supervised
from tests.helpers import serve
from tests.timing import scaled

#: Publisher connections opened to find both workers: with two listeners the chance that all
#: of them land on one is 2**-(PUBLISHERS - 1).
PUBLISHERS = 30
ENDPOINT = "/connection/websocket"
STORE = r"embedded nats-server \(pid \d+\) on \S+, JetStream in (\S+)"


async def workers_started(server: Supervised) -> str:
    """The URL of a ``--workers 2`` server once both workers listen."""
    (url,) = await server.wait_for(r"2 workers on (ws://\S+)", timeout=scaled(15.0))
    await server.wait_for(r"(listening on)", count=2, timeout=scaled(15.0))
    return url


async def pid_of(client: Client) -> int:
    """The pid of the worker serving ``client`` (the app's ``rpc("pid")``)."""
    return int((await client.rpc("pid", None)).data)


@contextlib.asynccontextmanager
async def publishers(url: str) -> AsyncIterator[dict[int, Client]]:
    """One connected client on each worker, by pid: connections are opened until both workers
    have one (at most PUBLISHERS; the kernel spreads them)."""
    opened: list[Client] = []
    found: dict[int, Client] = {}
    try:
        for _ in range(PUBLISHERS):
            client, _ = make_client(url + ENDPOINT)
            opened.append(client)
            await client.connect()
            found.setdefault(await pid_of(client), client)
            if len(found) == 2:
                break
        assert len(found) == 2, f"{PUBLISHERS} connections all reached one worker"
        yield found
    finally:
        for client in opened:
            await client.disconnect()


async def test_a_client_cut_off_recovers_1000_publications_of_both_workers() -> None:
    """Cut off for 2 s while 1,000 publications go out, half through a connection on each
    worker: the subscriber gets all of them once, in order, ``recovered`` and in its epoch."""
    async with supervised("tests.channels.workers_app:app", "--workers", "2", "--port", "0") as (
        server
    ):
        url = await workers_started(server)
        await server.wait_for(STORE)  # JetStream is on, with nothing set
        async with subscribed_through_proxy(url) as (proxy, subscriber, events):
            first = await events.next("subscribed")
            assert first.recoverable
            home = await pid_of(subscriber)
            async with publishers(url) as by_pid:
                (away,) = set(by_pid) - {home}
                served: dict[int, int] = dict.fromkeys(by_pid, 0)

                def publisher(pid: int) -> Callable[[int], Awaitable[None]]:
                    async def publish(m: int) -> None:
                        await by_pid[pid].publish("chat:restart", {"n": m})
                        served[pid] += 1

                    return publish

                async def alternating(m: int) -> None:
                    await publisher((away, home)[m % 2])(m)

                # Live from the other worker first (the subscriber's relays it), then the
                # 1,000 missed alternate between a connection on each worker.
                live = publisher(away)
                await recovers_while_cut(proxy, events, first, alternating, live)
                assert served[home] == MISSED // 2
                # Whichever worker it came back to (the kernel chose), it is served there.
                assert await pid_of(subscriber) in by_pid


async def test_history_outlives_a_killed_nats_server_not_a_restart_of_the_whole_server() -> None:
    """The supervisor restarts a killed nats-server on its store: the channel goes on in its
    epoch.  The store is the supervisor's private folder, removed when it stops: after a
    restart of the whole server the channel has a new epoch, and a client is told it missed
    what it cannot get (``recovered: false``)."""
    async with supervised("examples.channels_chat:app", "--workers", "2", "--port", "0") as (
        server
    ):
        url = await workers_started(server)
        (store,) = await server.wait_for(STORE)
        (nats_pid,) = await server.wait_for(r"embedded nats-server \(pid (\d+)\) on")
        port = url.rsplit(":", 1)[1]
        client, _ = make_client(url + ENDPOINT, data={"name": "Ada"}, max_reconnect_delay=0.3)
        events = SubEvents()
        try:
            await client.connect()
            room = client.new_subscription("chat:restart", events)
            await room.subscribe()
            first = await events.next("subscribed")
            assert first.recoverable
            for n in range(3):
                await client.publish("chat:restart", {"text": str(n)})
            got = [(await events.next("publication")).pub.data["text"] for _ in range(3)]
            assert got == ["0", "1", "2"]

            os.kill(int(nats_pid), signal.SIGKILL)
            await server.wait_for(r"embedded nats-server \(pid \d+\) (on)", count=2)
            # Both workers' clients are back (the history's retries with the backplane's).
            await server.wait_for(r"NatsBackplane .*(reconnected)", count=2, timeout=scaled(15.0))
            await client.publish("chat:restart", {"text": "3"})
            publication = await events.next("publication")
            assert (publication.pub.data["text"], publication.pub.offset) == ("3", 4)
            kept = await room.history(limit=10)
            assert [p.data["text"] for p in kept.publications] == ["0", "1", "2", "3"]
            assert kept.epoch == first.stream_position.epoch
            assert events.pending("subscribed") == 0  # no gap, no new epoch seen

            server.proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(server.proc.wait(), scaled(20.0)) == 0
            assert Path(store).is_absolute() and not Path(store).exists()
            async with supervised(
                "examples.channels_chat:app", "--workers", "2", "--port", port
            ) as restarted:
                await workers_started(restarted)
                (new_store,) = await restarted.wait_for(STORE)
                assert new_store != store
                again = await events.next("subscribed", scaled(15.0))
                assert again.was_recovering and not again.recovered
                assert again.stream_position.epoch != first.stream_position.epoch
                await client.publish("chat:restart", {"text": "after"})
                publication = await events.next("publication")
                assert publication.pub.data["text"] == "after"
                assert events.pending("publication") == 0
                await client.disconnect()
                restarted.proc.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(restarted.proc.wait(), scaled(20.0)) == 0
                assert not Path(new_store).exists()
        finally:
            await client.disconnect()


async def test_jetstream_turned_off_stops_the_workers_with_what_to_do() -> None:
    env = {"HARPY_EMBEDDED_JETSTREAM": "0"}
    async with supervised(
        "examples.channels_chat:app", "--workers", "2", "--port", "0", env=env
    ) as server:
        (message,) = await server.wait_for(
            r"worker pid \d+: (channels at '/connection/websocket' keep history.*)",
            timeout=scaled(15.0),
        )
        assert "RedisHistory" in message and "JetStreamHistory" in message
        assert "HARPY_EMBEDDED_JETSTREAM=0" in message
        assert await asyncio.wait_for(server.proc.wait(), scaled(20.0)) == 1
        assert not any(re.search(STORE, line) for line in server.lines)
        await server.wait_for(r"(stopped on a configuration error)")


# ----------------------------------------------------------------- choosing the history


def _chat(**options: Any) -> ChannelOptions:
    chat = Namespace(history_size=10, allow_subscribe=True, allow_publish=True)
    return ChannelOptions(namespaces={"chat": chat}, **options)


async def test_on_one_process_a_history_not_named_is_kept_in_memory() -> None:
    app = harpy.App()
    endpoint = app.channels(ENDPOINT, {}, _chat(anonymous=True))
    assert isinstance(endpoint, Channels) and isinstance(endpoint.history, MemoryHistory)
    async with serve(app):
        first = await endpoint.publish("chat:one", {"n": 1})
        second = await endpoint.publish("chat:one", {"n": 2})
        assert first is not None and second is not None
        assert (second.offset, second.epoch) == (2, first.epoch)


async def test_without_history_anywhere_no_store_is_made() -> None:
    app = harpy.App(backplane=harpy.MemoryBackplane(f"none-{uuid.uuid4().hex}"))
    endpoint = app.channels(ENDPOINT, {}, ChannelOptions(anonymous=True))
    assert isinstance(endpoint, Channels) and endpoint.history is None
    async with serve(app):
        assert await endpoint.publish("plain", {"n": 1}) is None


async def test_beside_a_backplane_a_history_not_named_is_refused_saying_what_to_give() -> None:
    app = harpy.App(backplane=harpy.MemoryBackplane(f"refused-{uuid.uuid4().hex}"))
    app.channels(ENDPOINT, {}, _chat())
    with pytest.raises(ConfigurationError) as refused:
        await app.listen("127.0.0.1", 0)
    await app.shutdown()
    text = str(refused.value)
    assert "MemoryBackplane" in text and "RedisHistory" in text and "JetStreamHistory" in text
    assert "HARPY_EMBEDDED_JETSTREAM" in text


async def test_the_history_given_with_the_backplane_serves_the_endpoints_naming_none(
    jetstream_url: str,
) -> None:
    """As each --workers process does: ``use_backplane(..., history=JetStreamHistory(...))``."""
    tag = uuid.uuid4().hex[:12]
    shared = JetStreamHistory(jetstream_url, stream=f"W{tag}", subject_prefix=f"w{tag}.")
    app = harpy.App()
    endpoint = app.channels(ENDPOINT, {}, _chat(anonymous=True))
    app.use_backplane(harpy.MemoryBackplane(f"given-{tag}"), history=shared)
    assert app.channel_history is shared
    async with serve(app):
        assert isinstance(endpoint, Channels) and endpoint.history is shared
        position = await endpoint.publish("chat:js", {"n": 1})
        assert position is not None and position == await shared.top("chat:js")
    # Named in the options, a history wins over the app's.
    mine = MemoryHistory()
    other = harpy.App()
    named = other.channels(ENDPOINT, {}, _chat(history=mine))
    other.use_backplane(harpy.MemoryBackplane(f"named-{tag}"), history=shared)
    with pytest.raises(ConfigurationError, match="MemoryHistory is one process's"):
        await other.listen("127.0.0.1", 0)
    await other.shutdown()
    assert isinstance(named, Channels) and named.history is mine


def test_use_backplane_refuses_a_history_that_is_not_one() -> None:
    with pytest.raises(ConfigurationError, match="history must be a History"):
        harpy.App().use_backplane(harpy.MemoryBackplane("x"), history="nats://")  # type: ignore[arg-type]

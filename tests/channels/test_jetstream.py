"""What JetStreamHistory adds to the history contract: positions kept across restarts of the
nodes and of nats-server (file storage), a new epoch only when the streams were lost, any
channel name as a subject, reads in batches, clear errors for bad settings, and recovery with
the centrifuge-python SDK of what another node published."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

import harpy
from harpy.channels import ChannelOptions, Channels
from harpy.exceptions import ConfigurationError
from harpy.pubsub.nats_history import JetStreamHistory
from tests.backplane.conftest import Broker
from tests.channels.conftest import SECRET, jetstream_args
from tests.channels.server_app import CHAT
from tests.channels.test_recovery import recovers_while_cut, subscribed_through_proxy
from tests.helpers import serve


@pytest.fixture
def jetstream_broker(tmp_path: Path) -> Iterator[Broker]:
    """A nats-server with JetStream of this test alone, to kill and restart."""
    broker = Broker("nats-server", jetstream_args, str(tmp_path))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def _history(url: str, tag: str) -> JetStreamHistory:
    return JetStreamHistory(url, stream=f"T{tag}", subject_prefix=f"t{tag}.")


async def test_positions_outlive_the_node_and_a_killed_server(jetstream_broker: Broker) -> None:
    url, tag = f"nats://{jetstream_broker.address}", uuid.uuid4().hex[:12]
    first = _history(url, tag)
    await first.start()
    for i in range(3):
        position = await first.append("room", b'{"data":%d}' % i, 10, 0)
    await first.stop()
    jetstream_broker.kill()  # a crash: the file storage is all that is left
    jetstream_broker.start()
    second = _history(url, tag)
    await second.start()
    try:
        assert await second.top("room") == position
        stored, top = await second.since("room", 1, -1)
        assert [(s.offset, s.body) for s in stored] == [(2, b'{"data":1}'), (3, b'{"data":2}')]
        assert top == position
        again = await second.append("room", b'{"data":3}', 10, 0)
        assert again.offset == 4 and again.epoch == position.epoch
    finally:
        await second.stop()


async def test_lost_streams_begin_a_new_epoch(jetstream_url: str) -> None:
    tag = uuid.uuid4().hex[:12]
    history = _history(jetstream_url, tag)
    await history.start()
    try:
        before = await history.append("x", b'{"data":1}', 5, 0)
        client = await nats.connect(jetstream_url)
        try:
            manager = client.jetstream()
            for info in await manager.streams_info():
                if info.config.name and info.config.name.startswith(f"T{tag}_"):
                    await manager.delete_stream(info.config.name)
        finally:
            await client.close()
        # The running store makes them again at the next append, under a new epoch.
        after = await history.append("x", b'{"data":2}', 5, 0)
        assert after.offset == 1 and after.epoch != before.epoch
        assert await history.top("x") == after
    finally:
        await history.stop()


async def test_any_channel_name_is_its_own_subject(jetstream_url: str) -> None:
    history = _history(jetstream_url, uuid.uuid4().hex[:12])
    await history.start()
    names = ["a.b", "a b", "a.*", "a.>", "", "é:ü", "a"]
    try:
        for n, name in enumerate(names):
            for _ in range(n + 1):
                await history.append(name, name.encode() or b"-", 100, 0)
        for n, name in enumerate(names):
            stored, top = await history.since(name, 0, -1)
            assert top.offset == n + 1
            assert [s.body for s in stored] == [name.encode() or b"-"] * (n + 1)
    finally:
        await history.stop()


async def test_each_namespace_size_bounds_its_own_channels(jetstream_url: str) -> None:
    tag = uuid.uuid4().hex[:12]
    history = _history(jetstream_url, tag)
    await history.start()
    try:
        for i in range(1, 6):
            await history.append("small", b'{"data":%d}' % i, 2, 0)
            await history.append("large", b'{"data":%d}' % i, 4, 0)
        small, _ = await history.latest("small", -1)
        large, _ = await history.latest("large", -1)
        assert [s.offset for s in small] == [5, 4]
        assert [s.offset for s in large] == [5, 4, 3, 2]
        client = await nats.connect(jetstream_url)
        try:  # the readers are removed after each read
            for name in (f"T{tag}_2_0", f"T{tag}_4_0"):
                assert (await client.jetstream().stream_info(name)).state.consumer_count == 0
        finally:
            await client.close()
    finally:
        await history.stop()


async def test_a_long_history_is_read_in_batches_in_order(jetstream_url: str) -> None:
    history = _history(jetstream_url, uuid.uuid4().hex[:12])
    await history.start()
    try:
        await asyncio.gather(*(history.append("long", b"%d" % i, 3000, 0) for i in range(1200)))
        await history.append("other", b"x", 3000, 0)  # another subject in the same stream
        stored, top = await history.since("long", 100, -1)
        assert top.offset == 1200
        assert [s.offset for s in stored] == list(range(101, 1201))
        assert len({s.body for s in stored}) == 1100
        stored, _ = await history.since("long", 100, 10)
        assert [s.offset for s in stored] == list(range(101, 111))
    finally:
        await history.stop()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"meta_ttl": -1}, "meta_ttl"),
        ({"meta_ttl": 1.5}, "meta_ttl"),
        ({"stream": "a.b"}, "stream"),
        ({"stream": ""}, "stream"),
        ({"subject_prefix": "harpy"}, "subject_prefix"),
        ({"subject_prefix": "a.*."}, "subject_prefix"),
        ({"storage": "disk"}, "storage"),
    ],
)
def test_bad_settings_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        JetStreamHistory("nats://127.0.0.1:1", **options)  # type: ignore[arg-type]


async def test_a_store_not_started_says_so() -> None:
    with pytest.raises(ConfigurationError, match="not started"):
        await JetStreamHistory("nats://127.0.0.1:1").top("x")


def _node(nats_url: str, tag: str) -> tuple[harpy.App, Channels]:
    """A node: NATS backplane and JetStream history on one nats-server."""
    app = harpy.App(backplane=harpy.NatsBackplane(nats_url, subject_prefix=f"b{tag}."))
    options = ChannelOptions(
        secret=SECRET,
        history=_history(nats_url, tag),
        anonymous=True,
        namespaces={"chat": CHAT},
    )
    endpoint = app.channels("/connection/websocket", {}, options)
    assert isinstance(endpoint, Channels)
    return app, endpoint


async def test_a_client_cut_off_recovers_what_another_node_published(jetstream_url: str) -> None:
    """Two nodes on one nats-server; the centrifuge-python SDK on one, cut off for 2 s while
    1,000 publications go out through the other: it gets all of them once, in order."""
    tag = uuid.uuid4().hex[:12]
    here_app, _ = _node(jetstream_url, tag)
    there_app, there = _node(jetstream_url, tag)
    async with (
        serve(here_app) as url,
        serve(there_app),
        subscribed_through_proxy(url) as (proxy, _, events),
    ):
        first = await events.next("subscribed")
        assert first.recoverable
        await recovers_while_cut(
            proxy, events, first, lambda m: there.publish("chat:restart", {"n": m})
        )

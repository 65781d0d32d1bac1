"""One contract over every History store: memory, Redis Streams (a real redis-server) and NATS
JetStream (a real nats-server with ``-js``)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis

from harpy.pubsub.history import Announce, History, MemoryHistory, Position
from harpy.pubsub.nats_history import JetStreamHistory
from harpy.pubsub.redis_history import RedisHistory
from tests.timing import TIMEOUT

MakeHistory = Callable[[], History]


@pytest.fixture(params=["memory", "redis", "jetstream"])
def make_history(request: pytest.FixtureRequest) -> MakeHistory:
    """Stores sharing one state (Redis: one key prefix of this test; memory: one object)."""
    if request.param == "memory":
        shared = MemoryHistory()
        return lambda: shared
    tag = uuid.uuid4().hex[:12]
    if request.param == "jetstream":
        nats = request.getfixturevalue("jetstream_url")
        return lambda: JetStreamHistory(nats, stream=f"T{tag}", subject_prefix=f"t{tag}.")
    url = request.getfixturevalue("redis_url")
    return lambda: RedisHistory(url, key_prefix=f"test-{tag}:")


async def _started(make: MakeHistory) -> History:
    history = make()
    await history.start()
    return history


async def test_offsets_count_up_by_one_under_one_epoch(make_history: MakeHistory) -> None:
    history = await _started(make_history)
    try:
        top = await history.top("news")
        assert top.offset == 0 and len(top.epoch) == 8
        positions = [await history.append("news", b'{"data":%d}' % i, 10, 0) for i in range(5)]
        assert [p.offset for p in positions] == [1, 2, 3, 4, 5]
        assert {p.epoch for p in positions} == {top.epoch}
        assert await history.top("news") == Position(5, top.epoch)
        assert (await history.top("other")).offset == 0
    finally:
        await history.stop()


async def test_since_latest_and_the_size_bound(make_history: MakeHistory) -> None:
    history = await _started(make_history)
    try:
        for i in range(1, 8):
            await history.append("c", b'{"data":%d}' % i, 5, 0)
        stored, top = await history.since("c", 0, -1)
        assert [s.offset for s in stored] == [3, 4, 5, 6, 7]  # the first two evicted
        assert stored[0].body == b'{"data":3}'
        stored, _ = await history.since("c", 4, -1)
        assert [s.offset for s in stored] == [5, 6, 7]
        stored, _ = await history.since("c", 4, 2)
        assert [s.offset for s in stored] == [5, 6]
        stored, _ = await history.since("c", 7, -1)
        assert stored == []
        stored, top = await history.latest("c", 2)
        assert [s.offset for s in stored] == [7, 6] and top.offset == 7
        stored, _ = await history.latest("c", -1)
        assert [s.offset for s in stored] == [7, 6, 5, 4, 3]
    finally:
        await history.stop()


async def test_ttl_drops_the_publications_but_keeps_the_position(make_history: MakeHistory) -> None:
    history = await _started(make_history)
    try:
        first = await history.append("t", b'{"data":1}', 10, 0.2)
        stored, _ = await history.since("t", 0, -1)
        assert len(stored) == 1
        await asyncio.sleep(0.4)
        stored, top = await history.since("t", 0, -1)
        assert stored == [] and top == first  # a client at 0 learns it missed one
        assert (await history.append("t", b'{"data":2}', 10, 0.2)) == Position(2, first.epoch)
    finally:
        await history.stop()


async def test_two_stores_on_one_state_never_hand_out_one_offset(make_history: MakeHistory) -> None:
    one, two = await _started(make_history), await _started(make_history)
    try:
        results = await asyncio.wait_for(
            asyncio.gather(
                *(
                    h.append("shared", b'{"data":0}', 1000, 0)
                    for _ in range(100)
                    for h in (one, two)
                )
            ),
            TIMEOUT,
        )
        assert sorted(p.offset for p in results) == list(range(1, 201))
        assert len({p.epoch for p in results}) == 1
    finally:
        await one.stop()
        await two.stop()


async def test_redis_appends_and_announces_in_one_script(redis_url: str) -> None:
    """The script publishes head + offset + middle + epoch + tail on the channel it is given."""
    history = RedisHistory(redis_url, key_prefix=f"test-{uuid.uuid4().hex[:12]}:")
    await history.start()
    reader = aioredis.Redis.from_url(redis_url)
    pubsub = reader.pubsub()
    try:
        await pubsub.subscribe("harpy:t:x")
        await asyncio.wait_for(pubsub.get_message(timeout=TIMEOUT), TIMEOUT)  # the confirmation
        announce = Announce("t:x", b"<", b"|", b">")
        position = await history.append("x", b'{"data":1}', 10, 0, announce)
        message = None
        for _ in range(50):
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=TIMEOUT)
            if message is not None:
                break
        assert message is not None
        assert message["data"] == b"<1|" + position.epoch.encode() + b">"
    finally:
        await pubsub.aclose()
        await reader.aclose()
        await history.stop()


async def test_redis_keeps_the_epoch_across_store_restarts(redis_url: str) -> None:
    """A node that restarts finds its channels where they were (not a new epoch)."""
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    first = RedisHistory(redis_url, key_prefix=prefix)
    await first.start()
    position = await first.append("k", b'{"data":1}', 10, 0)
    await first.stop()
    second = RedisHistory(redis_url, key_prefix=prefix)
    await second.start()
    try:
        assert await second.top("k") == position
    finally:
        await second.stop()


async def test_memory_history_of_a_new_process_is_a_new_epoch() -> None:
    one, two = MemoryHistory(), MemoryHistory()
    assert (await one.top("a")).epoch != (await two.top("a")).epoch


async def test_memory_history_forgets_channels_unused_for_meta_ttl() -> None:
    history = MemoryHistory(meta_ttl=0.2)
    kept = await history.append("busy", b'{"data":1}', 10, 0)
    for n in range(50):
        await history.top(f"looked-at-{n}")
    assert len(history) == 51
    await asyncio.sleep(0.3)
    again = await history.append("busy", b'{"data":2}', 10, 0)
    assert again == Position(2, kept.epoch)
    assert history.sweep() == 50
    assert len(history) == 1
    assert (await history.top("looked-at-1")).offset == 0

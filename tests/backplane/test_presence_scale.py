"""Presence at 100,000 members on one node, over real Redis and NATS: every announcement stays
under ``CHUNK_BYTES`` (far below NATS' 1 MiB ``max_payload``); joins and leaves go as deltas,
a node that starts late gets the whole state in chunks, and a lost delta is repaired."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from typing import Any

import pytest

from harpy.pubsub import GroupKind, Hub, Message, Presence
from harpy.pubsub.backplane import Backplane, NatsBackplane, RedisBackplane, decode_envelope
from harpy.pubsub.presence import CHUNK_BYTES
from harpy.pubsub.relay import PRESENCE_CHANNEL

from ..timing import eventually, scaled

MEMBERS = 100_000
ROOMS = 1_000
#: What an envelope adds to an announcement (a header and the node id).
ENVELOPE = 16


class Member:
    def __init__(self, id: str) -> None:
        self.id = id
        self.route = "/r"
        self.presence: dict[str, Any] = {"name": f"user {id}", "since": 1_700_000_000}

    def queue_message(self, message: Message) -> bool:
        return True


def total(hub: Hub[Member]) -> int:
    assert hub.presence is not None
    return sum(hub.presence.count(GroupKind.ROOM, f"room-{r}") for r in range(ROOMS))


@pytest.mark.parametrize("backend", ["redis", "nats"])
async def test_a_hundred_thousand_members_on_one_node(
    backend: str, request: pytest.FixtureRequest
) -> None:
    tag = uuid.uuid4().hex[:8]
    url = request.getfixturevalue(f"{backend}_url")

    def backplane() -> Backplane:
        if backend == "redis":
            return RedisBackplane(url, channel_prefix=f"presence-{tag}:")
        return NatsBackplane(url, subject_prefix=f"presence-{tag}.")

    # Every announcement on the channel, as the broker carried it.
    sizes: list[int] = []
    ops: list[str] = []

    def watch(topic: str, raw: bytes) -> None:
        sizes.append(len(raw))
        ops.append(json.loads(decode_envelope(raw).payload)["op"])

    spy = backplane()
    await spy.start(watch)
    await spy.subscribe(PRESENCE_CHANNEL)
    hubs: list[Hub[Member]] = []

    async def node() -> Hub[Member]:
        # Three nodes in one process share one core: a generous ttl, so none is dropped while
        # another takes in 100,000 members.
        hub: Hub[Member] = Hub(Presence(interval=0.5, ttl=scaled(10.0)))
        hub.attach(backplane())
        await hub.start()
        hubs.append(hub)
        return hub

    try:
        a, b = await node(), await node()
        members = [Member(f"m{i}") for i in range(MEMBERS)]
        for i, member in enumerate(members):
            a.rooms.add(member, f"room-{i % ROOMS}", member)
        assert total(a) == MEMBERS
        await eventually(lambda: total(b) == MEMBERS, timeout=scaled(30.0), interval=0.05)
        assert b.presence is not None
        assert b.presence.members(GroupKind.ROOM, "room-7")["m7"] == members[7].presence

        # A node that starts now gets the whole presence of the first, in chunks.
        c = await node()
        await eventually(lambda: total(c) == MEMBERS, timeout=scaled(30.0), interval=0.05)

        # Half of them leave: deltas again.
        for i, member in enumerate(members[: MEMBERS // 2]):
            a.rooms.remove(member, f"room-{i % ROOMS}")
        for hub in (b, c):
            await eventually(
                lambda hub=hub: total(hub) == MEMBERS // 2, timeout=scaled(30.0), interval=0.05
            )
        assert "d" in ops and "sync" in ops
        assert max(sizes) <= CHUNK_BYTES + 512, f"an announcement of {max(sizes)} bytes"
        assert sum(sizes) > 5 * CHUNK_BYTES, "the state was carried in many announcements"
        print(
            f"{backend}: {len(sizes)} announcements, largest {max(sizes)} bytes, "
            f"{sum(sizes) / 1e6:.1f} MB in all, {sorted(Counter(ops).items())}"
        )
    finally:
        for hub in hubs:
            await hub.stop()
        await spy.stop()


async def test_a_lost_delta_is_repaired_by_a_sync() -> None:
    """Two nodes wired by a function that can lose an announcement: the gap in the sender's
    sequence makes the receiver ask for a sync, which puts its copy right."""
    a, b = Presence(interval=0.05), Presence(interval=0.05)
    lose = {"d": 0}

    def a_to_b(payload: bytes) -> None:
        if json.loads(payload)["op"] == "d" and lose["d"] > 0:
            lose["d"] -= 1
            return
        b.receive("a", payload)

    await a.start(a_to_b)
    await b.start(lambda payload: a.receive("b", payload))
    try:
        a.join(GroupKind.ROOM, "r", "one", {})
        await eventually(lambda: b.count(GroupKind.ROOM, "r") == 1)
        lose["d"] = 1
        a.join(GroupKind.ROOM, "r", "two", {})  # lost on the way
        await asyncio.sleep(0)  # its turn of the loop ends: the delta is sent (and lost)
        assert b.count(GroupKind.ROOM, "r") == 1
        # The next beat shows b the gap, b asks, a sends its whole presence: b sees "two".
        await eventually(lambda: b.count(GroupKind.ROOM, "r") == 2, timeout=scaled(2.0))
        assert set(b.members(GroupKind.ROOM, "r")) == {"one", "two"}
    finally:
        await a.stop()
        await b.stop()


def test_presence_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="sync_every"):
        Presence(sync_every=0)
    with pytest.raises(ValueError, match="interval"):
        Presence(interval=0)

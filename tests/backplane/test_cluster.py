"""Sharded and clustered brokers: a real Redis Cluster (three masters, three replicas) with
sharded pub/sub, and a real three-server NATS cluster, each losing a server mid-stream.

The contract suite (test_contract.py) also runs on the Redis Cluster, as ``redis-cluster``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from harpy.protocol import OP_BINARY
from harpy.pubsub import GroupKind, Message
from harpy.pubsub.backplane import BackplaneError, NatsBackplane, RedisBackplane
from harpy.pubsub.backplane.envelope import Envelope
from harpy.pubsub.relay import Relay

from ..timing import eventually, scaled
from .conftest import NatsCluster, RedisCluster

#: Messages in the stream; a server dies after a third of them.
STREAM = 600
#: Seconds between two publications.
PACE = 0.005
#: The most messages one batch in flight at the kill may hold (paced, it is one or two).
IN_FLIGHT_AT_KILL = 8


class Received:
    """The numbers that arrived, with the loop time of each."""

    def __init__(self) -> None:
        self.numbers: list[int] = []
        self.times: list[float] = []

    def __call__(self, topic: str, envelope: bytes) -> None:
        self.numbers.append(int.from_bytes(envelope, "big"))
        self.times.append(asyncio.get_running_loop().time())

    def after(self, number: int) -> list[int]:
        return [n for n in self.numbers if n > number]


async def stream(
    publish: Callable[[str, bytes], None], at_third: Callable[[], Any], topic: str = "stream"
) -> int:
    """Publish ``STREAM`` numbered messages, calling ``at_third()`` after a third of them."""
    for i in range(STREAM):
        publish(topic, i.to_bytes(4, "big"))
        if i == STREAM // 3:
            at_third()
        await asyncio.sleep(PACE)  # a paced stream, not a synchronisation
    return STREAM


async def test_each_channel_lives_on_its_slots_shard(redis_cluster: RedisCluster) -> None:
    tag = uuid.uuid4().hex[:8]
    a = RedisBackplane(redis_cluster.url, cluster=True, channel_prefix=f"shard-{tag}:")
    b = RedisBackplane(redis_cluster.url, cluster=True, channel_prefix=f"shard-{tag}:")
    got = Received()
    await a.start(Received())
    await b.start(got)
    try:
        topics = [f"room-{i}" for i in range(24)]
        for topic in topics:
            await b.subscribe(topic)
        masters = {redis_cluster.master_of(f"shard-{tag}:{t}".encode()).address for t in topics}
        assert len(masters) == 3, "24 channels should spread over the three masters"
        # Each channel is known on its own shard alone (PUBSUB SHARDCHANNELS is per node).
        for topic in topics:
            channel = f"shard-{tag}:{topic}"
            owner = redis_cluster.master_of(channel.encode())
            for node in redis_cluster.nodes:
                listed = redis_cluster.command(node, "pubsub", "shardchannels", channel).split()
                assert (channel in listed) == (node is owner), (channel, node.address)
        for i, topic in enumerate(topics):
            a.publish(topic, i.to_bytes(4, "big"))
        await eventually(lambda: len(got.numbers) == len(topics))
        assert sorted(got.numbers) == list(range(len(topics)))
    finally:
        await a.stop()
        await b.stop()


async def test_a_master_killed_its_replica_takes_over(own_redis_cluster: RedisCluster) -> None:
    """Two nodes (relays, with their sequences) on a Redis Cluster; the master of the stream's
    channel is killed mid-stream.  Delivery resumes on the promoted replica, and
    published == delivered + counted (the sender's ``dropped`` plus the receiver's ``lost``),
    over by at most the batch in flight at the kill, never under."""
    cluster = own_redis_cluster
    tag = uuid.uuid4().hex[:8]
    prefix = f"failover-{tag}:"

    def backplane() -> RedisBackplane:
        return RedisBackplane(cluster.url, cluster=True, channel_prefix=prefix, retry_delay=0.2)

    got = Relayed()
    sender, receiver = Relay(backplane()), Relay(backplane(), got)
    receiver.opened(GroupKind.TOPIC, "stream")
    await sender.start()
    await receiver.start()
    loop = asyncio.get_running_loop()
    try:
        await eventually(lambda: receiver.backplane.is_subscribed("t:stream"))
        victim = cluster.master_of(f"{prefix}t:stream".encode())
        # The stream goes on through the failover (the replica is promoted once the others
        # have not heard from its master for the node timeout, 1 s), until 100 messages
        # published after the kill have arrived; bounded in count and time.
        kill_at, sent, killed = STREAM // 3, 0, 0.0
        deadline = loop.time() + scaled(30.0)
        resumed_at = None
        while loop.time() < deadline and sent < 20 * STREAM:
            sender.publish("stream", Message(OP_BINARY, sent.to_bytes(4, "big")))
            sent += 1
            if sent - 1 == kill_at:
                victim.kill()
                killed = loop.time()
            if resumed_at is None and got.after(kill_at):
                resumed_at = loop.time()
            if resumed_at is not None and len(got.after(kill_at)) >= 100:
                break
            await asyncio.sleep(PACE)  # a paced stream, not a synchronisation
        assert resumed_at is not None, "delivery did not resume after the failover"
        out = sender.backplane
        await eventually(lambda: out.queued == 0)
        await eventually(lambda: got.after(sent - 2), what="the last message arrived")
        promoted = cluster.master_of(f"{prefix}t:stream".encode())
        assert promoted is not victim, "the replica was promoted"
        assert receiver.backplane.connected and out.connected
        assert len(set(got.numbers)) == len(got.numbers), "a message arrived twice"
        assert got.numbers == sorted(got.numbers), "order kept"
        lost = sent - len(got.numbers)
        # Every loss is counted, at least once: a publication the failed shard refused is
        # counted by the sender (``dropped``) and, as a gap in the sender's sequence, by the
        # receiver (``lost``); what the new master took before the receiver had subscribed
        # there, by the receiver alone.  The receiver never counts more than was lost.
        assert lost - IN_FLIGHT_AT_KILL <= receiver.backplane.lost <= lost, (sent, lost)
        assert out.dropped <= lost
        print(
            f"redis cluster failover: sent {sent}, arrived {len(got.numbers)}, lost {lost}: "
            f"{out.dropped} counted by the sender, {receiver.backplane.lost} by the receiver; "
            f"resumed after {resumed_at - killed:.2f} s"
        )
    finally:
        await sender.stop()
        await receiver.stop()


class Relayed:
    """What a relay hands to the app: the numbers in the payloads, in order."""

    def __init__(self) -> None:
        self.numbers: list[int] = []

    def __call__(self, kind: GroupKind, name: str, envelope: Envelope) -> None:
        self.numbers.append(int.from_bytes(envelope.payload, "big"))

    def after(self, number: int) -> list[int]:
        return [n for n in self.numbers if n > number]


async def test_a_nats_server_killed_mid_stream(nats_cluster: NatsCluster) -> None:
    first, second, third = (f"nats://{n.address}" for n in nats_cluster.nodes)
    tag = uuid.uuid4().hex[:8]

    def backplane(order: list[str]) -> NatsBackplane:
        # Every client knows the three servers; the order (kept) puts the two on different ones.
        return NatsBackplane(
            ",".join(order),
            subject_prefix=f"cluster-{tag}.",
            dont_randomize=True,
            reconnect_time_wait=0.2,
        )

    sender = backplane([first, second, third])
    receiver = backplane([second, third, first])
    got = Received()
    await sender.start(Received())
    await receiver.start(got)
    try:
        assert sender.server == first and receiver.server == second
        await receiver.subscribe("stream")
        # The receiver's interest crosses the routes to the sender's server.
        await eventually(lambda: _interest_reached(sender, receiver, got), timeout=scaled(5.0))
        got.numbers.clear()
        got.times.clear()
        killed_at: list[float] = []

        def kill() -> None:
            nats_cluster.nodes[0].kill()
            killed_at.append(asyncio.get_running_loop().time())

        sent = await stream(sender.publish, kill)
        await eventually(
            lambda: sender.queued == 0 and len(got.numbers) + sender.dropped >= sent,
            timeout=scaled(10.0),
            what=f"arrived + dropped >= {sent}",
        )
        assert sender.server in (second, third), "the sender moved to another server"
        assert sender.connected
        assert got.after(STREAM // 3 + IN_FLIGHT_AT_KILL), "nothing arrived after the kill"
        assert len(set(got.numbers)) == len(got.numbers), "a message arrived twice"
        lost = sent - len(got.numbers)
        # Everything lost is counted by the sender; a batch in flight at the kill is counted
        # even when it did arrive, so the count may be over by that batch, never under.
        assert lost <= sender.dropped <= lost + IN_FLIGHT_AT_KILL
        resumed = [t for t, n in zip(got.times, got.numbers, strict=True) if n > STREAM // 3]
        assert resumed[0] - killed_at[0] <= scaled(3.0)
        print(f"nats cluster, a server killed: sent {sent}, arrived {len(got.numbers)}, "
              f"lost {lost}, counted by the sender {sender.dropped}")  # fmt: skip
    finally:
        await sender.stop()
        await receiver.stop()


def _interest_reached(sender: NatsBackplane, receiver: NatsBackplane, got: Received) -> bool:
    """Publish a probe (number 2**31) and tell whether one arrived."""
    sender.publish("stream", (2**31).to_bytes(4, "big"))
    return bool(got.numbers)


def test_a_nats_url_lists_servers_separated_by_commas() -> None:
    backplane = NatsBackplane(" nats://a:4222, nats://b:4222 ,nats://c:4222")
    assert backplane.servers == ["nats://a:4222", "nats://b:4222", "nats://c:4222"]
    assert backplane.server is None  # not connected
    with pytest.raises(BackplaneError, match="at least one server URL"):
        NatsBackplane(" , ")

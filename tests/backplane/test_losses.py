"""Losses counted where they happen: every envelope carries its origin and a sequence per
(origin, channel), and a receiving node counts each gap in ``backplane.lost``.

With the sender's ``dropped``, every publication that does not arrive is counted at least once:
checked on real ``redis-server`` and ``nats-server`` processes killed and restarted mid-stream,
per receiving node.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from prometheus_client import generate_latest
from websockets.asyncio.client import connect

import harpy
from harpy.protocol import OP_BINARY, OP_TEXT
from harpy.pubsub import GroupKind, Message
from harpy.pubsub.backplane import (
    MemoryBackplane,
    NatsBackplane,
    RedisBackplane,
    decode_envelope,
    encode_envelope,
)
from harpy.pubsub.backplane.envelope import Envelope
from harpy.pubsub.relay import FORGET_AFTER, Relay

from ..helpers import serve
from ..timing import TIMEOUT, eventually, scaled
from .conftest import Broker
from .test_faults import IN_FLIGHT_AT_KILL, MAX_QUEUE, make_backplane

ORIGIN = bytes(range(1, 9))
OTHER = bytes(range(11, 19))


class Received:
    """What a relay hands to the app on one topic: the numbers in the payloads, in order."""

    def __init__(self) -> None:
        self.numbers: list[int] = []
        self.arrived = asyncio.Event()

    def __call__(self, kind: GroupKind, name: str, envelope: Envelope) -> None:
        self.numbers.append(int.from_bytes(envelope.payload, "big"))
        self.arrived.set()


def envelope(origin: bytes, seq: int, number: int = 0) -> bytes:
    return encode_envelope(origin, Message(OP_BINARY, number.to_bytes(4, "big")), seq=seq)


@asynccontextmanager
async def receiving(
    got: Received, forget_after: float = FORGET_AFTER
) -> AsyncIterator[tuple[Relay, MemoryBackplane]]:
    """A node subscribed to topic ``t``, and the backplane of another node on its bus, which
    sends envelopes as they are given."""
    bus = f"losses-{uuid.uuid4().hex[:8]}"
    receiver = Relay(MemoryBackplane(bus), got, forget_after=forget_after)
    receiver.opened(GroupKind.TOPIC, "t")
    wire = MemoryBackplane(bus)
    await receiver.start()
    await wire.start(lambda topic, raw: None)
    try:
        await eventually(lambda: receiver.backplane.is_subscribed("t:t"))
        yield receiver, wire
    finally:
        await wire.stop()
        await receiver.stop()


async def test_a_receiver_counts_each_gap_by_origin_and_cause(
    caplog: pytest.LogCaptureFixture,
) -> None:
    got = Received()
    async with receiving(got) as (receiver, wire):
        backplane = receiver.backplane
        run = 1 << 32
        # 1, 2, then 5: two lost.  Another origin starts at 40: nothing to compare with.
        for origin, seq in [(ORIGIN, 1), (ORIGIN, 2), (ORIGIN, 5), (OTHER, run | 40)]:
            wire.publish("t:t", envelope(origin, run | seq if origin == ORIGIN else seq))
        await eventually(lambda: len(got.numbers) == 4)
        assert backplane.lost == 2
        assert backplane.losses == {(ORIGIN.hex(), "unknown"): 2}
        # A new run of an origin (it forgot the channel) starts at 1: what came before the
        # first one received is lost; the end of the old run is not.
        wire.publish("t:t", envelope(ORIGIN, 2 << 32 | 4))
        wire.publish("t:t", envelope(OTHER, run | 42))
        await eventually(lambda: len(got.numbers) == 6)
        assert backplane.losses == {(ORIGIN.hex(), "unknown"): 5, (OTHER.hex(), "unknown"): 1}
        assert backplane.lost == 6
        # One warning in 5 s, with the running count.
        warnings = [r.getMessage() for r in caplog.records if "lost so far" in r.getMessage()]
        assert warnings == [
            f"harpy: {backplane!r} lost 2 message(s) from node {ORIGIN.hex()} (unknown); "
            "2 lost so far"
        ]
        # A channel newly subscribed starts fresh: what was missed while it was not is no gap.
        receiver.closed(GroupKind.TOPIC, "t")
        await eventually(lambda: not backplane.is_subscribed("t:t"))
        receiver.opened(GroupKind.TOPIC, "t")
        await eventually(lambda: backplane.is_subscribed("t:t"))
        wire.publish("t:t", envelope(ORIGIN, 2 << 32 | 90))
        await eventually(lambda: len(got.numbers) == 7)
        assert backplane.lost == 6
        # A restarted origin has a new node id: no gap either, whatever its numbers.
        wire.publish("t:t", envelope(bytes(8), 1 << 32 | 1000))
        wire.publish("t:t", envelope(bytes(8), 1 << 32 | 1001))
        await eventually(lambda: len(got.numbers) == 9)
        assert backplane.lost == 6


async def test_a_sender_numbers_every_kind_of_group_per_channel() -> None:
    bus = f"losses-{uuid.uuid4().hex[:8]}"
    seen: list[tuple[str, bytes, int]] = []
    sender = Relay(MemoryBackplane(bus))
    wire = MemoryBackplane(bus)
    await sender.start()
    await wire.start(lambda topic, raw: seen.append((topic, *_origin_seq(raw))))
    try:
        for channel in ("t:a", "t:b", "r:x", "r:y", "p:/r", "*"):
            await wire.subscribe(channel)
        for _ in range(3):
            sender.publish("a", Message(OP_TEXT, b"a"))
            sender.broadcast_rooms(["x", "y"], None, Message(OP_TEXT, b"rooms"))
            sender.broadcast_route("/r", Message(OP_TEXT, b"route"))
            sender.broadcast_route(None, Message(OP_TEXT, b"all"))
        sender.publish("b", Message(OP_TEXT, b"b"))
        await eventually(lambda: len(seen) == 16)
        for channel in ("t:a", "r:x", "r:y", "p:/r", "*"):
            seqs = [seq for topic, node, seq in seen if topic == channel]
            assert [seq & 0xFFFFFFFF for seq in seqs] == [1, 2, 3], channel
            assert len({seq >> 32 for seq in seqs}) == 1, channel
        ((_, node, first_b),) = [item for item in seen if item[0] == "t:b"]
        assert node == sender.node_id and first_b & 0xFFFFFFFF == 1
        # Each channel its own run: a receiver that forgot one cannot mistake another's for it.
        assert len({seq >> 32 for _, _, seq in seen}) == 6
    finally:
        await wire.stop()
        await sender.stop()


def _origin_seq(raw: bytes) -> tuple[bytes, int]:
    decoded = decode_envelope(raw)
    return decoded.node_id, decoded.seq


async def test_a_full_queue_is_counted_by_the_sender_only() -> None:
    """An envelope the sender dropped at once (queue full) takes no number: it is counted in
    the sender's ``dropped``, not again as a gap at every receiver."""
    bus = f"losses-{uuid.uuid4().hex[:8]}"
    got = Received()
    sender = Relay(MemoryBackplane(bus, max_queue=2))
    receiver = Relay(MemoryBackplane(bus), got)
    receiver.opened(GroupKind.TOPIC, "t")
    await sender.start()
    await receiver.start()
    try:
        await eventually(lambda: receiver.backplane.is_subscribed("t:t"))
        for burst in range(3):
            for i in range(5):  # the writer runs between bursts only: 3 of each 5 dropped
                sender.publish("t", Message(OP_BINARY, (burst * 5 + i).to_bytes(4, "big")))
            await eventually(lambda: sender.backplane.queued == 0)
        await eventually(lambda: len(got.numbers) == 6)
        assert got.numbers == [0, 1, 5, 6, 10, 11]
        assert sender.backplane.dropped == 9
        assert receiver.backplane.lost == 0
    finally:
        await sender.stop()
        await receiver.stop()


async def test_a_channel_silent_for_forget_after_starts_a_new_run_and_is_no_gap() -> None:
    bus = f"losses-{uuid.uuid4().hex[:8]}"
    got = Received()
    seqs: list[int] = []
    forget = 0.05
    sender = Relay(MemoryBackplane(bus), forget_after=forget)
    receiver = Relay(MemoryBackplane(bus), got, forget_after=forget * 100)
    wire = MemoryBackplane(bus)
    receiver.opened(GroupKind.TOPIC, "t")
    await sender.start()
    await receiver.start()
    await wire.start(lambda topic, raw: seqs.append(_origin_seq(raw)[1]))
    try:
        await wire.subscribe("t:t")
        await eventually(lambda: receiver.backplane.is_subscribed("t:t"))
        sender.publish("t", Message(OP_BINARY, (0).to_bytes(4, "big")))
        await eventually(lambda: len(seqs) == 1)
        # Silent for two generations: the sender forgets the channel; its next run starts at 1.
        loop = asyncio.get_running_loop()
        silent_from = loop.time()
        await eventually(lambda: loop.time() - silent_from > 2 * forget, scaled(2.0))
        sender.publish("t", Message(OP_BINARY, (1).to_bytes(4, "big")))
        await eventually(lambda: len(seqs) == 2 and len(got.numbers) == 2)
        assert seqs[1] >> 32 != seqs[0] >> 32 and seqs[1] & 0xFFFFFFFF == 1
        assert receiver.backplane.lost == 0
    finally:
        await wire.stop()
        await sender.stop()
        await receiver.stop()


async def test_a_receiver_forgets_an_origin_silent_on_a_channel_for_four_times_forget_after() -> (
    None
):
    """What a receiver keeps is bounded by what is active: an origin silent on a channel is
    forgotten there (after twice as long as a sender forgets its own channels), and its next
    envelope starts fresh."""
    got = Received()
    forget = 0.05
    async with receiving(got, forget) as (receiver, wire):
        backplane = receiver.backplane
        run = 3 << 32
        wire.publish("t:t", envelope(ORIGIN, run | 1))
        await eventually(lambda: len(got.numbers) == 1)
        loop = asyncio.get_running_loop()
        # Heard lately, it is known: a gap is counted.
        wire.publish("t:t", envelope(ORIGIN, run | 3))
        await eventually(lambda: backplane.lost == 1)
        silent_from = loop.time()
        # Forgotten at the second turn of what was heard (every 2 * forget) after it was last
        # heard: at most 4 * forget later, plus the timers' lateness.
        await eventually(lambda: loop.time() - silent_from > 6 * forget, scaled(2.0))
        wire.publish("t:t", envelope(ORIGIN, run | 9))
        await eventually(lambda: len(got.numbers) == 3)
        assert backplane.lost == 1


async def test_losses_are_in_the_metrics() -> None:
    bus = f"losses-{uuid.uuid4().hex[:8]}"
    app = harpy.App(metrics=True, backplane=MemoryBackplane(bus))
    app.ws("/", {"open": lambda ws: ws.subscribe("t")})
    wire = MemoryBackplane(bus)
    await wire.start(lambda topic, raw: None)
    try:
        async with serve(app) as url, connect(url + "/"):
            backplane = app.backplane
            assert backplane is not None
            assert b"harpy_backplane_lost_total{" not in generate_latest(app.metrics_registry)
            await eventually(lambda: backplane.is_subscribed("t:t"))
            for seq in (1, 4, 5, 9):
                wire.publish("t:t", envelope(ORIGIN, 7 << 32 | seq))
            await eventually(lambda: backplane.lost == 5)
            scraped = generate_latest(app.metrics_registry).decode()
        sample = f'harpy_backplane_lost_total{{cause="unknown",origin="{ORIGIN.hex()}"}} 5.0'
        assert sample in scraped
    finally:
        await wire.stop()


#: Messages in the stream; the broker dies after a third and is back after two thirds.
STREAM = 600
#: Seconds between the slow receiver's reconnection attempts.
SLOW_RETRY = 1.0


@pytest.mark.parametrize("backend", ["redis", "nats"])
async def test_every_publication_that_does_not_arrive_is_counted_through_a_broker_restart(
    backend: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    """Per receiving node: published == delivered + counted (the sender's ``dropped`` plus
    the receiver's ``lost``), over by at most the batch in flight when the broker died, never
    under."""
    caplog.set_level(logging.WARNING, "harpy")
    broker: Broker = request.getfixturevalue(f"{backend}_broker")
    tag = uuid.uuid4().hex[:8]
    sender = Relay(make_backplane(backend, broker, tag))
    received = [Received(), Received()]
    # The second receiver is slow to come back: what the sender flushes when it is back
    # before it reaches nobody there; only a sequence tells.
    slow = make_backplane(backend, broker, tag)
    if isinstance(slow, RedisBackplane):
        slow.retry_delay = SLOW_RETRY
    else:
        slow = NatsBackplane(
            f"nats://{broker.address}",
            subject_prefix=f"faults-{tag}.",
            reconnect_time_wait=SLOW_RETRY,
        )
    receivers = [Relay(make_backplane(backend, broker, tag), received[0]), Relay(slow, received[1])]
    for relay in receivers:
        relay.opened(GroupKind.TOPIC, "stream")
    relays = [sender, *receivers]
    for relay in relays:
        await relay.start()
    try:
        for relay in receivers:
            await eventually(lambda relay=relay: relay.backplane.is_subscribed("t:stream"))
        published = 0

        def publish() -> None:
            nonlocal published
            sender.publish("stream", Message(OP_BINARY, published.to_bytes(4, "big")))
            published += 1

        for i in range(STREAM):
            publish()
            if i == STREAM // 3:
                broker.kill()
            elif i == 2 * STREAM // 3:
                await asyncio.to_thread(broker.start)
            await asyncio.sleep(0.002)  # a paced stream, not a synchronisation
        for relay in relays:
            await eventually(lambda relay=relay: relay.backplane.connected, scaled(10.0))
        # A gap is seen when the next envelope arrives: publish until each receiver has one
        # published after everyone was back (bounded in count; each round waits for one).
        tail = published
        for got in received:
            for _ in range(50):
                got.arrived.clear()
                publish()
                try:
                    await asyncio.wait_for(got.arrived.wait(), scaled(0.2))
                except TimeoutError:
                    continue
                if got.numbers[-1] >= tail:
                    break
            else:
                raise AssertionError("nothing published after the restart arrived")
        dropped = sender.backplane

        def counted(i: int) -> int:
            return len(received[i].numbers) + dropped.dropped + receivers[i].backplane.lost

        for i in range(2):
            await eventually(
                lambda i=i: dropped.queued == 0 and counted(i) >= published,
                TIMEOUT,
                f"receiver {i}: delivered + dropped + lost >= {published}",
            )
        assert dropped.dropped >= STREAM // 3 - MAX_QUEUE  # the outage outgrew the queue
        for i, (got, relay) in enumerate(zip(received, receivers, strict=True)):
            assert len(set(got.numbers)) == len(got.numbers), "a message arrived twice"
            assert got.numbers == sorted(got.numbers), "out of order"
            assert published <= counted(i) <= published + IN_FLIGHT_AT_KILL, (
                i,
                published,
                len(got.numbers),
                dropped.dropped,
                relay.backplane.losses,
            )
            assert relay.backplane.lost == sum(relay.backplane.losses.values())
            # Every gap spans the outage, when every node was away from the broker.
            assert set(relay.backplane.losses) <= {(sender.node_id.hex(), "disconnected")}
    finally:
        for relay in relays:
            await relay.stop()

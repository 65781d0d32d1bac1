"""One contract, every backplane: memory, Redis and NATS (real servers on free ports)."""

from __future__ import annotations

import asyncio

import pytest

from harpy.protocol import OP_BINARY, OP_TEXT
from harpy.pubsub import GroupKind, Message
from harpy.pubsub.backplane import (
    BackplaneError,
    MemoryBackplane,
    NatsBackplane,
    decode_envelope,
    encode_envelope,
    escape_topic,
)
from harpy.pubsub.backplane.base import BackplaneState
from harpy.pubsub.backplane.envelope import Envelope, restamp_envelope
from harpy.pubsub.relay import PRESENCE_CHANNEL, Relay
from tests.helpers import MakeBackplane

from ..timing import eventually, scaled


class Inbox:
    """Collects ``(topic, envelope)`` pairs handed to ``on_message``."""

    def __init__(self) -> None:
        self.items: list[tuple[str, bytes]] = []

    def __call__(self, topic: str, envelope: bytes) -> None:
        self.items.append((topic, envelope))

    async def wait_for(self, count: int, timeout: float = scaled(3.0)) -> list[tuple[str, bytes]]:
        try:
            await eventually(lambda: len(self.items) >= count, timeout, interval=0.005)
        except AssertionError:
            got = f"got {len(self.items)} of {count} messages: {self.items}"
            raise AssertionError(got) from None
        return self.items


async def test_start_and_stop(make_backplane: MakeBackplane) -> None:
    bp = make_backplane()
    assert bp.state is BackplaneState.NEW and not bp.running
    await bp.start(Inbox())
    assert bp.running
    with pytest.raises(BackplaneError, match="already running"):
        await bp.start(Inbox())
    await bp.stop()
    assert bp.state is BackplaneState.STOPPED and not bp.running
    # It can be started again, like an app that listens again.
    inbox = Inbox()
    await bp.start(inbox)
    await bp.subscribe("t")
    bp.publish("t", b"again")
    assert await inbox.wait_for(1) == [("t", b"again")]
    await bp.stop()


async def test_stop_is_idempotent(make_backplane: MakeBackplane) -> None:
    bp = make_backplane()
    await bp.stop()  # never started: nothing to do
    await bp.start(Inbox())
    await bp.stop()
    await bp.stop()
    assert bp.state is BackplaneState.STOPPED


async def test_publish_before_start_raises(make_backplane: MakeBackplane) -> None:
    bp = make_backplane()
    with pytest.raises(BackplaneError, match=r"cannot publish: .* is new, call start\(\)"):
        bp.publish("t", b"x")
    with pytest.raises(BackplaneError, match="cannot subscribe"):
        await bp.subscribe("t")
    await bp.start(Inbox())
    await bp.stop()
    with pytest.raises(BackplaneError, match="is stopped"):
        bp.publish("t", b"x")


async def test_subscribe_then_receive(make_backplane: MakeBackplane) -> None:
    a, b = make_backplane(), make_backplane()
    inbox_a, inbox_b = Inbox(), Inbox()
    await a.start(inbox_a)
    await b.start(inbox_b)
    try:
        await b.subscribe("news")
        await b.subscribe("news")  # idempotent
        assert b.topics == {"news"} and b.is_subscribed("news") and not a.topics
        a.publish("news", b"hello")
        a.publish("other", b"not subscribed")
        assert await inbox_b.wait_for(1) == [("news", b"hello")]
        # A backplane also receives its own publications on topics it subscribes to.
        await a.subscribe("news")
        a.publish("news", b"echo")
        assert (await inbox_a.wait_for(1))[0] == ("news", b"echo")
        await inbox_b.wait_for(2)
        await asyncio.sleep(0.05)  # time for a message that must not come: not a synchronisation
        assert inbox_b.items == [("news", b"hello"), ("news", b"echo")]
        assert inbox_a.items == [("news", b"echo")]
    finally:
        await a.stop()
        await b.stop()


async def test_unsubscribe_stops_delivery(make_backplane: MakeBackplane) -> None:
    a, b = make_backplane(), make_backplane()
    inbox = Inbox()
    await a.start(Inbox())
    await b.start(inbox)
    try:
        await b.subscribe("gone")
        await b.subscribe("marker")
        a.publish("gone", b"1")
        await inbox.wait_for(1)
        await b.unsubscribe("gone")
        await b.unsubscribe("gone")  # idempotent
        assert b.topics == {"marker"}
        a.publish("gone", b"2")
        a.publish("marker", b"end")
        await inbox.wait_for(2)
        await asyncio.sleep(0.05)  # time for a message that must not come: not a synchronisation
        assert inbox.items == [("gone", b"1"), ("marker", b"end")]
    finally:
        await a.stop()
        await b.stop()


TOPICS = ["plain", "with space", "a.b", "*", ">", "a.*.>", "..", "~7E", "ünïcode ☃", "x" * 200]
ENVELOPES = [b"", b"\x00", bytes(range(256)), b"\r\n\r\n", b"\xff" * 10, b"z" * 300_000]


async def test_binary_safe_envelopes_and_topics(make_backplane: MakeBackplane) -> None:
    a, b = make_backplane(), make_backplane()
    inbox = Inbox()
    await a.start(Inbox())
    await b.start(inbox)
    try:
        for topic in TOPICS:
            await b.subscribe(topic)
        expected = [(topic, envelope) for topic in TOPICS for envelope in ENVELOPES]
        for topic, envelope in expected:
            a.publish(topic, envelope)
        received = await inbox.wait_for(len(expected))
        for topic in TOPICS:  # order holds per topic
            assert [e for t, e in received if t == topic] == ENVELOPES, topic
        assert sorted(received) == sorted(expected)
    finally:
        await a.stop()
        await b.stop()


async def test_order_of_500_messages(make_backplane: MakeBackplane) -> None:
    a, b = make_backplane(), make_backplane()
    inbox = Inbox()
    await a.start(Inbox())
    await b.start(inbox)
    try:
        await b.subscribe("seq")
        for i in range(500):
            a.publish("seq", i.to_bytes(4, "big"))
        received = await inbox.wait_for(500)
        assert [int.from_bytes(e, "big") for _, e in received] == list(range(500))
    finally:
        await a.stop()
        await b.stop()


async def test_stop_flushes_queued_messages(make_backplane: MakeBackplane) -> None:
    a, b = make_backplane(), make_backplane()
    inbox = Inbox()
    await a.start(Inbox())
    await b.start(inbox)
    try:
        await b.subscribe("last")
        for i in range(50):
            a.publish("last", bytes([i]))
        await a.stop()  # publish returned at once; stop sends what is queued
        received = await inbox.wait_for(50)
        assert [e for _, e in received] == [bytes([i]) for i in range(50)]
    finally:
        await a.stop()
        await b.stop()


async def test_full_queue_drops_and_counts() -> None:
    bp = MemoryBackplane("drops", max_queue=3)
    await bp.start(Inbox())
    try:
        for _ in range(5):
            bp.publish("t", b"x")  # the writer has not run yet: two do not fit
        assert bp.dropped == 2
    finally:
        await bp.stop()


async def test_unreachable_server_fails_start(make_backplane: MakeBackplane) -> None:
    bp = make_backplane()
    if isinstance(bp, MemoryBackplane):
        return
    bp.url = bp.url.rsplit(":", 1)[0] + ":1"  # type: ignore[attr-defined]
    bp.start_timeout = 0.5  # type: ignore[attr-defined]
    with pytest.raises(BackplaneError, match="cannot reach"):
        await bp.start(Inbox())
    assert not bp.running


async def test_nats_drops_only_an_oversized_message(nats_url: str) -> None:
    a, b = (
        NatsBackplane(nats_url, subject_prefix="big."),
        NatsBackplane(nats_url, subject_prefix="big."),
    )
    inbox = Inbox()
    await a.start(Inbox())
    await b.start(inbox)
    try:
        await b.subscribe("t")
        for envelope in (b"1", b"x" * 2_000_000, b"3"):
            a.publish("t", envelope)
        assert await inbox.wait_for(2) == [("t", b"1"), ("t", b"3")]
        assert a.dropped == 1
    finally:
        await a.stop()
        await b.stop()


def test_envelope_round_trip() -> None:
    node = b"\x01\x02\x03\x04\x05\x06\x07\x08"
    for opcode, payload, compress in [
        (OP_TEXT, "héllo".encode(), None),
        (OP_BINARY, bytes(range(256)), True),
        (OP_BINARY, b"", False),
    ]:
        envelope = encode_envelope(node, Message(opcode, payload, compress), seq=7)
        assert len(envelope) == 17 + len(payload)
        expected = (node, 7, opcode, payload, compress, GroupKind.TOPIC, (), None)
        assert decode_envelope(envelope) == expected
    for kind in (GroupKind.ROUTE, GroupKind.ALL):
        envelope = encode_envelope(node, Message(OP_TEXT, b"x"), kind, seq=2**64 - 1)
        assert decode_envelope(envelope) == (node, 2**64 - 1, OP_TEXT, b"x", None, kind, (), None)
    rooms = ("a", "ünï", "a.b", "")
    envelope = encode_envelope(
        node, Message(OP_BINARY, b"\x00p", True), GroupKind.ROOM, rooms, "/r"
    )
    decoded = decode_envelope(restamp_envelope(envelope, 5 << 32 | 9))
    assert decoded.kind is GroupKind.ROOM and decoded.rooms == rooms and decoded.route == "/r"
    assert decoded.payload == b"\x00p" and decoded.compress is True
    assert decoded.seq == 5 << 32 | 9 and decode_envelope(envelope).seq == 0
    seq = bytes(8)
    bad_headers = [
        b"\x41" + node + seq,
        b"\x41" + node + seq + b"\x00\x00\x00\x09[]",
        b"\x41" + node + seq + b"\x00\x00\x00\x02{}",
    ]
    short = [b"", b"\x01" + b"\x00" * 7, b"\x01" + node + b"\x00" * 7]
    for bad in [*short, b"\x08" + node + seq, b"\x31" + node + seq, *bad_headers]:
        with pytest.raises(ValueError):
            decode_envelope(bad)


def test_envelope_bytes_are_the_documented_wire_format() -> None:
    """Byte 0 as docs/scale-out.md fixes it (kind in bits 6-7: topic 0, rooms 1, route 2, all
    3), then the node id and the sequence, so nodes running different versions of harpy still
    understand each other."""
    node = bytes(range(8))
    text = Message(OP_TEXT, b"x")
    for kind, bits in [
        (GroupKind.TOPIC, 0x00),
        (GroupKind.ROOM, 0x40),
        (GroupKind.ROUTE, 0x80),
        (GroupKind.ALL, 0xC0),
    ]:
        assert encode_envelope(node, text, kind)[0] == bits | OP_TEXT
    rooms = encode_envelope(
        node, Message(OP_BINARY, b"p", True), GroupKind.ROOM, ("a",), None, 3 << 32 | 258
    )
    seq = b"\x00\x00\x00\x03\x00\x00\x01\x02"
    assert rooms == b"\x52" + node + seq + b"\x00\x00\x00\x0c" + b'[["a"],null]' + b"p"


def test_escape_topic_is_one_safe_token_and_one_to_one() -> None:
    escaped = {escape_topic(t) for t in TOPICS}
    assert len(escaped) == len(TOPICS)
    for token in escaped:
        assert token and not any(c in token for c in ".*> \t\r\n")
    assert escape_topic("room-1_a") == "room-1_a"
    assert escape_topic("room 1") == "room~201"
    assert escape_topic("a.b") == "a~2Eb"
    assert escape_topic("~") != escape_topic("~7E") and escape_topic("~7E") == "~7E7E"


class Deliveries:
    """Collects what a :class:`Relay` hands to the app: ``(kind, name, payload, rooms)``."""

    def __init__(self) -> None:
        self.items: list[tuple[GroupKind, str, bytes, tuple[str, ...]]] = []

    def __call__(self, kind: GroupKind, name: str, envelope: Envelope) -> None:
        self.items.append((kind, name, envelope.payload, envelope.rooms))


async def test_relay_carries_every_kind_of_group_and_only_what_is_subscribed(
    make_backplane: MakeBackplane,
) -> None:
    got = Deliveries()
    sender, receiver = Relay(make_backplane()), Relay(make_backplane(), got)
    notes: list[bytes] = []
    receiver.handle(PRESENCE_CHANNEL, lambda envelope: notes.append(envelope.payload))
    for kind, name in [
        (GroupKind.TOPIC, "t"),
        (GroupKind.ROOM, "x"),
        (GroupKind.ROOM, "y"),
        (GroupKind.ROUTE, "/r"),
    ]:
        receiver.opened(kind, name)
    receiver.opened(GroupKind.ROOM, "gone")
    receiver.closed(GroupKind.ROOM, "gone")
    await sender.start()
    await receiver.start()
    backplane = receiver.backplane
    try:
        channels = {"t:t", "r:x", "r:y", "p:/r", "*", PRESENCE_CHANNEL}
        await eventually(lambda: backplane.topics == channels, scaled(3.0))
        sender.publish("t", Message(OP_TEXT, b"topic"))
        sender.broadcast_rooms(["x", "y", "z"], None, Message(OP_TEXT, b"rooms"))
        sender.broadcast_route("/r", Message(OP_TEXT, b"route"))
        sender.broadcast_route("/elsewhere", Message(OP_TEXT, b"not here"))
        sender.broadcast_route(None, Message(OP_BINARY, b"all"))
        sender.send(PRESENCE_CHANNEL, Message(OP_BINARY, b"note"))
        await eventually(lambda: len(got.items) >= 5 and notes, scaled(3.0))
        assert sorted(got.items) == sorted(
            [
                (GroupKind.TOPIC, "t", b"topic", ()),
                (GroupKind.ROOM, "x", b"rooms", ("x", "y", "z")),
                (GroupKind.ROOM, "y", b"rooms", ("x", "y", "z")),
                (GroupKind.ROUTE, "/r", b"route", ()),
                (GroupKind.ALL, "", b"all", ()),
            ]
        )
        assert notes == [b"note"]
        # Its own envelopes come back to a relay subscribed to the channel; it ignores them.
        mine = Deliveries()
        receiver.deliver = mine
        receiver.broadcast_route(None, Message(OP_TEXT, b"own"))
        sender.broadcast_route(None, Message(OP_TEXT, b"marker"))
        await eventually(lambda: len(mine.items) == 1, scaled(3.0))
        assert mine.items == [(GroupKind.ALL, "", b"marker", ())]
    finally:
        await sender.stop()
        await receiver.stop()


async def test_connected_and_queued_while_running(make_backplane: MakeBackplane) -> None:
    bp = make_backplane()
    assert not bp.connected and bp.queued == 0
    await bp.start(Inbox())
    try:
        assert bp.connected
        bp.publish("t", b"1")
        assert bp.queued == 1  # the writer has not run yet
        await eventually(lambda: bp.queued == 0, scaled(3.0))
    finally:
        await bp.stop()
    assert not bp.connected


def test_nats_counts_as_buffered_exactly_what_nats_py_buffers() -> None:
    # nats-py's own command builder: if its format changes, this says so.
    from nats.protocol.command import pub_cmd

    from harpy.pubsub.backplane.nats import _still_buffered

    bp = NatsBackplane(subject_prefix="p.")
    batch = [("a", b"x" * 10), ("b c", b""), ("d", bytes(range(256)))]
    sizes = [len(pub_cmd(bp.subject(t), "", e)) for t, e in batch]
    ping = len(b"PING\r\n")
    assert _still_buffered(ping, batch, bp.subject) == 0
    assert _still_buffered(ping + sizes[2], batch, bp.subject) == 1
    assert _still_buffered(ping + sizes[2] + sizes[1] - 1, batch, bp.subject) == 1
    assert _still_buffered(ping + sum(sizes), batch, bp.subject) == 3
    assert _still_buffered(ping + sum(sizes) + 100, batch, bp.subject) == 3

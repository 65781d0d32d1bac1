"""The relay: an app's groups joined to a backplane, one channel per group."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable

from ..exceptions import ConfigurationError
from ..protocol import Message
from .backplane.base import Backplane
from .backplane.envelope import (
    NODE_ID_SIZE,
    Envelope,
    decode_envelope,
    encode_envelope,
    restamp_envelope,
)
from .groups import GroupKind

__all__ = ["PRESENCE_CHANNEL", "Deliver", "Relay"]

logger = logging.getLogger("harpy")

#: The backplane channel of each kind of group: one-to-one, whatever the names hold.
TOPIC_PREFIX = "t:"
ROOM_PREFIX = "r:"
ROUTE_PREFIX = "p:"
ALL_CHANNEL = "*"
PRESENCE_CHANNEL = "presence"
_KIND_OF_PREFIX = {
    TOPIC_PREFIX: GroupKind.TOPIC,
    ROOM_PREFIX: GroupKind.ROOM,
    ROUTE_PREFIX: GroupKind.ROUTE,
}
_PREFIX_OF_KIND = {kind: prefix for prefix, kind in _KIND_OF_PREFIX.items()}

#: An envelope's sequence is ``run << 32 | number``: the number in the low 32 bits.
_NUMBER = 0xFFFFFFFF
#: Seconds after which a channel this node stopped publishing on is forgotten (its next
#: envelope starts a new run), and, twice that, what it heard from another node on a channel.
FORGET_AFTER = 300.0

#: ``deliver(kind, name, envelope)``: hand a message from another node to the local members of
#: the topic, room or route ``name`` (``GroupKind.ALL``: of every route; ``name`` is empty).
Deliver = Callable[[GroupKind, str, Envelope], None]


def _nothing(kind: GroupKind, name: str, envelope: Envelope) -> None:
    return None


class Relay:
    """Joins an app's groups to a backplane.

    Local publications are sent as envelopes tagged with this node's id and the kind of group;
    envelopes from other nodes go to ``deliver``; our own are ignored.  Each group is one
    backplane channel (``t:`` + topic, ``r:`` + room, ``p:`` + route pattern, ``*`` for every
    connection); the backplane is subscribed to exactly the channels of groups with a local
    member, plus ``*`` and ``presence``.  Changes are reconciled by one task, in the background,
    so ``ws.subscribe`` and ``ws.join`` stay synchronous (a message published by another node
    before the subscription reaches the server is not received).

    Losses are counted where they happen.  Every envelope carries a sequence per (origin,
    channel): a run and a number that goes up by one for each envelope the backplane took.  A
    receiver tracks it per origin on each channel it is subscribed to, and counts a gap in
    ``backplane.lost`` (``count_lost``).  A new origin (a node that restarted has a new id), a
    channel newly subscribed and a new run start fresh; a run starts at 1, so the numbers of a
    new run that are missing before the first one received are counted too.  A channel silent
    for ``forget_after`` seconds may be forgotten (a new run next time), and what was heard from
    an origin on a channel after twice that: the memory stays bounded by what is active.
    """

    def __init__(
        self,
        backplane: Backplane,
        deliver: Deliver = _nothing,
        retry_delay: float = 1.0,
        forget_after: float = FORGET_AFTER,
    ) -> None:
        if not isinstance(backplane, Backplane):
            raise ConfigurationError(f"backplane must be a Backplane, not {backplane!r}")
        if not forget_after > 0:
            raise ConfigurationError("forget_after must be > 0")
        self.backplane = backplane
        self.node_id = os.urandom(NODE_ID_SIZE)
        self.retry_delay = retry_delay
        self.forget_after = forget_after
        self.deliver = deliver
        # Sequences, kept in two generations: an entry not used for a whole generation is
        # dropped at the next turn.  Sent: channel -> the last sequence the backplane took.
        self._sent: dict[str, int] = {}
        self._sent_before: dict[str, int] = {}
        self._runs = 0
        # Heard: channel -> origin -> [last sequence, backplane.disconnections at the time].
        self._heard: dict[str, dict[bytes, list[int]]] = {}
        self._heard_before: dict[str, dict[bytes, list[int]]] = {}
        self._turns = 0
        self._turner: asyncio.TimerHandle | None = None
        #: Raw handlers of channels that carry no group (presence): ``fn(envelope)``.
        self._handlers: dict[str, Callable[[Envelope], None]] = {}
        self._wanted: set[str] = {ALL_CHANNEL}
        self._dirty: set[str] = set()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    async def start(self) -> None:
        # A fresh id per start: processes forked from one parent (``--workers``) are each a node.
        self.node_id = os.urandom(NODE_ID_SIZE)
        self._forget_sequences()
        await self.backplane.start(self._receive)
        loop = asyncio.get_running_loop()
        self._turner = loop.call_later(self.forget_after, self._turn)
        self._wake = asyncio.Event()
        self._dirty.update(self._wanted)
        self._task = loop.create_task(self._sync_loop())
        self._wake.set()

    async def stop(self) -> None:
        task, wake = self._task, self._wake
        self._task = self._wake = None
        if self._turner is not None:
            self._turner.cancel()
            self._turner = None
        if task is not None:
            # The loop ends at its next wake-up; a client library that swallows a cancellation
            # (redis-py's unsubscribe can) cannot keep it waiting forever.
            assert wake is not None
            wake.set()
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=self.retry_delay + 1.0)
            if done:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            else:
                logger.warning("harpy: the backplane subscription task did not stop")
        self._dirty.clear()
        await self.backplane.stop()
        self._forget_sequences()

    # ----------------------------------------------------------------- interest

    def opened(self, kind: GroupKind, name: str) -> None:
        """The topic, room or route (``GroupKind.ROUTE``: its pattern) ``name`` got its first local
        member: receive what other nodes send to it."""
        self._interest(_PREFIX_OF_KIND[kind] + name, True)

    def closed(self, kind: GroupKind, name: str) -> None:
        """The group ``name`` lost its last local member."""
        self._interest(_PREFIX_OF_KIND[kind] + name, False)

    def handle(self, channel: str, fn: Callable[[Envelope], None]) -> None:
        """Receive the envelopes other nodes send on ``channel`` (not a group's) with ``fn``."""
        self._handlers[channel] = fn
        self._interest(channel, True)

    def _interest(self, channel: str, on: bool) -> None:
        if on:
            self._wanted.add(channel)
        else:
            self._wanted.discard(channel)
        self._dirty.add(channel)
        wake = self._wake
        if wake is not None and not wake.is_set():
            wake.set()

    # ----------------------------------------------------------------- sending

    def publish(self, topic: str, message: Message) -> None:
        """Send ``message`` to the subscribers of ``topic`` on the other nodes."""
        if self._task is not None:
            channel = TOPIC_PREFIX + topic
            seq = self._next_seq(channel)
            self._put(channel, seq, encode_envelope(self.node_id, message, seq=seq))

    def topic_envelope(self, topic: str, opcode: int) -> tuple[str, bytes] | None:
        """The backplane channel of ``topic`` and the bytes an envelope of a message with
        ``opcode`` has before its payload (None while not running): for a store that publishes
        in the same atomic step as it writes (Redis history) what :meth:`publish` would.  Each
        call takes the channel's next sequence: the caller publishes exactly one envelope
        with it, in the order of the calls."""
        if self._task is None:
            return None
        channel = TOPIC_PREFIX + topic
        seq = self._next_seq(channel)
        self._sent[channel] = seq
        return channel, encode_envelope(self.node_id, Message(opcode, b""), seq=seq)

    def broadcast_rooms(self, rooms: list[str], route: str | None, message: Message) -> None:
        """Send ``message`` to the members of ``rooms`` (on ``route``) on the other nodes: one
        envelope per room channel, each naming every room, so a receiver gets one copy."""
        if self._task is None or not rooms:
            return
        envelope = encode_envelope(self.node_id, message, GroupKind.ROOM, tuple(rooms), route)
        for room in rooms:
            channel = ROOM_PREFIX + room
            seq = self._next_seq(channel)
            self._put(channel, seq, restamp_envelope(envelope, seq))

    def broadcast_route(self, route: str | None, message: Message) -> None:
        """Send ``message`` to every connection of ``route`` (None: of every route) on the
        other nodes."""
        if self._task is None:
            return
        kind = GroupKind.ALL if route is None else GroupKind.ROUTE
        channel = ALL_CHANNEL if route is None else ROUTE_PREFIX + route
        seq = self._next_seq(channel)
        self._put(channel, seq, encode_envelope(self.node_id, message, kind, seq=seq))

    def send(self, channel: str, message: Message) -> None:
        """Send ``message`` on a channel that is not a group's (see :meth:`handle`)."""
        if self._task is not None:
            seq = self._next_seq(channel)
            self._put(channel, seq, encode_envelope(self.node_id, message, seq=seq))

    def _next_seq(self, channel: str) -> int:
        """The sequence of the next envelope on ``channel``: the last one's plus one, or the
        first of a new run (a channel not sent on lately, or a run at its end)."""
        seq = self._sent.get(channel)
        if seq is None:
            seq = self._sent_before.pop(channel, None)
        if seq is None or seq & _NUMBER == _NUMBER:
            self._runs = (self._runs + 1) & _NUMBER
            return self._runs << 32 | 1
        return seq + 1

    def _put(self, channel: str, seq: int, envelope: bytes) -> None:
        # A sequence is used only once the backplane took the envelope: one it dropped at once
        # (queue full) is counted there, not again as a gap at every receiver.
        if self.backplane.publish(channel, envelope):
            self._sent[channel] = seq

    # ----------------------------------------------------------------- receiving

    def _receive(self, channel: str, raw: bytes) -> None:
        try:
            envelope = decode_envelope(raw)
        except ValueError as exc:
            logger.warning("harpy: ignored a backplane message on %r: %s", channel, exc)
            return
        if envelope.node_id == self.node_id:
            return
        self._check_sequence(channel, envelope.node_id, envelope.seq)
        if channel == ALL_CHANNEL:
            self.deliver(GroupKind.ALL, "", envelope)
            return
        kind = _KIND_OF_PREFIX.get(channel[:2])
        if kind is not None:
            self.deliver(kind, channel[2:], envelope)
            return
        handler = self._handlers.get(channel)
        if handler is not None:
            handler(envelope)

    def _check_sequence(self, channel: str, origin: bytes, seq: int) -> None:
        """Count the envelopes missing between the last one ``origin`` sent on ``channel`` and
        this one (``seq``)."""
        heard = self._heard.get(channel)
        if heard is None:
            heard = self._heard[channel] = {}
        entry = heard.get(origin)
        if entry is None:
            before = self._heard_before.get(channel)
            entry = None if before is None else before.pop(origin, None)
            if entry is None:  # a new origin, or newly subscribed: nothing to compare with
                heard[origin] = [seq, self.backplane.disconnections]
                return
            heard[origin] = entry
        last, disconnections = entry
        if seq != last + 1:
            # In one run, what lies between (never below 0: an origin's channel keeps its
            # order); in a new run, what came before the first one received.
            missed = seq - last - 1 if seq >> 32 == last >> 32 else (seq & _NUMBER) - 1
            if missed > 0:
                now = self.backplane.disconnections
                cause = "disconnected" if now != disconnections else "unknown"
                self.backplane.count_lost(origin.hex(), missed, cause)
        entry[0] = seq
        entry[1] = self.backplane.disconnections

    def _forget_channel(self, channel: str) -> None:
        """A channel (un)subscribed: what comes next on it starts fresh."""
        self._heard.pop(channel, None)
        self._heard_before.pop(channel, None)

    def _forget_sequences(self) -> None:
        self._sent.clear()
        self._sent_before.clear()
        self._heard.clear()
        self._heard_before.clear()

    def _turn(self) -> None:
        """Every ``forget_after`` seconds: drop the sequences not used for a whole generation
        (sent: every turn; heard: every second turn, so a receiver forgets after a sender)."""
        self._sent_before, self._sent = self._sent, {}
        self._turns += 1
        if self._turns % 2 == 0:
            self._heard_before, self._heard = self._heard, {}
        self._turner = asyncio.get_running_loop().call_later(self.forget_after, self._turn)

    async def _sync_loop(self) -> None:
        wake = self._wake
        assert wake is not None
        backplane = self.backplane
        while self._wake is wake:
            await wake.wait()
            wake.clear()
            if self._wake is not wake:
                return
            failed: list[str] = []
            while self._dirty and self._wake is wake:
                channel = self._dirty.pop()
                want = channel in self._wanted
                try:
                    if want and not backplane.is_subscribed(channel):
                        self._forget_channel(channel)
                        await backplane.subscribe(channel)
                    elif not want and backplane.is_subscribed(channel):
                        await backplane.unsubscribe(channel)
                        self._forget_channel(channel)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("harpy: backplane (un)subscribe of %r failed", channel)
                    failed.append(channel)
            if failed:
                await asyncio.sleep(self.retry_delay)
                self._dirty.update(failed)
                wake.set()

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
from .backplane.envelope import NODE_ID_SIZE, Envelope, decode_envelope, encode_envelope
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
    """

    def __init__(
        self, backplane: Backplane, deliver: Deliver = _nothing, retry_delay: float = 1.0
    ) -> None:
        if not isinstance(backplane, Backplane):
            raise ConfigurationError(f"backplane must be a Backplane, not {backplane!r}")
        self.backplane = backplane
        self.node_id = os.urandom(NODE_ID_SIZE)
        self.retry_delay = retry_delay
        self.deliver = deliver
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
        await self.backplane.start(self._receive)
        self._wake = asyncio.Event()
        self._dirty.update(self._wanted)
        self._task = asyncio.get_running_loop().create_task(self._sync_loop())
        self._wake.set()

    async def stop(self) -> None:
        task, wake = self._task, self._wake
        self._task = self._wake = None
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
            self.backplane.publish(TOPIC_PREFIX + topic, encode_envelope(self.node_id, message))

    def broadcast_rooms(self, rooms: list[str], route: str | None, message: Message) -> None:
        """Send ``message`` to the members of ``rooms`` (on ``route``) on the other nodes: one
        envelope per room channel, each naming every room, so a receiver gets one copy."""
        if self._task is None or not rooms:
            return
        envelope = encode_envelope(self.node_id, message, GroupKind.ROOM, tuple(rooms), route)
        publish = self.backplane.publish
        for room in rooms:
            publish(ROOM_PREFIX + room, envelope)

    def broadcast_route(self, route: str | None, message: Message) -> None:
        """Send ``message`` to every connection of ``route`` (None: of every route) on the
        other nodes."""
        if self._task is None:
            return
        if route is None:
            self.backplane.publish(
                ALL_CHANNEL, encode_envelope(self.node_id, message, GroupKind.ALL)
            )
        else:
            envelope = encode_envelope(self.node_id, message, GroupKind.ROUTE)
            self.backplane.publish(ROUTE_PREFIX + route, envelope)

    def send(self, channel: str, message: Message) -> None:
        """Send ``message`` on a channel that is not a group's (see :meth:`handle`)."""
        if self._task is not None:
            self.backplane.publish(channel, encode_envelope(self.node_id, message))

    # ----------------------------------------------------------------- receiving

    def _receive(self, channel: str, raw: bytes) -> None:
        try:
            envelope = decode_envelope(raw)
        except ValueError as exc:
            logger.warning("harpy: ignored a backplane message on %r: %s", channel, exc)
            return
        if envelope.node_id == self.node_id:
            return
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
                        await backplane.subscribe(channel)
                    elif not want and backplane.is_subscribed(channel):
                        await backplane.unsubscribe(channel)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("harpy: backplane (un)subscribe of %r failed", channel)
                    failed.append(channel)
            if failed:
                await asyncio.sleep(self.retry_delay)
                self._dirty.update(failed)
                wake.set()

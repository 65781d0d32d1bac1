"""The hub: every group of an app (topics, rooms, routes, everyone), here and on other nodes.

An app hands the hub each message for a group once; the hub fans it out to the local members
and, with a backplane, relays it to the other nodes, and delivers theirs here.  It also keeps
presence informed of who joins and leaves.  It knows members only as :class:`Member`, and
their connections as :class:`Receiver`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Generic

from ..exceptions import HarpyError
from ..protocol import OP_BINARY, Message
from .backplane.base import Backplane
from .backplane.envelope import Envelope
from .groups import Connections, GroupKind, Groups, M, Receiver, TrackedGroups, fan_out
from .presence import Presence
from .relay import PRESENCE_CHANNEL, Relay

__all__ = ["Hub"]


class Hub(Generic[M]):
    """The groups of one app, and the backplane (if any) that shares them with other nodes.

    The groups are plain while nothing needs to hear of their changes, so joining costs no
    more than a dict update; with a backplane or presence they are tracked.
    """

    #: The topics (Bun's pub/sub), with their subscribers.
    topics: Groups
    #: The rooms, with their members.
    rooms: Groups
    #: The open connections, by route.
    connections: Connections[M]

    def __init__(self, presence: Presence | None = None) -> None:
        #: Who is in each topic and room, across nodes (None: not tracked).
        self.presence = presence
        self._relay: Relay | None = None
        self._make_groups()

    @property
    def backplane(self) -> Backplane | None:
        """What shares the groups with other nodes (None: this process only)."""
        relay = self._relay
        return None if relay is None else relay.backplane

    def attach(self, backplane: Backplane) -> None:
        """Share every group through ``backplane``; only before any group has a member."""
        if self._relay is not None:
            raise HarpyError(f"cannot attach {backplane!r}: already has {self._relay.backplane!r}")
        if self.topics.names() or self.rooms.names() or len(self.connections):
            raise HarpyError(f"cannot attach {backplane!r}: groups already have members")
        relay = self._relay = Relay(backplane, self._deliver)
        if self.presence is not None:
            relay.handle(PRESENCE_CHANNEL, self._presence_received)
        self._make_groups()

    def groups(self, kind: GroupKind) -> Groups:
        """The topics (``GroupKind.TOPIC``) or the rooms (``GroupKind.ROOM``)."""
        if kind is GroupKind.TOPIC:
            return self.topics
        if kind is GroupKind.ROOM:
            return self.rooms
        raise ValueError(f"{kind} is no kind of group with members")

    # ----------------------------------------------------------------- one message to many

    def publish(self, topic: str, message: Message, exclude: object = None) -> int:
        """Queue ``message`` for every subscriber of ``topic`` but ``exclude``, and relay it to
        the other nodes; return how many local members took it."""
        if self._relay is not None:
            self._relay.publish(topic, message)
        return fan_out(self.topics.receivers(topic), message, exclude)

    def topic_envelope(self, topic: str, opcode: int) -> tuple[str, bytes] | None:
        """The backplane channel of ``topic`` and an envelope's bytes before its payload (None
        without a running backplane): what another store may publish for this node."""
        relay = self._relay
        return None if relay is None else relay.topic_envelope(topic, opcode)

    def broadcast_rooms(
        self, rooms: list[str], route: str | None, message: Message, exclude: object = None
    ) -> int:
        """Queue ``message`` once for each member of ``rooms`` (distinct names; only those on
        ``route``, unless None) but ``exclude``, and relay it; return how many took it here."""
        receivers: Mapping[M, Receiver] = self.rooms.union(rooms)
        if route is not None:
            receivers = {member: to for member, to in receivers.items() if member.route == route}
        if self._relay is not None:
            self._relay.broadcast_rooms(rooms, route, message)
        return fan_out(receivers, message, exclude)

    def broadcast_route(self, route: str | None, message: Message, exclude: object = None) -> int:
        """Queue ``message`` for every connection of ``route`` (None: every connection) but
        ``exclude``, and relay it; return how many took it here."""
        receivers = self.connections.receivers(route)
        if self._relay is not None:
            self._relay.broadcast_route(route, message)
        return fan_out(receivers, message, exclude)

    def _deliver(self, kind: GroupKind, name: str, envelope: Envelope) -> None:
        """A message from another node for the local members of a group (the sender, on its
        own node, is never here: nobody to exclude)."""
        message = Message(envelope.opcode, envelope.payload, envelope.compress)
        receivers: Mapping[M, Receiver]
        if kind is GroupKind.TOPIC:
            receivers = self.topics.receivers(name)
        elif kind is GroupKind.ROUTE:
            receivers = self.connections.receivers(name)
        elif kind is GroupKind.ALL:
            receivers = self.connections.receivers()
        else:
            # One envelope comes per room of the broadcast: a member of several of them takes
            # it from the first of its rooms only, so it gets one copy.
            rooms, route, groups = envelope.rooms, envelope.route, self.rooms
            if name not in rooms:
                return
            receivers = {
                member: to
                for member, to in groups.receivers(name).items()
                if (route is None or member.route == route)
                and next(r for r in rooms if groups.has(member, r)) == name
            }
        fan_out(receivers, message)

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Connect the backplane and start presence's heartbeat (nothing without a backplane:
        the groups are this process's)."""
        relay = self._relay
        if relay is None:
            return
        await relay.start()
        if self.presence is not None:
            await self.presence.start(self._presence_send)

    async def stop(self) -> None:
        """Say goodbye to the other nodes' presence, then stop the backplane."""
        relay = self._relay
        if relay is None:
            return
        if self.presence is not None:
            await self.presence.stop()
        await relay.stop()

    # ----------------------------------------------------------------- tracking

    def _make_groups(self) -> None:
        relay = self._relay
        self.topics = self._tracked(GroupKind.TOPIC)
        self.rooms = self._tracked(GroupKind.ROOM)
        if relay is None:
            self.connections = Connections()
        else:
            self.connections = Connections(
                partial(relay.opened, GroupKind.ROUTE), partial(relay.closed, GroupKind.ROUTE)
            )

    def _tracked(self, kind: GroupKind) -> Groups:
        """Groups of ``kind`` that tell the relay which groups have local members, and
        presence who joins and leaves."""
        relay, presence = self._relay, self.presence
        if relay is None and presence is None:
            return Groups()
        if relay is not None:
            on_first: Callable[[str], None] = partial(relay.opened, kind)
            on_last: Callable[[str], None] = partial(relay.closed, kind)
        else:
            on_first = on_last = _ignore
        if presence is None:
            return TrackedGroups(on_first, on_last)

        def on_join(member: M, name: str) -> None:
            presence.join(kind, name, member.id, member.presence)

        def on_leave(member: M, name: str) -> None:
            presence.leave(kind, name, member.id)

        return TrackedGroups(on_first, on_last, on_join, on_leave)

    def _presence_received(self, envelope: Envelope) -> None:
        assert self.presence is not None
        self.presence.receive(envelope.node_id.hex(), envelope.payload)

    def _presence_send(self, payload: bytes) -> None:
        assert self._relay is not None
        self._relay.send(PRESENCE_CHANNEL, Message(OP_BINARY, payload))


def _ignore(name: str) -> None:
    return None

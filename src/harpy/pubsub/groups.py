"""Groups of connections that one message reaches, framed once.

:class:`GroupKind` names the kind of group wherever it is written (envelopes, presence).  A
:class:`Groups` maps a group name to its members, in joining order; a group with no member
left is removed, so it takes no memory.  :func:`fan_out` writes one prebuilt frame to many
connections through their per-tick write queues: a message costs one frame build whatever the
number of receivers, and each receiver gets one ``transport.write`` per loop tick however many
messages reached it in that tick.  :class:`Connections` holds every member by route, for the
broadcasts to a route or to everyone.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, Generic, Protocol, TypeVar

from ..protocol import Message

__all__ = [
    "Connections",
    "GroupKind",
    "Groups",
    "Member",
    "Receiver",
    "TrackedGroups",
    "fan_out",
]


class GroupKind(enum.StrEnum):
    """What a message or a presence event is for: a topic, a room, every connection of a
    route, or every connection.  A ``str``: ``event.kind == "topic"`` holds."""

    TOPIC = "topic"
    ROOM = "room"
    ROUTE = "route"
    ALL = "all"


class Receiver(Protocol):
    """Where a member's messages go: its connection."""

    def queue_message(self, message: Message) -> bool: ...


class Member(Protocol):
    """What the groups need of a member (the user's ``ws``): the route it matched, for route
    broadcasts, and its id and info, for presence."""

    @property
    def id(self) -> str: ...

    @property
    def route(self) -> str:
        """The pattern of the route the connection matched."""

    @property
    def presence(self) -> dict[str, Any]: ...


M = TypeVar("M", bound=Member)


class Groups:
    """Named groups of connections (topics, or rooms), indexed both ways: group to members
    (in joining order) and member to its groups.  Each member comes with its
    :class:`Receiver`: members are what users see (their ``ws``), receivers what fan-out
    writes to."""

    __slots__ = ("_groups", "_of")

    def __init__(self) -> None:
        #: group name -> {member: receiver} (a dict keeps joining order, deletes in O(1))
        self._groups: dict[str, dict[Any, Receiver]] = {}
        #: member -> the names of its groups
        self._of: dict[Any, set[str]] = {}

    def add(self, member: Any, name: str, receiver: Receiver) -> bool:
        """Put ``member`` (its messages go to ``receiver``) in group ``name``; False when it
        already was."""
        mine = self._of.get(member)
        if mine is None:
            mine = self._of[member] = set()
        elif name in mine:
            return False
        mine.add(name)
        group = self._groups.get(name)
        if group is None:
            self._groups[name] = {member: receiver}
        else:
            group[member] = receiver
        return True

    def remove(self, member: Any, name: str) -> bool:
        """Take ``member`` out of group ``name``; False when it was not in it."""
        mine = self._of.get(member)
        if not mine or name not in mine:
            return False
        mine.discard(name)
        if not mine:
            del self._of[member]
        self._leave(member, name)
        return True

    def remove_all(self, member: Any) -> frozenset[str]:
        """Take ``member`` out of every group (a closed connection); return their names."""
        mine = self._of.pop(member, None)
        if not mine:
            return frozenset()
        for name in mine:
            self._leave(member, name)
        return frozenset(mine)

    def _leave(self, member: Any, name: str) -> None:
        group = self._groups.get(name)
        if group is not None:
            group.pop(member, None)
            if not group:
                del self._groups[name]

    def of(self, member: Any) -> frozenset[str]:
        """The groups ``member`` is in."""
        mine = self._of.get(member)
        return frozenset(mine) if mine else frozenset()

    def has(self, member: Any, name: str) -> bool:
        mine = self._of.get(member)
        return mine is not None and name in mine

    def members(self, name: str) -> list[Any]:
        """A snapshot of the members: safe to use while members join, leave or close."""
        group = self._groups.get(name)
        return list(group) if group else []

    def receivers(self, name: str) -> Mapping[Any, Receiver]:
        """The members of group ``name`` with their receivers, for :func:`fan_out` (live:
        fan-out takes its own snapshot)."""
        return self._groups.get(name) or _EMPTY

    def union(self, names: Iterable[str]) -> dict[Any, Receiver]:
        """The members of several groups, each once, in a stable order, with their receivers."""
        out: dict[Any, Receiver] = {}
        for name in names:
            group = self._groups.get(name)
            if group:
                out.update(group)
        return out

    def count(self, name: str) -> int:
        group = self._groups.get(name)
        return len(group) if group else 0

    def names(self) -> list[str]:
        return list(self._groups)

    def __contains__(self, name: object) -> bool:
        return name in self._groups

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._groups))

    def __len__(self) -> int:
        return len(self._groups)


class TrackedGroups(Groups):
    """:class:`Groups` that report when a group gets its first member and loses its last, and
    (when given ``on_join`` / ``on_leave``) each member that joins or leaves a group."""

    __slots__ = ("_on_first", "_on_join", "_on_last", "_on_leave")

    def __init__(
        self,
        on_first: Callable[[str], None],
        on_last: Callable[[str], None],
        on_join: Callable[[Any, str], None] | None = None,
        on_leave: Callable[[Any, str], None] | None = None,
    ) -> None:
        super().__init__()
        self._on_first = on_first
        self._on_last = on_last
        self._on_join = on_join
        self._on_leave = on_leave

    def add(self, member: Any, name: str, receiver: Receiver) -> bool:
        new_group = name not in self
        added = super().add(member, name, receiver)
        if added:
            if new_group:
                self._on_first(name)
            if self._on_join is not None:
                self._on_join(member, name)
        return added

    def _leave(self, member: Any, name: str) -> None:
        had = name in self
        super()._leave(member, name)
        if had and name not in self:
            self._on_last(name)
        if self._on_leave is not None:
            self._on_leave(member, name)


class Connections(Generic[M]):
    """The open connections of an app: iterable, sized, and filterable by route pattern."""

    __slots__ = ("_all", "_by_route", "_on_closed", "_on_opened")

    def __init__(
        self,
        on_opened: Callable[[str], None] | None = None,
        on_closed: Callable[[str], None] | None = None,
    ) -> None:
        self._all: dict[M, Receiver] = {}
        self._by_route: dict[str, dict[M, Receiver]] = {}
        #: Called with a route pattern when it gets its first connection, and loses its last.
        self._on_opened = on_opened
        self._on_closed = on_closed

    def __iter__(self) -> Iterator[M]:
        """A snapshot: safe to use while connections open and close."""
        return iter(list(self._all))

    def __len__(self) -> int:
        return len(self._all)

    def __contains__(self, ws: object) -> bool:
        return ws in self._all

    def route(self, pattern: str) -> list[M]:
        """The open connections of the route declared with ``pattern``."""
        return list(self._by_route.get(pattern, ()))

    def receivers(self, pattern: str | None = None) -> Mapping[M, Receiver]:
        """Every open connection, or one route's, with its receiver, for :func:`fan_out`
        (live: fan-out takes its own snapshot)."""
        members = self._all if pattern is None else self._by_route.get(pattern)
        return members or _EMPTY

    def count(self, pattern: str | None = None) -> int:
        """How many connections are open: on the route ``pattern``, or on every route."""
        return len(self._all) if pattern is None else len(self._by_route.get(pattern, ()))

    def add(self, ws: M, pattern: str, receiver: Receiver) -> None:
        """Register an open connection of the route ``pattern``, whose messages go to
        ``receiver`` (the connection does, once ``open`` may run)."""
        self._all[ws] = receiver
        members = self._by_route.get(pattern)
        if members is None:
            members = self._by_route[pattern] = {}
            if self._on_opened is not None:
                self._on_opened(pattern)
        members[ws] = receiver

    def discard(self, ws: M) -> bool:
        """Forget a closed connection; False when it was not registered."""
        if self._all.pop(ws, None) is None:
            return False
        members = self._by_route.get(ws.route)
        if members is not None:
            members.pop(ws, None)
            if not members:
                del self._by_route[ws.route]
                if self._on_closed is not None:
                    self._on_closed(ws.route)
        return True


def fan_out(receivers: Mapping[Any, Receiver], message: Message, skip: object = None) -> int:
    """Queue ``message`` for the receiver of every member but ``skip``; return how many
    accepted it.

    The receivers are copied first (a C-level copy, no tuple per member), so members may
    join, leave or close meanwhile.  Each receiver that refuses the message counts the loss
    where it happens, by cause (its backpressure limit, the server's output budget, or
    closing): see ``App.drops``."""
    skipped = receivers.get(skip) if skip is not None else None
    sent = 0
    for receiver in list(receivers.values()):
        if receiver is not skipped and receiver.queue_message(message):
            sent += 1
    return sent


_EMPTY: Mapping[Any, Receiver] = MappingProxyType({})

"""The hub on its own, with members that are not connections: the pubsub layer shares every
kind of group between nodes and keeps presence, needing only ``Member`` and ``Receiver`` (no
app, no socket)."""

from __future__ import annotations

from typing import Any

import pytest

from harpy import HarpyError
from harpy.protocol import OP_TEXT
from harpy.pubsub import GroupKind, Groups, Hub, Message, Presence, PresenceEvent
from harpy.pubsub.backplane import MemoryBackplane
from tests.helpers import MakeBackplane

from ..timing import eventually, scaled


class Member:
    """What the hub needs of a member, its own receiver, keeping the payloads it was sent."""

    def __init__(self, id: str, route: str = "/r") -> None:
        self.id = id
        self.route = route
        self.presence: dict[str, Any] = {}
        self.got: list[bytes] = []

    def queue_message(self, message: Message) -> bool:
        self.got.append(message.payload)
        return True


def text(payload: bytes) -> Message:
    return Message(OP_TEXT, payload)


async def test_two_hubs_share_topics_rooms_routes_and_everyone(
    make_backplane: MakeBackplane,
) -> None:
    a: Hub[Member] = Hub()
    b: Hub[Member] = Hub()
    a.attach(make_backplane())
    b.attach(make_backplane())
    sender, here = Member("sender"), Member("here")
    there, both, elsewhere = Member("there"), Member("both"), Member("elsewhere", "/other")
    a.topics.add(sender, "news", sender)
    a.topics.add(here, "news", here)
    b.topics.add(there, "news", there)
    b.rooms.add(both, "x", both)
    b.rooms.add(both, "y", both)
    b.rooms.add(elsewhere, "x", elsewhere)
    for member in (there, both, elsewhere):
        b.connections.add(member, member.route, member)
    await a.start()
    await b.start()
    try:
        backplane = b.backplane
        assert backplane is not None
        channels = {"t:news", "r:x", "r:y", "p:/r", "p:/other", "*"}
        await eventually(lambda: channels <= backplane.topics, scaled(3.0))
        assert a.publish("news", text(b"news"), exclude=sender) == 1
        assert a.broadcast_rooms(["x", "y"], "/r", text(b"rooms")) == 0
        assert a.broadcast_route("/other", text(b"route")) == 0
        assert a.broadcast_route(None, text(b"all")) == 0
        members = (there, both, elsewhere)
        await eventually(lambda: all(len(m.got) == 2 for m in members), scaled(3.0))
        assert (sender.got, here.got) == ([], [b"news"])
        assert sorted(there.got) == [b"all", b"news"]
        assert sorted(both.got) == [b"all", b"rooms"]  # in two of the rooms: one copy
        assert sorted(elsewhere.got) == [b"all", b"route"]  # in x, but not on /r
    finally:
        await a.stop()
        await b.stop()


def test_without_a_backplane_groups_are_tracked_only_for_presence() -> None:
    plain: Hub[Member] = Hub()
    assert type(plain.topics) is Groups and plain.backplane is None
    presence = Presence()
    events: list[PresenceEvent] = []
    presence.on_change(events.append)
    hub: Hub[Member] = Hub(presence)
    ada = Member("ada")
    ada.presence = {"name": "ada"}
    hub.rooms.add(ada, "lobby", ada)
    assert presence.members(GroupKind.ROOM, "lobby") == {"ada": {"name": "ada"}}
    hub.rooms.remove_all(ada)
    assert presence.count(GroupKind.ROOM, "lobby") == 0
    assert [(e.action, e.kind, e.group) for e in events] == [
        ("join", "room", "lobby"),
        ("leave", "room", "lobby"),
    ]


def test_a_backplane_is_attached_once_and_before_any_member() -> None:
    hub: Hub[Member] = Hub()
    first = MemoryBackplane("hub-test")
    hub.attach(first)
    with pytest.raises(HarpyError, match="already has"):
        hub.attach(MemoryBackplane("hub-test"))
    assert hub.backplane is first
    busy: Hub[Member] = Hub()
    member = Member("m")
    busy.topics.add(member, "news", member)
    with pytest.raises(HarpyError, match="already have members"):
        busy.attach(MemoryBackplane("hub-test"))

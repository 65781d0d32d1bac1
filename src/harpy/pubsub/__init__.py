"""Topics and rooms: groups of connections that one message reaches, framed once, here and
(with a backplane) on every node."""

from __future__ import annotations

from ..protocol import Message
from .groups import Connections, GroupKind, Groups, Member, Receiver, TrackedGroups, fan_out
from .hub import Hub
from .presence import Presence, PresenceEvent

__all__ = [
    "Connections",
    "GroupKind",
    "Groups",
    "Hub",
    "Member",
    "Message",
    "Presence",
    "PresenceEvent",
    "Receiver",
    "TrackedGroups",
    "fan_out",
]

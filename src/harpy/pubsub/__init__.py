"""Topics and rooms: groups of connections that one message reaches, framed once, here and
(with a backplane) on every node."""

from __future__ import annotations

from ..protocol import Message
from .groups import GroupKind, Groups, Receiver, TrackedGroups, fan_out
from .presence import Presence, PresenceEvent

__all__ = [
    "GroupKind",
    "Groups",
    "Message",
    "Presence",
    "PresenceEvent",
    "Receiver",
    "TrackedGroups",
    "fan_out",
]

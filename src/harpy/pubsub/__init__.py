"""Topics and rooms: groups of connections that one message reaches, framed once, here and
(with a backplane) on every node."""

from __future__ import annotations

import sys

from .._compiled import use_compiled

# The compiled modules stand under their sources' names (harpy/_compiled.py), imported first.
use_compiled(sys.modules[__name__], ("groups",))

from ..protocol import Message  # noqa: E402
from .groups import Connections, GroupKind, Groups, Member, Receiver, TrackedGroups, fan_out  # noqa: E402
from .hub import Hub  # noqa: E402
from .presence import Presence, PresenceEvent  # noqa: E402

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

"""Backplanes: carry published messages between harpy processes that share topics.

``harpy.App(backplane=RedisBackplane("redis://..."))``: see ``docs/scale-out.md``.
``RedisBackplane`` and ``NatsBackplane`` import their client library only when started.
"""

from __future__ import annotations

from .base import Backplane, BackplaneError, Unsent
from .envelope import decode_envelope, encode_envelope
from .memory import MemoryBackplane
from .nats import NatsBackplane, escape_topic
from .redis import RedisBackplane

__all__ = [
    "Backplane",
    "BackplaneError",
    "MemoryBackplane",
    "NatsBackplane",
    "RedisBackplane",
    "Unsent",
    "decode_envelope",
    "encode_envelope",
    "escape_topic",
]

"""Topics and rooms: groups of connections that one message reaches, framed once.

A :class:`Groups` maps a group name to its members, in joining order; a group with no member
left is removed, so it takes no memory.  :func:`fan_out` writes one prebuilt frame to many
connections through their per-tick write queues: a message costs one frame build whatever the
number of receivers, and each receiver gets one ``transport.write`` per loop tick however many
messages reached it in that tick.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from ..protocol import OP_BINARY, OP_TEXT, build_frame
from ..protocol.deflate import compress_shared
from ..server import Connection

__all__ = ["Groups", "Message", "fan_out"]


class Message:
    """One message for many connections: framed once, and compressed once per window size.

    ``compress``: None compresses for receivers that negotiated permessage-deflate when the
    payload reaches their threshold; True always for them; False never.
    """

    __slots__ = ("_compressed", "compress", "frame", "opcode", "payload")

    def __init__(self, opcode: int, payload: bytes, compress: bool | None = None) -> None:
        self.opcode = opcode
        self.payload = payload
        self.compress = compress
        self.frame = build_frame(opcode, payload)
        self._compressed: dict[tuple[int, int, int], bytes] | None = None

    @classmethod
    def from_data(cls, data: Any, compress: bool | None = None) -> Message:
        """``str`` as text, bytes-like as binary, anything else as JSON text."""
        if type(data) is str:
            return cls(OP_TEXT, data.encode("utf-8"), compress)
        if isinstance(data, (bytes, bytearray, memoryview)):
            return cls(OP_BINARY, bytes(data), compress)
        try:
            text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"cannot send {type(data).__name__}: not str, bytes or JSON") from exc
        return cls(OP_TEXT, text.encode("utf-8"), compress)

    def shared_frame(self, codec: Any) -> bytes:
        """The frame compressed once for every receiver with the same window and level."""
        payload = self.payload
        key = (codec.window_bits, codec.level, codec.memory_level)
        cache = self._compressed
        if cache is None:
            cache = self._compressed = {}
        frame = cache.get(key)
        if frame is None:
            data = compress_shared(payload, *key) if payload else b"\x00"
            frame = cache[key] = build_frame(self.opcode, data, True)
        return frame


class Groups:
    """Named groups of connections (topics, or rooms); each member knows its own groups."""

    __slots__ = ("_attr", "_groups")

    def __init__(self, attr: str) -> None:
        #: group name -> members (a dict keeps joining order, and deletes in O(1))
        self._groups: dict[str, dict[Any, None]] = {}
        self._attr = attr  # the member's slot holding the set of its group names

    def add(self, member: Any, name: str) -> bool:
        """Put ``member`` in group ``name``; False when it already was."""
        mine: set[str] | None = getattr(member, self._attr)
        if mine is None:
            mine = set()
            setattr(member, self._attr, mine)
        elif name in mine:
            return False
        mine.add(name)
        group = self._groups.get(name)
        if group is None:
            self._groups[name] = {member: None}
        else:
            group[member] = None
        return True

    def remove(self, member: Any, name: str) -> bool:
        """Take ``member`` out of group ``name``; False when it was not in it."""
        mine: set[str] | None = getattr(member, self._attr)
        if not mine or name not in mine:
            return False
        mine.discard(name)
        group = self._groups.get(name)
        if group is not None:
            group.pop(member, None)
            if not group:
                del self._groups[name]
        return True

    def remove_all(self, member: Any) -> None:
        """Take ``member`` out of every group (a closed connection).

        The member keeps its own set of names, so a ``close`` handler can still read them.
        """
        mine: set[str] | None = getattr(member, self._attr)
        if not mine:
            return
        for name in mine:
            group = self._groups.get(name)
            if group is not None:
                group.pop(member, None)
                if not group:
                    del self._groups[name]

    def members(self, name: str) -> list[Any]:
        """A snapshot of the members: safe to use while members join, leave or close."""
        group = self._groups.get(name)
        return list(group) if group else []

    def union(self, names: Iterable[str]) -> dict[Any, None]:
        """The members of several groups, each once, in a stable order."""
        out: dict[Any, None] = {}
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


def fan_out(receivers: Iterable[Connection], message: Message, skip: object = None) -> int:
    """Queue ``message`` for every receiver but ``skip``; return how many accepted it."""
    sent = 0
    frame = message.frame
    for conn in receivers:
        if conn is skip:
            continue
        codec = conn._deflate
        if codec is None or not codec.wants(len(message.payload), message.compress):
            out = frame
        elif codec.shareable:
            out = message.shared_frame(codec)
        else:
            own = conn._own_compressed(message.opcode, message.payload)
            if own is None:
                continue
            out = own
        if conn._write_later(out):
            sent += 1
    return sent

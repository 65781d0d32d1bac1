"""The envelope: one message for a group, as it travels between nodes on a backplane.

The format is documented in ``docs/scale-out.md`` (byte 0: the kind of group, the ``compress``
flag and the opcode; then the node id; then the sequence; then, for rooms, a JSON header; then
the payload).
"""

from __future__ import annotations

import json
from typing import NamedTuple

from ...protocol import Message
from ..groups import GroupKind

__all__ = [
    "NODE_ID_SIZE",
    "SEQUENCE_SIZE",
    "Envelope",
    "decode_envelope",
    "encode_envelope",
    "restamp_envelope",
]

#: Bytes of the random per-app node id carried in every envelope.
NODE_ID_SIZE = 8
#: Bytes of the sequence after it: a 4-byte run, then a 4-byte number in that run (big-endian).
SEQUENCE_SIZE = 8
_SEQUENCE_AT = 1 + NODE_ID_SIZE
_HEAD_SIZE = _SEQUENCE_AT + SEQUENCE_SIZE

# Envelope byte 0: bits 0-3 the WebSocket opcode, bits 4-5 the ``compress`` flag of the message,
# bits 6-7 the kind of group (the wire's numbers, fixed whatever GroupKind's values).
_COMPRESS_BITS = {None: 0x00, True: 0x10, False: 0x20}
_COMPRESS_FROM_BITS: dict[int, bool | None] = {0x00: None, 0x10: True, 0x20: False}
_KIND_FROM_BITS = (GroupKind.TOPIC, GroupKind.ROOM, GroupKind.ROUTE, GroupKind.ALL)
_KIND_BITS = {kind: code << 6 for code, kind in enumerate(_KIND_FROM_BITS)}


class Envelope(NamedTuple):
    """A decoded envelope: who sent it, the message, and the group it is for."""

    node_id: bytes
    #: The origin's sequence on the channel the envelope came by: ``run << 32 | number``.  The
    #: number goes up by one per envelope of the run; a new run starts at 1 (see the relay).
    seq: int
    opcode: int
    payload: bytes
    compress: bool | None
    kind: GroupKind = GroupKind.TOPIC
    #: ``GroupKind.ROOM``: every room of the broadcast, in order (a receiver in several of them
    #: gets one copy); empty otherwise.
    rooms: tuple[str, ...] = ()
    #: ``GroupKind.ROOM``: only the members on this route (``None``: on any route).
    route: str | None = None


def encode_envelope(
    node_id: bytes,
    message: Message,
    kind: GroupKind = GroupKind.TOPIC,
    rooms: tuple[str, ...] = (),
    route: str | None = None,
    seq: int = 0,
) -> bytes:
    """``[kind+flags+opcode: 1 byte][node id: 8 bytes][sequence: 8 bytes][header][payload]``:
    compact and binary-safe.  Only ``GroupKind.ROOM`` has a header: a 4-byte big-endian length,
    then that many bytes of JSON ``[rooms, route]``."""
    head = (
        bytes((_KIND_BITS[kind] | message.opcode | _COMPRESS_BITS[message.compress],))
        + node_id
        + seq.to_bytes(SEQUENCE_SIZE, "big")
    )
    if kind is not GroupKind.ROOM:
        return head + message.payload
    header = json.dumps([list(rooms), route], ensure_ascii=False, separators=(",", ":"))
    raw = header.encode("utf-8")
    return head + len(raw).to_bytes(4, "big") + raw + message.payload


def restamp_envelope(envelope: bytes, seq: int) -> bytes:
    """``envelope`` with the sequence ``seq`` in place of its own: one broadcast to several
    rooms is encoded once and stamped per room channel."""
    return envelope[:_SEQUENCE_AT] + seq.to_bytes(SEQUENCE_SIZE, "big") + envelope[_HEAD_SIZE:]


def decode_envelope(envelope: bytes) -> Envelope:
    """The :class:`Envelope` in ``envelope``; ValueError when it is malformed."""
    if len(envelope) < _HEAD_SIZE:
        raise ValueError(f"backplane envelope too short ({len(envelope)} bytes)")
    head = envelope[0]
    opcode = head & 0x0F
    if opcode not in (0x1, 0x2) or (head & 0x30) == 0x30:
        raise ValueError(f"bad backplane envelope header 0x{head:02x}")
    kind = _KIND_FROM_BITS[head >> 6]
    node_id = envelope[1:_SEQUENCE_AT]
    seq = int.from_bytes(envelope[_SEQUENCE_AT:_HEAD_SIZE], "big")
    compress = _COMPRESS_FROM_BITS[head & 0x30]
    start = _HEAD_SIZE
    if kind is not GroupKind.ROOM:
        return Envelope(node_id, seq, opcode, envelope[start:], compress, kind)
    size = int.from_bytes(envelope[start : start + 4], "big")
    end = start + 4 + size
    if len(envelope) < end:
        raise ValueError("backplane envelope shorter than its header")
    try:
        rooms, route = json.loads(envelope[start + 4 : end])
    except (ValueError, TypeError) as exc:
        raise ValueError(f"bad backplane envelope header: {exc}") from None
    if (
        not isinstance(rooms, list)
        or not all(isinstance(r, str) for r in rooms)
        or not (route is None or isinstance(route, str))
    ):
        raise ValueError("bad backplane envelope header: not [rooms, route]")
    return Envelope(node_id, seq, opcode, envelope[end:], compress, kind, tuple(rooms), route)

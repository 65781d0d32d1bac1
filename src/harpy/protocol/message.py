"""One message for many connections: framed once, compressed once per set of deflate settings.

A :class:`Message` is what a publication or a broadcast hands to each receiver's
``queue_message``: the receiver picks the plain frame, the frame compressed once for every
receiver with the same settings, or (with context takeover) its own compression.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from . import OP_BINARY, OP_TEXT, build_frame
from .deflate import compress_shared

__all__ = ["Message", "encode_data", "encode_json"]


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
    def from_data(
        cls,
        data: Any,
        compress: bool | None = None,
        encode: Callable[[Any], bytes] | None = None,
    ) -> Message:
        """``str`` as text, bytes-like as binary, anything else as JSON text (by ``encode``)."""
        opcode, payload = encode_data(data, encode)
        return cls(opcode, payload, compress)

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


def encode_data(data: Any, encode: Callable[[Any], bytes] | None = None) -> tuple[int, bytes]:
    """What ``send``, ``publish`` and ``broadcast`` make of ``data``: ``str`` as text,
    bytes-like as binary, anything else as JSON text by ``encode`` (compact JSON by default)."""
    if type(data) is str:
        return OP_TEXT, data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return OP_BINARY, bytes(data)
    return OP_TEXT, (encode or encode_json)(data)


def encode_json(data: Any) -> bytes:
    """``data`` as compact JSON text, UTF-8 encoded."""
    try:
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"cannot send {type(data).__name__}: not str, bytes or JSON") from exc
    return text.encode("utf-8")

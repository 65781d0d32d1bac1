"""RFC 6455 frame codec and message assembly: bytes in, events out, no I/O.

This file is compiled by Cython at install time (as ``_ccore``, typed by ``_ccore.pxd``) and is
also the pure-Python fallback, so it sticks to constructs both run fast: local variables,
``int.from_bytes`` for unmasking, tuples for events.

Events returned by :meth:`FrameReader.feed` are ``(kind, value)`` tuples:

* ``(OP_TEXT, str)`` and ``(OP_BINARY, bytes)``: a complete message;
* ``(OP_PING, bytes)`` and ``(OP_PONG, bytes)``;
* ``(OP_CLOSE, (code, reason))``: 1005 when the frame carried no code (RFC 6455 7.1.5);
* ``(EV_ERROR, ProtocolError)``: the peer broke the protocol; the error's ``code`` is the close
  code to fail the connection with. The reader accepts nothing after it.
"""

from __future__ import annotations

import codecs
from typing import Any

from ..exceptions import PayloadTooBig, ProtocolError

try:  # Cython's pure-Python mode: ``cython.compiled`` is True only in the compiled module.
    import cython  # type: ignore[import-untyped,import-not-found,unused-ignore]

    _COMPILED = cython.compiled
except ImportError:  # Cython is a build dependency only
    _COMPILED = False

__all__ = [
    "EV_ERROR",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "FrameReader",
    "build_close",
    "build_frame",
    "frame_header",
    "is_valid_close_code",
]

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
EV_ERROR = -1

_utf8_decoder = codecs.getincrementaldecoder("utf-8")
# No frame may announce more than this, whatever max_message_size says (0 included): far past
# any memory, and far from overflowing the offsets computed from it.
_MAX_FRAME = 1 << 48


def is_valid_close_code(code: int) -> bool:
    """Codes a peer may send (RFC 6455 7.4.1, 7.4.2; 1012-1014 from the IANA registry)."""
    return (1000 <= code <= 1003) or (1007 <= code <= 1014) or (3000 <= code <= 4999)


def _unmask(data: bytes, start: int, end: int) -> bytes:
    """The payload ``data[start:end]`` XOR-ed with the 4-byte key just before it (RFC 6455 5.3).

    Compiled: a C loop, 8 bytes at a time, into a fresh bytes object.  Pure Python: one
    big-integer XOR, the fastest way the interpreter has.
    """
    n = end - start
    if n <= 0:
        return b""
    if _COMPILED and n > 1:
        out = bytes(n)  # a new object of n >= 2 bytes: ours alone until returned
        dst = cython.cast(cython.p_uchar, cython.cast(cython.p_char, out))
        src = cython.cast(cython.p_uchar, cython.cast(cython.p_char, data)) + start
        key = src - 4
        words = n >> 3
        if words:
            key8 = cython.declare(cython.ulonglong)
            kb = cython.cast(cython.p_uchar, cython.address(key8))
            for i in range(8):
                kb[i] = key[i & 3]
            d8 = cython.cast(cython.pointer(cython.ulonglong), dst)
            s8 = cython.cast(cython.pointer(cython.ulonglong), src)
            for i in range(words):
                d8[i] = s8[i] ^ key8
        for i in range(words << 3, n):
            dst[i] = src[i] ^ key[i & 3]
        return out
    repeated = data[start - 4 : start] * ((n >> 2) + 1)
    return (
        int.from_bytes(data[start:end], "little") ^ int.from_bytes(repeated[:n], "little")
    ).to_bytes(n, "little")


def frame_header(opcode: int, length: int, rsv1: bool = False) -> bytes:
    """The header of a final, unmasked (server to client) frame of ``length`` bytes."""
    b0 = 0x80 | opcode | (0x40 if rsv1 else 0)
    if length < 126:
        return bytes((b0, length))
    if length < 65536:
        return bytes((b0, 126, length >> 8, length & 0xFF))
    return bytes((b0, 127)) + length.to_bytes(8, "big")


def build_frame(opcode: int, payload: bytes, rsv1: bool = False) -> bytes:
    """A whole server frame: built once, it can be written to any number of connections."""
    return frame_header(opcode, len(payload), rsv1) + payload


def build_close(code: int = 1000, reason: str = "") -> bytes:
    """A close frame; code 1005 means "no status" and is sent as an empty payload."""
    if code == 1005:
        return b"\x88\x00"
    payload = code.to_bytes(2, "big") + reason.encode("utf-8")
    return frame_header(OP_CLOSE, len(payload)) + payload


class FrameReader:
    """Turns the bytes a client sends into events.

    ``max_message_size`` bounds a whole message, compressed or not (0: no bound).  ``inflater``
    is the connection's permessage-deflate codec, or None when the extension is not in use: any
    reserved bit is then a protocol error (RFC 6455 5.2).
    """

    __slots__ = (
        "_buf",
        "_failed",
        "_frag_compressed",
        "_frag_decoder",
        "_frag_opcode",
        "_frag_parts",
        "_frag_size",
        "_have",
        "_need",
        "inflater",
        "max_message_size",
        "peer_closed",
    )

    def __init__(self, max_message_size: int = 16 * 1024 * 1024, inflater: Any = None) -> None:
        self.max_message_size = max_message_size
        self.inflater = inflater
        #: True once a close frame arrived, valid or not: the peer sends nothing after it.
        self.peer_closed = False
        self._buf: list[bytes] = []
        self._have = 0
        self._need = 0
        self._failed = False
        self._frag_opcode = -1
        self._frag_parts: list[bytes] = []
        self._frag_size = 0
        self._frag_compressed = False
        self._frag_decoder: Any = None

    def feed(self, data: bytes) -> list[tuple[int, Any]]:
        """Parse ``data`` (appended to what is left from earlier calls) into events."""
        events: list[tuple[int, Any]] = []
        # Local copies: typed C ints in the compiled build, fast locals in pure Python.
        op_text = OP_TEXT
        op_binary = OP_BINARY
        op_cont = OP_CONT
        op_close = OP_CLOSE
        if self._failed:
            return events
        if self._buf:
            # A frame is incomplete: collect chunks until it can be whole, then join once, so a
            # large message arriving in many reads is copied a bounded number of times.
            self._buf.append(data)
            self._have += len(data)
            if self._have < self._need:
                return events
            data = b"".join(self._buf)
            self._buf = []
        end = len(data)
        need = 0
        pos = 0
        max_size = self.max_message_size
        while end - pos >= 2:
            b0 = data[pos]
            b1 = data[pos + 1]
            length = b1 & 0x7F
            hlen = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                hlen = 4
            elif length == 127:
                if end - pos < 10:
                    break
                if data[pos + 2] & 0x80:
                    return self._fail(events, "frame length has its most significant bit set")
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                hlen = 10
            opcode = b0 & 0x0F
            if not b1 & 0x80:
                return self._fail(events, "client frame is not masked")  # RFC 6455 5.1
            # Judge the header before waiting for the payload: a frame that can never be valid
            # is never buffered, and a huge announced length never reaches the arithmetic.
            if opcode >= 8:
                if opcode > 10:
                    return self._fail(events, f"unknown opcode {opcode}")
                if length > 125:  # RFC 6455 5.5
                    if opcode == op_close:
                        self.peer_closed = True
                    return self._fail(events, "control frame payload over 125 bytes")
            elif opcode > 2:
                return self._fail(events, f"unknown opcode {opcode}")
            elif (max_size and length > max_size) or length > _MAX_FRAME:
                return self._too_big(events)
            if end - pos < hlen + 4 + length:
                need = hlen + 4 + length
                break
            pstart = pos + hlen + 4  # after the 4-byte masking key
            pos = pstart + length
            payload = _unmask(data, pstart, pos)
            fin = b0 & 0x80
            rsv = b0 & 0x70
            if opcode == op_text or opcode == op_binary:
                if self._frag_opcode != -1:
                    return self._fail(events, "new data frame inside a fragmented message")
                compressed = False
                if rsv:
                    if rsv != 0x40 or self.inflater is None:
                        return self._fail(events, "reserved bits set without an extension")
                    compressed = True
                if fin:
                    if compressed:
                        try:
                            payload = self.inflater.decompress(payload, max_size)
                        except ProtocolError as exc:
                            return self._error(events, exc)
                    if opcode == op_text:
                        try:
                            events.append((op_text, payload.decode("utf-8")))
                        except UnicodeDecodeError:
                            return self._fail(events, "invalid UTF-8 in a text message", 1007)
                    else:
                        events.append((op_binary, payload))
                    continue
                self._frag_opcode = opcode
                self._frag_compressed = compressed
                self._frag_parts = [payload]
                self._frag_size = length
                if opcode == op_text and not compressed:
                    self._frag_decoder = _utf8_decoder()
                    try:
                        self._frag_decoder.decode(payload)
                    except UnicodeDecodeError:
                        return self._fail(events, "invalid UTF-8 in a text message", 1007)
            elif opcode == op_cont:
                if self._frag_opcode == -1:
                    return self._fail(events, "continuation frame without a message to continue")
                if rsv:
                    return self._fail(events, "reserved bits set on a continuation frame")
                self._frag_size += length
                if max_size and self._frag_size > max_size:
                    return self._too_big(events)
                self._frag_parts.append(payload)
                if self._frag_decoder is not None:
                    try:
                        self._frag_decoder.decode(payload, bool(fin))
                    except UnicodeDecodeError:
                        return self._fail(events, "invalid UTF-8 in a text message", 1007)
                if fin:
                    whole = b"".join(self._frag_parts)
                    opcode = self._frag_opcode
                    compressed = self._frag_compressed
                    self._frag_opcode = -1
                    self._frag_parts = []
                    self._frag_decoder = None
                    if compressed:
                        try:
                            whole = self.inflater.decompress(whole, max_size)
                        except ProtocolError as exc:
                            return self._error(events, exc)
                    if opcode == op_text:
                        try:
                            events.append((op_text, whole.decode("utf-8")))
                        except UnicodeDecodeError:
                            return self._fail(events, "invalid UTF-8 in a text message", 1007)
                    else:
                        events.append((op_binary, whole))
            else:
                # RFC 6455 5.5: control frames are final, short (checked above), and carry no
                # reserved bits.
                if opcode == op_close:
                    self.peer_closed = True
                if not fin:
                    return self._fail(events, "fragmented control frame")
                if rsv:
                    return self._fail(events, "reserved bits set on a control frame")
                if opcode == op_close:
                    return self._close_event(events, payload)
                events.append((opcode, payload))
        if pos < end:
            rest = data[pos:] if pos else data
            self._buf = [rest]
            self._have = end - pos
            self._need = need
        return events

    def _close_event(self, events: list[tuple[int, Any]], payload: bytes) -> list[tuple[int, Any]]:
        # RFC 6455 5.5.1: an optional 2-byte code, then a UTF-8 reason.  Nothing is read after it.
        self._failed = True
        self.peer_closed = True
        if not payload:
            events.append((OP_CLOSE, (1005, "")))
            return events
        if len(payload) == 1:
            return self._fail(events, "close frame with a 1-byte payload")
        code = (payload[0] << 8) | payload[1]
        if not is_valid_close_code(code):
            return self._fail(events, f"invalid close code {code}")
        try:
            reason = payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            return self._fail(events, "invalid UTF-8 in a close reason", 1007)
        events.append((OP_CLOSE, (code, reason)))
        return events

    def _too_big(self, events: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
        return self._error(events, PayloadTooBig("message over max_message_size"))

    def _fail(
        self, events: list[tuple[int, Any]], message: str, code: int = 1002
    ) -> list[tuple[int, Any]]:
        return self._error(events, ProtocolError(message, code))

    def _error(self, events: list[tuple[int, Any]], exc: ProtocolError) -> list[tuple[int, Any]]:
        self._failed = True
        self._buf = []
        self._frag_parts = []
        events.append((EV_ERROR, exc))
        return events

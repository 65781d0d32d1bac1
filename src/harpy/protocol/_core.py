"""RFC 6455 frame codec and message assembly: bytes in, events out, no I/O.

This file is compiled by Cython at install time (as ``_ccore``, typed by ``_ccore.pxd``) and is
also the pure-Python fallback, so it sticks to constructs both run fast: local variables,
``int.from_bytes`` for unmasking, tuples for events.

Events returned by :meth:`FrameReader.feed` are ``(kind, value)`` tuples:

* ``(OP_TEXT, str)`` and ``(OP_BINARY, bytes)``: a complete message;
* ``(OP_PING, bytes)`` and ``(OP_PONG, bytes)``;
* ``(OP_CLOSE, (code, reason))``: 1005 when the frame carried no code (RFC 6455 7.1.5);
* ``(EV_ERROR, ProtocolError)``: the peer broke the protocol; the error's ``code`` is the close
  code the connection fails with.

The reader also holds the closing handshake (RFC 6455 section 7), so that every transition of it
is decided here, from bytes alone: ``state`` goes ``ST_OPEN`` -> ``ST_CLOSING`` (our close frame
is sent, the peer's awaited) -> ``ST_CLOSED`` (both sent, or the connection failed on the peer's
close: the TCP connection is to be closed now).  A close frame the endpoint must send in answer
(the echo of the peer's close, or the close that fails the connection) is made here too and
handed out by :meth:`FrameReader.data_to_send`.  Once our close frame is sent, messages and
pings are no longer reported; pongs and the peer's close still are.
"""

from __future__ import annotations

import codecs
import os
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
    "ST_CLOSED",
    "ST_CLOSING",
    "ST_OPEN",
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

# The closing handshake's states, numbered as the browser's and Bun's ``readyState``.
ST_OPEN = 1
ST_CLOSING = 2
ST_CLOSED = 3

#: The fixed reason sent with the close that fails a connection: never the error's own text.
_FAIL_REASONS = {1007: "Invalid payload data", 1009: "Message too big"}

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


#: The headers of the frames under 126 bytes, by first byte: made once for each kind of frame,
#: so that a small message's header is a lookup.
_SHORT_HEADERS: dict[int, tuple[bytes, ...]] = {}


def frame_header(opcode: int, length: int, rsv1: bool = False) -> bytes:
    """The header of a final, unmasked (server to client) frame of ``length`` bytes."""
    b0 = 0x80 | opcode | (0x40 if rsv1 else 0)
    if length < 126:
        short = _SHORT_HEADERS.get(b0)
        if short is None:
            short = _SHORT_HEADERS[b0] = tuple([bytes((b0, n)) for n in range(126)])
        return short[length]
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
    """Turns the bytes a peer sends into events, and keeps the closing handshake's state.

    ``max_message_size`` bounds a whole message, compressed or not (0: no bound).  ``inflater``
    is the connection's permessage-deflate codec, or None when the extension is not in use: any
    reserved bit is then a protocol error (RFC 6455 5.2).  A server reads masked client frames;
    with ``client=True`` the reader is a client's and reads unmasked server frames (5.1).
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
        "_out",
        "_part_done",
        "_part_key",
        "_skip",
        "client",
        "close_code",
        "close_reason",
        "close_received",
        "close_sent",
        "inflater",
        "max_message_size",
        "state",
    )

    def __init__(
        self, max_message_size: int = 16 * 1024 * 1024, inflater: Any = None, client: bool = False
    ) -> None:
        self.max_message_size = max_message_size
        self.inflater = inflater
        self.client = client
        #: ST_OPEN, ST_CLOSING or ST_CLOSED (see the module docstring).
        self.state = ST_OPEN
        #: Our close frame was made (by :meth:`send_close`, or in answer, or to fail).
        self.close_sent = False
        #: A close frame arrived, valid or not: the peer sends nothing after it.
        self.close_received = False
        #: The peer's close code (1005: its frame had none; 1006: no close frame arrived).
        self.close_code = 1006
        self.close_reason = ""
        self._out = b""
        # The chunks of an incomplete frame, and the frames of a fragmented message: None
        # while there are none (an idle connection holds no empty lists).
        self._buf: list[bytes] | None = None
        self._have = 0
        self._need = 0
        self._failed = False
        self._frag_opcode = -1
        self._frag_parts: list[bytes] | None = None
        self._frag_size = 0
        self._frag_compressed = False
        self._frag_decoder: Any = None
        # A text frame that arrives over several reads is checked as its bytes come (the
        # decoder above carries the UTF-8 state): ``_part_done`` payload bytes of it were
        # checked (-1: no frame is being checked), ``_part_key`` is its masking key.
        self._part_done = -1
        self._part_key = b""
        # After a failure in the middle of a frame, the rest of that frame is skipped before
        # the peer's close is looked for.
        self._skip = 0

    # ----------------------------------------------------------------- the closing handshake

    def send_close(self, code: int = 1000, reason: str = "") -> bytes:
        """Start the closing handshake (RFC 6455 7.1.2): the close frame to send, or ``b""``
        when one was sent already.  After the peer's close, this completes the handshake."""
        if self.close_sent:
            return b""
        self.close_sent = True
        self.state = ST_CLOSED if self.close_received else ST_CLOSING
        return self._close_frame(code, reason)

    def data_to_send(self) -> bytes:
        """The close frame the reader made in answer to what it read, once; ``b""`` if none."""
        out = self._out
        self._out = b""
        return out

    def _close_frame(self, code: int, reason: str) -> bytes:
        frame = build_close(code, reason)
        if self.client:
            # RFC 6455 5.3: a client masks every frame, with a fresh unpredictable key.
            key = os.urandom(4)
            masked = _unmask(key + frame[2:], 4, len(frame) + 2)
            return bytes((frame[0], frame[1] | 0x80)) + key + masked
        return frame

    # ----------------------------------------------------------------- reading

    def feed(self, data: bytes) -> list[tuple[int, Any]]:
        """Parse ``data`` (appended to what is left from earlier calls) into events."""
        events: list[tuple[int, Any]] = []
        # Local copies: typed C ints in the compiled build, fast locals in pure Python.
        op_text = OP_TEXT
        op_binary = OP_BINARY
        op_cont = OP_CONT
        op_close = OP_CLOSE
        client = self.client
        if self._failed:
            skip = self._skip
            if not skip:
                return events
            if len(data) <= skip:
                self._skip = skip - len(data)
                return events
            data = data[skip:]
            self._skip = 0
            self._failed = False
        buf = self._buf
        if buf:
            # A frame is incomplete: collect chunks until it can be whole, then join once, so a
            # large message arriving in many reads is copied a bounded number of times.
            buf.append(data)
            self._have += len(data)
            if self._have < self._need:
                if self._part_done >= 0 and not self.close_sent and not self._check_part(data):
                    return self._bad_part(events, self._need - self._have)
                return events
            data = b"".join(buf)
            self._buf = None
        # The first frame may be a text frame whose start was checked already (-1: none).
        done = self._part_done
        self._part_done = -1
        end = len(data)
        need = 0
        pos = 0
        max_size = self.max_message_size
        keylen = 0 if client else 4
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
            # RFC 6455 5.1: clients mask, servers do not.
            if client:
                if b1 & 0x80:
                    return self._mask_error(events, opcode, "server frame is masked")
            elif not b1 & 0x80:
                return self._mask_error(events, opcode, "client frame is not masked")
            rsv = b0 & 0x70
            # Judge the header before waiting for the payload: every error the header shows is
            # acted on at once, so a frame that can never be valid is never buffered (nor waited
            # for), and a huge announced length never reaches the arithmetic.
            if opcode >= 8:
                # RFC 6455 5.5: control frames are final, short, and carry no reserved bits.
                if opcode > 10:
                    return self._fail(events, f"unknown opcode {opcode}")
                if length > 125 or not b0 & 0x80 or rsv:
                    if opcode == op_close:
                        self.close_received = True  # a bad close is still the peer's last frame
                    if length > 125:
                        return self._fail(events, "control frame payload over 125 bytes")
                    if not b0 & 0x80:
                        return self._fail(events, "fragmented control frame")
                    return self._fail(events, "reserved bits set on a control frame")
            elif opcode > 2:
                return self._fail(events, f"unknown opcode {opcode}")
            elif (max_size and length > max_size) or length > _MAX_FRAME:
                return self._too_big(events)
            elif opcode == op_cont:
                if self._frag_opcode == -1:
                    return self._fail(events, "continuation frame without a message to continue")
                if rsv:
                    return self._fail(events, "reserved bits set on a continuation frame")
                if max_size and self._frag_size + length > max_size:
                    return self._too_big(events)
            elif self._frag_opcode != -1:
                return self._fail(events, "new data frame inside a fragmented message")
            elif rsv and (rsv != 0x40 or self.inflater is None):
                return self._fail(events, "reserved bits set without an extension")
            pstart = pos + hlen + keylen  # after the 4-byte masking key of a client frame
            if end - pstart < length:
                need = hlen + keylen + length
                if (
                    (opcode == op_text and not rsv)
                    or (opcode == op_cont and self._frag_decoder is not None)
                ) and not self.close_sent:
                    # Uncompressed text: check what arrived of it now (fail fast), and each
                    # later chunk as it comes; first wait for the masking key if need be.
                    if end < pstart:
                        need = hlen + keylen
                    else:
                        self._part_key = b"" if client else data[pstart - 4 : pstart]
                        self._part_done = 0
                        if opcode == op_text:
                            self._frag_decoder = _utf8_decoder()
                        arrived = data[pstart:end] if client else _unmask(data, pstart, end)
                        if not self._check_part(arrived, False):
                            return self._bad_part(events, length - (end - pstart))
                break
            pos = pstart + length
            payload = data[pstart:pos] if client else _unmask(data, pstart, pos)
            fin = b0 & 0x80
            checked = done  # payload bytes of this frame already checked as UTF-8 (-1: none)
            done = -1
            if opcode == op_text or opcode == op_binary:
                compressed = rsv != 0  # RSV1 with the extension in use: checked above
                if fin:
                    if checked >= 0:
                        self._frag_decoder = None  # decoded whole below
                    if compressed:
                        try:
                            payload = self.inflater.decompress(payload, max_size)
                        except ProtocolError as exc:
                            return self._error(events, exc)
                    if self.close_sent:
                        continue  # closing: messages are no longer delivered
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
                    if checked < 0:
                        self._frag_decoder = _utf8_decoder()
                    try:
                        self._frag_decoder.decode(payload[checked:] if checked > 0 else payload)
                    except UnicodeDecodeError:
                        return self._fail(events, "invalid UTF-8 in a text message", 1007)
            elif opcode == op_cont:
                self._frag_size += length
                parts = self._frag_parts
                assert parts is not None  # a message is being continued: checked above
                parts.append(payload)
                if self._frag_decoder is not None:
                    try:
                        self._frag_decoder.decode(
                            payload[checked:] if checked > 0 else payload, bool(fin)
                        )
                    except UnicodeDecodeError:
                        return self._fail(events, "invalid UTF-8 in a text message", 1007)
                if fin:
                    whole = b"".join(parts)
                    opcode = self._frag_opcode
                    compressed = self._frag_compressed
                    self._frag_opcode = -1
                    self._frag_parts = None
                    self._frag_decoder = None
                    if compressed:
                        try:
                            whole = self.inflater.decompress(whole, max_size)
                        except ProtocolError as exc:
                            return self._error(events, exc)
                    if self.close_sent:
                        continue
                    if opcode == op_text:
                        try:
                            events.append((op_text, whole.decode("utf-8")))
                        except UnicodeDecodeError:
                            return self._fail(events, "invalid UTF-8 in a text message", 1007)
                    else:
                        events.append((op_binary, whole))
            else:
                if opcode == op_close:
                    self.close_received = True
                    return self._close_event(events, payload)
                if opcode == OP_PING and self.close_sent:
                    continue  # closing: no pong is owed (RFC 6455 5.5.2 ends with the close)
                events.append((opcode, payload))
        if pos < end:
            rest = data[pos:] if pos else data
            self._buf = [rest]
            self._have = end - pos
            self._need = need
        return events

    def _check_part(self, data: bytes, masked: bool = True) -> bool:
        """Check the next payload bytes of a text frame still arriving; False: not UTF-8.
        ``masked``: ``data`` is as read, to be unmasked at the frame's offset."""
        key = self._part_key
        n = len(data)
        if masked and key and n:
            shift = self._part_done & 3
            if shift:
                key = key[shift:] + key[:shift]
            data = _unmask(key + data, 4, n + 4)
        self._part_done += n
        try:
            self._frag_decoder.decode(data)
        except UnicodeDecodeError:
            return False
        return True

    def _bad_part(self, events: list[tuple[int, Any]], rest: int) -> list[tuple[int, Any]]:
        """Invalid UTF-8 in a text frame not yet whole: fail now, and skip the ``rest`` of
        the frame's bytes before reading the peer's close."""
        self._skip = rest
        return self._fail(events, "invalid UTF-8 in a text message", 1007)

    def _close_event(self, events: list[tuple[int, Any]], payload: bytes) -> list[tuple[int, Any]]:
        # RFC 6455 5.5.1: an optional 2-byte code, then a UTF-8 reason.  Nothing is read after it.
        if not payload:
            code = 1005
            reason = ""
        else:
            if len(payload) == 1:
                return self._fail(events, "close frame with a 1-byte payload")
            code = (payload[0] << 8) | payload[1]
            if not is_valid_close_code(code):
                return self._fail(events, f"invalid close code {code}")
            try:
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                return self._fail(events, "invalid UTF-8 in a close reason", 1007)
        self._stop()
        self.close_code = code
        self.close_reason = reason
        if not self.close_sent:
            # RFC 6455 5.5.1 and 7.1.1: answer with a close echoing the code; the handshake is
            # then complete and the server closes the TCP connection.
            self.close_sent = True
            self._out = self._close_frame(code, "")
        self.state = ST_CLOSED
        events.append((OP_CLOSE, (code, reason)))
        return events

    def _mask_error(
        self, events: list[tuple[int, Any]], opcode: int, message: str
    ) -> list[tuple[int, Any]]:
        if opcode == OP_CLOSE:
            self.close_received = True  # a badly masked close is still the peer's last frame
        return self._fail(events, message)

    def _too_big(self, events: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
        return self._error(events, PayloadTooBig("message over max_message_size"))

    def _fail(
        self, events: list[tuple[int, Any]], message: str, code: int = 1002
    ) -> list[tuple[int, Any]]:
        return self._error(events, ProtocolError(message, code))

    def _error(self, events: list[tuple[int, Any]], exc: ProtocolError) -> list[tuple[int, Any]]:
        """Fail the connection (RFC 6455 7.1.7): send a close with the error's code, then read
        only the peer's close, unless the bad frame was that close.  After our close frame,
        an error only ends the wait: nothing more is owed to the peer."""
        skip = self._skip
        self._stop()
        if self.close_sent:
            self.state = ST_CLOSED
            return events
        events.append((EV_ERROR, exc))
        self.close_sent = True
        self._out = self._close_frame(exc.code, _FAIL_REASONS.get(exc.code, "Protocol error"))
        if self.close_received:
            self.state = ST_CLOSED  # the bad frame was the peer's close: the handshake is over
            return events
        self.state = ST_CLOSING
        # What follows the bad frame is read afresh, for the peer's close alone; the
        # decompressor may be mid-stream, so compressed frames are errors from now on.  The
        # rest of a frame that failed before it was whole is skipped first.
        self._skip = skip
        self._failed = skip > 0
        self.inflater = None
        return events

    def _stop(self) -> None:
        """Forget the partial frame and message; read nothing more until reset by ``_error``."""
        self._failed = True
        self._buf = None
        self._have = 0
        self._need = 0
        self._frag_opcode = -1
        self._frag_parts = None
        self._frag_decoder = None
        self._part_done = -1
        self._part_key = b""
        self._skip = 0

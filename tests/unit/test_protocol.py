"""The RFC 6455 frame codec, bytes only: every rule FrameReader enforces, builders, interop.

Every test runs against both copies of the codec: the pure-Python ``_core`` and, when it was
built, the Cython-compiled ``_ccore``.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import itertools
import os
import random
import subprocess
import sys
from types import ModuleType
from typing import Any

import pytest
from websockets.frames import Close, Opcode
from websockets.protocol import Protocol, Side, State

import harpy.protocol
from harpy.exceptions import PayloadTooBig, ProtocolError
from harpy.protocol import _core
from tests.timing import scaled

try:
    from harpy.protocol import _ccore
except ImportError:
    _ccore = None

CORES: list[ModuleType] = [_core] if _ccore is None else [_core, _ccore]

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
EV_ERROR = -1

KEY = b"\x37\xfa\x21\x3d"


@pytest.fixture(params=CORES, ids=lambda m: m.__name__.rpartition(".")[2])
def core(request: pytest.FixtureRequest) -> ModuleType:
    module: ModuleType = request.param
    return module


# -- helpers --------------------------------------------------------------------------------------


def client_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    key: bytes = KEY,
    length: int | None = None,
) -> bytes:
    """A client frame built by hand: masked unless told otherwise; ``length`` overrides."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | rsv | opcode
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head = bytes((b0, mask_bit | n))
    elif n < 65536:
        head = bytes((b0, mask_bit | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((b0, mask_bit | 127)) + n.to_bytes(8, "big")
    if not masked:
        return head + payload
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + body


def header_only(opcode: int, length: int, *, fin: bool = True) -> bytes:
    """The header and masking key of a client frame, without its payload."""
    return client_frame(opcode, b"", fin=fin, length=length)


def norm(events: list[tuple[int, Any]]) -> list[tuple[Any, ...]]:
    """Events with errors reduced to (EV_ERROR, code, exception type) for comparison."""
    out: list[tuple[Any, ...]] = []
    for kind, value in events:
        if kind == EV_ERROR:
            assert isinstance(value, ProtocolError)
            out.append((EV_ERROR, value.code, type(value)))
        else:
            out.append((kind, value))
    return out


def error_codes(events: list[tuple[int, Any]]) -> list[int]:
    return [value.code for kind, value in events if kind == EV_ERROR]


def assert_single_error(events: list[tuple[int, Any]], code: int) -> None:
    assert len(events) == 1, events
    kind, exc = events[0]
    assert kind == EV_ERROR
    assert isinstance(exc, ProtocolError)
    assert exc.code == code
    if code == 1009:
        assert isinstance(exc, PayloadTooBig)


def feed_all(reader: Any, chunks: list[bytes]) -> list[tuple[int, Any]]:
    events: list[tuple[int, Any]] = []
    for chunk in chunks:
        events.extend(reader.feed(chunk))
    return events


# -- the two modules ------------------------------------------------------------------------------


def test_compiled_core_available() -> None:
    try:
        ccore = importlib.import_module("harpy.protocol._ccore")
    except ImportError:
        ccore = None
    compiled = ccore is not None and any(
        (ccore.__file__ or "").endswith(suffix) for suffix in importlib.machinery.EXTENSION_SUFFIXES
    )
    if os.environ.get("HARPY_EXPECT_COMPILED") == "1":
        assert ccore is not None, "harpy.protocol._ccore does not import"
        assert compiled, f"harpy.protocol._ccore is not an extension module: {ccore.__file__}"
    if os.environ.get("HARPY_NO_EXTENSIONS"):
        assert harpy.protocol.COMPILED is False
        assert harpy.protocol.FrameReader is _core.FrameReader
    else:
        assert harpy.protocol.COMPILED is compiled
        expected = ccore if compiled else _core
        assert expected is not None
        assert harpy.protocol.FrameReader is expected.FrameReader


def test_constants(core: ModuleType) -> None:
    assert (core.OP_CONT, core.OP_TEXT, core.OP_BINARY) == (OP_CONT, OP_TEXT, OP_BINARY)
    assert (core.OP_CLOSE, core.OP_PING, core.OP_PONG) == (OP_CLOSE, OP_PING, OP_PONG)
    assert core.EV_ERROR == EV_ERROR


# -- single frames --------------------------------------------------------------------------------

SIZES = [0, 1, 2, 124, 125, 126, 127, 255, 256, 1000, 65535, 65536, 65537, 100_000]


@pytest.mark.parametrize("size", SIZES)
def test_single_binary_frame(core: ModuleType, size: int) -> None:
    payload = bytes(i * 7 % 256 for i in range(size))
    frame = client_frame(OP_BINARY, payload)
    header_len = 2 if size < 126 else 4 if size < 65536 else 10
    assert len(frame) == header_len + 4 + size
    events = core.FrameReader().feed(frame)
    assert events == [(OP_BINARY, payload)]
    assert type(events[0][1]) is bytes


@pytest.mark.parametrize("size", SIZES)
def test_single_text_frame(core: ModuleType, size: int) -> None:
    text = ("abcé€😀" * (size // 3 + 1)).encode()[:size].decode("utf-8", "ignore")
    events = core.FrameReader().feed(client_frame(OP_TEXT, text.encode()))
    assert events == [(OP_TEXT, text)]
    assert type(events[0][1]) is str


@pytest.mark.parametrize(
    ("header", "size"),
    [
        (bytes((0x82, 0x80 | 125)), 125),
        (bytes((0x82, 0x80 | 126, 0x00, 0x7E)), 126),
        (bytes((0x82, 0x80 | 126, 0xFF, 0xFF)), 65535),
        (bytes((0x82, 0x80 | 127, 0, 0, 0, 0, 0, 1, 0, 0)), 65536),
    ],
)
def test_length_encodings_by_hand(core: ModuleType, header: bytes, size: int) -> None:
    payload = b"\xab" * size
    masked = bytes(b ^ KEY[i % 4] for i, b in enumerate(payload))
    assert core.FrameReader().feed(header + KEY + masked) == [(OP_BINARY, payload)]


def test_non_minimal_length_encoding_is_accepted(core: ModuleType) -> None:
    # RFC 6455 5.2 asks senders for the minimal encoding; receivers need not enforce it.
    payload = b"hi"
    masked = bytes(b ^ KEY[i % 4] for i, b in enumerate(payload))
    frame16 = bytes((0x82, 0xFE, 0x00, 0x02)) + KEY + masked
    frame64 = bytes((0x82, 0xFF)) + (2).to_bytes(8, "big") + KEY + masked
    assert core.FrameReader().feed(frame16) == [(OP_BINARY, payload)]
    assert core.FrameReader().feed(frame64) == [(OP_BINARY, payload)]


def test_zero_masking_key(core: ModuleType) -> None:
    frame = client_frame(OP_TEXT, b"plain", key=b"\x00\x00\x00\x00")
    assert frame.endswith(b"plain")
    assert core.FrameReader().feed(frame) == [(OP_TEXT, "plain")]


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 7, 8, 9, 1001])
def test_unmasking_all_alignments(core: ModuleType, size: int) -> None:
    payload = bytes(range(256)) * (size // 256 + 1)
    payload = payload[:size]
    for key in (b"\xff\xff\xff\xff", b"\x01\x02\x03\x04", b"\x80\x00\x00\x01"):
        frame = client_frame(OP_BINARY, payload, key=key)
        assert core.FrameReader().feed(frame) == [(OP_BINARY, payload)]


def test_empty_feed(core: ModuleType) -> None:
    reader = core.FrameReader()
    assert reader.feed(b"") == []
    assert reader.feed(b"\x81") == []
    assert reader.feed(b"") == []
    assert reader.feed(client_frame(OP_TEXT, b"ok")[1:]) == [(OP_TEXT, "ok")]


# -- splitting and batching -----------------------------------------------------------------------

SMALL_STREAMS = [
    pytest.param(client_frame(OP_TEXT, "héllo €".encode()), [(OP_TEXT, "héllo €")], id="text"),
    pytest.param(client_frame(OP_BINARY, b""), [(OP_BINARY, b"")], id="empty"),
    pytest.param(
        client_frame(OP_BINARY, bytes(range(130))), [(OP_BINARY, bytes(range(130)))], id="len16"
    ),
    pytest.param(
        client_frame(OP_TEXT, b"ab", fin=False)
        + client_frame(OP_PING, b"p")
        + client_frame(OP_CONT, b"cd"),
        [(OP_PING, b"p"), (OP_TEXT, "abcd")],
        id="fragmented",
    ),
    pytest.param(
        client_frame(OP_PING, b"1") + client_frame(OP_BINARY, b"\x00\x01") + client_frame(OP_CLOSE),
        [(OP_PING, b"1"), (OP_BINARY, b"\x00\x01"), (OP_CLOSE, (1005, ""))],
        id="three",
    ),
]


@pytest.mark.parametrize(("stream", "expected"), SMALL_STREAMS)
def test_split_in_two_at_every_position(
    core: ModuleType, stream: bytes, expected: list[tuple[int, Any]]
) -> None:
    for i in range(len(stream) + 1):
        reader = core.FrameReader()
        assert feed_all(reader, [stream[:i], stream[i:]]) == expected, i


@pytest.mark.parametrize(("stream", "expected"), SMALL_STREAMS)
def test_split_in_three_at_every_position(
    core: ModuleType, stream: bytes, expected: list[tuple[int, Any]]
) -> None:
    for i in range(len(stream) + 1):
        for j in range(i, len(stream) + 1):
            reader = core.FrameReader()
            chunks = [stream[:i], stream[i:j], stream[j:]]
            assert feed_all(reader, chunks) == expected, (i, j)


@pytest.mark.parametrize(("stream", "expected"), SMALL_STREAMS)
def test_byte_by_byte(core: ModuleType, stream: bytes, expected: list[tuple[int, Any]]) -> None:
    reader = core.FrameReader()
    chunks = [stream[i : i + 1] for i in range(len(stream))]
    assert feed_all(reader, chunks) == expected


def test_many_frames_in_one_feed(core: ModuleType) -> None:
    expected: list[tuple[int, Any]] = []
    stream = b""
    for i in range(300):
        if i % 3 == 0:
            text = f"message {i} ✓"
            stream += client_frame(OP_TEXT, text.encode())
            expected.append((OP_TEXT, text))
        elif i % 3 == 1:
            data = bytes([i % 256]) * (i * 5)
            stream += client_frame(OP_BINARY, data)
            expected.append((OP_BINARY, data))
        else:
            stream += client_frame(OP_PONG, str(i).encode())
            expected.append((OP_PONG, str(i).encode()))
    assert core.FrameReader().feed(stream) == expected


def test_one_feed_ends_mid_frame_then_resumes(core: ModuleType) -> None:
    a = client_frame(OP_TEXT, b"first")
    b = client_frame(OP_BINARY, b"x" * 70_000)
    c = client_frame(OP_TEXT, b"third")
    reader = core.FrameReader()
    assert reader.feed(a + b[:5]) == [(OP_TEXT, "first")]
    assert reader.feed(b[5:1000]) == []
    assert reader.feed(b[1000:] + c[:3]) == [(OP_BINARY, b"x" * 70_000)]
    assert reader.feed(c[3:]) == [(OP_TEXT, "third")]


def test_large_message_in_4k_chunks(core: ModuleType) -> None:
    payload = random.Random(1).randbytes(1024 * 1024)
    frame = client_frame(OP_BINARY, payload)
    chunks = [frame[i : i + 4096] for i in range(0, len(frame), 4096)]
    reader = core.FrameReader()
    for chunk in chunks[:-1]:
        assert reader.feed(chunk) == []
    assert reader.feed(chunks[-1] + client_frame(OP_TEXT, b"after")) == [
        (OP_BINARY, payload),
        (OP_TEXT, "after"),
    ]


def test_large_fragmented_text_in_4k_chunks(core: ModuleType) -> None:
    text = "€😀abc" * 80_000
    data = text.encode()
    parts = [data[i : i + 100_003] for i in range(0, len(data), 100_003)]
    stream = client_frame(OP_TEXT, parts[0], fin=False)
    for k, part in enumerate(parts[1:], 1):
        stream += client_frame(OP_CONT, part, fin=k == len(parts) - 1)
    reader = core.FrameReader()
    chunks = [stream[i : i + 4096] for i in range(0, len(stream), 4096)]
    assert feed_all(reader, chunks) == [(OP_TEXT, text)]


# -- fragmentation --------------------------------------------------------------------------------


def test_fragmented_text(core: ModuleType) -> None:
    stream = (
        client_frame(OP_TEXT, b"Hel", fin=False)
        + client_frame(OP_CONT, b"", fin=False)
        + client_frame(OP_CONT, b"lo, ", fin=False)
        + client_frame(OP_CONT, "wörld".encode())
    )
    assert core.FrameReader().feed(stream) == [(OP_TEXT, "Hello, wörld")]


def test_fragmented_binary(core: ModuleType) -> None:
    stream = (
        client_frame(OP_BINARY, b"\x00\x01", fin=False)
        + client_frame(OP_CONT, b"\x02" * 200, fin=False)
        + client_frame(OP_CONT, b"\x03" * 70_000)
    )
    expected = b"\x00\x01" + b"\x02" * 200 + b"\x03" * 70_000
    assert core.FrameReader().feed(stream) == [(OP_BINARY, expected)]


def test_fragmented_all_empty(core: ModuleType) -> None:
    stream = client_frame(OP_TEXT, b"", fin=False) + client_frame(OP_CONT, b"")
    stream += client_frame(OP_BINARY, b"", fin=False) + client_frame(OP_CONT, b"")
    assert core.FrameReader().feed(stream) == [(OP_TEXT, ""), (OP_BINARY, b"")]


def test_control_frames_between_fragments(core: ModuleType) -> None:
    stream = (
        client_frame(OP_TEXT, b"a", fin=False)
        + client_frame(OP_PING, b"p1")
        + client_frame(OP_CONT, b"b", fin=False)
        + client_frame(OP_PONG, b"p2")
        + client_frame(OP_PING, b"")
        + client_frame(OP_CONT, b"c")
        + client_frame(OP_BINARY, b"x", fin=False)
        + client_frame(OP_PING, b"p3")
        + client_frame(OP_CONT, b"y")
    )
    assert core.FrameReader().feed(stream) == [
        (OP_PING, b"p1"),
        (OP_PONG, b"p2"),
        (OP_PING, b""),
        (OP_TEXT, "abc"),
        (OP_PING, b"p3"),
        (OP_BINARY, b"xy"),
    ]


def test_close_between_fragments(core: ModuleType) -> None:
    stream = (
        client_frame(OP_TEXT, b"a", fin=False)
        + client_frame(OP_CLOSE, b"\x03\xe8")
        + client_frame(OP_CONT, b"b")
    )
    assert core.FrameReader().feed(stream) == [(OP_CLOSE, (1000, ""))]


def test_reassembly_state_resets_between_messages(core: ModuleType) -> None:
    reader = core.FrameReader()
    for i in range(5):
        op = OP_TEXT if i % 2 else OP_BINARY
        first = client_frame(op, b"1", fin=False)
        rest = client_frame(OP_CONT, b"2", fin=False) + client_frame(OP_CONT, b"3")
        value: Any = "123" if op == OP_TEXT else b"123"
        assert reader.feed(first) == []
        assert reader.feed(rest) == [(op, value)]


@pytest.mark.parametrize("fin", [True, False])
def test_continuation_without_start(core: ModuleType, fin: bool) -> None:
    events = core.FrameReader().feed(client_frame(OP_CONT, b"abc", fin=fin))
    assert_single_error(events, 1002)


def test_continuation_after_finished_message(core: ModuleType) -> None:
    stream = (
        client_frame(OP_TEXT, b"a", fin=False)
        + client_frame(OP_CONT, b"b")
        + client_frame(OP_CONT, b"c")
    )
    assert norm(core.FrameReader().feed(stream)) == [
        (OP_TEXT, "ab"),
        (EV_ERROR, 1002, ProtocolError),
    ]


@pytest.mark.parametrize("first", [OP_TEXT, OP_BINARY])
@pytest.mark.parametrize("second", [OP_TEXT, OP_BINARY])
@pytest.mark.parametrize("second_fin", [True, False])
def test_new_data_frame_inside_fragmented_message(
    core: ModuleType, first: int, second: int, second_fin: bool
) -> None:
    reader = core.FrameReader()
    assert reader.feed(client_frame(first, b"abc", fin=False)) == []
    events = reader.feed(client_frame(second, b"def", fin=second_fin))
    assert_single_error(events, 1002)


# -- UTF-8 ----------------------------------------------------------------------------------------

INVALID_UTF8 = [
    pytest.param(b"\xff", id="ff"),
    pytest.param(b"abc\x80", id="lone-continuation"),
    pytest.param(b"\xc0\xaf", id="overlong-2"),
    pytest.param(b"\xe0\x80\xaf", id="overlong-3"),
    pytest.param(b"\xed\xa0\x80", id="surrogate"),
    pytest.param(b"\xf4\x90\x80\x80", id="over-10ffff"),
    pytest.param(b"\xf8\x88\x80\x80\x80", id="5-byte"),
    pytest.param(b"ok\xe2\x82", id="truncated"),
    pytest.param(b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited", id="mixed"),
]


@pytest.mark.parametrize("data", INVALID_UTF8)
def test_invalid_utf8_single_frame(core: ModuleType, data: bytes) -> None:
    assert_single_error(core.FrameReader().feed(client_frame(OP_TEXT, data)), 1007)


@pytest.mark.parametrize("data", INVALID_UTF8)
def test_invalid_utf8_is_fine_in_binary(core: ModuleType, data: bytes) -> None:
    assert core.FrameReader().feed(client_frame(OP_BINARY, data)) == [(OP_BINARY, data)]


@pytest.mark.parametrize("data", INVALID_UTF8)
def test_invalid_utf8_across_fragments(core: ModuleType, data: bytes) -> None:
    """Each split of the bad text into two fragments ends in 1007 by the final fragment."""
    for i in range(len(data) + 1):
        stream = client_frame(OP_TEXT, data[:i], fin=False) + client_frame(OP_CONT, data[i:])
        events = core.FrameReader().feed(stream)
        assert_single_error(events, 1007)


def test_invalid_utf8_split_sequence(core: ModuleType) -> None:
    # The first fragment ends with a valid lead byte; the continuation breaks the sequence.
    stream = client_frame(OP_TEXT, b"ab\xe2\x82", fin=False) + client_frame(OP_CONT, b"(")
    assert_single_error(core.FrameReader().feed(stream), 1007)


def test_truncated_utf8_at_end_of_fragmented_message(core: ModuleType) -> None:
    reader = core.FrameReader()
    assert reader.feed(client_frame(OP_TEXT, b"ab\xf0\x9f", fin=False)) == []
    assert reader.feed(client_frame(OP_CONT, b"\x98", fin=False)) == []
    assert_single_error(reader.feed(client_frame(OP_CONT, b"")), 1007)


def test_valid_multibyte_split_across_fragments(core: ModuleType) -> None:
    text = "aé€😀z"
    data = text.encode()
    for i in range(len(data) + 1):
        for j in range(i, len(data) + 1):
            stream = (
                client_frame(OP_TEXT, data[:i], fin=False)
                + client_frame(OP_CONT, data[i:j], fin=False)
                + client_frame(OP_CONT, data[j:])
            )
            assert core.FrameReader().feed(stream) == [(OP_TEXT, text)], (i, j)


def test_each_byte_its_own_fragment(core: ModuleType) -> None:
    text = "€😀ü"
    data = text.encode()
    stream = client_frame(OP_TEXT, data[:1], fin=False)
    for k in range(1, len(data)):
        stream += client_frame(OP_CONT, data[k : k + 1], fin=k == len(data) - 1)
    assert core.FrameReader().feed(stream) == [(OP_TEXT, text)]


@pytest.mark.parametrize(
    "data", [b"\xff", b"ok\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90", b"\xe0\x80"]
)
def test_invalid_utf8_fails_fast_on_first_fragment(core: ModuleType, data: bytes) -> None:
    reader = core.FrameReader()
    assert_single_error(reader.feed(client_frame(OP_TEXT, data, fin=False)), 1007)
    assert reader.feed(client_frame(OP_CONT, b"x")) == []


def test_invalid_utf8_fails_fast_on_middle_fragment(core: ModuleType) -> None:
    reader = core.FrameReader()
    assert reader.feed(client_frame(OP_TEXT, b"fine", fin=False)) == []
    assert_single_error(reader.feed(client_frame(OP_CONT, b"\xfe", fin=False)), 1007)


def test_incomplete_sequence_in_first_fragment_is_not_an_error(core: ModuleType) -> None:
    reader = core.FrameReader()
    assert reader.feed(client_frame(OP_TEXT, b"\xf0\x9f\x98", fin=False)) == []
    assert reader.feed(client_frame(OP_CONT, b"\x80")) == [(OP_TEXT, "😀")]


# -- UTF-8 of a frame still arriving (fail fast within a frame) ----------------------------------

# Autobahn 6.4.3 and 6.4.4: valid text, then a code point past U+10FFFF, then more text, all in
# one frame sent in parts.
GOOD = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"
BAD = b"\xf4\x90\x80\x80"
REST = b"edited"


def test_invalid_utf8_fails_before_the_frame_is_whole(core: ModuleType) -> None:
    """The 1007 comes with the read that carries the bad byte, not with the frame's end."""
    frame = client_frame(OP_TEXT, GOOD + BAD + REST)
    head = len(frame) - len(GOOD + BAD + REST)
    reader = core.FrameReader()
    assert reader.feed(frame[: head + len(GOOD)]) == []
    assert_single_error(reader.feed(frame[head + len(GOOD) : head + len(GOOD) + 2]), 1007)
    assert reader.data_to_send() == b"\x88\x16\x03\xefInvalid payload data"
    assert reader.state == core.ST_CLOSING


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7])
def test_invalid_utf8_fails_fast_byte_by_byte(core: ModuleType, chunk: int) -> None:
    """Autobahn 6.4.4's case in reads of ``chunk`` bytes, header and masking key included:
    the error comes with the read holding the second byte of the bad sequence."""
    frame = client_frame(OP_TEXT, GOOD + BAD + REST)
    bad_at = len(frame) - len(BAD + REST) + 1  # F4 90: invalid from the 90 on
    reader = core.FrameReader()
    for start in range(0, len(frame), chunk):
        events = reader.feed(frame[start : start + chunk])
        if start + chunk <= bad_at:
            assert events == [], start
        else:
            assert_single_error(events, 1007)
            assert start <= bad_at
            break
    else:
        pytest.fail("no error")


def test_rest_of_failed_frame_is_skipped_then_close_is_read(core: ModuleType) -> None:
    """After failing mid-frame, the frame's remaining bytes are not read as frames: the
    peer's close that follows them completes the closing handshake."""
    frame = client_frame(OP_TEXT, GOOD + BAD + REST)
    split = len(frame) - len(REST)
    reader = core.FrameReader()
    assert_single_error(reader.feed(frame[:split]), 1007)
    reader.data_to_send()
    close = client_frame(OP_CLOSE, (1007).to_bytes(2, "big"))
    assert reader.feed(frame[split : split + 2]) == []
    events = reader.feed(frame[split + 2 :] + close)
    assert events == [(OP_CLOSE, (1007, ""))]
    assert reader.state == core.ST_CLOSED
    assert reader.close_received


def test_text_still_arriving_is_not_checked_once_closing(core: ModuleType) -> None:
    """After our close, messages are no longer read: the rest of a text frame begun before it
    is not judged either, and the peer's close still completes the handshake."""
    frame = client_frame(OP_TEXT, GOOD + BAD + REST)
    reader = core.FrameReader()
    assert reader.feed(frame[:8]) == []
    assert reader.send_close(1001) != b""
    assert reader.feed(frame[8:]) == []
    assert reader.state == core.ST_CLOSING
    assert reader.feed(client_frame(OP_CLOSE, (1001).to_bytes(2, "big"))) == [
        (OP_CLOSE, (1001, ""))
    ]
    assert reader.state == core.ST_CLOSED


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 5, 9, 64])
def test_valid_text_in_many_reads(core: ModuleType, chunk: int) -> None:
    """Valid text, multi-byte sequences cut anywhere, in one frame or in fragments, at every
    read size: the same message as in one read, and a frame after it still parses."""
    text = "aé€😀z" * 40
    data = text.encode()
    whole = client_frame(OP_TEXT, data)
    fragmented = (
        client_frame(OP_TEXT, data[:7], fin=False)
        + client_frame(OP_CONT, data[7:150], fin=False)
        + client_frame(OP_CONT, data[150:])
    )
    after = client_frame(OP_BINARY, b"\xff\xfe")
    for stream in (whole, fragmented):
        stream += after
        reader = core.FrameReader()
        chunks = [stream[i : i + chunk] for i in range(0, len(stream), chunk)]
        assert feed_all(reader, chunks) == [(OP_TEXT, text), (OP_BINARY, b"\xff\xfe")]


def test_invalid_utf8_in_continuation_still_arriving(core: ModuleType) -> None:
    reader = core.FrameReader()
    assert reader.feed(client_frame(OP_TEXT, b"ok \xe2\x82", fin=False)) == []
    frame = client_frame(OP_CONT, b"\xac and then \xff and more")
    assert reader.feed(frame[:7]) == []  # header, key, the euro sign's last byte
    assert_single_error(reader.feed(frame[7:20]), 1007)


def test_truncated_sequence_at_the_end_of_a_frame_in_parts(core: ModuleType) -> None:
    """A frame cut inside a sequence is fine until the frame ends: then it is not UTF-8."""
    frame = client_frame(OP_TEXT, b"ok\xe2\x82")
    reader = core.FrameReader()
    assert reader.feed(frame[:-1]) == []
    assert_single_error(reader.feed(frame[-1:]), 1007)


def test_client_reader_checks_unmasked_text_in_parts(core: ModuleType) -> None:
    frame = client_frame(OP_TEXT, GOOD + BAD + REST, masked=False)
    reader = core.FrameReader(client=True)
    assert reader.feed(frame[:5]) == []
    assert_single_error(reader.feed(frame[5 : 2 + len(GOOD) + 2]), 1007)


def test_binary_frame_in_parts_is_not_checked_as_text(core: ModuleType) -> None:
    data = b"\xff" * 10
    frame = client_frame(OP_BINARY, data)
    reader = core.FrameReader()
    assert feed_all(reader, [frame[i : i + 3] for i in range(0, len(frame), 3)]) == [
        (OP_BINARY, data)
    ]


# -- framing errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("rsv", [0x40, 0x20, 0x10, 0x70])
@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY, OP_PING, OP_PONG, OP_CLOSE])
def test_reserved_bits_without_extension(core: ModuleType, rsv: int, opcode: int) -> None:
    events = core.FrameReader().feed(client_frame(opcode, b"\x03\xe8", rsv=rsv))
    assert_single_error(events, 1002)


@pytest.mark.parametrize("rsv", [0x40, 0x20, 0x10])
def test_reserved_bits_on_continuation(core: ModuleType, rsv: int) -> None:
    stream = client_frame(OP_BINARY, b"a", fin=False) + client_frame(OP_CONT, b"b", rsv=rsv)
    assert_single_error(core.FrameReader().feed(stream), 1002)


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
@pytest.mark.parametrize("fin", [True, False])
def test_unknown_opcodes(core: ModuleType, opcode: int, fin: bool) -> None:
    events = core.FrameReader().feed(client_frame(opcode, b"data", fin=fin))
    assert_single_error(events, 1002)


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY, OP_CONT, OP_PING, OP_CLOSE])
def test_unmasked_client_frame(core: ModuleType, opcode: int) -> None:
    events = core.FrameReader().feed(client_frame(opcode, b"hello", masked=False))
    assert_single_error(events, 1002)


@pytest.mark.parametrize("size", [5, 300, 70_000])
def test_unmasked_frame_detected_from_header(core: ModuleType, size: int) -> None:
    frame = client_frame(OP_BINARY, b"\x00" * size, masked=False)
    header_len = 2 if size < 126 else 4 if size < 65536 else 10
    assert_single_error(core.FrameReader().feed(frame[:header_len]), 1002)


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE])
def test_fragmented_control_frame(core: ModuleType, opcode: int) -> None:
    events = core.FrameReader().feed(client_frame(opcode, b"", fin=False))
    assert_single_error(events, 1002)


#: Frames whose header alone is an error, after what comes before them: (name, lead-in frames,
#: opcode, fin, rsv, announced length, close code).  Each announces a payload that never comes.
EARLY_ERRORS = [
    ("rsv1-text-no-extension", [], OP_TEXT, True, 0x40, 65536, 1002),
    ("rsv2-binary", [], OP_BINARY, True, 0x20, 65536, 1002),
    ("rsv3-binary-not-final", [], OP_BINARY, False, 0x10, 65536, 1002),
    ("rsv1-continuation", [(OP_BINARY, False)], OP_CONT, True, 0x40, 65536, 1002),
    ("rsv1-ping", [], OP_PING, True, 0x40, 100, 1002),
    ("rsv2-close", [], OP_CLOSE, True, 0x20, 100, 1002),
    ("continuation-without-message", [], OP_CONT, True, 0, 65536, 1002),
    ("continuation-after-finished-message", [(OP_TEXT, True)], OP_CONT, False, 0, 65536, 1002),
    ("text-inside-fragmented-message", [(OP_TEXT, False)], OP_TEXT, True, 0, 65536, 1002),
    ("binary-inside-fragmented-message", [(OP_BINARY, False)], OP_BINARY, False, 0, 65536, 1002),
    ("fragmented-ping", [], OP_PING, False, 0, 100, 1002),
    ("fragmented-close", [], OP_CLOSE, False, 0, 100, 1002),
    ("fragmented-total-over-the-limit", [(OP_BINARY, False)], OP_CONT, True, 0, 65536, 1009),
]


def early_error_stream(
    lead: list[tuple[int, bool]], opcode: int, fin: bool, rsv: int, length: int, *, client: bool
) -> tuple[bytes, bytes]:
    """The lead-in frames (one byte of payload each), and the bad frame's header alone."""
    bad = client_frame(opcode, fin=fin, rsv=rsv, length=length, masked=not client)
    frames = b"".join(client_frame(op, b"a", fin=f, masked=not client) for op, f in lead)
    return frames, bad


@pytest.mark.parametrize("client", [False, True], ids=["server", "client"])
@pytest.mark.parametrize(
    ("lead", "opcode", "fin", "rsv", "length", "code"),
    [case[1:] for case in EARLY_ERRORS],
    ids=[case[0] for case in EARLY_ERRORS],
)
def test_errors_a_header_shows_are_acted_on_before_the_payload(
    core: ModuleType,
    client: bool,
    lead: list[tuple[int, bool]],
    opcode: int,
    fin: bool,
    rsv: int,
    length: int,
    code: int,
) -> None:
    # The header is all there is: the reader fails at once, with its close frame ready, rather
    # than waiting for a payload that may never be sent.
    reader = core.FrameReader(max_message_size=65536, client=client)
    frames, header = early_error_stream(lead, opcode, fin, rsv, length, client=client)
    events = reader.feed(frames)
    assert [kind for kind, _ in events] == [OP_TEXT] * (lead == [(OP_TEXT, True)])
    assert_single_error(reader.feed(header), code)
    answer = reader.data_to_send()
    if client:  # a client's close is masked: unmask it to read the code
        answer = answer[:1] + bytes((answer[1] & 0x7F,)) + _core._unmask(answer, 6, len(answer))
    assert answer[:1] == b"\x88" and int.from_bytes(answer[2:4], "big") == code
    assert reader.state == (core.ST_CLOSED if opcode == OP_CLOSE else core.ST_CLOSING)
    assert reader.close_received is (opcode == OP_CLOSE)


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG])
def test_control_frame_125_bytes_ok(core: ModuleType, opcode: int) -> None:
    payload = b"\x01" * 125
    assert core.FrameReader().feed(client_frame(opcode, payload)) == [(opcode, payload)]


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE])
@pytest.mark.parametrize("size", [126, 127, 1000])
def test_control_frame_over_125_bytes(core: ModuleType, opcode: int, size: int) -> None:
    payload = b"\x03\xe8" + b"a" * (size - 2)
    assert_single_error(core.FrameReader().feed(client_frame(opcode, payload)), 1002)


@pytest.mark.parametrize("opcode", [OP_CLOSE, OP_PING, 0xB])
def test_frame_that_cannot_be_valid_is_not_buffered_past_the_limit(
    core: ModuleType, opcode: int
) -> None:
    """A control (or reserved control) opcode announcing 2**40 bytes can never be valid.

    The reader has its header in hand and has been sent more than ``max_message_size`` bytes of
    its payload: it must have failed the connection by then rather than keep buffering.
    """
    reader = core.FrameReader(max_message_size=1024)
    events = reader.feed(header_only(opcode, 2**40) + b"\x00" * 4096)
    assert_single_error(events, 1002)


@pytest.mark.parametrize("top", [0x80, 0xFF])
def test_64bit_length_with_msb_set(core: ModuleType, top: int) -> None:
    header = bytes((0x82, 0xFF, top, 0, 0, 0, 0, 0, 0, 5))
    for max_size in (0, 1024):
        reader = core.FrameReader(max_message_size=max_size)
        assert_single_error(reader.feed(header), 1002)
        reader = core.FrameReader(max_message_size=max_size)
        assert_single_error(reader.feed(header + KEY + b"hello"), 1002)


# Run in a child process: a crash there is a failed assertion here, not a lost test session.
_HUGE_LENGTH_SCRIPT = """
import importlib, sys
core = importlib.import_module(sys.argv[1])
reader = core.FrameReader(max_message_size=int(sys.argv[2]))
header = bytes((int(sys.argv[3], 16), 0xFF)) + (2**63 - 1).to_bytes(8, "big")
events = reader.feed(header + bytes.fromhex(sys.argv[4]))
print([kind for kind, _ in events])
"""


@pytest.mark.parametrize(
    ("opcode", "max_size"),
    [
        (OP_BINARY, 0),
        (OP_TEXT, 0),
        (OP_PING, 16 * 1024 * 1024),
        (0xB, 16 * 1024 * 1024),
    ],
)
@pytest.mark.parametrize("tail", [b"", KEY + b"abc"], ids=["header", "key+3"])
def test_largest_announced_length(
    core: ModuleType, opcode: int, max_size: int, tail: bytes
) -> None:
    """A frame announcing 2**63 - 1 bytes that the size limit does not stop.

    The reader waits for the payload or fails the connection; it neither raises nor crashes.
    """
    argv = [core.__name__, str(max_size), f"{0x80 | opcode:x}", tail.hex()]
    proc = subprocess.run(
        [sys.executable, "-c", _HUGE_LENGTH_SCRIPT, *argv],
        capture_output=True,
        text=True,
        timeout=scaled(120.0),
        check=False,
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.strip() in ("[]", "[-1]")


# -- close frames ---------------------------------------------------------------------------------

VALID_CODES = [1000, 1001, 1002, 1003, *range(1007, 1015), 3000, 3999, 4000, 4999]
INVALID_CODES = [0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]


def test_empty_close(core: ModuleType) -> None:
    reader = core.FrameReader()
    assert not reader.close_received
    assert reader.feed(client_frame(OP_CLOSE)) == [(OP_CLOSE, (1005, ""))]
    assert reader.close_received


def test_close_with_one_byte_payload(core: ModuleType) -> None:
    reader = core.FrameReader()
    assert_single_error(reader.feed(client_frame(OP_CLOSE, b"\x03")), 1002)
    assert reader.close_received


@pytest.mark.parametrize("code", VALID_CODES)
def test_close_valid_codes(core: ModuleType, code: int) -> None:
    events = core.FrameReader().feed(client_frame(OP_CLOSE, code.to_bytes(2, "big")))
    assert events == [(OP_CLOSE, (code, ""))]


@pytest.mark.parametrize("code", INVALID_CODES)
def test_close_invalid_codes(core: ModuleType, code: int) -> None:
    reader = core.FrameReader()
    assert_single_error(reader.feed(client_frame(OP_CLOSE, code.to_bytes(2, "big"))), 1002)
    assert reader.close_received


@pytest.mark.parametrize("reason", ["", "bye", "au revoir ✓ 😀", "x" * 123])
def test_close_reason(core: ModuleType, reason: str) -> None:
    payload = (1001).to_bytes(2, "big") + reason.encode()
    assert core.FrameReader().feed(client_frame(OP_CLOSE, payload)) == [(OP_CLOSE, (1001, reason))]


@pytest.mark.parametrize("reason", [b"\xff", b"bye\xe2\x82", b"\xed\xa0\x80", b"\xc0\xaf"])
def test_close_invalid_utf8_reason(core: ModuleType, reason: bytes) -> None:
    events = core.FrameReader().feed(client_frame(OP_CLOSE, b"\x03\xe8" + reason))
    assert_single_error(events, 1007)


@pytest.mark.parametrize(
    "close",
    [b"", b"\x03\xe8", b"\x03\xe8bye", b"\x03", b"\x00\x00", b"\x03\xe8\xff"],
    ids=["empty", "code", "reason", "1byte", "badcode", "badutf8"],
)
def test_nothing_is_parsed_after_a_close(core: ModuleType, close: bytes) -> None:
    reader = core.FrameReader()
    after = client_frame(OP_TEXT, b"late") + client_frame(OP_PING, b"late")
    events = reader.feed(client_frame(OP_TEXT, b"early") + client_frame(OP_CLOSE, close) + after)
    assert events[0] == (OP_TEXT, "early")
    assert len(events) == 2
    assert events[1][0] in (OP_CLOSE, EV_ERROR)
    assert reader.close_received
    assert reader.feed(after) == []
    assert reader.feed(client_frame(OP_CLOSE)) == []
    assert reader.feed(b"\x00garbage") == []


# -- max_message_size -----------------------------------------------------------------------------


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY])
@pytest.mark.parametrize(("limit", "size"), [(100, 101), (100, 125), (125, 126), (1000, 65536)])
def test_too_big_detected_from_header(core: ModuleType, opcode: int, limit: int, size: int) -> None:
    header_len = 2 if size < 126 else 4 if size < 65536 else 10
    frame = client_frame(opcode, b"a" * size)
    reader = core.FrameReader(max_message_size=limit)
    # Only the length field: no masking key, no payload.
    assert_single_error(reader.feed(frame[:header_len]), 1009)
    assert reader.feed(frame[header_len:]) == []


def test_too_big_first_fragment(core: ModuleType) -> None:
    reader = core.FrameReader(max_message_size=10)
    assert_single_error(reader.feed(header_only(OP_TEXT, 11, fin=False)), 1009)


def test_too_big_continuation_frame_alone(core: ModuleType) -> None:
    reader = core.FrameReader(max_message_size=10)
    assert reader.feed(client_frame(OP_BINARY, b"", fin=False)) == []
    assert_single_error(reader.feed(header_only(OP_CONT, 11)), 1009)


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY])
def test_too_big_fragmented_total(core: ModuleType, opcode: int) -> None:
    reader = core.FrameReader(max_message_size=10)
    assert reader.feed(client_frame(opcode, b"abcd", fin=False)) == []
    assert reader.feed(client_frame(OP_CONT, b"efgh", fin=False)) == []
    assert_single_error(reader.feed(client_frame(OP_CONT, b"ijk")), 1009)
    assert reader.feed(client_frame(OP_TEXT, b"a")) == []


def test_too_big_fragmented_total_before_fin(core: ModuleType) -> None:
    reader = core.FrameReader(max_message_size=10)
    stream = client_frame(OP_BINARY, b"abcdef", fin=False) + client_frame(
        OP_CONT, b"ghijk", fin=False
    )
    assert_single_error(reader.feed(stream), 1009)


@pytest.mark.parametrize("limit", [1, 10, 125, 126, 65535, 65536])
def test_exactly_at_the_limit(core: ModuleType, limit: int) -> None:
    reader = core.FrameReader(max_message_size=limit)
    payload = b"z" * limit
    assert reader.feed(client_frame(OP_BINARY, payload)) == [(OP_BINARY, payload)]
    half = limit // 2
    stream = client_frame(OP_BINARY, payload[:half], fin=False)
    stream += client_frame(OP_CONT, payload[half:])
    assert reader.feed(stream) == [(OP_BINARY, payload)]
    assert_single_error(reader.feed(client_frame(OP_TEXT, b"z" * (limit + 1))), 1009)


def test_limit_applies_per_message(core: ModuleType) -> None:
    reader = core.FrameReader(max_message_size=10)
    for _ in range(5):
        stream = client_frame(OP_TEXT, b"12345", fin=False) + client_frame(OP_CONT, b"67890")
        assert reader.feed(stream) == [(OP_TEXT, "1234567890")]


def test_limit_does_not_apply_to_control_frames(core: ModuleType) -> None:
    reader = core.FrameReader(max_message_size=4)
    assert reader.feed(client_frame(OP_PING, b"p" * 125)) == [(OP_PING, b"p" * 125)]


def test_zero_means_unlimited(core: ModuleType) -> None:
    reader = core.FrameReader(max_message_size=0)
    payload = b"\x01" * (3 * 1024 * 1024)
    assert reader.feed(client_frame(OP_BINARY, payload)) == [(OP_BINARY, payload)]
    stream = client_frame(OP_BINARY, payload, fin=False) + client_frame(OP_CONT, payload)
    assert reader.feed(stream) == [(OP_BINARY, payload + payload)]


def test_default_limit_is_16_mib(core: ModuleType) -> None:
    reader = core.FrameReader()
    assert reader.max_message_size == 16 * 1024 * 1024
    assert_single_error(reader.feed(header_only(OP_BINARY, 16 * 1024 * 1024 + 1)), 1009)


# -- errors end the stream ------------------------------------------------------------------------

BAD_FRAMES = [
    pytest.param(client_frame(OP_CONT, b"x"), 1002, id="cont"),
    pytest.param(client_frame(OP_TEXT, b"\xff"), 1007, id="utf8"),
    pytest.param(client_frame(5, b""), 1002, id="opcode"),
    pytest.param(client_frame(OP_PING, b"", fin=False), 1002, id="control-fin"),
    pytest.param(client_frame(OP_TEXT, b"x", masked=False), 1002, id="unmasked"),
    pytest.param(client_frame(OP_TEXT, b"x", rsv=0x20), 1002, id="rsv"),
    pytest.param(client_frame(OP_CLOSE, b"\x03\xed"), 1002, id="close-code"),
]


@pytest.mark.parametrize(("bad", "code"), BAD_FRAMES)
def test_events_before_error_come_first_and_nothing_after(
    core: ModuleType, bad: bytes, code: int
) -> None:
    reader = core.FrameReader()
    good = client_frame(OP_TEXT, b"one") + client_frame(OP_PING, b"two")
    good += client_frame(OP_BINARY, b"th", fin=False) + client_frame(OP_CONT, b"ree")
    after = client_frame(OP_TEXT, b"after")
    events = reader.feed(good + bad + after)
    assert norm(events) == [
        (OP_TEXT, "one"),
        (OP_PING, b"two"),
        (OP_BINARY, b"three"),
        (EV_ERROR, code, ProtocolError),
    ]
    assert reader.feed(after) == []
    assert reader.feed(after + after) == []


@pytest.mark.parametrize(("bad", "code"), BAD_FRAMES)
def test_error_in_a_later_feed(core: ModuleType, bad: bytes, code: int) -> None:
    reader = core.FrameReader()
    assert reader.feed(client_frame(OP_TEXT, b"one")) == [(OP_TEXT, "one")]
    assert error_codes(reader.feed(bad[:1])) == []
    assert error_codes(reader.feed(bad[1:])) == [code]
    assert reader.feed(client_frame(OP_TEXT, b"after")) == []


def test_no_events_after_too_big(core: ModuleType) -> None:
    reader = core.FrameReader(max_message_size=5)
    events = reader.feed(client_frame(OP_TEXT, b"ok") + client_frame(OP_TEXT, b"toolong"))
    assert norm(events) == [(OP_TEXT, "ok"), (EV_ERROR, 1009, PayloadTooBig)]
    assert reader.feed(client_frame(OP_TEXT, b"ok")) == []


# -- the closing handshake ------------------------------------------------------------------------

# The fixed close frames the reader sends to fail a connection: code, then the fixed reason.
FAIL_1002 = b"\x88\x10\x03\xeaProtocol error"
FAIL_1007 = b"\x88\x16\x03\xefInvalid payload data"
FAIL_1009 = b"\x88\x11\x03\xf1Message too big"


def unmask_client_frame(frame: bytes) -> tuple[int, bytes]:
    """(first header byte, unmasked payload) of a short masked frame, checking its length."""
    assert frame[1] & 0x80, "a client frame is masked"
    length = frame[1] & 0x7F
    assert length < 126 and len(frame) == 6 + length
    key = frame[2:6]
    return frame[0], bytes(b ^ key[i % 4] for i, b in enumerate(frame[6:]))


def assert_handshake(
    reader: Any, state: int, *, sent: bool, received: bool, code: int = 1006, reason: str = ""
) -> None:
    assert (reader.state, reader.close_sent, reader.close_received) == (state, sent, received)
    assert (reader.close_code, reader.close_reason) == (code, reason)


def test_state_constants(core: ModuleType) -> None:
    assert (core.ST_OPEN, core.ST_CLOSING, core.ST_CLOSED) == (1, 2, 3)
    assert (harpy.protocol.ST_OPEN, harpy.protocol.ST_CLOSED) == (1, 3)


def test_a_new_reader_is_open(core: ModuleType) -> None:
    reader = core.FrameReader()
    assert_handshake(reader, core.ST_OPEN, sent=False, received=False)
    assert reader.data_to_send() == b""


def test_local_close_then_peer_close(core: ModuleType) -> None:
    reader = core.FrameReader()
    assert reader.send_close(1000, "bye") == b"\x88\x05\x03\xe8bye"
    assert_handshake(reader, core.ST_CLOSING, sent=True, received=False)
    assert reader.data_to_send() == b""
    assert reader.feed(client_frame(OP_CLOSE, b"\x03\xe8done")) == [(OP_CLOSE, (1000, "done"))]
    assert_handshake(reader, core.ST_CLOSED, sent=True, received=True, code=1000, reason="done")
    assert reader.data_to_send() == b""  # our close was sent: no echo
    assert reader.send_close(1000, "again") == b""
    assert reader.feed(client_frame(OP_TEXT, b"late") + client_frame(OP_CLOSE)) == []


@pytest.mark.parametrize(
    ("args", "frame"),
    [
        ((), b"\x88\x02\x03\xe8"),
        ((1001,), b"\x88\x02\x03\xe9"),
        ((4000, "é"), b"\x88\x04\x0f\xa0\xc3\xa9"),
        ((1005,), b"\x88\x00"),
    ],
)
def test_send_close_frames(core: ModuleType, args: tuple[Any, ...], frame: bytes) -> None:
    assert core.FrameReader().send_close(*args) == frame


def test_send_close_is_idempotent(core: ModuleType) -> None:
    reader = core.FrameReader()
    assert reader.send_close(1001, "away") == b"\x88\x06\x03\xe9away"
    assert reader.send_close(1001, "away") == b""
    assert reader.send_close(1000) == b""
    assert_handshake(reader, core.ST_CLOSING, sent=True, received=False)
    assert reader.data_to_send() == b""


@pytest.mark.parametrize(
    ("payload", "code", "reason", "echo"),
    [
        (b"\x03\xe8", 1000, "", b"\x88\x02\x03\xe8"),
        (b"\x03\xe9going", 1001, "going", b"\x88\x02\x03\xe9"),
        (b"\x0f\xa1why \xe2\x9c\x93", 4001, "why ✓", b"\x88\x02\x0f\xa1"),
        (b"", 1005, "", b"\x88\x00"),
    ],
    ids=["1000", "1001-reason", "4001-utf8", "empty"],
)
def test_peer_close_first_is_echoed(
    core: ModuleType, payload: bytes, code: int, reason: str, echo: bytes
) -> None:
    reader = core.FrameReader()
    assert reader.feed(client_frame(OP_CLOSE, payload)) == [(OP_CLOSE, (code, reason))]
    assert_handshake(reader, core.ST_CLOSED, sent=True, received=True, code=code, reason=reason)
    assert reader.data_to_send() == echo  # the code alone, never the reason
    assert reader.data_to_send() == b""  # handed out once
    assert reader.send_close(1000, "late") == b""  # the echo was our close
    assert reader.feed(client_frame(OP_PING, b"after")) == []


def test_peer_close_after_messages_in_the_same_feed(core: ModuleType) -> None:
    reader = core.FrameReader()
    stream = client_frame(OP_TEXT, b"a") + client_frame(OP_PING, b"p")
    stream += client_frame(OP_CLOSE, b"\x03\xe8") + client_frame(OP_TEXT, b"never")
    assert reader.feed(stream) == [(OP_TEXT, "a"), (OP_PING, b"p"), (OP_CLOSE, (1000, ""))]
    assert reader.data_to_send() == b"\x88\x02\x03\xe8"
    assert reader.state == core.ST_CLOSED


MID_STREAM_ERRORS = [
    pytest.param(0, client_frame(OP_CONT, b"x"), 1002, FAIL_1002, id="1002"),
    pytest.param(0, client_frame(OP_TEXT, b"\xff"), 1007, FAIL_1007, id="1007"),
    pytest.param(4, client_frame(OP_BINARY, b"12345"), 1009, FAIL_1009, id="1009"),
    pytest.param(4, header_only(OP_BINARY, 1 << 40), 1009, FAIL_1009, id="1009-header"),
]


@pytest.mark.parametrize(("limit", "bad", "code", "fail"), MID_STREAM_ERRORS)
def test_protocol_error_then_peer_close(
    core: ModuleType, limit: int, bad: bytes, code: int, fail: bytes
) -> None:
    reader = core.FrameReader(max_message_size=limit)
    events = reader.feed(client_frame(OP_TEXT, b"ok") + bad)
    error = PayloadTooBig if code == 1009 else ProtocolError
    assert norm(events) == [(OP_TEXT, "ok"), (EV_ERROR, code, error)]
    assert_handshake(reader, core.ST_CLOSING, sent=True, received=False)
    assert reader.data_to_send() == fail
    assert reader.data_to_send() == b""
    assert reader.send_close(1000) == b""  # the failing close was ours
    # Waiting for the peer's close: what comes first is read, and ignored.
    assert reader.feed(client_frame(OP_TEXT, b"ign")) == []
    assert reader.feed(client_frame(OP_PING, b"ign")) == []
    assert reader.state == core.ST_CLOSING
    assert reader.feed(client_frame(OP_CLOSE, b"\x03\xea")) == [(OP_CLOSE, (1002, ""))]
    assert_handshake(reader, core.ST_CLOSED, sent=True, received=True, code=1002)
    assert reader.data_to_send() == b""  # no echo: our close was sent
    assert reader.feed(client_frame(OP_CLOSE)) == []


def test_protocol_error_then_peer_close_split_in_bytes(core: ModuleType) -> None:
    reader = core.FrameReader()
    assert error_codes(reader.feed(client_frame(5, b""))) == [1002]
    events = feed_all(reader, [bytes((b,)) for b in client_frame(OP_CLOSE, b"\x0f\xa0bye")])
    assert events == [(OP_CLOSE, (4000, "bye"))]
    assert_handshake(reader, core.ST_CLOSED, sent=True, received=True, code=4000, reason="bye")


def test_empty_peer_close_after_an_error(core: ModuleType) -> None:
    reader = core.FrameReader()
    assert error_codes(reader.feed(client_frame(OP_TEXT, b"x", masked=False))) == [1002]
    assert reader.feed(client_frame(OP_CLOSE)) == [(OP_CLOSE, (1005, ""))]
    assert_handshake(reader, core.ST_CLOSED, sent=True, received=True, code=1005)


@pytest.mark.parametrize(
    ("bad", "code", "fail"),
    [
        pytest.param(client_frame(OP_CLOSE, b"\x03"), 1002, FAIL_1002, id="1-byte"),
        pytest.param(client_frame(OP_CLOSE, b"\x03\xed"), 1002, FAIL_1002, id="code-1005"),
        pytest.param(client_frame(OP_CLOSE, b"\x03\xe8\xff"), 1007, FAIL_1007, id="reason"),
        pytest.param(client_frame(OP_CLOSE, b"", fin=False), 1002, FAIL_1002, id="fragmented"),
        pytest.param(client_frame(OP_CLOSE, b"", rsv=0x40), 1002, FAIL_1002, id="rsv1"),
        pytest.param(header_only(OP_CLOSE, 126), 1002, FAIL_1002, id="126-bytes"),
    ],
)
def test_error_in_the_peer_close_ends_at_once(
    core: ModuleType, bad: bytes, code: int, fail: bytes
) -> None:
    reader = core.FrameReader()
    assert error_codes(reader.feed(bad)) == [code]
    # The handshake is over: the peer sends nothing after its close, valid or not.
    assert_handshake(reader, core.ST_CLOSED, sent=True, received=True)
    assert reader.data_to_send() == fail
    assert reader.data_to_send() == b""
    assert reader.send_close() == b""
    assert reader.feed(client_frame(OP_CLOSE, b"\x03\xe8")) == []
    assert reader.close_code == 1006


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x8f\x80" + KEY,  # unknown opcode
        client_frame(OP_TEXT, b"x", masked=False),
        client_frame(OP_CONT, b"x"),
        client_frame(OP_BINARY, b"x", rsv=0x40),
        client_frame(OP_CLOSE, b"\x03"),
        header_only(OP_BINARY, 1 << 60),
    ],
    ids=["opcode", "unmasked", "cont", "rsv1", "bad-close", "too-big"],
)
def test_garbage_after_our_close_ends_without_an_event(core: ModuleType, garbage: bytes) -> None:
    reader = core.FrameReader()
    assert reader.send_close(1001) == b"\x88\x02\x03\xe9"
    assert reader.feed(client_frame(OP_PONG, b"p") + garbage) == [(OP_PONG, b"p")]
    assert reader.state == core.ST_CLOSED
    assert reader.close_sent and reader.close_code == 1006
    assert reader.data_to_send() == b""  # nothing more is owed: our close was sent
    assert reader.feed(client_frame(OP_CLOSE, b"\x03\xe8")) == []


def test_garbage_while_waiting_after_an_error(core: ModuleType) -> None:
    reader = core.FrameReader()
    assert error_codes(reader.feed(client_frame(OP_CONT, b"x"))) == [1002]
    assert reader.data_to_send() == FAIL_1002
    assert reader.feed(client_frame(OP_CONT, b"again")) == []  # a second error: no event
    assert_handshake(reader, core.ST_CLOSED, sent=True, received=False)
    assert reader.data_to_send() == b""


def test_compressed_frame_after_an_error_is_garbage(core: ModuleType) -> None:
    from harpy.protocol.deflate import PerMessageDeflate

    codec = PerMessageDeflate()
    reader = core.FrameReader(inflater=codec)
    compressed = client_frame(OP_TEXT, codec.compress(b"hello"), rsv=0x40)
    assert reader.feed(compressed) == [(OP_TEXT, "hello")]
    assert error_codes(reader.feed(client_frame(OP_TEXT, b"\xff"))) == [1007]
    assert reader.state == core.ST_CLOSING
    # The inflater may be mid-stream: it is dropped, and RSV1 is now an error (without event).
    assert reader.feed(compressed) == []
    assert reader.state == core.ST_CLOSED


def test_messages_and_pings_are_dropped_after_our_close(core: ModuleType) -> None:
    reader = core.FrameReader()
    assert reader.feed(client_frame(OP_TEXT, b"part", fin=False)) == []
    reader.send_close()
    stream = client_frame(OP_CONT, b"ial")  # the message begun before our close
    stream += client_frame(OP_TEXT, b"text") + client_frame(OP_BINARY, b"bin")
    stream += client_frame(OP_BINARY, b"fr", fin=False) + client_frame(OP_PING, b"ping")
    stream += client_frame(OP_PONG, b"pong") + client_frame(OP_CONT, b"ag")
    assert reader.feed(stream) == [(OP_PONG, b"pong")]
    assert reader.state == core.ST_CLOSING
    assert reader.data_to_send() == b""  # no pong is owed for the ping either
    assert reader.feed(client_frame(OP_CLOSE, b"\x03\xe8")) == [(OP_CLOSE, (1000, ""))]
    assert reader.state == core.ST_CLOSED


# -- the client side -------------------------------------------------------------------------------


def test_client_reads_unmasked_server_frames(core: ModuleType) -> None:
    reader = core.FrameReader(client=True)
    assert reader.client
    stream = core.build_frame(OP_TEXT, "hé".encode()) + core.build_frame(OP_BINARY, b"\x00" * 300)
    stream += bytes((0x01, 2)) + b"ab" + core.build_frame(OP_PING, b"p") + bytes((0x80, 1)) + b"c"
    stream += bytes((0x82, 127)) + (70_000).to_bytes(8, "big") + b"\x01" * 70_000
    expected = [
        (OP_TEXT, "hé"),
        (OP_BINARY, b"\x00" * 300),
        (OP_PING, b"p"),
        (OP_TEXT, "abc"),
        (OP_BINARY, b"\x01" * 70_000),
    ]
    assert reader.feed(stream) == expected
    reader = core.FrameReader(client=True)
    assert feed_all(reader, [stream[i : i + 7] for i in range(0, len(stream), 7)]) == expected


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY, OP_PING, OP_CLOSE])
def test_client_fails_on_a_masked_server_frame(core: ModuleType, opcode: int) -> None:
    reader = core.FrameReader(client=True)
    events = reader.feed(core.build_frame(OP_TEXT, b"ok") + client_frame(opcode, b"\x03\xe8"))
    assert norm(events) == [(OP_TEXT, "ok"), (EV_ERROR, 1002, ProtocolError)]
    assert "masked" in str(events[1][1])
    closing = opcode != OP_CLOSE
    assert reader.state == (core.ST_CLOSING if closing else core.ST_CLOSED)
    assert reader.close_received is not closing
    fail = reader.data_to_send()
    assert unmask_client_frame(fail) == (0x88, b"\x03\xeaProtocol error")
    if closing:
        assert reader.feed(core.build_close(1002)) == [(OP_CLOSE, (1002, ""))]
        assert reader.state == core.ST_CLOSED
        assert reader.data_to_send() == b""


def test_client_frames_are_read_by_a_server_reader(core: ModuleType) -> None:
    client = core.FrameReader(client=True)
    frame = client.send_close(4000, "bye ✓")
    assert unmask_client_frame(frame) == (0x88, b"\x0f\xa0bye \xe2\x9c\x93")
    assert client.state == core.ST_CLOSING
    server = core.FrameReader()
    assert server.feed(frame) == [(OP_CLOSE, (4000, "bye ✓"))]
    echo = server.data_to_send()
    assert echo == b"\x88\x02\x0f\xa0"
    assert client.feed(echo) == [(OP_CLOSE, (4000, ""))]
    assert_handshake(client, core.ST_CLOSED, sent=True, received=True, code=4000)
    assert client.data_to_send() == b""


@pytest.mark.parametrize(
    ("payload", "echo"), [(b"\x03\xe9gone", b"\x03\xe9"), (b"", b"")], ids=["1001", "empty"]
)
def test_client_echo_is_masked(core: ModuleType, payload: bytes, echo: bytes) -> None:
    reader = core.FrameReader(client=True)
    events = reader.feed(core.build_frame(OP_CLOSE, payload))
    assert events == [(OP_CLOSE, (1001, "gone") if payload else (1005, ""))]
    assert reader.state == core.ST_CLOSED
    assert unmask_client_frame(reader.data_to_send()) == (0x88, echo)


def test_client_close_1005_is_an_empty_masked_frame(core: ModuleType) -> None:
    frame = core.FrameReader(client=True).send_close(1005)
    assert len(frame) == 6 and frame[:2] == b"\x88\x80"


def test_client_keys_are_fresh(core: ModuleType) -> None:
    keys = {core.FrameReader(client=True).send_close()[2:6] for _ in range(8)}
    assert len(keys) > 1  # os.urandom: eight equal 32-bit keys do not happen


@pytest.mark.parametrize(
    ("limit", "bad", "fail"),
    [
        (0, bytes((0x81, 1, 0xFF)), b"\x03\xefInvalid payload data"),
        (4, bytes((0x82, 5)) + b"12345", b"\x03\xf1Message too big"),
        (0, bytes((0x83, 0)), b"\x03\xeaProtocol error"),
    ],
    ids=["1007", "1009", "1002"],
)
def test_client_fail_frames_are_masked(
    core: ModuleType, limit: int, bad: bytes, fail: bytes
) -> None:
    reader = core.FrameReader(max_message_size=limit, client=True)
    assert len(reader.feed(bad)) == 1
    assert reader.state == core.ST_CLOSING
    assert unmask_client_frame(reader.data_to_send()) == (0x88, fail)


# -- builders -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("opcode", "length", "rsv1", "expected"),
    [
        (OP_TEXT, 0, False, b"\x81\x00"),
        (OP_BINARY, 5, False, b"\x82\x05"),
        (OP_TEXT, 125, False, b"\x81\x7d"),
        (OP_BINARY, 126, False, b"\x82\x7e\x00\x7e"),
        (OP_BINARY, 65535, False, b"\x82\x7e\xff\xff"),
        (OP_BINARY, 65536, False, b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
        (OP_BINARY, 2**32, False, b"\x82\x7f\x00\x00\x00\x01\x00\x00\x00\x00"),
        (OP_TEXT, 5, True, b"\xc1\x05"),
        (OP_BINARY, 300, True, b"\xc2\x7e\x01\x2c"),
        (OP_TEXT, 70000, True, b"\xc1\x7f\x00\x00\x00\x00\x00\x01\x11\x70"),
        (OP_PING, 4, False, b"\x89\x04"),
        (OP_PONG, 0, False, b"\x8a\x00"),
        (OP_CLOSE, 2, False, b"\x88\x02"),
    ],
)
def test_frame_header(
    core: ModuleType, opcode: int, length: int, rsv1: bool, expected: bytes
) -> None:
    assert core.frame_header(opcode, length, rsv1) == expected
    if not rsv1:
        assert core.frame_header(opcode, length) == expected


@pytest.mark.parametrize(
    ("opcode", "payload", "expected_header"),
    [
        (OP_TEXT, b"hello", b"\x81\x05"),
        (OP_BINARY, b"", b"\x82\x00"),
        (OP_BINARY, b"\xaa" * 126, b"\x82\x7e\x00\x7e"),
        (OP_BINARY, b"\xbb" * 65536, b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
        (OP_PING, b"hi", b"\x89\x02"),
        (OP_PONG, b"", b"\x8a\x00"),
    ],
)
def test_build_frame(core: ModuleType, opcode: int, payload: bytes, expected_header: bytes) -> None:
    assert core.build_frame(opcode, payload) == expected_header + payload
    rsv_header = bytes((expected_header[0] | 0x40,)) + expected_header[1:]
    assert core.build_frame(opcode, payload, rsv1=True) == rsv_header + payload


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), b"\x88\x02\x03\xe8"),
        ((1000,), b"\x88\x02\x03\xe8"),
        ((1001, "bye"), b"\x88\x05\x03\xe9bye"),
        ((1011, "é"), b"\x88\x04\x03\xf3\xc3\xa9"),
        ((4999, ""), b"\x88\x02\x13\x87"),
        ((1005,), b"\x88\x00"),
        ((1005, "ignored"), b"\x88\x00"),
        ((1000, "r" * 123), b"\x88\x7d\x03\xe8" + b"r" * 123),
    ],
)
def test_build_close(core: ModuleType, args: tuple[Any, ...], expected: bytes) -> None:
    assert core.build_close(*args) == expected


@pytest.mark.parametrize("code", VALID_CODES)
def test_is_valid_close_code_true(core: ModuleType, code: int) -> None:
    assert core.is_valid_close_code(code) is True


@pytest.mark.parametrize("code", INVALID_CODES)
def test_is_valid_close_code_false(core: ModuleType, code: int) -> None:
    assert core.is_valid_close_code(code) is False


def test_is_valid_close_code_whole_range(core: ModuleType) -> None:
    valid = {c for c in range(70_000) if core.is_valid_close_code(c)}
    expected = {1000, 1001, 1002, 1003, *range(1007, 1015), *range(3000, 5000)}
    assert valid == expected


def test_cores_agree_on_builders() -> None:
    for module in CORES:
        for n in (0, 125, 126, 65535, 65536):
            assert module.frame_header(OP_BINARY, n) == _core.frame_header(OP_BINARY, n)
        assert module.build_close(1000, "x") == _core.build_close(1000, "x")


# -- interoperability with websockets -------------------------------------------------------------

# A message: (kind, payload, fragment sizes or None).  Kinds: "text", "binary", "ping", "pong".
Msg = tuple[str, bytes, list[int] | None]


def ws_client_stream(messages: list[Msg], close: tuple[int, str] | None) -> bytes:
    """The bytes a websockets client sends (masked) for ``messages``, then an optional close."""
    client = Protocol(Side.CLIENT, state=State.OPEN, max_size=None)
    for kind, payload, fragments in messages:
        if kind in ("ping", "pong"):
            (client.send_ping if kind == "ping" else client.send_pong)(payload)
            continue
        send = client.send_text if kind == "text" else client.send_binary
        if not fragments:
            send(payload)
            continue
        pos = 0
        for k, size in enumerate(fragments):
            part = payload[pos : pos + size]
            pos += size
            last = k == len(fragments) - 1
            if k == 0:
                send(part, fin=last)
            else:
                client.send_continuation(part, fin=last)
            if not last and k % 2 == 0:
                client.send_ping(b"between %d" % k)
        assert pos == len(payload)
    if close == (1005, ""):
        client.send_close()
    elif close is not None:
        client.send_close(*close)
    return b"".join(client.data_to_send())


def ws_events(side: Side, data: bytes) -> list[tuple[int, Any]]:
    """What a websockets endpoint on ``side`` receives from ``data``, as harpy events."""
    proto = Protocol(side, state=State.OPEN, max_size=None)
    proto.receive_data(data)
    assert proto.parser_exc is None, proto.parser_exc
    out: list[tuple[int, Any]] = []
    parts: list[bytes] = []
    kind = -1
    for frame in proto.events_received():
        data_bytes = bytes(frame.data)
        if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
            kind = OP_TEXT if frame.opcode is Opcode.TEXT else OP_BINARY
            parts = [data_bytes]
        elif frame.opcode is Opcode.CONT:
            parts.append(data_bytes)
        elif frame.opcode is Opcode.CLOSE:
            close = Close.parse(data_bytes)
            out.append((OP_CLOSE, (int(close.code), close.reason)))
            continue
        else:
            out.append((OP_PING if frame.opcode is Opcode.PING else OP_PONG, data_bytes))
            continue
        if frame.fin:
            whole = b"".join(parts)
            out.append((kind, whole.decode("utf-8") if kind == OP_TEXT else whole))
    return out


def deterministic_messages() -> list[Msg]:
    emoji = "😀€é".encode()
    return [
        ("text", b"", None),
        ("text", b"hello", None),
        ("text", "héllo wörld € 😀".encode(), None),
        ("binary", b"", None),
        ("binary", b"\x00\xff" * 100, None),
        ("binary", b"a" * 125, None),
        ("binary", b"b" * 126, None),
        ("text", b"c" * 65535, None),
        ("binary", b"d" * 65536, None),
        ("binary", bytes(range(256)) * 300, None),
        ("text", emoji * 10, [1, 2, 3, 4, len(emoji) * 10 - 10]),
        ("text", emoji, [len(emoji), 0]),
        ("text", b"", [0, 0, 0]),
        ("binary", b"fragmented binary", [5, 0, 7, 5]),
        ("binary", b"x" * 70_000, [65536, 4464]),
        ("ping", b"", None),
        ("ping", b"p" * 125, None),
        ("pong", b"abc", None),
        ("pong", b"", None),
    ]


def random_messages(seed: int, count: int) -> list[Msg]:
    rng = random.Random(seed)
    alphabet = "abcdefghij XYZ é ß € 😀 中文 \n\t"
    messages: list[Msg] = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.1:
            kind = rng.choice(["ping", "pong"])
            payload = rng.randbytes(rng.randint(0, 125))
            messages.append((kind, payload, None))
            continue
        size = rng.choice([rng.randint(0, 130), rng.randint(0, 70_000)])
        if roll < 0.55:
            kind = "text"
            payload = "".join(rng.choices(alphabet, k=size // 2)).encode()
        else:
            kind = "binary"
            payload = rng.randbytes(size)
        fragments: list[int] | None = None
        if rng.random() < 0.4:
            cuts = sorted(rng.randint(0, len(payload)) for _ in range(rng.randint(1, 6)))
            bounds = [0, *cuts, len(payload)]
            fragments = [b - a for a, b in itertools.pairwise(bounds)]
        messages.append((kind, payload, fragments))
    return messages


def random_chunks(data: bytes, rng: random.Random) -> list[bytes]:
    chunks = []
    pos = 0
    while pos < len(data):
        step = rng.choice([1, 2, 7, 100, 4096, 65536, 200_000])
        chunks.append(data[pos : pos + step])
        pos += step
    return chunks


CLOSES = [(1000, ""), (1001, "going away ✓"), (4000, "app"), (1005, "")]


@pytest.mark.parametrize("close", CLOSES)
def test_websockets_client_to_harpy_deterministic(core: ModuleType, close: tuple[int, str]) -> None:
    stream = ws_client_stream(deterministic_messages(), close)
    expected = ws_events(Side.SERVER, stream)
    assert expected[-1] == (OP_CLOSE, close)
    assert core.FrameReader(max_message_size=0).feed(stream) == expected
    reader = core.FrameReader(max_message_size=0)
    assert feed_all(reader, random_chunks(stream, random.Random(5))) == expected


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_websockets_client_to_harpy_random(core: ModuleType, seed: int) -> None:
    messages = random_messages(seed, 50)
    stream = ws_client_stream(messages, (1000, "done"))
    expected = ws_events(Side.SERVER, stream)
    assert len(expected) >= len(messages) + 1
    assert core.FrameReader(max_message_size=0).feed(stream) == expected
    reader = core.FrameReader(max_message_size=0)
    assert feed_all(reader, random_chunks(stream, random.Random(seed))) == expected


def harpy_server_stream(core: ModuleType, messages: list[Msg]) -> bytes:
    out = b""
    for kind, payload, _fragments in messages:
        opcode = {"text": OP_TEXT, "binary": OP_BINARY, "ping": OP_PING, "pong": OP_PONG}[kind]
        out += core.build_frame(opcode, payload)
    return out


def expected_events(messages: list[Msg]) -> list[tuple[int, Any]]:
    ops = {"text": OP_TEXT, "binary": OP_BINARY, "ping": OP_PING, "pong": OP_PONG}
    return [
        (ops[kind], payload.decode() if kind == "text" else payload)
        for kind, payload, _fragments in messages
    ]


@pytest.mark.parametrize("close", CLOSES)
def test_harpy_frames_to_websockets_client_deterministic(
    core: ModuleType, close: tuple[int, str]
) -> None:
    messages = deterministic_messages()
    stream = harpy_server_stream(core, messages) + core.build_close(*close)
    assert ws_events(Side.CLIENT, stream) == [*expected_events(messages), (OP_CLOSE, close)]


@pytest.mark.parametrize("seed", [11])
def test_harpy_frames_to_websockets_client_random(core: ModuleType, seed: int) -> None:
    messages = random_messages(seed, 50)
    stream = harpy_server_stream(core, messages) + core.build_close(1000, "done")
    expected = [*expected_events(messages), (OP_CLOSE, (1000, "done"))]
    assert ws_events(Side.CLIENT, stream) == expected

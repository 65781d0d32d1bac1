"""permessage-deflate (RFC 7692): options, negotiation, codec, and interop with ``websockets``."""

from __future__ import annotations

import random
import threading
import time
import tracemalloc
import zlib

import pytest
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    ServerPerMessageDeflateFactory,
)
from websockets.extensions.permessage_deflate import PerMessageDeflate as WsDeflate
from websockets.frames import Frame, Opcode
from websockets.headers import build_extension, parse_extension

from harpy.exceptions import ConfigurationError, PayloadTooBig, ProtocolError
from harpy.protocol.deflate import (
    DeflateOptions,
    PerMessageDeflate,
    client_codec,
    compress_shared,
    negotiate,
)
from tests.timing import scaled

TAIL = b"\x00\x00\xff\xff"
_rng = random.Random(7692)
TEXT = (
    b'{"type":"chat","room":"lobby","user":"alice","text":"the quick brown fox jumps over '
    b'the lazy dog"}'
)
NOISE = _rng.randbytes(5000)
MESSAGES = [
    b"",
    b"Hello",
    TEXT,
    TEXT * 40,
    NOISE,
    TEXT * 40,  # again: with context takeover it may refer to the earlier copy
    NOISE[:1000] + b"\x00" * 100_000 + NOISE[1000:],
    b"x",
]


def inflate(data: bytes, bits: int = 15) -> bytes:
    """Read one server message the way a client with a fresh inflater does (RFC 7692 7.2.2)."""
    return zlib.decompressobj(-bits).decompress(data + TAIL)


def accept(header: str | list[str], options: DeflateOptions | None = None) -> PerMessageDeflate:
    result = negotiate(header, options or DeflateOptions())
    assert result is not None
    return result[1]


# --- options ----------------------------------------------------------------------------------


def test_from_value_off() -> None:
    assert DeflateOptions.from_value(None) is None
    assert DeflateOptions.from_value(False) is None


def test_from_value_true_gives_defaults() -> None:
    options = DeflateOptions.from_value(True)
    assert options == DeflateOptions()
    assert options is not None
    assert options.server_no_context_takeover is True
    assert options.client_no_context_takeover is False
    assert options.server_max_window_bits == 15
    assert options.client_max_window_bits is None
    assert (options.threshold, options.level, options.memory_level) == (0, 6, 8)


def test_from_value_instance_and_mapping() -> None:
    options = DeflateOptions(threshold=128)
    assert DeflateOptions.from_value(options) is options
    assert DeflateOptions.from_value({"threshold": 128, "client_max_window_bits": 10}) == (
        DeflateOptions(threshold=128, client_max_window_bits=10)
    )
    assert DeflateOptions.from_value({}) == DeflateOptions()


def test_from_value_unknown_key() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown compression option\(s\) 'treshold'"):
        DeflateOptions.from_value({"treshold": 10})


@pytest.mark.parametrize("value", [1, "yes", [("level", 1)], 1.5])
def test_from_value_bad_type(value: object) -> None:
    with pytest.raises(ConfigurationError, match="compression must be"):
        DeflateOptions.from_value(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("threshold", -1, "threshold must be at least 0"),
        ("threshold", 1.5, "threshold must be an int"),
        ("level", 10, "level must be between -1 and 9"),
        ("level", -2, "level must be between -1 and 9"),
        ("level", True, "level must be an int"),
        ("memory_level", 0, "memory_level must be between 1 and 9"),
        ("memory_level", 10, "memory_level must be between 1 and 9"),
        ("server_no_context_takeover", 1, "server_no_context_takeover must be a bool"),
        ("client_no_context_takeover", "no", "client_no_context_takeover must be a bool"),
        ("server_max_window_bits", 8, "server_max_window_bits must be between 9 and 15: zlib"),
        ("server_max_window_bits", 16, "server_max_window_bits must be between 9 and 15"),
        ("server_max_window_bits", None, "server_max_window_bits must be an int"),
        ("client_max_window_bits", 8, "client_max_window_bits must be between 9 and 15: zlib"),
        ("client_max_window_bits", 7, "client_max_window_bits must be between 9 and 15"),
        ("client_max_window_bits", "12", "client_max_window_bits must be an int"),
    ],
)
def test_bad_option_values(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        DeflateOptions.from_value({key: value})
    with pytest.raises(ConfigurationError, match=message):
        DeflateOptions(**{key: value})  # type: ignore[arg-type]


def test_configuration_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        DeflateOptions(level=42)


# --- negotiation ------------------------------------------------------------------------------

# (request header, options, response, (shareable, window_bits, client_window_bits, client_nct))
ACCEPTED = [
    (
        "permessage-deflate",
        DeflateOptions(),
        "permessage-deflate; server_no_context_takeover",
        (True, 15, 15, False),
    ),
    (
        "permessage-deflate",
        DeflateOptions(server_no_context_takeover=False),
        "permessage-deflate",
        (False, 15, 15, False),
    ),
    # What browsers send.
    (
        "permessage-deflate; client_max_window_bits",
        DeflateOptions(),
        "permessage-deflate; server_no_context_takeover",
        (True, 15, 15, False),
    ),
    (
        "permessage-deflate; client_max_window_bits",
        DeflateOptions(client_max_window_bits=10),
        "permessage-deflate; server_no_context_takeover; client_max_window_bits=10",
        (True, 15, 10, False),
    ),
    (
        "permessage-deflate; client_max_window_bits=12",
        DeflateOptions(client_max_window_bits=10),
        "permessage-deflate; server_no_context_takeover; client_max_window_bits=10",
        (True, 15, 10, False),
    ),
    # An offered value binds the client without an echo; never answer above it.
    (
        "permessage-deflate; client_max_window_bits=9",
        DeflateOptions(client_max_window_bits=10),
        "permessage-deflate; server_no_context_takeover",
        (True, 15, 9, False),
    ),
    (
        "permessage-deflate; client_max_window_bits=8",
        DeflateOptions(),
        "permessage-deflate; server_no_context_takeover",
        (True, 15, 8, False),
    ),
    (
        "permessage-deflate; client_max_window_bits=12",
        DeflateOptions(),
        "permessage-deflate; server_no_context_takeover",
        (True, 15, 12, False),
    ),
    # The server cannot refuse these.
    (
        "permessage-deflate; server_no_context_takeover",
        DeflateOptions(server_no_context_takeover=False),
        "permessage-deflate; server_no_context_takeover",
        (True, 15, 15, False),
    ),
    (
        "permessage-deflate; server_max_window_bits=9; client_no_context_takeover",
        DeflateOptions(),
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
        "server_max_window_bits=9",
        (True, 9, 15, True),
    ),
    (
        "permessage-deflate; server_max_window_bits=12",
        DeflateOptions(server_max_window_bits=10),
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=10",
        (True, 10, 15, False),
    ),
    (
        "permessage-deflate; server_max_window_bits=15",
        DeflateOptions(server_no_context_takeover=False),
        "permessage-deflate; server_max_window_bits=15",
        (False, 15, 15, False),
    ),
    # Not offered: announcing a smaller window is allowed (RFC 7692 7.1.2.1).
    (
        "permessage-deflate",
        DeflateOptions(server_max_window_bits=11),
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=11",
        (True, 11, 15, False),
    ),
    (
        "permessage-deflate",
        DeflateOptions(client_no_context_takeover=True),
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        (True, 15, 15, True),
    ),
    # Autobahn testsuite 12.x and 13.1.x (its default offer).
    (
        "permessage-deflate; client_no_context_takeover; client_max_window_bits",
        DeflateOptions(server_no_context_takeover=False),
        "permessage-deflate; client_no_context_takeover",
        (False, 15, 15, True),
    ),
    # Autobahn 13.2.x, 13.4.x, 13.6.x.
    (
        "permessage-deflate; client_no_context_takeover; client_max_window_bits; "
        "server_no_context_takeover",
        DeflateOptions(server_no_context_takeover=False),
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        (True, 15, 15, True),
    ),
    (
        "permessage-deflate; client_no_context_takeover; client_max_window_bits; "
        "server_max_window_bits=15",
        DeflateOptions(server_no_context_takeover=False),
        "permessage-deflate; client_no_context_takeover; server_max_window_bits=15",
        (False, 15, 15, True),
    ),
    (
        "permessage-deflate; client_no_context_takeover; client_max_window_bits; "
        "server_no_context_takeover; server_max_window_bits=15",
        DeflateOptions(),
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
        "server_max_window_bits=15",
        (True, 15, 15, True),
    ),
    # Autobahn 13.7.x: the 8-bit offer is declined, the next one is taken.
    (
        "permessage-deflate; client_no_context_takeover; client_max_window_bits; "
        "server_no_context_takeover; server_max_window_bits=8, "
        "permessage-deflate; client_no_context_takeover; client_max_window_bits; "
        "server_no_context_takeover, "
        "permessage-deflate; client_no_context_takeover; client_max_window_bits",
        DeflateOptions(server_no_context_takeover=False),
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        (True, 15, 15, True),
    ),
    # Syntax: quoted values, whitespace, case, empty elements, other extensions.
    (
        'permessage-deflate; server_max_window_bits="10"',
        DeflateOptions(),
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=10",
        (True, 10, 15, False),
    ),
    (
        "  Permessage-Deflate ;  Server_Max_Window_Bits = 10 ;client_max_window_bits ",
        DeflateOptions(),
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=10",
        (True, 10, 15, False),
    ),
    (
        ", ,permessage-deflate,",
        DeflateOptions(),
        "permessage-deflate; server_no_context_takeover",
        (True, 15, 15, False),
    ),
    (
        'x-webkit-deflate-frame, foo; bar="a, b; c=d", permessage-deflate; '
        "server_max_window_bits=12",
        DeflateOptions(),
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=12",
        (True, 12, 15, False),
    ),
    (
        "permessage-deflate; foo, permessage-deflate; client_no_context_takeover",
        DeflateOptions(),
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        (True, 15, 15, True),
    ),
]


@pytest.mark.parametrize(("header", "options", "response", "state"), ACCEPTED)
def test_negotiate_accepts(
    header: str, options: DeflateOptions, response: str, state: tuple[bool, int, int, bool]
) -> None:
    result = negotiate([header], options)
    assert result is not None
    got, codec = result
    assert got == response
    assert (
        codec.shareable,
        codec.window_bits,
        codec.client_window_bits,
        codec.client_no_context_takeover,
    ) == state


DECLINED = [
    "",
    "x-webkit-deflate-frame",
    "permessage-deflate-x",
    # Autobahn 13.3.x and 13.5.x: zlib cannot compress with an 8-bit window.
    "permessage-deflate; client_no_context_takeover; client_max_window_bits; "
    "server_max_window_bits=8",
    "permessage-deflate; server_no_context_takeover; server_max_window_bits=8",
    # RFC 7692 5.1: invalid values, unknown or repeated parameters.
    "permessage-deflate; server_max_window_bits",
    "permessage-deflate; server_max_window_bits=16",
    "permessage-deflate; server_max_window_bits=7",
    "permessage-deflate; server_max_window_bits=010",
    "permessage-deflate; server_max_window_bits=abc",
    'permessage-deflate; server_max_window_bits="1 0"',
    "permessage-deflate; client_max_window_bits=16",
    "permessage-deflate; client_max_window_bits=abc",
    "permessage-deflate; client_max_window_bits=08",
    "permessage-deflate; client_max_window_bits=",
    "permessage-deflate; server_no_context_takeover=1",
    'permessage-deflate; client_no_context_takeover=""',
    "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
    "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
    "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
    "permessage-deflate; mux",
    # Broken syntax.
    "permessage-deflate;",
    "permessage-deflate; =1",
    "permessage-deflate; server_max_window_bits=1=0",
    'permessage-deflate; server_max_window_bits="10',
    "permessage deflate",
]


@pytest.mark.parametrize("header", DECLINED)
def test_negotiate_declines(header: str) -> None:
    assert negotiate([header], DeflateOptions()) is None
    assert negotiate([header], DeflateOptions(server_no_context_takeover=False)) is None


def test_negotiate_header_lines() -> None:
    assert negotiate([], DeflateOptions()) is None
    lines = ["x-webkit-deflate-frame", "permessage-deflate; server_max_window_bits=8", ""]
    assert negotiate(lines, DeflateOptions()) is None
    lines.append("foo, permessage-deflate; server_max_window_bits=11")
    result = negotiate(lines, DeflateOptions())
    assert result is not None
    assert result[0] == "permessage-deflate; server_no_context_takeover; server_max_window_bits=11"
    # One string is one header line, not a sequence of characters.
    assert negotiate("permessage-deflate", DeflateOptions()) is not None


def test_negotiate_passes_options_to_the_codec() -> None:
    codec = accept("permessage-deflate", DeflateOptions(threshold=256, level=1, memory_level=5))
    assert (codec.threshold, codec.level, codec.memory_level) == (256, 1, 5)
    assert "server_no_context_takeover=True" in repr(codec)


def test_codec_rejects_an_8_bit_server_window() -> None:
    with pytest.raises(ConfigurationError, match="8-bit"):
        PerMessageDeflate(server_max_window_bits=8)


# --- interoperability with the websockets client ----------------------------------------------

CLIENTS = [
    {},
    {"client_max_window_bits": None},
    {"server_no_context_takeover": True},
    {"client_no_context_takeover": True},
    {"server_max_window_bits": 10},
    {"client_max_window_bits": 9},
    {
        "server_max_window_bits": 12,
        "client_max_window_bits": 10,
        "client_no_context_takeover": True,
    },
    {"server_max_window_bits": 9, "server_no_context_takeover": True},
]
SERVERS = [
    DeflateOptions(),
    DeflateOptions(server_no_context_takeover=False),
    DeflateOptions(server_no_context_takeover=False, server_max_window_bits=12),
    DeflateOptions(server_no_context_takeover=False, client_max_window_bits=11),
    DeflateOptions(client_no_context_takeover=True, client_max_window_bits=9, level=9),
]


def _handshake(
    client: dict[str, object], options: DeflateOptions
) -> tuple[WsDeflate, PerMessageDeflate]:
    factory = ClientPerMessageDeflateFactory(**client)  # type: ignore[arg-type]
    offer = build_extension([(factory.name, list(factory.get_request_params()))])
    result = negotiate([offer], options)
    assert result is not None, offer
    response, codec = result
    [(name, params)] = parse_extension(response)
    assert name == "permessage-deflate"
    # Raises NegotiationError if the response breaks RFC 7692 7.1 from the client's view.
    return factory.process_response_params(params, []), codec


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("options", SERVERS)
def test_websockets_client_round_trip(client: dict[str, object], options: DeflateOptions) -> None:
    ws, codec = _handshake(client, options)
    for message in MESSAGES:
        frame = ws.encode(Frame(Opcode.BINARY, message))
        assert frame.rsv1
        assert codec.decompress(bytes(frame.data), 1 << 20) == message
        reply = codec.compress(message)
        decoded = ws.decode(Frame(Opcode.BINARY, reply, rsv1=True), max_size=1 << 20)
        assert bytes(decoded.data) == message


def test_websockets_fragmented_message() -> None:
    ws, codec = _handshake({}, DeflateOptions())
    parts = [TEXT * 10, NOISE, TEXT * 10]
    frames = [ws.encode(Frame(Opcode.TEXT, parts[0], fin=False))]
    frames.append(ws.encode(Frame(Opcode.CONT, parts[1], fin=False)))
    frames.append(ws.encode(Frame(Opcode.CONT, parts[2], fin=True)))
    assert [f.rsv1 for f in frames] == [True, False, False]
    payload = b"".join(bytes(f.data) for f in frames)
    assert codec.decompress(payload, 1 << 20) == b"".join(parts)


def test_websockets_client_offering_8_bits_is_declined() -> None:
    factory = ClientPerMessageDeflateFactory(server_max_window_bits=8)
    offer = build_extension([(factory.name, list(factory.get_request_params()))])
    assert negotiate([offer], DeflateOptions()) is None


# --- the client's codec -----------------------------------------------------------------------

CLIENT_OFFER = "permessage-deflate; client_max_window_bits"


@pytest.mark.parametrize(
    ("response", "state"),
    [
        ("permessage-deflate", (False, False, 15, 15)),
        ("permessage-deflate; server_no_context_takeover", (True, False, 15, 15)),
        ("permessage-deflate;client_no_context_takeover", (False, True, 15, 15)),
        ("PerMessage-Deflate; server_max_window_bits=8", (False, False, 8, 15)),
        ('permessage-deflate; client_max_window_bits="10"', (False, False, 15, 10)),
        (
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
            "server_max_window_bits=12; client_max_window_bits=8",
            (True, True, 12, 8),
        ),
        (" permessage-deflate , ", (False, False, 15, 15)),
    ],
)
def test_client_codec_reads_the_response(response: str, state: tuple[bool, bool, int, int]) -> None:
    codec = client_codec(response)
    assert codec.client is True
    assert (
        codec.shareable,
        codec.client_no_context_takeover,
        codec.window_bits,
        codec.client_window_bits,
    ) == state
    assert repr(codec).endswith(", client=True)")


@pytest.mark.parametrize(
    "response",
    [
        "",
        "x-webkit-deflate-frame",
        "permessage-deflate, permessage-deflate",
        "permessage-deflate; x=1",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=09",
        "permessage-deflate; client_max_window_bits",
        "permessage-deflate; client_max_window_bits=x",
        "permessage-deflate; client_max_window_bits=15; server_max_window_bits=15; =",
    ],
)
def test_client_codec_refuses_a_bad_response(response: str) -> None:
    with pytest.raises(ProtocolError) as info:
        client_codec(response)
    assert info.value.code == 1010


def test_client_and_server_codecs_round_trip() -> None:
    for options in SERVERS:
        response, server = negotiate(CLIENT_OFFER, options) or ("", None)
        assert server is not None
        client = client_codec(response)
        for message in MESSAGES:
            assert server.decompress(client.compress(message), 1 << 20) == message
            assert client.decompress(server.compress(message), 1 << 20) == message


def test_client_codec_context_takeover_is_the_clients() -> None:
    client = client_codec("permessage-deflate; server_no_context_takeover")
    first, second = client.compress(TEXT * 3), client.compress(TEXT * 3)
    assert len(second) < len(first)  # the client keeps its history...
    with pytest.raises(zlib.error):
        inflate(second)
    client = client_codec("permessage-deflate; client_no_context_takeover")
    outputs = [client.compress(message) for message in MESSAGES]
    for message, output in zip(MESSAGES, outputs, strict=True):
        assert inflate(output) == message  # ...unless told not to


def test_client_codec_reads_server_context_takeover() -> None:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    payloads = [
        (compressor.compress(TEXT * 3) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4] for _ in range(3)
    ]
    client = client_codec("permessage-deflate; client_no_context_takeover")
    for payload in payloads:
        assert client.decompress(payload, 1 << 20) == TEXT * 3
    client = client_codec("permessage-deflate; server_no_context_takeover")
    assert client.decompress(payloads[0], 1 << 20) == TEXT * 3
    with pytest.raises(ProtocolError) as info:
        client.decompress(payloads[1], 1 << 20)
    assert info.value.code == 1007


@pytest.mark.parametrize("bits", range(8, 16))
def test_client_codec_compresses_within_client_max_window_bits(bits: int) -> None:
    # A message repeating a block from 600 bytes back: with 9 bits (512) the copy is out of
    # reach, so the second half is written out; the server's inflater reads it either way.
    block = _rng.randbytes(600)
    client = client_codec(f"permessage-deflate; client_max_window_bits={bits}")
    output = client.compress(block + block)
    assert (len(output) > 1100) is (bits <= 9)  # 8 is compressed with 9: zlib has no 8
    assert inflate(output, max(bits, 9)) == block + block
    server = accept(f"{CLIENT_OFFER}={bits}") if bits > 8 else None
    if server is not None:
        assert server.decompress(output, 1 << 20) == block + block


def test_client_codec_limits_and_errors() -> None:
    client = client_codec("permessage-deflate")
    bomb = PerMessageDeflate().compress(b"\x00" * 100_000)
    with pytest.raises(PayloadTooBig):
        client.decompress(bomb, 1000)
    with pytest.raises(ProtocolError) as info:
        client.decompress(b"\xff\xff", 1000)
    assert info.value.code == 1007
    assert client.decompress(bomb, 0) == b"\x00" * 100_000


@pytest.mark.parametrize("server", CLIENTS)  # the same parameters, on websockets' server side
def test_websockets_server_round_trip(server: dict[str, object]) -> None:
    factory = ServerPerMessageDeflateFactory(**server)  # type: ignore[arg-type]
    [(_name, offered)] = parse_extension(CLIENT_OFFER)
    params, ws = factory.process_request_params(offered, [])
    client = client_codec(build_extension([(factory.name, params)]))
    for message in MESSAGES:
        frame = ws.encode(Frame(Opcode.BINARY, message))
        assert client.decompress(bytes(frame.data), 1 << 20) == message
        decoded = ws.decode(Frame(Opcode.BINARY, client.compress(message), rsv1=True))
        assert bytes(decoded.data) == message


# --- RFC 7692 7.2.3 examples ------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        "f2 48 cd c9 c9 07 00",  # 7.2.3.1: one compressed block
        "00 05 00 fa ff 48 65 6c 6c 6f 00",  # 7.2.3.3: a stored block
        "f3 48 cd c9 c9 07 00 00",  # 7.2.3.4: BFINAL set
        "f2 48 05 00 00 00 ff ff ca c9 c9 07 00",  # 7.2.3.5: two blocks
    ],
)
def test_rfc_examples(payload: str) -> None:
    codec = accept("permessage-deflate")
    assert codec.decompress(bytes.fromhex(payload), 100) == b"Hello"
    # The connection goes on after each of them.
    assert codec.decompress(bytes.fromhex("f2 48 cd c9 c9 07 00"), 100) == b"Hello"


def test_rfc_empty_message() -> None:
    codec = accept("permessage-deflate")
    assert codec.compress(b"") == b"\x00"  # 7.2.3.6
    assert codec.decompress(b"\x00", 100) == b""
    assert codec.decompress(b"\x02\x00", 100) == b""  # zlib's own empty output
    assert codec.decompress(b"", 100) == b""  # a sync flush of nothing, stripped
    assert codec.decompress(bytes.fromhex("f2 48 cd c9 c9 07 00"), 100) == b"Hello"
    assert compress_shared(b"") == b"\x00"


def test_rfc_compress_output() -> None:
    codec = accept("permessage-deflate", DeflateOptions(server_no_context_takeover=False))
    assert codec.compress(b"Hello") == bytes.fromhex("f2 48 cd c9 c9 07 00")  # 7.2.3.1
    assert codec.compress(b"Hello") == bytes.fromhex("f2 00 11 00 00")  # 7.2.3.2


def test_rfc_shared_window_needs_context_takeover() -> None:
    first, second = bytes.fromhex("f2 48 cd c9 c9 07 00"), bytes.fromhex("f2 00 11 00 00")
    codec = accept("permessage-deflate")
    assert codec.decompress(first, 100) == b"Hello"
    assert codec.decompress(second, 100) == b"Hello"  # 7.2.3.2: refers to the first
    # With client_no_context_takeover the inflater starts afresh for every message.
    codec = accept("permessage-deflate; client_no_context_takeover")
    assert codec.decompress(first, 100) == b"Hello"
    with pytest.raises(ProtocolError) as info:
        codec.decompress(second, 100)
    assert info.value.code == 1007


def test_bfinal_ends_the_stream_with_context_takeover() -> None:
    codec = accept("permessage-deflate")
    assert codec.decompress(bytes.fromhex("f3 48 cd c9 c9 07 00 00"), 100) == b"Hello"
    assert codec.decompress(bytes.fromhex("f3 48 cd c9 c9 07 00"), 100) == b"Hello"
    assert codec.decompress(bytes.fromhex("f2 48 cd c9 c9 07 00"), 100) == b"Hello"


# --- decompression limits and errors ----------------------------------------------------------


def _deflate_zeros(size: int, chunk: int = 1 << 20) -> bytes:
    """Compress ``size`` zero bytes without holding them in memory."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = bytes(chunk)
    parts = [compressor.compress(block) for _ in range(size // chunk)]
    parts.append(compressor.compress(bytes(size % chunk)))
    parts.append(compressor.flush(zlib.Z_SYNC_FLUSH))
    return b"".join(parts)[:-4]


@pytest.mark.parametrize(
    ("size", "max_size"),
    [(100 << 20, 1 << 20), (1 << 20, 64 << 10)],  # two-call path and joined path
)
def test_decompression_bomb(size: int, max_size: int) -> None:
    bomb = _deflate_zeros(size)
    assert len(bomb) < size // 500
    codec = accept("permessage-deflate")
    tracemalloc.start()
    try:
        start = time.perf_counter()
        with pytest.raises(PayloadTooBig) as info:
            codec.decompress(bomb, max_size)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.code == 1009
    assert str(max_size) in str(info.value)
    assert peak < 3 * max_size + (1 << 20)
    assert elapsed < scaled(1.0)


@pytest.mark.parametrize(
    "message",
    [
        b"a" * 1000,
        bytes(300_000),  # long matches: the limit falls inside one
        NOISE + bytes(100_000) + NOISE,  # large compressed payload: two zlib calls
    ],
)
@pytest.mark.parametrize(
    "options", [DeflateOptions(), DeflateOptions(client_no_context_takeover=True)]
)
def test_max_size_boundary(message: bytes, options: DeflateOptions) -> None:
    codec = accept("permessage-deflate", options)
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    payload = (compressor.compress(message) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
    assert codec.decompress(payload, len(message)) == message
    assert codec.decompress(payload, 0) == message  # 0: no bound
    with pytest.raises(PayloadTooBig):
        accept("permessage-deflate", options).decompress(payload, len(message) - 1)


def test_decompress_accepts_buffers() -> None:
    codec = accept("permessage-deflate")
    payload = compress_shared(TEXT)
    assert codec.decompress(bytearray(payload), 1000) == TEXT
    assert codec.decompress(memoryview(payload), 1000) == TEXT
    big = compress_shared(NOISE)
    assert codec.decompress(memoryview(big), 10_000) == NOISE


@pytest.mark.parametrize(
    "payload",
    [
        "ff ff ff ff",
        "07",  # BTYPE 11 is reserved
        "00 05 00 00 00 48 65 6c 6c 6f",  # stored block: LEN and NLEN disagree
        "f2 00 11 00 00",  # refers to data before the first message
    ],
)
def test_corrupt_data_is_1007(payload: str) -> None:
    codec = accept("permessage-deflate")
    with pytest.raises(ProtocolError) as info:
        codec.decompress(bytes.fromhex(payload), 1 << 20)
    assert type(info.value) is ProtocolError
    assert info.value.code == 1007
    assert isinstance(info.value.__cause__, zlib.error)


def test_corrupt_large_payload_is_1007() -> None:
    payload = bytearray(compress_shared(NOISE * 2))
    payload[len(payload) // 2 :] = b"\xff" * (len(payload) - len(payload) // 2)
    with pytest.raises(ProtocolError) as info:
        accept("permessage-deflate").decompress(bytes(payload), 1 << 20)
    assert info.value.code == 1007


def test_inflater_window_follows_client_max_window_bits() -> None:
    # The second message copies the first from 1000 bytes back: a 9-bit window (512 bytes)
    # no longer holds it, a 10-bit one does.
    block = _rng.randbytes(1000)
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    first, second = (
        (compressor.compress(block) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4] for _ in range(2)
    )
    assert len(second) < 100
    codec = accept("permessage-deflate; client_max_window_bits=10")
    assert codec.decompress(first, 1 << 20) == block
    assert codec.decompress(second, 1 << 20) == block
    codec = accept("permessage-deflate; client_max_window_bits=9")
    assert codec.decompress(first, 1 << 20) == block
    with pytest.raises(ProtocolError) as info:
        codec.decompress(second, 1 << 20)
    assert info.value.code == 1007


def test_client_window_8_is_read_with_9_bits() -> None:
    # zlib clients that agree to 8 bits compress with 9.
    block = _rng.randbytes(300)
    message = block + block
    compressor = zlib.compressobj(6, zlib.DEFLATED, -9)
    payload = (compressor.compress(message) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
    codec = accept("permessage-deflate; client_max_window_bits=8")
    assert codec.client_window_bits == 8
    assert codec.decompress(payload, 1 << 20) == message


# --- context takeover -------------------------------------------------------------------------


def test_server_context_takeover_shrinks_repeats() -> None:
    codec = accept("permessage-deflate", DeflateOptions(server_no_context_takeover=False))
    assert not codec.shareable
    first = codec.compress(TEXT * 3)
    second = codec.compress(TEXT * 3)
    assert len(second) < len(first)
    client = zlib.decompressobj(-15)
    assert client.decompress(first + TAIL) == TEXT * 3
    assert client.decompress(second + TAIL) == TEXT * 3
    with pytest.raises(zlib.error):
        inflate(second)  # needs the first message's history


def test_no_server_context_takeover_is_independent() -> None:
    codec = accept("permessage-deflate")
    assert codec.shareable
    outputs = [codec.compress(message) for message in MESSAGES]
    for message, output in zip(MESSAGES, outputs, strict=True):
        assert inflate(output) == message
    assert codec.compress(TEXT * 3) == codec.compress(TEXT * 3)


def test_client_context_takeover() -> None:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    payloads = [
        (compressor.compress(TEXT * 3) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4] for _ in range(3)
    ]
    assert len(payloads[1]) < len(payloads[0])
    codec = accept("permessage-deflate")
    for payload in payloads:
        assert codec.decompress(payload, 1 << 20) == TEXT * 3
    codec = accept("permessage-deflate", DeflateOptions(client_no_context_takeover=True))
    assert codec.decompress(payloads[0], 1 << 20) == TEXT * 3
    with pytest.raises(ProtocolError):
        codec.decompress(payloads[1], 1 << 20)


def test_client_no_context_takeover_messages() -> None:
    codec = accept("permessage-deflate; client_no_context_takeover")
    for message in MESSAGES:
        compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
        payload = (compressor.compress(message) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
        assert codec.decompress(payload, 1 << 20) == message


def test_decompress_recovers_a_fresh_state_after_an_error() -> None:
    codec = accept("permessage-deflate")
    with pytest.raises(ProtocolError):
        codec.decompress(b"\xff\xff", 100)
    assert codec.decompress(bytes.fromhex("f2 48 cd c9 c9 07 00"), 100) == b"Hello"


# --- shared compression -----------------------------------------------------------------------


@pytest.mark.parametrize("window_bits", range(9, 16))
def test_compress_shared_readable_with_any_larger_window(window_bits: int) -> None:
    message = TEXT * 30 + NOISE + TEXT * 30
    output = compress_shared(message, window_bits=window_bits)
    for bits in range(window_bits, 16):
        assert inflate(output, bits) == message
        codec = accept(f"permessage-deflate; client_max_window_bits={bits}")
        assert codec.decompress(output, 1 << 20) == message
        client = WsDeflate(True, False, bits, 15)
        decoded = client.decode(Frame(Opcode.BINARY, output, rsv1=True), max_size=1 << 20)
        assert bytes(decoded.data) == message


def test_compress_shared_matches_the_connection_codec() -> None:
    for bits in (9, 12, 15):
        codec = accept(f"permessage-deflate; server_max_window_bits={bits}")
        assert codec.window_bits == bits
        for message in MESSAGES:
            assert codec.compress(message) == compress_shared(message, window_bits=bits)


def test_compress_shared_outputs_are_independent() -> None:
    outputs = [compress_shared(message, level=level) for level in (1, 6, 9) for message in MESSAGES]
    expected = [message for _ in (1, 6, 9) for message in MESSAGES]
    for message, output in zip(expected, outputs, strict=True):
        assert inflate(output) == message
    # Same bytes as a compressor used for this message only.
    fresh = zlib.compressobj(6, zlib.DEFLATED, -15)
    assert (
        compress_shared(TEXT * 40)
        == (fresh.compress(TEXT * 40) + fresh.flush(zlib.Z_SYNC_FLUSH))[:-4]
    )


def test_compress_shared_from_threads() -> None:
    messages = [_rng.randbytes(2000) + bytes([i]) * 200_000 + TEXT * i for i in range(8)]
    results: dict[int, list[bytes]] = {}

    def work(i: int) -> None:
        results[i] = [compress_shared(messages[i]) for _ in range(20)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(scaled(60.0))  # a deadlock fails the test instead of hanging the suite
        assert not thread.is_alive()
    for i, outputs in results.items():
        assert len(set(outputs)) == 1
        assert inflate(outputs[0]) == messages[i]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window_bits": 8}, "window_bits must be between 9 and 15: zlib"),
        ({"window_bits": 16}, "window_bits must be between 9 and 15"),
        ({"level": 10}, "level must be between -1 and 9"),
        ({"memory_level": 0}, "memory_level must be between 1 and 9"),
    ],
)
def test_compress_shared_bad_arguments(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        compress_shared(b"data", **kwargs)

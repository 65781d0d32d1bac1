"""Property tests (Hypothesis) of everything that reads the peer's bytes.

The frame reader (server and client mode, with and without permessage-deflate, both cores), the
upgrade parser and the deflate negotiation and decompression.  Properties: only the documented
exceptions escape (none from the reader: its errors are events; HandshakeError from the
handshake; ProtocolError from decompression), the events are well-formed, feeding the bytes
split anywhere gives the events of feeding them whole, and valid frames round-trip.

``make test`` runs a small derandomized profile; ``make fuzz`` a long random one (see
tests/unit/conftest.py).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harpy.exceptions import HandshakeError, PayloadTooBig, ProtocolError
from harpy.protocol.deflate import DeflateOptions, PerMessageDeflate, client_codec, negotiate
from harpy.protocol.handshake import check_upgrade, parse_request
from tests.unit.test_protocol import CORES, client_frame, norm

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, EV_ERROR = 0, 1, 2, 8, 9, 10, -1
MAX_SIZE = 4096
KEYS = st.binary(min_size=4, max_size=4)


#: Both cores, as a parameter (a fixture would be shared by every example Hypothesis runs).
both_cores = pytest.mark.parametrize(
    "core", CORES, ids=[m.__name__.rpartition(".")[2] for m in CORES]
)


def codec_pair() -> tuple[PerMessageDeflate, PerMessageDeflate]:
    """A server's and a client's permessage-deflate codecs, negotiated as on the wire."""
    accepted = negotiate("permessage-deflate; client_max_window_bits", DeflateOptions())
    assert accepted is not None
    response, server = accepted
    return server, client_codec(response)


def reader(core: ModuleType, client: bool, deflate: bool) -> Any:
    inflater = None
    if deflate:
        server_codec, client_side = codec_pair()
        inflater = client_side if client else server_codec
    return core.FrameReader(max_message_size=MAX_SIZE, inflater=inflater, client=client)


def check_well_formed(events: list[tuple[int, Any]]) -> None:
    """Each event's value has its kind's type; at most one error, then only pongs and the peer's
    close; nothing after a close."""
    errors = 0
    for i, (kind, value) in enumerate(events):
        assert all(k != OP_CLOSE for k, _ in events[:i]), events
        if errors:  # failing, the reader still reports pongs and the peer's close
            assert kind in (OP_PONG, OP_CLOSE), events
        if kind == OP_TEXT:
            assert type(value) is str
        elif kind in (OP_BINARY, OP_PING, OP_PONG):
            assert type(value) is bytes
            assert kind == OP_BINARY or len(value) <= 125
        elif kind == OP_CLOSE:
            code, reason = value
            assert type(code) is int and type(reason) is str
            assert code == 1005 or 1000 <= code <= 4999
        else:
            assert kind == EV_ERROR, events
            assert isinstance(value, ProtocolError)
            assert value.code in (1002, 1007, 1009)
            assert isinstance(value, PayloadTooBig) is (value.code == 1009)
            errors += 1


def up_to_the_end(events: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The events up to the first error or close included: what follows an error depends on how
    the bytes were split (the stream is out of step from there, and one read is dropped)."""
    for i, event in enumerate(events):
        if event[0] in (EV_ERROR, OP_CLOSE):
            return events[: i + 1]
    return events


def feed_split(r: Any, data: bytes, cuts: list[int]) -> list[tuple[int, Any]]:
    events: list[tuple[int, Any]] = []
    start = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        events.extend(r.feed(data[start:cut]))
        start = cut
    return events


cuts = st.lists(st.integers(min_value=0, max_value=1 << 14), max_size=8)

#: A frame as a peer might send it: any flags, any opcode, short payloads; or raw garbage.
frames = st.one_of(
    st.builds(
        lambda op, fin, rsv, payload, key: client_frame(op, payload, fin=fin, rsv=rsv, key=key),
        st.sampled_from([0, 1, 2, 3, 8, 9, 10, 11]),
        st.booleans(),
        st.sampled_from([0, 0, 0, 0x40, 0x20, 0x10]),
        st.binary(max_size=140),
        KEYS,
    ),
    st.binary(min_size=1, max_size=16),
)


@both_cores
@pytest.mark.parametrize("deflate", [False, True], ids=["plain", "deflate"])
@pytest.mark.parametrize("client", [False, True], ids=["server", "client"])
@given(data=st.binary(max_size=512), split=cuts)
def test_any_bytes_give_well_formed_events(
    core: ModuleType, client: bool, deflate: bool, data: bytes, split: list[int]
) -> None:
    whole = reader(core, client, deflate).feed(data)
    check_well_formed(whole)
    pieces = feed_split(reader(core, client, deflate), data, [c % (len(data) + 1) for c in split])
    check_well_formed(pieces)
    assert up_to_the_end(norm(pieces)) == up_to_the_end(norm(whole))


@both_cores
@pytest.mark.parametrize("deflate", [False, True], ids=["plain", "deflate"])
@pytest.mark.parametrize("client", [False, True], ids=["server", "client"])
@given(parts=st.lists(frames, max_size=8), split=cuts)
def test_frame_shaped_input_split_anywhere(
    core: ModuleType, client: bool, deflate: bool, parts: list[bytes], split: list[int]
) -> None:
    data = b"".join(parts)
    if client:  # a server's frames are not masked: drop the mask bit and key where it is set
        data = b"".join(unmasked(p) for p in parts)
    whole = reader(core, client, deflate).feed(data)
    check_well_formed(whole)
    pieces = feed_split(reader(core, client, deflate), data, [c % (len(data) + 1) for c in split])
    check_well_formed(pieces)
    assert up_to_the_end(norm(pieces)) == up_to_the_end(norm(whole))
    one_by_one = feed_split(reader(core, client, deflate), data, list(range(len(data))))
    assert up_to_the_end(norm(one_by_one)) == up_to_the_end(norm(whole))


def unmasked(frame: bytes) -> bytes:
    """``frame`` without its masking (payload still XOR-ed: any bytes will do), if masked."""
    if len(frame) < 2 or not frame[1] & 0x80:
        return frame
    length = frame[1] & 0x7F
    head = 2 if length < 126 else 4 if length == 126 else 10
    return bytes((frame[0], frame[1] & 0x7F)) + frame[2:head] + frame[head + 4 :]


#: A valid message: (opcode, payload, fragment sizes), with pings in between.
messages = st.lists(
    st.one_of(
        st.tuples(st.just(OP_TEXT), st.text(max_size=300).map(str.encode)),
        st.tuples(st.just(OP_BINARY), st.binary(max_size=300)),
        st.tuples(st.just(OP_PING), st.binary(max_size=125)),
        st.tuples(st.just(OP_PONG), st.binary(max_size=125)),
    ),
    max_size=6,
)


def encode(
    items: list[tuple[int, bytes]],
    *,
    client: bool,
    codec: PerMessageDeflate | None,
    fragments: int,
    key: bytes,
) -> tuple[bytes, list[tuple[int, Any]]]:
    """The wire bytes of ``items`` (data messages in up to ``fragments`` frames, compressed by
    ``codec`` when given) as the peer of a reader in ``client`` mode sends them, and the events
    the reader must give."""
    out = []
    expected: list[tuple[int, Any]] = []
    for opcode, payload in items:
        expected.append((opcode, payload.decode() if opcode == OP_TEXT else payload))
        if opcode in (OP_PING, OP_PONG):
            chunks, rsv = [payload], 0
        else:
            body = payload if codec is None else codec.compress(payload)
            rsv = 0 if codec is None else 0x40
            step = max(1, -(-len(body) // fragments))
            chunks = [body[i : i + step] for i in range(0, len(body), step)] or [b""]
        for i, chunk in enumerate(chunks):
            op = opcode if i == 0 else OP_CONT
            fin = i == len(chunks) - 1
            first_rsv = rsv if i == 0 else 0
            out.append(client_frame(op, chunk, fin=fin, rsv=first_rsv, key=key, masked=not client))
    return b"".join(out), expected


@both_cores
@pytest.mark.parametrize("deflate", [False, True], ids=["plain", "deflate"])
@pytest.mark.parametrize("client", [False, True], ids=["server", "client"])
@given(items=messages, fragments=st.integers(1, 4), key=KEYS, split=cuts)
def test_valid_frames_round_trip(
    core: ModuleType,
    client: bool,
    deflate: bool,
    items: list[tuple[int, bytes]],
    fragments: int,
    key: bytes,
    split: list[int],
) -> None:
    server_codec, client_side = codec_pair()
    sender = (server_codec if client else client_side) if deflate else None
    data, expected = encode(items, client=client, codec=sender, fragments=fragments, key=key)
    r = reader(core, client, False)
    if deflate:
        r.inflater = client_side if client else server_codec
    assert feed_split(r, data, [c % (len(data) + 1) for c in split]) == expected
    assert r.data_to_send() == b""


@both_cores
@pytest.mark.parametrize("client", [False, True], ids=["server", "client"])
@given(code=st.integers(0, 65535), reason=st.binary(max_size=123), key=KEYS)
def test_any_close_payload(
    core: ModuleType, client: bool, code: int, reason: bytes, key: bytes
) -> None:
    frame = client_frame(OP_CLOSE, code.to_bytes(2, "big") + reason, key=key)
    r = core.FrameReader(client=client)
    events = r.feed(unmasked(frame) if client else frame)
    check_well_formed(events)
    assert len(events) == 1
    assert r.close_received and r.state == core.ST_CLOSED
    answer = r.data_to_send()
    assert answer[0] == 0x88


# -- the upgrade parser ---------------------------------------------------------------------------

HEADER_NAMES = [
    b"Host",
    b"host",
    b"Upgrade",
    b"Connection",
    b"Sec-WebSocket-Key",
    b"Sec-WebSocket-Version",
    b"Sec-WebSocket-Extensions",
    b"Origin",
    b"X",
]
header_lines = st.lists(
    st.one_of(
        st.binary(max_size=40),
        st.builds(
            lambda name, value: name + b": " + value,
            st.sampled_from(HEADER_NAMES),
            st.one_of(
                st.sampled_from([b"websocket", b"Upgrade", b"13", b"dGhlIHNhbXBsZSBub25jZQ=="]),
                st.binary(max_size=30),
            ),
        ),
    ),
    max_size=10,
)
request_lines = st.one_of(
    st.binary(max_size=40),
    st.builds(
        lambda method, target, version: method + b" " + target + b" " + version,
        st.sampled_from([b"GET", b"get", b"POST", b"G T", b""]),
        st.one_of(st.just(b"/"), st.binary(max_size=20)),
        st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b"HTTP/1.9", b"http/1.1"]),
    ),
)


@given(line=request_lines, headers=header_lines)
def test_upgrade_parser_raises_only_handshake_errors(line: bytes, headers: list[bytes]) -> None:
    head = b"\r\n".join([line, *headers])
    try:
        request = parse_request(head)
        key = check_upgrade(request)
    except HandshakeError as exc:
        assert exc.status in (400, 405, 426)
        assert exc.reason
        return
    assert request.method == "GET" and request.target.startswith("/")
    assert len(request.get_all("host")) == 1 and key


@given(head=st.binary(max_size=300))
def test_upgrade_parser_on_any_bytes(head: bytes) -> None:
    try:
        check_upgrade(parse_request(head))
    except HandshakeError as exc:
        assert 400 <= exc.status < 500


# -- permessage-deflate ---------------------------------------------------------------------------

offers = st.lists(
    st.one_of(
        st.text(max_size=60),
        st.builds(
            lambda params: "; ".join(["permessage-deflate", *params]),
            st.lists(
                st.sampled_from(
                    [
                        "client_max_window_bits",
                        "client_max_window_bits=8",
                        "client_max_window_bits=16",
                        "server_max_window_bits=9",
                        'server_max_window_bits="10"',
                        "server_max_window_bits",
                        "server_no_context_takeover",
                        "client_no_context_takeover",
                        "x=1",
                        "=",
                        '"',
                    ]
                ),
                max_size=4,
            ),
        ),
    ),
    max_size=3,
)


@given(lines=offers)
def test_negotiate_any_offer(lines: list[str]) -> None:
    accepted = negotiate(lines, DeflateOptions())
    if accepted is None:
        return
    response, codec = accepted
    assert response.startswith("permessage-deflate")
    client_side = client_codec(response)  # what the server answers, its client accepts
    assert codec.decompress(client_side.compress(b"hello" * 20), 0) == b"hello" * 20


@pytest.mark.parametrize("side", ["server", "client"])
@given(payloads=st.lists(st.binary(max_size=200), max_size=4))
def test_decompress_any_bytes_raises_only_protocol_errors(side: str, payloads: list[bytes]) -> None:
    server, client_side = codec_pair()
    codec = server if side == "server" else client_side
    for payload in payloads:
        try:
            out = codec.decompress(payload, MAX_SIZE)
        except ProtocolError as exc:
            assert exc.code in (1007, 1009)
            assert isinstance(exc, PayloadTooBig) is (exc.code == 1009)
        else:
            assert len(out) <= MAX_SIZE


@given(payloads=st.lists(st.binary(max_size=2000), max_size=5))
def test_deflate_round_trip_both_ways(payloads: list[bytes]) -> None:
    server, client_side = codec_pair()
    for payload in payloads:
        assert server.decompress(client_side.compress(payload), 0) == payload
        assert client_side.decompress(server.compress(payload), 0) == payload

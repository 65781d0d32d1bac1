"""The PROXY protocol parser (HAProxy's doc/proxy-protocol.txt) and the forwarded headers, as
bytes and strings alone: what a trusted proxy says is read exactly, anything else refused."""

from __future__ import annotations

import socket
import struct

import pytest

from harpy.exceptions import ConfigurationError
from harpy.protocol import Request, parse_request
from harpy.protocol.proxy import (
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    crc32c,
    parse_proxy_header,
)
from harpy.server.forwarded import ProxyTrust, client_address, parse_forwarded

# ------------------------------------------------------------------------------ version 1


def test_v1_tcp4_gives_the_addresses_and_its_length() -> None:
    line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    header = parse_proxy_header(line + b"GET / HTTP/1.1\r\n")
    assert header == ProxyHeader(1, len(line), "192.168.0.1", 56324, "192.168.0.11", 443)


def test_v1_tcp6_and_unknown() -> None:
    line = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n"
    header = parse_proxy_header(line)
    assert header is not None
    assert (header.source, header.source_port, header.destination_port) == ("2001:db8::1", 1, 65535)
    # UNKNOWN: the connection's own endpoints stand; the rest of the line is ignored.
    assert parse_proxy_header(b"PROXY UNKNOWN\r\nGET") == ProxyHeader(1, 15)
    unknown = b"PROXY UNKNOWN ffff:f::1 ffff:f::2 65535 65535\r\n"
    assert parse_proxy_header(unknown) == ProxyHeader(1, len(unknown))


def test_v1_in_pieces_waits_for_the_crlf() -> None:
    line = b"PROXY TCP4 10.0.0.7 10.0.0.1 4000 80\r\n"
    for cut in range(len(line)):
        assert parse_proxy_header(line[:cut]) is None, cut
    header = parse_proxy_header(line)
    assert header is not None and header.source == "10.0.0.7"


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",  # LF alone
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n",  # a CR inside
        b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",  # no such family
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",  # a field missing
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",  # one too many
        b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",  # two spaces
        b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",  # leading zero (octal confusion)
        b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n",  # IPv6 in TCP4
        b"PROXY TCP6 1.2.3.4 2001:db8::1 1 2\r\n",  # IPv4 in TCP6
        b"PROXY TCP6 fe80::1%eth0 2001:db8::1 1 2\r\n",  # a zone index
        b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
        b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",  # case matters
        b"GET / HTTP/1.1\r\n",  # no header at all
        b"\x16\x03\x01\x02\x00",  # a TLS ClientHello
    ],
)
def test_v1_refuses_anything_else(line: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(line)


def test_v1_without_crlf_in_107_bytes_is_refused() -> None:
    junk = b"PROXY TCP4 " + b"1" * (V1_MAX_LENGTH - 11)
    assert len(junk) == V1_MAX_LENGTH
    with pytest.raises(ProxyHeaderError, match="without CRLF"):
        parse_proxy_header(junk)
    assert parse_proxy_header(junk[:-1]) is None  # still within the bound: wait


# ------------------------------------------------------------------------------ version 2


def v2(
    command: int = 1,
    family: int = 0x11,
    addresses: bytes = b"",
    tlvs: bytes = b"",
    version: int = 2,
) -> bytes:
    body = addresses + tlvs
    return (
        V2_SIGNATURE + bytes((version << 4 | command, family)) + struct.pack("!H", len(body)) + body
    )


def ipv4_block(src: str, dst: str, sport: int, dport: int) -> bytes:
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)


def ipv6_block(src: str, dst: str, sport: int, dport: int) -> bytes:
    pack = socket.inet_pton
    return (
        pack(socket.AF_INET6, src) + pack(socket.AF_INET6, dst) + struct.pack("!HH", sport, dport)
    )


def tlv(kind: int, value: bytes) -> bytes:
    return bytes((kind,)) + struct.pack("!H", len(value)) + value


def test_v2_tcp4_and_tcp6() -> None:
    data = v2(addresses=ipv4_block("203.0.113.9", "10.0.0.1", 51000, 443))
    assert parse_proxy_header(data + b"GET /") == ProxyHeader(
        2, 28, "203.0.113.9", 51000, "10.0.0.1", 443
    )
    data = v2(family=0x21, addresses=ipv6_block("2001:db8::9", "2001:db8::1", 7, 8))
    header = parse_proxy_header(data)
    assert header is not None and header.length == 52
    assert (header.source, header.source_port, header.destination) == (
        "2001:db8::9",
        7,
        "2001:db8::1",
    )


def test_v2_local_unspec_and_unix_keep_the_real_peer() -> None:
    # LOCAL (a health check): the address block, whatever it holds, is skipped.
    local = v2(command=0, addresses=ipv4_block("1.1.1.1", "2.2.2.2", 1, 2))
    assert parse_proxy_header(local) == ProxyHeader(2, len(local))
    assert parse_proxy_header(v2(command=0, family=0)) == ProxyHeader(2, 16)
    unix = v2(family=0x31, addresses=b"/tmp/a".ljust(108, b"\0") + b"/tmp/b".ljust(108, b"\0"))
    assert parse_proxy_header(unix) == ProxyHeader(2, 16 + 216)


def test_v2_in_pieces_waits_for_the_whole_header() -> None:
    data = v2(addresses=ipv4_block("198.51.100.2", "10.0.0.1", 1, 2), tlvs=tlv(0x04, b"pad"))
    for cut in range(len(data)):
        assert parse_proxy_header(data[:cut]) is None, cut
    assert parse_proxy_header(data) is not None


def test_v2_tlvs_ssl_authority_and_a_checked_crc32c() -> None:
    ssl = tlv(0x20, bytes((0x01,)) + b"\0\0\0\0" + tlv(0x21, b"TLSv1.3"))
    authority = tlv(0x02, b"chat.example.com")
    block = ipv4_block("192.0.2.5", "10.0.0.1", 1, 443)
    header = parse_proxy_header(v2(addresses=block, tlvs=ssl + authority))
    assert header is not None
    assert header.tls and header.authority == "chat.example.com"
    # The SSL TLV without PP2_CLIENT_SSL: the client did not use TLS.
    plain = tlv(0x20, bytes((0x00,)) + b"\0\0\0\0")
    header = parse_proxy_header(v2(addresses=block, tlvs=plain))
    assert header is not None and not header.tls
    # CRC32c over the whole header with the checksum zeroed (section 2.2.3).
    unsigned = v2(addresses=block, tlvs=tlv(0x03, b"\0\0\0\0"))
    signed = unsigned[:-4] + struct.pack("!I", crc32c(unsigned))
    assert parse_proxy_header(signed) is not None
    wrong = signed[:-1] + bytes((signed[-1] ^ 1,))
    with pytest.raises(ProxyHeaderError, match="CRC32c"):
        parse_proxy_header(wrong)


def test_crc32c_matches_the_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # RFC 3720 B.4's check value
    assert crc32c(b"") == 0


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (v2(version=1), "version"),
        (v2(command=2), "command"),
        (v2(family=0x41), "family"),
        (v2(family=0x13), "family"),
        (v2(addresses=b"\0" * 11), "shorter"),  # TCP4 needs 12 bytes
        (v2(family=0x21, addresses=b"\0" * 35), "shorter"),
        (v2(addresses=ipv4_block("1.2.3.4", "5.6.7.8", 1, 2), tlvs=b"\x04\x00"), "cut short"),
        (v2(addresses=ipv4_block("1.2.3.4", "5.6.7.8", 1, 2), tlvs=b"\x04\x00\x05ab"), "runs past"),
        (v2(addresses=ipv4_block("1.2.3.4", "5.6.7.8", 1, 2), tlvs=tlv(0x20, b"\x01")), "SSL"),
        (v2(addresses=ipv4_block("1.2.3.4", "5.6.7.8", 1, 2), tlvs=tlv(0x02, b"\xff")), "UTF-8"),
        (v2(addresses=ipv4_block("1.2.3.4", "5.6.7.8", 1, 2), tlvs=tlv(0x03, b"\0")), "4 bytes"),
        (V2_SIGNATURE[:5] + b"X", "no PROXY"),
    ],
)
def test_v2_refuses_what_the_specification_does_not_allow(data: bytes, why: str) -> None:
    with pytest.raises(ProxyHeaderError, match=why):
        parse_proxy_header(data)


def test_v2_length_is_bounded() -> None:
    big = v2(addresses=ipv4_block("1.2.3.4", "5.6.7.8", 1, 2), tlvs=tlv(0x04, b"\0" * 9000))
    # Refused from the fixed part alone, before the rest is read.
    with pytest.raises(ProxyHeaderError, match="over 8192"):
        parse_proxy_header(big[:16], max_length=8192)
    assert parse_proxy_header(big) is not None  # within the protocol's own bound


def test_empty_input_waits() -> None:
    assert parse_proxy_header(b"") is None


# ------------------------------------------------------------------------------ forwarded


def request(*headers: tuple[str, str]) -> Request:
    head = "GET /chat HTTP/1.1\r\nHost: harpy\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    return parse_request(head.encode("latin-1").rstrip(b"\r\n"))


def test_trust_addresses_networks_star_and_loopback_by_default() -> None:
    default = ProxyTrust()
    assert default.trusts("127.0.0.1") and default.trusts("::1")
    assert default.trusts("::ffff:127.0.0.1")  # a dual-stack socket's IPv4 peer
    assert not default.trusts("127.0.0.2") and not default.trusts("10.0.0.1")
    assert default.trusts("")  # a Unix socket's peer: local, as loopback
    nets = ProxyTrust("10.0.0.0/8, 2001:db8::/32,192.0.2.7")
    assert nets.trusts("10.9.8.7") and nets.trusts("2001:db8::5") and nets.trusts("192.0.2.7")
    assert not nets.trusts("127.0.0.1") and not nets.trusts("") and not nets.trusts("junk")
    assert ProxyTrust("*").trusts("203.0.113.1")
    assert ProxyTrust(["10.0.0.1"]).allowed == ("10.0.0.1",)


@pytest.mark.parametrize("bad", ["10.0.0.1/8", "not-an-ip", "300.1.1.1", "unix:/tmp/s"])
def test_a_bad_trusted_entry_is_a_clear_error(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="forwarded_allow_ips"):
        ProxyTrust(bad)


def test_the_switches_take_booleans_only() -> None:
    with pytest.raises(ConfigurationError, match="proxy_headers"):
        ProxyTrust(headers="yes")  # type: ignore[arg-type]


def test_x_forwarded_for_is_read_right_to_left_past_trusted_hops() -> None:
    trust = ProxyTrust("127.0.0.1,10.0.0.0/8")
    # The client wrote "6.6.6.6" itself; the proxies appended what they saw.
    got = trust.forwarded(request(("X-Forwarded-For", "6.6.6.6, 198.51.100.7, 10.0.0.3")))
    assert got.address == "198.51.100.7"
    # Two header lines are one list, in order.
    got = trust.forwarded(
        request(("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "198.51.100.7:5555"))
    )
    assert got.address == "198.51.100.7"
    # Every hop trusted: the left-most is the client (as uvicorn).
    assert trust.forwarded(request(("X-Forwarded-For", "10.1.1.1, 10.2.2.2"))).address == "10.1.1.1"
    # "*": every hop is trusted, so the left-most.
    star = ProxyTrust("*")
    assert (
        star.forwarded(request(("X-Forwarded-For", "192.0.2.1, 10.0.0.3"))).address == "192.0.2.1"
    )
    # A hop that is no address ends what is known: the peer stands.
    got = trust.forwarded(request(("X-Forwarded-For", "198.51.100.7, unknown, 10.0.0.3")))
    assert got.address is None
    got = trust.forwarded(request(("X-Forwarded-For", "[2001:db8::7]:443, ::ffff:10.0.0.3")))
    assert got.address == "2001:db8::7"


def test_x_forwarded_proto_and_host() -> None:
    trust = ProxyTrust()
    got = trust.forwarded(
        request(
            ("X-Forwarded-For", "192.0.2.1"),
            ("X-Forwarded-Proto", "HTTPS"),
            ("X-Forwarded-Host", "chat.example.com"),
        )
    )
    assert got == ("192.0.2.1", True, "chat.example.com")
    # The nearest proxy's (right-most) value; schemes outside http(s)/ws(s) and hosts that
    # are no host are ignored.
    got = trust.forwarded(
        request(
            ("X-Forwarded-Proto", "https, http"), ("X-Forwarded-Host", "a.example, b.example:8443")
        )
    )
    assert got == (None, False, "b.example:8443")
    got = trust.forwarded(
        request(("X-Forwarded-Proto", "gopher"), ("X-Forwarded-Host", "evil.example/path"))
    )
    assert got == (None, None, None)
    assert trust.forwarded(request(("X-Forwarded-Host", "[2001:db8::1]:8080"))).host == (
        "[2001:db8::1]:8080"
    )


def test_rfc7239_forwarded() -> None:
    trust = ProxyTrust("127.0.0.1")
    value = (
        'for=6.6.6.6;proto=http, for="[2001:db8:cafe::17]:4711";proto=https;'
        "host=chat.example.com, for=127.0.0.1"
    )
    got = trust.forwarded(request(("Forwarded", value)))
    assert got == ("2001:db8:cafe::17", True, "chat.example.com")
    # Hidden or unknown identifiers end what is known (RFC 7239 6.2, 6.3).
    assert trust.forwarded(request(("Forwarded", "for=_hidden, for=127.0.0.1"))).address is None
    assert trust.forwarded(request(("Forwarded", "for=unknown"))).address is None
    # X-Forwarded-For wins when both came: most proxies set it and pass Forwarded on unread.
    both = request(("Forwarded", "for=6.6.6.6"), ("X-Forwarded-For", "192.0.2.8"))
    assert trust.forwarded(both).address == "192.0.2.8"


def test_parse_forwarded_elements_quotes_and_malformed_ones() -> None:
    assert parse_forwarded('for=192.0.2.43, for="[2001:db8:cafe::17]";by=x, FOR="a\\"b"') == [
        {"for": "192.0.2.43"},
        {"for": "[2001:db8:cafe::17]", "by": "x"},
        {"for": 'a"b'},
    ]
    assert parse_forwarded('for="1.2.3.4, 5.6.7.8"') == [{"for": "1.2.3.4, 5.6.7.8"}]
    assert parse_forwarded("for, for=1.2.3.4") == [{}, {"for": "1.2.3.4"}]
    assert parse_forwarded('for="1.2.3.4') == [{}]
    assert parse_forwarded("") == []


def test_a_peer_address_is_canonical_and_one_object_per_address() -> None:
    first = client_address(("127.0.0.1", 50000))
    assert first == "127.0.0.1"
    assert client_address(("127.0.0.1", 50001)) is first  # parsed once, held once
    assert client_address(("::ffff:10.0.0.1", 1, 0, 0)) == "10.0.0.1"  # dual-stack IPv4
    assert client_address(("2001:DB8::1", 1, 0, 0)) == "2001:db8::1"
    assert client_address("/run/harpy.sock") == "/run/harpy.sock"
    assert client_address(None) == ""
    for n in range(3000):  # many clients: the table starts afresh, the answers stay right
        assert client_address((f"10.1.{n // 256}.{n % 256}", 1)) == f"10.1.{n // 256}.{n % 256}"
    assert client_address(("::ffff:10.0.0.1", 1, 0, 0)) == "10.0.0.1"

"""The PROXY protocol, versions 1 and 2 (HAProxy's ``doc/proxy-protocol.txt``): Sans-I/O.

A proxy or load balancer that relays TCP (HAProxy in ``mode tcp``, cloud network load
balancers) cannot add HTTP headers; it sends one header before the client's bytes, naming the
client's address.  :func:`parse_proxy_header` reads it from the first bytes of a connection:
it returns None while the header is incomplete, a :class:`ProxyHeader` (with the number of
bytes it took) once it is whole, and raises :class:`ProxyHeaderError` for anything the
specification does not allow, upon which the connection is to be closed (section 2.1: "any
sequence which does not exactly match the protocol must be discarded and cause the receiver
to abort the connection").  Whether a peer may send one at all is the caller's decision: a
receiver never guesses (section 2).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..exceptions import HarpyError

__all__ = [
    "V1_MAX_LENGTH",
    "V2_SIGNATURE",
    "ProxyHeader",
    "ProxyHeaderError",
    "crc32c",
    "parse_proxy_header",
]

#: Version 1's longest line, CRLF included ("PROXY UNKNOWN" with two IPv6 addresses).
V1_MAX_LENGTH = 107
#: The 12 bytes that open a version 2 header.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_PREFIX = b"PROXY "
_V2_FIXED = 16  # signature, version and command, family and protocol, length

# Version 2: families (high nibble of byte 14) and the address block each takes.
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0, 1, 2, 3
_ADDRESS_LENGTH = {_AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}
# TLV types this module reads (section 2.2); the others are skipped.
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_SSL = 0x20
PP2_CLIENT_SSL = 0x01


class ProxyHeaderError(HarpyError, ValueError):
    """The bytes are no valid PROXY protocol header: close the connection."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """What a PROXY header says about the connection it opens."""

    #: 1 (the text line) or 2 (binary).
    version: int
    #: The header's length in bytes: what follows it is the relayed stream.
    length: int
    #: The client's IP address and port; None for a LOCAL (v2) or UNKNOWN (v1) connection,
    #: or a family without IP addresses (AF_UNIX, AF_UNSPEC): then the connection's own
    #: peer is the client (a health check of the proxy, say).
    source: str | None = None
    source_port: int = 0
    #: The address and port the client connected to, on the proxy.
    destination: str | None = None
    destination_port: int = 0
    #: Version 2's ``PP2_TYPE_SSL`` TLV with ``PP2_CLIENT_SSL``: the client's connection to
    #: the proxy was TLS (HAProxy's ``send-proxy-v2-ssl``).
    tls: bool = False
    #: Version 2's ``PP2_TYPE_AUTHORITY`` TLV: the host name the client asked for (TLS SNI).
    authority: str | None = None


def parse_proxy_header(data: bytes, max_length: int = 65551) -> ProxyHeader | None:
    """Parse the PROXY header at the start of ``data``: None while more bytes are needed, the
    header once whole; :class:`ProxyHeaderError` when it is invalid or longer than
    ``max_length`` bytes (version 2 allows up to 16 + 65535)."""
    if data[:1] == b"P":
        return _parse_v1(data)
    if data[:1] == b"\r":
        return _parse_v2(data, max_length)
    if not data:
        return None
    raise ProxyHeaderError("no PROXY protocol header")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    """Section 2.1: ``PROXY TCP4|TCP6|UNKNOWN src dst sport dport\\r\\n``."""
    if not data.startswith(_V1_PREFIX[: len(data)]):
        raise ProxyHeaderError("no PROXY protocol header")
    end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end < 0:
        if len(data) >= V1_MAX_LENGTH:
            raise ProxyHeaderError(f"PROXY v1 line without CRLF in {V1_MAX_LENGTH} bytes")
        if b"\n" in data or b"\r" in data[:-1]:
            raise ProxyHeaderError("PROXY v1 line ends without CRLF")
        return None
    line = data[:end]
    if b"\r" in line or b"\n" in line:
        raise ProxyHeaderError("PROXY v1 line ends without CRLF")
    if not line.startswith(_V1_PREFIX):
        raise ProxyHeaderError("no PROXY protocol header")
    length = end + 2
    parts = line.split(b" ")
    family = parts[1] if len(parts) > 1 else b""
    if family == b"UNKNOWN":
        return ProxyHeader(1, length)  # the rest of the line is to be ignored
    if family not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError("PROXY v1: the family must be TCP4, TCP6 or UNKNOWN")
    if len(parts) != 6:
        raise ProxyHeaderError("PROXY v1: expected 'PROXY family src dst sport dport'")
    version = 4 if family == b"TCP4" else 6
    source = _v1_address(parts[2], version)
    destination = _v1_address(parts[3], version)
    return ProxyHeader(1, length, source, _v1_port(parts[4]), destination, _v1_port(parts[5]))


def _v1_address(text: bytes, version: int) -> str:
    if b"%" in text:
        raise ProxyHeaderError("PROXY v1: an address with a zone index")
    try:
        address = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProxyHeaderError("PROXY v1: not an IP address") from None
    if address.version != version:
        raise ProxyHeaderError("PROXY v1: the address is not of the family announced")
    if version == 4 and text.decode("ascii") != str(address):
        # No leading zeros (octal confusion) and no other spelling: the canonical form only.
        raise ProxyHeaderError("PROXY v1: an IPv4 address must be in canonical form")
    return str(address)


def _v1_port(text: bytes) -> int:
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[:1] == b"0"):
        raise ProxyHeaderError("PROXY v1: a port is a decimal number without leading zeros")
    port = int(text)
    if port > 65535:
        raise ProxyHeaderError("PROXY v1: a port is at most 65535")
    return port


def _parse_v2(data: bytes, max_length: int) -> ProxyHeader | None:
    """Section 2.2: the 16-byte fixed part, the address block, then TLVs."""
    if not data.startswith(V2_SIGNATURE[: len(data)]):
        raise ProxyHeaderError("no PROXY protocol header")
    if len(data) < _V2_FIXED:
        return None
    version_command = data[12]
    if version_command >> 4 != 2:
        raise ProxyHeaderError("PROXY v2: the version must be 2")
    command = version_command & 0x0F
    if command > 1:
        raise ProxyHeaderError("PROXY v2: the command must be LOCAL or PROXY")
    family, transport = data[13] >> 4, data[13] & 0x0F
    if family > _AF_UNIX or transport > 2:
        raise ProxyHeaderError("PROXY v2: unknown address family or transport protocol")
    length = _V2_FIXED + int.from_bytes(data[14:16], "big")
    if length > max_length:
        raise ProxyHeaderError(f"PROXY v2 header of {length} bytes is over {max_length}")
    if len(data) < length:
        return None
    block = data[_V2_FIXED:length]
    needed = _ADDRESS_LENGTH.get(family, 0)
    if len(block) < needed:
        raise ProxyHeaderError("PROXY v2: the address block is shorter than its family needs")
    tls, authority = _read_tlvs(data[:length], _V2_FIXED + needed)
    if command == 0 or family in (_AF_UNSPEC, _AF_UNIX) or transport == 0:
        # LOCAL (the proxy's own connection, a health check), or no IP addresses: the
        # connection's real endpoints stand.
        return ProxyHeader(2, length, tls=tls, authority=authority)
    size = 4 if family == _AF_INET else 16
    source = str(ipaddress.ip_address(block[:size]))
    destination = str(ipaddress.ip_address(block[size : 2 * size]))
    ports = block[2 * size : 2 * size + 4]
    return ProxyHeader(
        2,
        length,
        source,
        int.from_bytes(ports[:2], "big"),
        destination,
        int.from_bytes(ports[2:], "big"),
        tls=tls,
        authority=authority,
    )


def _read_tlvs(header: bytes, start: int) -> tuple[bool, str | None]:
    """Walk the TLVs after the addresses: each must fit exactly; a CRC32c one must match."""
    tls = False
    authority: str | None = None
    at = start
    end = len(header)
    while at < end:
        if at + 3 > end:
            raise ProxyHeaderError("PROXY v2: a TLV is cut short")
        kind = header[at]
        size = int.from_bytes(header[at + 1 : at + 3], "big")
        value = header[at + 3 : at + 3 + size]
        if len(value) != size:
            raise ProxyHeaderError("PROXY v2: a TLV runs past the header")
        if kind == PP2_TYPE_SSL:
            if size < 5:
                raise ProxyHeaderError("PROXY v2: the SSL TLV is shorter than 5 bytes")
            tls = bool(value[0] & PP2_CLIENT_SSL)
        elif kind == PP2_TYPE_AUTHORITY:
            try:
                authority = value.decode("utf-8")
            except UnicodeDecodeError:
                raise ProxyHeaderError("PROXY v2: the authority is not UTF-8") from None
        elif kind == PP2_TYPE_CRC32C:
            if size != 4:
                raise ProxyHeaderError("PROXY v2: the CRC32c TLV must hold 4 bytes")
            zeroed = header[: at + 3] + b"\0\0\0\0" + header[at + 7 :]
            if crc32c(zeroed) != int.from_bytes(value, "big"):
                raise ProxyHeaderError("PROXY v2: the CRC32c checksum does not match")
        at += 3 + size
    return tls, authority


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC32c (Castagnoli, RFC 4960 appendix B), as section 2.2.3 asks: headers are short."""
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF

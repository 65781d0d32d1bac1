"""Who the client is behind a proxy: trusted peers, and the headers they forward.

A proxy that ends the client's connection and opens its own to harpy hides the client: harpy
sees the proxy's address, and the scheme and host of the proxy's request.  A proxy says who
the client was in ``X-Forwarded-For`` / ``-Proto`` / ``-Host`` or in RFC 7239 ``Forwarded``
(HTTP), or in a PROXY protocol header (TCP, :mod:`harpy.protocol.proxy`).  Anyone can send
those, so they are believed from trusted peers only (:class:`ProxyTrust`, as uvicorn's
``--forwarded-allow-ips``): each proxy appends the address it saw, so the list is read from
the right, past every trusted hop, and the first address that is not trusted is the client's
(what a client wrote to the left of it is ignored).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import NamedTuple

from ..exceptions import ConfigurationError
from ..protocol import Request

__all__ = ["LOOPBACK", "Forwarded", "ProxyTrust", "client_address", "parse_forwarded"]

#: Trusted when nothing else is said: a proxy on the same host.
LOOPBACK = ("127.0.0.1", "::1")

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: The schemes a proxy may forward, and those that mean the client used TLS.
_SCHEMES = {"http": False, "ws": False, "https": True, "wss": True}
#: A host (a name, an IPv4 address or a bracketed IPv6 one), with an optional port.
_HOST = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+;=%]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


class Forwarded(NamedTuple):
    """What a trusted proxy's headers say of the client; None where they say nothing."""

    #: The client's IP address.
    address: str | None
    #: Whether the client's connection to the proxy was TLS (``https`` / ``wss``).
    tls: bool | None
    #: The host (and port) the client asked the proxy for.
    host: str | None


_NOTHING = Forwarded(None, None, None)


class ProxyTrust:
    """The peers whose proxy information is believed, and which information is read.

    ``allow`` is a list of IP addresses and networks (``"10.0.0.0/8"``), or one string of
    them separated by commas, or ``"*"`` for any peer; None is the loopback addresses.
    ``headers`` reads the forwarded HTTP headers; ``protocol`` expects a PROXY protocol header
    first on every connection from a trusted peer.  A peer on a Unix socket (no IP address)
    counts as loopback.
    """

    __slots__ = ("_addresses", "_any", "_local", "_networks", "allowed", "headers", "protocol")

    def __init__(
        self,
        allow: str | Iterable[str] | None = None,
        *,
        headers: bool = False,
        protocol: bool = False,
    ) -> None:
        for name, flag in (("proxy_headers", headers), ("proxy_protocol", protocol)):
            if not isinstance(flag, bool):
                raise ConfigurationError(f"{name} must be True or False, not {flag!r}")
        #: Read ``X-Forwarded-*`` and ``Forwarded`` from trusted peers.
        self.headers = headers
        #: Read a PROXY protocol header (v1 or v2) first from trusted peers.
        self.protocol = protocol
        entries = _entries(LOOPBACK if allow is None else allow)
        #: The trusted peers as given: addresses, networks, or ``"*"``.
        self.allowed = tuple(entries)
        self._any = "*" in entries
        self._addresses: set[_IPAddress] = set()
        self._networks: list[_IPNetwork] = []
        for entry in entries:
            if entry == "*":
                continue
            try:
                if "/" in entry:
                    self._networks.append(ipaddress.ip_network(entry))
                else:
                    self._addresses.add(_plain(ipaddress.ip_address(entry)))
            except ValueError:
                raise ConfigurationError(
                    f"forwarded_allow_ips: {entry!r} is not an IP address, a network "
                    '(10.0.0.0/8, with no host bits set) or "*"'
                ) from None
        self._local = self.trusts("127.0.0.1")

    @property
    def enabled(self) -> bool:
        """Whether anything is read from proxies at all."""
        return self.headers or self.protocol

    def trusts(self, address: str) -> bool:
        """Whether a peer at ``address`` (as the transport reports it) is a trusted proxy."""
        if self._any:
            return True
        ip = _ip(address)
        if ip is None:
            return self._local if not address or address.startswith("/") else False
        return ip in self._addresses or any(ip in net for net in self._networks)

    def forwarded(self, request: Request) -> Forwarded:
        """What ``request``'s forwarding headers say, read as a trusted peer's: the address
        from ``X-Forwarded-For`` (else ``Forwarded``'s ``for``), right to left past trusted
        hops; the scheme and host from ``X-Forwarded-Proto`` and ``-Host`` (their right-most
        values: what the nearest proxy set), or from the ``Forwarded`` element of the client's
        hop.  ``X-Forwarded-For`` wins over ``Forwarded`` when both came (most proxies set the
        former and pass the latter on unread)."""
        chain = request.get_all("x-forwarded-for")
        if chain:
            hops = [hop for value in chain for hop in value.split(",")]
            index = self._client_hop([_ip_text(hop) for hop in hops])
            address = None if index is None else _ip_text(hops[index])
        else:
            elements = parse_forwarded(",".join(request.get_all("forwarded")))
            if elements:
                index = self._client_hop([_ip_text(e.get("for", "")) for e in elements])
                if index is None:
                    return _NOTHING
                element = elements[index]
                proto = element.get("proto", "").lower()
                host = element.get("host")
                return Forwarded(
                    _ip_text(element["for"]),
                    _SCHEMES.get(proto),
                    host if host is not None and _HOST.fullmatch(host) else None,
                )
            address = None
        proto = _last(request.get_all("x-forwarded-proto")).lower()
        host = _last(request.get_all("x-forwarded-host"))
        return Forwarded(address, _SCHEMES.get(proto), host if _HOST.fullmatch(host) else None)

    def _client_hop(self, hops: list[str | None]) -> int | None:
        """The index of the client's hop: the right-most untrusted one, or the left-most when
        every hop is trusted; None when a hop that is no IP address (``unknown``, a hidden
        name, garbage) comes first: then nothing is known beyond the peer."""
        for index in range(len(hops) - 1, -1, -1):
            hop = hops[index]
            if hop is None:
                return None
            if not self.trusts(hop):
                return index
        return 0 if hops else None

    def __repr__(self) -> str:
        allowed = (
            "*"
            if self._any
            else ",".join([*map(str, sorted(self._addresses, key=str)), *map(str, self._networks)])
        )
        return f"<ProxyTrust {allowed} headers={self.headers} protocol={self.protocol}>"


#: The canonical form of the peer addresses seen lately (at most ``_ADDRESSES_MAX``): an
#: address that connects again (a proxy, a NAT, a load generator) is neither parsed again nor
#: held once per connection.
_ADDRESSES_MAX = 1024
_addresses: dict[str, str] = {}


def client_address(peer: object) -> str:
    """The IP address (or socket path) of a transport's ``peername``."""
    if isinstance(peer, tuple):
        host = peer[0]
        found = _addresses.get(host)
        if found is None:
            if len(_addresses) >= _ADDRESSES_MAX:
                _addresses.clear()
            found = _addresses[host] = _canonical(str(host))
        return found
    return str(peer) if peer else ""


def parse_forwarded(value: str) -> list[dict[str, str]]:
    """RFC 7239 section 4: ``Forwarded`` elements, left to right, each a dict of its pairs
    (names lower-cased, quoted strings unquoted).  A malformed element is an empty dict, so
    that reading the chain stops there."""
    elements: list[dict[str, str]] = []
    for element in _split(value, ","):
        pairs: dict[str, str] = {}
        for pair in _split(element, ";"):
            name, eq, raw = pair.strip().partition("=")
            name = name.strip().lower()
            raw = raw.strip()
            if not eq or not name or not raw:
                pairs = {}
                break
            if raw[0] == '"':
                if len(raw) < 2 or raw[-1] != '"':
                    pairs = {}
                    break
                raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
            pairs[name] = raw
        elements.append(pairs)
    return elements


def _split(value: str, separator: str) -> list[str]:
    """Split on ``separator`` outside quoted strings; empty parts dropped (RFC 9110 5.6.1)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [part for part in parts if part.strip()]


def _entries(allow: str | Iterable[str]) -> list[str]:
    if isinstance(allow, str):
        items: Iterable[str] = allow.split(",")
    else:
        items = allow
    entries = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigurationError(
                f"forwarded_allow_ips takes strings (addresses, networks, '*'), not {item!r}"
            )
        if item.strip():
            entries.append(item.strip())
    return entries


def _last(values: list[str]) -> str:
    """The right-most item of a header's comma-separated values ("" when none)."""
    if not values:
        return ""
    return values[-1].rsplit(",", 1)[-1].strip()


def _plain(ip: _IPAddress) -> _IPAddress:
    """An IPv4-mapped IPv6 address (a dual-stack socket's view of IPv4) as IPv4."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _ip(text: str) -> _IPAddress | None:
    try:
        return _plain(ipaddress.ip_address(text))
    except ValueError:
        return None


def _canonical(text: str) -> str:
    ip = _ip(text)
    return text if ip is None else str(ip)


def _ip_text(hop: str) -> str | None:
    """A forwarded hop (``1.2.3.4``, ``1.2.3.4:5678``, ``[2001:db8::1]:80``, ``"[::1]"``, a
    bare IPv6 address) as its canonical IP address; None when it is no IP address."""
    text = hop.strip().strip('"')
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (end + 1 < len(text) and text[end + 1] != ":"):
            return None
        text = text[1:end]
    elif text.count(":") == 1:
        text = text.partition(":")[0]  # IPv4 with a port
    if "%" in text:
        return None  # a zone index names an interface of the proxy, not a client
    ip = _ip(text)
    return None if ip is None else str(ip)

"""permessage-deflate (RFC 7692), without I/O: header values and bytes in, bytes out.

The server's pieces:

* :class:`DeflateOptions` is the application's configuration; :meth:`DeflateOptions.from_value`
  turns the ``compression=`` argument (``True``, ``False``, ``None``, a mapping of the fields or
  an instance) into options, or None when compression is off.
* :func:`negotiate` reads the ``Sec-WebSocket-Extensions`` request header lines and returns
  ``(response_header_value, codec)`` for the first acceptable permessage-deflate offer, or None
  when no offer is acceptable.  Malformed offers are declined (RFC 7692 5.1), never raised.
* :class:`PerMessageDeflate` is the per-connection codec: :meth:`~PerMessageDeflate.decompress`
  inflates one whole client message (the joined payloads of its frames, RSV1 set on the first)
  and :meth:`~PerMessageDeflate.compress` deflates one server message.  The caller sets RSV1 on
  the first frame of every message it sends compressed (RFC 7692 6), and compresses only
  messages of at least ``codec.threshold`` bytes.

The client's piece: :func:`client_codec` reads the server's ``Sec-WebSocket-Extensions``
response and returns the same codec the other way round (``PerMessageDeflate(client=True)``):
``decompress`` reads server messages and ``compress`` writes client messages.

Sending one message to many connections: when ``codec.shareable`` is true (the connection
negotiated ``server_no_context_takeover``), every message is compressed independently, so the
output of ``compress_shared(payload, window_bits=w)`` may be sent to any shareable connection
whose ``codec.window_bits >= w``.  Compress once per distinct ``window_bits`` and reuse the
frame.

Window sizes: zlib cannot compress raw deflate with an 8-bit window (it fails on ``wbits=-8``),
so the server never agrees to ``server_max_window_bits=8`` and never asks a client for 8.  The
inflater never uses fewer than 9 bits: a zlib-based client that agreed to 8 really compresses
with 9, and a larger window always reads a stream made with a smaller one.  The client codec
does just that when a server asks it for 8 bits.
"""

from __future__ import annotations

import re
import sys
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields

from ..exceptions import ConfigurationError, PayloadTooBig, ProtocolError

__all__ = [
    "EXTENSION_NAME",
    "deflate_bound",
    "DeflateOptions",
    "PerMessageDeflate",
    "client_codec",
    "compress_shared",
    "negotiate",
]

EXTENSION_NAME = "permessage-deflate"

# RFC 7692 7.2.1 / 7.2.2: the sync-flush marker the sender strips and the receiver appends.
_TAIL = b"\x00\x00\xff\xff"
# RFC 7692 7.2.3.6: a lone non-final stored-block header; with the tail appended it inflates to
# nothing.  This is what an empty message compresses to.
_EMPTY = b"\x00"
# Below this size, one copy of payload + tail is cheaper than a second zlib call.
_JOIN_LIMIT = 4096
# RFC 7692 7.1.2.1 / 7.1.2.2: a decimal integer 8..15 without leading zeros.
_WINDOW_BITS_VALUES = {str(bits): bits for bits in range(8, 16)}
_MIN_BITS = 9  # zlib's smallest raw-deflate window (see the module docstring)
_MAX_BITS = 15

_Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class DeflateOptions:
    """How the server negotiates and uses permessage-deflate.

    ``threshold``: only messages of at least this many bytes are worth compressing (the sender
    decides per message, RFC 7692 6).  ``level`` and ``memory_level`` tune the server's zlib
    compressor.  ``server_no_context_takeover`` (default on) compresses every server message
    independently: no compressor is kept per connection and one compressed frame can be shared
    by many receivers; with it off, each connection keeps a compressor (about 256 KiB with the
    default window and memory level).  ``client_no_context_takeover`` asks clients to do the
    same, so the server frees its inflater (about 2**bits + 7 KiB) between messages.
    ``server_max_window_bits`` caps the server's LZ77 window (9..15); ``client_max_window_bits``
    (9..15, or None to take what the client offers) asks the client for a smaller window, which
    shrinks the server's inflaters.
    """

    threshold: int = 0
    level: int = 6
    server_no_context_takeover: bool = True
    client_no_context_takeover: bool = False
    server_max_window_bits: int = 15
    client_max_window_bits: int | None = None
    memory_level: int = 8

    def __post_init__(self) -> None:
        _check_int("threshold", self.threshold, 0, None)
        _check_int("level", self.level, -1, 9)
        _check_bool("server_no_context_takeover", self.server_no_context_takeover)
        _check_bool("client_no_context_takeover", self.client_no_context_takeover)
        _check_window_bits("server_max_window_bits", self.server_max_window_bits)
        if self.client_max_window_bits is not None:
            _check_window_bits("client_max_window_bits", self.client_max_window_bits)
        _check_int("memory_level", self.memory_level, 1, 9)

    @classmethod
    def from_value(
        cls, value: bool | Mapping[str, object] | DeflateOptions | None
    ) -> DeflateOptions | None:
        """Options from the ``compression=`` argument: None when compression is off.

        ``True`` means the defaults; ``False`` and ``None`` mean off; a mapping sets fields by
        name.  Raises :class:`ConfigurationError` on unknown keys, wrong types or bad values.
        """
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, DeflateOptions):
            return value
        if isinstance(value, Mapping):
            if "enabled" in value:  # the plugin's form: {"enabled": True, "threshold": 1024}
                enabled = value["enabled"]
                if not isinstance(enabled, bool):
                    raise ConfigurationError("compression 'enabled' must be True or False")
                if not enabled:
                    return None
                value = {key: item for key, item in value.items() if key != "enabled"}
            known = {field.name for field in fields(cls)}
            unknown = [key for key in value if key not in known]
            if unknown:
                raise ConfigurationError(
                    f"unknown compression option(s) {', '.join(sorted(map(repr, unknown)))}; "
                    f"known options are {', '.join(sorted(known))}"
                )
            return cls(**value)  # type: ignore[arg-type]  # __post_init__ checks every type
        raise ConfigurationError(
            "compression must be True, False, None, a mapping of options or DeflateOptions, "
            f"not {type(value).__name__}"
        )


def _check_int(name: str, value: object, low: int, high: int | None) -> None:
    # bool is an int subclass, but compression=True-style mistakes must not pass as 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigurationError(f"compression option {name} must be an int, not {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ConfigurationError(f"compression option {name} must be {bounds}, not {value}")


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigurationError(f"compression option {name} must be a bool, not {value!r}")


def _check_window_bits(name: str, value: object) -> None:
    if type(value) is int and value == 8:
        raise ConfigurationError(
            f"compression option {name} must be between 9 and 15: zlib cannot use an 8-bit "
            "window for raw deflate"
        )
    _check_int(name, value, _MIN_BITS, _MAX_BITS)


# --- Sec-WebSocket-Extensions parsing (RFC 6455 9.1, RFC 7230 3.2.6) ---------------------------

_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_QUOTED_RE = re.compile(r'"((?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*)"')
_QUOTED_PAIR_RE = re.compile(r"\\(.)")
_OWS = " \t"

_Params = list[tuple[str, str | None]]


def _split(text: str, separator: str) -> list[str]:
    """Split on ``separator`` outside quoted strings (a quoted value may hold , and ;)."""
    if '"' not in text:
        return text.split(separator)
    parts: list[str] = []
    start = 0
    quoted = False
    escaped = False
    for i, char in enumerate(text):
        if quoted:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == separator:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _parse_extension(element: str) -> tuple[str, _Params | None] | None:
    """``(name, params)`` of one list element; params is None when they are malformed.

    Returns None when the element has no valid extension name at all.
    """
    pieces = _split(element, ";")
    name = pieces[0].strip(_OWS)
    if not _TOKEN_RE.fullmatch(name):
        return None
    params: _Params = []
    for piece in pieces[1:]:
        key, equals, raw = piece.partition("=")
        key = key.strip(_OWS)
        if not _TOKEN_RE.fullmatch(key):
            return name.lower(), None
        value: str | None = None
        if equals:
            raw = raw.strip(_OWS)
            if _TOKEN_RE.fullmatch(raw):
                value = raw
            else:
                match = _QUOTED_RE.fullmatch(raw)
                if match is None:
                    return name.lower(), None
                # RFC 6455 9.1: an unquoted value must still be a token.
                value = _QUOTED_PAIR_RE.sub(r"\1", match.group(1))
                if not _TOKEN_RE.fullmatch(value):
                    return name.lower(), None
        params.append((key.lower(), value))
    return name.lower(), params


def _parse_offer(params: _Params) -> tuple[bool, bool, int | None, int | bool | None] | None:
    """The four RFC 7692 7.1 parameters of an offer (or of a response), or None to decline it
    (RFC 7692 5.1).

    Returns ``(server_no_context_takeover, client_no_context_takeover, server_max_window_bits,
    client_max_window_bits)``; ``client_max_window_bits`` is True when offered without a value.
    """
    server_nct = False
    client_nct = False
    server_bits: int | None = None
    client_bits: int | bool | None = None
    seen: set[str] = set()
    for key, value in params:
        if key in seen:
            return None  # 5.1: the same parameter twice
        seen.add(key)
        if key == "server_no_context_takeover":  # 7.1.1.1: no value
            if value is not None:
                return None
            server_nct = True
        elif key == "client_no_context_takeover":  # 7.1.1.2: no value
            if value is not None:
                return None
            client_nct = True
        elif key == "server_max_window_bits":  # 7.1.2.1: a value is required
            if value is None or value not in _WINDOW_BITS_VALUES:
                return None
            server_bits = _WINDOW_BITS_VALUES[value]
        elif key == "client_max_window_bits":  # 7.1.2.2: the value is optional
            if value is None:
                client_bits = True
            elif value in _WINDOW_BITS_VALUES:
                client_bits = _WINDOW_BITS_VALUES[value]
            else:
                return None
        else:
            return None  # 5.1: a parameter not defined for offers
    return server_nct, client_nct, server_bits, client_bits


def negotiate(
    header_values: str | Iterable[str], options: DeflateOptions
) -> tuple[str, PerMessageDeflate] | None:
    """Accept the first acceptable permessage-deflate offer of a handshake request.

    ``header_values`` are the ``Sec-WebSocket-Extensions`` header lines (one string is taken as
    one line); each holds comma-separated offers, in the client's order of preference.  Other
    extensions are ignored.  Returns the ``Sec-WebSocket-Extensions`` response value and the
    connection's codec, or None when no offer is acceptable and compression stays off.
    """
    if isinstance(header_values, str):
        header_values = (header_values,)
    for line in header_values:
        for element in _split(line, ","):
            if not element.strip(_OWS):
                continue  # RFC 7230 7: empty list elements are allowed and ignored
            parsed = _parse_extension(element)
            if parsed is None or parsed[0] != EXTENSION_NAME or parsed[1] is None:
                continue
            offer = _parse_offer(parsed[1])
            if offer is None:
                continue
            accepted = _accept(offer, options)
            if accepted is not None:
                return accepted
    return None


def _accept(
    offer: tuple[bool, bool, int | None, int | bool | None], options: DeflateOptions
) -> tuple[str, PerMessageDeflate] | None:
    """The response and codec for a well-formed offer, or None when the server cannot meet it."""
    offered_server_nct, offered_client_nct, offered_server_bits, offered_client_bits = offer
    response = [EXTENSION_NAME]

    # 7.1.1.1: the server must honour a request for no context takeover, and may impose it.
    server_nct = offered_server_nct or options.server_no_context_takeover
    if server_nct:
        response.append("server_no_context_takeover")

    # 7.1.1.2: offered, it is only a hint that the client will not keep context; in the
    # response it binds the client.  Echo it either way so both sides agree explicitly.
    client_nct = offered_client_nct or options.client_no_context_takeover
    if client_nct:
        response.append("client_no_context_takeover")

    # 7.1.2.1: the response must repeat the offered value or a smaller one.  The server cannot
    # compress with 8 bits, so an offer of 8 is declined.  Without an offer the server may still
    # announce its window, which lets the client allocate a smaller inflater.
    server_bits = options.server_max_window_bits
    if offered_server_bits is not None:
        if offered_server_bits < _MIN_BITS:
            return None
        server_bits = min(server_bits, offered_server_bits)
        response.append(f"server_max_window_bits={server_bits}")
    elif server_bits < _MAX_BITS:
        response.append(f"server_max_window_bits={server_bits}")

    # 7.1.2.2: only a client that offered the parameter may receive it, with a value no larger
    # than the one offered.  An offered value binds the client even if not echoed.
    client_bits = _MAX_BITS
    wanted = options.client_max_window_bits
    if offered_client_bits is True:
        if wanted is not None:
            client_bits = wanted
            response.append(f"client_max_window_bits={wanted}")
    elif isinstance(offered_client_bits, int):
        client_bits = offered_client_bits
        if wanted is not None and wanted < offered_client_bits:
            client_bits = wanted
            response.append(f"client_max_window_bits={wanted}")

    codec = PerMessageDeflate(
        server_no_context_takeover=server_nct,
        client_no_context_takeover=client_nct,
        server_max_window_bits=server_bits,
        client_max_window_bits=client_bits,
        threshold=options.threshold,
        level=options.level,
        memory_level=options.memory_level,
    )
    return "; ".join(response), codec


def client_codec(response: str) -> PerMessageDeflate:
    """The client's codec for the permessage-deflate a server accepted (RFC 7692 5, 7.1).

    ``response`` is the ``Sec-WebSocket-Extensions`` value of the server's 101, in answer to an
    offer of ``permessage-deflate; client_max_window_bits`` (which leaves every parameter to the
    server).  Raises :class:`ProtocolError` with code 1010 when the response is not exactly one
    permessage-deflate element with valid, distinct parameters: the client must then fail the
    connection.  The codec's ``decompress`` reads server messages and ``compress`` writes client
    messages (see :class:`PerMessageDeflate`, ``client=True``).
    """
    elements = [element for element in _split(response, ",") if element.strip(_OWS)]
    parsed = _parse_extension(elements[0]) if len(elements) == 1 else None
    if parsed is None or parsed[0] != EXTENSION_NAME:
        raise ProtocolError(f"unexpected extension response {response!r}", 1010)
    agreed = None if parsed[1] is None else _parse_offer(parsed[1])
    if agreed is None:
        raise ProtocolError(f"invalid permessage-deflate parameters in {response!r}", 1010)
    server_nct, client_nct, server_bits, client_bits = agreed
    if client_bits is True:  # 7.1.2.2: a response gives the client's window as a value
        raise ProtocolError(f"client_max_window_bits without a value in {response!r}", 1010)
    return PerMessageDeflate(
        server_no_context_takeover=server_nct,
        client_no_context_takeover=client_nct,
        server_max_window_bits=server_bits or _MAX_BITS,
        client_max_window_bits=client_bits or _MAX_BITS,
        client=True,
    )


# --- compression ------------------------------------------------------------------------------

# Shared compressors, per (level, window_bits, memory_level).  Each message is ended with
# Z_FULL_FLUSH, which empties the LZ77 history: the next message cannot refer to this one, so
# every output is independent, as if from a fresh compressor (RFC 7692 7.1.1.1), without the
# cost of allocating and initialising one per message (measured ~10x faster for small messages
# than zlib.compressobj() or .copy() of a template).  A compressor is popped while in use, so a
# concurrent or re-entrant call takes another one and a call interrupted half-way never puts a
# half-flushed compressor back.
_pools: dict[tuple[int, int, int], list[zlib._Compress]] = {}


def _new_compressor(level: int, window_bits: int, memory_level: int) -> zlib._Compress:
    _check_int("level", level, -1, 9)
    _check_window_bits("window_bits", window_bits)
    _check_int("memory_level", memory_level, 1, 9)
    return zlib.compressobj(level, zlib.DEFLATED, -window_bits, memory_level)


def compress_shared(
    payload: _Buffer, window_bits: int = 15, level: int = 6, memory_level: int = 8
) -> bytes:
    """Compress one message once for any number of receivers (no context takeover).

    The result, without the trailing ``00 00 ff ff`` (RFC 7692 7.2.1), may be sent with RSV1 to
    every connection whose codec is ``shareable`` with ``window_bits`` at least this one.
    """
    if not payload:
        return _EMPTY
    key = (level, window_bits, memory_level)
    pool = _pools.get(key)
    if pool:
        try:
            compressor = pool.pop()
        except IndexError:  # emptied by another thread since the test above
            compressor = _new_compressor(level, window_bits, memory_level)
    else:
        compressor = _new_compressor(level, window_bits, memory_level)  # checks the arguments
        if pool is None:
            pool = _pools.setdefault(key, [])
    data = compressor.compress(payload) + compressor.flush(zlib.Z_FULL_FLUSH)
    pool.append(compressor)
    return data[:-4]


def deflate_bound(size: int) -> int:
    """The most a compressed frame of a ``size``-byte message can take, header included.

    Deflate's worst case is stored blocks: 5 bytes per 16 KiB block (zlib's own bound is
    looser still), plus a sync flush and the frame header.
    """
    return size + 5 * ((size >> 14) + 1) + 32


class PerMessageDeflate:
    """One connection's negotiated permessage-deflate state.

    Attributes (read-only by convention): ``threshold`` (compress messages of at least this many
    bytes), ``shareable`` (server_no_context_takeover is in force, so :func:`compress_shared`
    output may be sent here), ``window_bits`` (the server's LZ77 window in force),
    ``client_window_bits`` (the most the client may use), ``client_no_context_takeover``,
    ``level``, ``memory_level`` and ``client``.

    The codec is a server's unless ``client`` is true: the parameters keep their meaning, but a
    client's codec compresses under the ``client_*`` ones and inflates under the ``server_*``
    ones.  A client told to use an 8-bit window compresses with 9 (see the module docstring).
    """

    __slots__ = (
        "_deflate_bits",
        "_deflater",
        "_inflate_bits",
        "_inflater",
        "_keep_inflater",
        "_own_nct",
        "client",
        "client_no_context_takeover",
        "client_window_bits",
        "level",
        "memory_level",
        "shareable",
        "threshold",
        "window_bits",
    )

    def __init__(
        self,
        *,
        server_no_context_takeover: bool = True,
        client_no_context_takeover: bool = False,
        server_max_window_bits: int = 15,
        client_max_window_bits: int = 15,
        threshold: int = 0,
        level: int = 6,
        memory_level: int = 8,
        client: bool = False,
    ) -> None:
        if client:
            _check_int("server_max_window_bits", server_max_window_bits, 8, _MAX_BITS)
        else:
            _check_window_bits("server_max_window_bits", server_max_window_bits)
        _check_int("client_max_window_bits", client_max_window_bits, 8, _MAX_BITS)
        self.client = client
        self.shareable = server_no_context_takeover
        self.client_no_context_takeover = client_no_context_takeover
        self.window_bits = server_max_window_bits
        self.client_window_bits = client_max_window_bits
        self.threshold = threshold
        self.level = level
        self.memory_level = memory_level
        # What this side writes under, and what it reads under: the peer's parameters.
        if client:
            self._own_nct = client_no_context_takeover
            self._deflate_bits = max(client_max_window_bits, _MIN_BITS)
            self._keep_inflater = not server_no_context_takeover
            self._inflate_bits = -max(server_max_window_bits, _MIN_BITS)
        else:
            self._own_nct = server_no_context_takeover
            self._deflate_bits = server_max_window_bits
            self._keep_inflater = not client_no_context_takeover
            self._inflate_bits = -max(client_max_window_bits, _MIN_BITS)
        self._inflater: zlib._Decompress | None = None
        self._deflater: zlib._Compress | None = None

    def __repr__(self) -> str:
        return (
            f"PerMessageDeflate(server_no_context_takeover={self.shareable}, "
            f"client_no_context_takeover={self.client_no_context_takeover}, "
            f"server_max_window_bits={self.window_bits}, "
            f"client_max_window_bits={self.client_window_bits}"
            + (", client=True)" if self.client else ")")
        )

    def decompress(self, payload: _Buffer, max_size: int) -> bytes:
        """Inflate one whole message of the peer (a server's codec reads client messages, a
        client's codec server messages); ``max_size`` <= 0 means no bound.

        Raises :class:`PayloadTooBig` when the result would exceed ``max_size``, having inflated
        at most ``max_size + 1`` bytes, so a small bomb cannot make the server allocate a huge
        buffer.  Raises :class:`ProtocolError` with code 1007 (data inconsistent with the
        message) when the payload is not valid deflate data.  The compressed input itself must
        be bounded by the caller.
        """
        if not payload:
            # A C sender that sync-flushes nothing right after a flush gets no output at all;
            # the stream is still at a block boundary, so this is an empty message.
            return b""
        inflater = self._inflater
        if inflater is None:
            inflater = zlib.decompressobj(self._inflate_bits)
        # Held only by this call: after an error, any later message gets a fresh inflater.
        self._inflater = None
        limit = max_size + 1 if 0 < max_size < sys.maxsize else 0  # 0: zlib's "no limit"
        try:
            # 7.2.2: append the tail the sender stripped, then inflate.
            if len(payload) <= _JOIN_LIMIT:
                data = inflater.decompress(b"".join((payload, _TAIL)), limit)
            else:
                data = inflater.decompress(payload, limit)
                # Output shorter than the limit means all input was consumed.
                if not inflater.eof and (limit == 0 or len(data) < limit):
                    rest = inflater.decompress(_TAIL, limit and limit - len(data))
                    if rest:
                        data += rest
        except zlib.error as exc:
            raise ProtocolError(f"invalid compressed data: {exc}", 1007) from exc
        if limit and len(data) >= limit:
            raise PayloadTooBig(f"message exceeds {max_size} bytes once decompressed")
        # 7.2.3.4: a sender may end a message with a BFINAL block; its stream is over and the
        # next message starts a new one.  Bytes after that block carry no data (7.2.3.4 pads
        # with an empty stored block) and are dropped with the inflater.
        if self._keep_inflater and not inflater.eof:
            self._inflater = inflater  # 7.2.3.2: the next message may refer to this one
        return data

    def wants(self, size: int, compress: bool | None = None) -> bool:
        """Whether a message of ``size`` bytes goes compressed: ``compress`` True or False
        decides (Bun's per-send override), None compresses from ``threshold`` bytes on."""
        return compress is True or (compress is None and size >= self.threshold)

    def compress(self, payload: _Buffer) -> bytes:
        """Deflate one message of this side (server or client), without the trailing
        ``00 00 ff ff`` (RFC 7692 7.2.1).

        With no context takeover for this side this is :func:`compress_shared` (no
        per-connection compressor); otherwise the connection's compressor keeps its history
        between messages (7.2.3.2), so repeated content shrinks.
        """
        if not payload:
            return _EMPTY
        if self._own_nct:
            return compress_shared(payload, self._deflate_bits, self.level, self.memory_level)
        deflater = self._deflater
        if deflater is None:
            deflater = _new_compressor(self.level, self._deflate_bits, self.memory_level)
        # Held only by this call: if it is interrupted between the two zlib calls, the next
        # message starts a fresh compressor, which the client can still read.
        self._deflater = None
        data = deflater.compress(payload) + deflater.flush(zlib.Z_SYNC_FLUSH)
        self._deflater = deflater
        return data[:-4]

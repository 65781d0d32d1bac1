"""The native transport: an ``asyncio.Protocol`` that reads the upgrade and frames messages.

:class:`FramedConnection` puts the wire on the transport-neutral
:class:`~harpy.server.Connection`: it parses the upgrade request, answers 101 or an HTTP
error, feeds bytes to the Sans-I/O :class:`~harpy.protocol.FrameReader` and writes frames.  The
closing handshake is decided by the reader; this class only carries out what it decides (send
its answer, close or abort the transport) and moves ``ready_state`` with it.  Writes made
while a batch of events is being handled are corked and leave in one ``transport.write`` at
the end of the batch.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from ..exceptions import HandshakeError, ProtocolError
from ..protocol import (
    EV_ERROR,
    OP_BINARY,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    ST_CLOSED,
    ST_OPEN,
    FrameReader,
    Message,
    build_accept,
    build_frame,
    build_refusal,
    build_response,
    check_upgrade,
    parse_request,
)
from ..protocol.deflate import deflate_bound
from ..protocol.proxy import ProxyHeaderError, parse_proxy_header
from .connection import (
    EV_PING,
    EV_PROTOCOL_ERROR,
    EV_REFUSED,
    EV_REQUEST,
    EV_RESPONDED,
    LINGER_BYTES,
    LINGER_TIME,
    Connection,
    Limits,
    ReadyState,
)
from .forwarded import client_address

if TYPE_CHECKING:
    from ..protocol.deflate import PerMessageDeflate
    from .listener import Host

__all__ = ["FramedConnection", "MeteredConnection"]

logger = logging.getLogger("harpy")

_CONNECTING = ReadyState.CONNECTING
_OPEN = ReadyState.OPEN
_CLOSED = ReadyState.CLOSED
_NO_CLOSE = (1006, "")


class FramedConnection(Connection, asyncio.Protocol):
    """One TCP (or TLS) connection of the native server."""

    answers_http = True

    __slots__ = (
        "_awaiting_proxy",
        "_failed",
        "_head",
        "_host",
        "_key",
        "_linger",
        "_linger_left",
        "_peer",
        "_peer_closed",
        "_reader",
        "_secure",
        "codec",
        "transport",
    )

    def __init__(self, server: Host) -> None:
        super().__init__(server)
        self.transport: asyncio.Transport | None = None
        #: The negotiated permessage-deflate codec, or None.
        self.codec: PerMessageDeflate | None = None
        self._reader: Any = None
        self._head = b""
        self._key = ""
        self._linger: asyncio.TimerHandle | None = None
        self._linger_left = 0
        self._failed = False  # the peer broke the protocol: what follows may be anything
        self._peer_closed = _NO_CLOSE  # the peer's close, kept when the reader is dropped
        # The client, set once before the upgrade: the transport's peer and encryption, then
        # what a trusted proxy said (PROXY protocol, forwarded headers).
        self._peer = ""
        self._secure = False
        self._host: str | None = None
        self._awaiting_proxy = False  # a PROXY protocol header comes first

    # ----------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self._peer = peer = client_address(transport.get_extra_info("peername"))
        self._secure = transport.get_extra_info("sslcontext") is not None
        proxy = self._server.proxy
        if proxy is not None and proxy.protocol and proxy.trusts(peer):
            self._awaiting_proxy = True
        self._started()

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        if reader is not None:
            self._last_seen = now = self._server.loop.time()
            events = reader.feed(data)
            if len(events) == 1:
                # The common case, one message in one read: no corking, sends go straight out.
                kind, value = events[0]
                if (kind == OP_TEXT or kind == OP_BINARY) and self.ready_state is _OPEN:
                    self._last_active = now
                    self._on_message(value)
                    return
            if events:
                self._handle_events(events)
            elif reader.close_sent:
                self._follow_reader()  # closing: the core may have ended it without an event
            return
        if self.ready_state is _CONNECTING:
            self._receive_head(data)
        elif self._linger is not None:
            self._linger_left -= len(data)  # discarded: the answer is on its way
            if self._linger_left <= 0 and self.transport is not None:
                self.transport.close()

    def eof_received(self) -> bool | None:
        return None  # close the transport: a half-closed WebSocket is of no use

    def connection_lost(self, exc: Exception | None) -> None:
        code, reason = self._peer_close()
        self._reader = None
        self._head = b""
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        self._ended(code, reason, exc)

    def _peer_close(self) -> tuple[int, str]:
        """The peer's close code and reason; 1006 when no close frame came."""
        reader = self._reader
        if reader is None:
            return self._peer_closed
        return reader.close_code, reader.close_reason

    # ----------------------------------------------------------------- the upgrade

    def _receive_head(self, data: bytes) -> None:
        if self._awaiting_proxy:
            data = self._receive_proxy_header(data)
            if not data:
                return
        head = self._head + data if self._head else data
        end = head.find(b"\r\n\r\n")
        limit = self._server.max_header_size
        if end < 0:
            if len(head) > limit:
                self.refuse(431, "Request Header Fields Too Large")
            else:
                self._head = head
            return
        if end > limit:
            self.refuse(431, "Request Header Fields Too Large")
            return
        self._head = head[end + 4 :]  # bytes sent ahead of the 101: fed once open
        try:
            request = parse_request(head[:end])
        except HandshakeError as exc:
            self.refuse(exc.status, exc.reason, exc.headers)
            return
        self.request = request
        self._host = request.get("host")
        proxy = self._server.proxy
        if proxy is not None and proxy.headers and proxy.trusts(self._peer):
            address, secure, host = proxy.forwarded(request)
            if address is not None:
                self._peer = address
            if secure is not None:
                self._secure = secure
            if host is not None:
                self._host = host
        self._on_event(EV_REQUEST, request)

    def _receive_proxy_header(self, data: bytes) -> bytes:
        """Read the PROXY protocol header a trusted proxy sends first (HAProxy's
        ``send-proxy``/``send-proxy-v2``); return what follows it.  An invalid one closes the
        connection: it is no HTTP client to answer."""
        buffered = self._head + data if self._head else data
        try:
            header = parse_proxy_header(buffered, self._server.max_header_size)
        except ProxyHeaderError as exc:
            logger.warning("harpy: closing a connection from proxy %s: %s", self._peer, exc)
            self._head = b""
            if self.transport is not None:
                self.transport.close()
            return b""
        if header is None:
            self._head = buffered
            return b""
        self._awaiting_proxy = False
        self._head = b""
        if header.source is not None:
            self._peer = header.source
        if header.tls:
            self._secure = True
        return buffered[header.length :]

    def check_upgrade(self) -> None:
        """Check that the request asks for a WebSocket upgrade (RFC 6455 4.2.1); raise
        :class:`~harpy.HandshakeError` with the status to refuse with otherwise."""
        assert self.request is not None
        self._key = check_upgrade(self.request)

    def accept(
        self,
        headers: list[tuple[str, str]] | None,
        limits: Limits,
        codec: PerMessageDeflate | None = None,
    ) -> None:
        """Answer 101 and start reading frames; ``EV_OPEN`` comes before any message."""
        transport = self.transport
        if self.ready_state is not _CONNECTING or transport is None or transport.is_closing():
            return
        transport.write(build_accept(self._key, headers))
        self._key = ""  # answered: nothing to keep it for
        transport.set_write_buffer_limits(limits.write_high_water, limits.write_low_water)
        self._reader = FrameReader(limits.max_message_size, codec)
        self.codec = codec
        self._open(limits)
        early = self._head
        self._head = b""
        if early and self._reader is not None:
            self.data_received(early)

    def refuse(
        self, status: int, reason: str = "", headers: list[tuple[str, str]] | None = None
    ) -> None:
        """Answer an HTTP error and close: no upgrade happens.  Before a proxy's PROXY header
        came (the handshake timeout, a shutdown), close without an answer."""
        if self._awaiting_proxy:
            if self.transport is not None:
                self.transport.close()
            return
        if self._answer(build_refusal(status, reason, headers)):
            self._on_event(EV_REFUSED, status)

    def respond(
        self,
        status: int,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        *,
        content_length: int | None = None,
    ) -> None:
        """Answer a plain HTTP request (health, static files, metrics) and close: one
        response per connection, no keep-alive (``Connection: close``)."""
        response = build_response(status, headers, body, content_length=content_length)
        if self._answer(response):
            self._on_event(EV_RESPONDED, status)

    def _answer(self, response: bytes) -> bool:
        """Write an HTTP answer and close; False when it is too late for one."""
        transport = self.transport
        self._head = b""
        if self.ready_state is not _CONNECTING or transport is None or transport.is_closing():
            return False
        self._enter(_CLOSED)
        transport.write(response)
        self._close_lingering()
        return True

    def _close_lingering(self) -> None:
        """Close after a refusal or a failure while the peer may still be sending: end the
        write side (the answer goes first), discard input for at most :data:`LINGER_TIME`
        seconds and :data:`LINGER_BYTES` bytes, then close.  Closing at once with unread
        input makes the kernel send a reset, which can destroy the answer before the peer
        reads it.  TLS cannot half-close: there, close at once."""
        transport = self.transport
        if transport is None or transport.is_closing() or self._linger is not None:
            return
        self._peer_closed = self._peer_close()
        self._reader = None  # what comes now is discarded, not read
        try:
            if not transport.can_write_eof():
                transport.close()
                return
            transport.write_eof()
            transport.resume_reading()
        except (OSError, RuntimeError):
            transport.close()
            return
        self._linger_left = LINGER_BYTES
        self._linger = self._server.loop.call_later(LINGER_TIME, transport.close)

    def _give_up(self) -> None:
        if self._linger is not None and self.transport is not None:
            self.transport.close()  # a refused or failed connection: stop waiting for it

    # ----------------------------------------------------------------- facts of the transport

    @property
    def remote_address(self) -> str:
        """The client's IP address (or socket path): the transport's peer, or what a trusted
        proxy said of the client."""
        return self._peer

    @property
    def tls(self) -> bool:
        """Whether the client's connection is encrypted: TLS to this server, or to a trusted
        proxy that said so."""
        return self._secure

    @property
    def host(self) -> str | None:
        """The host (and port) the client asked for: the ``Host`` header, or what a trusted
        proxy forwarded."""
        return self._host

    def pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    # ----------------------------------------------------------------- frames in

    def _handle_events(self, events: list[tuple[int, Any]]) -> None:
        self._corked = True
        try:
            for kind, value in events:
                if kind == OP_TEXT or kind == OP_BINARY:
                    if self.ready_state is _OPEN:
                        self._last_active = self._last_seen
                        self._on_message(value)
                elif kind == OP_PING:
                    if self.ready_state is _OPEN:
                        self._last_active = self._last_seen
                        self._out.append(build_frame(OP_PONG, value))
                        self._on_event(EV_PING, value)
                elif kind == OP_PONG:
                    self._pong_received(value)
                elif kind == EV_ERROR:
                    self._failed = True
                    self._protocol_failed(value)
                # OP_CLOSE: the reader answered it already; _follow_reader carries it out.
        finally:
            self._corked = False
            self._follow_reader()

    def _protocol_failed(self, exc: ProtocolError) -> None:
        self._on_event(EV_PROTOCOL_ERROR, exc)

    def _follow_reader(self) -> None:
        """Carry out what the protocol core decided: send its answer, follow its state, and
        close the transport once the closing handshake is over (the server closes first,
        RFC 6455 7.1.1)."""
        reader = self._reader
        if reader is None:
            self._flush()
            return
        answer = reader.data_to_send()
        if answer:
            self._out.append(answer)
        self._flush()
        state = reader.state
        if state == ST_OPEN:
            return
        if self.ready_state is _OPEN:
            self._enter_closing()
        if state == ST_CLOSED and self.transport is not None:
            if reader.close_received and not self._failed:
                self.transport.close()
            else:
                # Failed: the peer may still be sending (the rest of a message too big, say),
                # and what the core took for its close may have been any bytes of that.
                self._close_lingering()

    def _start_close(self, code: int, reason: str) -> None:
        reader = self._reader
        frame = reader.send_close(code, reason) if reader is not None else b""
        if not frame:
            return
        if self._corked or self._out:
            self._out.append(frame)
            if not self._corked:
                self._flush()
        elif self.transport is not None:
            self.transport.write(frame)
        self._enter_closing()
        if reader.state == ST_CLOSED and self.transport is not None:
            self.transport.close()

    # ----------------------------------------------------------------- messages out

    def send_message(self, opcode: int, payload: bytes, compress: bool | None = None) -> int:
        """Send one whole message; with permessage-deflate, ``compress=None`` compresses from
        the threshold up, True always, False never."""
        codec = self.codec
        if codec is not None and codec.wants(len(payload), compress):
            return self._send_compressed(codec, opcode, payload)
        # _write, inlined: this is every uncompressed send.
        if self.ready_state is not _OPEN:
            return self._drop_closing()
        frame = build_frame(opcode, payload)
        if not (self._write_paused or self._corked or self._out):
            self.transport.write(frame)  # type: ignore[union-attr]
            self.messages_out += 1
            # The transport calls pause_writing() inside write() when this frame passed the
            # high watermark: then this send is "queued under backpressure".
            return -1 if self._write_paused else len(frame)
        return self._write_message(frame)

    def _send_compressed(self, codec: PerMessageDeflate, opcode: int, payload: bytes) -> int:
        if self.ready_state is not _OPEN:
            return self._drop_closing()
        if codec.shareable:
            return self._write_message(build_frame(opcode, codec.compress(payload), True))
        frame = self._own_compressed(codec, opcode, payload)
        return 0 if frame is None else self._write_message(frame)

    def _write_message(self, frame: bytes) -> int:
        """Write a message's frame, counted when it was not dropped."""
        status = self._write(frame, len(frame))
        if status:
            self.messages_out += 1
        return status

    def send_control(self, opcode: int, payload: bytes) -> int:
        frame = build_frame(opcode, payload)
        return self._write(frame, len(frame))

    def queue_message(self, message: Message) -> bool:
        codec = self.codec
        if codec is None or not codec.wants(len(message.payload), message.compress):
            frame = message.frame
        elif codec.shareable:
            frame = message.shared_frame(codec)
        else:
            own = self._own_compressed(codec, message.opcode, message.payload)
            if own is None:
                return False
            frame = own
        # _enqueue, inlined: this is every delivery of a fan-out.
        size = len(frame)
        if self.ready_state is not _OPEN:
            self._drop_closing()
            return False
        server = self._server
        # The new totals, computed once: compared, then stored (no limit near: the common case).
        out_size = self._out_size + size
        queued = server.queued + size
        if (
            self._write_paused
            or out_size > self._limits.backpressure_limit
            or queued > server.output_bound
        ):
            if self._past_limit(size):
                return False
            out_size = self._out_size + size  # a check may have flushed: counted afresh
            queued = server.queued + size
        out = self._out
        if not out and not self._corked:
            server.flush_later(self)
        out.append(frame)
        self._out_size = out_size
        self.messages_out += 1
        server.queued = queued
        return True

    def _own_compressed(
        self, codec: PerMessageDeflate, opcode: int, payload: bytes
    ) -> bytes | None:
        """A frame compressed by this connection's own (context-keeping) compressor, or None
        when it would be dropped: the compressor never remembers a message never sent."""
        if self.ready_state is not _OPEN:
            self._drop_closing()
            return None
        if self._past_limit(deflate_bound(len(payload))):
            return None
        return build_frame(opcode, codec.compress(payload), True)

    def _transmit(self, item: Any) -> None:
        self.transport.write(item)  # type: ignore[union-attr]

    def _transmit_all(self, items: list[Any]) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(items[0] if len(items) == 1 else b"".join(items))

    def _transport_buffer(self) -> int:
        transport = self.transport
        if transport is None or transport.is_closing():
            return 0
        return transport.get_write_buffer_size()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class MeteredConnection(FramedConnection):
    """A connection that also counts bytes, for an app with metrics on: the byte counts cost a
    call per read and per send, which an app without metrics does not pay."""

    __slots__ = ("bytes_in", "bytes_out")

    def __init__(self, server: Host) -> None:
        super().__init__(server)
        #: Bytes read from the socket: frames, and the upgrade request.
        self.bytes_in = 0
        #: Payload bytes of the messages sent or queued (before compression).
        self.bytes_out = 0

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        FramedConnection.data_received(self, data)  # not super(): a compiled cpdef

    def send_message(self, opcode: int, payload: bytes, compress: bool | None = None) -> int:
        status = super().send_message(opcode, payload, compress)
        if status:
            self.bytes_out += len(payload)
        return status

    def queue_message(self, message: Message) -> bool:
        queued = FramedConnection.queue_message(self, message)
        if queued:
            self.bytes_out += len(message.payload)
        return queued

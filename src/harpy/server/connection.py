"""The asyncio glue of one connection: handshake bytes, frame events, writes, closing, deadlines.

:class:`Connection` is an ``asyncio.Protocol`` that owns the transport.  It knows nothing of
routes or handlers.  The layer above subclasses it and talks to it at the message level:

* it implements the ``_handle_*`` hooks (a request to decide on, open, a message, ping, pong,
  drain, a protocol error, closed);
* it answers with :meth:`Connection.check_upgrade`, :meth:`~Connection.accept` or
  :meth:`~Connection.refuse`, then :meth:`~Connection.send_message`,
  :meth:`~Connection.send_control`, :meth:`~Connection.close` and :meth:`~Connection.abort`;
* fan-out hands one :class:`~harpy.protocol.Message` to many connections with
  :meth:`~Connection.queue_message`.

This class frames; another adapter (ASGI) overrides the same methods to emit its own events.
The closing handshake is decided by the Sans-I/O :class:`~harpy.protocol.FrameReader`; this
class only carries out what it decides (send its answer, close or abort the transport) and
mirrors its state in :attr:`Connection.ready_state`.  Writes made while a batch of events is
being handled are corked and leave in one ``transport.write`` at the end of the batch.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass
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
    Request,
    build_accept,
    build_frame,
    build_refusal,
    build_response,
    check_upgrade,
    parse_request,
)
from ..protocol.deflate import deflate_bound

if TYPE_CHECKING:
    from ..protocol.deflate import PerMessageDeflate
    from .listener import Server

__all__ = ["BUDGET_POLICIES", "LINGER_BYTES", "LINGER_TIME", "Connection", "Limits", "ReadyState"]

logger = logging.getLogger("harpy")

MiB = 1024 * 1024

#: A refused or failed connection: after the answer, read and discard what the peer still
#: sends for at most this many seconds and bytes, so that it reads the answer, not a reset.
LINGER_TIME = 2.0
LINGER_BYTES = 1 * MiB

#: What happens to a message for one of the slowest connections once the server's output
#: budget is spent: drop it (counted), or close the connection with 1008 or with 1013.
BUDGET_POLICIES = ("drop", "close_1008", "close_1013")
_BUDGET_CLOSE = {
    "close_1008": (1008, "Output budget exceeded"),
    "close_1013": (1013, "Server overloaded, try again later"),
}


class ReadyState(enum.IntEnum):
    """As the browser's and Bun's ``readyState``; OPEN to CLOSED follow the protocol core."""

    CONNECTING = 0
    OPEN = 1
    CLOSING = 2
    CLOSED = 3


_CONNECTING = ReadyState.CONNECTING
_OPEN = ReadyState.OPEN
_CLOSING = ReadyState.CLOSING
_CLOSED = ReadyState.CLOSED


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """What a connection enforces once upgraded; each default is written here, once.

    The app layer's route options extend this class, so a route's options are its limits.
    """

    #: A whole message, compressed or not, over this many bytes closes with 1009 (0: no limit).
    max_message_size: int = 16 * MiB
    #: Close (1001) a connection that sent nothing for this long; 0 disables.
    idle_timeout: float = 120.0
    #: How long to wait for the peer's close frame after sending ours, before dropping TCP.
    close_timeout: float = 5.0
    #: Bytes queued for one connection past which a send is dropped (and counted).
    backpressure_limit: int = 16 * MiB
    #: Close with 1008 instead of dropping when the backpressure limit is passed.
    close_on_backpressure_limit: bool = False
    #: Once the server's output budget is spent, for one of the connections holding the most:
    #: "drop" the message (counted), or "close_1008" / "close_1013" the connection.
    output_budget_policy: str = "drop"
    #: Write buffer watermarks: ``send`` returns -1 above the high one, drain fires below the low.
    write_high_water: int = 64 * 1024
    write_low_water: int = 16 * 1024
    #: Heartbeat: ping every this many seconds; 0 disables.
    ping_interval: float = 0.0
    #: Close (1000 "No pong received") when a ping is unanswered this long; 0: no such bound.
    pong_timeout: float = 0.0
    #: Close (1000 "No pong received") after this many heartbeat pings in a row went unanswered.
    max_missed_pongs: int = 3
    #: Close (1000 "Inactivity timeout") when no message or ping came for this long; 0 disables.
    inactivity_timeout: float = 0.0
    #: Ping a silent connection at three quarters of ``idle_timeout``, as Bun's sendPings does.
    send_pings: bool = True


_DEFAULT_LIMITS = Limits()
_NO_CLOSE = (1006, "")
_PING = build_frame(OP_PING, b"")


def _earliest(a: float, b: float) -> float:
    return b if a <= 0 or (0 < b < a) else a


class Connection(asyncio.Protocol):
    """One TCP (or TLS) connection, from the first request byte to the closed socket."""

    __slots__ = (
        "_corked",
        "_deadline",
        "_failed",
        "_head",
        "_held",
        "_key",
        "_last_active",
        "_last_seen",
        "_limits",
        "_linger",
        "_linger_left",
        "_missed_pongs",
        "_out",
        "_out_size",
        "_peer_closed",
        "_ping_at",
        "_ping_sent",
        "_reader",
        "_server",
        "_write_paused",
        "codec",
        "dropped",
        "messages_out",
        "ready_state",
        "request",
        "timer_slot",
        "transport",
    )

    def __init__(self, server: Server) -> None:
        self._server = server
        self.transport: asyncio.Transport | None = None
        self.ready_state = _CONNECTING
        #: The upgrade request, once its head was read.
        self.request: Request | None = None
        #: The negotiated permessage-deflate codec, or None.
        self.codec: PerMessageDeflate | None = None
        #: Messages dropped while this connection was open: past its backpressure limit, or past
        #: the server's output budget (those sent once it was closing count on the server).
        self.dropped = 0
        #: Messages sent or queued to the peer (not the dropped ones).
        self.messages_out = 0
        #: The timer wheel's slot for this connection (the wheel's to change).
        self.timer_slot = -1
        self._reader: Any = None
        self._head = b""
        self._key = ""
        self._out: list[bytes] = []
        self._out_size = 0
        self._held = 0  # the transport's buffer, as last sampled into the server's total
        self._linger: asyncio.TimerHandle | None = None
        self._linger_left = 0
        self._failed = False  # the peer broke the protocol: what follows may be anything
        self._peer_closed = _NO_CLOSE  # the peer's close, kept when the reader is dropped
        self._corked = False
        self._write_paused = False
        self._limits = _DEFAULT_LIMITS
        self._deadline = 0.0
        self._last_seen = 0.0
        self._last_active = 0.0  # last message or ping (inactivity_timeout)
        self._ping_at = 0.0  # when the next heartbeat ping is due
        self._ping_sent = 0.0  # when the unanswered ping went out; 0.0: none outstanding
        self._missed_pongs = 0

    # ----------------------------------------------------------------- hooks (the layer above)

    def _handle_request(self, request: Request) -> None:
        """Decide on the upgrade: call :meth:`accept` or :meth:`refuse`, now or later."""
        self.refuse(404, "Not Found")

    def _handle_open(self) -> None:
        """The 101 is on the wire."""

    def _handle_message(self, message: str | bytes) -> None:
        """A whole text (``str``) or binary (``bytes``) message arrived."""

    def _handle_ping(self, data: bytes) -> None:
        """A ping arrived (the pong is already queued)."""

    def _handle_pong(self, data: bytes) -> None:
        """A pong arrived."""

    def _handle_drain(self) -> None:
        """The write buffer fell below the low watermark after having passed the high one."""

    def _handle_closed(self, code: int, reason: str) -> None:
        """The socket is closed; ``code`` is the peer's close code, or 1006 if it sent none."""

    def _handle_protocol_error(self, exc: ProtocolError) -> None:
        """The peer broke the protocol; the connection is failing with ``exc.code``."""

    # ----------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        server = self._server
        server.connections.add(self)
        self._deadline = server.loop.time() + server.handshake_timeout
        server.wheel.schedule(self, self._deadline)

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
                    self._handle_message(value)
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
        server = self._server
        server.connections.discard(self)
        server.wheel.cancel(self)
        was = self.ready_state
        self.ready_state = _CLOSED
        code, reason = self._peer_close()
        self._reader = None
        self._head = b""
        held = self._held + self._out_size
        self._out.clear()
        self._out_size = 0
        self._held = 0
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        server.released(held)
        if was is not _CONNECTING:
            self._handle_closed(code, reason)

    def _peer_close(self) -> tuple[int, str]:
        """The peer's close code and reason; 1006 when no close frame came."""
        reader = self._reader
        if reader is None:
            return self._peer_closed
        return reader.close_code, reader.close_reason

    def pause_writing(self) -> None:
        self._write_paused = True
        self._recount()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._recount()
        if self.ready_state is _OPEN:
            self._handle_drain()

    # ----------------------------------------------------------------- the upgrade

    def _receive_head(self, data: bytes) -> None:
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
        self._handle_request(request)

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
        """Answer 101 and start reading frames; the ``_handle_open`` hook runs before any."""
        transport = self.transport
        if self.ready_state is not _CONNECTING or transport is None or transport.is_closing():
            return
        transport.write(build_accept(self._key, headers))
        transport.set_write_buffer_limits(limits.write_high_water, limits.write_low_water)
        self._reader = FrameReader(limits.max_message_size, codec)
        self._open(limits, codec)

    def _open(self, limits: Limits, codec: PerMessageDeflate | None) -> None:
        """CONNECTING -> OPEN: start the deadlines, run the open hook, then read what the peer
        sent ahead of the 101."""
        self._limits = limits
        self.ready_state = _OPEN
        self.codec = codec
        server = self._server
        self._last_seen = self._last_active = now = server.loop.time()
        self._deadline = 0.0
        if limits.ping_interval > 0:
            self._ping_at = now + limits.ping_interval
        server.wheel.schedule(self, self._next_deadline(now))
        early = self._head
        self._head = b""
        self._handle_open()
        if early and self._reader is not None:
            self.data_received(early)

    def refuse(
        self, status: int, reason: str = "", headers: list[tuple[str, str]] | None = None
    ) -> None:
        """Answer an HTTP error and close: no upgrade happens."""
        self._answer(build_refusal(status, reason, headers))

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
        self._answer(build_response(status, headers, body, content_length=content_length))

    def _answer(self, response: bytes) -> None:
        transport = self.transport
        self._head = b""
        if self.ready_state is not _CONNECTING or transport is None or transport.is_closing():
            return
        self.ready_state = _CLOSED
        transport.write(response)
        self._close_lingering()

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

    # ----------------------------------------------------------------- facts of the transport

    @property
    def remote_address(self) -> str:
        """The peer's IP address (or socket path), as the transport reports it."""
        peer = self.transport.get_extra_info("peername") if self.transport else None
        if isinstance(peer, tuple):
            return str(peer[0])
        return str(peer) if peer else ""

    @property
    def tls(self) -> bool:
        """Whether the connection is encrypted (``wss``)."""
        transport = self.transport
        return transport is not None and transport.get_extra_info("sslcontext") is not None

    def pause_reading(self) -> None:
        """Stop reading from the peer (read-side backpressure, or an upgrade awaiting a hook)."""
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
                        self._handle_message(value)
                elif kind == OP_PING:
                    if self.ready_state is _OPEN:
                        self._last_active = self._last_seen
                        self._out.append(build_frame(OP_PONG, value))
                        self._handle_ping(value)
                elif kind == OP_PONG:
                    self._ping_sent = 0.0
                    self._missed_pongs = 0
                    self._handle_pong(value)
                elif kind == EV_ERROR:
                    self._failed = True
                    self._handle_protocol_error(value)
                # OP_CLOSE: the reader answered it already; _follow_reader carries it out.
        finally:
            self._corked = False
            self._follow_reader()

    def _follow_reader(self) -> None:
        """Carry out what the protocol core decided: send its answer, mirror its state, and
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

    def _enter_closing(self) -> None:
        """OPEN -> CLOSING: our close frame is out; the peer has ``close_timeout`` to answer."""
        self.ready_state = _CLOSING
        self._deadline = self._server.loop.time() + self._limits.close_timeout
        self._server.wheel.schedule(self, self._deadline)

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
        """Send one whole message; Bun's status: bytes written, -1 under backpressure, 0
        dropped (closing, or past the backpressure limit).

        With permessage-deflate, ``compress=None`` compresses from the threshold up, True
        always, False never.
        """
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
        """:meth:`_write` a message's frame, counted when it was not dropped."""
        status = self._write(frame)
        if status:
            self.messages_out += 1
        return status

    def send_control(self, opcode: int, payload: bytes) -> int:
        """Send a ping or a pong (``payload`` of at most 125 bytes); status as ``send_message``."""
        return self._write(build_frame(opcode, payload))

    def queue_message(self, message: Message) -> bool:
        """Queue a message shared with other connections; every queue leaves once per loop
        tick.  False when it was dropped (closing, or past the backpressure limit)."""
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
        size = len(frame)
        if self.ready_state is not _OPEN:
            self._drop_closing()
            return False
        server = self._server
        if (
            (self._write_paused or self._out_size + size > self._limits.backpressure_limit)
            and self._over_limit(size)
        ) or (server.queued + size > server.output_bound and self._over_budget(size)):
            return False
        out = self._out
        if not out and not self._corked:
            server.flush_later(self)
        out.append(frame)
        self._out_size += size
        self.messages_out += 1
        server.queued += size
        return True

    def _write(self, frame: bytes) -> int:
        """Write (or queue behind what is queued) one frame; the status of ``send_message``."""
        if self.ready_state is not _OPEN:
            return self._drop_closing()
        if not (self._write_paused or self._corked or self._out):
            self.transport.write(frame)  # type: ignore[union-attr]
            return -1 if self._write_paused else len(frame)
        size = len(frame)
        if self._past_limit(size):
            return 0
        if self._corked or self._out:  # behind queued frames: keep the order
            self._out.append(frame)
            self._out_size += size
        else:
            self.transport.write(frame)  # type: ignore[union-attr]
            self._held += size  # in the transport until the next sample
        self._server.queued += size
        return -1 if self._write_paused else size

    def _past_limit(self, size: int) -> bool:
        # Cheap test first: the kernel side only matters once writing is paused, and the
        # queue of this tick only once it nears the limit.
        if (
            self._write_paused or self._out_size + size > self._limits.backpressure_limit
        ) and self._over_limit(size):
            return True
        server = self._server
        return server.queued + size > server.output_bound and self._over_budget(size)

    def _over_budget(self, size: int) -> bool:
        """The server's output budget is spent: refuse ``size`` more bytes to one of the
        slowest connections, by the route's ``output_budget_policy``; the others still get
        theirs.  One of the slowest holds more than its fair share and its peer does not
        keep up: what is queued, written now, leaves its transport above the high-water mark.
        (Within one loop tick every receiver of a fan-out has the same queue: only writing
        tells a fast peer from a slow one.)"""
        self._recount()
        if self._held + self._out_size + size <= self._server.fair_share():
            return False
        if not self._write_paused and self._out and not self._corked:
            self._flush()
        if not self._write_paused:
            return False  # the peer keeps up
        self._drop("budget")
        close = _BUDGET_CLOSE.get(self._limits.output_budget_policy)
        if close is not None:
            self._start_close(*close)
        return True

    def _recount(self) -> None:
        """Sample the transport's buffer into the server's total: at the watermarks, on the
        way to a drop, and at a flush once the total is past half the budget (inlined
        there); never per message."""
        transport = self.transport
        held = transport.get_write_buffer_size() if transport is not None else 0
        self._server.queued += held - self._held
        self._held = held

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

    def _over_limit(self, size: int) -> bool:
        """Past ``backpressure_limit``: count the drop, or close with 1008 when asked."""
        transport = self.transport
        limits = self._limits
        if transport is None:
            return True
        if transport.get_write_buffer_size() + self._out_size + size <= limits.backpressure_limit:
            return False
        self._drop_at_limit()
        return True

    def _drop_at_limit(self) -> None:
        """A message dropped at the backpressure limit: count it, or close with 1008 when the
        route asks for that."""
        self._drop("backpressure")
        if self._limits.close_on_backpressure_limit:
            self._start_close(1008, "Backpressure limit exceeded")

    def _drop(self, reason: str) -> None:
        """Count one message lost on this connection, and on the server by ``reason``."""
        self.dropped += 1
        self._server.count_drop(reason)

    def _drop_closing(self) -> int:
        """A message for a connection that is closing or closed: counted on the server, status 0."""
        if self.ready_state is not _CONNECTING:
            self._server.count_drop("closing")
        return 0

    def flush(self) -> None:
        """Write what was queued this tick, unless a batch of events is still being handled
        (its end writes everything at once)."""
        if not self._corked:
            self._flush()

    def _flush(self) -> None:
        out = self._out
        if out:
            transport = self.transport
            if transport is not None and not transport.is_closing():
                transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
            size = self._out_size
            self._out_size = 0
            server = self._server
            if self._write_paused or server.queued > server.sample_above:
                # Sample what the kernel did not take into the server's total.
                held = transport.get_write_buffer_size() if transport is not None else 0
                server.queued += held - self._held - size
                self._held = held
            else:
                self._held += size  # taken as still in the transport: the total errs high

    @property
    def buffered_amount(self) -> int:
        """Bytes accepted by ``send`` and not yet handed to the kernel."""
        transport = self.transport
        size = self._out_size
        if transport is not None and not transport.is_closing():
            size += transport.get_write_buffer_size()
        return size

    # ----------------------------------------------------------------- closing

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake; before the upgrade, refuse it (503 on 1001, else 500)."""
        if self.ready_state is _CONNECTING:
            self.refuse(503 if code == 1001 else 500, "Closing")
            return
        if self.ready_state is _OPEN:
            self._start_close(code, reason)
        elif self._linger is not None and self.transport is not None:
            self.transport.close()  # a refused or failed connection: stop waiting for it

    def abort(self) -> None:
        """Drop the TCP connection at once, without a closing handshake."""
        if self.transport is not None:
            self.transport.abort()

    # ----------------------------------------------------------------- deadlines

    def _next_deadline(self, now: float) -> float:
        """The earliest of the open connection's deadlines (0.0: none)."""
        limits = self._limits
        due = 0.0
        if limits.idle_timeout > 0:
            due = self._idle_deadline(limits)
            if limits.send_pings and not self._ping_sent and limits.ping_interval <= 0:
                due = self._last_seen + limits.idle_timeout * 0.75
        if limits.inactivity_timeout > 0:
            due = _earliest(due, self._last_active + limits.inactivity_timeout)
        if limits.ping_interval > 0:
            due = _earliest(due, self._ping_at)
        if limits.pong_timeout > 0 and self._ping_sent:
            due = _earliest(due, self._ping_sent + limits.pong_timeout)
        return due

    def on_timer(self, now: float) -> float:
        """The timer wheel's call: act on what is due at ``now``; return the next deadline."""
        state = self.ready_state
        if state is _CLOSED:
            return 0.0
        if state is _CONNECTING:
            if now >= self._deadline:
                self.refuse(408, "Request Timeout")
                return 0.0
            return self._deadline
        if state is _CLOSING:
            if now >= self._deadline:
                self.abort()  # the peer never answered our close
                return 0.0
            return self._deadline
        limits = self._limits
        if limits.idle_timeout > 0 and now >= self._idle_deadline(limits):
            if limits.send_pings and not self._ping_sent and limits.ping_interval <= 0:
                # The ping due at 3/4 of the timeout was not sent yet (coarse timer slots):
                # send it now and give the peer a quarter of the timeout to answer.
                self._send_ping(now)
                return self._next_deadline(now)
            self._start_close(1001, "Idle timeout")
            return self._deadline
        if limits.inactivity_timeout > 0 and now >= self._last_active + limits.inactivity_timeout:
            self._start_close(1000, "Inactivity timeout")
            return self._deadline
        ping_sent = self._ping_sent
        if ping_sent and limits.pong_timeout > 0 and now >= ping_sent + limits.pong_timeout:
            self._start_close(1000, "No pong received")
            return self._deadline
        if limits.ping_interval > 0:
            if now >= self._ping_at:
                if self._ping_sent:
                    self._missed_pongs += 1
                    if self._missed_pongs >= limits.max_missed_pongs:
                        self._start_close(1000, "No pong received")
                        return self._deadline
                self._send_ping(now)
                self._ping_at = now + limits.ping_interval
        elif (
            limits.idle_timeout > 0
            and limits.send_pings
            and not self._ping_sent
            and now >= self._last_seen + limits.idle_timeout * 0.75
        ):
            self._send_ping(now)  # a live peer answers, and its pong counts as activity
        return self._next_deadline(now)

    def _idle_deadline(self, limits: Limits) -> float:
        idle = limits.idle_timeout
        due = self._last_seen + idle
        if self._ping_sent and limits.send_pings:
            due = max(due, self._ping_sent + idle * 0.25)
        return due

    def _send_ping(self, now: float) -> None:
        if not self._ping_sent:
            self._ping_sent = now
        self._write(_PING)

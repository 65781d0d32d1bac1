"""The asyncio glue of one connection: handshake bytes, frame events, writes, closing, deadlines.

:class:`Connection` is an ``asyncio.Protocol`` that owns the transport.  It knows nothing of
routes or handlers: the application layer subclasses it and implements the ``_handle_*`` hooks.
Writes made while a batch of events is being handled are corked and leave in one
``transport.write`` at the end of the batch.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from typing import TYPE_CHECKING, Any

from ..exceptions import HandshakeError, ProtocolError
from ..protocol import (
    EV_ERROR,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameReader,
    Request,
    build_accept,
    build_close,
    build_frame,
    build_refusal,
    parse_request,
)
from ..protocol.deflate import deflate_bound

if TYPE_CHECKING:
    from .listener import Server

__all__ = ["Connection", "Limits", "ReadyState"]

logger = logging.getLogger("harpy")


class ReadyState(enum.IntEnum):
    """As the browser's and Bun's ``readyState``."""

    CONNECTING = 0
    OPEN = 1
    CLOSING = 2
    CLOSED = 3


_CONNECTING = ReadyState.CONNECTING
_OPEN = ReadyState.OPEN
_CLOSING = ReadyState.CLOSING
_CLOSED = ReadyState.CLOSED


class Limits:
    """Per-route limits the connection enforces once upgraded (see ``App.ws`` for the docs)."""

    __slots__ = (
        "backpressure_limit",
        "close_on_backpressure_limit",
        "close_timeout",
        "idle_timeout",
        "inactivity_timeout",
        "max_message_size",
        "max_missed_pongs",
        "ping_interval",
        "pong_timeout",
        "send_pings",
        "write_high_water",
        "write_low_water",
    )

    def __init__(
        self,
        *,
        max_message_size: int = 16 * 1024 * 1024,
        idle_timeout: float = 120.0,
        close_timeout: float = 5.0,
        backpressure_limit: int = 16 * 1024 * 1024,
        close_on_backpressure_limit: bool = False,
        write_high_water: int = 64 * 1024,
        write_low_water: int = 16 * 1024,
        ping_interval: float = 0.0,
        pong_timeout: float = 0.0,
        max_missed_pongs: int = 3,
        inactivity_timeout: float = 0.0,
        send_pings: bool = True,
    ) -> None:
        self.max_message_size = max_message_size
        self.idle_timeout = idle_timeout
        self.close_timeout = close_timeout
        self.backpressure_limit = backpressure_limit
        self.close_on_backpressure_limit = close_on_backpressure_limit
        self.write_high_water = write_high_water
        self.write_low_water = write_low_water
        self.ping_interval = ping_interval
        self.pong_timeout = pong_timeout
        self.max_missed_pongs = max_missed_pongs
        self.inactivity_timeout = inactivity_timeout
        self.send_pings = send_pings


_DEFAULT_LIMITS = Limits()
_PING = build_frame(OP_PING, b"")


def _earliest(a: float, b: float) -> float:
    return b if a <= 0 or (0 < b < a) else a


class Connection(asyncio.Protocol):
    """One TCP (or TLS) connection, from the first request byte to the closed socket."""

    __slots__ = (
        "_close_code",
        "_close_reason",
        "_close_sent",
        "_corked",
        "_deadline",
        "_deflate",
        "_head",
        "_last_active",
        "_last_seen",
        "_limits",
        "_missed_pongs",
        "_out",
        "_out_size",
        "_ping_at",
        "_ping_sent",
        "_reader",
        "_server",
        "_timer_slot",
        "_write_paused",
        "dropped",
        "ready_state",
        "transport",
    )

    def __init__(self, server: Server) -> None:
        self._server = server
        self.transport: asyncio.Transport | None = None
        self.ready_state = _CONNECTING
        self._reader: Any = None
        self._head = b""
        self._out: list[bytes] = []
        self._out_size = 0
        self._corked = False
        self._write_paused = False
        self._close_sent = False
        self._close_code = 1006
        self._close_reason = ""
        self._limits = _DEFAULT_LIMITS
        self._timer_slot = -1
        self._deadline = 0.0
        self._last_seen = 0.0
        self._last_active = 0.0  # last message or ping (inactivity_timeout)
        self._ping_at = 0.0  # when the next heartbeat ping is due
        self._ping_sent = 0.0  # when the unanswered ping went out; 0.0: none outstanding
        self._missed_pongs = 0
        self._deflate: Any = None  # the negotiated permessage-deflate codec, if any
        self.dropped = 0

    # ----------------------------------------------------------------- hooks (app layer)

    def _handle_request(self, request: Request) -> None:
        """Decide on the upgrade: call :meth:`_accept` or :meth:`_refuse`, now or later."""
        self._refuse(404, "Not Found")

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
        now = server.loop.time()
        self._deadline = now + server.handshake_timeout
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
            return
        if self.ready_state is _CONNECTING:
            self._receive_head(data)

    def eof_received(self) -> bool | None:
        return None  # close the transport: a half-closed WebSocket is of no use

    def connection_lost(self, exc: Exception | None) -> None:
        server = self._server
        server.connections.discard(self)
        server.wheel.cancel(self)
        was = self.ready_state
        self.ready_state = _CLOSED
        self._reader = None
        self._out.clear()
        self._out_size = 0
        if was is not _CONNECTING:
            self._handle_closed(self._close_code, self._close_reason)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.ready_state is _OPEN:
            self._handle_drain()

    # ----------------------------------------------------------------- handshake

    def _receive_head(self, data: bytes) -> None:
        head = self._head + data if self._head else data
        end = head.find(b"\r\n\r\n")
        limit = self._server.max_header_size
        if end < 0:
            if len(head) > limit:
                self._refuse(431, "Request Header Fields Too Large")
            else:
                self._head = head
            return
        if end > limit:
            self._refuse(431, "Request Header Fields Too Large")
            return
        self._head = head[end + 4 :]  # bytes sent ahead of the 101: fed once open
        try:
            request = parse_request(head[:end])
        except HandshakeError as exc:
            self._refuse(exc.status, exc.reason, exc.headers)
            return
        self._handle_request(request)

    def _accept(
        self,
        key: str,
        headers: list[tuple[str, str]] | None,
        limits: Limits,
        inflater: Any = None,
    ) -> None:
        """Answer 101 and start reading frames; the ``_handle_open`` hook runs before any."""
        transport = self.transport
        if self.ready_state is not _CONNECTING or transport is None or transport.is_closing():
            return
        self._limits = limits
        transport.write(build_accept(key, headers))
        transport.set_write_buffer_limits(limits.write_high_water, limits.write_low_water)
        self.ready_state = _OPEN
        self._deflate = inflater
        self._reader = FrameReader(limits.max_message_size, inflater)
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

    def _refuse(
        self, status: int, reason: str = "", headers: list[tuple[str, str]] | None = None
    ) -> None:
        """Answer an HTTP error and close: no upgrade happens."""
        transport = self.transport
        self._head = b""
        if self.ready_state is not _CONNECTING or transport is None or transport.is_closing():
            return
        self.ready_state = _CLOSED
        transport.write(build_refusal(status, reason, headers))
        transport.close()

    # ----------------------------------------------------------------- frames

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
                elif kind == OP_CLOSE:
                    self._receive_close(value[0], value[1])
                elif kind == EV_ERROR:
                    self._handle_protocol_error(value)
                    self._fail(value.code)
        finally:
            self._corked = False
            self._flush()

    def _receive_close(self, code: int, reason: str) -> None:
        # RFC 6455 5.5.1 and 7.1.1: answer the close (echoing its code), then the server closes TCP.
        self._close_code = code
        self._close_reason = reason
        transport = self.transport
        if not self._close_sent:
            self._close_sent = True
            self.ready_state = _CLOSING
            self._out.append(build_close(code if code != 1005 else 1005, ""))
        self._flush()
        if transport is not None:
            transport.close()

    def _fail(self, code: int) -> None:
        """Fail the connection (RFC 6455 7.1.7): send a close, then read only the peer's close."""
        if self._close_sent or self.transport is None:
            if self.transport is not None:
                self.transport.close()
            return
        reason = {1007: "Invalid payload data", 1009: "Message too big"}.get(code, "Protocol error")
        self._start_close(code, reason)
        if self._reader is not None and self._reader.peer_closed:
            # The bad frame was the peer's close: the handshake is over on its side.
            self._flush()
            if self.transport is not None:
                self.transport.close()
            return
        # The failed reader accepts nothing more; a fresh one finds the peer's close frame.
        self._reader = FrameReader(self._limits.max_message_size, None)

    def _start_close(self, code: int, reason: str) -> None:
        self._close_sent = True
        self.ready_state = _CLOSING
        frame = build_close(code, reason)
        if self._corked or self._out:
            self._out.append(frame)
            if not self._corked:
                self._flush()
        elif self.transport is not None:
            self.transport.write(frame)
        now = self._server.loop.time()
        self._deadline = now + self._limits.close_timeout
        self._server.wheel.schedule(self, self._deadline)

    # ----------------------------------------------------------------- writes

    def _flush(self) -> None:
        out = self._out
        if out:
            transport = self.transport
            if transport is not None and not transport.is_closing():
                transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
            self._out_size = 0

    def _write(self, frame: bytes) -> int:
        """Write (or cork) one frame; Bun's status: bytes, -1 under backpressure, 0 dropped."""
        if self.ready_state is not _OPEN:
            return 0
        if not (self._write_paused or self._corked or self._out):
            self.transport.write(frame)  # type: ignore[union-attr]
            # The transport calls pause_writing() inside write() when this frame passed the
            # high watermark: then this send is "queued under backpressure".
            return -1 if self._write_paused else len(frame)
        if self._past_limit(len(frame)):
            return 0
        if self._corked or self._out:  # behind queued frames: keep the order
            self._out.append(frame)
            self._out_size += len(frame)
        else:
            self.transport.write(frame)  # type: ignore[union-attr]
        return -1 if self._write_paused else len(frame)

    def _write_later(self, frame: bytes) -> bool:
        """Queue a frame shared with other connections; every queue leaves once per loop tick.

        Returns False when the frame was dropped (closing, or past the backpressure limit).
        """
        if not self.accepts(len(frame)):
            return False
        out = self._out
        if not out and not self._corked:
            self._server.flush_later(self)
        out.append(frame)
        self._out_size += len(frame)
        return True

    def accepts(self, size: int) -> bool:
        """Whether a frame of about ``size`` bytes would be queued now (a refusal is counted).

        Callers that must not do work for a dropped frame (advancing a compressor's context)
        ask first, with the uncompressed size.
        """
        return self.ready_state is _OPEN and not self._past_limit(size)

    def _past_limit(self, size: int) -> bool:
        # Cheap test first: the kernel side only matters once writing is paused, and the
        # queue of this tick only once it nears the limit.
        if self._write_paused or self._out_size + size > self._limits.backpressure_limit:
            return self._over_limit(size)
        return False

    def _own_compressed(self, opcode: int, payload: bytes) -> bytes | None:
        """A frame compressed by this connection's own (context-keeping) compressor, or None
        when it would be dropped: the compressor never remembers a message never sent."""
        if not self.accepts(deflate_bound(len(payload))):
            return None
        return build_frame(opcode, self._deflate.compress(payload), True)

    def _over_limit(self, size: int) -> bool:
        """Past ``backpressure_limit``: count the drop, or close with 1008 when asked."""
        transport = self.transport
        limits = self._limits
        if transport is None:
            return True
        if transport.get_write_buffer_size() + self._out_size + size <= limits.backpressure_limit:
            return False
        self.dropped += 1
        self._server.dropped += 1
        if limits.close_on_backpressure_limit:
            self._start_close(1008, "Backpressure limit exceeded")
        return True

    @property
    def buffered_amount(self) -> int:
        """Bytes accepted by ``send`` and not yet handed to the kernel."""
        transport = self.transport
        size = self._out_size
        if transport is not None and not transport.is_closing():
            size += transport.get_write_buffer_size()
        return size

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

    def _on_timer(self, now: float) -> float:
        state = self.ready_state
        transport = self.transport
        if transport is None or state is _CLOSED:
            return 0.0
        if state is _CONNECTING:
            if now >= self._deadline:
                self._refuse(408, "Request Timeout")
                return 0.0
            return self._deadline
        if state is _CLOSING:
            if now >= self._deadline:
                transport.abort()  # the peer never answered our close
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

    # ----------------------------------------------------------------- closing (public)

    def _close(self, code: int, reason: str) -> None:
        if self.ready_state is _CONNECTING:
            self._refuse(503 if code == 1001 else 500, "Closing")
            return
        if self.ready_state is not _OPEN:
            return
        self._start_close(code, reason)

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

"""The transport-neutral part of one connection: state, limits, deadlines, output accounting.

:class:`Connection` knows nothing of routes or handlers, nor of how bytes reach the peer.  Two
transports stand on it: :class:`~harpy.server.framed.FramedConnection` (the native server: an
``asyncio.Protocol`` that parses the upgrade and frames messages) and the ASGI adapter's
connection (which turns messages into ASGI events).  Neither overrides the other's output.

The layer above talks to a connection at the message level and hears from it through two
callbacks given to :meth:`Connection.bind`:

* ``on_message(message)``: a whole text (``str``) or binary (``bytes``) message arrived;
* ``on_event(kind, value)``: one of the ``EV_*`` events below (request, open, ping, pong,
  drain, protocol error, transport error, closed).

It answers with :meth:`~Connection.accept` or :meth:`~Connection.refuse`, then
:meth:`~Connection.send_message`, :meth:`~Connection.send_control`,
:meth:`~Connection.close` and :meth:`~Connection.abort`; fan-out hands one
:class:`~harpy.protocol.Message` to many connections with :meth:`~Connection.queue_message`.

**What a transport may use** (the subclass interface, checked by ``tests/unit/test_seams.py``):
it implements the abstract methods of :data:`TRANSPORT_INTERFACE` and may call the protected
members listed in :data:`SUBCLASS_INTERFACE`; nothing else of this class is its to touch.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..exceptions import InvalidState
from ..protocol import OP_PING, Message, Request

if TYPE_CHECKING:
    from .listener import Host

__all__ = [
    "BUDGET_POLICIES",
    "EV_CLOSED",
    "EV_DRAIN",
    "EV_OPEN",
    "EV_PING",
    "EV_PONG",
    "EV_PROTOCOL_ERROR",
    "EV_REFUSED",
    "EV_REQUEST",
    "EV_RESPONDED",
    "EV_TRANSPORT_ERROR",
    "LINGER_BYTES",
    "LINGER_TIME",
    "SUBCLASS_INTERFACE",
    "TRANSPORT_INTERFACE",
    "Connection",
    "Limits",
    "ReadyState",
]

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

#: The events of ``on_event(kind, value)``, with their value.
EV_REQUEST = 0  #: the upgrade request (:class:`~harpy.protocol.Request`): accept or refuse it
EV_OPEN = 1  #: None: the connection is open (the 101 is on its way)
EV_PING = 2  #: the ping's payload (the pong is already queued)
EV_PONG = 3  #: the pong's payload
EV_DRAIN = 4  #: None: the output fell below the low watermark after passing the high one
EV_PROTOCOL_ERROR = 5  #: the :class:`~harpy.ProtocolError`: the connection is failing
EV_TRANSPORT_ERROR = 6  #: the ``OSError`` (or other) that broke the transport
EV_CLOSED = 7  #: ``(code, reason)``: the peer's close, or ``(1006, "")`` without one
EV_REFUSED = 8  #: the HTTP status of a refused upgrade (:meth:`Connection.refuse`)
EV_RESPONDED = 9  #: the HTTP status of a plain answer (:meth:`Connection.respond`)

OnMessage = Callable[[Any], None]
OnEvent = Callable[[int, Any], None]


class ReadyState(enum.IntEnum):
    """As the browser's and Bun's ``readyState``; changed by :meth:`Connection._enter` only."""

    CONNECTING = 0
    """The upgrade is under way."""
    OPEN = 1
    """Messages flow."""
    CLOSING = 2
    """A close frame was sent or received."""
    CLOSED = 3
    """The connection is over."""


_CONNECTING = ReadyState.CONNECTING
_OPEN = ReadyState.OPEN
_CLOSING = ReadyState.CLOSING
_CLOSED = ReadyState.CLOSED

#: The steps allowed from each state (CLOSED to CLOSED: closing twice is no step).
_STEPS: tuple[frozenset[ReadyState], ...] = (
    frozenset({_OPEN, _CLOSED}),  # CONNECTING: upgraded, or refused / gone
    frozenset({_CLOSING, _CLOSED}),  # OPEN
    frozenset({_CLOSED}),  # CLOSING
    frozenset({_CLOSED}),  # CLOSED
)


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


def _earliest(a: float, b: float) -> float:
    return b if a <= 0 or (0 < b < a) else a


def _ignore_message(message: Any) -> None:
    """No listener bound yet."""


def _ignore_event(kind: int, value: Any) -> None:
    """No listener bound yet."""


#: What a transport implements (each raises ``NotImplementedError`` here).
TRANSPORT_INTERFACE = (
    "check_upgrade",
    "accept",
    "refuse",
    "respond",
    "send_message",
    "send_control",
    "queue_message",
    "abort",
    "pause_reading",
    "resume_reading",
    "remote_address",
    "tls",
    "_transmit",
    "_transmit_all",
    "_transport_buffer",
    "_start_close",
)

#: The protected members of :class:`Connection` a transport may use or extend; a test checks
#: that the transports in ``src/`` use no other.
SUBCLASS_INTERFACE = (
    # state
    "_enter",
    "_started",
    "_open",
    "_ended",
    "_enter_closing",
    "_limits",
    "_server",
    "_deadline",
    # events to the layer above
    "_on_message",
    "_on_event",
    "_last_seen",
    "_last_active",
    "_pong_received",
    # output accounting
    "_write",
    "_enqueue",
    "_flush",
    "_corked",
    "_out",
    "_out_size",
    "_write_paused",
    "_over_limit",
    "_over_budget",
    "_drop",
    "_drop_at_limit",
    "_drop_closing",
    "_past_limit",
    "_give_up",
    # the transport's own (TRANSPORT_INTERFACE)
    "_transmit",
    "_transmit_all",
    "_transport_buffer",
    "_start_close",
)


class Connection:
    """One client connection, from the first request byte to the closed transport."""

    answers_http = False
    """Whether this transport answers plain HTTP requests itself (the native one does; under
    ASGI the ASGI server does)."""

    __slots__ = (
        "_corked",
        "_deadline",
        "_held",
        "_last_active",
        "_last_seen",
        "_limits",
        "_missed_pongs",
        "_on_event",
        "_on_message",
        "_out",
        "_out_size",
        "_ping_at",
        "_ping_sent",
        "_server",
        "_write_paused",
        "dropped",
        "messages_out",
        "ready_state",
        "request",
        "timer_slot",
    )

    def __init__(self, server: Host) -> None:
        self._server = server
        self.ready_state = _CONNECTING
        """The connection's state (:class:`~harpy.ReadyState`), changed by :meth:`_enter`
        only."""
        self.request: Request | None = None
        """The upgrade request, once its head was read."""
        self.dropped = 0
        """Messages dropped while this connection was open: past its backpressure limit, or past
        the server's output budget (those sent once it was closing count on the server)."""
        self.messages_out = 0
        """Messages sent or queued to the peer (not the dropped ones)."""
        self.timer_slot = -1
        """The timer wheel's slot for this connection (the wheel's to change)."""
        self._on_message: OnMessage = _ignore_message
        self._on_event: OnEvent = _ignore_event
        self._out: list[Any] = []  # items the transport writes (frames, or ASGI messages)
        self._out_size = 0
        self._held = 0  # the transport's buffer, as last sampled into the server's total
        self._corked = False
        self._write_paused = False
        self._limits = _DEFAULT_LIMITS
        self._deadline = 0.0
        self._last_seen = 0.0
        self._last_active = 0.0  # last message or ping (inactivity_timeout)
        self._ping_at = 0.0  # when the next heartbeat ping is due
        self._ping_sent = 0.0  # when the unanswered ping went out; 0.0: none outstanding
        self._missed_pongs = 0

    def bind(self, on_message: OnMessage, on_event: OnEvent) -> None:
        """Give the connection its listener: ``on_message(message)`` for each whole message,
        ``on_event(kind, value)`` for the ``EV_*`` events."""
        self._on_message = on_message
        self._on_event = on_event

    # ----------------------------------------------------------------- the state machine

    def _enter(self, state: ReadyState) -> None:
        """The one place ``ready_state`` changes; an illegal step raises, naming both states."""
        was = self.ready_state
        if state is not was and state not in _STEPS[was]:
            raise InvalidState(f"connection cannot go from {was.name} to {state.name}")
        self.ready_state = state

    def _started(self) -> None:
        """The transport is there: register, and bound the handshake in time."""
        server = self._server
        server.connections.add(self)
        self._deadline = server.loop.time() + server.handshake_timeout
        server.wheel.schedule(self, self._deadline)

    def _open(self, limits: Limits) -> None:
        """CONNECTING -> OPEN: start the deadlines, then tell the layer above."""
        self._limits = limits
        self._enter(_OPEN)
        server = self._server
        self._last_seen = self._last_active = now = server.loop.time()
        self._deadline = 0.0
        if limits.ping_interval > 0:
            self._ping_at = now + limits.ping_interval
        server.wheel.schedule(self, self._next_deadline(now))
        self._on_event(EV_OPEN, None)

    def _enter_closing(self) -> None:
        """OPEN -> CLOSING: our close is out; the peer has ``close_timeout`` to answer."""
        self._enter(_CLOSING)
        self._deadline = self._server.loop.time() + self._limits.close_timeout
        self._server.wheel.schedule(self, self._deadline)

    def _ended(self, code: int, reason: str, exc: BaseException | None = None) -> None:
        """The transport is gone: unregister, give back what it held, tell the layer above
        (the transport error first, then the close; also for a connection never upgraded)."""
        server = self._server
        server.connections.discard(self)
        server.wheel.cancel(self)
        self._enter(_CLOSED)
        held = self._held + self._out_size
        self._out.clear()
        self._out_size = 0
        self._held = 0
        server.released(held)
        on_event = self._on_event
        # Nothing comes after this: let go of the listener (no cycle left to collect).
        self._on_message = _ignore_message
        self._on_event = _ignore_event
        if exc is not None:
            on_event(EV_TRANSPORT_ERROR, exc)
        on_event(EV_CLOSED, (code, reason))

    @property
    def last_seen(self) -> float:
        """Loop time of the last bytes from the peer (of the upgrade, before it opened)."""
        return self._last_seen

    @property
    def server_closing(self) -> bool:
        """Whether the server has begun shutting down."""
        return self._server.closing

    @property
    def loop(self) -> Any:
        """The event loop this connection runs on."""
        return self._server.loop

    def _pong_received(self, data: bytes) -> None:
        """A pong: the heartbeat's outstanding ping is answered."""
        self._ping_sent = 0.0
        self._missed_pongs = 0
        self._on_event(EV_PONG, data)

    # ----------------------------------------------------------------- the transport's part

    def check_upgrade(self) -> None:
        """Check that the request asks for a WebSocket upgrade; raise
        :class:`~harpy.HandshakeError` with the status to refuse with otherwise."""
        raise NotImplementedError

    def accept(
        self, headers: list[tuple[str, str]] | None, limits: Limits, codec: Any = None
    ) -> None:
        """Answer 101 with ``headers``, enforce ``limits``, frame with ``codec`` (a
        permessage-deflate codec, or None); ``EV_OPEN`` follows."""
        raise NotImplementedError

    def refuse(
        self, status: int, reason: str = "", headers: list[tuple[str, str]] | None = None
    ) -> None:
        """Answer an HTTP error and close: no upgrade happens."""
        raise NotImplementedError

    def respond(
        self,
        status: int,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        *,
        content_length: int | None = None,
    ) -> None:
        """Answer a plain HTTP request (health, static files, metrics) and close."""
        raise NotImplementedError

    def send_message(self, opcode: int, payload: bytes, compress: bool | None = None) -> int:
        """Send one whole message; Bun's status: bytes written, -1 under backpressure, 0
        dropped (closing, or past the backpressure limit)."""
        raise NotImplementedError

    def send_control(self, opcode: int, payload: bytes) -> int:
        """Send a ping or a pong (``payload`` of at most 125 bytes); status as ``send_message``."""
        raise NotImplementedError

    def queue_message(self, message: Message) -> bool:
        """Queue a message shared with other connections; every queue leaves once per loop
        tick.  False when it was dropped (closing, or past a limit)."""
        raise NotImplementedError

    def abort(self) -> None:
        """Drop the connection at once, without a closing handshake."""
        raise NotImplementedError

    def pause_reading(self) -> None:
        """Stop reading from the peer (read-side backpressure, or an upgrade awaiting a hook)."""
        raise NotImplementedError

    def resume_reading(self) -> None:
        raise NotImplementedError

    @property
    def remote_address(self) -> str:
        """The peer's IP address (or socket path)."""
        raise NotImplementedError

    @property
    def tls(self) -> bool:
        """Whether the connection is encrypted (``wss``)."""
        raise NotImplementedError

    @property
    def host(self) -> str | None:
        """The host (and port) the client asked for: the upgrade request's ``Host`` header
        (a transport may know better: what a trusted proxy forwarded)."""
        request = self.request
        return request.get("host") if request is not None else None

    def _transmit(self, item: Any) -> None:
        """Hand one output item to the transport now."""
        raise NotImplementedError

    def _transmit_all(self, items: list[Any]) -> None:
        """Hand the items queued this tick to the transport, in one write where it can."""
        raise NotImplementedError

    def _transport_buffer(self) -> int:
        """Bytes handed to the transport and not yet to the peer (or its kernel)."""
        raise NotImplementedError

    def _start_close(self, code: int, reason: str) -> None:
        """Send our close (code, reason) and enter CLOSING, if open."""
        raise NotImplementedError

    def _give_up(self) -> None:
        """``close()`` on a connection already closing or refused: the transport may stop
        waiting for the peer (the native one ends its lingering close)."""

    # ----------------------------------------------------------------- flow

    def pause_writing(self) -> None:
        """The transport's buffer passed the high watermark."""
        self._write_paused = True
        self._recount()

    def resume_writing(self) -> None:
        """The transport's buffer fell below the low watermark: ``EV_DRAIN``."""
        self._write_paused = False
        self._recount()
        if self.ready_state is _OPEN:
            self._on_event(EV_DRAIN, None)

    # ----------------------------------------------------------------- output accounting

    def _write(self, item: Any, size: int) -> int:
        """Write (or queue behind what is queued) one item of ``size`` bytes; the status of
        ``send_message``."""
        if self.ready_state is not _OPEN:
            return self._drop_closing()
        if not (self._write_paused or self._corked or self._out):
            self._transmit(item)
            return -1 if self._write_paused else size
        if self._past_limit(size):
            return 0
        if self._corked or self._out:  # behind queued items: keep the order
            self._out.append(item)
            self._out_size += size
        else:
            self._transmit(item)
            self._held += size  # in the transport until the next sample
        self._server.queued += size
        return -1 if self._write_paused else size

    def _enqueue(self, item: Any, size: int) -> bool:
        """Queue an item of a message shared with other connections (fan-out): it leaves at
        the end of the loop tick, with every other one queued meanwhile.  False: dropped."""
        if self.ready_state is not _OPEN:
            self._drop_closing()
            return False
        if self._past_limit(size):
            return False
        server = self._server
        out = self._out
        if not out and not self._corked:
            server.flush_later(self)
        out.append(item)
        self._out_size += size
        self.messages_out += 1
        server.queued += size
        return True

    def _past_limit(self, size: int) -> bool:
        # Cheap test first: the transport side only matters once writing is paused, and the
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
        held = self._transport_buffer()
        self._server.queued += held - self._held
        self._held = held

    def _over_limit(self, size: int) -> bool:
        """Past ``backpressure_limit``: count the drop, or close with 1008 when asked."""
        if self._transport_buffer() + self._out_size + size <= self._limits.backpressure_limit:
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
        """Write what was queued this tick, unless a batch is corked (its end writes
        everything at once)."""
        if not self._corked:
            self._flush()

    def corked(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)``; every send it makes leaves in one write."""
        if self._corked:
            return fn(*args)
        self._corked = True
        try:
            return fn(*args)
        finally:
            self._corked = False
            self._flush()

    def _flush(self) -> None:
        out = self._out
        if out:
            self._transmit_all(out)
            out.clear()
            size = self._out_size
            self._out_size = 0
            server = self._server
            if self._write_paused or server.queued > server.sample_above:
                # Sample what the transport did not pass on into the server's total.
                held = self._transport_buffer()
                server.queued += held - self._held - size
                self._held = held
            else:
                self._held += size  # taken as still in the transport: the total errs high

    @property
    def buffered_amount(self) -> int:
        """Bytes accepted by ``send`` and not yet handed to the peer's kernel."""
        return self._out_size + self._transport_buffer()

    # ----------------------------------------------------------------- closing

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake; before the upgrade, refuse it (503 on 1001, else 500)."""
        state = self.ready_state
        if state is _CONNECTING:
            self.refuse(503 if code == 1001 else 500, "Closing")
        elif state is _OPEN:
            self._start_close(code, reason)
        else:
            self._give_up()

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
        self.send_control(OP_PING, b"")

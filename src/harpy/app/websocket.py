r"""The connection object handed to every handler: ``harpy.WebSocket[T]``.

``WebSocket`` shows users their API and nothing else.  Under it is a transport-neutral
:class:`~harpy.server.Connection` (the native server's framed one, or the ASGI adapter's), to
which it speaks at the message level: it hears the connection's events through the callbacks
it :meth:`~harpy.server.Connection.bind`\ s, decides the upgrade (``accept`` or ``refuse``),
runs the route's handlers, and sends messages.

Its own state is explicit: :class:`Admission` (may the route's handlers run, is it a member of
the app's connections) and :class:`Dispatch` (is an async handler running, is reading paused).
Each changes in one method, ``_admit_as`` and ``_dispatch_as``.
"""

from __future__ import annotations

import enum
import inspect
import itertools
import json
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import parse_qsl

from ..auth import Deny, UpgradeRequest, interpret
from ..exceptions import (
    ConfigurationError,
    HandshakeError,
    InvalidMessage,
    InvalidState,
)
from ..protocol import (
    OP_BINARY,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Headers,
    Request,
    is_valid_close_code,
    parse_cookies,
)
from ..protocol.deflate import negotiate
from ..protocol.handshake import ORIGIN_REFUSED, origin_allowed
from ..protocol.message import encode_data
from ..pubsub import GroupKind
from ..server import (
    EV_CLOSED,
    EV_DRAIN,
    EV_OPEN,
    EV_PING,
    EV_PONG,
    EV_PROTOCOL_ERROR,
    EV_REFUSED,
    EV_REQUEST,
    EV_RESPONDED,
    EV_TRANSPORT_ERROR,
    Connection,
    ReadyState,
)
from .access import access_logger

if TYPE_CHECKING:
    from .app import App, Route

__all__ = ["Admission", "Dispatch", "WebSocket", "auto_broadcasting"]

logger = logging.getLogger("harpy")
_INFO = logging.INFO

T = TypeVar("T")

_ids = itertools.count(1)
_ID_PREFIX = os.urandom(4).hex()
_OPEN = ReadyState.OPEN


class Admission(enum.IntEnum):
    """Where a connection stands with its route; the transitions are in ``_ADMISSION_STEPS``.

    (An ``IntEnum``: its members hash as ints, in C, on the per-connection path.)
    """

    PENDING = 0
    """The upgrade is being decided (routing, limits, origin, ``authenticate``)."""
    AUTHENTICATING = 1
    """Upgraded, but the first message must authenticate before ``open`` runs."""
    MEMBER = 2
    """``open`` ran: registered with the app, reached by broadcasts, handlers run."""
    DENIED = 3
    """Refused by authentication after the 101: closing, and no handler runs."""
    LEFT = 4
    """A member that closed: unregistered, out of every topic and room; the handlers already queued,
    then ``close``, still run.
    """


#: The steps allowed from each state, indexed by the state's value.
_ADMISSION_STEPS: tuple[frozenset[Admission], ...] = (
    frozenset({Admission.AUTHENTICATING, Admission.MEMBER, Admission.DENIED}),  # PENDING
    frozenset({Admission.MEMBER, Admission.DENIED}),  # AUTHENTICATING
    frozenset({Admission.LEFT}),  # MEMBER
    frozenset(),  # DENIED
    frozenset(),  # LEFT
)


class Dispatch(enum.IntEnum):
    """How the connection's handlers run; IDLE is 0, so ``if dispatch:`` means "busy"."""

    IDLE = 0
    """No async handler is running: the next event's handler runs at once."""
    RUNNING = 1
    """An async handler is running: later events wait their turn, in order."""
    PAUSED = 2
    """As RUNNING, with ``max_pending_messages`` waiting: reading is paused until they drain."""


_MEMBER = Admission.MEMBER
_IDLE = Dispatch.IDLE


class WebSocket(Generic[T]):
    """One client connection on a route.

    ``data`` is the per-connection object (typed by the route's ``data=`` class), ``params`` the
    path parameters, and ``send`` returns a status: bytes written, -1 when queued under
    backpressure, 0 when dropped because the connection is closing or closed.
    """

    __slots__ = (
        "_admission",
        "_app",
        "_conn",
        "_data",
        "_dispatch",
        "_gated",
        "_holds_place",
        "_id",
        "_in_groups",
        "_messages_in",
        "_more",
        "_on_message",
        "_opened_at",
        "_params",
        "_queue",
        "_route",
        "auth",
        "subprotocol",
    )

    def __init__(self, app: App, conn: Connection) -> None:
        self._app = app
        self._conn = conn
        self._route: Route | None = None
        self._admission = Admission.PENDING
        self._dispatch = _IDLE
        # Derived from the two states above by _admit_as, for the per-message path:
        self._on_message: Callable[..., Any] | None = None  # the message handler, as dispatched
        self._gated = False  # messages go through the rate limit or first-message auth first
        self._id = ""
        self._holds_place = False  # a place under max_connections / _per_ip, until closed
        self._in_groups = False  # it joined a topic or a room: closing takes it out of them
        self._queue: deque[tuple[Callable[..., Any], tuple[Any, ...]]] | None = None
        self._opened_at = 0.0
        self._messages_in = 0
        self._more: _Seldom | None = None  # what few connections need, made on first need
        # Made on first use when the route captured none (an idle connection holds no empty
        # dict): see ``params``.
        self._params: dict[str, str] | None = None
        # The route's data=, or the default dict made on first use (_DEFAULT_DATA until then):
        # see ``data``.
        self._data: Any = None
        self.auth: Any = None
        """What authentication kept: the ``authenticate`` hook's result, the JWT claims, the
        session, or the first message verifier's result."""
        self.subprotocol: str | None = None
        """The subprotocol agreed in the upgrade, or None."""
        conn.bind(self._handle_message, self._handle_event)

    @property
    def data(self) -> T:
        """The per-connection object: the route's ``data=`` factory makes it at the upgrade;
        without one, a dict of ``url`` and ``cookies``, made on first use."""
        data = self._data
        if data is _DEFAULT_DATA:
            route = self._route
            assert route is not None
            data = self._data = route.make_data(self)
        return data  # type: ignore[no-any-return]

    @data.setter
    def data(self, value: T) -> None:
        self._data = value

    @property
    def params(self) -> dict[str, str]:
        """The route's path parameters (``/room/:name`` gives ``{"name": ...}``)."""
        params = self._params
        if params is None:
            params = self._params = {}
        return params

    @params.setter
    def params(self, value: dict[str, str]) -> None:
        self._params = value

    # ----------------------------------------------------------------- request facts

    @property
    def id(self) -> str:
        """A process-unique id, made on first use."""
        if not self._id:
            self._id = f"{_ID_PREFIX}-{next(_ids)}"
        return self._id

    @property
    def route(self) -> str:
        """The pattern of the route this connection matched."""
        return self._route.pattern if self._route is not None else ""

    @property
    def admission(self) -> Admission:
        """Where it stands with its route: PENDING, AUTHENTICATING, MEMBER, DENIED or LEFT."""
        return self._admission

    @property
    def dispatch(self) -> Dispatch:
        """How the handlers run: IDLE, RUNNING (an async handler), PAUSED (reading paused
        until the queued events drain)."""
        return self._dispatch

    @property
    def pending(self) -> int:
        """Events waiting for a running async handler to finish."""
        return len(self._queue) if self._queue else 0

    @property
    def server_closing(self) -> bool:
        """Whether the server has begun shutting down (health checks answer 503)."""
        return self._conn.server_closing

    @property
    def app(self) -> App:
        """The application this connection belongs to."""
        return self._app

    @property
    def ready_state(self) -> ReadyState:
        """CONNECTING, OPEN, CLOSING or CLOSED (as the browser's and Bun's ``readyState``)."""
        return self._conn.ready_state

    @property
    def remote_address(self) -> str:
        """The client's IP address (or socket path); behind a trusted proxy, the client's
        that it forwarded (``proxy_headers``, ``proxy_protocol``)."""
        return self._conn.remote_address

    @property
    def tls(self) -> bool:
        """Whether the client's connection is encrypted (``wss``): to this server, or to a
        trusted proxy that said so."""
        return self._conn.tls

    @property
    def buffered_amount(self) -> int:
        """Bytes accepted by ``send`` and not yet handed to the kernel."""
        return self._conn.buffered_amount

    @property
    def messages_in(self) -> int:
        """Messages received from the peer."""
        return self._messages_in

    @property
    def messages_out(self) -> int:
        """Messages sent or queued to the peer (not the dropped ones)."""
        return self._conn.messages_out

    @property
    def dropped(self) -> int:
        """Messages dropped while this connection was open: past its backpressure limit, or
        past the server's output budget."""
        return self._conn.dropped

    @property
    def bytes_in(self) -> int:
        """Bytes read from the socket (frames and the upgrade); counted with ``metrics`` on,
        else 0."""
        return int(getattr(self._conn, "bytes_in", 0))

    @property
    def bytes_out(self) -> int:
        """Payload bytes sent or queued; counted with ``metrics`` on, else 0."""
        return int(getattr(self._conn, "bytes_out", 0))

    @property
    def path(self) -> str:
        """The request path (still percent-encoded), without the query."""
        request = self._conn.request
        return request.path if request is not None else ""

    @property
    def query_string(self) -> str:
        """The raw query string, without the ``?``."""
        request = self._conn.request
        return request.query_string if request is not None else ""

    @property
    def query(self) -> dict[str, str]:
        """Query parameters; the first value wins when a name repeats."""
        out: dict[str, str] = {}
        for key, value in parse_qsl(self.query_string, keep_blank_values=True):
            out.setdefault(key, value)
        return out

    @property
    def headers(self) -> Headers:
        """The upgrade request's headers (once the upgrade is over, read from the request's raw
        bytes on each call: keep the result to read it often)."""
        request = self._conn.request
        return Headers(request.headers if request is not None else [])

    @property
    def cookies(self) -> dict[str, str]:
        """The upgrade request's cookies."""
        more = self._seldom()
        if more.cookies is None:
            request = self._conn.request
            header = "; ".join(request.get_all("cookie")) if request else ""
            more.cookies = parse_cookies(header)
        return more.cookies

    @property
    def url(self) -> str:
        """``ws://host/path?query`` (``wss`` over TLS), as the client asked for it (behind a
        trusted proxy: the scheme and host it forwarded)."""
        conn = self._conn
        request = conn.request
        host = conn.host or "localhost"
        scheme = "wss" if conn.tls else "ws"
        target = request.target if request else "/"
        return f"{scheme}://{host}{target}"

    # ----------------------------------------------------------------- sending

    def send(self, data: Any, compress: bool | None = None) -> int:
        """Send text (``str``), binary data (bytes-like), or anything else as JSON text;
        returns bytes written, -1 queued under backpressure, 0 dropped.

        It takes what ``publish`` and ``broadcast`` take.  With permessage-deflate negotiated,
        ``compress=None`` compresses messages of at least the route's ``threshold`` bytes,
        True always, False never.
        """
        if type(data) is str:
            return self._conn.send_message(OP_TEXT, data.encode("utf-8"), compress)
        if type(data) is bytes:
            return self._conn.send_message(OP_BINARY, data, compress)
        opcode, payload = encode_data(data, self._app.encode_json)
        return self._conn.send_message(opcode, payload, compress)

    def send_text(self, data: str, compress: bool | None = None) -> int:
        """Send a text message; the status of ``send``."""
        if not isinstance(data, str):
            raise TypeError(f"send_text() takes str, not {type(data).__name__}")
        return self._conn.send_message(OP_TEXT, data.encode("utf-8"), compress)

    def send_binary(
        self, data: bytes | bytearray | memoryview, compress: bool | None = None
    ) -> int:
        """Send a binary message; the status of ``send``."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"send_binary() takes bytes-like data, not {type(data).__name__}")
        return self._conn.send_message(OP_BINARY, bytes(data), compress)

    def send_json(self, obj: Any, compress: bool | None = None) -> int:
        """Serialise ``obj`` as JSON (the app's ``json_dumps``) and send it as text (also for a
        ``str``: a JSON string)."""
        return self._conn.send_message(OP_TEXT, self._app.encode_json(obj), compress)

    def ping(self, data: bytes | str = b"") -> int:
        """Send a ping (at most 125 bytes); the status of ``send``."""
        return self._conn.send_control(OP_PING, _control_payload(data))

    def pong(self, data: bytes | str = b"") -> int:
        """Send an unsolicited pong (at most 125 bytes); the status of ``send``."""
        return self._conn.send_control(OP_PONG, _control_payload(data))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake; ``close`` runs once the peer answered (or timed out)."""
        if code != 1000 and not is_valid_close_code(code):
            raise ConfigurationError(
                f"close code {code} may not be sent (use 1000-1003, 1007-1014 or 3000-4999)"
            )
        if len(reason.encode("utf-8")) > 123:
            raise ConfigurationError("close reason is longer than 123 bytes of UTF-8")
        self._conn.close(code, reason)

    def terminate(self) -> None:
        """Drop the TCP connection at once, without a closing handshake."""
        self._conn.abort()

    def cork(self, fn: Callable[[WebSocket[T]], Any]) -> Any:
        """Run ``fn(ws)``; every send it makes leaves in one write."""
        return self._conn.corked(fn, self)

    # ----------------------------------------------------------------- topics (Bun)

    def subscribe(self, topic: str) -> bool:
        """Receive what is published to ``topic``; False when already subscribed."""
        self._require_open("subscribe")
        self._in_groups = True
        return self._app.hub.topics.add(self, _check_name(topic, "topic"), self._conn)

    def unsubscribe(self, topic: str) -> bool:
        """Stop receiving ``topic``; False when not subscribed."""
        return self._app.hub.topics.remove(self, topic)

    def is_subscribed(self, topic: str) -> bool:
        """Whether this connection receives ``topic`` (in a ``close`` handler: did)."""
        return self._is_in(_TOPIC, topic)

    @property
    def subscriptions(self) -> list[str]:
        """The topics this connection receives, sorted (in a ``close`` handler: received)."""
        return sorted(self._groups(_TOPIC))

    def publish(self, topic: str, data: Any, compress: bool | None = None) -> int:
        """Send ``data`` to every subscriber of ``topic`` but this connection (unless the route
        sets ``publish_to_self``); returns how many connections it reached."""
        route = self._route
        exclude = None if route is not None and route.options.publish_to_self else self
        return self._app.publish(topic, data, compress, exclude=exclude)

    def publish_text(self, topic: str, data: str, compress: bool | None = None) -> int:
        """``publish`` a text message."""
        if not isinstance(data, str):
            raise TypeError(f"publish_text() takes str, not {type(data).__name__}")
        return self.publish(topic, data, compress)

    def publish_binary(
        self, topic: str, data: bytes | bytearray | memoryview, compress: bool | None = None
    ) -> int:
        """``publish`` a binary message."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"publish_binary() takes bytes-like data, not {type(data).__name__}")
        return self.publish(topic, data, compress)

    @property
    def presence(self) -> dict[str, Any]:
        """What ``app.present(...)`` shows of this connection on every node (a small
        JSON-serialisable dict; ``{}`` by default).  Set it before joining to have it in the
        ``join`` event; setting it later updates every topic and room it is in."""
        more = self._seldom()
        if more.presence is None:
            more.presence = {}
        return more.presence

    @presence.setter
    def presence(self, info: dict[str, Any]) -> None:
        if not isinstance(info, dict):
            raise TypeError(f"ws.presence takes a dict, not {type(info).__name__}")
        try:
            json.dumps(info)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"ws.presence must be JSON-serialisable: {exc}") from None
        self._seldom().presence = info
        presence = self._app.presence
        if presence is not None and self._in_groups:
            presence.update(self.id, info)

    # ----------------------------------------------------------------- rooms (Vite plugin)

    def join(self, room: str) -> bool:
        """Join ``room``; False when already in it."""
        self._require_open("join a room")
        self._in_groups = True
        return self._app.hub.rooms.add(self, _check_name(room, "room"), self._conn)

    def leave(self, room: str) -> bool:
        """Leave ``room``; False when not in it."""
        return self._app.hub.rooms.remove(self, room)

    def in_room(self, room: str) -> bool:
        """Whether this connection is in ``room`` (in a ``close`` handler: was)."""
        return self._is_in(_ROOM, room)

    @property
    def rooms(self) -> frozenset[str]:
        """The rooms this connection is in (in a ``close`` handler: was in)."""
        return self._groups(_ROOM)

    def broadcast(
        self,
        data: Any,
        rooms: Iterable[str] | None = None,
        include_self: bool = False,
        compress: bool | None = None,
    ) -> int:
        """Send ``data`` to the members of ``rooms`` (each once), or without rooms to every
        connection of this route; the sender only with ``include_self``. Returns the count."""
        return self._app.broadcast(
            data,
            rooms=rooms,
            route=self.route if rooms is None else None,
            compress=compress,
            exclude=None if include_self else self,
        )

    def _groups(self, kind: GroupKind) -> frozenset[str]:
        """Its topics or rooms; after close, those it was in."""
        if self._admission is Admission.LEFT:
            return self._groups_at_close()[kind]
        return self._app.hub.groups(kind).of(self)

    def _is_in(self, kind: GroupKind, name: str) -> bool:
        if self._admission is Admission.LEFT:
            return name in self._groups_at_close()[kind]
        return self._app.hub.groups(kind).has(self, name)

    def _groups_at_close(self) -> dict[GroupKind, frozenset[str]]:
        more = self._more
        at_close = more.groups_at_close if more is not None else None
        return at_close if at_close is not None else _NO_GROUPS

    def _seldom(self) -> _Seldom:
        more = self._more
        if more is None:
            more = self._more = _Seldom()
        return more

    def _require_open(self, action: str) -> None:
        if self.ready_state is not _OPEN:
            state = ReadyState(self.ready_state).name
            raise InvalidState(f"cannot {action}: the connection is {state}")

    # ----------------------------------------------------------------- the two state machines

    def _admit_as(self, admission: Admission) -> None:
        """The one place the admission changes; it also sets what messages go through."""
        if admission not in _ADMISSION_STEPS[self._admission]:
            raise InvalidState(
                f"connection {self.id}: cannot go from {self._admission.name} to {admission.name}"
            )
        self._admission = admission
        route = self._route
        if admission is Admission.MEMBER:
            assert route is not None
            self._gated = route.options.rate_limit > 0
            self._on_message = route.on_message
        elif admission is Admission.AUTHENTICATING:
            self._gated = True
        elif admission is Admission.DENIED:
            self._gated = False
            self._on_message = None

    def _dispatch_as(self, dispatch: Dispatch) -> None:
        """The one place the dispatch state changes; reading pauses and resumes with it."""
        paused = Dispatch.PAUSED
        was = self._dispatch
        self._dispatch = dispatch
        if dispatch is paused and was is not paused:
            self._conn.pause_reading()
        elif was is paused and dispatch is not paused and self.ready_state is _OPEN:
            self._conn.resume_reading()

    def _handler(self, name: str) -> Callable[..., Any] | None:
        """The route's handler ``name``; none runs for a connection that never was a member."""
        if self._admission is not _MEMBER and self._admission is not Admission.LEFT:
            return None
        route = self._route
        assert route is not None
        fn: Callable[..., Any] | None = getattr(route.handlers, name)
        return fn

    # ----------------------------------------------------------------- the upgrade

    def _handle_event(self, kind: int, value: Any) -> None:
        """The connection's events but messages (those come to :meth:`_handle_message`)."""
        if kind == EV_REQUEST:
            self._handle_request(value)
        elif kind == EV_OPEN:
            self._handle_open()
        elif kind == EV_CLOSED:
            self._handle_closed(*value)
        elif kind == EV_REFUSED:
            refused = self._app.stats.refused
            refused[value] = refused.get(value, 0) + 1
            self._log_answer(value)
        elif kind == EV_RESPONDED:
            self._log_answer(value)
        elif kind == EV_TRANSPORT_ERROR:
            self._transport_failed(value)
        else:
            name = _HANDLER_OF_EVENT[kind]
            fn = self._handler(name)
            if fn is not None:
                self._call(fn, () if value is None else (value,))

    def _handle_request(self, request: Request) -> None:
        app = self._app
        http = app.http
        conn = self._conn
        if http.exact and http.answer_exact(conn, request):
            return
        match = app.match(request.path)
        if match is None:
            if not http.answer_static(conn, request):
                conn.refuse(404, "Not Found")
            return
        route, params = match
        try:
            conn.check_upgrade()
        except HandshakeError as exc:
            conn.refuse(exc.status, exc.reason, exc.headers)
            return
        if params:
            self._params = params
        self._route = route
        if app.max_connections or app.max_connections_per_ip:
            # A place is taken now, before any authenticate hook awaits, so upgrades waiting
            # at the same time cannot all pass the limit; it is given back when the socket
            # closes.
            refusal = app.admit(conn.remote_address)
            if refusal is not None:
                conn.refuse(*refusal)
                return
            self._holds_place = True
        # Cross-site WebSocket hijacking: a browser's upgrade (it carries Origin) comes from
        # the page's own site (the host a trusted proxy forwarded, else Host) unless the route
        # lists other origins, or "*" for any.
        origin = request.get("origin")
        if origin is not None and not origin_allowed(origin, conn.host, route.allowed_origins):
            conn.refuse(403, ORIGIN_REFUSED)
            return
        if route.subprotocols:
            offered = request.tokens_cased("sec-websocket-protocol")
            self.subprotocol = next((p for p in offered if p in route.subprotocols), None)
            if self.subprotocol is None and route.options.require_subprotocol:
                conn.refuse(400, "No supported subprotocol")
                return
        hook = route.authenticate
        if hook is None:
            self._upgrade(None)
            return
        try:
            result = hook(UpgradeRequest(self))
        except Exception as exc:  # noqa: BLE001
            self._auth_failed(exc)
            return
        if inspect.isawaitable(result):
            # The upgrade waits for the hook: stop reading meanwhile (the handshake timeout
            # still bounds it).
            conn.pause_reading()
            conn.loop.create_task(self._await_auth(result))
            return
        self._auth_done(result)

    async def _await_auth(self, awaitable: Any) -> None:
        try:
            result = await awaitable
        except Exception as exc:  # noqa: BLE001
            self._auth_failed(exc)
            return
        if self.ready_state is ReadyState.CONNECTING:
            self._conn.resume_reading()
        self._auth_done(result)

    def _auth_done(self, result: Any) -> None:
        if isinstance(result, (HandshakeError, Deny)):  # returned instead of raised
            self._auth_failed(result)
            return
        try:
            accepted, data, deny = interpret(result)
        except ConfigurationError as exc:
            self._auth_failed(exc)
            return
        if not accepted:
            self._conn.refuse(401, "Unauthorized")
            return
        self.auth = data
        self._upgrade(deny)

    def _auth_failed(self, exc: BaseException) -> None:
        if isinstance(exc, HandshakeError):  # Reject(status, reason)
            self._conn.refuse(exc.status, exc.reason, exc.headers)
        elif isinstance(exc, Deny):
            self._upgrade(exc)
        else:
            logger.error(
                "harpy: authenticate hook of route %s raised",
                self.route,
                exc_info=(type(exc), exc, exc.__traceback__),
            )
            self._conn.refuse(500, "Internal Server Error")

    def _upgrade(self, deny: Deny | None) -> None:
        """Answer 101; a denied connection is closed at once, without its handlers."""
        route = self._route
        conn = self._conn
        request = conn.request
        assert route is not None and request is not None
        if self.ready_state is not ReadyState.CONNECTING:
            return  # answered meanwhile (408 after a slow hook, or shutting down)
        if deny is None:
            if route.data_factory is None:
                self._data = _DEFAULT_DATA  # the default dict: made on first use
            else:
                try:
                    self._data = route.make_data(self)
                except Exception:
                    logger.exception("harpy: data factory of route %s failed", route.pattern)
                    conn.refuse(500, "Internal Server Error")
                    return
        else:
            self._admit_as(Admission.DENIED)
        headers: list[tuple[str, str]] = []
        if self.subprotocol is not None:
            headers.append(("Sec-WebSocket-Protocol", self.subprotocol))
        codec = None
        if route.deflate is not None and deny is None:
            offers = request.get_all("sec-websocket-extensions")
            if offers:
                agreed = negotiate(offers, route.deflate)
                if agreed is not None:
                    headers.append(("Sec-WebSocket-Extensions", agreed[0]))
                    codec = agreed[1]
        conn.accept(headers, route.options, codec)
        # The upgrade is decided (and a synchronous open handler ran): the request's headers
        # are kept from now on as the bytes they came in, parsed again when asked for.
        request.compact()
        if deny is not None:
            self.close(deny.code, deny.reason)

    def _log_answer(self, status: int) -> None:
        if access_logger.isEnabledFor(_INFO):
            self._app.access_log.answered(self._conn.loop, self.path, status, self.remote_address)

    def _log_close(self, code: int) -> None:
        conn = self._conn
        loop = conn.loop
        self._app.access_log.closed(
            loop,
            self.path,
            code,
            conn.remote_address,
            round(loop.time() - self._opened_at, 6),
            self.messages_in,
            self.messages_out,
        )

    # ----------------------------------------------------------------- event hooks

    def _handle_open(self) -> None:
        route = self._route
        assert route is not None
        self._opened_at = self._conn.last_seen  # set to "now" by the upgrade
        self._log_answer(101)
        if self._admission is Admission.DENIED:
            return  # denied by authenticate: closing at once
        if route.options.rate_limit > 0:
            more = self._seldom()
            more.tokens = route.rate_burst
            more.tokens_at = self._opened_at
        verifier = route.first_message_auth
        if verifier is not None:
            # Not a member of anything (connections, rooms, broadcasts) until authenticated;
            # open() runs then.
            self._admit_as(Admission.AUTHENTICATING)
            self._seldom().auth_timer = self._conn.loop.call_later(
                verifier.timeout, self._auth_timeout
            )
            return
        self._become_member()
        fn = route.handlers.open
        if fn is not None:
            self._call(fn, ())

    def _become_member(self) -> None:
        """Join the app's connections (and the default room): broadcasts reach it from now."""
        route = self._route
        assert route is not None
        self._admit_as(Admission.MEMBER)
        self._app.hub.connections.add(self, route.pattern, self._conn)
        if route.options.default_room is not None:
            self._in_groups = True
            self._app.hub.rooms.add(self, route.options.default_room, self._conn)

    def _handle_message(self, message: str | bytes) -> None:
        self._messages_in += 1
        if self._gated and not self._pass_gate(message):
            return
        if self._dispatch:  # not IDLE (0): behind a running async handler or first-message auth
            self._enqueue(self._receive_queued, (message,))
            return
        fn = self._on_message
        if fn is not None:
            try:
                result = fn(self, message)
            except Exception as exc:  # noqa: BLE001
                self._handler_failed(exc)
                return
            # (An int, what ws.send returns, is never awaitable: no ABC check per message.)
            if result is not None and type(result) is not int and inspect.isawaitable(result):
                self._start_async(result)

    def _pass_gate(self, message: str | bytes) -> bool:
        """Rate limit, then first-message authentication; False: the message stops here."""
        route = self._route
        assert route is not None
        rate = route.options.rate_limit
        if rate > 0:
            # Token bucket: rate_limit tokens a second, at most rate_burst saved up.
            now = self._conn.last_seen
            more = self._seldom()
            refill = (now - more.tokens_at) * rate
            tokens = min(route.rate_burst, more.tokens + refill)
            more.tokens_at = now
            if tokens < 1.0:
                self.close(1008, "Rate limit exceeded")
                return False
            more.tokens = tokens - 1.0
        if self._admission is Admission.AUTHENTICATING:
            more = self._seldom()
            if more.auth_timer is None:
                return True
            more.auth_timer.cancel()
            more.auth_timer = None
            self._run(self._verify, (message,))
            return False
        return True

    def _auth_timeout(self) -> None:
        self._seldom().auth_timer = None
        self._deny(1008, "Auth Timeout")

    def _deny(self, code: int, reason: str) -> None:
        """Authentication failed after the 101: no handler runs; close with ``code``."""
        if self._admission is Admission.AUTHENTICATING:
            self._admit_as(Admission.DENIED)
        self.close(code, reason)

    def _handle_closed(self, code: int, reason: str) -> None:
        if self._holds_place:
            self._holds_place = False
            self._app.release(self._conn.remote_address)
        more = self._more
        if more is not None and more.auth_timer is not None:
            more.auth_timer.cancel()
            more.auth_timer = None
        if self._opened_at:  # upgraded (a refused or plain HTTP request also ends here)
            stats = self._app.stats
            stats.closes[code] = stats.closes.get(code, 0) + 1
            stats.add_closed(self)
            if access_logger.isEnabledFor(_INFO):
                self._log_close(code)
        if self._admission is not _MEMBER:
            return  # never opened (denied, or first-message auth never passed)
        route = self._route
        assert route is not None
        fn = route.handlers.close
        self._admit_as(Admission.LEFT)
        app = self._app
        app.hub.connections.discard(self)
        # Out of every group now; the close handler still reads what they were.
        if self._in_groups:
            self._seldom().groups_at_close = {
                _TOPIC: app.hub.topics.remove_all(self),
                _ROOM: app.hub.rooms.remove_all(self),
            }
        if fn is not None:
            self._call(fn, (code, reason))

    def _transport_failed(self, exc: Exception) -> None:
        """The transport failed (connection reset, broken pipe: a send or a read the OS
        refused): a member's ``error(ws, exc)`` hears of it, before ``close(ws, 1006, "")``."""
        route = self._route
        if self._admission is not _MEMBER or route is None:
            return
        fn = route.handlers.error
        if fn is not None:
            self._call(fn, (exc,))

    # ----------------------------------------------------------------- dispatch

    def _call(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        """Run a route handler, ``fn(ws, *args)``, in its turn."""
        self._run(fn, (self, *args))

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        """Run ``fn(*args)`` now, or after the ones before it when an async one is running."""
        if self._dispatch:  # not IDLE (0)
            self._enqueue(fn, args)
            return
        try:
            result = fn(*args)
        except Exception as exc:  # noqa: BLE001
            self._handler_failed(exc)
            return
        if result is not None and inspect.isawaitable(result):
            self._start_async(result)

    def _enqueue(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        queue.append((fn, args))
        route = self._route
        if (
            route is not None
            and len(queue) >= route.options.max_pending_messages
            and self._dispatch is Dispatch.RUNNING
            and self.ready_state is _OPEN
        ):
            # Read-side backpressure: stop reading until the handlers catch up.
            self._dispatch_as(Dispatch.PAUSED)

    def _start_async(self, awaitable: Any) -> None:
        self._dispatch_as(Dispatch.RUNNING)
        self._conn.loop.create_task(self._run_queue(awaitable))

    async def _run_queue(self, first: Any) -> None:
        try:
            await first
        except Exception as exc:  # noqa: BLE001
            self._handler_failed(exc)
        queue = self._queue
        while queue:
            fn, args = queue.popleft()
            if self._dispatch is Dispatch.PAUSED and len(queue) <= self._resume_at():
                self._dispatch_as(Dispatch.RUNNING)
            try:
                result = fn(*args)
                if result is not None and inspect.isawaitable(result):
                    await result
            except Exception as exc:  # noqa: BLE001
                self._handler_failed(exc)
        self._dispatch_as(_IDLE)

    def _resume_at(self) -> int:
        route = self._route
        return route.options.max_pending_messages // 4 if route is not None else 0

    def _handler_failed(self, exc: BaseException) -> None:
        """A handler raised: ``error(ws, exc)`` decides, else log and close with 1011."""
        errors = self._app.stats.handler_errors
        errors[self.route] = errors.get(self.route, 0) + 1
        _explain_awaited_send(exc)
        fn = self._handler("error") if not isinstance(exc, _ErrorHandlerFailed) else None
        if fn is None and isinstance(exc, InvalidMessage):
            logger.debug("harpy: route %s: %s", self.route, exc)
            if self.ready_state is _OPEN:
                self.close(1007, "Invalid JSON")
            return
        if fn is not None:
            try:
                result = fn(self, exc)
                if result is not None and inspect.isawaitable(result):
                    self._conn.loop.create_task(self._await_error_handler(result))
                return
            except Exception as inner:  # noqa: BLE001
                exc = inner
        logger.error(
            "harpy: handler of route %s raised",
            self.route,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        if self.ready_state is _OPEN:
            self.close(1011, "Internal error")

    async def _await_error_handler(self, awaitable: Any) -> None:
        try:
            await awaitable
        except Exception as exc:  # noqa: BLE001
            self._handler_failed(_ErrorHandlerFailed(exc))

    async def _verify(self, message: str | bytes) -> None:
        """First-message auth: keep the verifier's result on ``auth``, then run ``open``."""
        route = self._route
        assert route is not None and route.first_message_auth is not None
        try:
            result = route.first_message_auth.verify(message)
            if inspect.isawaitable(result):
                result = await result
        except Deny as exc:
            self._deny(exc.code, exc.reason)
            return
        except Exception:
            logger.exception("harpy: first-message verifier of route %s raised", self.route)
            self._deny(1011, "Internal error")
            return
        self.auth = result
        if self.ready_state is _OPEN:
            # open() runs here, in this queue slot, so messages queued behind the token wait
            # for it.
            self._become_member()
            fn = route.handlers.open
            if fn is not None:
                try:
                    opened = fn(self)
                    if inspect.isawaitable(opened):
                        await opened
                except Exception as exc:  # noqa: BLE001
                    self._handler_failed(exc)

    def _receive_queued(self, message: str | bytes) -> Any:
        """A queued message: the handler is looked up when its turn comes (auth may have
        failed meanwhile)."""
        fn = self._on_message
        return fn(self, message) if fn is not None else None

    def __repr__(self) -> str:
        state = ReadyState(self.ready_state).name
        return f"<WebSocket {self.id} {self.path or '-'} {state}>"


class _Seldom:
    """What few connections need: one slot on every ``WebSocket``, not six."""

    __slots__ = ("auth_timer", "cookies", "groups_at_close", "presence", "tokens", "tokens_at")

    def __init__(self) -> None:
        self.auth_timer: Any = None  # first-message authentication's deadline
        self.cookies: dict[str, str] | None = None  # parsed on first use
        self.presence: dict[str, Any] | None = None
        # The topics and rooms a member was in when it closed (None: none).
        self.groups_at_close: dict[GroupKind, frozenset[str]] | None = None
        # The rate limit's token bucket.
        self.tokens = 0.0
        self.tokens_at = 0.0


def auto_broadcasting(handler: Callable[..., Any] | None) -> Callable[..., Any]:
    """``handler`` (if any), then, unless it raised, the automatic broadcast of the
    message to every other open connection of the app."""

    def message_and_broadcast(ws: WebSocket[Any], message: str | bytes) -> Any:
        result = handler(ws, message) if handler is not None else None
        if result is not None and inspect.isawaitable(result):
            return _await_then_broadcast(ws, result, message)
        ws.app.broadcast(message, exclude=ws)
        return None

    return message_and_broadcast


async def _await_then_broadcast(ws: WebSocket[Any], awaitable: Any, message: str | bytes) -> None:
    await awaitable
    ws.app.broadcast(message, exclude=ws)


#: ``ws.data`` without a ``data=`` factory, until first used.
_DEFAULT_DATA: Any = object()
_TOPIC = GroupKind.TOPIC
_ROOM = GroupKind.ROOM
_NO_GROUPS: dict[GroupKind, frozenset[str]] = {_TOPIC: frozenset(), _ROOM: frozenset()}
#: The route handler each remaining event runs.
_HANDLER_OF_EVENT = {
    EV_PING: "ping",
    EV_PONG: "pong",
    EV_DRAIN: "drain",
    EV_PROTOCOL_ERROR: "error",
}


def _check_name(name: str, kind: str) -> str:
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"a {kind} name must be a non-empty string, not {name!r}")
    return name


#: What ``await ws.send(...)`` (a habit from libraries whose send is a coroutine) raises: the
#: int that ``send`` returned is not awaitable.  Python 3.11-3.12 and 3.13 word it differently.
_AWAITED_INT = ("object int can't be used in 'await' expression", "'int' object can't be awaited")
_AWAITED_SEND_HINT = (
    "harpy: ws.send() (and send_text, send_binary, send_json, publish, broadcast) is not a "
    "coroutine: it sends or queues at once and returns an int, so drop the await. To wait for "
    "the output to drain, give the route a drain(ws) handler: it is called once the buffered "
    "output falls below write_low_water after send() returned -1."
)


def _explain_awaited_send(exc: BaseException) -> None:
    """Add the hint to the error of an awaited ``send``: on the error path only, so the send
    path costs nothing (the note shows in the logged traceback and to an ``error`` handler)."""
    if isinstance(exc, TypeError) and str(exc) in _AWAITED_INT:
        notes = getattr(exc, "__notes__", ())
        if _AWAITED_SEND_HINT not in notes:
            exc.add_note(_AWAITED_SEND_HINT)


class _ErrorHandlerFailed(Exception):
    """The ``error`` handler itself raised: logged, and the connection closed with 1011."""


def _control_payload(data: bytes | str) -> bytes:
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if len(payload) > 125:
        raise ConfigurationError("ping/pong payload is longer than 125 bytes")  # RFC 6455 5.5
    return payload

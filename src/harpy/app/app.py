"""``App``: routes, the live connections, and the server's lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
import ssl
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, Unpack

from ..auth import resolve_authenticate
from ..exceptions import ConfigurationError, HarpyError
from ..protocol import Message
from ..protocol.deflate import DeflateOptions
from ..pubsub import Connections, GroupKind, Hub, Presence, PresenceEvent
from ..pubsub.backplane import Backplane
from ..pubsub.history import History
from ..server import (
    DROP_REASONS,
    FramedConnection,
    MeteredConnection,
    Server,
    default_output_budget,
    make_ssl_context,
)
from ..server.forwarded import ProxyTrust
from .access import AccessLog
from .handlers import Handlers, resolve_handlers
from .http import HttpSide, Stats
from .jsoncodec import Dumps, Loads, json_parsing, make_encoder, resolve_loads
from .options import RouteOptions, RouteOptionsKw, make_options
from .router import Routes, RouteSpec
from .routing import RouteTable
from .websocket import WebSocket, auto_broadcasting

__all__ = ["App", "Route"]

logger = logging.getLogger("harpy")

Hook = Callable[[], Any]


class Route:
    """A resolved route: its handlers, data factory, and options (the app's, then its own)."""

    __slots__ = (
        "allowed_origins",
        "authenticate",
        "data_factory",
        "deflate",
        "first_message_auth",
        "handlers",
        "on_message",
        "options",
        "pattern",
        "rate_burst",
        "subprotocols",
    )

    def __init__(
        self, spec: RouteSpec, defaults: RouteOptions, json_loads: Loads | None = None
    ) -> None:
        options = make_options(defaults, spec.options, f"ws({spec.pattern!r})")
        #: Also the connection limits this route's connections enforce.
        self.options = options
        """The route's options: the app's defaults, then its own
        (:class:`~harpy.app.options.RouteOptions`)."""
        self.pattern = spec.pattern
        """The path pattern, as registered (``/room/:id``)."""
        self.handlers: Handlers = resolve_handlers(spec.handlers)
        """The route's handlers, checked when it was registered."""
        self.data_factory = spec.data
        """The route's ``data=`` factory, or None: what :meth:`make_data` calls."""
        # What the options say, in the form each use wants, derived once.
        self.deflate = DeflateOptions.from_value(options.compression)
        """The ``compression`` option as permessage-deflate settings, or None: the connection
        layer's form of it."""
        authenticate, first_message_auth = resolve_authenticate(options.authenticate)
        self.authenticate = authenticate
        """The ``authenticate`` hook to call before the 101, or None: the connection layer's
        form of the option."""
        self.first_message_auth = first_message_auth
        """The :class:`~harpy.FirstMessageAuth` the first message must pass, or None: the
        connection layer's form of the ``authenticate`` option."""
        origins = options.allowed_origins
        self.allowed_origins = (
            None if origins is None else frozenset(o.rstrip("/").lower() for o in origins)
        )
        """The allowed origins, lower case without a trailing ``/``, or None for any: the
        connection layer's form of ``allowed_origins``."""
        self.subprotocols: tuple[str, ...] = tuple(options.subprotocols or ())
        """The subprotocols the route speaks, in its order of preference: the connection
        layer's form of ``subprotocols``."""
        self.rate_burst = float(options.rate_burst or max(1.0, options.rate_limit))
        """The rate limit's burst, in messages: the connection layer's form of
        ``rate_burst``."""
        message = self.handlers.message
        if options.json:
            message = json_parsing(message, resolve_loads(json_loads))
        self.on_message = auto_broadcasting(message) if options.auto_broadcast else message
        """What a member's message goes to (the handler, with JSON parsing and the automatic
        broadcast as the options say): the connection layer's message callback."""

    def make_data(self, ws: WebSocket[Any]) -> Any:
        """A fresh ``ws.data``: the route's factory, or a dict of ``url`` and ``cookies``."""
        if self.data_factory is not None:
            return self.data_factory()
        return {"url": ws.url, "cookies": ws.cookies}

    def __repr__(self) -> str:
        return f"<Route {self.pattern} {self.handlers!r}>"


class App(Routes):
    """A harpy application: ``app.ws(path, handlers)`` routes, then ``app.run()``.

    Keyword arguments set the defaults of every route (the fields of
    :class:`~harpy.app.options.RouteOptions`); ``handshake_timeout`` (seconds) and
    ``max_header_size`` (bytes) bound the upgrade request (408 and 431), and
    ``shutdown_timeout`` bounds a graceful shutdown.  ``drain_timeout`` (seconds, default 0)
    is a drain period before it: once a stop is asked for, the health check answers 503 while
    the server keeps serving (and accepting) for that long, so that a load balancer takes it
    out of rotation before its connections are closed with 1001 (docs/deployment.md).

    ``output_budget`` bounds the bytes of output all connections together may hold (queued,
    or in their transports' buffers): None (the default) for the smaller of 1 GiB and a
    quarter of physical memory, 0 for no bound.  Past it, messages for the connections
    holding the most are dropped (or those are closed: the route option
    ``output_budget_policy``); the others still get theirs.

    ``backplane`` (a :class:`~harpy.pubsub.backplane.Backplane`) shares every group with other
    processes: what is published or broadcast here also reaches the topics, rooms, routes and
    connections there, and theirs come here.  ``presence=True`` tracks who is in each topic and
    room (on every node, with a backplane); ``presence_interval`` is the heartbeat of that
    (a node that dies leaves the others' presence within ``4 * presence_interval`` seconds).

    ``json_dumps`` serialises what ``send``, ``publish`` and ``broadcast`` get that is neither
    ``str`` nor bytes (returning ``str`` or ``bytes``), ``json_loads`` parses the messages of
    ``json=True`` routes; both default to orjson when installed, else the standard library.

    Plain HTTP on the same port (docs/http.md): ``health`` is the health check's path (200
    while serving, 503 once shutdown began; None or False: off), ``static`` maps URL prefixes
    to folders served as files, and ``metrics`` (True: ``/metrics``, or a path) serves
    Prometheus metrics from the app's own registry (``pip install 'harpy-ws[metrics]'``).

    Behind a proxy (docs/proxies.md): ``proxy_headers=True`` believes the ``X-Forwarded-For``,
    ``-Proto``, ``-Host`` and ``Forwarded`` headers of trusted peers, ``proxy_protocol=True``
    reads a PROXY protocol header (v1 or v2) first on every connection from a trusted peer;
    ``forwarded_allow_ips`` lists the trusted peers (addresses, networks such as
    ``"10.0.0.0/8"``, or ``"*"``; None: loopback).  The client's address, scheme and host they
    give are ``ws.remote_address``, ``ws.url``, the access log's, the per-IP limit's and the
    same-origin check's.  Both off by default: untrusted headers are never read.
    """

    def __init__(
        self,
        *,
        handshake_timeout: float = 10.0,
        max_header_size: int = 8192,
        shutdown_timeout: float = 5.0,
        drain_timeout: float = 0.0,
        max_connections: int = 0,
        max_connections_per_ip: int = 0,
        backplane: Backplane | None = None,
        json_dumps: Dumps | None = None,
        json_loads: Loads | None = None,
        health: bool | str | None = "/healthz",
        static: Mapping[str, str | os.PathLike[str]] | None = None,
        metrics: bool | str | None = False,
        presence: bool = False,
        presence_interval: float = 1.0,
        output_budget: int | None = None,
        proxy_headers: bool = False,
        forwarded_allow_ips: str | Iterable[str] | None = None,
        proxy_protocol: bool = False,
        **route_defaults: Unpack[RouteOptionsKw],
    ) -> None:
        super().__init__()
        self.proxy_trust = ProxyTrust(
            forwarded_allow_ips, headers=proxy_headers, protocol=proxy_protocol
        )
        """Whose proxy information is believed, and which (its ``headers`` and ``protocol``):
        the connection layer's reading of the proxy options."""
        if handshake_timeout <= 0 or max_header_size < 256 or shutdown_timeout < 0:
            raise ConfigurationError(
                "handshake_timeout must be > 0, max_header_size >= 256, shutdown_timeout >= 0"
            )
        #: Seconds between a stop request and the start of the shutdown (health: 503).
        self.drain_timeout = check_drain_timeout(drain_timeout)
        """Seconds of the drain period before a graceful shutdown (0: none)."""
        for name, value in (
            ("max_connections", max_connections),
            ("max_connections_per_ip", max_connections_per_ip),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigurationError(f"{name} must be a whole number >= 0 (0: no limit)")
        if output_budget is None:
            output_budget = default_output_budget()
        elif isinstance(output_budget, bool) or not isinstance(output_budget, int):
            raise ConfigurationError("output_budget must be a whole number of bytes, or None")
        elif output_budget < 0:
            raise ConfigurationError("output_budget must be >= 0 (0: no bound)")
        self.output_budget = output_budget
        """Bytes of output all connections together may hold (0: no bound): the connection
        layer's reading of ``output_budget``."""
        self.encode_json = make_encoder(json_dumps)
        """Serialises a value that is neither str nor bytes to JSON text (UTF-8 bytes): the
        encoder the connections and groups use."""
        self.json_loads = resolve_loads(json_loads)
        """Parses the messages of ``json=True`` routes: the parser the routes use."""
        self.stats = Stats()
        """What the app counts for its metrics and access log: the counters the connection
        layer updates."""
        self.access_log = AccessLog()
        """The access log's entries of this loop tick (records are made at its end): what the
        connections note their upgrades and closes in."""
        self.http = HttpSide(self, health, static, metrics)
        """What plain HTTP requests get (health, metrics, static files): the HTTP side the
        connection layer hands them to."""
        self.defaults = make_options(None, route_defaults, "App()")
        """The options every route starts from: what :meth:`include` and the router build
        routes on."""
        self.max_connections = max_connections
        """Open connections past which an upgrade is refused with 503 (0: no limit): the
        connection layer's admission reads it."""
        self.max_connections_per_ip = max_connections_per_ip
        """Open connections from one address past which an upgrade gets 429 (0: no limit):
        the connection layer's admission reads it."""
        self._per_ip: dict[str, int] = {}
        self._admitted = 0  # connections holding a place under the two limits above
        self.handshake_timeout = handshake_timeout
        """Seconds the upgrade request may take before a 408: the connection layer's
        deadline."""
        self.max_header_size = max_header_size
        """Bytes the upgrade request's head may have before a 431: the connection layer's
        bound."""
        self.shutdown_timeout = shutdown_timeout
        """Seconds a graceful shutdown waits for connections to close before dropping them."""
        self._table: RouteTable[Route] = RouteTable()
        self.match: Callable[[str], tuple[Route, dict[str, str]] | None] = self._table.match
        """``match(path)``: the route for a raw (still percent-encoded) request path, and its
        parameters, or None (the table's own method: no extra call per upgrade): the
        connection layer's routing."""
        if not presence_interval > 0:
            raise ConfigurationError("presence_interval must be > 0 seconds")
        self.hub: Hub[WebSocket[Any]] = Hub(Presence(presence_interval) if presence else None)
        """Every group (topics, rooms, routes), and the backplane that shares them, if any:
        the groups the connections and the app's group methods use."""
        if backplane is not None:
            self.hub.attach(backplane)
        self._channel_history: History | None = None
        self._startup: list[Hook] = []
        self._shutdown: list[Hook] = []
        self._server: Server | None = None
        self._stopping: asyncio.Event | None = None
        self._draining = False
        self.port: int | None = None
        """The port the server listens on, once it does (port 0 resolved), else None."""
        self.url: str | None = None
        """``ws://host:port`` (``wss://`` with TLS) once the server listens, else None."""
        self._drops_before = dict.fromkeys(DROP_REASONS, 0)

    def configure_proxies(
        self,
        *,
        proxy_headers: bool | None = None,
        forwarded_allow_ips: str | Iterable[str] | None = None,
        proxy_protocol: bool | None = None,
    ) -> None:
        """Set what is believed of proxies, as the ``App()`` options of the same names do (an
        argument left out keeps its value): for an app made elsewhere, such as the one the
        command line's ``--proxy-headers``, ``--forwarded-allow-ips`` and ``--proxy-protocol``
        serve.  Only before the app listens."""
        if self._server is not None:
            raise HarpyError("configure_proxies: the app is already listening")
        old = self.proxy_trust
        self.proxy_trust = ProxyTrust(
            old.allowed if forwarded_allow_ips is None else forwarded_allow_ips,
            headers=old.headers if proxy_headers is None else proxy_headers,
            protocol=old.protocol if proxy_protocol is None else proxy_protocol,
        )

    # ----------------------------------------------------------------- routes

    def _add(self, spec: RouteSpec) -> None:
        self.http.check_route(spec.pattern)
        self._table.add(spec.pattern, Route(spec, self.defaults, self.json_loads))
        self._specs.append(spec)

    def channels(
        self, path: str, handlers: object = None, options: Any = None, **route: Any
    ) -> Any:
        """A route at ``path`` speaking the Centrifuge client protocol (docs/channels.md):
        ``handlers`` are its hooks, ``options`` a ``harpy.channels.ChannelOptions``, ``route``
        the route's options.  Returns the :class:`harpy.channels.Channels` endpoint."""
        if _channels_factory is None:
            raise ConfigurationError("channels need `import harpy.channels` (harpy does it)")
        return _channels_factory(self, path, handlers, options, route)

    @property
    def routes(self) -> list[Route]:
        """The routes, in the order they were registered."""
        return [route for _, route in self._table]

    @property
    def metrics_registry(self) -> Any:
        """The app's own ``prometheus_client.CollectorRegistry`` (None without ``metrics``):
        metrics registered on it are served with the app's."""
        return self.http.registry

    # ----------------------------------------------------------------- admission

    def admit(self, address: str) -> tuple[int, str, list[tuple[str, str]]] | None:
        r"""Take a place under ``max_connections`` and ``max_connections_per_ip`` for a new
        connection from ``address``; the HTTP refusal when there is none.  Every admitted
        connection is :meth:`release`\ d exactly once."""
        if self.max_connections and self._admitted >= self.max_connections:
            return 503, "Too many connections", [("Retry-After", "5")]
        per_ip = self.max_connections_per_ip
        if per_ip:
            if self._per_ip.get(address, 0) >= per_ip:
                return 429, "Too many connections from this address", []
            self._per_ip[address] = self._per_ip.get(address, 0) + 1
        self._admitted += 1
        return None

    def release(self, address: str) -> None:
        """Give back the place :meth:`admit` took."""
        self._admitted -= 1
        if self.max_connections_per_ip:
            left = self._per_ip.get(address, 1) - 1
            if left > 0:
                self._per_ip[address] = left
            else:
                self._per_ip.pop(address, None)

    # ----------------------------------------------------------------- one message to many

    def use_backplane(self, backplane: Backplane, *, history: History | None = None) -> None:
        """Share every group through ``backplane``, as ``App(backplane=...)`` does, for an app made
        before its backplane is known (each ``--workers`` process joins the embedded NATS so).
        ``history`` is a channel history on the same broker, for the channels endpoints whose
        options name none (``--workers`` gives JetStream on its embedded nats-server).

        Only before the app listens, and before anything subscribed.
        """
        if self._server is not None:
            raise HarpyError("use_backplane: the app is already listening")
        if history is not None and not isinstance(history, History):
            raise ConfigurationError(f"history must be a History, not {history!r}")
        self.hub.attach(backplane)
        self._channel_history = history

    @property
    def channel_history(self) -> History | None:
        """The history of the channels endpoints whose options name none, given with the
        backplane (:meth:`use_backplane`); None: they keep it in memory on one process, and
        refuse to start beside a backplane."""
        return self._channel_history

    @property
    def backplane(self) -> Backplane | None:
        """Carries every group message to and from other processes (None: this process only)."""
        return self.hub.backplane

    @property
    def presence(self) -> Presence | None:
        """Who is in each topic and room, across nodes (None: ``presence`` is off)."""
        return self.hub.presence

    @property
    def connections(self) -> Connections[WebSocket[Any]]:
        """The open connections, by route."""
        return self.hub.connections

    def publish(
        self, topic: str, data: Any, compress: bool | None = None, *, exclude: object = None
    ) -> int:
        """Send ``data`` (str: text, bytes: binary, else JSON) to every subscriber of
        ``topic`` but ``exclude``; returns how many connections it reached in this process
        (with a backplane, the message also goes to the other processes, uncounted)."""
        message = Message.from_data(data, compress, self.encode_json)
        return self.hub.publish(topic, message, exclude)

    def subscriber_count(self, topic: str) -> int:
        """How many connections of this process are subscribed to ``topic``."""
        return self.hub.topics.count(topic)

    @property
    def topics(self) -> list[str]:
        """The topics with at least one subscriber."""
        return self.hub.topics.names()

    @property
    def rooms(self) -> list[str]:
        """The rooms with at least one member."""
        return self.hub.rooms.names()

    def room_members(self, room: str) -> list[WebSocket[Any]]:
        """The connections of this process in ``room``, in joining order."""
        return self.hub.rooms.members(room)

    def broadcast(
        self,
        data: Any,
        rooms: Iterable[str] | None = None,
        route: str | None = None,
        *,
        compress: bool | None = None,
        exclude: object = None,
    ) -> int:
        """Send ``data`` to the members of ``rooms`` (each once), or to every connection of
        ``route``, or to every open connection, but ``exclude``; returns how many it reached.

        ``ws.broadcast`` and the automatic broadcast of a route take this same path.
        """
        message = Message.from_data(data, compress, self.encode_json)
        if rooms is None:
            return self.hub.broadcast_route(route, message, exclude)
        if isinstance(rooms, str):
            raise TypeError("rooms must be a list of room names, not a string")
        names = list(dict.fromkeys(rooms))
        for name in names:
            if not isinstance(name, str):
                raise TypeError(f"room names are strings, not {type(name).__name__}")
        return self.hub.broadcast_rooms(names, route, message, exclude)

    # ----------------------------------------------------------------- presence

    def on_presence(self, fn: Callable[[PresenceEvent], Any]) -> Callable[[PresenceEvent], Any]:
        """Call ``fn(event)`` (plain or async) when a connection joins or leaves a topic or a
        room, here or on another node; needs ``App(presence=True)``."""
        return self._require_presence().on_change(fn)

    def present(self, *, topic: str | None = None, room: str | None = None) -> dict[str, Any]:
        """``{connection id: presence info}`` of the members of ``topic`` or ``room`` on
        every node; needs ``App(presence=True)``."""
        kind, name = _one_group(topic, room)
        return self._require_presence().members(kind, name)

    def present_count(self, *, topic: str | None = None, room: str | None = None) -> int:
        """How many connections are in ``topic`` or ``room`` on every node."""
        kind, name = _one_group(topic, room)
        return self._require_presence().count(kind, name)

    def _require_presence(self) -> Presence:
        if self.presence is None:
            raise ConfigurationError("presence is off: create the app with App(presence=True)")
        return self.presence

    @property
    def dropped(self) -> int:
        """Messages dropped to open connections since the server started: past a connection's
        ``backpressure_limit`` or past ``output_budget`` (the sum of ``ws.dropped``; see
        :attr:`drops` for every cause)."""
        drops = self.drops
        return drops["backpressure"] + drops["budget"]

    @property
    def drops(self) -> dict[str, int]:
        """Messages lost since the server started, by cause: ``backpressure`` (past a
        connection's ``backpressure_limit``), ``budget`` (past ``output_budget``) and
        ``closing`` (sent to a connection that was closing or closed)."""
        server = self._server
        return dict(server.drops if server is not None else self._drops_before)

    # ----------------------------------------------------------------- lifecycle hooks

    def on_startup(self, fn: Hook) -> Hook:
        """Run ``fn()`` (plain or async) before the server accepts connections."""
        self._startup.append(fn)
        return fn

    def on_shutdown(self, fn: Hook) -> Hook:
        """Run ``fn()`` (plain or async) after every connection is closed."""
        self._shutdown.append(fn)
        return fn

    async def run_startup_hooks(self) -> None:
        """Run the startup hooks in order; the first to raise stops the start."""
        for hook in self._startup:
            await _maybe_await(hook())

    async def run_shutdown_hooks(self) -> Exception | None:
        """Run every shutdown hook, logging any that raises; return the first error."""
        first: Exception | None = None
        for hook in self._shutdown:
            try:
                await _maybe_await(hook())
            except Exception as exc:
                logger.exception("harpy: shutdown hook %r failed", hook)
                first = first or exc
        return first

    # ----------------------------------------------------------------- serving

    async def listen(
        self,
        host: str = "127.0.0.1",
        port: int = 3000,
        *,
        tls: ssl.SSLContext | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        backlog: int = 2048,
        reuse_port: bool = False,
        uds: str | None = None,
    ) -> None:
        """Run the startup hooks, start the backplane, then start serving on the running loop
        and return; ``app.port`` is the bound port.  ``uds``: listen on that Unix socket path
        instead of ``host:port`` (behind a proxy on the same machine; ``app.port`` stays None)."""
        if self._server is not None:
            raise HarpyError("this app is already listening")
        if tls is None and tls_cert is not None:
            tls = make_ssl_context(tls_cert, tls_key)
        elif tls_key is not None and tls_cert is None:
            raise ConfigurationError("tls_key given without tls_cert")
        loop = asyncio.get_running_loop()
        await self.run_startup_hooks()
        await self.hub.start()
        # With metrics on, connections also count bytes (a cost per read and per send).
        kind = FramedConnection if self.http.registry is None else MeteredConnection

        def connect(host: Server) -> FramedConnection:
            conn = kind(host)
            WebSocket(self, conn)  # binds itself to the connection's events
            return conn

        server = Server(
            connect,
            loop=loop,
            handshake_timeout=self.handshake_timeout,
            max_header_size=self.max_header_size,
            output_budget=self.output_budget,
            proxy=self.proxy_trust if self.proxy_trust.enabled else None,
        )
        try:
            if uds is not None:
                await server.listen_unix(uds, ssl_context=tls, backlog=backlog)
            else:
                await server.listen(
                    host, port, ssl_context=tls, backlog=backlog, reuse_port=reuse_port
                )
        except BaseException:
            await self.hub.stop()
            raise
        self._server = server
        if uds is not None:
            logger.info("harpy: listening on unix:%s (%s)", uds, "wss" if tls else "ws")
            return
        bound_host, bound_port = server.sockets[0]
        self.port = bound_port
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.url = f"{'wss' if tls else 'ws'}://{shown}:{bound_port}"
        logger.info("harpy: listening on %s", self.url)

    async def shutdown(self, timeout: float | None = None) -> None:
        """Stop accepting, close every connection with 1001, stop the backplane, then run the
        shutdown hooks."""
        server = self._server
        if server is None:
            return
        self._server = None
        await server.close(self.shutdown_timeout if timeout is None else timeout)
        self._drops_before = dict(server.drops)
        try:
            await self.hub.stop()
        except Exception:
            logger.exception("harpy: stopping the backplane failed")
        await self.run_shutdown_hooks()
        logger.info("harpy: stopped")

    async def serve(self, host: str = "127.0.0.1", port: int = 3000, **kwargs: Any) -> None:
        """Listen, then serve until SIGINT/SIGTERM or :meth:`stop`, then shut down gracefully."""
        self._stopping = stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        # The handlers go in before listening: a signal that comes while the server starts
        # (or just after "listening on" was logged) stops it gracefully once it is up, instead
        # of finding the default action and killing the process.
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stopping.set)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        try:
            await self.listen(host, port, **kwargs)
        except BaseException:
            for sig in installed:
                loop.remove_signal_handler(sig)
            raise
        try:
            await stopping.wait()
            await self._drain(stopping)
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            self._draining = False
            await self.shutdown()

    @property
    def draining(self) -> bool:
        """True during the drain period: the health check answers 503, connections still
        work and new ones are still accepted."""
        return self._draining

    async def _drain(self, stopping: asyncio.Event) -> None:
        """Wait ``drain_timeout`` seconds with the health check failing; a second stop request
        (signal or :meth:`stop`) ends the wait."""
        if self.drain_timeout <= 0:
            return
        stopping.clear()
        self._draining = True
        logger.info(
            "harpy: draining for %g s (health check: 503), then closing", self.drain_timeout
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), self.drain_timeout)

    def stop(self) -> None:
        """Ask :meth:`serve` (and so :meth:`run`) to shut down."""
        if self._stopping is not None:
            self._stopping.set()

    def run(
        self, host: str = "127.0.0.1", port: int = 3000, *, workers: int = 1, **kwargs: Any
    ) -> None:
        """Serve until SIGINT or SIGTERM, on uvloop when it is installed; blocks.

        ``workers=N`` (N > 1) serves from N processes sharing the port under a supervisor
        (:mod:`harpy.workers`); it exits the process with the supervisor's status when not 0.
        """
        if not logging.getLogger().handlers and not logger.handlers:
            logging.basicConfig(level=logging.INFO, format="%(message)s")
        if workers == 1:
            run_loop(self.serve(host, port, **kwargs))
            return
        if _worker_runner is None:
            raise ConfigurationError("workers > 1 needs harpy.workers (import harpy)")
        status = _worker_runner(self, host, port, workers, kwargs)
        if status:
            raise SystemExit(status)


#: Runs an app in N processes and returns the exit status: ``harpy.workers`` sets it when
#: imported (``import harpy`` does), being an edge above this layer.
WorkerRunner = Callable[[App, str, int, int, dict[str, Any]], int]
_worker_runner: WorkerRunner | None = None


#: Makes ``app.channels(...)``'s endpoint: installed by ``harpy.channels`` (above this layer).
ChannelsFactory = Callable[[App, str, object, Any, dict[str, Any]], Any]
_channels_factory: ChannelsFactory | None = None


def set_channels_factory(factory: ChannelsFactory) -> None:
    """Install what ``App.channels`` calls (``harpy.channels``)."""
    global _channels_factory
    _channels_factory = factory


def set_worker_runner(runner: WorkerRunner) -> None:
    """Install what ``App.run(workers=N)`` calls (``harpy.workers.run_workers``)."""
    global _worker_runner
    _worker_runner = runner


def check_drain_timeout(value: object) -> float:
    """``value`` as a drain period: a number of seconds >= 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ConfigurationError(f"drain_timeout must be a number of seconds >= 0, not {value!r}")
    return float(value)


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop when available, else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


def _one_group(topic: str | None, room: str | None) -> tuple[GroupKind, str]:
    if (topic is None) == (room is None):
        raise TypeError("give exactly one of topic= and room=")
    if topic is not None:
        return GroupKind.TOPIC, topic
    assert room is not None
    return GroupKind.ROOM, room


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value

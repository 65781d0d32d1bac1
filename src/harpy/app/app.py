"""``App``: routes, the live connections, and the server's lifecycle."""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import ssl
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from ..auth import resolve_authenticate
from ..exceptions import ConfigurationError, HarpyError
from ..protocol.deflate import DeflateOptions
from ..pubsub import Groups, Message, fan_out
from ..pubsub.backplane.base import Backplane, Relay
from ..server import Limits, Server, make_ssl_context
from .handlers import Handlers, resolve_handlers
from .options import ROUTE_DEFAULTS, check_options
from .router import Routes, RouteSpec
from .routing import RouteTable
from .websocket import WebSocket

__all__ = ["App", "Connections", "Route"]

logger = logging.getLogger("harpy")

Hook = Callable[[], Any]


class Route:
    """A resolved route: handlers, data factory, and options merged with the app's defaults."""

    __slots__ = (
        "allowed_origins",
        "authenticate",
        "auto_broadcast",
        "data_factory",
        "default_room",
        "deflate",
        "first_message_auth",
        "handlers",
        "limits",
        "max_pending_messages",
        "pattern",
        "publish_to_self",
        "rate_burst",
        "rate_limit",
        "require_subprotocol",
        "subprotocols",
    )

    def __init__(self, spec: RouteSpec, defaults: dict[str, Any]) -> None:
        options = {**defaults, **spec.options}
        self.pattern = spec.pattern
        self.handlers: Handlers = resolve_handlers(spec.handlers)
        self.data_factory = spec.data
        self.auto_broadcast: bool = options["auto_broadcast"]
        self.publish_to_self: bool = options["publish_to_self"]
        self.default_room: str | None = options["default_room"]
        self.deflate = DeflateOptions.from_value(options["compression"])
        self.authenticate, self.first_message_auth = resolve_authenticate(options["authenticate"])
        origins = options["allowed_origins"]
        self.allowed_origins = (
            None if origins is None else frozenset(o.rstrip("/").lower() for o in origins)
        )
        protocols = options["subprotocols"]
        self.subprotocols: tuple[str, ...] = tuple(protocols) if protocols else ()
        self.require_subprotocol: bool = options["require_subprotocol"]
        if self.require_subprotocol and not self.subprotocols:
            raise ConfigurationError("require_subprotocol needs a list of subprotocols")
        self.rate_limit = float(options["rate_limit"])
        self.rate_burst = float(options["rate_burst"] or max(1.0, self.rate_limit))
        self.max_pending_messages: int = options["max_pending_messages"]
        if options["write_low_water"] > options["write_high_water"]:
            raise ConfigurationError("write_low_water must not exceed write_high_water")
        self.limits = Limits(
            max_message_size=options["max_message_size"],
            idle_timeout=float(options["idle_timeout"]),
            close_timeout=float(options["close_timeout"]),
            backpressure_limit=options["backpressure_limit"],
            close_on_backpressure_limit=options["close_on_backpressure_limit"],
            write_high_water=options["write_high_water"],
            write_low_water=options["write_low_water"],
            ping_interval=float(options["ping_interval"]),
            pong_timeout=float(options["pong_timeout"]),
            max_missed_pongs=options["max_missed_pongs"],
            inactivity_timeout=float(options["inactivity_timeout"]),
            send_pings=options["send_pings"],
        )

    def make_data(self, ws: WebSocket[Any]) -> Any:
        """A fresh ``ws.data``: the route's factory, or Harpia's dict of ``url`` and ``cookies``."""
        if self.data_factory is not None:
            return self.data_factory()
        return {"url": ws.url, "cookies": ws.cookies}

    def __repr__(self) -> str:
        return f"<Route {self.pattern} {self.handlers!r}>"


class Connections:
    """The open connections of an app: iterable, sized, and filterable by route pattern."""

    __slots__ = ("_all", "_by_route")

    def __init__(self) -> None:
        self._all: dict[WebSocket[Any], None] = {}
        self._by_route: dict[str, dict[WebSocket[Any], None]] = {}

    def __iter__(self) -> Iterator[WebSocket[Any]]:
        return iter(list(self._all))

    def __len__(self) -> int:
        return len(self._all)

    def __contains__(self, ws: object) -> bool:
        return ws in self._all

    def route(self, pattern: str) -> list[WebSocket[Any]]:
        """The open connections of the route declared with ``pattern``."""
        return list(self._by_route.get(pattern, ()))

    def count(self, pattern: str | None = None) -> int:
        return len(self._all) if pattern is None else len(self._by_route.get(pattern, ()))

    def _members(self) -> list[WebSocket[Any]]:
        return list(self._all)


    def _add(self, ws: WebSocket[Any], pattern: str) -> None:
        self._all[ws] = None
        self._by_route.setdefault(pattern, {})[ws] = None

    def _discard(self, ws: WebSocket[Any]) -> None:
        if self._all.pop(ws, 0) is None:
            members = self._by_route.get(ws.route)
            if members is not None:
                members.pop(ws, None)
                if not members:
                    del self._by_route[ws.route]


class App(Routes):
    """A harpy application: ``app.ws(path, handlers)`` routes, then ``app.run()``.

    Keyword arguments set the defaults of every route (see ``harpy.options.ROUTE_DEFAULTS``);
    ``handshake_timeout`` (seconds) and ``max_header_size`` (bytes) bound the upgrade request
    (408 and 431), and ``shutdown_timeout`` bounds a graceful shutdown.

    ``backplane`` (a :class:`~harpy.pubsub.backplane.Backplane`) shares topics with other
    processes: what is published here also goes to their subscribers, and theirs come here.
    """

    def __init__(
        self,
        *,
        handshake_timeout: float = 10.0,
        max_header_size: int = 8192,
        shutdown_timeout: float = 5.0,
        max_connections: int = 0,
        max_connections_per_ip: int = 0,
        backplane: Backplane | None = None,
        **route_defaults: Any,
    ) -> None:
        super().__init__()
        check_options(route_defaults, "App()")
        if handshake_timeout <= 0 or max_header_size < 256 or shutdown_timeout < 0:
            raise ConfigurationError(
                "handshake_timeout must be > 0, max_header_size >= 256, shutdown_timeout >= 0"
            )
        for name, value in (
            ("max_connections", max_connections),
            ("max_connections_per_ip", max_connections_per_ip),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigurationError(f"{name} must be a whole number >= 0 (0: no limit)")
        #: Open connections past which an upgrade is refused with 503 (0: no limit).
        self.max_connections = max_connections
        #: Open connections from one address past which an upgrade gets 429 (0: no limit).
        self.max_connections_per_ip = max_connections_per_ip
        self._per_ip: dict[str, int] = {}
        self._counted = 0  # connections holding a place under the two limits above
        self._defaults = {name: d for name, (d, _) in ROUTE_DEFAULTS.items()}
        self._defaults.update(route_defaults)
        self.handshake_timeout = handshake_timeout
        self.max_header_size = max_header_size
        self.shutdown_timeout = shutdown_timeout
        self._table: RouteTable[Route] = RouteTable()
        self.connections = Connections()
        #: Carries publications to and from other processes (None: this process only).
        self.backplane = backplane
        self._relay = None if backplane is None else Relay(backplane)
        self._topics = Groups("_topics") if self._relay is None else self._relay.topics
        self._rooms = Groups("_rooms")
        self._startup: list[Hook] = []
        self._shutdown: list[Hook] = []
        self._server: Server | None = None
        self._stopping: asyncio.Event | None = None
        self.port: int | None = None
        self.url: str | None = None
        self._dropped_before = 0

    # ----------------------------------------------------------------- routes

    def _add(self, spec: RouteSpec) -> None:
        self._table.add(spec.pattern, Route(spec, self._defaults))
        self._specs.append(spec)

    @property
    def routes(self) -> list[Route]:
        return [route for _, route in self._table]

    # ----------------------------------------------------------------- one message to many

    def publish(self, topic: str, data: Any, compress: bool | None = None) -> int:
        """Send ``data`` (str: text, bytes: binary, else JSON) to every subscriber of
        ``topic``; returns how many connections it reached in this process (with a
        backplane, the message also goes to the other processes, uncounted)."""
        return self._publish(topic, Message.from_data(data, compress), None)

    def _publish(self, topic: str, message: Message, skip: object) -> int:
        if self._relay is not None:
            self._relay.publish(topic, message)
        return fan_out(self._topics.members(topic), message, skip)

    def subscriber_count(self, topic: str) -> int:
        return self._topics.count(topic)

    @property
    def topics(self) -> list[str]:
        """The topics with at least one subscriber."""
        return self._topics.names()

    @property
    def rooms(self) -> list[str]:
        """The rooms with at least one member."""
        return self._rooms.names()

    def room_members(self, room: str) -> list[WebSocket[Any]]:
        return self._rooms.members(room)

    def broadcast(
        self,
        data: Any,
        rooms: list[str] | tuple[str, ...] | None = None,
        route: str | None = None,
    ) -> int:
        """Send ``data`` to the members of ``rooms`` (each once), or to every connection of
        ``route``, or to every open connection; returns how many it reached."""
        message = Message.from_data(data)
        if rooms is not None:
            if isinstance(rooms, str):
                raise TypeError("rooms must be a list of room names, not a string")
            receivers: Any = self._rooms.union(rooms)
            if route is not None:
                receivers = [ws for ws in receivers if ws.route == route]
        elif route is not None:
            receivers = self.connections.route(route)
        else:
            receivers = self.connections._members()
        return fan_out(receivers, message)

    @property
    def dropped(self) -> int:
        """Messages dropped at a connection's ``backpressure_limit`` since the server started."""
        return self._server.dropped if self._server is not None else self._dropped_before

    # ----------------------------------------------------------------- lifecycle hooks

    def on_startup(self, fn: Hook) -> Hook:
        """Run ``fn()`` (plain or async) before the server accepts connections."""
        self._startup.append(fn)
        return fn

    def on_shutdown(self, fn: Hook) -> Hook:
        """Run ``fn()`` (plain or async) after every connection is closed."""
        self._shutdown.append(fn)
        return fn

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
    ) -> None:
        """Run the startup hooks, start the backplane, then start serving on the running loop
        and return; ``app.port`` is the bound port."""
        if self._server is not None:
            raise HarpyError("this app is already listening")
        if tls is None and tls_cert is not None:
            tls = make_ssl_context(tls_cert, tls_key)
        elif tls_key is not None and tls_cert is None:
            raise ConfigurationError("tls_key given without tls_cert")
        loop = asyncio.get_running_loop()
        for hook in self._startup:
            await _maybe_await(hook())
        if self._relay is not None:
            await self._relay.start()
        server = Server(
            lambda srv: WebSocket(srv, self),
            loop=loop,
            handshake_timeout=self.handshake_timeout,
            max_header_size=self.max_header_size,
        )
        try:
            await server.listen(host, port, ssl_context=tls, backlog=backlog, reuse_port=reuse_port)
        except BaseException:
            if self._relay is not None:
                await self._relay.stop()
            raise
        self._server = server
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
        self._dropped_before = server.dropped
        if self._relay is not None:
            try:
                await self._relay.stop()
            except Exception:
                logger.exception("harpy: stopping the backplane failed")
        for hook in self._shutdown:
            try:
                await _maybe_await(hook())
            except Exception:
                logger.exception("harpy: shutdown hook %r failed", hook)
        logger.info("harpy: stopped")

    async def serve(self, host: str = "127.0.0.1", port: int = 3000, **kwargs: Any) -> None:
        """Listen, then serve until SIGINT/SIGTERM or :meth:`stop`, then shut down gracefully."""
        self._stopping = stopping = asyncio.Event()
        await self.listen(host, port, **kwargs)
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stopping.set)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        try:
            await stopping.wait()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            await self.shutdown()

    def stop(self) -> None:
        """Ask :meth:`serve` (and so :meth:`run`) to shut down."""
        if self._stopping is not None:
            self._stopping.set()

    def run(self, host: str = "127.0.0.1", port: int = 3000, **kwargs: Any) -> None:
        """Serve until SIGINT or SIGTERM, on uvloop when it is installed; blocks."""
        if not logging.getLogger().handlers and not logger.handlers:
            logging.basicConfig(level=logging.INFO, format="%(message)s")
        run_loop(self.serve(host, port, **kwargs))


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop when available, else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value

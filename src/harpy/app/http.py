"""The HTTP side of an app: which plain requests get a health answer, metrics or a file.

The app decides; the server layer builds the bytes (:class:`~harpy.server.http.StaticFiles`,
:meth:`~harpy.server.Connection.respond`).  Order: the health and metrics paths first (exact
paths, refused as WebSocket routes), then the WebSocket routes (a plain request to one keeps its
426), then the static mounts, longest prefix first, for requests that are not upgrades; anything
else is 404.  Every answer closes its connection (no keep-alive).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..exceptions import ConfigurationError
from ..server.http import Response, StaticFiles

if TYPE_CHECKING:
    from ..protocol import Request
    from ..server import Connection
    from .app import App
    from .websocket import WebSocket

__all__ = ["HttpSide", "Stats"]

logger = logging.getLogger("harpy")

_TEXT = [("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store")]


class Stats:
    """What the app counts for its metrics and access log: plain ints and dicts, touched on the
    way in and out of a connection, never per message (those counters are per connection)."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "closes",
        "handler_errors",
        "messages_in",
        "messages_out",
        "refused",
    )

    def __init__(self) -> None:
        #: Handshakes (and plain requests) refused, by HTTP status.
        self.refused: dict[int, int] = {}
        #: Closed connections by close code (1006: no close frame came).
        self.closes: dict[int, int] = {}
        #: Handler exceptions by route pattern.
        self.handler_errors: dict[str, int] = {}
        #: Totals of the connections already closed (the open ones keep their own).
        self.messages_in = 0
        self.messages_out = 0
        self.bytes_in = 0
        self.bytes_out = 0

    def add_closed(self, ws: WebSocket[Any]) -> None:
        self.messages_in += ws.messages_in
        self.messages_out += ws.messages_out
        self.bytes_in += ws.bytes_in
        self.bytes_out += ws.bytes_out


def _path_option(value: bool | str | None, default: str, name: str) -> str | None:
    """``True``: the default path; ``False``/None: off; a string: that path."""
    if value is None or value is False:
        return None
    if value is True:
        return default
    if not isinstance(value, str) or not value.startswith("/") or "?" in value:
        raise ConfigurationError(f"{name} must be True, False, None or a path starting with /")
    return value


class HttpSide:
    """Health, metrics and static files for one app."""

    __slots__ = ("_app", "exact", "health_path", "metrics_path", "mounts", "registry")

    def __init__(
        self,
        app: App,
        health: bool | str | None,
        static: Mapping[str, str | os.PathLike[str]] | None,
        metrics: bool | str | None,
    ) -> None:
        self._app = app
        self.health_path = _path_option(health, "/healthz", "health")
        self.metrics_path = _path_option(metrics, "/metrics", "metrics")
        #: The app's own Prometheus registry (None without ``metrics``): add your metrics to it.
        self.registry: Any = None
        #: Exact paths answered before any route: health, metrics.
        self.exact: dict[str, Callable[[Connection, Request], None]] = {}
        if self.health_path is not None:
            self.exact[self.health_path] = self._health
        if self.metrics_path is not None:
            if self.metrics_path == self.health_path:
                raise ConfigurationError("health and metrics need different paths")
            from .metrics import make_registry

            self.registry = make_registry(app)
            self.exact[self.metrics_path] = self._metrics
        if static is not None and not isinstance(static, Mapping):
            raise ConfigurationError('static must map URL prefixes to folders: {"/": "public"}')
        mounts = []
        for prefix, folder in (static or {}).items():
            if not isinstance(prefix, str) or not prefix.startswith("/"):
                raise ConfigurationError(f"static prefix {prefix!r} must start with /")
            mounts.append((prefix.rstrip("/"), StaticFiles(folder)))
        #: (prefix without its final /, files), the longest prefix first.
        self.mounts = sorted(mounts, key=lambda m: len(m[0]), reverse=True)

    def check_route(self, pattern: str) -> None:
        """A WebSocket route may not take the health or metrics path."""
        if pattern in self.exact:
            raise ConfigurationError(
                f"route {pattern!r} is the app's health or metrics path; move one of them"
            )

    def answer_exact(self, conn: Connection, request: Request) -> bool:
        """Answer a plain request for the health or metrics path; False for anything else
        (an upgrade request there finds no route: 404)."""
        handler = self.exact.get(request.path)
        if handler is None or not _plain(conn, request):
            return False
        if request.method not in ("GET", "HEAD"):
            conn.respond(405, [("Allow", "GET, HEAD"), *_TEXT], b"Method Not Allowed\n")
        else:
            handler(conn, request)
        return True

    def answer_static(self, conn: Connection, request: Request) -> bool:
        """Start answering a plain request from a static mount; False when none covers it."""
        if not self.mounts or not _plain(conn, request):
            return False
        path = request.path
        for prefix, files in self.mounts:
            if path == prefix or path.startswith(prefix + "/"):
                rest = path[len(prefix) :]
                task = asyncio.get_running_loop().create_task(
                    files.respond(
                        request.method,
                        rest,
                        path,
                        request.query_string,
                        request.get("if-none-match"),
                    )
                )
                task.add_done_callback(lambda done: _send(conn, done))
                return True
        return False

    def _health(self, conn: Connection, request: Request) -> None:
        """200 while serving; 503 once a stop was asked for, draining or shutting down (take
        this node out of rotation)."""
        if conn.server_closing or self._app.draining:
            _reply(conn, request, 503, [*_TEXT, ("Retry-After", "5")], b"shutting down\n")
        else:
            _reply(conn, request, 200, _TEXT, b"ok\n")

    def _metrics(self, conn: Connection, request: Request) -> None:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        body = generate_latest(self.registry)
        _reply(conn, request, 200, [("Content-Type", CONTENT_TYPE_LATEST)], body)


def _plain(conn: Connection, request: Request) -> bool:
    """A plain HTTP request on the native server: not an upgrade, and not a connection of the
    ASGI adapter (no transport: its server answers HTTP itself)."""
    return conn.answers_http and "websocket" not in request.tokens("upgrade")


def _reply(
    conn: Connection, request: Request, status: int, headers: list[tuple[str, str]], body: bytes
) -> None:
    """Answer GET with ``body``, HEAD with its length only."""
    if request.method == "HEAD":
        conn.respond(status, headers, b"", content_length=len(body))
    else:
        conn.respond(status, headers, body)


def _send(conn: Connection, done: asyncio.Task[Response]) -> None:
    if done.cancelled():
        conn.abort()
        return
    try:
        response = done.result()
    except Exception:  # an answer is owed whatever failed
        logger.exception("harpy: serving a static file failed")
        response = Response(500, list(_TEXT), b"Internal Server Error\n")
    conn.respond(
        response.status, response.headers, response.body, content_length=response.content_length
    )

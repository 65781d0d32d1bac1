"""``Router``: WebSocket routes declared apart from the app and mounted under a prefix."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, Unpack

from ..exceptions import RouteError
from .options import RouteOptionsKw, check_options

__all__ = ["RouteSpec", "Router", "join_prefix"]

C = TypeVar("C")


class RouteSpec:
    """What ``ws()`` was given: resolved into a ``Route`` when it reaches an ``App``."""

    __slots__ = ("data", "handlers", "options", "pattern")

    def __init__(
        self,
        pattern: str,
        handlers: object,
        data: Callable[[], Any] | None,
        options: RouteOptionsKw,
    ) -> None:
        self.pattern = pattern
        self.handlers = handlers
        self.data = data
        self.options = options

    def with_prefix(self, prefix: str) -> RouteSpec:
        return RouteSpec(join_prefix(prefix, self.pattern), self.handlers, self.data, self.options)


def join_prefix(prefix: str, pattern: str) -> str:
    """``/api`` + ``/chat`` is ``/api/chat``; an empty prefix leaves the pattern alone."""
    if not prefix:
        return pattern
    if not prefix.startswith("/"):
        raise RouteError(f"prefix {prefix!r} must start with '/'")
    prefix = prefix.rstrip("/")
    return prefix + pattern if pattern != "/" else prefix or "/"


class Routes:
    """``ws()`` as the App and the Router share it."""

    def __init__(self) -> None:
        self._specs: list[RouteSpec] = []

    def ws(
        self,
        path: str,
        handlers: object = None,
        *,
        data: Callable[[], Any] | None = None,
        **options: Unpack[RouteOptionsKw],
    ) -> Any:
        """Declare a WebSocket route; without ``handlers``, decorate a class or object with them.

        ``data`` builds each connection's ``ws.data`` (called with no argument); route options
        (``max_message_size``, ``idle_timeout``...) override the app's defaults for this route.
        """
        if not isinstance(path, str) or not path.startswith("/"):
            raise RouteError(f"route path {path!r} must be a string starting with '/'")
        check_options(options, "ws()")
        if data is not None and not callable(data):
            raise TypeError("ws(data=...) must be a class or a callable with no arguments")
        if handlers is None:

            def decorate(target: C) -> C:
                self._add(RouteSpec(path, target, data, options))
                return target

            return decorate
        self._add(RouteSpec(path, handlers, data, options))
        return None

    def _add(self, spec: RouteSpec) -> None:
        self._specs.append(spec)

    @property
    def specs(self) -> list[RouteSpec]:
        """The routes declared here, in order, as given."""
        return list(self._specs)

    def include(self, router: Router, prefix: str = "") -> None:
        """Mount every route of ``router`` under ``prefix`` (routes are copied now)."""
        if not isinstance(router, Router):
            raise TypeError(f"include() takes a Router, not {type(router).__name__}")
        for spec in router.specs:
            self._add(spec.with_prefix(prefix))


class Router(Routes):
    """A group of routes: ``router.ws(...)``, then ``app.include(router, prefix="/api")``."""

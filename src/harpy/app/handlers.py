"""Turning what a user passes to ``ws()`` (an object, a class or a mapping) into handlers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..exceptions import ConfigurationError

__all__ = ["HANDLER_NAMES", "Handlers", "resolve_handlers"]

HANDLER_NAMES = ("open", "message", "close", "drain", "error", "ping", "pong")

Handler = Callable[..., Any]


class Handlers:
    """The handlers of one route; each is called with the connection first, plain or async."""

    __slots__ = (*HANDLER_NAMES, "source")

    def __init__(self, source: object, found: Mapping[str, Handler | None]) -> None:
        self.source = source
        self.open: Handler | None = found.get("open")
        self.message: Handler | None = found.get("message")
        self.close: Handler | None = found.get("close")
        self.drain: Handler | None = found.get("drain")
        self.error: Handler | None = found.get("error")
        self.ping: Handler | None = found.get("ping")
        self.pong: Handler | None = found.get("pong")

    def __repr__(self) -> str:
        names = [n for n in HANDLER_NAMES if getattr(self, n) is not None]
        return f"<Handlers {', '.join(names) or 'none'}>"


def resolve_handlers(handlers: object) -> Handlers:
    """Accept a mapping of handler names, a class (instantiated once, here) or any object."""
    if handlers is None:
        raise ConfigurationError("ws() needs handlers: an object, a class or a mapping")
    found: dict[str, Handler | None] = {}
    if isinstance(handlers, Mapping):
        unknown = sorted(str(k) for k in handlers if k not in HANDLER_NAMES)
        if unknown:
            raise ConfigurationError(
                f"unknown handler name(s) {', '.join(unknown)}; expected some of "
                + ", ".join(HANDLER_NAMES)
            )
        items: Mapping[str, Any] = handlers
    else:
        if isinstance(handlers, type):
            cls = handlers
            try:
                handlers = cls()
            except TypeError as exc:
                raise ConfigurationError(
                    f"handler class {cls.__name__} must be constructible without arguments: {exc}"
                ) from exc
        items = {name: getattr(handlers, name, None) for name in HANDLER_NAMES}
    for name in HANDLER_NAMES:
        fn = items.get(name)
        if fn is not None and not callable(fn):
            raise ConfigurationError(f"handler {name!r} is not callable: {fn!r}")
        found[name] = fn
    return Handlers(handlers, found)

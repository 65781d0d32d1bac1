"""Turning what a user passes to ``ws()`` (an object, a class or a mapping) into handlers.

Mistakes are caught here, at registration, rather than on the first connection: handlers with
none of the known names, a public method whose name is close to a handler's (``mesage``,
``on_open``, ``onMessage``, ``Message``: it would never be called, and its messages would vanish),
and handlers that cannot take the arguments harpy calls them with.

One handlers object serves every connection of a route: a class is instantiated once, here.
Per-connection state belongs in ``ws.data`` (the route's ``data=`` factory makes a fresh one for
each connection), so a handler method never confuses two clients' state, and a route costs
one object, not one per connection.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..exceptions import ConfigurationError

__all__ = ["HANDLER_NAMES", "HANDLER_PARAMETERS", "Handlers", "resolve_handlers"]

HANDLER_NAMES = ("open", "message", "close", "drain", "error", "ping", "pong")

#: The parameters harpy passes to each handler, the connection first.
HANDLER_PARAMETERS: dict[str, tuple[str, ...]] = {
    "open": ("ws",),
    "message": ("ws", "data"),
    "close": ("ws", "code", "reason"),
    "drain": ("ws",),
    "error": ("ws", "exc"),
    "ping": ("ws", "data"),
    "pong": ("ws", "data"),
}

Handler = Callable[..., Any]


class Handlers:
    """The handlers of one route; each is called with the connection first, plain or async."""

    __slots__ = (*HANDLER_NAMES, "source")

    def __init__(self, source: object, found: Mapping[str, Handler | None]) -> None:
        self.source = source
        """What was passed to ``ws()``: the object (a class's one instance) or the mapping."""
        self.open: Handler | None = found.get("open")
        """``open(ws)``, or None."""
        self.message: Handler | None = found.get("message")
        """``message(ws, data)``, or None."""
        self.close: Handler | None = found.get("close")
        """``close(ws, code, reason)``, or None."""
        self.drain: Handler | None = found.get("drain")
        """``drain(ws)``, or None."""
        self.error: Handler | None = found.get("error")
        """``error(ws, exc)``, or None."""
        self.ping: Handler | None = found.get("ping")
        """``ping(ws, data)``, or None."""
        self.pong: Handler | None = found.get("pong")
        """``pong(ws, data)``, or None."""

    def __repr__(self) -> str:
        names = [n for n in HANDLER_NAMES if getattr(self, n) is not None]
        return f"<Handlers {', '.join(names) or 'none'}>"


def resolve_handlers(handlers: object) -> Handlers:
    """Accept a mapping of handler names, a class (instantiated once, here) or any object;
    raise :class:`~harpy.ConfigurationError` for one with no known handler, or a handler that
    cannot take its arguments.  An empty mapping says "no handlers" on purpose (a route that
    only auto-broadcasts, or only counts connections)."""
    if handlers is None:
        raise ConfigurationError("ws() needs handlers: an object, a class or a mapping")
    found: dict[str, Handler | None] = {}
    if isinstance(handlers, Mapping):
        unknown = sorted(str(k) for k in handlers if k not in HANDLER_NAMES)
        if unknown:
            raise ConfigurationError(
                f"unknown handler name(s) {_with_hints(unknown)}; expected some of "
                + ", ".join(HANDLER_NAMES)
            )
        items: Mapping[str, Any] = handlers
        candidates: Iterable[str] = ()
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
        candidates = [n for n in dir(handlers) if not n.startswith("__")]
        _refuse_near_misses(handlers, candidates)
    for name in HANDLER_NAMES:
        fn = items.get(name)
        if fn is not None:
            if not callable(fn):
                raise ConfigurationError(f"handler {name!r} is not callable: {fn!r}")
            _check_signature(name, fn)
        found[name] = fn
    if not any(found.values()) and not (isinstance(handlers, Mapping) and not handlers):
        near = [n for n in candidates if _known_name(n) is not None]
        hint = f" (found {_with_hints(near)})" if near else ""
        raise ConfigurationError(
            f"{_describe(handlers)} has none of the handler names{hint}; "
            f"define some of: {', '.join(HANDLER_NAMES)}"
        )
    return Handlers(handlers, found)


def _check_signature(name: str, fn: Handler) -> None:
    """``fn`` must accept the arguments ``name`` is called with (*args and defaults welcome)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # a builtin or C callable without a signature: trust it
    params = HANDLER_PARAMETERS[name]
    try:
        signature.bind(*params)
    except TypeError:
        wanted = f"{name}({', '.join(params)})"
        raise ConfigurationError(
            f"handler {name!r} must take {len(params)} argument(s), as {wanted}; "
            f"it is {getattr(fn, '__qualname__', repr(fn))}{signature}"
        ) from None


def _refuse_near_misses(handlers: object, names: Iterable[str]) -> None:
    """A public method named almost like a handler is a typo that would never be called: refuse
    it, naming the handler it probably means (a helper method stays private: ``_name``)."""
    misses = [
        n
        for n in names
        if not n.startswith("_")
        and n not in HANDLER_NAMES
        and _known_name(n) is not None
        and callable(getattr(handlers, n, None))
    ]
    if misses:
        raise ConfigurationError(
            f"{_describe(handlers)} has method(s) named like handlers but not one: "
            f"{_with_hints(misses)}; the handler names are {', '.join(HANDLER_NAMES)} "
            "(a helper method's name starts with _)"
        )


def _known_name(name: str) -> str | None:
    """The handler name that ``name`` (``on_message``, ``onMessage``, ``handle_close``,
    ``Message``, ``mesage``...) probably means, or None."""
    bare = name.lower().replace("_", "")
    for prefix in ("handle", "on"):
        if bare.startswith(prefix) and bare[len(prefix) :] in HANDLER_NAMES:
            return bare[len(prefix) :]
    if bare in HANDLER_NAMES:
        return bare
    # A typo: one letter missing, doubled or swapped (``mesage``, ``opne``, ``closse``).
    near = difflib.get_close_matches(bare, HANDLER_NAMES, n=1, cutoff=0.8)
    return near[0] if near else None


def _with_hints(names: Iterable[str]) -> str:
    out = []
    for name in names:
        known = _known_name(name)
        out.append(f"{name!r}" + (f" (did you mean {known!r}?)" if known and known != name else ""))
    return ", ".join(out)


def _describe(handlers: object) -> str:
    if isinstance(handlers, Mapping):
        return "the handlers mapping"
    return f"handlers object {type(handlers).__name__}"

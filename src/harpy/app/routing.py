"""The path-pattern table that picks a route for each WebSocket upgrade request.

Matching runs once per handshake, so it never scans the route list: a fully static path is one
dict lookup, and a path with parameters walks a segment trie whose depth is the longest pattern's.

Pattern syntax:

* a pattern starts with ``/``; segments are separated by ``/``; one trailing slash is ignored
  (``/chat`` and ``/chat/`` are the same route), an empty segment (``/a//b``) is an error;
* a static segment is literal text without ``:``, ``{``, ``}`` or ``*``, compared with the raw
  (still percent-encoded) path segment, case-sensitively;
* ``:name`` or ``{name}`` captures exactly one non-empty segment, percent-decoded;
* a last segment ``*`` (or ``*name``) captures the rest of the path, zero or more segments,
  without its leading slash and percent-decoded, under the key ``"*"`` (or ``name``).

When several routes match, the most specific wins whatever the registration order: deciding
segment by segment from the left, static beats parameter beats wildcard, and a branch that cannot
complete the match falls back to the next one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar
from urllib.parse import unquote

from ..exceptions import RouteError

__all__ = ["RouteTable"]

T = TypeVar("T")

# Shape markers: they cannot collide with static text, which never contains ':' or '*'.
_PARAM = ":"
_WILDCARD = "*"
_SPECIAL = frozenset(":{}*")


class _Route(Generic[T]):
    """One registered pattern with what ``match`` needs to build its result."""

    __slots__ = ("names", "pattern", "value")

    def __init__(self, pattern: str, value: T, names: tuple[str, ...]) -> None:
        self.pattern = pattern
        self.value = value
        # Keys for the captured values, in path order; a wildcard's key comes last.
        self.names = names


class _Node(Generic[T]):
    """A trie node; one per distinct prefix shape of the parameter routes."""

    __slots__ = ("end", "param", "static", "tail")

    def __init__(self) -> None:
        self.static: dict[str, _Node[T]] = {}
        self.param: _Node[T] | None = None
        # The route whose pattern ends exactly here, and the wildcard route hanging off here.
        self.end: _Route[T] | None = None
        self.tail: _Route[T] | None = None


def _normalise(path: str) -> str:
    """Drop one trailing slash so ``/chat/`` is ``/chat``; ``/`` and ``//`` are left alone."""
    if len(path) > 2 and path[-1] == "/":
        return path[:-1]
    return path


def _parse(pattern: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Validate a pattern; return its shape (static text or a marker per segment) and names."""
    if not pattern.startswith("/"):
        raise RouteError(f"route pattern {pattern!r} must start with '/'")
    body = _normalise(pattern)[1:]
    segments = body.split("/") if body else []
    shape: list[str] = []
    names: list[str] = []
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        if not segment:
            raise RouteError(f"route pattern {pattern!r} has an empty segment")
        if segment[0] == "*":
            if index != last:
                raise RouteError(
                    f"route pattern {pattern!r}: a wildcard {segment!r} must be the last segment"
                )
            name = segment[1:]
            if name and not name.isidentifier():
                raise RouteError(
                    f"route pattern {pattern!r}: wildcard name {name!r} is not an identifier"
                )
            kind, key = _WILDCARD, name or "*"
        elif segment[0] == ":" or (segment[0] == "{" and segment[-1] == "}" and len(segment) > 1):
            name = segment[1:] if segment[0] == ":" else segment[1:-1]
            if not name.isidentifier():
                raise RouteError(
                    f"route pattern {pattern!r}: parameter name {name!r} is not an identifier"
                )
            kind, key = _PARAM, name
        elif _SPECIAL.isdisjoint(segment):
            shape.append(segment)
            continue
        else:
            raise RouteError(
                f"route pattern {pattern!r}: segment {segment!r} mixes static text with "
                "parameter syntax; use plain text, ':name', '{name}' or a last '*' / '*name'"
            )
        if key in names:
            raise RouteError(f"route pattern {pattern!r} uses the name {key!r} twice")
        shape.append(kind)
        names.append(key)
    return tuple(shape), tuple(names)


def _walk(node: _Node[T], segments: list[str], index: int, captured: list[str]) -> _Route[T] | None:
    """Depth-first search, most specific branch first; leaves ``captured`` unchanged on failure.

    Each trie node sits at one depth, so it is visited at most once: the cost is bounded by the
    trie's size however many branches are tried.
    """
    if index == len(segments):
        if node.end is not None:
            return node.end
        if node.tail is not None:
            captured.append("")
            return node.tail
        return None
    segment = segments[index]
    child = node.static.get(segment)
    if child is not None:
        route = _walk(child, segments, index + 1, captured)
        if route is not None:
            return route
    child = node.param
    if child is not None and segment:
        captured.append(segment)
        route = _walk(child, segments, index + 1, captured)
        if route is not None:
            return route
        captured.pop()
    if node.tail is not None:
        captured.append("/".join(segments[index:]))
        return node.tail
    return None


class RouteTable(Generic[T]):
    """Maps path patterns to values; ``match`` finds the most specific route for a request path."""

    __slots__ = ("_root", "_routes", "_shapes", "_static")

    def __init__(self) -> None:
        self._routes: list[_Route[T]] = []
        # Fully static routes, keyed by normalised path: they need no trie walk.
        self._static: dict[str, _Route[T]] = {}
        self._shapes: dict[tuple[str, ...], _Route[T]] = {}
        self._root: _Node[T] | None = None

    def add(self, pattern: str, value: T) -> None:
        """Register ``pattern``; raise :class:`RouteError` if it is malformed or already taken.

        Two patterns are the same route when they differ only in parameter names or a trailing
        slash, since no request could tell them apart.  A failed ``add`` changes nothing.
        """
        shape, names = _parse(pattern)
        existing = self._shapes.get(shape)
        if existing is not None:
            raise RouteError(
                f"route pattern {pattern!r} duplicates the registered pattern {existing.pattern!r}"
            )
        route = _Route(pattern, value, names)
        if not names:
            self._static[_normalise(pattern)] = route
        else:
            if self._root is None:
                self._root = _Node()
            node = self._root
            for kind in shape:
                if kind == _WILDCARD:
                    node.tail = route
                    break
                if kind == _PARAM:
                    if node.param is None:
                        node.param = _Node()
                    node = node.param
                else:
                    node = node.static.setdefault(kind, _Node())
            else:
                node.end = route
        self._shapes[shape] = route
        self._routes.append(route)

    def match(self, path: str) -> tuple[T, dict[str, str]] | None:
        """Return the value and parameters of the best route for a raw URL path, or ``None``.

        ``path`` excludes the query string and is still percent-encoded: static segments are
        compared as sent, and only captured values are decoded, so ``%2F`` inside a parameter
        never splits it.  The parameters dict is new on every call.
        """
        path = _normalise(path)
        route = self._static.get(path)
        if route is not None:
            return route.value, {}
        root = self._root
        if root is None or not path.startswith("/"):
            return None
        segments = path[1:].split("/") if len(path) > 1 else []
        captured: list[str] = []
        route = _walk(root, segments, 0, captured)
        if route is None:
            return None
        return route.value, {
            name: unquote(raw) if "%" in raw else raw
            for name, raw in zip(route.names, captured, strict=True)
        }

    def patterns(self) -> list[str]:
        """The patterns as given to ``add``, in registration order."""
        return [route.pattern for route in self._routes]

    def __iter__(self) -> Iterator[tuple[str, T]]:
        """Yield ``(pattern, value)`` pairs in registration order."""
        return iter([(route.pattern, route.value) for route in self._routes])

    def __len__(self) -> int:
        return len(self._routes)

    def __repr__(self) -> str:
        return f"<RouteTable {self.patterns()!r}>"

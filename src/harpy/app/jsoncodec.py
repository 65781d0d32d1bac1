"""JSON for an app: how ``send``/``publish``/``broadcast`` serialise, and how ``json=True``
routes parse what arrives.

``App(json_dumps=..., json_loads=...)`` plugs in any pair; the default is orjson when it is
installed (``pip install harpy-ws[orjson]``), else the standard library, both compact.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..exceptions import ConfigurationError, InvalidMessage

if TYPE_CHECKING:
    from .websocket import WebSocket

__all__ = ["Dumps", "Loads", "default_dumps", "default_loads", "json_parsing", "make_encoder"]

#: Serialises a value as JSON: ``str`` or UTF-8 ``bytes``.
Dumps = Callable[[Any], "str | bytes"]
#: Parses JSON text (``str``) or UTF-8 bytes.
Loads = Callable[["str | bytes"], Any]


def _stdlib_dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


try:
    import orjson
except ImportError:  # pragma: no cover - depends on what is installed
    default_dumps: Dumps = _stdlib_dumps
    default_loads: Loads = json.loads
else:
    default_dumps = orjson.dumps
    default_loads = orjson.loads


def make_encoder(dumps: Dumps | None) -> Callable[[Any], bytes]:
    """What the app sends for a value that is neither ``str`` nor bytes: ``dumps(value)`` as
    UTF-8 bytes; a value ``dumps`` refuses is a :class:`TypeError` naming its type."""
    dumps = default_dumps if dumps is None else _check_callable(dumps, "json_dumps")

    def encode_json(value: Any) -> bytes:
        try:
            text = dumps(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"cannot send {type(value).__name__}: not str, bytes or JSON ({exc})"
            ) from exc
        if type(text) is bytes:
            return text
        if isinstance(text, str):
            return text.encode("utf-8")
        raise TypeError(f"json_dumps returned {type(text).__name__}, not str or bytes")

    return encode_json


def resolve_loads(loads: Loads | None) -> Loads:
    return default_loads if loads is None else _check_callable(loads, "json_loads")


def json_parsing(
    handler: Callable[..., Any] | None, loads: Loads
) -> Callable[[WebSocket[Any], str | bytes], Any]:
    """``handler(ws, value)`` with the message parsed by ``loads``; a message that does not
    parse raises :class:`~harpy.InvalidMessage` (the connection's ``error`` handler, else 1007)."""

    def parse_then_handle(ws: WebSocket[Any], message: str | bytes) -> Any:
        try:
            value = loads(message)
        except Exception as exc:  # each parser has its own error type
            raise InvalidMessage(f"message is not valid JSON: {exc}") from exc
        return handler(ws, value) if handler is not None else None

    return parse_then_handle


def _check_callable(fn: Any, name: str) -> Any:
    if not callable(fn):
        raise ConfigurationError(f"{name} must be a function, not {fn!r}")
    return fn

"""The access log, off the connection's path: entries collected, records made once per tick.

One INFO record on the logger ``harpy.access`` per upgrade or plain HTTP answer, and one per
close, with the fields in ``extra`` (``event``, ``path``, ``status`` / ``code``,
``remote_address``, ``duration``, ``messages_in``, ``messages_out``) for a JSON formatter.

A connection only appends its entry's fields (one tuple) to the app's :class:`AccessLog`; at
the end of the loop tick the entries of every connection become :class:`logging.LogRecord`
objects and go to the logger's handlers together, in the order they came.  A record's time
(``created``) is therefore that of the write, at most one loop tick after the event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

__all__ = ["AccessLog", "access_logger", "log_time"]

#: The access log's logger.
access_logger = logging.getLogger("harpy.access")
_INFO = logging.INFO

# Every record names the place that logs access, as a record made by ``logger.info`` there
# would (the stack is not walked for each record).
_FILE = __file__
_FUNC = "write"
_LINE = 0


class AccessLog:
    """The access-log entries of one app not yet made records: at most one loop tick's."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: list[tuple[Any, ...]] = []

    def answered(
        self, loop: asyncio.AbstractEventLoop, path: str, status: int, address: str
    ) -> None:
        """An upgrade (101) or a plain HTTP answer (``status``) to ``address`` for ``path``."""
        entries = self._entries
        if not entries:
            loop.call_soon(self.write)
        entries.append((path, status, address))

    def closed(
        self,
        loop: asyncio.AbstractEventLoop,
        path: str,
        code: int,
        address: str,
        duration: float,
        messages_in: int,
        messages_out: int,
    ) -> None:
        """A connection closed with ``code`` after ``duration`` seconds."""
        entries = self._entries
        if not entries:
            loop.call_soon(self.write)
        entries.append((path, code, address, duration, messages_in, messages_out))

    def write(self) -> None:
        """Make the collected entries records, and hand them to the logger's handlers."""
        entries = self._entries
        if not entries:
            return
        self._entries = []
        if not access_logger.isEnabledFor(_INFO):
            return  # turned off since
        handler = _direct_handler()
        if handler is not None:
            try:
                _write_lines(handler, entries)
            except Exception:  # noqa: BLE001
                pass  # the records below meet the error in the handler, which reports it
            else:
                return
        logger = access_logger
        make = logger.makeRecord
        handle = logger.handle
        name = logger.name
        for entry in entries:
            message, args, fields = _fields(entry)
            handle(make(name, _INFO, _FILE, _LINE, message, args, None, _FUNC, fields))


# An entry's message shows its first three fields (event, path, status or code), in order.
_ANSWER = "%s %s %s"
_ANSWER_NAMES = ("event", "path", "status", "remote_address")
_CLOSE = "%s %s %s"
_CLOSE_NAMES = (
    "event",
    "path",
    "code",
    "remote_address",
    "duration",
    "messages_in",
    "messages_out",
)


def _fields(entry: tuple[Any, ...]) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """An entry's record: its message, the message's arguments, and its extra fields."""
    if len(entry) == 3:
        event = "upgrade" if entry[1] == 101 else "http"
        values: tuple[Any, ...] = (event, *entry)
        return _ANSWER, values[:3], dict(zip(_ANSWER_NAMES, values, strict=True))
    values = ("close", *entry)
    return _CLOSE, values[:3], dict(zip(_CLOSE_NAMES, values, strict=True))


def _direct_handler() -> logging.StreamHandler[Any] | None:
    """The handler every access record would reach, when records are not needed to write
    them: the only one on the way up from ``harpy.access``, a plain ``StreamHandler`` that
    lets INFO through, without filters, whose formatter makes the same line from the fields
    (``line_template`` or ``format_fields``: the CLI's two formatters).  None otherwise."""
    logger: logging.Logger | None = access_logger
    if access_logger.disabled or access_logger.filters:
        return None
    found: logging.Handler | None = None
    while logger is not None:
        for handler in logger.handlers:
            if found is not None:
                return None
            found = handler
        if not logger.propagate:
            break
        logger = logger.parent
    if (
        type(found) is not logging.StreamHandler
        or found.filters
        or found.level > _INFO
        or not (
            hasattr(found.formatter, "line_template") or hasattr(found.formatter, "format_fields")
        )
    ):
        return None
    return found


def _write_lines(handler: logging.StreamHandler[Any], entries: list[tuple[Any, ...]]) -> None:
    """Write the entries as the handler's formatter would write their records: one write and
    one flush for all of them."""
    formatter: Any = handler.formatter
    end = handler.terminator
    now = _now()
    lines = []
    if hasattr(formatter, "line_template"):
        # One %-template for each kind of entry, filled from the entry's own tuple; made
        # again only for another formatter or line end.
        cached = _templates
        if cached[0] is not formatter or cached[1] != end:
            cached[:] = (
                formatter,
                end,
                formatter.line_template(_ANSWER, _ANSWER_NAMES, 3) + end,
                formatter.line_template(_CLOSE, _CLOSE_NAMES, 3) + end,
            )
        answer = cached[2]
        close = cached[3]
        for entry in entries:
            if len(entry) == 3:
                event = "upgrade" if entry[1] == 101 else "http"
                lines.append(answer % (now, event, *entry))
            else:
                lines.append(close % (now, "close", *entry))
    else:
        name = access_logger.name
        for entry in entries:
            message, args, fields = _fields(entry)
            lines.append(formatter.format_fields(now, "INFO", name, message % args, fields) + end)
    text = "".join(lines)
    handler.acquire()
    try:
        handler.stream.write(text)
        handler.flush()
    finally:
        handler.release()


#: The templates of the last formatter used: [formatter, line end, answer, close].
_templates: list[Any] = [None, "", "", ""]
#: The last time written: [milliseconds since the epoch, as log_time writes it].
_time: list[Any] = [-1, ""]


def _now() -> str:
    """The time now as :func:`log_time` writes it, made again only once per millisecond."""
    now = time.time()
    ms = int(now * 1000)
    if ms != _time[0]:
        _time[:] = (ms, log_time(now))
    return str(_time[1])


def log_time(created: float) -> str:
    """A time (``time.time()``) as the log writes it: ISO 8601 in UTC, to the millisecond."""
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")

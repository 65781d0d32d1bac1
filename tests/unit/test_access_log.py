"""The access log's entries: written once per loop tick, the same lines as records would make.

A real :class:`~harpy.app.access.AccessLog` on a real event loop; the CLI's own logging setup
(``configure_logging``) writing to a stream the test reads.  With the CLI's one handler the
entries are written straight from their fields, in one write per tick; with any other setup
they become records.  Both must give the same lines.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from datetime import datetime
from typing import Any

import pytest

from harpy.app.access import AccessLog, access_logger
from harpy.cli import configure_logging

ENTRIES: list[tuple[str, tuple[Any, ...]]] = [
    ("answered", ("/chat", 101, "127.0.0.1")),
    ("answered", ("/healthz", 200, "::1")),
    ("closed", ("/chat", 1000, "127.0.0.1", 0.000123, 3, 4)),
    ("closed", ("/a%20b", 1006, "10.0.0.7", 12.5, 0, 1_000_000)),
]


class CountingStream(io.StringIO):
    """A text stream that counts its writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def cli_handler(fmt: str) -> tuple[logging.StreamHandler[Any], CountingStream]:
    configure_logging("info", fmt)
    (handler,) = logging.getLogger().handlers
    assert isinstance(handler, logging.StreamHandler)
    stream = CountingStream()
    handler.setStream(stream)
    return handler, stream


async def log_in_one_tick(log: AccessLog) -> None:
    loop = asyncio.get_running_loop()
    for kind, args in ENTRIES:
        getattr(log, kind)(loop, *args)
    await asyncio.sleep(0)  # the end of the tick: the entries are written now
    await asyncio.sleep(0)


def expected_records() -> list[logging.LogRecord]:
    """What ``logger.info`` would make of the entries: the records a handler gets."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    collect = Collect()
    access_logger.addHandler(collect)  # a second handler: entries become records
    try:
        asyncio.run(log_in_one_tick(AccessLog()))
    finally:
        access_logger.removeHandler(collect)
    return records


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_entries_written_once_per_tick_as_their_records_would_be(
    restore_logging: None, fmt: str
) -> None:
    handler, stream = cli_handler(fmt)
    log = AccessLog()
    asyncio.run(log_in_one_tick(log))
    lines = stream.getvalue().splitlines()
    assert stream.writes == 1  # four entries, one write

    # The same entries as records, through the same formatter.
    handler.setStream(io.StringIO())
    records = expected_records()
    assert len(records) == len(ENTRIES)
    formatter = handler.formatter
    assert formatter is not None
    want = [formatter.format(record) for record in records]
    if fmt == "json":
        for line, record_line in zip(lines, want, strict=True):
            got, expect = json.loads(line), json.loads(record_line)
            assert datetime.fromisoformat(got.pop("time")).tzinfo is not None
            expect.pop("time")
            assert got == expect
        assert json.loads(lines[2])["duration"] == 0.000123
    else:
        # Each line: the time, then the same as the record's line.
        times = [line.split(" ", 1)[0] for line in lines]
        assert all(datetime.fromisoformat(t).tzinfo is not None for t in times)
        assert [line.split(" ", 1)[1] for line in lines] == [w.split(" ", 1)[1] for w in want]
        assert lines[2].split(" ", 1)[1] == (
            "close /chat 1000 remote_address=127.0.0.1"
            " duration=0.000123 messages_in=3 messages_out=4"
        )


def test_records_carry_the_fields(restore_logging: None) -> None:
    cli_handler("plain")
    records = expected_records()
    assert [record.event for record in records] == ["upgrade", "http", "close", "close"]  # type: ignore[attr-defined]
    close = records[2]
    assert close.getMessage() == "close /chat 1000"
    fields = ("path", "code", "remote_address", "duration", "messages_in", "messages_out")
    assert tuple(getattr(close, name) for name in fields) == ENTRIES[2][1]
    assert records[1].status == 200 and records[1].remote_address == "::1"  # type: ignore[attr-defined]


def test_a_filter_gets_every_record(restore_logging: None) -> None:
    """A handler with a filter is not written past: each entry reaches it as a record."""
    handler, stream = cli_handler("plain")
    seen: list[str] = []

    def keep_closes(record: logging.LogRecord) -> bool:
        seen.append(record.getMessage())
        return record.getMessage().startswith("close")

    handler.addFilter(keep_closes)
    asyncio.run(log_in_one_tick(AccessLog()))
    assert len(seen) == len(ENTRIES)
    assert [line.split()[1] for line in stream.getvalue().splitlines()] == ["close", "close"]


def test_nothing_written_when_the_access_log_is_off(restore_logging: None) -> None:
    _, stream = cli_handler("plain")
    access_logger.setLevel(logging.WARNING)
    asyncio.run(log_in_one_tick(AccessLog()))
    assert stream.getvalue() == ""

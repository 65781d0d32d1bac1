"""History streams: the last publications of a channel, each with its offset, under an epoch.

A channel's stream gives every publication an offset (1, 2, 3 ... by one per channel) and
names the stream's life with an epoch: a new epoch only when the stored state was lost (a
restarted process with memory history, a Redis key that expired).  A client that remembers
``(offset, epoch)`` asks :meth:`History.since` for what it missed; when the epoch differs, or
the stream no longer reaches back that far, it cannot be told exactly what it missed.

:class:`History` is the small interface every store implements (memory here, Redis Streams in
:mod:`harpy.pubsub.redis_history`); one contract suite (``tests/channels/test_history.py``)
runs over each.  :meth:`History.append` assigns the offset and stores the publication in one
atomic step, so two nodes appending to one channel never hand out one offset.
"""

from __future__ import annotations

import secrets
import string
import time
from abc import ABC, abstractmethod
from collections import deque
from typing import NamedTuple

from ..exceptions import ConfigurationError

__all__ = [
    "Announce",
    "History",
    "MemoryHistory",
    "Position",
    "Stored",
    "check_meta_ttl",
    "make_epoch",
]

_LETTERS = string.ascii_letters


def check_meta_ttl(meta_ttl: object) -> int:
    """``meta_ttl`` of a store kept by a server (Redis, JetStream): a whole number of seconds
    >= 0, or a :class:`~harpy.ConfigurationError` saying so."""
    if isinstance(meta_ttl, bool) or not isinstance(meta_ttl, int) or meta_ttl < 0:
        raise ConfigurationError("meta_ttl must be a whole number of seconds >= 0")
    return meta_ttl


def make_epoch() -> str:
    """A new epoch: 8 random letters (as Centrifuge's own)."""
    return "".join(secrets.choice(_LETTERS) for _ in range(8))


class Position(NamedTuple):
    """The top of a channel's stream: the last offset handed out (0: none yet) and the epoch."""

    offset: int
    """The last offset handed out (0: none yet)."""
    epoch: str
    """The name of the stream's life: new when its stored state was lost."""


class Stored(NamedTuple):
    """One publication in a stream: its offset and the bytes stored for it (the publication's
    JSON object, without offset and epoch, which the reader adds)."""

    offset: int
    body: bytes


class Announce(NamedTuple):
    """A message a store publishes with the append: ``head + offset + middle + epoch + tail``
    on the backplane channel ``channel`` (the bytes around the position are fixed before the
    position is known)."""

    channel: str
    head: bytes
    middle: bytes
    tail: bytes

    def message(self, position: Position) -> bytes:
        return b"".join(
            (self.head, b"%d" % position.offset, self.middle, position.epoch.encode(), self.tail)
        )


class History(ABC):
    """Where the channels' publications are kept for recovery.

    ``size`` (publications) and ``ttl`` (seconds) bound each channel's stream; they are
    passed per call, since they are options of the channel's namespace.
    """

    @abstractmethod
    async def append(
        self, channel: str, body: bytes, size: int, ttl: float, announce: Announce | None = None
    ) -> Position:
        """Give the next offset of ``channel`` to ``body``, store it (keeping the last ``size``
        publications, for ``ttl`` seconds after the last append) and return its position.

        With ``announce`` (given when :meth:`shares` the app's backplane), also publish
        ``announce.message(position)`` on the backplane channel ``announce.channel``, in the
        same atomic step."""

    @abstractmethod
    async def top(self, channel: str) -> Position:
        """The channel's position now (offset 0 and a fresh epoch for a channel never seen)."""

    @abstractmethod
    async def since(self, channel: str, offset: int, limit: int) -> tuple[list[Stored], Position]:
        """Stored publications with an offset above ``offset``, oldest first (at most ``limit``
        of them; ``limit < 0``: all), and the top.  Those evicted are simply not there: the
        caller compares the first offset with ``offset + 1``."""

    @abstractmethod
    async def latest(self, channel: str, limit: int) -> tuple[list[Stored], Position]:
        """The last ``limit`` stored publications (``limit < 0``: all), newest first, and the
        top."""

    def shares(self, backplane: object) -> bool:
        """Whether :meth:`append` can announce on ``backplane`` itself (then the caller
        delivers the publication only on this node)."""
        return False

    async def start(self) -> None:
        """Connect to the store, if it has one."""
        return None

    async def stop(self) -> None:
        """Close the store's connections."""
        return None


class _Stream:
    __slots__ = ("epoch", "expires", "items", "offset", "touched")

    def __init__(self, now: float) -> None:
        self.epoch = make_epoch()
        self.offset = 0
        self.items: deque[Stored] = deque()
        self.expires = 0.0
        self.touched = now


#: Streams looked up between two sweeps of those unused for ``meta_ttl``.
_SWEEP_EVERY = 1024


class MemoryHistory(History):
    """History in this process's memory: for one node (a restart begins new epochs).

    A channel with no publication for ``meta_ttl`` seconds (0: never) is forgotten, its
    position with it (as Redis's keys expire), so that channel names do not pile up."""

    def __init__(self, meta_ttl: float = 30 * 24 * 3600) -> None:
        if isinstance(meta_ttl, bool) or not isinstance(meta_ttl, (int, float)) or meta_ttl < 0:
            raise ConfigurationError("meta_ttl must be a number of seconds >= 0")
        self.meta_ttl = float(meta_ttl)
        """Seconds without a publication after which a channel is forgotten (0: never)."""
        self._streams: dict[str, _Stream] = {}
        self._clock = time.monotonic
        self._lookups = 0

    def _stream(self, channel: str) -> _Stream:
        """The channel's stream; its publications dropped once ``ttl`` passed since the last
        append (its offset and epoch stay: a client further back is told it missed some)."""
        now = self._clock()
        self._lookups += 1
        if self._lookups >= _SWEEP_EVERY:
            self.sweep(now)
        stream = self._streams.get(channel)
        if stream is None:
            stream = self._streams[channel] = _Stream(now)
        elif stream.expires and stream.expires <= now:
            stream.items.clear()
            stream.expires = 0.0
        return stream

    def sweep(self, now: float | None = None) -> int:
        """Forget the channels without a publication for ``meta_ttl``; how many."""
        self._lookups = 0
        if not self.meta_ttl:
            return 0
        deadline = (self._clock() if now is None else now) - self.meta_ttl
        old = [name for name, stream in self._streams.items() if stream.touched < deadline]
        for name in old:
            del self._streams[name]
        return len(old)

    def __len__(self) -> int:
        """How many channels it holds."""
        return len(self._streams)

    async def append(
        self, channel: str, body: bytes, size: int, ttl: float, announce: Announce | None = None
    ) -> Position:
        stream = self._stream(channel)
        stream.offset += 1
        items = stream.items
        items.append(Stored(stream.offset, body))
        while len(items) > max(size, 0):
            items.popleft()
        stream.touched = now = self._clock()
        stream.expires = now + ttl if ttl > 0 else 0.0
        return Position(stream.offset, stream.epoch)

    async def top(self, channel: str) -> Position:
        stream = self._stream(channel)
        return Position(stream.offset, stream.epoch)

    async def since(self, channel: str, offset: int, limit: int) -> tuple[list[Stored], Position]:
        stream = self._stream(channel)
        found = [item for item in stream.items if item.offset > offset]
        if limit >= 0:
            found = found[:limit]
        return found, Position(stream.offset, stream.epoch)

    async def latest(self, channel: str, limit: int) -> tuple[list[Stored], Position]:
        stream = self._stream(channel)
        found = list(reversed(stream.items))
        if limit >= 0:
            found = found[:limit]
        return found, Position(stream.offset, stream.epoch)

    def __repr__(self) -> str:
        return f"<MemoryHistory {len(self._streams)} channels>"

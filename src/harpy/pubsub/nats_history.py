"""History in NATS JetStream: shared by every node connected to the server, kept across restarts
of the nodes (and of the server, with JetStream's file storage).

Each channel is one subject in a data stream and one in a position stream:

* the **data stream** of the channel's namespace options (``f"{stream}_{size}_{ttl ms}"``)
  keeps its publications, bounded by JetStream itself: ``max_msgs_per_subject = size`` and
  ``max_age = ttl``.  A publication carries its offset and the channel's epoch in headers.
* the **position stream** (``f"{stream}_POS"``, one message per subject, ``max_age =
  meta_ttl``) keeps the channel's epoch and its last offset, so that both outlive the
  publications once ``ttl`` dropped them.

The offset is assigned by JetStream: an append reads the channel's last publication and
publishes the next offset with ``Nats-Expected-Last-Subject-Sequence`` set to that
publication's sequence; the server accepts at most one publication per expected sequence, so
when two nodes race, one is refused and tries again with the new last publication.  Two nodes
never hand out one offset, and the publications of a channel are stored in offset order.

The epoch is a channel's random name, stored in its position; a new one only when both the
position and the publications are gone (the stream was deleted or lost, or ``meta_ttl``
passed without a publication).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import secrets
from typing import Any

from ..exceptions import ConfigurationError
from .history import Announce, History, Position, Stored, check_meta_ttl, make_epoch

__all__ = ["JetStreamHistory"]

logger = logging.getLogger("harpy")

_OFFSET = "Harpy-Offset"
_EPOCH = "Harpy-Epoch"
_EXPECTED = "Nats-Expected-Last-Subject-Sequence"
#: JetStream's error code for a refused ``Nats-Expected-Last-Subject-Sequence``.
_WRONG_LAST_SEQUENCE = 10071
#: JetStream's error code for "no message found".
_NOT_FOUND = 10037
#: Publications one fetch of a history read asks for.
_BATCH = 1000
#: Seconds a fetch of a history read waits for messages the server said it has.
_FETCH_TIMEOUT = 5.0
#: Seconds after which JetStream removes a history reader left behind (a node that died).
_CONSUMER_IDLE = 30.0
#: The most tries of one append racing other nodes before it gives up.
_MAX_TRIES = 1000


class _Meta:
    """A channel's position message: offset, epoch, the data stream it writes to, and the
    message's own sequence (0: no position stored)."""

    __slots__ = ("epoch", "offset", "seq", "stream")

    def __init__(self, offset: int, epoch: str, stream: str, seq: int) -> None:
        self.offset = offset
        self.epoch = epoch
        self.stream = stream
        self.seq = seq


class JetStreamHistory(History):
    """``JetStreamHistory("nats://127.0.0.1:4222")``: history in NATS JetStream (the server
    must run with JetStream: ``nats-server -js``).

    ``stream`` names the streams it creates and ``subject_prefix`` begins their subjects (both
    must differ between two apps on one server).  ``meta_ttl`` (seconds, 0: forever) is how
    long a channel's epoch and offset outlive its last publication; ``storage`` is
    ``"file"`` (kept across server restarts) or ``"memory"``.
    """

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        *,
        stream: str = "HARPY_HISTORY",
        subject_prefix: str = "harpy.history.",
        meta_ttl: int = 30 * 24 * 3600,
        storage: str = "file",
        **nats_options: Any,
    ) -> None:
        meta_ttl = check_meta_ttl(meta_ttl)
        if not stream or not all(c.isalnum() or c in "-_" for c in stream):
            raise ConfigurationError("stream must be letters, digits, '-' and '_'")
        if not subject_prefix.endswith(".") or any(c in subject_prefix for c in " *>"):
            raise ConfigurationError("subject_prefix must be a NATS subject ending with '.'")
        if storage not in ("file", "memory"):
            raise ConfigurationError("storage must be 'file' or 'memory'")
        self.url = url
        """The NATS server."""
        self.stream = stream
        """What the names of its streams begin with."""
        self.subject_prefix = subject_prefix
        """What the subjects of its streams begin with."""
        self.meta_ttl = meta_ttl
        """Seconds a channel's epoch and offset outlive its last publication (0: forever)."""
        self.storage = storage
        """JetStream's storage of the streams: ``"file"`` or ``"memory"``."""
        self._options = nats_options
        self._client: Any = None
        self._js: Any = None
        self._streams: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}

    async def start(self) -> None:
        if self._client is not None:
            return
        import nats

        async def on_error(exc: Exception) -> None:
            # One line (nats-py's own logs a traceback each time the server goes away).
            logger.warning("harpy: JetStream history error: %s", exc)

        self._client = await nats.connect(self.url, **{"error_cb": on_error, **self._options})
        self._js = self._client.jetstream()
        await self._ensure(self._meta_stream, self.subject_prefix + "p.>", 1, self.meta_ttl)

    async def stop(self) -> None:
        client, self._client, self._js = self._client, None, None
        self._streams.clear()
        if client is not None:
            await client.close()

    # ------------------------------------------------------------------ streams and subjects

    @property
    def _meta_stream(self) -> str:
        return f"{self.stream}_POS"

    def _data_stream(self, size: int, ttl: float) -> str:
        return f"{self.stream}_{max(size, 1)}_{max(int(ttl * 1000), 0)}"

    def _subject(self, kind: str, channel: str) -> str:
        """``kind`` "p" (position) or a data stream's name; the channel in base64url (any
        channel name becomes one valid subject token)."""
        token = base64.urlsafe_b64encode(channel.encode("utf-8")).decode().rstrip("=")
        return f"{self.subject_prefix}{kind}.c{token}"

    def _jetstream(self) -> Any:
        if self._js is None:
            raise ConfigurationError(f"{self!r} is not started")
        return self._js

    async def _ensure(self, name: str, subjects: str, size: int, max_age: float) -> None:
        """Create the stream ``name`` unless it exists (a stream found is used as it is)."""
        if name in self._streams:
            return
        from nats.js.api import StorageType, StreamConfig
        from nats.js.errors import NotFoundError

        js = self._jetstream()
        try:
            await js.stream_info(name)
        except NotFoundError:
            config = StreamConfig(
                name=name,
                subjects=[subjects],
                max_msgs_per_subject=size,
                max_age=max_age if max_age > 0 else None,
                storage=StorageType.FILE if self.storage == "file" else StorageType.MEMORY,
                allow_direct=True,
            )
            await js.add_stream(config)
        self._streams.add(name)

    async def _ensure_data(self, size: int, ttl: float) -> str:
        name = self._data_stream(size, ttl)
        await self._ensure(name, f"{self.subject_prefix}{name}.>", max(size, 1), max(ttl, 0.0))
        return name

    # ------------------------------------------------------------------ messages

    async def _last(self, stream: str, subject: str) -> Any:
        """The last message on ``subject`` in ``stream``, or None."""
        from nats.js.errors import NotFoundError

        try:
            return await self._jetstream().get_last_msg(stream, subject)
        except NotFoundError:
            return None

    async def _meta(self, channel: str) -> _Meta | None:
        msg = await self._last(self._meta_stream, self._subject("p", channel))
        if msg is None:
            return None
        value = json.loads(msg.data)
        return _Meta(int(value["o"]), str(value["e"]), str(value["s"]), int(msg.seq))

    async def _publish(self, subject: str, body: bytes, headers: dict[str, str]) -> bool:
        """Publish; False when the expected last subject sequence was wrong (a race lost) or
        the stream was gone (then it is made again, and the caller reads the position anew)."""
        from nats.js.errors import APIError, NoStreamResponseError

        try:
            await self._jetstream().publish(subject, body, headers=headers)
        except NoStreamResponseError:
            self._streams.clear()
            await self._ensure(self._meta_stream, self.subject_prefix + "p.>", 1, self.meta_ttl)
            return False
        except APIError as error:
            if error.err_code == _WRONG_LAST_SEQUENCE:
                return False
            raise
        return True

    async def _write_meta(self, channel: str, meta: _Meta | None, new: _Meta) -> None:
        """Store ``new`` as the channel's position unless a newer one is there already."""
        subject = self._subject("p", channel)
        for _ in range(_MAX_TRIES):
            if meta is not None and meta.offset >= new.offset:
                return
            body = json.dumps({"o": new.offset, "e": new.epoch, "s": new.stream}).encode()
            expected = str(meta.seq if meta is not None else 0)
            if await self._publish(subject, body, {_EXPECTED: expected}):
                return
            meta = await self._meta(channel)
        raise ConfigurationError(f"{self!r}: the position of {channel!r} kept changing")

    async def _position(self, channel: str) -> tuple[_Meta, Any]:
        """The channel's stored position (made with a new epoch for a channel never seen) and
        its last publication in its data stream (or None)."""
        for _ in range(_MAX_TRIES):
            meta = await self._meta(channel)
            if meta is not None:
                if not meta.stream:  # a position with no publication yet
                    return meta, None
                return meta, await self._last(meta.stream, self._subject(meta.stream, channel))
            new = _Meta(0, make_epoch(), "", 0)
            body = json.dumps({"o": 0, "e": new.epoch, "s": ""}).encode()
            if await self._publish(self._subject("p", channel), body, {_EXPECTED: "0"}):
                return new, None
        raise ConfigurationError(f"{self!r}: the position of {channel!r} kept changing")

    # ------------------------------------------------------------------ the History API

    def _lock(self, channel: str) -> asyncio.Lock:
        lock = self._locks.get(channel)
        if lock is None:
            lock = self._locks[channel] = asyncio.Lock()
        return lock

    def _forget_locks(self) -> None:
        """Drop the locks no append holds once there are many (channel names come and go)."""
        if len(self._locks) > 4096:
            for name in [name for name, lock in self._locks.items() if not lock.locked()]:
                del self._locks[name]

    async def append(
        self, channel: str, body: bytes, size: int, ttl: float, announce: Announce | None = None
    ) -> Position:
        stream = await self._ensure_data(size, ttl)
        subject = self._subject(stream, channel)
        # One append of a channel at a time in this process: the races left are between nodes.
        async with self._lock(channel):
            meta = await self._meta(channel) or (await self._position(channel))[0]
            for _ in range(_MAX_TRIES):
                await self._ensure_data(size, ttl)
                last = await self._last(stream, subject)
                offset, epoch = meta.offset, meta.epoch
                if last is not None:
                    offset = max(offset, int(last.headers[_OFFSET]))
                headers = {
                    _OFFSET: str(offset + 1),
                    _EPOCH: epoch,
                    _EXPECTED: str(last.seq if last is not None else 0),
                }
                if await self._publish(subject, body, headers):
                    await self._write_meta(channel, meta, _Meta(offset + 1, epoch, stream, 0))
                    self._forget_locks()
                    return Position(offset + 1, epoch)
                meta, _ = await self._position(channel)
        raise ConfigurationError(f"{self!r}: the appends to {channel!r} kept racing")

    async def top(self, channel: str) -> Position:
        meta, last = await self._position(channel)
        return _top(meta, last)

    async def _walk(self, channel: str, after: int) -> tuple[list[Stored], Position]:
        """The stored publications of the channel with an offset above ``after``, oldest
        first, and the top: read through an ephemeral pull consumer of the channel's subject,
        in batches, up to the last publication seen before (later ones are live)."""
        meta, last = await self._position(channel)
        top = _top(meta, last)
        if last is None or top.offset <= after:
            return [], top
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        from nats.js.errors import NotFoundError

        js = self._jetstream()
        end = int(last.seq)
        name = "r" + secrets.token_hex(8)
        config = ConsumerConfig(
            name=name,
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.ALL,
            inactive_threshold=_CONSUMER_IDLE,
            mem_storage=True,
        )
        config.filter_subject = self._subject(meta.stream, channel)
        await js.add_consumer(meta.stream, config=config)
        reader = await js.pull_subscribe_bind(name=name, stream=meta.stream)
        found: list[Stored] = []
        try:
            # Each batch brings at least one message or ends the read: bounded by the stream.
            for _ in range(end + 1):
                try:
                    batch = await reader.fetch(_BATCH, timeout=_FETCH_TIMEOUT)
                except TimeoutError:
                    break  # the rest expired meanwhile
                done = False
                for msg in batch:
                    if msg.metadata.sequence.stream > end:
                        done = True
                        break
                    offset = int((msg.headers or {})[_OFFSET])
                    if offset > after:
                        found.append(Stored(offset, bytes(msg.data or b"")))
                    done = msg.metadata.sequence.stream >= end
                if done or not batch:
                    break
        finally:
            await reader.unsubscribe()
            with contextlib.suppress(NotFoundError):  # gone with the stream
                await js.delete_consumer(meta.stream, name)
        return found, top

    async def since(self, channel: str, offset: int, limit: int) -> tuple[list[Stored], Position]:
        found, top = await self._walk(channel, offset)
        return (found if limit < 0 else found[:limit]), top

    async def latest(self, channel: str, limit: int) -> tuple[list[Stored], Position]:
        found, top = await self._walk(channel, 0)
        found.reverse()
        return (found if limit < 0 else found[:limit]), top

    def __repr__(self) -> str:
        return f"<JetStreamHistory {self.url} {self.stream!r}>"


def _top(meta: _Meta, last: Any) -> Position:
    offset = meta.offset
    if last is not None:
        offset = max(offset, int(last.headers[_OFFSET]))
    return Position(offset, meta.epoch)

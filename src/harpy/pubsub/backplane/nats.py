"""A backplane on NATS core pub/sub (nats-py).

Each topic is the subject ``subject_prefix + escape_topic(topic)``.  A harpy topic may hold any
character, a NATS subject may not (``.`` separates tokens, ``*`` and ``>`` are wildcards,
whitespace ends it), so a topic is escaped to one safe token: ASCII letters, digits, ``-`` and
``_`` stay as they are; every other UTF-8 byte becomes ``~`` and two hex digits (``room 1`` ->
``room~201``, ``a.b`` -> ``a~2Eb``).  The escape is one-to-one, so two topics never share a
subject.  ``url`` may name several servers of a NATS cluster, separated by commas: nats-py
connects to one and moves to another when it fails.  Reconnection is nats-py's (it
re-subscribes); messages published meanwhile wait in the backplane's queue (up to
``max_queue``), and each batch sent is confirmed by a PING, so a message the server may not
have read is counted in ``dropped``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from ...exceptions import require_extra
from .base import Backplane, BackplaneError, Unsent, redact_url

__all__ = ["NatsBackplane", "escape_topic"]

logger = logging.getLogger("harpy")

_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def escape_topic(topic: str) -> str:
    """``topic`` as one NATS subject token (see the module docstring)."""
    if topic and all(ord(c) < 128 and ord(c) in _SAFE for c in topic):
        return topic
    return "".join(chr(b) if b in _SAFE else f"~{b:02X}" for b in topic.encode("utf-8")) or "~"


# Flushes in flight that nobody awaits any more: held until they end (they end by their own
# timeout at the latest), so that they are not collected while running.
_flushing: set[asyncio.Task[None]] = set()


def _flush_done(task: asyncio.Task[None]) -> None:
    _flushing.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: an unconfirmed batch was counted by its sender already


def _flush(nc: Any, timeout: float) -> asyncio.Task[None]:
    """nats-py's ``flush`` (a PING, done when its PONG comes) in a task of its own, never
    cancelled by harpy.  Cancelling a flush leaves its cancelled future in nats-py's list of
    PONGs awaited, and the PONG that comes for it then stops nats-py's reader (an
    ``InvalidStateError`` in ``_process_pong``): the client would read nothing more.  So a
    sender that stops waiting (disconnected, or itself cancelled at shutdown) leaves the flush
    running to its PONG or its timeout."""
    task = asyncio.get_running_loop().create_task(nc.flush(timeout=timeout))
    _flushing.add(task)
    task.add_done_callback(_flush_done)
    return task


def _still_buffered(pending: int, batch: list[tuple[str, bytes]], subject: Any) -> int:
    """How many messages at the end of ``batch`` are still in nats-py's buffer (``pending``
    bytes, its flush PING included) after a disconnection: nats-py sends those after it
    reconnects, so they are not lost.  Each is one
    ``PUB <subject>  <size>\\r\\n<payload>\\r\\n`` (nats-py's ``pub_cmd``, no reply subject)."""
    pending -= len(b"PING\r\n")
    count = 0
    for topic, envelope in reversed(batch):
        size = len(f"PUB {subject(topic)}  {len(envelope)}\r\n".encode()) + len(envelope) + 2
        if size > pending:
            break
        pending -= size
        count += 1
    return count


class NatsBackplane(Backplane):
    """``NatsBackplane("nats://host:4222")``; extra keyword arguments go to ``nats.connect``."""

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        *,
        subject_prefix: str = "harpy.",
        max_queue: int = 10_000,
        subscribe_timeout: float = 5.0,
        start_timeout: float = 5.0,
        **nats_options: Any,
    ) -> None:
        require_extra("nats", "nats-py", "nats", "NatsBackplane")
        super().__init__(max_queue=max_queue)
        if subject_prefix and (
            any(c.isspace() or c in "*>" for c in subject_prefix)
            or ".." in subject_prefix
            or subject_prefix.startswith(".")
        ):
            raise BackplaneError(f"subject_prefix {subject_prefix!r} is not a valid NATS subject")
        self.url = url
        """The NATS server (``nats://host:4222``, credentials allowed); several, separated by
        commas, for a NATS cluster."""
        if not self.servers:
            raise BackplaneError("NatsBackplane needs at least one server URL")
        self.subject_prefix = subject_prefix
        """Put before each (escaped) topic to make its NATS subject."""
        self.subscribe_timeout = subscribe_timeout
        """Seconds ``subscribe`` waits for the server to confirm."""
        self.start_timeout = start_timeout
        """Seconds ``start`` waits for the first connection (later reconnects never give up)."""
        self._options = nats_options
        self._nc: Any = None
        self._subs: dict[str, Any] = {}
        self._gone = asyncio.Event()  # set while disconnected
        self._disconnects = 0

    @property
    def servers(self) -> list[str]:
        """The servers ``url`` names (several, separated by commas, for a NATS cluster)."""
        return [part.strip() for part in self.url.split(",") if part.strip()]

    @property
    def server(self) -> str | None:
        """The server connected to now (password hidden), or None while disconnected."""
        nc = self._nc
        if nc is None or not nc.is_connected or nc.connected_url is None:
            return None
        url = nc.connected_url
        return redact_url(f"{url.scheme}://{url.netloc}")

    def subject(self, topic: str) -> str:
        """The NATS subject that carries ``topic``."""
        return self.subject_prefix + escape_topic(topic)

    async def _connect(self) -> None:
        from nats.aio.client import Client

        async def on_error(exc: Exception) -> None:
            logger.warning("harpy: NATS backplane error: %s", exc)

        async def on_disconnected() -> None:
            self._disconnects += 1
            self._gone.set()
            self._connection_lost(f"disconnected from {redact_url(self.url)}")

        async def on_reconnected() -> None:
            # nats-py has sent its subscriptions again before it calls this.
            self._gone.clear()
            self._connection_restored()

        options: dict[str, Any] = {
            "error_cb": on_error,
            "disconnected_cb": on_disconnected,
            "reconnected_cb": on_reconnected,
            "max_reconnect_attempts": -1,
            "connect_timeout": 2,
        }
        options.update(self._options)
        self._gone.clear()
        nc = Client()
        try:
            connect = nc.connect(servers=self.servers, allow_reconnect=True, **options)
            await asyncio.wait_for(connect, self.start_timeout)
        except Exception as exc:
            with contextlib.suppress(Exception):
                await nc.close()
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            raise BackplaneError(f"cannot reach NATS at {redact_url(self.url)}: {reason}") from exc
        self._nc = nc

    async def _disconnect(self) -> None:
        nc = self._nc
        self._nc = None
        self._subs.clear()
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()

    async def _send(self, batch: list[tuple[str, bytes]]) -> None:
        from nats.errors import MaxPayloadError

        nc = self._nc
        if not nc.is_connected:
            # nats-py would buffer them for after a reconnect, and a flush would return at once
            # unconfirmed: hold them in the queue instead, until on_reconnected.
            raise Unsent("not connected")
        subject = self.subject
        sent = 0
        disconnects = self._disconnects
        for topic, envelope in batch:
            try:
                await nc.publish(subject(topic), envelope)
                sent += 1
            except MaxPayloadError:  # this one only: the rest of the batch still goes
                self._drop(1, f"{len(envelope)} bytes on {topic!r} exceed the NATS max_payload")
        # NATS core has no acknowledgement: a PING answered proves the server read every
        # message before it.  Without the answer (the server went away) the batch is counted
        # as lost, rather than lost without a trace in a dead socket's buffer.
        # The answer to a PING sent before a disconnection never comes: stop waiting then.
        flush = _flush(nc, self.subscribe_timeout)
        gone = asyncio.get_running_loop().create_task(self._gone.wait())
        try:
            await asyncio.wait({flush, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        # nats-py's flush also returns at once, unconfirmed, once its reader has stopped: a
        # disconnection in between, or a client not connected now, means no confirmation.
        if not flush.done() or disconnects != self._disconnects or not nc.is_connected:
            lost = sent - _still_buffered(nc.pending_data_size, batch, subject)
            if lost:
                self._drop(lost, "the server did not confirm them: disconnected")
        elif flush.exception() is not None:
            self._drop(sent, f"the server did not confirm them: {flush.exception()!r}")

    async def _subscribe(self, topic: str) -> None:
        deliver = self.deliver

        async def on_msg(msg: Any) -> None:
            deliver(topic, msg.data)

        nc = self._nc
        sub = await nc.subscribe(self.subject(topic), cb=on_msg)
        self._subs[topic] = sub
        # nats-py's ``subscribe`` only queues the SUB for its flusher task, while ``flush``
        # writes its PING straight to the socket: the PING can reach the server first, and
        # its PONG then proves nothing about the SUB.  By the time that first PONG is read the
        # flusher has written the SUB, so the PING of a second flush follows it on the wire,
        # and its PONG means the server has the subscription.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.subscribe_timeout
        try:
            for _ in range(2):
                await asyncio.shield(_flush(nc, max(deadline - loop.time(), 0.001)))
        except Exception as exc:
            raise BackplaneError(f"NATS did not confirm the subscription to {topic!r}") from exc

    async def _unsubscribe(self, topic: str) -> None:
        sub = self._subs.pop(topic, None)
        if sub is not None:
            await sub.unsubscribe()

    def __repr__(self) -> str:
        return f"<NatsBackplane {redact_url(self.url)} {self.state.value}>"

"""The ``Backplane`` interface, the envelope format, and the relay between an app and a backplane.

A backplane carries published messages between harpy processes that share topics.  Each
implementation fills in five small hooks (``_connect``, ``_disconnect``, ``_send``,
``_subscribe``, ``_unsubscribe``); the public methods here hold what every backend shares:
the state machine, the bounded outgoing queue that keeps ``publish`` from ever blocking the
loop, and the set of subscribed topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from ...exceptions import ConfigurationError, HarpyError
from ...protocol import Message

__all__ = [
    "Backplane",
    "BackplaneError",
    "BackplaneState",
    "Envelope",
    "Kind",
    "Relay",
    "Unsent",
    "decode_envelope",
    "encode_envelope",
    "redact_url",
]

logger = logging.getLogger("harpy")

#: ``on_message(topic, envelope)``: called on the event loop for each message received.
OnMessage = Callable[[str, bytes], None]

#: Bytes of the random per-app node id carried in every envelope.
NODE_ID_SIZE = 8

# Envelope byte 0: bits 0-3 the WebSocket opcode, bits 4-5 the ``compress`` flag of the message,
# bits 6-7 the :class:`Kind` of group.
_COMPRESS_BITS = {None: 0x00, True: 0x10, False: 0x20}
_COMPRESS_FROM_BITS: dict[int, bool | None] = {0x00: None, 0x10: True, 0x20: False}


class BackplaneError(HarpyError):
    """A backplane is used in a state that does not allow it, or cannot reach its server."""


class Unsent(Exception):
    """Raised by ``_send`` when it handed nothing of the batch over because the connection is
    down: the batch goes back to the front of the queue, held until the server is back."""


class BackplaneState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


class Kind(enum.IntEnum):
    """What group an envelope is for: envelope byte 0, bits 6-7."""

    TOPIC = 0
    ROOMS = 1
    ROUTE = 2
    ALL = 3


class Envelope(NamedTuple):
    """A decoded envelope: who sent it, the message, and the group it is for."""

    node_id: bytes
    opcode: int
    payload: bytes
    compress: bool | None
    kind: Kind = Kind.TOPIC
    #: ``Kind.ROOMS``: every room of the broadcast, in order (a receiver in several of them
    #: gets one copy); empty otherwise.
    rooms: tuple[str, ...] = ()
    #: ``Kind.ROOMS``: only the members on this route (``None``: on any route).
    route: str | None = None


def encode_envelope(
    node_id: bytes,
    message: Message,
    kind: Kind = Kind.TOPIC,
    rooms: tuple[str, ...] = (),
    route: str | None = None,
) -> bytes:
    """``[kind+flags+opcode: 1 byte][node id: 8 bytes][header][payload]``: compact and
    binary-safe.  Only ``Kind.ROOMS`` has a header: a 4-byte big-endian length, then that many
    bytes of JSON ``[rooms, route]``."""
    head = bytes(((kind << 6) | message.opcode | _COMPRESS_BITS[message.compress],)) + node_id
    if kind is not Kind.ROOMS:
        return head + message.payload
    header = json.dumps([list(rooms), route], ensure_ascii=False, separators=(",", ":"))
    raw = header.encode("utf-8")
    return head + len(raw).to_bytes(4, "big") + raw + message.payload


def decode_envelope(envelope: bytes) -> Envelope:
    """The :class:`Envelope` in ``envelope``; ValueError when it is malformed."""
    if len(envelope) < 1 + NODE_ID_SIZE:
        raise ValueError(f"backplane envelope too short ({len(envelope)} bytes)")
    head = envelope[0]
    opcode = head & 0x0F
    if opcode not in (0x1, 0x2) or (head & 0x30) == 0x30:
        raise ValueError(f"bad backplane envelope header 0x{head:02x}")
    kind = Kind(head >> 6)
    node_id = envelope[1 : 1 + NODE_ID_SIZE]
    compress = _COMPRESS_FROM_BITS[head & 0x30]
    start = 1 + NODE_ID_SIZE
    if kind is not Kind.ROOMS:
        return Envelope(node_id, opcode, envelope[start:], compress, kind)
    size = int.from_bytes(envelope[start : start + 4], "big")
    end = start + 4 + size
    if len(envelope) < end:
        raise ValueError("backplane envelope shorter than its header")
    try:
        rooms, route = json.loads(envelope[start + 4 : end])
    except (ValueError, TypeError) as exc:
        raise ValueError(f"bad backplane envelope header: {exc}") from None
    if (
        not isinstance(rooms, list)
        or not all(isinstance(r, str) for r in rooms)
        or not (route is None or isinstance(route, str))
    ):
        raise ValueError("bad backplane envelope header: not [rooms, route]")
    return Envelope(node_id, opcode, envelope[end:], compress, kind, tuple(rooms), route)


def redact_url(url: str) -> str:
    """``url`` without its password, for logs and error messages."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    userinfo, _, host = rest.partition("@")
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user + ':' if user else ''}***@{host}"


class Backplane(ABC):
    """Carries ``(topic, envelope)`` pairs between processes.

    ``publish`` never blocks: it puts the envelope on a bounded queue that one writer task
    sends in order (so order is kept per publisher); past ``max_queue`` pending envelopes new
    ones are dropped and counted in :attr:`dropped`.  ``subscribe`` returns once the server has
    taken the subscription, so a message published after that is received.  Delivery is
    at-most-once: send errors are logged on the ``harpy`` logger and the envelope is lost.
    """

    def __init__(self, *, max_queue: int = 10_000, flush_timeout: float = 2.0) -> None:
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
            raise ConfigurationError("max_queue must be a whole number >= 1")
        if flush_timeout < 0:
            raise ConfigurationError("flush_timeout must be >= 0")
        #: Envelopes waiting to be sent past which ``publish`` drops new ones.
        self.max_queue = max_queue
        #: Seconds ``stop`` waits for queued envelopes to be sent.
        self.flush_timeout = flush_timeout
        #: Envelopes dropped: the queue was full (while the server was unreachable, or too slow),
        #: or the client library took them but could not deliver them to the server.
        self.dropped = 0
        self.state = BackplaneState.NEW
        self._on_message: OnMessage | None = None
        self._topics: set[str] = set()  # subscriptions the server confirmed
        self._receiving: set[str] = set()  # topics whose messages are delivered
        self._queue: deque[tuple[str, bytes]] = deque()
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._last_warning = -1e9
        self._online: asyncio.Event | None = None  # set while the server is reachable

    # ----------------------------------------------------------------- public API

    @property
    def queued(self) -> int:
        """Envelopes waiting to be sent (a metric: it nears ``max_queue`` before drops)."""
        return len(self._queue)

    @property
    def running(self) -> bool:
        return self.state is BackplaneState.RUNNING

    @property
    def connected(self) -> bool:
        """The server is reachable: queued envelopes are being sent (while it is not, they wait,
        up to ``max_queue``)."""
        online = self._online
        return self.state is BackplaneState.RUNNING and online is not None and online.is_set()

    @property
    def topics(self) -> frozenset[str]:
        """The topics this backplane is subscribed to."""
        return frozenset(self._topics)

    def is_subscribed(self, topic: str) -> bool:
        return topic in self._topics

    async def start(self, on_message: OnMessage) -> None:
        """Connect; from now on ``on_message(topic, envelope)`` is called on the loop for each
        message of a subscribed topic (including this backplane's own publications)."""
        if self.state is BackplaneState.RUNNING:
            raise BackplaneError(f"cannot start {self!r}: it is already running")
        self._on_message = on_message
        self._closing = False
        self._queue.clear()
        self._topics.clear()
        self._receiving.clear()
        await self._connect()
        self._online = asyncio.Event()
        self._online.set()
        self._wake = asyncio.Event()
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())
        self.state = BackplaneState.RUNNING

    async def stop(self) -> None:
        """Send what is queued (for up to ``flush_timeout`` seconds, while the server is
        reachable; what is left is dropped and counted), then disconnect.

        Stopping a backplane that is not running does nothing.
        """
        if self.state is not BackplaneState.RUNNING:
            return
        # Nothing can be sent while the server is away: what is held is dropped at once.
        timeout = self.flush_timeout if self.connected else 0
        self.state = BackplaneState.STOPPED
        self._closing = True
        writer = self._writer
        self._writer = None
        if writer is not None:
            assert self._wake is not None
            self._wake.set()
            done, _ = await asyncio.wait({writer}, timeout=timeout)
            if not done:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer
        if self._queue:
            self._drop(len(self._queue), "stopped before they could be sent")
        self._queue.clear()
        self._topics.clear()
        self._receiving.clear()
        try:
            await self._disconnect()
        except Exception:
            logger.exception("harpy: error while disconnecting %r", self)
        self._on_message = None

    def publish(self, topic: str, envelope: bytes) -> None:
        """Queue ``envelope`` for ``topic`` and return at once (callable from sync code)."""
        if self.state is not BackplaneState.RUNNING:
            raise BackplaneError(f"cannot publish: {self!r} is {self.state.value}, call start()")
        queue = self._queue
        if len(queue) >= self.max_queue:
            self._drop(1, "queue full")
            return
        queue.append((topic, envelope))
        wake = self._wake
        if wake is not None and not wake.is_set():
            wake.set()

    async def subscribe(self, topic: str) -> None:
        """Receive ``topic``; returns once the server has the subscription.  Idempotent."""
        self._check_running("subscribe")
        if topic in self._topics:
            return
        self._receiving.add(topic)  # a message may arrive before _subscribe returns
        try:
            await self._subscribe(topic)
        except BaseException:
            self._receiving.discard(topic)
            raise
        self._topics.add(topic)

    async def unsubscribe(self, topic: str) -> None:
        """Stop receiving ``topic``; no message of it is delivered after this.  Idempotent."""
        self._check_running("unsubscribe")
        if topic not in self._topics:
            return
        self._topics.discard(topic)
        self._receiving.discard(topic)
        await self._unsubscribe(topic)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.state.value}>"

    # ----------------------------------------------------------------- for implementations

    @abstractmethod
    async def _connect(self) -> None:
        """Open the connection(s); raise :class:`BackplaneError` when the server is unreachable."""

    @abstractmethod
    async def _disconnect(self) -> None:
        """Close the connection(s) and stop reading."""

    @abstractmethod
    async def _send(self, batch: list[tuple[str, bytes]]) -> None:
        """Send ``(topic, envelope)`` pairs, in order."""

    @abstractmethod
    async def _subscribe(self, topic: str) -> None:
        """Subscribe; return once the server has the subscription."""

    @abstractmethod
    async def _unsubscribe(self, topic: str) -> None:
        """Unsubscribe."""

    def deliver(self, topic: str, envelope: bytes) -> None:
        """Hand a received message to ``on_message`` unless its topic was unsubscribed."""
        on_message = self._on_message
        if on_message is None or topic not in self._receiving:
            return
        try:
            on_message(topic, envelope)
        except Exception:
            logger.exception("harpy: backplane message handler failed for topic %r", topic)

    # ----------------------------------------------------------------- internals

    def _check_running(self, action: str) -> None:
        if self.state is not BackplaneState.RUNNING:
            raise BackplaneError(f"cannot {action}: {self!r} is {self.state.value}, call start()")

    def _drop(self, count: int, why: str) -> None:
        """Count ``count`` lost envelopes; warn at most every 5 s, with the running count."""
        self.dropped += count
        now = asyncio.get_running_loop().time()
        if now - self._last_warning >= 5.0:
            self._last_warning = now
            logger.warning(
                "harpy: %r dropped %d message(s) (%s); %d dropped so far",
                self,
                count,
                why,
                self.dropped,
            )

    def _connection_lost(self, why: str) -> None:
        """The implementation lost its server: hold queued envelopes until it is back."""
        online = self._online
        if online is not None and online.is_set():
            online.clear()
            logger.warning(
                "harpy: %r lost its server (%s); holding up to %d messages, %d dropped so far",
                self,
                why,
                self.max_queue,
                self.dropped,
            )

    def _connection_restored(self) -> None:
        """The implementation has its server back, subscriptions restored: send again."""
        online = self._online
        if online is not None and not online.is_set():
            online.set()
            logger.warning(
                "harpy: %r reconnected; sending %d held messages, %d dropped so far",
                self,
                len(self._queue),
                self.dropped,
            )

    async def _write_loop(self) -> None:
        queue = self._queue
        wake, online = self._wake, self._online
        assert wake is not None and online is not None
        while True:
            if not online.is_set():
                await online.wait()  # stop() cancels this after flush_timeout
                continue
            if not queue:
                if self._closing:
                    return
                wake.clear()
                await wake.wait()
                continue
            batch = [queue.popleft() for _ in range(min(len(queue), 512))]
            try:
                await self._send(batch)
            except Unsent as exc:
                queue.extendleft(reversed(batch))
                self._connection_lost(str(exc))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - at-most-once: counted and logged
                self._drop(len(batch), f"send failed: {exc!r}")


#: The backplane channel of each kind of group: one-to-one, whatever the names hold.
TOPIC_PREFIX = "t:"
ROOM_PREFIX = "r:"
ROUTE_PREFIX = "p:"
ALL_CHANNEL = "*"
PRESENCE_CHANNEL = "presence"
_KIND_OF_PREFIX = {TOPIC_PREFIX: Kind.TOPIC, ROOM_PREFIX: Kind.ROOMS, ROUTE_PREFIX: Kind.ROUTE}
_PREFIX_OF_KIND = {kind: prefix for prefix, kind in _KIND_OF_PREFIX.items()}

#: ``deliver(kind, name, envelope)``: hand a message from another node to the local members of
#: the topic, room or route ``name`` (``Kind.ALL``: of every route; ``name`` is empty).
Deliver = Callable[[Kind, str, Envelope], None]


def _nothing(kind: Kind, name: str, envelope: Envelope) -> None:
    return None


class Relay:
    """Joins an app's groups to a backplane.

    Local publications are sent as envelopes tagged with this node's id and the kind of group;
    envelopes from other nodes go to ``deliver``; our own are ignored.  Each group is one
    backplane channel (``t:`` + topic, ``r:`` + room, ``p:`` + route pattern, ``*`` for every
    connection); the backplane is subscribed to exactly the channels of groups with a local
    member, plus ``*`` and ``presence``.  Changes are reconciled by one task, in the background,
    so ``ws.subscribe`` and ``ws.join`` stay synchronous (a message published by another node
    before the subscription reaches the server is not received).
    """

    def __init__(
        self, backplane: Backplane, deliver: Deliver = _nothing, retry_delay: float = 1.0
    ) -> None:
        if not isinstance(backplane, Backplane):
            raise ConfigurationError(f"backplane must be a Backplane, not {backplane!r}")
        self.backplane = backplane
        self.node_id = os.urandom(NODE_ID_SIZE)
        self.retry_delay = retry_delay
        self.deliver = deliver
        #: Raw handlers of channels that carry no group (presence): ``fn(envelope)``.
        self._handlers: dict[str, Callable[[Envelope], None]] = {}
        self._wanted: set[str] = {ALL_CHANNEL}
        self._dirty: set[str] = set()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    async def start(self) -> None:
        # A fresh id per start: processes forked from one parent (``--workers``) are each a node.
        self.node_id = os.urandom(NODE_ID_SIZE)
        await self.backplane.start(self._receive)
        self._wake = asyncio.Event()
        self._dirty.update(self._wanted)
        self._task = asyncio.get_running_loop().create_task(self._sync_loop())
        self._wake.set()

    async def stop(self) -> None:
        task, wake = self._task, self._wake
        self._task = self._wake = None
        if task is not None:
            # The loop ends at its next wake-up; a client library that swallows a cancellation
            # (redis-py's unsubscribe can) cannot keep it waiting forever.
            assert wake is not None
            wake.set()
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=self.retry_delay + 1.0)
            if done:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            else:
                logger.warning("harpy: the backplane subscription task did not stop")
        self._dirty.clear()
        await self.backplane.stop()

    # ----------------------------------------------------------------- interest

    def opened(self, kind: Kind, name: str) -> None:
        """The topic, room or route (``Kind.ROUTE``: its pattern) ``name`` got its first local
        member: receive what other nodes send to it."""
        self._interest(_PREFIX_OF_KIND[kind] + name, True)

    def closed(self, kind: Kind, name: str) -> None:
        """The group ``name`` lost its last local member."""
        self._interest(_PREFIX_OF_KIND[kind] + name, False)

    def handle(self, channel: str, fn: Callable[[Envelope], None]) -> None:
        """Receive the envelopes other nodes send on ``channel`` (not a group's) with ``fn``."""
        self._handlers[channel] = fn
        self._interest(channel, True)

    def _interest(self, channel: str, on: bool) -> None:
        if on:
            self._wanted.add(channel)
        else:
            self._wanted.discard(channel)
        self._dirty.add(channel)
        wake = self._wake
        if wake is not None and not wake.is_set():
            wake.set()

    # ----------------------------------------------------------------- sending

    def publish(self, topic: str, message: Message) -> None:
        """Send ``message`` to the subscribers of ``topic`` on the other nodes."""
        if self._task is not None:
            self.backplane.publish(TOPIC_PREFIX + topic, encode_envelope(self.node_id, message))

    def broadcast_rooms(self, rooms: list[str], route: str | None, message: Message) -> None:
        """Send ``message`` to the members of ``rooms`` (on ``route``) on the other nodes: one
        envelope per room channel, each naming every room, so a receiver gets one copy."""
        if self._task is None or not rooms:
            return
        envelope = encode_envelope(self.node_id, message, Kind.ROOMS, tuple(rooms), route)
        publish = self.backplane.publish
        for room in rooms:
            publish(ROOM_PREFIX + room, envelope)

    def broadcast_route(self, route: str | None, message: Message) -> None:
        """Send ``message`` to every connection of ``route`` (None: of every route) on the
        other nodes."""
        if self._task is None:
            return
        if route is None:
            self.backplane.publish(ALL_CHANNEL, encode_envelope(self.node_id, message, Kind.ALL))
        else:
            envelope = encode_envelope(self.node_id, message, Kind.ROUTE)
            self.backplane.publish(ROUTE_PREFIX + route, envelope)

    def send(self, channel: str, message: Message) -> None:
        """Send ``message`` on a channel that is not a group's (see :meth:`handle`)."""
        if self._task is not None:
            self.backplane.publish(channel, encode_envelope(self.node_id, message))

    # ----------------------------------------------------------------- receiving

    def _receive(self, channel: str, raw: bytes) -> None:
        try:
            envelope = decode_envelope(raw)
        except ValueError as exc:
            logger.warning("harpy: ignored a backplane message on %r: %s", channel, exc)
            return
        if envelope.node_id == self.node_id:
            return
        if channel == ALL_CHANNEL:
            self.deliver(Kind.ALL, "", envelope)
            return
        kind = _KIND_OF_PREFIX.get(channel[:2])
        if kind is not None:
            self.deliver(kind, channel[2:], envelope)
            return
        handler = self._handlers.get(channel)
        if handler is not None:
            handler(envelope)

    async def _sync_loop(self) -> None:
        wake = self._wake
        assert wake is not None
        backplane = self.backplane
        while self._wake is wake:
            await wake.wait()
            wake.clear()
            if self._wake is not wake:
                return
            failed: list[str] = []
            while self._dirty and self._wake is wake:
                channel = self._dirty.pop()
                want = channel in self._wanted
                try:
                    if want and not backplane.is_subscribed(channel):
                        await backplane.subscribe(channel)
                    elif not want and backplane.is_subscribed(channel):
                        await backplane.unsubscribe(channel)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("harpy: backplane (un)subscribe of %r failed", channel)
                    failed.append(channel)
            if failed:
                await asyncio.sleep(self.retry_delay)
                self._dirty.update(failed)
                wake.set()

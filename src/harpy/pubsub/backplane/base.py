"""The ``Backplane`` interface: what every backend shares.

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
import logging
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable

from ...exceptions import ConfigurationError, HarpyError

__all__ = ["Backplane", "BackplaneError", "BackplaneState", "OnMessage", "Unsent", "redact_url"]

logger = logging.getLogger("harpy")

#: ``on_message(topic, envelope)``: called on the event loop for each message received.
OnMessage = Callable[[str, bytes], None]

#: Seconds between two warnings about drops or losses (each carries the running count).
WARN_EVERY = 5.0
#: ``(origin, cause)`` pairs kept apart in :attr:`Backplane.losses`; past it the oldest origin's
#: counts are folded into the origin ``"other"`` (a node that restarts has a new id each time).
MAX_LOSS_ORIGINS = 1024


class BackplaneError(HarpyError):
    """A backplane is used in a state that does not allow it, or cannot reach its server."""


class Unsent(Exception):
    """Raised by ``_send`` when it handed nothing of the batch over because the connection is
    down: the batch goes back to the front of the queue, held until the server is back."""


class BackplaneState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


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
    What other nodes sent and never reached this one is counted in :attr:`lost` by whoever reads
    the envelopes' sequences (the relay), through :meth:`count_lost`.
    """

    def __init__(self, *, max_queue: int = 10_000, flush_timeout: float = 2.0) -> None:
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
            raise ConfigurationError("max_queue must be a whole number >= 1")
        if flush_timeout < 0:
            raise ConfigurationError("flush_timeout must be >= 0")
        self.max_queue = max_queue
        """Envelopes waiting to be sent past which ``publish`` drops new ones."""
        self.flush_timeout = flush_timeout
        """Seconds ``stop`` waits for queued envelopes to be sent."""
        self.dropped = 0
        """Envelopes dropped: the queue was full (while the server was unreachable, or too slow), or
        the client library took them but could not deliver them to the server.
        """
        self.lost = 0
        """Envelopes from other nodes that never arrived here: gaps in their sequences."""
        self.losses: dict[tuple[str, str], int] = {}
        """:attr:`lost` by ``(origin node id in hex, cause)``; see :meth:`count_lost`."""
        self.disconnections = 0
        """Times the server was lost (a receiver's gap across one is a loss while disconnected)."""
        self.state = BackplaneState.NEW
        """``NEW``, then ``RUNNING`` after :meth:`start`, ``STOPPED`` after :meth:`stop`."""
        self._on_message: OnMessage | None = None
        self._topics: set[str] = set()  # subscriptions the server confirmed
        self._receiving: set[str] = set()  # topics whose messages are delivered
        self._queue: deque[tuple[str, bytes]] = deque()
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._warned: dict[str, float] = {}  # when each kind of warning was last logged
        self._online: asyncio.Event | None = None  # set while the server is reachable

    # ----------------------------------------------------------------- public API

    @property
    def queued(self) -> int:
        """Envelopes waiting to be sent (a metric: it nears ``max_queue`` before drops)."""
        return len(self._queue)

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
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
        """Whether this node is subscribed to ``topic`` on the server."""
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

    def publish(self, topic: str, envelope: bytes) -> bool:
        """Queue ``envelope`` for ``topic`` and return at once (callable from sync code): True,
        or False when the queue is full and it was dropped (and counted in :attr:`dropped`)."""
        if self.state is not BackplaneState.RUNNING:
            raise BackplaneError(f"cannot publish: {self!r} is {self.state.value}, call start()")
        queue = self._queue
        if len(queue) >= self.max_queue:
            self._drop(1, "queue full")
            return False
        queue.append((topic, envelope))
        wake = self._wake
        if wake is not None and not wake.is_set():
            wake.set()
        return True

    def count_lost(self, origin: str, count: int, cause: str) -> None:
        """Count ``count`` envelopes that node ``origin`` sent and that never arrived here, for
        ``cause`` (``"disconnected"``: this node was away from the server meanwhile;
        ``"unknown"``); warn at most every 5 s, with the running count."""
        self.lost += count
        losses = self.losses
        key = (origin, cause)
        if key not in losses and len(losses) >= MAX_LOSS_ORIGINS:
            oldest = next(k for k in losses if k[0] != "other")
            folded = ("other", oldest[1])
            losses[folded] = losses.get(folded, 0) + losses.pop(oldest)
        losses[key] = losses.get(key, 0) + count
        if self._warning_due("lost"):
            logger.warning(
                "harpy: %r lost %d message(s) from node %s (%s); %d lost so far",
                self,
                count,
                origin,
                cause,
                self.lost,
            )

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

    def _warning_due(self, kind: str) -> bool:
        """Whether to log a warning of ``kind`` now: at most one every ``WARN_EVERY`` s."""
        now = asyncio.get_running_loop().time()
        if now - self._warned.get(kind, float("-inf")) < WARN_EVERY:
            return False
        self._warned[kind] = now
        return True

    def _drop(self, count: int, why: str) -> None:
        """Count ``count`` lost envelopes; warn at most every 5 s, with the running count."""
        self.dropped += count
        if self._warning_due("dropped"):
            logger.warning(
                "harpy: %r dropped %d message(s) (%s); %d dropped so far",
                self,
                count,
                why,
                self.dropped,
            )

    def _connection_lost(self, why: str) -> None:
        """The implementation lost its server: hold queued envelopes until it is back.  The
        disconnection ``stop()`` itself makes is no loss, and says nothing."""
        online = self._online
        if online is not None and online.is_set() and not self._closing:
            online.clear()
            self.disconnections += 1
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

"""A backplane on Redis pub/sub (redis-py's asyncio client).

Each topic is the Redis channel ``channel_prefix + topic`` (channels are binary-safe, so topic
names are used as they are).  Subscriptions live on one pub/sub connection read by one task;
publications go on another connection, pipelined per batch so order is kept.  Reconnection is
redis-py's: its pub/sub re-subscribes after a reconnect; messages published meanwhile wait in
the backplane's queue (up to ``max_queue``) until every subscription is confirmed again, and a
publication that fails is counted in ``dropped``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from ...exceptions import require_extra
from .base import Backplane, BackplaneError, redact_url

__all__ = ["RedisBackplane"]

logger = logging.getLogger("harpy")


class RedisBackplane(Backplane):
    """``RedisBackplane("redis://host:6379/0")``; extra keyword arguments go to
    ``redis.asyncio.Redis.from_url``."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379",
        *,
        channel_prefix: str = "harpy:",
        max_queue: int = 10_000,
        retry_delay: float = 1.0,
        subscribe_timeout: float = 5.0,
        **redis_options: Any,
    ) -> None:
        require_extra("redis", "redis-py", "redis", "RedisBackplane")
        super().__init__(max_queue=max_queue)
        self.url = url
        """The Redis server (``redis://host:6379/0``; ``rediss://`` for TLS)."""
        self.channel_prefix = channel_prefix
        """Put before each topic to make its Redis channel (apps sharing a server differ)."""
        self.retry_delay = retry_delay
        """Seconds between read attempts while the server cannot be reached."""
        self.subscribe_timeout = subscribe_timeout
        """Seconds ``subscribe`` waits for the server to confirm."""
        self._prefix = channel_prefix.encode("utf-8")
        self._options = redis_options
        self._client: Any = None
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._confirm: dict[bytes, asyncio.Future[None]] = {}

    def _channel(self, topic: str) -> bytes:
        return self._prefix + topic.encode("utf-8")

    async def _connect(self) -> None:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(self.url, **{**self._options, "decode_responses": False})
        pubsub: Any = client.pubsub()
        try:
            await client.ping()
            await pubsub.connect()
        except Exception as exc:
            await pubsub.aclose()
            await client.aclose()
            raise BackplaneError(f"cannot reach Redis at {redact_url(self.url)}: {exc}") from exc
        self._client = client
        self._pubsub = pubsub
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())

    async def _disconnect(self) -> None:
        reader = self._reader
        self._reader = None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        for future in self._confirm.values():
            future.cancel()
        self._confirm.clear()
        pubsub, client = self._pubsub, self._client
        self._pubsub = self._client = None
        if pubsub is not None:
            await pubsub.aclose()
        if client is not None:
            await client.aclose()

    async def _send(self, batch: list[tuple[str, bytes]]) -> None:
        if len(batch) == 1:
            topic, envelope = batch[0]
            await self._client.publish(self._channel(topic), envelope)
            return
        pipe = self._client.pipeline(transaction=False)
        for topic, envelope in batch:
            pipe.publish(self._channel(topic), envelope)
        await pipe.execute()

    async def _subscribe(self, topic: str) -> None:
        channel = self._channel(topic)
        future = self._confirm.get(channel)
        if future is None:
            future = self._confirm[channel] = asyncio.get_running_loop().create_future()
        try:
            await self._pubsub.subscribe(channel)
            try:
                await asyncio.wait_for(asyncio.shield(future), self.subscribe_timeout)
            except TimeoutError:
                raise BackplaneError(
                    f"Redis did not confirm the subscription to {topic!r}"
                ) from None
        finally:
            if self._confirm.get(channel) is future:
                del self._confirm[channel]

    async def _unsubscribe(self, topic: str) -> None:
        await self._pubsub.unsubscribe(self._channel(topic))

    async def _read_loop(self) -> None:
        pubsub = self._pubsub
        prefix = self._prefix
        skip = len(prefix)
        resubscribing: set[bytes] = set()
        while True:
            try:
                message = await pubsub.get_message(timeout=None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - redis-py reconnects on the next read
                self._connection_lost(f"read failed: {exc!r}")
                # redis-py subscribes again when it reconnects; the server is back for us once
                # it has confirmed every subscription (or answers a PING, with none).
                resubscribing = {self._channel(topic) for topic in self.topics}
                await asyncio.sleep(self.retry_delay)
                if not resubscribing:
                    with contextlib.suppress(Exception):
                        await self._client.ping()
                        self._connection_restored()
                continue
            if message is None:
                continue
            kind = message["type"]
            channel = message["channel"]
            if kind == "message":
                if isinstance(channel, bytes) and channel.startswith(prefix):
                    data = message["data"]
                    try:
                        topic = channel[skip:].decode("utf-8")
                    except UnicodeDecodeError:
                        continue
                    self.deliver(topic, data if isinstance(data, bytes) else bytes(data))
            elif kind == "subscribe":
                future = self._confirm.get(channel)
                if future is not None and not future.done():
                    future.set_result(None)
                if not self.connected:
                    resubscribing.discard(channel)
                    if not resubscribing:
                        self._connection_restored()

    def __repr__(self) -> str:
        return f"<RedisBackplane {redact_url(self.url)} {self.state.value}>"

"""A backplane on Redis pub/sub (redis-py's asyncio client).

Each topic is the Redis channel ``channel_prefix + topic`` (channels are binary-safe, so topic
names are used as they are).  Subscriptions live on one pub/sub connection read by one task;
publications go on another connection, pipelined per batch so order is kept.  Reconnection is
redis-py's: its pub/sub re-subscribes after a reconnect; messages published meanwhile wait in
the backplane's queue (up to ``max_queue``) until every subscription is confirmed again, and a
publication that fails is counted in ``dropped``.

With ``cluster=True`` the URL names any node of a Redis Cluster (Redis 7 or later) and the
backplane uses sharded pub/sub: ``SPUBLISH`` / ``SSUBSCRIBE``, so each channel lives on the
master that owns its hash slot, and a publication crosses that shard alone (plain ``PUBLISH``
on a cluster goes to every node, which holds the whole cluster to one node's throughput).  The
backplane reads the slot map (redis-py's ``RedisCluster``), keeps one publishing client and one
pub/sub connection per master, and pipelines each batch per master, in order.  When a master
fails (a read or a publication on it fails, or it tells its subscribers their channels moved)
the backplane reads the slot map again every ``retry_delay`` until every channel has a master
(its replica promoted) and subscribes there; publications to a shard that fails are counted in
``dropped``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from urllib.parse import urlsplit

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
        cluster: bool = False,
        **redis_options: Any,
    ) -> None:
        require_extra("redis", "redis-py", "redis", "RedisBackplane")
        super().__init__(max_queue=max_queue)
        self.url = url
        """The Redis server (``redis://host:6379/0``; ``rediss://`` for TLS); with ``cluster``,
        any node of the Redis Cluster."""
        self.cluster = cluster
        """A Redis Cluster, with sharded pub/sub (``SPUBLISH`` / ``SSUBSCRIBE``)."""
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
        # Cluster mode: the slot map, one shard per master, and the channels to place.
        self._shards: dict[str, _Shard] = {}
        self._wanted: set[bytes] = set()
        self._stale: asyncio.Event | None = None
        self._mender: asyncio.Task[None] | None = None

    def _channel(self, topic: str) -> bytes:
        return self._prefix + topic.encode("utf-8")

    async def _connect(self) -> None:
        if self.cluster:
            await self._connect_cluster()
            return
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
        if self.cluster:
            await self._disconnect_cluster()
            return
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
        if self.cluster:
            await self._send_cluster(batch)
            return
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
        if self.cluster:
            self._wanted.add(channel)
            try:
                await self._place(channel)
            except BaseException:
                self._wanted.discard(channel)
                raise
            return
        await self._confirmed(
            channel, self._pubsub.subscribe, f"Redis did not confirm the subscription to {topic!r}"
        )

    def _received(self, channel: bytes, data: Any) -> None:
        """A message on one of our channels (``channel_prefix`` + topic)."""
        try:
            topic = channel[len(self._prefix) :].decode("utf-8")
        except UnicodeDecodeError:
            return
        self.deliver(topic, data if isinstance(data, bytes) else bytes(data))

    def _confirm_seen(self, channel: bytes) -> None:
        future = self._confirm.get(channel)
        if future is not None and not future.done():
            future.set_result(None)

    async def _confirmed(self, channel: bytes, subscribe: Any, failure: str) -> None:
        """``await subscribe(channel)``, then wait for the server's confirmation (read by a
        reader task) for up to ``subscribe_timeout``; ``BackplaneError(failure)`` without it."""
        future = self._confirm.get(channel)
        if future is None:
            future = self._confirm[channel] = asyncio.get_running_loop().create_future()
        try:
            await subscribe(channel)
            try:
                await asyncio.wait_for(asyncio.shield(future), self.subscribe_timeout)
            except TimeoutError:
                raise BackplaneError(failure) from None
        finally:
            if self._confirm.get(channel) is future:
                del self._confirm[channel]

    async def _unsubscribe(self, topic: str) -> None:
        channel = self._channel(topic)
        if self.cluster:
            self._wanted.discard(channel)
            for shard in self._shards.values():
                if channel in shard.channels:
                    shard.channels.discard(channel)
                    with contextlib.suppress(Exception):  # a dead shard forgets it anyway
                        await shard.pubsub.sunsubscribe(channel)
            return
        await self._pubsub.unsubscribe(channel)

    async def _read_loop(self) -> None:
        pubsub = self._pubsub
        prefix = self._prefix
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
                    self._received(channel, message["data"])
            elif kind == "subscribe":
                self._confirm_seen(channel)
                if not self.connected:
                    resubscribing.discard(channel)
                    if not resubscribing:
                        self._connection_restored()

    def __repr__(self) -> str:
        mode = " cluster" if self.cluster else ""
        return f"<RedisBackplane{mode} {redact_url(self.url)} {self.state.value}>"

    # ----------------------------------------------------------------- cluster mode

    async def _connect_cluster(self) -> None:
        from redis.asyncio.cluster import RedisCluster

        cluster: Any = RedisCluster.from_url(
            self.url, **{**self._options, "decode_responses": False}
        )
        try:
            await cluster.initialize()
        except Exception as exc:
            await cluster.aclose()
            raise BackplaneError(
                f"cannot reach the Redis Cluster at {redact_url(self.url)}: {exc}"
            ) from exc
        self._client = cluster
        self._stale = asyncio.Event()
        self._mender = asyncio.get_running_loop().create_task(self._mend_loop())

    async def _disconnect_cluster(self) -> None:
        mender = self._mender
        self._mender = None
        if mender is not None:
            mender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await mender
        for future in self._confirm.values():
            future.cancel()
        self._confirm.clear()
        shards = list(self._shards.values())
        self._shards.clear()
        self._wanted.clear()
        for shard in shards:
            await shard.close()
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _owner(self, channel: bytes) -> str:
        """The name (``host:port``) of the master serving ``channel``'s slot, by the slot map
        last read."""
        from redis.crc import key_slot

        node = self._client.nodes_manager.get_node_from_slot(key_slot(channel))
        return str(node.name)

    async def _shard(self, name: str) -> _Shard:
        shard = self._shards.get(name)
        if shard is not None:
            return shard
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # A failed master is the backplane's to handle (read the slot map again), not a reason
        # for redis-py to retry on it with back-off while the queue waits.
        options = {"retry": Retry(NoBackoff(), 0), **self._options, "decode_responses": False}
        client = aioredis.Redis.from_url(_node_url(self.url, name), **options)
        pubsub: Any = client.pubsub()
        try:
            await pubsub.connect()
        except Exception:
            await pubsub.aclose()
            await client.aclose()
            raise
        if name in self._shards:  # made meanwhile by another task
            await pubsub.aclose()
            await client.aclose()
            return self._shards[name]
        shard = self._shards[name] = _Shard(name, client, pubsub)
        shard.reader = asyncio.get_running_loop().create_task(self._shard_read_loop(shard))
        return shard

    async def _place(self, channel: bytes) -> None:
        """Subscribe to ``channel`` on the master of its slot; return once it confirms."""
        name = self._owner(channel)
        for other in self._shards.values():
            if other.name != name and channel in other.channels:
                other.channels.discard(channel)
                with contextlib.suppress(Exception):
                    await other.pubsub.sunsubscribe(channel)
        try:
            shard = await self._shard(name)
        except Exception as exc:
            raise BackplaneError(f"cannot reach the Redis Cluster master {name}: {exc}") from exc
        if channel in shard.channels:
            return
        await self._confirmed(
            channel,
            shard.pubsub.ssubscribe,
            f"Redis Cluster master {name} did not confirm {channel!r}",
        )
        shard.channels.add(channel)

    async def _send_cluster(self, batch: list[tuple[str, bytes]]) -> None:
        by_shard: dict[str, list[tuple[str, bytes]]] = {}
        for topic, envelope in batch:
            by_shard.setdefault(self._owner(self._channel(topic)), []).append((topic, envelope))
        results = await asyncio.gather(
            *(self._send_to(name, items) for name, items in by_shard.items()),
            return_exceptions=True,
        )
        for (name, items), result in zip(by_shard.items(), results, strict=True):
            if isinstance(result, asyncio.CancelledError):
                raise result
            if isinstance(result, BaseException):
                self._drop(len(items), f"publication on Redis Cluster master {name} failed")
                self._shard_failed(name, f"publication failed: {result!r}")

    async def _send_to(self, name: str, items: list[tuple[str, bytes]]) -> None:
        shard = await self._shard(name)
        pipe = shard.client.pipeline(transaction=False)
        for topic, envelope in items:
            pipe.spublish(self._channel(topic), envelope)
        await pipe.execute()

    async def _shard_read_loop(self, shard: _Shard) -> None:
        while True:
            try:
                message = await shard.pubsub.get_message(timeout=None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the shard is set aside and mended
                self._shard_failed(shard.name, f"read failed: {exc!r}")
                return
            if message is None:
                continue
            kind, channel = message["type"], message["channel"]
            if kind == "smessage":
                self._received(channel, message["data"])
            elif kind == "ssubscribe":
                self._confirm_seen(channel)
            elif kind == "sunsubscribe" and channel in shard.channels:
                # Not asked for: the slot moved (a failover, a resharding).
                shard.channels.discard(channel)
                if channel in self._wanted:
                    self._connection_lost(f"{channel!r} left master {shard.name}")
                    assert self._stale is not None
                    self._stale.set()

    def _shard_failed(self, name: str, why: str) -> None:
        shard = self._shards.pop(name, None)
        if shard is not None:
            if shard.channels & self._wanted:
                self._connection_lost(f"master {name}: {why}")
            asyncio.get_running_loop().create_task(shard.close())
        assert self._stale is not None
        self._stale.set()

    async def _mend_loop(self) -> None:
        """After a failure: read the slot map again, then place every channel on its master;
        again every ``retry_delay`` until all are placed (a replica promoted)."""
        stale = self._stale
        assert stale is not None
        while True:
            await stale.wait()
            stale.clear()
            try:
                await self._client.nodes_manager.initialize()
                for channel in list(self._wanted):
                    if channel in self._wanted:
                        await self._place(channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the cluster is failing over: try again
                logger.info("harpy: %r: the Redis Cluster is not whole yet (%s)", self, exc)
                await asyncio.sleep(self.retry_delay)
                stale.set()
                continue
            if not stale.is_set():
                self._connection_restored()


class _Shard:
    """A master of a Redis Cluster: a client that publishes, a pub/sub connection that reads
    (by one task), and the channels subscribed there."""

    def __init__(self, name: str, client: Any, pubsub: Any) -> None:
        self.name = name
        self.client = client
        self.pubsub = pubsub
        self.reader: asyncio.Task[None] | None = None
        self.channels: set[bytes] = set()

    async def close(self) -> None:
        reader, self.reader = self.reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        with contextlib.suppress(Exception):
            await self.pubsub.aclose()
        with contextlib.suppress(Exception):
            await self.client.aclose()


def _node_url(url: str, name: str) -> str:
    """``url`` (of any cluster node, with its credentials and options) for node ``name``."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{name}" if userinfo else name
    return parts._replace(netloc=netloc, path="").geturl()

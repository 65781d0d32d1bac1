"""History in Redis Streams: shared by every node, and kept across restarts of the nodes.

Each channel is two keys: ``prefix + "{channel}:s"`` (a stream of its publications, bounded by
``MAXLEN``, expiring ``ttl`` seconds after the last append) and ``prefix + "{channel}:m"`` (a
hash of the epoch and the last offset, kept ``meta_ttl`` seconds).  One Lua script per
publication makes the epoch if there is none, increments the offset, appends, sets the
expiries and (given an :class:`~harpy.pubsub.history.Announce`) publishes the message on the
backplane channel: Redis runs a script alone, so two nodes never hand out one offset, and the
publications of a channel reach the other nodes in offset order.

The epoch changes only when the hash is gone (Redis lost its data, or ``meta_ttl`` passed
with no publication).
"""

from __future__ import annotations

from typing import Any

from ..exceptions import ConfigurationError
from .backplane.redis import RedisBackplane
from .history import Announce, History, Position, Stored, check_meta_ttl, make_epoch

__all__ = ["RedisHistory"]

# KEYS: stream, meta.  ARGV: size, ttl ms, meta ttl s, body, new epoch, announce channel (empty:
# none), head, middle, tail.
_APPEND = """
local epoch = redis.call('hget', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[5]
  redis.call('hset', KEYS[2], 'e', epoch)
end
local offset = redis.call('hincrby', KEYS[2], 's', 1)
redis.call('xadd', KEYS[1], 'MAXLEN', ARGV[1], offset .. '-1', 'd', ARGV[4])
if tonumber(ARGV[2]) > 0 then redis.call('pexpire', KEYS[1], ARGV[2]) end
if tonumber(ARGV[3]) > 0 then redis.call('expire', KEYS[2], ARGV[3]) end
if ARGV[6] ~= '' then
  redis.call('publish', ARGV[6], ARGV[7] .. offset .. ARGV[8] .. epoch .. ARGV[9])
end
return {offset, epoch}
"""

# KEYS: stream, meta.  ARGV: new epoch, mode ('since' / 'latest' / 'top'), offset, count.
_READ = """
local epoch = redis.call('hget', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('hset', KEYS[2], 'e', epoch)
  redis.call('hset', KEYS[2], 's', 0)
end
local top = tonumber(redis.call('hget', KEYS[2], 's') or '0')
local count = tonumber(ARGV[4])
local items = {}
if ARGV[2] == 'since' then
  if count >= 0 then
    items = redis.call('xrange', KEYS[1], '(' .. ARGV[3] .. '-1', '+', 'COUNT', count)
  else
    items = redis.call('xrange', KEYS[1], '(' .. ARGV[3] .. '-1', '+')
  end
elseif ARGV[2] == 'latest' then
  if count >= 0 then
    items = redis.call('xrevrange', KEYS[1], '+', '-', 'COUNT', count)
  else
    items = redis.call('xrevrange', KEYS[1], '+', '-')
  end
end
return {top, epoch, items}
"""


class RedisHistory(History):
    """``RedisHistory("redis://127.0.0.1:6379/0")``: history in Redis Streams.

    With the app's backplane a :class:`~harpy.pubsub.backplane.RedisBackplane` on the same
    server (``url`` and ``channel_prefix`` equal), each append also publishes the publication
    to the other nodes in the same script.  ``meta_ttl`` (seconds, 0: forever) is how long a
    channel's epoch and offset outlive its last publication.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379",
        *,
        key_prefix: str = "harpy:history:",
        channel_prefix: str = "harpy:",
        meta_ttl: int = 30 * 24 * 3600,
        **redis_options: Any,
    ) -> None:
        meta_ttl = check_meta_ttl(meta_ttl)
        self.url = url
        """The Redis server."""
        self.key_prefix = key_prefix
        """What the keys of the streams begin with."""
        self.channel_prefix = channel_prefix
        """The backplane's ``channel_prefix``: where an announce is published."""
        self.meta_ttl = meta_ttl
        """Seconds a channel's epoch and offset outlive its last publication (0: forever)."""
        self._options = redis_options
        self._client: Any = None
        self._append: Any = None
        self._read: Any = None

    def shares(self, backplane: object) -> bool:
        """Whether ``backplane`` is a Redis backplane on this server and prefix (then appends
        announce, and no other publish is needed)."""
        return (
            isinstance(backplane, RedisBackplane)
            and backplane.url == self.url
            and backplane.channel_prefix == self.channel_prefix
        )

    async def start(self) -> None:
        if self._client is not None:
            return
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(self.url, **{**self._options, "decode_responses": False})
        self._client = client
        self._append = client.register_script(_APPEND)
        self._read = client.register_script(_READ)

    async def stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _keys(self, channel: str) -> list[str]:
        base = f"{self.key_prefix}{{{channel}}}"
        return [base + ":s", base + ":m"]

    def _script(self, which: str) -> Any:
        if self._client is None:
            raise ConfigurationError(f"{self!r} is not started")
        return self._append if which == "append" else self._read

    async def append(
        self, channel: str, body: bytes, size: int, ttl: float, announce: Announce | None = None
    ) -> Position:
        args: list[Any] = [max(size, 1), int(ttl * 1000), self.meta_ttl, body, make_epoch()]
        if announce is None:
            args += [b"", b"", b"", b""]
        else:
            target = (self.channel_prefix + announce.channel).encode("utf-8")
            args += [target, announce.head, announce.middle, announce.tail]
        offset, epoch = await self._script("append")(keys=self._keys(channel), args=args)
        return Position(int(offset), _text(epoch))

    async def _query(self, channel: str, mode: str, offset: int, limit: int) -> Any:
        args = [make_epoch(), mode, offset, limit]
        return await self._script("read")(keys=self._keys(channel), args=args)

    async def top(self, channel: str) -> Position:
        top, epoch, _ = await self._query(channel, "top", 0, 0)
        return Position(int(top), _text(epoch))

    async def since(self, channel: str, offset: int, limit: int) -> tuple[list[Stored], Position]:
        top, epoch, items = await self._query(channel, "since", offset, limit)
        return _stored(items), Position(int(top), _text(epoch))

    async def latest(self, channel: str, limit: int) -> tuple[list[Stored], Position]:
        top, epoch, items = await self._query(channel, "latest", 0, limit)
        return _stored(items), Position(int(top), _text(epoch))

    def __repr__(self) -> str:
        return f"<RedisHistory {self.url} {self.key_prefix!r}>"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _stored(items: Any) -> list[Stored]:
    found = []
    for entry_id, fields in items:
        offset = int(_text(entry_id).split("-", 1)[0])
        found.append(Stored(offset, bytes(fields[1])))
    return found

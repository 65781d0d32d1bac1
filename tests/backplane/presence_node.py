"""A harpy node in its own process, for the tests that kill one: ``python -m
tests.backplane.presence_node redis|nats URL PREFIX INTERVAL``.  It prints its port, then serves
``/g`` (``tests.backplane.test_groups.Groups``) until killed."""

from __future__ import annotations

import asyncio
import sys

import harpy
from harpy.pubsub.backplane import Backplane, NatsBackplane, RedisBackplane

from .test_groups import Groups


async def main(backend: str, url: str, prefix: str, interval: float) -> None:
    backplane: Backplane
    if backend == "redis":
        backplane = RedisBackplane(url, channel_prefix=prefix)
    elif backend == "nats":
        backplane = NatsBackplane(url, subject_prefix=prefix)
    else:
        raise SystemExit(f"unknown backend {backend!r}: redis or nats")
    app = harpy.App(backplane=backplane, presence=True, presence_interval=interval)
    app.ws("/g", Groups)
    await app.listen("127.0.0.1", 0)
    print(app.port, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    backend, url, prefix, interval = sys.argv[1:]
    asyncio.run(main(backend, url, prefix, float(interval)))

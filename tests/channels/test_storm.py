"""The recovery storm after a deploy: 200 clients resubscribe to one channel with recovery at
once, while publications keep coming.  Their history reads are shared (a handful of reads, not
one per client), and every client still gets exactly what it missed, then the live ones, each
once and in order."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
import websockets

import harpy
from harpy.channels import ChannelOptions, MemoryHistory
from harpy.channels._channel import PUSH_TOPIC
from harpy.pubsub.history import History, Position, Stored
from harpy.pubsub.redis_history import RedisHistory
from tests.channels.conftest import SECRET
from tests.channels.server_app import CHAT
from tests.helpers import serve
from tests.timing import TIMEOUT, eventually, scaled

CLIENTS = 200
CHANNEL = "chat:storm"
SEEN = 10  # what every client had before the deploy (half of them: SEEN + AHEAD)
AHEAD = 20
MISSED = 50  # published while they were away
LIVE = 20  # published during the storm


def _endpoint(history: History) -> tuple[harpy.App, Any]:
    app = harpy.App()
    options = ChannelOptions(
        secret=SECRET, history=history, anonymous=True, namespaces={"chat": CHAT}
    )
    return app, app.channels("/connection/websocket", {}, options)


class Counted(History):
    """A store whose reads are counted and take ``delay`` longer (as across a busy network)."""

    delay = 0.0
    reads = 0

    async def since(self, channel: str, offset: int, limit: int) -> tuple[list[Stored], Position]:
        self.reads += 1
        await asyncio.sleep(self.delay)
        return await super().since(channel, offset, limit)  # type: ignore[safe-super]


class CountingHistory(Counted, MemoryHistory):
    def __init__(self, delay: float) -> None:
        MemoryHistory.__init__(self)
        self.delay = delay


class CountingRedisHistory(Counted, RedisHistory):
    """Over a redis-server of the test's own."""

    def __init__(self, url: str, delay: float) -> None:
        RedisHistory.__init__(self, url, key_prefix=f"test-{uuid.uuid4().hex[:12]}:")
        self.delay = delay


def _frames(frame: str | bytes) -> list[dict[str, Any]]:
    text = frame.decode() if isinstance(frame, bytes) else frame
    return [json.loads(line) for line in text.splitlines() if line]


async def _recover(url: str, offset: int, epoch: str, go: asyncio.Barrier) -> list[int]:
    """Connect, wait for the others at ``go``, subscribe recovering from ``offset``: the ``n``
    of each publication got (in the reply, then pushed) until the last live one."""
    async with websockets.connect(url + "/connection/websocket") as ws:
        await ws.send(json.dumps({"id": 1, "connect": {}}))
        reply = _frames(await asyncio.wait_for(ws.recv(), TIMEOUT))[0]
        assert "connect" in reply, reply
        await asyncio.wait_for(go.wait(), TIMEOUT)
        subscribe = {"channel": CHANNEL, "recover": True, "offset": offset, "epoch": epoch}
        await ws.send(json.dumps({"id": 2, "subscribe": subscribe}))
        got: list[int] = []
        last = SEEN + AHEAD + MISSED + LIVE - 1
        for _ in range(MISSED + LIVE + AHEAD + 10):
            for message in _frames(await asyncio.wait_for(ws.recv(), TIMEOUT)):
                if message.get("id") == 2:
                    result = message["subscribe"]
                    assert result.get("recovered") is True, result
                    got.extend(p["data"]["n"] for p in result.get("publications", []))
                elif "push" in message:
                    got.append(message["push"]["pub"]["data"]["n"])
            if got and got[-1] == last:
                return got
        raise AssertionError(f"the last live publication never came: {got[-5:]}")


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_200_clients_recovering_at_once_share_the_history_reads(
    store: str, request: pytest.FixtureRequest
) -> None:
    history: Counted
    if store == "redis":
        history = CountingRedisHistory(request.getfixturevalue("redis_url"), scaled(0.3))
    else:
        history = CountingHistory(scaled(0.3))
    app, endpoint = _endpoint(history)
    async with serve(app) as url:
        positions = [await endpoint.publish(CHANNEL, {"n": n}) for n in range(SEEN + AHEAD)]
        early, late = positions[SEEN - 1], positions[-1]
        assert early is not None and late is not None
        for n in range(SEEN + AHEAD, SEEN + AHEAD + MISSED):
            await endpoint.publish(CHANNEL, {"n": n})
        go = asyncio.Barrier(CLIENTS + 1)
        clients = [
            asyncio.ensure_future(_recover(url, (early if i % 2 else late).offset, late.epoch, go))
            for i in range(CLIENTS)
        ]
        await asyncio.wait_for(go.wait(), scaled(30.0))  # all connected: they subscribe now
        first = SEEN + AHEAD + MISSED
        for n in range(first, first + LIVE):
            await endpoint.publish(CHANNEL, {"n": n})
            await asyncio.sleep(scaled(0.02))
        results = await asyncio.wait_for(asyncio.gather(*clients), scaled(60.0))
    last = SEEN + AHEAD + MISSED + LIVE
    for i, got in enumerate(results):
        start = SEEN if i % 2 else SEEN + AHEAD
        assert got == list(range(start, last)), (i, got[:5], len(got))
    # Without sharing: one read per client (200).  Shared: one per read window the storm spans.
    assert 1 <= history.reads <= 10, history.reads


async def _connected(url: str) -> Any:
    ws = await websockets.connect(url + "/connection/websocket")
    await ws.send(json.dumps({"id": 1, "connect": {}}))
    assert "connect" in _frames(await asyncio.wait_for(ws.recv(), TIMEOUT))[0]
    return ws


async def test_a_client_leaving_during_the_shared_read_harms_neither_the_others_nor_cleanup() -> (
    None
):
    history = CountingHistory(scaled(0.3))
    app, endpoint = _endpoint(history)
    async with serve(app) as url:
        positions = [await endpoint.publish(CHANNEL, {"n": n}) for n in range(5)]
        epoch = positions[-1].epoch if positions[-1] is not None else ""
        leaver, stayer = await _connected(url), await _connected(url)
        subscribe = {"channel": CHANNEL, "recover": True, "offset": 2, "epoch": epoch}
        await leaver.send(json.dumps({"id": 2, "subscribe": subscribe}))
        await stayer.send(json.dumps({"id": 2, "subscribe": subscribe}))
        await leaver.close()  # while the read it started is in flight
        reply = _frames(await asyncio.wait_for(stayer.recv(), TIMEOUT))[0]["subscribe"]
        assert reply["recovered"] is True
        assert [p["data"]["n"] for p in reply["publications"]] == [2, 3, 4]
        assert history.reads == 1
        await stayer.close()
        # Nobody left: the channel lets go of its topics.
        await eventually(lambda: app.hub.topics.count(PUSH_TOPIC + CHANNEL) == 0)

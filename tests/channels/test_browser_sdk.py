"""The official centrifuge SDK (npm, 5.x; its browser bundle ``dist/centrifuge.js``) in headless
Chromium, against a real harpy channels endpoint: a page connects, subscribes, receives
publications made from Python, loses its network for two seconds while 200 more go out, and
recovers every one of them, once and in order."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import harpy
from harpy.channels import ChannelOptions, MemoryHistory, Namespace
from tests.channels.proxy import Proxy
from tests.e2e.test_chat_page import BROWSER_TIMEOUT, DevTools, open_page, tabs
from tests.helpers import serve
from tests.timing import scaled

SDK = Path(__file__).resolve().parent / "node" / "node_modules" / "centrifuge" / "dist"

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>sdk</title></head>
<body>
<script src="centrifuge.js"></script>
<script>
window.events = [];
const client = new Centrifuge(`ws://${location.host}/connection/websocket`, {
  data: {name: "browser"}, minReconnectDelay: 100, maxReconnectDelay: 500,
});
client.on("connected", (ctx) => events.push({event: "connected", client: ctx.client}));
client.on("connecting", (ctx) => events.push({event: "connecting", code: ctx.code}));
const sub = client.newSubscription("chat:browser", {recoverable: true, positioned: true});
sub.on("subscribed", (ctx) => events.push({
  event: "subscribed", wasRecovering: ctx.wasRecovering, recovered: ctx.recovered}));
sub.on("publication", (ctx) => events.push({event: "pub", n: ctx.data.n, offset: ctx.offset}));
sub.subscribe();
client.connect();
</script>
</body></html>
"""


async def events_of(page: DevTools) -> list[dict[str, Any]]:
    value = await page.evaluate("JSON.stringify(window.events || [])")
    found = json.loads(value)
    assert isinstance(found, list)
    return found


async def published(page: DevTools) -> list[int]:
    return [e["n"] for e in await events_of(page) if e["event"] == "pub"]


async def test_the_official_sdk_in_chromium_recovers_what_it_missed(tmp_path: Path) -> None:
    assert (SDK / "centrifuge.js").exists(), "run `make node-deps` (npm ci in tests/channels/node)"
    shutil.copy(SDK / "centrifuge.js", tmp_path / "centrifuge.js")
    (tmp_path / "index.html").write_text(PAGE)
    app = harpy.App(static={"/": tmp_path})
    chat = Namespace(history_size=1000, history_ttl=300, allow_subscribe=True)
    options = ChannelOptions(history=MemoryHistory(), namespaces={"chat": chat})
    endpoint = app.channels("/connection/websocket", None, options)
    async with serve(app) as url:
        proxy = Proxy(int(url.rsplit(":", 1)[1]))
        await proxy.start()
        try:
            async with tabs(1) as (page,):
                await open_page(page, f"http://127.0.0.1:{proxy.port}/")

                async def subscribed(count: int) -> bool:
                    found = [e for e in await events_of(page) if e["event"] == "subscribed"]
                    return len(found) >= count

                await eventually_async(lambda: subscribed(1))
                for n in range(1, 4):
                    await endpoint.publish("chat:browser", {"n": n})
                await eventually_async(lambda: has(page, 3))

                await proxy.cut()
                for n in range(4, 204):
                    await endpoint.publish("chat:browser", {"n": n})
                    if n % 50 == 0:
                        await asyncio.sleep(0.5)  # spread over the two seconds away
                await proxy.restore()
                await eventually_async(lambda: subscribed(2))
                await eventually_async(lambda: has(page, 203))

                assert await published(page) == list(range(1, 204))  # once, in order
                events = await events_of(page)
                again = [e for e in events if e["event"] == "subscribed"][1]
                assert (again["wasRecovering"], again["recovered"]) == (True, True)
                assert any(e["event"] == "connecting" for e in events)  # it did go away
                offsets = [e["offset"] for e in events if e["event"] == "pub"]
                assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
        finally:
            await proxy.stop()


async def has(page: DevTools, count: int) -> bool:
    return len(await published(page)) >= count


async def eventually_async(check: Any, timeout: float | None = None) -> None:
    """Poll an async ``check`` (bounded) until it is true."""
    deadline = asyncio.get_running_loop().time() + (timeout or BROWSER_TIMEOUT)
    for _ in range(100_000):
        if await check():
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("the page never got there")
        await asyncio.sleep(scaled(0.05))


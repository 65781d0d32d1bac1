"""The official centrifuge SDK from npm (5.x) against a real harpy channels endpoint, in Node
and in headless Chromium (its browser bundle, ``dist/centrifuge.js``), driven through the same
commands (node/commands.js): connect with a token, subscribe with and without permission,
publish, history, presence with join and leave, RPC, token refresh; and recovery in Node.

``make test`` installs it (``npm ci`` in tests/channels/node, with Debian's nodejs and npm).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from harpy.channels import Channels
from tests.channels.conftest import token
from tests.channels.proxy import Proxy, publish_while_cut
from tests.channels.test_python_sdk import OPEN, channels_app
from tests.e2e.test_chat_page import DevTools, open_page, tabs
from tests.timing import TIMEOUT, scaled

NODE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node")
SDK_BUNDLE = Path(NODE_DIR) / "node_modules" / "centrifuge" / "dist" / "centrifuge.js"


class Driver:
    """The SDK somewhere, running commands.js: :meth:`call` a command, :meth:`next` an event."""

    def __init__(self) -> None:
        self._events: dict[tuple[str, str], asyncio.Queue[dict[str, Any]]] = {}

    def _queue(self, who: str, event: str) -> asyncio.Queue[dict[str, Any]]:
        key = (who, event)
        if key not in self._events:
            self._events[key] = asyncio.Queue()
        return self._events[key]

    def _deliver(self, event: dict[str, Any]) -> None:
        self._queue(event["as"], event["event"]).put_nowait(event)

    async def _poll(self) -> None:
        """Bring in the events the SDK emitted since the last call (the page's; Node's come
        in by themselves)."""

    async def call(self, op: str, who: str = "a", **args: Any) -> dict[str, Any]:
        """Run ``op`` and wait (bounded) for its outcome: ``{"ok": ..., "result"|"code": ...}``."""
        raise NotImplementedError

    async def next(self, event: str, who: str = "a", timeout: float = TIMEOUT) -> dict[str, Any]:
        queue = self._queue(who, event)
        deadline = asyncio.get_running_loop().time() + timeout
        for _ in range(100_000):
            await self._poll()
            if not queue.empty():
                return queue.get_nowait()
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(queue.get(), min(left, 0.05))
        raise TimeoutError(f"no {event!r} event for {who!r}")

    async def pending(self, event: str, who: str = "a") -> int:
        await self._poll()
        return self._queue(who, event).qsize()


class NodeDriver(Driver):
    """A Node process running node/driver.js: JSON commands on stdin, events on stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        super().__init__()
        self.proc = proc
        self._refs = itertools.count(1)
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            event = json.loads(line)
            ref = event.get("ref")
            if ref is not None:
                future = self._replies.pop(ref, None)
                if future is not None and not future.done():
                    future.set_result(event)
            else:
                self._deliver(event)

    async def call(self, op: str, who: str = "a", **args: Any) -> dict[str, Any]:
        ref = next(self._refs)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[ref] = future
        assert self.proc.stdin is not None
        self.proc.stdin.write(
            (json.dumps({"op": op, "as": who, "ref": ref, **args}) + "\n").encode()
        )
        await self.proc.stdin.drain()
        return await asyncio.wait_for(future, TIMEOUT)


class PageDriver(Driver):
    """A Chromium tab with a page that loads the SDK's browser bundle and commands.js."""

    def __init__(self, page: DevTools) -> None:
        super().__init__()
        self.page = page

    async def _poll(self) -> None:
        found = json.loads(await self.page.evaluate("JSON.stringify(sdkEvents.splice(0))"))
        for event in found:
            self._deliver(event)

    async def call(self, op: str, who: str = "a", **args: Any) -> dict[str, Any]:
        command = json.dumps({"op": op, "as": who, **args})
        expression = f"outcome(run({command}))"
        reply = await asyncio.wait_for(self.page.evaluate(expression, awaited=True), TIMEOUT)
        assert isinstance(reply, dict)
        return reply


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>sdk</title></head>
<body>
<script src="centrifuge.js"></script>
<script src="commands.js"></script>
<script>
window.sdkEvents = [];
window.run = makeRunner(Centrifuge, undefined, (event) => sdkEvents.push(event));
</script>
</body></html>
"""


@contextlib.asynccontextmanager
async def node_driver() -> AsyncIterator[NodeDriver]:
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None or not os.path.isdir(os.path.join(NODE_DIR, "node_modules", "centrifuge")):
        pytest.fail("Node and the centrifuge SDK are needed: run `make node-deps`")
    proc = await asyncio.create_subprocess_exec(
        node,
        "driver.js",
        cwd=NODE_DIR,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    driver = NodeDriver(proc)
    try:
        yield driver
    finally:
        if proc.returncode is None:
            proc.kill()
        await asyncio.wait_for(proc.wait(), TIMEOUT)


def page_files(folder: Path) -> dict[str, str]:
    """The page, the SDK's bundle and commands.js in ``folder``: the static files to serve at /."""
    assert SDK_BUNDLE.exists(), "run `make node-deps` (npm ci in tests/channels/node)"
    shutil.copy(SDK_BUNDLE, folder / "centrifuge.js")
    shutil.copy(Path(NODE_DIR) / "commands.js", folder / "commands.js")
    (folder / "index.html").write_text(PAGE)
    return {"/": str(folder)}


@contextlib.asynccontextmanager
async def sdk_app(where: str, folder: Path) -> AsyncIterator[tuple[Channels, str, Driver]]:
    """channels_app (serving the page from ``folder``) and the SDK in Node, or in a Chromium
    tab showing that page; yields the endpoint, its URL and the SDK's driver."""
    async with channels_app(static=page_files(folder)) as (_, endpoint, url):
        if where == "node":
            async with node_driver() as driver:
                yield endpoint, url, driver
            return
        async with tabs(1) as (page,):
            await open_page(page, url.replace("ws:", "http:").replace("connection/websocket", ""))
            yield endpoint, url, PageDriver(page)


@pytest.fixture(params=["node", "chromium"])
def where(request: pytest.FixtureRequest) -> str:
    """Where the SDK runs."""
    assert isinstance(request.param, str)
    return request.param


async def test_sdk_connects_subscribes_publishes_and_reads_history_presence_rpc(
    where: str, tmp_path: Path
) -> None:
    async with sdk_app(where, tmp_path) as (endpoint, url, node):
        await node.call("connect", url=url, token=token("alice", info={"name": "Alice"}))
        await node.next("connected")
        await node.call("subscribe", channel="chat:js", joinLeave=True)
        subscribed = await node.next("subscribed")
        assert subscribed["recoverable"] and subscribed["positioned"]
        assert (await node.next("join"))["user"] == "alice"
        await node.call("connect", "b", url=url, token=token("bob"))
        await node.next("connected", "b")
        await node.call("subscribe", "b", channel="chat:js")
        await node.next("subscribed", "b")
        assert (await node.next("join"))["user"] == "bob"
        assert (await node.call("publish", channel="chat:js", data={"text": "hi"}))["ok"]
        for who in ("a", "b"):
            publication = await node.next("publication", who)
            assert (publication["data"], publication["offset"]) == ({"text": "hi"}, 1)
        history = (await node.call("history", channel="chat:js", options={"limit": 10}))["result"]
        assert [p["data"] for p in history["publications"]] == [{"text": "hi"}]
        assert history["offset"] == 1 and history["epoch"] == subscribed["streamPosition"]["epoch"]
        stats = (await node.call("presenceStats", channel="chat:js"))["result"]
        assert (stats["numClients"], stats["numUsers"]) == (2, 2)
        presence = (await node.call("presence", channel="chat:js"))["result"]["clients"]
        assert sorted(info["user"] for info in presence.values()) == ["alice", "bob"]
        rpc = await node.call("rpc", method="echo", data={"n": 1})
        assert rpc["result"]["data"] == {"echo": {"n": 1}, "user": "alice"}
        await node.call("rpc", method="poke", data=7)
        assert (await node.next("message"))["data"] == {"poke": 7}
        missing = await node.call("rpc", method="nope", data={})
        assert (missing["ok"], missing["code"]) == (False, 104)
        # Without permission: private channels need a token; with one, the client is in.
        await node.call("subscribe", channel="private:x")
        assert (await node.next("unsubscribed"))["code"] == 103
        await node.call(
            "subscribe", "b", channel="private:bob", token=token("bob", channel="private:bob")
        )
        assert (await node.next("subscribed", "b"))["channel"] == "private:bob"
        await node.call("disconnect", "b")
        assert (await node.next("leave"))["user"] == "bob"
        assert endpoint.errors[103] == 1


async def test_sdk_refreshes_its_token(where: str, tmp_path: Path) -> None:
    async with sdk_app(where, tmp_path) as (_endpoint, url, node):
        fresh = [token("carol", ttl=2), token("carol", ttl=60)]
        await node.call("connect", url=url, token=token("carol", ttl=-5), tokens=fresh)
        await node.next("get_token")  # 109 at connect: the SDK asks for a new token
        await node.next("connected")
        connecting = await node.pending("connecting")
        await node.next("get_token", timeout=scaled(5.0))  # before the 2 s one expires
        started = time.monotonic()
        while time.monotonic() - started < 2.5:
            await asyncio.sleep(0.1)
        # Refreshed on the same connection: it never went back to connecting.
        assert (
            await node.pending("disconnected") == 0
            and await node.pending("connecting") == connecting
        )
        assert (await node.call("rpc", method="echo", data=1))["ok"]


async def test_node_sdk_cut_off_for_two_seconds_gets_all_1000_once_in_order() -> None:
    namespaces = {"chat": dataclasses.replace(OPEN, history_size=2000)}
    async with channels_app(namespaces=namespaces) as (_, endpoint, url):
        port = int(url.split(":")[2].split("/")[0])
        proxy = Proxy(port)
        await proxy.start()
        try:
            async with node_driver() as node:
                proxied = f"ws://127.0.0.1:{proxy.port}/connection/websocket"
                await node.call("connect", url=proxied, token=token("dan"))
                await node.next("connected")
                await node.call("subscribe", channel="chat:cut")
                await node.next("subscribed")
                await endpoint.publish("chat:cut", {"n": 0})
                assert (await node.next("publication"))["data"] == {"n": 0}
                await publish_while_cut(proxy, lambda n: endpoint.publish("chat:cut", {"n": n}), 1)
                again = await node.next("subscribed", timeout=scaled(10.0))
                assert again["wasRecovering"] and again["recovered"]
                got = [(await node.next("publication"))["data"]["n"] for _ in range(1000)]
                assert got == list(range(1, 1001))
                await endpoint.publish("chat:cut", {"n": -1})
                assert (await node.next("publication"))["data"] == {"n": -1}
        finally:
            await proxy.stop()

"""What an idle connection keeps: its request as raw bytes, ``data`` and ``params`` made on use.

After the upgrade a connection holds the request's headers as the bytes they came in (parsed
again when asked for), its default ``ws.data`` dict and an empty ``ws.params`` only once a
handler uses them.  None of it shows: every fact of the request reads the same before and
after, and what a handler sets stays set.  (bench/MEMORY.md has the bytes, item by item.)
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from typing import Any

from websockets.asyncio.client import connect

import harpy
from tests.helpers import RawClient, serve
from tests.timing import TIMEOUT, eventually


def facts(ws: harpy.WebSocket[Any]) -> dict[str, Any]:
    """Everything a handler can read of the upgrade request."""
    return {
        "headers": dict(ws.headers),
        "cookie_header": ws.headers.get_all("cookie"),
        "cookies": ws.cookies,
        "query": ws.query,
        "query_string": ws.query_string,
        "path": ws.path,
        "url": ws.url,
        "params": ws.params,
        "remote_address": ws.remote_address,
        "data": ws.data,
    }


async def test_the_request_reads_the_same_after_the_upgrade_as_during_it() -> None:
    seen: dict[str, dict[str, Any]] = {}
    app = harpy.App()

    def authenticate(request: harpy.UpgradeRequest) -> bool:
        seen["authenticate"] = {"headers": dict(request.headers), "cookies": request.cookies}
        return True

    class Facts:
        def open(self, ws: harpy.WebSocket[Any]) -> None:
            seen["open"] = facts(ws)

        def message(self, ws: harpy.WebSocket[Any], message: str | bytes) -> None:
            seen["message"] = facts(ws)
            ws.send("ok")

    app.ws("/room/:name", Facts(), authenticate=authenticate)
    async with serve(app) as url:
        headers = {"Cookie": 'sid="a=b"; theme=dark', "X-Extra": "one", "User-Agent": "t/1"}
        async with connect(f"{url}/room/r%201?q=1&q=2&e=", additional_headers=headers) as c:
            await c.send("x")
            assert await asyncio.wait_for(c.recv(), TIMEOUT) == "ok"
    during, after = seen["open"], seen["message"]
    assert during == after
    assert after["headers"]["x-extra"] == "one"
    assert after["headers"]["user-agent"] == "t/1"
    assert after["cookies"] == {"sid": "a=b", "theme": "dark"}
    assert after["query"] == {"q": "1", "e": ""}
    assert after["params"] == {"name": "r 1"}
    assert after["url"].endswith("/room/r%201?q=1&q=2&e=")
    assert after["data"] == {"url": after["url"], "cookies": after["cookies"]}
    assert seen["authenticate"] == {"headers": after["headers"], "cookies": after["cookies"]}


async def test_data_and_params_made_on_first_use_keep_what_a_handler_sets() -> None:
    seen: list[Any] = []
    app = harpy.App()

    class Keeps:
        def open(self, ws: harpy.WebSocket[Any]) -> None:
            ws.params["set"] = "in open"  # a route without parameters: an empty dict
            if ws.query.get("data") == "none":
                ws.data = None  # set, not made again on the next read
            else:
                ws.data["count"] = 0

        def message(self, ws: harpy.WebSocket[Any], message: str | bytes) -> None:
            if ws.data is not None:
                ws.data["count"] += 1
            seen.append((ws.params, None if ws.data is None else ws.data["count"]))
            ws.send("ok")

    app.ws("/keeps", Keeps())
    app.ws("/typed", {"message": lambda ws, m: ws.send(type(ws.data).__name__)}, data=list)
    async with serve(app) as url:
        for query in ("?data=none", ""):
            async with connect(f"{url}/keeps{query}") as c:
                for _ in range(2):
                    await c.send("x")
                    assert await asyncio.wait_for(c.recv(), TIMEOUT) == "ok"
        async with connect(f"{url}/typed") as c:
            await c.send("x")
            assert await asyncio.wait_for(c.recv(), TIMEOUT) == "list"
    kept = {"set": "in open"}
    assert seen == [(kept, None), (kept, None), (kept, 1), (kept, 2)]


async def test_an_idle_connection_keeps_no_parsed_request_nor_unused_data() -> None:
    """What the request and the user's ``ws`` keep, allocated in the modules that make them:
    the ``ws``'s two event callbacks and the request object, not a list of header tuples (about
    1 KiB for seven headers), a ``data`` dict with the URL and cookies, or a ``params`` dict."""
    count = 200
    app = harpy.App()
    app.ws("/idle", {})
    watched = [
        tracemalloc.Filter(True, f"*/harpy/{name}")
        for name in ("app/websocket.py", "app/routing.py", "protocol/handshake.py")
    ]
    async with serve(app) as url:
        warm = await RawClient.connect(url)
        assert await warm.upgrade("/idle", "Cookie: a=1\r\n") == 101
        clients: list[RawClient] = []
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot().filter_traces(watched)
            for _ in range(count):
                client = await RawClient.connect(url)
                clients.append(client)
                extra = "Cookie: a=1; b=2\r\nOrigin: http://test\r\n"
                assert await client.upgrade("/idle", extra) == 101
            await eventually(lambda: len(app.connections) == count + 1, what="all open")
            gc.collect()
            after = tracemalloc.take_snapshot().filter_traces(watched)
        finally:
            tracemalloc.stop()
        held = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
        for client in [warm, *clients]:
            await client.close()
    # About 280 bytes: the two callbacks (128), the request object (80), the key's value the
    # connection keeps (73); 1.8 KiB when the parsed headers, data and params were kept.
    assert held / count < 450, f"{held / count:.0f} bytes per idle connection"

"""The page of ``make run`` (examples/live_chat/ served by examples/channels_chat.py) in headless
Chromium: two people chat, one's network goes away mid-conversation, the page says
"reconnecting", and once back it shows every message sent meanwhile; a member list from
presence, one's own messages marked, rooms kept apart; screenshots at 390 and 1,200 px wide."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from pathlib import Path

from tests.channels.proxy import Proxy
from tests.e2e.test_chat_page import (
    BROWSER_TIMEOUT,
    DevTools,
    open_page,
    say,
    tabs,
    text_of,
    until,
)
from tests.e2e.test_examples import load_example
from tests.helpers import serve


async def enter(page: DevTools, name: str, room: str) -> None:
    await page.evaluate(
        f"document.getElementById('name').value = {json.dumps(name)};"
        f"document.getElementById('room').value = {json.dumps(room)};"
        "document.getElementById('join').click()"
    )
    await until(page, "status", "connected")
    await until(page, "room-title", room)
    await until(page, "members", name)


async def mine(page: DevTools) -> list[str]:
    """The texts of the messages the page marks as this tab's own."""
    value = await page.evaluate(
        "[...document.querySelectorAll('#log li.mine')].map((li) => li.textContent)"
    )
    assert isinstance(value, list)
    return [str(v) for v in value]


async def screenshot(page: DevTools, width: int, path: Path) -> dict[str, float]:
    """Lay the page out ``width`` CSS pixels wide, save a PNG, and return where the Join and
    Send buttons and the member list end on the right (all must be inside the viewport)."""
    await page.call(
        "Emulation.setDeviceMetricsOverride",
        width=width, height=844 if width < 600 else 800, deviceScaleFactor=1, mobile=width < 600,
    )  # fmt: skip
    shot = await page.call("Page.captureScreenshot", format="png")
    data = base64.b64decode(shot["data"])
    path.write_bytes(data)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    png_width = struct.unpack(">I", data[16:20])[0]
    assert png_width == width, f"the screenshot is {png_width} px wide, not {width}"
    edges = await page.evaluate(
        """Object.fromEntries(["join", "send", "members", "log"].map((id) => [
            id, document.getElementById(id).getBoundingClientRect().right]))"""
    )
    assert isinstance(edges, dict)
    scroll = await page.evaluate("document.documentElement.scrollWidth")
    assert scroll <= width, f"the page scrolls sideways at {width} px ({scroll} px wide)"
    return {k: float(v) for k, v in edges.items()}


async def test_the_chat_reconnects_recovers_and_fits_a_phone_and_a_desktop(
    tmp_path: Path,
) -> None:
    app = load_example("channels_chat").app
    async with serve(app) as url:
        port = int(url.rsplit(":", 1)[1])
        proxy = Proxy(port)
        await proxy.start()
        try:
            async with tabs(2) as (alice, bob):
                # Alice's page (and its connection) goes through the proxy the test
                # cuts; Bob's goes straight to the server.
                await open_page(alice, f"http://127.0.0.1:{proxy.port}/")
                await open_page(bob, f"http://127.0.0.1:{port}/")
                await enter(alice, "Alice", "general")
                await enter(bob, "Bob", "general")
                await until(alice, "members", "Bob")
                await until(alice, "log", "Bob joined")

                await say(bob, "hello from Bob")
                await until(alice, "log", "hello from Bob")
                await say(alice, "hi Bob")
                await until(bob, "log", "hi Bob")
                # Each sees its own message once it came back from the server.
                await until(alice, "log", "hi Bob")
                await until(bob, "log", "hello from Bob")
                assert await mine(alice) and "hi Bob" in (await mine(alice))[0]
                assert all("hello from Bob" not in text for text in await mine(alice))
                assert any("hello from Bob" in text for text in await mine(bob))

                # Alice's network goes away mid-conversation.
                await proxy.cut()
                await until(alice, "status", "reconnecting")
                missed = [f"while you were away {n}" for n in range(1, 6)]
                for text in missed:
                    await say(bob, text)
                    await until(bob, "log", text)
                await asyncio.sleep(2.0)  # away for two seconds, as a blink of a tab
                await proxy.restore()
                await until(alice, "status", "connected")
                for text in missed:
                    await until(alice, "log", text)
                log = await text_of(alice, "log")
                positions = [log.index(text) for text in missed]
                assert positions == sorted(positions), "missed messages out of order"
                assert all(log.count(text) == 1 for text in missed), "a duplicate"
                assert "could not be recovered" not in log

                phone = await screenshot(alice, 390, tmp_path / "chat-390.png")
                desktop = await screenshot(alice, 1200, tmp_path / "chat-1200.png")
                for edge in phone.values():
                    assert edge <= 390
                for edge in desktop.values():
                    assert edge <= 1200
                # At 1,200 px the member list stands beside the log, not under it.
                assert desktop["members"] > desktop["log"]

                # A room switch keeps the logs apart.
                await enter(alice, "Alice", "other")
                assert "hello from Bob" not in await text_of(alice, "log")
                assert "Bob" not in await text_of(alice, "members")
                await say(alice, "anyone here?")
                await until(alice, "log", "anyone here?")
                await asyncio.wait_for(asyncio.sleep(0.2), BROWSER_TIMEOUT)
                assert "anyone here?" not in await text_of(bob, "log")
        finally:
            await proxy.stop()

"""The chat page (examples/chat/index.html) in headless Chromium against the rooms chat.

Chromium is driven through the Chrome DevTools protocol over its WebSocket, with the
``websockets`` client: two tabs pick a name and the same room, a message typed in one appears in
the other.  ``make test-deps`` installs Debian's ``chromium`` when it is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from tests.e2e.test_examples import load_example
from tests.helpers import serve
from tests.timing import eventually, scaled

#: A browser under load answers more slowly than a server: its waits get more room.
BROWSER_TIMEOUT = scaled(15.0)


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise AssertionError("chromium is not installed: run `make test-deps` (Debian's chromium)")


class DevTools:
    """One DevTools session (the browser's or a page's): commands and their results."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        command_id = next(self.ids)
        await self.ws.send(json.dumps({"id": command_id, "method": method, "params": params}))
        for _ in range(10_000):  # events may come before the answer; they are not needed here
            reply = json.loads(await asyncio.wait_for(self.ws.recv(), BROWSER_TIMEOUT))
            if reply.get("id") == command_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply["result"]
                return result
        raise AssertionError(f"{method}: no answer among 10000 messages")

    async def evaluate(self, expression: str, awaited: bool = False) -> Any:
        result = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=awaited
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[tuple[str, str]]:
    """Start headless Chromium with a fresh profile; yield (browser endpoint, DevTools base)."""
    # Chromium's helper processes may still write to the profile as the browser exits: a
    # folder left half-removed is no failure of the page under test.
    profiles = tempfile.TemporaryDirectory(prefix="harpy-chromium-", ignore_cleanup_errors=True)
    with profiles as profile:
        proc = subprocess.Popen(
            [chromium_binary(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            active = Path(profile) / "DevToolsActivePort"
            await eventually(
                lambda: active.exists() and len(active.read_text().splitlines()) == 2,
                scaled(30.0),
                "Chromium wrote its DevTools port",
            )
            port, path = active.read_text().splitlines()
            yield f"ws://127.0.0.1:{port}{path}", f"ws://127.0.0.1:{port}/devtools/page/"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=scaled(10.0))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=scaled(10.0))


@contextlib.asynccontextmanager
async def tabs(count: int) -> AsyncIterator[list[DevTools]]:
    """Headless Chromium with ``count`` blank tabs; yield a DevTools session for each."""
    async with contextlib.AsyncExitStack() as stack:
        browser_url, page_base = await stack.enter_async_context(chromium())
        browser_ws = await stack.enter_async_context(connect(browser_url, max_size=None))
        browser = DevTools(browser_ws)
        pages = []
        for _ in range(count):
            target = (await browser.call("Target.createTarget", url="about:blank"))["targetId"]
            page_ws = await stack.enter_async_context(
                connect(page_base + target, max_size=None)
            )
            pages.append(DevTools(page_ws))
        yield pages


async def text_of(page: DevTools, element_id: str) -> str:
    value = await page.evaluate(f"document.getElementById({element_id!r}).textContent")
    assert isinstance(value, str)
    return value


async def until(page: DevTools, element_id: str, expected: str) -> None:
    """Wait until the element's text contains ``expected``: a MutationObserver in the page
    answers as soon as it does."""
    watch = f"""new Promise((resolve) => {{
        const el = document.getElementById({element_id!r});
        const seen = () => el.textContent.includes({json.dumps(expected)});
        if (seen()) {{ resolve(true); return; }}
        const observer = new MutationObserver(() => {{
            if (seen()) {{ observer.disconnect(); resolve(true); }}
        }});
        observer.observe(el, {{childList: true, subtree: true, characterData: true}});
    }})"""
    try:
        await asyncio.wait_for(page.evaluate(watch, awaited=True), BROWSER_TIMEOUT)
    except TimeoutError:
        seen = await text_of(page, element_id)
        raise AssertionError(f"#{element_id} never showed {expected!r}: {seen!r}") from None


async def open_page(page: DevTools, url: str) -> None:
    """Navigate, then wait for the load event (the script has run, the socket is opening)."""
    await page.call("Page.navigate", url=url)
    loaded = """new Promise((resolve) => {
        if (document.readyState === "complete") resolve(true);
        else window.addEventListener("load", () => resolve(true));
    })"""
    await asyncio.wait_for(page.evaluate(loaded, awaited=True), BROWSER_TIMEOUT)


async def join(page: DevTools, name: str, room: str) -> None:
    await until(page, "status", "connected")
    await page.evaluate(
        f"document.getElementById('name').value = {json.dumps(name)};"
        f"document.getElementById('room').value = {json.dumps(room)};"
        "document.getElementById('join').click()"
    )
    await until(page, "status", f"{name} in {room}")


async def say(page: DevTools, text: str) -> None:
    await page.evaluate(
        f"document.getElementById('text').value = {json.dumps(text)};"
        "document.getElementById('send').click()"
    )


async def test_two_tabs_in_one_room_chat_through_the_page() -> None:
    app = load_example("rooms_chat").app
    async with serve(app) as url, tabs(3) as (alice, bob, carol):
        # The app serves its page: the page and its WebSocket share one origin.
        page_url = url.replace("ws://", "http://", 1) + "/"
        for page in (alice, bob, carol):
            await open_page(page, page_url)
        await join(alice, "Alice", "general")
        await join(carol, "Carol", "elsewhere")
        await join(bob, "Bob", "general")
        await until(alice, "log", "Bob joined general")

        await say(bob, "hello from Bob")
        await until(alice, "log", "Bob: hello from Bob")
        await until(bob, "log", "Bob: hello from Bob")  # the sender sees it too
        await say(alice, "hi Bob")
        await until(bob, "log", "Alice: hi Bob")

        await say(carol, "anyone?")
        await until(carol, "log", "Carol: anyone?")
        # Carol's room is another: after her own message came back, nothing of hers
        # reached the general room (and nothing of theirs reached her).
        assert "Carol" not in await text_of(alice, "log")
        assert "Bob" not in await text_of(carol, "log")
        assert await page_value(alice, "text") == ""  # the input is cleared on send


async def page_value(page: DevTools, element_id: str) -> Any:
    return await page.evaluate(f"document.getElementById({element_id!r}).value")

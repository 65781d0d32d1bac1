"""Check an installed harpy wheel: its compiled core and compiled connection glue load, and an
app serves a message.

cibuildwheel runs it on every wheel it builds (``test-command`` in pyproject.toml), and the
install test runs it in a fresh environment.  Standard library and harpy only.
"""

from __future__ import annotations

import asyncio
import importlib
import sys

import harpy
import harpy.protocol
from harpy._compiled import MODULES, is_compiled
from harpy.testing import TestServer

app = harpy.App()


@app.ws("/echo")
class Echo:
    def message(self, ws: harpy.WebSocket[None], message: str | bytes) -> None:
        ws.send(message)


async def echo_once() -> str | bytes:
    async with TestServer(app) as server, server.connect("/echo") as ws:
        await ws.send("from the wheel")
        return await ws.receive()


def main() -> None:
    if not harpy.protocol.COMPILED:
        sys.exit(f"check_wheel: {harpy.__file__} runs without its compiled core")
    pure = [name for name in MODULES if not is_compiled(importlib.import_module(name))]
    if pure:
        sys.exit(f"check_wheel: {harpy.__file__} runs {', '.join(pure)} as pure Python")
    reply = asyncio.run(echo_once())
    if reply != "from the wheel":
        sys.exit(f"check_wheel: echo answered {reply!r}")
    print(f"check_wheel: harpy from {harpy.__file__}, compiled core, echo ok")


if __name__ == "__main__":
    main()

"""The echo app the Autobahn fuzzingclient drives (see docs/compliance.md)."""

from __future__ import annotations

from typing import Any

import harpy

app = harpy.App(max_message_size=16 * 1024 * 1024, compression=True)


@app.ws("/echo")
class Echo:
    def message(self, ws: harpy.WebSocket[Any], message: str | bytes) -> None:
        ws.send(message)

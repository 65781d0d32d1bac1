"""The app the benchmarks drive: ``python -m harpy bench.app:app --host 127.0.0.1 --port N``."""

from __future__ import annotations

from typing import Any

import harpy

app = harpy.App()


@app.ws("/echo")
class Echo:
    def message(self, ws: harpy.WebSocket[Any], message: str | bytes) -> None:
        ws.send(message)

"""Several processes, one port, shared topics: ``python -m harpy examples.workers:app --workers 2``.

Each connection is told which process serves it (``{"type": "hello", "pid": ...}``). Send
``{"type": "subscribe", "topic": "news"}`` (answered ``{"type": "subscribed", ...}``), then
``{"type": "publish", "topic": "news", "text": "hi"}``: every other subscriber gets
``{"type": "message", "topic": "news", "text": "hi", "pid": <the publisher's process>}``,
whichever worker holds its connection (through the embedded NATS, or the app's backplane).
"""

from __future__ import annotations

import json
import os
from typing import Any

import harpy

app = harpy.App()


@app.ws("/ws")
class Workers:
    def open(self, ws: harpy.WebSocket[Any]) -> None:
        ws.send_json({"type": "hello", "pid": os.getpid()})

    def message(self, ws: harpy.WebSocket[Any], message: str | bytes) -> None:
        try:
            data = json.loads(message)
        except ValueError:
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("topic"), str):
            ws.send_json({"type": "error", "message": "send a JSON object with a 'topic'"})
            return
        topic = data["topic"]
        if data.get("type") == "subscribe":
            ws.subscribe(topic)
            ws.send_json({"type": "subscribed", "topic": topic, "pid": os.getpid()})
        elif data.get("type") == "publish":
            text = data.get("text", "")
            ws.publish(topic, {"type": "message", "topic": topic, "text": text, "pid": os.getpid()})
        else:
            ws.send_json({"type": "error", "message": f"unknown type {data.get('type')!r}"})


if __name__ == "__main__":
    app.run(port=3000, workers=2)

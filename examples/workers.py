"""Several processes, one port, shared topics and rooms:
``python -m harpy examples.workers:app --workers 2``.

Each connection is told which process serves it (``{"type": "hello", "pid": ...}``). Send
``{"type": "subscribe", "topic": "news"}`` (answered ``{"type": "subscribed", ...}``), then
``{"type": "publish", "topic": "news", "text": "hi"}``: every other subscriber gets
``{"type": "message", "topic": "news", "text": "hi", "pid": <the publisher's process>}``,
whichever worker holds its connection (through the embedded NATS, or the app's backplane).
Rooms the same way: ``{"type": "join", "room": "lobby"}`` (answered ``{"type": "joined", ...}``),
then ``{"type": "say", "room": "lobby", "text": "hi"}`` reaches every other member of the room.
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
        if not isinstance(data, dict):
            ws.send_json({"type": "error", "message": "send a JSON object"})
            return
        kind, pid, text = data.get("type"), os.getpid(), data.get("text", "")
        group = data.get("room") if kind in ("join", "say") else data.get("topic")
        if not isinstance(group, str) or not group:
            ws.send_json({"type": "error", "message": "name a 'topic' (or a 'room' to join)"})
        elif kind == "subscribe":
            ws.subscribe(group)
            ws.send_json({"type": "subscribed", "topic": group, "pid": pid})
        elif kind == "publish":
            ws.publish(group, {"type": "message", "topic": group, "text": text, "pid": pid})
        elif kind == "join":
            ws.join(group)
            ws.send_json({"type": "joined", "room": group, "pid": pid})
        elif kind == "say":
            ws.broadcast({"type": "message", "room": group, "text": text, "pid": pid}, [group])
        else:
            ws.send_json({"type": "error", "message": f"unknown type {kind!r}"})


if __name__ == "__main__":
    app.run(port=3000, workers=2)

"""Who is online, across every node: presence on a shared backplane.

Run two nodes on one Redis (or NATS) and connect to either::

    HARPY_REDIS_URL=redis://127.0.0.1:6379/0 python -m harpy examples.presence:app --port 3000
    HARPY_REDIS_URL=redis://127.0.0.1:6379/0 python -m harpy examples.presence:app --port 3001

then ``ws://127.0.0.1:3000/online?name=ada`` and ``ws://127.0.0.1:3001/online?name=bob``.
Everyone in the room ``online`` gets ``{"online": [names...]}`` whenever someone joins or leaves
on any node, and ``{"from": name, "text": ...}`` for each text message sent on any node.  A node
that dies leaves the list within ``4 * presence_interval`` seconds.  Without ``HARPY_REDIS_URL``
(or ``HARPY_NATS_URL``) it runs on one node.
"""

from __future__ import annotations

import os
from typing import Any

import harpy

ROOM = "online"


def make_app(backplane: harpy.Backplane | None = None) -> harpy.App:
    app = harpy.App(backplane=backplane, presence=True, presence_interval=1.0)

    @app.on_presence
    def changed(event: harpy.PresenceEvent) -> None:
        # Every node hears every join and leave; each tells its own members only.
        if event.kind == "room" and event.group == ROOM:
            names = sorted(info.get("name", "?") for info in app.present(room=ROOM).values())
            for ws in app.room_members(ROOM):
                ws.send_json({"online": names})

    @app.ws("/online")
    class Online:
        def open(self, ws: harpy.WebSocket[Any]) -> None:
            ws.presence = {"name": ws.query.get("name") or "anonymous"}
            ws.join(ROOM)

        def message(self, ws: harpy.WebSocket[Any], message: str | bytes) -> None:
            if not isinstance(message, str):
                ws.send_json({"error": "send text"})
                return
            ws.broadcast({"from": ws.presence["name"], "text": message}, rooms=[ROOM])

    return app


def backplane_from_environment() -> harpy.Backplane | None:
    if url := os.environ.get("HARPY_REDIS_URL"):
        return harpy.RedisBackplane(url, channel_prefix="presence-example:")
    if url := os.environ.get("HARPY_NATS_URL"):
        return harpy.NatsBackplane(url, subject_prefix="presence-example.")
    return None


app = make_app(backplane_from_environment())

if __name__ == "__main__":
    app.run(port=3000)

"""A chat with rooms: JSON messages in, JSON messages out, delivered with ``ws.broadcast``.

Run ``make run`` (or ``python -m harpy examples.rooms_chat:app --port 3000``) and open
``http://127.0.0.1:3000/``: the app serves its page (``examples/chat/``) itself, pick a name and
a room, and chat between two tabs. Other clients connect to ``ws://127.0.0.1:3000/ws/chat`` and
send, for example::

    {"type": "join", "username": "Alice"}
    {"type": "message", "username": "Alice", "message": "Hello!"}
    {"type": "join-room", "room": "dev", "username": "Alice"}
    {"type": "message", "room": "dev", "username": "Alice", "text": "Hi devs"}
    {"type": "typing", "username": "Alice"}
    {"type": "leave-room", "room": "dev"}

On connect the server sends ``{"type": "connected", "id": ...}``.  ``join`` enters the room
``chat``; ``message`` goes to ``room`` (``chat`` when not given) as a ``chat-message``, the sender
included; ``typing`` goes to the sender's rooms, the sender excluded; members of a room get
``user-joined`` when someone joins it and ``user-left`` when they leave it or disconnect.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harpy

#: The room ``join`` enters, and where a ``message`` without ``room`` goes.
CHAT_ROOM = "chat"

#: The page and its script, served from the same origin as the WebSocket route.
app = harpy.App(static={"/": Path(__file__).resolve().parent / "chat"})


@dataclass
class ChatUser:
    username: str = "anonymous"


def now_ms() -> int:
    return int(time.time() * 1000)


# Only pages of this origin may connect (the default): the app serves its own page.
@app.ws("/ws/chat", data=ChatUser)
class Chat:
    def open(self, ws: harpy.WebSocket[ChatUser]) -> None:
        ws.send_json({"type": "connected", "id": ws.id})

    def message(self, ws: harpy.WebSocket[ChatUser], message: str | bytes) -> None:
        try:
            data = json.loads(message)
        except ValueError:
            ws.send_json({"type": "error", "message": "messages must be JSON"})
            return
        if not isinstance(data, dict):
            ws.send_json({"type": "error", "message": "messages must be JSON objects"})
            return
        if isinstance(data.get("username"), str) and data["username"]:
            ws.data.username = data["username"]
        kind = data.get("type")
        if kind == "join":
            self.join(ws, CHAT_ROOM)
        elif kind == "join-room":
            room = self.room_of(ws, data, required=True)
            if room is not None:
                self.join(ws, room)
        elif kind == "leave-room":
            room = self.room_of(ws, data, required=True)
            if room is not None and ws.leave(room):
                self.left(ws, room)
        elif kind == "message":
            room = self.room_of(ws, data)
            if room is None:
                return
            if not ws.in_room(room):
                ws.send_json({"type": "error", "message": f"join {room!r} first"})
                return
            ws.broadcast(
                {
                    "type": "chat-message",
                    "room": room,
                    "username": ws.data.username,
                    "message": data.get("message", data.get("text", "")),
                    "timestamp": now_ms(),
                },
                rooms=[room],
                include_self=True,
            )
        elif kind == "typing":
            if ws.rooms:
                ws.broadcast(
                    {"type": "typing", "username": ws.data.username}, rooms=sorted(ws.rooms)
                )
        else:
            ws.send_json({"type": "error", "message": f"unknown message type {kind!r}"})

    def close(self, ws: harpy.WebSocket[ChatUser], code: int, reason: str) -> None:
        # The connection has left every room already; ``ws.rooms`` still names them.
        for room in sorted(ws.rooms):
            self.left(ws, room)

    def join(self, ws: harpy.WebSocket[ChatUser], room: str) -> None:
        if ws.join(room):
            notice = {"type": "user-joined", "username": ws.data.username, "room": room}
            ws.broadcast(notice, rooms=[room], include_self=False)
        ws.send_json({"type": "joined", "room": room})

    def left(self, ws: harpy.WebSocket[ChatUser], room: str) -> None:
        notice: dict[str, Any] = {
            "type": "user-left",
            "userId": ws.id,
            "username": ws.data.username,
            "room": room,
        }
        ws.broadcast(notice, rooms=[room])

    def room_of(
        self, ws: harpy.WebSocket[ChatUser], data: dict[str, Any], required: bool = False
    ) -> str | None:
        room = data.get("room", None if required else CHAT_ROOM)
        if not isinstance(room, str) or not room:
            ws.send_json({"type": "error", "message": "'room' must be a non-empty string"})
            return None
        return room


if __name__ == "__main__":
    app.run(port=3000)

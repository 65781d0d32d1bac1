"""A small chat: every message goes to everyone on ``/chat``.

Run ``make run`` (or ``python -m harpy examples.chat:app --port 3000``) and connect two clients:
``python -m websockets "ws://127.0.0.1:3000/chat?name=alice"``.
"""

from __future__ import annotations

from dataclasses import dataclass

import harpy

app = harpy.App()


@dataclass
class ChatData:
    name: str = "anonymous"


@app.ws("/chat", data=ChatData)
class Chat:
    def open(self, ws: harpy.WebSocket[ChatData]) -> None:
        ws.data.name = ws.query.get("name") or f"guest-{ws.id[-4:]}"
        ws.send(f"welcome {ws.data.name}, {len(app.connections) - 1} other(s) here")
        self.say(f"{ws.data.name} joined", exclude=ws)

    def message(self, ws: harpy.WebSocket[ChatData], message: str | bytes) -> None:
        text = message if isinstance(message, str) else message.decode("utf-8", "replace")
        self.say(f"{ws.data.name}: {text}")

    def close(self, ws: harpy.WebSocket[ChatData], code: int, reason: str) -> None:
        self.say(f"{ws.data.name} left")

    def say(self, text: str, exclude: harpy.WebSocket[ChatData] | None = None) -> None:
        for client in app.connections.route("/chat"):
            if client is not exclude and client.ready_state == harpy.ReadyState.OPEN:
                client.send(text)


if __name__ == "__main__":
    app.run(port=3000)

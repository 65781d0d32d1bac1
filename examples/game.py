"""A game server: every player starts in the ``lobby`` room; each game is a room of its own.

Run ``python examples/game.py`` (or ``python -m harpy examples.game:app --port 3000``), then
connect players to ``ws://127.0.0.1:3000/ws/game`` and send JSON messages::

    {"type": "create-game"}
    {"type": "join-game", "gameId": "game-1a2b3c"}
    {"type": "game-action", "gameId": "game-1a2b3c", "action": {"move": "e4"}}

``create-game`` answers ``game-created`` with the new ``gameId`` (the creator is its first
player); ``join-game`` tells the game's other players ``player-joined`` and answers
``game-joined``; ``game-action`` sends ``game-update`` to every player of the game, the sender
included.  A player who disconnects is announced to their games with ``player-left``.

On connect a player gets ``{"type": "joined-lobby", "playerId": ...}``.  Only existing games can
be joined, and only their players may act in them; anything else is answered with
``{"type": "error", "message": ...}``.
"""

from __future__ import annotations

import json
import secrets
from typing import Any, TypeGuard

import harpy

LOBBY = "lobby"
GAME_PREFIX = "game-"

app = harpy.App()


def generate_game_id() -> str:
    while True:
        game_id = GAME_PREFIX + secrets.token_hex(3)
        if game_id not in app.rooms:
            return game_id


def is_game(game_id: object) -> TypeGuard[str]:
    """An existing game: a room named like one, with at least one player in it."""
    return isinstance(game_id, str) and game_id.startswith(GAME_PREFIX) and game_id in app.rooms


@app.ws("/ws/game", default_room=LOBBY)
class Game:
    def open(self, ws: harpy.WebSocket[Any]) -> None:
        # default_room: the player is in the lobby already.
        ws.send_json({"type": "joined-lobby", "playerId": ws.id})

    def message(self, ws: harpy.WebSocket[Any], message: str | bytes) -> None:
        try:
            data = json.loads(message)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            ws.send_json({"type": "error", "message": "messages must be JSON objects"})
            return
        kind = data.get("type")
        if kind == "create-game":
            game_id = generate_game_id()
            ws.join(game_id)
            ws.send_json({"type": "game-created", "gameId": game_id})
        elif kind == "join-game":
            wanted = data.get("gameId")
            if not is_game(wanted):
                ws.send_json({"type": "error", "message": f"no game {wanted!r}"})
                return
            if ws.join(wanted):  # False: already playing in it, nobody is told twice
                ws.broadcast({"type": "player-joined", "playerId": ws.id}, rooms=[wanted])
            ws.send_json({"type": "game-joined", "gameId": wanted})
        elif kind == "game-action":
            played = data.get("gameId")
            if not is_game(played) or not ws.in_room(played):
                ws.send_json({"type": "error", "message": f"not playing in {played!r}"})
                return
            update = {"type": "game-update", "action": data.get("action"), "playerId": ws.id}
            ws.broadcast(update, rooms=[played], include_self=True)
        else:
            ws.send_json({"type": "error", "message": f"unknown message type {kind!r}"})

    def close(self, ws: harpy.WebSocket[Any], code: int, reason: str) -> None:
        for game_id in sorted(ws.rooms - {LOBBY}):
            ws.broadcast({"type": "player-left", "playerId": ws.id}, rooms=[game_id])


if __name__ == "__main__":
    app.run(port=3000)

"""The examples, served on port 0 and driven by real clients through their documented flows."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

import harpy
from tests.helpers import client, recv, serve
from tests.timing import eventually

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SYNC = {"type": "sync"}


def load_example(name: str) -> ModuleType:
    """A fresh copy of ``examples/<name>.py`` (a folder of scripts, not a package)."""
    module_name = f"_harpy_example_{name}"
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[module_name]
    assert isinstance(module.app, harpy.App)
    return module


@pytest.fixture
def chat_app() -> harpy.App:
    app: harpy.App = load_example("rooms_chat").app
    return app


@pytest.fixture
def game_app() -> harpy.App:
    app: harpy.App = load_example("game").app
    return app


async def recv_json(ws: ClientConnection) -> Any:
    message = await recv(ws)
    assert isinstance(message, str)  # JSON travels as text
    return json.loads(message)


async def send_json(ws: ClientConnection, data: dict[str, Any]) -> None:
    await ws.send(json.dumps(data))


async def synced(app: harpy.App, *clients: ClientConnection) -> None:
    """A marker sent to every connection must be each client's next message: nothing else was
    on its way to it."""
    app.broadcast(SYNC)
    for ws in clients:
        assert await recv_json(ws) == SYNC


# --------------------------------------------------------------------------------- rooms_chat


async def test_chat_application_join_message_and_leave(chat_app: harpy.App) -> None:
    app = chat_app
    async with (
        serve(app) as url,
        client(f"{url}/ws/chat") as alice,
        client(f"{url}/ws/chat") as bob,
        client(f"{url}/ws/chat") as carol,
    ):
        ids = []
        for ws in (alice, bob, carol):
            hello = await recv_json(ws)
            assert hello["type"] == "connected"
            ids.append(hello["id"])
        assert len(set(ids)) == 3

        await send_json(alice, {"type": "join", "username": "Alice"})
        assert await recv_json(alice) == {"type": "joined", "room": "chat"}
        await send_json(bob, {"type": "join", "username": "Bob"})
        assert await recv_json(alice) == {"type": "user-joined", "username": "Bob", "room": "chat"}
        assert await recv_json(bob) == {"type": "joined", "room": "chat"}  # not told of itself
        await synced(app, alice, bob, carol)

        before = int(time.time() * 1000)
        await send_json(bob, {"type": "message", "username": "Bob", "message": "Hello everyone!"})
        for ws in (alice, bob):  # the sender included
            got = await recv_json(ws)
            assert before - 1000 <= got.pop("timestamp") <= int(time.time() * 1000) + 1000
            assert got == {
                "type": "chat-message",
                "room": "chat",
                "username": "Bob",
                "message": "Hello everyone!",
            }
        await synced(app, alice, bob, carol)  # carol never joined: nothing for her

        await send_json(carol, {"type": "message", "username": "Carol", "message": "hi?"})
        assert (await recv_json(carol))["type"] == "error"  # not a member of the room
        await synced(app, alice, bob, carol)

        await bob.close()
        assert await recv_json(alice) == {
            "type": "user-left",
            "userId": ids[1],
            "username": "Bob",
            "room": "chat",
        }
        await synced(app, alice, carol)
        assert [ws.id for ws in app.room_members("chat")] == [ids[0]]


async def test_chat_rooms_join_room_message_typing_leave_room(chat_app: harpy.App) -> None:
    app = chat_app
    async with (
        serve(app) as url,
        client(f"{url}/ws/chat") as alice,
        client(f"{url}/ws/chat") as bob,
        client(f"{url}/ws/chat") as carol,
    ):
        everyone = (alice, bob, carol)
        ids = [(await recv_json(ws))["id"] for ws in everyone]
        for ws, name in ((alice, "Alice"), (bob, "Bob")):
            await send_json(ws, {"type": "join-room", "room": "general", "username": name})
            assert await recv_json(ws) == {"type": "joined", "room": "general"}
        assert await recv_json(alice) == {
            "type": "user-joined",
            "username": "Bob",
            "room": "general",
        }
        await send_json(carol, {"type": "join-room", "room": "dev", "username": "Carol"})
        assert await recv_json(carol) == {"type": "joined", "room": "dev"}
        await send_json(alice, {"type": "join-room", "room": "dev", "username": "Alice"})
        assert await recv_json(alice) == {"type": "joined", "room": "dev"}
        assert await recv_json(carol) == {"type": "user-joined", "username": "Alice", "room": "dev"}
        await synced(app, *everyone)

        # The seed's client: send to a room.
        await send_json(
            alice,
            {"type": "message", "room": "general", "username": "Alice", "text": "Hello everyone!"},
        )
        for ws in (alice, bob):
            got = await recv_json(ws)
            del got["timestamp"]
            assert got == {
                "type": "chat-message",
                "room": "general",
                "username": "Alice",
                "message": "Hello everyone!",
            }
        await synced(app, *everyone)  # carol is in dev only

        # typing: to every room of the sender, each member once, the sender excluded.
        await send_json(alice, {"type": "typing", "username": "Alice"})
        assert await recv_json(bob) == {"type": "typing", "username": "Alice"}
        assert await recv_json(carol) == {"type": "typing", "username": "Alice"}
        await synced(app, *everyone)

        await send_json(bob, {"type": "leave-room", "room": "general"})
        assert await recv_json(alice) == {
            "type": "user-left",
            "userId": ids[1],
            "username": "Bob",
            "room": "general",
        }
        await send_json(alice, {"type": "message", "room": "general", "text": "anyone?"})
        assert (await recv_json(alice))["message"] == "anyone?"
        await synced(app, *everyone)  # bob left the room: nothing for him

        await send_json(alice, {"type": "leave-room"})
        assert (await recv_json(alice))["type"] == "error"  # no room named


async def test_chat_answers_bad_input_with_an_error_and_stays_open(chat_app: harpy.App) -> None:
    app = chat_app
    async with serve(app) as url, client(f"{url}/ws/chat") as ws:
        assert (await recv_json(ws))["type"] == "connected"
        for bad in ("not json", "[1, 2]", json.dumps({"type": "dance"}), b"\xff\x00"):
            await ws.send(bad)
            reply = await recv_json(ws)
            assert reply["type"] == "error" and reply["message"]
        await send_json(ws, {"type": "join", "username": "Dora"})
        assert await recv_json(ws) == {"type": "joined", "room": "chat"}


# --------------------------------------------------------------------------------- game


async def test_game_server_lobby_create_join_and_act(game_app: harpy.App) -> None:
    app = game_app
    async with (
        serve(app) as url,
        client(f"{url}/ws/game") as p1,
        client(f"{url}/ws/game") as p2,
        client(f"{url}/ws/game") as p3,
    ):
        players = (p1, p2, p3)
        ids = []
        for ws in players:
            hello = await recv_json(ws)
            assert hello["type"] == "joined-lobby"
            ids.append(hello["playerId"])
        assert [ws.id for ws in app.room_members("lobby")] == ids  # default_room="lobby"

        await send_json(p1, {"type": "create-game"})
        created = await recv_json(p1)
        assert created["type"] == "game-created"
        game_id = created["gameId"]
        assert game_id.startswith("game-") and game_id in app.rooms

        await send_json(p2, {"type": "join-game", "gameId": game_id})
        assert await recv_json(p1) == {"type": "player-joined", "playerId": ids[1]}
        assert await recv_json(p2) == {"type": "game-joined", "gameId": game_id}
        await synced(app, *players)  # p3 is still in the lobby only

        action = {"move": "e2e4", "piece": "pawn"}
        await send_json(p1, {"type": "game-action", "gameId": game_id, "action": action})
        for ws in (p1, p2):  # the sender included
            assert await recv_json(ws) == {
                "type": "game-update",
                "action": action,
                "playerId": ids[0],
            }
        await synced(app, *players)

        # The lobby is a room like any other.
        assert app.broadcast({"type": "announcement"}, rooms=["lobby"]) == 3
        for ws in players:
            assert await recv_json(ws) == {"type": "announcement"}

        await send_json(p2, {"type": "join-game", "gameId": game_id})  # again: no news
        assert await recv_json(p2) == {"type": "game-joined", "gameId": game_id}
        await synced(app, *players)

        await p2.close()
        assert await recv_json(p1) == {"type": "player-left", "playerId": ids[1]}
        await synced(app, p1, p3)
        assert [ws.id for ws in app.room_members(game_id)] == [ids[0]]


async def test_game_server_refuses_unknown_games_and_outsiders(game_app: harpy.App) -> None:
    app = game_app
    async with (
        serve(app) as url,
        client(f"{url}/ws/game") as p1,
        client(f"{url}/ws/game") as p2,
    ):
        for ws in (p1, p2):
            assert (await recv_json(ws))["type"] == "joined-lobby"
        await send_json(p1, {"type": "create-game"})
        game_id = (await recv_json(p1))["gameId"]

        for message in (
            {"type": "join-game", "gameId": "game-000000"},  # no such game
            {"type": "join-game", "gameId": "lobby"},  # a room, not a game
            {"type": "join-game"},
            {"type": "game-action", "gameId": game_id, "action": "cheat"},  # not a player
            {"type": "game-action", "gameId": "lobby", "action": "spam"},
            {"type": "fly"},
        ):
            await send_json(p2, message)
            assert (await recv_json(p2))["type"] == "error", message
        await p2.send("{not json")
        assert (await recv_json(p2))["type"] == "error"
        await synced(app, p1, p2)  # none of it reached p1
        assert len(app.room_members(game_id)) == 1

        # Two games are two rooms: an action in one does not reach the other.
        await send_json(p2, {"type": "create-game"})
        other = (await recv_json(p2))["gameId"]
        assert other != game_id
        await send_json(p2, {"type": "game-action", "gameId": other, "action": 1})
        assert (await recv_json(p2))["type"] == "game-update"
        await synced(app, p1, p2)

        await p1.close()  # the last player leaves: the game is gone
        await eventually(lambda: game_id not in app.rooms)
        await send_json(p2, {"type": "join-game", "gameId": game_id})
        assert (await recv_json(p2))["type"] == "error"


# --------------------------------------------------------------------------------- chat, echo


async def test_chat_example_announces_and_relays() -> None:
    app = load_example("chat").app
    async with serve(app) as url, client(f"{url}/chat?name=alice") as alice:
        assert await recv(alice) == "welcome alice, 0 other(s) here"
        async with client(f"{url}/chat?name=bob") as bob:
            assert await recv(bob) == "welcome bob, 1 other(s) here"
            assert await recv(alice) == "bob joined"
            await bob.send("hi")
            assert await recv(alice) == "bob: hi"
            assert await recv(bob) == "bob: hi"  # everyone, the sender too
            await alice.send("café".encode())  # binary is shown as text
            assert await recv(bob) == "alice: café"
            assert await recv(alice) == "alice: café"
        assert await recv(alice) == "bob left"
        async with client(f"{url}/chat") as guest:
            welcome = await recv(guest)
            assert isinstance(welcome, str)
            assert welcome.startswith("welcome guest-") and welcome.endswith("1 other(s) here")


async def test_echo_example_returns_every_message_as_it_came() -> None:
    app = load_example("echo").app
    async with serve(app) as url, client(f"{url}/echo") as ws:
        messages: list[str | bytes] = [f"text {i}" if i % 2 else bytes([i]) * i for i in range(50)]
        messages += ["", b"", "ünïcødé", b"\x00" * 70_000]
        for message in messages:
            await ws.send(message)
        for message in messages:
            assert await recv(ws) == message

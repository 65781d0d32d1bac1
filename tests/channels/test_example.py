"""examples/channels_chat.py with the centrifuge-python SDK: names, messages, presence, RPC."""

from __future__ import annotations

import pytest
from centrifuge import ReplyError

from examples import channels_chat
from tests.channels.sdk import SubEvents, make_client
from tests.helpers import serve


async def test_the_channels_chat_example() -> None:
    app, endpoint = channels_chat.make_app()
    channels_chat.endpoint = endpoint
    async with serve(app) as base:
        url = base + "/connection/websocket"
        nameless, events = make_client(url)
        await nameless.connect()
        assert (await events.next("disconnected")).code == 4000
        ada, _ = make_client(url, data={"name": "Ada"})
        bob, _ = make_client(url, data={"name": "Bob"})
        await ada.connect()
        await bob.connect()
        ada_events, bob_events = SubEvents(), SubEvents()
        ada_room = ada.new_subscription("chat:lobby", ada_events)
        bob_room = bob.new_subscription("chat:lobby", bob_events)
        await ada_room.subscribe()
        await bob_room.subscribe()
        await ada_events.next("subscribed")
        await bob_events.next("subscribed")
        await ada_room.publish({"text": "hello"})
        for events_of in (ada_events, bob_events):
            publication = await events_of.next("publication")
            data = publication.pub.data
            assert isinstance(data.pop("time"), int)  # the server's clock, in milliseconds
            assert data == {"text": "hello", "from": "Ada"}
        with pytest.raises(ReplyError) as refused:
            await bob_room.publish({"text": ""})
        assert refused.value.code == 4001
        presence = await bob_room.presence()
        assert sorted(info.user for info in presence.clients.values()) == ["Ada", "Bob"]
        assert (await ada.rpc("rooms", None)).data == ["chat:lobby"]
        history = await bob_room.history(limit=10)
        assert [p.data["text"] for p in history.publications] == ["hello"]
        await ada.disconnect()
        await bob.disconnect()

"""A chat on channels: Centrifugo's client SDKs connect, reconnect, and recover what they missed.

Run it with ``make run`` (or ``python -m harpy examples.channels_chat:app --port 3000``)
and open ``http://127.0.0.1:3000/`` in two tabs: the app serves its page
(``examples/live_chat/``, which speaks the protocol with a small client of its own,
``channels.js``).  Stop and start the
server, or cut the network: the page says "reconnecting", then shows every message sent
meanwhile.  Or connect from any Centrifuge SDK (``npm install centrifuge``,
``pip install centrifuge-python``)::

    const centrifuge = new Centrifuge("ws://127.0.0.1:8000/connection/websocket",
                                      {data: {name: "ada"}});
    const room = centrifuge.newSubscription("chat:lobby", {joinLeave: true});
    room.on("publication", (ctx) => console.log(ctx.data));
    room.subscribe(); centrifuge.connect();
    room.publish({text: "hello"});

Channels ``chat:<room>`` keep their last 500 messages for 10 minutes: a client that comes back
within that gets what it missed, in order.  ``presence`` lists who is in a room; ``rpc("rooms")``
the rooms with somebody in them on this node.  The history is in memory on one process; with
``--workers 2`` it is in JetStream on the embedded nats-server, shared by the workers; with
``HARPY_REDIS_URL`` set it lives in Redis and every node shares it (run several).  Real apps
check a token instead of trusting the name a client gives (see docs/channels.md).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import harpy
from harpy.channels import ChannelError, ChannelOptions, Client, Namespace
from harpy.pubsub.redis_history import RedisHistory

CHAT = Namespace(
    history_size=500,
    history_ttl=600,
    presence=True,
    join_leave=True,
    allow_subscribe=True,
    allow_history=True,
    allow_presence=True,
)


class Chat:
    """The hooks: who connects (a name, 1-32 characters), what a message may be, and RPC."""

    def connect(self, client: Client, request: dict[str, Any]) -> dict[str, Any]:
        data = request.get("data")
        name = data.get("name") if isinstance(data, dict) else None
        if not isinstance(name, str) or not 1 <= len(name.strip()) <= 32:
            raise ChannelError(4000, 'say your name: connect data {"name": ...}')
        return {"user": name.strip(), "info": {"name": name.strip()}}

    def publish(self, client: Client, channel: str, data: Any) -> dict[str, Any]:
        text = data.get("text") if isinstance(data, dict) else None
        if not isinstance(text, str) or not text.strip() or len(text) > 2000:
            raise ChannelError(4001, 'a message is {"text": 1-2000 characters}')
        return {"data": {"text": text, "from": client.user, "time": int(time.time() * 1000)}}

    def rpc_rooms(self, client: Client, data: Any) -> list[str]:
        return sorted({c for other in endpoint.clients() for c in other.channels})


#: The page and its scripts, served from the same origin as the endpoint.
PAGE = Path(__file__).resolve().parent / "live_chat"


def make_app(redis_url: str | None = None) -> tuple[harpy.App, Any]:
    if redis_url:
        app = harpy.App(
            presence=True, backplane=harpy.RedisBackplane(redis_url), static={"/": PAGE}
        )
        options = ChannelOptions(history=RedisHistory(redis_url), namespaces={"chat": CHAT})
    else:
        # No history named: memory on one process, JetStream under --workers.
        app = harpy.App(presence=True, static={"/": PAGE})
        options = ChannelOptions(namespaces={"chat": CHAT})
    return app, app.channels("/connection/websocket", Chat, options)


app, endpoint = make_app(os.environ.get("HARPY_REDIS_URL"))

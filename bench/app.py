"""The app the benchmarks drive: ``python -m harpy bench.app:app --host 127.0.0.1 --port N``.

- ``/echo``: every message back to its sender.
- ``/sub``: subscribe to the topic ``bench``, then send the text ``ok``; ``/pub``: publish each
  received message to ``bench``.
- ``/subz`` and ``/pubz``: the same with permessage-deflate on (the topic ``benchz``).
- ``/state``: what a chat keeps per connection: a ``data=`` object (a user name and a
  counter) and one topic (``lobby``); the idle memory workload's second case.
- ``/hb``: heartbeat every ``HARPY_BENCH_PING`` seconds (default 5), nothing else.
- ``/echoj``: JSON mode; every message parsed, and the value sent back (serialised again).
- ``/subj`` and ``/pubj``: as ``/sub`` and ``/pub`` (topic ``benchj``), the publisher in JSON
  mode: each message is parsed and its value published, serialised once for every subscriber.

``HARPY_BENCH_JSON=stdlib`` makes the app use the standard library's ``json`` for the JSON
routes; otherwise it uses the default (orjson when installed).
"""

from __future__ import annotations

import json
import os
from typing import Any

import harpy


def _stdlib_dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


if os.environ.get("HARPY_BENCH_JSON") == "stdlib":
    app = harpy.App(json_dumps=_stdlib_dumps, json_loads=json.loads)
else:
    app = harpy.App()
WS = harpy.WebSocket[Any]


@app.ws("/echo")
class Echo:
    def message(self, ws: WS, message: str | bytes) -> None:
        ws.send(message)


class Subscriber:
    def __init__(self, topic: str) -> None:
        self.topic = topic

    def open(self, ws: WS) -> None:
        ws.subscribe(self.topic)
        ws.send("ok")


class Publisher:
    def __init__(self, topic: str) -> None:
        self.topic = topic

    def message(self, ws: WS, message: str | bytes) -> None:
        ws.publish(self.topic, message)


app.ws("/sub", Subscriber("bench"))
app.ws("/pub", Publisher("bench"))
app.ws("/subz", Subscriber("benchz"), compression=True)
app.ws("/pubz", Publisher("benchz"), compression=True)
class Member:
    """A connection's own state in a chat: who it is, and what it sent."""

    __slots__ = ("name", "sent")

    def __init__(self) -> None:
        self.name = ""
        self.sent = 0


class Lobby:
    def open(self, ws: harpy.WebSocket[Member]) -> None:
        ws.data.name = ws.id
        ws.subscribe("lobby")

    def message(self, ws: harpy.WebSocket[Member], message: str | bytes) -> None:
        ws.data.sent += 1
        ws.publish("lobby", message)


app.ws("/state", Lobby(), data=Member)
app.ws("/hb", {}, ping_interval=float(os.environ.get("HARPY_BENCH_PING", "5")))


@app.ws("/echoj", json=True)
class JsonEcho:
    def message(self, ws: WS, value: Any) -> None:
        ws.send_json(value)


app.ws("/subj", Subscriber("benchj"))
app.ws("/pubj", Publisher("benchj"), json=True)

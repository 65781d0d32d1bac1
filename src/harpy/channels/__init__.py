"""Channels: the Centrifuge client protocol v2 (JSON) on a route, so that Centrifugo's client
SDKs (JavaScript, Python, Dart, Swift, Java, Go, .NET) connect, subscribe, publish, and
recover what they missed from history.  See docs/channels.md.

This layer sits above the app: it uses the app's and pubsub's public interfaces only.
"""

from __future__ import annotations

from typing import Any

from ..app import App
from ..app.app import set_channels_factory
from ..pubsub.history import History, MemoryHistory, Position
from ._codes import ChannelError, Disconnect
from ._endpoint import Channels, Client
from ._options import ChannelOptions, Namespace

__all__ = [
    "ChannelError",
    "ChannelOptions",
    "Channels",
    "Client",
    "Disconnect",
    "History",
    "MemoryHistory",
    "Namespace",
    "Position",
]


def _make(app: App, path: str, handlers: object, options: Any, route: dict[str, Any]) -> Channels:
    endpoint = Channels(app, path, handlers, options)
    app.ws(path, endpoint.route_handlers(), **route)
    return endpoint


set_channels_factory(_make)

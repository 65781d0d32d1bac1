"""The app layer: routes, path patterns, options, dispatch, and the connection object."""

from __future__ import annotations

from ..pubsub import Connections
from .app import App, Route
from .handlers import Handlers
from .router import Router
from .websocket import Admission, Dispatch, WebSocket

__all__ = [
    "Admission",
    "App",
    "Connections",
    "Dispatch",
    "Handlers",
    "Route",
    "Router",
    "WebSocket",
]

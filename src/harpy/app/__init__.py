"""The app layer: routes, path patterns, options, dispatch, and the connection object."""

from __future__ import annotations

from .app import App, Connections, Route
from .handlers import Handlers
from .router import Router
from .websocket import WebSocket

__all__ = ["App", "Connections", "Handlers", "Route", "Router", "WebSocket"]

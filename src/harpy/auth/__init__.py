"""Authentication: the ``authenticate`` hook and its short forms, JWT, and sessions.

This layer sits below the app layer: it sees a connection only through :class:`Upgrading`
(what an upgrade request offers a hook) and :class:`~harpy.auth.session.HasCookies`.
"""

from __future__ import annotations

from ._jwt import jwt
from .hooks import (
    Deny,
    FirstMessageAuth,
    UpgradeRequest,
    Upgrading,
    interpret,
    resolve_authenticate,
)
from .session import MemoryStore, Session, SessionStore

__all__ = [
    "Deny",
    "FirstMessageAuth",
    "MemoryStore",
    "Session",
    "SessionStore",
    "UpgradeRequest",
    "Upgrading",
    "interpret",
    "jwt",
    "resolve_authenticate",
]

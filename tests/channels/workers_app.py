"""A channels app for ``python -m harpy tests.channels.workers_app:app --workers 2``: its options
name no history, so each worker keeps it in JetStream on the embedded nats-server.
``rpc("pid")`` answers which worker serves the connection."""

from __future__ import annotations

import os
from typing import Any

import harpy
from harpy.channels import ChannelOptions, Client
from tests.channels.conftest import SECRET
from tests.channels.server_app import CHAT


class Hooks:
    def rpc_pid(self, client: Client, data: Any) -> int:
        return os.getpid()


app = harpy.App()
endpoint = app.channels(
    "/connection/websocket",
    Hooks,
    ChannelOptions(secret=SECRET, anonymous=True, namespaces={"chat": CHAT}),
)

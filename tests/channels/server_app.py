"""A channels server in a process of its own, for the tests that kill and restart it:
``python -m tests.channels.server_app PORT memory``, ``... PORT redis URL PREFIX`` or
``... PORT jetstream NATS_URL PREFIX``."""

from __future__ import annotations

import sys

import harpy
from harpy.channels import ChannelOptions, MemoryHistory, Namespace
from harpy.pubsub.history import History
from harpy.pubsub.nats_history import JetStreamHistory
from harpy.pubsub.redis_history import RedisHistory
from tests.channels.conftest import SECRET

#: Every channel of namespace "chat": history of 5,000 for 5 minutes; anyone may do anything.
CHAT = Namespace(
    history_size=5000,
    history_ttl=300,
    allow_subscribe=True,
    allow_publish=True,
    allow_history=True,
)


def make_app(
    kind: str, url: str = "", prefix: str = "harpy:", nats_url: str = ""
) -> tuple[harpy.App, object]:
    """The app and its endpoint: memory history, Redis history at ``url`` and a Redis
    backplane there (or a NATS one at ``nats_url``), or JetStream history and a NATS backplane
    on the nats-server at ``url``."""
    history: History
    if kind == "jetstream":
        tag = prefix.replace(":", "").replace("-", "")
        app = harpy.App(backplane=harpy.NatsBackplane(url, subject_prefix=f"{tag}."))
        history = JetStreamHistory(url, stream=f"T{tag}", subject_prefix=f"t{tag}.")
    elif kind == "redis":
        backplane: harpy.Backplane = (
            harpy.NatsBackplane(nats_url, subject_prefix=prefix.replace(":", "."))
            if nats_url
            else harpy.RedisBackplane(url, channel_prefix=prefix)
        )
        app = harpy.App(backplane=backplane)
        history = RedisHistory(url, key_prefix=prefix + "history:", channel_prefix=prefix)
    else:
        app = harpy.App()
        history = MemoryHistory()
    options = ChannelOptions(
        secret=SECRET, history=history, anonymous=True, namespaces={"chat": CHAT}
    )
    endpoint = app.channels("/connection/websocket", {}, options)
    return app, endpoint


def main() -> None:
    port, kind = int(sys.argv[1]), sys.argv[2]
    app, _ = make_app(kind, *sys.argv[3:5])
    app.run("127.0.0.1", port)


if __name__ == "__main__":
    main()

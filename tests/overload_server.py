"""A harpy server for the overload tests, run in its own process so that its memory can be
measured apart from the test's: ``python -m tests.overload_server BUDGET`` prints its port.

``/sub`` and ``/slow`` subscribe to the topic ``t`` (``/slow`` with a small kernel send
buffer); every message to ``/pub`` is published to ``t``; the message ``stats`` to ``/ctl`` is
answered with the drop counters and the number of open connections.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
from typing import Any

import harpy
from harpy.app.app import run_loop

#: The kernel send buffer of each ``/slow`` subscriber's socket.
SNDBUF = 16 * 1024


def make_app(budget: int) -> harpy.App:
    app = harpy.App(output_budget=budget, idle_timeout=0)

    @app.ws("/sub")
    class Sub:
        def open(self, ws: harpy.WebSocket[Any]) -> None:
            ws.subscribe("t")

    @app.ws("/slow")
    class Slow:
        def open(self, ws: harpy.WebSocket[Any]) -> None:
            # A small kernel send buffer for the subscribers that stop reading: what they
            # cannot take stays in this process, where the budget bounds it, instead of
            # a megabyte each in the kernel.
            sock = ws._conn.transport.get_extra_info("socket") if ws._conn.transport else None
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
            ws.subscribe("t")

    @app.ws("/pub")
    class Pub:
        def message(self, ws: harpy.WebSocket[Any], message: str | bytes) -> None:
            app.publish("t", message)

    @app.ws("/ctl")
    class Ctl:
        def message(self, ws: harpy.WebSocket[Any], message: str | bytes) -> None:
            ws.send(json.dumps({"drops": app.drops, "open": len(app.connections)}))

    return app


async def main(budget: int) -> None:
    """Serve until SIGTERM; the first line on stdout is the port."""
    app = make_app(budget)
    await app.listen("127.0.0.1", 0)
    print(app.port, flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await app.shutdown()


if __name__ == "__main__":
    run_loop(main(int(sys.argv[1])))

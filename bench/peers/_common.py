"""What the peer servers share: command line, uvloop start-up, SIGTERM handling."""
import argparse
import signal
from collections.abc import Coroutine
from typing import Any


def parse_args(doc: str | None, *, compression: bool = False,
               ping_interval: bool = False) -> argparse.Namespace:
    """--host/--port, plus --compression and --ping-interval where the peer supports them."""
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    if compression:
        ap.add_argument("--compression", choices=["none", "deflate"], default="none",
                        help="permessage-deflate for the whole server (default: none)")
    if ping_interval:
        ap.add_argument("--ping-interval", type=float, default=None,
                        help="server keepalive pings every this many seconds; "
                             "0 disables them; default: the library's default")
    return ap.parse_args()


def run(main: Coroutine[Any, Any, None]) -> None:
    """Runs main on uvloop; SIGTERM kills at once, without a graceful close of 10k sockets."""
    import uvloop

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    uvloop.run(main)

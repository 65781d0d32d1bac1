"""websockets (new asyncio API) peer: /echo, /sub (sends "ok"), /pub (broadcast)."""
import argparse
import signal

import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve

SUBSCRIBERS: set[ServerConnection] = set()


async def handler(ws: ServerConnection) -> None:
    path = ws.request.path if ws.request is not None else ""
    if path == "/echo":
        async for message in ws:
            await ws.send(message)
    elif path == "/sub":
        SUBSCRIBERS.add(ws)
        try:
            await ws.send("ok")
            await ws.wait_closed()
        finally:
            SUBSCRIBERS.discard(ws)
    elif path == "/pub":
        async for message in ws:
            broadcast(SUBSCRIBERS, message)
    else:
        await ws.close(1008, "unknown path")


async def main(host: str, port: int) -> None:
    # keepalive pings are left at the library default
    async with serve(handler, host, port, max_size=16 * 1024 * 1024,
                     compression=None, backlog=4096) as server:
        await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    uvloop.run(main(args.host, args.port))

"""websockets (new asyncio API) peer: /echo, /sub (sends "ok"), /pub (broadcast).

/subz and /pubz are the same on a second topic, for the compressed fan-out: websockets takes
one ``compression`` setting for the whole server, so that workload starts its own server with
``--compression deflate`` (the library's default permessage-deflate settings).
"""
from typing import Any

from _common import parse_args, run
from websockets.asyncio.server import ServerConnection, broadcast, serve

TOPICS: dict[str, set[ServerConnection]] = {"/sub": set(), "/subz": set()}
PUBLISH_TO = {"/pub": "/sub", "/pubz": "/subz"}


async def handler(ws: ServerConnection) -> None:
    path = ws.request.path if ws.request is not None else ""
    if path == "/echo":
        async for message in ws:
            await ws.send(message)
    elif path in TOPICS:
        subscribers = TOPICS[path]
        subscribers.add(ws)
        try:
            await ws.send("ok")
            await ws.wait_closed()
        finally:
            subscribers.discard(ws)
    elif path in PUBLISH_TO:
        subscribers = TOPICS[PUBLISH_TO[path]]
        async for message in ws:
            broadcast(subscribers, message)
    else:
        await ws.close(1008, "unknown path")


async def main(host: str, port: int, compression: str, ping_interval: float | None) -> None:
    kwargs: dict[str, Any] = {}
    if ping_interval is not None:   # otherwise the library's default keepalive
        kwargs["ping_interval"] = ping_interval or None
    async with serve(handler, host, port, max_size=16 * 1024 * 1024,
                     compression="deflate" if compression == "deflate" else None,
                     backlog=4096, **kwargs) as server:
        await server.serve_forever()


if __name__ == "__main__":
    args = parse_args(__doc__, compression=True, ping_interval=True)
    run(main(args.host, args.port, args.compression, args.ping_interval))

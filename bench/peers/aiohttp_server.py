"""aiohttp peer: /echo, /sub (sends "ok"), /pub (loop of send_frame).

/subz and /pubz: the same on a second topic, for the compressed fan-out. aiohttp's default
``compress=True`` agrees to permessage-deflate whenever the client offers it (the plain
fan-out never offers it); each subscriber's frames are then compressed by its own compressor.
--ping-interval sets ``heartbeat`` on /echo.
"""
import asyncio
from functools import partial

from _common import parse_args, run
from aiohttp import WSMsgType, web

TOPICS: dict[str, set[web.WebSocketResponse]] = {"bench": set(), "benchz": set()}


async def echo(request: web.Request, heartbeat: float | None = None) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024, heartbeat=heartbeat)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def sub(request: web.Request, topic: str) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    subscribers = TOPICS[topic]
    subscribers.add(ws)
    try:
        await ws.send_str("ok")
        async for _ in ws:
            pass
    finally:
        subscribers.discard(ws)
    return ws


async def pub(request: web.Request, topic: str) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024)
    await ws.prepare(request)
    subscribers = TOPICS[topic]
    async for msg in ws:
        if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            continue
        # encode once instead of once per subscriber (send_str would re-encode);
        # send_frame still compresses per subscriber when that one negotiated deflate
        data = msg.data.encode() if msg.type == WSMsgType.TEXT else msg.data
        opcode = WSMsgType.TEXT if msg.type == WSMsgType.TEXT else WSMsgType.BINARY
        for s in list(subscribers):
            if not s.closed:
                await s.send_frame(data, opcode)
    return ws


async def main(host: str, port: int, ping_interval: float | None) -> None:
    app = web.Application()
    app.add_routes([
        web.get("/echo", partial(echo, heartbeat=ping_interval or None)),
        web.get("/sub", partial(sub, topic="bench")),
        web.get("/pub", partial(pub, topic="bench")),
        web.get("/subz", partial(sub, topic="benchz")),
        web.get("/pubz", partial(pub, topic="benchz")),
    ])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096)
    await site.start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    args = parse_args(__doc__, ping_interval=True)
    run(main(args.host, args.port, args.ping_interval))

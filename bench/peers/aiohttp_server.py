"""aiohttp peer: /echo, /sub (sends "ok"), /pub (loop of send_frame)."""
import argparse
import asyncio
import signal

import uvloop
from aiohttp import WSMsgType, web

SUBSCRIBERS: set[web.WebSocketResponse] = set()


async def echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def sub(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    SUBSCRIBERS.add(ws)
    try:
        await ws.send_str("ok")
        async for _ in ws:
            pass
    finally:
        SUBSCRIBERS.discard(ws)
    return ws


async def pub(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            continue
        # encode once instead of once per subscriber (send_str would re-encode)
        data = msg.data.encode() if msg.type == WSMsgType.TEXT else msg.data
        opcode = WSMsgType.TEXT if msg.type == WSMsgType.TEXT else WSMsgType.BINARY
        for s in list(SUBSCRIBERS):
            if not s.closed:
                await s.send_frame(data, opcode)
    return ws


async def main(host: str, port: int) -> None:
    app = web.Application()
    app.add_routes([web.get("/echo", echo), web.get("/sub", sub), web.get("/pub", pub)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096)
    await site.start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    uvloop.run(main(args.host, args.port))

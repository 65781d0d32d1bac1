"""Raw picows peer: /echo, /sub (sends "ok"), /pub (plain loop of transport.send)."""
import argparse
import signal

import uvloop
from picows import (
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    ws_create_server,
)

SUBSCRIBERS: set[WSTransport] = set()


class _Base(WSListener):
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            # picows leaves the close handshake to the listener
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
            return
        if frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY):
            self.on_message(transport, frame)

    def on_message(self, transport: WSTransport, frame: WSFrame) -> None:
        pass


class Echo(_Base):
    def on_message(self, transport: WSTransport, frame: WSFrame) -> None:
        transport.send(frame.msg_type, frame.get_payload_as_memoryview())


class Sub(_Base):
    def on_ws_connected(self, transport: WSTransport) -> None:
        SUBSCRIBERS.add(transport)
        transport.send(WSMsgType.TEXT, b"ok")

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        SUBSCRIBERS.discard(transport)


class Pub(_Base):
    def on_message(self, transport: WSTransport, frame: WSFrame) -> None:
        # the view stays valid until this callback returns; send() copies it
        payload = frame.get_payload_as_memoryview()
        msg_type = frame.msg_type
        for sub in SUBSCRIBERS:
            sub.send(msg_type, payload)


ROUTES = {b"/echo": Echo, b"/sub": Sub, b"/pub": Pub}


def listener_factory(request: WSUpgradeRequest) -> WSListener | None:
    cls = ROUTES.get(request.path)
    return cls() if cls is not None else None


async def main(host: str, port: int) -> None:
    server = await ws_create_server(listener_factory, host, port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    # default action: die immediately, without a graceful close of 10k sockets
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    uvloop.run(main(args.host, args.port))

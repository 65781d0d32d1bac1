"""Raw picows peer: /echo, /sub (sends "ok"), /pub (plain loop of transport.send).

picows has no permessage-deflate, so it takes no part in the compressed fan-out.
--ping-interval turns on picows' own periodic auto-ping, one ping per that many seconds.
"""
from typing import Any

from _common import parse_args, run
from picows import (
    WSAutoPingStrategy,
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


async def main(host: str, port: int, ping_interval: float | None) -> None:
    kwargs: dict[str, Any] = {}
    if ping_interval:
        # picows' ping loop sleeps the idle timeout, pings, then sleeps the reply timeout
        # (which must not exceed the idle timeout): half and half make one ping per interval
        half = ping_interval / 2
        kwargs.update(enable_auto_ping=True, auto_ping_idle_timeout=half,
                      auto_ping_reply_timeout=half,
                      auto_ping_strategy=WSAutoPingStrategy.PING_PERIODICALLY)
    server = await ws_create_server(listener_factory, host, port, backlog=4096, **kwargs)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    args = parse_args(__doc__, ping_interval=True)
    run(main(args.host, args.port, args.ping_interval))

"""socketify.py peer (uWebSockets in C++, Python callbacks): /echo, /sub (sends "ok"), /pub,
and /subz, /pubz with permessage-deflate.

uWebSockets does the upgrade, the framing, the close handshake (a close frame is answered with
the same code) and pub/sub in C++; Python runs once per message (echo, publish) and per open
(subscribe). /pub publishes through the app (``App.publish``), which sends each message to every
subscriber of the topic from C++. /subz and /pubz: ``CompressOptions.SHARED_COMPRESSOR``, one
compressor for the whole server, each published message compressed once. --ping-interval turns
on uWebSockets' automatic pings (``send_pings_automatically``) with that idle timeout: a ping
goes to a connection that received nothing for about that long (uWebSockets' timers tick every
4 s, so the interval is rounded to that grain).
"""

from typing import Any

from _common import parse_args
from socketify import App, AppListenOptions, CompressOptions, OpCode


def build(ping_interval: float | None) -> App:
    app = App()
    common: dict[str, Any] = {"compression": CompressOptions.DISABLED}
    if ping_interval:
        common.update(idle_timeout=max(8, round(ping_interval)), send_pings_automatically=True)

    def echo(ws: Any, message: Any, opcode: OpCode) -> None:
        ws.send(message, opcode)

    def subscriber(topic: str) -> Any:
        def on_open(ws: Any) -> None:
            ws.subscribe(topic)
            ws.send("ok", OpCode.TEXT)
        return on_open

    def publisher(topic: str, compress: bool) -> Any:
        def on_message(ws: Any, message: Any, opcode: OpCode) -> None:
            app.publish(topic, message, opcode, compress)
        return on_message

    deflate = {**common, "compression": CompressOptions.SHARED_COMPRESSOR}
    app.ws("/echo", {**common, "message": echo})
    app.ws("/sub", {**common, "open": subscriber("bench")})
    app.ws("/pub", {**common, "message": publisher("bench", False)})
    app.ws("/subz", {**deflate, "open": subscriber("benchz")})
    app.ws("/pubz", {**deflate, "message": publisher("benchz", True)})
    return app


def main() -> None:
    import signal

    args = parse_args(__doc__, ping_interval=True)
    app = build(args.ping_interval)
    # SIGTERM kills at once, without a graceful close of 10k sockets (as the other peers)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    app.listen(AppListenOptions(port=args.port, host=args.host))
    app.run()


if __name__ == "__main__":
    main()

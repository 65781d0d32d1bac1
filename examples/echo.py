"""Echo every message back: ``python -m harpy examples.echo:app --port 3000``."""

from __future__ import annotations

import harpy

app = harpy.App()


@app.ws("/echo")
class Echo:
    def message(self, ws: harpy.WebSocket[dict[str, object]], message: str | bytes) -> None:
        ws.send(message)


if __name__ == "__main__":
    app.run(port=3000)

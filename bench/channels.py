"""Deliveries through a channel beside a raw topic, and recovery time, in one run.

``python bench/channels.py [--write]`` starts a harpy server in a process of its own (memory
history, then Redis history with a redis-server of its own on a free port) and in each:

- throughput: ``--subs`` subscribers of a raw topic, of a channel without history and of a
  channel with history; the server publishes ``--burst`` messages to each, one per turn of its
  loop (asked on a control connection, so no publisher client is in the figures) and the time
  runs until every subscriber has every message: deliveries/s, and the server's and this load
  generator's CPU per delivery;
- recovery: one client subscribes, leaves, ``--missed`` publications go out, and it comes back
  recovering: the time from its subscribe to the reply carrying them all; then ``--storm``
  clients do the same at once (connected first, then all subscribing): the time until the last
  reply, and how many history reads the server made for them.

The clients are Python (``websockets``) in this process; its CPU is reported, and where it is
near 100 % of a core the deliveries/s are its limit, not the server's.  ``--write`` writes
bench/CHANNELS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.run import cpu_seconds, process_tree  # noqa: E402 - run as a script from anywhere

CHANNELS_MD = ROOT / "bench" / "CHANNELS.md"
ENDPOINT = "/connection/websocket"


# ------------------------------------------------------------------ server


def serve(port: int, kind: str, redis_url: str) -> None:
    """The bench's server: a raw route, a control route and a channels endpoint."""
    import harpy
    from harpy.channels import ChannelOptions, MemoryHistory, Namespace
    from harpy.pubsub.history import History, Position, Stored
    from harpy.pubsub.redis_history import RedisHistory

    base: type[History] = RedisHistory if kind == "redis" else MemoryHistory
    reads = [0]

    class Counted(base):  # type: ignore[misc, valid-type]
        async def since(
            self, channel: str, offset: int, limit: int
        ) -> tuple[list[Stored], Position]:
            reads[0] += 1
            return await super().since(channel, offset, limit)  # type: ignore[no-any-return]

    history = Counted(redis_url, key_prefix="bench:") if kind == "redis" else Counted()
    app = harpy.App()
    everyone = {"allow_subscribe": True, "allow_publish": True}
    options = ChannelOptions(
        secret="bench-secret-0123456789abcdef0123456789",
        history=history,
        anonymous=True,
        namespaces={
            "plain": Namespace(**everyone),
            "hist": Namespace(history_size=5000, history_ttl=600, **everyone),
        },
    )
    endpoint = app.channels(ENDPOINT, {}, options)

    @app.ws("/raw")
    class Raw:
        def open(self, ws: harpy.WebSocket[Any]) -> None:
            ws.subscribe("raw")
            ws.send_text("ok")

    @app.ws("/ctl")
    class Control:
        async def message(self, ws: harpy.WebSocket[Any], message: str | bytes) -> None:
            order = json.loads(message)
            if order["do"] == "reads":
                ws.send_json({"reads": reads[0]})
                return
            target, count = order["target"], order["count"]
            for n in range(count):
                if target == "raw":
                    app.publish("raw", {"n": n})
                else:
                    await endpoint.publish(target, {"n": n})
                # One publication per turn of the loop (as when clients publish them): each
                # goes out to the sockets on its own, whatever its store.
                await asyncio.sleep(0)
            ws.send_json({"published": count})

    app.run("127.0.0.1", port)


# ------------------------------------------------------------------ instructions

#: (case, what it publishes to) of ``--instructions``: as bench/hotpath.py, in process through
#: a fake transport under callgrind, per delivery to 1,000 subscribers.
INSTRUCTION_CASES = [
    ("raw topic", "raw"),
    ("channel, no history", "plain:b"),
    ("channel, memory history", "hist:b"),
]
FAN = 1000


async def drive(target: str, n: int) -> None:
    """``n`` publications to ``target``'s 1,000 subscribers on fake transports."""
    import harpy
    from bench.hotpath import UPGRADE, FakeTransport, client_frame
    from harpy.channels import ChannelOptions, MemoryHistory, Namespace
    from harpy.server import FramedConnection, Server

    app = harpy.App()
    everyone = {"allow_subscribe": True, "allow_publish": True}
    options = ChannelOptions(
        secret="bench-secret-0123456789abcdef0123456789",
        history=MemoryHistory(),
        anonymous=True,
        namespaces={
            "plain": Namespace(**everyone),
            "hist": Namespace(history_size=5000, history_ttl=600, **everyone),
        },
    )
    endpoint = app.channels(ENDPOINT, {}, options)
    app.ws("/raw", {"open": lambda ws: ws.subscribe("raw")})

    def make(srv: Any) -> Any:
        conn = FramedConnection(srv)
        harpy.WebSocket(app, conn)
        return conn

    server = Server(make, loop=asyncio.get_running_loop())
    for _ in range(FAN):
        conn = make(server)
        conn.connection_made(FakeTransport())
        conn.data_received(UPGRADE.format("/raw" if target == "raw" else ENDPOINT).encode())
        if target != "raw":
            conn.data_received(client_frame(b'{"id":1,"connect":{}}'))
            sub = {"id": 2, "subscribe": {"channel": target}}
            conn.data_received(client_frame(json.dumps(sub).encode()))
    for _ in range(1000):  # the subscribes' replies (bounded)
        await asyncio.sleep(0)
    text = "hello world, a 32 byte message!!"
    for _ in range(n):
        if target == "raw":
            app.publish("raw", text)
        else:
            await endpoint.publish(target, text)
        server._flush_dirty()  # the end-of-tick write, as the loop would call it


def instruction_counts() -> list[tuple[str, int]]:
    """Instructions per delivery of each case: (N publications - 0) / (N x 1,000)."""
    from bench.hotpath import ROOT as HOT_ROOT

    def count(target: str, n: int) -> int:
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
             __file__, "--drive", target, str(n)],
            capture_output=True, text=True, check=True, cwd=HOT_ROOT,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )  # fmt: skip
        found = re.search(r"Collected : (\d+)", out.stderr)
        if not found:
            raise SystemExit(f"no callgrind total for {target}: {out.stderr[-500:]}")
        return int(found.group(1))

    n = 20
    return [(label, (count(t, n) - count(t, 0)) // (n * FAN)) for label, t in INSTRUCTION_CASES]


# ------------------------------------------------------------------ load


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, kind: str, redis_url: str = "") -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(self.port), kind, redis_url],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stderr is not None
        for _ in range(200):
            line = self.proc.stderr.readline().decode()
            if re.search(r"listening on", line) or not line:
                break
        # Keep reading what it writes, or a full pipe would stop it.
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()
        self.url = f"ws://127.0.0.1:{self.port}"

    def cpu(self) -> float:
        return cpu_seconds(process_tree(self.proc.pid))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


async def channel_client(url: str) -> ClientConnection:
    client = await connect(url + ENDPOINT, max_queue=None)
    await client.send(json.dumps({"id": 1, "connect": {}}))
    assert "connect" in json.loads(await client.recv())
    return client


async def subscribe(client: ClientConnection, channel: str, **extra: Any) -> dict[str, Any]:
    await client.send(json.dumps({"id": 2, "subscribe": {"channel": channel, **extra}}))
    while True:  # pushes of earlier publications may come first: skip to the reply
        for line in str(await client.recv()).splitlines():
            message = json.loads(line)
            if message.get("id") == 2:
                assert "subscribe" in message, message
                return dict(message["subscribe"])


async def control(server: Server, order: dict[str, Any]) -> dict[str, Any]:
    async with connect(server.url + "/ctl") as ctl:
        await ctl.send(json.dumps(order))
        return dict(json.loads(await ctl.recv()))


async def throughput(server: Server, target: str, subs: int, burst: int) -> dict[str, float]:
    clients: list[ClientConnection] = []
    for _ in range(subs):
        if target == "raw":
            client = await connect(server.url + "/raw", max_queue=None)
            assert await client.recv() == "ok"
        else:
            client = await channel_client(server.url)
            await subscribe(client, target)
        clients.append(client)
    marker = '"n":' if target == "raw" else '"pub":'
    got = [0]
    done = asyncio.Event()
    expected = subs * burst

    async def read(client: ClientConnection) -> None:
        async for frame in client:
            got[0] += str(frame).count(marker)
            if got[0] >= expected:
                done.set()

    readers = [asyncio.ensure_future(read(c)) for c in clients]
    server_before, own_before = server.cpu(), own_cpu()
    start = time.perf_counter()
    await control(server, {"do": "publish", "target": target, "count": burst})
    await asyncio.wait_for(done.wait(), 120)
    elapsed = time.perf_counter() - start
    server_cpu, client_cpu = server.cpu() - server_before, own_cpu() - own_before
    for reader in readers:
        reader.cancel()
    for client in clients:
        await client.close()
    return {
        "deliveries_per_s": expected / elapsed,
        "server_us": server_cpu / expected * 1e6,
        "client_us": client_cpu / expected * 1e6,
        "server_pct": server_cpu / elapsed * 100,
        "client_pct": client_cpu / elapsed * 100,
    }


async def recovery(server: Server, channel: str, clients: int, missed: int) -> dict[str, float]:
    """Seconds from ``clients`` subscribes recovering ``missed`` publications to the last
    reply, and the history reads the server made for them."""
    first = await channel_client(server.url)
    where = await subscribe(first, channel)
    await first.close()
    await control(server, {"do": "publish", "target": channel, "count": missed})
    conns = [await channel_client(server.url) for _ in range(clients)]
    reads_before = (await control(server, {"do": "reads"}))["reads"]
    position = {"recover": True, "offset": where["offset"], "epoch": where["epoch"]}
    server_before, own_before = server.cpu(), own_cpu()
    start = time.perf_counter()
    results = await asyncio.gather(*(subscribe(c, channel, **position) for c in conns))
    elapsed = time.perf_counter() - start
    server_cpu, client_cpu = server.cpu() - server_before, own_cpu() - own_before
    reads = (await control(server, {"do": "reads"}))["reads"] - reads_before
    for result in results:
        assert result.get("recovered") and len(result["publications"]) == missed, result.keys()
    for conn in conns:
        await conn.close()
    return {
        "seconds": elapsed,
        "reads": reads,
        "server_pct": server_cpu / elapsed * 100,
        "client_pct": client_cpu / elapsed * 100,
    }


def start_redis() -> tuple[subprocess.Popen[bytes], str, tempfile.TemporaryDirectory[str]]:
    port = free_port()
    tmp = tempfile.TemporaryDirectory()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            tmp.name,
        ],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(100):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    return proc, f"redis://127.0.0.1:{port}/0", tmp


async def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    redis, redis_url, tmp = start_redis()
    try:
        for kind, url in (("memory", ""), ("redis", redis_url)):
            server = Server(kind, url)
            try:
                cases = [("raw topic", "raw"), ("channel, no history", "plain:b")]
                cases.append((f"channel, {kind} history", "hist:b"))
                for label, target in cases:
                    if kind == "redis" and target == "plain:b":
                        continue
                    row = await throughput(server, target, args.subs, args.burst)
                    rows.append({"server": kind, "case": label, **row})
                one = await recovery(server, "hist:one", 1, args.missed)
                storm = await recovery(server, "hist:storm", args.storm, args.missed)
                rows.append({"server": kind, "case": "recover", "one": one, "storm": storm})
            finally:
                server.stop()
    finally:
        redis.terminate()
        redis.wait(10)
        tmp.cleanup()
    return rows


def render(rows: list[dict[str, Any]], args: argparse.Namespace, load: tuple[float, ...]) -> str:
    lines = [
        "# Channels: deliveries beside a raw topic, and recovery",
        "",
        f"`python bench/channels.py --write` ({time.strftime('%Y-%m-%d %H:%M')} UTC): one harpy "
        "server process (memory history, then Redis history with a redis-server of its own), "
        f"{args.subs} subscribers per case, {args.burst} publications made by the server itself, "
        "one per turn of its event loop so that each goes out to the sockets on its own "
        "whatever its store (no publisher client), the clients Python `websockets` in one process "
        "on the same 2 cores. CPU per delivery: server process, then the load generator. Load "
        f"average before the run: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 "
        "min; other work on this shared machine moves the absolute figures, so read the "
        "ratios, measured in the same run).",
        "",
        "| server | case | deliveries/s | server CPU per delivery (us) | vs raw topic "
        "| load generator CPU per delivery (us) | CPU % server / load generator |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    raw: dict[str, float] = {}
    for r in rows:
        if r["case"] == "recover":
            continue
        if r["case"] == "raw topic":
            raw[r["server"]] = r["server_us"]
        lines.append(
            f"| {r['server']} | {r['case']} | {r['deliveries_per_s']:,.0f} "
            f"| {r['server_us']:.2f} | {r['server_us'] / raw[r['server']]:.2f}x "
            f"| {r['client_us']:.2f} | {r['server_pct']:.0f} / {r['client_pct']:.0f} |"
        )
    lines += [
        "",
        f"Recovery of {args.missed} missed publications (from the subscribe with `recover` to "
        f"the reply carrying them all): one client, then {args.storm} clients connected first "
        "and subscribing at once; history reads are what the server's store was asked.",
        "",
        f"| server | one client (ms) | {args.storm} at once (ms) | history reads for the "
        f"{args.storm} | CPU % server / load generator, {args.storm} at once |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["case"] == "recover":
            lines.append(
                f"| {r['server']} | {r['one']['seconds'] * 1000:,.1f} "
                f"| {r['storm']['seconds'] * 1000:,.0f} | {r['storm']['reads']:.0f} "
                f"| {r['storm']['server_pct']:.0f} / {r['storm']['client_pct']:.0f} |"
            )
    return "\n".join(lines) + "\n"


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subs", type=int, default=500)
    ap.add_argument("--burst", type=int, default=200)
    ap.add_argument("--missed", type=int, default=1000)
    ap.add_argument("--storm", type=int, default=1000)
    ap.add_argument("--write", action="store_true", help="write bench/CHANNELS.md")
    ap.add_argument(
        "--instructions", action="store_true", help="also count instructions (valgrind)"
    )
    args = ap.parse_args()
    load = os.getloadavg()
    text = render(await measure(args), args, load)
    if args.instructions:
        counts = instruction_counts()
        raw = counts[0][1]
        text += "\n".join([
            "",
            "Instructions per delivery to 1,000 subscribers, in process through a fake transport "
            "under callgrind (as `bench/hotpath.py`), the channels with the memory server's "
            "options:",
            "",
            "| case | instructions per delivery | vs raw topic |",
            "|---|---:|---:|",
            *(f"| {label} | {c:,} | {c / raw:.2f}x |" for label, c in counts),
            "",
        ])  # fmt: skip
    print(text)
    if args.write:
        previous = CHANNELS_MD.read_text() if CHANNELS_MD.exists() else ""
        notes = previous[previous.index("## Notes") :] if "## Notes" in previous else ""
        CHANNELS_MD.write_text(text + ("\n" + notes if notes else ""))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--drive":
        asyncio.run(drive(sys.argv[2], int(sys.argv[3])))
    elif len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]), sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else "")
    else:
        asyncio.run(main())

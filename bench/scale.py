"""How many connections and deliveries one harpy process holds: 1 and 2 worker processes.

``python bench/scale.py [--workers 1 2] [--conns 15000] [--write]`` serves the app below with
``python -m harpy bench.scale:app --workers N`` (the embedded NATS carries rooms between
workers), opens ``--conns`` WebSocket connections per worker spread over ``--rooms`` rooms
(``/s?room=K``), and publishes from a few more connections (``/p``: each message is
``"<room> <send time>"``, broadcast by the server to that room) at a steady rate.  It reports,
per configuration:

- RSS per connection: the workers' resident memory with every connection open, less before;
- server CPU per delivery (workers, supervisor and nats-server), at the highest rate that held;
- the highest delivery rate at which the p99 publish-to-receive latency stays under
  ``--p99-ms`` (100) and every delivery arrives: the rate is stepped up for ``--step``
  seconds each;
- the time for every connection to be open again after one worker is killed (SIGKILL): its
  clients reconnect at once (a refused attempt is retried 50 ms later), onto the other worker
  or the one the supervisor starts again.

The load generator is this file too (``--client``, started as ``--procs`` processes, each on
its own loopback source address so that 30,000 connections fit the ephemeral ports): plain
asyncio protocols on uvloop, with a minimal RFC 6455 client that counts frames and reads the
send time on one connection in ``--sample``; its CPU is reported beside the server's.  The
send time is ``time.monotonic_ns()`` (CLOCK_MONOTONIC, one clock for every process of the
host).  Both sides raise RLIMIT_NOFILE to its hard limit.  ``--write`` writes bench/SCALE.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import multiprocessing.connection
import os
import re
import resource
import signal
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.run import cpu_seconds, process_tree  # noqa: E402 - run as a script from anywhere

#: Handshakes one load generator has under way at once.
HANDSHAKES = 128
#: Linux: bind a source address, leaving the port to connect().
IP_BIND_ADDRESS_NO_PORT = 24


def raise_nofile() -> int:
    """RLIMIT_NOFILE up to its hard limit (the default soft limit, 1024, is far too low)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# ----------------------------------------------------------------- the server


def make_app() -> Any:
    import harpy

    raise_nofile()  # in the supervisor, before it forks the workers: they inherit it
    app = harpy.App()

    @app.ws("/s")
    class Subscriber:
        def open(self, ws: harpy.WebSocket[Any]) -> None:
            ws.join(ws.query.get("room", "0"))

    @app.ws("/p")
    class Publisher:
        def message(self, ws: harpy.WebSocket[Any], message: str | bytes) -> None:
            text = message if isinstance(message, str) else message.decode()
            ws.broadcast(text, rooms=[text.split(" ", 1)[0]])

    return app


if __name__ != "__main__":
    app = make_app()


# ----------------------------------------------------------------- the load generator


class Client(asyncio.Protocol):
    """One WebSocket connection: the upgrade, then server frames counted (and, on sampled
    connections, the send time read from each)."""

    def __init__(self, gen: Generator, path: str, sampled: bool) -> None:
        self.gen = gen
        self.path = path
        self.subscriber = path.startswith("/s")  # counted in ``open`` (publishers are not)
        self.sampled = sampled
        self.transport: Any = None
        self.upgraded = False
        self.buffer = b""
        self.opened: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data if self.buffer else data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buf
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.fail()
                return
            self.upgraded = True
            buf = buf[end + 4 :]
            if self.subscriber:
                self.gen.open += 1
                self.gen.last_open = time.monotonic()
            if not self.opened.done():
                self.opened.set_result(True)
        pos, size = 0, len(buf)
        gen = self.gen
        while size - pos >= 2:
            op, length = buf[pos] & 0x0F, buf[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = struct.unpack_from("!H", buf, pos + 2)[0]
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = struct.unpack_from("!Q", buf, pos + 2)[0]
                head = 10
            if size - pos < head + length:
                break
            start = pos + head
            pos = start + length
            if op == 0x1 or op == 0x2:
                gen.received += 1
                if self.sampled:
                    sent = int(buf[start:pos].split(b" ", 1)[1])
                    gen.latencies.append(time.monotonic_ns() - sent)
            elif op == 0x9 and self.transport is not None:  # ping: a masked pong
                payload = buf[start:pos]
                self.transport.write(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
            elif op == 0x8 and self.transport is not None:
                self.transport.close()
        self.buffer = buf[pos:] if pos < size else b""

    def send_text(self, text: bytes) -> None:
        assert self.transport is not None and len(text) < 126
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i & 3] for i, b in enumerate(text))
        self.transport.write(bytes([0x81, 0x80 | len(text)]) + mask + masked)

    def fail(self) -> None:
        if not self.opened.done():
            self.opened.set_result(False)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upgraded and self.subscriber:
            self.gen.open -= 1
            self.gen.drops += 1
        if not self.opened.done():
            self.opened.set_result(False)
        self.gen.lost(self)


class Generator:
    """The connections of one load-generator process, driven by commands from the bench."""

    def __init__(self, host: str, port: int, source: str, rooms: int, sample: int) -> None:
        self.host, self.port, self.source = host, port, source
        self.rooms, self.sample = rooms, sample
        self.open = 0
        self.received = 0
        self.latencies: list[int] = []
        self.reconnecting = True
        self.publishers: list[Client] = []
        self.drops = 0  # connections lost since the last stats()
        self.last_open = 0.0  # when the last connection was opened (CLOCK_MONOTONIC)
        self.cpu = 0.0
        # Handshakes under way at once, as a client library with a connection pool would (a
        # storm of thousands overflows the server's listen backlog: SYNs dropped, retried 1 s,
        # 3 s, 7 s ... later).
        self.handshakes = asyncio.Semaphore(HANDSHAKES)

    async def connect(self, path: str, sampled: bool) -> Client:
        loop = asyncio.get_running_loop()
        for _ in range(1200):  # a refused or failed attempt is tried again, 50 ms later
            async with self.handshakes:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    # The source address without a port: the kernel picks the port at connect
                    # time, per destination (a bind to port 0 would take one out of every
                    # destination's range, and search for it).
                    sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                    sock.bind((self.source, 0))
                    sock.setblocking(False)
                    await loop.sock_connect(sock, (self.host, self.port))
                    _, client = await loop.create_connection(
                        lambda: Client(self, path, sampled), sock=sock
                    )
                    if await client.opened:
                        return client
                except (OSError, RuntimeError):
                    # RuntimeError: uvloop still holds the fd number for a transport closing
                    # at this moment (a connection just dropped); try again.
                    sock.close()
            await asyncio.sleep(0.05)
        raise RuntimeError(f"cannot open {path}")

    def lost(self, client: Client) -> None:
        if self.reconnecting and client.upgraded and client not in self.publishers:
            asyncio.get_running_loop().create_task(self.connect(client.path, client.sampled))

    async def open_many(self, first: int, count: int) -> float:
        start = time.perf_counter()

        async def one(i: int) -> None:
            await self.connect(f"/s?room={i % self.rooms}", i % self.sample == 0)

        await asyncio.gather(*(one(i) for i in range(first, first + count)))
        return time.perf_counter() - start

    async def publish(self, rate: float, seconds: float) -> int:
        if not self.publishers:
            self.publishers = [await self.connect("/p", False) for _ in range(4)]
        loop = asyncio.get_running_loop()
        start, sent, tick = loop.time(), 0, 0.005
        while loop.time() - start < seconds:
            due = int((loop.time() - start) * rate) + 1
            while sent < due:
                room = sent % self.rooms
                pub = self.publishers[sent % len(self.publishers)]
                pub.send_text(b"%d %d" % (room, time.monotonic_ns()))
                sent += 1
            await asyncio.sleep(tick)
        return sent

    def stats(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = usage.ru_utime + usage.ru_stime
        out = {
            "open": self.open,
            "received": self.received,
            "latencies": self.latencies,
            "cpu": cpu - self.cpu,  # since the last stats()
        }
        self.received, self.latencies, self.cpu, self.drops = 0, [], cpu, 0
        return out


def client_process(pipe: multiprocessing.connection.Connection, **kwargs: Any) -> None:
    import uvloop

    raise_nofile()

    async def main() -> None:
        gen = Generator(**kwargs)
        loop = asyncio.get_running_loop()
        while True:
            command, args = await loop.run_in_executor(None, pipe.recv)
            if command == "open":
                result: Any = await gen.open_many(*args)
            elif command == "publish":
                result = await gen.publish(*args)
            elif command == "stats":
                result = gen.stats()
            elif command == "wait_open":
                # Until this process's connections are all open again, after at least one
                # was lost (none lost within 5 s: the killed worker held none of them).
                target, timeout = args
                start = loop.time()
                while loop.time() - start < timeout:
                    if gen.drops == 0 and loop.time() - start > 5:
                        break
                    if gen.drops and gen.open >= target:
                        break
                    await asyncio.sleep(0.01)
                result = (gen.open, gen.last_open, gen.drops)
            else:
                return
            pipe.send(result)

    uvloop.run(main())


# ----------------------------------------------------------------- the bench


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return total


def workers_of(supervisor: int, itself: bool = False) -> list[int]:
    """The worker processes (the supervisor's children but nats-server; ``itself``: and the
    supervisor, which is the only worker when there is one)."""
    out = []
    for pid in process_tree(supervisor)[0 if itself else 1 :]:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"nats-server" not in f.read():
                    out.append(pid)
        except OSError:
            pass
    return out


class Procs:
    """The load-generator processes."""

    def __init__(self, count: int, port: int, rooms: int, sample: int) -> None:
        self.pipes, self.procs = [], []
        ctx = multiprocessing.get_context("spawn")
        for i in range(count):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(
                target=client_process,
                args=(theirs,),
                kwargs={
                    "host": "127.0.0.1",
                    "port": port,
                    "source": f"127.0.0.{i + 2}",
                    "rooms": rooms,
                    "sample": sample,
                },
            )
            proc.start()
            self.pipes.append(ours)
            self.procs.append(proc)

    def ask(self, command: str, each: list[Any]) -> list[Any]:
        for pipe, args in zip(self.pipes, each, strict=True):
            pipe.send((command, args))
        return [pipe.recv() for pipe in self.pipes]

    def close(self) -> None:
        for pipe in self.pipes:
            pipe.send(("quit", ()))
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()


def pct(values: list[int], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))] / 1e6 if values else 0.0


async def measure(workers: int, args: argparse.Namespace) -> dict[str, Any]:
    conns = args.conns * workers
    server, port, drain = await start_server(workers, 0)
    procs = Procs(args.procs * workers, port, args.rooms, args.sample)
    loop = asyncio.get_running_loop()
    try:
        tree = process_tree(server.pid)
        rss_before = rss_kib(workers_of(server.pid, itself=True))
        per = conns // len(procs.pipes)
        firsts = [i * per for i in range(len(procs.pipes))]
        took = await loop.run_in_executor(
            None, procs.ask, "open", [(first, per) for first in firsts]
        )
        await asyncio.sleep(2)
        rss_after = rss_kib(workers_of(server.pid, itself=True))
        members = conns // args.rooms  # per room
        steps: list[dict[str, Any]] = []
        best: dict[str, Any] | None = None
        for rate in args.rates:
            publish_rate = rate / members
            procs.ask("stats", [()] * len(procs.pipes))
            tree = process_tree(server.pid)
            server_cpu = cpu_seconds(tree)
            start = time.perf_counter()
            sent = await loop.run_in_executor(None, _publish_one, procs, publish_rate, args.step)
            await asyncio.sleep(1.0)  # the last ones arrive
            elapsed = time.perf_counter() - start
            server_cpu = cpu_seconds(tree) - server_cpu
            stats = procs.ask("stats", [()] * len(procs.pipes))
            received = sum(s["received"] for s in stats)
            expected = sent[0] * members
            latencies = [x for s in stats for x in s["latencies"]]
            step = {
                "target_per_s": rate,
                "deliveries_per_s": received / args.step,
                "delivered": received / expected if expected else 0,
                "p50_ms": pct(latencies, 50),
                "p99_ms": pct(latencies, 99),
                "server_cpu_us_per_delivery": server_cpu / max(received, 1) * 1e6,
                "server_cpu_pct": server_cpu / elapsed * 100,
                "client_cpu_pct": sum(s["cpu"] for s in stats) / elapsed * 100,
            }
            steps.append(step)
            print(f"  {workers} worker(s), {conns} conns: {json.dumps(step)}", flush=True)
            if step["p99_ms"] >= args.p99_ms or step["delivered"] < 0.999:
                break
            best = step
        # A worker killed: every connection open again.  One worker is the whole server (no
        # supervisor): it is started again here, on the same port, as a supervisor would.
        before = procs.ask("stats", [()] * len(procs.pipes))
        killed = time.monotonic()
        if workers == 1:
            server.kill()
            await server.wait()
            drain.cancel()
            server, _, drain = await start_server(workers, port)
        else:
            os.kill(workers_of(server.pid)[0], signal.SIGKILL)
        back = await loop.run_in_executor(
            None, procs.ask, "wait_open", [(per, 60.0)] * len(procs.pipes)
        )
        reconnect = max((t for _, t, drops in back if drops), default=killed) - killed
        all_back = all(n >= per for n, _, _ in back)
        return {
            "workers": workers,
            "connections": conns,
            "connect_s": max(took),
            "rss_per_conn_kib": (rss_after - rss_before) / conns,
            "rss_total_mib": rss_after / 1024,
            "best": best,
            "steps": steps,
            "reconnect_s": reconnect if all_back and any(d for _, _, d in back) else None,
            "reconnected": sum(n for n, _, _ in back),
            "lost_at_kill": sum(drops for _, _, drops in back),
            "open_before_kill": sum(s["open"] for s in before),
        }
    finally:
        procs.close()
        server.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(server.wait(), 60)
        except TimeoutError:
            server.kill()
        drain.cancel()


async def start_server(
    workers: int, port: int
) -> tuple[asyncio.subprocess.Process, int, asyncio.Future[bytes]]:
    """``python -m harpy bench.scale:app`` with ``workers`` processes (one: no supervisor)."""
    cli = [sys.executable, "-m", "harpy", "bench.scale:app", "--port", str(port)]
    cli += ["--workers", str(workers)]
    server = await asyncio.create_subprocess_exec(
        *cli, cwd=ROOT, stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    assert server.stderr is not None
    listening = 0
    while listening < workers:
        line = (await asyncio.wait_for(server.stderr.readline(), 60)).decode()
        if match := re.search(r"listening on ws://[^:]+:(\d+)", line):
            listening, port = listening + 1, int(match.group(1))
    return server, port, asyncio.ensure_future(server.stderr.read())


def _publish_one(procs: Procs, rate: float, seconds: float) -> list[int]:
    """The first load generator publishes; the others wait (they only receive)."""
    procs.pipes[0].send(("publish", (rate, seconds)))
    return [procs.pipes[0].recv()]


def render(results: list[dict[str, Any]], args: argparse.Namespace, load: str) -> str:
    lines = [
        "# Scale: connections and deliveries per harpy process",
        "",
        f"`python bench/scale.py --conns {args.conns} --write` on this machine "
        f"({os.cpu_count()} cores, load average before the run: {load}; other work shares "
        "the machine, so the figures are a floor). Each worker holds "
        f"{args.conns} WebSocket connections over {args.rooms} rooms; publishers broadcast "
        f'`"<room> <time>"` (about 25 bytes) to one room at a time, at a steady rate stepped '
        f"up every {args.step} s; latency is publish-to-receive, sampled on one connection in "
        f"{args.sample}. The load generator ({args.procs} process(es) per worker, uvloop, a "
        "minimal RFC 6455 client) runs on the same cores as the server: its CPU is shown.",
        "",
        "| workers | connections | RSS per connection | highest rate with p99 < "
        f"{args.p99_ms:g} ms | p50 / p99 there | server CPU per delivery | server CPU | "
        "load generator CPU | all reconnected after a worker is killed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        b = r["best"]
        best = (
            f"{b['deliveries_per_s']:,.0f} deliveries/s"
            if b
            else f"below {args.rates[0]:,} deliveries/s"
        )
        lat = f"{b['p50_ms']:.1f} / {b['p99_ms']:.1f} ms" if b else "-"
        cpu = f"{b['server_cpu_us_per_delivery']:.1f} µs" if b else "-"
        scpu = f"{b['server_cpu_pct']:.0f} %" if b else "-"
        ccpu = f"{b['client_cpu_pct']:.0f} %" if b else "-"
        rec = f"{r['reconnect_s']:.2f} s" if r["reconnect_s"] is not None else "not within 60 s"
        lines.append(
            f"| {r['workers']} | {r['connections']:,} | {r['rss_per_conn_kib']:.1f} KiB | "
            f"{best} | {lat} | {cpu} | {scpu} | {ccpu} | {rec} |"
        )
    lines += ["", "Every step (the first that missed the bound ends the climb):", ""]
    lines += [
        "| workers | target/s | delivered/s | delivered | p50 | p99 | server CPU/delivery | "
        "server CPU | load generator CPU |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        for s in r["steps"]:
            lines.append(
                f"| {r['workers']} | {s['target_per_s']:,} | {s['deliveries_per_s']:,.0f} | "
                f"{s['delivered'] * 100:.1f} % | {s['p50_ms']:.1f} ms | {s['p99_ms']:.1f} ms | "
                f"{s['server_cpu_us_per_delivery']:.1f} µs | {s['server_cpu_pct']:.0f} % | "
                f"{s['client_cpu_pct']:.0f} % |"
            )
    lines += ["", "Raw results:", "", "```json", json.dumps(results, indent=1), "```", ""]
    return "\n".join(lines)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--conns", type=int, default=15_000, help="connections per worker")
    ap.add_argument("--rooms", type=int, default=100)
    ap.add_argument("--procs", type=int, default=1, help="load generators per worker")
    ap.add_argument("--sample", type=int, default=25, help="one timed connection in N")
    ap.add_argument("--step", type=float, default=4.0, help="seconds per rate")
    ap.add_argument("--p99-ms", type=float, default=100.0)
    ap.add_argument(
        "--rates",
        type=int,
        nargs="+",
        default=[10_000, 20_000, 30_000, 40_000, 50_000, 60_000, 80_000, 100_000, 130_000],
        help="deliveries/s to step through",
    )
    ap.add_argument("--write", action="store_true", help="write bench/SCALE.md")
    args = ap.parse_args()
    if args.conns * max(args.workers) // (args.procs * max(args.workers)) > raise_nofile() - 100:
        ap.error("more connections per load generator than RLIMIT_NOFILE allows: raise --procs")
    load = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    results = [await measure(w, args) for w in args.workers]
    text = render(results, args, load)
    print(text)
    if args.write:
        (ROOT / "bench" / "SCALE.md").write_text(text)


if __name__ == "__main__":
    asyncio.run(main())

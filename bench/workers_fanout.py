"""Fan-out across worker processes through the embedded NATS, beside one process.

``python bench/workers_fanout.py [--write]`` serves ``examples/workers.py`` with
``python -m harpy`` (one process, then ``--workers 2``), subscribes ``--subs`` connections to one
topic and publishes from one more connection:

- latency: ``--paced`` messages, one every ``--interval`` ms, each carrying its send time
  (``time.perf_counter_ns``, one clock: every client is in this process); publish-to-receive
  p50 / p99 for subscribers on the publisher's worker (local) and on the other (through NATS);
- throughput: ``--burst`` messages back to back, from the first send until every subscriber
  has every message: deliveries/s, and the CPU of the server processes (workers, supervisor,
  nats-server) and of this client per delivery.

The client is Python (``websockets``), in one process: its CPU is reported, and where it is
near 100 % of a core the deliveries/s are the client's limit, not the server's.  ``--write``
replaces the "Workers" section at the end of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.run import cpu_seconds, process_tree  # noqa: E402 - run as a script from anywhere

RESULTS_MD = ROOT / "bench" / "RESULTS.md"
BEGIN, END = "<!-- workers-fanout:begin -->", "<!-- workers-fanout:end -->"


def tree_cpu(root: int) -> float:
    """CPU seconds of ``root`` and its descendants (workers, nats-server)."""
    return cpu_seconds(process_tree(root))


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Subscriber:
    client: ClientConnection
    pid: int
    received: int = 0
    latencies: list[float] = field(default_factory=list)


class Run:
    """Subscribers of ``topic``, and the publisher's connection."""

    def __init__(self, topic: str, subs: list[Subscriber], publisher: ClientConnection) -> None:
        self.topic = topic
        self.subs = subs
        self.publisher = publisher
        self.readers = [asyncio.ensure_future(self.read(sub)) for sub in subs]
        self.expected = 0
        self.total = 0
        self.done = asyncio.Event()

    async def read(self, sub: Subscriber) -> None:
        async for raw in sub.client:
            now = time.perf_counter_ns()
            text = json.loads(raw)["text"]
            if text.isdigit():
                sub.latencies.append((now - int(text)) / 1000)
            sub.received += 1
            self.total += 1
            if self.total >= self.expected:
                self.done.set()

    async def send(self, text: str) -> None:
        message = {"type": "publish", "topic": self.topic, "text": text}
        await self.publisher.send(json.dumps(message))

    async def warm_up(self) -> None:
        """Probe until every subscriber got one (each worker's NATS subscription is in place),
        then start counting from zero."""
        for _ in range(200):
            await self.send("warm")
            await asyncio.sleep(0.02)
            if all(sub.received for sub in self.subs):
                break
        await asyncio.sleep(0.2)
        self.total = 0
        for sub in self.subs:
            sub.received, sub.latencies = 0, []

    async def publish(self, count: int, text: str | None, interval: float = 0.0) -> None:
        """``count`` messages (``text``, else the send time), and wait for every delivery."""
        self.expected = self.total + count * len(self.subs)
        self.done.clear()
        for _ in range(count):
            await self.send(str(time.perf_counter_ns()) if text is None else text)
            if interval:
                await asyncio.sleep(interval)
        await asyncio.wait_for(self.done.wait(), 60)

    def latencies(self, pid: int, local: bool) -> list[float]:
        return sorted(x for s in self.subs if (s.pid == pid) == local for x in s.latencies)


async def hello(url: str) -> tuple[ClientConnection, int]:
    client = await connect(f"{url}/ws", max_queue=None)
    return client, int(json.loads(await client.recv())["pid"])


async def measure(workers: int, args: argparse.Namespace) -> dict[str, Any]:
    cli = [sys.executable, "-m", "harpy", "examples.workers:app", "--port", "0"]
    if workers > 1:
        cli += ["--workers", str(workers)]
    proc = await asyncio.create_subprocess_exec(
        *cli, cwd=ROOT, stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    assert proc.stderr is not None
    listening, url = 0, ""
    while listening < workers:
        line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
        if match := re.search(r"listening on (ws://\S+)", line):
            listening, url = listening + 1, match.group(1)
    drain = asyncio.ensure_future(proc.stderr.read())
    try:
        publisher, publisher_pid = await hello(url)
        timed = await subscribe(url, "lat", args.latency_subs)
        subs = await subscribe(url, "b", args.subs)
        paced, burst = Run("lat", timed, publisher), Run("b", subs, publisher)
        await paced.warm_up()
        await burst.warm_up()

        await paced.publish(args.paced, None, args.interval / 1000)
        local = paced.latencies(publisher_pid, True)
        remote = paced.latencies(publisher_pid, False)

        server_before, client_before = tree_cpu(proc.pid), own_cpu()
        start = time.perf_counter()
        await burst.publish(args.burst, "x")
        elapsed = time.perf_counter() - start
        server_cpu = tree_cpu(proc.pid) - server_before
        client_cpu = own_cpu() - client_before
        deliveries = args.burst * len(subs)
        for client in [publisher, *(s.client for s in timed + subs)]:
            await client.close()
        for reader in paced.readers + burst.readers:
            reader.cancel()
        return {
            "workers": workers,
            "subs_per_worker": sorted(
                sum(1 for s in subs if s.pid == pid) for pid in {s.pid for s in subs}
            ),
            "local_p50_us": pct(local, 50), "local_p99_us": pct(local, 99),
            "remote_p50_us": pct(remote, 50), "remote_p99_us": pct(remote, 99),
            "deliveries_per_s": deliveries / elapsed,
            "server_cpu_us_per_delivery": server_cpu / deliveries * 1e6,
            "server_cpu_pct": server_cpu / elapsed * 100,
            "client_cpu_pct": client_cpu / elapsed * 100,
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
        drain.cancel()


async def subscribe(url: str, topic: str, count: int) -> list[Subscriber]:
    subs = [Subscriber(*await hello(url)) for _ in range(count)]
    for sub in subs:
        await sub.client.send(json.dumps({"type": "subscribe", "topic": topic}))
        assert json.loads(await sub.client.recv())["type"] == "subscribed"
    return subs


def pct(values: list[float], p: int) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, len(values) * p // 100)]


def render(results: list[dict[str, Any]], args: argparse.Namespace, load: float) -> str:
    def num(value: float | None) -> str:
        return "-" if value is None else f"{value:,.0f}"

    rows = [
        f"| {r['workers']} | {'/'.join(map(str, r['subs_per_worker']))} "
        f"| {num(r['local_p50_us'])} / {num(r['local_p99_us'])} "
        f"| {num(r['remote_p50_us'])} / {num(r['remote_p99_us'])} "
        f"| {num(r['deliveries_per_s'])} | {r['server_cpu_us_per_delivery']:.1f} "
        f"| {r['server_cpu_pct']:.0f} / {r['client_cpu_pct']:.0f} |"
        for r in results
    ]
    return "\n".join([
        BEGIN,
        "## Workers: fan-out across processes through the embedded NATS",
        "",
        f"`python bench/workers_fanout.py --write` ({time.strftime('%Y-%m-%d %H:%M')}, "
        f"under 30 s): "
        f"`examples/workers.py` under `python -m harpy` (1 process, then `--workers 2` with "
        f"the embedded nats-server), {args.subs} subscribers of one topic and one publisher "
        "(Python `websockets` clients in one process, unpinned, on the same 2 cores). "
        f"Latency: {args.paced} messages one every {args.interval} ms, publish-to-receive, for "
        "subscribers on the publisher's process (local) and on the other (remote, through "
        f"NATS), on {args.latency_subs} other subscribers of a second topic. Throughput: "
        f"{args.burst} messages back to back to every subscriber. CPU: the "
        "server processes (workers, supervisor, nats-server) and the client, % of one core "
        "over the burst. Load average before the run: "
        f"{load:.1f} (other work on the machine shows in the latencies).",
        "",
        "| workers | burst subscribers per worker | local p50 / p99 (us) | remote p50 / p99 (us) "
        "| deliveries/s | server CPU per delivery (us) | CPU % server / client |",
        "|---:|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "The remote minus the local latency is what the NATS hop adds. A client near 100 % of "
        "a core bounds the deliveries/s: it is the limit there, not the server.",
        END,
    ])


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subs", type=int, default=100)
    ap.add_argument("--latency-subs", type=int, default=8, help="subscribers timed")
    ap.add_argument("--paced", type=int, default=300)
    ap.add_argument("--interval", type=float, default=10.0, help="ms between paced messages")
    ap.add_argument("--burst", type=int, default=500)
    ap.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    results = [await measure(workers, args) for workers in (1, 2)]
    section = render(results, args, load)
    print(section)
    if args.write:
        text = RESULTS_MD.read_text()
        if BEGIN in text:
            text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END) :]
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
        RESULTS_MD.write_text(text)


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())

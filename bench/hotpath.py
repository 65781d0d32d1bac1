#!/usr/bin/env python3
"""Instructions per echo message, per fan-out delivery and per handshake, in process.

    python bench/hotpath.py [--baseline /path/to/other/checkout] [--json]

The server's Python glue is driven through a fake transport (no sockets, no syscalls) and run
under ``valgrind --tool=callgrind``, which counts instructions: the same count for the same
code and inputs whatever else the machine is doing, so a change of a few percent on the hot
path shows up where a wall-clock benchmark on a shared machine cannot see it. Each figure is
(instructions for N units - instructions for 0 units) / N. ``--baseline`` runs another
checkout's harpy (with its own ``.venv``) on the same driver, for a before/after table.
``--json`` prints the counts as one JSON object instead of the table (bench/run.py puts them in
bench/RESULTS.md). The valgrind runs go in parallel, one per CPU: instruction counts do not
depend on what else runs. Where ``callgrind_control`` is installed (it comes with valgrind),
callgrind starts uninstrumented and the driver turns instrumentation on once the interpreter
and harpy are imported: a run takes a third of the time, and the difference of two runs, all
that is counted here, is the same.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CASES = [("echo", 5000, 1, "echo 32 B, per message"),
         ("fanout", 20, 1000, "fan-out to 1,000 subscribers, per delivery"),
         ("handshake", 500, 1, "upgrade + close, per connection"),
         ("handshake-log", 500, 1, "upgrade + close, access log on (to a file), per connection")]


class FakeTransport:
    """Enough of asyncio.Transport for the glue; writes are counted, not sent."""

    def __init__(self) -> None:
        self.writes = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 1) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


UPGRADE = ("GET {} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def client_frame(payload: bytes) -> bytes:
    key = b"\x01\x02\x03\x04"
    return bytes((0x81, 0x80 | len(payload))) + key + bytes(
        b ^ key[i % 4] for i, b in enumerate(payload))


def log_to_file() -> None:
    """The CLI's default logging (access log on), written line by line as to stderr (here to
    /dev/null: callgrind's own report goes to stderr)."""
    import logging

    from harpy.cli import configure_logging

    configure_logging("info")
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(open(os.devnull, "w", buffering=1))  # noqa: SIM115


async def drive(mode: str, n: int) -> None:
    import harpy
    from harpy.server import Server

    if mode.endswith("-log"):
        log_to_file()
        mode = mode[: -len("-log")]
    if os.environ.get(INSTR_ON):
        # everything from here on is counted, in the run of N units as in the run of 0
        subprocess.run(["callgrind_control", "--instr=on", str(os.getpid())],
                       check=True, capture_output=True, timeout=60)

    app = harpy.App()
    app.ws("/echo", {"message": lambda ws, m: ws.send(m)})
    app.ws("/sub", {"open": lambda ws: ws.subscribe("t")})
    framed = getattr(harpy.server, "FramedConnection", None)

    def make(srv: Any) -> Any:
        if framed is None:  # a tree from before the connection seam (--baseline)
            return harpy.WebSocket(srv, app)  # type: ignore[call-arg]
        conn = framed(srv)
        harpy.WebSocket(app, conn)
        return conn

    server = Server(make, loop=asyncio.get_running_loop())

    def connect(path: str) -> Any:
        conn = make(server)
        conn.connection_made(FakeTransport())
        conn.data_received(UPGRADE.format(path).encode())
        return conn

    if mode == "echo":
        conn = connect("/echo")
        data = client_frame(b"x" * 32)
        for _ in range(n):
            conn.data_received(data)
    elif mode == "fanout":
        for _ in range(1000):
            connect("/sub")
        for _ in range(n):
            app.publish("t", "hello world, a 32 byte message!!")
            server._flush_dirty()  # the end-of-tick write, as the loop would call it
    elif mode == "handshake":
        for _ in range(n):
            connect("/echo").connection_lost(None)


INSTR_ON = "HARPY_HOTPATH_INSTR_ON"   # set: the driver turns callgrind's instrumentation on


def instructions(python: str, mode: str, n: int) -> int:
    lazy = shutil.which("callgrind_control") is not None
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         *(["--instr-atstart=no"] if lazy else []), python,
         str(Path(__file__).resolve()), "--drive", mode, str(n)],
        capture_output=True, text=True, check=True, cwd=ROOT,
        # the same dict layouts every run
        env={**os.environ, "PYTHONHASHSEED": "0", INSTR_ON: "1" if lazy else ""})
    found = re.search(r"Collected : (\d+)", out.stderr)
    if not found:
        raise SystemExit(f"no callgrind total for {python} {mode}: {out.stderr[-500:]}")
    return int(found.group(1))


def per_unit(pythons: dict[str, str]) -> dict[tuple[str, str], int]:
    """(instructions for N units - for 0) / units, by (mode, python's name), for every case."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        counts = {(mode, name, k): pool.submit(instructions, py, mode, k)
                  for mode, n, _, _ in CASES for name, py in pythons.items() for k in (n, 0)}
        return {(mode, name): (counts[mode, name, n].result() - counts[mode, name, 0].result())
                // (n * units)
                for mode, n, units, _ in CASES for name in pythons}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", help="another harpy checkout with its own .venv")
    ap.add_argument("--json", action="store_true", help="print the counts as JSON")
    ap.add_argument("--drive", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.drive:
        asyncio.run(drive(args.drive[0], int(args.drive[1])))
        return 0
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is needed (Debian: apt-get install valgrind)")
    pythons = {"harpy": sys.executable}
    if args.baseline:
        pythons["baseline"] = str(Path(args.baseline) / ".venv" / "bin" / "python")
    per = per_unit(pythons)
    if args.json:
        print(json.dumps({"cases": [
            {"mode": mode, "label": label, "units": n * units,
             **{name: per[mode, name] for name in pythons}}
            for mode, n, units, label in CASES]}))
        return 0
    print("| case | " + " | ".join(pythons) + (" | harpy/baseline |" if args.baseline else " |"))
    print("|---|" + "---:|" * (len(pythons) + (1 if args.baseline else 0)))
    for mode, _, _, label in CASES:
        counts = {name: per[mode, name] for name in pythons}
        row = f"| {label} | " + " | ".join(f"{c:,}" for c in counts.values())
        if args.baseline:
            row += f" | {counts['harpy'] / counts['baseline']:.3f}x"
        print(row + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

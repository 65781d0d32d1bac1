#!/usr/bin/env python3
"""Benchmark orchestrator: WebSocket servers driven by bench/loadgen.c.

    python bench/run.py [--servers harpy,harpy-nolog,picows,socketify,bun,websockets,aiohttp,null]
                        [--workloads echo,handshake,memory,fanout,fanoutz,heartbeat,json]
                        [--quick] [--no-hotpath]
                        [--repeat N] [--write] [--merge] [--report-only]

Each server runs pinned to CPU 0 and the load generator to CPU 1 (when
taskset works and there are two CPUs), so the two never compete for a core.
Every workload gets a freshly started server. The peers: picows, socketify.py
and Bun (installed from npm into bench/.build/bun), websockets, aiohttp, and the
null server (bench/nullserver.c: the kernel and the load generator alone, the
floor). After the servers, bench/hotpath.py counts harpy's instructions per
message, delivery and connection under callgrind (when valgrind is installed).
Raw numbers go to bench/results.json, a Markdown summary to stdout (and
bench/RESULTS.md with --write).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BUILD = BENCH / ".build"
LOGS = BUILD / "logs"
LOADGEN_SRC = BENCH / "loadgen.c"
LOADGEN = BUILD / "loadgen"
NULLSERVER_SRC = BENCH / "nullserver.c"
NULLSERVER = BUILD / "nullserver"
WSACCEPT_H = BENCH / "wsaccept.h"   # included by both C programs
# Bun from npm, pinned by bench/peers/package.json and its lock file, installed here.
BUN_DIR = BUILD / "bun"
BUN = BUN_DIR / "node_modules" / ".bin" / "bun"
RESULTS_JSON = BENCH / "results.json"
RESULTS_MD = BENCH / "RESULTS.md"
HOST = "127.0.0.1"

_venv_py = ROOT / ".venv" / "bin" / "python"
PY = str(_venv_py) if _venv_py.exists() else sys.executable

_ADDR = ["--host", HOST, "--port", "{port}"]
SERVERS: dict[str, list[str]] = {
    "harpy": [PY, "-m", "harpy", "bench.app:app", *_ADDR],
    # The same with the access log off (it is on by default): what the access log costs.
    "harpy-nolog": [PY, "-m", "harpy", "bench.app:app", "--no-access-log", *_ADDR],
    "picows": [PY, str(BENCH / "peers" / "picows_server.py"), *_ADDR],
    "socketify": [PY, str(BENCH / "peers" / "socketify_server.py"), *_ADDR],
    "bun": [str(BUN), str(BENCH / "peers" / "bun_server.js"), *_ADDR],
    "websockets": [PY, str(BENCH / "peers" / "websockets_server.py"), *_ADDR],
    "aiohttp": [PY, str(BENCH / "peers" / "aiohttp_server.py"), *_ADDR],
    # The floor: the kernel's loopback TCP and the load generator under a minimal server.
    "null": [str(NULLSERVER), *_ADDR],
}
# HARPY_BENCH_BASELINE=/path/to/another/harpy/checkout (with its own .venv) adds the server
# "harpy-base": that checkout's harpy serving this tree's bench/app.py, in the same run, so a
# change is measured against the code before it.
_BASELINE = os.environ.get("HARPY_BENCH_BASELINE")
if _BASELINE:
    SERVERS["harpy-base"] = [
        str(Path(_BASELINE) / ".venv" / "bin" / "python"), "-m", "harpy", "bench.app:app", *_ADDR
    ]
WORKLOADS = ["echo", "handshake", "memory", "fanout", "fanoutz", "heartbeat", "json"]
#: Other names a workload was known by.
WORKLOAD_ALIASES = {"idle": "memory"}
# Servers that run only some workloads (the others show n/a): the access log is written once
# per connection, so harpy without it is measured where connections come and go.
ONLY: dict[str, tuple[set[str], str]] = {
    "harpy-nolog": ({"handshake"}, "the access log is per connection: measured on churn only"),
}

ECHO_SIZES = [32, 4096]
ECHO_CONNS = [1, 64, 512]
HANDSHAKE_CONCURRENCY = 64   # connections in flight (connect, upgrade, close)
IDLE_CONNS = 10_000
FANOUT_CASES = [(1_000, 100), (10_000, 10)]   # (subscribers, messages)
FANOUT_SIZE = 32
# Fan-out with permessage-deflate: 1 KiB of compressible text per message (the loadgen's
# "--payload text": JSON-like records, the same bytes for every server).
FANOUTZ_CASE = (1_000, 100)
FANOUTZ_SIZE = 1024
FANOUTZ_VERIFY = 16   # subscribers whose messages are inflated and compared
NO_DEFLATE = {"picows": "picows has no permessage-deflate",
              "null": "the null server has no permessage-deflate"}
# JSON mode (harpy's json=True routes), with orjson and with the standard library: an echo
# of a JSON object parsed and serialised again, and a fan-out of one parsed and serialised
# once for every subscriber (the loadgen's "--payload json": {"k":"xxx..."} of SIZE bytes).
JSON_ECHO = (256, 64)   # (size, connections)
JSON_FANOUT = (1_000, 100)   # (subscribers, messages)
JSON_SIZE = 256
JSON_LIBS = ("orjson", "stdlib")
# Heartbeat cost: IDLE_CONNS connections held HEARTBEAT_HOLD s after the last upgrade; the
# 1 s windows between loadgen ticks HEARTBEAT_TICKS[0] and [1] are measured. Without a
# heartbeat, the idle workload's connections are watched over IDLE_TICKS instead.
HEARTBEAT_INTERVAL = 4.0
HEARTBEAT_HOLD = 10
HEARTBEAT_TICKS = (1, 9)
IDLE_TICKS = (1, 5)
# Measured windows (s) and warm-up before them: full run, --quick.
WINDOW = {False: (1.0, 0.3), True: (0.5, 0.2)}
# A load generator above this share of its core was the limit, not the server: its cells get
# LIMIT_MARK (the figure is a lower bound of what the server can do).
LOADGEN_LIMIT_PCT = 90.0
LIMIT_MARK = "†"

CLK_TCK = os.sysconf("SC_CLK_TCK")
NOISY_PCT = 25.0   # other work above this share of a core taints a window


# --------------------------------------------------------------- environment

def raise_nofile() -> None:
    """preexec_fn: 10k sockets need more descriptors than the default soft limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def taskset_works() -> bool:
    if (os.cpu_count() or 1) < 2:
        return False
    try:
        return subprocess.run(["taskset", "-c", "1", "true"], timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


PIN = taskset_works()


def pinned(cpu: int, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *cmd] if PIN else cmd


def _fresh(out: Path, *sources: Path) -> bool:
    return out.exists() and all(out.stat().st_mtime >= s.stat().st_mtime for s in sources)


def build_c(src: Path, out: Path, zlib: bool = False) -> None:
    """Compiles one of the C programs (with zlib if asked and present) unless up to date."""
    if _fresh(out, src, WSACCEPT_H):
        return
    BUILD.mkdir(parents=True, exist_ok=True)
    base = ["gcc", "-O2", "-o", str(out), str(src)]
    cmds = [base]
    if zlib and Path("/usr/include/zlib.h").exists():
        cmds.insert(0, [*base[:2], "-DHAVE_ZLIB", *base[2:], "-lz"])
    for i, cmd in enumerate(cmds):
        print(f"building {out.name}:", " ".join(cmd), file=sys.stderr)
        try:
            subprocess.run(cmd, check=True, timeout=120)
            return
        except subprocess.CalledProcessError:
            if i == len(cmds) - 1:
                raise
            print("building without zlib instead", file=sys.stderr)


def build_loadgen() -> None:
    """The loadgen, with zlib (to inflate and verify compressed messages) if present."""
    build_c(LOADGEN_SRC, LOADGEN, zlib=True)


def install_bun() -> str:
    """Bun from npm into bench/.build/bun, at the version of bench/peers/package-lock.json.
    Returns "" or why it cannot run."""
    manifest = [BENCH / "peers" / "package.json", BENCH / "peers" / "package-lock.json"]
    stamp = BUN_DIR / "node_modules" / ".installed"
    if BUN.exists() and _fresh(stamp, *manifest):
        return ""
    if shutil.which("npm") is None:
        return "npm not found (Debian: apt-get install npm)"
    BUN_DIR.mkdir(parents=True, exist_ok=True)
    for f in manifest:
        shutil.copy2(f, BUN_DIR / f.name)
    print(f"installing bun from npm into {BUN_DIR.relative_to(ROOT)}", file=sys.stderr)
    done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=BUN_DIR,
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or not BUN.exists():
        return f"npm ci failed: {(done.stderr or done.stdout)[-400:]}"
    stamp.touch()
    return ""


def prepare(name: str) -> str:
    """Builds or installs what a server needs; returns "" or why it cannot run."""
    try:
        if name == "null":
            build_c(NULLSERVER_SRC, NULLSERVER)
        elif name == "bun":
            return install_bun()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot build: {exc}"
    return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def machine_info() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    code = ("import importlib.metadata as m, platform, json\n"
            "v = {}\n"
            "for p, dist in (('harpy', 'harpy-ws'), ('picows', 'picows'),\n"
            "                 ('socketify', 'socketify'), ('websockets', 'websockets'),\n"
            "                 ('aiohttp', 'aiohttp'), ('uvloop', 'uvloop')):\n"
            "    try: v[p] = m.version(dist)\n"
            "    except Exception: v[p] = None\n"
            "print(json.dumps({'python': platform.python_version(), 'versions': v}))")
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    info = json.loads(out.stdout) if out.returncode == 0 else {"python": None, "versions": {}}
    if BUN.exists():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            info["versions"]["bun"] = subprocess.run(
                [str(BUN), "--version"], capture_output=True, text=True, timeout=30
            ).stdout.strip() or None
    try:
        rev = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        rev = ""
    return {
        "git": rev or None,
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": info["python"],
        "versions": info["versions"],
        "pinned": PIN,
        "nofile_hard": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
    }


# ------------------------------------------------------------- /proc probes

def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def process_tree(pid: int) -> list[int]:
    """The pid plus all descendants (a server may fork workers)."""
    kids = _children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime of the given processes, all threads.

    Uses the per-thread scheduler runtime (ns resolution) when the kernel has
    it; /proc/<pid>/stat only has clock-tick (10 ms) resolution, too coarse
    for sub-second fan-out windows.
    """
    total = 0.0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        try:
            total += sum(int(Path(f"/proc/{pid}/task/{t}/schedstat").read_text().split()[0])
                         for t in tids) / 1e9
        except (OSError, ValueError, IndexError):
            try:
                f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(f[11]) + int(f[12])) / CLK_TCK
            except (OSError, ValueError, IndexError):
                pass
    return total


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def system_busy_seconds() -> float:
    """All CPUs' non-idle time, to spot background load from other processes."""
    f = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in f[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


# ------------------------------------------------------------------- server

class Server:
    def __init__(self, name: str, tag: str, args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.tag = tag
        self.args = args
        self.extra_env = env or {}
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.pids: list[int] = []
        self.log_path = LOGS / f"{name}-{tag}.log"
        self.error = ""

    def start(self, timeout: float = 20.0) -> bool:
        LOGS.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        cmd = [a.replace("{port}", str(self.port)) for a in SERVERS[self.name]]
        cmd += self.args
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.update(self.extra_env)
        try:
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen(
                    pinned(0, cmd), cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                    stdout=log, stderr=subprocess.STDOUT, preexec_fn=raise_nofile,
                    start_new_session=True)  # own group: workers die with it
        except OSError as exc:
            self.error = f"cannot start: {exc}"
            return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.error = f"exited with {self.proc.returncode}: {self.log_tail()}"
                return False
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    break
            except OSError:
                time.sleep(0.05)
        else:
            self.error = f"port {self.port} not accepting after {timeout}s: {self.log_tail()}"
            self.stop()
            return False
        time.sleep(0.3)   # let late imports/initialisation finish off the clock
        self.pids = process_tree(self.proc.pid)
        return True

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu(self) -> float:
        return cpu_seconds(self.pids)

    def rss(self) -> int:
        return rss_kib(self.pids)

    def log_tail(self, n: int = 600) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:].strip()
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        pgid = self.proc.pid   # start_new_session: group id == our child's pid
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        # reap stragglers of our own group (forked workers)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        self.proc = None


# ------------------------------------------------------------------ loadgen

def run_loadgen(args: list[str], timeout: float,
                on_line: Callable[[str, subprocess.Popen[bytes]], None] | None = None,
                ) -> tuple[dict[str, Any] | None, str]:
    """Runs loadgen, feeding its stderr lines to on_line as they arrive."""
    cmd = pinned(1, [str(LOADGEN), *args])
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, preexec_fn=raise_nofile)
    assert p.stdout and p.stderr
    out, err_lines, pending = b"", [], b""
    fds = {p.stdout.fileno(): "out", p.stderr.fileno(): "err"}
    deadline = time.monotonic() + timeout
    timed_out = False
    while fds:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            p.kill()
            break
        ready, _, _ = select.select(list(fds), [], [], min(left, 0.5))
        for fd in ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                del fds[fd]
                continue
            if fds[fd] == "out":
                out += chunk
                continue
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                text = line.decode(errors="replace").strip()
                err_lines.append(text)
                if on_line:
                    on_line(text, p)
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    for f in (p.stdin, p.stdout, p.stderr):
        if f:
            f.close()
    diag = "\n".join(line for line in err_lines
                     if not line.startswith(("MARK", "READY", "TICK")))
    if timed_out:
        return None, f"loadgen timed out after {timeout:.0f}s {diag}"
    try:
        return json.loads(out.decode().strip().splitlines()[-1]), diag
    except (ValueError, IndexError):
        return None, f"loadgen rc={p.returncode}, no JSON: {diag[-400:]}"


class Window:
    """Samples server CPU (and system-wide busy time) at loadgen's MARK lines: one window per
    start/end pair (a fanout with --rounds has several)."""

    def __init__(self, server: Server, sync: bool = False) -> None:
        self.server, self.sync = server, sync
        self.start: tuple[float, float] | None = None
        self.spans: list[tuple[float, float]] = []   # (server CPU s, machine busy s)

    def __call__(self, line: str, p: subprocess.Popen[bytes]) -> None:
        if line == "MARK start":
            self.start = (self.server.cpu(), system_busy_seconds())
        elif line == "MARK end":
            if self.start is not None:
                cpu0, busy0 = self.start
                self.spans.append((self.server.cpu() - cpu0, system_busy_seconds() - busy0))
                self.start = None
        else:
            return
        if self.sync and p.stdin:
            try:
                p.stdin.write(b"go\n")
                p.stdin.flush()
            except BrokenPipeError:
                pass

    def span(self, i: int = -1) -> tuple[float | None, float | None]:
        """(server CPU s, machine busy s) of window i (the last by default), or Nones."""
        try:
            return self.spans[i]
        except IndexError:
            return None, None


def _finish(res: dict[str, Any], win: Window, seconds: float, lg_cpu: float,
            i: int = -1) -> dict[str, Any]:
    """Adds CPU-share fields common to all windowed workloads (of the loadgen's window i)."""
    srv, busy = win.span(i)
    res["server_cpu_s"] = srv
    res["loadgen_cpu_s"] = lg_cpu
    res["window_s"] = seconds
    if seconds > 0:
        res["server_cpu_pct"] = None if srv is None else 100 * srv / seconds
        res["loadgen_cpu_pct"] = 100 * lg_cpu / seconds
        if busy is not None and srv is not None:
            # whatever else ran on the machine during the window (noise check)
            res["background_cpu_pct"] = max(0.0, 100 * (busy - srv - lg_cpu) / seconds)
    return res


# ---------------------------------------------------------------- workloads

def echo_cases() -> list[tuple[str, dict[str, Any]]]:
    return [(f"echo_{size}B_{conns}c", {"size": size, "conns": conns})
            for size in ECHO_SIZES for conns in ECHO_CONNS]


def wl_echo(srv: Server, size: int, conns: int, quick: bool,
            path: str = "/echo", payload: str = "x") -> dict[str, Any]:
    duration, warmup = WINDOW[quick]
    win = Window(srv)
    res, diag = run_loadgen(
        ["echo", "--host", HOST, "--port", str(srv.port), "--path", path,
         "--conns", str(conns), "--size", str(size), "--payload", payload,
         "--duration", str(duration), "--warmup", str(warmup)],
        timeout=duration + warmup + 90, on_line=win)
    if res is None:
        return {"error": diag}
    if res["conns_open"] < conns or res["messages"] == 0 or res["errors"]:
        res["error"] = (f"{res['conns_open']}/{conns} connections open, {res['messages']} "
                        f"messages, {res['errors']} errors {diag}").strip()
    _finish(res, win, res["duration_s"], res["loadgen_cpu_window_s"])
    if res["messages"] and res.get("server_cpu_s") is not None:
        # CPU per message barely moves when other work shares the machine
        res["server_us_per_msg"] = 1e6 * res["server_cpu_s"] / res["messages"]
    return res


def wl_handshake(srv: Server, quick: bool) -> dict[str, Any]:
    duration, _ = WINDOW[quick]
    win = Window(srv)
    res, diag = run_loadgen(
        ["handshake", "--host", HOST, "--port", str(srv.port), "--path", "/echo",
         "--concurrency", str(HANDSHAKE_CONCURRENCY), "--duration", str(duration)],
        timeout=duration + 60, on_line=win)
    if res is None:
        return {"error": diag}
    if res["cycles"] == 0 or res["failures"]:
        res["error"] = f"{res['cycles']} handshakes, {res['failures']} failures {diag}".strip()
    _finish(res, win, res["duration_s"], res["loadgen_cpu_window_s"])
    if res["cycles"] and res.get("server_cpu_s") is not None:
        res["server_us_per_handshake"] = 1e6 * res["server_cpu_s"] / res["cycles"]
    return res


class Ticks:
    """The loadgen's idle-mode TICK lines: server CPU and machine busy time at each second after
    all connections are up; stops the loadgen (SIGTERM) after the tick ``stop``."""

    def __init__(self, srv: Server, stop: int,
                 on_tick: Callable[[int], None] | None = None) -> None:
        self.srv, self.stop, self.on_tick = srv, stop, on_tick
        self.at: dict[int, tuple[float, float, float, int]] = {}   # k: (time, cpu, busy, pings)

    def __call__(self, line: str, p: subprocess.Popen[bytes]) -> None:
        if not line.startswith("TICK"):
            return
        _, k, pings = line.split()
        self.at[int(k)] = (time.monotonic(), self.srv.cpu(), system_busy_seconds(), int(pings))
        if self.on_tick:
            self.on_tick(int(k))
        if int(k) >= self.stop:
            p.send_signal(signal.SIGTERM)

    def windows(self, res: dict[str, Any], first: int, last: int,
                interval: float) -> dict[str, Any]:
        """Server CPU per 1 s window from tick first to last, pings, and beats."""
        out: dict[str, Any] = {}
        if first not in self.at or last not in self.at:
            return {"error": f"loadgen ticks {sorted(self.at)} lack {first}..{last}"}
        windows = []
        for k in range(first, last):
            (t0, c0, _, p0), (t1, c1, _, p1) = self.at[k], self.at[k + 1]
            windows.append({"s": t1 - t0, "cpu_ms": 1e3 * (c1 - c0), "pings": p1 - p0})
        (t0, c0, b0, p0), (t1, c1, b1, p1) = self.at[first], self.at[last]
        span, cpu, pings = t1 - t0, c1 - c0, p1 - p0
        rates = [w["cpu_ms"] / w["s"] for w in windows]   # ms of CPU per second
        quiet = [r for r, w in zip(rates, windows, strict=True) if not w["pings"]]
        ok = res.get("ok") or 0
        beats = pings / ok if ok else 0.0
        out.update(
            ping_interval=interval or None, window_s=span, server_cpu_s=cpu,
            windows=windows, cpu_ms_per_s_min=min(rates),
            cpu_ms_per_s_median=statistics.median(rates), cpu_ms_per_s_max=max(rates),
            quiet_windows=len(quiet),
            quiet_ms_per_s_median=statistics.median(quiet) if quiet else None,
            pings_window=pings, beats=beats,
            cpu_ms_per_beat=1e3 * cpu / beats if beats >= 0.5 else None,
            us_per_ping=1e6 * cpu / pings if pings else None,
            # everything but the server (the loadgen only answers pings here)
            background_cpu_pct=max(0.0, 100 * ((b1 - b0) - cpu) / span) if span > 0 else None)
        return out


def wl_idle(srv: Server, path: str = "/echo") -> dict[str, Any]:
    """Idle memory per connection at IDLE_CONNS on path, and on /echo (as the case
    heartbeat_off) the server's CPU while they sit idle, over the loadgen's ticks IDLE_TICKS."""
    base = ["idle", "--host", HOST, "--port", str(srv.port), "--path", path]
    # warm-up: one-off lazy initialisation must not be billed per connection
    run_loadgen([*base, "--conns", "100", "--hold", "0"], timeout=60)
    time.sleep(0.5)
    rss0, cpu0 = srv.rss(), srv.cpu()
    seen: dict[str, Any] = {}

    def on_tick(k: int) -> None:
        if k == 0:   # all connections are up
            seen["cpu_established"] = srv.cpu() - cpu0
        elif k == 1:   # 1 s later: any post-handshake work is done
            seen["rss1"] = srv.rss()

    ticks = Ticks(srv, IDLE_TICKS[1], on_tick)
    res, diag = run_loadgen([*base, "--conns", str(IDLE_CONNS), "--hold", "120"],
                            timeout=240, on_line=ticks)
    if res is None:
        return {"error": diag}
    if "rss1" not in seen:
        return {**res, "error": f"never READY {diag}".strip()}
    ok = res["ok"]
    res.update(rss_before_kib=rss0, rss_after_kib=seen["rss1"],
               server_cpu_s=seen["cpu_established"],
               kib_per_conn=(seen["rss1"] - rss0) / ok if ok else None)
    if ok < IDLE_CONNS or res["still_open"] < ok:
        res["error"] = (f"{ok}/{IDLE_CONNS} established, {res['still_open']} still open "
                        f"at the end {diag}").strip()
    if path == "/echo":
        quiet = {**res, **ticks.windows(res, *IDLE_TICKS, 0.0), "path": path}
        res["extra_cases"] = {"heartbeat_off": quiet}
    return res


def wl_fanout(srv: Server, subs: int, messages: int, size: int = FANOUT_SIZE,
              deflate: bool = False, json_mode: bool = False,
              rounds: int = 1) -> dict[str, Any]:
    """One set of subscribers, rounds publications of messages each: {"runs": [one result per
    round]} (each with the whole run's counts and errors, and its own window's figures)."""
    win = Window(srv, sync=True)
    args = ["fanout", "--host", HOST, "--port", str(srv.port), "--subs", str(subs),
            "--messages", str(messages), "--size", str(size), "--timeout", "60", "--sync",
            "--rounds", str(rounds)]
    if json_mode:
        args += ["--payload", "json", "--verify", str(FANOUTZ_VERIFY),
                 "--sub-path", "/subj", "--pub-path", "/pubj"]
    if deflate:
        args += ["--deflate", "--payload", "text", "--verify", str(FANOUTZ_VERIFY),
                 "--sub-path", "/subz", "--pub-path", "/pubz"]
    res, diag = run_loadgen(args, timeout=200, on_line=win)
    if res is None:
        return {"error": diag}
    error = ""
    if res["missing"] or res["subs_ok"] < subs or not res["publisher_ok"]:
        error = (f"{res['subs_ok']}/{subs} subscribed, publisher_ok={res['publisher_ok']}, "
                 f"{res['missing']} deliveries missing, {res['handshake_fail']} upgrades "
                 f"failed, {res['connect_fail']} connects failed {diag}").strip()
    elif deflate and not res.get("deflate_negotiated"):
        error = (f"permessage-deflate not negotiated ({res.get('deflate_subs')}/"
                 f"{res['subs_ok']} subscribers agreed) {diag}").strip()
    elif res.get("errors"):
        error = (f"{res['errors']} errors (protocol {res['protocol_errors']}, "
                 f"size {res['size_mismatch']}, content {res['content_mismatch']}) "
                 f"{diag}").strip()
    runs = []
    for i, window in enumerate(res.pop("rounds", None) or [{}]):
        run = {**res, **window, "round": i}
        if error:
            run["error"] = error
        _finish(run, win, run["elapsed_s"], run["loadgen_cpu_window_s"], i)
        srv_cpu = run.get("server_cpu_s")
        if run["deliveries"]:
            run["rx_bytes_per_delivery"] = run["rx_bytes_window"] / run["deliveries"]
            if srv_cpu is not None:
                run["server_us_per_delivery"] = 1e6 * srv_cpu / run["deliveries"]
        runs.append(run)
    return {"runs": runs}


def wl_heartbeat(srv: Server, path: str, interval: float) -> dict[str, Any]:
    """IDLE_CONNS connections held open; server CPU read at each of the loadgen's 1 s ticks."""
    ticks = Ticks(srv, HEARTBEAT_TICKS[1])
    res, diag = run_loadgen(
        ["idle", "--host", HOST, "--port", str(srv.port), "--path", path,
         "--conns", str(IDLE_CONNS), "--hold", str(HEARTBEAT_HOLD)],
        timeout=HEARTBEAT_HOLD + 240, on_line=ticks)
    if res is None:
        return {"error": diag}
    res.update(ticks.windows(res, *HEARTBEAT_TICKS, interval), path=path)
    problems = [res.pop("error")] if res.get("error") else []
    ok = res["ok"]
    if ok < IDLE_CONNS or res["still_open"] < ok:
        problems.append(f"{ok}/{IDLE_CONNS} established, {res['still_open']} still open at the end")
    if interval and not res.get("pings_window"):
        problems.append("no pings received")
    if res.get("failures"):
        problems.append(f"{res['failures']} errors")
    if problems:
        res["error"] = (", ".join(problems) + f" {diag}").strip()
    return res


Case = tuple[str, Callable[[Server], dict[str, Any]]]


@dataclass
class Group:
    """Cases run against one freshly started server, started with args and env."""
    tag: str
    cases: list[Case]
    args: tuple[str, ...] = ()
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    skip: str = ""   # reason the server cannot run these cases (reported as n/a)


def plan(name: str, workloads: list[str], quick: bool, repeat: int = 1) -> list[Group]:
    """The groups of cases for server name; a fan-out's repeats are rounds of one run."""
    groups: list[Group] = []
    if "echo" in workloads:
        cases: list[Case] = [
            (key, partial(wl_echo, size=kw["size"], conns=kw["conns"], quick=quick))
            for key, kw in echo_cases()]
        groups.append(Group("echo", cases))
    if "handshake" in workloads:
        groups.append(Group("handshake", [("handshake", partial(wl_handshake, quick=quick))]))
    if "memory" in workloads:
        # also the case heartbeat_off: the same connections, watched while idle
        groups.append(Group("idle", [("idle_10k", wl_idle)]))
        # What a chat keeps per connection besides: bench/app.py's /state (a data= object and
        # a topic); another server keeps nothing there.
        groups.append(Group("idle_state", [("idle_10k_state", partial(wl_idle, path="/state"))],
                            skip="" if name.startswith("harpy") else "no /state route"))
    if "fanout" in workloads:
        for subs, msgs in FANOUT_CASES:
            key = f"fanout_{subs}x{msgs}"
            groups.append(Group(key, [(key, partial(wl_fanout, subs=subs, messages=msgs,
                                                    rounds=repeat))]))
    if "fanoutz" in workloads:
        subs, msgs = FANOUTZ_CASE
        key = f"fanoutz_{subs}x{msgs}"
        fn = partial(wl_fanout, subs=subs, messages=msgs, size=FANOUTZ_SIZE, deflate=True,
                     rounds=repeat)
        # websockets takes one compression setting per server: a deflate server for this one
        groups.append(Group(key, [(key, fn)],
                            args=("--compression", "deflate") if name == "websockets" else (),
                            skip=NO_DEFLATE.get(name, "")))
    if "json" in workloads:
        size, conns = JSON_ECHO
        subs, msgs = JSON_FANOUT
        for lib in JSON_LIBS:
            echo_key = f"jsonecho_{size}B_{conns}c_{lib}"
            fanout_key = f"jsonfanout_{subs}x{msgs}_{lib}"
            groups.append(Group(f"json_{lib}", [
                (echo_key, partial(wl_echo, size=size, conns=conns, quick=quick,
                                   path="/echoj", payload="json")),
                (fanout_key, partial(wl_fanout, subs=subs, messages=msgs, size=JSON_SIZE,
                                     json_mode=True, rounds=repeat)),
            ], env={"HARPY_BENCH_JSON": lib},
                skip="" if name.startswith("harpy") else "JSON mode is harpy's"))
    if "heartbeat" in workloads:
        every = f"{HEARTBEAT_INTERVAL:g}"
        hb = partial(wl_heartbeat, interval=HEARTBEAT_INTERVAL)
        if name.startswith("harpy"):
            groups.append(Group("heartbeat_on", [("heartbeat_on", partial(hb, path="/hb"))],
                                env={"HARPY_BENCH_PING": every}))
        else:
            groups.append(Group("heartbeat_on", [("heartbeat_on", partial(hb, path="/echo"))],
                                args=("--ping-interval", every)))
    if name in ONLY:
        allowed, why = ONLY[name]
        for group in groups:
            if group.tag not in allowed:
                group.skip = group.skip or why
    return groups


def best_of(key: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Best run by the headline metric: noise only ever makes a server look slower."""
    field, _, higher = _metric(key)
    good = [r for r in runs if r.get(field) is not None and not r.get("error")]
    if not good:
        return runs[-1]
    best = dict((max if higher else min)(good, key=lambda r: r[field]))
    if len(runs) > 1:
        best["all_runs"] = [r.get(field) for r in runs]
    return best


def run_server(name: str, workloads: list[str], quick: bool, repeat: int = 1,
               missing: str = "") -> dict[str, Any]:
    """Every case of the workloads on server name; missing: why it cannot run (from prepare)."""
    out: dict[str, Any] = {"cases": {}, "errors": []}
    t_server = time.monotonic()
    groups = plan(name, workloads, quick, repeat)
    if missing:
        print(f"[{name}] cannot run: {missing}", file=sys.stderr)
        out["errors"].append(missing)
    for group in groups:
        tag, cases = group.tag, group.cases
        if missing and not group.skip:
            for key, _ in cases:
                out["cases"][key] = {"error": missing}
            continue
        if group.skip:
            for key, _ in cases:
                out["cases"][key] = {"na": group.skip}
            print(f"[{name}] {tag}: n/a ({group.skip})", file=sys.stderr)
            continue
        srv = Server(name, tag, group.args, group.env)
        print(f"[{name}] starting for {tag}", file=sys.stderr)
        if not srv.start():
            msg = f"{tag}: server failed to start: {srv.error}"
            print(f"[{name}] {msg}", file=sys.stderr)
            out["errors"].append(msg)
            for key, _ in cases:
                out["cases"][key] = {"error": f"server failed to start: {srv.error}"}
            continue
        try:
            for key, fn in cases:
                if not srv.alive():
                    out["cases"][key] = {"error": f"server died: {srv.log_tail()}"}
                    continue
                t0 = time.monotonic()
                # idle memory is only meaningful on the first batch of a fresh server;
                # a heartbeat case is 15+ s of mostly nothing: once is enough
                runs: list[dict[str, Any]] = []
                wanted = 1 if key.startswith(("idle", "heartbeat")) else repeat
                for _ in range(wanted):
                    try:
                        res = fn(srv)
                    except Exception as exc:  # noqa: BLE001 - keep going with other cases
                        res = {"error": f"{type(exc).__name__}: {exc}"}
                    if not srv.alive():
                        res.setdefault("error", f"server died during the run: {srv.log_tail()}")
                    runs += res.pop("runs", None) or [res]   # a fan-out's rounds are runs
                    if not srv.alive() or len(runs) >= wanted:
                        break
                res = best_of(key, runs[:wanted])
                out["cases"].update(res.pop("extra_cases", {}))
                out["cases"][key] = res
                status = res.get("error") or "ok"
                bg = res.get("background_cpu_pct")
                if bg is not None and bg > NOISY_PCT:
                    status += f" (noisy: {bg:.0f}% of a core used by other work)"
                took = time.monotonic() - t0
                print(f"[{name}] {key}: {headline(key, res)} ({took:.1f}s) {status}",
                      file=sys.stderr)
        finally:
            srv.stop()
        time.sleep(0.2)
    out["elapsed_s"] = time.monotonic() - t_server
    return out


# ------------------------------------------------------------------- report

def _metric(key: str) -> tuple[str, str, bool]:
    """(field, unit, higher_is_better) of a case's headline number."""
    if key.startswith(("echo", "jsonecho")):
        return "msgs_per_s", "msg/s", True
    if key == "handshake":
        return "handshakes_per_s", "handshakes/s", True
    if key.startswith("idle"):
        return "kib_per_conn", "KiB/conn", False
    if key == "heartbeat_on":
        return "cpu_ms_per_beat", "ms CPU/beat", False
    if key.startswith("heartbeat"):
        return "cpu_ms_per_s_median", "ms CPU/s (median)", False
    return "deliveries_per_s", "deliveries/s", True


def headline(key: str, res: dict[str, Any]) -> str:
    field, unit, _ = _metric(key)
    v = res.get(field)
    text = f"{fmt(v)} {unit}" if v is not None else "-"
    if key.startswith("fanoutz") and "rx_bytes_per_delivery" in res:
        text += (f", {fmt(res['rx_bytes_per_delivery'])} B/delivery, "
                 f"deflate_negotiated={str(res.get('deflate_negotiated')).lower()}")
    if key.startswith("heartbeat") and "pings_window" in res:
        text += f", {fmt(res['pings_window'])} pings"
    return text


def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def case_label(key: str) -> str:
    if key.startswith("echo_"):
        _, size, conns = key.split("_")
        n = int(size[:-1])
        size = f"{n // 1024} KiB" if n >= 1024 and n % 1024 == 0 else f"{n} B"
        return f"{size}, {conns[:-1]} conn{'s' if conns != '1c' else ''}"
    if key.startswith("fanout_"):
        subs, msgs = key.split("_")[1].split("x")
        return f"{int(subs):,} subs x {msgs} msgs ({FANOUT_SIZE} B)"
    if key.startswith("fanoutz_"):
        subs, msgs = key.split("_")[1].split("x")
        return f"{int(subs):,} subs x {msgs} msgs of {FANOUTZ_SIZE:,} B compressible text"
    if key == "heartbeat_on":
        return f"{IDLE_CONNS:,} idle, heartbeat every {HEARTBEAT_INTERVAL:g} s"
    if key == "heartbeat_off":
        return f"{IDLE_CONNS:,} idle, no heartbeat"
    if key.startswith("jsonecho_"):
        return f"JSON echo, {JSON_ECHO[0]} B, {JSON_ECHO[1]} conns, {key.rsplit('_', 1)[1]}"
    if key.startswith("jsonfanout_"):
        return (f"JSON fan-out, {JSON_FANOUT[0]:,} subs x {JSON_FANOUT[1]} msgs, "
                f"{key.rsplit('_', 1)[1]}")
    if key == "idle_10k_state":
        return f"{IDLE_CONNS:,} idle connections, each with a data= object and a topic"
    if key.startswith("idle"):
        return f"{IDLE_CONNS:,} idle connections"
    return f"concurrency {HANDSHAKE_CONCURRENCY}"


def _cell(res: dict[str, Any] | None, field: str, digits: int = 3) -> str:
    if res is None or res.get("na"):
        return "n/a"
    v = res.get(field)
    if v is None or (not v and res.get("error")):
        return "failed" if res.get("error") else "-"
    s = fmt(v, digits)
    return s + " (!)" if res.get("error") else s


def _table(title: str, keys: list[str], servers: list[str], results: dict[str, Any],
           value: Callable[[dict[str, Any] | None], str],
           ratio_field: str | None = None) -> list[str]:
    ratios = []
    if ratio_field and "harpy" in servers:
        ratios = [s for s in servers if s != "harpy"]
    head = ["case", *servers, *(f"harpy/{s}" for s in ratios)]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for key in keys:
        row = [case_label(key)]
        for s in servers:
            row.append(value(results.get(s, {}).get("cases", {}).get(key)))
        for s in ratios:
            h = results.get("harpy", {}).get("cases", {}).get(key) or {}
            o = results.get(s, {}).get("cases", {}).get(key) or {}
            hv, ov = h.get(ratio_field), o.get(ratio_field)
            row.append(f"{hv / ov:.2f}x" if hv and ov else "-")
        lines.append("| " + " | ".join(row) + " |")
    return [*lines, ""]


Cell = Callable[[dict[str, Any] | None], str]
# label, case key, cell, field for the harpy/other ratio (None: no ratio)
Row = tuple[str, str, Cell, str | None]


def _rows_table(title: str, rows: list[Row], servers: list[str],
                results: dict[str, Any]) -> list[str]:
    """One row per metric (of one case or another), one column per server, plus ratios."""
    ratios = [s for s in servers if s != "harpy"] if "harpy" in servers else []
    head = ["", *servers, *(f"harpy/{s}" for s in ratios)]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]

    def case(server: str, key: str) -> dict[str, Any] | None:
        res: dict[str, Any] | None = results.get(server, {}).get("cases", {}).get(key)
        return res

    for label, key, cell, ratio_field in rows:
        row = [label, *(cell(case(s, key)) for s in servers)]
        for s in ratios:
            h, o = case("harpy", key) or {}, case(s, key) or {}
            hv = h.get(ratio_field) if ratio_field else None
            ov = o.get(ratio_field) if ratio_field else None
            clean = not h.get("error") and not o.get("error")
            row.append(f"{hv / ov:.2f}x" if hv and ov and clean else "")
        lines.append("| " + " | ".join(row) + " |")
    return [*lines, ""]


def _na(res: dict[str, Any] | None) -> str | None:
    """The cell for a case that did not run or failed outright, else None."""
    if res is None or res.get("na"):
        return "n/a"
    if res.get("error") and not res.get("ok") and not res.get("deliveries"):
        return "failed"
    return None


def _yes_no(field_name: str) -> Cell:
    def cell(res: dict[str, Any] | None) -> str:
        na = _na(res)
        if na or res is None:
            return na or "n/a"
        return "yes" if res.get(field_name) else "**no**"
    return cell


def _triple(res: dict[str, Any] | None) -> str:
    na = _na(res)
    if na or res is None:
        return na or "n/a"
    vals = [res.get(f"cpu_ms_per_s_{k}") for k in ("min", "median", "max")]
    return " / ".join(fmt(v) for v in vals)


def _quiet(res: dict[str, Any] | None) -> str:
    na = _na(res)
    if na or res is None:
        return na or "n/a"
    if not res.get("quiet_windows"):
        return "none quiet"
    return f"{fmt(res.get('quiet_ms_per_s_median'))} ({res['quiet_windows']} of " \
           f"{len(res.get('windows', []))})"


def fanoutz_rows(keys: list[str]) -> list[Row]:
    rows: list[Row] = []
    for key in keys:
        label = f"{case_label(key)}: " if len(keys) > 1 else ""
        rows += [
            (f"{label}deliveries/s (higher is better)", key,
             lambda r: _cell(r, "deliveries_per_s"), "deliveries_per_s"),
            (f"{label}server CPU per delivery, us (lower is better)", key,
             lambda r: _cell(r, "server_us_per_delivery"), "server_us_per_delivery"),
            (f"{label}bytes received per delivery, frame header included "
             f"(uncompressed: {FANOUTZ_SIZE + 4:,})", key,
             lambda r: _cell(r, "rx_bytes_per_delivery", 4), "rx_bytes_per_delivery"),
            (f"{label}deflate_negotiated (every subscriber and the publisher)", key,
             _yes_no("deflate_negotiated"), None),
            (f"{label}messages inflated and checked (first {FANOUTZ_VERIFY} subscribers)",
             key, lambda r: _cell(r, "verified"), None),
        ]
    return rows


def heartbeat_rows() -> list[Row]:
    every = f"{HEARTBEAT_INTERVAL:g} s"
    return [
        ("no heartbeat: server CPU per 1 s window, ms (min / median / max)", "heartbeat_off",
         _triple, None),
        (f"heartbeat every {every}: server CPU per 1 s window, ms (min / median / max)",
         "heartbeat_on", _triple, None),
        (f"heartbeat every {every}: CPU in windows without a ping, ms (median, windows)",
         "heartbeat_on", _quiet, None),
        (f"heartbeat every {every}: pings received in the "
         f"{HEARTBEAT_TICKS[1] - HEARTBEAT_TICKS[0]} s", "heartbeat_on",
         lambda r: _cell(r, "pings_window"), None),
        (f"heartbeat every {every}: beats (pings / connections)", "heartbeat_on",
         lambda r: _cell(r, "beats"), None),
        (f"heartbeat every {every}: server CPU per beat, ms (total / beats; lower is better)",
         "heartbeat_on", lambda r: _cell(r, "cpu_ms_per_beat"), "cpu_ms_per_beat"),
        (f"heartbeat every {every}: server CPU per ping, us (lower is better)",
         "heartbeat_on", lambda r: _cell(r, "us_per_ping"), "us_per_ping"),
    ]


def limited(res: dict[str, Any] | None) -> bool:
    """The loadgen, not the server, was the limit: it used about all of its core."""
    return res is not None and not res.get("na") and \
        (res.get("loadgen_cpu_pct") or 0) >= LOADGEN_LIMIT_PCT


def _rate(field: str) -> Cell:
    """A throughput cell, marked where the loadgen was the limit."""
    def cell(res: dict[str, Any] | None) -> str:
        text = _cell(res, field)
        return f"{text} {LIMIT_MARK}" if limited(res) and text not in ("n/a", "failed") else text
    return cell


def _cpu_cell(r: dict[str, Any] | None) -> str:
    if not r or r.get("na"):
        return "n/a"
    if r.get("loadgen_cpu_pct") is None:
        return "failed" if r.get("error") else "-"
    srv = r.get("server_cpu_pct")
    bg = r.get("background_cpu_pct")
    cell = f"{f'{srv:.0f}' if srv is not None else '-'} / {r['loadgen_cpu_pct']:.0f}"
    cell += f" / {bg:.0f}" if bg is not None else ""
    return f"{cell} {LIMIT_MARK}" if limited(r) else cell


def _with_cpu(rate: str, cpu: str) -> Cell:
    """'rate (server CPU per unit us)', marked where the loadgen was the limit."""
    def cell(res: dict[str, Any] | None) -> str:
        text = _rate(rate)(res)
        per = res.get(cpu) if res else None
        return f"{text} ({fmt(per)} us)" if per is not None else text
    return cell


def summary_rows(keys: list[str]) -> list[Row]:
    """The headline of each workload, one row each (the ratio is that of the headline)."""
    rows: list[Row] = []
    for key in keys:
        field = _metric(key)[0]
        if key.startswith("echo"):
            rows.append((f"echo {case_label(key)}, msg/s (server CPU per message)", key,
                         _with_cpu(field, "server_us_per_msg"), field))
        elif key == "handshake":
            rows.append((f"connect + upgrade + close, {HANDSHAKE_CONCURRENCY} in flight, per s "
                         "(server CPU per connection)", key,
                         _with_cpu(field, "server_us_per_handshake"), field))
        elif key.startswith(("fanout_", "fanoutz_")):
            rows.append((f"fan-out {case_label(key)}, deliveries/s (server CPU per delivery)",
                         key, _with_cpu(field, "server_us_per_delivery"), field))
        elif key.startswith("idle"):
            rows.append((f"memory per connection, {case_label(key)}, KiB", key,
                         lambda r: _cell(r, "kib_per_conn"), field))
    return rows


def json_rows(keys: list[str]) -> list[Row]:
    size, conns = JSON_ECHO
    subs, msgs = JSON_FANOUT
    # case key prefix: (what, rate field and unit, CPU field and unit)
    kinds = {
        "jsonecho": (f"JSON echo, {size} B, {conns} conns", ("msgs_per_s", "msg/s"),
                     ("server_us_per_msg", "server CPU per message, us")),
        "jsonfanout": (f"JSON fan-out, {subs:,} subs x {msgs} msgs",
                       ("deliveries_per_s", "deliveries/s"),
                       ("server_us_per_delivery", "server CPU per delivery, us")),
    }
    rows: list[Row] = []
    for lib in JSON_LIBS:
        for key in keys:
            kind = kinds.get(key.split("_", 1)[0])
            if kind is None or not key.endswith(f"_{lib}"):
                continue
            what, (rate, rate_unit), (cpu, cpu_unit) = kind
            rows += [(f"{lib}: {what}, {rate_unit}", key, _rate(rate), None),
                     (f"{lib}: {what}, {cpu_unit}", key,
                      lambda r, cpu=cpu: _cell(r, cpu), None)]
    return rows


# hotpath.py's modes: the case and field of the wall-clock run with the same unit, and the
# harpy server configuration it matches
HOTPATH_UNITS = {
    "echo": ("echo_32B_64c", "server_us_per_msg", "harpy"),
    "fanout": ("fanout_1000x100", "server_us_per_delivery", "harpy"),
    "handshake": ("handshake", "server_us_per_handshake", "harpy-nolog"),
    "handshake-log": ("handshake", "server_us_per_handshake", "harpy"),
}


def hotpath_section(data: dict[str, Any]) -> list[str]:
    hp = data.get("hotpath")
    if not hp:
        return []
    out = ["## Where the time goes: harpy per message, per delivery, per connection", ""]
    if hp.get("error"):
        return [*out, f"Not measured in this run: {hp['error']}", ""]
    results = data["results"]

    def us(server: str, key: str, field: str) -> float | None:
        v: float | None = results.get(server, {}).get("cases", {}).get(key, {}).get(field)
        return v

    out += [
        f"`bench/hotpath.py`, in this run ({hp.get('elapsed_s', 0):.0f} s): harpy's Python "
        "glue driven in process through a fake transport (no sockets, no system calls) under "
        "`valgrind --tool=callgrind`; instructions per unit = (instructions for N units - for "
        "0) / N, the same for the same code whatever else the machine does. Beside it, from "
        "the wall-clock run above: harpy's server CPU per unit (kernel included), the null "
        "server's (the kernel's loopback TCP and a minimal C loop: the floor), and the "
        "difference, which is the part harpy can change.",
        "",
        "| unit | instructions (harpy's glue) | harpy server CPU, us | null server CPU, us "
        "| harpy above the floor, us | from the case |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for case in hp.get("cases", []):
        key, field, server = HOTPATH_UNITS.get(case["mode"], ("", "", "harpy"))
        h, floor = us(server, key, field), us("null", key, field)
        above = fmt(h - floor) if h is not None and floor is not None else "-"
        where = f"{case_label(key)} ({server})" if key else ""
        out.append(f"| {case['label']} | {case['harpy']:,} | {fmt(h)} | {fmt(floor)} | {above} "
                   f"| {where} |")
    return [*out, ""]


def markdown(data: dict[str, Any]) -> str:
    results = data["results"]
    servers = [s for s in SERVERS if s in results]
    keys = list(dict.fromkeys(k for s in servers for k in results[s]["cases"]))
    echo = [k for k in keys if k.startswith("echo")]
    hs = [k for k in keys if k == "handshake"]
    idle = [k for k in keys if k.startswith("idle")]
    fan = [k for k in keys if k.startswith("fanout_")]
    fanz = [k for k in keys if k.startswith("fanoutz_")]
    hb = [k for k in keys if k.startswith("heartbeat")]
    js = [k for k in keys if k.startswith("json")]
    out: list[str] = []

    headline_keys = echo + hs + fan + fanz + idle
    if headline_keys:
        out += _rows_table(f"Summary: best of {data.get('repeat', 1)}; {LIMIT_MARK} = the load "
                           "generator used about all of its core (the limit, not the server)",
                           summary_rows(headline_keys), servers, results)
    if echo:
        out += _table("Echo throughput (messages/s, higher is better)", echo, servers, results,
                      _rate("msgs_per_s"), "msgs_per_s")
        out += _table("Echo server CPU per message (us, lower is better)", echo, servers,
                      results, lambda r: _cell(r, "server_us_per_msg"), "server_us_per_msg")
        out += _table("Echo round-trip latency p50 / p99 (us, lower is better)", echo, servers,
                      results, lambda r: "n/a" if r and r.get("na") else
                      "failed" if not r or "lat_p50_us" not in r else
                      f"{r['lat_p50_us']:.0f} / {r['lat_p99_us']:.0f}")
    if hs:
        out += _table("Connection churn: connect + upgrade + close per s (higher is better)",
                      hs, servers, results, _rate("handshakes_per_s"), "handshakes_per_s")
        out += _table("Server CPU per connection (us, lower is better)", hs, servers, results,
                      lambda r: _cell(r, "server_us_per_handshake"), "server_us_per_handshake")
    if idle:
        out += _table("Server RSS per idle connection (KiB, lower is better)", idle, servers,
                      results, lambda r: _cell(r, "kib_per_conn"), "kib_per_conn")
    if fan:
        out += _table("Fan-out deliveries/s (higher is better)", fan, servers, results,
                      _rate("deliveries_per_s"), "deliveries_per_s")
        out += _table("Fan-out server CPU per delivery (us, lower is better)", fan, servers,
                      results, lambda r: _cell(r, "server_us_per_delivery"),
                      "server_us_per_delivery")
    if fanz:
        title = "Fan-out with permessage-deflate"
        if len(fanz) == 1:
            title += f": {case_label(fanz[0])}"
        out += _rows_table(title, fanoutz_rows(fanz), servers, results)
    if hb:
        out += _rows_table(f"Heartbeat cost, {IDLE_CONNS:,} idle connections, 1 s windows "
                           f"after the last upgrade", heartbeat_rows(), servers, results)
    if js:
        json_servers = [s for s in servers if s.startswith("harpy")
                        and any(not results[s]["cases"].get(k, {}).get("na") for k in js)]
        out += _rows_table("JSON mode (harpy's `json=True` routes): orjson and the standard "
                           "library", json_rows(js), json_servers, results)
    windowed = echo + hs + fan + fanz + [k for k in js if "na" not in
                                        results.get("harpy", {}).get("cases", {}).get(k, {})]
    if windowed:
        out += _table("CPU during the measured window, % of one core: server / loadgen / "
                      f"everything else (other processes, kernel threads); {LIMIT_MARK}: the "
                      f"loadgen at {LOADGEN_LIMIT_PCT:.0f} % or more of its core",
                      windowed, servers, results, _cpu_cell)
    if idle:
        out += _table(f"Idle: establishing {IDLE_CONNS:,} connections (server CPU s / loadgen "
                      "CPU s)", idle, servers, results,
                      lambda r: "n/a" if r and r.get("na") else
                      "failed" if not r or r.get("server_cpu_s") is None else
                      f"{r['server_cpu_s']:.2f} / {r.get('loadgen_cpu_s', 0):.2f}")
    out += hotpath_section(data)
    errs = [(s, k, r["error"]) for s in servers for k, r in results[s]["cases"].items()
            if r.get("error")]
    errs += [(s, k, f"noisy window: {r['background_cpu_pct']:.0f}% of a core used by other work")
             for s in servers for k, r in results[s]["cases"].items()
             if (r.get("background_cpu_pct") or 0) > NOISY_PCT]
    if errs:
        out += ["### Problems", ""]
        out += [f"- {s} / {k}: {e[:300]}" for s, k, e in errs]
        out.append("")
    return "\n".join(out)


def results_md(data: dict[str, Any], keep: str = "") -> str:
    """The whole of bench/RESULTS.md; keep: sections other tools maintain, appended as is."""
    m = data["machine"]
    v = m.get("versions", {})
    window, warmup = WINDOW[bool(data.get("quick"))]
    mode = (f"{'quick' if data.get('quick') else 'full'} ({window:g} s windows after "
            f"{warmup:g} s of warm-up)")
    if data.get("repeat", 1) > 1:
        mode += f", best of {data['repeat']}"
    elapsed = data.get("elapsed_s")
    took = f"{elapsed // 60:.0f} min {elapsed % 60:.0f} s" if elapsed else "not recorded"
    per_server = ", ".join(f"{s} {r['elapsed_s']:.0f} s" for s, r in data["results"].items()
                           if r.get("elapsed_s") is not None)
    hp = data.get("hotpath") or {}
    if hp.get("elapsed_s") is not None:
        per_server += f", hotpath {hp['elapsed_s']:.0f} s"
    return "\n".join([
        "# WebSocket server benchmarks",
        "",
        "Generated by `python bench/run.py --repeat 3 --write` (`make bench`); raw numbers in "
        "`bench/results.json`.",
        "",
        "## Machine",
        "",
        f"- CPUs: {m['nproc']} x {m['cpu_model']}",
        f"- Kernel: {m['kernel']}",
        f"- Python: {m['python']}",
        "- Versions: " + ", ".join(f"{k} {v.get(k) or 'n/a'}" for k in
                                    ("harpy", "picows", "socketify", "bun", "websockets",
                                     "aiohttp", "uvloop")),
        "- Pinning: " + ("server on CPU 0, load generator on CPU 1 (taskset)" if m.get("pinned")
                          else "none (taskset unavailable or a single CPU)"),
        f"- Run: {mode}, {data.get('date', '')}, tree {m.get('git') or 'unknown'}",
        f"- Time for the whole run: {took} ({per_server})",
        "- Load average (1, 5, 15 min) at the start and the end of the run: "
        + " / ".join(", ".join(f"{x:.2f}" for x in data.get("loadavg", {}).get(k, ()))
                     for k in ("start", "end")),
        "",
        "## Servers",
        "",
        "- harpy: `python -m harpy bench.app:app` with its defaults (access log on); "
        "harpy-nolog: the same with `--no-access-log`, measured on connection churn only (the "
        "access log is written once per connection).",
        "- picows: `bench/peers/picows_server.py`, raw listener callbacks on uvloop.",
        "- socketify: `bench/peers/socketify_server.py`, socketify.py (uWebSockets in C++ "
        "under Python callbacks): upgrade, framing, close and pub/sub in C++, Python once per "
        "message and per open; fan-out with `App.publish`.",
        "- bun: `bench/peers/bun_server.js` on Bun from npm (`bench/peers/package.json`, "
        "installed into `bench/.build/bun` by this script), `Bun.serve` WebSocket handlers, "
        "fan-out with `server.publish`.",
        "- websockets, aiohttp: `bench/peers/websockets_server.py`, "
        "`bench/peers/aiohttp_server.py` on uvloop.",
        "- null: `bench/nullserver.c`, the floor: one epoll loop in C that does the upgrade, "
        "unmasks, echoes, publishes (one write per subscriber per loop iteration) and answers "
        "close and ping, with no UTF-8 check, limit or timer. What it costs is the kernel's "
        "loopback TCP; no WebSocket server can do with less, so a server's CPU per unit minus "
        "the null server's is what that server adds.",
        "",
        "## Method",
        "",
        "- Load generator: `bench/loadgen.c`, one thread, epoll, non-blocking sockets; "
        "every client frame masked with a random key, the upgrade response's "
        "`Sec-WebSocket-Accept` is verified.",
        f"- Each windowed figure is the best of {data.get('repeat', 1)} runs on the same "
        "server (noise only ever makes a server look slower); `all_runs` in results.json "
        "has every run's figure. Idle memory and the heartbeat are measured once.",
        "- Echo: each connection keeps exactly one text message of the given size in "
        "flight (send, wait for the echo, send again); latency is the round trip.",
        "- Connection churn: "
        f"{HANDSHAKE_CONCURRENCY} concurrent loops of connect, upgrade, masked close "
        "(1000), wait for the server's close frame, close the socket. One cycle = one "
        "connection. Closing right after the close frame leaves no per-connection "
        "state in the server process (any TIME_WAIT is the kernel's).",
        "- Idle memory: server VmRSS (all its processes) before and 1 s after "
        f"{IDLE_CONNS:,} connections completed their upgrade, divided by the count "
        "(after a 100-connection warm-up). Kernel socket buffers are not included. harpy "
        "also on `/state` (bench/app.py): each connection with a `data=` object and a topic, "
        "what a chat keeps per connection (the peers have no such route: n/a).",
        f"- Fan-out: N subscribers on `/sub` (each waits for `ok`), then one publisher "
        f"on `/pub` sends M {FANOUT_SIZE}-byte text messages back to back; measured from "
        "the first publish byte until every subscriber has received all M. Server CPU "
        "is sampled exactly at the window edges. A fan-out's repeats are rounds on the same "
        "subscribers (the loadgen's `--rounds`): the publisher sends its M messages again "
        "once every subscriber has all of the previous round's, each round its own window.",
        f"- Fan-out with compression: as fan-out, on `/subz` and `/pubz`, "
        f"{FANOUTZ_CASE[0]:,} subscribers x {FANOUTZ_CASE[1]} distinct messages of "
        f"{FANOUTZ_SIZE:,} bytes of JSON-like text (generated by the loadgen, the same bytes "
        "for every server, about 3.5x compressible on its own). Every upgrade offers "
        "`permessage-deflate; client_max_window_bits`; the publisher's own frames go "
        "uncompressed (RFC 7692 allows it). `deflate_negotiated` means every subscriber's and "
        "the publisher's 101 response carried a permessage-deflate extension; RSV1 frames "
        "are accepted only there. Bytes per delivery are all bytes the subscribers received "
        "in the window divided by the deliveries; the first "
        f"{FANOUTZ_VERIFY} subscribers inflate every message and compare it with what was "
        "published. harpy: `compression=True` (its default `server_no_context_takeover`: "
        "each message is compressed once and the frame shared); socketify: "
        "`SHARED_COMPRESSOR`, publish with `compress=True`; Bun: `perMessageDeflate: true`, "
        "`server.publish(topic, message, true)`; websockets: a separate "
        "server started with `compression=\"deflate\"` (library defaults: context "
        "takeover, 12-bit window, one compressor per connection, so `broadcast` compresses "
        "per connection); aiohttp: its default `compress=True`, one compressor per "
        "connection; picows and the null server have no permessage-deflate (n/a).",
        f"- Heartbeat: {IDLE_CONNS:,} connections; the loadgen answers every ping with a "
        "masked pong and prints its ping count each second after the last upgrade, and the "
        "server's CPU is read at those instants. Reported: CPU per 1 s window (min / median / "
        "max, and the median of windows in which no ping arrived), pings received, beats = "
        "pings / connections, CPU per beat = the whole span's server CPU / beats (idle CPU "
        "included), CPU per ping. 'No heartbeat': the idle-memory connections on `/echo` "
        f"with library defaults, windows from {IDLE_TICKS[0]} s to {IDLE_TICKS[1]} s. 'Every "
        f"{HEARTBEAT_INTERVAL:g} s': windows from {HEARTBEAT_TICKS[0]} s to "
        f"{HEARTBEAT_TICKS[1]} s; harpy `/hb` with `ping_interval` (`HARPY_BENCH_PING`), "
        "websockets `ping_interval`, aiohttp `heartbeat`, picows periodic auto-ping, the null "
        "server a ping to every connection on a timer; socketify and Bun: uWebSockets' "
        "automatic pings (`send_pings_automatically`, `sendPings`) with the idle timeout set "
        "from the interval (uWebSockets' timers tick every 4 s; socketify's idle timeout is "
        "at least 8 s). CPU per ping compares servers whatever their ping counts. "
        "'Everything else' CPU here includes the loadgen's.",
        "- CPU: server time is utime+stime of the server process tree (all threads); loadgen "
        "time is its own getrusage. 'Everything else' is CPU used by other processes and "
        "kernel threads in the window; when it is high the throughput numbers are noisy, "
        "while the server-CPU-per-message/connection/delivery numbers stay comparable.",
        f"- {LIMIT_MARK}: the load generator used {LOADGEN_LIMIT_PCT:.0f} % or more of its "
        "core in that window, so it (not the server) was the limit and the figure is a lower "
        "bound of the server's. Its CPU is mostly kernel time: on loopback, its send() also "
        "runs the TCP receive path for the server. Fan-out windows of a few tens of "
        "milliseconds (the fastest servers) carry more timing noise than the others.",
        "- Every workload gets a freshly started server. Peers run with library "
        "defaults except where noted: websockets with `compression=None` (except the "
        "compressed fan-out) and `max_size=16 MiB` (keepalive pings left on), picows with "
        "its default 16 KiB per-connection read buffer, aiohttp without access log, Bun with "
        "`maxPayloadLength` 16 MiB.",
        "",
        "## Running",
        "",
        "```",
        "make bench                                # all of it, best of 3 (this file)",
        "python bench/run.py --repeat 3 --write    # the same",
        "python bench/run.py --servers harpy,picows --workloads echo --quick --no-hotpath",
        "python bench/run.py --servers harpy,bun,null --workloads fanout,handshake",
        "python bench/run.py --report-only --write # re-render bench/results.json",
        "```",
        "",
        "Server logs: `bench/.build/logs/`.",
        "",
        "## Results",
        "",
        markdown(data),
    ]) + "\n" + keep


def kept_sections() -> str:
    """The parts of RESULTS.md that other scripts maintain (bench/workers_fanout.py's)."""
    begin, end = "<!-- workers-fanout:begin -->", "<!-- workers-fanout:end -->"
    try:
        text = RESULTS_MD.read_text()
    except OSError:
        return ""
    if begin not in text or end not in text:
        return ""
    return "\n" + text[text.index(begin):text.index(end) + len(end)] + "\n"


def run_hotpath() -> dict[str, Any]:
    """bench/hotpath.py --json: harpy's instructions per unit, or why they are missing."""
    if shutil.which("valgrind") is None:
        return {"error": "valgrind not found (Debian: apt-get install valgrind)"}
    print("hotpath: callgrind on the fake transport", file=sys.stderr)
    t0 = time.monotonic()
    done = subprocess.run([PY, str(BENCH / "hotpath.py"), "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        return {"error": f"hotpath.py exited with {done.returncode}: {done.stderr[-400:]}"}
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    out["elapsed_s"] = time.monotonic() - t0
    return out


# --------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", default=",".join(SERVERS))
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--quick", action="store_true",
                    help=f"{WINDOW[True][0]:g} s windows instead of {WINDOW[False][0]:g} s")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each windowed case N times on the same server, keep the best")
    ap.add_argument("--no-hotpath", action="store_true",
                    help="skip bench/hotpath.py (callgrind instruction counts)")
    ap.add_argument("--write", action="store_true", help="rewrite bench/RESULTS.md")
    ap.add_argument("--merge", action="store_true",
                    help="update an existing results.json instead of starting afresh")
    ap.add_argument("--report-only", action="store_true",
                    help="render results.json again without running anything")
    args = ap.parse_args()

    if args.report_only:
        data = json.loads(RESULTS_JSON.read_text())
    else:
        t0 = time.monotonic()
        servers = [s.strip() for s in args.servers.split(",") if s.strip()]
        workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
        workloads = [WORKLOAD_ALIASES.get(w, w) for w in workloads]
        unknown = [*(s for s in servers if s not in SERVERS),
                   *(w for w in workloads if w not in WORKLOADS)]
        if unknown:
            ap.error(f"unknown: {', '.join(unknown)}")
        build_loadgen()
        missing = {name: prepare(name) for name in servers}   # before the versions are read
        if not PIN:
            print("warning: taskset unavailable or single CPU; running unpinned", file=sys.stderr)
        data = {"machine": machine_info(), "quick": args.quick, "repeat": max(1, args.repeat),
                "date": time.strftime("%Y-%m-%d %H:%M:%S"), "results": {},
                # The machine is shared: its load before and after the run, with the numbers.
                "loadavg": {"start": os.getloadavg()}}
        old = json.loads(RESULTS_JSON.read_text()) if args.merge and RESULTS_JSON.exists() \
            else {}
        data["results"] = old.get("results", {})
        for name in servers:
            fresh = run_server(name, workloads, args.quick, max(1, args.repeat), missing[name])
            entry = data["results"].setdefault(name, {"cases": {}, "errors": []})
            entry["cases"].update(fresh["cases"])   # --merge keeps cases not re-run
            entry["errors"] = fresh["errors"]
            entry["elapsed_s"] = fresh["elapsed_s"]
        if args.no_hotpath:
            if old.get("hotpath"):
                data["hotpath"] = old["hotpath"]
        else:
            data["hotpath"] = run_hotpath()
        data["loadavg"]["end"] = os.getloadavg()
        data["elapsed_s"] = time.monotonic() - t0
        print(f"load average (1, 5, 15 min): start {data['loadavg']['start']}, "
              f"end {data['loadavg']['end']}; took {data['elapsed_s']:.0f} s", file=sys.stderr)
        RESULTS_JSON.write_text(json.dumps(data, indent=2) + "\n")

    print(markdown(data))
    if args.write:
        RESULTS_MD.write_text(results_md(data, kept_sections()))
        print(f"wrote {RESULTS_MD.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Benchmark orchestrator: WebSocket servers driven by bench/loadgen.c.

    python bench/run.py [--servers harpy,picows,websockets,aiohttp]
                        [--workloads echo,handshake,memory,fanout,fanoutz,heartbeat,json]
                        [--quick]
                        [--repeat N] [--write] [--merge] [--report-only]

Each server runs pinned to CPU 0 and the load generator to CPU 1 (when
taskset works and there are two CPUs), so the two never compete for a core.
Every workload gets a freshly started server. Raw numbers go to
bench/results.json, a Markdown summary to stdout (and bench/RESULTS.md with
--write).
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
    "websockets": [PY, str(BENCH / "peers" / "websockets_server.py"), *_ADDR],
    "aiohttp": [PY, str(BENCH / "peers" / "aiohttp_server.py"), *_ADDR],
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

ECHO_SIZES = [32, 4096]
ECHO_CONNS = [1, 64, 512]
HANDSHAKE_CONCURRENCY = 32   # enough in-flight upgrades to keep one core busy
IDLE_CONNS = 10_000
FANOUT_CASES = [(1_000, 100), (10_000, 10)]   # (subscribers, messages)
FANOUT_SIZE = 32
# Fan-out with permessage-deflate: 1 KiB of compressible text per message (the loadgen's
# "--payload text": JSON-like records, the same bytes for every server).
FANOUTZ_CASE = (1_000, 100)
FANOUTZ_SIZE = 1024
FANOUTZ_VERIFY = 16   # subscribers whose messages are inflated and compared
NO_DEFLATE = {"picows": "picows has no permessage-deflate"}
# JSON mode (harpy's json=True routes), with orjson and with the standard library: an echo
# of a JSON object parsed and serialised again, and a fan-out of one parsed and serialised
# once for every subscriber (the loadgen's "--payload json": {"k":"xxx..."} of SIZE bytes).
JSON_ECHO = (256, 64)   # (size, connections)
JSON_FANOUT = (1_000, 100)   # (subscribers, messages)
JSON_SIZE = 256
JSON_LIBS = ("orjson", "stdlib")
# Heartbeat cost: IDLE_CONNS connections held HEARTBEAT_HOLD s after the last upgrade; the
# 1 s windows between loadgen ticks HEARTBEAT_TICKS[0] and [1] are measured.
HEARTBEAT_INTERVAL = 5.0
HEARTBEAT_HOLD = 14
HEARTBEAT_TICKS = (1, 13)

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


def build_loadgen() -> None:
    """Builds the loadgen, with zlib (to inflate and verify compressed messages) if present."""
    if LOADGEN.exists() and LOADGEN.stat().st_mtime >= LOADGEN_SRC.stat().st_mtime:
        return
    BUILD.mkdir(parents=True, exist_ok=True)
    base = ["gcc", "-O2", "-o", str(LOADGEN), str(LOADGEN_SRC)]
    cmds = [base]
    if Path("/usr/include/zlib.h").exists():
        cmds.insert(0, [*base[:2], "-DHAVE_ZLIB", *base[2:], "-lz"])
    for i, cmd in enumerate(cmds):
        print("building loadgen:", " ".join(cmd), file=sys.stderr)
        try:
            subprocess.run(cmd, check=True, timeout=120)
            return
        except subprocess.CalledProcessError:
            if i == len(cmds) - 1:
                raise
            print("building without zlib instead", file=sys.stderr)


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
            "for p in ('harpy', 'picows', 'websockets', 'aiohttp', 'uvloop'):\n"
            "    try: v[p] = m.version(p)\n"
            "    except Exception: v[p] = None\n"
            "print(json.dumps({'python': platform.python_version(), 'versions': v}))")
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    info = json.loads(out.stdout) if out.returncode == 0 else {"python": None, "versions": {}}
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
    """Samples server CPU (and system-wide busy time) at loadgen's MARK lines."""

    def __init__(self, server: Server, sync: bool = False) -> None:
        self.server, self.sync = server, sync
        self.cpu0: float | None = None
        self.cpu1: float | None = None
        self.busy0: float | None = None
        self.busy1: float | None = None

    def __call__(self, line: str, p: subprocess.Popen[bytes]) -> None:
        if line == "MARK start":
            self.cpu0, self.busy0 = self.server.cpu(), system_busy_seconds()
        elif line == "MARK end":
            self.cpu1, self.busy1 = self.server.cpu(), system_busy_seconds()
        else:
            return
        if self.sync and p.stdin:
            try:
                p.stdin.write(b"go\n")
                p.stdin.flush()
            except BrokenPipeError:
                pass

    def server_cpu(self) -> float | None:
        if self.cpu0 is None or self.cpu1 is None:
            return None
        return self.cpu1 - self.cpu0

    def busy(self) -> float | None:
        if self.busy0 is None or self.busy1 is None:
            return None
        return self.busy1 - self.busy0


def _finish(res: dict[str, Any], win: Window, seconds: float, lg_cpu: float) -> dict[str, Any]:
    """Adds CPU-share fields common to all windowed workloads."""
    srv = win.server_cpu()
    res["server_cpu_s"] = srv
    res["loadgen_cpu_s"] = lg_cpu
    res["window_s"] = seconds
    if seconds > 0:
        res["server_cpu_pct"] = None if srv is None else 100 * srv / seconds
        res["loadgen_cpu_pct"] = 100 * lg_cpu / seconds
        busy = win.busy()
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
    duration, warmup = (2.0, 0.5) if quick else (5.0, 1.0)
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
    duration = 2.0 if quick else 5.0
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


def wl_idle(srv: Server, path: str = "/echo") -> dict[str, Any]:
    base = ["idle", "--host", HOST, "--port", str(srv.port), "--path", path]
    # warm-up: one-off lazy initialisation must not be billed per connection
    run_loadgen([*base, "--conns", "100", "--hold", "0"], timeout=60)
    time.sleep(0.5)
    rss0, cpu0 = srv.rss(), srv.cpu()
    seen: dict[str, Any] = {}

    def on_line(line: str, p: subprocess.Popen[bytes]) -> None:
        if line.startswith("READY"):
            seen["ready"] = int(line.split()[1])
            seen["cpu_established"] = srv.cpu() - cpu0
            time.sleep(1.0)   # let the server finish any post-handshake work
            seen["rss1"] = srv.rss()
            p.send_signal(signal.SIGTERM)

    res, diag = run_loadgen([*base, "--conns", str(IDLE_CONNS), "--hold", "120"],
                            timeout=240, on_line=on_line)
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
    return res


def wl_fanout(srv: Server, subs: int, messages: int, size: int = FANOUT_SIZE,
              deflate: bool = False, json_mode: bool = False) -> dict[str, Any]:
    win = Window(srv, sync=True)
    args = ["fanout", "--host", HOST, "--port", str(srv.port), "--subs", str(subs),
            "--messages", str(messages), "--size", str(size), "--timeout", "60", "--sync"]
    if json_mode:
        args += ["--payload", "json", "--verify", str(FANOUTZ_VERIFY),
                 "--sub-path", "/subj", "--pub-path", "/pubj"]
    if deflate:
        args += ["--deflate", "--payload", "text", "--verify", str(FANOUTZ_VERIFY),
                 "--sub-path", "/subz", "--pub-path", "/pubz"]
    res, diag = run_loadgen(args, timeout=200, on_line=win)
    if res is None:
        return {"error": diag}
    _finish(res, win, res["elapsed_s"], res["loadgen_cpu_window_s"])
    srv_cpu = res.get("server_cpu_s")
    if res["deliveries"] and srv_cpu is not None:
        res["server_us_per_delivery"] = 1e6 * srv_cpu / res["deliveries"]
    if res["missing"] or res["subs_ok"] < subs or not res["publisher_ok"]:
        res["error"] = (f"{res['subs_ok']}/{subs} subscribed, publisher_ok={res['publisher_ok']}, "
                        f"{res['missing']} deliveries missing, {res['handshake_fail']} upgrades "
                        f"failed, {res['connect_fail']} connects failed {diag}").strip()
    elif deflate and not res.get("deflate_negotiated"):
        res["error"] = (f"permessage-deflate not negotiated ({res.get('deflate_subs')}/"
                        f"{res['subs_ok']} subscribers agreed) {diag}").strip()
    elif res.get("errors"):
        res["error"] = (f"{res['errors']} errors (protocol {res['protocol_errors']}, "
                        f"size {res['size_mismatch']}, content {res['content_mismatch']}) "
                        f"{diag}").strip()
    return res


def wl_heartbeat(srv: Server, path: str, interval: float) -> dict[str, Any]:
    """IDLE_CONNS connections held open; server CPU read at each of the loadgen's 1 s ticks."""
    ticks: dict[int, tuple[float, float, float, int]] = {}   # k: (time, cpu, busy, pings)

    def on_line(line: str, p: subprocess.Popen[bytes]) -> None:
        if line.startswith("TICK"):
            _, k, pings = line.split()
            ticks[int(k)] = (time.monotonic(), srv.cpu(), system_busy_seconds(), int(pings))

    res, diag = run_loadgen(
        ["idle", "--host", HOST, "--port", str(srv.port), "--path", path,
         "--conns", str(IDLE_CONNS), "--hold", str(HEARTBEAT_HOLD)],
        timeout=HEARTBEAT_HOLD + 240, on_line=on_line)
    if res is None:
        return {"error": diag}
    first, last = HEARTBEAT_TICKS
    if first not in ticks or last not in ticks:
        return {**res, "error": f"loadgen ticks {sorted(ticks)} lack {first}..{last} {diag}"}
    windows = []
    for k in range(first, last):
        (t0, c0, _, p0), (t1, c1, _, p1) = ticks[k], ticks[k + 1]
        windows.append({"s": t1 - t0, "cpu_ms": 1e3 * (c1 - c0), "pings": p1 - p0})
    (t0, c0, b0, p0), (t1, c1, b1, p1) = ticks[first], ticks[last]
    span, cpu, pings = t1 - t0, c1 - c0, p1 - p0
    rates = [w["cpu_ms"] / w["s"] for w in windows]   # ms of CPU per second
    quiet = [r for r, w in zip(rates, windows, strict=True) if not w["pings"]]
    ok = res["ok"]
    beats = pings / ok if ok else 0.0
    res.update(
        path=path, ping_interval=interval or None, window_s=span, server_cpu_s=cpu,
        windows=windows, cpu_ms_per_s_min=min(rates),
        cpu_ms_per_s_median=statistics.median(rates), cpu_ms_per_s_max=max(rates),
        quiet_windows=len(quiet),
        quiet_ms_per_s_median=statistics.median(quiet) if quiet else None,
        pings_window=pings, beats=beats,
        cpu_ms_per_beat=1e3 * cpu / beats if beats >= 0.5 else None,
        us_per_ping=1e6 * cpu / pings if pings else None,
        # everything but the server (the loadgen only answers pings here)
        background_cpu_pct=max(0.0, 100 * ((b1 - b0) - cpu) / span) if span > 0 else None)
    problems = []
    if ok < IDLE_CONNS or res["still_open"] < ok:
        problems.append(f"{ok}/{IDLE_CONNS} established, {res['still_open']} still open at the end")
    if interval and not pings:
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


def plan(name: str, workloads: list[str], quick: bool) -> list[Group]:
    groups: list[Group] = []
    if "echo" in workloads:
        cases: list[Case] = [
            (key, partial(wl_echo, size=kw["size"], conns=kw["conns"], quick=quick))
            for key, kw in echo_cases()]
        groups.append(Group("echo", cases))
    if "handshake" in workloads:
        groups.append(Group("handshake", [("handshake", partial(wl_handshake, quick=quick))]))
    if "memory" in workloads:
        groups.append(Group("idle", [("idle_10k", wl_idle)]))
        # What a chat keeps per connection besides: bench/app.py's /state (a data= object and
        # a topic); another server keeps nothing there.
        groups.append(Group("idle_state", [("idle_10k_state", partial(wl_idle, path="/state"))],
                            skip="" if name.startswith("harpy") else "no /state route"))
    if "fanout" in workloads:
        for subs, msgs in FANOUT_CASES:
            key = f"fanout_{subs}x{msgs}"
            groups.append(Group(key, [(key, partial(wl_fanout, subs=subs, messages=msgs))]))
    if "fanoutz" in workloads:
        subs, msgs = FANOUTZ_CASE
        key = f"fanoutz_{subs}x{msgs}"
        fn = partial(wl_fanout, subs=subs, messages=msgs, size=FANOUTZ_SIZE, deflate=True)
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
                                     json_mode=True)),
            ], env={"HARPY_BENCH_JSON": lib},
                skip="" if name.startswith("harpy") else "JSON mode is harpy's"))
    if "heartbeat" in workloads:
        groups.append(Group("heartbeat_off", [
            ("heartbeat_off", partial(wl_heartbeat, path="/echo", interval=0.0))]))
        every = f"{HEARTBEAT_INTERVAL:g}"
        hb = partial(wl_heartbeat, interval=HEARTBEAT_INTERVAL)
        if name == "harpy":
            groups.append(Group("heartbeat_on", [("heartbeat_on", partial(hb, path="/hb"))],
                                env={"HARPY_BENCH_PING": every}))
        else:
            groups.append(Group("heartbeat_on", [("heartbeat_on", partial(hb, path="/echo"))],
                                args=("--ping-interval", every)))
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


def run_server(name: str, workloads: list[str], quick: bool, repeat: int = 1) -> dict[str, Any]:
    out: dict[str, Any] = {"cases": {}, "errors": []}
    for group in plan(name, workloads, quick):
        tag, cases = group.tag, group.cases
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
                for _ in range(1 if key.startswith(("idle", "heartbeat")) else repeat):
                    try:
                        res = fn(srv)
                    except Exception as exc:  # noqa: BLE001 - keep going with other cases
                        res = {"error": f"{type(exc).__name__}: {exc}"}
                    if not srv.alive():
                        res.setdefault("error", f"server died during the run: {srv.log_tail()}")
                    runs.append(res)
                    if not srv.alive():
                        break
                res = best_of(key, runs)
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
        time.sleep(0.5)
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
    out: list[str] = []

    def cpu_cell(r: dict[str, Any] | None) -> str:
        if not r or r.get("na"):
            return "n/a"
        if r.get("loadgen_cpu_pct") is None:
            return "failed" if r.get("error") else "-"
        srv = r.get("server_cpu_pct")
        bg = r.get("background_cpu_pct")
        cell = f"{f'{srv:.0f}' if srv is not None else '-'} / {r['loadgen_cpu_pct']:.0f}"
        return cell + (f" / {bg:.0f}" if bg is not None else "")

    if echo:
        out += _table("Echo throughput (messages/s, higher is better)", echo, servers, results,
                      lambda r: _cell(r, "msgs_per_s"), "msgs_per_s")
        out += _table("Echo server CPU per message (us, lower is better)", echo, servers,
                      results, lambda r: _cell(r, "server_us_per_msg"), "server_us_per_msg")
        out += _table("Echo round-trip latency p50 / p99 (us, lower is better)", echo, servers,
                      results, lambda r: "failed" if not r or "lat_p50_us" not in r else
                      f"{r['lat_p50_us']:.0f} / {r['lat_p99_us']:.0f}")
    if hs:
        out += _table("Handshakes/s (upgrade + close handshake, higher is better)", hs, servers,
                      results, lambda r: _cell(r, "handshakes_per_s"), "handshakes_per_s")
        out += _table("Server CPU per handshake (us, lower is better)", hs, servers, results,
                      lambda r: _cell(r, "server_us_per_handshake"), "server_us_per_handshake")
    if idle:
        out += _table("Server RSS per idle connection (KiB, lower is better)", idle, servers,
                      results, lambda r: _cell(r, "kib_per_conn"), "kib_per_conn")
    if fan:
        out += _table("Fan-out deliveries/s (higher is better)", fan, servers, results,
                      lambda r: _cell(r, "deliveries_per_s"), "deliveries_per_s")
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
                           f"from {HEARTBEAT_TICKS[0]} s to {HEARTBEAT_TICKS[1]} s after the "
                           "last upgrade", heartbeat_rows(), servers, results)
    windowed = echo + hs + fan + fanz
    if windowed:
        out += _table("CPU during the measured window, % of one core: server / loadgen / "
                      "everything else (other processes, kernel threads)",
                      windowed, servers, results, cpu_cell)
    if idle:
        out += _table("Idle: establishing 10,000 connections (server CPU s / loadgen CPU s)",
                      idle, servers, results,
                      lambda r: "n/a" if r and r.get("na") else
                      "failed" if not r or r.get("server_cpu_s") is None else
                      f"{r['server_cpu_s']:.2f} / {r.get('loadgen_cpu_s', 0):.2f}")
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


def results_md(data: dict[str, Any]) -> str:
    m = data["machine"]
    v = m.get("versions", {})
    mode = ("quick (2 s echo/handshake windows)" if data.get("quick")
            else "full (5 s windows, 1 s warm-up)")
    if data.get("repeat", 1) > 1:
        mode += f", best of {data['repeat']}"
    return "\n".join([
        "# WebSocket server benchmarks",
        "",
        "Generated by `python bench/run.py --write`; raw numbers in `bench/results.json`.",
        "",
        "## Machine",
        "",
        f"- CPUs: {m['nproc']} x {m['cpu_model']}",
        f"- Kernel: {m['kernel']}",
        f"- Python: {m['python']}",
        "- Versions: " + ", ".join(f"{k} {v.get(k) or 'n/a'}" for k in
                                    ("harpy", "picows", "websockets", "aiohttp", "uvloop")),
        "- Pinning: " + ("server on CPU 0, load generator on CPU 1 (taskset)" if m.get("pinned")
                          else "none (taskset unavailable or a single CPU)"),
        f"- Run: {mode}, {data.get('date', '')}, tree {m.get('git') or 'unknown'}",
        "- Load average (1, 5, 15 min) at the start and the end of the run: "
        + " / ".join(", ".join(f"{x:.2f}" for x in data.get("loadavg", {}).get(k, ()))
                     for k in ("start", "end")),
        "",
        "## Method",
        "",
        "- Load generator: `bench/loadgen.c`, one thread, epoll, non-blocking sockets; "
        "every client frame masked with a random key, the upgrade response's "
        "`Sec-WebSocket-Accept` is verified.",
        "- Echo: each connection keeps exactly one text message of the given size in "
        "flight (send, wait for the echo, send again); latency is the round trip.",
        "- Handshakes: "
        f"{HANDSHAKE_CONCURRENCY} concurrent loops of connect, upgrade, masked close "
        "(1000), wait for the server's close frame, close the socket. One cycle = one "
        "handshake. Closing right after the close frame leaves no per-connection "
        "state in the server process (any TIME_WAIT is the kernel's).",
        "- Idle memory: server VmRSS (all its processes) before and 1 s after "
        f"{IDLE_CONNS:,} connections completed their upgrade, divided by the count "
        "(after a 100-connection warm-up). Kernel socket buffers are not included.",
        f"- Fan-out: N subscribers on `/sub` (each waits for `ok`), then one publisher "
        f"on `/pub` sends M {FANOUT_SIZE}-byte text messages back to back; measured from "
        "the first publish byte until every subscriber has received all M. Server CPU "
        "is sampled exactly at the window edges.",
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
        "each message is compressed once and the frame shared); websockets: a separate "
        "server started with `compression=\"deflate\"` (library defaults: context "
        "takeover, 12-bit window, one compressor per connection, so `broadcast` compresses "
        "per connection); aiohttp: its default `compress=True`, one compressor per "
        "connection; picows has no permessage-deflate (n/a).",
        f"- Heartbeat: {IDLE_CONNS:,} connections, held {HEARTBEAT_HOLD} s after the last "
        "upgrade; the loadgen answers every ping with a masked pong and prints its ping "
        "count each second, and the server's CPU is read at those instants. Reported: CPU "
        f"per 1 s window over the {HEARTBEAT_TICKS[1] - HEARTBEAT_TICKS[0]} windows from "
        f"{HEARTBEAT_TICKS[0]} s to {HEARTBEAT_TICKS[1]} s (min / median / max, and the "
        "median of windows in which no ping arrived), pings received, beats = pings / "
        "connections, CPU per beat = the whole span's server CPU / beats (idle CPU "
        "included). 'No heartbeat': `/echo` with library defaults (websockets' default "
        "20 s keepalive does not fire within the span). Every "
        f"{HEARTBEAT_INTERVAL:g} s: harpy `/hb` with `ping_interval` "
        "(`HARPY_BENCH_PING`), websockets `ping_interval`, aiohttp `heartbeat`, picows "
        "periodic auto-ping. 'Everything else' CPU here includes the loadgen's.",
        "- CPU: server time is utime+stime of the server process tree; loadgen time "
        "is its own getrusage. A loadgen below 100 % of one core had headroom, so "
        "the server was the bottleneck. 'Everything else' is CPU used by other "
        "processes and kernel threads in the window; when it is high the throughput "
        "numbers are noisy, while the server-CPU-per-message/handshake/delivery "
        "numbers stay comparable.",
        "- The load generator's CPU is mostly kernel time: on loopback, its send() "
        "also runs the TCP receive path for the server. In the busiest echo cases it "
        "sits around 70-80 % of a core; a value near 100 % means that server's "
        "number is a lower bound. Fan-out windows of a few tens of milliseconds "
        "(the fastest servers) carry more timing noise than the others.",
        "- Every workload gets a freshly started server. Peers run with library "
        "defaults except where noted: websockets with `compression=None` (except the "
        "compressed fan-out) and `max_size=16 MiB` (keepalive pings left on), picows with "
        "its default 16 KiB per-connection read buffer, aiohttp without access log.",
        "",
        "## Running",
        "",
        "```",
        "python bench/run.py                       # all servers, all workloads",
        "python bench/run.py --servers harpy,picows --workloads echo --quick",
        "python bench/run.py --servers harpy,websockets --workloads fanoutz,heartbeat",
        "python bench/run.py --repeat 3 --write     # best of 3, rewrite this file",
        "python bench/run.py --report-only --write # re-render bench/results.json",
        "```",
        "",
        "Server logs: `bench/.build/logs/`.",
        "",
        "## Results",
        "",
        markdown(data),
    ]) + "\n"


# --------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", default=",".join(SERVERS))
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--quick", action="store_true", help="2 s echo/handshake windows")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each windowed case N times on the same server, keep the best")
    ap.add_argument("--write", action="store_true", help="rewrite bench/RESULTS.md")
    ap.add_argument("--merge", action="store_true",
                    help="update an existing results.json instead of starting afresh")
    ap.add_argument("--report-only", action="store_true",
                    help="render results.json again without running anything")
    args = ap.parse_args()

    if args.report_only:
        data = json.loads(RESULTS_JSON.read_text())
    else:
        servers = [s.strip() for s in args.servers.split(",") if s.strip()]
        workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
        workloads = [WORKLOAD_ALIASES.get(w, w) for w in workloads]
        unknown = [*(s for s in servers if s not in SERVERS),
                   *(w for w in workloads if w not in WORKLOADS)]
        if unknown:
            ap.error(f"unknown: {', '.join(unknown)}")
        build_loadgen()
        if not PIN:
            print("warning: taskset unavailable or single CPU; running unpinned", file=sys.stderr)
        data = {"machine": machine_info(), "quick": args.quick, "repeat": max(1, args.repeat),
                "date": time.strftime("%Y-%m-%d %H:%M:%S"), "results": {},
                # The machine is shared: its load before and after the run, with the numbers.
                "loadavg": {"start": os.getloadavg()}}
        if args.merge and RESULTS_JSON.exists():
            data["results"] = json.loads(RESULTS_JSON.read_text()).get("results", {})
        for name in servers:
            fresh = run_server(name, workloads, args.quick, max(1, args.repeat))
            entry = data["results"].setdefault(name, {"cases": {}, "errors": []})
            entry["cases"].update(fresh["cases"])   # --merge keeps cases not re-run
            entry["errors"] = fresh["errors"]
        data["loadavg"]["end"] = os.getloadavg()
        print(f"load average (1, 5, 15 min): start {data['loadavg']['start']}, "
              f"end {data['loadavg']['end']}", file=sys.stderr)
        RESULTS_JSON.write_text(json.dumps(data, indent=2) + "\n")

    print(markdown(data))
    if args.write:
        RESULTS_MD.write_text(results_md(data))
        print(f"wrote {RESULTS_MD.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

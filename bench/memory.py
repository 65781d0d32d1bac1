#!/usr/bin/env python3
"""Where the memory of an idle connection goes, item by item.

    python bench/memory.py [--conns N] [--path /echo] [--sample K]

A harpy server (``bench/app.py``, on uvloop as the CLI runs it) holds N connections opened by
``bench/loadgen.c`` (``idle`` mode, as ``bench/run.py``'s idle workload), then reports:

* **objects**: for K connections, every object reachable from the user's ``ws`` (the
  connection, the transport, containers, strings) that belongs to that connection alone (reached
  from none of the other K-1): its path from ``ws``, type and ``sys.getsizeof``, averaged;
* **entries**: what the shared structures that index the N connections (the server's registry,
  the timer wheel, the app's connections by route, the topics) grew by, per connection;
* **tracemalloc**: what was allocated while the N connections opened and is still held, per
  connection, by source line (Python objects and uvloop's C buffers alike);
* **RSS**: the process's resident memory growth per connection (with tracemalloc's own
  overhead in it: ``bench/run.py``'s idle workload gives the figure without).

Sizes are those of CPython's objects (``sys.getsizeof``, which counts the GC header); the
allocator's rounding and the kernel's socket buffers are not in them.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import os
import re
import sys
import time
import tracemalloc
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import harpy  # noqa: E402
from bench.run import LOADGEN, build_loadgen, raise_nofile  # noqa: E402
from harpy.server import Connection  # noqa: E402

#: Objects never counted as a connection's own (shared by design, or code).
_SHARED_TYPES = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.CodeType,
    types.FrameType,
    asyncio.AbstractEventLoop,
)


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _children(obj: Any) -> Iterator[tuple[str, Any]]:
    """(label, child) pairs: slot and attribute names, dict keys, sequence indexes."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield "{key}", key
            yield f"[{type(key).__name__}]", value
        return
    if isinstance(obj, (list, tuple, set, frozenset, collections.deque)):
        for item in obj:
            yield "[]", item
        return
    # What the collector sees it hold (the truth for C objects: a compiled class's private
    # fields, uvloop's transport), labelled by slot name where there is one.
    referents = {id(child): child for child in gc.get_referents(obj)}
    seen: set[str] = set()
    for cls in type(obj).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if name in seen or name in ("__dict__", "__weakref__"):
                continue
            seen.add(name)
            try:
                child = object.__getattribute__(obj, name)
            except AttributeError:
                continue
            if referents.pop(id(child), None) is not None:
                yield "." + name, child
    instance_dict = getattr(obj, "__dict__", None)
    if isinstance(instance_dict, dict):
        referents.pop(id(instance_dict), None)
        yield ".__dict__", instance_dict
    if isinstance(obj, types.MethodType):
        yield ".__self__", obj.__self__
        return
    for child in referents.values():
        yield f"<{type(child).__name__}>", child


def reachable(root: Any, stop: set[int]) -> dict[int, tuple[str, Any]]:
    """Every object reachable from ``root`` (not through ``stop`` or shared kinds), with the
    path it was first reached by."""
    found: dict[int, tuple[str, Any]] = {id(root): ("ws", root)}
    todo = [("ws", root)]
    while todo:
        path, obj = todo.pop()
        for label, child in _children(obj):
            key = id(child)
            if key in found or key in stop or child is None or isinstance(child, _SHARED_TYPES):
                continue
            found[key] = (path + label, child)
            todo.append((path + label, child))
    return found


def _generic(path: str) -> str:
    """A path with a connection's own keys taken out: one row per kind of item."""
    return re.sub(r"\[\]|\{key\}", "[]", path)


def own_objects(sockets: list[Any], stop: set[int]) -> list[tuple[str, str, float, float]]:
    """(path, type, objects, bytes) per connection of what each sampled ``ws`` holds alone."""
    reached = [reachable(ws, stop) for ws in sockets]
    owners = collections.Counter(key for found in reached for key in found)
    rows: dict[tuple[str, str], list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    for found in reached:
        for key, (path, obj) in found.items():
            if owners[key] != 1:
                continue
            row = rows[(_generic(path), type(obj).__name__)]
            row[0] += 1
            row[1] += sys.getsizeof(obj)
    n = len(sockets)
    out = [(path, kind, c / n, b / n) for (path, kind), (c, b) in rows.items()]
    return sorted(out, key=lambda r: -r[3])


def indexes(ws: Any, conn: Any, n: int) -> list[tuple[str, float]]:
    """The shared dicts and sets that hold ``ws`` or its connection (the registry, the
    app's connections by route, the topics), and what they keep for this ``ws`` alone (its
    set of topic names): bytes per connection."""
    out = []
    seen: set[int] = set()
    for target, name in ((ws, "ws"), (conn, "connection")):
        for holder in gc.get_referrers(target):
            if not isinstance(holder, (dict, set)) or id(holder) in seen:
                continue
            if len(holder) >= n // 2:
                seen.add(id(holder))
                kind = type(holder).__name__
                holds = "ws" if (ws in holder) else name
                out.append((f"a {kind} of {len(holder):,} holding the {holds}",
                            sys.getsizeof(holder) / n))
                value = holder.get(ws) if isinstance(holder, dict) else None
                if isinstance(value, (set, frozenset, dict, list)):
                    items = ", ".join(sorted(map(repr, value)))[:40]
                    out.append((f"its value for the ws: a {type(value).__name__} ({items})",
                                sys.getsizeof(value)))
    # The timer wheel's slots hold connections in many small sets.
    slot_sets = [s for s in gc.get_referrers(conn) if isinstance(s, set) and len(s) < n // 2]
    if slot_sets:
        total = sum(sys.getsizeof(s) for s in _all_slot_sets(slot_sets[0]))
        out.append(("timer wheel slots (small sets of connections)", total / n))
    return out


def _all_slot_sets(one: set[Any]) -> list[set[Any]]:
    for holder in gc.get_referrers(one):
        if isinstance(holder, dict) and all(isinstance(k, int) for k in holder):
            return list(holder.values())
    return [one]


async def hold(args: argparse.Namespace) -> None:
    from bench.app import app

    await app.listen("127.0.0.1", 0)
    port = app.port
    loadgen = [str(LOADGEN), "idle", "--host", "127.0.0.1", "--port", str(port),
               "--path", args.path]
    # warm-up: what is made once (caches, the first connection's lazy imports)
    warm = await asyncio.create_subprocess_exec(
        *loadgen, "--conns", "100", "--hold", "0",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        preexec_fn=raise_nofile)
    await warm.wait()
    await asyncio.sleep(0.5)
    gc.collect()
    rss0 = rss_kib()
    tracemalloc.start(args.frames)
    before = tracemalloc.take_snapshot()
    proc = await asyncio.create_subprocess_exec(
        *loadgen, "--conns", str(args.conns), "--hold", "600",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        preexec_fn=raise_nofile)
    assert proc.stderr is not None
    opened = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = await asyncio.wait_for(proc.stderr.readline(), 120)
        if not line:
            break
        if line.startswith(b"READY"):
            opened = int(line.split()[1])
            break
    await asyncio.sleep(1.0)
    gc.collect()
    after = tracemalloc.take_snapshot()
    rss1 = rss_kib()
    tracemalloc.stop()
    n = len(app.connections)
    report(app, args, opened, n, rss1 - rss0, before, after)
    proc.terminate()
    await proc.wait()
    await app.shutdown(1.0)


def report(app: harpy.App, args: argparse.Namespace, opened: int, n: int, rss: int,
           before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> None:
    print(f"# {n:,} connections open on {args.path} ({opened:,} reported by the loadgen)\n")
    sockets = list(app.connections)[: args.sample]
    conns = [c for c in gc.get_referents(*sockets) if isinstance(c, Connection)]
    stop = {id(app), id(app.hub), id(app.connections)}
    for conn in conns[:1]:
        for obj in gc.get_referents(conn):
            if type(obj).__name__ in ("Server", "Host"):
                stop.add(id(obj))
    for found in gc.get_referrers(*sockets[:1]):
        if isinstance(found, dict) and len(found) >= n // 2:
            stop.add(id(found))
    print("## objects each connection holds alone (sample of "
          f"{len(sockets)}), per connection\n")
    print("| path from ws | type | objects | bytes |")
    print("|---|---|---:|---:|")
    total = 0.0
    rows = own_objects(sockets, stop)
    for path, kind, count, size in rows:
        total += size
        print(f"| `{path}` | {kind} | {count:.2f} | {size:.0f} |")
    print(f"| **total** | | {sum(r[2] for r in rows):.1f} | **{total:.0f}** |\n")

    print("## shared structures indexing the connections, per connection\n")
    print("| structure | bytes |")
    print("|---|---:|")
    shared = 0.0
    if conns:
        for name, per in indexes(sockets[0], conns[0], n):
            shared += per
            print(f"| {name} | {per:.0f} |")
    print(f"| **total** | **{shared:.0f}** |\n")

    stats = after.compare_to(before, "lineno")
    held = sum(s.size_diff for s in stats)
    print(f"## tracemalloc: held after the upgrades, per connection: {held / n:.0f} B\n")
    print("| where allocated | bytes | blocks |")
    print("|---|---:|---:|")
    for stat in stats[: args.top]:
        if abs(stat.size_diff) < n:  # under 1 B per connection
            continue
        frame = stat.traceback[0]
        name = os.path.relpath(frame.filename, ROOT) if frame.filename.startswith(
            str(ROOT)) else frame.filename.rsplit("site-packages/", 1)[-1]
        print(f"| {name}:{frame.lineno} | {stat.size_diff / n:.0f} | "
              f"{stat.count_diff / n:.2f} |")
    print(f"\n## RSS growth (with tracemalloc on): {rss * 1024 / n:.0f} B per connection")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conns", type=int, default=10_000)
    parser.add_argument("--path", default="/echo")
    parser.add_argument("--sample", type=int, default=50)
    parser.add_argument("--frames", type=int, default=1)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    build_loadgen()
    raise_nofile()
    try:
        import uvloop
    except ImportError:
        asyncio.run(hold(args))
    else:
        uvloop.run(hold(args))


if __name__ == "__main__":
    main()

"""The README read as a user reads it: its Python examples run as written, served and talked
to by a real client, and its table of limits gives the options' real defaults."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import runpy
import socket
import subprocess
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

import harpy
from harpy.app.options import RouteOptions
from harpy.server import default_output_budget
from tests.e2e.test_workers import supervised
from tests.helpers import recv, serve
from tests.timing import TIMEOUT, scaled

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"^```python\n(.*?)^```", README, flags=re.MULTILINE | re.DOTALL)


def block(containing: str) -> str:
    [found] = [b for b in BLOCKS if containing in b]
    return found


def load(source: str, folder: Path, name: str) -> harpy.App:
    """The block as a module file of ``folder``, run as an import (not as ``__main__``)."""
    path = folder / f"{name}.py"
    path.write_text(source)
    app = runpy.run_path(str(path), run_name=name)["app"]
    assert isinstance(app, harpy.App)
    return app


def test_every_python_block_is_one_of_the_examples_tested_here() -> None:
    # A new block needs a test below; each test finds its block by a line of it.
    markers = ["# app.py", "# mymodule.py", '"/ws/chat"', "def authenticate", '"/rooms"',
               "# test_app.py"]  # fmt: skip
    assert sorted(BLOCKS) == sorted(block(m) for m in markers)


async def test_the_first_app_echoes_and_its_test_passes(tmp_path: Path) -> None:
    app = load(block("# app.py"), tmp_path, "app")
    async with serve(app) as url, connect(f"{url}/echo") as client:
        await client.send("hi")
        assert await recv(client) == "hi"
    # The README's test, beside app.py, run as pytest would run the coroutine.
    (tmp_path / "test_app.py").write_text(block("# test_app.py"))
    runner = "import asyncio, runpy; asyncio.run(runpy.run_path('test_app.py')['test_echo']())"
    done = subprocess.run(
        [sys.executable, "-c", runner], cwd=tmp_path, capture_output=True, text=True,
        timeout=scaled(30.0), env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_the_fuller_example_serves_on_the_port_the_command_line_gives(
    tmp_path: Path,
) -> None:
    (tmp_path / "mymodule.py").write_text(block("# mymodule.py"))
    port = free_port()
    async with supervised(
        "mymodule:app", "--port", str(port), env={"PYTHONPATH": str(tmp_path)}
    ) as server:
        [url] = await server.wait_for(r"listening on (ws://\S+)", timeout=scaled(15.0))
        assert url == f"ws://127.0.0.1:{port}"
        async with connect(f"{url}/room/lobby?name=ann") as client:
            assert await recv(client) == "welcome ann to lobby"
            await client.send("hello")
            assert await recv(client) == "hello"


async def test_the_rooms_example(tmp_path: Path) -> None:
    app = load(block('"/ws/chat"'), tmp_path, "rooms")
    async with (
        serve(app) as url,
        connect(f"{url}/ws/chat") as ann,
        connect(f"{url}/ws/chat") as bob,
    ):
        await ann.send(json.dumps({"type": "join-room", "room": "r"}))
        await bob.send(json.dumps({"type": "join-room", "room": "r"}))
        assert json.loads(await recv(ann)) == {"type": "user-joined", "room": "r"}
        await bob.send(json.dumps({"type": "message", "room": "r", "text": "hi"}))
        for client in (ann, bob):  # include_self=True: the sender too
            assert json.loads(await recv(client)) == {"type": "chat-message", "text": "hi"}


async def test_the_authentication_example(tmp_path: Path) -> None:
    app = load(block("def authenticate"), tmp_path, "private")
    async with serve(app) as url:
        async with connect(f"{url}/ws/private?token=secret-token") as client:
            assert await recv(client) == "hello ann"
        async with connect(f"{url}/ws/private") as client:
            await asyncio.wait_for(client.wait_closed(), TIMEOUT)
            assert (client.close_code, client.close_reason) == (4001, "No token provided")
        with pytest.raises(InvalidStatus) as info:
            await connect(f"{url}/ws/private?token=wrong")
        assert info.value.response.status_code == 403


async def test_the_json_example(tmp_path: Path) -> None:
    app = load(block('"/rooms"'), tmp_path, "rooms_json")
    async with serve(app) as url, connect(f"{url}/rooms") as ann, connect(f"{url}/rooms") as bob:
        await ann.send(json.dumps({"a": 1}))
        assert json.loads(await recv(bob)) == {"echo": {"a": 1}}


def test_the_connection_table_names_only_what_ws_has() -> None:
    section = README.split("## The connection: `harpy.WebSocket[T]`", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("| `")]
    named = {
        match.group(1)
        for line in table
        for match in re.finditer(r"`([a-z_]+)", line.split(" | ")[0])
    }
    assert len(named) > 20, "the table was not found"
    assert named <= set(dir(harpy.WebSocket)), named - set(dir(harpy.WebSocket))


# ------------------------------------------------------------------ the table of defaults


def readme_defaults() -> list[tuple[str, str, bool]]:
    """(option, default as written, App only) for every row of the README's limits table."""
    section = README.split("## Limits", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`(\w+)`", cells[0])
        value = re.sub(r"\s*\((none|off)\)$", "", cells[1].removesuffix(", 0 disables"))
        values = re.split(r" / |, ", value) if len(names) > 1 else [value]
        if len(values) == 1:
            values *= len(names)
        assert len(values) == len(names), line
        rows += [(n, v, "(App only)" in cells[0]) for n, v in zip(names, values, strict=True)]
    return rows


UNITS = {"KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "s": 1}


def parse(text: str) -> Any:
    """A README default as a value: ``16 MiB``, ``5 s``, ``64``, ``False``, ``"drop"``, and
    ``off`` / ``on`` (off: 0, None or False)."""
    if text in ("True", "False"):
        return text == "True"
    if text in ("on", "off"):
        return text
    if text.startswith('`"'):
        return text.strip('`"')
    number, _, unit = text.partition(" ")
    return float(number) * UNITS[unit] if unit else float(number)


def real_defaults() -> tuple[dict[str, Any], dict[str, Any]]:
    route = {f.name: f.default for f in fields(RouteOptions) if f.default is not MISSING}
    params = inspect.signature(harpy.App.__init__).parameters.values()
    app = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    return route, app


def test_the_limits_table_gives_the_real_defaults() -> None:
    route, app = real_defaults()
    rows = readme_defaults()
    assert len(rows) >= 20, "the table was not found"
    for name, written, app_only in rows:
        real = app[name] if app_only else route[name]
        assert (name in app) == app_only or name in route, name
        if name == "output_budget":
            assert written == "min(1 GiB, RAM / 4)" and real is None
            ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            assert default_output_budget() == min(1024**3, ram // 4)
            continue
        if name == "forwarded_allow_ips":  # None stands for the loopback addresses listed
            assert real is None
            assert harpy.App().proxy_trust.allowed == tuple(re.findall(r"`([^`]+)`", written))
            continue
        expected = parse(written)
        if expected == "off":
            assert not real, name
        elif expected == "on":
            assert real is True, name
        else:
            assert real == expected, (name, written, real)

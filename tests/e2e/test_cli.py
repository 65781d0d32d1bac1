"""The command line and the process lifecycle: ``python -m harpy``, signals, TLS."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import logging
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from harpy.cli import configure_logging, main
from tests.timing import TIMEOUT, scaled

ROOT = Path(__file__).resolve().parents[2]


@contextlib.asynccontextmanager
async def harpy_process(
    *args: str, python: str | Path = sys.executable, cwd: Path = ROOT
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """Run ``python -m harpy ARGS --port 0``; yield the process and the URL it logged; kill
    it at the end if it is still running."""
    proc = await asyncio.create_subprocess_exec(
        python, "-m", "harpy", *args, "--port", "0",
        cwd=cwd,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"},
    )
    try:
        yield proc, await next_url(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def next_url(proc: asyncio.subprocess.Process) -> str:
    """The next ``listening on URL`` the server logs (plain or JSON)."""
    assert proc.stderr is not None
    for _ in range(50):
        line = (await asyncio.wait_for(proc.stderr.readline(), scaled(15.0))).decode()
        match = re.search(r"listening on (wss?://[^\s\"]+)", line)
        if match:
            return match.group(1)
    raise AssertionError("the server never logged its URL")


async def stopped(proc: asyncio.subprocess.Process) -> int:
    """SIGTERM, then the exit status."""
    proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(proc.wait(), scaled(10.0))


async def test_cli_serves_and_sigterm_closes_with_1001_then_exits_0() -> None:
    async with harpy_process("examples.echo:app", "--host", "127.0.0.1") as (proc, url):
        async with connect(f"{url}/echo") as client:
            await client.send("ping?")
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == "ping?"
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(client.recv(), scaled(10.0))
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        assert await asyncio.wait_for(proc.wait(), scaled(10.0)) == 0


async def test_sigint_also_shuts_down_gracefully() -> None:
    async with harpy_process("examples.echo:app") as (proc, url):
        async with connect(f"{url}/echo") as client:
            proc.send_signal(signal.SIGINT)
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(client.recv(), scaled(10.0))
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        assert await asyncio.wait_for(proc.wait(), scaled(10.0)) == 0


def make_cert(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=scaled(60.0),
    )
    return cert, key


async def test_tls_from_the_command_line(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    tls = ("--tls-cert", str(cert), "--tls-key", str(key))
    async with harpy_process("examples.echo:app", *tls) as (proc, url):
        assert url.startswith("wss://")
        context = ssl.create_default_context(cafile=str(cert))
        async with connect(f"{url}/echo", ssl=context) as client:
            await client.send("secret")
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == "secret"
        assert await stopped(proc) == 0


def test_cli_rejects_bad_targets(capsys: pytest.CaptureFixture[str]) -> None:
    for target, message in [
        ("no_such_module_xyz:app", "cannot import"),
        ("examples.echo:nothing", "has no attribute"),
        ("examples.echo:Echo", "not a harpy.App"),
    ]:
        with pytest.raises(SystemExit) as info:
            main([target])
        assert message in str(info.value)
    with pytest.raises(SystemExit):
        main(["examples.echo:app", "--tls-key", "k.pem"])
    assert "--tls-key needs --tls-cert" in capsys.readouterr().err


# ------------------------------------------------------------------- options as uvicorn's


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """``python -m harpy ARGS`` to its end (for the runs that stop at once)."""
    return subprocess.run(
        [sys.executable, "-m", "harpy", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=scaled(30.0),
    )


def test_version_prints_the_installed_version() -> None:
    done = run_cli("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"harpy {importlib.metadata.version('harpy-ws')}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "70000"], "argument --port: 70000 is out of range (1-65535"),
        (["--port", "-1"], "argument --port: -1 is out of range"),
        (["--port", "http"], "argument --port: not a port number: 'http'"),
        (["--host", "local host"], "argument --host: not an IP address or host name"),
        (["--host", ""], "argument --host: not an IP address or host name"),
        (["--log-format", "xml"], "argument --log-format: invalid choice: 'xml'"),
    ],
)
def test_a_bad_option_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    done = run_cli("examples.echo:app", *args)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert lines[0].startswith("python -m harpy: error: ")


def test_a_port_in_use_is_one_line_and_exit_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli("examples.echo:app", "--port", str(port), "--log-level", "warning")
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"harpy: cannot listen on 127.0.0.1:{port}: the address is already in use"
    )


async def test_log_format_json_is_one_object_a_line() -> None:
    async with harpy_process("examples.echo:app", "--log-format", "json") as (proc, url):
        async with connect(f"{url}/echo") as client:
            await client.send("hi")
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == "hi"
        assert await stopped(proc) == 0
        assert proc.stderr is not None
        rest = await asyncio.wait_for(proc.stderr.read(), scaled(10.0))
    records = [json.loads(line) for line in rest.decode().splitlines()]
    assert records, "nothing was logged after the URL"
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys()
        assert datetime.fromisoformat(record["time"]).tzinfo is not None
    assert {"level": "info", "logger": "harpy", "message": "harpy: stopped"}.items() <= (
        records[-1].items()
    )


def test_access_records_show_their_fields_in_both_formats(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    upgrade = {"path": "/echo", "status": 101, "remote": "127.0.0.1:5000"}
    closed = {"code": 1000, "duration": 0.25, "messages_in": 3, "messages_out": 4}

    configure_logging("info", "json")
    logging.getLogger("harpy.access").info("upgrade", extra=upgrade)
    logging.getLogger("harpy.access").info("closed", extra=closed)
    logging.getLogger("harpy.access").debug("not at info level")
    lines = capsys.readouterr().err.splitlines()
    head = {"time": ANY_TIME, "level": "info", "logger": "harpy.access"}
    assert [json.loads(line) for line in lines] == [
        {**head, "message": "upgrade", **upgrade},
        {**head, "message": "closed", **closed},
    ]

    configure_logging("info", "plain")
    logging.getLogger("harpy.access").info("upgrade", extra=upgrade)
    time, line = capsys.readouterr().err.split(" ", 1)
    assert time == ANY_TIME
    assert line == "upgrade path=/echo status=101 remote=127.0.0.1:5000\n"
    # A field the message says already (one of its arguments) is not said again.
    logging.getLogger("harpy.access").info("%s %s", "/echo", 101, extra=upgrade)
    assert capsys.readouterr().err.split(" ", 1)[1] == "/echo 101 remote=127.0.0.1:5000\n"

    configure_logging("warning", "plain")
    logging.getLogger("harpy.access").info("upgrade", extra=upgrade)
    assert capsys.readouterr().err == ""


class _AnyTime:
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and datetime.fromisoformat(other).tzinfo is not None


ANY_TIME = _AnyTime()


async def test_reload_restarts_the_server_when_a_python_file_changes(tmp_path: Path) -> None:
    module = tmp_path / "reloaded_app.py"
    source = (
        "import harpy\n"
        "app = harpy.App()\n"
        "@app.ws('/v')\n"
        "class V:\n"
        "    def open(self, ws):\n"
        "        ws.send({version!r})\n"
    )
    module.write_text(source.format(version="one"))
    async with harpy_process("reloaded_app:app", "--reload", cwd=tmp_path) as (proc, url):
        async with connect(f"{url}/v") as client:
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == "one"
            module.write_text(source.format(version="two"))
            # The old server goes away gracefully (1001), a new one starts with the new code.
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(client.recv(), scaled(15.0))
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        url = await next_url(proc)
        async with connect(f"{url}/v") as client:
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == "two"
        assert await stopped(proc) == 0


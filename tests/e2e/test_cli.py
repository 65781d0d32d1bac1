"""The command line and the process lifecycle: ``python -m harpy``, signals, TLS."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from harpy.cli import main
from tests.timing import TIMEOUT, scaled

ROOT = Path(__file__).resolve().parents[2]


async def start_server(*args: str) -> tuple[asyncio.subprocess.Process, str]:
    """Run ``python -m harpy ARGS --port 0``; return the process and the URL it logged."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "harpy", *args, "--port", "0",
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stderr is not None
    for _ in range(50):
        line = (await asyncio.wait_for(proc.stderr.readline(), scaled(15.0))).decode()
        match = re.search(r"listening on (wss?://\S+)", line)
        if match:
            return proc, match.group(1)
    raise AssertionError("the server never logged its URL")


async def test_cli_serves_and_sigterm_closes_with_1001_then_exits_0() -> None:
    proc, url = await start_server("examples.echo:app", "--host", "127.0.0.1")
    try:
        async with connect(f"{url}/echo") as client:
            await client.send("ping?")
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == "ping?"
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(client.recv(), scaled(10.0))
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        assert await asyncio.wait_for(proc.wait(), scaled(10.0)) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_sigint_also_shuts_down_gracefully() -> None:
    proc, url = await start_server("examples.echo:app")
    try:
        async with connect(f"{url}/echo") as client:
            proc.send_signal(signal.SIGINT)
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(client.recv(), scaled(10.0))
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        assert await asyncio.wait_for(proc.wait(), scaled(10.0)) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


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
    proc, url = await start_server(
        "examples.echo:app", "--tls-cert", str(cert), "--tls-key", str(key)
    )
    try:
        assert url.startswith("wss://")
        context = ssl.create_default_context(cafile=str(cert))
        async with connect(f"{url}/echo", ssl=context) as client:
            await client.send("secret")
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == "secret"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), scaled(10.0)) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


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

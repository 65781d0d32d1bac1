"""Running in production as docs/running.md and docs/deployment.md describe it: the drain period,
configuration from the environment, a Unix socket, no access log, --reload-dir; and the
deployment files (systemd unit, Dockerfile, Kubernetes manifest) checked against the package."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest
import yaml
from websockets.asyncio.client import connect, unix_connect
from websockets.exceptions import ConnectionClosed

import harpy
from harpy.cli import ENV_PREFIX, env_name, parser
from tests.e2e.test_cli import next_url, run_cli, stopped
from tests.helpers import RawClient
from tests.timing import TIMEOUT, scaled

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "docs" / "deploy"
HEALTH = b"GET /healthz HTTP/1.1\r\nHost: harpy\r\n\r\n"


@contextlib.asynccontextmanager
async def harpy_started(
    *args: str, env: Mapping[str, str] | None = None, cwd: Path = ROOT
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``python -m harpy ARGS`` with ``env`` added to the environment (no ``--port`` added);
    killed at the end if still running."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "harpy", *args,
        cwd=cwd,
        stderr=asyncio.subprocess.PIPE,
        env={**clean, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", **(env or {})},
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def health(url: str) -> int:
    client = await RawClient.connect(url)
    try:
        status, _, _ = await client.request(HEALTH)
    finally:
        await client.close()
    return status


async def read_until(proc: asyncio.subprocess.Process, pattern: str) -> re.Match[str]:
    assert proc.stderr is not None
    for _ in range(50):
        line = (await asyncio.wait_for(proc.stderr.readline(), scaled(15.0))).decode()
        match = re.search(pattern, line)
        if match:
            return match
    raise AssertionError(f"the server never logged {pattern!r}")


# ------------------------------------------------------------------------------ the drain


async def test_drain_fails_health_keeps_serving_then_closes_with_1001() -> None:
    drain = scaled(3.0)
    async with harpy_started(
        "examples.echo:app", "--port", "0", "--drain", str(drain)
    ) as proc:
        url = await next_url(proc)
        assert await health(url) == 200
        async with connect(f"{url}/echo", open_timeout=TIMEOUT) as client:
            proc.send_signal(signal.SIGTERM)
            await read_until(proc, r"draining for")
            started = asyncio.get_running_loop().time()
            # Out of rotation: the load balancer's probe fails ...
            assert await health(url) == 503
            # ... while the open connection still works ...
            await client.send("still here")
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == "still here"
            # ... and a client sent here before the endpoints updated is still served.
            async with connect(f"{url}/echo", open_timeout=TIMEOUT) as late:
                await late.send("late")
                assert await asyncio.wait_for(late.recv(), TIMEOUT) == "late"
            # Then the drain ends and the connections are closed with 1001.
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(client.recv(), drain + TIMEOUT)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
            # The 1001 came at the drain's end, not before: started was logged right after
            # the drain began, so the rest of it had to pass.
            assert asyncio.get_running_loop().time() - started >= drain - scaled(1.0)
        assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0


async def test_a_second_signal_ends_the_drain_at_once() -> None:
    async with harpy_started("examples.echo:app", "--port", "0", "--drain", "600") as proc:
        url = await next_url(proc)
        async with connect(f"{url}/echo", open_timeout=TIMEOUT) as client:
            proc.send_signal(signal.SIGTERM)
            await read_until(proc, r"draining for 600 s")
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(client.recv(), TIMEOUT)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0


def test_drain_timeout_is_checked() -> None:
    assert harpy.App().drain_timeout == 0.0
    assert harpy.App(drain_timeout=2).drain_timeout == 2.0
    for bad in (-1, "5", True, float("nan")):
        with pytest.raises(harpy.ConfigurationError, match="drain_timeout must be"):
            harpy.App(drain_timeout=bad)  # type: ignore[arg-type]
    done = run_cli("examples.echo:app", "--drain", "-2")
    assert done.returncode == 2
    assert "argument --drain: -2 is not a number of seconds >= 0" in done.stderr


# ------------------------------------------------------------------ the environment


def running_md_variables() -> list[str]:
    text = (ROOT / "docs" / "running.md").read_text()
    return re.findall(r"`(HARPY_[A-Z_]+)`", text)


def test_every_option_has_a_variable_and_the_docs_list_them_all() -> None:
    names = [env_name(action) for action in parser().options]
    assert len(names) == len(set(names))
    documented = running_md_variables()
    assert sorted(set(documented)) == sorted(names), "docs/running.md's table of variables"
    for action in parser().options:
        if action.option_strings:
            assert f"`{action.option_strings[0]}" in (ROOT / "docs" / "running.md").read_text()


def test_variables_fill_what_the_command_line_leaves_out() -> None:
    env = {
        "HARPY_APP": "chat:app",
        "HARPY_HOST": "0.0.0.0",
        "HARPY_PORT": "8000",
        "HARPY_WORKERS": "3",
        "HARPY_LOG_LEVEL": "warning",
        "HARPY_LOG_FORMAT": "json",
        "HARPY_NO_ACCESS_LOG": "true",
        "HARPY_RELOAD": "0",
        "HARPY_DRAIN": "7.5",
        "HARPY_UDS": "/run/harpy.sock",
        "HARPY_TLS_CERT": "c.pem",
        "HARPY_TLS_KEY": "k.pem",
        "HARPY_RELOAD_DIR": f"{ROOT / 'src'}{os.pathsep}{ROOT / 'examples'}",
    }
    args = parser().parse_with_env([], env)
    assert (args.app, args.host, args.port, args.workers) == ("chat:app", "0.0.0.0", 8000, 3)
    assert (args.log_level, args.log_format, args.no_access_log) == ("warning", "json", True)
    assert (args.reload, args.drain, args.uds) == (False, 7.5, "/run/harpy.sock")
    assert (args.tls_cert, args.tls_key) == ("c.pem", "k.pem")
    assert args.reload_dir == [str(ROOT / "src"), str(ROOT / "examples")]
    # The command line wins, a repeated option included.
    args = parser().parse_with_env(
        ["echo:app", "--port", "9", "--log-format", "plain", "--reload-dir", str(ROOT)], env
    )
    assert (args.app, args.port, args.log_format, args.host) == ("echo:app", 9, "plain", "0.0.0.0")
    assert args.reload_dir == [str(ROOT)]
    # Nothing set: the defaults.
    args = parser().parse_with_env(["echo:app"], {})
    assert (args.port, args.host, args.drain) == (3000, "127.0.0.1", None)
    assert (args.no_access_log, args.reload, args.reload_dir) == (False, False, None)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HARPY_PORT": "http"}, "HARPY_PORT: not a port number: 'http'"),
        ({"HARPY_PORT": "70000"}, "HARPY_PORT: 70000 is out of range"),
        ({"HARPY_LOG_FORMAT": "xml"}, "HARPY_LOG_FORMAT: invalid choice: 'xml'"),
        ({"HARPY_RELOAD": "maybe"}, "HARPY_RELOAD='maybe': expected 1/true/yes/on or 0/false"),
        ({"HARPY_WORKERS": "0"}, "HARPY_WORKERS: workers must be a whole number >= 1"),
        ({"HARPY_RELOAD_DIR": "/no/such/dir"}, "HARPY_RELOAD_DIR: not a directory"),
    ],
)
def test_a_bad_variable_is_one_line_naming_it_and_exit_2(
    env: dict[str, str], message: str
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    done = subprocess.run(
        [sys.executable, "-m", "harpy", "examples.echo:app"],
        cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=scaled(30.0),
    )
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr


def test_no_app_anywhere_is_one_line_and_exit_2() -> None:
    done = run_cli()
    assert done.returncode == 2
    assert "which app? give MODULE:ATTRIBUTE, or set HARPY_APP" in done.stderr


async def test_the_server_runs_from_variables_alone() -> None:
    env = {
        "HARPY_APP": "examples.echo:app",
        "HARPY_HOST": "127.0.0.1",
        "HARPY_PORT": "0",
        "HARPY_LOG_FORMAT": "json",
    }
    async with harpy_started(env=env) as proc:
        url = await next_url(proc)
        async with connect(f"{url}/echo", open_timeout=TIMEOUT) as client:
            await client.send("configured by the environment")
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == (
                "configured by the environment"
            )
        assert await stopped(proc) == 0
        assert proc.stderr is not None
        rest = (await asyncio.wait_for(proc.stderr.read(), TIMEOUT)).decode()
    records = [json.loads(line) for line in rest.splitlines()]  # JSON: HARPY_LOG_FORMAT took
    assert any(r["logger"] == "harpy.access" for r in records)


# ------------------------------------------------------------- Unix socket, access log


async def test_uds_serves_websockets_and_http_over_a_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "harpy.sock"
    async with harpy_started("examples.echo:app", "--uds", str(path)) as proc:
        await read_until(proc, rf"listening on unix:{re.escape(str(path))} \(ws\)")
        async with unix_connect(str(path), "ws://localhost/echo", open_timeout=TIMEOUT) as ws:
            await ws.send("over a unix socket")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "over a unix socket"
        reader, writer = await asyncio.open_unix_connection(str(path))
        client = RawClient(reader, writer)
        assert (await client.request(HEALTH))[0] == 200
        await client.close()
        assert await stopped(proc) == 0
    assert not path.exists(), "the socket file is removed at shutdown"


def test_uds_with_workers_is_refused() -> None:
    done = run_cli("examples.echo:app", "--uds", "/tmp/x.sock", "--workers", "2")
    assert done.returncode == 2
    assert "--uds serves from one process" in done.stderr


async def access_loggers(*args: str) -> set[str]:
    """The loggers of everything a server logs while one client echoes once."""
    async with harpy_started(
        "examples.echo:app", "--port", "0", "--log-format", "json", *args
    ) as proc:
        url = await next_url(proc)
        async with connect(f"{url}/echo", open_timeout=TIMEOUT) as client:
            await client.send("x")
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == "x"
        assert await stopped(proc) == 0
        assert proc.stderr is not None
        rest = (await asyncio.wait_for(proc.stderr.read(), TIMEOUT)).decode()
    return {json.loads(line)["logger"] for line in rest.splitlines()}


async def test_no_access_log_silences_only_the_access_records() -> None:
    assert await access_loggers() == {"harpy", "harpy.access"}
    assert await access_loggers("--no-access-log") == {"harpy"}


# ------------------------------------------------------------------------ --reload-dir


async def test_reload_dir_restarts_on_changes_under_that_directory(tmp_path: Path) -> None:
    watched = tmp_path / "settings"
    watched.mkdir()
    (watched / "__init__.py").write_text("")
    version = watched / "version.py"
    version.write_text("VERSION = 'one'\n")
    (tmp_path / "reloaded_app.py").write_text(
        "import harpy\n"
        "from settings.version import VERSION\n"
        "app = harpy.App()\n"
        "@app.ws('/v')\n"
        "class V:\n"
        "    def open(self, ws):\n"
        "        ws.send(VERSION)\n"
    )
    async with harpy_started(
        "reloaded_app:app", "--port", "0", "--reload-dir", "settings", cwd=tmp_path
    ) as proc:
        match = await read_until(proc, r"reloading on changes under (\S+)")
        assert match.group(1) == str(watched)
        url = await next_url(proc)
        async with connect(f"{url}/v", open_timeout=TIMEOUT) as client:
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == "one"
            version.write_text("VERSION = 'two'\n")
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(client.recv(), scaled(15.0))
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        url = await next_url(proc)
        async with connect(f"{url}/v", open_timeout=TIMEOUT) as client:
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == "two"
        assert await stopped(proc) == 0


# -------------------------------------------------------------------- deployment files


def option_variables() -> set[str]:
    return {env_name(action) for action in parser().options}


async def serves_and_stops_gracefully(
    env: Mapping[str, str], cwd: Path, path: str, stop: signal.Signals, within: float
) -> None:
    """``python -m harpy`` configured by ``env`` alone (on loopback, a free port, a short drain)
    serves ``path`` and /healthz, and ``stop`` ends it with 1001 and status 0 within
    ``within`` seconds."""
    env = {**env, "HARPY_HOST": "127.0.0.1", "HARPY_PORT": "0", "HARPY_DRAIN": "0.2"}
    async with harpy_started(env=env, cwd=cwd) as proc:
        url = await next_url(proc)
        assert await health(url) == 200
        async with connect(f"{url}{path}", open_timeout=TIMEOUT) as client:
            proc.send_signal(stop)
            with pytest.raises(ConnectionClosed) as info:
                for _ in range(100):  # what the app sends on its own (a greeting), then 1001
                    await asyncio.wait_for(client.recv(), within)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        assert await asyncio.wait_for(proc.wait(), within) == 0


def read_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit file: its sections, each a list of (key, value) (keys may repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{path.name}: not a unit file line: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


async def test_the_systemd_unit_verifies_and_stops_gracefully(tmp_path: Path) -> None:
    unit = DEPLOY / "harpy.service"
    service = dict(read_unit(unit)["Service"])
    environment = dict(
        value.split("=", 1) for key, value in read_unit(unit)["Service"] if key == "Environment"
    )
    assert set(environment) <= option_variables()
    assert (service["KillSignal"], service["KillMode"]) == ("SIGTERM", "mixed")
    drain = float(environment["HARPY_DRAIN"])
    assert float(service["TimeoutStopSec"]) > drain + harpy.App().shutdown_timeout
    python, *command = service["ExecStart"].split()
    assert python.endswith("/bin/python") and command == ["-m", "harpy"]

    # systemd's own check (Debian's systemd package), with ExecStart on this machine's Python.
    local = tmp_path / "harpy.service"
    local.write_text(unit.read_text().replace(python, sys.executable))
    analyze = shutil.which("systemd-analyze")
    if analyze is not None:
        done = subprocess.run(
            [analyze, "verify", str(local)], capture_output=True, text=True,
            timeout=scaled(60.0),
        )
        assert (done.returncode, done.stderr) == (0, ""), done.stderr

    # The command with the unit's environment, in a WorkingDirectory holding chat.py.
    shutil.copy2(ROOT / "examples" / "echo.py", tmp_path / "chat.py")
    assert environment["HARPY_APP"] == "chat:app"
    await serves_and_stops_gracefully(
        environment, tmp_path, "/echo", signal.Signals[service["KillSignal"]], scaled(10.0)
    )


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(instruction, arguments) per Dockerfile instruction, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def dockerignored(relative: str) -> bool:
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = relative.strip("/").split("/")
    prefixes = [Path(*parts[: i + 1]) for i in range(len(parts))]
    return any(path.match(p.removeprefix("**/")) for p in patterns for path in prefixes)


async def test_the_dockerfile_matches_the_package_and_its_command_serves(tmp_path: Path) -> None:
    # docker (a daemon) is not available on the machines that run these tests: the image is
    # checked by what it is made of, and its command is run here with its environment.
    steps = dockerfile_instructions()
    froms = [args for word, args in steps if word == "FROM"]
    image_python = re.match(r"python:(3\.\d+)-slim", froms[-1])
    assert image_python is not None
    classifiers = (ROOT / "pyproject.toml").read_text()
    assert f'"Programming Language :: Python :: {image_python.group(1)}"' in classifiers

    # What the build stage copies exists and is not left out of the build context.
    build_files = ("pyproject.toml", "setup.py", "MANIFEST.in", "src/harpy/protocol/_core.py")
    copies = [args.split() for word, args in steps if word == "COPY"]
    for parts in copies:
        if parts[0].startswith("--from="):
            continue
        for source in parts[:-1]:
            assert (ROOT / source).exists(), f"COPY {source}: no such file"
            assert not dockerignored(source), f"COPY {source}: excluded by .dockerignore"
    copied = {source.rstrip("/") for parts in copies for source in parts[:-1]}
    for needed in build_files:
        assert needed in copied or needed.split("/")[0] in copied, needed
    for left_out in (".venv", ".git", "build", "src/harpy/protocol/_ccore.c"):
        assert dockerignored(left_out), left_out

    env: dict[str, str] = {}
    for word, args in steps:
        if word == "ENV":
            env.update(pair.split("=", 1) for pair in args.split())
    assert {k for k in env if k.startswith(ENV_PREFIX)} <= option_variables()
    exposed = [args for word, args in steps if word == "EXPOSE"]
    assert exposed == [env["HARPY_PORT"]] and env["HARPY_HOST"] == "0.0.0.0"
    (cmd,) = [json.loads(args) for word, args in steps if word == "CMD"]
    assert cmd == ["python", "-m", "harpy"]
    (stop,) = [args for word, args in steps if word == "STOPSIGNAL"]

    # The app named by HARPY_APP, laid out as in the image's WORKDIR, serves and stops.
    module = env["HARPY_APP"].partition(":")[0]
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    assert (tmp_path / (module.replace(".", "/") + ".py")).is_file()
    await serves_and_stops_gracefully(
        env, tmp_path, "/ws/chat", signal.Signals[stop], scaled(10.0)
    )


def test_the_kubernetes_manifest_matches_the_app_and_the_image() -> None:
    documents = list(yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text()))
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    (service,) = [d for d in documents if d["kind"] == "Service"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert set(env) <= option_variables()
    (port,) = container["ports"]
    assert str(port["containerPort"]) == env["HARPY_PORT"] and env["HARPY_HOST"] == "0.0.0.0"

    # Readiness is the app's health check; liveness is not (a draining pod answers 503).
    probe = container["readinessProbe"]
    assert probe["httpGet"]["path"] == harpy.App().http.health_path
    assert probe["httpGet"]["port"] in (port["name"], port["containerPort"])
    assert "httpGet" not in container["livenessProbe"]
    # The probe sees the 503 well before the drain ends, and the grace period covers both
    # the drain and the closing handshakes.
    drain = float(env["HARPY_DRAIN"])
    assert probe["periodSeconds"] * probe["failureThreshold"] * 2 <= drain
    assert pod["terminationGracePeriodSeconds"] > drain + harpy.App().shutdown_timeout
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's user

    assert service["spec"]["ports"][0]["targetPort"] in (port["name"], port["containerPort"])
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    # The image is the one the docs build.
    docs = (ROOT / "docs" / "deployment.md").read_text()
    assert f"docker build -t {container['image']} ." in docs
    assert f"docker build -t {container['image']} ." in (ROOT / "Dockerfile").read_text()
    assert "useradd --system --uid 10001" in (ROOT / "Dockerfile").read_text()


async def test_with_workers_every_worker_drains() -> None:
    drain = scaled(2.0)
    async with harpy_started(
        "examples.echo:app", "--port", "0", "--workers", "2", "--drain", str(drain)
    ) as proc:
        url = (await read_until(proc, r"2 workers on (ws://\S+)")).group(1)
        for _ in range(2):
            await read_until(proc, r"listening on")
        # Connections on both workers (the kernel spreads them; a few make both likely, and
        # each must behave the same whichever worker holds it).
        clients = [await connect(f"{url}/echo", open_timeout=TIMEOUT) for _ in range(6)]
        try:
            proc.send_signal(signal.SIGTERM)
            for _ in range(2):
                await read_until(proc, r"draining for")
            for _ in range(4):  # each probe lands on either worker: all say 503
                assert await health(url) == 503
            for client in clients:
                await client.send("draining")
                assert await asyncio.wait_for(client.recv(), TIMEOUT) == "draining"
            for client in clients:
                with pytest.raises(ConnectionClosed) as info:
                    await asyncio.wait_for(client.recv(), drain + TIMEOUT)
                assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        finally:
            for client in clients:
                await client.close()
        assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0

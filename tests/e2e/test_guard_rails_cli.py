"""What a user sees when something is missing or wrong, read from a real ``python -m harpy``:
one line naming the fix, no traceback, no restart loop; and a quiet Ctrl-C on ``--workers``.

A missing optional package is made missing for real in the child process: its name is set to
None in ``sys.modules`` before harpy starts, which is what Python does for a package that is
not installed (every import of it raises ImportError, ``importlib.util.find_spec`` finds none).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from harpy.workers import Supervisor, restart_delay
from tests.e2e.test_cli import harpy_process, make_cert, stopped
from tests.e2e.test_workers import Supervised, gone, supervised
from tests.timing import TIMEOUT, scaled

ROOT = Path(__file__).resolve().parents[2]

#: ``python -c WITHOUT "a,b" ARGS...``: ``python -m harpy ARGS`` with packages a and b missing.
WITHOUT = textwrap.dedent(
    """
    import sys
    for name in sys.argv[1].split(","):
        sys.modules[name] = None
    from harpy.cli import main
    sys.exit(main(sys.argv[2:]))
    """
)

APPS = {
    "redis_app": "app = harpy.App(backplane=harpy.RedisBackplane())",
    "nats_app": "app = harpy.App(backplane=harpy.NatsBackplane())",
    "metrics_app": "app = harpy.App(metrics=True)",
    "plain_app": "app = harpy.App()",
}


def write_apps(folder: Path) -> None:
    for name, body in APPS.items():
        (folder / f"{name}.py").write_text(f"import harpy\n{body}\n")


def run_without(missing: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT, missing, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=scaled(30.0),
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.mark.parametrize(
    ("missing", "args", "extra", "package"),
    [
        ("redis", ["redis_app:app"], "redis", "redis-py"),
        ("nats", ["nats_app:app"], "nats", "nats-py"),
        ("prometheus_client", ["metrics_app:app"], "metrics", "prometheus_client"),
        ("nats", ["plain_app:app", "--workers", "2"], "workers", "nats-py"),
        ("watchfiles", ["plain_app:app", "--reload"], "reload", "watchfiles"),
    ],
)
def test_a_missing_optional_package_is_one_line_naming_the_extra(
    tmp_path: Path, missing: str, args: list[str], extra: str, package: str
) -> None:
    write_apps(tmp_path)
    done = run_without(missing, *args, "--port", "0", cwd=tmp_path)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"needs {package}, which is not installed: pip install 'harpy-ws[{extra}]'" in lines[0]
    assert "Traceback" not in done.stderr


def test_a_missing_tls_file_is_named(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    write_apps(tmp_path)
    cases = [
        (["--tls-cert", str(tmp_path / "nope.pem")], f"TLS certificate file '{tmp_path}/nope.pem'"),
        (["--tls-cert", str(cert), "--tls-key", "k.pem"], "TLS key file 'k.pem'"),
        (["--tls-cert", str(key)], f"TLS certificate file '{key}'"),
        (["--tls-cert", str(tmp_path / "nope.pem"), "--workers", "2"], "nope.pem"),
    ]
    for args, message in cases:
        done = run_without("", "plain_app:app", "--port", "0", *args, cwd=tmp_path)
        assert done.returncode == 1, done.stderr
        assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


async def test_a_worker_configuration_error_stops_the_workers_instead_of_a_restart_loop(
    tmp_path: Path,
) -> None:
    (tmp_path / "needs_env.py").write_text(
        textwrap.dedent(
            """
            import harpy

            app = harpy.App()


            @app.on_startup
            def check() -> None:
                raise harpy.ConfigurationError("DATABASE_URL is not set")
            """
        )
    )
    async with supervised(
        "needs_env:app", "--workers", "2", "--port", "0", env={"PYTHONPATH": str(tmp_path)}
    ) as server:
        assert await asyncio.wait_for(server.proc.wait(), scaled(20.0)) == 1
        await server.wait_for(r"(stopped on a configuration error)")
        await server.close()
        log = "\n".join(server.lines)
        assert "DATABASE_URL is not set" in log
        assert "restarting" not in log and "Traceback" not in log, log


async def test_ctrl_c_on_workers_is_quiet_and_stops_everything() -> None:
    """SIGINT to the terminal's whole process group, as Ctrl-C sends it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "harpy", "examples.workers:app", "--workers", "2", "--port", "0",
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )  # fmt: skip
    server = Supervised(proc)
    try:
        await server.wait_for(r"(listening on)", count=2, timeout=scaled(20.0))
        [nats_pid] = await server.wait_for(r"embedded nats-server \(pid (\d+)\)")
        os.killpg(proc.pid, signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), scaled(20.0)) == 0
        await server.close()
    finally:
        await server.close()
    assert gone(int(nats_pid))
    noisy = ("error", "lost", "Traceback", "failed", "killed", "exited", "Interrupt", "warning")
    loud = [line for line in server.lines if any(w.lower() in line.lower() for w in noisy)]
    assert not loud, "\n".join(server.lines)
    assert server.lines[-3:].count("harpy: stopped") == 2, "\n".join(server.lines)


# ------------------------------------------------------------------- the restart back-off


def test_the_back_off_starts_at_half_a_second_doubles_and_stops_at_ten() -> None:
    """The numbers docs/scale-out.md gives, read from the supervisor itself."""
    doc = " ".join((ROOT / "docs" / "scale-out.md").read_text().split())
    match = re.search(
        r"started again after ([\d.]+) s; each further death in a row of a worker that lived "
        r"under ([\d.]+) s doubles the wait, up to ([\d.]+) s",
        doc,
    )
    assert match is not None
    supervisor = Supervisor(lambda index: None, 1)
    written = tuple(float(g) for g in match.groups())
    assert written == (supervisor.backoff, supervisor.stable_after, supervisor.max_backoff)
    assert (supervisor.backoff, supervisor.max_backoff) == (0.5, 10.0)
    delays = [restart_delay(n, supervisor.backoff, supervisor.max_backoff) for n in range(1, 8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


#: Worker lives: three quick deaths, one stable run, then quick deaths again; the count of lives
#: is kept in a file, since each life is a new process.
FLAPPING = textwrap.dedent(
    """
    import logging, sys, time
    from pathlib import Path
    from harpy.workers import Supervisor

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    counter = Path(sys.argv[1])
    stable = float(sys.argv[2])

    def life(index: int) -> None:
        lives = len(counter.read_text()) if counter.exists() else 0
        counter.write_text("x" * (lives + 1))
        if lives == 3:
            time.sleep(stable * 1.5)
        sys.exit(1)

    sys.exit(Supervisor(life, 1, backoff=0.05, max_backoff=0.15, stable_after=stable).run())
    """
)


async def test_the_back_off_is_capped_and_starts_again_after_a_stable_run(tmp_path: Path) -> None:
    stable = scaled(1.0)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", FLAPPING, str(tmp_path / "lives"), str(stable),
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    server = Supervised(proc)
    try:
        delays = await server.wait_for(
            r"exited with 1 .*restarting in ([\d.]+) s", count=6, timeout=scaled(20.0)
        )
        # 3 quick deaths (doubling, capped at 0.15), the stable run's (back to 0.05), a quick one.
        assert [float(d) for d in delays] == [0.05, 0.1, 0.15, 0.05, 0.1, 0.15]
        proc.send_signal(signal.SIGTERM)
        # 1 when the signal found a worker running: it dies by SIGTERM, not with status 0.
        assert await asyncio.wait_for(proc.wait(), scaled(10.0)) in (0, 1)
    finally:
        await server.close()


async def test_the_plain_access_log_has_a_time_and_each_field_once() -> None:
    async with harpy_process("examples.echo:app") as (proc, url):
        async with connect(f"{url}/echo") as client:
            await client.send("hi")
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == "hi"
        assert await stopped(proc) == 0
        assert proc.stderr is not None
        err = (await asyncio.wait_for(proc.stderr.read(), TIMEOUT)).decode()
    [upgrade] = [line for line in err.splitlines() if " upgrade /echo " in line]
    [close] = [line for line in err.splitlines() if " close /echo " in line]
    for line, fields in (
        (upgrade, ["remote_address=127.0.0.1"]),
        (close, ["remote_address=127.0.0.1", "duration=", "messages_in=1", "messages_out=1"]),
    ):
        time, _, rest = line.partition(" ")
        assert datetime.fromisoformat(time).tzinfo is not None, line
        for field in fields:
            assert rest.count(field) == 1, line
        for said in ("event=", "path=", "status=", "code="):
            assert said not in rest, line  # the message says it already
    assert upgrade.endswith(" upgrade /echo 101 remote_address=127.0.0.1")
    assert " close /echo 1000 remote_address=127.0.0.1 duration=" in close


async def test_a_signal_while_starting_stops_gracefully_once_up(tmp_path: Path) -> None:
    """SIGTERM while a startup hook runs (before "listening on", or just after it) is no
    kill: the server comes up, then shuts down and exits 0."""
    (tmp_path / "slow_start.py").write_text(
        textwrap.dedent(
            """
            import asyncio
            import logging

            import harpy

            app = harpy.App()


            @app.on_startup
            async def warm_up() -> None:
                logging.getLogger("harpy").warning("warming up")
                await asyncio.sleep(1.0)
            """
        )
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "harpy", "slow_start:app", "--port", "0",
        cwd=tmp_path,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(tmp_path)},
    )  # fmt: skip
    server = Supervised(proc)
    try:
        await server.wait_for(r"(warming up)", timeout=scaled(20.0))
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), scaled(20.0)) == 0
    finally:
        await server.close()
    log = "\n".join(server.lines)
    assert "listening on" in log and "stopped" in log, log

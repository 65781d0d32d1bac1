"""Real Redis and NATS servers on free ports for the backplane tests, started once per session.

The servers are required, not optional: when a binary is missing the tests fail and say how to
install it (``make test-deps``).
"""

from __future__ import annotations

import math
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from harpy.pubsub.backplane import MemoryBackplane, NatsBackplane, RedisBackplane
from tests.helpers import MakeBackplane
from tests.timing import scaled

#: Seconds a server gets to accept TCP connections.
START_TIMEOUT = scaled(10.0)
#: Seconds between two tries to connect to it.
RETRY_INTERVAL = 0.05

BACKENDS = ["memory", "redis", "nats"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(proc: subprocess.Popen[bytes], port: int, log: str) -> None:
    # Polling, bounded in tries and time: a server process announces nothing when it is ready.
    deadline = time.monotonic() + START_TIMEOUT
    for _ in range(math.ceil(START_TIMEOUT / RETRY_INTERVAL)):
        if time.monotonic() >= deadline:
            break
        if proc.poll() is not None:
            with open(log, encoding="utf-8", errors="replace") as f:
                pytest.fail(f"{proc.args!r} exited with {proc.returncode}:\n{f.read()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=scaled(0.5)):
                return
        except OSError:
            time.sleep(RETRY_INTERVAL)
    proc.kill()
    proc.wait()
    pytest.fail(f"{proc.args!r} did not accept connections on port {port} in {START_TIMEOUT} s")


class Broker:
    """A real server process on a free port, which a test can kill and start again on the
    same port (a broker restart)."""

    def __init__(self, name: str, args: Callable[[str, int], list[str]], tmp: str) -> None:
        binary = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
        if binary is None:
            pytest.fail(
                f"{name} is not installed: the backplane tests need it; run `make test-deps`"
            )
        self.name = name
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._argv = args(binary, self.port)
        self._tmp = tmp
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = f"{self._tmp}/{self.name}.log"
        with open(log, "ab") as out:
            self._proc = subprocess.Popen(
                self._argv, stdout=out, stderr=subprocess.STDOUT, cwd=self._tmp
            )
        _wait_for_port(self._proc, self.port, log)

    def kill(self) -> None:
        """SIGKILL: the server goes away at once, as in a crash."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(scaled(5.0))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _run_server(name: str, args: Callable[[str, int], list[str]]) -> Iterator[Broker]:
    with tempfile.TemporaryDirectory(prefix=f"harpy-{name}-") as tmp:
        broker = Broker(name, args, tmp)
        broker.start()
        try:
            yield broker
        finally:
            broker.stop()


def _redis_args(binary: str, port: int) -> list[str]:
    return [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]


def _nats_args(binary: str, port: int) -> list[str]:
    return [binary, "-a", "127.0.0.1", "-p", str(port)]


@pytest.fixture
def redis_broker() -> Iterator[Broker]:
    """A Redis server of this test alone, to kill and restart."""
    yield from _run_server("redis-server", _redis_args)


@pytest.fixture
def nats_broker() -> Iterator[Broker]:
    """A NATS server of this test alone, to kill and restart."""
    yield from _run_server("nats-server", _nats_args)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    for broker in _run_server("redis-server", _redis_args):
        yield f"redis://{broker.address}/0"


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    for broker in _run_server("nats-server", _nats_args):
        yield f"nats://{broker.address}"




@pytest.fixture(params=BACKENDS)
def make_backplane(request: pytest.FixtureRequest) -> MakeBackplane:
    """A factory of backplanes that share one bus, private to the test."""
    tag = uuid.uuid4().hex[:12]
    if request.param == "memory":
        return lambda: MemoryBackplane(f"test-{tag}")
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        return lambda: RedisBackplane(url, channel_prefix=f"harpy-test-{tag}:")
    url = request.getfixturevalue("nats_url")
    return lambda: NatsBackplane(url, subject_prefix=f"harpy-test-{tag}.")

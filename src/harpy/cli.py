"""``python -m harpy module:app``: load an App and serve it.

Options follow uvicorn's where they overlap: ``--host``, ``--port``, ``--reload``,
``--log-level``, ``--version``.  ``--log-format json`` writes one JSON object per line, with the
fields of the access-log records (logger ``harpy.access``).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import ipaddress
import json
import logging
import os
import shlex
import socket
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any, NoReturn

from .app import App
from .exceptions import ConfigurationError, HarpyError
from .workers import parse_workers

__all__ = ["JsonFormatter", "configure_logging", "load_app", "main"]

DISTRIBUTION = "harpy-ws"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

#: The attributes every LogRecord has; anything else on a record came from ``extra={...}``.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}


def harpy_version() -> str:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown (not installed)"


def load_app(target: str) -> App:
    """Import ``module:attribute`` (attribute defaults to ``app``) and check it is an App."""
    module_name, _, attr = target.partition(":")
    if not module_name:
        raise SystemExit(f"harpy: expected module:app, got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"harpy: cannot import {module_name!r}: {exc}") from exc
    obj = module
    for part in (attr or "app").split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise SystemExit(f"harpy: {module_name!r} has no attribute {attr or 'app'!r}") from None
    if not isinstance(obj, App):
        raise SystemExit(f"harpy: {target!r} is a {type(obj).__name__}, not a harpy.App")
    return obj


# ------------------------------------------------------------------------------------ logging


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """What the record carries beyond a plain LogRecord: the ``extra={...}`` of the call."""
    return {k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, then the record's extra fields
    (``extra={...}``); a traceback, when there is one, under ``exc_info``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class PlainFormatter(logging.Formatter):
    """The message, then the record's extra fields as ``key=value`` (access-log records)."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = [f"{k}={v}" for k, v in extra_fields(record).items()]
        return f"{text} {' '.join(extra)}" if extra else text


def configure_logging(level: str = "info", fmt: str = "plain") -> None:
    """Send every record at ``level`` and above to stderr, access-log records included."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else PlainFormatter("%(message)s"))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # The access log is at info: it shows whenever the level lets info through.
    logging.getLogger("harpy.access").setLevel(level.upper())


# ------------------------------------------------------------------------------ the arguments


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is out of range (1-65535; 0 for any free port)")
    return port


def host_name(text: str) -> str:
    """An IP address, or a name with only the characters a host name may have."""
    try:
        ipaddress.ip_address(text)
        return text
    except ValueError:
        pass
    labels = text.rstrip(".").split(".")
    if text and all(
        0 < len(label) <= 63 and label.replace("-", "").isalnum() and label.isascii()
        for label in labels
    ):
        return text
    raise argparse.ArgumentTypeError(f"not an IP address or host name: {text!r}")


class Parser(argparse.ArgumentParser):
    """A bad argument is one line on stderr (not the usage block) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parser() -> Parser:
    ap = Parser(prog="python -m harpy", description="Serve a harpy App.")
    ap.add_argument("app", help="module:attribute of the App, e.g. chat:app")
    ap.add_argument("--version", action="version", version=f"harpy {harpy_version()}")
    ap.add_argument("--host", type=host_name, default="127.0.0.1", help="default 127.0.0.1")
    ap.add_argument(
        "--port", type=port_number, default=3000, help="1-65535, 0 for any free one; default 3000"
    )
    ap.add_argument("--tls-cert", help="PEM certificate (chain) file: serve wss://")
    ap.add_argument("--tls-key", help="PEM private key file (if not in --tls-cert)")
    ap.add_argument(
        "--reload",
        action="store_true",
        help="restart when a .py file under the current directory changes (needs watchfiles)",
    )
    ap.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    ap.add_argument(
        "--log-format", default="plain", choices=("plain", "json"), help="json: one object a line"
    )
    # --- workers: N processes sharing the port (harpy.workers) ---
    ap.add_argument(
        "--workers",
        type=_workers_argument,
        default=1,
        help="processes serving the port (default 1); topics cross them through the app's "
        "backplane, else an embedded nats-server (pip install 'harpy-ws[workers]')",
    )
    # --- end workers ---
    return ap


def _workers_argument(value: str) -> int:
    try:
        return parse_workers(value)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# -------------------------------------------------------------------------------- the command


def serve(args: argparse.Namespace) -> int:
    """Serve the App named by ``args.app`` in this process until SIGINT or SIGTERM."""
    app = load_app(args.app)
    try:
        app.run(
            args.host,
            args.port,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            workers=args.workers,
        )
    except OSError as exc:
        where = f"{args.host}:{args.port}"
        raise SystemExit(f"harpy: cannot listen on {where}: {describe(exc)}") from None
    except HarpyError as exc:
        raise SystemExit(f"harpy: {exc}") from None
    return 0


def describe(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "the address is already in use"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "no interface has that address"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    return exc.strerror or str(exc)


def reload(argv: Sequence[str]) -> int:
    """Run the server in a child process; start a new one when a .py file under the current
    directory changes.  SIGINT or SIGTERM stop the child gracefully, then the reloader."""
    try:
        from watchfiles import PythonFilter, run_process
    except ImportError:
        hint = "pip install 'harpy-ws[reload]'"
        raise SystemExit(f"harpy: --reload needs watchfiles: {hint}") from None
    child = [sys.executable, "-m", "harpy", *(a for a in argv if a != "--reload")]
    log = logging.getLogger("harpy")
    log.info("harpy: reloading on changes under %s", os.getcwd())
    # SIGINT, or SIGTERM (which watchfiles turns into KeyboardInterrupt), after the child stopped.
    with contextlib.suppress(KeyboardInterrupt):
        run_process(
            os.getcwd(),
            target=shlex.join(child),
            target_type="command",
            watch_filter=PythonFilter(),
            callback=lambda changes: log.info(
                "harpy: %s changed, restarting", ", ".join(sorted({p for _, p in changes}))
            ),
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = parser()
    args = ap.parse_args(argv)
    if args.tls_key and not args.tls_cert:
        ap.error("--tls-key needs --tls-cert")
    configure_logging(args.log_level, args.log_format)
    if args.reload:
        return reload(argv)
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())

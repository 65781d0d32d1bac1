"""``python -m harpy module:app``: load an App and serve it.

Options follow uvicorn's where they overlap: ``--host``, ``--port``, ``--uds``, ``--reload``,
``--reload-dir``, ``--log-level``, ``--no-access-log``, ``--version``; each can also be set as
``HARPY_<OPTION>`` in the environment (the command line wins).  ``--log-format json`` writes one
JSON object per line, with the fields of the access-log records (logger ``harpy.access``).
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
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any, NoReturn

from .app import App
from .app.access import log_time
from .exceptions import ConfigurationError, HarpyError, require_extra
from .server.forwarded import ProxyTrust
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
    except HarpyError as exc:  # the module built something wrongly: one line, no traceback
        raise SystemExit(f"harpy: {module_name}: {exc}") from None
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
        entry = _json_entry(
            record_time(record),
            record.levelname,
            record.name,
            record.getMessage(),
            extra_fields(record),
        )
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)

    def format_fields(
        self, time: str, level: str, name: str, message: str, fields: dict[str, Any]
    ) -> str:
        """What :meth:`format` makes of a record made at ``time`` (as :func:`log_time` writes
        it) with these fields and no traceback, without the record (the access log's)."""
        return json.dumps(
            _json_entry(time, level, name, message, fields), default=str, ensure_ascii=False
        )


def _json_entry(
    time: str, level: str, name: str, message: str, fields: dict[str, Any]
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "time": time,
        "level": level.lower(),
        "logger": name,
        "message": message,
    }
    for key, value in fields.items():
        entry.setdefault(key, value)
    return entry


def record_time(record: logging.LogRecord) -> str:
    """When the record was made: ISO 8601 in UTC, to the millisecond."""
    return log_time(record.created)


class PlainFormatter(logging.Formatter):
    """The message; for a record with extra fields (the access log), its time first and the
    fields its message does not already say after it, as ``key=value``: each field once."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = extra_fields(record)
        if not fields:
            return text
        # The message's arguments are fields it shows already (an access record's message is
        # ``"%s %s %s" % (event, path, status)``, its fields in the same order first).
        said = [str(arg) for arg in record.args] if isinstance(record.args, tuple) else []
        rest = []
        for key, value in fields.items():
            if str(value) in said:
                said.remove(str(value))
            else:
                rest.append(f"{key}={value}")
        return " ".join([record_time(record), text, *rest])

    def line_template(self, message: str, names: tuple[str, ...], said: int) -> str:
        """The line :meth:`format` makes of a record whose message (the %-template
        ``message``) shows its first ``said`` extra fields, in order, as its arguments (the
        access log's records), as a %-template: filled with the time (as :func:`log_time`
        writes it), the message's arguments, then the values of the other fields."""
        rest = "".join(f" {name.replace('%', '%%')}=%s" for name in names[said:])
        return f"%s {message}{rest}"


def configure_logging(level: str = "info", fmt: str = "plain", *, access_log: bool = True) -> None:
    """Send every record at ``level`` and above to stderr, access-log records included unless
    ``access_log`` is False."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else PlainFormatter("%(message)s"))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # The access records are all at info: they show whenever the level lets info through, and
    # warning silences them (and their formatting) without touching the rest of the log.
    logging.getLogger("harpy.access").setLevel(level.upper() if access_log else logging.WARNING)


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


#: Every option can also come from the environment: ``--reload-dir`` from HARPY_RELOAD_DIR,
#: the app from HARPY_APP.  A flag on the command line wins over its variable.
ENV_PREFIX = "HARPY_"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


class Parser(argparse.ArgumentParser):
    """A bad argument is one line on stderr (not the usage block) and exit status 2; every
    option also reads ``HARPY_<OPTION>`` from the environment (:meth:`parse_with_env`)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_abbrev=False, **kwargs)
        self.options: list[argparse.Action] = []
        #: Options that may be given several times (in the environment: separated by ``:``).
        self.repeated: set[str] = set()

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        if action.dest not in ("help", "version"):
            self.options.append(action)
            if kwargs.get("action") == "append":
                self.repeated.add(action.dest)
        return action

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def parse_with_env(
        self, argv: Sequence[str], environ: Mapping[str, str] | None = None
    ) -> argparse.Namespace:
        """Parse ``argv``; what it leaves out comes from ``HARPY_*`` variables, then defaults."""
        environ = os.environ if environ is None else environ
        defaults: dict[str, Any] = {}
        repeated: dict[str, list[Any]] = {}
        for action in self.options:
            name = env_name(action)
            text = environ.get(name)
            if text is None:
                continue
            if action.dest in self.repeated:
                parts = [p for p in text.split(os.pathsep) if p]
                repeated[action.dest] = [self._env_value(action, name, p) for p in parts]
            else:
                defaults[action.dest] = self._env_value(action, name, text)
        self.set_defaults(**defaults)
        args = self.parse_args(argv)
        for dest, values in repeated.items():
            if getattr(args, dest) is None:
                setattr(args, dest, values)
        return args

    def _env_value(self, action: argparse.Action, name: str, text: str) -> Any:
        """``text`` from the variable ``name`` as the option's value, or one line and exit 2."""
        if action.nargs == 0:  # a flag
            if text.strip().lower() in _TRUE:
                return True
            if text.strip().lower() in _FALSE:
                return False
            self.error(f"{name}={text!r}: expected 1/true/yes/on or 0/false/no/off")
        try:
            value = action.type(text) if callable(action.type) else text
        except (argparse.ArgumentTypeError, ValueError) as exc:
            self.error(f"{name}: {exc}")
        if action.choices is not None and value not in action.choices:
            choices = ", ".join(map(repr, action.choices))
            self.error(f"{name}: invalid choice: {text!r} (choose from {choices})")
        return value


def env_name(action: argparse.Action) -> str:
    """``HARPY_`` and the option's name: ``--reload-dir`` -> ``HARPY_RELOAD_DIR``."""
    long = [o for o in action.option_strings if o.startswith("--")]
    name = long[0][2:] if long else action.dest
    return ENV_PREFIX + name.replace("-", "_").upper()


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds >= 0")
    return value


def directory(text: str) -> str:
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"not a directory: {text!r}")
    return os.path.abspath(text)


def parser() -> Parser:
    ap = Parser(
        prog="python -m harpy",
        description="Serve a harpy App.  Every option can also be set in the environment: "
        "HARPY_ and its name (HARPY_PORT=8000, HARPY_NO_ACCESS_LOG=1, HARPY_APP=chat:app); "
        "the command line wins.",
    )
    ap.add_argument(
        "app", nargs="?", help="module:attribute of the App, e.g. chat:app (or HARPY_APP)"
    )
    ap.add_argument("--version", action="version", version=f"harpy {harpy_version()}")
    ap.add_argument("--host", type=host_name, default="127.0.0.1", help="default 127.0.0.1")
    ap.add_argument(
        "--port", type=port_number, default=3000, help="1-65535, 0 for any free one; default 3000"
    )
    ap.add_argument(
        "--uds", metavar="PATH", help="listen on this Unix socket instead of --host/--port"
    )
    ap.add_argument("--tls-cert", help="PEM certificate (chain) file: serve wss://")
    ap.add_argument("--tls-key", help="PEM private key file (if not in --tls-cert)")
    ap.add_argument(
        "--reload",
        action="store_true",
        help="restart when a .py file under the current directory changes (needs watchfiles)",
    )
    ap.add_argument(
        "--reload-dir",
        action="append",
        type=directory,
        metavar="DIR",
        help="watch DIR instead of the current directory (repeatable; implies --reload)",
    )
    ap.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    ap.add_argument(
        "--log-format", default="plain", choices=("plain", "json"), help="json: one object a line"
    )
    ap.add_argument(
        "--no-access-log", action="store_true", help="no access records (logger harpy.access)"
    )
    ap.add_argument(
        "--drain",
        type=seconds,
        metavar="SECONDS",
        help="on SIGTERM, answer /healthz with 503 and keep serving this long before closing "
        "(default: the app's drain_timeout, 0)",
    )
    # --- proxies: whose X-Forwarded-* / Forwarded / PROXY header is believed (docs/proxies.md) ---
    ap.add_argument(
        "--proxy-headers",
        action="store_true",
        help="believe X-Forwarded-For/-Proto/-Host and Forwarded from --forwarded-allow-ips",
    )
    ap.add_argument(
        "--proxy-protocol",
        action="store_true",
        help="read a PROXY protocol header (v1 or v2) first from --forwarded-allow-ips",
    )
    ap.add_argument(
        "--forwarded-allow-ips",
        type=_trusted_argument,
        default=None,
        metavar="IPS",
        help="comma-separated addresses and networks of trusted proxies, or '*' "
        "(default 127.0.0.1,::1)",
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


def _trusted_argument(value: str) -> str:
    try:
        ProxyTrust(value)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _workers_argument(value: str) -> int:
    try:
        return parse_workers(value)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# -------------------------------------------------------------------------------- the command


def serve(args: argparse.Namespace) -> int:
    """Serve the App named by ``args.app`` in this process until SIGINT or SIGTERM."""
    app = load_app(args.app)
    if args.drain is not None:
        app.drain_timeout = args.drain
    listen: dict[str, Any] = {"uds": args.uds} if args.uds else {}
    if args.proxy_headers or args.proxy_protocol or args.forwarded_allow_ips is not None:
        app.configure_proxies(
            proxy_headers=args.proxy_headers or None,
            proxy_protocol=args.proxy_protocol or None,
            forwarded_allow_ips=args.forwarded_allow_ips,
        )
    try:
        app.run(
            args.host,
            args.port,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            workers=args.workers,
            **listen,
        )
    except OSError as exc:
        where = f"unix:{args.uds}" if args.uds else f"{args.host}:{args.port}"
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


def reload(argv: Sequence[str], dirs: Sequence[str] | None = None) -> int:
    """Run the server in a child process; start a new one when a .py file under ``dirs``
    (default: the current directory) changes.  SIGINT or SIGTERM stop the child gracefully,
    then the reloader."""
    try:
        require_extra("watchfiles", "watchfiles", "reload", "--reload")
    except ConfigurationError as exc:
        raise SystemExit(f"harpy: {exc}") from None
    from watchfiles import PythonFilter, run_process

    child = [sys.executable, "-m", "harpy", *without_reload(argv)]
    for name in ("RELOAD", "RELOAD_DIR"):  # the child serves; it does not reload in turn
        os.environ.pop(ENV_PREFIX + name, None)
    watched = list(dirs or [os.getcwd()])
    log = logging.getLogger("harpy")
    log.info("harpy: reloading on changes under %s", ", ".join(watched))
    # SIGINT, or SIGTERM (which watchfiles turns into KeyboardInterrupt), after the child stopped.
    with contextlib.suppress(KeyboardInterrupt):
        run_process(
            *watched,
            target=shlex.join(child),
            target_type="command",
            watch_filter=PythonFilter(),
            callback=lambda changes: log.info(
                "harpy: %s changed, restarting", ", ".join(sorted({p for _, p in changes}))
            ),
        )
    return 0


def without_reload(argv: Sequence[str]) -> list[str]:
    """``argv`` less ``--reload`` and ``--reload-dir DIR`` (or ``--reload-dir=DIR``)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--reload-dir":
            skip = True
        elif arg != "--reload" and not arg.startswith("--reload-dir="):
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = parser()
    args = ap.parse_with_env(argv)
    if not args.app:
        ap.error("which app? give MODULE:ATTRIBUTE, or set HARPY_APP")
    if args.tls_key and not args.tls_cert:
        ap.error("--tls-key needs --tls-cert")
    if args.uds and args.workers > 1:
        ap.error("--uds serves from one process: it cannot be combined with --workers")
    configure_logging(args.log_level, args.log_format, access_log=not args.no_access_log)
    if args.reload or args.reload_dir:
        return reload(argv, args.reload_dir)
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())

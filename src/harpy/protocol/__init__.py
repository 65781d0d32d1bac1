"""The RFC 6455 core: no I/O, no routes, no app; bytes in, events and bytes out.

The frame codec is compiled when harpy was installed with a C compiler; ``HARPY_NO_EXTENSIONS=1``
selects the pure-Python source of the same module (``COMPILED`` tells which one is in use).
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from typing import TYPE_CHECKING

from .._compiled import use_compiled

# The upgrade's parser, compiled, stands under its source's name (harpy/_compiled.py).
use_compiled(sys.modules[__name__], ("handshake",))

from .handshake import (  # noqa: E402
    Headers,
    Request,
    accept_key,
    build_accept,
    build_refusal,
    build_response,
    check_upgrade,
    parse_cookies,
    parse_request,
)

_CORE_NAMES = (
    "EV_ERROR",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "ST_CLOSED",
    "ST_CLOSING",
    "ST_OPEN",
    "FrameReader",
    "build_close",
    "build_frame",
    "frame_header",
    "is_valid_close_code",
)


def _load_core() -> tuple[object, bool]:
    if not os.environ.get("HARPY_NO_EXTENSIONS"):
        try:
            module = importlib.import_module(f"{__name__}._ccore")
        except ImportError:
            pass
        else:
            # Only a real extension counts: a leftover copy of the source is not compiled.
            if str(getattr(module, "__file__", "")).endswith(tuple(EXTENSION_SUFFIXES)):
                return module, True
    return importlib.import_module(f"{__name__}._core"), False


_impl, COMPILED = _load_core()

if TYPE_CHECKING:
    from ._core import (
        EV_ERROR,
        OP_BINARY,
        OP_CLOSE,
        OP_CONT,
        OP_PING,
        OP_PONG,
        OP_TEXT,
        ST_CLOSED,
        ST_CLOSING,
        ST_OPEN,
        FrameReader,
        build_close,
        build_frame,
        frame_header,
        is_valid_close_code,
    )
else:
    globals().update({name: getattr(_impl, name) for name in _CORE_NAMES})

from .message import Message  # noqa: E402  (frames with the core chosen above)

__all__ = [
    "COMPILED",
    "EV_ERROR",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "ST_CLOSED",
    "ST_CLOSING",
    "ST_OPEN",
    "FrameReader",
    "Headers",
    "Message",
    "Request",
    "accept_key",
    "build_accept",
    "build_close",
    "build_frame",
    "build_refusal",
    "build_response",
    "check_upgrade",
    "frame_header",
    "is_valid_close_code",
    "parse_cookies",
    "parse_request",
]

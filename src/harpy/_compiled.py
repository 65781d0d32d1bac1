"""The compiled modules of the per-message and per-connection path, and the switch to their
pure-Python sources.

When harpy is installed with Cython and a C compiler, the frame codec is compiled (see
:mod:`harpy.protocol`), and so are the modules of :data:`MODULES`: ``server/connection.py`` is
compiled as ``harpy.server._cconnection`` (typed by ``_cconnection.pxd``), and so on.  Their
package (``harpy.server``, ``harpy.pubsub``) calls :func:`use_compiled` before importing them:
the compiled module then stands under the source's name, so ``harpy.server.connection`` is the
compiled one.  ``HARPY_NO_EXTENSIONS=1``, or a missing build, leaves the ``.py`` sources.
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from types import ModuleType

__all__ = [
    "MODULES",
    "build_copies",
    "compiled_name",
    "is_compiled",
    "pure_requested",
    "use_compiled",
]

#: Compiled from the same source as the pure-Python module, each as ``_c`` + its name; a
#: compiled module cimports only those before it.
MODULES = (
    "harpy.protocol.handshake",
    "harpy.server.listener",
    "harpy.server.connection",
    "harpy.server.framed",
    "harpy.pubsub.groups",
)


def pure_requested() -> bool:
    """Whether ``HARPY_NO_EXTENSIONS`` asks for the pure-Python modules."""
    return bool(os.environ.get("HARPY_NO_EXTENSIONS"))


def is_compiled(module: ModuleType) -> bool:
    """Whether ``module`` was loaded from an extension (not from a ``.py`` file)."""
    return str(getattr(module, "__file__", "")).endswith(tuple(EXTENSION_SUFFIXES))


def compiled_name(name: str) -> str:
    """The compiled module of ``harpy.x.name``: ``harpy.x._cname``."""
    package, _, module = name.rpartition(".")
    return f"{package}._c{module}"


def build_copies() -> frozenset[str]:
    """The names of the files a build copies for Cython (setup.py): the frame codec's source,
    and each module's source and types under its compiled name.  They are no modules of their
    own, and no part of the source distribution."""
    names = {"_ccore.py"}
    for name in MODULES:
        stem = compiled_name(name).rpartition(".")[2]
        names |= {stem + ".py", stem + ".pxd"}
    return frozenset(names)


def use_compiled(package: ModuleType, names: tuple[str, ...]) -> None:
    """Put the compiled modules ``package.<name>`` in place of their sources, in order (a
    compiled module imports the ones before it under their source's name), before anything
    imports them.  One that is not built, and every one after it, stays pure Python."""
    if pure_requested():
        return
    for name in names:
        full = f"{package.__name__}.{name}"
        if full in sys.modules:
            return  # the source was imported already: keep to it
        try:
            module = importlib.import_module(compiled_name(full))
        except ImportError:
            return
        if not is_compiled(module):
            return  # a leftover copy of the source, not a build
        sys.modules[full] = module
        setattr(package, name, module)

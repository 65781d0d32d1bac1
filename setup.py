"""Build harpy's optional compiled core.

``src/harpy/protocol/_core.py`` is plain Python. When Cython and a C compiler are present, the
same file is compiled as ``harpy.protocol._ccore`` (typed by ``_ccore.pxd``); otherwise, or with
``HARPY_NO_EXTENSIONS=1``, the pure-Python module is used as it is.

The connection glue and the fan-out loop are compiled the same way, each from its own source:
``server/connection.py`` as ``harpy.server._cconnection`` (typed by a copy of
``connection.pxd``), ``server/framed.py`` as ``_cframed``, ``server/listener.py`` as ``_clistener``,
``protocol/handshake.py`` (the upgrade's parser) as ``_chandshake``, ``pubsub/groups.py`` as ``_cgroups``;
their package puts the compiled module under the source's name when it was built
(``harpy/_compiled.py``), so a compiled module cimports another by its source's name.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent
HARPY = HERE / "src" / "harpy"
#: Source -> the module Cython compiles it as (the copy's name), under src/harpy.
SOURCES = {
    "protocol/_core.py": "protocol/_ccore.py",
    "protocol/handshake.py": "protocol/_chandshake.py",
    "server/listener.py": "server/_clistener.py",
    "server/connection.py": "server/_cconnection.py",
    "server/framed.py": "server/_cframed.py",
    "pubsub/groups.py": "pubsub/_cgroups.py",
}


class OptionalBuildExt(build_ext):
    """A failed compile leaves the pure-Python core in place instead of failing the install."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001
            print(f"harpy: compiled core not built ({exc}); using pure Python", file=sys.stderr)

    def build_extension(self, ext):  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            print(f"harpy: {ext.name} not built ({exc}); using pure Python", file=sys.stderr)


class BuildPyWithoutCopy(build_py):
    """``_ccore.py`` (and each copy of :data:`SOURCES`) is only Cython's input, a copy of its
    source: it never ships as a module."""

    def find_package_modules(self, package, package_dir):  # type: ignore[no-untyped-def]
        modules = super().find_package_modules(package, package_dir)
        return [m for m in modules if m[2].replace(os.sep, "/") not in _COPIES]


_COPIES = {f"src/harpy/{copy}" for copy in SOURCES.values()}


def _remove_stale_builds() -> None:
    """A compiled module left from an older source must never shadow the new source."""
    for copy in SOURCES.values():
        stem = (HARPY / copy).with_suffix("")
        for suffix in ("*.so", "*.pyd"):
            for path in stem.parent.glob(stem.name + suffix):
                path.unlink()


def extensions() -> list[object]:
    if "sdist" in sys.argv[1:]:
        return []  # the sdist carries the source only (MANIFEST.in), and leaves the tree alone
    _remove_stale_builds()
    if os.environ.get("HARPY_NO_EXTENSIONS"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        return []
    # The compiled module needs its own name so the pure-Python one stays importable beside it.
    for source, copy in SOURCES.items():
        shutil.copyfile(HARPY / source, HARPY / copy)
        types = (HARPY / source).with_suffix(".pxd")
        if source != "protocol/_core.py" and types.exists():  # _ccore.pxd: the copy's name
            shutil.copyfile(types, (HARPY / copy).with_suffix(".pxd"))
    try:
        return _cythonize(cythonize)
    except Exception as exc:  # noqa: BLE001
        print(f"harpy: Cython failed ({exc}); using pure Python", file=sys.stderr)
        return []


def _cythonize(cythonize: object) -> list[object]:
    return list(
        cythonize(  # type: ignore[operator]
            sorted(_COPIES),
            compiler_directives={
                "language_level": "3",
                "boundscheck": False,
                "wraparound": False,
                "annotation_typing": False,  # the .pxd alone gives the C types
            },
            include_path=["src"],
            quiet=True,
        )
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt, "build_py": BuildPyWithoutCopy})

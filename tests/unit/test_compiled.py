"""The connection glue and the fan-out loop run compiled from their own source, or as that
source: ``HARPY_EXPECT_COMPILED=1`` (make pytest) fails a build that left them pure Python,
``HARPY_NO_EXTENSIONS=1`` (make pytest-pure) must run the ``.py`` files themselves."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import harpy
from harpy import _compiled
from harpy.pubsub import groups
from harpy.server import connection, framed

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", _compiled.MODULES)
def test_each_module_runs_compiled_or_as_its_source(name: str) -> None:
    module = importlib.import_module(name)
    source = ROOT / "src" / (name.replace(".", "/") + ".py")
    if os.environ.get("HARPY_NO_EXTENSIONS"):
        assert Path(module.__file__ or "") == source
        assert not _compiled.is_compiled(module)
        return
    if os.environ.get("HARPY_EXPECT_COMPILED") == "1":
        assert _compiled.is_compiled(module), f"{name} is not compiled: {module.__file__}"
    if _compiled.is_compiled(module):
        assert module.__name__ == _compiled.compiled_name(name)
        assert sys.modules[name] is module


def test_the_classes_in_use_come_from_the_modules_in_use() -> None:
    assert harpy.server.Connection is connection.Connection
    assert harpy.server.FramedConnection is framed.FramedConnection
    assert issubclass(framed.FramedConnection, connection.Connection)
    assert harpy.pubsub.fan_out is groups.fan_out


def test_compiled_connections_have_no_instance_dict() -> None:
    """A compiled connection is a C struct of typed fields (the pure one has slots)."""
    assert not hasattr(framed.FramedConnection.__new__(framed.FramedConnection), "__dict__")


def test_the_switch_reaches_every_module_in_a_new_process() -> None:
    """``HARPY_NO_EXTENSIONS=1`` set before harpy is imported selects every source; unset, a
    build's compiled modules are used (the subprocess reports which files it loaded)."""
    code = (
        "import sys, harpy, harpy.server.framed, harpy.pubsub.groups\n"
        f"print(*(sys.modules[n].__file__ for n in {_compiled.MODULES!r}))"
    )
    env = {**os.environ, "HARPY_NO_EXTENSIONS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    ).stdout.split()
    assert out == [str(ROOT / "src" / (n.replace(".", "/") + ".py")) for n in _compiled.MODULES]

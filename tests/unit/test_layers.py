"""The package's layers: each imports only the layers below it, and nothing imports in a cycle.

The imports are read from the source (every ``import`` statement, including those inside
functions and under ``TYPE_CHECKING``), so a new upward dependency fails here, not in review.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import harpy
from harpy._compiled import build_copies

SRC = Path(harpy.__file__).parent

#: Lowest first. A module may import its own layer and the layers before it.
LAYERS = [
    ("shared", ["exceptions", "_compiled"]),
    ("protocol", ["protocol"]),
    ("server", ["server"]),
    ("pubsub", ["pubsub"]),
    ("auth", ["auth"]),
    ("app", ["app"]),
    ("channels", ["channels"]),
    ("edges", ["asgi", "testing", "cli", "workers", "__main__", "__init__"]),
]
RANK = {prefix: rank for rank, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes}
#: What a build copies for Cython to compile (setup.py): not modules of their own.
COPIES = build_copies()


def _layer(module: str) -> int:
    """The rank of ``harpy.x.y``'s layer (by its first part below ``harpy``)."""
    parts = module.split(".")
    head = parts[1] if len(parts) > 1 else "__init__"
    return RANK[head]


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
        if len(parts) == 1:
            return "harpy.__init__"
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """The harpy modules ``path`` imports, resolved to absolute names."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    if module == "harpy.__init__":
        package = "harpy"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "harpy" or target.startswith("harpy."):
                found.add(target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("harpy"))
    return found


def _sources() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if p.name not in COPIES)


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(SRC)))
def test_each_module_imports_only_its_layer_and_those_below(path: Path) -> None:
    module = _module_name(path)
    mine = _layer(module)
    upward = sorted(t for t in _imports(path) if t != "harpy" and _layer(t) > mine)
    assert not upward, f"{module} ({LAYERS[mine][0]}) imports a higher layer: {upward}"


def test_the_layers_are_packages() -> None:
    for name in ("protocol", "server", "pubsub", "auth", "app", "channels"):
        assert (SRC / name / "__init__.py").is_file(), name


@pytest.mark.parametrize(
    "module",
    [
        "harpy.protocol",
        "harpy.server",
        "harpy.pubsub",
        "harpy.auth",
        "harpy.app",
        "harpy.channels",
        "harpy.asgi",
        "harpy.testing",
        "harpy.cli",
    ],
)
def test_each_layer_imports_on_its_own_without_a_cycle(module: str) -> None:
    """In a fresh interpreter, importing a layer first works: no cycle needs another order."""
    code = f"import importlib; importlib.import_module({module!r})"
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr

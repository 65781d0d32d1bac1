"""The package as users get it: ``make dist``'s steps (scripts/build_dist.py: the sdist and, from
it, the wheel, repaired by auditwheel to a manylinux tag, checked by twine); install that wheel
into a fresh virtual environment; serve an example from there and talk to it.

The build runs on a copy of the source tree (a build in place would replace the compiled core
this test run is using), without build isolation: setuptools, wheel and Cython come from the
test environment.  The fresh environment gets harpy-ws from the built wheel only, and its runtime
dependency (uvloop) from the package index or pip's cache.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import yaml
from websockets.asyncio.client import connect

from harpy._compiled import MODULES, build_copies, compiled_name
from tests.e2e.test_cli import harpy_process, stopped
from tests.timing import TIMEOUT, scaled

ROOT = Path(__file__).resolve().parents[2]

#: The files at the top of the tree that the sdist is made from.
TOP_FILES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE", "CHANGELOG.md")

#: What a build leaves in the tree and never belongs in the sdist.
GENERATED = (*build_copies(), "*.c", "*.so", "*.pyd", "__pycache__", "*.egg-info", "build")


def source_copy(into: Path) -> Path:
    tree = into / "harpy-src"
    tree.mkdir()
    for name in TOP_FILES:
        shutil.copy2(ROOT / name, tree / name)
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns(*GENERATED))
    return tree


def run(*cmd: str | Path, cwd: Path | None = None, cflags: str = "", timeout: float = 300.0) -> str:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    if cflags:
        env["CFLAGS"] = f"{env.get('CFLAGS', '')} {cflags}".strip()
    env.pop("HARPY_NO_EXTENSIONS", None)
    done = subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=scaled(timeout),
    )
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_the_built_wheel_installs_into_a_fresh_venv_and_serves(tmp_path: Path) -> None:
    # A plain test: the compile alone can take most of the minute the async tests are given;
    # every step below is bounded by its own timeout.
    tree = source_copy(tmp_path)
    dist = tmp_path / "dist"
    # -O0: the compiled core is built and loaded as users get it, without the optimiser's time.
    run(sys.executable, ROOT / "scripts" / "build_dist.py", "--no-isolation", "--source", tree,
        "--outdir", dist, cflags="-O0")

    (sdist,) = dist.glob("harpy_ws-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for needed in ("setup.py", "src/harpy/protocol/_core.py", "src/harpy/protocol/_ccore.pxd",
                   "LICENSE", "src/harpy/cli.py"):
        assert needed in names, f"{needed} missing from the sdist"
    generated = [
        n for n in names if n.rpartition("/")[2] in build_copies() or re.search(r"\.(c|so|pyd)$", n)
    ]
    assert generated == [], f"build output in the sdist: {generated}"

    (wheel,) = dist.glob("harpy_ws-*.whl")  # the repaired one only
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    # auditwheel's tags, e.g. manylinux1_x86_64.manylinux_2_5_x86_64: a manylinux_2_N among them.
    platforms = re.fullmatch(rf"harpy_ws-0\.1\.0-{tag}-{tag}-(.+)\.whl", wheel.name)
    assert platforms is not None, wheel.name
    assert any(re.fullmatch(rf"manylinux_2_\d+_{platform.machine()}", p)
               for p in platforms.group(1).split(".")), wheel.name
    with zipfile.ZipFile(wheel) as whl:
        members = whl.namelist()
    for module in ("harpy.protocol._ccore", *map(compiled_name, MODULES)):
        path = module.replace(".", "/")
        assert any(re.fullmatch(rf"{path}\..*\.so", m) for m in members), (module, members)
        assert f"{path}.py" not in members  # Cython's input, not a module
    for module in map(compiled_name, MODULES):  # a copy of the source's .pxd
        assert module.replace(".", "/") + ".pxd" not in members

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    # This environment's pip installs into the fresh one (saves bootstrapping a pip there).
    run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--find-links", dist,
        "harpy-ws")
    where = run(
        python, "-c", "import harpy, harpy.protocol as p; print(harpy.__file__, p.COMPILED)",
        cwd=tmp_path,
    )
    assert where.startswith(str(venv)) and where.split()[-1] == "True", where
    # What cibuildwheel runs on each release wheel (its test-command), here on this one.
    checked = run(python, ROOT / "scripts" / "check_wheel.py", cwd=tmp_path)
    assert "compiled core, echo ok" in checked
    version = run(python, "-m", "harpy", "--version")
    assert version.strip() == "harpy 0.1.0"

    # The example as a user's own module, beside the fresh environment: not the repository's.
    app_dir = tmp_path / "site"
    (app_dir / "examples").mkdir(parents=True)
    shutil.copy2(ROOT / "examples" / "echo.py", app_dir / "examples" / "echo.py")
    asyncio.run(echo_through(python, app_dir))


async def echo_through(python: Path, app_dir: Path) -> None:
    async with harpy_process("examples.echo:app", python=python, cwd=app_dir) as (proc, url):
        async with connect(f"{url}/echo", open_timeout=TIMEOUT) as ws:
            await ws.send("from the wheel")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "from the wheel"
        assert await stopped(proc) == 0


# ------------------------------------------------------------------- the release configuration

#: What a release publishes: every CPython harpy supports, on both C libraries and both
#: architectures (the classifiers and requires-python say 3.11-3.13).
RELEASE_PYTHONS = ("cp311", "cp312", "cp313")
RELEASE_PLATFORMS = (
    "manylinux_x86_64", "manylinux_aarch64", "musllinux_x86_64", "musllinux_aarch64",
)


def test_cibuildwheel_builds_every_supported_python_on_manylinux_and_musllinux() -> None:
    cibuildwheel = Path(sys.executable).parent / "cibuildwheel"
    listed = run(cibuildwheel, "--print-build-identifiers", "--platform", "linux", ROOT, cwd=ROOT)
    expected = {f"{py}-{plat}" for py in RELEASE_PYTHONS for plat in RELEASE_PLATFORMS}
    assert set(listed.split()) == expected
    classifiers = (ROOT / "pyproject.toml").read_text()
    for py in RELEASE_PYTHONS:
        assert f'"Programming Language :: Python :: 3.{py[3:]}"' in classifiers


def test_the_release_workflow_builds_checks_and_publishes_on_a_tag() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yml").read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as True
    assert triggers["push"]["tags"] == ["v*"]
    jobs = workflow["jobs"]
    (build,) = [s for s in jobs["wheels"]["steps"] if s.get("uses", "").startswith(
        "pypa/cibuildwheel@")]
    # The action runs the cibuildwheel that checks the configuration above (same major).
    installed = importlib.metadata.version("cibuildwheel").split(".")[0]
    assert build["uses"].split("@v")[1].split(".")[0] == installed
    assert set(jobs["wheels"]["strategy"]["matrix"]["os"]) == {"ubuntu-24.04", "ubuntu-24.04-arm"}
    assert any("python -m build --sdist" in s.get("run", "") for s in jobs["sdist"]["steps"])
    assert any("twine check --strict" in s.get("run", "") for s in jobs["check"]["steps"])
    publish = jobs["publish"]
    assert publish["needs"] == ["check"] and "refs/tags/v" in publish["if"]
    assert publish["permissions"] == {"id-token": "write"}  # trusted publishing, no token
    assert [s["uses"] for s in publish["steps"]][-1] == "pypa/gh-action-pypi-publish@release/v1"
    assert "password" not in str(publish)

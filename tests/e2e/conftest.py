"""End-to-end tests of the self-contained build (dist/pycni) under real conditions: a root
filesystem without Python, containerd + runc, podman. They run the artifact, never the venv.

The build is made once per test run (build/build.sh) unless dist/pycni is newer than every source
file, or PYCNI_ARTIFACT names a build directory to test instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("cni", "ipam", "build")


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="end-to-end tests need root (namespaces, mounts, runtimes)")
        for item in items:
            if "e2e" in str(item.fspath):
                item.add_marker(skip)


def _stale(exe: Path) -> bool:
    if not exe.exists():
        return True
    built = exe.stat().st_mtime
    for top in SOURCES:
        for path in (ROOT / top).rglob("*"):
            if path.suffix in (".py", ".spec", ".sh") and ".work" not in path.parts \
                    and path.stat().st_mtime > built:
                return True
    return False


@pytest.fixture(scope="session")
def artifact() -> Path:
    """The one-directory build: a dir with `pycni`, `pycni-ipam`, `pycni-portmap`, `_internal/`."""
    given = os.environ.get("PYCNI_ARTIFACT")
    if given:
        return Path(given).resolve()
    dist = ROOT / "dist" / "pycni"
    if _stale(dist / "pycni"):
        subprocess.run(["bash", str(ROOT / "build" / "build.sh")], check=True, cwd=ROOT)
    return dist


def host_libraries(exe: Path, bundled: Path) -> set[Path]:
    """Shared libraries the build loads from the host: the executable's own (the PyInstaller
    bootloader is loaded by the system loader before any bundled library is known) and, for the
    bundled libraries, those the bundle does not carry."""
    inside = {p.name for p in bundled.rglob("*.so*")}

    def deps(binary: Path) -> list[Path]:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
        found = (next((x for x in line.split() if x.startswith("/")), None) for line in out.splitlines())
        return [Path(p) for p in found if p]

    libs = set(deps(exe))
    for lib in bundled.rglob("*.so*"):
        libs.update(p for p in deps(lib) if p.name not in inside)
    return libs


def copy_file(src: Path, root: Path) -> None:
    """Copy `src` to the same path under `root`, keeping symlinks' targets resolvable."""
    dest = root / src.relative_to("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src.resolve(), dest)


def have(*programs: str) -> bool:
    return all(shutil.which(p) for p in programs)

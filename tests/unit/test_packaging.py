"""`pip install .` from a clean copy of the tree installs every package and leaves nothing in it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_pip_install_leaves_no_build_dir_in_the_tree(tmp_path):
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    before = {p.relative_to(src) for p in src.rglob("*")}
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--disable-pip-version-check", "--target", str(target), str(src)],
                   check=False, capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stdout[-2000:] + pip.stderr[-2000:]
    assert not (src / "build" / "lib").exists()
    new = {p.relative_to(src) for p in src.rglob("*")} - before
    stray = sorted(str(p) for p in new if p.parts[0] not in ("dist", "pycni.egg-info"))
    assert not stray, stray
    installed = {p.relative_to(target).as_posix() for p in target.rglob("*.py")}
    tracked = {p for p in filter(None, files.decode().split("\0")) if p.startswith(("cni/", "ipam/")) and p.endswith(".py")}
    assert tracked <= installed, sorted(tracked - installed)

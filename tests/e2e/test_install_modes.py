"""Issue 28 row 9 on the real build: `pycni install` run by root under umask 000 leaves nothing
an unprivileged user can replace, and the installed names still answer."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

import pytest

from tests.integration.test_node_hardening import attacks_on_the_launcher, loose_paths


@pytest.fixture
def shared_dir():
    d = tempfile.mkdtemp(prefix="pycnit-inst-")
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_the_build_installed_under_umask_000_is_roots_and_sealed(artifact, shared_dir):
    bin_dir = os.path.join(shared_dir, "opt", "cni", "bin")
    subprocess.run(["sh", "-c", 'umask 000 && exec "$@"', "sh", str(artifact / "pycni"), "install",
                    "--bin-dir", bin_dir], check=True, capture_output=True)
    assert attacks_on_the_launcher(bin_dir) == []
    assert loose_paths(os.path.join(shared_dir, "opt")) == []
    out = subprocess.run([os.path.join(bin_dir, "pycni")], input=b"{}", capture_output=True,
                         env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and "1.1.0" in json.loads(out.stdout)["supportedVersions"], out

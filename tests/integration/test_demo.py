"""`scripts/demo.sh`, the first thing a newcomer runs: it must fail when the teardown leaves
anything, counted as DEL and GC see it (issue 23: it counted pycni's `.pycni-held/complete`
marker as a reservation, and its final test could not fail under `set -e`)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).parents[2]


def demo(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**{k: v for k, v in os.environ.items() if not k.startswith(("CNI_", "PYCNI_"))},
                               **env})


def test_the_demo_passes_clean_and_fails_on_a_planted_leak():
    clean = demo()
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "== after DEL: 0 address reservations, 0 veths on the node" in clean.stdout
    assert clean.stdout.rstrip().endswith("demo OK")
    leak = demo(PYCNI_DEMO_PLANT="leak")
    assert leak.returncode == 1, leak.stdout + leak.stderr
    assert "== after DEL: 1 address reservations" in leak.stdout and "demo OK" not in leak.stdout
    assert "address without interface: demo 10.244.0.250 held by crashed/eth0" in leak.stdout
    assert "demo FAILED" in leak.stderr

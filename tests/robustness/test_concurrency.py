"""Concurrent ADD/CHECK/DEL of many containers on one network (see concurrency_driver.py)."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import node, sh  # noqa: F401  (fixture)

from .conftest import SUMMARIES, profile

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("backend, dual_stack", [("nftables", False), ("nftables", True), ("iptables", True)],
                         ids=["nftables-ipv4", "nftables-dual-stack", "iptables-dual-stack"])
def test_concurrent_operations_never_collide_or_leak(node, backend, dual_stack):  # noqa: F811
    workers, ops = profile(8, 64), profile(120, 2000)
    prefix = f"{node.name}-w"
    made = []
    try:
        for w in range(workers):
            sh("ip", "netns", "add", f"{prefix}{w}")
            made.append(f"{prefix}{w}")
        data = node.tmp / "ipam"
        cmd = ["ip", "netns", "exec", node.name, sys.executable, "-m", "tests.robustness.concurrency_driver",
               "--workers", str(workers), "--ops", str(ops), "--pods", prefix, "--data", str(data),
               "--log", str(node.log_file), "--backend", backend] + (["--dual-stack"] if dual_stack else [])
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    finally:
        for ns in made:
            sh("ip", "netns", "del", ns, check=False)
    summary = [line for line in proc.stdout.splitlines() if line.startswith("concurrency (")]
    assert summary, proc.stdout + proc.stderr[-3000:]
    SUMMARIES.append(summary[0])
    assert proc.returncode == 0, proc.stdout

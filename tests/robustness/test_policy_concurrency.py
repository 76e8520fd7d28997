"""NetworkPolicy's plugin and agent halves racing (see policy_driver.py): a pod is isolated from
the moment its ADD returns and leaves no verdict behind after its DEL, while the agent replaces
the table as fast as it can."""

import subprocess
import sys
from pathlib import Path

from tests.integration.conftest import node, sh  # noqa: F401  (fixture)

from .conftest import SUMMARIES, profile

ROOT = Path(__file__).resolve().parents[2]


def test_pods_are_never_open_after_add_nor_left_after_del_while_the_agent_syncs(node):  # noqa: F811
    workers, ops = profile(8, 32), profile(60, 600)
    prefix = f"{node.name}-w"
    made = []
    try:
        for w in range(workers):
            sh("ip", "netns", "add", f"{prefix}{w}")
            made.append(f"{prefix}{w}")
        proc = subprocess.run(["ip", "netns", "exec", node.name, sys.executable, "-m", "tests.robustness.policy_driver",
                               "--workers", str(workers), "--ops", str(ops), "--pods", prefix, "--dir", str(node.tmp)],
                              cwd=ROOT, capture_output=True, text=True)
    finally:
        for ns in made:
            sh("ip", "netns", "del", ns, check=False)
    summary = [line for line in proc.stdout.splitlines() if line.startswith("policy concurrency")]
    assert summary, proc.stdout + proc.stderr[-3000:]
    SUMMARIES.append(summary[0])
    assert proc.returncode == 0, proc.stdout

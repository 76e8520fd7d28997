"""Property-based fuzzing of stdin JSON and the CNI_* environment (see fuzz_driver.py)."""

import os
import subprocess
import sys
from pathlib import Path

from tests.integration.conftest import node  # noqa: F401  (fixture)

from .conftest import SUMMARIES, profile

ROOT = Path(__file__).resolve().parents[2]


def test_fuzz_every_case_ends_in_a_result_or_a_cni_error(node):  # noqa: F811
    pod = node.pod()
    data = node.tmp / "ipam"
    data.mkdir()
    cases = profile(400, 10000)
    seed = ["--seed", os.environ["PYCNI_SEED"]] if os.environ.get("PYCNI_SEED") else []   # else a new one, printed
    proc = subprocess.run(["ip", "netns", "exec", node.name, sys.executable, "-m", "tests.robustness.fuzz_driver",
                           "--cases", str(cases), "--pod", f"/var/run/netns/{pod}", "--data", str(data),
                           "--db", str(ROOT / ".hypothesis" / "fuzz"), *seed],
                          cwd=ROOT, capture_output=True, text=True,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYCNI_LOG_FILE": str(node.log_file),
                               "PYCNI_HELPER_SOCKET": str(node.tmp / "helper.sock")})
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    summary = [line for line in proc.stdout.splitlines() if line.startswith("fuzz:")][0]
    SUMMARIES.append(summary)
    assert f"fuzz: {cases} cases" in summary and "leaks found = 0" in summary
    assert node.links() == ["lo"] or all(not link.startswith("veth") for link in node.links())

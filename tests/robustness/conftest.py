"""Robustness suites (issue 5). Short profiles by default; `PYCNI_LONG=1` runs the long ones.
Each suite records one summary line, printed at the end of the test run."""

import os

LONG = os.environ.get("PYCNI_LONG") == "1"
SUMMARIES: list[str] = []


def profile(short: int, long: int) -> int:
    return long if LONG else short


def pytest_terminal_summary(terminalreporter):
    if SUMMARIES:
        terminalreporter.section("robustness summaries")
        for line in SUMMARIES:
            terminalreporter.write_line(line)


def pytest_collection_modifyitems(items):
    """The long profiles run for tens of minutes: lift pytest-timeout's per-test deadline."""
    if LONG:
        import pytest

        for item in items:
            if "robustness" in str(item.fspath):
                item.add_marker(pytest.mark.timeout(4 * 3600))


def run_driver(node, module: str, workers: int, summary_prefix: str, *args: str) -> None:
    """Run a worker driver (tests.robustness.<module>) inside the node namespace with one pod
    namespace per worker (`--pods PREFIX`, PREFIX<w>, removed afterwards); its summary line goes to
    the run's summaries, and it must exit 0."""
    import subprocess
    import sys
    from pathlib import Path

    from tests.integration.conftest import sh

    prefix = f"{node.name}-w"
    made = []
    try:
        for w in range(workers):
            sh("ip", "netns", "add", f"{prefix}{w}")
            made.append(f"{prefix}{w}")
        proc = subprocess.run(["ip", "netns", "exec", node.name, sys.executable, "-m", f"tests.robustness.{module}",
                               "--workers", str(workers), "--pods", prefix, *args],
                              cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True)
    finally:
        for ns in made:
            sh("ip", "netns", "del", ns, check=False)
    summary = [line for line in proc.stdout.splitlines() if line.startswith(summary_prefix)]
    assert summary, proc.stdout + proc.stderr[-3000:]
    SUMMARIES.append(summary[0])
    assert proc.returncode == 0, proc.stdout

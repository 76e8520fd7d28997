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

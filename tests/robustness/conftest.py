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

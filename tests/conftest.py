"""Keep every log line of the test run inside the test's temporary directory; skip the tiers that
need root when not root; mark the end-to-end tier."""

import os
from pathlib import Path

import pytest

ROOT_TIERS = {"integration": "network namespaces", "robustness": "network namespaces",
              "migration": "network namespaces",
              "e2e": "namespaces, mounts, runtimes"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        tier = Path(str(item.fspath)).relative_to(Path(__file__).parent).parts[0]
        if tier == "e2e":
            item.add_marker(pytest.mark.e2e)
        if tier in ROOT_TIERS and os.geteuid() != 0:
            item.add_marker(pytest.mark.skip(reason=f"{tier} tests need root ({ROOT_TIERS[tier]})"))


MACHINE_RUN_DIR = Path("/run/pycni")     # the default helper socket and attachment locks' dir


@pytest.fixture(autouse=True, scope="session")
def _machine_run_dir_untouched():
    """No test may leave pycni's default run dir on the machine (a call without
    PYCNI_HELPER_SOCKET would put its attachment locks there)."""
    before = MACHINE_RUN_DIR.exists()
    yield
    if not before and MACHINE_RUN_DIR.exists():
        pytest.fail(f"a test created {MACHINE_RUN_DIR} on the machine (set PYCNI_HELPER_SOCKET for its calls)")


@pytest.fixture(autouse=True, scope="session")
def _logs_in_tmp(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("logs") / "pycni.log")
    os.environ["PYCNI_LOG_FILE"] = path
    # calls that inherit the environment (pycni exec's plugins) look for a helper, and put their
    # attachment locks, in the test run's own directory, never in the machine's /run/pycni
    os.environ["PYCNI_HELPER_SOCKET"] = str(tmp_path_factory.mktemp("run") / "helper.sock")
    from cni.spec.log import log

    log.configure(path=path)
    yield

"""Keep every log line of the test run inside the test's temporary directory."""

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _logs_in_tmp(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("logs") / "pycni.log")
    os.environ["PYCNI_LOG_FILE"] = path
    from cni.log import log

    log.configure(path=path)
    yield

"""Issue 28, the node's own rows: what a pod's runtime-supplied names or a local user on the node
can make root's plugin do. Each test attacks the way the issue's row says, with the real executable
in a throwaway node namespace."""

from __future__ import annotations

import os
import subprocess

import pytest

from .conftest import netconf

FORGED = "web\n2026-01-01T00:00:00 ERROR [1] forged: root password changed"


def _lines(path) -> list[str]:
    return path.read_text(errors="replace").splitlines() if path.exists() else []


def test_a_newline_in_the_pod_name_forges_no_log_line_and_add_refuses_it_del_finishes(node, tmp_path):
    """Row 13: a K8S_POD_NAME that is not a DNS-1123 name fails ADD with code 4 before it is used
    (a pod without a name would escape its policies, so it is not ignored); DEL of the same call
    still finishes; no log line starts with the forged text."""
    conf = netconf(node, "1.1.0", networkPolicy=str(tmp_path / "policy"))
    pod = node.pod()
    args = f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={FORGED}"
    add = node.pycni("ADD", conf, pod, cid="forge", args=args)
    assert add.rc != 0 and add.code == 4, add.out
    assert "K8S_POD_NAME" in add.out["details"] and "\n" not in add.out["details"]
    assert node.reservations("testnet") == [] and "eth0" not in subprocess.run(
        ["ip", "-n", pod, "-o", "link"], capture_output=True, text=True).stdout
    dele = node.pycni("DEL", conf, pod, cid="forge", args=args)
    assert dele.rc == 0, dele.out
    # a good pod's ADD on the same node works and logs its name
    good = node.pycni("ADD", conf, pod, cid="good", args="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0")
    assert good.rc == 0, good.out
    lines = _lines(node.log_file)
    assert any("default/web-0" in line for line in lines), lines
    forged = [line for line in lines if "forged" in line and not line.startswith(tuple("0123456789"))
              or line.startswith("2026-01-01")]
    assert forged == [], forged
    assert any("forged" in line and "\\n" in line for line in lines), lines   # said, escaped
    assert node.pycni("DEL", conf, pod, cid="good").rc == 0

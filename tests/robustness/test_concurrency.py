"""Concurrent ADD/CHECK/DEL of many containers on one network (see concurrency_driver.py)."""

import pytest

from tests.integration.conftest import node  # noqa: F401  (fixture)

from .conftest import profile, run_driver


@pytest.mark.parametrize("backend, dual_stack", [("nftables", False), ("nftables", True), ("iptables", True)],
                         ids=["nftables-ipv4", "nftables-dual-stack", "iptables-dual-stack"])
def test_concurrent_operations_never_collide_or_leak(node, backend, dual_stack):  # noqa: F811
    run_driver(node, "concurrency_driver", profile(8, 64), "concurrency (",
               "--ops", str(profile(120, 2000)), "--data", str(node.tmp / "ipam"), "--log", str(node.log_file),
               "--backend", backend, *(["--dual-stack"] if dual_stack else []))

"""STATUS checks of what the host must provide (cni.firewall.hostcheck), with the probes faked."""

import subprocess

import pytest

from cni.firewall import hostcheck
from cni.spec.errors import NotAvailable
from cni.firewall import iptc_loader, rules


@pytest.fixture
def host(monkeypatch):
    """A host where everything is present; tests take pieces away."""
    state = {"nft": "/usr/sbin/nft", "nft_rc": 0, "dirs": ("/usr/lib", "/usr/lib/xtables"),
             "missing": set(), "legacy": set()}
    monkeypatch.setattr(rules, "legacy_tables", lambda family=4: state["legacy"])
    monkeypatch.setattr(hostcheck.shutil, "which", lambda name: state["nft"] if name == "nft" else None)
    monkeypatch.setattr(rules, "_on_path", lambda name: bool(state["nft"]) if name == "nft" else False)
    monkeypatch.setattr(hostcheck.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(
        cmd, state["nft_rc"], b"", b"Error: Could not process rule: Operation not supported"))
    monkeypatch.setattr(iptc_loader, "find_dirs", lambda: state["dirs"])
    real_exists, real_isdir = hostcheck.os.path.exists, hostcheck.os.path.isdir
    monkeypatch.setattr(hostcheck.os.path, "exists",
                        lambda p: p not in state["missing"] and real_exists(p))
    monkeypatch.setattr(hostcheck.os.path, "isdir", lambda p: p not in state["missing"] and real_isdir(p))
    return state


def test_everything_present(host):
    assert hostcheck.kernel_problems(ipv6=True) == []
    for backend in ("auto", "nftables", "iptables"):
        assert hostcheck.firewall_problems(backend) == []
    hostcheck.require([])


def test_missing_nft_program(host):
    host["nft"] = None
    assert "`nft` program is not in PATH" in hostcheck.firewall_problems("nftables")[0]
    assert hostcheck.firewall_problems("auto") == []          # iptables is there


def test_nft_without_kernel_support(host):
    host["nft_rc"] = 1
    (problem,) = hostcheck.firewall_problems("nftables")
    assert "nf_tables in the kernel" in problem and "Operation not supported" in problem


def test_missing_iptables_libraries(host):
    host["dirs"] = (None, None)
    host["missing"].add("/proc/net/ip_tables_names")
    problems = hostcheck.firewall_problems("iptables")
    assert len(problems) == 3 and "apt install iptables" in problems[0]


def test_auto_needs_one_backend(host):
    host["nft"] = None
    host["dirs"] = (None, None)
    problems = hostcheck.firewall_problems("auto")
    assert problems[0].startswith("backend auto uses iptables on this node (no `nft` in PATH)")
    with pytest.raises(NotAvailable) as e:
        hostcheck.require(problems)
    assert e.value.code == 50 and "apt install nftables" in e.value.details


def test_auto_is_checked_as_add_will_use_it(host):
    """A legacy nat table makes ADD use iptables: STATUS must not pass because nft works."""
    host["legacy"] = {"nat"}
    host["dirs"] = (None, None)
    problems = hostcheck.firewall_problems("auto")
    assert problems[0] == ("backend auto uses iptables on this node (a legacy iptables nat table exists "
                           "on this node), and it is not usable:")
    assert any("apt install iptables" in p for p in problems)
    host["dirs"] = ("/usr/lib", "/usr/lib/xtables")
    host["nft_rc"] = 1                 # nft broken, but ADD would not use it here
    assert hostcheck.firewall_problems("auto") == []


def test_ipv6_disabled(host):
    host["missing"].add("/proc/sys/net/ipv6")
    assert hostcheck.kernel_problems(ipv6=False) == []
    assert "IPv6 is disabled" in hostcheck.kernel_problems(ipv6=True)[0]

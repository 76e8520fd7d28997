"""`pycni exec`: running a conflist the way libcni does (chains, capabilities, cache, GC)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from .conftest import BIN, REFERENCE_DIR, netconf, sh


def pycni_exec(node, *args, check=True):
    cmd = ["ip", "netns", "exec", node.name, str(BIN / "pycni"), "exec", *args,
           "--cni-path", f"{BIN}:{REFERENCE_DIR}", "--cache-dir", str(node.tmp / "cache")]
    # the node's own helper socket path: no helper, and the attachment locks go beside it
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env["PYCNI_HELPER_SOCKET"] = str(node.tmp / "helper.sock")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture
def conflist(node, tmp_path):
    def make(version="1.1.0", extra_plugins=()):
        plugin = netconf(node, version)
        del plugin["cniVersion"], plugin["name"]
        plugin["capabilities"] = {"mac": True, "ips": True}
        path = tmp_path / "net.conflist"
        path.write_text(json.dumps({"cniVersion": version, "name": "testnet",
                                    "plugins": [plugin, *extra_plugins]}))
        return str(path)
    return make


@pytest.mark.skipif(not (REFERENCE_DIR / "tuning").exists(), reason="reference plugins not installed")
def test_chain_passes_prev_result_and_deletes_in_reverse(node, conflist):
    pod = node.pod()
    path = conflist("1.0.0", [{"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.arp_filter": "1"}}])
    add = pycni_exec(node, "add", path, f"/var/run/netns/{pod}", "--container-id", "abc",
                     "--runtime-config", json.dumps({"mac": "02:00:00:00:aa:01", "ips": ["10.88.0.9/24"],
                                                     "portMappings": []}))
    result = json.loads(add.stdout)
    assert result["ips"][0]["address"] == "10.88.0.9/24"
    assert result["interfaces"][2]["mac"] == "02:00:00:00:aa:01"
    assert sh("sysctl", "-n", "net.ipv4.conf.eth0.arp_filter", ns=pod).strip() == "1"
    pycni_exec(node, "check", path, f"/var/run/netns/{pod}", "--container-id", "abc")
    pycni_exec(node, "del", path, f"/var/run/netns/{pod}", "--container-id", "abc")
    assert node.reservations("testnet") == []
    assert not list((node.tmp / "cache").iterdir())


def test_status_gc_and_errors(node, conflist):
    path = conflist("1.1.0")
    pods = [node.pod() for _ in range(2)]
    for i, pod in enumerate(pods):
        pycni_exec(node, "add", path, f"/var/run/netns/{pod}", "--container-id", f"c{i}")
    pycni_exec(node, "status", path)
    pycni_exec(node, "gc", path, "--valid", "c1/eth0")
    assert node.reservations("testnet") == ["10.88.0.3"]
    bad = pycni_exec(node, "add", path, "/var/run/netns/pycnit-missing", check=False)
    assert bad.returncode == 1 and json.loads(bad.stdout)["code"] == 4


def test_version_cli():
    out = subprocess.run([str(BIN / "pycni"), "--version"], capture_output=True, text=True, env={})
    assert out.returncode == 0 and "1.1.0" in out.stdout

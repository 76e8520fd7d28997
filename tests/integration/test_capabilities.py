"""Issue 28 row 14, checked empirically: the capabilities manifests/pycni.yaml gives the agent's
container are enough for what the agent and the helper do on a node (the plugin's ADD and DEL on
both firewall backends, the helper serving a call from inside the caller's namespaces, the
agent's policy sync), and each of them is needed by at least one of those. Each process runs
under setpriv with exactly that set (bounding and inheritable, no_new_privs) in a node namespace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import BIN, IP, REFERENCE_DIR, TIMEOUT, netconf, ready_line

MANIFEST = Path(__file__).resolve().parents[2] / "manifests" / "pycni.yaml"


def manifest_caps() -> list[str]:
    for obj in yaml.safe_load_all(MANIFEST.read_text()):
        if obj and obj["kind"] == "DaemonSet":
            sc = obj["spec"]["template"]["spec"]["containers"][0]["securityContext"]
            assert sc["capabilities"]["drop"] == ["ALL"]
            return sc["capabilities"]["add"]
    raise AssertionError("no DaemonSet")


def capped(caps) -> list[str]:
    names = ",".join(f"+{c.lower()}" for c in caps)
    return ["setpriv", f"--bounding-set=-all{',' + names if names else ''}",
            f"--inh-caps=-all{',' + names if names else ''}", "--no-new-privs", "--"]


def run(node, caps, command, conf, netns, cid, env=None):
    e = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    e.update(CNI_COMMAND=command, CNI_CONTAINERID=cid, CNI_IFNAME="eth0", CNI_ARGS="",
             CNI_PATH=f"{BIN}:{REFERENCE_DIR}", CNI_NETNS=f"/var/run/netns/{netns}",
             PYCNI_LOG_FILE=str(node.log_file), PYCNI_HELPER_SOCKET=str(node.tmp / "helper.sock"))
    e.update(env or {})
    wrap = capped(caps) if caps is not None else []
    p = subprocess.run([IP, "netns", "exec", node.name, *wrap, str(BIN / "pycni")], input=json.dumps(conf).encode(),
                       env=e, capture_output=True, timeout=TIMEOUT)
    return p.returncode, p.stdout.decode()


def plugin_add_del(node, caps, backend) -> str:
    """'' when ADD and DEL (masquerade, a TCP and a UDP host port) worked with `caps`, else what failed."""
    conf = netconf(node, "1.1.0", ipMasq=True, backend=backend, capabilities={"portMappings": True},
                   runtimeConfig={"portMappings": [{"hostPort": 8080, "containerPort": 80},
                                                   {"hostPort": 5353, "containerPort": 53, "protocol": "udp"}]})
    pod = node.pod()
    rc, out = run(node, caps, "ADD", conf, pod, f"cap-{backend}", env={"PYCNI_HELPER": "0"})
    rc2, out2 = run(node, None, "DEL", conf, pod, f"cap-{backend}", env={"PYCNI_HELPER": "0"})
    assert rc2 == 0, out2                 # cleanup with every capability
    if rc != 0:
        return f"ADD ({backend}): {out}"
    rc, out = run(node, caps, "ADD", conf, pod, f"cap2-{backend}", env={"PYCNI_HELPER": "0"})
    if rc == 0:
        rc, out = run(node, caps, "DEL", conf, pod, f"cap2-{backend}", env={"PYCNI_HELPER": "0"})
        why = "" if rc == 0 else f"DEL ({backend}): {out}"
    else:
        why = f"ADD ({backend}): {out}"
    assert run(node, None, "DEL", conf, pod, f"cap2-{backend}", env={"PYCNI_HELPER": "0"})[0] == 0
    return why


def helper_serves(node, caps) -> str:
    """'' when `pycni helper` running with `caps` served an ADD and a DEL itself."""
    sock = node.tmp / "helper.sock"
    helper = subprocess.Popen([IP, "netns", "exec", node.name, *capped(caps), str(BIN / "pycni"), "helper",
                               "--socket", str(sock)], stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYCNI_LOG_FILE": str(node.log_file)})
    try:
        assert "serving on" in helper.stderr.readline()
        conf = netconf(node, "1.1.0", logLevel="debug")
        pod = node.pod()
        before = node.log_file.read_text().count("pycni(helper) ADD") if node.log_file.exists() else 0
        rc, out = run(node, None, "ADD", conf, pod, "cap-helper")
        served = node.log_file.read_text().count("pycni(helper) ADD") > before and "code" not in out
        rc2, _ = run(node, None, "DEL", conf, pod, "cap-helper")
        assert rc2 == 0
        return "" if rc == 0 and served else f"helper ADD rc {rc}, served by the helper: {served}: {out}"
    finally:
        helper.terminate()
        helper.wait(10)


def hold(store_dir, ip: str) -> None:
    """The node's IPAM holds `ip`: an API address of a local pod counts only while it does."""
    import ipaddress

    from ipam.store import DiskStore

    store = DiskStore(str(store_dir))
    with store.lock():
        assert store.reserve(ipaddress.ip_address(ip), "c-a", "eth0", 0)


def agent_syncs_policy(tmp_path, caps) -> str:
    """'' when `pycni agent` with `caps` wrote the node's conflist and put a NetworkPolicy's pod
    into the kernel's isolation set."""
    from tests.k8s_api import FakeAPI

    from .cluster import NODES, OUTSIDE4, Cluster, api_node
    from .test_netpol import namespace_object, pod_object, policy

    tmp_path.mkdir(parents=True)
    cluster = Cluster(tmp_path)
    try:
        api = FakeAPI(OUTSIDE4, netns=cluster.underlay)
        for name in NODES:
            api.put("nodes", api_node(name))
        api.put("namespaces", namespace_object("x"))
        api.put("pods", pod_object("x/a", "node-a", ["10.244.0.9"]))
        hold(cluster.nodes["node-a"].data_dir / "pycni", "10.244.0.9")   # as the pod's ADD left it
        api.put("networkpolicies", policy("x", "deny-all", {"podSelector": {}, "policyTypes": ["Ingress"]}))
        agent = cluster.start_agent("node-a", api.kubeconfig(tmp_path / "kubeconfig"), wrap=capped(caps))
        try:
            agent.wait_for("agent: network policy: 1 policies", timeout=20)
        except AssertionError as e:
            return f"agent: {str(e)[-400:]}"
        ns = cluster.nodes["node-a"].name
        iso = subprocess.run([IP, "netns", "exec", ns, "nft", "list", "set", "inet", "pycni-policy", "ingress_iso4"],
                             capture_output=True, text=True).stdout
        return "" if "10.244.0.9" in iso else f"agent: pod not isolated: {iso}"
    finally:
        cluster.close()


def failures(node, tmp_path, caps) -> list[str]:
    out = [plugin_add_del(node, caps, "nftables"), plugin_add_del(node, caps, "iptables"),
           helper_serves(node, caps), agent_syncs_policy(tmp_path / f"agent-{len(caps)}-{'-'.join(caps)}", caps)]
    return [w for w in out if w]


def test_the_manifests_capabilities_are_enough(node, tmp_path):
    assert failures(node, tmp_path, manifest_caps()) == []


@pytest.mark.parametrize("missing", manifest_caps())
def test_each_of_the_manifests_capabilities_is_needed(node, tmp_path, missing):
    caps = [c for c in manifest_caps() if c != missing]
    failed = failures(node, tmp_path, caps)
    print(f"without {missing}:", *(f[:160] for f in failed), sep="\n  ")
    assert failed != []

"""The agent's own CNI GC against containerd's real CRI (issue 23: no runtime calls GC, so the
agent does, with the pods ListPodSandbox names as the valid attachments).

containerd runs as in test_containerd.py; two pods are started through its CRI (the kubelet's
path) and stay. Attachments a crash left (ADDs whose DEL never came: the runtime knows no such
sandbox) are made beside them with the plugin itself; every reservation is dated an hour back but
one more made just before the agent starts (younger than the grace period). The agent, in
containerd's mount namespace (it shares /run, hence the plugin's attachment locks), runs a round
at start and every 2 s. Then containerd is stopped: nothing may be released any more."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from cni.spec.names import host_veth_name
from tests.integration.conftest import sh, node  # noqa: F401  (fixture)
from tests.k8s_nodes import node_list, node_object

from .conftest import wait_for
from .cri import CRI
from .test_containerd import NAMESPACE, SUBNET, containerd, images  # noqa: F401  (fixtures)

PORT = 19177
HOUR = 3600


def metric(node, name: str, kind: str) -> float:
    text = sh("curl", "-s", "-m", "3", f"http://127.0.0.1:{PORT}/metrics", ns=node.name)
    for line in text.splitlines():
        if line.startswith(f'{name}{{kind="{kind}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_the_agent_reclaims_crash_left_attachments_and_never_a_live_pod(containerd, node):  # noqa: F811
    c = containerd
    cri = CRI(str(c.sock))
    conf = {**c.conflist["plugins"][0], "name": c.conflist["name"], "cniVersion": c.conflist["cniVersion"]}
    store = c.ipam / "e2e"
    agent = None
    try:
        assert wait_for(lambda: cri.conditions().get("NetworkReady", (False, ""))[0] or None,
                        what="CRI NetworkReady")
        live = [cri.run_pod(f"gc-live-{i}", f"uid-gc-{i}") for i in range(2)]
        live_ips = [cri.pod_ips(p)[0] for p in live]
        for ip in live_ips:         # pods running for an hour: their age does not keep them, the runtime does
            os.utime(store / ip, (time.time() - HOUR, time.time() - HOUR))

        def crash_left(cid: str, age: float) -> str:
            res = node.pycni("ADD", conf, node.pod(), cid=cid)
            assert res.rc == 0, res.out
            ip = res.out["ips"][0]["address"].split("/")[0]
            then = time.time() - age
            os.utime(store / ip, (then, then))
            return ip

        stale = {cid: crash_left(cid, HOUR) for cid in ("crashed-1", "crashed-2")}
        young = crash_left("young-1", 0)
        masq = sh("nft", "list", "table", "inet", "pycni", ns=node.name)
        assert all(cid in masq for cid in (*stale, "young-1"))

        nodes = c.tmp / "nodes.json"
        nodes.write_text(json.dumps(node_list(node_object("node-a", [SUBNET], ["10.250.0.1"]))))
        log = c.tmp / "agent.log"
        agent = c.box.popen(sys.executable, "-m", "cni", "agent", "--node-name", "node-a", "--nodes-file", str(nodes),
                            "--from", "none", "--bin-dir", str(c.bin), "--conf-dir", str(c.conf),
                            "--conf-name", "10-pycni.conflist", "--network", "e2e", "--bridge", "pycni0",
                            "--data-dir", str(c.ipam), "--no-network-policy", "--no-masquerade",
                            "--metrics-address", f"127.0.0.1:{PORT}", "--cri-socket", str(c.sock),
                            "--gc-every", "2", "--gc-grace", "60", log=log)
        line = wait_for(lambda: next((x for x in log.read_text().splitlines() if x.startswith("agent: gc:")), None),
                        what="the agent's first GC round")
        assert "2 stale attachments, 1 kept for their age; reclaimed 2 addresses" in line, log.read_text()

        held = {p.name for p in store.iterdir() if p.name.startswith("10.")}
        assert held == {*live_ips, young}, held
        links = node.sh("ip", "-o", "link", "show")
        assert all(host_veth_name("e2e", cid, "eth0") not in links for cid in stale)
        assert host_veth_name("e2e", "young-1", "eth0") in links
        masq = sh("nft", "list", "table", "inet", "pycni", ns=node.name)
        assert not any(cid in masq for cid in stale) and "young-1" in masq
        for ip in live_ips:         # the live pods are untouched: the node still reaches them
            assert "hello from a pod on pycni" in sh("curl", "-s", "-m", "5", f"http://{ip}/", ns=node.name)
        assert metric(node, "pycni_gc_reclaimed_total", "addresses") == 2
        assert metric(node, "pycni_gc_reclaimed_total", "interfaces") == 2
        assert metric(node, "pycni_gc_reclaimed_total", "rules") >= 2

        # containerd stopped: the runtime cannot tell its pods, so nothing at all is released
        c.box.stop()
        gone = crash_left("crashed-3", HOUR)
        rounds = log.read_text().count("agent: gc:")
        wait_for(lambda: log.read_text().count("agent: gc:") >= rounds + 2 or None, timeout=30,
                 what="two GC rounds after containerd stopped")
        held = {p.name for p in store.iterdir() if p.name.startswith("10.")}
        assert held == {*live_ips, young, gone}, held
        assert log.read_text().count("the runtime cannot tell its pods") >= 2, log.read_text()
        assert metric(node, "pycni_gc_reclaimed_total", "addresses") == 2
    finally:
        if agent is not None:
            agent.kill()
            agent.wait(10)
        cri.close()
        for cid in ("crashed-1", "crashed-2", "crashed-3", "young-1"):
            node.pycni("DEL", conf, "", cid=cid)

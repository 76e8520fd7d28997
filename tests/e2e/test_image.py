"""The DaemonSet image (build/image.sh), run by containerd as the DaemonSet would run it: host
network (the node namespace), NET_ADMIN + NET_RAW, the node's /opt/cni/bin, /etc/cni/net.d and
/run/pycni mounted. Its agent, fed Node objects in the API's JSON, installs the plugin on the
"host", writes the conflist, routes the other node's pod CIDR and sets up masquerade; the plugin
it installed then adds a pod with that conflist. No Python in the image."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import node  # noqa: F401  (fixture)
from cni.spec.version import PYCNI
from tests.k8s_nodes import node_list, node_object

from .conftest import ROOT, Sandbox, have, wait_for

IMAGE = f"localhost/pycni:{PYCNI}"

pytestmark = pytest.mark.skipif(not have("containerd", "ctr", "runc"),
                                reason="containerd/runc missing (scripts/setup.sh installs them)")


@pytest.fixture(scope="session")
def image() -> Path:
    # podman keeps a little state of its own in /run and /var/lib whatever its --root: the build
    # runs in a private mount namespace with those on tmpfs, so the machine keeps nothing
    subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                    "mount -t tmpfs pycni-build /run && mount -t tmpfs pycni-build /var/lib && "
                    f"exec bash {ROOT / 'build' / 'image.sh'}"],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return ROOT / "dist" / "pycni-image.oci.tar"


def test_daemonset_image_configures_the_node(node, tmp_path, image):
    host = {d: tmp_path / d for d in ("opt-cni-bin", "etc-cni-net.d", "run-pycni", "data")}
    for d in host.values():
        d.mkdir()
    (host["data"] / "nodes.json").write_text(json.dumps(node_list(
        node_object("node-a", ["10.244.0.0/24"], ["172.31.0.2"]),
        node_object("node-b", ["10.244.1.0/24"], ["172.31.0.3"]))))
    # the node's underlay interface (the other end stays unconnected: routes only need the subnet)
    node.sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer")
    node.sh("ip", "addr", "add", "172.31.0.2/24", "dev", "eth0")
    for dev in ("eth0", "eth0-peer"):
        node.sh("ip", "link", "set", dev, "up")

    sock = tmp_path / "containerd.sock"
    config = tmp_path / "config.toml"
    config.write_text(f'version = 2\nroot = "{tmp_path}/root"\nstate = "{tmp_path}/state"\n'
                      f'[grpc]\n  address = "{sock}"\n'
                      '[plugins."io.containerd.grpc.v1.cri"]\n  restrict_oom_score_adj = true\n')
    box = Sandbox(node.name, ["containerd", "--config", str(config)], {}, tmp_path / "containerd.log")
    try:
        wait_for(sock.exists, what="containerd's socket")
        ctr = ["ctr", "-a", str(sock), "-n", "pycni-e2e"]
        box.enter(*ctr, "images", "import", str(image))
        mounts = []
        for src, dst in ((host["opt-cni-bin"], "/host/opt/cni/bin"), (host["etc-cni-net.d"], "/host/etc/cni/net.d"),
                         (host["run-pycni"], "/run/pycni"), (host["data"], "/data")):
            mounts += ["--mount", f"type=bind,src={src},dst={dst},options=rbind:rw"]
        run = box.enter(*ctr, "run", "--rm", "--net-host", "--cap-add", "CAP_NET_ADMIN",
                        "--cap-add", "CAP_NET_RAW", *mounts, "--env", "NODE_NAME=node-a",
                        "--env", "PYCNI_LOG_FILE=/run/pycni/agent.log", IMAGE, "agent",
                        "/opt/pycni/agent/pycni-agent", "--from=/opt/pycni/plugin",
                        "--bin-dir=/host/opt/cni/bin", "--conf-dir=/host/etc/cni/net.d",
                        "--data-dir=" + str(host["run-pycni"] / "ipam"),   # the path the host's plugin will use
                        "--cluster-cidr=10.244.0.0/16", "--nodes-file=/data/nodes.json", check=False)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "2 nodes, conflist written, routes +1 -0, pod networks 10.244.0.0/16" in run.stdout
    finally:
        box.stop()

    # what the node has now: the plugin, the conflist, the route, the masquerade table
    exe = host["opt-cni-bin"] / "pycni"
    assert exe.is_symlink() and (host["opt-cni-bin"] / "loopback").is_symlink()
    conflist = json.loads((host["etc-cni-net.d"] / "10-pycni.conflist").read_text())
    assert conflist["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.244.0.0/24"}]]
    assert "10.244.1.0/24 via 172.31.0.3" in node.sh("ip", "route", "show", "proto", "152")
    assert "10.244.0.0/16" in node.sh("nft", "list", "table", "inet", "pycni-agent")

    # the installed plugin serves a pod with that conflist, as containerd on the node would run it
    conf = {**conflist["plugins"][0], "name": conflist["name"], "cniVersion": conflist["cniVersion"]}
    pod = node.pod()
    add = node.run(exe, "ADD", conf, pod, cid="pod1")
    assert add.rc == 0, add.out
    assert add.out["ips"][0]["address"].startswith("10.244.0.")
    assert node.run(exe, "DEL", conf, pod, cid="pod1").rc == 0

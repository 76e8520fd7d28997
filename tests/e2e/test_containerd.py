"""containerd + runc run containers with pycni as their network (the artifact from dist/pycni).

containerd runs in the node namespace and a private mount namespace (see Sandbox). Two clients:
  - its CRI plugin, driven the way the kubelet does (tests/e2e/cri.py): pod sandboxes, port
    mappings as capability args, the plugin found through the CRI `cni` section (our bin and conf
    dirs, max_conf_num = 1);
  - `ctr run --cni`, which calls CNI itself, always from /opt/cni/bin and /etc/cni/net.d (so our
    dirs are bind-mounted there) and never with capability args. `ctr run` (not --detach) runs
    CNI DEL when its task ends, so those containers are stopped by killing the task.
Images are built from Debian's busybox-static by build/oci_image.py and imported: no registry.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import sh, node  # noqa: F401  (fixture)

from .conftest import ROOT, Sandbox, busybox_rootfs, have, pids_with, wait_for
from .cri import CRI, TCP

IMAGE = "localhost/pycni-e2e/busybox:1"
PAUSE = "localhost/pycni-e2e/pause:1"       # the CRI sandbox image: busybox httpd serving /www
NAMESPACE = "pycni-e2e"
SUBNET = "10.66.0.0/24"

pytestmark = pytest.mark.skipif(not have("containerd", "ctr", "runc"),
                                reason="containerd/runc missing (scripts/setup.sh installs them)")


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> list[Path]:
    tmp = tmp_path_factory.mktemp("image")
    rootfs = busybox_rootfs(tmp / "rootfs")
    out = []
    for name, args in ((IMAGE, ["--cmd", '["/bin/sh"]']),
                       (PAUSE, ["--entrypoint", '["/bin/httpd", "-f", "-p", "80", "-h", "/www"]'])):
        path = tmp / (name.rsplit("/", 1)[1].replace(":", "-") + ".oci.tar")
        subprocess.run([sys.executable, str(ROOT / "build" / "oci_image.py"), str(path), "--rootfs",
                        str(rootfs), "--name", name, *args], check=True, capture_output=True)
        out.append(path)
    return out


class Containerd:
    def __init__(self, node, tmp: Path, artifact: Path):
        self.node, self.tmp = node, tmp
        self.bin, self.conf, self.ipam = tmp / "cni-bin", tmp / "cni-net.d", tmp / "ipam"
        self.sock = tmp / "containerd.sock"
        self.conflist = {
            "cniVersion": "1.0.0", "name": "e2e",
            "plugins": [
                {"type": "pycni", "bridge": "pycni0", "isGateway": True, "isDefaultGateway": True, "ipMasq": True,
                 "logFile": str(tmp / "pycni.log"), "capabilities": {"bandwidth": True},
                 "ipam": {"type": "pycni-ipam", "dataDir": str(self.ipam), "ranges": [[{"subnet": SUBNET}]]}},
                {"type": "pycni-portmap", "capabilities": {"portMappings": True}},
            ]}
        src = tmp / "10-pycni.conflist"
        src.write_text(json.dumps(self.conflist))
        subprocess.run([artifact / "pycni", "install", "--bin-dir", self.bin, "--conf-dir", self.conf,
                        "--conflist", src], check=True, capture_output=True)
        config = tmp / "config.toml"
        config.write_text(f"""version = 2
root = "{tmp}/root"
state = "{tmp}/state"
[grpc]
  address = "{self.sock}"
[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
  sandbox_image = "{PAUSE}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{self.bin}"
    conf_dir = "{self.conf}"
    max_conf_num = 1
""")
        self.box = Sandbox(node.name, ["containerd", "--config", str(config)],
                           {str(self.bin): "/opt/cni/bin", str(self.conf): "/etc/cni/net.d"},
                           tmp / "containerd.log")
        self.runs: dict[str, subprocess.Popen] = {}
        wait_for(self.sock.exists, what="containerd's socket")

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.box.enter("ctr", "-a", str(self.sock), "-n", NAMESPACE, *args, check=check)

    def run(self, name: str, script: str) -> None:
        self.runs[name] = self.box.popen("ctr", "-a", str(self.sock), "-n", NAMESPACE, "run", "--cni",
                                         "--rm", IMAGE, name, "sh", "-c", script,
                                         log=self.tmp / f"{name}.log")

    def address(self, name: str) -> str:
        """The pod address pycni's IPAM recorded for this container (ctr uses NAMESPACE-name as id)."""
        def find():
            d = self.ipam / "e2e"
            for f in d.glob("10.*") if d.exists() else []:
                if f.read_text().splitlines()[0] == f"{NAMESPACE}-{name}":
                    return f.name
            return None
        return wait_for(find, what=f"an address for {name}")

    def stop(self, name: str) -> int:
        self.ctr("task", "kill", "-s", "SIGKILL", name, check=False)
        return self.runs.pop(name).wait(timeout=60)

    def close(self) -> None:
        for name in list(self.runs):
            try:
                self.stop(name)
            except Exception:
                self.runs.pop(name).kill()
        self.box.stop()
        for pid in pids_with(str(self.sock)):      # shims of this containerd, if any are left
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def containerd(node, tmp_path, artifact, images):
    c = Containerd(node, tmp_path, artifact)
    try:
        c.ctr("images", "import", str(images[0]))
        c.box.enter("ctr", "-a", str(c.sock), "-n", "k8s.io", "images", "import", str(images[1]))
        yield c
    finally:
        c.close()


def test_containers_get_pycni_networking(containerd, node):
    c = containerd
    serve = 'echo {name} > /www/id; exec httpd -f -p 80 -h /www'
    c.run("web1", serve.format(name="web1"))
    c.run("web2", serve.format(name="web2"))
    ip1, ip2 = c.address("web1"), c.address("web2")
    assert ip1 != ip2 and ip1.startswith("10.66.0.") and ip2.startswith("10.66.0.")

    # the container sees its address on eth0, and reaches the other container
    assert f"inet {ip1}/24" in c.ctr("task", "exec", "--exec-id", "a1", "web1", "ip", "-o", "addr",
                                     "show", "eth0").stdout
    ping = c.ctr("task", "exec", "--exec-id", "p1", "web1", "ping", "-c", "1", "-W", "3", ip2)
    assert "1 packets received" in ping.stdout
    # the node reaches each container's HTTP server
    for ip, name in ((ip1, "web1"), (ip2, "web2")):       # (httpd may still be starting on a busy node)
        wait_for(lambda: sh("curl", "-s", "-m", "2", f"http://{ip}/id", ns=node.name, check=False).strip() == name,
                 timeout=20, what=f"{name}'s HTTP server from the node")
    # masquerade elements are tagged with the container id
    rules = sh("nft", "list", "table", "inet", "pycni", ns=node.name)
    assert f"{NAMESPACE}-web1" in rules and f"{NAMESPACE}-web2" in rules
    bridge_ports = node.sh("ip", "-o", "link", "show", "master", "pycni0")
    assert bridge_ports.count("\n") == 2

    # deleting a container removes its veth, its address file and its rules, and nothing else
    assert c.stop("web1") != 0          # killed
    assert not (c.ipam / "e2e" / ip1).exists() and (c.ipam / "e2e" / ip2).exists()
    rules = sh("nft", "list", "table", "inet", "pycni", ns=node.name)
    assert f"{NAMESPACE}-web1" not in rules and f"{NAMESPACE}-web2" in rules
    assert node.sh("ip", "-o", "link", "show", "master", "pycni0").count("\n") == 1
    assert sh("curl", "-s", "-m", "5", f"http://{ip2}/id", ns=node.name).strip() == "web2"

    c.stop("web2")
    assert not (c.ipam / "e2e" / ip2).exists()
    assert node.sh("ip", "-o", "link", "show", "master", "pycni0").strip() == ""
    assert "pycni-e2e" not in sh("nft", "list", "table", "inet", "pycni", ns=node.name)
    assert "ERROR" not in (c.tmp / "pycni.log").read_text()


def test_containerd_cri_loads_our_conflist(containerd):
    """The CRI plugin read its `cni` section: our bin/conf dirs, one config file."""
    log = containerd.box.log.read_text()
    assert f"NetworkPluginBinDir:{containerd.bin}" in log
    assert f"NetworkPluginConfDir:{containerd.conf} NetworkPluginMaxConfNum:1" in log
    assert "failed to load cni" not in log.lower()


def test_cri_pods_with_host_port(containerd, node, client):
    """The kubelet's path: CRI RunPodSandbox -> containerd -> pycni from the CRI `cni` dirs, with
    the pod's hostPort as a capability arg; StopPodSandbox -> DEL."""
    c = containerd
    cri = CRI(str(c.sock))
    try:
        ready = wait_for(lambda: cri.conditions().get("NetworkReady", (False, ""))[0] or None,
                         what="CRI NetworkReady (our conflist loaded)")
        assert ready
        pod1 = cri.run_pod("web-a", "uid-a", ports=[(TCP, 80, 8088)])
        pod2 = cri.run_pod("web-b", "uid-b")
        (ip1,), (ip2,) = cri.pod_ips(pod1), cri.pod_ips(pod2)
        assert ip1 != ip2 and ip1.startswith("10.66.0.") and ip2.startswith("10.66.0.")
        assert (c.ipam / "e2e" / ip1).read_text().splitlines()[0] == pod1
        want = "hello from a pod on pycni"
        assert want in sh("curl", "-s", "-m", "5", f"http://{ip2}/", ns=node.name)
        # the host port, from a machine beside the node and from the node itself
        assert want in wait_for(lambda: subprocess.run(
            ["ip", "netns", "exec", client, "curl", "-s", "-m", "3", "http://10.250.0.1:8088/"],
            capture_output=True, text=True).stdout, what="hostPort 8088")
        assert want in sh("curl", "-s", "-m", "5", "http://127.0.0.1:8088/", ns=node.name)

        cri.stop_pod(pod1)
        cri.remove_pod(pod1)
        assert not (c.ipam / "e2e" / ip1).exists() and (c.ipam / "e2e" / ip2).exists()
        assert "8088" not in sh("nft", "list", "table", "inet", "pycni", ns=node.name)
        assert node.sh("ip", "-o", "link", "show", "master", "pycni0").count("\n") == 1
        cri.stop_pod(pod2)
        cri.stop_pod(pod2)             # the kubelet may stop twice: DEL is idempotent
        cri.remove_pod(pod2)
        assert not (c.ipam / "e2e" / ip2).exists()
        assert node.sh("ip", "-o", "link", "show", "master", "pycni0").strip() == ""
        log = (c.tmp / "pycni.log").read_text()
        assert "ERROR" not in log and f"ADD {pod1[:12]}/eth0" in log
    finally:
        cri.close()


def test_cri_pod_with_bandwidth_annotations_comes_up_shaped(containerd, node):
    """The kubelet's annotations kubernetes.io/ingress-bandwidth and egress-bandwidth on the pod
    sandbox: containerd's CRI passes them as the `bandwidth` capability (rates in bit/s, bursts of
    2^32 - 1 bits), pycni shapes the pod in the same ADD; a pod without them is not shaped; the
    sandbox's stop leaves no qdisc or ifb."""
    c = containerd
    cri = CRI(str(c.sock))
    try:
        wait_for(lambda: cri.conditions().get("NetworkReady", (False, ""))[0] or None, what="CRI NetworkReady")
        shaped = cri.run_pod("shaped", "uid-s", annotations={"kubernetes.io/ingress-bandwidth": "10M",
                                                              "kubernetes.io/egress-bandwidth": "5M"})
        plain = cri.run_pod("plain", "uid-p")
        (ip,), (plain_ip,) = cri.pod_ips(shaped), cri.pod_ips(plain)
        qdiscs = node.sh("tc", "qdisc", "show")
        tbfs = [line for line in qdiscs.splitlines() if line.startswith("qdisc tbf 7063:")]
        assert len(tbfs) == 2, qdiscs
        veth = [t for t in tbfs if " dev veth" in t]
        ifb = [t for t in tbfs if " dev pbw" in t]
        assert len(veth) == 1 and "rate 10Mbit" in veth[0], qdiscs      # towards the pod
        assert len(ifb) == 1 and "rate 5Mbit" in ifb[0], qdiscs         # from it
        assert "qdisc ingress ffff:" in qdiscs
        # the shaped pod is the one with the tbf: its host veth is the port its address answers on
        want = "hello from a pod on pycni"
        assert want in sh("curl", "-s", "-m", "5", f"http://{ip}/", ns=node.name)
        assert want in sh("curl", "-s", "-m", "5", f"http://{plain_ip}/", ns=node.name)
        log = (c.tmp / "pycni.log").read_text()
        assert f"ADD {shaped[:12]}/eth0" in log and "shaped {'ingressRate': 10000000," in log, log[-2000:]

        for pod in (shaped, plain):
            cri.stop_pod(pod)
            cri.remove_pod(pod)
        qdiscs = node.sh("tc", "qdisc", "show")
        assert "tbf" not in qdiscs and "ingress" not in qdiscs, qdiscs
        assert node.sh("ip", "-o", "link", "show", "type", "ifb").strip() == ""
        assert "ERROR" not in (c.tmp / "pycni.log").read_text()
    finally:
        cri.close()

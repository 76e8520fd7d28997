"""podman 4 with its CNI backend runs containers on pycni, `-p HOSTPORT:80` included (the artifact
from dist/pycni). podman runs in the node namespace and a private mount namespace (see Sandbox);
its containers.conf names our plugin and conf dirs; its storage lives in the test's tmp dir.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import sh, node  # noqa: F401  (fixture)

from .conftest import Sandbox, busybox_rootfs, have, wait_for

SUBNET = "10.67.0.0/24"
HOST_PORT = 8080

pytestmark = pytest.mark.skipif(not have("podman", "runc", "conmon"),
                                reason="podman missing (scripts/setup.sh installs it)")


class Podman:
    def __init__(self, node, tmp: Path, artifact: Path):
        self.node, self.tmp = node, tmp
        self.bin, self.conf, self.ipam = tmp / "cni-bin", tmp / "cni-net.d", tmp / "ipam"
        conflist = {
            "cniVersion": "1.0.0", "name": "e2e",
            "plugins": [
                {"type": "pycni", "bridge": "pycni0", "isGateway": True, "isDefaultGateway": True, "ipMasq": True,
                 "logFile": str(tmp / "pycni.log"),
                 "ipam": {"type": "pycni-ipam", "dataDir": str(self.ipam), "ranges": [[{"subnet": SUBNET}]]}},
                {"type": "pycni-portmap", "capabilities": {"portMappings": True},
                 "logFile": str(tmp / "pycni.log")},
            ]}
        src = tmp / "10-e2e.conflist"
        src.write_text(json.dumps(conflist))
        subprocess.run([artifact / "pycni", "install", "--bin-dir", self.bin, "--conf-dir", self.conf,
                        "--conflist", src], check=True, capture_output=True)
        (tmp / "containers.conf").write_text(f"""[containers]
default_ulimits = []
[network]
network_backend = "cni"
cni_plugin_dirs = ["{self.bin}"]
network_config_dir = "{self.conf}"
default_network = "e2e"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{tmp}/events.log"
runtime = "runc"
""")
        (tmp / "storage.conf").write_text(f"""[storage]
driver = "overlay"
graphroot = "{tmp}/storage"
runroot = "{tmp}/runroot"
""")
        self.env = {**os.environ, "CONTAINERS_CONF": str(tmp / "containers.conf"),
                    "CONTAINERS_STORAGE_CONF": str(tmp / "storage.conf"), "TMPDIR": "/run"}
        # podman is not a daemon: a sleeping process holds the namespaces its commands enter
        self.box = Sandbox(node.name, ["sleep", "infinity"], {}, tmp / "sandbox.log")

    def podman(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.box.enter("podman", *args, check=check, env=self.env)

    def close(self) -> None:
        self.podman("rm", "--all", "--force", "--time", "0", check=False)
        self.box.stop()


@pytest.fixture
def podman(node, tmp_path, artifact):
    p = Podman(node, tmp_path, artifact)
    try:
        yield p
    finally:
        p.close()


def test_podman_run_with_host_port(podman, node, client, tmp_path):
    p = podman
    assert "e2e" in p.podman("network", "ls", "--format", "{{.Name}}").stdout.split()
    rootfs = busybox_rootfs(tmp_path / "rootfs")
    p.podman("run", "-d", "--name", "web", "--network", "e2e", "-p", f"{HOST_PORT}:80",
             "--rootfs", str(rootfs), "httpd", "-f", "-p", "80", "-h", "/www")
    inspect = json.loads(p.podman("inspect", "web").stdout)[0]
    ip = inspect["NetworkSettings"]["Networks"]["e2e"]["IPAddress"]
    assert ip.startswith("10.67.0.")
    assert (p.ipam / "e2e" / ip).exists()

    def fetch(ns: str, url: str) -> str:
        return subprocess.run(["ip", "netns", "exec", ns, "curl", "-s", "-m", "3", url],
                              capture_output=True, text=True).stdout

    want = "hello from a pod on pycni"
    # from the machine beside the node, to the node's address and the host port
    assert want in wait_for(lambda: fetch(client, f"http://10.250.0.1:{HOST_PORT}/"), timeout=15,
                            what="the host port to answer")
    # from the node itself, to localhost and the host port; and to the pod directly
    assert want in fetch(node.name, f"http://127.0.0.1:{HOST_PORT}/")
    assert want in fetch(node.name, f"http://{ip}/")
    assert str(HOST_PORT) in sh("nft", "list", "table", "inet", "pycni", ns=node.name)

    p.podman("stop", "--time", "1", "web")
    p.podman("rm", "web")
    assert not (p.ipam / "e2e" / ip).exists()
    assert node.sh("ip", "-o", "link", "show", "master", "pycni0").strip() == ""
    rules = sh("nft", "list", "table", "inet", "pycni", ns=node.name)
    assert f"{HOST_PORT}" not in rules and "comment" not in rules
    assert fetch(client, f"http://10.250.0.1:{HOST_PORT}/") == ""
    assert "ERROR" not in (tmp_path / "pycni.log").read_text()

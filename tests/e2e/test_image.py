"""The DaemonSet image (build/image.sh), run by containerd as the DaemonSet would run it: host
network (the node namespace), the manifest's securityContext (its capabilities only, default
seccomp, read-only root), the node's /opt/cni/bin, /etc/cni/net.d and
/run/pycni mounted. Its agent, fed Node objects in the API's JSON, installs the plugin on the
"host", writes the conflist, routes the other node's pod CIDR and sets up masquerade; the plugin
it installed then adds a pod with that conflist. Run as the DaemonSet runs it (--helper), the agent
also hosts the resident helper, which serves the node's calls and is restarted when it dies. No
Python in the image."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import node  # noqa: F401  (fixture)
from cni.spec.version import PYCNI
from tests.k8s_nodes import node_list, node_object

from .conftest import ROOT, Sandbox, have, pids_with, wait_for

IMAGE = f"localhost/pycni:{PYCNI}"
# what `ctr run` gives a container unless told otherwise (containerd's default OCI spec)
CTR_DEFAULT_CAPS = ("CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
                    "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE")


def manifest_security() -> list[str]:
    """`ctr run` flags for manifests/pycni.yaml's securityContext: its capabilities exactly (ctr
    has no `drop ALL`: every default not added is dropped), the default seccomp profile, a
    read-only root file system."""
    import yaml

    ds = next(o for o in yaml.safe_load_all((ROOT / "manifests" / "pycni.yaml").read_text())
              if o and o["kind"] == "DaemonSet")
    sc = ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    assert sc["capabilities"]["drop"] == ["ALL"] and sc["seccompProfile"]["type"] == "RuntimeDefault"
    add = sc["capabilities"]["add"]
    flags = [f for c in add for f in ("--cap-add", f"CAP_{c}")]
    flags += [f for c in CTR_DEFAULT_CAPS if c not in add for f in ("--cap-drop", f"CAP_{c}")]
    return flags + ["--seccomp"] + (["--read-only"] if sc["readOnlyRootFilesystem"] else [])

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
        run = box.enter(*ctr, "run", "--rm", "--net-host", *manifest_security(), *mounts, "--env", "NODE_NAME=node-a",
                        "--env", "PYCNI_LOG_FILE=/run/pycni/agent.log", IMAGE, "agent",
                        "/opt/pycni/agent/pycni-agent", "--from=/opt/pycni/plugin",
                        "--bin-dir=/host/opt/cni/bin", f"--node-bin-dir={host['opt-cni-bin']}",
                        "--conf-dir=/host/etc/cni/net.d",
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


def test_daemonset_agent_hosts_the_helper_that_serves_the_node(node, tmp_path, image):
    """manifests/pycni.yaml's container: the bin dir mounted at the node's own path, the agent run
    with --helper, the manifest's securityContext (SYS_ADMIN + SYS_CHROOT: the helper's child enters
    the caller's namespaces); a flood of idle and slow connections to its metrics port stops
    neither the agent nor its probes. A
    pod added on the node is served by that helper; a helper that dies is started again."""
    bin_dir, conf_dir, run_dir, data = (tmp_path / d for d in ("opt-cni-bin", "etc-cni-net.d", "run-pycni", "data"))
    for d in (bin_dir, conf_dir, run_dir, data):
        d.mkdir()
    (data / "nodes.json").write_text(json.dumps(node_list(node_object("node-a", ["10.244.0.0/24"], ["172.31.0.2"]))))
    sock = tmp_path / "containerd.sock"
    config = tmp_path / "config.toml"
    config.write_text(f'version = 2\nroot = "{tmp_path}/root"\nstate = "{tmp_path}/state"\n'
                      f'[grpc]\n  address = "{sock}"\n')
    box = Sandbox(node.name, ["containerd", "--config", str(config)], {}, tmp_path / "containerd.log")
    agent_log = tmp_path / "agent.out"
    ctr = ["ctr", "-a", str(sock), "-n", "pycni-e2e"]
    try:
        wait_for(sock.exists, what="containerd's socket")
        box.enter(*ctr, "images", "import", str(image))
        mounts = []
        # run_dir also at its own path: the conflist's dataDir (the node's path) is where the
        # agent reads the IPAM store for its metrics, as /run/pycni/ipam is in the DaemonSet
        for src, dst in ((bin_dir, bin_dir), (conf_dir, "/host/etc/cni/net.d"), (run_dir, "/run/pycni"),
                         (run_dir, run_dir), (data, "/data")):
            mounts += ["--mount", f"type=bind,src={src},dst={dst},options=rbind:rw"]
        box.enter(*ctr, "run", "-d", "--log-uri", f"file://{agent_log}", "--net-host", *manifest_security(), *mounts,
                  "--env", "NODE_NAME=node-a", IMAGE, "agent", "/opt/pycni/agent/pycni-agent",
                  "--from=/opt/pycni/plugin", f"--bin-dir={bin_dir}", "--conf-dir=/host/etc/cni/net.d",
                  f"--data-dir={run_dir / 'ipam'}", "--cluster-cidr=10.244.0.0/16",
                  "--nodes-file=/data/nodes.json", "--helper=/run/pycni/helper.sock", "--helper-max-calls=16",
                  "--metrics-address=127.0.0.1:9152", "--cri-socket=/run/pycni/no-runtime.sock")
        helper_sock = run_dir / "helper.sock"
        wait_for(lambda: helper_sock.exists() and "helper started" in agent_log.read_text(),
                 what="the agent's helper")
        # its GC round asked the (absent) runtime through a child of the frozen agent, which has
        # the CRI client (grpc and the stubs) and found no runtime there: nothing released
        line = wait_for(lambda: next((x for x in agent_log.read_text().splitlines() if "agent: gc:" in x), None),
                        what="the agent's first GC round")
        assert "the runtime cannot tell its pods (RuntimeError: Unreachable: /run/pycni/no-runtime.sock" in line, line

        conflist = json.loads((conf_dir / "10-pycni.conflist").read_text())
        conf = {**conflist["plugins"][0], "name": conflist["name"], "cniVersion": conflist["cniVersion"]}
        log = tmp_path / "plugin.log"
        env = {"PYCNI_HELPER_SOCKET": str(helper_sock), "PYCNI_LOG_FILE": str(log)}
        conf["logFile"], conf["logLevel"] = str(log), "debug"
        pod = node.pod()
        add = node.run(bin_dir / "pycni", "ADD", conf, pod, cid="pod1", env=env)
        assert add.rc == 0, add.out
        assert add.out["ips"][0]["address"].startswith("10.244.0.")
        assert "pycni(helper) ADD" in log.read_text()       # served by the helper, not in process
        assert "10.244.0." in subprocess.run(["ip", "netns", "exec", pod, "ip", "-4", "addr", "show", "eth0"],
                                             capture_output=True, text=True).stdout
        # the DaemonSet's probes and a scrape, as Prometheus would (the agent counts the ADD the
        # helper served, from the call record in the shared /run/pycni)
        for path in ("/healthz", "/readyz"):
            assert node.sh("curl", "-sf", f"http://127.0.0.1:9152{path}").strip() == "ok"
        scrape = node.sh("curl", "-sf", "http://127.0.0.1:9152/metrics")
        assert 'pycni_cni_requests_total{code="0",command="ADD",plugin="pycni"} 1.0' in scrape
        assert 'pycni_ipam_addresses{network="pycni",range="10.244.0.0/24",state="used"} 1.0' in scrape
        assert "pycni_helper_fallbacks_total" not in scrape.replace("# HELP pycni_helper_fallbacks_total", "") \
            .replace("# TYPE pycni_helper_fallbacks_total", "")      # served by the helper: no fallback

        # issue 28 row 6 on the real agent: 2,000 idle and 100 slow connections to its metrics port
        import sys

        flood = subprocess.Popen(["ip", "netns", "exec", node.name, sys.executable,
                                  str(ROOT / "tests" / "integration" / "flood_app.py"), "127.0.0.1", "9152", "2000", "100"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert flood.stdout.readline().startswith("ready")
            time.sleep(3)
            for path in ("/healthz", "/readyz"):
                assert node.sh("curl", "-sf", "-m", "5", f"http://127.0.0.1:9152{path}").strip() == "ok"
            assert "RUNNING" in box.enter(*ctr, "task", "ls", check=False).stdout
        finally:
            flood.kill()
            flood.wait()

        # the helper dies: the agent starts another, which serves the DEL
        first = [p for p in pids_with(str(bin_dir)) if _is_helper(p)]
        assert first, "no helper process found"
        for pid in first:
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: agent_log.read_text().count("helper started") >= 2, what="the helper's restart")
        wait_for(lambda: _answers(helper_sock), what="the new helper's socket")
        assert node.run(bin_dir / "pycni", "DEL", conf, pod, cid="pod1", env=env).rc == 0
        assert log.read_text().count("pycni(helper) DEL pod1/eth0 deleted") == 1
        assert not [f for f in (run_dir / "ipam").rglob("*") if f.is_file() and "pod1" in f.read_text()]
    finally:
        box.enter(*ctr, "task", "kill", "-s", "SIGTERM", "agent", check=False)
        try:
            wait_for(lambda: "STOPPED" in box.enter(*ctr, "task", "ls", check=False).stdout
                     or "agent" not in box.enter(*ctr, "task", "ls", check=False).stdout,
                     timeout=20, what="the agent to stop")
        finally:
            box.enter(*ctr, "task", "delete", "-f", "agent", check=False)
            box.enter(*ctr, "container", "delete", "agent", check=False)
            box.stop()
            for pid in pids_with(str(sock)) + pids_with(str(bin_dir)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    assert not (run_dir / "helper.sock").exists()         # the helper stopped with the agent, cleanly


def _is_helper(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")     # bootloader: pycni helper ...; launcher: python3.11 pycni helper ...
            return b"helper" in args[1:3] and b"--socket" in args
    except OSError:
        return False


def _answers(path) -> bool:
    import socket

    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()

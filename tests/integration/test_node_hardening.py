"""Issue 28, the node's own rows: what a pod's runtime-supplied names or a local user on the node
can make root's plugin do. Each test attacks the way the issue's row says, with the real executable
in a throwaway node namespace."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

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


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]


@pytest.fixture
def shared_dir():
    """A directory an unprivileged user can reach (pytest's tmp_path is root's only), removed after."""
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix="pycnit-node-")
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _secret(shared_dir) -> str:
    root_only = os.path.join(shared_dir, "root-only")
    os.mkdir(root_only, 0o700)
    secret = os.path.join(root_only, "secret")
    with open(secret, "w") as f:
        f.write("precious\n")
    os.chmod(secret, 0o600)
    return secret


@pytest.mark.parametrize("where", ["data dir open to all", "network dir of another user"])
def test_ipam_refuses_a_store_a_local_user_prepared_and_truncates_nothing(node, shared_dir, where):
    """Row 10: a local user makes the network's directory first, with last_reserved_ip.0 a symlink
    to a root-only file. Root's ADD refuses the store (code 5, saying why) and the file is intact;
    DEL of the same attachment finishes."""
    secret = _secret(shared_dir)
    data_dir = os.path.join(shared_dir, "ipam")
    os.mkdir(data_dir)
    os.chmod(data_dir, 0o1777 if where == "data dir open to all" else 0o755)
    netdir = os.path.join(data_dir, "testnet")
    if where == "data dir open to all":
        subprocess.run(NOBODY + ["mkdir", netdir], check=True)
    else:
        os.mkdir(netdir)
        os.chown(netdir, 65534, 65534)
        os.chmod(netdir, 0o755)
    subprocess.run(NOBODY + ["ln", "-s", secret, os.path.join(netdir, "last_reserved_ip.0")], check=True)
    conf = netconf(node, "1.1.0")
    conf["ipam"]["dataDir"] = data_dir
    pod = node.pod()
    add = node.pycni("ADD", conf, pod, cid="victim")
    assert open(secret).read() == "precious\n"
    assert add.rc != 0 and add.code == 5, add.out
    assert add.out["msg"] == "unsafe IPAM data directory" and (
        "owned by uid 65534" in add.out["details"] or "writable by group or others" in add.out["details"])
    assert "eth0" not in subprocess.run(["ip", "-n", pod, "-o", "link"], capture_output=True, text=True).stdout
    assert node.pycni("DEL", conf, pod, cid="victim").rc == 0
    assert sorted(os.listdir(netdir)) == ["last_reserved_ip.0"]


@pytest.mark.parametrize("name", ["last_reserved_ip.0", "lock"])
def test_ipam_follows_no_symlink_inside_its_store(node, shared_dir, name):
    """Row 10, the store's own files: a symlink found in a root-only store (planted there before
    the store was made root's) is never followed: the cursor is a hint and is skipped; the lock
    fails the call with code 5. The root-only file is intact either way."""
    secret = _secret(shared_dir)
    conf = netconf(node, "1.1.0")
    netdir = node.data_dir / "testnet"
    netdir.mkdir(parents=True)
    os.symlink(secret, netdir / name)
    pod = node.pod()
    add = node.pycni("ADD", conf, pod, cid="victim")
    assert open(secret).read() == "precious\n"
    if name == "lock":
        assert add.rc != 0 and add.code == 5 and "lock" in add.out["msg"], add.out
    else:
        assert add.rc == 0, add.out
        assert node.reservations("testnet") == ["10.88.0.2"]
        assert node.pycni("DEL", conf, pod, cid="victim").rc == 0
        assert node.reservations("testnet") == []


def install_under_umask_000(source, bin_dir, conf_dir=None, conflist=None, unit_dir=None):
    """`pycni install` as root with umask 000, the way a careless shell runs it."""
    import sys

    args = ["install", "--from", str(source), "--bin-dir", str(bin_dir)]
    if conflist:
        args += ["--conf-dir", str(conf_dir), "--conflist", str(conflist)]
    if unit_dir:
        args += ["--helper", str(unit_dir)]
    code = "import os, sys; os.umask(0); from cni.entry import pycni; sys.exit(pycni())"
    subprocess.run([sys.executable, "-c", code, *args], check=True, cwd=os.path.dirname(os.path.dirname(
        os.path.dirname(os.path.abspath(__file__)))), env={**os.environ, "PYCNI_LOG_FILE": ""})


def loose_paths(*tops) -> list[str]:
    """Everything under `tops` that is not root's or that group/others may write."""
    out = []
    for top in tops:
        for dirpath, dirnames, filenames in os.walk(top):
            for path in [dirpath] + [os.path.join(dirpath, n) for n in dirnames + filenames]:
                st = os.lstat(path)
                if st.st_uid != 0 or (not os.path.islink(path) and st.st_mode & 0o022):
                    out.append(f"{path} uid {st.st_uid} mode {st.st_mode & 0o7777:o}")
    return out


def attacks_on_the_launcher(bin_dir) -> list[str]:
    """What an unprivileged user manages against the names root execs: each a shell command run
    as nobody; returns the ones that succeeded."""
    store = os.path.join(bin_dir, ".pycni")
    build = next(n for n in os.listdir(store) if not n.startswith("."))
    launcher = os.path.realpath(os.path.join(bin_dir, "pycni"))
    tries = {
        "overwrite the launcher": f"echo 'echo pwned' > {launcher}",
        "rename over the launcher": f"echo x > {store}/{build}/evil && mv -f {store}/{build}/evil {launcher}",
        "add a build to the store": f"mkdir {store}/evil",
        "replace a name in the bin dir": f"ln -sfn /tmp {bin_dir}/pycni-ipam",
        "plant a library": f"echo x > {store}/{build}/_internal/evil.so",
    }
    return [what for what, cmd in tries.items()
            if subprocess.run(NOBODY + ["sh", "-c", cmd], capture_output=True).returncode == 0]


def fake_build(root) -> str:
    """A stand-in for dist/pycni made under umask 000 (so its own modes are world-writable)."""
    old = os.umask(0)
    try:
        b = os.path.join(root, "build")
        os.makedirs(os.path.join(b, "_internal", "lib"))
        with open(os.path.join(b, "_internal", "lib", "libfake.so"), "w") as f:
            f.write("x")
        with open(os.path.join(b, "pycni"), "w") as f:
            f.write("#!/bin/sh\necho fake\n")
        os.chmod(os.path.join(b, "pycni"), 0o777)
    finally:
        os.umask(old)
    return b


def test_install_under_umask_000_leaves_nothing_another_user_can_replace(shared_dir):
    """Row 9 on a fake build: bin dir, store, build, names, conflist, helper unit: root's, no
    group/other write; an unprivileged user cannot replace the launcher or anything beside it."""
    import json

    bin_dir, conf_dir, unit_dir = (os.path.join(shared_dir, n) for n in ("opt/cni/bin", "net.d", "units"))
    conflist = os.path.join(shared_dir, "10-t.conflist")
    with open(conflist, "w") as f:
        json.dump({"cniVersion": "1.0.0", "name": "t", "plugins": [{"type": "loopback"}]}, f)
    install_under_umask_000(fake_build(shared_dir), bin_dir, conf_dir, conflist, unit_dir)
    assert attacks_on_the_launcher(bin_dir) == []
    assert loose_paths(os.path.join(shared_dir, "opt"), conf_dir, unit_dir) == []
    assert subprocess.run([os.path.join(bin_dir, "pycni")], capture_output=True, text=True).stdout == "fake\n"


def test_install_replaces_a_build_dir_others_could_write(shared_dir):
    """Row 9, an earlier careless install: a world-writable store is tightened and a build dir
    others could write (its launcher maybe replaced) is copied afresh, not reused."""
    bin_dir = os.path.join(shared_dir, "bin")
    build = fake_build(shared_dir)
    install_under_umask_000(build, bin_dir)
    store = os.path.join(bin_dir, ".pycni")
    target = os.path.realpath(os.path.join(bin_dir, "pycni"))
    os.chmod(store, 0o777)
    os.chmod(target, 0o666)
    with open(target, "w") as f:
        f.write("#!/bin/sh\necho pwned\n")
    os.chmod(target, 0o777)
    install_under_umask_000(build, bin_dir)
    assert loose_paths(bin_dir) == []
    assert subprocess.run([os.path.join(bin_dir, "pycni")], capture_output=True, text=True).stdout == "fake\n"


FLUSH_PROBE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from pyroute2.conntrack import Conntrack
from cni.linux.conntrack import flush_udp_ports
walks = []
real = Conntrack.dump_entries
def counted(self, *a, **kw):
    walks.append(1)
    return real(self, *a, **kw)
Conntrack.dump_entries = counted
removed = flush_udp_ports(range(int(sys.argv[2]), int(sys.argv[2]) + int(sys.argv[3])))
print(json.dumps({"walks": len(walks), "removed": removed}))
"""


def test_udp_conntrack_flush_walks_the_table_once_per_family_whatever_the_port_count(node):
    """Row 11: flushing 500 UDP host ports is two walks of the conntrack table (IPv4, IPv6), not
    two per port; the entries of those ports go, the others stay."""
    import sys

    def insert(*args):
        node.sh("conntrack", "-I", "-p", "udp", "-t", "120", *args)

    insert("-s", "10.9.0.1", "-d", "10.9.0.2", "--sport", "4000", "--dport", "30001")
    insert("-s", "10.9.0.1", "-d", "10.9.0.2", "--sport", "4000", "--dport", "30499")
    insert("-s", "fd09::1", "-d", "fd09::2", "--sport", "4000", "--dport", "30002")
    insert("-s", "10.9.0.1", "-d", "10.9.0.2", "--sport", "4000", "--dport", "29999")   # not mapped
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run(["ip", "netns", "exec", node.name, sys.executable, "-c", FLUSH_PROBE, root,
                          "30000", "500"], capture_output=True, text=True, check=True).stdout
    import json

    assert json.loads(out) == {"walks": 2, "removed": 3}
    left = node.sh("conntrack", "-L", "-p", "udp", check=False) + node.sh(
        "conntrack", "-L", "-f", "ipv6", "-p", "udp", check=False)
    assert "dport=29999" in left and "dport=30001" not in left and "dport=30002" not in left


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_an_add_past_the_mapping_cap_refuses_up_front_and_del_finishes(node, backend):
    """Row 11: an ADD's cost is bounded: more than MAX_PORT_MAPPINGS distinct mappings is code 7
    before anything is made (no address, no veth, no rule); DEL of it finishes."""
    from cni.firewall.options import MAX_PORT_MAPPINGS

    from .test_hostile_inputs import nothing_left

    many = [{"hostPort": 1 + i, "containerPort": 80, "protocol": "udp"} for i in range(MAX_PORT_MAPPINGS + 1)]
    conf = netconf(node, "1.1.0", ipMasq=True, backend=backend, capabilities={"portMappings": True},
                   runtimeConfig={"portMappings": many})
    pod = node.pod()
    add = node.pycni("ADD", conf, pod, cid="many")
    assert add.rc != 0 and add.code == 7 and add.out["msg"] == "too many port mappings", add.out
    assert nothing_left(node, backend) == []
    assert node.pycni("DEL", conf, pod, cid="many").rc == 0
    # at the cap (duplicates count once) it is accepted
    at_cap = many[:MAX_PORT_MAPPINGS] + many[:10]
    ok = node.pycni("ADD", {**conf, "runtimeConfig": {"portMappings": at_cap}}, pod, cid="cap")
    assert ok.rc == 0, ok.out
    assert node.pycni("DEL", {**conf, "runtimeConfig": {"portMappings": at_cap}}, pod, cid="cap").rc == 0
    assert nothing_left(node, backend) == []


METRICS_PORT = 19153


def _proc_status(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return {"threads": int(out["Threads"]), "rss_kib": int(out["VmRSS"].split()[0])}


def _get(ns: str, path: str, timeout: float = 3.0) -> int:
    import sys

    code = ("import sys, urllib.request, urllib.error\n"
            f"try:\n  print(urllib.request.urlopen('http://127.0.0.1:{METRICS_PORT}{path}', timeout={timeout}).status)\n"
            "except urllib.error.HTTPError as e:\n  print(e.code)\n"
            "except OSError as e:\n  print(0)\n")
    return int(subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], capture_output=True,
                              text=True, timeout=30).stdout.strip() or 0)


def test_a_flood_of_idle_and_slow_connections_neither_grows_the_agent_nor_delays_policy(tmp_path):
    """Row 6: 2,000 idle and 100 slowloris connections to the agent's metrics port (from the node's
    own namespace: the admin asked for an address clients reach). The agent keeps its threads and
    its memory, its probes answer, and a NetworkPolicy change still reaches the kernel."""
    import sys
    import time

    from tests.k8s_api import FakeAPI

    from .cluster import NODES, OUTSIDE4, Cluster, api_node
    from .test_netpol import namespace_object, pod_object, policy

    cluster = Cluster(tmp_path)
    flood = None
    try:
        api = FakeAPI(OUTSIDE4, netns=cluster.underlay)
        for name in NODES:
            api.put("nodes", api_node(name))
        api.put("namespaces", namespace_object("x"))
        api.put("pods", pod_object("x/a", "node-a"))
        # no GC rounds: their first loads grpc (~20 MB), which is not what this test measures
        agent = cluster.start_agent("node-a", api.kubeconfig(tmp_path / "kubeconfig"),
                                    "--metrics-address", f"127.0.0.1:{METRICS_PORT}", "--gc-every", "0")
        agent.wait_for("agent: network policy:")
        agent.wait_for("conflist written")
        ns = cluster.nodes["node-a"].name
        pod, result = cluster.add_pod("node-a", "cid-x-a", ("x", "a"))
        pod_ip = next(ip["address"].split("/")[0] for ip in result["ips"] if ":" not in ip["address"])
        api.put("pods", pod_object("x/a", "node-a", [pod_ip]))
        deadline = time.monotonic() + 20
        while _get(ns, "/readyz") != 200:
            assert time.monotonic() < deadline, "agent never ready"
            time.sleep(0.2)
        before = _proc_status(agent.proc.pid)
        flood = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, str(Path(__file__).with_name("flood_app.py")),
                                  "127.0.0.1", str(METRICS_PORT), "2000", "100"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert flood.stdout.readline().startswith("ready")
        time.sleep(3)
        assert agent.proc.poll() is None, agent.lines[-5:]      # the flood did not stop the agent
        during = _proc_status(agent.proc.pid)
        syncs = agent.count("agent: network policy:")
        api.put("networkpolicies", policy("x", "deny-all", {"podSelector": {}, "policyTypes": ["Ingress"]}))
        agent.wait_for("agent: network policy: 1 policies", timeout=10)
        assert agent.count("agent: network policy:") > syncs
        isolated = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "set", "inet", "pycni-policy",
                                   "ingress_iso4"], capture_output=True, text=True, check=True).stdout
        assert pod_ip in isolated, isolated         # the pod is isolated in the kernel now
        assert _get(ns, "/healthz") == 200 and _get(ns, "/metrics") == 200
        assert agent.proc.poll() is None
        assert during["threads"] <= before["threads"] + 2, (before, during)
        assert during["rss_kib"] <= before["rss_kib"] + 20 * 1024, (before, during)
    finally:
        if flood is not None:
            flood.kill()
            flood.wait()
        cluster.close()

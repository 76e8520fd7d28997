"""Simulated Kubernetes nodes for the agent's tests: an underlay namespace with a bridge (and an
address outside the cluster), two node namespaces on it, each with its own pod CIDR, data dir and
log; pods added with the conflist the agent wrote; the agent run once from a Node list file or
kept running against an API server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.k8s_nodes import node_list, node_object

from .conftest import BIN, PREFIX, Node, _counter, ready_line, sh

APP = str(Path(__file__).with_name("netapp.py"))

NODES = {
    "node-a": {"ip4": "172.31.0.2", "ip6": "fd31::2", "pods": ["10.244.0.0/24", "fd00:10:244::/64"]},
    "node-b": {"ip4": "172.31.0.3", "ip6": "fd31::3", "pods": ["10.244.1.0/24", "fd00:10:244:1::/64"]},
}
OUTSIDE4, OUTSIDE6 = "172.31.0.100", "fd31::100"     # a machine on the underlay, outside the cluster


def api_node(name: str) -> dict:
    n = NODES[name]
    return node_object(name, n["pods"], [n["ip4"], n["ip6"]])


class Cluster:
    def __init__(self, tmp: Path):
        base = f"{PREFIX}{os.getpid()}-{next(_counter)}"
        self.tmp = tmp
        self.underlay = f"{base}-u"
        self.namespaces = [self.underlay]
        sh("ip", "netns", "add", self.underlay)
        self.nodes: dict[str, Node] = {}
        self.servers: list[subprocess.Popen] = []
        self.agents: list[Agent] = []
        u = self.underlay
        for cmd in (["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"],
                    ["ip", "link", "set", "lo", "up"],
                    ["ip", "link", "add", "ul0", "type", "bridge"],
                    ["ip", "addr", "add", f"{OUTSIDE4}/24", "dev", "ul0"],
                    ["ip", "-6", "addr", "add", f"{OUTSIDE6}/64", "dev", "ul0", "nodad"],
                    ["ip", "link", "set", "ul0", "up"]):
            sh(*cmd, ns=u)
        for i, (name, n) in enumerate(NODES.items()):
            ns = f"{base}-n{i}"
            sh("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            node = Node(ns, tmp / name)
            node.tmp.mkdir()
            self.nodes[name] = node
            sh("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0", ns=ns)
            sh("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1", ns=ns)
            sh("ip", "link", "set", "lo", "up", ns=ns)
            sh("ip", "link", "add", f"to-{name}", "type", "veth", "peer", "name", "eth0", "netns", ns, ns=u)
            sh("ip", "link", "set", f"to-{name}", "master", "ul0", "up", ns=u)
            sh("ip", "addr", "add", f"{n['ip4']}/24", "dev", "eth0", ns=ns)
            sh("ip", "-6", "addr", "add", f"{n['ip6']}/64", "dev", "eth0", "nodad", ns=ns)
            sh("ip", "link", "set", "eth0", "up", ns=ns)

    def api_node(self, name: str) -> dict:
        return api_node(name)

    def agent(self, name: str, nodes: list[str], *extra: str, check: bool = True) -> str:
        """Run `pycni agent` once on node `name` with the cluster's Node objects as the API serves them."""
        node = self.nodes[name]
        listing = node.tmp / "nodes.json"
        listing.write_text(json.dumps(node_list(*map(self.api_node, nodes))))
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        env["PYCNI_LOG_FILE"] = str(node.log_file)
        proc = subprocess.run(
            ["ip", "netns", "exec", node.name, str(BIN / "pycni"), "agent", "--node-name", name,
             "--nodes-file", str(listing), "--from", "none", "--conf-dir", str(node.tmp / "net.d"),
             "--data-dir", str(node.data_dir), "--cluster-cidr", "10.244.0.0/16",
             "--cluster-cidr", "fd00:10:244::/56", "--peers-file", str(node.tmp / "peers.json"), *extra],
            env=env, capture_output=True, text=True)
        assert proc.returncode == 0 or not check, proc.stderr + proc.stdout
        return proc.stdout

    def start_agent(self, name: str, kubeconfig: str, *extra: str, wrap: tuple | list = ()) -> "Agent":
        """`pycni agent` on node `name` against an API server, kept running (stopped by close);
        `wrap`: a command that runs it (setpriv with fewer capabilities)."""
        node = self.nodes[name]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        env["PYCNI_LOG_FILE"] = str(node.log_file)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", node.name, *wrap, sys.executable, "-m", "cni", "agent", "--node-name", name,
             "--kubeconfig", kubeconfig, "--from", "none", "--conf-dir", str(node.tmp / "net.d"),
             "--data-dir", str(node.data_dir), "--policy-dir", str(node.tmp / "policy"),
             "--cluster-cidr", "10.244.0.0/16", "--cluster-cidr", "fd00:10:244::/56",
             "--peers-file", str(node.tmp / "peers.json"), *extra],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            cwd=str(Path(__file__).parents[2]))
        agent = Agent(proc)
        self.agents.append(agent)
        return agent

    def conf(self, name: str) -> dict:
        conflist = json.loads((self.nodes[name].tmp / "net.d" / "10-pycni.conflist").read_text())
        return {**conflist["plugins"][0], "name": conflist["name"], "cniVersion": conflist["cniVersion"]}

    def add_pod(self, name: str, cid: str, k8s: tuple[str, str] | None = None,
                ip: str | None = None) -> tuple[str, dict]:
        """ADD a new pod namespace on node `name` (with CNI_ARGS naming the pod, as kubelet does;
        `ip`: the address asked for, CNI_ARGS IP=)."""
        node = self.nodes[name]
        conf = self.conf(name)
        pod = node.pod()
        self.namespaces.append(pod)
        sh("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0", ns=pod)
        args = f"IgnoreUnknown=1;K8S_POD_NAMESPACE={k8s[0]};K8S_POD_NAME={k8s[1]}" if k8s else ""
        if ip:
            args = f"{args or 'IgnoreUnknown=1'};IP={ip}"
        res = node.pycni("ADD", conf, pod, cid=cid, args=args)
        assert res.rc == 0, res.out
        return pod, res.out

    def del_pod(self, name: str, cid: str, pod: str, k8s: tuple[str, str] | None = None) -> None:
        args = f"IgnoreUnknown=1;K8S_POD_NAMESPACE={k8s[0]};K8S_POD_NAME={k8s[1]}" if k8s else ""
        res = self.nodes[name].pycni("DEL", self.conf(name), pod, cid=cid, args=args)
        assert res.rc == 0, res.out

    def serve(self, ns: str, name: str) -> None:
        srv = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, APP, "serve", name, "7000"],
                               stdout=subprocess.PIPE, text=True)
        self.servers.append(srv)
        assert ready_line(srv).strip() == "ready"

    def close(self) -> None:
        for a in self.agents:
            a.stop()
        for p in self.servers:
            p.kill()
            p.wait()
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)


class Agent:
    """A running agent and the lines it printed (read by a thread, so its pipe never fills)."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.lines: list[str] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def count(self, text: str) -> int:
        with self.cond:
            return sum(text in line for line in self.lines)

    def wait_for(self, text: str, at_least: int = 1, timeout: float = 20.0) -> str:
        """The last line containing `text`, once there are `at_least` of them."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = [line for line in self.lines if text in line]
                if len(found) >= at_least:
                    return found[-1]
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError(f"agent did not print {text!r} x{at_least}; it printed:\n"
                                         + "\n".join(self.lines[-40:]))
                self.cond.wait(min(left, 0.2))

    def stop(self, kill: bool = False) -> None:
        if self.proc.poll() is None:
            if kill:
                self.proc.kill()    # ip netns exec execs the agent: this PID is the agent
            else:
                self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


def ask(ns: str, addr: str) -> str:
    return sh(sys.executable, APP, "tcp", addr, "7000", ns=ns, check=False).strip()


def addresses(result: dict) -> tuple[str, str]:
    ips = [ip["address"].split("/")[0] for ip in result["ips"]]
    return next(i for i in ips if ":" not in i), next(i for i in ips if ":" in i)



#!/usr/bin/env python3
"""NetworkPolicy at scale on one node: N pods and M policies (default 1,000 and 200).

    sudo .venv/bin/python bench/netpol.py [--bin-dir DIR] [--helper] [--agent EXE] [--pods 1000] [--policies 200]

In a throwaway node namespace: a fake API server on the node's loopback (tests/k8s_api.py) serves
the Node, 20 namespaces, the pods (all scheduled to this node) and the policies; `pycni agent`
(the venv's) enforces them. Printed: the agent's first sync (rules,
elements, time), the time from a policy change at the API to the agent's report that the new
table is committed (p50/max over --changes edits, each checked in the kernel), the pure compile
and render time, and the plugin's ADD and DEL p50 with and without networkPolicy in the config,
alternating (pods whose Pod objects exist, so the ADD finds its sets as in a real cluster).
"""

from __future__ import annotations

import argparse
import json
import re
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from node_namespace import run_inside  # noqa: E402

NAMESPACES = 20


def pod_obj(ns: str, name: str, node: str, ip: str | None, app: int) -> dict:
    status = {"phase": "Running"}
    if ip:
        status.update(podIP=ip, podIPs=[{"ip": ip}])
    return {"metadata": {"namespace": ns, "name": name, "labels": {"app": f"app{app % 10}",
                                                                  "tier": ("web", "db", "cache")[app % 3]}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [
                {"name": "http", "containerPort": 8080}, {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
            "status": status}


def policy_obj(i: int, port: int = 80) -> dict:
    """Five shapes, as clusters use them: default deny, same-namespace app to app on a port,
    from labelled namespaces on a named port, egress to an IP block with exceptions, AND peers."""
    ns = f"ns{i % NAMESPACES}"
    shape = i % 5
    if shape == 0:
        spec = {"podSelector": {}, "policyTypes": ["Ingress"]}
    elif shape == 1:
        spec = {"podSelector": {"matchLabels": {"app": f"app{i % 10}"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": f"app{(i + 1) % 10}"}}}],
                             "ports": [{"port": port}, {"port": 9000, "endPort": 9100}]}]}
    elif shape == 2:
        spec = {"podSelector": {"matchLabels": {"tier": "web"}},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": f"t{i % 4}"}}}],
                             "ports": [{"port": "http"}]}]}
    elif shape == 3:
        spec = {"podSelector": {"matchLabels": {"app": f"app{i % 10}"}}, "policyTypes": ["Egress"],
                "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.96.0.0/12"]}}]},
                           {"ports": [{"port": 53, "protocol": "UDP"}, {"port": "dns", "protocol": "UDP"}]}]}
    else:
        spec = {"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["app1", "app2"]}]},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "t1"}},
                                       "podSelector": {"matchLabels": {"tier": "db"}}}]}]}
    return {"metadata": {"namespace": ns, "name": f"pol{i}"}, "spec": spec}


def inside(args) -> None:
    from tests.k8s_api import FakeAPI

    from cni.agent.policy import loop
    from cni.agent.policy.compile import compile_policies, render

    work = Path(tempfile.mkdtemp(prefix="pycni-netpol-"))
    node = "bench-node"
    api = FakeAPI("127.0.0.1")
    agent = None
    try:
        api.put("nodes", {"metadata": {"name": node}, "spec": {"podCIDR": "10.80.0.0/16", "podCIDRs": ["10.80.0.0/16"]},
                          "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]}})
        for k in range(NAMESPACES):
            api.put("namespaces", {"metadata": {"name": f"ns{k}", "labels": {"team": f"t{k % 4}"}}})
        for i in range(args.pods):
            api.put("pods", pod_obj(f"ns{i % NAMESPACES}", f"pod{i}", node, f"10.81.{i // 250}.{i % 250 + 1}",
                                    i // NAMESPACES))
        for i in range(args.policies):
            api.put("networkpolicies", policy_obj(i))
        lines: list[tuple[float, str]] = []
        cond = threading.Condition()
        agent_cmd = [args.agent] if args.agent else [sys.executable, "-m", "cni", "agent"]
        agent = subprocess.Popen(
            [*agent_cmd, "--node-name", node, "--kubeconfig", api.kubeconfig(work / "kc"),
             "--from", "none", "--conf-dir", str(work / "net.d"), "--data-dir", str(work / "ipam"),
             "--policy-dir", str(work / "policy"), "--bridge", "nbr0", "--no-masquerade"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
            env={**os.environ, "PYCNI_LOG_FILE": str(work / "agent.log")})

        def read():
            for line in agent.stdout:
                with cond:
                    lines.append((time.monotonic(), line.strip()))
                    cond.notify_all()

        threading.Thread(target=read, daemon=True).start()

        def syncs() -> list[tuple[float, str]]:
            with cond:
                return [x for x in lines if "agent: network policy:" in x[1]]

        def wait_sync(n: int) -> tuple[float, str]:
            with cond:
                if not cond.wait_for(lambda: len(syncs()) >= n or agent.poll() is not None, timeout=120):
                    raise SystemExit("agent did not sync:\n" + "\n".join(x[1] for x in lines[-20:]))
            if len(syncs()) < n:
                raise SystemExit("agent exited:\n" + "\n".join(x[1] for x in lines[-20:]))
            return syncs()[n - 1]

        first = wait_sync(1)
        time.sleep(1.0)
        print(f"first sync: {first[1].split('network policy: ')[1]}", flush=True)

        # a policy change: shape-1 policy 1 gets a new port; time until the agent reports the commit
        took = []
        for k in range(args.changes):
            time.sleep(0.3)
            n = len(syncs())
            port = 2000 + k
            t0 = time.monotonic()
            api.put("networkpolicies", policy_obj(1, port))
            at, _ = wait_sync(n + 1)
            took.append((at - t0) * 1000)
            got = subprocess.run(["nft", "list", "table", "inet", "pycni-policy"], capture_output=True, text=True)
            listing = got.stdout + got.stderr
            assert re.search(rf"tcp \. {port}\b", listing), "the change is not in the kernel:\n" + "\n".join(l for l in listing.splitlines() if "tcp" in l)
        counts = subprocess.run(["nft", "-j", "list", "table", "inet", "pycni-policy"], capture_output=True,
                                text=True).stdout
        items = json.loads(counts)["nftables"]
        rules = sum(1 for x in items if "rule" in x)
        elements = sum(len(x["set"].get("elem", [])) for x in items if "set" in x)
        sets = sum(1 for x in items if "set" in x)
        print(f"policy change -> committed in the kernel: p50 {statistics.median(took):.0f} ms, "
              f"max {max(took):.0f} ms over {len(took)} changes", flush=True)
        print(f"kernel table: {rules} rules, {sets} sets, {elements} elements", flush=True)

        # the pure part at this size, for the breakdown
        snapshot = {k: api.objects(k) for k in ("pods", "namespaces", "networkpolicies")}
        t0 = time.perf_counter()
        parsed = ([loop.policy_value(o) for o in snapshot["networkpolicies"].values()],
                  [p for p in map(loop.parse_pod, snapshot["pods"].values()) if p is not None],
                  dict(map(loop.parse_namespace, snapshot["namespaces"].values())))
        t1 = time.perf_counter()
        compiled = compile_policies(*parsed, node)
        t2 = time.perf_counter()
        text = render(compiled, "inet pycni-policy")
        t3 = time.perf_counter()
        print(f"in the agent: parse {1000 * (t1 - t0):.0f} ms, compile {1000 * (t2 - t1):.0f} ms, "
              f"render {1000 * (t3 - t2):.0f} ms ({len(text) // 1024} KiB of nft)", flush=True)

        # ADD/DEL with and without networkPolicy, alternating
        conflist = json.loads((work / "net.d" / "10-pycni.conflist").read_text())
        with_policy = {**conflist["plugins"][0], "name": conflist["name"], "cniVersion": conflist["cniVersion"]}
        assert "networkPolicy" in with_policy
        without = {k: v for k, v in with_policy.items() if k != "networkPolicy"}
        for i in range(args.adds):       # their Pod objects first, as the scheduler would
            api.put("pods", pod_obj("ns1", f"new{i}", node, None, 3))
        n = len(syncs())
        time.sleep(1.0)
        wait_sync(n)
        results: dict[str, list] = {"with": [], "without": [], "with_del": [], "without_del": []}
        bin_dir = Path(args.bin_dir)
        sock = work / "helper.sock"
        if args.helper:      # as the DaemonSet's agent starts it
            helper = subprocess.Popen([str(bin_dir / "pycni"), "helper", "--socket", str(sock)],
                                      stderr=subprocess.PIPE, text=True)
            if "serving on" not in helper.stderr.readline():
                raise SystemExit("the helper did not start")
        for i in range(args.adds):
            for label, conf in (("without", without), ("with", with_policy)):
                pod = f"{args.prefix}-{label}{i}"
                subprocess.run(["ip", "netns", "add", pod], check=True)
                env = {"PATH": os.environ["PATH"], "CNI_CONTAINERID": pod, "CNI_NETNS": f"/var/run/netns/{pod}",
                       "CNI_IFNAME": "eth0", "CNI_PATH": str(bin_dir), "PYCNI_HELPER_SOCKET": str(sock),
                       "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=new{i}"}
                for command, key in (("ADD", label), ("DEL", f"{label}_del")):
                    t0 = time.perf_counter()
                    p = subprocess.run([str(bin_dir / "pycni")], input=json.dumps(conf).encode(),
                                       env={**env, "CNI_COMMAND": command}, capture_output=True)
                    results[key].append((time.perf_counter() - t0) * 1000)
                    if p.returncode != 0:
                        raise SystemExit(f"{command} failed: {p.stdout.decode()} {p.stderr.decode()}")
                    if command == "ADD" and label == "with":
                        members = json.loads((work / "policy" / "pods" / "ns1" / f"new{i}").read_text())
                        assert members, "the pod's sets were not known at ADD"
                subprocess.run(["ip", "netns", "del", pod], check=True)
        med = {k: statistics.median(v) for k, v in results.items()}
        print(f"plugin ADD p50: {med['without']:.1f} ms without networkPolicy, {med['with']:.1f} ms with "
              f"({med['with'] - med['without']:+.1f} ms); DEL p50: {med['without_del']:.1f} ms / "
              f"{med['with_del']:.1f} ms ({med['with_del'] - med['without_del']:+.1f} ms); {args.adds} each, "
              f"{'through the helper' if args.helper else 'one process per call'}, executables in {bin_dir}",
              flush=True)
        if args.helper:
            helper.terminate()
            helper.wait()
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait()
        api.close()
        subprocess.run(["nft", "delete", "table", "inet", "pycni-policy"], stderr=subprocess.DEVNULL)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin-dir", default=str(Path(sys.executable).parent))
    p.add_argument("--pods", type=int, default=1000)
    p.add_argument("--policies", type=int, default=200)
    p.add_argument("--changes", type=int, default=10)
    p.add_argument("--adds", type=int, default=30)
    p.add_argument("--helper", action="store_true", help="calls through `pycni helper` (as the DaemonSet runs)")
    p.add_argument("--agent", help="the agent executable, e.g. dist/pycni-agent/pycni-agent as in the image "
                                   "(default: this venv's `python -m cni agent`)")
    p.add_argument("--inside", action="store_true")
    p.add_argument("--prefix", default=f"pycnib-np{os.getpid()}")
    args = p.parse_args()
    if args.inside:
        inside(args)
        return
    print(f"NetworkPolicy at scale, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, {args.pods} pods and "
          f"{args.policies} policies on one node, agent {args.agent or 'python -m cni agent (venv)'}", flush=True)
    run_inside(__file__, args.prefix, [a for a in sys.argv[1:]])


if __name__ == "__main__":
    main()

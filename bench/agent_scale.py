#!/usr/bin/env python3
"""The node agent at cluster scale: N nodes, P pods, K NetworkPolicies (default 100 / 3,000 / 50).

    sudo .venv/bin/python bench/agent_scale.py [--nodes 1000] [--pods 30000] [--policies 500]
        [--idle 60] [--reactions 5] [--agent-root DIR] [--build dist/pycni [--adds 50]]

In a throwaway node namespace (an underlay veth pair gives the other nodes' InternalIPs a
connected network, so their routes install), a fake API server (tests/k8s_api.py: pages,
bookmarks, 410 Gone as kube-apiserver) serves realistic objects: Pods of ~3 KB of JSON each
(managedFields, ownerReferences, probes, volumes, conditions, container statuses), Nodes of
~4 KB (images, conditions), namespaces with labels, policies of five shapes. `pycni agent` runs
with the DaemonSet's arguments (with --build: installing that build and hosting its helper). Printed:
- converge: the time from start until routes (N-1 in the kernel), conflist and the first policy
  sync are in place; CPU of the agent to get there; peak RSS (VmHWM) and RSS;
- idle CPU over --idle seconds (no changes), then over --idle seconds of status churn (Pods whose
  conditions change, Nodes' heartbeats: changes that matter to nobody);
- API requests by kind (list pages, watches);
- reactions, p50 / max over --reactions tries: node added (its route in the kernel), node
  deleted (route gone), a policy changed (the new port in the kernel's table), a new pod on
  another node matching a policy's peers (its address in the table);
- with --build: the container's memory (agent + helper + the helper's children, sum of PSS)
  at rest and at its peak under --adds ADDs at once through the helper;
- SIGTERM while busy (during a restart's lists) and at rest: seconds until the agent exited;
- restart: re-converge time, route changes the kernel saw meanwhile (`ip monitor route`),
  whether the conflist was rewritten.
--agent-root runs the agent from another checkout (e.g. an older commit, for a before/after).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
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

ME = "node-0000"
NAMESPACES = 100
CLK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------- objects

def node_name(i: int) -> str:
    return f"node-{i:04d}"


def node_ip(i: int) -> str:
    return f"172.20.{i // 250}.{i % 250 + 1}"


def node_cidr(i: int) -> str:
    return f"10.{64 + i // 256}.{i % 256}.0/24"


def pod_ip(node: int, k: int) -> str:
    return f"10.{64 + node // 256}.{node % 256}.{k + 2}"


def stamp(t: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1_760_000_000 + t))


def node_obj(i: int, beat: int = 0) -> dict:
    name = node_name(i)
    images = [{"names": [f"registry.k8s.io/img{j}@sha256:{'%064x' % (i * 31 + j)}", f"registry.k8s.io/img{j}:v1.{j}"],
               "sizeBytes": 10_000_000 + j} for j in range(12)]
    conditions = [{"type": t, "status": "False" if t != "Ready" else "True", "lastHeartbeatTime": stamp(beat),
                   "lastTransitionTime": stamp(0), "reason": f"Kubelet{t}", "message": f"kubelet says {t}"}
                  for t in ("MemoryPressure", "DiskPressure", "PIDPressure", "Ready")]
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "uid": f"{i:08x}-0000-4000-8000-000000000000", "creationTimestamp": stamp(0),
                         "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                    "kubernetes.io/arch": "amd64", "topology.kubernetes.io/zone": f"z{i % 3}",
                                    "node.kubernetes.io/instance-type": "m5.large"},
                         "annotations": {"node.alpha.kubernetes.io/ttl": "0",
                                         "volumes.kubernetes.io/controller-managed-attach-detach": "true"}},
            "spec": {"podCIDR": node_cidr(i), "podCIDRs": [node_cidr(i)], "providerID": f"kind://docker/{name}"},
            "status": {"addresses": [{"type": "InternalIP", "address": node_ip(i)}, {"type": "Hostname", "address": name}],
                       "capacity": {"cpu": "2", "memory": "8Gi", "pods": "110", "ephemeral-storage": "100Gi"},
                       "allocatable": {"cpu": "2", "memory": "7Gi", "pods": "110", "ephemeral-storage": "90Gi"},
                       "conditions": conditions, "images": images,
                       "nodeInfo": {"kubeletVersion": "v1.31.0", "containerRuntimeVersion": "containerd://1.7.18",
                                    "kernelVersion": "6.1.0", "osImage": "Debian GNU/Linux 12", "architecture": "amd64",
                                    "operatingSystem": "linux", "machineID": "%032x" % i, "systemUUID": "%032x" % i,
                                    "bootID": "%032x" % (i + 1), "kubeProxyVersion": "v1.31.0"},
                       "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}}}


def scramble(n: int) -> int:
    """Labels and namespaces independent of the node a pod is on (node = n % nodes)."""
    return (n * 2654435761) % 2**32


def pod_labels(n: int) -> dict:
    s = scramble(n)
    return {"app": f"app{s % 10}", "tier": ("web", "db", "cache")[(s // 10) % 3],
            "pod-template-hash": "%010x" % (s % 97)}


def pod_obj(n: int, node: int, k: int, ip: str | None = None, beat: int = 0, ns: str | None = None,
            labels: dict | None = None) -> dict:
    """~3 KB of JSON, as a Deployment's pod is served."""
    labels = labels or pod_labels(n)
    ns = ns or f"ns{(scramble(n) // 1000) % NAMESPACES}"
    name = f"{labels['app']}-{labels['pod-template-hash']}-{n:05x}"
    ip = ip or pod_ip(node, k)
    uid = f"{n:08x}-1111-4000-8000-000000000000"
    container = {
        "name": "app", "image": f"registry.example.com/team/{labels['app']}:1.{n % 7}.3", "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                  {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}],
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
                {"name": "LOG_LEVEL", "value": "info"}],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTP"}, "periodSeconds": 10,
                           "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
        "volumeMounts": [{"name": "kube-api-access-x1", "readOnly": True,
                          "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
        "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"}
    conditions = [{"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": stamp(beat)}
                  for t in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled")]
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "generateName": name[:-5], "namespace": ns, "uid": uid,
                     "creationTimestamp": stamp(0), "labels": labels,
                     "annotations": {"kubectl.kubernetes.io/restartedAt": stamp(0)},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name[:-6],
                                          "uid": f"{n % 97:08x}-2222-4000-8000-000000000000",
                                          "controller": True, "blockOwnerDeletion": True}],
                     "managedFields": [
                         {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                          "time": stamp(0), "fieldsType": "FieldsV1", "fieldsV1": {
                              "f:metadata": {"f:generateName": {}, "f:labels": {".": {}, "f:app": {}, "f:tier": {}},
                                             "f:ownerReferences": {".": {}, f'k:{{"uid":"{uid}"}}': {}}},
                              "f:spec": {"f:containers": {'k:{"name":"app"}': {".": {}, "f:image": {}, "f:ports": {}}}}}},
                         {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": stamp(beat),
                          "fieldsType": "FieldsV1", "subresource": "status", "fieldsV1": {
                              "f:status": {"f:conditions": {}, "f:containerStatuses": {}, "f:hostIP": {},
                                           "f:phase": {}, "f:podIP": {}, "f:podIPs": {}, "f:startTime": {}}}}]},
        "spec": {"volumes": [{"name": "kube-api-access-x1", "projected": {"sources": [
                     {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                     {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}],
                     "defaultMode": 420}}],
                 "containers": [container], "restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
                 "dnsPolicy": "ClusterFirst", "serviceAccountName": "default", "serviceAccount": "default",
                 "nodeName": node_name(node), "securityContext": {}, "schedulerName": "default-scheduler",
                 "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
                                  "tolerationSeconds": 300},
                                 {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
                                  "tolerationSeconds": 300}],
                 "priority": 0, "enableServiceLinks": True, "preemptionPolicy": "PreemptLowerPriority"},
        "status": {"phase": "Running", "conditions": conditions, "hostIP": node_ip(node),
                   "hostIPs": [{"ip": node_ip(node)}], "podIP": ip, "podIPs": [{"ip": ip}], "startTime": stamp(0),
                   "containerStatuses": [{"name": "app", "state": {"running": {"startedAt": stamp(1)}},
                                          "lastState": {}, "ready": True, "restartCount": 0,
                                          "image": container["image"],
                                          "imageID": f"registry.example.com/team/{labels['app']}@sha256:{'%064x' % (n % 10)}",
                                          "containerID": f"containerd://{'%064x' % n}", "started": True}],
                   "qosClass": "Burstable"}}


def namespace_obj(k: int) -> dict:
    name = f"ns{k}"
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "uid": f"{k:08x}-3333-4000-8000-000000000000", "creationTimestamp": stamp(0),
                         "labels": {"kubernetes.io/metadata.name": name, "team": f"t{k % 4}"}},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}


def react_policy(port: int) -> dict:
    """The policy the reactions change: it selects pod 0's app in pod 0's namespace (pod 0 is on
    this node), admitting anyone on `port` and app2 pods of that namespace on every port."""
    first = pod_obj(0, 0, 0)
    ns, app = first["metadata"]["namespace"], first["metadata"]["labels"]["app"]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": ns, "name": "react", "uid": "ffffffff-4444-4000-8000-000000000000",
                         "creationTimestamp": stamp(0)},
            "spec": {"podSelector": {"matchLabels": {"app": app}},
                     "ingress": [{"ports": [{"port": port}]},
                                 {"from": [{"podSelector": {"matchLabels": {"app": "app2"}}}]}]}}


def policy_obj(i: int, port: int = 80) -> dict:
    """Five shapes, as clusters use them (those of bench/netpol.py)."""
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
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": ns, "name": f"pol{i}", "uid": f"{i:08x}-4444-4000-8000-000000000000",
                         "creationTimestamp": stamp(0)}, "spec": spec}


# ---------------------------------------------------------------------------- the agent, watched

STARTED: list["Agent"] = []     # every agent this run started: none outlives it, whatever happens


class Agent:
    def __init__(self, cmd: list[str], cwd: Path, env: dict):
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd, env=env)
        STARTED.append(self)
        self.lines: list[tuple[float, str]] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def count(self, text: str) -> int:
        with self.cond:
            return sum(text in line for _, line in self.lines)

    def wait_for(self, pred, after: int = 0, timeout: float = 600.0) -> tuple[float, str]:
        """The first line from index `after` on that satisfies pred."""
        deadline = time.monotonic() + timeout
        with self.cond:
            i = after
            while True:
                while i < len(self.lines):
                    if pred(self.lines[i][1]):
                        return self.lines[i]
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    tail = "\n".join(line for _, line in self.lines[-30:])
                    raise SystemExit(f"agent: waited in vain (exit {self.proc.poll()}); it printed:\n{tail}")
                self.cond.wait(min(left, 0.5))

    def mark(self) -> int:
        with self.cond:
            return len(self.lines)

    def cpu(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK

    def status(self, key: str) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) // 1024    # MB
        return 0

    def terminate(self) -> float:
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return float("inf")
        return time.monotonic() - t0


def routes() -> dict[str, str]:
    out = subprocess.run(["ip", "-4", "route", "show", "proto", "152"], capture_output=True, text=True).stdout
    return {line.split()[0]: line.split()[2] for line in out.splitlines() if " via " in line}


def has_route(cidr: str) -> bool:
    out = subprocess.run(["ip", "-4", "route", "show", "exact", cidr, "proto", "152"], capture_output=True, text=True)
    return " via " in out.stdout


def table() -> str:
    return subprocess.run(["nft", "list", "table", "inet", "pycni-policy"], capture_output=True, text=True).stdout


def p50max(xs: list[float]) -> str:
    return f"p50 {statistics.median(xs) * 1000:.0f} ms, max {max(xs) * 1000:.0f} ms"


# ---------------------------------------------------------------------------- the run

def inside(args) -> None:
    from tests.k8s_api import FakeAPI

    random.seed(1)
    work = Path(tempfile.mkdtemp(prefix="pycni-agent-scale-"))
    for cmd in (["ip", "link", "add", "under0", "type", "veth", "peer", "name", "under1"],
                ["ip", "addr", "add", "172.20.0.1/16", "dev", "under0"],
                ["ip", "link", "set", "under0", "up"], ["ip", "link", "set", "under1", "up"]):
        subprocess.run(cmd, check=True)
    api = FakeAPI("127.0.0.1")
    t = time.monotonic()
    api.put_many("nodes", (node_obj(i) for i in range(args.nodes)))
    api.put_many("namespaces", (namespace_obj(k) for k in range(NAMESPACES)))
    per_node = max(1, args.pods // args.nodes)
    api.put_many("pods", (pod_obj(n, n % args.nodes, n // args.nodes) for n in range(args.pods)))
    api.put_many("networkpolicies", [policy_obj(i) for i in range(args.policies - 1)] + [react_policy(20000)])
    api.compact()            # the API server's history starts now
    sizes = {k: sum(map(len, api.raw[k].values())) for k in api.raw}
    print(f"cluster: {args.nodes} nodes, {args.pods} pods ({per_node} per node; {sizes['pods'] / max(1, args.pods):.0f} "
          f"bytes of JSON each, {sizes['pods'] / 2**20:.0f} MiB in all), {NAMESPACES} namespaces, {args.policies} "
          f"policies; nodes {sizes['nodes'] / max(1, args.nodes):.0f} bytes each (made in {time.monotonic() - t:.1f} s)",
          flush=True)
    root = Path(args.agent_root).resolve() if args.agent_root else ROOT
    env = {**os.environ, "PYCNI_LOG_FILE": str(work / "agent.log"), "PYTHONPATH": str(root)}
    cmd = [sys.executable, "-m", "cni", "agent", "--node-name", ME, "--kubeconfig", api.kubeconfig(work / "kc"),
           "--conf-dir", str(work / "net.d"), "--data-dir", str(work / "ipam"),
           "--policy-dir", str(work / "policy"), "--cluster-cidr", "10.64.0.0/10",
           "--peers-file", str(work / "peers.json"), "--metrics-address", "127.0.0.1:9152"]
    if args.build:           # as the DaemonSet: the build installed into the bin dir, its helper hosted
        cmd += ["--from", str(Path(args.build).resolve()), "--bin-dir", str(work / "bin"),
                "--helper", str(work / "helper.sock")]
        if args.helper_max_calls:
            cmd += ["--helper-max-calls", str(args.helper_max_calls)]
    else:
        cmd += ["--from", "none"]
    conflist = work / "net.d" / "10-pycni.conflist"

    def start_and_converge(agent: Agent) -> float:
        want = args.nodes - 1
        agent.wait_for(lambda l: "network policy:" in l and "policies on this node" in l and
                       (args.policies == 0 or " 0 policies on this node" not in l))
        while len(routes()) < want or not conflist.exists():
            if agent.proc.poll() is not None:
                raise SystemExit("agent exited")
            time.sleep(0.2)
        return time.monotonic() - agent.t0

    # ---- converge
    agent = Agent(cmd, root, env)
    converge = start_and_converge(agent)
    cpu_converge = agent.cpu()
    print(f"converge: {converge:.1f} s ({len(routes())} routes, conflist, first policy sync: "
          f"{agent.wait_for(lambda l: 'policies on this node' in l and ' 0 policies' not in l)[1].split('policy: ')[1]}); "
          f"CPU {cpu_converge:.1f} s; RSS {agent.status('VmRSS')} MB, peak {agent.status('VmHWM')} MB", flush=True)

    # ---- idle, then status churn
    c0 = agent.cpu()
    time.sleep(args.idle)
    idle = (agent.cpu() - c0) / args.idle
    churn_stop = threading.Event()
    rate = max(1.0, args.pods / 300)      # every pod's conditions once per 5 minutes, nodes every 10 s / N

    def churn() -> None:
        beat = 1
        next_at = time.monotonic()
        while not churn_stop.is_set():
            beat += 1
            n = random.randrange(args.pods)
            api.put("pods", pod_obj(n, n % args.nodes, n // args.nodes, beat=beat))
            if beat % 3 == 0:
                api.put("nodes", node_obj(random.randrange(args.nodes), beat=beat))
            next_at += 1 / rate
            churn_stop.wait(max(0.0, next_at - time.monotonic()))

    th = threading.Thread(target=churn, daemon=True)
    c0 = agent.cpu()
    th.start()
    time.sleep(args.idle)
    churn_stop.set()
    th.join()
    churned = (agent.cpu() - c0) / args.idle
    print(f"idle CPU: {idle * 100:.2f} % of a core over {args.idle} s; with status churn ({rate:.0f} pod updates/s "
          f"+ {rate / 3:.0f} node heartbeats/s): {churned * 100:.2f} %; RSS {agent.status('VmRSS')} MB, "
          f"peak {agent.status('VmHWM')} MB", flush=True)

    # ---- reactions
    add, rm, pol, newpod = [], [], [], []
    for r in range(args.reactions):
        i = args.nodes + r
        api.put("nodes", node_obj(i))
        t0 = time.monotonic()
        while not has_route(node_cidr(i)):
            time.sleep(0.02)
        add.append(time.monotonic() - t0)
        api.delete("nodes", "", node_name(i))
        t0 = time.monotonic()
        while has_route(node_cidr(i)):
            time.sleep(0.02)
        rm.append(time.monotonic() - t0)
    for r in range(args.reactions):
        port = 20001 + r
        mark = agent.mark()
        api.put("networkpolicies", react_policy(port))
        t0 = time.monotonic()
        at, _ = agent.wait_for(lambda l: "policies on this node" in l, after=mark)
        pol.append(at - t0)
        time.sleep(0.5)
    if pol:
        assert f"tcp . {20000 + len(pol)}" in table(), "the policy change is not in the kernel"
        react_ns = react_policy(0)["metadata"]["namespace"]
        # a new pod on another node that the policy admits (app2 of its namespace): its address joins the table
        for r in range(args.reactions):
            n = args.pods + r
            ip = f"10.127.{r}.{n % 250 + 1}"
            mark = agent.mark()
            api.put("pods", pod_obj(n, 1, 0, ip=ip, ns=react_ns, labels={"app": "app2", "tier": "web",
                                                                        "pod-template-hash": "new"}))
            t0 = time.monotonic()
            at, _ = agent.wait_for(lambda l: "policies on this node" in l, after=mark)
            newpod.append(at - t0)
            time.sleep(0.5)
        assert ip in table(), "the new pod's address is not in the kernel's table"
    print(f"reactions over {args.reactions}: node added {p50max(add)}; node deleted {p50max(rm)}"
          + (f"; policy changed {p50max(pol)}; new pod matching a policy {p50max(newpod)}" if pol else ""), flush=True)
    cpu_all = agent.cpu()

    if args.build and args.adds:
        container_memory(agent, work, args.adds)

    requests = dict(sorted(api.requests.items()))
    print("API requests: " + ", ".join(f"{k} {what} {n}" for (k, what), n in requests.items()), flush=True)

    # ---- SIGTERM at rest, then a restart stopped while busy, then a restart that converges
    peak = agent.status("VmHWM")
    stopped = agent.terminate()
    before = routes()
    agent = Agent(cmd, root, env)
    time.sleep(args.busy_after)
    busy_cpu = agent.cpu()
    stopped_busy = agent.terminate()
    after_busy = routes()
    monitor = subprocess.Popen(["ip", "-4", "monitor", "route"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True)
    written = conflist.stat().st_mtime_ns
    agent = Agent(cmd, root, env)
    reconverge = start_and_converge(agent)
    time.sleep(1.0)
    monitor.terminate()
    flaps = [line for line in monitor.communicate()[0].splitlines() if "proto 152" in line]
    print(f"SIGTERM: at rest exited in {stopped:.1f} s; while busy ({args.busy_after:.0f} s into a restart, "
          f"{busy_cpu:.1f} s CPU spent) in {stopped_busy:.1f} s; routes intact after it: {after_busy == before}",
          flush=True)
    print(f"restart: re-converged in {reconverge:.1f} s; route changes seen {len(flaps)}; conflist "
          f"{'rewritten' if conflist.stat().st_mtime_ns != written else 'untouched'}; routes equal {routes() == before}; "
          f"peak RSS {agent.status('VmHWM')} MB", flush=True)
    agent.terminate()
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(f"SUMMARY nodes={args.nodes} pods={args.pods} policies={args.policies} converge_s={converge:.1f} "
          f"cpu_converge_s={cpu_converge:.1f} peak_rss_mb={peak} idle_pct={idle * 100:.2f} churn_pct={churned * 100:.2f} "
          f"cpu_total_s={cpu_all:.1f} sigterm_busy_s={stopped_busy:.1f} reconverge_s={reconverge:.1f}", flush=True)
    api.close()


def tree(pid: int) -> list[int]:
    """pid and its descendants."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def pss_mb(pids: list[int]) -> float:
    """What the processes hold together, each shared page counted once (the sum of their PSS:
    close to what the container's memory cgroup is charged, page cache aside)."""
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total / 1024


def container_memory(agent: Agent, work: Path, adds: int) -> None:
    """`adds` pod ADDs at once through the hosted helper (then their DELs), the container's
    processes (the agent, the helper, its children) sampled meanwhile."""
    sock = work / "helper.sock"
    deadline = time.monotonic() + 30
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    conf = json.loads((work / "net.d" / "10-pycni.conflist").read_text())
    bin_dir = work / "bin"
    pods = [f"{os.environ.get('PREFIX', 'pycni-agentscale')}-p{i}" for i in range(adds)]
    for pod in pods:
        subprocess.run(["ip", "netns", "add", pod], check=True)
    samples: list[tuple[float, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            pids = tree(agent.proc.pid)
            samples.append((pss_mb(pids), len(pids)))
            time.sleep(0.02)

    idle = pss_mb(tree(agent.proc.pid))
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.monotonic()
    for command in ("ADD", "DEL"):
        procs = []
        for i, pod in enumerate(pods):
            env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": f"bench{i}",
                   "CNI_NETNS": f"/var/run/netns/{pod}", "CNI_IFNAME": "eth0", "CNI_PATH": str(bin_dir),
                   "PYCNI_HELPER_SOCKET": str(sock),
                   "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=bench{i}"}
            p = subprocess.Popen([str(bin_dir / "pycni")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, env=env)
            p.stdin.write(json.dumps({**conf["plugins"][0], "name": conf["name"],
                                      "cniVersion": conf["cniVersion"]}).encode())
            p.stdin.close()
            procs.append(p)
        failed = [p for p in procs if p.wait() != 0]
        if failed:
            raise SystemExit(f"{len(failed)} {command}s failed: {failed[0].stdout.read()[:300]}")
    took = time.monotonic() - t0
    done.set()
    th.join()
    for pod in pods:
        subprocess.run(["ip", "netns", "del", pod], check=False)
    peak, procs_at_peak = max(samples)
    served: dict[str, int] = {}
    calls = work / "calls.log"
    for line in calls.read_text().splitlines() if calls.exists() else []:
        parts = line.split()
        if len(parts) == 8 and parts[3] in ("ADD", "DEL"):
            key = "helper" if parts[6] == "helper" else f"in process ({parts[7]})"
            served[key] = served.get(key, 0) + 1
    print(f"container memory ({adds} ADDs at once through the helper, then their DELs, {took:.1f} s): agent + "
          f"helper + children {idle:.0f} MB at rest, peak {peak:.0f} MB ({procs_at_peak} processes; sum of PSS); "
          f"most processes at once {max(n for _, n in samples)}; calls served: "
          + ", ".join(f"{k} {v}" for k, v in sorted(served.items())), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=100)
    p.add_argument("--pods", type=int, default=3000)
    p.add_argument("--policies", type=int, default=50)
    p.add_argument("--idle", type=float, default=30.0)
    p.add_argument("--reactions", type=int, default=5)
    p.add_argument("--busy-after", type=float, default=2.0, help="SIGTERM this many seconds into a restart")
    p.add_argument("--agent-root", help="run the agent from this checkout (default: this one)")
    p.add_argument("--build", help="a plugin build (dist/pycni) to install and host the helper of, as the "
                                   "DaemonSet does (default: no install, no helper)")
    p.add_argument("--adds", type=int, default=50, help="with --build: this many ADDs at once through the helper")
    p.add_argument("--helper-max-calls", type=int, help="with --build: the agent's --helper-max-calls (default: the "
                   "helper's own)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (agent.log, state) afterwards")
    p.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--prefix", default="pycni-agentscale")
    args = p.parse_args()
    if args.inside:
        try:
            inside(args)
        finally:
            for agent in STARTED:
                if agent.proc.poll() is None:
                    agent.proc.kill()
                    agent.proc.wait()
    else:
        if os.geteuid() != 0:
            raise SystemExit("needs root (network namespaces)")
        argv = [a for a in sys.argv[1:] if a not in ("--inside",)]
        run_inside(__file__, args.prefix, argv)


if __name__ == "__main__":
    main()

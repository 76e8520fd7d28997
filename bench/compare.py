#!/usr/bin/env python3
"""pycni vs the reference chain (bridge + host-local + portmap), same workload, same machine.

    sudo .venv/bin/python bench/compare.py [--pods 200] [--concurrent 50] [--growth 10,500]
                                           [--helper] [--port-binding] [--bin-dir dist/pycni]

Runs inside throwaway namespaces (a node namespace it re-executes itself in, pods beside it) and
drives both as libcni does: the conflist's plugins in order on ADD with prevResult passed on,
in reverse on DEL, runtimeConfig from the declared capabilities (one port mapping per pod).
Prints one table: our figure, the reference figure and their ratio per row, with CPU time and
peak memory per plugin process (from wait4). Report ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent
REF = Path("/usr/lib/cni")

from cni.tools.driver import plugin_config  # noqa: E402
from node_namespace import run_inside  # noqa: E402


def netlists(work: Path) -> dict[str, dict]:
    common = {"isGateway": True, "isDefaultGateway": True}
    return {
        "pycni": {"cniVersion": "1.0.0", "name": "bench-pycni", "plugins": [
            {"type": "pycni", "bridge": "pbr0", **common, "logFile": str(work / "pycni.log"),
             "capabilities": {"portMappings": True}, "backend": "nftables",
             "ipam": {"type": "pycni-ipam", "dataDir": str(work / "ipam"),
                      "ranges": [[{"subnet": "10.70.0.0/16"}]]}}]},
        "reference": {"cniVersion": "1.0.0", "name": "bench-ref", "plugins": [
            {"type": "bridge", "bridge": "rbr0", **common,
             "ipam": {"type": "host-local", "dataDir": str(work / "ipam"),
                      "ranges": [[{"subnet": "10.71.0.0/16"}]]}},
            {"type": "portmap", "capabilities": {"portMappings": True}}]},
    }


class Call:
    __slots__ = ("wall", "cpu", "rss", "result")

    def __init__(self, wall=0.0, cpu=0.0, rss=0, result=None):
        self.wall, self.cpu, self.rss, self.result = wall, cpu, rss, result


def exec_plugin(plugin: dict, netlist: dict, command: str, cid: str, netns: str, caps: dict,
                prev) -> Call:
    """One plugin process, as libcni runs it; netlist["_env"] adds environment (the helper socket)."""
    exe = BIN / plugin["type"] if plugin["type"].startswith("pycni") else REF / plugin["type"]
    env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": netns,
           "CNI_IFNAME": "eth0", "CNI_PATH": f"{BIN}:{REF}",
           "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=bench",
           **netlist.get("_env", {})}
    stdin = plugin_config(netlist, plugin, caps, prev)
    t0 = time.perf_counter()
    p = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=env)
    p.stdin.write(stdin)
    p.stdin.close()
    out, err = p.stdout.read(), p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)      # reap it ourselves, to get its rusage
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{exe.name} {command} {cid} failed: {out.decode()} {err.decode()}")
    return Call(wall * 1000, (ru.ru_utime + ru.ru_stime) * 1000, ru.ru_maxrss,
                json.loads(out) if out.strip() else None)


def chain(netlist: dict, command: str, i: int, netns: str, cache: dict) -> Call:
    caps = {"portMappings": [{"hostPort": 20000 + i, "containerPort": 80, "protocol": "tcp"}]}
    plugins = netlist["plugins"] if command == "ADD" else list(reversed(netlist["plugins"]))
    total, prev = Call(), (cache.get(i) if command == "DEL" else None)
    t0 = time.perf_counter()
    for plugin in plugins:
        c = exec_plugin(plugin, netlist, command, f"c{i}", netns, caps, prev)
        total.cpu += c.cpu
        total.rss = max(total.rss, c.rss)
        if command == "ADD":
            prev = c.result
    total.wall = (time.perf_counter() - t0) * 1000
    if command == "ADD":
        cache[i] = prev
        total.result = prev
    return total


def children_cpu(helper) -> float:
    """CPU (ms) of the helper's reaped children so far: user + system, from /proc/PID/stat."""
    if helper is None:
        return 0.0
    fields = Path(f"/proc/{helper.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) * 1000 / os.sysconf("SC_CLK_TCK")


def pct(v: list[float], p: float) -> float:
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


class Pods:
    def __init__(self, prefix: str):
        self.prefix, self.made = prefix, set()

    def path(self, i: int) -> str:
        name = f"{self.prefix}-p{i}"
        if i not in self.made:
            subprocess.run(["ip", "netns", "add", name], check=True)
            self.made.add(i)
        return f"/var/run/netns/{name}"

    def remove_all(self) -> None:
        for i in sorted(self.made):
            subprocess.run(["ip", "netns", "del", f"{self.prefix}-p{i}"], stderr=subprocess.DEVNULL)
        self.made.clear()


def run_all(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="pycni-compare-"))
    nets = netlists(work)
    if args.port_binding:       # issue 28: the pod's port bound to its MAC and addresses
        nets["pycni"]["plugins"][0]["portBinding"] = True
    helper = None
    sock = work / "helper.sock"        # also where the calls' attachment locks go (work/calls/)
    if args.helper:
        # as pycni-helper.service (`pycni install --helper`) and the DaemonSet's agent start it:
        # the bin dir's own pycni, `helper --socket S`
        helper = subprocess.Popen([str(BIN / "pycni"), "helper", "--socket", str(sock)], stderr=subprocess.PIPE,
                                  text=True)
        helper.stderr.readline()
        nets["pycni"]["_env"] = {"PYCNI_HELPER_SOCKET": str(sock)}
    else:
        nets["pycni"]["_env"] = {"PYCNI_HELPER": "0", "PYCNI_HELPER_SOCKET": str(sock)}
    pods = Pods(args.prefix)
    rows: list[tuple[str, str, float, float, str]] = []   # label, unit, ours, ref, extra
    stats = {}
    try:
        # 1. sequential ADD then DEL of N pods
        helper_cpu = {"ADD": 0.0, "DEL": 0.0}     # per call, spent in the helper's forked children
        for name, nl in nets.items():
            cache: dict = {}
            for i in range(args.pods):
                pods.path(i)
            before = children_cpu(helper) if name == "pycni" else 0.0
            adds = [chain(nl, "ADD", i, pods.path(i), cache) for i in range(args.pods)]
            middle = children_cpu(helper) if name == "pycni" else 0.0
            dels = [chain(nl, "DEL", i, pods.path(i), cache) for i in range(args.pods)]
            if name == "pycni" and helper is not None:
                helper_cpu = {"ADD": (middle - before) / args.pods, "DEL": (children_cpu(helper) - middle) / args.pods}
            stats[name] = (adds, dels)
            print(f"  sequential {name}: done", flush=True)
        for verb, k in (("ADD", 0), ("DEL", 1)):
            for label, f in (("p50", statistics.median), ("p95", lambda v: pct(v, 95)), ("max", max)):
                ours = f([c.wall for c in stats["pycni"][k]])
                ref = f([c.wall for c in stats["reference"][k]])
                rows.append((f"{args.pods} sequential {verb} {label}", "ms", ours, ref, ""))
        for verb, k in (("ADD", 0), ("DEL", 1)):
            ours = statistics.median([c.cpu for c in stats["pycni"][k]]) + helper_cpu[verb]
            ref = statistics.median([c.cpu for c in stats["reference"][k]])
            rows.append((f"CPU per {verb} (all processes)", "ms", ours, ref,
                         f"helper's share {helper_cpu[verb]:.1f} ms" if helper is not None else ""))
            ours = max(c.rss for c in stats["pycni"][k]) / 1024
            ref = max(c.rss for c in stats["reference"][k]) / 1024
            rows.append((f"peak memory per {verb} process", "MB", ours, ref, ""))

        # 2. concurrent ADDs
        for name, nl in nets.items():
            cache = {}
            paths = [pods.path(1000 + i) for i in range(args.concurrent)]
            threads = [threading.Thread(target=chain, args=(nl, "ADD", 1000 + i, paths[i], cache))
                       for i in range(args.concurrent)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = (time.perf_counter() - t0) * 1000
            addrs = [cache[k]["ips"][0]["address"] for k in cache]
            unique = len(set(addrs)) == len(addrs) == args.concurrent
            stats[f"conc-{name}"] = (wall, unique)
            for k in list(cache):
                chain(nl, "DEL", k, paths[k - 1000], cache)
            print(f"  concurrent {name}: {wall:.0f} ms, unique={unique}", flush=True)
        rows.append((f"{args.concurrent} concurrent ADDs, wall", "ms", stats["conc-pycni"][0],
                     stats["conc-reference"][0],
                     f"unique: {stats['conc-pycni'][1]} / {stats['conc-reference'][1]}"))

        # 3. growth: ADD/DEL p50 with few vs many pods on the node
        for name, nl in nets.items():
            cache = {}
            present = 0
            for size in args.growth:
                while present < size:
                    chain(nl, "ADD", 2000 + present, pods.path(2000 + present), cache)
                    present += 1
                a, d = [], []
                for r in range(args.rounds):
                    i = 9000 + r
                    a.append(chain(nl, "ADD", i, pods.path(i), cache).wall)
                    d.append(chain(nl, "DEL", i, pods.path(i), cache).wall)
                stats[f"growth-{name}-{size}"] = (statistics.median(a), statistics.median(d))
                print(f"  growth {name} @{size}: ADD {stats[f'growth-{name}-{size}'][0]:.1f} "
                      f"DEL {stats[f'growth-{name}-{size}'][1]:.1f}", flush=True)
            for k in list(cache):
                chain(nl, "DEL", k, pods.path(k), cache)
        for size in args.growth:
            for k, verb in ((0, "ADD"), (1, "DEL")):
                rows.append((f"{verb} p50 with {size} pods on the node", "ms", stats[f"growth-pycni-{size}"][k],
                             stats[f"growth-reference-{size}"][k], ""))
        lo, hi = args.growth[0], args.growth[-1]
        rows.append((f"ADD p50 growth {hi} vs {lo} pods", "x", stats[f"growth-pycni-{hi}"][0] /
                     stats[f"growth-pycni-{lo}"][0], stats[f"growth-reference-{hi}"][0] /
                     stats[f"growth-reference-{lo}"][0], ""))

        # 5. the floor: the same kernel work from one warm process (no exec, no imports)
        floor_add, floor_del = floor(nets["pycni"], pods, args.rounds)
        rows.append(("floor: one warm process, ADD p50", "ms", floor_add, stats["growth-pycni-" + str(lo)][0],
                     "ours = floor, ref = pycni exec"))
        rows.append(("floor: one warm process, DEL p50", "ms", floor_del, stats["growth-pycni-" + str(lo)][1],
                     "ours = floor, ref = pycni exec"))
    finally:
        pods.remove_all()
        if helper is not None:
            helper.kill()
            helper.wait()

    print()
    print(f"pycni vs reference chain (bridge + host-local + portmap, Debian plugins 1.1.1), "
          f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, kernel {os.uname().release}, "
          f"pycni {'through the resident helper' if args.helper else 'one process per call'}, executables in {BIN}")
    print("| row | pycni | reference | ratio | |")
    print("|---|---|---|---|---|")
    for label, unit, ours, ref, extra in rows:
        ratio = ours / ref if ref else float("nan")
        print(f"| {label} | {ours:.1f} {unit} | {ref:.1f} {unit} | {ratio:.2f} | {extra} |")
    exe = (BIN / "pycni").resolve()          # `pycni install` links the names into .pycni/<build>/
    kind = ("the self-contained build (PyInstaller)" + (", laid out by `pycni install`" if exe.parent != BIN else "")
            if (exe.parent / "_internal").is_dir() else "a Python venv install")
    print(f"pycni executables: {kind}")


def floor(netlist: dict, pods: Pods, rounds: int) -> tuple[float, float]:
    import io

    from cni.spec import skel
    from cni.bridge.plugin import BridgePlugin

    plugin = netlist["plugins"][0]
    adds, dels = [], []
    for r in range(rounds):
        i = 9500 + r
        env = {"CNI_CONTAINERID": f"f{i}", "CNI_NETNS": pods.path(i), "CNI_IFNAME": "eth0", "CNI_PATH": str(BIN),
               **netlist["_env"]}
        caps = {"portMappings": [{"hostPort": 30000 + r, "containerPort": 80, "protocol": "tcp"}]}
        stdin = plugin_config(netlist, plugin, caps)
        for cmd, acc in (("ADD", adds), ("DEL", dels)):
            out = io.StringIO()
            t0 = time.perf_counter()
            rc = skel.run(BridgePlugin, {**env, "CNI_COMMAND": cmd}, io.BytesIO(stdin), out)
            acc.append((time.perf_counter() - t0) * 1000)
            if rc != 0:
                raise SystemExit(f"floor {cmd} failed: {out.getvalue()}")
    return statistics.median(adds), statistics.median(dels)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=200)
    ap.add_argument("--concurrent", type=int, default=50)
    ap.add_argument("--growth", default="10,500")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--helper", action="store_true", help="run pycni through `pycni helper`")
    ap.add_argument("--port-binding", action="store_true", help="pycni with \"portBinding\": true")
    ap.add_argument("--bin-dir", help="pycni executables to measure (default: this venv's; "
                                      "dist/pycni for the self-contained build)")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--prefix", default=f"pycni-cmp-{os.getpid()}")
    args = ap.parse_args()
    args.growth = [int(x) for x in str(args.growth).split(",")]
    if args.bin_dir:
        global BIN
        BIN = Path(args.bin_dir).resolve()
    if args.inside:
        return run_all(args)
    run_inside(__file__, args.prefix,
               ["--pods", str(args.pods), "--concurrent", str(args.concurrent), "--growth",
                ",".join(map(str, args.growth)), "--rounds", str(args.rounds)]
               + (["--helper"] if args.helper else []) + (["--port-binding"] if args.port_binding else [])
               + (["--bin-dir", str(BIN)] if args.bin_dir else []))


if __name__ == "__main__":
    main()

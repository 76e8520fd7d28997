#!/usr/bin/env python3
"""What a misbehaving helper costs a CNI call: ADD and DEL p50 for each fault, next to the same
calls in process and through a healthy helper.

    sudo .venv/bin/python bench/helper_faults.py [--bin-dir dist/pycni] [--rounds 15]

Runs in throwaway namespaces (a node namespace it re-executes itself in, pods beside it). The
helper is started as `pycni-helper.service` and the DaemonSet's agent start it: the bin dir's own
`pycni helper --socket S`. Each row: the fault, how it was made, ADD and DEL p50, and the extra
over the in-process call, as the median of per-round differences: every round runs an in-process
ADD+DEL pair right before the fault's pair, so the VM's drift cancels out.
tests/integration/test_helper.py checks each fault's *behaviour* (exactly once, nothing left);
this script only measures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from node_namespace import run_inside

BIN = Path(sys.executable).parent


def conf(work: Path) -> dict:
    return {"cniVersion": "1.0.0", "name": "faults", "type": "pycni", "bridge": "fbr0", "isGateway": True,
            "logFile": str(work / "pycni.log"),
            "ipam": {"type": "pycni-ipam", "dataDir": str(work / "ipam"), "ranges": [[{"subnet": "10.72.0.0/16"}]]}}


class Bench:
    def __init__(self, work: Path, prefix: str):
        self.work, self.prefix, self.n = work, prefix, 0
        self.sock = work / "helper.sock"
        self.conf = json.dumps(conf(work)).encode()

    def pod(self) -> str:
        self.n += 1
        name = f"{self.prefix}-p{self.n}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        return name

    def call(self, command: str, pod: str, cid: str, **env) -> float:
        e = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": cid,
             "CNI_NETNS": f"/var/run/netns/{pod}", "CNI_IFNAME": "eth0", "CNI_PATH": str(BIN),
             "PYCNI_HELPER_SOCKET": str(self.sock), **env}
        t0 = time.perf_counter()
        p = subprocess.run([str(BIN / "pycni")], input=self.conf, env=e, capture_output=True, timeout=120)
        took = (time.perf_counter() - t0) * 1000
        if p.returncode != 0:
            raise SystemExit(f"{command} {cid} failed: {p.stdout.decode()} {p.stderr.decode()}")
        return took

    def pair(self, **env) -> tuple[float, float]:
        pod = self.pod()
        add = self.call("ADD", pod, pod, **env)
        dele = self.call("DEL", pod, pod, **env)
        subprocess.run(["ip", "netns", "del", pod], check=True)
        return add, dele

    def rounds(self, n: int, **env) -> tuple[float, float, float, float]:
        """ADD p50, DEL p50, and the median extra of ADD and of DEL over an in-process pair run
        just before, round by round."""
        adds, dels, extra_add, extra_del = [], [], [], []
        for _ in range(n):
            base_add, base_del = self.pair(PYCNI_HELPER="0")
            add, dele = self.pair(**env)
            adds.append(add)
            dels.append(dele)
            extra_add.append(add - base_add)
            extra_del.append(dele - base_del)
        return (statistics.median(adds), statistics.median(dels), statistics.median(extra_add),
                statistics.median(extra_del))

    def parallel(self, n: int, **env) -> float:
        pods = [self.pod() for _ in range(n)]
        threads = [threading.Thread(target=self.call, args=("ADD", p, p), kwargs=env) for p in pods]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = (time.perf_counter() - t0) * 1000
        for p in pods:
            self.call("DEL", p, p, **env)
            subprocess.run(["ip", "netns", "del", p], check=True)
        return wall

    def start_helper(self, exe: Path | None = None, wrap: list[str] | None = None) -> subprocess.Popen:
        cmd = [*(wrap or []), str(exe or BIN / "pycni"), "helper", "--socket", str(self.sock)]
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        line = proc.stderr.readline()
        if "serving on" not in line:
            raise SystemExit(f"helper did not start: {line}")
        return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
    proc.wait()


def inside(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="pycni-faults-"))
    b = Bench(work, args.prefix)
    rows = []

    def row(fault: str, how: str, add: float, dele: float, extra_add: float, extra_del: float):
        rows.append((fault, how, add, dele, extra_add, extra_del))
        print(f"  {fault}: ADD {add:.1f} ms ({extra_add:+.1f}), DEL {dele:.1f} ms ({extra_del:+.1f})", flush=True)

    try:
        b.rounds(3, PYCNI_HELPER="0")               # warm the page cache
        row("in process (PYCNI_HELPER=0)", "the baseline against itself", *b.rounds(args.rounds, PYCNI_HELPER="0"))
        row("no helper", "no socket at the path", *b.rounds(args.rounds))
        h = b.start_helper()
        row("helper serving", "pycni helper --socket S", *b.rounds(args.rounds))
        second = subprocess.run([str(BIN / "pycni"), "helper", "--socket", str(b.sock)], capture_output=True,
                                timeout=60)
        assert second.returncode != 0
        row("second helper started", "refused to start; the first serves", *b.rounds(args.rounds))
        os.kill(h.pid, signal.SIGSTOP)
        row("helper stopped", "SIGSTOP", *b.rounds(max(3, args.rounds // 3)))
        stop(h)
        row("helper killed", "SIGKILL: a stale socket refuses connections", *b.rounds(args.rounds))
        h = b.start_helper()
        row("helper restarted", "a new helper takes the stale path", *b.rounds(args.rounds))
        stop(h)
        b.sock.unlink(missing_ok=True)
        b.sock.write_text("not a socket")
        row("socket replaced by a regular file", "a file at the path", *b.rounds(args.rounds))
        b.sock.unlink()
        other = work / "other-build"
        shutil.copytree(BIN.resolve() if not (BIN / "pycni").is_symlink() else (BIN / "pycni").resolve().parent,
                        other, symlinks=True)
        h = b.start_helper(other / "pycni")
        row("helper of another build", "started from a copy of the build: 'not mine'", *b.rounds(args.rounds))
        stop(h)
        h = b.start_helper(wrap=["unshare", "--mount", "--propagation", "private"])
        row("helper in another mount namespace", "unshare -m", *b.rounds(args.rounds))
        for label, env in (("through the helper", {}), ("in process", {"PYCNI_HELPER": "0"})):
            wall = b.parallel(20, **env)
            rows.append((f"20 parallel ADDs, {label}", "wall time of all 20", wall, *(float("nan"),) * 3))
            print(f"  20 parallel {label}: {wall:.0f} ms", flush=True)
        stop(h)
    finally:
        subprocess.run(["ip", "link", "del", "fbr0"], stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"helper faults, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, executables in {BIN}, "
          f"p50 of {args.rounds} ADD+DEL pairs (stopped: {max(3, args.rounds // 3)}); extra = median of "
          "the per-round differences with an in-process pair run just before")
    print("| fault | made by | ADD p50 | DEL p50 | ADD extra | DEL extra |")
    print("|---|---|---|---|---|---|")
    for fault, how, add, dele, xa, xd in rows:
        if dele != dele:
            print(f"| {fault} | {how} | {add:.0f} ms |  |  |  |")
        else:
            print(f"| {fault} | {how} | {add:.1f} ms | {dele:.1f} ms | {xa:+.1f} ms | {xd:+.1f} ms |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--bin-dir", help="pycni executables (default: this venv's)")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--prefix", default=f"pycni-flt-{os.getpid()}")
    args = ap.parse_args()
    global BIN
    if args.bin_dir:
        BIN = Path(args.bin_dir).absolute()
    if args.inside:
        return inside(args)
    run_inside(__file__, args.prefix, ["--rounds", str(args.rounds), "--bin-dir", str(BIN)])


if __name__ == "__main__":
    main()
